"""Bind network, gated LLaMA, KV cache, greedy generation and the visual cache against the
official outputs in golden/llama_adapter and golden/cache. Sizes come from the set's files."""

from __future__ import annotations

import json
import re

import pytest
import torch

from imagebind_llm.errors import CheckpointError
from imagebind_llm.fusion import fuse
from imagebind_llm.generation import GenerationConfig, generate, stream_text
from imagebind_llm.llama import KVCache
from imagebind_llm.prompts import format_prompt
from imagebind_llm.tokenizer import Tokenizer
from imagebind_llm.visual_cache import CacheConfig, VisualCache
from imagebind_llm.weights import build_language_model, project_to_adapter, read_adapter

from conftest import golden_err

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def adapter_dir(golden):
    return golden / "llama_adapter"


@pytest.fixture(scope="module")
def adapter_config(adapter_dir):
    return json.loads((adapter_dir / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def tokenizer(adapter_dir, adapter_config):
    return Tokenizer(adapter_dir / adapter_config["tokenizer"])


@pytest.fixture(scope="module")
def model(adapter_dir, adapter_config, tokenizer):
    return build_language_model(adapter_dir / adapter_config["llama_type_dir"], adapter_dir / "adapter.pth",
                                tokenizer_words=tokenizer.n_words)


def test_tokenizer_matches_the_set(tokenizer, adapter_config):
    assert tokenizer.n_words == adapter_config["vocab_size"]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
        adapter_config["bos_id"], adapter_config["eos_id"], adapter_config["pad_id"])


def test_structure_read_from_the_adapter(model, adapter_config):
    config = model.config
    assert config.adapter.query_layer == adapter_config["query_layer"]
    assert list(model.llama.injected_layers) == adapter_config["injected_layers"]
    assert config.adapter.lora_rank == adapter_config["lora_rank"]
    assert config.adapter.bind_hidden_mult * config.llama.dim == adapter_config["bind_hidden"]
    assert config.adapter.imagebind_dim == adapter_config["imagebind_out_dim"]


@pytest.mark.parametrize("adapter_file, key", [("adapter.pth", "bind_output"),
                                               ("adapter_legacy_bridge.pth", "legacy_bridge_output")])
def test_bind_network_both_variants(adapter_dir, adapter_config, tokenizer, adapter_file, key):
    model = build_language_model(adapter_dir / adapter_config["llama_type_dir"], adapter_dir / adapter_file,
                                 tokenizer_words=tokenizer.n_words)
    assert model.config.adapter.legacy_bridge == ("legacy" in adapter_file)
    expected = torch.load(adapter_dir / "bind_network.pt", weights_only=True)
    with torch.no_grad():
        assert golden_err(model.visual_query(expected["bind_input"][:, 0]), expected[key]) <= TOLERANCE


def test_bind_network_on_an_official_mix(adapter_dir, model):
    expected = torch.load(adapter_dir / "bind_network.pt", weights_only=True)
    weights = expected["mix_weights"]
    for row in range(len(expected["feats"])):
        mixed = fuse(torch.stack([expected["feats"][row], expected["mix_feats_audio"][row]]),
                     [weights["Image"], weights["Audio"]], mode="official")
        assert golden_err(mixed, expected["mix_bind_input"][row, 0]) <= TOLERANCE
        with torch.no_grad():
            assert golden_err(model.visual_query(mixed[None]), expected["mix_bind_output"][row:row + 1]) <= TOLERANCE


def test_forward_with_kv_cache(adapter_dir, model):
    expected = torch.load(adapter_dir / "forward_inference.pt", weights_only=True)
    tokens = expected["tokens"]
    cache = KVCache(model.config.llama, len(tokens), model.config.llama.max_seq_len, torch.float32, "cpu")
    with torch.no_grad():
        first = model(tokens, visual_query=expected["visual_query"], cache=cache, last_only=True)
        assert golden_err(first, expected["logits_start0"]) <= TOLERANCE
        following = model(expected["next_tokens"], visual_query=expected["visual_query"], cache=cache,
                          start=expected["start_pos_next"], last_only=True)
        assert golden_err(following, expected["logits_next"]) <= TOLERANCE
        # The injection matters: without the visual query the logits differ.
        plain = model(tokens, last_only=True)
        assert (plain - first).abs().max() > 1e-3


def test_greedy_generation_exact(adapter_dir, model, tokenizer):
    expected = torch.load(adapter_dir / "generate.pt", weights_only=True)
    config = GenerationConfig(max_new_tokens=expected["max_gen_len"], temperature=0.0)
    for case in expected["cases"]:
        prompts = [format_prompt(instruction, input) for instruction, input in case["instruction_input"]]
        assert prompts == case["prompts"]
        ids = [tokenizer.encode(p) for p in prompts]
        assert ids == case["prompt_token_ids"]
        out = generate(model, ids, config, visual_query=case["visual_query"], eos_id=tokenizer.eos_id)
        assert out == case["generated_token_ids"], case["name"]
        assert [tokenizer.decode(o) for o in out] == case["decoded"], case["name"]
        if len(ids) == 1:  # the stream joins to the same text
            deltas = list(stream_text(model, tokenizer, ids[0], config, visual_query=case["visual_query"]))
            assert "".join(deltas) == case["decoded"][0]


def test_visual_cache_matches_official(golden, model):
    expected = torch.load(golden / "cache" / "expected.pt", weights_only=True)
    cache = VisualCache.load(golden / "cache" / "knn.index")
    bank = torch.load(golden / "cache" / "bank_vectors.pt", weights_only=True)
    assert len(cache) == len(bank) and cache.dim == bank.shape[1]
    features = expected["query_features"]
    for result in expected["results"]:
        names = list(result["weights"])
        settings = CacheConfig(result["cache_size"], result["cache_t"], result["cache_weight"])
        queries = torch.stack([
            fuse(torch.stack([features[n][row] for n in names]), [result["weights"][n] for n in names], "official")
            for row in range(len(result["knn_query"]))])
        assert golden_err(queries, result["knn_query"]) <= TOLERANCE
        blended = cache.blend(queries, settings)  # the whole batch at once, blended per query
        assert torch.equal(blended.indices, result["indices"].long())
        assert golden_err(blended.similarities, result["sims"]) <= 1e-5
        assert golden_err(blended.enhanced, result["enhanced"]) <= TOLERANCE
        with torch.no_grad():
            assert golden_err(model.visual_query(blended.enhanced), result["visual_query"]) <= TOLERANCE


def test_visual_cache_off_matches_official(golden, model):
    expected = torch.load(golden / "cache" / "expected.pt", weights_only=True)
    for case, reference in expected["knn_off"].items():
        weights = expected["cases"][case]
        for row in range(len(reference["bind_input"])):
            feature = fuse(torch.stack([expected["query_features"][n][row] for n in weights]),
                           list(weights.values()), "official")
            assert golden_err(feature, reference["bind_input"][row]) <= TOLERANCE
            with torch.no_grad():
                assert golden_err(model.visual_query(feature[None]), reference["visual_query"][row:row + 1]) <= TOLERANCE


def test_adapter_saves_back_exactly(adapter_dir, model, tmp_path):
    original = read_adapter(adapter_dir / "adapter.pth")
    back = project_to_adapter(model)
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key].to(value.dtype), value), key


