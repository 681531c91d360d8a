"""Weights in both ecosystems: Meta and Hugging Face LLaMA folders (one or several shards),
official and Hugging Face-named adapters, the rotary q/k permutation, the transformers
tokenizer, the converter CLI and the base/adapter mismatch checks.

The parity tests run ``transformers.LlamaForCausalLM`` (eager attention, float32, CPU) on the
converted folder and compare its logits with the project's LLaMA. Every size is read from
the golden set's files (params.json, the tokenizer, the adapter)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import golden_err

from imagebind_llm.config import AdapterConfig, LlamaConfig
from imagebind_llm.convert import main, parse_size
from imagebind_llm.errors import CheckpointError
from imagebind_llm.llama import Llama
from imagebind_llm.tokenizer import Tokenizer, check_hf_tokenizer, load_hf_tokenizer, save_hf_tokenizer
from imagebind_llm.weights import (
    adapter_to_hf,
    build_language_model,
    hf_config_to_llama,
    read_adapter,
    read_hf_llama,
    read_llama,
    read_meta_llama,
    rotary_permute,
    rotary_unpermute,
    write_adapter,
    write_adapter_hf,
    write_hf_llama,
    write_meta_llama,
)

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
TRICKY_TEXTS = ["Hello world", " leading space", "  two  spaces  ", "a\n\nb\tc", "ünïcode 数字 123", " ", "end "]


# ---------------------------------------------------------------------------------------------
# fixtures: the golden tiny LLaMA, its tokenizer and the adapters
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_dir(golden):
    return golden / "llama_adapter"


@pytest.fixture(scope="module")
def adapter_config(adapter_dir):
    return json.loads((adapter_dir / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def base_dir(adapter_dir, adapter_config):
    return adapter_dir / adapter_config["llama_type_dir"]


@pytest.fixture(scope="module")
def tokenizer_file(adapter_dir, adapter_config):
    return adapter_dir / adapter_config["tokenizer"]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    return Tokenizer(tokenizer_file)


@pytest.fixture(scope="module")
def meta(base_dir):
    """(LlamaConfig, Meta-layout state) of the golden base, as stored (float16)."""
    return read_llama(base_dir)


@pytest.fixture(scope="module")
def hf_dir(base_dir, tmp_path_factory):
    """The golden base converted to a Hugging Face folder by the CLI."""
    out = tmp_path_factory.mktemp("hf") / "tiny-hf"
    assert main(["llama-meta-to-hf", str(base_dir), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def hf_adapter_file(adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_adapter") / "adapter.safetensors"
    assert main(["adapter-to-hf", str(adapter_dir / "adapter.pth"), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model(base_dir, adapter_dir, tokenizer):
    """The official adapter on the Meta base (float32): the reference of the adapter parity."""
    return build_language_model(base_dir, adapter_dir / "adapter.pth", tokenizer_words=tokenizer.n_words)


@pytest.fixture(scope="module")
def token_batches(adapter_dir):
    """Golden prompts (the forward batch and each generation case) plus a random sequence."""
    forward = torch.load(adapter_dir / "forward_inference.pt", weights_only=True)
    cases = torch.load(adapter_dir / "generate.pt", weights_only=True)["cases"]
    batches = [forward["tokens"]]
    batches += [torch.tensor([ids]) for case in cases for ids in case["prompt_token_ids"]]
    vocab = int(forward["logits_start0"].shape[-1])
    batches.append(torch.randint(0, vocab, (2, 23), generator=torch.Generator().manual_seed(0)))
    return batches


def assert_same_state(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def plain_llama(config: LlamaConfig, state) -> Llama:
    """The project's LLaMA without bias/LoRA (float32), gates at zero: plain LLaMA-1."""
    llama = Llama(config, AdapterConfig(bias_lora=False, query_layer=config.n_layers))
    missing, unexpected = llama.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("attention.gate") for k in missing)
    return llama.eval()


def hf_model(directory, **overrides):
    return transformers.LlamaForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager", **overrides).eval()


# ---------------------------------------------------------------------------------------------
# the rotary permutation
# ---------------------------------------------------------------------------------------------


