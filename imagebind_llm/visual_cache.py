"""The training-free visual cache (reference.md 4.9): FAISS inner-product retrieval over
ImageBind image features, blended into the query before the bind network.

For a query q (the fused feature, not re-normalised): take its top ``size`` neighbours by
inner product, weights ``softmax(temperature x similarities)``, their weighted sum r
(L2-normalised), then ``normalize((1 - weight) q + weight r)``. Defaults 10 / 20 / 0.5.
Each query of a batch is blended with its own neighbours (the official code mixes the
queries of a batch together and is only right for one query).

The index is any FAISS index over unit vectors with inner-product metric. The official
``knn.index`` (about 3.25 M x 1024, flat, 13.3 GB) is read memory-mapped (``IO_FLAG_MMAP_IFC``:
the plain ``IO_FLAG_MMAP`` of faiss 1.15 copies a flat index into memory), so loading it takes
no memory and a search reads it through the page cache.

Compressed indexes (IVF-PQ, HNSW over scalar-quantised vectors, ...; built by
:mod:`imagebind_llm.cache_builder`) only *find* candidates. With a :class:`VectorStore` of the
exact float32 vectors (a ``.npy`` file or a flat FAISS index such as the official one, both
memory-mapped), :meth:`VisualCache.search` asks the index for ``rerank`` candidates, reads their
exact vectors and keeps the top-k by their exact inner products. The similarities, the
neighbour vectors and hence the blend are then those of the flat index whenever the right
neighbours are among the candidates. The candidates' rows are requested from the kernel all at
once (``posix_fadvise(WILLNEED)``) and then read with ``pread``: when the store is not in the
page cache, 100 rows of a 1024-wide store cost about 1.5 ms instead of one disk round trip each
(31 ms; 420 ms through the memory map) on this project's 2-core VM, and 0.2 ms when cached.

A cache *directory* (written by the builder) holds ``cache.json`` (which index file, which
vector store, the search parameters), the index, optionally ``vectors.npy`` and
``paths.jsonl`` (the source file of each row, so an app can show the nearest cache entries by
name). :meth:`VisualCache.load` takes such a directory or a bare index file.
"""

from __future__ import annotations

import json
import logging
import mmap as _mmap
import numbers
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError, InputError

log = logging.getLogger(__name__)

#: Candidates fetched from a compressed index before exact re-ranking, unless told otherwise.
DEFAULT_RERANK = 100
#: File names inside a cache directory.
CACHE_META = "cache.json"
INDEX_FILE = "knn.index"
VECTORS_FILE = "vectors.npy"
PATHS_FILE = "paths.jsonl"


@dataclass(frozen=True)
class CacheConfig:
    size: int = 10  # neighbours retrieved (top-k)
    temperature: float = 20.0  # softmax temperature over the similarities
    weight: float = 0.5  # share of the retrieved prototype in the blend

    def __post_init__(self) -> None:
        # InputError is a ValueError; NaN fails every comparison, so the ranges are written to catch it
        if not isinstance(self.size, numbers.Integral) or isinstance(self.size, bool) or self.size < 1:
            raise InputError("cache size", f"must be a whole number of at least 1, got {self.size!r}", "1, 2, 3, ...")
        if not isinstance(self.weight, numbers.Real) or not 0.0 <= self.weight <= 1.0:
            raise InputError("cache weight", f"must be in [0, 1], got {self.weight!r}", "a number from 0 to 1")
        if not isinstance(self.temperature, numbers.Real) or not 0 <= self.temperature < float("inf"):
            raise InputError("cache temperature", f"must be a finite number >= 0, got {self.temperature!r}",
                             "e.g. 20 (the official value)")


@dataclass
class CacheResult:
    enhanced: torch.Tensor  # (B, D) the blended, unit-length feature
    similarities: torch.Tensor  # (B, k) inner products of the neighbours
    indices: torch.Tensor  # (B, k) their ids in the index


# --------------------------------------------------------------------------------------------
# Flat FAISS index files read directly (the official knn.index is one)

_FLAT_FOURCC = {b"IxFI": 0, b"IxF2": 1, b"IxFl": None}  # metric: inner product, L2, in the header
_FLAT_HEADER = struct.Struct("<iqqq?i")  # d, ntotal, 2 dummies, is_trained, metric_type


