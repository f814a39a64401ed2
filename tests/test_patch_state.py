"""Patch state is transactional: after any patch call the model is fully in the new state or exactly in the
previous one, and exactly one handle describes it (issue: nested models, half-way failures, conflicts)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_sam, tiny_sam2

import tomeplug
from tomeplug.classswap import swap_class
from tomeplug_adapters.sam2_memory_attention import Sam2MemoryAttentionAdapter
from tomeplug_adapters.sam_vit import SamViTAdapter


def classes(model):
    return [type(m) for m in model.modules()]


def encode(encoder, image):
    with torch.no_grad():
        return encoder(image)


@pytest.fixture
def image():
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def test_patching_the_whole_model_replaces_the_encoders_patch(image):
    sam = tiny_sam()
    dense, layout = encode(sam.image_encoder, image), classes(sam)
    first = tomeplug.patch(sam.image_encoder, "tome", layers=[0], r=0.3)
    second = tomeplug.patch(sam, "pitome", layers=[2], r=0.3)
    assert tomeplug.active_patch(sam) is second and tomeplug.active_patch(sam.image_encoder) is second
    assert type(sam.image_encoder.blocks[0].attn).__name__ == "Attention"  # the first patch is gone
    assert repr(first).startswith("<PatchHandle removed")
    merged = encode(sam.image_encoder, image)
    first.remove()  # a replaced handle undoes nothing
    assert torch.equal(encode(sam.image_encoder, image), merged) and tomeplug.active_patch(sam) is second
    second.remove()
    assert classes(sam) == layout and torch.equal(encode(sam.image_encoder, image), dense)
    assert tomeplug.active_patch(sam) is None and tomeplug.active_patch(sam.image_encoder) is None


def test_patching_the_encoder_replaces_the_whole_models_patch():
    sam = tiny_sam()
    layout = classes(sam)
    outer = tomeplug.patch(sam, "tome", layers=[0, 1], r=0.3)
    inner = tomeplug.patch(sam.image_encoder, "tome", layers=[3], r=0.3)
    assert tomeplug.active_patch(sam) is inner and sorted(inner.schedule) == [3]
    assert type(sam.image_encoder.blocks[0].attn).__name__ == "Attention"
    outer.remove()
    assert tomeplug.active_patch(sam.image_encoder) is inner  # the outer handle no longer owns anything
    assert tomeplug.unpatch(sam)  # unpatching the enclosing model removes the inner patch too
    assert classes(sam) == layout and tomeplug.active_patch(sam.image_encoder) is None


def test_hiera_trunk_then_sam2():
    sam2 = tiny_sam2()
    trunk = sam2.image_encoder.trunk
    first = tomeplug.patch(trunk, "tome", layers=[0], r=0.3, scope="span")
    second = tomeplug.patch(sam2, "tome", layers=[4], r=0.3)
    assert tomeplug.active_patch(trunk) is second and not hasattr(trunk, "tomeplug_runs")
    first.remove()
    assert tomeplug.active_patch(sam2) is second
    second.remove()
    assert tomeplug.active_patch(trunk) is None and type(trunk).__name__ == "Hiera"


class FailsAtBlock(SamViTAdapter):
    """Patches blocks until ``index`` == 2, then raises: a half-way failure."""

    name = "fails_at_block"

    def patch_block(self, model, index, schedule):
        if index == 2:
            raise RuntimeError("adapter broke at block 2")
        super().patch_block(model, index, schedule)


def test_a_half_way_failure_restores_the_previous_patch_of_an_enclosing_model(image):
    sam = tiny_sam()
    earlier = tomeplug.patch(sam, "tome", layers=[1], r=0.3)
    expected, layout = encode(sam.image_encoder, image), classes(sam)
    with pytest.raises(RuntimeError, match="adapter broke at block 2"):
        tomeplug.patch(sam.image_encoder, "tome", r=0.5, adapter=FailsAtBlock())
    assert classes(sam) == layout and tomeplug.active_patch(sam) is earlier
    assert torch.equal(encode(sam.image_encoder, image), expected)


def test_a_failure_with_no_previous_patch_leaves_the_model_unpatched(image):
    sam = tiny_sam()
    layout = classes(sam)
    with pytest.raises(RuntimeError, match="adapter broke"):
        tomeplug.patch(sam, "tome", r=0.5, scope="span", adapter=FailsAtBlock())
    assert classes(sam) == layout and tomeplug.active_patch(sam) is None
    assert not [n for m in sam.modules() for n in vars(m) if n.startswith("tomeplug_")]


def test_a_mapping_of_layers_with_a_strategy_is_an_error():
    sam = tiny_sam()
    with pytest.raises(
        TypeError, match="layers is a \\{block: strategy\\} mapping.*strategy='pitome' would be ignored"
    ):
        tomeplug.patch(sam, "pitome", layers={0: "tome"})
    assert tomeplug.active_patch(sam) is None


def test_handle_repr_is_short():
    sam = tiny_sam()
    handle = tomeplug.patch(sam, "tome", layers=[0, 2], r=0.3)
    assert repr(handle) == "<PatchHandle active: sam_vit on Sam, tome in blocks [0, 2]>"


class MemoryFailsAtLayer1(Sam2MemoryAttentionAdapter):
    """Patches memory-attention layers until index 1, then raises."""

    name = "memory_fails_at_layer_1"

    def patch_block(self, model, index, schedule):
        if index == 1:
            raise RuntimeError("adapter broke at layer 1")
        super().patch_block(model, index, schedule)


class Intruder(torch.nn.Module):
    """A mixin no encoder adapter uses."""


class MemoryTakesTheTrunk(Sam2MemoryAttentionAdapter):
    """A memory-attention adapter that (wrongly) also swaps the Hiera trunk, which the encoder patch holds."""

    name = "memory_takes_the_trunk"

    def patch_block(self, model, index, schedule):
        super().patch_block(model, index, schedule)
        swap_class(model.image_encoder.trunk, Intruder)


def test_a_failing_patch_of_one_target_keeps_both_targets_earlier_patches():
    sam2 = tiny_sam2(memory_layers=2)
    encoder = tomeplug.patch(sam2, "tome", r=0.3, scope="span")
    memory = tomeplug.patch(sam2, "tome", layers=[1], r=0.3, scope="block", target="memory_attention")
    layout = classes(sam2)
    state = {id(m): dict(vars(m)) for m in sam2.modules()}
    with pytest.raises(RuntimeError, match="adapter broke at layer 1"):
        tomeplug.patch(sam2, "tome", r=0.5, scope="span", adapter=MemoryFailsAtLayer1())
    assert classes(sam2) == layout and encoder.active and memory.active
    assert {id(m): dict(vars(m)) for m in sam2.modules()} == state
    holds = r"changed a sam2\.modeling\.backbones\.hieradet\.Hiera that the encoder patch \(sam2_hiera\) holds"
    with pytest.raises(RuntimeError, match=holds):
        tomeplug.patch(sam2, "tome", r=0.5, scope="block", adapter=MemoryTakesTheTrunk())
    assert classes(sam2) == layout and encoder.active and memory.active
    assert tomeplug.unpatch(sam2, target="memory_attention")
    assert (
        encoder.active
        and not memory.active
        and type(sam2.memory_attention.layers[1]).__name__ == ("MemoryAttentionLayer")
    )
