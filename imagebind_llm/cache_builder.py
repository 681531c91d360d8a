"""Build visual caches: from a folder of images, from a feature file, or by compressing a flat
index (e.g. the official 3.25 M x 1024 ``knn.index``) into a smaller, faster one.

    python -m imagebind_llm.cache_builder from-images photos/ my_cache --checkpoint imagebind_huge.pth
    python -m imagebind_llm.cache_builder from-features features.npy my_cache --kind ivf-pq
    python -m imagebind_llm.cache_builder compress ckpts/knn.index knn_compact --kind ivf-pqfs

Every command writes a *cache directory*, read by :meth:`VisualCache.load`:

``knn.index``     the FAISS index (inner product; flat by default)
``vectors.npy``   the exact unit vectors, float32 (N, D); while building from images it is the
                  append file (its header is rewritten after every chunk). ``compress`` instead
                  points ``cache.json`` at the flat index it read, which is memory-mapped.
``paths.jsonl``   the source file of row i on line i (a JSON string), when known
``manifest.json`` the state of a build from images: rows written, skipped files with their
                  error, whether it is complete; an interrupted build resumes from it
``cache.json``    kind, index and vector files, search parameters (``nprobe``, ``ef_search``),
                  ``rerank`` (candidates re-ranked with the exact vectors), build parameters

Index kinds (:func:`build_index`), all inner product over unit vectors; bytes a vector for D = 1024:

``flat``       exact; 4096 B (the official cache: 13.3 GB, memory-mapped)
``ivf-flat``   k-means lists over the full vectors: exact scores; 4096 B
``ivf-pq``     k-means lists + 8-bit product quantisation, ``m`` = D/16 codes: 64 B; re-ranked
``ivf-pqfs``   k-means lists + 4-bit fast-scan PQ (SIMD), ``m`` = D/4 codes: 128 B; re-ranked.
               The kind recommended for the official 3.25 M cache (``bench/cache.py``)
``hnsw-sq8``   HNSW graph over 8-bit scalar-quantised vectors: 1024 B + 256 B of graph; re-ranked
``hnsw-flat``  HNSW graph over the full vectors: exact scores; 4096 B + 256 B

IVF kinds default to about 2 sqrt(N) lists (a power of two; an HNSW coarse quantizer from 4096
lists), ``nprobe`` = lists / 64 (at least 16), k-means on 40 points a list for 10 iterations;
re-ranked kinds to ``rerank`` = 100 candidates (hnsw-sq8: 50). For the official 3.25 M x 1024
cache that is ivf-pqfs with 4096 lists, nprobe 64: 446 MiB, recall@10 0.98 on clustered data.

Compressed kinds only find candidates; :class:`VisualCache` re-ranks them with the exact
vectors, so similarities and the blend are those of the flat index whenever the true
neighbours are among the candidates (``bench/cache.py`` measures how often).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Run as a command: OpenMP threads wait passively, or FAISS's k-means and adding run many times
    # slower as soon as any other process wants the same cores (measured on 2 cores: a small IVF-PQ
    # build 1.3 s on one thread, 4 to 12 s on two). Must be set before torch / faiss load OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import math
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import CheckpointError, InputError
from .log_setup import setup_logging
from .visual_cache import (
    CACHE_META,
    DEFAULT_RERANK,
    INDEX_FILE,
    PATHS_FILE,
    VECTORS_FILE,
    VectorStore,
    open_flat_index_vectors,
    read_flat_index_layout,
)

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf-flat", "ivf-pq", "ivf-pqfs", "hnsw-sq8", "hnsw-flat")
#: Kinds whose scores are only approximate: the cache re-ranks their candidates.
RERANKED_KINDS = ("ivf-pq", "ivf-pqfs", "hnsw-sq8")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


# ============================================================================================
# float32 (N, D) .npy file that grows by appending rows


class NpyAppender:
    """A float32 ``.npy`` file of shape (rows, dim) that grows by appending rows.

    The header is written with room to spare and rewritten after every append, so the file is
    always a valid ``.npy`` (``np.load(mmap_mode="r")``) of the rows committed so far.
    """

    HEADER_BYTES = 128

    def __init__(self, path: str | Path, dim: int, rows: int = 0):
        """Open ``path`` for appending, keeping its first ``rows`` rows (a new file if rows == 0)."""
        self.path = Path(path)
        self.dim = int(dim)
        if rows and not self.path.is_file():
            raise CheckpointError(f"{self.path}: missing, cannot resume from {rows} rows")
        mode = "r+b" if self.path.is_file() and rows else "w+b"
        self._file = open(self.path, mode)
        if rows:
            have = (self.path.stat().st_size - self.HEADER_BYTES) // (4 * self.dim)
            if have < rows:
                raise CheckpointError(f"{self.path}: holds {have} rows, the manifest says {rows}")
        self.rows = rows
        self._file.truncate(self.HEADER_BYTES + 4 * self.dim * rows)  # drop rows of an unfinished chunk
        self._write_header()

    def _header(self) -> bytes:
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (self.rows, self.dim)
        body = text.encode("latin1").ljust(self.HEADER_BYTES - 10 - 1) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body

    def _write_header(self) -> None:
        self._file.seek(0)
        self._file.write(self._header())

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of width {self.dim}, got shape {rows.shape}")
        self._file.seek(self.HEADER_BYTES + 4 * self.dim * self.rows)
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def commit(self) -> None:
        """Make the appended rows part of the file: header, then flush to disk."""
        self._write_header()
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.commit()
            self._file.close()

    def __enter__(self) -> "NpyAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ============================================================================================
# Flat index files written without holding the vectors in memory


def write_flat_index(vectors: np.ndarray, path: str | Path, *, chunk_size: int = 65536,
                     progress: bool = False) -> Path:
    """Write (N, D) float32 vectors as a ``faiss.IndexFlatIP`` file (the format of
    ``faiss.write_index``), chunk by chunk: a memory-mapped input never has to fit in memory."""
    path = Path(path)
    n, d = vectors.shape
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"IxFI")
        f.write(struct.pack("<iqqq?i", d, n, 1 << 20, 1 << 20, True, 0))  # d, ntotal, dummies, trained, IP
        f.write(struct.pack("<Q", n * d))
        for start in _progress(range(0, n, chunk_size), progress, "write flat index", unit="chunk"):
            f.write(np.ascontiguousarray(vectors[start:start + chunk_size], dtype="<f4").tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ============================================================================================
# Index kinds


def _pow2_near(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def default_nlist(n: int) -> int:
    """Lists of an IVF index: about 2 sqrt(N) rounded to a power of two (2048 for 1 M, 4096 for
    the official 3.25 M), and at least 39 points a list (k-means needs them)."""
    nlist = _pow2_near(2 * math.sqrt(n))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return nlist


def _divisor_at_most(d: int, target: int) -> int:
    for m in range(min(d, max(1, target)), 0, -1):
        if d % m == 0:
            return m
    return 1


def index_parameters(kind: str, n: int, dim: int, **given) -> dict:
    """The build and search parameters of ``kind`` for N vectors of width D: defaults filled
    in, unknown names refused."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; known: {', '.join(INDEX_KINDS)}")
    common = {"train_size": None, "seed": 0}
    if kind == "flat":
        defaults: dict[str, Any] = {}
        common = {}
    elif kind.startswith("ivf"):
        nlist = given.get("nlist") or default_nlist(n)
        defaults = {"nlist": nlist, "nprobe": min(nlist, max(16, nlist // 64)), "niter": 10,
                    "quantizer": "hnsw" if nlist >= 4096 else "flat"}
        if kind == "ivf-pq":  # 16 dimensions a byte (64 bytes for 1024), at most 256 centroids a 39 points
            nbits = min(8, max(4, int(math.log2(max(n, 1) / 39)))) if n else 8
            defaults.update(m=_divisor_at_most(dim, max(dim // 16, min(dim // 2, 16))), nbits=nbits,
                            rerank=DEFAULT_RERANK)
        elif kind == "ivf-pqfs":  # 4 dimensions a 4-bit code (128 bytes for 1024)
            m = _divisor_at_most(dim, max(dim // 4, min(dim // 2, 16)))
            defaults.update(m=m - m % 2 or 2, rerank=DEFAULT_RERANK)
    else:  # hnsw
        defaults = {"M": 32, "ef_construction": 40, "ef_search": 256}
        if kind == "hnsw-sq8":
            defaults["rerank"] = 50
    defaults.update(common)
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown parameters for {kind}: {sorted(unknown)}; known: {sorted(defaults)}")
    defaults.update({k: v for k, v in given.items() if v is not None})
    return defaults


def _as_vectors(vectors) -> np.ndarray:
    """An (N, D) float32 array (possibly memory-mapped) from an array, tensor, path or flat index."""
    if isinstance(vectors, (str, os.PathLike)):
        store = VectorStore.open(vectors)
        return store.array()
    if hasattr(vectors, "detach"):  # torch tensor
        vectors = vectors.detach().float().cpu().numpy()
    if hasattr(vectors, "ntotal") and hasattr(vectors, "d"):  # a FAISS flat index
        import faiss

        flat = faiss.downcast_index(vectors)
        if not isinstance(flat, faiss.IndexFlat):
            raise ValueError(f"build_index needs vectors or a flat index, got {type(flat).__name__}")
        return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    vectors = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"expected (N, D) vectors, got shape {vectors.shape}")
    if vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    return vectors


def _training_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    n = len(vectors)
    if size >= n:
        return np.ascontiguousarray(vectors[:], dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))  # sorted: sequential reads
    out = np.empty((size, vectors.shape[1]), np.float32)
    for start in range(0, size, 8192):
        out[start:start + 8192] = vectors[rows[start:start + 8192]]
    return out


def build_index(vectors_or_flat_index, kind: str = "flat", *, progress: bool = False, chunk_size: int = 65536,
                **params):
    """A FAISS inner-product index of ``kind`` over (N, D) unit vectors.

    ``vectors_or_flat_index``: an array / memmap / tensor, a ``.npy`` or flat index path, or a
    flat FAISS index (e.g. the official one read with ``IO_FLAG_MMAP``). Vectors are added in
    chunks of ``chunk_size`` with a progress bar; trained kinds learn from a random sample of
    ``train_size`` rows. ``params`` (see :func:`index_parameters`): ``nlist``, ``nprobe``,
    ``niter``, ``quantizer`` ("flat" or "hnsw"), ``m``, ``nbits`` (IVF kinds), ``M``,
    ``ef_construction``, ``ef_search`` (HNSW kinds), ``rerank`` (kept for the cache, not used
    here), ``train_size``, ``seed``. The search parameters are set on the returned index.
    """
    import faiss

    vectors = _as_vectors(vectors_or_flat_index)
    n, d = vectors.shape
    p = index_parameters(kind, n, d, **params)
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind.startswith("ivf"):
        nlist = p["nlist"]
        if p["quantizer"] == "hnsw":
            quantizer = faiss.IndexHNSWFlat(d, 32, ip)
            quantizer.hnsw.efSearch = max(64, 2 * p["nprobe"])
        elif p["quantizer"] == "flat":
            quantizer = faiss.IndexFlatIP(d)
        else:
            raise ValueError(f"quantizer must be 'flat' or 'hnsw', got {p['quantizer']!r}")
        if kind == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        elif kind == "ivf-pq":
            if d % p["m"]:
                raise ValueError(f"m = {p['m']} must divide the width {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, p["m"], p["nbits"], ip)
        else:
            if d % p["m"] or p["m"] % 2:
                raise ValueError(f"m = {p['m']} must be even and divide the width {d}")
            index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, p["m"], 4, ip)
        quantizer.this.disown()  # the index owns (and frees) its quantizer
        index.own_fields = True
        index.cp.niter = p["niter"]
        index.cp.seed = p["seed"]
        if p["quantizer"] == "hnsw":  # k-means with a flat index, then the centroids go into HNSW
            clustering_index = faiss.IndexFlatIP(d)  # referenced until training is over
            index.clustering_index = clustering_index
        index.nprobe = p["nprobe"]
    elif kind == "hnsw-sq8":
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, p["M"], ip)
    else:
        index = faiss.IndexHNSWFlat(d, p["M"], ip)
    if kind.startswith("hnsw"):
        index.hnsw.efConstruction = p["ef_construction"]
        index.hnsw.efSearch = p["ef_search"]

    start = time.perf_counter()
    if not index.is_trained:
        size = min(p["train_size"] or _default_train_size(kind, p, n), n)
        needed, why = _training_points_needed(kind, p)
        if size < needed:  # FAISS's k-means would stop with an assertion
            advice = (f"; {n} vectors are better served by the flat or hnsw-flat kind" if n < needed
                      else "" if size == n else " (train_size)")
            raise ValueError(f"{kind} needs at least {needed} training vectors ({why}), got {size}{advice}")
        sample = _training_sample(vectors, size, p["seed"])
        log.info("training %s on %d vectors", kind, len(sample))
        if progress:
            print(f"training {kind} on {len(sample)} of {n} vectors ...", file=sys.stderr, flush=True)
        index.train(sample)
        del sample
        if kind.startswith("ivf") and p["quantizer"] == "hnsw":
            index.clustering_index = None
    for s in _progress(range(0, n, chunk_size), progress, f"add to {kind}", total=n, step=chunk_size,
                       unit="vec"):
        index.add(np.ascontiguousarray(vectors[s:s + chunk_size], dtype=np.float32))
    log.info("built %s over %d x %d in %.1f s", kind, n, d, time.perf_counter() - start)
    return index


def _training_points_needed(kind: str, p: dict) -> tuple[int, str]:
    """The fewest training vectors k-means accepts for ``kind`` (one a centroid), and why."""
    needs = [(1, "")]
    if kind.startswith("ivf"):
        needs.append((p["nlist"], f"k-means needs one per list, and nlist is {p['nlist']}"))
    if kind == "ivf-pq":
        needs.append((2 ** p["nbits"], f"one per centroid of its {p['nbits']}-bit codes"))
    if kind == "ivf-pqfs":
        needs.append((16, "one per centroid of its 4-bit codes"))
    return max(needs)


def _default_train_size(kind: str, p: dict, n: int) -> int:
    size = 0
    if kind.startswith("ivf"):
        size = max(size, 40 * p["nlist"])
    if kind in ("ivf-pq", "ivf-pqfs"):
        size = max(size, 256 * 64 if kind == "ivf-pq" else 16 * 256)
    if kind == "hnsw-sq8":
        size = 65536
    return min(n, max(size, 10000))


def search_settings(kind: str, params: dict) -> dict:
    """What ``cache.json`` records for searching an index of ``kind``."""
    search = {k: params[k] for k in ("nprobe", "ef_search") if k in params}
    return {"search": search, "rerank": params.get("rerank", 0) if kind in RERANKED_KINDS else 0}


# ============================================================================================
# Cache directories


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def write_cache_meta(out_dir: Path, *, kind: str, params: dict, count: int, dim: int, vectors: str | None,
                     paths: str | None, index: str = INDEX_FILE, **extra) -> dict:
    meta = {"format": FORMAT_VERSION, "kind": kind, "index": index, "vectors": vectors, "paths": paths,
            "count": count, "dim": dim, **search_settings(kind, params), "params": params, **extra}
    _write_json(out_dir / CACHE_META, meta)
    return meta


def _write_index(vectors: np.ndarray, out_dir: Path, kind: str, params: dict, progress: bool,
                 chunk_size: int = 65536) -> tuple[dict, float]:
    """Build and write the index of a cache directory; the parameters actually used."""
    import faiss

    start = time.perf_counter()
    full = index_parameters(kind, len(vectors), vectors.shape[1], **params)
    if kind == "flat":
        write_flat_index(vectors, out_dir / INDEX_FILE, chunk_size=chunk_size, progress=progress)
    else:
        index = build_index(vectors, kind, progress=progress, chunk_size=chunk_size, **params)
        tmp = out_dir / (INDEX_FILE + ".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, out_dir / INDEX_FILE)
    return full, time.perf_counter() - start


@dataclass
class BuildReport:
    out_dir: Path
    rows: int  # vectors in the cache
    kind: str
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"} of files that could not be used
    resumed_from: int = 0  # rows already there when this run started
    seconds: float = 0.0
    index_seconds: float = 0.0

    def summary(self) -> str:
        text = f"{self.out_dir}: {self.rows} vectors, {self.kind} index"
        if self.resumed_from:
            text += f" (resumed after {self.resumed_from})"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} file(s):\n" + "\n".join(
                f"  {s['path']}: {s['error']}" for s in self.skipped)
        return text


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, by :func:`guess_kind`), hidden entries left out,
    sorted by their path relative to the folder."""
    from .preprocess import IMAGE_EXTENSIONS, guess_kind

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(str(folder), "not a folder", "a folder of images")
    found, other_kinds = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(root) / name
            kind = guess_kind(path)
            if kind == "image":
                found.append(path)
            elif kind in ("depth", "thermal") and path.suffix.lower() in IMAGE_EXTENSIONS:
                other_kinds.append(f"{path.relative_to(folder).as_posix()} ({kind})")
    if other_kinds:  # picture files that are not pictures to ImageBind: say so rather than drop them silently
        log.warning("left out %d picture file(s) read as depth or thermal maps (by their names or 16-bit "
                    "content), which a visual cache of images does not hold: %s", len(other_kinds),
                    ", ".join(sorted(other_kinds)[:8]) + (", ..." if len(other_kinds) > 8 else ""))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _sources(sources: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[str], str | None]:
    """(files, their names in the cache, root folder or None)."""
    if isinstance(sources, (str, os.PathLike)):
        root = Path(sources)
        files = list_image_files(root)
        return files, [f.relative_to(root).as_posix() for f in files], str(root.resolve())
    files, names, seen = [], [], set()
    for s in sources:
        path = Path(s)
        name = str(path.resolve())
        if name not in seen:
            seen.add(name)
            files.append(path)
            names.append(name)
    return files, names, None


def build_cache(sources: str | Path | Sequence[str | Path], embedder, out_dir: str | Path, *,
                chunk_size: int = 256, resume: bool = True, progress: bool = True, kind: str = "flat",
                index_params: dict | None = None,
                on_chunk: Callable[[dict], None] | None = None) -> BuildReport:
    """Embed images into a cache directory and index them.

    ``sources``: a folder (every image below it, by :func:`guess_kind`, sorted) or a list of
    files. Files are embedded ``chunk_size`` at a time with ``embedder`` (an
    :class:`~imagebind_llm.embedding.Embedder`; unit vectors). After each chunk its vectors are
    appended to ``vectors.npy``, its file names to ``paths.jsonl``, and ``manifest.json`` is
    updated; ``on_chunk(info)`` is then called. A file that cannot be read is skipped and
    reported (``BuildReport.skipped``, the manifest), never fatal. With ``resume`` an
    interrupted build continues after its last finished chunk (files already embedded or
    skipped are not read again; files added to the folder since are appended); without it the
    build starts over. At the end the index (``kind``, ``index_params``) is written.
    """
    import torch

    from .preprocess import load

    start_time = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    index_parameters(kind, 1 << 20, 1024, **(index_params or {}))  # refuse bad parameters before embedding
    files, names, root = _sources(sources)
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if resume and manifest_path.is_file() else None
    if manifest is not None and manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: written by another version of the builder; rebuild "
                              "without resume")
    dim = manifest["dim"] if manifest else None
    rows = manifest["rows"] if manifest else 0
    skipped: list[dict] = list(manifest["skipped"]) if manifest else []
    done_names: list[str] = []
    if rows:
        done_names = _read_lines(out_dir / PATHS_FILE, rows)
    else:
        for stale in (VECTORS_FILE, PATHS_FILE, INDEX_FILE, CACHE_META):
            (out_dir / stale).unlink(missing_ok=True)
    done = set(done_names) | {s["path"] for s in skipped}
    todo = [(f, nm) for f, nm in zip(files, names) if nm not in done]
    resumed_from = rows
    meta_path = out_dir / CACHE_META
    if manifest and manifest.get("complete") and not todo and meta_path.is_file() and \
            (out_dir / INDEX_FILE).is_file() and json.loads(meta_path.read_text()).get("kind") == kind:
        log.info("the cache in %s is complete; nothing new to embed", out_dir)
        return BuildReport(out_dir, rows, kind, skipped, rows, time.perf_counter() - start_time, 0.0)
    if manifest and (todo or not manifest.get("complete")):
        log.info("resuming the cache build in %s after %d vectors (%d files left)", out_dir, rows, len(todo))

    def save_manifest(complete: bool) -> None:
        _write_json(manifest_path, {"format": FORMAT_VERSION, "root": root, "dim": dim, "rows": rows,
                                    "skipped": skipped, "complete": complete, "chunk_size": chunk_size})

    appender = NpyAppender(out_dir / VECTORS_FILE, dim, rows) if dim else None
    paths_file = open(out_dir / PATHS_FILE, "r+" if rows else "w", encoding="utf-8")
    _truncate_lines(paths_file, rows)
    bar = _bar(progress, len(files), len(files) - len(todo), "embed images", "img")
    try:
        for c in range(0, len(todo), chunk_size):
            chunk = todo[c:c + chunk_size]
            tensors, ok_names = [], []
            for path, name in chunk:
                try:
                    tensors.append(load("image", path, embedder.options, name=name))
                    ok_names.append(name)
                except (InputError, OSError) as error:
                    skipped.append({"path": name, "error": str(error)})
                    log.warning("skipping %s: %s", name, error)
            if tensors:
                unit = embedder.encode_inputs("image", torch.stack(tensors))["unit"].float().cpu().numpy()
                bad = ~np.isfinite(unit).all(axis=1)
                for i in np.flatnonzero(bad):
                    skipped.append({"path": ok_names[i], "error": "the embedding is not finite"})
                unit = unit[~bad]
                ok_names = [nm for nm, b in zip(ok_names, bad) if not b]
                if appender is None:
                    dim = unit.shape[1]
                    appender = NpyAppender(out_dir / VECTORS_FILE, dim, 0)
                elif unit.shape[1] != dim:
                    raise CheckpointError(f"{out_dir}: the cache holds vectors of width {dim} but the "
                                          f"embedder gives width {unit.shape[1]}; build into a new folder")
                appender.append(unit)
                appender.commit()
                paths_file.write("".join(json.dumps(nm) + "\n" for nm in ok_names))
                paths_file.flush()
                os.fsync(paths_file.fileno())
                rows += len(unit)
            save_manifest(False)
            if bar is not None:
                bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk({"rows": rows, "files_done": len(files) - len(todo) + c + len(chunk),
                          "files_total": len(files), "skipped": len(skipped)})
    finally:
        if bar is not None:
            bar.close()
        paths_file.close()
        if appender is not None:
            appender.close()
    if rows == 0:
        save_manifest(False)
        raise InputError(str(sources) if root else "image list", "no image could be embedded"
                         + (f" ({len(skipped)} skipped)" if skipped else ""), "readable image files")
    vectors = np.load(out_dir / VECTORS_FILE, mmap_mode="r")
    params, index_seconds = _write_index(vectors, out_dir, kind, index_params or {}, progress)
    save_manifest(True)
    write_cache_meta(out_dir, kind=kind, params=params, count=rows, dim=dim, vectors=VECTORS_FILE,
                     paths=PATHS_FILE, source=root or "file list", skipped=len(skipped),
                     build_seconds=round(index_seconds, 1))
    report = BuildReport(out_dir, rows, kind, skipped, resumed_from, time.perf_counter() - start_time,
                         index_seconds)
    log.info(report.summary())
    return report


def _read_lines(path: Path, count: int) -> list[str]:
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(names) == count:
                break
            names.append(json.loads(line))
    if len(names) < count:
        raise CheckpointError(f"{path}: {len(names)} names for {count} vectors; rebuild without resume")
    return names


def _truncate_lines(f, count: int) -> None:
    """Keep the first ``count`` lines of a text file opened r+ (drop an unfinished chunk's names)."""
    if count == 0:
        f.truncate(0)
        return
    f.seek(0)
    for _ in range(count):
        f.readline()
    f.truncate(f.tell())
    f.seek(0, os.SEEK_END)


def build_cache_from_features(features: str | Path | np.ndarray, out_dir: str | Path, *, kind: str = "flat",
                              normalize: bool = True, paths: Sequence[str] | None = None,
                              chunk_size: int = 65536, progress: bool = True, **index_params) -> BuildReport:
    """A cache directory from ready (N, D) features: a ``.npy`` file (memory-mapped), a ``.pt``
    file (a tensor, or a dict with one of "features" / "vectors" / "embeddings" and optionally
    "paths"), or an array. Rows are L2-normalised (unless ``normalize=False``) and written to
    ``vectors.npy`` in chunks, then indexed."""
    start_time = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    array, found_paths = _read_features(features)
    paths = list(paths) if paths is not None else found_paths
    n, d = array.shape
    if paths is not None and len(paths) != n:
        raise InputError("paths", f"{len(paths)} names for {n} vectors", "one name per row")
    index_parameters(kind, n, d, **index_params)
    with NpyAppender(out_dir / VECTORS_FILE, d) as out:
        for s in _progress(range(0, n, chunk_size), progress, "copy features", total=n, step=chunk_size,
                           unit="vec"):
            block = np.asarray(array[s:s + chunk_size], dtype=np.float32)
            if not np.isfinite(block).all():
                bad = s + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                raise InputError(_name(features), f"row {bad} contains NaN or infinite values",
                                 "finite features")
            if normalize:
                norms = np.linalg.norm(block, axis=1, keepdims=True)
                if (norms < 1e-12).any():
                    bad = s + int(np.flatnonzero(norms[:, 0] < 1e-12)[0])
                    raise InputError(_name(features), f"row {bad} is zero", "non-zero feature vectors")
                block = block / norms
            out.append(block)
    (out_dir / PATHS_FILE).unlink(missing_ok=True)
    if paths is not None:
        with open(out_dir / PATHS_FILE, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(str(p)) + "\n" for p in paths))
    vectors = np.load(out_dir / VECTORS_FILE, mmap_mode="r")
    params, index_seconds = _write_index(vectors, out_dir, kind, index_params, progress)
    write_cache_meta(out_dir, kind=kind, params=params, count=n, dim=d, vectors=VECTORS_FILE,
                     paths=PATHS_FILE if paths is not None else None, source=_name(features),
                     build_seconds=round(index_seconds, 1))
    return BuildReport(out_dir, n, kind, [], 0, time.perf_counter() - start_time, index_seconds)


def _name(features) -> str:
    return Path(features).name if isinstance(features, (str, os.PathLike)) else "features"


def _read_features(features) -> tuple[np.ndarray, list[str] | None]:
    paths = None
    if isinstance(features, (str, os.PathLike)):
        path = Path(features)
        if not path.is_file():
            raise InputError(path.name, f"file not found ({path})", "a .npy or .pt feature file")
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r")
        elif path.suffix.lower() in (".pt", ".pth"):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if isinstance(obj, dict):
                key = next((k for k in ("features", "vectors", "embeddings") if k in obj), None)
                tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
                if key is None and len(tensors) != 1:
                    raise InputError(path.name, f"a dict with keys {sorted(map(str, obj))}",
                                     "a tensor, or a dict with 'features' / 'vectors' / 'embeddings'")
                paths = obj.get("paths")
                obj = obj[key] if key else tensors[0]
            if not isinstance(obj, torch.Tensor):
                raise InputError(path.name, f"holds a {type(obj).__name__}", "an (N, D) tensor")
            array = obj.detach().float().numpy()
        elif read_flat_index_layout(path) is not None:
            array = open_flat_index_vectors(path)
        else:
            raise InputError(path.name, "unknown feature file type", ".npy, .pt or a flat FAISS index")
    else:
        array = (features.detach().float().cpu().numpy() if hasattr(features, "detach")
                 else np.asarray(features))
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(_name(features), f"expected (N, D) features, got shape {tuple(array.shape)}",
                         "an (N, D) array of feature rows")
    return array, (list(map(str, paths)) if paths is not None else None)


def compress(source: str | Path, out_dir: str | Path, kind: str = "ivf-pqfs", *, progress: bool = True,
             chunk_size: int = 65536, **params) -> BuildReport:
    """A compressed index of the vectors of a flat index file (e.g. the official ``knn.index``,
    memory-mapped, read in chunks) or of a cache directory, written as a cache directory whose
    vector store is the source (for exact re-ranking and the blend)."""
    start_time = time.perf_counter()
    source = Path(source)
    out_dir = Path(out_dir)
    paths_name = None
    if source.is_dir():
        meta = json.loads((source / CACHE_META).read_text())
        if not meta.get("vectors"):
            raise CheckpointError(f"{source}: the cache has no vector store to compress")
        store_path = (source / meta["vectors"]).resolve()
        if meta.get("paths"):
            paths_name = str((source / meta["paths"]).resolve())
    else:
        store_path = source.resolve()
    vectors = VectorStore.open(store_path).array()
    if kind == "flat":
        raise ValueError("compress builds a compressed kind; the source already is a flat index")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / INDEX_FILE).resolve() == store_path:
        raise ValueError(f"{out_dir}: would overwrite the source index")
    n, d = vectors.shape
    full, index_seconds = _write_index(vectors, out_dir, kind, params, progress, chunk_size)
    write_cache_meta(out_dir, kind=kind, params=full, count=n, dim=d, vectors=str(store_path),
                     paths=paths_name, source=str(source.resolve()), build_seconds=round(index_seconds, 1))
    return BuildReport(out_dir, n, kind, [], 0, time.perf_counter() - start_time, index_seconds)


