"""Building the model to train: frozen ImageBind and base LLaMA, the adapter to start from (or
a fresh one), the stage's trainable set, and the training forward.

Official behaviour kept (reference.md 4.1, 4.3, 5.6): the pre-training model has no LoRA and no
bias-tuning biases; fine-tuning loads the pre-trained adapter and adds them fresh (biases and
LoRA up-factors zero, so it starts as the pre-trained model); the adapter's norms override the
base LLaMA's; trainable tensors are float32. Fresh tensors follow the official initialisation:
nn.Linear's default for the bind network and the LoRA down-factors, RMSNorm/LayerNorm ones,
prefix queries N(0, 1) (nn.Embedding), gates zero.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from imagebind_llm.config import (
    IMAGEBIND_PRESETS,
    AdapterConfig,
    ImageBindConfig,
    ImageBindLLMConfig,
    PointConfig,
)
from imagebind_llm.errors import CheckpointError
from imagebind_llm.model import ImageBindLLM
from imagebind_llm.weights import (
    adapter_to_project,
    base_llama_state,
    check_adapter_fits,
    find_tokenizer,
    infer_adapter_config,
    is_adapter_key,
    project_to_adapter_key,
    read_adapter,
    read_llama,
)

from .config import TRAINABLE_GROUPS, ConfigError, RunConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Trainable sets
# ---------------------------------------------------------------------------------------------


def official_group(official_name: str) -> str | None:
    """The trainable group of a parameter by its official name: the official
    ``get_trainable_params`` rules (pretrain: names starting with ``image_bind_``, ``prefix_query``
    and ``llama.*gate*``; finetune: ``llama.*`` names containing norm, bias or lora)."""
    if official_name.startswith("image_bind_"):
        return "bind_network"
    if official_name.startswith("prefix_query"):
        return "prefix"
    if official_name.startswith("llama."):
        for group, word in (("gates", "gate"), ("lora", "lora"), ("bias", "bias"), ("norm", "norm")):
            if word in official_name:
                return group
    return None


def trainable_names(model: ImageBindLLM, groups: list[str]) -> list[str]:
    """Project parameter names of ``model`` in the given groups, in model order."""
    unknown = set(groups) - set(TRAINABLE_GROUPS)
    if unknown:
        raise ConfigError(f"unknown trainable groups {sorted(unknown)}; known: {TRAINABLE_GROUPS}")
    return [name for name, _ in model.named_parameters() if official_group(project_to_adapter_key(name)) in groups]


def set_trainable(model: ImageBindLLM, groups: list[str]) -> list[str]:
    """Freeze everything, then make the groups trainable in float32."""
    names = set(trainable_names(model, groups))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
        if name in names and param.dtype != torch.float32:
            param.data = param.data.float()
    return [n for n, _ in model.named_parameters() if n in names]


def unused_trainables(model: ImageBindLLM, names: list[str]) -> list[str]:
    """Trainable parameters the forward never uses: the gates of layers without injection
    (the official trains every layer's gate; only the injected ones receive gradients)."""
    injected = set(model.llama.injected_layers)
    out = []
    for name in names:
        parts = name.split(".")
        if name.endswith(".attention.gate") and int(parts[2]) not in injected:
            out.append(name)
    return out


def parameter_report(model: ImageBindLLM, encoder, names: list[str]) -> list[str]:
    """Lines for the start of a run: frozen and trainable counts, trainable per group."""
    params = dict(model.named_parameters())
    trainable = sum(params[n].numel() for n in names)
    llama_base = sum(p.numel() for n, p in params.items() if n.startswith("llama.") and not is_adapter_key(n))
    adapter = sum(p.numel() for n, p in params.items() if is_adapter_key(n))
    per_group: dict[str, int] = {}
    for n in names:
        group = official_group(project_to_adapter_key(n)) or "other"
        per_group[group] = per_group.get(group, 0) + params[n].numel()
    lines = []
    if encoder is not None:
        lines.append(f"ImageBind encoder: {sum(p.numel() for p in encoder.parameters()):,} parameters (frozen)")
    lines.append(f"LLaMA base: {llama_base:,} parameters (frozen); adapter tensors: {adapter:,}")
    lines.append(f"trainable: {trainable:,} parameters in {len(names)} tensors ("
                 + ", ".join(f"{g} {c:,}" for g, c in per_group.items()) + ")")
    return lines


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def imagebind_config_from_spec(spec: str) -> ImageBindConfig:
    """A preset name (``imagebind_huge``, ``imagebind_tiny``) or a JSON file: either
    ``ImageBindConfig.to_dict()`` or the official keyword layout ``{"kwargs": {...},
    "point_encoder": {"model_config", "npoints", "pc_projection_shape"}}``."""
    if spec in IMAGEBIND_PRESETS:
        return IMAGEBIND_PRESETS[spec]()
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"model.imagebind_config: {spec!r} is neither a preset ({', '.join(IMAGEBIND_PRESETS)}) "
                              "nor a JSON file")
    data = json.loads(path.read_text())
    if "kwargs" in data:
        point = None
        encoder = data.get("point_encoder")
        if encoder:
            point = PointConfig.from_official(encoder["model_config"], encoder.get("npoints", 8192),
                                              encoder["pc_projection_shape"][1])
        return ImageBindConfig.from_official_kwargs(data["kwargs"], point=point)
    return ImageBindConfig.from_dict(data)


