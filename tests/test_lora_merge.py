"""LoRA merged into the frozen weights for inference (Llama.merge_lora_, Pipeline.merge_lora),
on the golden adapter, whose LoRA updates are non-zero: the same logits and tokens with one
matrix product per projection, wv's update kept for the injection, quantised layers untouched."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from imagebind_llm.generation import GenerationConfig, generate
from imagebind_llm.quantize import Int8Linear
from imagebind_llm.weights import build_language_model, project_to_adapter


@pytest.fixture(scope="module")
def adapter_dir(golden):
    return golden / "llama_adapter"


def build(adapter_dir, **kwargs):
    base = adapter_dir / json.loads((adapter_dir / "adapter_config.json").read_text())["llama_type_dir"]
    return build_language_model(base, adapter_dir / "adapter.pth", **kwargs)


def inputs(model, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.config.llama.vocab_size, (batch, 9), generator=generator)
    feature = torch.nn.functional.normalize(
        torch.randn(batch, model.config.adapter.imagebind_dim, generator=generator), dim=-1)
    return tokens, feature


def remaining_lora(model) -> set[str]:
    names = set()
    for layer in model.llama.layers:
        for block in (layer.attention, layer.feed_forward):
            names |= set(block.lora or {})
    return names


def test_merged_model_gives_the_same_logits_and_tokens(adapter_dir):
    model, merged = build(adapter_dir), build(adapter_dir)
    assert merged.llama.merge_lora_() == 6 * model.config.llama.n_layers  # wq wk wo w1 w2 w3
    assert remaining_lora(merged) == {"wv"} and merged.llama.lora_merged
    tokens, feature = inputs(model)
    with torch.inference_mode():
        expected = model(tokens, feature)
        got = merged(tokens, feature)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    # the injection reads the base wv alone: without wv's update kept apart it would change
    with torch.inference_mode():
        assert (model(tokens, feature) - model(tokens, None)).abs().max() > 1e-2
    config = GenerationConfig(max_new_tokens=8, temperature=0.0)
    prompts = [[1, 5, 7, 9], [1, 11, 4]]
    query = model.visual_query(feature)
    assert generate(merged, prompts, config, visual_query=query, eos_id=None) == \
        generate(model, prompts, config, visual_query=query, eos_id=None)


def test_merge_writes_new_tensors_and_twice_is_nothing(adapter_dir):
    model = build(adapter_dir)
    wq = model.llama.layers[0].attention.wq.weight
    before = wq.detach().clone()
    model.llama.merge_lora_()
    assert torch.equal(wq, before)  # the source (maybe a memory-mapped checkpoint) is not written to
    assert model.llama.layers[0].attention.wq.weight is not wq
    assert model.llama.merge_lora_() == 0


def test_bfloat16_merge_is_close(adapter_dir):
    model, merged = build(adapter_dir, dtype=torch.bfloat16), build(adapter_dir, dtype=torch.bfloat16)
    merged.llama.merge_lora_()
    assert merged.llama.layers[0].attention.wq.weight.dtype == torch.bfloat16
    tokens, feature = inputs(model)
    with torch.inference_mode():
        expected, got = model(tokens, feature).float(), merged(tokens, feature).float()
    assert float((got - expected).norm() / expected.norm()) < 2e-2


def test_quantized_projections_keep_their_lora(adapter_dir):
    model = build(adapter_dir, quantize="int8")
    assert isinstance(model.llama.layers[0].attention.wq, Int8Linear)
    assert model.llama.merge_lora_() == 0
    assert remaining_lora(model) == {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}


def test_a_merged_model_cannot_be_saved_as_an_adapter(adapter_dir):
    model = build(adapter_dir)
    assert project_to_adapter(model)  # before: fine
    model.llama.merge_lora_()
    with pytest.raises(ValueError, match="merged into its weights"):
        project_to_adapter(model)


def test_pipelines_are_merged(adapter_dir):
    from imagebind_llm.presets import load_preset_pipeline

    pipeline = load_preset_pipeline("tiny-untrained")
    assert pipeline.model.llama.lora_merged and remaining_lora(pipeline.model) == {"wv"}
    assert type(pipeline.model.llama.layers[0].feed_forward.w1) is nn.Linear
    kept = load_preset_pipeline("tiny-untrained", merge_lora=False)  # e.g. to save or train the adapter
    assert not kept.model.llama.lora_merged and len(remaining_lora(kept.model)) == 7
    assert project_to_adapter(kept.model)
