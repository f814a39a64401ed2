"""transformers' SAM and SAM-HQ adapters on tiny models built from transformers' own configs (random weights).

The merging is SAM ViT's: the same weights in segment_anything's ImageEncoderViT patched with ``sam_vit``
(``hq_sam_vit``) give the same merged outputs. The models' own processors drive whole-model forwards with
point and box prompts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_hf_sam import VISION, research_encoder, research_state, tiny_hf_sam, tiny_hf_sam_processor

import tomeplug
from tomeplug.testing import check_adapter

KINDS = {"sam": ("hf_sam_vit", "sam_vit"), "sam_hq": ("hf_sam_hq_vit", "hq_sam_vit")}
IMPLEMENTATIONS = ("eager", "sdpa")
SCOPES = ("attn", "block", "span")
GRID = VISION["image_size"] // VISION["patch_size"]


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def image() -> np.ndarray:
    """A 100 x 120 RGB image (the processor resizes and pads it to 128 x 128)."""
    return (np.random.default_rng(0).random((100, 120, 3)) * 255).astype(np.uint8)


PROMPTS = {"points": {"input_points": [[[30, 40], [70, 50]]]}, "boxes": {"input_boxes": [[[10, 20, 80, 90]]]}}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_adapters_match_their_models_by_class_name(registry, kind):
    name, research = KINDS[kind]
    model = tiny_hf_sam(kind)
    for part in (model, tiny_hf_sam(kind, "vision"), model.vision_encoder):
        assert registry.adapter_for(part).name == name
    other = tiny_hf_sam("sam_hq" if kind == "sam" else "sam")
    assert not registry.adapters[name].obj.matches(other)
    assert not registry.adapters[name].obj.matches(research_encoder(kind))
    assert registry.adapter_for(research_encoder(kind)).name == research


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_whole_model_conforms_with_either_attention(kind, implementation):
    """r = 0 bit-exact, merging changes the masks, unpatch bit-exact: every scope, eager and SDPA attention."""
    inputs = {"pixel_values": pixels(1), "input_points": torch.tensor([[[[40.0, 50.0]]]])}
    check_adapter(
        KINDS[kind][0], lambda: tiny_hf_sam(kind, attn_implementation=implementation), lambda: inputs,
        run=lambda model, x: model(**x),
    )  # fmt: skip


OPTIONS = {"default": {}, "options": {"metric": "keys", "prop_attn": True, "exclude_padding": True}}


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@torch.no_grad()
def test_same_merge_as_segment_anything(kind, implementation, scope, options):
    """The same weights in segment_anything's (HQ-SAM's) encoder patched with its research adapter: the same
    merged embeddings and, for SAM-HQ, the same unmerged (B, H, W, C) intermediate embeddings."""
    model = tiny_hf_sam(kind, "vision", implementation)
    reference = research_encoder(kind)
    reference.load_state_dict(research_state(model.vision_encoder))
    x = pixels()
    dense = model(x)
    expected = reference(x)
    torch.testing.assert_close(dense.last_hidden_state, expected[0] if kind == "sam_hq" else expected)
    schedule = {"layers": [0, 1, 2, 4], "r": 0.4, "scope": scope, **OPTIONS[options]}  # span (0, 1); 3, 5 dense
    with tomeplug.patch(model, "pitome", **schedule), tomeplug.patch(reference, "pitome", **schedule):
        merged, expected = model(x), reference(x)
    if kind == "sam_hq":
        expected, interm = expected
        assert [t.shape for t in merged.intermediate_embeddings] == [(2, GRID, GRID, VISION["hidden_size"])] * 2
        for got, want in zip(merged.intermediate_embeddings, interm, strict=True):
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(merged.last_hidden_state, expected)
    assert (merged.last_hidden_state - dense.last_hidden_state).abs().max() > 1e-2


def prompt_tensors(inputs: dict) -> dict:
    """The prompt tensors of processed ``inputs``."""
    return {k: v for k, v in inputs.items() if k.startswith("input_")}


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("kind", sorted(KINDS))
@torch.no_grad()
def test_processor_and_model_end_to_end(kind, prompt):
    """The model's own processor, a prompted forward and the processor's mask post-processing, patched."""
    processor, model = tiny_hf_sam_processor(kind), tiny_hf_sam(kind)
    inputs = processor(images=image(), return_tensors="pt", **PROMPTS[prompt])

    def masks() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(**inputs)
        full = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
        return out.pred_masks, full[0]

    dense, dense_full = masks()
    assert dense_full.shape[-2:] == (100, 120)
    with tomeplug.patch(model, "tome", r=0.0, scope="span"):
        assert torch.equal(masks()[0], dense)
    with tomeplug.patch(model, "tome", r=0.5, scope="span"):
        merged, merged_full = masks()
        embeddings = model.get_image_embeddings(inputs["pixel_values"])
        if kind == "sam_hq":  # (image embeddings, intermediate embeddings), both reusable by the forward
            assert [t.shape for t in embeddings[1]] == [(1, GRID, GRID, VISION["hidden_size"])] * 2
            interm = {"intermediate_embeddings": embeddings[1]}
            again = model(image_embeddings=embeddings[0], **interm, **prompt_tensors(inputs))
        else:
            again = model(image_embeddings=embeddings, **prompt_tensors(inputs))
    assert merged.shape == dense.shape and merged_full.shape == dense_full.shape
    assert merged.isfinite().all() and not torch.equal(merged, dense)
    torch.testing.assert_close(again.pred_masks, merged)
    assert torch.equal(masks()[0], dense)  # unpatched


@pytest.mark.parametrize("kind", sorted(KINDS))
@torch.no_grad()
def test_hidden_states_and_attentions(kind):
    """Per-layer hidden states are recorded in scopes attn and block; what merged layers cannot give raises."""
    model, x = tiny_hf_sam(kind, "vision", "eager"), pixels(1)
    dense = model(x, output_hidden_states=True, output_attentions=True)
    assert len(dense.hidden_states) == VISION["num_hidden_layers"] + 1 and len(dense.attentions) == 6
    for scope in ("attn", "block"):
        with tomeplug.patch(model, "tome", layers=[1, 3], r=0.4, scope=scope):
            merged = model(x, output_hidden_states=True)
            assert len(merged.hidden_states) == len(dense.hidden_states)
            assert torch.equal(merged.hidden_states[1], dense.hidden_states[1])  # layer 0 is dense
            assert not torch.allclose(merged.hidden_states[2], dense.hidden_states[2])  # layer 1 merges
            with pytest.raises(ValueError, match="output_attentions=True"):
                model(x, output_attentions=True)
    with tomeplug.patch(model, "tome", r=0.4, scope="span"):
        for flag in ("output_hidden_states", "output_attentions"):
            with pytest.raises(ValueError, match=f"{flag}=True"):
                model(x, **{flag: True})
        as_tuple = model(x, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(x).last_hidden_state)
    with tomeplug.patch(model, "tome", r=0.0, scope="span"):
        same = model(x, output_hidden_states=True, output_attentions=True)
        assert all(torch.equal(a, b) for a, b in zip(same.hidden_states, dense.hidden_states, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(same.attentions, dense.attentions, strict=True))


@torch.no_grad()
def test_outputs_first_requested_while_patched_still_work_unpatched():
    """transformers installs its recording hooks on first request, keyed by class name: a request made first
    while the encoder's class is swapped must leave every layer hooked for the unpatched model."""
    model, x = tiny_hf_sam("sam", "vision"), pixels(1)
    with tomeplug.patch(model, "tome", layers=[0, 1], r=0.4, scope="span"), pytest.raises(ValueError):
        model(x, output_hidden_states=True)
    recorded = model(x, output_hidden_states=True).hidden_states
    fresh = tiny_hf_sam("sam", "vision")(x, output_hidden_states=True).hidden_states
    assert len(recorded) == len(fresh) and all(torch.equal(a, b) for a, b in zip(recorded, fresh, strict=True))


def test_attention_dropout_in_training_raises():
    model = tiny_hf_sam("sam", "vision", "eager").train()
    for layer in model.vision_encoder.layers:
        layer.attn.dropout = 0.1
    for scope in SCOPES:
        with tomeplug.patch(model, "tome", r=0.4, scope=scope), pytest.raises(ValueError, match="attention_dropout"):
            model(pixels(1))


@torch.no_grad()
def test_patched_model_pickles(tmp_path):
    """A patched model saves and loads whole (its swapped classes resolve by name) and merges the same."""
    model = tiny_hf_sam("sam_hq")
    inputs = {"pixel_values": pixels(1), "input_boxes": torch.tensor([[[9.0, 9, 99, 99]]])}
    tomeplug.patch(model, "tome", r=0.4, scope="span")
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(loaded(**inputs).pred_masks, model(**inputs).pred_masks)
    tomeplug.unpatch(loaded)
    tomeplug.unpatch(model)
    assert torch.equal(loaded(**inputs).pred_masks, model(**inputs).pred_masks)
