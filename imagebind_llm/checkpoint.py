"""Official ImageBind / Point-Bind checkpoints <-> this project's modules, by an explicit key map.

Three official layouts are read (reference.md 1.8, 1.9, 3.6):

* ``imagebind_huge.pth`` (original ImageBind, no point keys),
* ``imagebind_w3D.pth`` (ImageBind-LLM: the same plus ``point_trunk.*``, ``modality_heads.point.*``,
  ``modality_postprocessors.point.*``),
* the Point-Bind Point-BERT checkpoint (``bind.*``, ``point_encoder.*``, ``pc_projection``,
  ``logit_scale``), first renamed to the ImageBind-LLM layout.

Each official key maps to one project key through :data:`IMAGEBIND_KEY_RULES`; the one
official key without a project tensor is the text causal mask, which is checked on load and
regenerated on save, so saving back gives the official dict exactly (keys, order, values).
Loading is strict: missing and unexpected keys are listed, a shape mismatch names the key and
both shapes. Files are read with ``torch.load(weights_only=True, mmap=True)``; with
:func:`load_imagebind` the model is built on the meta device and takes the mapped tensors
without a copy.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch

from .config import ImageBindConfig, imagebind_huge
from .errors import CheckpointError
from .keymap import KeyRule, find_rule, same, translate

log = logging.getLogger(__name__)

_W = [("weight", "weight"), ("bias", "bias")]
_BN = _W + [("running_mean", "running_mean"), ("running_var", "running_var"),
            ("num_batches_tracked", "num_batches_tracked")]


# Parts of one ImageBind transformer block, in the official state-dict order.
_IB_BLOCK = [
    ("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.bias_k", "attn.bias_k"), ("attn.bias_v", "attn.bias_v"),
    ("attn.out_proj.weight", "attn.proj.weight"), ("attn.out_proj.bias", "attn.proj.bias"),
    ("norm_1.weight", "norm1.weight"), ("norm_1.bias", "norm1.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
    ("norm_2.weight", "norm2.weight"), ("norm_2.bias", "norm2.bias"),
]
# Parts of one Point-BERT block, in the official order.
_POINT_BLOCK = same("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                     "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "attn.qkv.weight",
                     "attn.proj.weight", "attn.proj.bias")


_TRUNKS = same("vision", "text", "audio", "depth", "thermal", "imu")
IMAGEBIND_KEY_RULES: list[KeyRule] = [
    # preprocessors (order within a modality follows the official dict)
    KeyRule("modality_preprocessors.{m}.pos_embed", "{m}.pos_embed", {"m": same("text", "imu")}),
    KeyRule("modality_preprocessors.text.mask", None),
    KeyRule("modality_preprocessors.text.token_embedding.weight", "text.token_embed.weight"),
    KeyRule("modality_preprocessors.{m}.cls_token", "{m}.cls_token",
            {"m": same("vision", "audio", "depth", "thermal", "imu")}),
    KeyRule("modality_preprocessors.vision.rgbt_stem.proj.1.weight", "vision.patch_embed"),
    KeyRule("modality_preprocessors.{m}.rgbt_stem.proj.weight", "{m}.patch_embed", {"m": same("audio", "thermal")}),
    KeyRule("modality_preprocessors.{m}.rgbt_stem.norm_layer.{p}", "{m}.patch_norm.{p}",
            {"m": same("audio", "thermal"), "p": _W}),
    KeyRule("modality_preprocessors.depth.depth_stem.proj.weight", "depth.patch_embed"),
    KeyRule("modality_preprocessors.depth.depth_stem.norm_layer.{p}", "depth.patch_norm.{p}", {"p": _W}),
    KeyRule("modality_preprocessors.imu.imu_stem.proj.weight", "imu.patch_embed.weight"),
    KeyRule("modality_preprocessors.imu.imu_stem.norm_layer.{p}", "imu.patch_norm.{p}", {"p": _W}),
    KeyRule("modality_preprocessors.{m}.pos_embedding_helper.pos_embed", "{m}.pos_embed",
            {"m": same("vision", "audio", "depth", "thermal")}),
    # trunks
    KeyRule("modality_trunks.vision.pre_transformer_layer.0.{p}", "vision.trunk.pre_norm.{p}", {"p": _W}),
    KeyRule("modality_trunks.{m}.blocks.{n}.{part}", "{m}.trunk.blocks.{n}.{part}",
            {"m": _TRUNKS, "part": _IB_BLOCK}),
    # heads
    KeyRule("modality_heads.text.proj.0.{p}", "text.head.norm.{p}", {"p": _W}),
    KeyRule("modality_heads.text.proj.1.weight", "text.head.proj.weight"),
    KeyRule("modality_heads.{m}.0.{p}", "{m}.head.norm.{p}",
            {"m": same("vision", "audio", "depth", "thermal", "imu", "point"), "p": _W}),
    KeyRule("modality_heads.{m}.2.weight", "{m}.head.proj.weight",
            {"m": same("vision", "audio", "depth", "thermal", "point")}),
    KeyRule("modality_heads.imu.3.weight", "imu.head.proj.weight"),
    # postprocessors (vision has none)
    KeyRule("modality_postprocessors.{m}.1.log_logit_scale", "{m}.log_logit_scale",
            {"m": same("text", "audio", "depth", "thermal", "imu", "point")}),
    # the Point-BERT branch of ImageBind-LLM
    KeyRule("point_trunk.pc_projection", "point.encoder.projection"),
    KeyRule("point_trunk.point_encoder.{p}", "point.encoder.{p}", {"p": same("cls_token", "cls_pos")}),
    KeyRule("point_trunk.point_encoder.encoder.{conv}.{layer}.{p}", "point.encoder.group_encoder.{conv}.{layer}.{p}",
            {"conv": same("first_conv", "second_conv"), "layer": same("0", "1", "3"), "p": _BN}),
    KeyRule("point_trunk.point_encoder.reduce_dim.{p}", "point.encoder.reduce_dim.{p}", {"p": _W}),
    KeyRule("point_trunk.point_encoder.pos_embed.{layer}.{p}", "point.encoder.pos_embed.{layer}.{p}",
            {"layer": same("0", "2"), "p": _W}),
    KeyRule("point_trunk.point_encoder.blocks.blocks.{n}.{part}", "point.encoder.blocks.{n}.{part}",
            {"part": _POINT_BLOCK}),
    KeyRule("point_trunk.point_encoder.norm.{p}", "point.encoder.norm.{p}", {"p": _W}),
]

POINT_PREFIXES = ("point_trunk.", "modality_heads.point.", "modality_postprocessors.point.")
_CATEGORIES = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors",
               "point_trunk")
_MODALITY_ORDER = ("vision", "text", "audio", "depth", "thermal", "imu", "point")


def official_to_project_key(key: str) -> str | None:
    """The project key of an official key (``None`` for the derived text mask)."""
    return translate(IMAGEBIND_KEY_RULES, key, 0)


def project_to_official_key(key: str) -> str:
    return translate(IMAGEBIND_KEY_RULES, key, 1)  # type: ignore[return-value]


def _official_sort_key(key: str) -> tuple:
    """Reproduces the order of the official state dict: category, modality, then the
    position of the rule, the block number and the part within the rule."""
    index, rule, values = find_rule(IMAGEBIND_KEY_RULES, key, 0)
    head, _, rest = key.partition(".")
    modality = rest.split(".")[0]
    block = int(values.get("n", -1))
    parts = tuple(
        [c[0] for c in rule.choices[name]].index(value) for name, value in values.items() if name != "n"
    )
    return (_CATEGORIES.index(head), _MODALITY_ORDER.index(modality) if modality in _MODALITY_ORDER else -1,
            index, block, parts)


def text_causal_mask(context_length: int) -> torch.Tensor:
    return torch.full((context_length, context_length), float("-inf")).triu(1)


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the common wrappers ``{'model': ...}`` / ``{'state_dict': ...}``."""
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and not isinstance(inner, torch.Tensor):
                return dict(inner)
        return dict(obj)
    raise CheckpointError(f"a checkpoint must be a dict of tensors, got {type(obj).__name__}")


