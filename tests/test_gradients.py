"""Gradients through every merged path: float64 gradcheck, parameters against finite differences, training.

Every adapter x scope it supports runs a patched tiny official model. A plan is discrete (made under
no_grad), so the merged model is differentiable wherever its plans stay put: every evaluation here records
its plans and asserts they equal the unperturbed ones, so a finite difference never straddles a plan flip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import pytest
import torch
import torch.nn.functional as F
from scope_helpers import IdentityConfig
from tiny_models import deep_encoder, tiny_hiera, tiny_sam, tiny_samvit, tiny_vit
from torch import Tensor, nn

import tomeplug
from tomeplug.adapter import Adapter
from tomeplug.plan import MergePlan
from tomeplug_adapters.sam2_hiera import Sam2HieraAdapter
from tomeplug_adapters.sam_vit import HQSamViTAdapter, SamViTAdapter
from tomeplug_adapters.timm_samvit import TimmSamViTAdapter
from tomeplug_adapters.timm_vit import TimmViTAdapter
from tomeplug_strategies.tome import ToMeConfig


@attrs.frozen(kw_only=True)
class SteadyToMe(ToMeConfig):
    """ToMe whose :meth:`steady` runs a forward and asserts it made the plans of the first such forward."""

    plans: list = attrs.field(factory=list, eq=False, repr=False)  # this forward's assignments
    reference: list = attrs.field(factory=list, eq=False, repr=False)  # the first forward's

    def plan(self, metric: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> MergePlan:
        plan = ToMeConfig.plan(self, metric, grid, valid)
        self.plans.append(plan.assignment.clone())
        return plan

    def steady(self, forward: Callable[[], Any]) -> Any:
        """``forward()``, checking that its plans are the first call's (a perturbation flipped none)."""
        self.plans.clear()
        out = forward()
        if not self.reference:
            assert self.plans, "the patched model merged nothing"
            self.reference.extend(self.plans)
        assert len(self.plans) == len(self.reference)
        for plan, reference in zip(self.plans, self.reference, strict=True):
            assert torch.equal(plan, reference), "a perturbation changed a plan: perturb less or pick another seed"
        return out


class Case(NamedTuple):
    """A tiny model of one adapter, its input size, and the parameters checked against finite differences."""

    adapter: type[Adapter]
    build: Callable[[], nn.Module]
    image_size: int
    checked: tuple[str, ...]


