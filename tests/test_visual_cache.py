"""The visual cache beyond the golden parity test: per-query batch blend (vs the official
batched bug), cache directories built from images (bad files skipped, interrupt and resume),
from feature files and by compressing a flat index, exact re-ranking of compressed indexes,
memory-mapped flat indexes and width errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import golden_err

from imagebind_llm.cache_builder import (
    INDEX_KINDS,
    NpyAppender,
    build_cache,
    build_cache_from_features,
    build_index,
    list_image_files,
    main,
    write_flat_index,
)
from imagebind_llm.errors import CheckpointError, InputError
from imagebind_llm.fusion import fuse
from imagebind_llm.visual_cache import (
    CacheConfig,
    VectorStore,
    VisualCache,
    open_flat_index_vectors,
    read_flat_index_layout,
)

# ------------------------------------------------------------------------------------------
# helpers


def clustered(n: int, dim: int, *, clusters: int = 40, queries: int = 0, seed: int = 0):
    """Unit vectors in Gaussian clusters on the sphere (+ held-out queries from the same clusters)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n + queries)
    x = centers[labels] + rng.standard_normal((n + queries, dim)).astype(np.float32) * (0.9 / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float32)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int):
    sims = queries @ base.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS on one thread: on a busy 2-core machine OpenMP threads that wait for each other make
    these small builds many times slower."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def expected(golden):
    return torch.load(golden / "cache" / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_cache(golden):
    return VisualCache.load(golden / "cache" / "knn.index")


# ------------------------------------------------------------------------------------------
# the blend of a batch


def image_queries(expected) -> torch.Tensor:
    features = expected["query_features"]["Image"]
    return torch.stack([fuse(f[None], [1.0], "official") for f in features])


def test_batch_blend_is_the_per_query_blend(golden_cache, expected):
    queries = image_queries(expected)
    config = CacheConfig()
    batched = golden_cache.blend(queries, config)
    for b in range(len(queries)):
        single = golden_cache.blend(queries[b:b + 1], config)
        assert torch.equal(single.indices[0], batched.indices[b])
        assert golden_err(single.enhanced[0], batched.enhanced[b]) <= 1e-6


def test_b1_matches_official_and_batch_differs_from_the_official_broadcast(golden_cache, expected):
    queries = image_queries(expected)
    config = CacheConfig(10, 20, 0.5)
    official_rows = next(r for r in expected["results"] if r["case"] == "single_image" and
                         (r["cache_size"], r["cache_t"], r["cache_weight"]) == (10, 20, 0.5))
    ours = golden_cache.blend(queries, config).enhanced  # (3, D)
    for b in range(len(queries)):  # B = 1 is exactly the official single-query result
        single = golden_cache.blend(queries[b:b + 1], config).enhanced
        assert golden_err(single[0], official_rows["enhanced"][b]) <= 1e-5

    # The official call with the 3 queries at once: (3, 1, 3, D), element [b, 0, i] mixes query i
    # with the neighbours of query b. Only the diagonal is a real answer; it equals ours.
    official_batch = expected["batch_gt1_official"]["feature_into_bind_network"]
    assert official_batch.shape == (3, 1, 3, ours.shape[1]) and ours.shape == (3, ours.shape[1])
    for b in range(3):
        assert golden_err(official_batch[b, 0, b], ours[b]) <= 1e-5
        for i in range(3):
            if i != b:  # what the official code hands the bind network for query i: wrong neighbours
                assert golden_err(official_batch[b, 0, i], ours[i]) > 1e-3  # float error is ~1e-7


# ------------------------------------------------------------------------------------------
# flat index files, memory-mapped


def test_flat_index_layout_and_mmap(golden, golden_cache):
    path = golden / "cache" / "knn.index"
    bank = torch.load(golden / "cache" / "bank_vectors.pt", weights_only=True).numpy()
    layout = read_flat_index_layout(path)
    assert (layout.count, layout.dim, layout.metric) == (len(bank), bank.shape[1], 0)
    mapped = open_flat_index_vectors(path)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, bank)
    store = VectorStore.open(path)
    some = np.array([[3, 1], [0, 1999]])
    assert store.is_mapped and np.array_equal(store.get(some), bank[some])
    # the cache reads the same vectors whether it reconstructs from the index or from the store
    ids = torch.tensor([[5, 7, 11]])
    with_store = VisualCache.load(path, vectors=path)
    assert torch.equal(with_store.vectors(ids), golden_cache.vectors(ids))


