"""Point-cloud preprocessing: golden parity (official mode), corrected-mode guarantees, every
format from files generated here, and a clear InputError for every kind of bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import numpy as np
import pytest
import torch
import trimesh

from imagebind_llm.errors import InputError
from imagebind_llm.preprocess.point import (
    CORRECTED_MIN_POINTS,
    DEFAULT_NUM_POINTS,
    NORMALISED_TOL,
    OFFICIAL_MIN_POINTS,
    PointOptions,
    _lzf_decompress,
    farthest_point_indices,
    load_point_cloud,
    load_point_cloud_batch,
    normalize_point_cloud,
    point_cloud_preview,
    resample_indices,
)

OFFICIAL = PointOptions(mode="official")
N_SMALL = 256  # num_points used by most tests, to keep them fast


def small(**kw) -> PointOptions:
    return PointOptions(num_points=kw.pop("num_points", N_SMALL), **kw)


def assert_corrected(t: torch.Tensor, n: int) -> None:
    assert t.dtype == torch.float32
    assert tuple(t.shape) == (n, 3)
    p = t.double()
    assert float(p.mean(0).norm()) <= 1e-5
    assert abs(float(p.norm(dim=1).max()) - 1.0) <= 1e-5


@pytest.fixture
def cloud() -> np.ndarray:
    """500 float32 points, not centred, not unit scale."""
    rng = np.random.default_rng(7)
    return (rng.normal(size=(500, 3)) * [2.0, 1.0, 0.5] + [3.0, -1.0, 0.25]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# writers for the formats (all written here, nothing downloaded)
# ---------------------------------------------------------------------------------------------


def fmt(v: float) -> str:
    return repr(float(v))  # shortest round-trip text of the float64 value


def write_xyz(path, pts, sep=" ", header=None, extra_cols=0):
    lines = [] if header is None else [header]
    for p in pts:
        vals = [fmt(x) for x in p] + ["0.5"] * extra_cols
        lines.append(sep.join(vals))
    path.write_text("\n".join(lines) + "\n")


def pcd_header(n: int, data: str, fields=("x", "y", "z"), sizes=None, types=None) -> bytes:
    sizes = sizes or [4] * len(fields)
    types = types or ["F"] * len(fields)
    return (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(map(str, sizes))}\nTYPE {' '.join(types)}\n"
        f"COUNT {' '.join('1' for _ in fields)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\nDATA {data}\n"
    ).encode()


def lzf_literal(data: bytes) -> bytes:
    """A valid LZF stream made of literal runs only (no compression, but decodable)."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i : i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def write_pcd(path, pts: np.ndarray, data: str) -> None:
    """Fields x y z intensity (intensity is an extra column to ignore)."""
    n = len(pts)
    fields = ("x", "y", "z", "intensity")
    inten = np.linspace(0, 1, n, dtype=np.float32)
    head = pcd_header(n, data, fields)
    if data == "ascii":
        rows = zip(pts, inten, strict=True)
        body = "".join(f"{fmt(a)} {fmt(b)} {fmt(c)} {fmt(i)}\n" for (a, b, c), i in rows).encode()
    elif data == "binary":
        rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "<f4")])
        rec["x"], rec["y"], rec["z"], rec["i"] = pts[:, 0], pts[:, 1], pts[:, 2], inten
        body = rec.tobytes()
    else:  # binary_compressed: field-major, LZF
        raw = b"".join(
            np.ascontiguousarray(c, dtype="<f4").tobytes() for c in (pts[:, 0], pts[:, 1], pts[:, 2], inten)
        )
        comp = lzf_literal(raw)
        body = np.array([len(comp), len(raw)], dtype="<u4").tobytes() + comp
    path.write_bytes(head + body)


