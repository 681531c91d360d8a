"""The run configuration: typed sections, per-stage defaults as data, YAML files and
``key=value`` overrides.

Precedence, lowest first: the dataclass defaults, the stage's defaults (:data:`STAGES`), the
YAML file given with ``--config``, then the ``section.key=value`` overrides of the command line.
A stage is nothing but a few overrides (reference.md section 5.4, the ``exps/*.sh`` values
that produced the released weights), in the spirit of nanoGPT's ``config/*.py`` files.

YAML layout (every key optional; sections as in the dataclasses below)::

    stage: finetune
    out_dir: runs/finetune
    model: {llama: /llama/7B, imagebind: ckpts/imagebind_w3D.pth, adapter: ckpts/7B-pretrained.pth}
    data:  {train: [llava_instruct_150k.json, alpaca_gpt4_data.json], media_root: /data/coco}
    optim: {batch_size: 4, blr: 1.0e-3}

The official data YAML (``META: [file, ...]``) is accepted as well: ``META`` becomes
``data.train``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebind_llm.fusion import FUSION_MODES
from imagebind_llm.prompts import CAPTION_INSTRUCTION

#: The trainable-parameter groups, by official parameter name (reference.md 4.1):
#: ``get_trainable_params`` of the official code, split into named pieces.
TRAINABLE_GROUPS = ("bind_network", "prefix", "gates", "lora", "bias", "norm")


@dataclass
class ModelConfig:
    """Where the model comes from.

    Either ``preset: tiny-untrained`` (the small random model of ``imagebind_llm.presets``; no
    files) or files: ``imagebind`` (an official ImageBind(-LLM) checkpoint, needed for training
    from raw media and for ``--precompute``), ``imagebind_config`` (a preset name such as
    ``imagebind_huge``, or a JSON file: ``ImageBindConfig.to_dict()`` or the official
    ``{"kwargs": ..., "point_encoder": ...}`` layout), ``llama`` (a Meta or Hugging Face base
    folder), ``tokenizer`` (default: found beside ``llama``) and ``adapter`` (the adapter to
    start from: official ``{'model': ...}`` file, a full official training checkpoint or the
    project format; omitted = a fresh adapter, as the official pre-training starts).
    ``query_layer``/``legacy_bridge``/``lora_rank``/``bind_blocks`` shape a fresh adapter
    (a loaded one says its own shape). ``frozen_dtype``: dtype of the frozen weights
    (``auto``: bfloat16/float16 with GPU autocast, float32 otherwise); trainable tensors are
    always float32.
    """

    preset: str | None = None
    preset_seed: int = 0
    imagebind: str | None = None
    imagebind_config: str = "imagebind_huge"
    llama: str | None = None
    tokenizer: str | None = None
    adapter: str | None = None
    query_layer: int | None = None
    legacy_bridge: bool = False
    lora_rank: int = 16
    bind_blocks: int = 3
    bias_lora: bool = True
    frozen_dtype: str = "auto"


@dataclass
class DataConfig:
    """The data. ``train``/``eval``: files listing examples (``.csv``/``.tsv``: the official
    tab-separated ``url``/``caption`` pre-training format; ``.json``/``.jsonl``: LLaVA records
    with ``image`` and ``conversations``, or Alpaca records ``instruction``/``input``/``output``).
    Relative media paths are taken from ``media_root`` or, without it, from the listing file's
    folder. ``eval_fraction`` holds out that share of ``train`` when ``eval`` is empty.

    ``max_words``: tokens per example (official 96 / 512). ``instruction``: the pre-training
    prompt. ``multi_turn``: use every question/answer pair of a LLaVA conversation (official:
    the first only). ``label_format``: ``corrected`` (ignored positions are -100, so a real
    ``<unk>`` in an answer is learnt) or ``official`` (0, bit-exact official tensors).
    ``strip_media_markers``: remove LLaVA's literal ``<image>`` lines (official: kept).
    ``fusion``: how an example with several media is mixed (``imagebind_llm.fusion``):
    ``official`` (weights divided by their sum, not re-normalised, as ``forward_visual``) or
    ``normalized`` (the unit mix the app and the Pipeline make by default).

    Media: ``augment`` = the official random resized crop for images (raw media only);
    ``preprocess_mode`` = the project loaders' ``official``/``corrected`` mode; ``features`` =
    a folder of precomputed ImageBind embeddings (``--precompute`` writes it); ``check_media``
    = ``exists`` (stat every media file at start), ``decode`` (decode them all at start) or
    ``none`` (find problems while training). ``strict``: stop at the first bad record instead
    of counting and skipping it. ``split_epoch``: official sub-epochs (pre-training: 50
    "epochs" make one pass).
    """

    train: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)
    eval_fraction: float = 0.0
    media_root: str | None = None
    max_words: int = 512
    instruction: str = CAPTION_INSTRUCTION
    multi_turn: bool = False
    label_format: str = "corrected"
    strip_media_markers: bool = False
    fusion: str = "official"
    augment: bool = True
    preprocess_mode: str = "corrected"
    features: str | None = None
    check_media: str = "exists"
    strict: bool = False
    split_epoch: int = 1
    num_workers: int = 4
    feature_batch_size: int = 16
    feature_shard_size: int = 1024


@dataclass
class OptimConfig:
    """Optimisation (reference.md 5.4). ``batch_size`` is per device and per micro-step;
    the effective batch is ``batch_size x accum_iter x world``; ``lr`` defaults to
    ``blr x effective batch / 256`` (the official scaling). The schedule is linear warm-up
    then cosine to ``min_lr``, evaluated per optimizer step in fractional epochs; ``max_steps``
    replaces ``epochs`` as the run (and schedule) length, ``warmup_steps`` replaces
    ``warmup_epochs``. ``clip_grad``: max gradient norm (official: none).
    ``loss_reduction``: ``tokens`` (mean over every answer token of the global batch: the same
    loss for any split into processes and micro-steps) or ``official`` (mean per micro-batch,
    averaged over micro-steps and processes)."""

    batch_size: int = 4
    accum_iter: int = 1
    blr: float = 1e-3
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    epochs: int = 400
    warmup_epochs: float = 40.0
    max_steps: int | None = None
    warmup_steps: float | None = None
    clip_grad: float | None = None
    loss_reduction: str = "tokens"


@dataclass
class RunConfig:
    """One training run. ``trainable``: groups of :data:`TRAINABLE_GROUPS`. ``strategy``:
    ``ddp`` (replicated model) or ``fsdp`` (FSDP2 ``fully_shard`` of every LLaMA layer and
    the rest). ``precision``: ``auto`` (bfloat16 autocast on a GPU that supports it, else
    float16 with a gradient scaler; float32 on CPU), ``fp32``, ``bf16`` or ``fp16``.
    Intervals are in optimizer steps; 0 = only at the end. ``resume``: a checkpoint path,
    ``auto`` (the newest in ``out_dir``, if any) or none."""

    stage: str = "finetune"
    out_dir: str = "runs/{stage}"
    seed: int = 0
    device: str = "auto"
    strategy: str = "ddp"
    precision: str = "auto"
    trainable: list[str] = field(default_factory=lambda: ["lora", "bias", "norm"])
    log_interval: int = 10
    eval_interval: int = 0
    save_interval: int = 0
    keep_checkpoints: int = 2
    resume: str | None = None
    tensorboard: bool = True
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir.format(stage=self.stage))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: What differs between the two stages, as overrides (reference.md 4.1, 4.3, 5.1-5.5;
#: learning rates, epochs and weight decay of exps/pretrain.sh and exps/finetune.sh).
STAGES: dict[str, dict[str, Any]] = {
    "pretrain": {
        "trainable": ["bind_network", "gates", "prefix"],
        "model.bias_lora": False,
        "data.max_words": 96,
        "data.split_epoch": 50,
        "optim.blr": 1e-4,
        "optim.weight_decay": 0.05,
        "optim.epochs": 150,
        "optim.warmup_epochs": 5,
    },
    "finetune": {
        "trainable": ["lora", "bias", "norm"],
        "model.bias_lora": True,
        "data.max_words": 512,
        "data.split_epoch": 1,
        "optim.blr": 1e-3,
        "optim.weight_decay": 0.02,
        "optim.epochs": 4,
        "optim.warmup_epochs": 1,
    },
}

_CHOICES = {
    "stage": tuple(STAGES), "strategy": ("ddp", "fsdp"), "precision": ("auto", "fp32", "bf16", "fp16"),
    "data.label_format": ("corrected", "official"), "data.preprocess_mode": ("official", "corrected"),
    "data.fusion": FUSION_MODES, "data.check_media": ("exists", "decode", "none"),
    "optim.loss_reduction": ("tokens", "official"),
    "model.frozen_dtype": ("auto", "float32", "bfloat16", "float16"),
}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder the configuration names (data, features, a checkpoint) is not there."""