def is_point_bind_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("bind.") for k in state) and any(k.startswith("point_encoder.") for k in state)


def point_bind_to_imagebind_llm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Point-Bind (Point-BERT) checkpoint to the ImageBind-LLM layout (reference.md 3.6)."""
    projection = state.get("pc_projection")
    if projection is not None and projection.shape[0] != 2 * state["point_encoder.cls_token"].shape[-1]:
        raise CheckpointError(
            f"this looks like the Point-Bind I2P-MAE checkpoint (pc_projection {tuple(projection.shape)}); "
            "only the Point-BERT variant, which ImageBind-LLM uses, is supported")
    renames = [("bind.modality_head_point.", "modality_heads.point."),
               ("bind.modality_postprocessor_point.", "modality_postprocessors.point."),
               ("bind.", ""), ("point_encoder.", "point_trunk.point_encoder."),
               ("pc_projection", "point_trunk.pc_projection")]
    out = {}
    for key, value in state.items():
        if key == "logit_scale":  # Point-Bind's own training temperature; not part of ImageBind
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def official_to_project(
    state: Mapping[str, torch.Tensor], config: ImageBindConfig
) -> dict[str, torch.Tensor]:
    """Map an official ImageBind(-LLM) state dict to project keys; strict.

    The point keys must all be present when ``config.point`` is set and are dropped when it is
    None (the point branch is not used). Raises :class:`CheckpointError` listing every
    missing or unexpected key.
    """
    if is_point_bind_layout(state):
        state = point_bind_to_imagebind_llm(state)
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if config.point is None and key.startswith(POINT_PREFIXES):
            continue
        try:
            project_key = official_to_project_key(key)
        except KeyError:
            unexpected.append(key)
            continue
        if project_key is None:  # the text causal mask: derived, but it must be the expected one
            expected = text_causal_mask(config.text.context_length)
            if value.shape != expected.shape or not torch.equal(value.float(), expected):
                raise CheckpointError(
                    f"{key}: expected the {tuple(expected.shape)} causal mask (0 on and below the "
                    f"diagonal, -inf above), got a tensor of shape {tuple(value.shape)} with other values")
            continue
        out[project_key] = value
    expected_keys = set(_project_keys(config))
    missing = sorted(expected_keys - set(out))
    unexpected += sorted(set(out) - expected_keys)
    if missing or unexpected:
        raise CheckpointError(_key_report(missing, unexpected, config))
    return out


#: How many keys or shapes an error lists (a checkpoint of another size mismatches in hundreds).
LISTED = 8
OTHER_SIZE_HINT = ("  (a checkpoint of another ImageBind size? give the config it was made with: "
                   "--imagebind-config FILE, or imagebind_huge for the released one)")


def _listed(items: list[str]) -> str:
    more = f", ... and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def _key_report(missing: list[str], unexpected: list[str], config: ImageBindConfig) -> str:
    lines = ["the checkpoint does not match the ImageBind model:"]
    official = [project_to_official_key(k) for k in missing]
    point_only = bool(official) and config.point is not None and all(k.startswith(POINT_PREFIXES) for k in official)
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + _listed(official))
        if point_only:
            lines.append("  (these are the point-cloud branch keys: use imagebind_w3D.pth, or build the "
                         "model without the point modality)")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + _listed(unexpected))
    if not point_only:
        lines.append(OTHER_SIZE_HINT)
    return "\n".join(lines)


def _project_keys(config: ImageBindConfig) -> list[str]:
    from .encoders.imagebind import ImageBind

    with torch.device("meta"):
        return list(ImageBind(config).state_dict().keys())


def check_shapes(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    problems = [
        f"{project_to_official_key(k)} (project key {k}): checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    if problems:
        listed = problems[:LISTED] + ([f"... and {len(problems) - LISTED} more"] if len(problems) > LISTED else [])
        raise CheckpointError(f"shape mismatch between the checkpoint and the model config ({len(problems)} "
                              f"tensor{'s' if len(problems) > 1 else ''}):\n  " + "\n  ".join(listed)
                              + "\n" + OTHER_SIZE_HINT)


def project_to_official(model_or_state, include_point: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """The official state dict (ImageBind-LLM layout; ``include_point=False`` gives the original
    ``imagebind_huge.pth`` layout), in the official key order, text mask included."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    out = {}
    context_length = None
    for key, value in state.items():
        official = project_to_official_key(key)
        if not include_point and official.startswith(POINT_PREFIXES):
            continue
        out[official] = value
        if key == "text.pos_embed":
            context_length = value.shape[1]
    if context_length is None:
        raise CheckpointError("the state dict has no text.pos_embed; is it an ImageBind state dict?")
    out["modality_preprocessors.text.mask"] = text_causal_mask(context_length)
    return OrderedDict((k, out[k]) for k in sorted(out, key=_official_sort_key))


