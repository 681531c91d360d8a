"""Image pipeline: golden equality (official), corrected-mode fixes, input kinds, bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from imagebind_llm.constants import CLIP_MEAN, CLIP_STD
from imagebind_llm.errors import InputError
from imagebind_llm.preprocess.image import (
    ImageOptions,
    image_to_tensor,
    load_image,
    load_image_batch,
)

OFFICIAL = ImageOptions(mode="official")
CORRECTED = ImageOptions(mode="corrected")
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def vision_entries(golden, preprocess_manifest):
    entries = [e for e in preprocess_manifest if e["modality"] == "vision"]
    assert entries, "no vision entry in the preprocess manifest"
    return [(golden / "preprocess" / e["file"], golden / "preprocess" / e["expected"], e) for e in entries]


def _expected(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _png_bytes(arr, **save):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **save)
    return buf.getvalue()


def _unnormalise(x):
    return x * STD + MEAN


# ----------------------------------------------------------------------------- golden


def test_golden_every_vision_entry_official(vision_entries):
    for path, expected_path, entry in vision_entries:
        expected = _expected(expected_path)
        got = load_image(path, OFFICIAL)
        assert got.dtype == torch.float32 and got.shape == tuple(expected.shape[1:])
        diff = float((got - expected[0]).abs().max())
        assert diff <= 1e-5, f"{entry['file']}: max abs diff {diff}"
        batch = load_image_batch([path], OFFICIAL)
        assert batch.shape == tuple(expected.shape)
        assert float((batch - expected).abs().max()) <= 1e-5


def test_golden_corrected_equals_official_for_opaque_images(vision_entries):
    for path, expected_path, _ in vision_entries:
        with Image.open(path) as im:
            opaque = im.mode not in ("RGBA", "LA", "PA", "P", "RGBa", "La") and "transparency" not in im.info
            opaque = opaque and not im.mode.startswith("I")  # 16-bit is scaled, not clipped, when corrected
            has_exif = bool(im.getexif().get(0x0112, 1) != 1)
        if opaque and not has_exif:
            assert torch.equal(load_image(path, CORRECTED), load_image(path, OFFICIAL))


def test_input_kinds_equal_path(vision_entries):
    for path, _, entry in vision_entries:
        for opts in (OFFICIAL, CORRECTED):
            ref = load_image(path, opts)
            data = path.read_bytes()
            assert torch.equal(load_image(data, opts), ref), entry["file"]
            with open(path, "rb") as fh:
                assert torch.equal(load_image(fh, opts), ref), entry["file"]
            with Image.open(path) as im:
                before = im.copy()
                assert torch.equal(load_image(im, opts), ref), entry["file"]
                assert im.mode == before.mode and im.tobytes() == before.tobytes()  # untouched
                if im.mode in ("RGB", "RGBA", "L"):
                    arr = np.asarray(im).copy()
                    keep = arr.copy()
                    assert torch.equal(load_image(arr, opts), ref), entry["file"]
                    assert np.array_equal(arr, keep)  # untouched


# ----------------------------------------------------------------------------- corrected mode


def test_rgba_composited_over_white_in_corrected_mode():
    h, w = 224, 300
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[:, : w // 2] = (200, 30, 30, 255)  # opaque red
    rgba[:, w // 2 :] = (0, 0, 255, 0)  # fully transparent, blue underneath
    data = _png_bytes(rgba)

    white = rgba[:, :, :3].copy()
    white[:, w // 2 :] = 255
    blue = rgba[:, :, :3].copy()
    assert torch.equal(load_image(data, CORRECTED), load_image(white, OFFICIAL))
    assert torch.equal(load_image(data, OFFICIAL), load_image(blue, OFFICIAL))
    # the transparent part is white (1.0 after un-normalising) in corrected mode
    right = _unnormalise(load_image(data, CORRECTED))[:, :, -10:]
    assert torch.allclose(right, torch.ones_like(right), atol=1e-5)


def test_half_transparent_and_palette_and_la():
    rgba = np.zeros((50, 60, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 0, 0)
    rgba[..., 3] = 128  # half transparent black over white -> mid grey
    out = _unnormalise(load_image(rgba, CORRECTED))
    assert torch.allclose(out, torch.full_like(out, 127 / 255), atol=1.5 / 255)

    la = Image.fromarray(np.zeros((40, 40), np.uint8)).convert("LA")
    la.putalpha(0)
    assert torch.allclose(_unnormalise(load_image(la, CORRECTED)), torch.ones(3, 224, 224), atol=1e-5)
    assert torch.allclose(_unnormalise(load_image(la, OFFICIAL)), torch.zeros(3, 224, 224), atol=1e-5)

    p = Image.new("P", (40, 40), 0)
    p.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    buf = io.BytesIO()
    p.save(buf, "PNG", transparency=0)
    assert torch.allclose(
        _unnormalise(load_image(buf.getvalue(), CORRECTED)), torch.ones(3, 224, 224), atol=1e-5
    )
    assert not torch.allclose(
        _unnormalise(load_image(buf.getvalue(), OFFICIAL)), torch.ones(3, 224, 224), atol=1e-2
    )


def test_exif_orientation_only_in_corrected_mode():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif.tobytes())
    data = buf.getvalue()

    with Image.open(io.BytesIO(data)) as im:
        stored = im.convert("RGB")
    upright = stored.transpose(Image.Transpose.ROTATE_270)  # 40 wide, 64 high
    assert upright.size == (40, 64)
    assert torch.equal(load_image(data, CORRECTED), image_to_tensor(upright, OFFICIAL))
    assert torch.equal(load_image(data, OFFICIAL), image_to_tensor(stored, OFFICIAL))
    assert not torch.equal(load_image(data, CORRECTED), load_image(data, OFFICIAL))


def test_sixteen_bit_grayscale():
    arr = np.full((30, 30), 32896, dtype=np.uint16)  # 32896 / 257 = 128
    data = _png_bytes(arr)
    corrected = _unnormalise(load_image(data, CORRECTED))
    assert torch.allclose(corrected, torch.full_like(corrected, 128 / 255), atol=1e-5)
    official = _unnormalise(load_image(data, OFFICIAL))
    assert torch.allclose(official, torch.ones_like(official), atol=1e-5)  # Pillow clips at 255


# ----------------------------------------------------------------------------- formats and inputs


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
def test_formats(tmp_path, fmt):
    arr = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    path = tmp_path / f"pic.{fmt.lower()}"
    Image.fromarray(arr).save(path, fmt)
    out = load_image(path)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    out = _unnormalise(load_image(path))
    assert out[0].mean() > 0.9 and out[1].mean() < 0.1


def test_numpy_inputs():
    rgb = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    gray = rgb[..., 0].copy()
    assert torch.equal(load_image(rgb), load_image(Image.fromarray(rgb)))
    assert torch.equal(load_image(gray), load_image(Image.fromarray(gray)))
    as_float = rgb.astype(np.float32) / 255.0
    assert torch.equal(load_image(as_float), load_image(rgb))
    non_contiguous = np.asfortranarray(rgb)
    assert torch.equal(load_image(non_contiguous), load_image(rgb))


def test_batch():
    a = np.zeros((30, 40, 3), np.uint8)
    b = np.full((50, 20), 255, np.uint8)
    out = load_image_batch([a, b])
    assert out.shape == (2, 3, 224, 224)
    assert torch.equal(out[1], load_image(b))


def test_options_validation():
    with pytest.raises(ValueError):
        ImageOptions(mode="nope")
    with pytest.raises(ValueError):
        ImageOptions(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        ImageOptions(max_pixels=0)


# ----------------------------------------------------------------------------- bad input


def _bomb_png(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _raises(source, match, *, opts=None, **kw):
    with pytest.raises(InputError) as info:
        load_image(source, opts, **kw)
    msg = str(info.value)
    assert match in msg, msg
    assert "Accepted:" in msg
    return info.value


def test_bad_files(tmp_path):
    good = _png_bytes(np.random.default_rng(2).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(jpg, "JPEG")
    cases = {
        "notes.png": (b"this is plain text, not a picture\n" * 3, "its content does not match the '.png' extension"),
        "notes.md": (b"# plain text, not a picture\n" * 3, "not a recognised image file; '.md' is not an image extension"),
        "notes": (b"plain text, not a picture\n" * 3, "not a recognised image file. Accepted"),
        "cut.png": (good[: len(good) // 2], "truncated or corrupt"),
        "cut_end.png": (good[:-20], "truncated or corrupt"),
        "cut.jpg": (jpg.getvalue()[: len(jpg.getvalue()) // 2], "truncated or corrupt"),
        "empty.jpg": (b"", "empty"),
        "bomb.png": (_bomb_png(20000, 20000), "too large"),
        "bomb2.png": (_bomb_png(10000, 10000), "decompression bomb"),
    }
    for fname, (content, match) in cases.items():
        path = tmp_path / fname
        path.write_bytes(content)
        err = _raises(path, match)
        assert err.source == fname
        # the same through bytes with a name, and through a file object
        if content:
            assert _raises(content, match, name=fname).source == fname
            with open(path, "rb") as fh:
                assert _raises(fh, match).source == fname

    _raises(tmp_path / "missing.png", "not found")
    _raises(tmp_path, "not a regular file")
    small = tmp_path / "small.png"
    small.write_bytes(good)
    _raises(small, "decompression bomb", opts=ImageOptions(max_pixels=100))
    _raises(small, "too large", max_bytes=10)
    with open(small, "r", encoding="latin-1") as fh:
        _raises(fh, "text mode")
    with open(small, "r") as fh:  # utf-8: reading the PNG failed with a UnicodeDecodeError first
        _raises(fh, "text mode")


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((10, 10, 5), np.uint8), "shape"),
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        (np.zeros((10,), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.int64), "dtype"),
        (np.zeros((10, 10, 3), np.uint16), "dtype"),
        (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
        (np.full((10, 10, 3), 2.0, np.float32), "[0, 1]"),
    ],
)
def test_bad_arrays(arr, match):
    err = _raises(arr, match)
    assert err.source == "<array>"


def test_bad_types_and_batch():
    _raises(12345, "unsupported input type")
    _raises(torch.zeros(3, 8, 8, dtype=torch.uint8), "torch tensors")
    with pytest.raises(InputError) as info:
        load_image_batch([np.zeros((8, 8, 3), np.uint8), b"garbage bytes"])
    assert info.value.source.startswith("image 1")
    with pytest.raises(InputError):
        load_image_batch([])
    with pytest.raises(InputError):
        load_image_batch("a_single_path.png")