def write_ply_ascii(path, pts, faces=None):
    lines = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(pts)}",
        "property double x",
        "property double y",
        "property double z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    ]
    if faces is not None:
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    lines += [f"{fmt(a)} {fmt(b)} {fmt(c)} 10 20 30" for a, b, c in pts]
    if faces is not None:
        lines += [f"3 {a} {b} {c}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def write_obj(path, verts, faces=None, quads=None, header="# test"):
    lines = [header] + [f"v {fmt(a)} {fmt(b)} {fmt(c)}" for a, b, c in verts]
    lines += ["vn 0 0 1", "vt 0 0", "g part"]
    for f in faces if faces is not None else []:
        lines.append("f " + " ".join(f"{i + 1}/1/1" for i in f))
    for q in quads if quads is not None else []:
        lines.append("f " + " ".join(str(i + 1) for i in q))
    path.write_text("\n".join(lines) + "\n")


def unit_box() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(1.0, 1.0, 1.0))


def on_box_surface(p: np.ndarray, centre=(0.0, 0.0, 0.0), half=0.5) -> bool:
    d = np.abs(p.astype(np.float64) - np.asarray(centre))
    return bool(np.all(d <= half + 1e-6) and np.allclose(d.max(axis=1), half, atol=1e-6))


# ---------------------------------------------------------------------------------------------
# golden parity
# ---------------------------------------------------------------------------------------------


def point_entries(manifest):
    entries = [e for e in manifest if e.get("modality") == "point"]
    assert entries, "the golden manifest has no point entries"
    return entries


def test_golden_official_exact(golden, preprocess_manifest):
    for entry in point_entries(preprocess_manifest):
        path = golden / "preprocess" / entry["file"]
        expected = torch.load(
            golden / "preprocess" / entry["expected"], map_location="cpu", weights_only=True
        )
        assert str(expected.dtype).replace("torch.", "") == entry["dtype"]
        assert list(expected.shape) == entry["shape"]
        batch = load_point_cloud_batch([path], OFFICIAL)
        assert batch.dtype == expected.dtype, entry["file"]
        assert torch.equal(batch, expected), entry["file"]
        single = load_point_cloud(path, OFFICIAL)
        assert single.dtype == expected.dtype and torch.equal(single, expected[0]), entry["file"]
        # same result from bytes (with a name) and from a file object
        assert torch.equal(load_point_cloud(path.read_bytes(), OFFICIAL, name=path.name), expected[0])
        with open(path, "rb") as f:
            assert torch.equal(load_point_cloud(f, OFFICIAL), expected[0])


def test_golden_corrected(golden, preprocess_manifest):
    for entry in point_entries(preprocess_manifest):
        path = golden / "preprocess" / entry["file"]
        expected = torch.load(
            golden / "preprocess" / entry["expected"], map_location="cpu", weights_only=True
        )[0]
        out = load_point_cloud(path)
        assert_corrected(out, DEFAULT_NUM_POINTS)
        assert torch.equal(out, load_point_cloud(path)), "not deterministic"
        e = expected.double()
        already = (
            expected.shape[0] == DEFAULT_NUM_POINTS
            and float(e.mean(0).norm()) <= NORMALISED_TOL
            and abs(float(e.norm(dim=1).max()) - 1) <= NORMALISED_TOL
        )
        if already:  # nothing to change but the dtype
            assert torch.equal(out, expected.to(torch.float32)), entry["file"]


# ---------------------------------------------------------------------------------------------
# corrected-mode guarantees
# ---------------------------------------------------------------------------------------------


def test_already_normalised_cloud_is_unchanged_bit_exact(cloud):
    norm = normalize_point_cloud(cloud[:N_SMALL])
    assert_corrected(norm, N_SMALL)
    out = load_point_cloud(norm, small())
    assert torch.equal(out, norm)
    assert out.data_ptr() != norm.data_ptr()  # a copy, never the caller's storage
    assert torch.equal(load_point_cloud(out, small()), out)  # idempotent


