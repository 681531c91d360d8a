"""The training-free visual cache (reference.md 4.9): FAISS inner-product retrieval over
ImageBind image features, blended into the query before the bind network.

For a query q (the fused feature, not re-normalised): take its top ``size`` neighbours by
inner product, weights ``softmax(temperature x similarities)``, their weighted sum r
(L2-normalised), then ``normalize((1 - weight) q + weight r)``. Defaults 10 / 20 / 0.5.
Each query of a batch is blended with its own neighbours (the official code mixes the
queries of a batch together and is only right for one query).

The index is any FAISS index over unit vectors with inner-product metric. The official
``knn.index`` (about 3.25 M x 1024, flat, 13.3 GB) is read memory-mapped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheConfig:
    size: int = 10  # neighbours retrieved (top-k)
    temperature: float = 20.0  # softmax temperature over the similarities
    weight: float = 0.5  # share of the retrieved prototype in the blend

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"cache size must be at least 1, got {self.size}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"cache weight must be in [0, 1], got {self.weight}")
        if self.temperature < 0:
            raise ValueError(f"cache temperature must be >= 0, got {self.temperature}")


@dataclass
class CacheResult:
    enhanced: torch.Tensor  # (B, D) the blended, unit-length feature
    similarities: torch.Tensor  # (B, k) inner products of the neighbours
    indices: torch.Tensor  # (B, k) their ids in the index


class VisualCache:
    """A FAISS index of ImageBind image features plus the official blend."""

    def __init__(self, index, source: str = "<memory>"):
        self.index = index
        self.source = source

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> "VisualCache":
        import faiss

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"visual cache index not found: {path}")
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
        except RuntimeError:
            try:  # some index types cannot be memory-mapped
                index = faiss.read_index(str(path))
            except RuntimeError as error:
                raise CheckpointError(f"{path.name}: not a FAISS index ({str(error).splitlines()[0]})") from error
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise CheckpointError(f"{path.name}: the visual cache needs an inner-product index")
        log.info("visual cache %s: %d vectors of width %d", path.name, index.ntotal, index.d)
        return cls(index, str(path))

    @classmethod
    def from_vectors(cls, vectors: np.ndarray | torch.Tensor) -> "VisualCache":
        """A flat inner-product index over the given (N, D) vectors, L2-normalised first."""
        import faiss

        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise InputError("cache vectors", f"expected an (N, D) array, got shape {tuple(vectors.shape)}")
        vectors = F.normalize(vectors, dim=-1).numpy()
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors))
        return cls(index)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k similarities and ids (B, k) by inner product."""
        self._check(queries)
        k = min(k, len(self))
        sims, ids = self.index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(sims), torch.from_numpy(ids)

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The stored vectors of ids (B, k) -> (B, k, D)."""
        flat = ids.reshape(-1).numpy().astype(np.int64)
        return torch.from_numpy(self.index.reconstruct_batch(flat)).reshape(*ids.shape, self.dim)

    def blend(self, queries: torch.Tensor, config: CacheConfig = CacheConfig()) -> CacheResult:
        """The official blend, per query. ``queries`` (B, D) as they come from fusion."""
        sims, ids = self.search(queries, config.size)
        if (ids < 0).any():
            raise CheckpointError("the visual cache returned fewer neighbours than asked for")
        prototypes = self.vectors(ids)  # (B, k, D)
        weights = (config.temperature * sims).softmax(dim=-1)  # (B, k)
        retrieved = F.normalize(torch.einsum("bk,bkd->bd", weights, prototypes), dim=-1)
        q = queries.detach().float().cpu()
        enhanced = F.normalize((1 - config.weight) * q + config.weight * retrieved, dim=-1)
        return CacheResult(enhanced.to(queries.device, queries.dtype), sims, ids)

    def _check(self, queries: torch.Tensor) -> None:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError("visual cache", f"queries of shape {tuple(queries.shape)} do not fit an index of "
                             f"width {self.dim}", f"(B, {self.dim}) features from an ImageBind of that width")
        if not torch.isfinite(queries).all():
            raise InputError("visual cache", "the query contains NaN or infinite values", "finite features")