# ============================================================================================
# Progress bars


def _bar(enabled: bool, total: int, initial: int, desc: str, unit: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)


def _progress(iterable: Iterable[int], enabled: bool, desc: str, *, total: int | None = None, step: int = 1,
              unit: str = "it"):
    """Iterate, advancing a bar by ``step`` (clipped to ``total``) per item."""
    if not enabled:
        yield from iterable
        return
    from tqdm import tqdm

    items = list(iterable)
    with tqdm(total=total if total is not None else len(items), desc=desc, unit=unit, unit_scale=True,
              dynamic_ncols=True) as bar:
        for item in items:
            yield item
            bar.update(min(step, bar.total - bar.n) if total is not None else 1)


# ============================================================================================
# Command line


def _add_index_arguments(parser: argparse.ArgumentParser, default_kind: str) -> None:
    parser.add_argument("--kind", default=default_kind, choices=INDEX_KINDS,
                        help=f"index kind (default {default_kind})")
    group = parser.add_argument_group("index parameters (defaults depend on the kind and the size)")
    group.add_argument("--nlist", type=int, help="IVF lists (default about 2 sqrt(N))")
    group.add_argument("--nprobe", type=int,
                       help="IVF lists searched per query (default nlist/64, at least 16)")
    group.add_argument("--niter", type=int, help="k-means iterations (default 10)")
    group.add_argument("--quantizer", choices=("flat", "hnsw"),
                       help="IVF coarse quantizer (default hnsw from 4096 lists)")
    group.add_argument("--m", type=int,
                       help="PQ sub-vectors (ivf-pq: D/16 bytes a vector; ivf-pqfs: D/4 nibbles)")
    group.add_argument("--nbits", type=int, help="bits per PQ code (ivf-pq, default 8)")
    group.add_argument("--M", dest="M", type=int, help="HNSW neighbours per node (default 32)")
    group.add_argument("--ef-construction", type=int, help="HNSW build breadth (default 40)")
    group.add_argument("--ef-search", type=int, help="HNSW search breadth (default 256)")
    group.add_argument("--rerank", type=int,
                       help="candidates re-ranked with the exact vectors (default 100, hnsw-sq8 50)")
    group.add_argument("--train-size", type=int, help="training sample (default: enough for the kind)")
    group.add_argument("--seed", type=int, help="sampling and k-means seed (default 0)")


