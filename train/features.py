"""Frozen-encoder features computed once: the ImageBind embedding of every media item of a data
set, written to disk, so that training needs neither the encoder nor the media decoding.

Folder layout (``data.features``)::

    manifest.json            what made the vectors (width, preprocessing mode, encoder file)
    shard-<rank>-<n>.npy     (rows, D) float32 unit embeddings (ImageBind output, L2-normalised)
    shard-<rank>-<n>.keys.json   the media key of each row ("image:/abs/path.jpg")
    failed-<rank>.jsonl      media that could not be read: key, record, reason

A shard counts once its ``.keys.json`` exists (written after the vectors, both by rename), so an
interrupted run resumes where it stopped: computed and failed keys are skipped. Several
processes (torchrun) split the remaining work. The stored vectors are what the official
``forward_visual`` normalises; the mix of several media of one example (weights divided by
their sum + 1e-6, no re-normalisation) is done when training reads them, so the weights stay
editable. Images are embedded with the deterministic inference transform (resize + centre
crop): the random crop of raw-media training cannot be precomputed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebind_llm.fusion import FusionMode, fuse
from imagebind_llm.preprocess import KIND_TO_MODALITY, PreprocessOptions

from .config import ConfigError, MissingFileError
from .data import BadDataError, MediaRef, Problem, Record, load_media

log = logging.getLogger(__name__)

FORMAT = "imagebind-llm-features"
VERSION = 1


class FeatureStore:
    """Read access to a features folder (memory-mapped, opened lazily in every process)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.is_file():
            raise MissingFileError(f"no precomputed features in {self.directory} (run with --precompute first)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest_path}: not a features folder of this project")
        self.dim = int(self.manifest["dim"])
        self.shards: list[str] = []
        self.index: dict[str, tuple[int, int]] = {}
        for keys_file in sorted(self.directory.glob("shard-*.keys.json")):
            shard = keys_file.name[: -len(".keys.json")]
            if not (self.directory / f"{shard}.npy").is_file():
                continue
            number = len(self.shards)
            self.shards.append(shard)
            for row, key in enumerate(json.loads(keys_file.read_text())):
                self.index[key] = (number, row)
        self.failures: dict[str, str] = {}
        for failed in sorted(self.directory.glob("failed-*.jsonl")):
            for line in failed.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.failures[entry["key"]] = entry["reason"]
        self._arrays: dict[int, np.ndarray] = {}

    def __getstate__(self):  # DataLoader workers re-open the memory maps themselves
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:
            self._arrays[shard] = np.load(self.directory / f"{self.shards[shard]}.npy", mmap_mode="r")
        return self._arrays[shard]

    def vector(self, ref: MediaRef) -> torch.Tensor:
        """The unit embedding (D,) of one media item; KeyError(ref) if there is none."""
        where = self.index.get(ref.key)
        if where is None:
            raise KeyError(ref)
        return torch.from_numpy(np.array(self._array(where[0])[where[1]], dtype=np.float32))

    def fused(self, media: Sequence[MediaRef], mode: FusionMode = "official") -> torch.Tensor:
        """The mix of an example's media (official: reference.md 4.9, cache off)."""
        vectors = torch.stack([self.vector(ref) for ref in media])
        return fuse(vectors, [ref.weight for ref in media], mode=mode)

    def failure(self, ref: MediaRef) -> str | None:
        return self.failures.get(ref.key)

    def missing(self, records: Sequence[Record]) -> list[MediaRef]:
        """Media of ``records`` that were neither computed nor recorded as failed."""
        seen, out = set(), []
        for record in records:
            for ref in record.media:
                if ref.key not in self.index and ref.key not in self.failures and ref.key not in seen:
                    seen.add(ref.key)
                    out.append(ref)
        return out