def test_normalize_point_cloud_values(cloud):
    p = cloud.astype(np.float64)
    centred = p - p.mean(0)
    expected = (centred / np.linalg.norm(centred, axis=1).max()).astype(np.float32)
    out = normalize_point_cloud(torch.from_numpy(cloud))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(expected))
    with pytest.raises(InputError, match="identical"):
        normalize_point_cloud(np.ones((10, 3)))


def test_float64_and_int_inputs(cloud):
    out = load_point_cloud(cloud.astype(np.float64)[:N_SMALL], small())
    assert_corrected(out, N_SMALL)
    ints = (cloud[:100] * 100).astype(np.int32)
    assert load_point_cloud(ints, OFFICIAL).dtype == torch.int32  # official: as stored
    assert_corrected(load_point_cloud(ints, small()), N_SMALL)
    t64 = torch.from_numpy(cloud.astype(np.float64))
    off = load_point_cloud(t64, OFFICIAL)
    assert off.dtype == torch.float64 and torch.equal(off, t64)


def test_downsample_fps_and_random(cloud):
    opts = small(num_points=100, normalise=False)
    fps = load_point_cloud(cloud, opts)
    assert fps.shape == (100, 3) and fps.dtype == torch.float32
    rows = {tuple(r) for r in cloud.tolist()}
    assert all(tuple(r) in rows for r in fps.tolist())  # original points, unchanged
    assert torch.equal(fps, load_point_cloud(cloud, opts))
    assert torch.equal(fps[0], torch.from_numpy(cloud[0]))  # FPS starts at point 0, order kept
    rnd = load_point_cloud(cloud, small(num_points=100, normalise=False, downsample="random"))
    assert all(tuple(r) in rows for r in rnd.tolist())
    assert not torch.equal(fps, rnd)
    assert_corrected(load_point_cloud(cloud, small(num_points=100)), 100)


def test_fps_properties():
    line = np.stack([np.arange(11.0), np.zeros(11), np.zeros(11)], axis=1)
    assert farthest_point_indices(line, 3).tolist() == [0, 10, 5]
    dup = np.repeat(np.eye(3), 4, axis=0)  # 3 distinct positions, 4 copies each
    idx = farthest_point_indices(dup, 6)
    assert len(set(idx.tolist())) == 6
    assert len({tuple(dup[i]) for i in idx[:3]}) == 3


def test_fps_pool_large_cloud_fast():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(60_000, 3))
    out = load_point_cloud(big, PointOptions(num_points=2048))
    assert_corrected(out, 2048)
    idx = resample_indices(big, 2048, fps_pool=4)
    assert len(np.unique(idx)) == 2048 and np.all(np.diff(idx) > 0)


def test_upsample_repeats_every_point_evenly(cloud):
    src = cloud[:100]
    out = load_point_cloud(src, small(num_points=256, normalise=False))
    assert out.shape == (256, 3)
    assert torch.equal(out[:100], torch.from_numpy(src)) and torch.equal(out[100:200], torch.from_numpy(src))
    _, counts = np.unique(out.numpy(), axis=0, return_counts=True)
    assert set(counts.tolist()) <= {2, 3}
    assert_corrected(load_point_cloud(src, small(num_points=256)), 256)
    with pytest.raises(InputError, match="allow_upsample"):
        load_point_cloud(src, small(num_points=256, allow_upsample=False), name="few.npy")


def test_extra_columns_are_ignored(cloud):
    six = np.concatenate([cloud, np.full_like(cloud, 0.5)], axis=1)
    assert torch.equal(load_point_cloud(six, OFFICIAL), torch.from_numpy(cloud))
    assert torch.equal(load_point_cloud(six, small()), load_point_cloud(cloud, small()))


def test_non_finite_points(cloud, tmp_path):
    bad = cloud.copy()
    bad[3, 1] = np.nan
    bad[9, 0] = np.inf
    path = tmp_path / "holes.npy"
    np.save(path, bad)
    with pytest.raises(InputError, match="holes.npy.*2 of 500 points have NaN"):
        load_point_cloud(path, small())
    with pytest.raises(InputError, match="holes.npy"):
        load_point_cloud(path, OFFICIAL)
    kept = load_point_cloud(path, small(normalise=False, num_points=498, drop_non_finite=True))
    assert torch.equal(kept, torch.from_numpy(np.delete(cloud, [3, 9], axis=0)))


