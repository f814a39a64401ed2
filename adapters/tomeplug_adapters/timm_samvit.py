"""timm's VisionTransformerSAM (samvit_base_patch16, ...): merging in the encoder's attention.

Like SAM's own encoder, blocks attend over windows (zero-padded at the grid's edge) or the whole grid,
with decomposed relative positions or rotary embeddings. The merging attention plans a merge per
attention call (the batch of windows is one batch of token groups), attends over the merged tokens with
the positional terms of each merged token's kept token, projects, and unmerges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, class_paths
from tomeplug.classswap import swap_class
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.setting import Setting
from tomeplug_adapters.sam_vit_attention import MergingSamAttention, rel_pos_bias
from tomeplug_adapters.timm_vit import attention_core


def merged_samvit_attention(
    attn: nn.Module, tokens: Tensor, plan: MergePlan, grid: tuple[int, int], prop_attn: bool
) -> Tensor:
    """timm SAM attention over merged tokens: (B', N, C) -> (B', N, C), projection before the unmerge."""
    merged = plan.merge(tokens)  # (B', M, C)

    def bias_fn(q: Tensor) -> Tensor | None:  # q: (B', heads, M, hd), after q_norm as upstream
        bias = rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, plan.kept, grid) if attn.use_rel_pos else None
        if prop_attn:
            log_size = log_size_bias(plan.size, q.dtype)  # (B', 1, 1, M)
            bias = log_size if bias is None else bias + log_size
        return bias

    rope = None
    if getattr(attn, "rope", None) is not None and not attn.use_rel_pos:
        table = attn.rope.get_embed()  # (N, 2 * hd)
        rope = plan.gather_kept(table.expand(merged.shape[0], -1, -1)).unsqueeze(1)  # (B', 1, M, 2 * hd)
    return plan.unmerge(attention_core(attn, merged, bias_fn, rope))


class MergingTimmSamAttention(MergingSamAttention):
    """Mixin over timm's SAM ``Attention``: merges each attention call's tokens per ``tomeplug_setting``."""

    merged_attention = staticmethod(merged_samvit_attention)


class TimmSamViTAdapter(Adapter):
    """timm's VisionTransformerSAM (samvit_base/large/huge_patch16)"""

    name = "timm_samvit"
    model_class = "timm.models.vision_transformer_sam.VisionTransformerSAM"
    attention_class = "timm.models.vision_transformer_sam.Attention"

    def matches(self, model: nn.Module) -> bool:
        """True for ``VisionTransformerSAM`` or any subclass of it (by class names)."""
        return self.model_class in class_paths(model)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The model's ``blocks``, windowed and global alike."""
        if not self.matches(model):
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(model.blocks)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention for the merging one."""
        block = model.blocks[index]
        attn = getattr(block, "attn", None)
        if attn is None or self.attention_class not in class_paths(attn):
            found = class_path(attn) if attn is not None else f"no 'attn' in {class_path(block)}"
            raise TypeError(f"{self.name} adapter supports {self.attention_class} only; found {found}")
        swap_class(attn, MergingTimmSamAttention)
        attn.tomeplug_setting = schedule[index]