def read_state_dict(path: str | Path, mmap: bool = True) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``, memory-mapped where the file format allows it. The
    official training checkpoints (``checkpoint-N.pth``, ``7B-pretrained.pth``) also hold their
    command-line arguments as an ``argparse.Namespace`` (reference.md 5.6), which is allowed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    import argparse
    import zipfile

    # Only the zip format (torch >= 1.6) can be memory-mapped; legacy files are read whole.
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # pickle errors, truncated files, foreign objects, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path.name}: cannot read the checkpoint ({first_line})") from error
    return unwrap_state_dict(obj)


def load_imagebind(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: ImageBindConfig | None = None,
    *,
    with_point: bool | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    lazy: bool = False,
):
    """Build an :class:`ImageBind` from an official checkpoint, in eval mode.

    ``config`` defaults to :func:`imagebind_huge`. ``with_point``: None = use the point branch
    when the checkpoint has point keys; True = require them; False = ignore them. ``lazy``:
    check every key and shape now but read an encoder's weights (memory-mapped) only when it
    first encodes; until then it holds meta tensors (see :mod:`imagebind_llm.lowmem`).
    """
    from .encoders.imagebind import ImageBind
    from .precision import as_dtype

    dtype = as_dtype(dtype, allow_auto=False)
    state = read_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else unwrap_state_dict(checkpoint)
    if is_point_bind_layout(state):
        state = point_bind_to_imagebind_llm(state)
    config = config or imagebind_huge(with_point=True)
    has_point = any(k.startswith(POINT_PREFIXES) for k in state)
    use_point = has_point if with_point is None else with_point
    if use_point and config.point is None:
        raise CheckpointError("the point branch was requested but the config has no PointConfig")
    if not use_point and config.point is not None:
        from dataclasses import replace

        config = replace(config, point=None)
    try:
        project_state = official_to_project(state, config)
        with torch.device("meta"):
            model = ImageBind(config)
        check_shapes(model, project_state)
    except CheckpointError as error:
        if isinstance(checkpoint, (str, Path)):  # say which file, as the loader is given several
            raise CheckpointError(f"{checkpoint}: {error}") from None
        raise
    if lazy:
        from .lowmem import EncoderResidency

        model.eval()
        model.residency = EncoderResidency(device=device, dtype=dtype, source=project_state,
                                           modalities=model.modalities)
        log.info("ImageBind (%s modalities) checked; each encoder is read on first use", len(model.modalities))
        return model
    if dtype is not None or str(device) != "cpu":
        from .memory_check import conversion_bytes, require_memory

        smaller = "in bfloat16 (--imagebind-dtype bfloat16) or " if dtype in (None, torch.float32) else ""
        require_memory(conversion_bytes(project_state.values(), dtype, device), device,
                       f"ImageBind in {str(dtype or 'its checkpoint dtype').removeprefix('torch.')}",
                       f"Load it {smaller}one encoder at a time as used (--lazy-encoders), see README \"Memory\"")
    model.load_state_dict(project_state, strict=True, assign=True)
    model.eval()
    if dtype is not None or str(device) != "cpu":
        model.to(device=device, dtype=dtype)
    log.info("loaded ImageBind (%s modalities) from %s", len(model.modalities),
             checkpoint if isinstance(checkpoint, (str, Path)) else "a state dict")
    return model
