"""Hugging Face transformers SAM 2: merging in the Hiera trunk (``Sam2HieraDetModel``).

transformers' ``Sam2Model`` and ``Sam2VideoModel`` hold a ``Sam2VisionModel`` whose ``backbone`` is a
``Sam2HieraDetModel``: a port of sam2's Hiera with other names. Its ``blocks`` are
``Sam2MultiScaleBlock`` (``layer_norm1``, ``attn``, ``layer_norm2``, ``mlp``, ``proj`` at channel changes,
no stochastic depth), each attending with a ``Sam2MultiScaleAttention`` (``qkv``, ``proj``,
``num_attention_heads``, ``query_stride``: a max pool of the queries at stage changes) through
transformers' attention functions for the config's ``_attn_implementation`` (``eager`` or ``sdpa``). The
merging math is sam2_hiera's, called here with transformers' names mapped onto it
(:mod:`tomeplug_adapters.sam2_hiera` describes the cases and the scopes):

- every patched block's attention gets :class:`Sam2AttentionNames` (``num_heads``, ``q_pool``, and
  ``attention_core``: transformers' attention for the current ``_attn_implementation``); scope ``attn``
  (and every stage transition, whose queries are pooled) swaps in :class:`MergingSam2Attention`;
- scopes ``block`` and ``span`` swap the block for :class:`MergingSam2Block` (the shared windowed block,
  its hooks mapped to ``layer_norm1`` / ``layer_norm2``). A span runs within one stage and one window
  size, never across a global block or a stage's end, as in sam2_hiera. The trunk's own ``forward`` is
  kept (its output dataclass, ``output_hidden_states`` and kwargs stay): the first block of a span runs
  the whole span on one plan and the span's later blocks pass its output through, so the hidden states
  recorded inside a span are the span's output.

The adapter matches ``Sam2HieraDetModel`` itself and any transformers model holding exactly one
(``Sam2Model``, ``Sam2VideoModel``, ``Sam2VisionModel``, a SAM 3 tracker configured with a SAM 2 vision
model). Proportional attention adds a ``log(size)`` bias, which only the ``eager`` and ``sdpa``
implementations take: with another (flash or flex attention) a forward with ``prop_attn`` raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, sole_module
from tomeplug.classswap import swap_class
from tomeplug.setting import Setting
from tomeplug_adapters.sam2_hiera import Sam2HieraAdapter
from tomeplug_adapters.sam2_hiera_attention import attend, merging_call
from tomeplug_adapters.sam2_hiera_scopes import MergingHieraBlock
from tomeplug_adapters.windowed_scopes import MergingWindowedBlock, run_merged, span_runs

__all__ = ["HFSam2HieraAdapter", "MergingSam2Attention", "MergingSam2Block", "Sam2AttentionNames", "hf_hiera"]

HIERA_DET = "transformers.models.sam2.modeling_sam2.Sam2HieraDetModel"
BIAS_IMPLEMENTATIONS = ("eager", "sdpa")  # transformers' attention functions that add a float mask to the logits


def hf_hiera(model: nn.Module) -> nn.Module | None:
    """The ``Sam2HieraDetModel`` of a transformers model (itself, or the one among its modules); else None.

    Raises:
        ValueError: the model holds more than one.
    """
    return sole_module(model, HIERA_DET, "transformers.")


def keeps_shape(block: nn.Module) -> bool:
    """Whether a ``Sam2MultiScaleBlock`` maps its input to the same grid and channels (no stage transition)."""
    return not block.query_stride and block.dim == block.dim_out


class Sam2AttentionNames(nn.Module):
    """Mixin over transformers' ``Sam2MultiScaleAttention``: the names sam2_hiera's math reads (its forward
    stays transformers')."""

    @property
    def num_heads(self) -> int:
        """The attention heads (``num_attention_heads``)."""
        return self.num_attention_heads

    @property
    def q_pool(self) -> Any:
        """The pooling of (B', C, h, w) queries at a stage change (``query_stride``), or None."""
        stride = self.query_stride
        return partial(F.max_pool2d, kernel_size=stride, stride=stride) if stride else None

    def attention_core(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """transformers' attention for the config's ``_attn_implementation``: (B', heads, N, hd) -> (B', Nq, heads, hd).

        Raises:
            ValueError: a ``log(size)`` bias (``prop_attn``) for an implementation that cannot add one.
        """
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.sam2.modeling_sam2 import eager_attention_forward

        implementation = self.config._attn_implementation
        if mask is not None and implementation not in BIAS_IMPLEMENTATIONS:
            raise ValueError(
                f"hf_sam2_hiera: prop_attn=True adds a log(size) bias to the attention logits, which "
                f"attn_implementation={implementation!r} cannot take; load the model with attn_implementation "
                f"'eager' or 'sdpa', or patch with prop_attn=False"
            )
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out, _ = interface(self, q, k, v, attention_mask=mask, is_causal=False, scaling=self.scale)
        return out  # (B', Nq, heads, hd)


class MergingSam2Attention(Sam2AttentionNames):
    """Mixin over ``Sam2MultiScaleAttention`` (scope ``attn``, and stage transitions in every scope)."""

    tomeplug_setting: Setting

    def forward(self, hidden_states: Tensor, **kwargs: Any) -> Tensor:
        out = merging_call(self, hidden_states)
        return super().forward(hidden_states, **kwargs) if out is None else out


class MergingSam2Block(MergingHieraBlock):
    """Mixin over ``Sam2MultiScaleBlock`` (scopes ``block`` and ``span``): attention and MLP on merged tokens.

    ``tomeplug_run``, on the blocks of a span of several: the span's blocks on its first, () on the others.
    """

    tomeplug_run: tuple[nn.Module, ...]

    def attention_norm(self, tokens: Tensor) -> Tensor:
        """``layer_norm1``."""
        return self.layer_norm1(tokens)

    def merged_attend(self, tokens: Tensor, context: Tensor | None) -> Tensor:
        """sam2_hiera's attention over merged tokens, through transformers' attention function."""
        return attend(self.attn, tokens, context, self.attn.attention_core)

    def merged_mlp(self, tokens: Tensor) -> Tensor:
        """``mlp(layer_norm2(tokens))``."""
        return self.mlp(self.layer_norm2(tokens))

    def residual(self, delta: Tensor) -> Tensor:
        """transformers' block has no stochastic depth."""
        return delta

    def forward(self, hidden_states: Tensor, **kwargs: Any) -> Tensor:
        if not self.merges(hidden_states):  # r = 0, and every block of a span alike: transformers' forward
            return super(MergingWindowedBlock, self).forward(hidden_states, **kwargs)
        run = getattr(self, "tomeplug_run", (self,))
        return run_merged(run, hidden_states) if run else hidden_states  # (): the span's first block ran it


class HFSam2HieraAdapter(Adapter):
    """transformers' Sam2Model, Sam2VideoModel, Sam2VisionModel or Sam2HieraDetModel (SAM 2 / 2.1 Hiera)"""

    name = "hf_sam2_hiera"
    scopes = ("attn", "block", "span")
    presets = Sam2HieraAdapter.presets  # the same trunks and block indices as sam2's

    def matches(self, model: nn.Module) -> bool:
        """True for a ``Sam2HieraDetModel``, or a transformers model holding exactly one."""
        try:
            return hf_hiera(model) is not None
        except ValueError:
            return False

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The trunk's ``blocks``: windowed, global and q-pooling alike (Hiera-L has 48)."""
        trunk = hf_hiera(model)
        if trunk is None:
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(trunk.blocks)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention (scope ``attn``, and stage transitions in every scope) or the block
        (its attention gets the names only); a block in a span of several learns the span."""
        trunk, setting = hf_hiera(model), schedule[index]
        block = trunk.blocks[index]
        whole_block = setting.scope != "attn" and keeps_shape(block)
        swap_class(block.attn, Sam2AttentionNames if whole_block else MergingSam2Attention)
        module = block if whole_block else block.attn
        if whole_block:
            swap_class(block, MergingSam2Block)
        module.tomeplug_setting = setting
        for run in span_runs(trunk.blocks, schedule, keeps_shape, frozenset(trunk.stage_ends)):
            if index in run and len(run) > 1:
                block.tomeplug_run = tuple(trunk.blocks[i] for i in run) if index == run[0] else ()
