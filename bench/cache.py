"""Benchmark of the visual cache's index kinds: build time, memory, single-query latency and
recall@10 against the exact (flat) search.

    python bench/cache.py                                   # 100k and 1M x 1024 (about 15 min on 2 cores)
    python bench/cache.py --quick                           # 20k x 256, seconds
    python bench/cache.py --n 1000000 --kinds ivf-pq,ivf-pqfs --sweep
    python bench/cache.py --set ivf-pq.nprobe=64 --set ivf-pq.rerank=200
    python bench/cache.py --index ckpts/knn.index           # an existing index (dir or file) vs flat

**Data.** Random unit vectors with the structure of real image embeddings rather than uniform
noise: a common mean direction (CLIP-like embeddings live in a narrow cone; random pairs have
cosine ~0.3), a few thousand clusters of log-normal sizes, small groups of near-duplicates
inside the clusters, and an anisotropic spectrum (a 256-dimensional decaying part in a random
basis plus an isotropic tail), so that nearest neighbours are much closer than random pairs.
Queries are fresh draws from the same clusters (a new photo of something the cache holds).
The statistics printed with each set (top-1 / top-10 similarity, random-pair cosine, PCA
dimensions for 90 % of the variance) let one compare it with real ImageBind features.

**Per index kind** (see ``imagebind_llm/cache_builder.py``): ``build s`` = training + adding
(flat: writing the index file); ``file MiB`` = size of the serialised index; ``RSS MiB`` = the
anonymous resident memory the loaded index adds (read from /proc/self/status after loading and
searching; the flat index is memory-mapped, so it adds none and its pages are page cache);
``p50 / p95 ms`` = latency of one query through ``VisualCache.search(q, 10)``, re-ranking
included (exact vectors read from the memory-mapped ``vectors.npy``), measured one query at a
time after a warm-up, for up to ``--queries`` queries or ``--latency-budget`` seconds;
``cpu ms`` = the median CPU time of the process per query (``time.process_time``), which other
processes competing for the cores do not inflate (the wall-clock columns they do);
``recall@10`` = |found top-10 n true top-10| / 10 against the exact search; ``all10`` = share
of queries whose 10 neighbours are all found (their blend then equals the flat-index blend);
``sim err`` = the largest |similarity - exact inner product| over the neighbours returned
(0 up to float rounding for re-ranked kinds).

``--threads`` sets ``faiss.omp_set_num_threads`` (default: all cores). FAISS answers a single
query of an IVF or HNSW index on one thread. ``main(argv)`` returns the results (also written
with ``--json``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# OpenMP threads that busy-wait make FAISS (and torch) many times slower as soon as another
# process wants the same cores (measured: a 20k x 256 IVF-PQ build 1.3 s on one thread, 4 to 12 s
# on two threads of a 2-core machine with a load of 4). Passive waiting avoids it; it must be set
# before the OpenMP runtimes load. Set OMP_WAIT_POLICY yourself to measure with another policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_KINDS = ("flat", "ivf-flat", "ivf-pq", "ivf-pqfs", "hnsw-sq8")


# --------------------------------------------------------------------------------------------
# data


def clustered_unit_vectors(n: int, dim: int, *, queries: int = 0, seed: int = 0, clusters: int | None = None,
                           mean_weight: float = 0.7, spread: float = 0.8, fine: float = 0.5,
                           group_size: int = 16, rank: int = 256, decay: float = 1.0, tail: float = 0.15,
                           out: np.ndarray | None = None,
                           chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) database and (queries, dim) query unit vectors, float32, clustered (see the
    module docstring). ``out`` (n, dim) receives the database (e.g. a memmap)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    clusters = clusters or max(16, min(4096, n // 250))
    r = min(rank, dim)
    spectrum = (torch.arange(r, dtype=torch.float64) + 4.0) ** -decay
    spectrum = (spectrum / spectrum.sum()).sqrt().float()
    basis, _ = torch.linalg.qr(torch.randn(dim, r, generator=g, dtype=torch.float64))
    proj = (spectrum[:, None] * basis.T.float()).contiguous()  # (r, dim): structured part, variance 1
    tail_sd = tail / math.sqrt(dim)  # isotropic part, variance tail^2

    def sample(m: int) -> torch.Tensor:
        return torch.randn(m, r, generator=g) @ proj

    mean = sample(1)[0]
    mean /= mean.norm()
    centers = sample(clusters)
    centers /= centers.norm(dim=1, keepdim=True)
    rng = np.random.default_rng(seed)
    cluster_weights = torch.from_numpy(rng.lognormal(0, 1.0, clusters))
    groups = max(clusters, n // group_size)  # near-duplicate groups inside the clusters
    parent = torch.multinomial(cluster_weights, groups, replacement=True, generator=g)
    group_spread = spread * (0.6 + 0.8 * torch.rand(groups, generator=g))
    group_centers = centers[parent] + sample(groups) * group_spread[:, None]
    group_centers /= group_centers.norm(dim=1, keepdim=True)
    point_spread = fine * (0.5 + torch.rand(groups, generator=g))
    group_weights = torch.from_numpy(rng.lognormal(0, 1.0, groups))
    total = n + queries
    x = out if out is not None else np.empty((n, dim), np.float32)
    q = np.empty((queries, dim), np.float32)
    for s in range(0, total, chunk):
        m = min(chunk, total - s)
        label = torch.multinomial(group_weights, m, replacement=True, generator=g)
        scale = point_spread[label, None]
        y = sample(m) * scale
        y += torch.randn(m, dim, generator=g) * (tail_sd * scale)
        y += group_centers[label]
        y += mean_weight * mean
        y /= y.norm(dim=1, keepdim=True)
        y = y.numpy()
        head = max(0, min(m, n - s))  # rows of the database, then of the queries
        x[s:s + head] = y[:head]
        q[max(0, s - n):max(0, s - n) + m - head] = y[head:]
    return x, q


def data_statistics(base: np.ndarray, queries: np.ndarray, true_sims: np.ndarray) -> dict:
    sample = np.asarray(base[:: max(1, len(base) // 2000)][:2000])
    pairs = sample @ sample.T
    upper = pairs[np.triu_indices(len(sample), 1)]
    centered = sample - sample.mean(0)
    variance = np.linalg.svd(centered, compute_uv=False) ** 2
    cumulative = np.cumsum(variance) / variance.sum()
    return {"top1_sim": float(true_sims[:, 0].mean()), "top10_sim": float(true_sims[:, -1].mean()),
            "random_pair_cos": float(upper.mean()),
            "pca_dims_90pct": int(np.searchsorted(cumulative, 0.9) + 1)}


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 131072, progress: bool = False):
    """Exact top-k inner products, reading ``base`` (e.g. a 13 GB memmap) in chunks."""
    best_sims = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), -1, np.int64)
    starts = range(0, len(base), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="exact search", unit="chunk")
    for s in starts:
        block = np.asarray(base[s:s + chunk], dtype=np.float32)
        sims = queries @ block.T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_sims = np.concatenate([best_sims, np.take_along_axis(sims, part, 1)], 1)
        cand_ids = np.concatenate([best_ids, part + s], 1)
        order = np.argsort(-cand_sims, axis=1, kind="stable")[:, :k]
        best_sims = np.take_along_axis(cand_sims, order, 1)
        best_ids = np.take_along_axis(cand_ids, order, 1)
    return best_sims, best_ids


# --------------------------------------------------------------------------------------------
# memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float:
    kib = None
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return (kib or 0) / 2**20


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def anon_rss_mib() -> float | None:
    kib = _status_kib("RssAnon")
    return None if kib is None else kib / 1024


# --------------------------------------------------------------------------------------------
# one index kind


def evaluate(cache, queries: np.ndarray, true_ids: np.ndarray, *, latency_queries: int, budget: float,
             cold: int = 0) -> dict:
    """Latency (one query at a time), recall@10, all-10 share, similarity error; with ``cold``,
    also the latency of that many queries with the vector store evicted from memory first."""
    import torch

    q = torch.from_numpy(queries)
    for i in range(min(3, len(q))):  # warm-up
        cache.search(q[i:i + 1], 10)
    times, cpu = [], []
    deadline = time.perf_counter() + budget
    for i in range(min(latency_queries, len(q))):
        c = time.process_time()
        t = time.perf_counter()
        cache.search(q[i:i + 1], 10)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if time.perf_counter() > deadline:
            break
    if cold and cache.reranks and cache.store.is_mapped:
        cold_times = []
        for i in range(min(cold, len(q))):
            drop_page_cache(cache.store)
            t = time.perf_counter()
            cache.search(q[i:i + 1], 10)
            cold_times.append(time.perf_counter() - t)
        cold_result = {"cold_p50_ms": float(np.percentile(cold_times, 50) * 1e3),
                       "cold_p95_ms": float(np.percentile(cold_times, 95) * 1e3),
                       "cold_queries": len(cold_times)}
    else:
        cold_result = {}
    sims, ids = [], []
    for s in range(0, len(q), 64):
        a, b = cache.search(q[s:s + 64], 10)
        sims.append(a.numpy())
        ids.append(b.numpy())
    sims, ids = np.concatenate(sims), np.concatenate(ids)
    found = np.array([len(set(a) & set(b)) for a, b in zip(ids, true_ids)])
    store = cache.store
    exact = np.einsum("bkd,bd->bk", store.get(np.maximum(ids, 0)), queries) if store is not None else None
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3),
        "cpu_ms": float(np.percentile(cpu, 50) * 1e3),
        "latency_queries": len(times), "recall_at_10": float(found.mean() / 10),
        "all10": float((found == 10).mean()),
        "sim_err": None if exact is None else float(np.abs(sims - exact).max()), **cold_result,
    }


def drop_page_cache(store) -> None:
    """Evict a memory-mapped vector store from memory (our mapping and the page cache), so that
    the next reads come from the disk."""
    import mmap

    mapped = getattr(store.array(), "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)
    fd = os.open(store.source, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_kind(kind: str, base: np.ndarray, store_path: Path, queries: np.ndarray, true_ids: np.ndarray,
             workdir: Path, params: dict, args, sweep: bool) -> list[dict]:
    import faiss

    from imagebind_llm.cache_builder import build_index, index_parameters, write_flat_index
    from imagebind_llm.visual_cache import VisualCache, mmap_flags

    n, d = base.shape
    full = index_parameters(kind, n, d, **params)
    path = workdir / f"{kind}.index"
    _trim()
    start = time.perf_counter()
    if kind == "flat":
        write_flat_index(base, path)
    else:
        index = build_index(base, kind, progress=args.progress, **params)
        build_seconds = time.perf_counter() - start
        faiss.write_index(index, str(path))
        del index
    build = time.perf_counter() - start if kind == "flat" else build_seconds
    file_mib = path.stat().st_size / 2**20
    _trim()
    before = anon_rss_mib()
    # the flat index is memory-mapped as the app does; the others are read into memory, so that
    # RSS shows what they need to answer fast
    index = faiss.read_index(str(path), mmap_flags()[0] if kind == "flat" else 0)
    rerank = full.get("rerank", 0)
    cache = VisualCache(index, str(path), vectors=store_path, rerank=rerank)
    knob = full.get("nprobe", full.get("ef_search"))
    settings = [(knob, rerank)]
    if sweep and kind.startswith("ivf"):
        settings += [(p, r) for p in (16, 32, 64, 128, 256) for r in ((50, 100, 200) if rerank else (0,))
                     if (p, r) != settings[0] and p <= full["nlist"]]
    if sweep and kind.startswith("hnsw"):
        settings += [(e, r) for e in (32, 64, 128, 256) for r in ((20, 50, 100) if rerank else (0,))
                     if (e, r) != settings[0]]
    rows = []
    for knob, rr in settings:
        if kind.startswith("ivf"):
            cache.set_search_parameters(nprobe=knob, rerank=rr)
        elif kind.startswith("hnsw"):
            cache.set_search_parameters(ef_search=knob, rerank=rr)
        result = evaluate(cache, queries, true_ids, latency_queries=args.queries, budget=args.latency_budget,
                          cold=args.cold)
        after = anon_rss_mib()
        search = ({"nprobe": knob} if kind.startswith("ivf")
                  else {"ef_search": knob} if kind.startswith("hnsw") else {})
        if cache.reranks:
            search["rerank"] = rr
        rows.append({"n": n, "dim": d, "kind": kind, "params": _short_params(kind, full), "search": search,
                     "build_s": build, "file_mib": file_mib,
                     "rss_mib": None if before is None else max(0.0, after - before), **result})
        print(format_row(rows[-1]), flush=True)
    del cache, index
    path.unlink()
    _trim()
    return rows


def _short_params(kind: str, p: dict) -> str:
    keys = {"ivf-flat": ("nlist", "quantizer"), "ivf-pq": ("nlist", "m", "nbits", "quantizer"),
            "ivf-pqfs": ("nlist", "m", "quantizer"), "hnsw-sq8": ("M", "ef_construction"),
            "hnsw-flat": ("M", "ef_construction")}.get(kind, ())
    return " ".join(f"{k}={p[k]}" for k in keys)


HEADER = (f"{'N':>9} {'D':>5} {'kind':<9} {'build params':<34} {'search':<22} {'build s':>8} {'file MiB':>9} "
          f"{'RSS MiB':>8} {'p50 ms':>8} {'p95 ms':>8} {'cpu ms':>7} {'recall@10':>9} {'all10':>6} "
          f"{'sim err':>8}")


def format_row(r: dict) -> str:
    search = " ".join(f"{k}={v}" for k, v in r["search"].items())
    rss = "-" if r["rss_mib"] is None else f"{r['rss_mib']:.0f}"
    err = "-" if r["sim_err"] is None else f"{r['sim_err']:.0e}"
    line = (f"{r['n']:>9} {r['dim']:>5} {r['kind']:<9} {r['params']:<34} {search:<22} {r['build_s']:>8.1f} "
            f"{r['file_mib']:>9.1f} {rss:>8} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['cpu_ms']:>7.2f} "
            f"{r['recall_at_10']:>9.3f} "
            f"{r['all10']:>6.2f} {err:>8}")
    if "cold_p50_ms" in r:
        line += (f"\n{'':>16}cold vector store (evicted before each query): p50 {r['cold_p50_ms']:.2f} ms, "
                 f"p95 {r['cold_p95_ms']:.2f} ms over {r['cold_queries']} queries")
    return line


# --------------------------------------------------------------------------------------------
# an existing index


def run_existing(args) -> list[dict]:
    import faiss

    from imagebind_llm.visual_cache import VectorStore, VisualCache

    meta_path = Path(args.index) / "cache.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    compressed = meta.get("kind", "flat") != "flat"
    _trim()
    before = anon_rss_mib()
    # a compressed index is read into memory (what it needs to be fast), a flat one memory-mapped
    cache = VisualCache.load(args.index, mmap=not compressed, vectors=args.vectors, rerank=args.rerank,
                             nprobe=args.nprobe, ef_search=args.ef_search)
    loaded_mib = None if before is None else anon_rss_mib() - before
    store = cache.store
    if store is None:
        store = cache.store = VectorStore.open(args.index)  # a flat index file is its own store
    base = store.array()
    if base is None:
        raise SystemExit("--index needs exact vectors: a flat index, a cache directory with a store, "
                         "or --vectors")
    if args.query_file:
        q = np.ascontiguousarray(np.load(args.query_file)[:args.queries], dtype=np.float32)
        where = f"from {args.query_file}"
    else:
        rng = np.random.default_rng(args.seed)
        rows = np.sort(rng.choice(len(base), args.queries, replace=False))
        q = np.asarray(base[rows], dtype=np.float32)
        noise = rng.standard_normal(q.shape).astype(np.float32)
        noise -= (noise * q).sum(1, keepdims=True) * q
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        angle = math.acos(args.query_cos)  # queries at cosine query_cos from a cache entry
        q = (math.cos(angle) * q + math.sin(angle) * noise).astype(np.float32)
        where = f"at cosine {args.query_cos} from random entries"
    print(f"{args.index}: {len(base)} x {base.shape[1]}, {type(faiss.downcast_index(cache.index)).__name__}; "
          f"{len(q)} queries {where}", flush=True)
    start = time.perf_counter()
    true_sims, true_ids = exact_knn(base, q, 10, progress=args.progress)
    print(f"exact search of {len(q)} queries: {time.perf_counter() - start:.1f} s", flush=True)
    kind = meta.get("kind") or type(faiss.downcast_index(cache.index)).__name__.removeprefix("Index")
    params = meta.get("params", {})
    search = {k: v for k, v in meta.get("search", {}).items() if v is not None}
    for name, value in (("nprobe", args.nprobe), ("ef_search", args.ef_search)):
        if value is not None:
            search[name] = value
    settings = [dict(search, rerank=cache.rerank)]
    if args.sweep and "nprobe" in search:
        settings += [{"nprobe": p, "rerank": r} for p in (16, 32, 64, 128, 256) for r in (50, 100, 200)
                     if p <= params.get("nlist", 1 << 30)]
    if args.sweep and "ef_search" in search:
        settings += [{"ef_search": e, "rerank": r} for e in (32, 64, 128, 256) for r in (20, 50, 100)]
    print(HEADER)
    rows = []
    for setting in settings:
        cache.set_search_parameters(nprobe=setting.get("nprobe"), ef_search=setting.get("ef_search"),
                                    rerank=setting["rerank"])
        result = evaluate(cache, q, true_ids, latency_queries=args.queries, budget=args.latency_budget,
                          cold=args.cold)
        shown = {k: v for k, v in setting.items() if k != "rerank" or cache.reranks}
        rows.append({"n": len(base), "dim": base.shape[1], "kind": kind,
                     "params": _short_params(kind, params) if params else "", "search": shown,
                     "build_s": meta.get("build_seconds", float("nan")),
                     "file_mib": _index_file(Path(args.index), meta).stat().st_size / 2**20,
                     "rss_mib": loaded_mib,
                     **result})
        print(format_row(rows[-1]), flush=True)
    return rows


def _index_file(path: Path, meta: dict) -> Path:
    return path / meta.get("index", "knn.index") if path.is_dir() else path


def parse_sets(values: list[str]) -> dict[str, dict[str, Any]]:
    """``--set ivf-pq.nprobe=64`` -> {"ivf-pq": {"nprobe": 64}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in values:
        key, _, value = item.partition("=")
        kind, _, name = key.partition(".")
        if not name or not value:
            raise SystemExit(f"--set expects KIND.NAME=VALUE, got {item!r}")
        try:
            parsed: Any = int(value)
        except ValueError:
            parsed = value
        out.setdefault(kind, {})[name] = parsed
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="100000,1000000", help="database sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="FAISS threads (default: all cores)")
    parser.add_argument("--latency-budget", type=float, default=10.0,
                        help="seconds of latency timing per row")
    parser.add_argument("--set", action="append", default=[], metavar="KIND.NAME=VALUE",
                        help="index parameter")
    parser.add_argument("--sweep", action="store_true", help="also nprobe / ef_search x rerank settings")
    parser.add_argument("--quick", action="store_true", help="n=20000, dim=256, 50 queries: seconds")
    parser.add_argument("--cold", type=int, default=0, metavar="Q",
                        help="also time Q queries with the exact-vector store evicted from memory before "
                             "each (re-ranked kinds): the cost of reading the candidates from disk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir",
                        help="folder for the vector store and index files (default: a temp folder)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--progress", action="store_true", help="progress bars while building")
    existing = parser.add_argument_group("evaluate an existing index (--index)")
    existing.add_argument("--index", help="index file or cache directory to evaluate against the flat search")
    existing.add_argument("--vectors", help="exact vectors (.npy or flat index) if the index has none")
    existing.add_argument("--rerank", type=int)
    existing.add_argument("--nprobe", type=int)
    existing.add_argument("--ef-search", type=int)
    existing.add_argument("--query-cos", type=float, default=0.9,
                          help="cosine of the queries to a cache entry")
    existing.add_argument("--query-file", help="queries (.npy, (Q, D)) instead of perturbed cache entries")
    parser.add_argument("--write-flat", metavar="PATH",
                        help="only write the clustered set of the first --n as a flat index file (a stand-in "
                             "for the official knn.index) and its queries as PATH.queries.npy")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    machine = (f"{_cpu_name()}, {os.cpu_count()} cores, {_mem_gib():.0f} GiB; faiss {faiss.__version__}, "
               f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"machine: {machine}; load average {_loadavg()} (other processes on the cores slow every row)",
          flush=True)
    results: dict[str, Any] = {"machine": machine, "rows": [], "datasets": []}
    if args.write_flat:
        n = int(float(args.n.split(",")[0]))
        write_flat_dataset(Path(args.write_flat), n, args.dim, args.queries, args.seed)
        return results
    if args.index:
        results["rows"] = run_existing(args)
    else:
        if args.quick:
            sizes, dim, args.queries = [20000], 256, min(args.queries, 50)
        else:
            sizes, dim = [int(float(s)) for s in args.n.split(",")], args.dim
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        sets = parse_sets(args.set)
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_cache_") as tmp:
            workdir = Path(tmp)
            for n in sizes:
                results["rows"] += run_size(n, dim, kinds, sets, workdir, args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def write_flat_dataset(path: Path, n: int, dim: int, queries: int, seed: int) -> None:
    """The clustered set written straight into a flat index file (no copy in memory)."""
    import struct

    start = time.perf_counter()
    with open(path, "wb") as f:
        f.write(b"IxFI" + struct.pack("<iqqq?i", dim, n, 1 << 20, 1 << 20, True, 0)
                + struct.pack("<Q", n * dim))
        offset = f.tell()
        f.truncate(offset + 4 * n * dim)
    mapped = np.memmap(path, dtype="<f4", mode="r+", offset=offset, shape=(n, dim))
    _, q = clustered_unit_vectors(n, dim, queries=queries, seed=seed, out=mapped)
    mapped.flush()
    del mapped
    np.save(str(path) + ".queries.npy", q)
    print(f"wrote {path} ({n} x {dim}) and {path}.queries.npy ({len(q)} queries) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)


def run_size(n: int, dim: int, kinds: list[str], sets: dict, workdir: Path, args,
             results: dict) -> list[dict]:
    import faiss

    start = time.perf_counter()
    store_path = workdir / "vectors.npy"
    mapped = np.lib.format.open_memmap(store_path, mode="w+", dtype=np.float32, shape=(n, dim))
    _, queries = clustered_unit_vectors(n, dim, queries=args.queries, seed=args.seed, out=mapped)
    mapped.flush()
    del mapped
    _trim()
    base = np.load(store_path, mmap_mode="r")  # the exact vectors: memory-mapped, as in a real cache
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    true_sims, true_ids = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    gt_s = time.perf_counter() - start
    stats = data_statistics(base, queries, true_sims)
    results["datasets"].append({"n": n, "dim": dim, **stats, "generate_s": gen_s, "exact_search_s": gt_s})
    print(f"\n{n} x {dim} clustered unit vectors ({gen_s:.0f} s): query top-1 sim {stats['top1_sim']:.3f}, "
          f"top-10 sim {stats['top10_sim']:.3f}, random-pair cosine {stats['random_pair_cos']:.3f}, "
          f"{stats['pca_dims_90pct']} PCA dims for 90% variance; exact search of {len(queries)} queries "
          f"{gt_s:.1f} s", flush=True)
    print(HEADER, flush=True)
    rows = []
    for kind in kinds:
        try:
            rows += run_kind(kind, base, store_path, queries, true_ids, workdir, sets.get(kind, {}), args,
                             args.sweep)
        except (ValueError, RuntimeError) as error:
            print(f"{n:>9} {dim:>5} {kind:<9} skipped: {error}", flush=True)
    del base
    store_path.unlink()
    return rows


if __name__ == "__main__":
    main()
