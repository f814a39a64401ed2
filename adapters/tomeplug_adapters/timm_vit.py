"""timm's VisionTransformer: merging the patch tokens in every selected block's attention.

Each block attends once over the whole sequence: the prefix tokens (class and register tokens) and the
patch grid. The merging attention plans a merge of the patch tokens only, attends over the prefix tokens
and the merged patch tokens, projects, and unmerges; prefix tokens are never merged. ``attention_core``
(timm's qkv, q/k norm, fused or manual softmax, projection) is shared with the timm SAM ViT adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tomeplug.adapter import Adapter, class_path, class_paths
from tomeplug.classswap import swap_class
from tomeplug.metric import plan_merge
from tomeplug.plan import MergePlan, log_size_bias
from tomeplug.setting import Setting

BiasFn = Callable[[Tensor], Tensor | None]


def attention_core(attn: nn.Module, x: Tensor, bias_fn: BiasFn | None = None, rope: Tensor | None = None) -> Tensor:
    """timm's attention on already merged tokens: (B', M, C) -> (B', M, C_out), projection included.

    Args:
        attn: a timm ``Attention`` (ViT or SAM ViT): its qkv, q/k norms, ``fused_attn``, dropouts, projection.
        x: (B', M, C) the tokens the attention sees.
        bias_fn: maps the normalised queries (B', heads, M, hd) to an additive (B', heads or 1, M, M) bias.
        rope: (B', 1, M, 2 * hd) rotary sin/cos embeddings of the tokens, applied to queries and keys.
    """
    b, m, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None  # (B', M, heads * hd)
    q, k, v = attn.qkv(x).reshape(b, m, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B', heads, M, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = bias_fn(q) if bias_fn is not None else None
    if rope is not None:
        from timm.layers import apply_rot_embed_cat

        q, k = apply_rot_embed_cat(q, rope).type_as(v), apply_rot_embed_cat(k, rope).type_as(v)
    if attn.fused_attn:
        dropout = attn.attn_drop.p if attn.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)  # (B', heads, M, hd)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B', heads, M, M)
        out = attn.attn_drop((logits if bias is None else logits + bias).softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(b, m, -1)  # (B', M, heads * hd)
    out = getattr(attn, "norm", nn.Identity())(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))  # per-token: exact before the unmerge


def merged_vit_attention(attn: nn.Module, x: Tensor, plan: MergePlan, prefix: int, prop_attn: bool) -> Tensor:
    """Attention with the patch tokens merged: (B, k + N, C) -> (B, k + N, C_out); the k prefix tokens pass through."""
    merged = torch.cat([x[:, :prefix], plan.merge(x[:, prefix:])], dim=1)  # (B, k + M, C)
    size = F.pad(plan.size, (prefix, 0), value=1.0)  # (B, k + M): prefix tokens have size 1

    def bias_fn(q: Tensor) -> Tensor:
        return log_size_bias(size, q.dtype)

    out = attention_core(attn, merged, bias_fn if prop_attn else None)  # (B, k + M, C_out)
    return torch.cat([out[:, :prefix], plan.unmerge(out[:, prefix:])], dim=1)


@attrs.frozen
class TokenLayout:
    """Where the patch tokens sit in a timm ViT's sequence: ``prefix`` tokens first, then an (h, w) grid."""

    prefix: int
    grid: tuple[int, int]

    def grid_for(self, n: int) -> tuple[int, int]:
        """The (h, w) layout of n patch tokens: the patch grid, or a square one (dynamic image sizes)."""
        h, w = self.grid
        if h * w == n:
            return self.grid
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{n} patch tokens fit neither the {h}x{w} patch grid nor a square one; "
                "token merging in timm ViTs needs the model's patch grid or a square input"
            )
        return side, side


class MergingTimmAttention(nn.Module):
    """Mixin over timm's ``Attention``: merges the patch tokens per ``tomeplug_setting``, never the prefix."""

    tomeplug_setting: Setting
    tomeplug_layout: TokenLayout

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        setting, prefix = self.tomeplug_setting, self.tomeplug_layout.prefix
        b, n, c = x.shape  # n = k prefix + N patch tokens
        if setting.num_to_merge(n - prefix) == 0:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError("token merging does not support attn_mask or is_causal in timm ViT attention")
        grid = self.tomeplug_layout.grid_for(n - prefix)
        plan = plan_merge(setting, x[:, prefix:], self.qkv, self.num_heads, grid)
        return merged_vit_attention(self, x, plan, prefix, setting.prop_attn)


class TimmViTAdapter(Adapter):
    """timm's VisionTransformer and its subclasses (ViT, DeiT, ...; class and register tokens kept)"""

    name = "timm_vit"
    model_classes = frozenset({"timm.models.vision_transformer.VisionTransformer"})
    attention_classes = frozenset({"timm.layers.attention.Attention"})

    def matches(self, model: nn.Module) -> bool:
        """True for ``VisionTransformer`` or any subclass of it (by class names)."""
        return bool(class_paths(model) & self.model_classes)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The model's ``blocks``."""
        if not self.matches(model):
            raise TypeError(f"{self.name} adapter cannot handle {class_path(model)}")
        return list(model.blocks)

    def patch_block(self, model: nn.Module, index: int, schedule: Mapping[int, Setting]) -> None:
        """Swap the block's attention for the merging one, with the model's token layout."""
        block = model.blocks[index]
        attn = getattr(block, "attn", None)
        if attn is None or not class_paths(attn) & self.attention_classes:
            found = class_path(attn) if attn is not None else f"no 'attn' in {class_path(block)}"
            raise TypeError(
                f"{self.name} adapter supports blocks whose attention is one of {sorted(self.attention_classes)}; "
                f"found {found}"
            )
        swap_class(attn, MergingTimmAttention)
        attn.tomeplug_setting = schedule[index]
        attn.tomeplug_layout = TokenLayout(
            int(model.num_prefix_tokens), tuple(int(s) for s in model.patch_embed.grid_size)
        )