def test_rotary_permute_moves_adjacent_pairs_to_halves(meta):
    config, _ = meta
    heads, head_dim = config.n_heads, config.head_dim
    rows = torch.arange(config.dim)
    permuted = rotary_permute(rows, heads)
    # Within each head: Meta's pairs (0,1),(2,3)... -> rotate_half's halves: evens first, then odds.
    for h in range(heads):
        block = permuted[h * head_dim:(h + 1) * head_dim] - h * head_dim
        assert block.tolist() == list(range(0, head_dim, 2)) + list(range(1, head_dim, 2))
    matrix = torch.randn(config.dim, 5)
    assert torch.equal(rotary_unpermute(rotary_permute(matrix, heads), heads), matrix)
    assert torch.equal(rotary_permute(matrix, heads)[:, 2], rotary_permute(matrix[:, 2], heads))  # rows only
    with pytest.raises(CheckpointError, match="heads of even width"):
        rotary_permute(torch.zeros(config.dim + 2), heads)


# ---------------------------------------------------------------------------------------------
# Meta format: model-parallel shards
# ---------------------------------------------------------------------------------------------

COLUMN_PARALLEL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                   "feed_forward.w1.weight", "feed_forward.w3.weight", "output.weight")
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")


def split_like_meta(state, parts: int) -> list[dict]:
    """Meta's model-parallel layout: column-parallel layers split their output rows (dim 0),
    row-parallel layers and the parallel embedding their columns (dim 1); norms and
    rope.freqs are replicated in every shard."""
    shards = [{} for _ in range(parts)]
    for key, value in state.items():
        if key.endswith(COLUMN_PARALLEL):
            pieces = value.chunk(parts, dim=0)
        elif key.endswith(ROW_PARALLEL):
            pieces = value.chunk(parts, dim=1)
        else:
            pieces = [value] * parts
        assert len(pieces) == parts, key
        for shard, piece in zip(shards, pieces):
            shard[key] = piece.clone()
    return shards


def write_shards(base_dir, target, parts: int):
    raw = torch.load(base_dir / "consolidated.00.pth", weights_only=True)  # with rope.freqs, as Meta ships
    target.mkdir()
    (target / "params.json").write_text((base_dir / "params.json").read_text())
    for i, shard in enumerate(split_like_meta(raw, parts)):
        torch.save(shard, target / f"consolidated.{i:02d}.pth")
    return raw


def test_meta_shards_merge_back_exactly(base_dir, meta, tmp_path):
    config, state = meta
    raw = write_shards(base_dir, tmp_path / "two", 2)
    assert "rope.freqs" in raw
    _, merged = read_meta_llama(tmp_path / "two")
    assert_same_state(merged, state)
    assert_same_state(merged, {k: v for k, v in raw.items() if k != "rope.freqs"})
    sharded_config, _ = read_llama(tmp_path / "two")
    assert sharded_config == config


def test_meta_shards_that_do_not_belong_together_are_refused(base_dir, tmp_path):
    write_shards(base_dir, tmp_path / "edited", 2)
    shard = torch.load(tmp_path / "edited" / "consolidated.01.pth", weights_only=True)
    shard["norm.weight"] = shard["norm.weight"] + 1
    torch.save(shard, tmp_path / "edited" / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="norm.weight is replicated"):
        read_meta_llama(tmp_path / "edited")

    write_shards(base_dir, tmp_path / "gap", 2)
    (tmp_path / "gap" / "consolidated.01.pth").rename(tmp_path / "gap" / "consolidated.02.pth")
    with pytest.raises(CheckpointError, match="numbered 0..1"):
        read_meta_llama(tmp_path / "gap")

    write_shards(base_dir, tmp_path / "keys", 2)
    shard = torch.load(tmp_path / "keys" / "consolidated.01.pth", weights_only=True)
    del shard["layers.0.ffn_norm.weight"]
    torch.save(shard, tmp_path / "keys" / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match="hold different tensors"):
        read_meta_llama(tmp_path / "keys")