@dataclass
class Components:
    model: ImageBindLLM
    tokenizer: object
    encoder: object | None  # the frozen ImageBind (None when training from precomputed features)
    imagebind_config: ImageBindConfig
    sources: dict


def _fresh(name: str, shape: torch.Size, fan_in: int | None) -> torch.Tensor:
    """The official initial value of an adapter tensor that no file provides."""
    out = torch.empty(shape)
    leaf = name.rsplit(".", 1)[-1]
    if name == "prefix_query":
        return nn.init.normal_(out)  # nn.Embedding
    if name.endswith(".gate") or (name.startswith("llama.") and leaf == "bias") or ".up." in name:
        return nn.init.zeros_(out)  # gates, bias-tuning biases, LoRA up-factors start at zero
    if ".down." in name:
        return nn.init.kaiming_uniform_(out, a=math.sqrt(5))  # nn.Linear default
    if name.startswith("bind_network."):
        if ".norm." in name:
            return nn.init.ones_(out) if leaf == "weight" else nn.init.zeros_(out)
        if leaf == "weight":
            return nn.init.kaiming_uniform_(out, a=math.sqrt(5))
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
        return nn.init.uniform_(out, -bound, bound)
    raise CheckpointError(f"{name} comes from neither the base LLaMA nor the adapter (wrong base model?)")


def assemble(llama_config, base_state: dict, adapter_state: dict | None, adapter: AdapterConfig) -> ImageBindLLM:
    """Base LLaMA + adapter tensors (official names) -> model; what neither gives is made
    fresh. Unexpected or mis-shaped tensors are refused with their names."""
    config = ImageBindLLMConfig(llama=llama_config, adapter=adapter)
    with torch.device("meta"):
        model = ImageBindLLM(config)
    state = {f"llama.{k}": v for k, v in base_state.items()}
    if adapter_state:
        state.update(adapter_to_project(adapter_state))
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CheckpointError("tensors that this model does not have: " + ", ".join(unexpected[:8]))
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise CheckpointError("shape mismatch:\n  " + "\n  ".join(wrong))
    model.load_state_dict(state, strict=False, assign=True)
    fresh = []
    for name, param in list(model.named_parameters()):
        if not param.is_meta:
            continue
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        fan_in = getattr(module, "in_features", None)
        setattr(module, leaf, nn.Parameter(_fresh(name, param.shape, fan_in)))
        fresh.append(name)
    if fresh:
        log.info("fresh adapter tensors (official initialisation): %d, e.g. %s", len(fresh), ", ".join(fresh[:3]))
    return model