def test_write_flat_index_is_read_by_faiss(tmp_path):
    import faiss

    x, _ = clustered(300, 24)
    write_flat_index(x, tmp_path / "a.index", chunk_size=64)
    index = faiss.read_index(str(tmp_path / "a.index"), faiss.IO_FLAG_MMAP)
    assert index.ntotal == 300 and index.d == 24 and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert np.array_equal(index.reconstruct_n(0, 300), x)
    reference = faiss.IndexFlatIP(24)
    reference.add(x)
    faiss.write_index(reference, str(tmp_path / "b.index"))
    assert (tmp_path / "a.index").read_bytes() == (tmp_path / "b.index").read_bytes()


def test_npy_appender_is_always_a_valid_npy(tmp_path):
    path = tmp_path / "v.npy"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with NpyAppender(path, 4) as out:
        out.append(a)
        out.commit()
        assert np.array_equal(np.load(path), a)
        out.append(a[:1] + 100)
    assert np.load(path).shape == (4, 4)
    NpyAppender(path, 4, rows=2).close()  # resume keeping 2 rows: the rest is cut off
    assert np.array_equal(np.load(path, mmap_mode="r"), a[:2])


# ------------------------------------------------------------------------------------------
# width and input errors


def test_width_mismatch_is_a_clear_input_error(golden_cache):
    with pytest.raises(InputError, match=r"width 32"):
        golden_cache.blend(torch.randn(1, 48))
    with pytest.raises(InputError, match=r"NaN"):
        golden_cache.search(torch.full((1, 32), float("nan")), 3)


def test_store_of_the_wrong_size_is_refused(golden):
    with pytest.raises(CheckpointError, match="vector store"):
        VisualCache.load(golden / "cache" / "knn.index", vectors=np.zeros((10, 32), np.float32))


# ------------------------------------------------------------------------------------------
# compressed kinds: recall and exact re-ranking


@pytest.fixture(scope="module")
def small_set():
    base, queries = clustered(6000, 64, clusters=60, queries=40, seed=3)
    return base, queries, exact_topk(base, queries, 10)


@pytest.mark.parametrize("kind", [k for k in INDEX_KINDS if k != "flat"])
def test_compressed_kinds_recall_and_exact_similarities(small_set, kind):
    base, queries, (true_sims, true_ids) = small_set
    params = {"nlist": 32, "nprobe": 8} if kind.startswith("ivf") else {}
    index = build_index(base, kind, **params)
    cache = VisualCache(index, vectors=base)
    sims, ids = cache.search(torch.from_numpy(queries), 10)
    assert recall(ids.numpy(), true_ids) >= 0.9, kind
    # every neighbour found has its exact inner product (re-ranked, or exact scores)
    exact = np.einsum("bkd,bd->bk", base[ids.numpy()], queries)
    assert np.abs(sims.numpy() - exact).max() <= 1e-5
    # where all 10 true neighbours were found, the blend is the flat index's
    flat = VisualCache.from_vectors(base)
    q = torch.from_numpy(queries)
    ours, reference = cache.blend(q), flat.blend(q)
    same = (np.sort(ids.numpy(), 1) == np.sort(true_ids, 1)).all(1)
    assert same.mean() >= 0.5
    assert golden_err(ours.enhanced[same], reference.enhanced[same]) <= 1e-5


def test_an_index_trained_on_a_sample_from_any_source_of_vectors(small_set, tmp_path):
    """The official cache is too big to train on whole: k-means learns from ``train_size``
    sampled rows. The vectors may come as an array, a tensor, a .npy file or a flat index; each
    gives the same index, and its search is as good as with all rows."""
    import faiss

    base, queries, (_, true_ids) = small_set
    np.save(tmp_path / "vectors.npy", base)
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    params = {"nlist": 32, "nprobe": 8, "train_size": 1500, "seed": 1}
    indexes = [build_index(source, "ivf-flat", **params)
               for source in (base, torch.from_numpy(base), str(tmp_path / "vectors.npy"), flat)]
    q = torch.from_numpy(queries)
    results = [VisualCache(index).search(q, 10)[1].numpy() for index in indexes]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    assert recall(results[0], true_ids) >= 0.9
    with pytest.raises(ValueError, match="needs vectors or a flat index, got IndexHNSWFlat"):
        build_index(faiss.IndexHNSWFlat(base.shape[1], 8), "flat")