def test_params_json_that_does_not_match_the_weights(base_dir, meta, tmp_path):
    config, state = meta
    params = json.loads((base_dir / "params.json").read_text())
    wrong_ffn = LlamaConfig.from_params(params | {"multiple_of": 8 * params["multiple_of"]}, config.vocab_size)
    assert wrong_ffn.hidden_dim != config.hidden_dim
    write_meta_llama(state, wrong_ffn, tmp_path / "wrong")
    with pytest.raises(CheckpointError, match=f"feed_forward.w1.weight is .* implies \\({wrong_ffn.hidden_dim},"):
        read_llama(tmp_path / "wrong")


# ---------------------------------------------------------------------------------------------
# Hugging Face format
# ---------------------------------------------------------------------------------------------


def test_hf_round_trip_single_file_and_shards(meta, tmp_path):
    config, state = meta
    write_hf_llama(state, config, tmp_path / "single")
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == ["config.json", "model.safetensors"]
    back_config, back = read_hf_llama(tmp_path / "single")
    assert back_config.hidden_dim == config.hidden_dim
    assert (back_config.dim, back_config.n_layers, back_config.n_heads, back_config.vocab_size, back_config.norm_eps) \
        == (config.dim, config.n_layers, config.n_heads, config.vocab_size, config.norm_eps)
    assert_same_state(back, state)

    total = sum(v.numel() * v.element_size() for v in state.values())
    write_hf_llama(state, config, tmp_path / "sharded", max_shard_bytes=total // 4)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 4 and all((tmp_path / "sharded" / f).is_file() for f in files)
    assert index["metadata"]["total_size"] == total
    _, back = read_llama(tmp_path / "sharded")
    assert_same_state(back, state)

    with pytest.raises(CheckpointError, match="already holds Hugging Face weights"):
        write_hf_llama(state, config, tmp_path / "single")


def test_transformers_runs_the_converted_base_like_the_project(meta, hf_dir, token_batches):
    """The real check of the q/k permutation: transformers' own rotary (rotate_half) on the
    written folder gives the logits of the project's Meta-layout LLaMA."""
    config, state = meta
    ours = plain_llama(config, state)
    theirs = hf_model(hf_dir)
    assert theirs.config.vocab_size == config.vocab_size and theirs.config.intermediate_size == config.hidden_dim
    worst = 0.0
    with torch.no_grad():
        for tokens in token_batches:
            expected = ours(tokens)
            got = theirs(input_ids=tokens).logits
            worst = max(worst, golden_err(got, expected))
        assert worst <= TOLERANCE, worst
        print(f"transformers vs project LLaMA logits: max err {worst:.2e}")
        # The check has teeth: the same weights without the permutation give other logits.
        for layer, meta_layer in zip(theirs.model.layers, range(config.n_layers)):
            layer.self_attn.q_proj.weight.copy_(state[f"layers.{meta_layer}.attention.wq.weight"].float())
            layer.self_attn.k_proj.weight.copy_(state[f"layers.{meta_layer}.attention.wk.weight"].float())
        tokens = token_batches[0]
        assert (theirs(input_ids=tokens).logits - ours(tokens)).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# the tokenizer through transformers
# ---------------------------------------------------------------------------------------------


def test_hf_tokenizer_has_the_sentencepiece_vocabulary(tokenizer_file, tokenizer, adapter_config, adapter_dir):
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file)).GetPieceSize()
    assert pieces == tokenizer.n_words == adapter_config["vocab_size"]
    hf = load_hf_tokenizer(tokenizer_file)
    assert len(hf) == pieces
    assert (hf.bos_token_id, hf.eos_token_id) == (tokenizer.bos_id, tokenizer.eos_id)
    for case in torch.load(adapter_dir / "generate.pt", weights_only=True)["cases"]:
        for prompt, ids in zip(case["prompts"], case["prompt_token_ids"]):
            assert hf(prompt)["input_ids"] == tokenizer.encode(prompt) == ids
    for text in TRICKY_TEXTS:  # SentencePiece's dummy prefix kept, even before a leading space
        ids = hf(text)["input_ids"]
        assert ids == tokenizer.encode(text), text
        assert hf.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids), text


