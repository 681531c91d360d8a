"""Depth, thermal and IMU loaders: round trips from generated files, values, bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from imagebind_llm.errors import InputError
from imagebind_llm.preprocess.depth import (
    DepthOptions,
    depth_to_normalized_disparity,
    load_depth,
    load_depth_batch,
)
from imagebind_llm.preprocess.imu import IMUOptions, fit_length, load_imu, load_imu_batch
from imagebind_llm.preprocess.thermal import ThermalOptions, load_thermal, load_thermal_batch


def _save_png(path, arr):
    Image.fromarray(arr).save(path, "PNG")
    return path


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _raises(fn, source, match, **kw):
    with pytest.raises(InputError) as info:
        fn(source, **kw)
    assert match in str(info.value), str(info.value)
    return info.value


# ============================================================================ depth


@pytest.fixture
def depth_mm():
    y, x = np.mgrid[0:240, 0:320]
    mm = (600 + 10 * x + 5 * y).astype(np.uint16)  # 0.6 m .. 4.9 m
    mm[:20, :20] = 0  # a hole
    return mm


def test_depth_png_and_npy_round_trip(tmp_path, depth_mm):
    png = _save_png(tmp_path / "d.png", depth_mm)
    with Image.open(png) as im:
        assert im.mode.startswith("I")  # really 16-bit
    out = load_depth(png)
    assert out.shape == (1, 224, 224) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0

    meters = depth_mm.astype(np.float32) / 1000.0
    np.save(tmp_path / "d.npy", meters)
    same = [
        load_depth(tmp_path / "d.npy"),
        load_depth(meters),
        load_depth(torch.from_numpy(meters)),
        load_depth(meters[None]),
        load_depth(png.read_bytes()),  # nameless bytes: detected from the content
        load_depth(_npy_bytes(meters)),
        load_depth(depth_mm),  # integer array: raw units / depth_scale
    ]
    for other in same:
        assert torch.allclose(other, out, atol=1e-5)
    np.save(tmp_path / "raw.npy", depth_mm)
    assert torch.allclose(load_depth(tmp_path / "raw.npy"), out, atol=1e-5)
    batch = load_depth_batch([png, meters])
    assert batch.shape == (2, 1, 224, 224)


def test_depth_values():
    opts = DepthOptions()
    depth = np.array([[0.0, 0.25, 1.0, 2.0, 100.0]])
    got = depth_to_normalized_disparity(depth, opts)
    bf = opts.baseline * opts.focal_length
    expect = [0.0, 1.0, bf / 1.0 / 75, bf / 2.0 / 75, bf / 50.0 / 75]
    assert np.allclose(got[0], expect, rtol=1e-6)
    assert got.dtype == np.float32
    # missing depth as the nearest value, like Omnivore's script
    assert depth_to_normalized_disparity(depth, DepthOptions(missing_value=1.0))[0, 0] == 1.0
    # nearer is larger
    assert got[0, 2] > got[0, 3] > got[0, 4]


def test_depth_constant_map_resizes_to_constant():
    out = load_depth(np.full((100, 150), 2.0, np.float32))
    value = DepthOptions().baseline * DepthOptions().focal_length / 2.0 / 75
    assert torch.allclose(out, torch.full_like(out, value), atol=1e-5)
    shifted = load_depth(np.full((100, 150), 2.0, np.float32), DepthOptions(mean=0.5, std=0.25))
    assert torch.allclose(shifted, (out - 0.5) / 0.25, atol=1e-5)


def test_depth_nan_option():
    d = np.full((50, 50), 1.5, np.float32)
    d[0, 0] = np.nan
    _raises(load_depth, d, "NaN")
    out = load_depth(d, DepthOptions(nan_is_missing=True))
    assert torch.isfinite(out).all()


def test_depth_bad_inputs(tmp_path, depth_mm):
    png8 = _save_png(tmp_path / "vis.png", (depth_mm // 20).astype(np.uint8))
    assert _raises(load_depth, png8, "8-bit").source == "vis.png"
    rgb = _save_png(tmp_path / "rgb.png", np.zeros((20, 20, 3), np.uint8))
    _raises(load_depth, rgb, "colour image")
    (tmp_path / "depth.exr").write_bytes(b"\x00" * 10)
    _raises(load_depth, tmp_path / "depth.exr", "unsupported file extension")
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    assert _raises(load_depth, tmp_path / "bad.npy", "not a valid .npy").source == "bad.npy"
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    _raises(load_depth, tmp_path / "bad.png", "not a recognised image")
    good = tmp_path / "ok.png"
    _save_png(good, depth_mm)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    _raises(load_depth, tmp_path / "cut.png", "corrupt")
    (tmp_path / "empty.npy").write_bytes(b"")
    _raises(load_depth, tmp_path / "empty.npy", "empty")
    _raises(load_depth, b"\x01\x02garbage", "unrecognised content")
    _raises(load_depth, np.zeros((3, 10, 10), np.float32), "single-channel")
    _raises(load_depth, np.zeros((0, 10), np.float32), "empty")
    _raises(load_depth, np.zeros((10, 10), np.float32), "no valid pixel")
    _raises(load_depth, np.full((10, 10), -1.0), "negative")
    _raises(load_depth, np.full((10, 10), np.inf), "infinite")
    _raises(load_depth, np.zeros((10, 10), bool), "dtype")
    _raises(load_depth, np.ones((100, 100)), "too large", options=DepthOptions(max_pixels=50))
    _raises(load_depth, good, "too large", max_bytes=10)
    with pytest.raises(InputError) as info:
        load_depth_batch([np.ones((10, 10)), np.zeros((10, 10))])
    assert info.value.source.startswith("depth 1")
    with pytest.raises(ValueError):
        DepthOptions(baseline=0)


# ============================================================================ thermal


def test_thermal_8bit_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    png = _save_png(tmp_path / "t.png", gray)
    out = load_thermal(png)
    assert out.shape == (1, 224, 224) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # identical to the image pipeline's resize + crop on one channel
    from imagebind_llm.preprocess.image import center_crop, resize_short_side

    ref = np.asarray(center_crop(resize_short_side(Image.fromarray(gray), 224), 224), np.float32) / 255
    assert torch.allclose(out[0], torch.from_numpy(ref), atol=1e-6)
    for other in (gray, torch.from_numpy(gray), gray[None], png.read_bytes(), Image.fromarray(gray)):
        assert torch.equal(load_thermal(other), out)
    # a 3-channel grayscale JPEG-like picture (LLVIP style) gives the same as its luminance
    rgb = np.repeat(gray[..., None], 3, axis=2)
    assert torch.equal(load_thermal(rgb), out)
    np.save(tmp_path / "t.npy", gray)
    assert torch.equal(load_thermal(tmp_path / "t.npy"), out)
    assert load_thermal_batch([png, gray]).shape == (2, 1, 224, 224)


def test_thermal_16bit(tmp_path):
    y, x = np.mgrid[0:200, 0:300]
    raw = (20000 + 20 * x + 10 * y).astype(np.uint16)
    png = _save_png(tmp_path / "t16.png", raw)
    out = load_thermal(png)
    assert out.shape == (1, 224, 224)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # stretched over the whole image (before the crop), then resized in float
    from imagebind_llm.preprocess.image import center_crop, resize_short_side

    unit = ((raw - raw.min()) / float(raw.max() - raw.min())).astype(np.float32)
    ref = np.asarray(center_crop(resize_short_side(Image.fromarray(unit), 224), 224), np.float32)
    assert torch.allclose(out[0], torch.from_numpy(np.clip(ref, 0, 1)), atol=1e-6)
    assert torch.allclose(load_thermal(raw), out, atol=1e-6)
    scaled = load_thermal(png, ThermalOptions(high_bit_depth="scale"))
    assert 20000 / 65535 - 0.01 < float(scaled.min()) and float(scaled.max()) < 30000 / 65535
    # constant image: no division by zero
    assert torch.equal(load_thermal(np.full((50, 50), 1234, np.uint16)), torch.zeros(1, 224, 224))
    floats = np.linspace(0, 1, 100 * 120, dtype=np.float32).reshape(100, 120)
    assert torch.allclose(
        load_thermal(floats, ThermalOptions(high_bit_depth="scale")), load_thermal(floats), atol=1e-6
    )
    norm = load_thermal(png, ThermalOptions(mean=0.5, std=0.5))
    assert torch.allclose(norm, (out - 0.5) / 0.5, atol=1e-6)


def test_thermal_bad_inputs(tmp_path):
    (tmp_path / "t.txt").write_text("hello")
    assert _raises(load_thermal, tmp_path / "t.txt", "unsupported file extension").source == "t.txt"
    (tmp_path / "t.png").write_bytes(b"definitely not an image")
    _raises(load_thermal, tmp_path / "t.png", "not a recognised image")
    (tmp_path / "e.png").write_bytes(b"")
    _raises(load_thermal, tmp_path / "e.png", "empty")
    _raises(load_thermal, np.zeros((2, 10, 10), np.float32), "single-channel")
    _raises(load_thermal, np.zeros((10, 0), np.uint8), "empty")
    _raises(load_thermal, np.full((10, 10), np.nan, np.float32), "NaN")
    _raises(
        load_thermal,
        np.full((10, 10), 3.0, np.float32),
        "[0, 1]",
        options=ThermalOptions(high_bit_depth="scale"),
    )
    _raises(load_thermal, np.zeros((10, 10), complex), "dtype")
    _raises(load_thermal, np.zeros((100, 100), np.uint8), "too large", options=ThermalOptions(max_pixels=10))
    with pytest.raises(InputError) as info:
        load_thermal_batch([np.zeros((10, 10), np.uint8), "missing_file.png"])
    assert info.value.source.startswith("thermal 1")
    with pytest.raises(ValueError):
        ThermalOptions(high_bit_depth="bogus")


# ============================================================================ IMU


@pytest.fixture
def imu_signal():
    t = np.arange(2500)
    return np.stack([np.sin(t / (10 + c)) + c for c in range(6)]).astype(np.float64)  # (6, 2500)


def test_imu_npy_both_orientations(tmp_path, imu_signal):
    np.save(tmp_path / "cf.npy", imu_signal)
    np.save(tmp_path / "tf.npy", imu_signal.T)
    a = load_imu(tmp_path / "cf.npy")
    b = load_imu(tmp_path / "tf.npy")
    assert a.shape == (6, 2000) and a.dtype == torch.float32
    assert torch.equal(a, b)
    expected = torch.from_numpy(imu_signal[:, 250:2250].astype(np.float32))  # centre crop
    assert torch.equal(a, expected)
    assert torch.equal(load_imu(imu_signal), a)
    assert torch.equal(load_imu(torch.from_numpy(imu_signal.T)), a)
    assert torch.equal(load_imu(_npy_bytes(imu_signal)), a)
    assert load_imu_batch([imu_signal, imu_signal.T]).shape == (2, 6, 2000)


def test_imu_csv_with_and_without_header(tmp_path, imu_signal):
    rows = imu_signal.T[:1500]
    body = "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n"
    (tmp_path / "plain.csv").write_text(body)
    (tmp_path / "header.csv").write_text("ax,ay,az,gx,gy,gz\n" + body)
    (tmp_path / "semi.csv").write_text("# comment\n" + body.replace(",", ";"))
    ref = load_imu(np.round(rows, 6))
    for name in ("plain.csv", "header.csv", "semi.csv"):
        out = load_imu(tmp_path / name)
        assert out.shape == (6, 2000)
        assert torch.allclose(out, ref, atol=1e-6), name
    # shorter than 2000 in crop mode: centred, edge padded
    assert torch.equal(ref[:, 250], ref[:, 0]) and torch.equal(ref[:, 1749], ref[:, -1])
    # extra columns picked by name or by index
    extra = "t,gx,gy,gz,ax,ay,az\n" + "\n".join(
        f"{i}," + ",".join(f"{v:.6f}" for v in np.r_[r[3:], r[:3]]) for i, r in enumerate(rows)
    )
    (tmp_path / "extra.csv").write_text(extra)
    by_name = load_imu(tmp_path / "extra.csv", IMUOptions(columns=("ax", "ay", "az", "gx", "gy", "gz")))
    by_index = load_imu(tmp_path / "extra.csv", IMUOptions(columns=(4, 5, 6, 1, 2, 3)))
    assert torch.allclose(by_name, ref, atol=1e-6) and torch.equal(by_name, by_index)


def test_imu_length_modes_and_scaling():
    x = np.tile(np.arange(500, dtype=np.float64), (6, 1))
    res = load_imu(x, IMUOptions(length_mode="resample"))
    assert res.shape == (6, 2000)
    assert float(res[0, 0]) == 0.0 and float(res[0, -1]) == 499.0
    assert torch.all(res[:, 1:] >= res[:, :-1])
    long = np.tile(np.arange(8000, dtype=np.float64), (6, 1))
    assert float(load_imu(long, IMUOptions(length_mode="resample"))[0, -1]) == 7999.0
    assert fit_length(np.ones((6, 1)), 2000, "resample").shape == (6, 2000)
    assert fit_length(np.ones((6, 1)), 2000, "crop").shape == (6, 2000)
    scaled = load_imu(np.ones((6, 2000)), IMUOptions(accel_scale=9.80665, gyro_scale=math.pi / 180))
    assert torch.allclose(scaled[:3], torch.full((3, 2000), 9.80665))
    assert torch.allclose(scaled[3:], torch.full((3, 2000), math.pi / 180))
    # 6 x 6 is read channels-first unless told otherwise
    sq = np.arange(36, dtype=np.float64).reshape(6, 6)
    assert torch.equal(
        load_imu(sq, IMUOptions(length_mode="resample"))[:, 0], torch.tensor(sq[:, 0], dtype=torch.float32)
    )
    tf = load_imu(sq, IMUOptions(length_mode="resample", layout="time_first"))
    assert torch.equal(tf[:, 0], torch.tensor(sq[0], dtype=torch.float32))


def test_imu_bad_inputs(tmp_path):
    _raises(load_imu, np.zeros((5, 100)), "no axis of length 6")
    _raises(load_imu, np.zeros((6, 100, 2)), "2-D")
    _raises(load_imu, np.zeros((6, 0)), "empty")
    bad = np.zeros((6, 100))
    bad[2, 7] = np.nan
    assert "channel 2, step 7" in str(_raises(load_imu, bad, "NaN"))
    bad[2, 7] = np.inf
    _raises(load_imu, bad, "infinite")
    _raises(load_imu, np.zeros((6, 10), dtype=object), "dtype")
    _raises(load_imu, np.zeros((100, 5)), "no axis of length 6")
    _raises(load_imu, np.zeros((100, 6)), "first axis", options=IMUOptions(layout="channels_first"))
    (tmp_path / "five.csv").write_text("1,2,3,4,5\n6,7,8,9,10\n")
    assert _raises(load_imu, tmp_path / "five.csv", "5 columns").source == "five.csv"
    (tmp_path / "word.csv").write_text("1,2,3,4,5,6\n1,2,x,4,5,6\n")
    _raises(load_imu, tmp_path / "word.csv", "line 2, column 3")
    (tmp_path / "ragged.csv").write_text("1,2,3,4,5,6\n1,2,3\n")
    _raises(load_imu, tmp_path / "ragged.csv", "line 2 has 3 columns")
    (tmp_path / "nan.csv").write_text("1,2,3,4,5,6\nnan,2,3,4,5,6\n")
    _raises(load_imu, tmp_path / "nan.csv", "NaN")
    (tmp_path / "onlyheader.csv").write_text("a,b,c,d,e,f\n")
    _raises(load_imu, tmp_path / "onlyheader.csv", "no data rows")
    (tmp_path / "empty.csv").write_text("")
    _raises(load_imu, tmp_path / "empty.csv", "empty")
    (tmp_path / "blank.csv").write_text("\n\n# just a comment\n")
    _raises(load_imu, tmp_path / "blank.csv", "no data rows")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    _raises(load_imu, tmp_path / "bin.csv", "UTF-8")
    (tmp_path / "imu.json").write_text("[]")
    _raises(load_imu, tmp_path / "imu.json", "unsupported file extension")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    _raises(load_imu, tmp_path / "bad.npy", "not a valid .npy")
    (tmp_path / "h.csv").write_text("a,b,c,d,e,f,g\n" + "1,2,3,4,5,6,7\n")
    _raises(
        load_imu, tmp_path / "h.csv", "not found", options=IMUOptions(columns=("a", "b", "c", "d", "e", "zz"))
    )
    with pytest.raises(InputError) as info:
        load_imu_batch([np.zeros((6, 10)), np.zeros((7, 10))])
    assert info.value.source.startswith("imu 1")
    with pytest.raises(ValueError):
        IMUOptions(length_mode="stretch")
    with pytest.raises(ValueError):
        IMUOptions(columns=(0, 1, 2))


@pytest.mark.parametrize("kind, tensor", [("depth", torch.rand(64, 64) * 3), ("thermal", torch.rand(64, 64)),
                                          ("imu", torch.randn(6, 2000))])
def test_a_bfloat16_tensor_reads_as_its_float32_values(kind, tensor):
    """numpy has no bfloat16: such a tensor failed with a raw TypeError ('unsupported ScalarType')."""
    from imagebind_llm.preprocess import load

    values = tensor.bfloat16()
    assert torch.equal(load(kind, values), load(kind, values.float()))