def test_without_vectors_a_compressed_index_is_approximate(small_set):
    base, queries, _ = small_set
    cache = VisualCache(build_index(base, "hnsw-sq8"))
    assert not cache.reranks
    sims, ids = cache.search(torch.from_numpy(queries[:5]), 10)
    exact = np.einsum("bkd,bd->bk", base[ids.numpy()], queries[:5])
    assert 0 < np.abs(sims.numpy() - exact).max() < 0.05  # SQ8 scores: close, not exact


def test_rerank_widens_the_candidates(small_set):
    base, queries, (_, true_ids) = small_set
    index = build_index(base, "ivf-pqfs", nlist=32, nprobe=8, m=4)  # coarse codes
    q = torch.from_numpy(queries)
    few = recall(VisualCache(index, vectors=base, rerank=10).search(q, 10)[1].numpy(), true_ids)
    many = recall(VisualCache(index, vectors=base, rerank=200).search(q, 10)[1].numpy(), true_ids)
    assert many > few and many >= 0.9


# ------------------------------------------------------------------------------------------
# cache directories from features and by compression


def test_from_features_npy_and_pt(tmp_path, small_set):
    base, queries, (true_sims, true_ids) = small_set
    raw = base * np.linspace(0.5, 2, len(base), dtype=np.float32)[:, None]  # not unit: normalised on the way
    np.save(tmp_path / "f.npy", raw)
    report = build_cache_from_features(tmp_path / "f.npy", tmp_path / "npy_cache", progress=False,
                                       chunk_size=1000)
    assert report.rows == len(base)
    cache = VisualCache.load(tmp_path / "npy_cache")
    assert cache.exact and len(cache) == len(base) and cache.store.is_mapped
    sims, ids = cache.search(torch.from_numpy(queries), 10)
    assert recall(ids.numpy(), true_ids) == 1.0
    assert np.abs(sims.numpy() - true_sims).max() <= 1e-5

    names = [f"img_{i}.jpg" for i in range(len(base))]
    torch.save({"features": torch.from_numpy(base), "paths": names}, tmp_path / "f.pt")
    build_cache_from_features(tmp_path / "f.pt", tmp_path / "pt_cache", kind="hnsw-sq8", progress=False)
    cache = VisualCache.load(tmp_path / "pt_cache")
    assert cache.reranks and cache.rerank == 50
    _, ids = cache.search(torch.from_numpy(queries[:2]), 3)
    assert cache.names(ids) == [[names[i] for i in row] for row in ids.tolist()]

    np.save(tmp_path / "bad.npy", np.full((4, 8), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        build_cache_from_features(tmp_path / "bad.npy", tmp_path / "bad", progress=False)


def test_compress_a_flat_index_file(tmp_path, small_set):
    base, queries, (true_sims, true_ids) = small_set
    write_flat_index(base, tmp_path / "knn.index")
    assert main(["--no-progress", "compress", str(tmp_path / "knn.index"), str(tmp_path / "small"),
                 "--kind", "ivf-pqfs", "--nlist", "32", "--nprobe", "8", "--rerank", "60"]) == 0
    meta = json.loads((tmp_path / "small" / "cache.json").read_text())
    assert meta["kind"] == "ivf-pqfs" and meta["rerank"] == 60 and meta["search"]["nprobe"] == 8
    assert meta["vectors"] == str((tmp_path / "knn.index").resolve())
    cache = VisualCache.load(tmp_path / "small")
    assert cache.reranks and cache.store.is_mapped  # exact vectors: the flat index, memory-mapped
    sims, ids = cache.search(torch.from_numpy(queries), 10)
    assert recall(ids.numpy(), true_ids) >= 0.95
    hit = ids.numpy() == true_ids
    assert np.abs(sims.numpy()[hit] - true_sims[hit]).max() <= 1e-5
    # a parameter that does not apply to the kind is refused
    with pytest.raises(SystemExit):
        main(["compress", str(tmp_path / "knn.index"), str(tmp_path / "x"), "--kind", "hnsw-sq8",
              "--nlist", "8"])


def test_compress_a_cache_folder_keeps_its_names_and_refuses_too_few_vectors(tmp_path, small_set, capsys):
    base, queries, (_, true_ids) = small_set
    names = [f"img_{i}.jpg" for i in range(len(base))]
    torch.save({"features": torch.from_numpy(base), "paths": names}, tmp_path / "f.pt")
    build_cache_from_features(tmp_path / "f.pt", tmp_path / "mine", progress=False)
    assert main(["--no-progress", "compress", str(tmp_path / "mine"), str(tmp_path / "small"), "--nlist", "32"]) == 0
    cache = VisualCache.load(tmp_path / "small")
    _, ids = cache.search(torch.from_numpy(queries), 10)
    assert recall(ids.numpy(), true_ids) >= 0.95
    assert cache.names(ids[:2]) == [[names[i] for i in row] for row in ids[:2].tolist()]  # the app shows them

    torch.save({"features": torch.from_numpy(base[:10]), "paths": names[:10]}, tmp_path / "few.pt")
    build_cache_from_features(tmp_path / "few.pt", tmp_path / "few", progress=False)
    capsys.readouterr()
    assert main(["--no-progress", "compress", str(tmp_path / "few"), str(tmp_path / "few_small")]) == 2
    assert ("ivf-pqfs needs at least 16 training vectors (one per centroid of its 4-bit codes), got 10; 10 "
            "vectors are better served by the flat or hnsw-flat kind") in capsys.readouterr().err
    assert main(["--no-progress", "compress", str(tmp_path / "mine"), str(tmp_path / "x"), "--kind", "ivf-flat",
                 "--nlist", "64", "--train-size", "50"]) == 2
    assert "needs at least 64 training vectors (k-means needs one per list, and nlist is 64), got 50 (train_size)" \
        in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# building from a folder of images with a tiny ImageBind


@pytest.fixture(scope="module")
def embedder(golden):
    from test_imagebind_golden import golden_config

    from imagebind_llm.checkpoint import load_imagebind
    from imagebind_llm.embedding import Embedder

    model = load_imagebind(golden / "imagebind" / "weights.pth", golden_config(golden, with_point=False),
                           with_point=False)
    return Embedder(model, batch_size=4)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(11):
        sub = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24 + i, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".hidden" / "skip.png")
    return root


def test_folder_listing(image_folder, tmp_path, caplog):
    files = [p.relative_to(image_folder).as_posix() for p in list_image_files(image_folder)]
    assert len(files) == 12 and files == sorted(files) and "a/broken.jpg" in files
    assert not any(".hidden" in f or f.endswith(".txt") for f in files)
    # Depth and thermal pictures are not images to ImageBind: left out, and said so.
    from PIL import Image

    for name in ("photo.png", "room_depth.png", "person_thermal.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    with caplog.at_level("WARNING", logger="imagebind_llm.cache_builder"):
        assert [p.name for p in list_image_files(tmp_path)] == ["photo.png"]
    assert "left out 2 picture file(s)" in caplog.text
    assert "person_thermal.png (thermal), room_depth.png (depth)" in caplog.text


def test_build_from_images_skips_bad_files(tmp_path, image_folder, embedder):
    report = build_cache(image_folder, embedder, tmp_path / "cache", chunk_size=5, progress=False)
    assert report.rows == 11
    assert [s["path"] for s in report.skipped] == ["a/broken.jpg"]
    assert "broken.jpg" in report.skipped[0]["error"] and "broken.jpg" in report.summary()
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 11 and manifest["skipped"] == report.skipped

    cache = VisualCache.load(tmp_path / "cache")
    assert len(cache) == 11 and cache.exact
    files = [f for f in list_image_files(image_folder) if f.name != "broken.jpg"]
    assert cache.paths == [f.relative_to(image_folder).as_posix() for f in files]
    direct = embedder.embed({"image": [str(f) for f in files]}).unit["image"]
    stored = torch.from_numpy(np.load(tmp_path / "cache" / "vectors.npy"))
    assert golden_err(stored, direct) <= 1e-5
    # each image finds itself first, with similarity 1, and is named
    sims, ids = cache.search(direct, 1)
    assert ids[:, 0].tolist() == list(range(11)) and torch.allclose(sims[:, 0], torch.ones(11), atol=1e-5)
    assert cache.names(ids[:2])[1] == [cache.paths[1]]


def test_interrupted_build_resumes_to_the_same_cache(tmp_path, image_folder, embedder):
    build_cache(image_folder, embedder, tmp_path / "whole", chunk_size=4, progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(info):
        if info["files_done"] >= 4:
            raise Stop

    with pytest.raises(Stop):
        build_cache(image_folder, embedder, tmp_path / "part", chunk_size=4, progress=False,
                    on_chunk=stop_after_first)
    manifest = json.loads((tmp_path / "part" / "manifest.json").read_text())
    # the first chunk held the broken file: 3 rows, 1 skipped
    assert not manifest["complete"] and manifest["rows"] == 3 and len(manifest["skipped"]) == 1
    assert not (tmp_path / "part" / "knn.index").exists()
    # a crash in the middle of the next chunk: rows and names written, the manifest not updated
    with open(tmp_path / "part" / "vectors.npy", "ab") as f:
        f.write(np.ones((2, 32), np.float32).tobytes())
    with open(tmp_path / "part" / "paths.jsonl", "a") as f:
        f.write('"half/written.png"\n')

    seen = []
    report = build_cache(image_folder, embedder, tmp_path / "part", chunk_size=4, progress=False,
                         on_chunk=seen.append)
    assert report.resumed_from == 3 and report.rows == 11 and seen[0]["files_done"] == 8
    for name in ("vectors.npy", "paths.jsonl", "knn.index"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert json.loads((tmp_path / "part" / "manifest.json").read_text())["skipped"] == report.skipped

    # resuming a finished build with nothing new does not embed anything again
    again = build_cache(image_folder, embedder, tmp_path / "part", chunk_size=4, progress=False,
                        on_chunk=lambda info: pytest.fail("embedded again"))
    assert again.rows == 11


def test_command_line_from_images_and_features(tmp_path, golden, image_folder, capsys):
    args = ["--no-progress", "from-images", str(image_folder), str(tmp_path / "cli"), "--checkpoint",
            str(golden / "imagebind" / "weights.pth"),
            "--imagebind-config", str(golden / "imagebind" / "config.json"),
            "--chunk-size", "6", "--kind", "hnsw-flat"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "11 vectors" in printed and "a/broken.jpg" in printed
    cache = VisualCache.load(tmp_path / "cli")
    assert len(cache) == 11 and cache.exact and len(cache.paths) == 11

    np.save(tmp_path / "f.npy", np.load(tmp_path / "cli" / "vectors.npy"))
    assert main(["--no-progress", "from-features", str(tmp_path / "f.npy"), str(tmp_path / "feat")]) == 0
    again = VisualCache.load(tmp_path / "feat")
    q = torch.from_numpy(np.load(tmp_path / "f.npy")[:3])
    assert torch.equal(again.search(q, 4)[1], cache.search(q, 4)[1])
    assert main(["from-features", str(tmp_path / "missing.npy"), str(tmp_path / "x")]) == 2
    assert "missing.npy" in capsys.readouterr().err


def test_loading_a_flat_index_maps_it(tmp_path):
    """The official 13.3 GB knn.index must not be copied into memory when the cache is loaded."""
    import gc

    def anon_mib():
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024
        except (OSError, StopIteration):
            pytest.skip("no /proc/self/status")

    base = np.random.default_rng(0).standard_normal((32768, 1024), dtype=np.float32)  # 128 MiB
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    write_flat_index(base, tmp_path / "knn.index")
    query = torch.from_numpy(base[[5, 77]] + 0.01)
    del base
    gc.collect()
    before = anon_mib()
    cache = VisualCache.load(tmp_path / "knn.index")
    _, ids = cache.search(query, 3)
    cache.blend(query)
    assert ids[:, 0].tolist() == [5, 77]
    assert anon_mib() - before < 48  # a copy would add 128 MiB


def test_bench_runs_on_a_tiny_set(tmp_path, capsys):
    from conftest import ROOT, load_script

    bench = load_script(ROOT / "bench" / "cache.py", "bench_cache")
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--n", "3000", "--dim", "32", "--kinds", "flat,ivf-pqfs,hnsw-sq8",
                              "--queries", "20", "--threads", "1", "--workdir", str(tmp_path),
                              "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)  # the bench sets the threads (FAISS's: see one_faiss_thread)
    printed = capsys.readouterr().out
    assert [r["kind"] for r in results["rows"]] == ["flat", "ivf-pqfs", "hnsw-sq8"]
    assert results["rows"][0]["recall_at_10"] == 1.0
    assert all(r["recall_at_10"] >= 0.8 and r["sim_err"] < 1e-5 for r in results["rows"])
    assert "recall@10" in printed
    assert json.loads((tmp_path / "r.json").read_text())["datasets"][0]["n"] == 3000


def test_broken_index_and_vector_files_are_named(tmp_path):
    """A flat index cut short (an interrupted copy of the 13 GB knn.index), a file that is no
    FAISS index, another index type where flat vectors are needed, and bad vector stores each
    get a message that says what is wrong, never a crash in FAISS."""
    import faiss

    x, _ = clustered(500, 16)
    write_flat_index(x, tmp_path / "knn.index")
    whole = (tmp_path / "knn.index").read_bytes()
    (tmp_path / "cut.index").write_bytes(whole[: len(whole) - 100])
    for read in (VisualCache.load, open_flat_index_vectors, VectorStore.open):
        with pytest.raises(CheckpointError, match=rf"cut.index: the flat index is truncated \({len(whole) - 100} "
                                                  rf"bytes for 500 x 16 vectors, which need {len(whole)}\)"):
            read(tmp_path / "cut.index")
    (tmp_path / "notes.index").write_text("not an index\n")
    with pytest.raises(CheckpointError, match="notes.index: not a FAISS index"):
        VisualCache.load(tmp_path / "notes.index")
    with pytest.raises(CheckpointError, match="visual cache index not found"):
        VisualCache.load(tmp_path / "missing.index")

    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    faiss.write_index(ivf, str(tmp_path / "ivf.index"))
    assert read_flat_index_layout(tmp_path / "ivf.index") is None
    with pytest.raises(CheckpointError, match=r"ivf.index: not a flat FAISS index"):
        open_flat_index_vectors(tmp_path / "ivf.index")
    assert len(VisualCache.load(tmp_path / "ivf.index")) == 500  # still a cache, searched by FAISS

    np.save(tmp_path / "f64.npy", x.astype(np.float64))
    with pytest.raises(CheckpointError, match="f64.npy: vectors must be float32, found float64"):
        VectorStore.open(tmp_path / "f64.npy")
    with pytest.raises(CheckpointError, match="visual cache vectors not found"):
        VectorStore.open(tmp_path / "missing.npy")
    with pytest.raises(CheckpointError, match=r"expected \(N, D\) vectors, got shape \(16,\)"):
        VectorStore(x[0])
    with pytest.raises(CheckpointError, match="unsupported type list"):
        VectorStore([[1.0, 2.0]])


@pytest.mark.parametrize("settings, match", [
    ({"size": 0}, "cache size: must be a whole number of at least 1, got 0"),
    ({"size": 2.5}, "cache size: must be a whole number of at least 1, got 2.5"),
    ({"weight": 1.5}, r"cache weight: must be in \[0, 1\], got 1.5"),
    ({"weight": -0.1}, r"cache weight: must be in \[0, 1\], got -0.1"),
    ({"weight": float("nan")}, r"cache weight: must be in \[0, 1\], got nan"),
    ({"temperature": -1.0}, "cache temperature: must be a finite number >= 0, got -1.0"),
    # NaN or infinity passed "< 0" and turned the blended feature into NaN: garbage answers
    ({"temperature": float("nan")}, "cache temperature: must be a finite number >= 0, got nan"),
    ({"temperature": float("inf")}, "cache temperature: must be a finite number >= 0, got inf"),
])
def test_cache_settings_out_of_range_are_named(settings, match):
    with pytest.raises(InputError, match=match):  # an InputError is a ValueError too
        CacheConfig(**settings)