def test_options_validation():
    for kw in (
        {"num_points": 0},
        {"num_points": True},
        {"num_points": 8.0},
        {"mode": "fast"},
        {"downsample": "grid"},
        {"mesh_sampling": "x"},
        {"seed": -1},
        {"fps_pool": 0},
        {"max_points": 0},
        {"min_points": 0},
        {"normalise": 1},
        {"min_points": 10, "max_points": 5},
    ):
        with pytest.raises((ValueError, TypeError)):
            PointOptions(**kw)
    opts = PointOptions()
    assert opts.mode == "corrected" and opts.num_points == 8192
    assert opts.effective_min_points == CORRECTED_MIN_POINTS
    assert OFFICIAL.effective_min_points == OFFICIAL_MIN_POINTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_points = 3
    with pytest.raises(InputError, match="has only 1 point, at least"):
        load_point_cloud(np.ones((1, 3), np.float32))


def test_preview(cloud):
    prev = point_cloud_preview(torch.from_numpy(cloud), max_points=100)
    assert prev.shape == (100, 3) and prev.dtype == np.float32
    assert np.array_equal(prev, point_cloud_preview(cloud, max_points=100))
    assert np.array_equal(point_cloud_preview(cloud[None], max_points=1000), cloud)
    with pytest.raises(InputError):
        point_cloud_preview(np.zeros((5, 2)))


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------


def check_cloud_file(path, cloud, *, official_dtype=torch.float64):
    """Official: exactly the values (cast to float64 where the official loader does; formats
    it cannot read are refused); corrected: the same cloud normalised."""
    if path.suffix in (".txt", ".csv"):
        with pytest.raises(InputError, match=f"{path.name}.*official loader cannot read"):
            load_point_cloud(path, OFFICIAL)
    else:
        off = load_point_cloud(path, OFFICIAL)
        assert off.dtype == official_dtype, path.name
        assert torch.equal(off, torch.from_numpy(cloud).to(official_dtype)), path.name
    cor = load_point_cloud(path, small(num_points=len(cloud)))
    assert_corrected(cor, len(cloud))
    assert torch.allclose(cor, normalize_point_cloud(cloud), atol=1e-6)


@pytest.mark.parametrize(
    "suffix,sep,header,extra",
    [
        (".xyz", " ", None, 0),
        (".xyz", "\t", "// x y z nx ny nz", 3),
        (".pts", " ", "500", 4),
        (".txt", ",", "x,y,z,r,g,b", 3),
        (".txt", ", ", "# comment", 0),
        (".csv", ",", "X,Y,Z", 0),
    ],
)
def test_text_formats(tmp_path, cloud, suffix, sep, header, extra):
    path = tmp_path / f"cloud{suffix}"
    write_xyz(path, cloud, sep=sep, header=header, extra_cols=extra)
    check_cloud_file(path, cloud)


def test_text_official_refuses_txt(tmp_path, cloud):
    path = tmp_path / "c.txt"
    write_xyz(path, cloud)
    with pytest.raises(InputError, match="c.txt.*official loader cannot read .txt"):
        load_point_cloud(path, OFFICIAL)


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_pcd(tmp_path, cloud, kind):
    path = tmp_path / f"cloud_{kind}.pcd"
    write_pcd(path, cloud, kind)
    check_cloud_file(path, cloud)


def test_lzf_back_references():
    stream = b"\x02abc" + bytes([(4 << 5) | 0, 2])  # "abc" + copy 6 bytes from 3 back (overlapping)
    assert _lzf_decompress(stream, 9) == b"abcabcabc"
    long = b"\x00z" + bytes([7 << 5, 20 - 9, 0])  # "z" + copy 20 bytes from 1 back (extended length)
    assert _lzf_decompress(long, 21) == b"z" * 21
    with pytest.raises(ValueError):
        _lzf_decompress(b"\x05ab", 6)


