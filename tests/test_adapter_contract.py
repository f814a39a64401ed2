"""The adapter contract, held for every registered adapter x strategy x scope, and CONTRIBUTING's adapter guide.

Every registered adapter has a tiny model in ``tiny_models.TINY_MODELS``; ``tomeplug.testing.check_adapter``
is the shared body, so a new adapter or strategy is tested here automatically. The guide's code is read
from CONTRIBUTING.md and run as written.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import STRATEGIES, builtin_registry
from tiny_models import TINY_MODELS

import tomeplug
from tomeplug.testing import check_adapter

CONTRIBUTING = Path(__file__).parents[1] / "CONTRIBUTING.md"
CASES = [
    (adapter, strategy, scope)
    for adapter, entry in sorted(builtin_registry().adapters.items())
    for strategy in STRATEGIES
    for scope in entry.obj.scopes
]


def test_every_registered_adapter_has_a_tiny_model(registry):
    missing = sorted(set(registry.adapters) - set(TINY_MODELS))
    assert not missing, f"add a tiny model for {missing} to TINY_MODELS in tests/tiny_models.py"


@pytest.mark.parametrize(("adapter", "strategy", "scope"), CASES)
def test_adapter_contract(adapter, strategy, scope):
    spec = TINY_MODELS[adapter]
    check_adapter(adapter, spec.build, spec.make_input, run=spec.runner(), strategy=strategy, scope=scope)


def guide_module() -> types.ModuleType:
    """The python code blocks of CONTRIBUTING's "Add an adapter" section, run as one module."""
    text = CONTRIBUTING.read_text()
    section = text[text.index("## Add an adapter") :]
    section = section[: section.index("\n## ", 1)]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))
    assert "class GridViTAdapter" in code and "def tomeplug_register_adapters" in code
    module = types.ModuleType("contributing_adapter_guide")
    sys.modules[module.__name__] = module  # the mixin's class path must resolve, as for a real plugin module
    exec(compile(code, str(CONTRIBUTING), "exec"), module.__dict__)
    return module


@pytest.fixture
def guide(registry):
    module = guide_module()
    registry.register_plugin(module, "contributing_adapter_guide")
    yield module
    del sys.modules[module.__name__]


def test_the_guide_adapter_conforms_with_every_strategy(guide, strategy_name):
    torch.manual_seed(0)
    image = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))  # a 5x6 patch grid
    check_adapter("grid_vit", lambda: guide.GridViT().eval(), lambda: image, strategy=strategy_name)


def test_the_guide_adapter_honours_the_application_options(guide):
    torch.manual_seed(0)
    model, image = guide.GridViT().eval(), torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for options in ({}, {"metric": "keys"}, {"prop_attn": True}):
        with tomeplug.patch(model, "tome", r=0.4, **options) as handle, torch.no_grad():
            assert handle.adapter == "grid_vit"
            outputs[str(options)] = model(image)
    values = list(outputs.values())
    assert not torch.equal(values[0], values[1]) and not torch.equal(values[0], values[2])
