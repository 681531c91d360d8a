"""Training checkpoints (resume exactly) and adapter exports (official and project formats).

A training checkpoint ``checkpoint-<step>.pt`` holds what a run cannot rebuild from its files:
the trainable tensors, the AdamW state (keyed by parameter name, so it survives a change of
wrapping), the step and the sampler position, every process's random generators, the gradient
scaler, the bad records met so far, and the run and model configs (nanoGPT's "checkpoints carry
their config"). The frozen ImageBind and LLaMA weights are not copied (the official checkpoint
holds them all: about 13 GB per save for 7B); they come back from the files named in the config.

Exports:

* ``adapter-official.pth``: ``{'model': {official key: tensor}}``, the keys the official
  ``convert_ckpt.py`` keeps (bind network, prefix queries, gates, biases, LoRA, norms), loadable
  by the official ``llama.load`` and by :func:`imagebind_llm.weights.read_adapter`.
* ``adapter-imagebind-llm.pth``: the same ``model`` dict plus ``format``
  (``imagebind-llm-adapter``), ``version``, ``config`` (the ``ImageBindLLMConfig``) and
  ``training`` (stage, step, losses, data files, run config). ``read_adapter`` reads its
  ``model`` like any official file; :func:`read_project_adapter` returns the config too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebind_llm.config import AdapterConfig, ImageBindLLMConfig, LlamaConfig
from imagebind_llm.weights import is_adapter_key, project_to_adapter_key

from .config import ConfigError, MissingFileError
from .distributed import DistInfo, all_gather_objects, full_tensor, shard_like

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "imagebind-llm-train-checkpoint"
ADAPTER_FORMAT = "imagebind-llm-adapter"
VERSION = 1
_NAME = re.compile(r"checkpoint-(\d+)\.pt")


def atomic_save(obj: Any, path: Path) -> None:
    partial = path.with_name(path.name + ".part")
    torch.save(obj, partial)
    os.replace(partial, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(params: dict[str, torch.nn.Parameter], names: list[str]) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable tensors (collective under FSDP)."""
    return {name: full_tensor(params[name].detach()).cpu().clone() for name in names}


def optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], params: dict[str, torch.nn.Parameter]) -> dict:
    """AdamW state keyed by parameter name, every tensor whole (collective under FSDP)."""
    by_id = {id(params[n]): n for n in names}
    state = {}
    for param in (p for group in optimizer.param_groups for p in group["params"]):
        name = by_id[id(param)]
        entries = optimizer.state.get(param, {})
        state[name] = {k: (full_tensor(v).cpu().clone() if torch.is_tensor(v) else v)
                       for k, v in sorted(entries.items())}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [by_id[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, params: dict[str, torch.nn.Parameter]) -> None:
    """The inverse of :func:`optimizer_state` (tensors re-sharded like their parameter)."""
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    names = {id(p): n for n, p in params.items()}
    state = {}
    for index, param in enumerate(ordered):
        name = names[id(param)]
        if name not in saved["state"]:
            raise KeyError(f"the checkpoint's optimizer has no state for {name}")
        entry = {}
        for key, value in saved["state"][name].items():
            if torch.is_tensor(value) and value.shape == param.shape:
                entry[key] = shard_like(value, param)
            else:
                entry[key] = value
        if entry:
            state[index] = entry
    groups = []
    position = 0
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        if len(group["params"]) != len(saved_group["params"]):
            raise ConfigError("the checkpoint's optimizer groups do not match this run's trainable set")
        restored = {k: v for k, v in saved_group.items() if k != "params"}
        restored["params"] = list(range(position, position + len(group["params"])))
        position += len(group["params"])
        groups.append(restored)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_trainables(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    from torch.distributed.tensor import DTensor

    missing = sorted(set(params) - set(saved))
    if missing:
        raise KeyError("the checkpoint lacks trainable tensors: " + ", ".join(missing[:6]))
    with torch.no_grad():
        for name, param in params.items():
            value = shard_like(saved[name], param)
            if isinstance(param, DTensor):
                param.to_local().copy_(value.to_local())
            else:
                param.copy_(value)


def checkpoint_paths(directory: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint-*.pt") if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: Path, info: DistInfo, *, step: int, params: dict, names: list[str], optimizer,
                    scaler, progress: dict, config: dict, model_config: ImageBindLLMConfig, problems: list[dict],
                    keep: int) -> Path | None:
    """Write ``checkpoint-<step>.pt`` (rank 0; every process takes part in the gathers) and
    delete the older ones beyond ``keep``."""
    state = trainable_state(params, names)
    optim = optimizer_state(optimizer, names, params)
    rngs = all_gather_objects(rng_state(), info)
    path = directory / f"checkpoint-{step:07d}.pt"
    if info.is_main:
        atomic_save({
            "format": CHECKPOINT_FORMAT, "version": VERSION, "step": step, "progress": progress,
            "trainable": state, "optimizer": optim, "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rngs, "world": info.world, "config": config, "model_config": dataclasses.asdict(model_config),
            "problems": problems,
        }, path)
        if keep > 0:
            for old in checkpoint_paths(directory)[:-keep]:
                old.unlink(missing_ok=True)
        log.info("saved %s", path)
    return path


def find_resume(spec: str | None, directory: Path) -> Path | None:
    if spec is None or spec in ("", "none", "false"):
        return None
    if spec == "auto":
        found = checkpoint_paths(directory)
        return found[-1] if found else None
    path = Path(spec)
    if path.is_dir():
        found = checkpoint_paths(path)
        if not found:
            raise MissingFileError(f"no checkpoint-*.pt in {path}")
        return found[-1]
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: Path) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a training checkpoint of this project")
    return checkpoint


# ---------------------------------------------------------------------------------------------
# Adapter export
# ---------------------------------------------------------------------------------------------


def adapter_state(model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The official adapter dict of ``model`` (full tensors; collective under FSDP)."""
    out = OrderedDict()
    for key, value in model.state_dict().items():
        if is_adapter_key(key):
            out[project_to_adapter_key(key)] = full_tensor(value).detach().cpu().float().clone().contiguous()
    return out


def export_adapter(model: torch.nn.Module, directory: Path, info: DistInfo, model_config: ImageBindLLMConfig,
                   training: dict) -> dict[str, Path]:
    """Write both adapter formats into ``directory`` (rank 0)."""
    state = adapter_state(model)
    paths = {"official": directory / "adapter-official.pth", "project": directory / "adapter-imagebind-llm.pth"}
    if info.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save({"model": state}, paths["official"])
        atomic_save({"model": state, "format": ADAPTER_FORMAT, "version": VERSION,
                     "config": dataclasses.asdict(model_config), "training": training}, paths["project"])
        log.info("exported the adapter: %s (official format), %s (with its config)", paths["official"],
                 paths["project"])
    return paths


def read_project_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], ImageBindLLMConfig, dict]:
    """The tensors (official names), the model config and the training record of a
    project-format adapter."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != ADAPTER_FORMAT:
        raise ConfigError(f"{path}: not a project-format adapter (format {payload.get('format')!r})")
    config = payload["config"]
    model_config = ImageBindLLMConfig(llama=LlamaConfig(**config["llama"]), adapter=AdapterConfig(**config["adapter"]))
    return dict(payload["model"]), model_config, payload.get("training", {})
