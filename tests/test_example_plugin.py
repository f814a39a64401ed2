"""End to end: pip-install the example plugin package, then find it and use it by name on every adapter.

The package is built and installed once per session into a temporary folder with pip (no network);
each check runs in a subprocess that has that folder on ``PYTHONPATH`` and plugin autoloading on, as
a user's ``pip install tomeplug-example-strategy`` would leave things.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import plugin_guide
import pytest
import torch
from tiny_models import TINY_MODELS

import tomeplug

EXAMPLE = Path(__file__).parents[1] / "examples" / "tomeplug-example-strategy"
TESTS = Path(__file__).parent


def use_example_on_every_adapter() -> None:
    """Run in the subprocess: ``pool2x2``, by name, on a tiny model of every registered adapter."""
    from tomeplug.testing import check_adapter
    from tomeplug.torchvision_compat import ensure_torchvision

    torch.set_num_threads(1)
    ensure_torchvision()
    missing = sorted(set(tomeplug.list_adapters()) - set(TINY_MODELS))
    if missing:
        sys.exit(
            f"no tiny model for the registered adapter(s) {missing}: add one to TINY_MODELS in tests/tiny_models.py"
        )
    for name in tomeplug.list_adapters():
        spec = TINY_MODELS[name]
        target = tomeplug.get_registry().adapter(name).target
        handle = tomeplug.patch(spec.build(), "pool2x2", r=0.3, target=target)  # the adapter is found by matches()
        assert handle.adapter == name, f"the {name} tiny model was matched by adapter {handle.adapter!r}"
        check_adapter(name, spec.build, spec.make_input, run=spec.runner(), strategy="pool2x2", r=0.3)
        print("ok", name, flush=True)


@pytest.fixture(scope="module")
def guide_package(tmp_path_factory) -> Path:
    """The plugin package assembled from CONTRIBUTING's guide, file for file as the guide shows it."""
    return plugin_guide.assemble(tmp_path_factory.mktemp("guide") / EXAMPLE.name)


@pytest.fixture(scope="module")
def site(guide_package, tmp_path_factory) -> Path:
    """The guide's package installed by pip into a fresh folder (the guide's step 5; tomeplug is installed)."""
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run([*pip, "--target", str(target), str(guide_package)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_the_guide_is_the_example_file_for_file():
    """What the guide shows is exactly the example package (which adds only its README)."""
    shown = plugin_guide.guide_files()
    skip = {"__pycache__", "build", ".pytest_cache"}
    files = {
        str(p.relative_to(EXAMPLE))
        for p in EXAMPLE.rglob("*")
        if p.is_file() and not skip & set(p.parts) and not any(part.endswith(".egg-info") for part in p.parts)
    }
    assert set(shown) == files - {"README.md"}
    for path, text in shown.items():
        assert text == (EXAMPLE / path).read_text(), f"CONTRIBUTING shows {path} differently from the example"


def test_the_guides_own_tests_pass_once_installed(site, guide_package):
    """Step 5 as written: after installing, `python -m pytest tests` in the package passes."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=guide_package)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("2 passed")


def run_with_example(site: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Python with the example installed and plugin autoloading on (the default outside tests)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(TESTS)])}
    env.pop("TOMEPLUG_DISABLE_PLUGIN_AUTOLOAD", None)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=site)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_listed_with_distribution_and_version(site):
    listing = run_with_example(site, "-m", "tomeplug", "list").stdout
    strategies = listing.split("adapters:")[0]
    assert "pool2x2" in strategies and "(max r 0.5)" in strategies
    assert "registered by plugin 'pool2x2' from tomeplug-example-strategy 0.1.0" in strategies
    assert "failed plugins:" not in listing


def test_used_by_name_on_every_adapter(site):
    code = "import test_example_plugin as t; t.use_example_on_every_adapter()"
    done = run_with_example(site, "-c", code)
    checked = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok ")}
    assert checked == set(tomeplug.list_adapters())