def encode_items(encoder, items: Sequence[tuple[str, torch.Tensor]], batch_size: int) -> torch.Tensor:
    """Unit ImageBind embeddings (N, D) float32 of preprocessed inputs ``(kind, tensor)``,
    batched per (kind, shape), in input order. The encoder is frozen: no graph is kept."""
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, (kind, tensor) in enumerate(items):
        groups.setdefault((kind, tuple(tensor.shape)), []).append(i)
    out = torch.empty(len(items), encoder.config.embed_dim)
    with torch.no_grad():
        for (kind, _), positions in groups.items():
            modality = KIND_TO_MODALITY[kind]
            for start in range(0, len(positions), batch_size):
                chunk = positions[start:start + batch_size]
                x = torch.stack([items[i][1] for i in chunk])
                unit = encoder.encode_all(modality, x)["unit"]
                out[chunk] = unit.float().cpu()
    return out


def _atomic_write(path: Path, write) -> None:
    partial = path.with_name(path.name + ".part")
    write(partial)
    os.replace(partial, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a ".part" name
        np.save(f, array)


def precompute(records: Sequence[Record], directory: str | Path, encoder, options: PreprocessOptions, *,
               manifest: dict[str, Any], batch_size: int = 16, shard_size: int = 1024, rank: int = 0,
               world: int = 1, strict: bool = False, progress: bool = True, barrier=None) -> dict[str, int]:
    """Embed every media item of ``records`` not yet in ``directory``; returns counts
    (``total``, ``done_before``, ``computed``, ``failed``) for this process."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "dim": encoder.config.embed_dim, **manifest}
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        for key in ("dim", "preprocess_mode", "imagebind", "imagebind_config"):
            if existing.get(key) != manifest.get(key):
                raise ConfigError(f"{directory} holds features made with {key}={existing.get(key)!r}, this run uses "
                                 f"{manifest.get(key)!r}: use another folder")
    elif rank == 0:
        _atomic_write(manifest_path, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    if barrier is not None:
        barrier()
    refs: dict[str, tuple[MediaRef, Record]] = {}
    for record in records:
        for ref in record.media:
            refs.setdefault(ref.key, (ref, record))
    store = FeatureStore(directory)
    todo = [pair for key, pair in refs.items() if key not in store.index and key not in store.failures]
    chunks = [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
    mine = chunks[rank::world]
    counts = {"total": len(refs), "done_before": len(refs) - len(todo), "computed": 0, "failed": 0}
    log.info("features: %d media items, %d already done, %d to compute in %d shards", len(refs),
             counts["done_before"], len(todo), len(chunks))
    from tqdm import tqdm

    bar = tqdm(total=sum(len(c) for c in mine), desc="precompute", unit="item", disable=not progress,
               dynamic_ncols=True)
    failed_path = directory / f"failed-{rank}.jsonl"
    stamp = time.strftime("%Y%m%d%H%M%S")
    for number, chunk in enumerate(mine):
        inputs, keys, failures = [], [], []
        for ref, record in chunk:
            try:
                inputs.append((ref.kind, load_media(ref, options)))
                keys.append(ref.key)
            except Exception as error:
                problem = Problem(record.file, record.where, f"media cannot be read ({error})", "corrupt_media",
                                  ref.value)
                if strict:
                    raise BadDataError(problem) from error
                log.warning("precompute: %s", problem)
                failures.append({"key": ref.key, "reason": str(error), "record": record.source})
            bar.update(1)
        if inputs:
            vectors = encode_items(encoder, inputs, batch_size).numpy()
            shard = directory / f"shard-{rank}-{stamp}-{number:05d}"
            _atomic_write(shard.with_suffix(".npy"), lambda p, v=vectors: _save_npy(p, v))
            _atomic_write(shard.with_name(shard.name + ".keys.json"), lambda p, k=keys: p.write_text(json.dumps(k)))
        if failures:
            with open(failed_path, "a") as f:
                f.write("".join(json.dumps(entry) + "\n" for entry in failures))
        counts["computed"] += len(inputs)
        counts["failed"] += len(failures)
    bar.close()
    if barrier is not None:
        barrier()
    return counts
