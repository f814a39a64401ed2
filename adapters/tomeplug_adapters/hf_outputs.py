"""transformers' output capture around tomeplug's merging modules (shared by the transformers adapters).

transformers records ``output_hidden_states`` / ``output_attentions`` by hooks its ``capture_outputs``
decorator installs on the classes a model names in ``_can_record_outputs``, keyed by the model's class. A
patched encoder whose loop is tomeplug's runs that loop under the same decorator (:func:`recording`) and
registers its swapped class (:func:`register_recording`); merged layers refuse to record what they do not
have (:func:`refuse_recording`) instead of returning something else under the name.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from torch import nn

from tomeplug.classswap import is_swapped

WHY_NOT = {
    "attentions": "merged layers attend over merged tokens, so no dense attention weights exist",
    "hidden_states": "a span runs its layers on one plan's merged tokens, so no per-layer map exists "
    "(scope='block' records one per layer)",
}


def refuse_recording(output: str) -> None:
    """Raise if the transformers forward running now records ``output`` (``"attentions"`` or
    ``"hidden_states"``), which the merged layers cannot give (:data:`WHY_NOT`)."""
    from transformers.utils.output_capturing import _active_collector

    collected = _active_collector.get()
    if collected and output in collected:
        raise ValueError(
            f"output_{output}=True on a tomeplug-patched model: {WHY_NOT[output]}. Call without it, or unpatch "
            "(tomeplug.unpatch) for the dense model's."
        )


@cache
def recording(forward: Any) -> Any:
    """``forward`` under transformers' output capture, as the vision encoders' own forward runs."""
    from transformers.utils.output_capturing import capture_outputs

    return capture_outputs(tie_last_hidden_states=False)(forward)


def register_recording(encoder: nn.Module) -> None:
    """Let transformers record the outputs of ``encoder`` (a swapped class) as it records its original's: the
    registry of what a model records is keyed by class, and hooks are installed at the first recording call."""
    if is_swapped(encoder):
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

        _CAN_RECORD_REGISTRY[encoder] = encoder._can_record_outputs