@dataclass(frozen=True)
class FlatIndexLayout:
    """Where the vectors of a flat FAISS index file lie: ``count`` rows of ``dim`` float32 at
    byte ``offset`` (the layout of ``faiss.write_index`` for IndexFlatIP / IndexFlatL2)."""

    dim: int
    count: int
    metric: int
    offset: int


def read_flat_index_layout(path: str | Path) -> FlatIndexLayout | None:
    """The layout of a flat FAISS index file, or None if the file is another index type."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4 + _FLAT_HEADER.size + 4 + 8)
    if len(head) < 4 + _FLAT_HEADER.size + 8 or head[:4] not in _FLAT_FOURCC:
        return None
    dim, count, _, _, _, metric = _FLAT_HEADER.unpack_from(head, 4)
    offset = 4 + _FLAT_HEADER.size
    if metric > 1:  # a metric argument (float) follows
        offset += 4
    (n_floats,) = struct.unpack_from("<Q", head, offset)
    offset += 8
    if dim <= 0 or count < 0 or n_floats != dim * count:
        return None
    if path.stat().st_size < offset + 4 * n_floats:
        raise CheckpointError(f"{path.name}: the flat index is truncated ({path.stat().st_size} bytes for "
                              f"{count} x {dim} vectors, which need {offset + 4 * n_floats}); copy or download "
                              f"it again")
    return FlatIndexLayout(dim, count, metric, offset)


def open_flat_index_vectors(path: str | Path) -> np.memmap:
    """The (N, D) float32 vectors of a flat FAISS index file, memory-mapped read-only (no copy,
    nothing read until rows are used)."""
    layout = read_flat_index_layout(path)
    if layout is None:
        raise CheckpointError(f"{Path(path).name}: not a flat FAISS index (IndexFlatIP / IndexFlatL2)")
    return np.memmap(path, dtype="<f4", mode="r", offset=layout.offset, shape=(layout.count, layout.dim))


# --------------------------------------------------------------------------------------------
# Exact vectors by id


class VectorStore:
    """Exact float32 vectors by id: an in-memory array, a memory-mapped ``.npy`` / flat FAISS
    index file, or a FAISS index that can reconstruct its vectors."""

    def __init__(self, data: Any, source: str = "<memory>"):
        self.source = source
        self._index = None
        if isinstance(data, torch.Tensor):
            data = data.detach().float().cpu().numpy()
        if isinstance(data, np.ndarray):
            if data.ndim != 2:
                raise CheckpointError(f"vector store {source}: expected (N, D) vectors, "
                                      f"got shape {data.shape}")
            if data.dtype != np.float32:
                data = data.astype(np.float32)
            self._array = data
            self.count, self.dim = data.shape
        elif hasattr(data, "reconstruct_batch") and hasattr(data, "ntotal"):
            self._array = None
            self._index = data
            self.count, self.dim = int(data.ntotal), int(data.d)
        else:
            raise CheckpointError(f"vector store {source}: unsupported type {type(data).__name__}")

    @classmethod
    def open(cls, path: str | Path) -> "VectorStore":
        """A ``.npy`` file or a flat FAISS index file, memory-mapped."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"visual cache vectors not found: {path} (a flat index such as knn.index, or a "
                                  ".npy of image features)")
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            array = np.load(path, mmap_mode="r")
            if array.dtype != np.float32:
                raise CheckpointError(f"{path.name}: vectors must be float32, found {array.dtype}")
            return cls(array, str(path))
        return cls(open_flat_index_vectors(path), str(path))

    def __len__(self) -> int:
        return self.count

    @property
    def is_mapped(self) -> bool:
        return isinstance(self._array, np.memmap) or (
            self._array is not None and isinstance(getattr(self._array, "base", None), _mmap.mmap))

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (any shape, int) -> float32 (*ids.shape, D), a copy."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.count):
            raise IndexError(f"vector ids out of range [0, {self.count})")
        if self._array is None:
            return self._index.reconstruct_batch(flat).reshape(*ids.shape, self.dim)
        unique, inverse = np.unique(flat, return_inverse=True)  # sorted: sequential reads
        file = self._file()
        if file is not None:
            rows = self._read_rows(file, unique)
        else:
            rows = np.asarray(self._array[unique], dtype=np.float32)
        return rows[inverse].reshape(*ids.shape, self.dim)

    #: Rows of a file-backed store are read with ``pread`` after one ``posix_fadvise(WILLNEED)``
    #: per row: the kernel then fetches the rows missing from the page cache in parallel. Measured
    #: for 100 random rows of a 13.3 GB file on this project's 2-core VM: 0.2 ms in the page cache
    #: (0.6 to 0.8 ms through the memory map), 1.5 ms from disk (31 ms without the advice, 420 ms
    #: through the memory map without it). False: plain reads through the memory map.
    prefetch: bool = True

    def _file(self) -> tuple[int, int] | None:
        """(file descriptor, byte offset of row 0) of a store that is a whole memory-mapped file."""
        if not self.prefetch or not hasattr(os, "preadv") or not hasattr(os, "posix_fadvise"):
            return None
        if getattr(self, "_fd", None) is None:
            array = self._array
            name = getattr(array, "filename", None)
            if not (isinstance(array, np.memmap) and name and isinstance(array.base, _mmap.mmap)
                    and array.flags.c_contiguous and array.dtype == np.dtype("<f4")):
                self.prefetch = False  # an in-memory array or a view: nothing to read
                return None
            try:
                self._fd = os.open(name, os.O_RDONLY)
            except OSError:
                self.prefetch = False
                return None
            self._offset = int(array.offset)
        return self._fd, self._offset

    def _read_rows(self, file: tuple[int, int], ids: np.ndarray) -> np.ndarray:
        fd, offset = file
        row = 4 * self.dim
        out = np.empty((len(ids), self.dim), np.float32)
        # runs of consecutive ids are read in one call
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        ends = np.concatenate([breaks, [len(ids)]]).tolist()
        if len(starts) > 1:
            for a, b in zip(starts, ends):
                os.posix_fadvise(fd, offset + int(ids[a]) * row, (b - a) * row, os.POSIX_FADV_WILLNEED)
        buffer = memoryview(out).cast("B")
        for a, b in zip(starts, ends):
            want = (b - a) * row
            done = os.preadv(fd, [buffer[a * row:b * row]], offset + int(ids[a]) * row)
            if done != want:
                raise CheckpointError(f"vector store {self.source}: short read ({done} of {want} bytes); "
                                      "is the file truncated?")
        return out

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def array(self) -> np.ndarray | None:
        """The underlying (N, D) array (memory-mapped or not), None for an index-backed store."""
        return self._array


