"""SAM 2's memory attention at a steady state (a full memory bank): representative inputs and their FLOPs.

Once a video has run past ``num_maskmem`` frames, each frame's ``MemoryAttention`` call sees the frame's
N = (image_size / backbone_stride)^2 tokens (64 x 64 at 1024 px, width ``d_model``) and a memory of
``num_maskmem`` frames x N spatial tokens (width ``mem_dim``: the conditioning frame and the previous
``num_maskmem - 1``) followed by the object-pointer tokens: ``max_obj_ptrs_in_encoder`` pointers, each split
into ``hidden_dim / mem_dim`` tokens when ``mem_dim`` is narrower (``_prepare_memory_conditioned_features``).
:func:`steady_memory_inputs` builds such a call for one object (batch 1) and :func:`memory_attention_flops`
counts it with :func:`~tomeplug_eval.flops.count_flops` (SDPA counted), as currently patched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..flops import count_flops


class MemoryAttentionCall(nn.Module):
    """``memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)`` with the pointer count
    fixed, so the call takes tensors only (what a traced FLOP count needs)."""

    def __init__(self, memory_attention: nn.Module, num_obj_ptr_tokens: int) -> None:
        super().__init__()
        self.memory_attention, self.num_obj_ptr_tokens = memory_attention, num_obj_ptr_tokens

    def forward(self, curr: Tensor, memory: Tensor, curr_pos: Tensor, memory_pos: Tensor) -> Tensor:
        """The memory attention's output (N, B, C) for sequence-first inputs, as ``SAM2Base`` calls it."""
        return self.memory_attention(
            curr=curr,
            memory=memory,
            curr_pos=curr_pos,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=self.num_obj_ptr_tokens,
        )


def pointer_tokens(model: nn.Module) -> int:
    """The object-pointer tokens of a full memory bank: ``max_obj_ptrs_in_encoder`` pointers (0 without
    pointers in the encoder), each ``hidden_dim / mem_dim`` tokens when ``mem_dim < hidden_dim``."""
    if not model.use_obj_ptrs_in_encoder:
        return 0
    per_pointer = model.hidden_dim // model.mem_dim if model.mem_dim < model.hidden_dim else 1
    return model.max_obj_ptrs_in_encoder * per_pointer


def steady_memory_inputs(model: nn.Module, seed: int = 0) -> tuple[MemoryAttentionCall, tuple[Tensor, ...]]:
    """The memory attention of a ``SAM2Base`` (e.g. ``SAM2VideoPredictor``) as a tensor-only call, and random
    inputs of a steady-state frame (one object, ``num_maskmem`` memory frames, every pointer) on its device.

    The FLOPs of the call depend only on these shapes, not on the values.
    """
    side = int(model.image_size) // int(model.backbone_stride)
    n, width, mem_dim = side * side, int(model.memory_attention.d_model), int(model.mem_dim)
    pointers = pointer_tokens(model)
    memory_tokens = int(model.num_maskmem) * n + pointers
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)

    def sample(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    inputs = (
        sample(n, 1, width),
        sample(memory_tokens, 1, mem_dim),
        sample(n, 1, width),
        sample(memory_tokens, 1, mem_dim),
    )
    return MemoryAttentionCall(model.memory_attention, pointers), inputs


def memory_attention_flops(model: nn.Module) -> dict[str, Any]:
    """The FLOP report (``FlopReport.to_dict()``) of one steady-state memory-attention call of ``model`` as
    currently patched, with the shapes counted under ``"input"``."""
    call, inputs = steady_memory_inputs(model)
    with torch.no_grad():
        report = count_flops(call, inputs).to_dict()
    return {
        **report,
        "input": {
            "frame_tokens": inputs[0].shape[0],
            "memory_tokens": inputs[1].shape[0],
            "pointer_tokens": call.num_obj_ptr_tokens,
        },
    }
