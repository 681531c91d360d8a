"""Thermal input for ImageBind's thermal encoder: one infrared image -> a ``(1, 224, 224)`` float32 tensor.

Neither ImageBind nor ImageBind-LLM ships a thermal loader. ImageBind's thermal encoder was
trained on LLVIP, whose infrared frames are ordinary 8-bit grayscale pictures (the camera's
automatic gain already mapped temperatures to 0..255). This loader therefore treats a
thermal image like a one-channel version of the image pipeline, without the RGB mean/std.

**What it accepts** (``load_thermal``; ``load_thermal_batch`` takes a list):

* any grayscale image file Pillow reads (PNG, JPEG, TIFF, BMP, ...), **8-bit or 16-bit**
  (also 32-bit integer or float TIFF); colour files (e.g. LLVIP's 3-channel JPEGs, or
  false-colour palettes) are converted to luminance with Pillow's ``convert("L")``
  (a false-colour palette is *not* inverted to temperatures);
* a ``.npy`` array ``(H, W)``, ``(1, H, W)`` or ``(H, W, 1)``;
* the same as an in-memory numpy array or torch tensor (``uint8 (H, W, 3)`` also accepted,
  converted to luminance);
* paths, ``bytes`` or binary file objects.

**The conversion**:

* 8-bit input: bicubic resize (Pillow) of the short side to 224, centre crop 224 x 224,
  divide by 255 -- exactly the image pipeline on one channel;
* anything with more bits (16-bit, 32-bit integer, float; raw sensor counts or
  temperatures have an arbitrary offset and span): by default (``high_bit_depth="minmax"``)
  stretched per image to [0, 1] with ``(v - min) / (max - min)`` -- what a camera's
  automatic gain does -- (a constant image gives 0); with ``high_bit_depth="scale"``
  integers are divided by 65535 and floats must already lie in [0, 1]. Then the same resize
  (32-bit float bicubic) and crop, clipped to [0, 1];
* finally ``(x - mean) / std`` with defaults mean 0, std 1, i.e. values stay in [0, 1]. No
  RGB/CLIP mean-std is applied: a single channel has none, and community reproductions of
  ImageBind's LLVIP numbers (ImageBind PR #73) scored better without it.

**Errors** (:class:`~imagebind_llm.errors.InputError`, naming the file): missing, empty,
too large, truncated or corrupt files; content that is not an image; unsupported
extensions; arrays with more than one channel, non-numeric dtypes, NaN or infinite values;
float values outside [0, 1] with ``high_bit_depth="scale"``; more than ``max_pixels`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, FileInput, as_source, load_each, tensor_to_numpy
from .depth import _kind_of, _load_npy
from .image import DEFAULT_MAX_PIXELS, center_crop, decode_source, resize_short_side

__all__ = ["ACCEPTED_THERMAL", "ThermalInput", "ThermalOptions", "load_thermal", "load_thermal_batch"]

ACCEPTED_THERMAL = (
    "a grayscale image file (8-bit or 16-bit PNG, JPEG, TIFF, ...), a .npy array (H, W), "
    "or such a numpy array / torch tensor"
)

ThermalInput = FileInput | np.ndarray | torch.Tensor

_IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
    ".webp",
    ".pgm",
    ".ppm",
    ".pnm",
    ".jp2",
)


@dataclass(frozen=True)
class ThermalOptions:
    """Settings of the thermal pipeline.

    Attributes:
        size: output side (224).
        high_bit_depth: ``"minmax"`` (per-image stretch, default) or ``"scale"`` (integers
            / 65535, floats as they are) for inputs that are not 8-bit.
        mean, std: final normalisation ``(x - mean) / std`` (defaults 0 and 1).
        max_pixels: refuse images with more pixels than this (checked before decoding).
    """

    size: int = 224
    high_bit_depth: Literal["minmax", "scale"] = "minmax"
    mean: float = 0.0
    std: float = 1.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.high_bit_depth not in ("minmax", "scale"):
            raise ValueError(f"high_bit_depth must be 'minmax' or 'scale', got {self.high_bit_depth!r}")
        if not float(self.std) > 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")


def _from_image(img: Image.Image) -> Image.Image | np.ndarray:
    """An 8-bit ``L`` image, or a numeric array for higher bit depths."""
    if img.mode == "L":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return np.asarray(img)
    return img.convert("L")


def _from_array(arr: np.ndarray, name: str) -> Image.Image | np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr)).convert("L")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise InputError(
            name, f"expected a single-channel image (H, W), got shape {tuple(arr.shape)}", ACCEPTED_THERMAL
        )
    if arr.size == 0:
        raise InputError(name, f"the thermal image is empty (shape {tuple(arr.shape)})", ACCEPTED_THERMAL)
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr))
    if arr.dtype.kind not in "iuf":
        raise InputError(name, f"unsupported array dtype {arr.dtype}", ACCEPTED_THERMAL)
    return arr


def _high_bit_to_unit(arr: np.ndarray, name: str, options: ThermalOptions) -> np.ndarray:
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(name, "the thermal image contains NaN or infinite values", ACCEPTED_THERMAL)
    if options.high_bit_depth == "minmax":
        lo, hi = float(values.min()), float(values.max())
        if hi == lo:
            return np.zeros(values.shape, dtype=np.float32)
        return ((values - lo) / (hi - lo)).astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if arr.dtype.kind in "iu":
        if lo < 0 or hi > 65535:
            raise InputError(
                name,
                f"integer values must lie in [0, 65535] for high_bit_depth='scale', found [{lo:g}, {hi:g}]",
                ACCEPTED_THERMAL,
            )
        return (values / 65535.0).astype(np.float32)
    if lo < 0 or hi > 1:
        raise InputError(
            name,
            f"float values must lie in [0, 1] for high_bit_depth='scale', found [{lo:g}, {hi:g}]",
            ACCEPTED_THERMAL,
        )
    return values.astype(np.float32)


def load_thermal(
    source: ThermalInput,
    options: ThermalOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> torch.Tensor:
    """Load one thermal image as a ``(1, size, size)`` float32 tensor (see the module docstring)."""
    options = options or ThermalOptions()
    if isinstance(source, torch.Tensor):
        label = name or "<tensor>"
        data = _from_array(tensor_to_numpy(source), label)
    elif isinstance(source, np.ndarray):
        label = name or "<array>"
        data = _from_array(source, label)
    elif isinstance(source, Image.Image):
        label = name or "<PIL image>"
        data = _from_image(source)
    else:
        src = as_source(source, name=name, max_bytes=max_bytes, accepted=ACCEPTED_THERMAL)
        label = src.name
        if _kind_of(src, _IMAGE_SUFFIXES, ACCEPTED_THERMAL, any_image=True) == "npy":
            data = _from_array(_load_npy(src, ACCEPTED_THERMAL), label)
        else:
            data = _from_image(decode_source(src, options.max_pixels, ACCEPTED_THERMAL))
    w, h = data.size if isinstance(data, Image.Image) else data.shape[::-1]
    if options.max_pixels is not None and w * h > options.max_pixels:
        raise InputError(
            label,
            f"the image is too large ({w} x {h} pixels, limit {options.max_pixels:,})",
            ACCEPTED_THERMAL,
        )

    if isinstance(data, Image.Image):  # 8-bit: the image pipeline on one channel
        img = center_crop(resize_short_side(data, options.size), options.size)
        x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).to(torch.float32).div(255)
    else:
        unit = _high_bit_to_unit(data, label, options)
        img = center_crop(resize_short_side(Image.fromarray(unit), options.size), options.size)
        x = torch.from_numpy(np.clip(np.array(img, dtype=np.float32), 0.0, 1.0))
    return x.unsqueeze(0).sub(float(options.mean)).div(float(options.std)).to(torch.float32)


def load_thermal_batch(
    sources: Sequence[ThermalInput],
    options: ThermalOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Load several thermal images as a ``(B, 1, size, size)`` tensor; errors name the item index."""
    return torch.stack(load_each(sources, lambda s: load_thermal(s, options, max_bytes=max_bytes), "thermal", ACCEPTED_THERMAL))