def test_hf_tokenizer_folder_loads_with_auto_tokenizer(hf_dir, tokenizer, tmp_path):
    for folder in (hf_dir, save_hf_tokenizer(tokenizer.path, tmp_path / "tok")):
        auto = transformers.AutoTokenizer.from_pretrained(str(folder))
        assert len(auto) == tokenizer.n_words
        assert (folder / "tokenizer.model").read_bytes() == tokenizer.path.read_bytes()
        for text in TRICKY_TEXTS:
            assert auto(text)["input_ids"] == tokenizer.encode(text), text
        assert len(load_hf_tokenizer(folder)) == tokenizer.n_words


class NetworkUsed(BaseException):
    """Not an Exception: a retry loop that catches those cannot swallow it."""


def test_a_relative_tokenizer_path_is_read_from_disk_without_the_network(tokenizer_file, tokenizer, tmp_path,
                                                                         monkeypatch):
    """transformers reads a relative 'llama/tokenizer.model' as a hub repository id first: five
    retries (25 s offline, and requests to huggingface.co) before it looked at the disk."""
    import socket

    def no_network(*args, **kwargs):
        raise NetworkUsed(f"network used: {args[:2]}")

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert len(load_hf_tokenizer("llama/tokenizer.model")) == tokenizer.n_words
    assert len(load_hf_tokenizer("llama")) == tokenizer.n_words


def test_a_wrongly_built_hf_tokenizer_is_caught(tokenizer_file, tokenizer, tmp_path):
    wrong = transformers.LlamaTokenizer(vocab_file=str(tokenizer_file))  # the transformers 5 pitfall
    if len(wrong) == tokenizer.n_words:
        pytest.skip("this transformers version builds LlamaTokenizer(vocab_file=...) correctly")
    with pytest.raises(CheckpointError, match=f"{len(wrong)} pieces but the SentencePiece model has {tokenizer.n_words}"):
        check_hf_tokenizer(wrong, tokenizer)
    with pytest.raises(CheckpointError, match="built the wrong way"):
        check_hf_tokenizer(wrong, None)
    # A folder whose tokenizer.json is the broken one is refused too.
    folder = tmp_path / "broken"
    folder.mkdir()
    wrong.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (folder / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
    with pytest.raises(CheckpointError, match="pieces but the SentencePiece model has"):
        load_hf_tokenizer(folder)


# ---------------------------------------------------------------------------------------------
# adapters in both namings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adapter.pth", "adapter_legacy_bridge.pth"])
def test_adapter_round_trips_are_exact(adapter_dir, name, tmp_path):
    official = read_adapter(adapter_dir / name)
    write_adapter_hf(official, None, tmp_path / "a.safetensors")
    assert_same_state(read_adapter(tmp_path / "a.safetensors"), official)
    write_adapter(official, tmp_path / "a.pth")
    assert_same_state(read_adapter(tmp_path / "a.pth"), official)
    assert set(torch.load(tmp_path / "a.pth", weights_only=True)) == {"model"}


def test_adapter_permutation_touches_exactly_the_q_k_rows(adapter_dir, meta):
    """wq bias and the LoRA up factors (l2) of wq and wk carry q/k output features: permuted.
    Down factors (l1) act on the block input; wv/wo LoRA, gates, norms: nothing rotates."""
    config, _ = meta
    official = read_adapter(adapter_dir / "adapter.pth")
    hf = adapter_to_hf(official, config.n_heads)
    changed = set()
    for n in range(config.n_layers):
        src, dst = f"llama.layers.{n}.attention.", f"model.layers.{n}.self_attn."
        pairs = {"wq.bias": "q_proj.bias", "wo.bias": "o_proj.bias", "gate": "gate"}
        pairs |= {f"lora_w{w}_l{i}.weight": f"{w}_proj.lora_{ab}.weight"
                  for w in "qkvo" for i, ab in (("1", "A"), ("2", "B"))}
        for a, b in pairs.items():
            if not torch.equal(official[src + a], hf[dst + b]):
                changed.add(a)
                assert torch.equal(rotary_permute(official[src + a], config.n_heads), hf[dst + b])
    assert changed == {"wq.bias", "lora_wq_l2.weight", "lora_wk_l2.weight"}
    with pytest.raises(CheckpointError, match="gates have"):
        adapter_to_hf(official, config.n_heads * 2)


def apply_hf_adapter(theirs, adapter: dict, visual_query: torch.Tensor | None):
    """A Hugging Face-side ImageBind-LLM on transformers' LLaMA, using ONLY the Hugging
    Face-named adapter: biases set, LoRA merged (W + B A), norms replaced, and the gated
    injection tanh(gate) x v_proj(a) added per head to o_proj's input (the last
    ``len(prefix_query)`` layers; row i -> i-th of them). Returns the hook handles."""
    layers = theirs.model.layers
    prefix = adapter["prefix_query.weight"]
    first_injected = len(layers) - prefix.shape[0]
    handles = []
    with torch.no_grad():
        for n, layer in enumerate(layers):
            p = f"model.layers.{n}."
            v_base = layer.self_attn.v_proj.weight.clone()  # the injection uses the base wv only
            for module, name in [(layer.self_attn, f"{x}_proj") for x in "qkvo"] + \
                                [(layer.mlp, f"{x}_proj") for x in ("gate", "up", "down")]:
                linear = getattr(module, name)
                prefix_key = p + ("self_attn." if module is layer.self_attn else "mlp.") + name
                linear.weight += adapter[prefix_key + ".lora_B.weight"] @ adapter[prefix_key + ".lora_A.weight"]
                bias = adapter.get(prefix_key + ".bias")
                linear.bias.copy_(bias if bias is not None else torch.zeros_like(linear.bias))
            layer.input_layernorm.weight.copy_(adapter[p + "input_layernorm.weight"])
            layer.post_attention_layernorm.weight.copy_(adapter[p + "post_attention_layernorm.weight"])
            if visual_query is not None and n >= first_injected:
                a = visual_query + prefix[n - first_injected]  # (B, 1, dim)
                heads = adapter[p + "self_attn.gate"].shape[1]
                value = (a @ v_base.T).unflatten(-1, (heads, -1))  # (B, 1, H, D)
                gate = adapter[p + "self_attn.gate"].tanh().reshape(1, 1, heads, 1)
                injection = (gate * value).flatten(-2)

                def hook(module, args, injection=injection):
                    return (args[0] + injection,)

                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook))
        theirs.model.norm.weight.copy_(adapter["model.norm.weight"])
    return handles