def _sections() -> dict[str, type]:
    return {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_scalar(text: str) -> Any:
    """A command-line value: YAML scalars and lists (``1e-4``, ``true``, ``[a, b]``, ``null``)."""
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Check/convert ``value`` to the annotated type of ``key``."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, args[0] if args else str) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if number != int(number):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _set(config: RunConfig, key: str, value: Any) -> None:
    parts = key.split(".")
    sections = _sections()
    if len(parts) == 1:
        target, name, cls = config, parts[0], RunConfig
        if name in sections:
            raise ConfigError(f"{key} is a section; set its keys ({key}.<name>=...)")
    elif len(parts) == 2 and parts[0] in sections:
        target, name, cls = getattr(config, parts[0]), parts[1], sections[parts[0]]
    else:
        raise ConfigError(f"unknown configuration key {key!r}; sections: {', '.join(sections)}")
    types = _field_types(cls)
    if name not in types:
        import difflib

        close = difflib.get_close_matches(name, list(types), n=1)
        hint = f" (did you mean {'.'.join(parts[:-1] + close)}?)" if close else ""
        raise ConfigError(f"unknown configuration key {key!r}{hint}")
    setattr(target, name, _coerce(key, value, types[name]))


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and (prefix + key) in _sections():
            out.update(_flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


#: The run YAMLs that ship with the package (``--config laptop`` is ``train/configs/laptop.yaml``).
BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A run YAML as flat ``section.key`` entries (``META`` maps to ``data.train``). ``path`` is
    a file or the name of a bundled config (:data:`BUNDLED_CONFIGS`)."""
    import yaml

    path = Path(path)
    if not path.is_file() and str(path) in bundled_configs():
        path = BUNDLED_CONFIGS / f"{path}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (the bundled configs: {', '.join(bundled_configs())})")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping")
    loaded = dict(loaded)
    if "META" in loaded:  # the official data-config layout
        loaded.setdefault("data", {})
        loaded["data"] = dict(loaded["data"], train=loaded.pop("META"))
    flat = _flatten(loaded)
    base = path.parent
    # Paths in a YAML file are relative to the file (not to the current directory).
    for key in ("data.train", "data.eval"):
        if key in flat and flat[key] is not None:
            items = flat[key] if isinstance(flat[key], list) else [flat[key]]
            flat[key] = [str(base / p) if not Path(p).is_absolute() else p for p in items]
    for key in ("data.media_root", "data.features", "model.imagebind", "model.llama", "model.tokenizer",
                "model.adapter", "out_dir"):
        value = flat.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (base / value).exists():
            flat[key] = str(base / value)
    if isinstance(flat.get("model.imagebind_config"), str) and (base / flat["model.imagebind_config"]).is_file():
        flat["model.imagebind_config"] = str(base / flat["model.imagebind_config"])
    return flat


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.blr=1e-3", "data.train=[a.json, b.json]"]`` -> {key: value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"an override is written key=value, got {item!r}")
        key, _, text = item.partition("=")
        out[key.strip()] = _parse_scalar(text)
    return out


def read_setting(key: str, text: str, kind: Any) -> Any:
    """One command-line value ``text`` read as the type ``kind`` of setting ``key`` (the rules of
    ``key=value`` overrides; ConfigError names the key when the value does not fit)."""
    return _coerce(key, _parse_scalar(text), kind)


def build_config(stage: str | None = None, yaml_path: str | Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults < stage overrides < YAML < ``overrides``; validated."""
    from_yaml = read_yaml(yaml_path) if yaml_path else {}
    overrides = dict(overrides or {})
    stage = stage or overrides.get("stage") or from_yaml.get("stage") or "finetune"
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    config = RunConfig(stage=stage)
    for source in (STAGES[stage], from_yaml, overrides):
        for key, value in source.items():
            if key == "stage":
                continue
            _set(config, key, value)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    flat = {"stage": config.stage, "strategy": config.strategy, "precision": config.precision,
            "data.label_format": config.data.label_format, "data.preprocess_mode": config.data.preprocess_mode,
            "data.fusion": config.data.fusion, "data.check_media": config.data.check_media,
            "optim.loss_reduction": config.optim.loss_reduction,
            "model.frozen_dtype": config.model.frozen_dtype}
    for key, value in flat.items():
        if value not in _CHOICES[key]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
    unknown = set(config.trainable) - set(TRAINABLE_GROUPS)
    if unknown or not config.trainable:
        raise ConfigError(f"trainable: unknown or empty groups {sorted(unknown)}; known: {', '.join(TRAINABLE_GROUPS)}")
    if not config.model.bias_lora and {"lora", "bias"} & set(config.trainable):
        raise ConfigError("trainable has lora/bias but model.bias_lora is false (the pre-training model has "
                          "no LoRA and no bias-tuning biases)")
    o, d = config.optim, config.data
    for key, value in (("optim.batch_size", o.batch_size), ("optim.accum_iter", o.accum_iter),
                       ("data.max_words", d.max_words), ("data.split_epoch", d.split_epoch),
                       ("optim.epochs", o.epochs), ("data.feature_batch_size", d.feature_batch_size),
                       ("data.feature_shard_size", d.feature_shard_size)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if o.max_steps is not None and o.max_steps < 1:
        raise ConfigError(f"optim.max_steps must be at least 1, got {o.max_steps}")
    if not 0.0 <= d.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}")
    if d.num_workers < 0:
        raise ConfigError("data.num_workers must be >= 0")
    if o.clip_grad is not None and o.clip_grad <= 0:
        raise ConfigError("optim.clip_grad must be positive (or null for no clipping)")


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """The inverse of :meth:`RunConfig.to_dict` (e.g. the config stored in a checkpoint)."""
    data = dict(data)
    config = RunConfig(stage=data.get("stage", "finetune"))
    for key, value in _flatten(data).items():
        _set(config, key, value)
    return config


def describe(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, default=str)
