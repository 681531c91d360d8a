"""Reading and writing the language-model weights: base LLaMA and ImageBind-LLM adapters.

* Base LLaMA in **Meta format** (``params.json``, ``consolidated.*.pth`` in one or several
  model-parallel shards, ``tokenizer.model``) or **Hugging Face format** (``config.json``,
  ``*.safetensors`` shards, ``tokenizer.model``). The model uses Meta's layout; Hugging Face
  q/k weights are un-permuted on load (the rotary layout differs) and permuted on save.
* **Adapters** in the official format (``{'model': {...}}`` with the keys ``convert_ckpt.py``
  keeps: bind network, prefix queries, gates, bias-tuning biases, LoRA, norms), both bind
  network variants, detected from the keys. They map to the project's names by
  :data:`ADAPTER_KEY_RULES`; an adapter can also be written in a Hugging Face naming (for a
  Hugging Face base), where the same rotary permutation applies to the wq bias and to the up
  factors of the q/k LoRA.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch

from .checkpoint import read_state_dict
from .config import AdapterConfig, ImageBindLLMConfig, LlamaConfig
from .errors import CheckpointError
from .keymap import KeyRule, same, translate

log = logging.getLogger(__name__)

_W = same("weight", "bias")
_BLOCKS = [(str(i + 1), str(i)) for i in range(64)]  # official bind blocks count from 1
_FACTOR = [("1", "down"), ("2", "up")]

ADAPTER_KEY_RULES: list[KeyRule] = [
    KeyRule("image_bind_proj.{p}", "bind_network.proj.{p}", {"p": _W}),
    KeyRule("image_bind_norm_{k}.{p}", "bind_network.blocks.{k}.norm.{p}", {"k": _BLOCKS, "p": _W}),
    KeyRule("image_bind_f{f}_{k}.{p}", "bind_network.blocks.{k}.w{f}.{p}",
            {"f": same("1", "2", "3"), "k": _BLOCKS, "p": _W}),
    KeyRule("prefix_query.weight", "prefix_query"),
    KeyRule("llama.layers.{n}.attention.lora_{w}_l{f}.weight", "llama.layers.{n}.attention.lora.{w}.{f}.weight",
            {"w": same("wq", "wk", "wv", "wo"), "f": _FACTOR}),
    KeyRule("llama.layers.{n}.feed_forward.lora_{w}_l{f}.weight",
            "llama.layers.{n}.feed_forward.lora.{w}.{f}.weight", {"w": same("w1", "w2", "w3"), "f": _FACTOR}),
    KeyRule("llama.{rest}", "llama.{rest}"),
]

# Which official adapter keys a checkpoint keeps (convert_ckpt.py): everything of the bind
# network and prefix, and the llama.* tensors whose name contains one of these words.
_ADAPTER_LLAMA_WORDS = ("bias", "gate", "lora", "norm")


def adapter_to_project_key(key: str) -> str:
    try:
        return translate(ADAPTER_KEY_RULES, key, 0)  # type: ignore[return-value]
    except KeyError:
        raise CheckpointError(f"unexpected adapter key {key!r}") from None


def project_to_adapter_key(key: str) -> str:
    return translate(ADAPTER_KEY_RULES, key, 1)  # type: ignore[return-value]


def is_adapter_key(project_key: str) -> bool:
    if not project_key.startswith("llama."):
        return True
    return any(word in project_key for word in _ADAPTER_LLAMA_WORDS)


def normalise_adapter_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a converted adapter, or a full training checkpoint (drops ``image_bind.*`` and the
    frozen LLaMA matrices, and fixes the 'llma' spelling, like the official convert_ckpt.py)."""
    out = {}
    for key, value in state.items():
        key = key.replace("llma", "llama")
        if key.startswith("image_bind.") or key.startswith("prefix_projector_norm."):
            continue
        if key.startswith("llama.") and not any(w in key for w in _ADAPTER_LLAMA_WORDS):
            continue
        out[key] = value
    return out