def test_ply_cloud_ascii_and_binary(tmp_path, cloud):
    a = tmp_path / "a.ply"
    write_ply_ascii(a, cloud)
    check_cloud_file(a, cloud)
    b = tmp_path / "b.ply"
    b.write_bytes(trimesh.PointCloud(cloud).export(file_type="ply"))
    check_cloud_file(b, cloud)


def test_obj_cloud(tmp_path, cloud):
    path = tmp_path / "c.obj"
    write_obj(path, cloud)
    check_cloud_file(path, cloud)


def test_npy_and_pt(tmp_path, cloud):
    n = tmp_path / "c.npy"
    np.save(n, cloud)
    check_cloud_file(n, cloud, official_dtype=torch.float32)
    n64 = tmp_path / "c64.npy"
    np.save(n64, cloud.astype(np.float64))
    check_cloud_file(n64, cloud)
    big_endian = tmp_path / "be.npy"
    np.save(big_endian, cloud.astype(">f4"))
    check_cloud_file(big_endian, cloud, official_dtype=torch.float32)
    for suffix in (".pt", ".pth"):
        p = tmp_path / f"c{suffix}"
        torch.save(torch.from_numpy(cloud), p)
        check_cloud_file(p, cloud, official_dtype=torch.float32)


def test_extension_not_substring(tmp_path, cloud):
    folder = tmp_path / "dir.pt"
    folder.mkdir()
    path = folder / "cloud.npy"
    np.save(path, cloud)
    assert torch.equal(load_point_cloud(path, OFFICIAL), torch.from_numpy(cloud))
    tricky = tmp_path / "model.obj.NPY"
    np.save(tmp_path / "x.npy", cloud)
    tricky.write_bytes((tmp_path / "x.npy").read_bytes())
    assert torch.equal(load_point_cloud(tricky, OFFICIAL), torch.from_numpy(cloud))


def test_sources_bytes_and_file_objects(tmp_path, cloud):
    path = tmp_path / "c.xyz"
    write_xyz(path, cloud)
    ref = load_point_cloud(path, small())
    assert torch.equal(load_point_cloud(path.read_bytes(), small(), name="upload.xyz"), ref)
    assert torch.equal(load_point_cloud(str(path), small()), ref)
    with open(path, "rb") as f:
        assert torch.equal(load_point_cloud(f, small()), ref)
    assert torch.equal(load_point_cloud(io.BytesIO(path.read_bytes()), small(), name="x.xyz"), ref)
    with pytest.raises(InputError, match="<bytes>.*no file extension"):
        load_point_cloud(path.read_bytes(), small())


# ---- meshes ----


def mesh_files(tmp_path) -> dict:
    box = unit_box()
    files = {}
    p = tmp_path / "box_tri.obj"
    write_obj(p, box.vertices, faces=box.faces)
    files["obj"] = p
    # quads (polygon faces are split into triangles)
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    p = tmp_path / "box_quad.obj"
    write_obj(p, v, quads=quads)
    files["obj_quads"] = p
    for ft, name in (
        ("ply", "box.ply"),
        ("stl", "box.stl"),
        ("stl_ascii", "box_ascii.stl"),
        ("off", "box.off"),
    ):
        data = box.export(file_type=ft)
        p = tmp_path / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        files[ft] = p
    p = tmp_path / "box_ascii.ply"
    write_ply_ascii(p, box.vertices, faces=box.faces)
    files["ply_ascii"] = p
    return files