def test_hf_adapter_on_hf_base_matches_official_on_meta_base(adapter_dir, hf_dir, hf_adapter_file, model,
                                                            token_batches):
    """The converted adapter (permuted wq bias and q/k LoRA up factors) on transformers' LLaMA
    loaded from the converted base gives the logits of the official adapter on the Meta base,
    with and without the visual injection."""
    from safetensors.torch import load_file

    adapter = {k: v.float() for k, v in load_file(str(hf_adapter_file)).items()}  # raw HF naming
    visual = torch.load(adapter_dir / "forward_inference.pt", weights_only=True)["visual_query"]  # (2, 1, dim)
    worst = {"no injection": 0.0, "with injection": 0.0}
    with torch.no_grad():
        for tokens in token_batches:
            for label, so_far in worst.items():
                vq = None if label == "no injection" else visual[:len(tokens)].expand(len(tokens), -1, -1)
                theirs = hf_model(hf_dir, attention_bias=True, mlp_bias=True)
                apply_hf_adapter(theirs, adapter, vq)
                err = golden_err(theirs(input_ids=tokens).logits, model(tokens, visual_query=vq))
                worst[label] = max(so_far, err)
    print("transformers + HF adapter vs official adapter on the Meta base: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert max(worst.values()) <= TOLERANCE, worst


def test_an_unpermuted_hf_adapter_would_be_caught(adapter_dir, hf_dir, hf_adapter_file, model, meta):
    """Negative control of the test above: leaving any one of the three q/k tensors in Meta's
    layout changes the transformers logits."""
    from safetensors.torch import load_file

    config, _ = meta
    good = {k: v.float() for k, v in load_file(str(hf_adapter_file)).items()}
    tokens = torch.load(adapter_dir / "forward_inference.pt", weights_only=True)["tokens"]
    with torch.no_grad():
        expected = model(tokens)
        for name in ("self_attn.q_proj.bias", "self_attn.q_proj.lora_B.weight", "self_attn.k_proj.lora_B.weight"):
            bad = dict(good)
            for n in range(config.n_layers):
                bad[f"model.layers.{n}.{name}"] = rotary_unpermute(good[f"model.layers.{n}.{name}"], config.n_heads)
            theirs = hf_model(hf_dir, attention_bias=True, mlp_bias=True)
            apply_hf_adapter(theirs, bad, None)
            assert (theirs(input_ids=tokens).logits - expected).abs().max() > 1e-4, name


def test_hf_base_and_hf_adapter_build_the_same_model(hf_dir, hf_adapter_file, model, tokenizer, token_batches):
    converted = build_language_model(hf_dir, hf_adapter_file, tokenizer_words=tokenizer.n_words)
    assert_same_state(converted.state_dict(), model.state_dict())


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_cli_llama_round_trip_is_exact(base_dir, meta, hf_dir, tokenizer_file, tmp_path):
    config, state = meta
    assert main(["llama-hf-to-meta", str(hf_dir), str(tmp_path / "meta")]) == 0
    back_config, back = read_llama(tmp_path / "meta")
    assert back_config.hidden_dim == config.hidden_dim
    assert (back_config.dim, back_config.n_layers, back_config.n_heads, back_config.vocab_size) == \
        (config.dim, config.n_layers, config.n_heads, config.vocab_size)
    assert_same_state(back, state)
    assert (tmp_path / "meta" / "tokenizer.model").read_bytes() == tokenizer_file.read_bytes()
    # Sharded output and a cast.
    total = sum(v.numel() * v.element_size() for v in state.values())
    assert main(["llama-meta-to-hf", str(base_dir), str(tmp_path / "hf32"), "--shard-size", str(total),
                 "--dtype", "float32"]) == 0
    assert (tmp_path / "hf32" / "model.safetensors.index.json").is_file()
    _, back32 = read_llama(tmp_path / "hf32")
    assert all(back32[k].dtype == torch.float32 and torch.equal(back32[k], v.float()) for k, v in state.items())


def test_cli_adapter_round_trip_is_exact(adapter_dir, hf_dir, hf_adapter_file, meta, tmp_path, capsys):
    config, _ = meta
    assert main(["adapter-from-hf", str(hf_adapter_file), str(tmp_path / "back.pth")]) == 0
    assert_same_state(read_adapter(tmp_path / "back.pth"), read_adapter(adapter_dir / "adapter.pth"))
    assert main(["adapter-to-hf", str(adapter_dir / "adapter.pth"), str(tmp_path / "b.safetensors"),
                 "--base", str(hf_dir)]) == 0
    assert main(["adapter-to-hf", str(adapter_dir / "adapter.pth"), str(tmp_path / "c.safetensors"),
                 "--n-heads", str(config.n_heads)]) == 0
    assert_same_state(read_adapter(tmp_path / "b.safetensors"), read_adapter(tmp_path / "c.safetensors"))
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["llama-meta-to-hf", "{adapter_dir}", "{tmp}/x"], "is not a Meta LLaMA folder"),
    (["llama-meta-to-hf", "{hf_dir}", "{tmp}/x"], "it is a Hugging Face folder already"),
    (["llama-hf-to-meta", "{base_dir}", "{tmp}/x"], "it is a Meta folder already"),
    (["llama-meta-to-hf", "{base_dir}", "{hf_dir}"], "already exists"),
    (["adapter-to-hf", "{adapter_dir}/adapter.pth", "{tmp}/x.pth"], "written as .safetensors"),
    (["adapter-to-hf", "{adapter_dir}/adapter.pth", "{tmp}/x.safetensors", "--n-heads", "3"], "gates have"),
    (["adapter-from-hf", "{adapter_dir}/adapter.pth", "{tmp}/x.pth"], "is a .safetensors file"),
    (["adapter-to-hf", "{tmp}/missing.pth", "{tmp}/x.safetensors"], "not found"),
])
def test_cli_errors_are_one_clear_line(argv, message, adapter_dir, base_dir, hf_dir, tmp_path, capsys):
    paths = {"adapter_dir": adapter_dir, "base_dir": base_dir, "hf_dir": hf_dir, "tmp": tmp_path}
    assert main([a.format(**paths) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_wrong_tokenizer_and_bad_arguments(meta, tokenizer, tmp_path, capsys):
    config, _ = meta
    bigger = LlamaConfig(dim=config.dim, n_layers=config.n_layers, n_heads=config.n_heads,
                         vocab_size=config.vocab_size + 200, multiple_of=config.multiple_of)
    write_meta_llama(fake_base_state(bigger), bigger, tmp_path / "base")
    assert main(["llama-meta-to-hf", str(tmp_path / "base"), str(tmp_path / "out"),
                 "--tokenizer", str(tokenizer.path)]) == 1
    assert f"has {tokenizer.n_words} pieces but the weights' vocabulary is {bigger.vocab_size}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command", "a", "b"])
    with pytest.raises(SystemExit):
        main(["llama-meta-to-hf", "a", "b", "--shard-size", "lots"])
    assert parse_size("5GB") == 5 * 2**30 and parse_size("500MB") == 500 * 2**20 and parse_size("123") == 123