def build(config: RunConfig, *, need_encoder: bool, device: torch.device, frozen_dtype: torch.dtype,
          encoder_dtype: torch.dtype | None = None) -> Components:
    """The model of ``config.model`` for ``config.stage``, frozen weights in ``frozen_dtype``
    on ``device``, trainable groups set (float32)."""
    from imagebind_llm.tokenizer import Tokenizer

    m = config.model
    encoder = None
    if m.preset is not None:
        from imagebind_llm.presets import UNTRAINED_PRESET, build_untrained_pipeline
        from imagebind_llm.weights import project_to_adapter

        if m.preset != UNTRAINED_PRESET:
            raise CheckpointError(f"model.preset: only {UNTRAINED_PRESET!r} needs no files; for a released model "
                                  "give model.llama, model.imagebind and model.adapter")
        pipe = build_untrained_pipeline(seed=m.preset_seed)
        tokenizer = pipe.tokenizer
        llama_config = pipe.model.config.llama
        base_state = base_llama_state(pipe.model)
        adapter_state = dict(project_to_adapter(pipe.model)) if m.adapter is None else read_adapter(m.adapter)
        imagebind_config = pipe.imagebind.config
        encoder = pipe.imagebind if need_encoder else None
        sources = {"preset": m.preset, "adapter": m.adapter or "preset"}
    else:
        if m.llama is None:
            raise CheckpointError("model.llama (a base LLaMA folder) or model.preset (tiny-untrained) is required")
        llama_config, base_state = read_llama(m.llama)
        tokenizer = Tokenizer(m.tokenizer or find_tokenizer(m.llama))
        adapter_state = read_adapter(m.adapter) if m.adapter else None
        imagebind_config = imagebind_config_from_spec(m.imagebind_config)
        if need_encoder:
            from imagebind_llm.checkpoint import load_imagebind

            if not m.imagebind:
                raise CheckpointError("model.imagebind (an ImageBind checkpoint) is needed to encode raw media; "
                                      "or train from precomputed features (data.features)")
            encoder = load_imagebind(m.imagebind, imagebind_config)
        sources = {"llama": m.llama, "adapter": m.adapter or "fresh", "imagebind": m.imagebind}
    if tokenizer.n_words != llama_config.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.n_words} pieces but the LLaMA's vocabulary is "
                              f"{llama_config.vocab_size}")
    bias_lora = m.bias_lora
    if adapter_state:
        check_adapter_fits(None, adapter_state, llama_config, tokenizer.n_words)
        adapter = replace(infer_adapter_config(adapter_state, llama_config.n_layers), bias_lora=bias_lora)
        if adapter.imagebind_dim != imagebind_config.embed_dim:
            raise CheckpointError(f"the adapter takes ImageBind features of width {adapter.imagebind_dim} but the "
                                  f"ImageBind config embeds to {imagebind_config.embed_dim}")
        if not bias_lora:
            dropped = [k for k in adapter_state if k.startswith("llama.") and ("lora" in k or "bias" in k)]
            if dropped:
                log.info("this stage's model has no LoRA/bias tuning: %d adapter tensors left out", len(dropped))
            adapter_state = {k: v for k, v in adapter_state.items() if k not in dropped}
        elif not any("lora" in k for k in adapter_state):
            adapter = replace(adapter, lora_rank=m.lora_rank)
    else:
        adapter = AdapterConfig(imagebind_dim=imagebind_config.embed_dim,
                                query_layer=m.query_layer or llama_config.n_layers, legacy_bridge=m.legacy_bridge,
                                bias_lora=bias_lora, lora_rank=m.lora_rank, bind_blocks=m.bind_blocks)
    model = assemble(llama_config, base_state, adapter_state, adapter)
    model.to(device=device, dtype=frozen_dtype)
    set_trainable(model, config.trainable)
    model.train()
    if encoder is not None:
        encoder.to(device=device, dtype=encoder_dtype or frozen_dtype)
        encoder.eval().requires_grad_(False)
    return Components(model, tokenizer, encoder, imagebind_config, sources)


# ---------------------------------------------------------------------------------------------
# The training forward
# ---------------------------------------------------------------------------------------------


def _inject_in_layer(block: nn.Module, args: tuple):
    """Forward pre-hook of an injected TransformerBlock: turn the adapter token (B, 1, dim)
    into the gated injection inside the block's own forward, where FSDP has gathered its
    weights (``wv`` and ``gate`` belong to the block)."""
    if len(args) != 8:
        raise RuntimeError("TransformerBlock.forward(x, cos, sin, mask, cache, layer, start, injection) changed; "
                           "update train/modeling.py")
    adapter = args[7]
    if adapter is None or adapter.ndim != 3:
        return None
    return (*args[:7], block.attention.injection(adapter))


class TrainModule(nn.Module):
    """ImageBindLLM's training forward (reference.md 4.7): fused ImageBind features (B, D) and a
    per-row visual mask (B,) -> logits (B, L, vocab) float32. Rows with mask 0 (examples without
    media) get no injection, exactly like inference without media."""

    def __init__(self, model: ImageBindLLM):
        super().__init__()
        self.model = model
        for index in model.llama.injected_layers:
            model.llama.layers[index].register_forward_pre_hook(_inject_in_layer)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        model = self.model
        query = model.visual_query(features)  # (B, 1, dim)
        adapters = (query + model.prefix_query.unsqueeze(0)) * visual.to(query.dtype)[:, None, None]
        adapters = adapters.to(model.dtype)  # (B, query_layer, dim)
        per_layer: list[torch.Tensor | None] = [None] * model.config.llama.n_layers
        for row, layer in enumerate(model.llama.injected_layers):
            per_layer[layer] = adapters[:, row:row + 1]
        return model.llama(tokens, injections=per_layer)


def loss_sums(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy (logits[:, :-1] against labels[:, 1:], the official
    shift) and the number of target tokens."""
    targets = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                           targets.reshape(-1), ignore_index=ignore_index, reduction="sum")
    return ce, (targets != ignore_index).sum()