def test_meshes_are_sampled_on_the_surface(tmp_path):
    for kind, path in mesh_files(tmp_path).items():
        raw = load_point_cloud(path, small(normalise=False))
        assert raw.shape == (N_SMALL, 3) and raw.dtype == torch.float32, kind
        assert on_box_surface(raw.numpy()), kind
        again = load_point_cloud(path, small(normalise=False))
        assert torch.equal(raw, again), f"{kind}: sampling is not deterministic"
        other = load_point_cloud(path, small(normalise=False, seed=1))
        assert not torch.equal(raw, other), kind
        assert_corrected(load_point_cloud(path, small()), N_SMALL)


def test_mesh_vertices_option_and_official(tmp_path):
    files = mesh_files(tmp_path)
    box = unit_box()
    verts = load_point_cloud(files["obj"], small(mesh_sampling="vertices", num_points=8, normalise=False))
    assert torch.equal(verts, torch.from_numpy(box.vertices).float())
    off = load_point_cloud(files["ply"], PointOptions(mode="official", min_points=8))
    assert off.dtype == torch.float64 and torch.equal(
        off, torch.from_numpy(np.asarray(box.vertices, np.float32)).double()
    )
    for kind in ("stl", "off"):
        with pytest.raises(InputError, match="official loader cannot read"):
            load_point_cloud(files[kind], OFFICIAL)


def test_obj_cloud_with_stray_face_is_a_cloud(tmp_path, cloud, caplog):
    path = tmp_path / "stray.obj"
    write_obj(path, cloud, faces=[(0, 1, 2)])
    with caplog.at_level(logging.INFO):
        auto = load_point_cloud(path, small(num_points=len(cloud)))
    assert "as a point cloud" in caplog.text
    assert torch.equal(auto, load_point_cloud(path, small(num_points=len(cloud), mesh_sampling="vertices")))
    assert torch.allclose(auto, normalize_point_cloud(cloud), atol=1e-6)
    surface = load_point_cloud(path, small(mesh_sampling="surface", normalise=False))
    tri = cloud[:3].astype(np.float64)
    normal = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    assert np.allclose((surface.numpy().astype(np.float64) - tri[0]) @ normal, 0, atol=1e-4)