def infer_adapter_config(state: Mapping[str, torch.Tensor], n_layers: int) -> AdapterConfig:
    """Read the adapter's structure from its tensors (the official loader cannot: it takes the
    bridge variant from a constructor default and silently mis-loads the other one)."""
    try:
        proj = state["image_bind_proj.weight"]
        prefix = state["prefix_query.weight"]
    except KeyError as missing:
        raise CheckpointError(f"not an ImageBind-LLM adapter: key {missing} is missing") from None
    dim, imagebind_dim = proj.shape
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_bind_norm_(\d+)\.", k))})
    if blocks != list(range(1, len(blocks) + 1)) or not blocks:
        raise CheckpointError(f"the adapter's bind-network blocks are not numbered 1..N: {blocks}")
    hidden = state["image_bind_f1_1.weight"].shape[0]
    lora = [v for k, v in state.items() if k.endswith("lora_wq_l1.weight")]
    query_rows = prefix.shape[0]
    if query_rows > n_layers:
        raise CheckpointError(f"the adapter has {query_rows} prefix queries but the LLaMA has {n_layers} layers "
                              "(is this the right base model?)")
    return AdapterConfig(
        imagebind_dim=imagebind_dim,
        query_layer=query_rows,
        bind_blocks=len(blocks),
        bind_hidden_mult=hidden // dim,
        legacy_bridge="image_bind_norm_1.bias" in state,
        bias_lora=bool(lora),
        lora_rank=lora[0].shape[0] if lora else 16,
    )