def names_in(blocks: tuple[int, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """Parameter names ``blocks.{b}.{name}``."""
    return tuple(f"blocks.{b}.{name}" for b in blocks for name in names)


SAM_CHECKED = ("attn.rel_pos_h", "attn.rel_pos_w", "attn.qkv.weight", "mlp.lin1.weight")
CASES = {
    # deep_encoder: windowed blocks 0, 1, 3, 4 (5x5 windows padded over the 8x8 grid), global 2 and 5
    "sam_vit": Case(SamViTAdapter, lambda: deep_encoder(img_size=128), 128, names_in((0, 1, 2), SAM_CHECKED)),
    "hq_sam_vit": Case(
        HQSamViTAdapter, lambda: deep_encoder("segment_anything_hq", 128), 128, names_in((1, 5), SAM_CHECKED)
    ),
    # tiny_hiera: windowed 1, padded windowed 7, q-pooling 2, global 8
    "sam2_hiera": Case(
        Sam2HieraAdapter, tiny_hiera, 128, names_in((1, 2, 7, 8), ("attn.qkv.weight", "mlp.layers.0.weight"))
    ),
    "timm_vit": Case(TimmViTAdapter, tiny_vit, 64, names_in((1,), ("attn.qkv.weight", "mlp.fc1.weight"))),
    # tiny_samvit: 3x3 windows padded over the 8x8 grid in block 0, global block 1
    "timm_samvit": Case(
        TimmSamViTAdapter, tiny_samvit, 64, names_in((0, 1), ("attn.rel_pos_h", "attn.rel_pos_w", "attn.qkv.weight"))
    ),
    "timm_samvit_rope": Case(
        TimmSamViTAdapter, lambda: tiny_samvit(rope=True), 64, names_in((0, 1), ("attn.qkv.weight", "mlp.fc1.weight"))
    ),
}
PAIRS = [(case, scope) for case in CASES for scope in CASES[case].adapter.scopes]  # every scope each supports


def outputs(model: nn.Module, image: Tensor) -> list[Tensor]:
    """The model's output tensors (HQ-SAM adds its intermediate embeddings, Hiera returns every stage)."""
    out = model(image)
    if isinstance(out, Tensor):
        return [out]
    return [t for item in out for t in (item if isinstance(item, list) else [item])]


def weights_like(tensors: list[Tensor], seed: int = 3) -> list[Tensor]:
    """Fixed random weights that turn outputs into a scalar loss touching every output value."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=generator, dtype=t.dtype) / t.numel() for t in tensors]


def weighted_sum(tensors: list[Tensor], weights: list[Tensor]) -> Tensor:
    """The scalar sum of ``tensors`` weighted elementwise by ``weights``."""
    return sum((t * w).sum() for t, w in zip(tensors, weights, strict=True))


class Probe:
    """A patched float64 model's scalar loss that asserts every call makes the plans of the first call."""

    def __init__(self, case: str, scope: str) -> None:
        _, build, size, self.checked = CASES[case]
        self.model = build().double()
        self.config = SteadyToMe(r=0.5)
        tomeplug.patch(self.model, self.config, prop_attn=True, scope=scope)
        self.image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        self.weights: list[Tensor] | None = None

    def outputs(self, image: Tensor) -> list[Tensor]:
        """The outputs at ``image``, after checking the merge made the first call's plans."""
        return self.config.steady(lambda: outputs(self.model, image))

    def loss(self) -> Tensor:
        """Sum of the outputs weighted by fixed random weights."""
        out = self.outputs(self.image)
        if self.weights is None:
            self.weights = weights_like(out)
        return weighted_sum(out, self.weights)


def directions(p: Tensor, count: int, seed: int) -> list[Tensor]:
    """``count`` unit directions in a parameter's space: random ones, then single entries at random places."""
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    picks = [random / random.norm()]
    for index in torch.randint(p.numel(), (count - 1,), generator=generator).tolist():
        unit = torch.zeros(p.numel(), dtype=p.dtype)
        unit[index] = 1.0
        picks.append(unit.reshape(p.shape))
    return picks


def central_difference(loss: Callable[[], Tensor], step: dict[nn.Parameter, Tensor], eps: float) -> float:
    """(L(p + eps d) - L(p - eps d)) / (2 eps), every parameter p moved along its d; restored afterwards."""
    original = {p: p.detach().clone() for p in step}
    values = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, direction in step.items():
                p.copy_(original[p] + sign * eps * direction)
            values.append(loss().item())
        for p, value in original.items():
            p.copy_(value)
    return (values[0] - values[1]) / (2 * eps)


def directional_grad(step: dict[nn.Parameter, Tensor]) -> float:
    """Autograd's derivative along ``step``: the sum over parameters of grad . direction."""
    return sum((p.grad * direction).sum() for p, direction in step.items() if p.grad is not None).item()


def assert_grads_match_finite_differences(model: nn.Module, loss: Callable[[], Tensor], names, count: int = 3):
    """Autograd's gradient of each named parameter, along random and single-entry directions, equals
    central finite differences."""
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    loss().backward()
    for seed, name in enumerate(names):
        p = params[name]
        assert p.grad is not None, f"{name} got no gradient"
        for direction in directions(p, count, seed):
            expected, actual = central_difference(loss, {p: direction}, 1e-4), directional_grad({p: direction})
            assert actual == pytest.approx(expected, rel=1e-5, abs=1e-10), f"{name}: {actual} vs {expected}"


@pytest.mark.parametrize(("case", "scope"), PAIRS)
def test_gradcheck_through_the_merged_encoder(case, scope):
    """float64 gradcheck of the outputs with respect to the input image, in a few random directions of
    the image and of the outputs (the full Jacobian would take an evaluation per pixel)."""
    probe = Probe(case, scope)
    generator = torch.Generator().manual_seed(5)
    basis = torch.randn(4, *probe.image.shape[1:], generator=generator, dtype=torch.float64)  # image directions
    readouts = [weights_like(probe.outputs(probe.image), seed) for seed in range(3)]  # output directions

    def projected(z: Tensor) -> Tensor:
        """(4,) image coordinates -> (3,) weighted sums of the outputs at ``image + z . basis``."""
        out = probe.outputs(probe.image + torch.einsum("k,kchw->chw", z, basis))
        return torch.stack([weighted_sum(out, weights) for weights in readouts])

    z = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(projected, (z,), eps=1e-6, atol=1e-9, rtol=1e-5)


@pytest.mark.parametrize(("case", "scope"), PAIRS)
def test_parameter_grads_equal_finite_differences(case, scope):
    probe = Probe(case, scope)
    assert_grads_match_finite_differences(probe.model, probe.loss, probe.checked)


def train_grads(model: nn.Module, image: Tensor) -> dict[str, Tensor]:
    """Every parameter's gradient (None where it gets none) after a train-mode forward and backward."""
    model.train().zero_grad(set_to_none=True)
    out = outputs(model, image)
    weighted_sum(out, weights_like(out)).backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize(("case", "scope"), PAIRS)
def test_train_mode_backward(case, scope):
    """Patched, every parameter upstream trains gets a finite gradient; with a plan that merges nothing
    the merged path's gradients are upstream's."""
    _, build, size, _ = CASES[case]
    model = build()
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    reference = train_grads(model, image)
    trained = {name for name, grad in reference.items() if grad is not None}
    assert trained
    with tomeplug.patch(model, "tome", r=0.5, scope=scope, prop_attn=True):
        merged = train_grads(model, image)
    for name in trained:
        assert merged[name] is not None, f"{name} gets no gradient when merged"
        assert torch.isfinite(merged[name]).all(), name
    assert any(not torch.equal(merged[name], reference[name]) for name in trained), "nothing merged"
    with tomeplug.patch(model, IdentityConfig(r=0.5), scope=scope):
        identity = train_grads(model, image)
    for name in trained:
        assert identity[name] is not None, f"{name} gets no gradient on the merged path"
        scale = reference[name].abs().max().item()  # float32: entries far below the largest are noise
        torch.testing.assert_close(identity[name], reference[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_patched_tiny_sam_trains_one_step():
    """One SGD step of a patched tiny SAM (image encoder and mask decoder trained, prompt encoder frozen)
    on a box prompt: its gradients equal finite differences, the step moves every trained parameter by
    -lr * grad, and the loss drops."""
    sam = tiny_sam(img_size=128).double().train()
    # upstream's prompt encoder casts coordinates to float32: keep it float32, frozen, and cast its output
    sam.prompt_encoder.float().requires_grad_(False)
    box = torch.tensor([[[20.0, 30.0, 90.0, 100.0]]])
    sparse, dense = (t.double() for t in sam.prompt_encoder(points=None, boxes=box, masks=None))
    image_pe = sam.prompt_encoder.get_dense_pe().double()
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.zeros(1, 1, 32, 32, dtype=torch.float64)  # the low-resolution mask
    target[..., 8:25, 5:22] = 1.0
    config = SteadyToMe(r=0.5)

    def loss() -> Tensor:
        masks, _ = sam.mask_decoder(
            image_embeddings=config.steady(lambda: sam.image_encoder(image)),
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return F.binary_cross_entropy_with_logits(masks, target)

    names = tuple(f"image_encoder.{name}" for name in names_in((0, 1), SAM_CHECKED))
    names += ("mask_decoder.output_upscaling.0.weight", "mask_decoder.iou_token.weight")
    tomeplug.patch(sam, config, prop_attn=True)
    assert_grads_match_finite_differences(sam, loss, names)
    params = {name: p for name, p in sam.named_parameters() if p.requires_grad}
    assert all(params[name].grad is not None for name in params if name.startswith("image_encoder."))
    # the gradient as a whole, along one random direction in the space of every trained parameter
    generator = torch.Generator().manual_seed(4)
    step = {p: torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params.values()}
    assert directional_grad(step) == pytest.approx(central_difference(loss, step, 1e-6), rel=1e-5)

    before, lr = loss().item(), 1e-3
    expected = {
        name: p.detach() - lr * p.grad if p.grad is not None else p.detach().clone() for name, p in params.items()
    }
    torch.optim.SGD(params.values(), lr=lr).step()
    for name, p in params.items():
        torch.testing.assert_close(p.detach(), expected[name], msg=name)
    assert loss().item() < before