# ---------------------------------------------------------------------------------------------
# a base model that does not fit the adapter
# ---------------------------------------------------------------------------------------------


def fake_base_state(config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Random base weights of the given sizes (Meta names, no gates)."""
    torch.manual_seed(0)
    state = Llama(config, AdapterConfig(bias_lora=False, query_layer=1)).state_dict()
    return {k: v for k, v in state.items() if not k.endswith("attention.gate")}


MISMATCHES = {
    "width": ({"dim": 2}, "bind network outputs width"),
    "more layers": ({"n_layers": +1}, "the adapter has tensors for {n_layers} layers (0..{last}), the LLaMA has {more}"),
    "fewer layers": ({"n_layers": -1}, "prefix queries"),
    "heads": ({"n_heads": 2}, "the adapter's gates have {n_heads} heads, the LLaMA has {heads2}"),
    "ffn width": ({"multiple_of": 8}, "the adapter's feed-forward width is {hidden}, the LLaMA's is"),
}


def changed_config(config: LlamaConfig, change: dict) -> LlamaConfig:
    values = {"dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
              "vocab_size": config.vocab_size, "multiple_of": config.multiple_of, "norm_eps": config.norm_eps}
    for key, amount in change.items():
        values[key] = values[key] * amount if key in ("dim", "n_heads", "multiple_of") else values[key] + amount
    return LlamaConfig(**values)


@pytest.mark.parametrize("case", list(MISMATCHES))
@pytest.mark.parametrize("layout", ["meta", "hf"])
def test_a_base_that_does_not_fit_the_adapter_is_named(case, layout, meta, adapter_dir, tokenizer, tmp_path):
    config, _ = meta
    change, message = MISMATCHES[case]
    other = changed_config(config, change)
    if case == "ffn width":
        assert other.hidden_dim != config.hidden_dim
    state = fake_base_state(other)
    if layout == "meta":
        write_meta_llama(state, other, tmp_path / "base")
    else:
        write_hf_llama(state, other, tmp_path / "base")
    message = message.format(n_layers=config.n_layers, last=config.n_layers - 1, more=other.n_layers,
                             n_heads=config.n_heads, heads2=other.n_heads, hidden=config.hidden_dim)
    with pytest.raises(CheckpointError, match="does not fit this base LLaMA") as error:
        build_language_model(tmp_path / "base", adapter_dir / "adapter.pth", tokenizer_words=tokenizer.n_words)
    assert message in str(error.value)


def test_fewer_layers_than_the_adapters_gates(meta, adapter_dir, tokenizer):
    """An adapter injecting fewer layers than it has gates, on a base with fewer layers than
    the gates: the prefix fits, the layer count does not (this once slipped through)."""
    config, state = meta
    adapter = read_adapter(adapter_dir / "adapter.pth")
    adapter["prefix_query.weight"] = adapter["prefix_query.weight"][:1]
    shallow = changed_config(config, {"n_layers": -(config.n_layers - 1)})
    base = {k: v for k, v in state.items() if not k.startswith("layers.") or int(k.split(".")[1]) < 1}
    with pytest.raises(CheckpointError,
                       match=f"tensors for {config.n_layers} layers .*the LLaMA has {shallow.n_layers} layers"):
        build_language_model((shallow, base), adapter, tokenizer_words=tokenizer.n_words)


def test_a_vocabulary_that_does_not_fit_is_named(meta, adapter_dir, tokenizer, tmp_path):
    config, _ = meta
    bigger = changed_config(config, {"vocab_size": 200})
    write_meta_llama(fake_base_state(bigger), bigger, tmp_path / "base")
    with pytest.raises(CheckpointError, match=f"tokenizer has {tokenizer.n_words} pieces but the LLaMA's "
                                              f"vocabulary is {bigger.vocab_size}"):
        build_language_model(tmp_path / "base", adapter_dir / "adapter.pth", tokenizer_words=tokenizer.n_words)
    # A Hugging Face config.json that disagrees with its own embedding is caught on reading.
    write_hf_llama(fake_base_state(bigger), bigger, tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config | {"vocab_size": config.vocab_size}))
    with pytest.raises(CheckpointError, match="the weights do not match the config"):
        read_llama(tmp_path / "hf")


def test_every_mismatch_is_listed_at_once(meta, adapter_dir, tmp_path):
    config, _ = meta
    other = changed_config(config, {"dim": 2, "n_heads": 2, "n_layers": 1, "vocab_size": 8})
    write_meta_llama(fake_base_state(other), other, tmp_path / "base")
    with pytest.raises(CheckpointError) as error:
        build_language_model(tmp_path / "base", adapter_dir / "adapter.pth", tokenizer_words=config.vocab_size)
    text = str(error.value)
    for part in ("bind network outputs width", "layers", "gates have", "feed-forward width", "tokenizer has"):
        assert part in text, part


def test_a_missing_or_broken_tokenizer_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"tokenizer not found: .*tokenizer.model \(a SentencePiece"):
        Tokenizer(tmp_path)  # a folder without tokenizer.model
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        Tokenizer(tmp_path / "nothing.model")
    broken = tmp_path / "tokenizer.model"
    broken.write_bytes(b"this is not a SentencePiece model")
    with pytest.raises(CheckpointError, match=r"tokenizer.model: not a SentencePiece model \("):
        Tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="no tokenizer at .*a SentencePiece tokenizer.model or a folder"):
        load_hf_tokenizer(tmp_path / "empty")


LLAMA_7B_HF = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
               "vocab_size": 32000, "intermediate_size": 11008, "rms_norm_eps": 1e-6, "hidden_act": "silu"}


@pytest.mark.parametrize("change, match", [
    ({"model_type": "mistral"}, "model_type 'mistral'; a LLaMA is expected"),
    ({"hidden_size": None}, "config.json has no 'hidden_size' entry"),
    ({"num_key_value_heads": 8}, "grouped-query attention models"),
    ({"head_dim": 64}, "head_dim 64 != hidden_size / num_attention_heads"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'; LLaMA uses silu"),
    ({"attention_bias": True}, r"biased projections \(attention_bias/mlp_bias\)"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rotary scaling 'llama3' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rotary scaling 'linear' is not supported"),
    ({"rope_parameters": {"rope_type": "yarn"}}, "rotary scaling 'yarn' is not supported"),
    ({"hidden_size": 4095}, "config.json: "),
])
def test_a_config_json_that_is_not_a_plain_llama_is_refused_with_the_reason(change, match):
    """What a user may point --llama at by mistake (Llama 3, Mistral, a scaled RoPE, ...)."""
    hf = {**LLAMA_7B_HF, **change}
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(CheckpointError, match=match):
        hf_config_to_llama(hf)


def test_llama_7b_config_json_reads_as_the_7b_shape():
    config = hf_config_to_llama({**LLAMA_7B_HF, "num_key_value_heads": 32, "head_dim": 128,
                                 "rope_scaling": None, "rope_theta": 10000.0})
    assert (config.dim, config.n_layers, config.n_heads, config.vocab_size, config.ffn_hidden) == \
        (4096, 32, 32, 32000, 11008)