def test_glb_and_gltf_scenes(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(unit_box(), node_name="a")
    scene.add_geometry(
        unit_box(), node_name="b", transform=trimesh.transformations.translation_matrix([5, 0, 0])
    )
    glb = tmp_path / "scene.glb"
    glb.write_bytes(scene.export(file_type="glb"))
    pts = load_point_cloud(glb, small(normalise=False)).numpy()
    left, right = pts[pts[:, 0] < 2.5], pts[pts[:, 0] >= 2.5]
    assert len(left) > 50 and len(right) > 50  # both parts, in world coordinates
    assert on_box_surface(left) and on_box_surface(right, centre=(5, 0, 0))
    assert torch.equal(
        load_point_cloud(glb, small()), load_point_cloud(glb.read_bytes(), small(), name="s.glb")
    )
    files = trimesh.exchange.gltf.export_gltf(scene, embed_buffers=True)
    ((_, data),) = files.items()
    gltf = tmp_path / "scene.gltf"
    gltf.write_bytes(data)
    assert_corrected(load_point_cloud(gltf, small()), N_SMALL)
    assert_corrected(load_point_cloud(data, small(), name="upload.gltf"), N_SMALL)


def test_trimesh_objects_in_memory(cloud):
    box = unit_box()
    assert on_box_surface(load_point_cloud(box, small(normalise=False)).numpy())
    pc = load_point_cloud(trimesh.PointCloud(cloud), small(num_points=len(cloud)))
    assert torch.allclose(pc, normalize_point_cloud(cloud), atol=1e-6)
    assert_corrected(load_point_cloud(trimesh.Scene([box]), small()), N_SMALL)
    off = load_point_cloud(trimesh.PointCloud(cloud), PointOptions(mode="official"))
    assert off.dtype == torch.float64


def test_batch(tmp_path, cloud):
    a, b = tmp_path / "a.npy", tmp_path / "b.xyz"
    np.save(a, cloud)
    write_xyz(b, cloud[:300])
    batch = load_point_cloud_batch([a, b], small())
    assert batch.shape == (2, N_SMALL, 3) and batch.dtype == torch.float32
    with pytest.raises(InputError, match="different numbers of points.*500, 300"):
        load_point_cloud_batch([a, b], OFFICIAL)
    with pytest.raises(InputError, match="empty"):
        load_point_cloud_batch([], small())


# ---------------------------------------------------------------------------------------------
# bad input: InputError naming the file
# ---------------------------------------------------------------------------------------------


class NotATensor:  # pickled by torch.save, refused by weights_only loading
    def __init__(self):
        self.points = [1, 2, 3]


def _bad_files(tmp_path, cloud):
    """(file name, writer, message fragment, options)."""
    degenerate = "v 0 0 0\nv 1 1 1\nv 2 2 2\nv 3 3 3\nf 1 2 3\nf 2 3 4\n"
    zero_stl = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0]], faces=[[0, 1, 2]], process=False)
    pcd_trunc = pcd_header(500, "binary") + cloud.tobytes()[:100]
    pcd_no_z = pcd_header(2, "ascii", fields=("x", "y")) + b"1 2\n3 4\n"
    return [
        ("cloud.abc", lambda p: p.write_bytes(b"1 2 3\n"), "unsupported file type '.abc'", None),
        ("noext", lambda p: p.write_bytes(b"1 2 3\n"), "no file extension", None),
        ("empty.npy", lambda p: p.write_bytes(b""), "empty", None),
        (
            "text_as.npy",
            lambda p: p.write_text("ply\nformat ascii 1.0\n"),
            "not a valid .npy.*looks like .ply",
            None,
        ),
        (
            "garbage.pt",
            lambda p: p.write_bytes(b"not a torch file at all"),
            "could not be read as a torch file",
            None,
        ),
        (
            "dict.pt",
            lambda p: torch.save({"points": torch.zeros(100, 3)}, p),
            "contains a dict, not a tensor",
            None,
        ),
        ("object.pt", lambda p: torch.save(NotATensor(), p), "not a plain tensor file", None),
        (
            "objects.npy",
            lambda p: np.save(p, np.array([{}, {}], dtype=object), allow_pickle=True),
            "holds Python objects",
            None,
        ),
        ("archive.npy", lambda p: np.savez(open(p, "wb"), a=cloud), ".npz archive", None),
        ("broken.npy", lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), "not a valid .npy", None),
        ("strings.npy", lambda p: np.save(p, np.array([["a", "b", "c"]] * 40)), "not real numbers", None),
        ("flat.npy", lambda p: np.save(p, cloud[:, :2]), r"shape \(500, 2\)", None),
        ("transposed.npy", lambda p: np.save(p, cloud.T), "transposed", None),
        ("batched.pt", lambda p: torch.save(torch.from_numpy(cloud)[None], p), "batch of one", None),
        ("few.npy", lambda p: np.save(p, cloud[: OFFICIAL_MIN_POINTS - 1]), "at least 32", OFFICIAL),
        ("three.npy", lambda p: np.save(p, cloud[:3]), f"at least {CORRECTED_MIN_POINTS}", small()),
        ("same.npy", lambda p: np.save(p, np.ones((50, 3), np.float32)), "identical", small()),
        ("many.npy", lambda p: np.save(p, cloud), "more than the limit of 100", small(max_points=100)),
        ("nan.xyz", lambda p: p.write_text("1 2 3\nnan 1 1\n" + "1 1 2\n" * 10), "NaN", small()),
        ("badline.xyz", lambda p: p.write_text("1 2 3\n4 5 6\n7 eight 9\n"), "line 3 is not a point", None),
        ("twocols.xyz", lambda p: p.write_text("1 2\n3 4\n"), "line 1 is not a point", None),
        ("header_only.txt", lambda p: p.write_text("x y z\n"), "contains no points", None),
        ("binary.xyz", lambda p: p.write_bytes(b"\x00\x01\x02" * 20), "binary file", None),
        ("trunc.pcd", lambda p: p.write_bytes(pcd_trunc), "truncated", None),
        ("noz.pcd", lambda p: p.write_bytes(pcd_no_z), "has no z field", None),
        ("nodata.pcd", lambda p: p.write_text("VERSION 0.7\nFIELDS x y z\n"), "no DATA line", None),
        ("noverts.obj", lambda p: p.write_text("# nothing\nvn 0 0 1\n"), "contains no vertices", None),
        ("badvert.obj", lambda p: p.write_text("v 1 2\n"), "line 1: a vertex needs three numbers", None),
        (
            "badface.obj",
            lambda p: p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n"),
            "refers to vertex 9",
            small(),
        ),
        ("flat.obj", lambda p: p.write_text(degenerate), "zero area", small(mesh_sampling="surface")),
        ("flat.stl", lambda p: p.write_bytes(zero_stl.export(file_type="stl")), "zero area", small()),
        (
            "empty_solid.stl",
            lambda p: p.write_text("solid x\nendsolid x\n"),
            "no mesh and no points",
            small(),
        ),
        (
            "garbage.ply",
            lambda p: p.write_bytes(b"hello world\n" * 4),
            "could not be read as a .ply",
            small(),
        ),
        (
            "text.ply",  # trimesh fails with "list index out of range"
            lambda p: p.write_bytes(b"this is not a ply\n1 2 3\n"),
            r"could not be read as a .ply file \(its header or data is malformed\)",
            small(),
        ),
        (
            "garbage.glb",
            lambda p: p.write_bytes(b"hello world\n" * 4),
            "could not be read as a .glb",
            small(),
        ),
        (
            "mesh.stl",
            lambda p: p.write_bytes(unit_box().export(file_type="stl")),
            "official loader cannot read",
            OFFICIAL,
        ),
    ]