_PARAM_NAMES = ("nlist", "nprobe", "niter", "quantizer", "m", "nbits", "M", "ef_construction", "ef_search",
                "rerank", "train_size", "seed")


def _index_params(args: argparse.Namespace) -> dict:
    given = {name: getattr(args, name) for name in _PARAM_NAMES if getattr(args, name, None) is not None}
    known = index_parameters(args.kind, 1 << 20, 1024)  # refuse parameters the kind does not have
    wrong = sorted(set(given) - set(known))
    if wrong:
        raise SystemExit(f"error: {', '.join('--' + w.replace('_', '-') for w in wrong)} do(es) not apply to "
                         f"--kind {args.kind}")
    return given


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imagebind_llm build-cache",
                                     description="Build visual caches (FAISS indexes of ImageBind image "
                                                 "features).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--threads", type=int, help="FAISS / torch threads (default: all cores)")
    commands = parser.add_subparsers(dest="command", required=True)

    images = commands.add_parser("from-images", help="embed a folder of images (resumable)")
    images.add_argument("folder", help="folder of images (searched recursively)")
    images.add_argument("out", help="cache directory to write")
    images.add_argument("--checkpoint", required=True,
                        help="ImageBind weights (imagebind_huge.pth or ImageBind-LLM's imagebind_w3D.pth)")
    images.add_argument("--imagebind-config", default="imagebind_huge",
                        help="ImageBind sizes: imagebind_huge, imagebind_tiny, a config .json "
                             "(ImageBindConfig.to_json) or a .json of official ImageBindModel kwargs")
    images.add_argument("--chunk-size", type=int, default=256, help="images per chunk (default 256)")
    images.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    images.add_argument("--device", default=None,
                        help="where ImageBind runs: cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    images.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="ImageBind weights dtype (default float32)")
    images.add_argument("--mode", choices=("corrected", "official"), default="corrected",
                        help="image preprocessing (use the one the app's queries use; default corrected)")
    images.add_argument("--no-resume", dest="resume", action="store_false", help="start over")
    _add_index_arguments(images, "flat")

    features = commands.add_parser("from-features", help="index a ready (N, D) feature file (.npy / .pt)")
    features.add_argument("file", help="(N, D) features: a .npy array or a .pt tensor")
    features.add_argument("out", help="cache directory to write")
    features.add_argument("--no-normalize", dest="normalize", action="store_false",
                          help="keep the rows as they are (default: L2-normalise)")
    _add_index_arguments(features, "flat")

    comp = commands.add_parser("compress", help="compressed index of a flat index (e.g. the official "
                                                "knn.index), re-ranked with it")
    comp.add_argument("index", help="flat FAISS index file (read memory-mapped) or cache directory")
    comp.add_argument("out", help="cache directory to write")
    _add_index_arguments(comp, "ivf-pqfs")
    return parser


def _imagebind_config(name: str):
    """The vision sizes of the ImageBind to embed with (the point branch is never needed here)."""
    from .config import IMAGEBIND_PRESETS, ImageBindConfig

    if name in IMAGEBIND_PRESETS:
        return IMAGEBIND_PRESETS[name](with_point=False)
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if "kwargs" in data or "out_embed_dim" in data:  # official ImageBindModel keyword arguments
            return ImageBindConfig.from_official_kwargs(data.get("kwargs", data), point=None)
        from dataclasses import replace

        return replace(ImageBindConfig.from_dict(data), point=None)
    raise ValueError(f"--imagebind-config must be one of {sorted(IMAGEBIND_PRESETS)} or a config .json file, "
                     f"got {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    if args.threads:
        import faiss
        import torch

        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    params = _index_params(args)
    try:
        if args.command == "from-images":
            import torch

            from .checkpoint import load_imagebind
            from .embedding import Embedder
            from .preprocess import PreprocessOptions

            dtype = getattr(torch, args.dtype)
            from .precision import default_device

            device = args.device or default_device()
            model = load_imagebind(args.checkpoint, _imagebind_config(args.imagebind_config),
                                   with_point=False, device=device, dtype=dtype)
            embedder = Embedder(model, PreprocessOptions(mode=args.mode), batch_size=args.batch_size)
            report = build_cache(args.folder, embedder, args.out, chunk_size=args.chunk_size,
                                 resume=args.resume, progress=args.progress, kind=args.kind,
                                 index_params=params)
        elif args.command == "from-features":
            report = build_cache_from_features(args.file, args.out, kind=args.kind, normalize=args.normalize,
                                               progress=args.progress, **params)
        else:
            report = compress(args.index, args.out, args.kind, progress=args.progress, **params)
    except (InputError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"done in {report.seconds:.1f} s (index {report.index_seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
