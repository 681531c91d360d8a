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
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint import read_state_dict
from .config import AdapterConfig, ImageBindLLMConfig, LlamaConfig
from .errors import CheckpointError
from .keymap import KeyRule, same, translate
from .memory_check import conversion_bytes, require_memory
from .precision import as_dtype, resolve_dtype

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
        if key.startswith(("image_bind.", "prefix_projector_norm.")):
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


def project_to_adapter(model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The official adapter dict (what ``{'model': ...}`` of 7B.pth holds) of a model."""
    if getattr(getattr(model, "llama", None), "lora_merged", False):
        raise ValueError("this model's LoRA updates were merged into its weights for inference "
                         "(Pipeline.merge_lora): its adapter cannot be saved; load the model without merging")
    return OrderedDict(
        (project_to_adapter_key(k), v) for k, v in model.state_dict().items() if is_adapter_key(k))


def base_llama_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base LLaMA of a model, Meta-layout keys (its adapter's tensors left out): with
    :func:`project_to_adapter`, the two parts :func:`build_language_model` puts together."""
    return {k[len("llama."):]: v for k, v in model.state_dict().items()
            if k.startswith("llama.") and not is_adapter_key(k)}


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
# None = replicated in every shard. Column-parallel layers (wq, wk, wv, w1, w3, output) split
# their output rows, row-parallel ones (wo, w2) and the parallel embedding their columns.
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


def meta_shard_files(directory: str | Path) -> list[Path]:
    """``consolidated.NN.pth`` in model-parallel order (numerically: 2 before 10)."""
    directory = Path(directory)
    shards = []
    for path in directory.glob("consolidated.*.pth"):
        match = re.fullmatch(r"consolidated\.(\d+)\.pth", path.name)
        if match is None:
            raise CheckpointError(f"{path}: a Meta shard is named consolidated.NN.pth")
        shards.append((int(match.group(1)), path))
    shards.sort()
    if [n for n, _ in shards] != list(range(len(shards))):
        raise CheckpointError(f"{directory}: the model-parallel shards must be numbered 0..{len(shards) - 1}, "
                              f"found {[p.name for _, p in shards]} (a shard is missing?)")
    return [p for _, p in shards]


def read_meta_llama(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """params.json and the merged state dict of ``consolidated.*.pth`` (``rope.freqs`` dropped).

    Several shards are Meta's model-parallel split (13B: 2, 30B: 4, 65B: 8); they are
    concatenated back along the dimension each layer was split on (:data:`_SHARD_DIM`).
    """
    directory = Path(directory)
    params_path = directory / "params.json"
    shards = meta_shard_files(directory) if directory.is_dir() else []
    if not params_path.is_file() or not shards:
        raise CheckpointError(f"{directory} is not a Meta LLaMA folder: params.json and consolidated.*.pth "
                              "are expected")
    try:
        params = json.loads(params_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{params_path}: not valid JSON ({error})") from None
    states = [read_state_dict(path) for path in shards]
    keys = set(states[0]) - {"rope.freqs"}
    for path, state in zip(shards[1:], states[1:]):
        differ = sorted(keys ^ (set(state) - {"rope.freqs"}))
        if differ:
            raise CheckpointError(f"{path.name} and {shards[0].name} hold different tensors ({_some(differ)}): "
                                  "shards of different models?")
    merged = {}
    for key, first in states[0].items():
        if key == "rope.freqs":
            continue
        dim = _shard_dim(key)
        if len(states) == 1:
            merged[key] = first
        elif dim is None:
            for path, state in zip(shards[1:], states[1:]):
                if not torch.equal(state[key], first):
                    raise CheckpointError(f"{key} is replicated in every Meta shard but {path.name} holds "
                                          f"another value than {shards[0].name}: shards of different models?")
            merged[key] = first
        else:
            merged[key] = torch.cat([s[key] for s in states], dim=dim)
    return params, merged


def write_meta_llama(state: Mapping[str, torch.Tensor], config: LlamaConfig, directory: str | Path) -> None:
    """params.json (vocab_size -1, as Meta's files) and one consolidated.00.pth."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(config.to_params() | {"vocab_size": -1}))
    torch.save({k: v.contiguous() for k, v in state.items()}, directory / "consolidated.00.pth")


def _some(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def llama_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a base LLaMA (Meta names) with the shape ``config`` implies."""
    d, hidden, vocab = config.dim, config.hidden_dim, config.vocab_size
    shapes = {"tok_embeddings.weight": (vocab, d), "norm.weight": (d,), "output.weight": (vocab, d)}
    for n in range(config.n_layers):
        layer = f"layers.{n}."
        shapes.update({layer + f"attention.{w}.weight": (d, d) for w in ("wq", "wk", "wv", "wo")})
        shapes.update({layer + "feed_forward.w1.weight": (hidden, d), layer + "feed_forward.w2.weight": (d, hidden),
                       layer + "feed_forward.w3.weight": (hidden, d),
                       layer + "attention_norm.weight": (d,), layer + "ffn_norm.weight": (d,)})
    return shapes


def check_llama_state(config: LlamaConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    """The weights hold exactly the tensors ``config`` (params.json / config.json) implies."""
    expected = llama_shapes(config)
    problems = []
    layers = {int(m.group(1)) for k in state if (m := re.match(r"(?:model\.)?layers\.(\d+)\.", k))}
    if layers and len(layers) != config.n_layers:
        problems.append(f"the weights have {len(layers)} layers, the config says {config.n_layers}")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_some(unexpected)}")
    wrong = [f"{k} is {tuple(v.shape)}, the config implies {expected[k]}" for k, v in state.items()
             if k in expected and tuple(v.shape) != expected[k]]
    if wrong:
        problems.append(_some(wrong, 4))
    if problems:
        raise CheckpointError(f"{source}: the weights do not match the config (dim {config.dim}, {config.n_layers} "
                              f"layers, FFN width {config.hidden_dim}, vocabulary {config.vocab_size}):\n  - "
                              + "\n  - ".join(problems))


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


def _check_rotary_rows(rows: int, n_heads: int) -> None:
    if n_heads <= 0 or rows % (2 * n_heads):
        raise CheckpointError(f"cannot split {rows} q/k features into {n_heads} heads of even width "
                              "(wrong n_heads?)")


def rotary_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> Hugging Face rotary layout of the rows (output features) of a q/k projection,
    of the wq bias or of a q/k LoRA up factor: within each head, the adjacent pairs
    (0,1), (2,3), ... that Meta rotates together become the halves (0, D/2), (1, D/2+1), ...
    that ``rotate_half`` rotates together. Columns (input features) are untouched."""
    rows = weight.shape[0]
    _check_rotary_rows(rows, n_heads)
    rest = weight.shape[1:]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def rotary_unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`rotary_permute`."""
    rows = weight.shape[0]
    _check_rotary_rows(rows, n_heads)
    rest = weight.shape[1:]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *rest).transpose(1, 2).reshape(rows, *rest)


def _is_rotary(meta_key: str) -> bool:
    return meta_key.endswith(("attention.wq.weight", "attention.wk.weight"))


def hf_config_to_llama(hf: Mapping) -> LlamaConfig:
    """A Hugging Face ``config.json`` -> :class:`LlamaConfig`; anything that is not a plain
    LLaMA (-1/-2) architecture is refused with the reason."""
    if hf.get("model_type", "llama") != "llama":
        raise CheckpointError(f"config.json: model_type {hf.get('model_type')!r}; a LLaMA is expected")
    try:
        dim, heads = hf["hidden_size"], hf["num_attention_heads"]
        layers, vocab, hidden = hf["num_hidden_layers"], hf["vocab_size"], hf["intermediate_size"]
    except KeyError as missing:
        raise CheckpointError(f"config.json has no {missing} entry") from None
    if hf.get("num_key_value_heads") not in (None, heads):
        raise CheckpointError("grouped-query attention models (num_key_value_heads != num_attention_heads) are "
                              "not ImageBind-LLM base models; LLaMA-1 7B is expected")
    if hf.get("head_dim") not in (None, dim // heads):
        raise CheckpointError(f"config.json: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {hf['hidden_act']!r}; LLaMA uses silu")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise CheckpointError("config.json: biased projections (attention_bias/mlp_bias) are not a LLaMA base")
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise CheckpointError(f"config.json: rotary scaling {rope_type!r} is not supported (plain RoPE only)")
    try:
        return LlamaConfig(dim=dim, n_layers=layers, n_heads=heads, vocab_size=vocab,
                           norm_eps=hf.get("rms_norm_eps", 1e-6),
                           rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                           ffn_hidden=hidden)
    except ValueError as error:
        raise CheckpointError(f"config.json: {error}") from None


def llama_to_hf_config(config: LlamaConfig, dtype: torch.dtype | None = None) -> dict:
    """config.json for ``transformers.LlamaForCausalLM`` (read by transformers 4.x and 5.x:
    the dtype and the rotary base are written under both spellings)."""
    dtype_name = str(dtype or torch.float16).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_heads, "num_hidden_layers": config.n_layers, "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps, "vocab_size": config.vocab_size, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "max_position_embeddings": 2048, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype_name, "dtype": dtype_name,
    }


def meta_to_hf_state(state: Mapping[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key == "rope.freqs":
            continue
        try:
            hf = translate(META_TO_HF_RULES, key, 0)
        except KeyError:
            raise CheckpointError(f"unexpected key {key!r} in a Meta LLaMA checkpoint") from None
        out[hf] = rotary_permute(value, n_heads) if _is_rotary(key) else value
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


_HF_INDEXES = (("model.safetensors.index.json", "model.safetensors"),
               ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def _hf_weight_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a Hugging Face folder: those its index lists, else the single file,
    else every ``*.safetensors``; plus the index's key -> file map."""
    for index_name, single in _HF_INDEXES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise CheckpointError(f"{index}: not a weight index (no 'weight_map')") from None
            names = sorted(set(weight_map.values()))
            absent = [n for n in names if not (directory / n).is_file()]
            if absent:
                raise CheckpointError(f"{index_name} lists {_some(absent)}, which are not in {directory}")
            return [directory / n for n in names], weight_map
        if (directory / single).is_file():
            return [directory / single], None
    return sorted(directory.glob("*.safetensors")), None


def read_hf_llama(directory: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """config.json and the merged (Meta-layout) state of the safetensors (or .bin) shards."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    files, weight_map = _hf_weight_files(directory) if directory.is_dir() else ([], None)
    if not config_path.is_file() or not files:
        raise CheckpointError(f"{directory} is not a Hugging Face LLaMA folder: config.json and *.safetensors "
                              "are expected")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: not valid JSON ({error})") from None
    config = hf_config_to_llama(hf_config)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)) if file.suffix == ".safetensors" else read_state_dict(file))
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise CheckpointError(f"{directory}: the index lists tensors the shards do not hold: {_some(absent)}")
    if "lm_head.weight" not in state and hf_config.get("tie_word_embeddings") and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return config, hf_to_meta_state(state, config.n_heads)


def write_hf_llama(state: Mapping[str, torch.Tensor], config: LlamaConfig, directory: str | Path,
                   max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and safetensors shards (with an index when there are several),
    the q/k weights rotary-permuted to the Hugging Face layout. The folder must not hold
    another Hugging Face checkpoint already (a stale shard or index would be read back)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in directory.iterdir()
                   if p.suffix == ".safetensors" or p.name in {n for pair in _HF_INDEXES for n in pair})
    if stale:
        raise CheckpointError(f"{directory} already holds Hugging Face weights ({_some(stale)}); "
                              "write into an empty folder")
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
    dtype = next(iter(hf_state.values())).dtype if hf_state else None
    (directory / "config.json").write_text(json.dumps(llama_to_hf_config(config, dtype), indent=2))
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


#: The two layouts of a base LLaMA folder, for the errors that find neither.
LLAMA_FOLDERS = ("expected a Meta folder (params.json + consolidated.*.pth) or a Hugging Face folder "
                 "(config.json + *.safetensors)")


def read_llama(path: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """A base LLaMA from a Meta folder (params.json) or a Hugging Face folder (config.json),
    checked against its own config (every tensor present, with the implied shape). The
    vocabulary size is read from the weights (Meta's params.json says -1)."""
    path = Path(path)
    if (path / "params.json").is_file():
        params, state = read_meta_llama(path)
        if "tok_embeddings.weight" not in state:
            raise CheckpointError(f"{path}: no tok_embeddings.weight in the Meta checkpoint")
        rows = state["tok_embeddings.weight"].shape[0]
        declared = params.get("vocab_size", -1)
        if declared is not None and declared > 0 and declared != rows:
            raise CheckpointError(f"{path / 'params.json'} says vocab_size {declared} but tok_embeddings.weight "
                                  f"has {rows} rows")
        try:
            config = LlamaConfig.from_params(params, rows)
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{path / 'params.json'}: {error}") from None
        check_llama_state(config, state, f"{path} (params.json)")
        return config, state
    if (path / "config.json").is_file():
        config, state = read_hf_llama(path)
        check_llama_state(config, state, f"{path} (config.json)")
        return config, state
    raise CheckpointError(f"no LLaMA weights at {path}: {LLAMA_FOLDERS}")


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
# The tensors whose ROWS are q/k output features, i.e. live in the rotary layout: the wq bias
# (wk has none) and the LoRA up factors (l2, out x rank) of wq and wk. The LoRA down factors
# (l1, rank x in) act on the block input, which is not permuted; wv, wo and the gate (per head)
# are not rotated, so none of them changes.
_ROTARY_ADAPTER = re.compile(r"attention\.(wq\.bias|lora_wq_l2\.weight|lora_wk_l2\.weight)$")


def adapter_heads(state: Mapping[str, torch.Tensor]) -> int | None:
    """The head count an adapter was trained for, from its gates (1, n_heads, 1, 1)."""
    for key, value in state.items():
        if key.endswith((".attention.gate", ".self_attn.gate")) and value.ndim == 4:
            return int(value.shape[1])
    return None


def _resolve_heads(state: Mapping[str, torch.Tensor], n_heads: int | None) -> int:
    found = adapter_heads(state)
    if n_heads is None:
        if found is None:
            raise CheckpointError("the number of attention heads is needed (the adapter has no gates to read it from)")
        return found
    if found is not None and found != n_heads:
        raise CheckpointError(f"n_heads {n_heads} was given but the adapter's gates have {found} heads")
    return int(n_heads)


def adapter_to_hf(state: Mapping[str, torch.Tensor], n_heads: int | None = None) -> dict[str, torch.Tensor]:
    """Official adapter -> Hugging Face naming, rotary-permuting the tensors whose rows are q/k
    output features (wq bias, LoRA up factors of wq and wk): exact on a Hugging Face base.
    ``n_heads`` defaults to the gates' head count (and must agree with it when given)."""
    n_heads = _resolve_heads(state, n_heads)
    out = {}
    for key, value in state.items():
        hf = translate(ADAPTER_HF_RULES, key, 0)
        if hf == key and key.startswith(("llama.", "model.")):
            raise CheckpointError(f"{key!r} is not an adapter tensor in official naming (gates, biases, LoRA, "
                                  "norms, bind network and prefix queries are)")
        out[hf] = rotary_permute(value, n_heads) if _ROTARY_ADAPTER.search(key) else value
    return out


def adapter_from_hf(state: Mapping[str, torch.Tensor], n_heads: int | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`adapter_to_hf`."""
    n_heads = _resolve_heads(state, n_heads)
    out = {}
    for key, value in state.items():
        official = translate(ADAPTER_HF_RULES, key, 1)
        if official == key and key.startswith(("llama.", "model.")):
            raise CheckpointError(f"{key!r} is not an adapter tensor in Hugging Face naming")
        out[official] = rotary_unpermute(value, n_heads) if _ROTARY_ADAPTER.search(official) else value
    return out


def read_adapter(path: str | Path, n_heads: int | None = None) -> dict[str, torch.Tensor]:
    """An adapter file in the official ``{'model': ...}`` format (or a full training
    checkpoint), or a ``.safetensors`` in Hugging Face naming (un-permuted back to the official
    layout; the head count comes from its metadata, ``n_heads`` or its gates). A
    ``.safetensors`` holding official names is read as it is."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        if not path.is_file():
            raise CheckpointError(f"adapter not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as error:  # safetensors raises its own error types with Rust text
            raise CheckpointError(f"{path.name}: not a readable safetensors file ({error})") from error
        if not any(k.startswith("model.") for k in state):
            return normalise_adapter_state(state)
        if n_heads is None and "n_heads" in metadata:
            n_heads = int(metadata["n_heads"])
        try:
            return adapter_from_hf(state, n_heads)
        except CheckpointError as error:
            raise CheckpointError(f"{path.name}: {error}") from None
    return normalise_adapter_state(read_state_dict(path))


def write_adapter_hf(state: Mapping[str, torch.Tensor], n_heads: int | None, path: str | Path) -> None:
    """An adapter in Hugging Face naming as safetensors (n_heads stored in the metadata)."""
    from safetensors.torch import save_file

    n_heads = _resolve_heads(state, n_heads)
    save_file({k: v.contiguous() for k, v in adapter_to_hf(state, n_heads).items()}, str(path),
              metadata={"format": "pt", "n_heads": str(n_heads), "layout": "imagebind-llm-adapter"})


def write_adapter(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """An adapter state (official names) in the official ``{'model': ...}`` format of 7B.pth."""
    torch.save({"model": OrderedDict((k, v.contiguous()) for k, v in state.items())}, path)


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


def check_llama_folder(path: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Fail fast, before anything is downloaded or loaded, when ``path`` is not a base LLaMA
    folder: it must exist and hold params.json (Meta) or config.json (Hugging Face), and a
    tokenizer.model must be found (:func:`find_tokenizer`) unless ``tokenizer`` is given."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"LLaMA folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"--llama must be a folder (a Meta folder with params.json or a Hugging Face "
                              f"folder with config.json), got the file {path}")
    if not ((path / "params.json").is_file() or (path / "config.json").is_file()):
        raise CheckpointError(f"no LLaMA weights at {path}: {LLAMA_FOLDERS}")
    if tokenizer is None:
        find_tokenizer(path)
    elif not Path(tokenizer).is_file():
        raise CheckpointError(f"tokenizer not found: {tokenizer}")
    return path


def _listed(values: set[int]) -> str:
    return str(min(values)) if len(values) == 1 else str(sorted(values))


def _widths(state: Mapping[str, torch.Tensor], suffixes: tuple[str, ...], dim: int) -> set[int]:
    return {int(v.shape[dim]) for k, v in state.items() if k.endswith(suffixes)}


def check_adapter_fits(adapter: AdapterConfig | None, state: Mapping[str, torch.Tensor], llama: LlamaConfig,
                       tokenizer_words: int | None = None) -> None:
    """Name every mismatch between an adapter (official names) and a base model before
    anything is loaded: width, layer count, head count, FFN width, vocabulary. ``adapter`` is
    not needed (everything is read from the tensors); it is accepted for compatibility."""
    if "image_bind_proj.weight" not in state or "prefix_query.weight" not in state:
        raise CheckpointError("not an ImageBind-LLM adapter: image_bind_proj.weight or prefix_query.weight is missing")
    problems = []
    dim = state["image_bind_proj.weight"].shape[0]
    if dim != llama.dim:
        problems.append(f"the adapter's bind network outputs width {dim}, the LLaMA has width {llama.dim}")
    else:
        other = (_widths(state, ("_norm.weight", "norm.weight", ".wq.bias", ".wo.bias", ".w2.bias"), 0)
                 | _widths(state, ("lora_wq_l1.weight", "lora_wo_l1.weight", "lora_w1_l1.weight"), 1)
                 | {state["prefix_query.weight"].shape[1]}) - {llama.dim}
        if other:
            problems.append(f"the adapter's per-layer tensors have width {sorted(other)}, the LLaMA has {llama.dim}")
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"llama\.layers\.(\d+)\.", k))})
    if not layers:
        problems.append("the adapter has no per-layer tensors (gates)")
    elif layers != list(range(llama.n_layers)):
        problems.append(f"the adapter has tensors for {len(layers)} layers ({layers[0]}..{layers[-1]}), "
                        f"the LLaMA has {llama.n_layers} layers")
    queries = state["prefix_query.weight"].shape[0]
    if queries > llama.n_layers:
        problems.append(f"the adapter has {queries} prefix queries (injected layers) but the LLaMA has "
                        f"{llama.n_layers} layers")
    heads = _widths(state, (".attention.gate",), 1)
    if heads and heads != {llama.n_heads}:
        problems.append(f"the adapter's gates have {_listed(heads)} heads, "
                        f"the LLaMA has {llama.n_heads}")
    ffn = (_widths(state, ("feed_forward.w1.bias", "feed_forward.w3.bias", "lora_w1_l2.weight", "lora_w3_l2.weight"), 0)
           | _widths(state, ("lora_w2_l1.weight",), 1))
    if ffn and ffn != {llama.hidden_dim}:
        problems.append(f"the adapter's feed-forward width is {_listed(ffn)}, "
                        f"the LLaMA's is {llama.hidden_dim}")
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
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    quantize: str | None = None,
):
    """Base LLaMA + official adapter -> :class:`ImageBindLLM` in eval mode, weights taken
    without a second copy (meta-device build, ``assign=True``) when no dtype change is needed.

    ``quantize`` ('int8' or 'int4', see :mod:`imagebind_llm.quantize`): the frozen LLaMA
    projections are quantised one at a time straight from the (memory-mapped) base tensors,
    on ``device``, before anything else is converted; ``dtype`` is then the activation dtype.
    ``dtype`` 'auto': the faster of float32 and bfloat16 on a CPU (:mod:`imagebind_llm.precision`).

    ``base`` is a Meta or Hugging Face folder (or an already read ``(config, Meta-layout
    state)``); ``adapter`` an official file, a Hugging Face-named ``.safetensors`` or a state.
    Like the official loader, the adapter's norms override the base norms; unlike it, every
    parameter must come from one of the two sources (a missing one is an error, listed), and a
    base that does not fit the adapter (or a tokenizer that does not fit the base: pass
    ``tokenizer_words``) is refused with the mismatch named.
    """
    from .model import ImageBindLLM

    if quantize is not None:  # refuse a wrong mode or an int4 device before reading gigabytes
        from .quantize import check_quantize, int4_unsupported_reason

        if check_quantize(quantize) == "int4" and (reason := int4_unsupported_reason(device)):
            raise RuntimeError(reason)
    llama_config, base_state = read_llama(base) if not isinstance(base, tuple) else base
    adapter_state = read_adapter(adapter) if not isinstance(adapter, Mapping) else normalise_adapter_state(adapter)
    check_adapter_fits(None, adapter_state, llama_config, tokenizer_words)
    adapter_config = infer_adapter_config(adapter_state, llama_config.n_layers)
    config = ImageBindLLMConfig(llama=llama_config, adapter=adapter_config)
    dtype = resolve_dtype(as_dtype(dtype), config, device, quantize=quantize)  # 'auto': chosen before converting
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
    if quantize is None:  # quantising allocates less (its sizes: README "Memory")
        smaller = "--dtype bfloat16 (or --dtype auto on a CPU) halves float32; " if dtype == torch.float32 else ""
        require_memory(conversion_bytes(state.values(), dtype, device), device,
                       f"the language model in {str(dtype).removeprefix('torch.')}",
                       f"Load it smaller: {smaller}--quantize int8 stores a quarter of float32 (README \"Memory\")")
    model.load_state_dict(state, strict=True, assign=True)
    if quantize is not None:
        from .quantize import quantize_llama_

        del state, base_state  # only the model refers to the base tensors now: each goes once quantised
        quantize_llama_(model, quantize, device=device)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