def test_wrong_base_is_named(adapter_dir, adapter_config, tokenizer, tmp_path):
    """A base whose width does not match the adapter fails with a message naming the mismatch."""
    from imagebind_llm.weights import read_llama, write_meta_llama
    from imagebind_llm.config import LlamaConfig

    config, state = read_llama(adapter_dir / adapter_config["llama_type_dir"])
    wider = LlamaConfig(dim=config.dim * 2, n_layers=config.n_layers, n_heads=config.n_heads,
                        vocab_size=config.vocab_size, multiple_of=config.multiple_of)
    from imagebind_llm.llama import Llama
    from imagebind_llm.config import AdapterConfig

    fake = Llama(wider, AdapterConfig(bias_lora=False, query_layer=1, imagebind_dim=8)).state_dict()
    fake = {k: v for k, v in fake.items() if "gate" not in k}
    write_meta_llama(fake, wider, tmp_path / "base")
    with pytest.raises(CheckpointError, match="bind network outputs width"):
        build_language_model(tmp_path / "base", adapter_dir / "adapter.pth", tokenizer_words=tokenizer.n_words)
    with pytest.raises(CheckpointError, match=f"tokenizer has 32000 pieces but the LLaMA's vocabulary is {tokenizer.n_words}"):
        build_language_model(adapter_dir / adapter_config["llama_type_dir"], adapter_dir / "adapter.pth",
                             tokenizer_words=32000)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_generation_runs_and_mostly_agrees(adapter_dir, adapter_config, tokenizer, dtype):
    """The gated LLaMA runs in bfloat16 and float16 (CPU here; the same code on CUDA)."""
    half = build_language_model(adapter_dir / adapter_config["llama_type_dir"], adapter_dir / "adapter.pth",
                                tokenizer_words=tokenizer.n_words, dtype=dtype)
    expected = torch.load(adapter_dir / "forward_inference.pt", weights_only=True)
    with torch.no_grad():
        logits = half(expected["tokens"], visual_query=expected["visual_query"].to(dtype), last_only=True)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    agree = (logits.argmax(-1) == expected["logits_start0"].argmax(-1)).float().mean()
    assert agree == 1.0
    assert golden_err(logits, expected["logits_start0"]) < 5e-2


def test_injections_project_plainly_laid_out_rows(model):
    """Each injected layer's row of the adapter tokens reaches wv as a tensor of its own: a view
    keeps the stride of every row, for which PyTorch's CPU bfloat16 linear is about 50x slower."""
    seen = []
    hooks = [layer.attention.wv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
             for layer in model.llama.layers]
    try:
        adapters = torch.randn(2, len(model.llama.injected_layers), model.config.llama.dim)
        with torch.inference_mode():
            injections = model.llama.injections(adapters)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == len(model.llama.injected_layers)
    for x in seen:
        assert x.shape == (2, 1, model.config.llama.dim) and x.stride() == torch.empty(x.shape).stride()
    first = model.llama.injected_layers[0]
    attention = model.llama.layers[first].attention
    expected = attention.gate.tanh() * attention.wv(adapters[:, :1]).unflatten(-1, (attention.n_heads, -1)).transpose(1, 2)
    torch.testing.assert_close(injections[first], expected)


def test_a_feature_of_the_wrong_shape_is_named(model):
    width = model.config.adapter.imagebind_dim
    for wrong in (torch.zeros(1, width + 1), torch.zeros(width), torch.zeros(1, 1, width)):
        with pytest.raises(ValueError, match=re.escape(f"must be (B, {width}), got {tuple(wrong.shape)}")):
            model.visual_query(wrong)