def adapter_to_project(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {adapter_to_project_key(k): v for k, v in state.items()}


def project_to_adapter(model: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The official adapter dict (what ``{'model': ...}`` of 7B.pth holds) of a model."""
    return OrderedDict(
        (project_to_adapter_key(k), v) for k, v in model.state_dict().items() if is_adapter_key(k))


def save_adapter(model: torch.nn.Module, path: str | Path, config: ImageBindLLMConfig | None = None) -> None:
    """Write the official format; ``config`` (optional) is stored beside it as the official
    loader ignores an extra 'config' entry."""
    payload = {"model": {k: v.detach().clone() for k, v in project_to_adapter(model).items()}}
    if config is not None:
        import dataclasses

        payload["config"] = json.loads(json.dumps(dataclasses.asdict(config)))
    torch.save(payload, path)


# ---------------------------------------------------------------------------------------------
# Base LLaMA, Meta format
# ---------------------------------------------------------------------------------------------

# How Meta's model-parallel shards split each tensor (the dim they are concatenated along);
# None = replicated in every shard.
_SHARD_DIM = {
    "tok_embeddings.weight": 1, "output.weight": 0, "norm.weight": None, "rope.freqs": None,
    "attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0, "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0, "feed_forward.w2.weight": 1, "feed_forward.w3.weight": 0,
    "attention_norm.weight": None, "ffn_norm.weight": None,
}


def _shard_dim(key: str):
    suffix = re.sub(r"^layers\.\d+\.", "", key)
    if suffix not in _SHARD_DIM:
        raise CheckpointError(f"unexpected key {key!r} in a Meta LLaMA checkpoint")
    return _SHARD_DIM[suffix]


def read_meta_llama(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """params.json and the merged state dict of ``consolidated.*.pth`` (``rope.freqs`` dropped)."""
    directory = Path(directory)
    params_path = directory / "params.json"
    shards = sorted(directory.glob("consolidated.*.pth"))
    if not params_path.is_file() or not shards:
        raise CheckpointError(f"{directory} is not a Meta LLaMA folder: params.json and consolidated.*.pth "
                              "are expected")
    params = json.loads(params_path.read_text())
    states = [read_state_dict(path) for path in shards]
    merged = {}
    for key in states[0]:
        if key == "rope.freqs":
            continue
        dim = _shard_dim(key)
        if len(states) == 1 or dim is None:
            merged[key] = states[0][key]
        else:
            merged[key] = torch.cat([s[key] for s in states], dim=dim)
    return params, merged


def write_meta_llama(state: Mapping[str, torch.Tensor], config: LlamaConfig, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(config.to_params() | {"vocab_size": -1}))
    torch.save({k: v for k, v in state.items()}, directory / "consolidated.00.pth")


# ---------------------------------------------------------------------------------------------
# Base LLaMA, Hugging Face format
# ---------------------------------------------------------------------------------------------

_HF_LAYER = [
    ("attention.wq.weight", "self_attn.q_proj.weight"), ("attention.wk.weight", "self_attn.k_proj.weight"),
    ("attention.wv.weight", "self_attn.v_proj.weight"), ("attention.wo.weight", "self_attn.o_proj.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"), ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"), ("attention_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
]
# "official" side = Meta names, "project" side = Hugging Face names.
META_TO_HF_RULES = [
    KeyRule("tok_embeddings.weight", "model.embed_tokens.weight"),
    KeyRule("norm.weight", "model.norm.weight"),
    KeyRule("output.weight", "lm_head.weight"),
    KeyRule("layers.{n}.{part}", "model.layers.{n}.{part}", {"part": _HF_LAYER}),
]


def rotary_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> Hugging Face rotary layout of the rows of a q/k projection (or a bias, or a LoRA
    up factor): adjacent pairs (0,1),(2,3)... become halves (0, D/2), (1, D/2+1)..."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def rotary_unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`rotary_permute`."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *rest).transpose(1, 2).reshape(rows, *rest)


def _is_rotary(meta_key: str) -> bool:
    return meta_key.endswith(("attention.wq.weight", "attention.wk.weight"))


def hf_config_to_llama(hf: Mapping) -> LlamaConfig:
    heads = hf["num_attention_heads"]
    if hf.get("num_key_value_heads", heads) != heads:
        raise CheckpointError("grouped-query attention models (num_key_value_heads != num_attention_heads) are "
                              "not ImageBind-LLM base models; LLaMA-1 7B is expected")
    return LlamaConfig(dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=heads,
                       vocab_size=hf["vocab_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
                       rope_theta=hf.get("rope_theta", 10000.0), ffn_hidden=hf["intermediate_size"])


def llama_to_hf_config(config: LlamaConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_heads, "num_hidden_layers": config.n_layers,
        "rms_norm_eps": config.norm_eps, "vocab_size": config.vocab_size, "rope_theta": config.rope_theta,
        "max_position_embeddings": 2048, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16",
    }


def meta_to_hf_state(state: Mapping[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == "rope.freqs":
            continue
        out[translate(META_TO_HF_RULES, key, 0)] = rotary_permute(value, n_heads) if _is_rotary(key) else value
    return out


def hf_to_meta_state(state: Mapping[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        try:
            meta = translate(META_TO_HF_RULES, key, 1)
        except KeyError:
            raise CheckpointError(f"unexpected key {key!r} in a Hugging Face LLaMA checkpoint") from None
        out[meta] = rotary_unpermute(value, n_heads) if _is_rotary(meta) else value
    return out


def read_hf_llama(directory: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """config.json and the merged (Meta-layout) state of ``*.safetensors`` shards."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    files = sorted(directory.glob("*.safetensors"))
    if not config_path.is_file() or not files:
        raise CheckpointError(f"{directory} is not a Hugging Face LLaMA folder: config.json and *.safetensors "
                              "are expected")
    config = hf_config_to_llama(json.loads(config_path.read_text()))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return config, hf_to_meta_state(state, config.n_heads)


def write_hf_llama(state: Mapping[str, torch.Tensor], config: LlamaConfig, directory: str | Path,
                   max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and safetensors shards (with an index when there are several)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf_state = meta_to_hf_state(state, config.n_heads)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in hf_state.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = value.contiguous()
        size += nbytes
    (directory / "config.json").write_text(json.dumps(llama_to_hf_config(config), indent=2))
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in hf_state.values())},
             "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def read_llama(path: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """A base LLaMA from a Meta folder (params.json) or a Hugging Face folder (config.json).
    The vocabulary size is read from the weights (Meta's params.json says -1)."""
    path = Path(path)
    if (path / "params.json").is_file():
        params, state = read_meta_llama(path)
        return LlamaConfig.from_params(params, state["tok_embeddings.weight"].shape[0]), state
    if (path / "config.json").is_file():
        return read_hf_llama(path)
    raise CheckpointError(
        f"no LLaMA weights at {path}: expected a Meta folder (params.json + consolidated.*.pth) or a "
        "Hugging Face folder (config.json + *.safetensors)")


# ---------------------------------------------------------------------------------------------
# Adapters in Hugging Face naming
# ---------------------------------------------------------------------------------------------

_HF_ADAPTER_LAYER = [
    ("attention.gate", "self_attn.gate"),
    ("attention.wq.bias", "self_attn.q_proj.bias"), ("attention.wo.bias", "self_attn.o_proj.bias"),
    ("feed_forward.w1.bias", "mlp.gate_proj.bias"), ("feed_forward.w2.bias", "mlp.down_proj.bias"),
    ("feed_forward.w3.bias", "mlp.up_proj.bias"),
    ("attention_norm.weight", "input_layernorm.weight"), ("ffn_norm.weight", "post_attention_layernorm.weight"),
] + [(f"attention.lora_{w}_l{i}.weight", f"self_attn.{hf}_proj.lora_{ab}.weight")
     for w, hf in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")) for i, ab in (("1", "A"), ("2", "B"))] \
  + [(f"feed_forward.lora_{w}_l{i}.weight", f"mlp.{hf}_proj.lora_{ab}.weight")
     for w, hf in (("w1", "gate"), ("w2", "down"), ("w3", "up")) for i, ab in (("1", "A"), ("2", "B"))]

ADAPTER_HF_RULES = [
    KeyRule("llama.layers.{n}.{part}", "model.layers.{n}.{part}", {"part": _HF_ADAPTER_LAYER}),
    KeyRule("llama.norm.weight", "model.norm.weight"),
    KeyRule("{rest}", "{rest}"),  # bind network and prefix queries keep their official names
]
_ROTARY_ADAPTER = re.compile(r"attention\.(wq\.bias|lora_wq_l2\.weight|lora_wk_l2\.weight)$")


def adapter_to_hf(state: Mapping[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    """Official adapter -> Hugging Face naming, rotary-permuting the tensors whose rows are q/k
    output features (wq bias, LoRA up factors of wq and wk): exact on a Hugging Face base."""
    return {translate(ADAPTER_HF_RULES, k, 0): rotary_permute(v, n_heads) if _ROTARY_ADAPTER.search(k) else v
            for k, v in state.items()}


def adapter_from_hf(state: Mapping[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        official = translate(ADAPTER_HF_RULES, key, 1)
        out[official] = rotary_unpermute(value, n_heads) if _ROTARY_ADAPTER.search(official) else value
    return out


def read_adapter(path: str | Path) -> dict[str, torch.Tensor]:
    """An adapter file in the official ``{'model': ...}`` format (or a full training
    checkpoint), or a ``.safetensors`` in Hugging Face naming (its metadata gives n_heads)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if "n_heads" not in metadata:
            raise CheckpointError(f"{path.name}: a Hugging Face adapter needs 'n_heads' in its metadata")
        return adapter_from_hf(state, int(metadata["n_heads"]))
    return normalise_adapter_state(read_state_dict(path))


def write_adapter_hf(state: Mapping[str, torch.Tensor], n_heads: int, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in adapter_to_hf(state, n_heads).items()}, str(path),
              metadata={"format": "pt", "n_heads": str(n_heads), "layout": "imagebind-llm-adapter"})


# ---------------------------------------------------------------------------------------------
# Base + adapter -> model
# ---------------------------------------------------------------------------------------------


def find_tokenizer(base: str | Path) -> Path:
    """Meta keeps tokenizer.model beside the size folders (llama_dir/7B, llama_dir/tokenizer.model);
    Hugging Face keeps it in the model folder."""
    base = Path(base)
    for candidate in (base / "tokenizer.model", base.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no tokenizer.model in {base} or {base.parent}")


def check_adapter_fits(adapter: AdapterConfig, state: Mapping[str, torch.Tensor], llama: LlamaConfig,
                       tokenizer_words: int | None = None) -> None:
    """Name the mismatch between an adapter and a base model before anything is loaded."""
    problems = []
    dim = state["image_bind_proj.weight"].shape[0]
    if dim != llama.dim:
        problems.append(f"the adapter's bind network outputs width {dim}, the LLaMA has width {llama.dim}")
    gate = state.get(f"llama.layers.{llama.n_layers - 1}.attention.gate")
    if gate is None:
        layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"llama\.layers\.(\d+)\.", k))})
        problems.append(f"the adapter covers layers {layers[0]}..{layers[-1]} but the LLaMA has "
                        f"{llama.n_layers} layers" if layers else "the adapter has no gates")
    elif gate.shape[1] != llama.n_heads:
        problems.append(f"the adapter's gates have {gate.shape[1]} heads, the LLaMA has {llama.n_heads}")
    w1_bias = state.get("llama.layers.0.feed_forward.w1.bias")
    if w1_bias is not None and w1_bias.shape[0] != llama.hidden_dim:
        problems.append(f"the adapter's feed-forward width is {w1_bias.shape[0]}, the LLaMA's is {llama.hidden_dim}")
    if tokenizer_words is not None and tokenizer_words != llama.vocab_size:
        problems.append(f"the tokenizer has {tokenizer_words} pieces but the LLaMA's vocabulary is {llama.vocab_size}")
    if problems:
        raise CheckpointError("the adapter does not fit this base LLaMA (wrong base model or tokenizer?):\n  - "
                              + "\n  - ".join(problems))


def build_language_model(
    base: str | Path | tuple[LlamaConfig, Mapping[str, torch.Tensor]],
    adapter: str | Path | Mapping[str, torch.Tensor],
    *,
    tokenizer_words: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
):
    """Base LLaMA + official adapter -> :class:`ImageBindLLM` in eval mode, weights taken
    without a second copy (meta-device build, ``assign=True``) when no dtype change is needed.

    Like the official loader, the adapter's norms override the base norms; unlike it, every
    parameter must come from one of the two sources (a missing one is an error, listed).
    """
    from .model import ImageBindLLM

    llama_config, base_state = read_llama(base) if not isinstance(base, tuple) else base
    adapter_state = read_adapter(adapter) if not isinstance(adapter, Mapping) else normalise_adapter_state(adapter)
    adapter_config = infer_adapter_config(adapter_state, llama_config.n_layers)
    check_adapter_fits(adapter_config, adapter_state, llama_config, tokenizer_words)
    config = ImageBindLLMConfig(llama=llama_config, adapter=adapter_config)
    state = {f"llama.{k}": v for k, v in base_state.items()}
    state.update(adapter_to_project(adapter_state))
    with torch.device("meta"):
        model = ImageBindLLM(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError("the base LLaMA + adapter do not fill the model:"
                              + (f"\n  missing: {', '.join(missing)}" if missing else "")
                              + (f"\n  unexpected: {', '.join(unexpected)}" if unexpected else ""))
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in state.items()
             if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError("shape mismatch:\n  " + "\n  ".join(wrong))
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