def as_vector_store(vectors: Any) -> VectorStore | None:
    if vectors is None or isinstance(vectors, VectorStore):
        return vectors
    if isinstance(vectors, (str, os.PathLike)):
        return VectorStore.open(vectors)
    return VectorStore(vectors)


def _is_exact(index) -> bool:
    """An index over the full float32 vectors (flat, IVF-flat, HNSW-flat): the scores of what it
    finds already are exact inner products, there is nothing to re-rank."""
    import faiss

    try:
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexHNSW):
            return isinstance(faiss.downcast_index(index.storage), faiss.IndexFlat)
        return isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat))
    except Exception:
        return False


def set_search_parameters(index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Search-time knobs of IVF (``nprobe``) and HNSW (``ef_search``) indexes; others ignore them."""
    import faiss

    space = faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError:
            pass  # the index has no such parameter
    if nprobe is not None:  # an HNSW coarse quantizer must look at least that many lists
        try:
            quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
        except (RuntimeError, AttributeError):
            return
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, 2 * int(nprobe))


def _read_paths(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------


class VisualCache:
    """A FAISS index of ImageBind image features plus the official blend.

    Args:
        index: a FAISS inner-product index.
        source: where it came from (for messages).
        vectors: optional exact vectors (an (N, D) array or memmap, a ``.npy`` / flat index path,
            a :class:`VectorStore`). Used by :meth:`vectors` and, for a non-flat index, to
            re-rank candidates by their exact inner products.
        rerank: candidates asked from a non-flat index before re-ranking (default
            :data:`DEFAULT_RERANK`; 0 = no re-ranking). Ignored for a flat index.
        paths: the source file of each row (for "nearest cache entries").
    """

    def __init__(self, index, source: str = "<memory>", *, vectors: Any = None, rerank: int | None = None,
                 paths: Sequence[str] | None = None):
        self.index = index
        self.source = source
        self.store = as_vector_store(vectors)
        self.exact = _is_exact(index)  # its scores are exact inner products
        self.rerank = DEFAULT_RERANK if rerank is None else int(rerank)
        if self.rerank < 0:
            raise ValueError(f"rerank must be >= 0, got {rerank}")
        self.paths = list(paths) if paths is not None else None
        if self.store is not None and (self.store.dim != index.d or len(self.store) != index.ntotal):
            raise CheckpointError(f"visual cache {source}: the vector store {self.store.source} holds "
                                  f"{len(self.store)} x {self.store.dim} vectors but the index "
                                  f"{index.ntotal} x {index.d}")
        if self.paths is not None and len(self.paths) != index.ntotal:
            raise CheckpointError(f"visual cache {source}: {len(self.paths)} source paths for "
                                  f"{index.ntotal} vectors")
        self._warned_approximate = False

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def reranks(self) -> bool:
        """Whether searches return exact inner products of re-ranked candidates."""
        return not self.exact and self.store is not None and self.rerank > 0

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, *, vectors: Any = None, rerank: int | None = None,
             nprobe: int | None = None, ef_search: int | None = None) -> "VisualCache":
        """A bare FAISS index file (e.g. the official ``knn.index``, memory-mapped) or a cache
        directory written by :mod:`imagebind_llm.cache_builder`. Keyword arguments override what
        the directory's ``cache.json`` says."""
        path = Path(path)
        meta: dict = {}
        paths = None
        if path.is_dir():
            meta_path = path / CACHE_META
            if not meta_path.is_file():
                raise CheckpointError(f"{path}: not a visual cache directory (no {CACHE_META})")
            meta = json.loads(meta_path.read_text())
            index_path = path / meta.get("index", INDEX_FILE)
            if vectors is None and meta.get("vectors"):
                vectors = _resolve(path, meta["vectors"])
            if meta.get("paths") and (path / meta["paths"]).is_file():
                paths = _read_paths(path / meta["paths"])
        else:
            index_path = path
        index = _read_index(index_path, mmap)
        search = meta.get("search", {})
        nprobe = search.get("nprobe") if nprobe is None else nprobe
        ef_search = search.get("ef_search") if ef_search is None else ef_search
        set_search_parameters(index, nprobe=nprobe, ef_search=ef_search)
        rerank = meta.get("rerank") if rerank is None else rerank
        cache = cls(index, str(path), vectors=vectors, rerank=rerank, paths=paths)
        log.info("visual cache %s: %d vectors of width %d (%s%s)", path.name, len(cache), cache.dim,
                 "flat" if cache.exact else meta.get("kind", type(index).__name__),
                 f", re-ranking {cache.rerank} candidates" if cache.reranks else "")
        return cache

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

    def set_search_parameters(self, *, nprobe: int | None = None, ef_search: int | None = None,
                              rerank: int | None = None) -> None:
        set_search_parameters(self.index, nprobe=nprobe, ef_search=ef_search)
        if rerank is not None:
            self.rerank = int(rerank)

    # ---------------------------------------------------------------------------------- search

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k similarities and ids (B, k) by inner product (exact inner products when the
        index is flat or when re-ranking)."""
        sims, ids, _ = self._search(queries, k, want_vectors=False)
        return sims, ids

    def _search(self, queries: torch.Tensor, k: int, want_vectors: bool):
        self._check(queries)
        k = min(k, len(self))
        q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        if not self.reranks:
            if not self.exact and not self._warned_approximate:
                log.warning("visual cache %s: compressed index without exact vectors; similarities "
                            "are approximate", self.source)
                self._warned_approximate = True
            sims, ids = self.index.search(q, k)
            return torch.from_numpy(sims), torch.from_numpy(ids), None
        candidates = min(max(k, self.rerank), len(self))
        _, cand = self.index.search(q, candidates)  # (B, C), -1 where fewer were found
        valid = cand >= 0
        vecs = self.store.get(np.where(valid, cand, 0))  # (B, C, D)
        exact = np.einsum("bcd,bd->bc", vecs, q)
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        sims = np.take_along_axis(exact, order, axis=1)
        ids = np.take_along_axis(cand, order, axis=1)
        ids[~np.isfinite(sims)] = -1
        top = np.take_along_axis(vecs, order[:, :, None], axis=1) if want_vectors else None
        return (torch.from_numpy(np.ascontiguousarray(sims, dtype=np.float32)), torch.from_numpy(ids),
                None if top is None else torch.from_numpy(top))

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The stored vectors of ids (B, k) -> (B, k, D)."""
        flat = ids.reshape(-1).numpy().astype(np.int64)
        if self.store is not None:
            rows = self.store.get(flat)
        else:
            try:
                rows = self.index.reconstruct_batch(flat)
            except RuntimeError as error:
                raise CheckpointError(
                    f"visual cache {self.source}: this index cannot give back its vectors "
                    f"({str(error).splitlines()[0]}); load it with a vector store (vectors=...)") from error
        return torch.from_numpy(np.asarray(rows)).reshape(*ids.shape, self.dim)

    def names(self, ids: torch.Tensor) -> list[list[str | None]]:
        """The source paths of ids (B, k), None where unknown."""
        rows = ids.tolist() if ids.ndim == 2 else [ids.tolist()]
        return [[self.paths[i] if self.paths is not None and 0 <= i < len(self.paths) else None for i in row]
                for row in rows]

    def blend(self, queries: torch.Tensor, config: CacheConfig = CacheConfig()) -> CacheResult:
        """The official blend, per query. ``queries`` (B, D) as they come from fusion."""
        sims, ids, prototypes = self._search(queries, config.size, want_vectors=True)
        if (ids < 0).any():
            raise CheckpointError("the visual cache returned fewer neighbours than asked for")
        if prototypes is None:
            prototypes = self.vectors(ids)  # (B, k, D)
        weights = (config.temperature * sims).softmax(dim=-1)  # (B, k)
        retrieved = F.normalize(torch.einsum("bk,bkd->bd", weights, prototypes), dim=-1)
        q = queries.detach().float().cpu()
        enhanced = F.normalize((1 - config.weight) * q + config.weight * retrieved, dim=-1)
        return CacheResult(enhanced.to(queries.device, queries.dtype), sims, ids)

    def _check(self, queries: torch.Tensor) -> None:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError("visual cache", f"queries of shape {tuple(queries.shape)} do not fit an index "
                             f"of width {self.dim}",
                             f"(B, {self.dim}) features from an ImageBind of that width")
        if not torch.isfinite(queries).all():
            raise InputError("visual cache", "the query contains NaN or infinite values", "finite features")


def mmap_flags() -> list[int]:
    """``faiss.read_index`` flags that memory-map an index, best first. In faiss 1.15,
    ``IO_FLAG_MMAP`` alone still copies the vectors of a flat index (and the codes of HNSW
    storage) into memory: 13.3 GB for the official cache. ``IO_FLAG_MMAP_IFC`` maps them."""
    import faiss

    flags = []
    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        flags.append(faiss.IO_FLAG_MMAP_IFC)
    flags.append(faiss.IO_FLAG_MMAP)
    return flags


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def _read_index(path: Path, mmap: bool):
    import faiss

    if not path.is_file():
        raise CheckpointError(f"visual cache index not found: {path}")
    read_flat_index_layout(path)  # a flat index cut short (an interrupted copy) is named as such
    index = None
    for flag in (mmap_flags() if mmap else []):
        try:
            index = faiss.read_index(str(path), flag)
            break
        except RuntimeError:
            continue  # some index types cannot be memory-mapped this way
    if index is None:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise CheckpointError(f"{path.name}: not a FAISS index ({str(error).splitlines()[0]})") from error
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CheckpointError(f"{path.name}: the visual cache needs an inner-product index")
    return index