def test_bad_inputs_raise_input_error_naming_the_file(tmp_path, cloud):
    for name, write, fragment, opts in _bad_files(tmp_path, cloud):
        path = tmp_path / name
        write(path)
        with pytest.raises(InputError, match=fragment) as info:
            load_point_cloud(path, opts)
        assert str(info.value).startswith(f"{name}: "), str(info.value)
        assert "Accepted:" in str(info.value)


def test_oversize_and_missing_files(tmp_path, cloud):
    path = tmp_path / "big.npy"
    np.save(path, cloud)
    with pytest.raises(InputError, match="big.npy.*too large"):
        load_point_cloud(path, max_bytes=100)
    with pytest.raises(InputError, match="missing.npy.*not found"):
        load_point_cloud(tmp_path / "missing.npy")
    with pytest.raises(InputError, match="unsupported input type"):
        load_point_cloud([[0, 0, 0]] * 10)


def test_bad_arrays_are_named(cloud):
    with pytest.raises(InputError, match="<array>.*shape"):
        load_point_cloud(cloud[:, :2])
    with pytest.raises(InputError, match="<array>.*transpose"):
        load_point_cloud(cloud[:10].T.copy())
    with pytest.raises(InputError, match="my cloud.*NaN"):
        load_point_cloud(np.full((10, 3), np.nan), name="my cloud")
    with pytest.raises(InputError, match="<tensor>.*not real numbers"):
        load_point_cloud(torch.ones(10, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="<trimesh.Trimesh>.*zero area"):
        flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
        load_point_cloud(flat, small())


def test_manifest_point_files_have_supported_suffixes(golden, preprocess_manifest):
    # guards the golden loop above: every point file must be read by real extension
    for entry in point_entries(preprocess_manifest):
        suffix = (golden / "preprocess" / entry["file"]).suffix.lower()
        assert suffix in {".pt", ".pth", ".npy", ".obj", ".ply", ".pts", ".pcd", ".xyz"}
    json.dumps(preprocess_manifest)  # manifest stays plain JSON
