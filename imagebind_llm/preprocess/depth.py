"""Depth input for ImageBind's depth encoder: one depth map -> a ``(1, 224, 224)`` float32 tensor.

Neither ImageBind nor ImageBind-LLM ships a depth loader; this one follows what ImageBind
was trained on. The ImageBind paper represents depth as **disparity** ("for scale
invariance", following Omnivore), and Omnivore's published SUN RGB-D recipe is: depth in
metres clamped to [0.01, 50], ``disparity = baseline * focal / depth`` with the sensor's
baseline and focal length, then ``clamp(disparity, 0.01, 75) / 75``, bicubic resize of the
short side to 224 and a centre crop, no further mean/std (mean 0, std 1).

**What it accepts** (``load_depth``; ``load_depth_batch`` takes a list):

* a **16-bit PNG** (or 16-bit / 32-bit integer TIFF) of raw depth units; metres =
  value / ``depth_scale`` (default 1000, i.e. millimetres, the Kinect / RealSense / NYU
  convention). 8-bit images are refused: they are visualisations without a metric scale.
  A 32-bit float TIFF is read as metres. (SUN RGB-D's raw PNGs store depth bit-rotated;
  undo that first: ``(d >> 3) | (d << 13)``.)
* a **.npy** array of shape ``(H, W)``, ``(1, H, W)`` or ``(H, W, 1)``: float = metres,
  integer = raw units divided by ``depth_scale``;
* the same as an in-memory numpy array or torch tensor;
* paths, ``bytes`` or binary file objects (the type comes from the extension, or from the
  content for nameless bytes).

**The conversion** (all settable in :class:`DepthOptions`):

1. depth (m) -> disparity ``baseline * focal_length / clip(depth, min_depth, max_depth)``
   with defaults baseline 0.075 m and focal length 518.857901 px (Kinect v1, NYU-v2;
   SUN RGB-D's sensors are similar). Use your camera's values if you know them;
2. normalised disparity ``clip(disparity, 0.01, max_disparity) / max_disparity`` (75), in
   [0, 1]: 1.0 = nearer than about 0.52 m, about 0.0104 = 50 m or farther (defaults);
3. **missing depth** (value 0; also NaN if ``nan_is_missing=True``) becomes
   ``missing_value`` (default 0.0, "no disparity", i.e. infinitely far). Omnivore's script
   clamped zeros to 0.01 m, which made holes the *nearest* value (1.0); set
   ``missing_value=1.0`` to reproduce that;
4. bicubic resize (Pillow, 32-bit float) of the short side to 224, centre crop 224 x 224,
   clip to [0, 1] (bicubic overshoot), then ``(x - mean) / std`` (defaults 0 and 1).

**Errors** (:class:`~imagebind_llm.errors.InputError`, naming the file): missing, empty,
too large or corrupt files; unsupported extensions; 8-bit or colour images; wrong array
shapes (more than one channel), non-numeric dtypes; NaN or infinite values (unless
``nan_is_missing``); negative depth; maps without a single valid pixel; more than
``max_pixels`` pixels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, FileInput, Source, as_source, load_each, tensor_to_numpy
from .image import DEFAULT_MAX_PIXELS, center_crop, decode_source, resize_short_side

__all__ = [
    "ACCEPTED_DEPTH",
    "DepthInput",
    "DepthOptions",
    "depth_to_normalized_disparity",
    "load_depth",
    "load_depth_batch",
    "read_depth_meters",
]

ACCEPTED_DEPTH = (
    "a 16-bit PNG/TIFF of depth in raw units (value / depth_scale = metres; default millimetres), "
    "a .npy array (H, W) of metres (float) or raw units (integer), or such a numpy array / torch tensor"
)

DepthInput = FileInput | np.ndarray | torch.Tensor

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
_NPY_MAGIC = b"\x93NUMPY"
_IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class DepthOptions:
    """Settings of the depth pipeline (see the module docstring for the formulas).

    Attributes:
        size: output side (224).
        depth_scale: raw integer units per metre (PNG/TIFF and integer arrays); 1000 = mm.
        focal_length: focal length in pixels used for depth -> disparity.
        baseline: stereo baseline in metres used for depth -> disparity.
        min_depth, max_depth: depth clamp (metres) before the conversion.
        max_disparity: disparity (pixels) that maps to 1.0; larger values are clipped.
        missing_value: output value (before mean/std) of pixels without depth.
        nan_is_missing: treat NaN as missing depth instead of refusing the input.
        mean, std: final normalisation ``(x - mean) / std``.
        max_pixels: refuse maps with more pixels than this.
    """

    size: int = 224
    depth_scale: float = 1000.0
    focal_length: float = 518.857901
    baseline: float = 0.075
    min_depth: float = 0.01
    max_depth: float = 50.0
    max_disparity: float = 75.0
    missing_value: float = 0.0
    nan_is_missing: bool = False
    mean: float = 0.0
    std: float = 1.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        for field in (
            "depth_scale",
            "focal_length",
            "baseline",
            "min_depth",
            "max_depth",
            "max_disparity",
            "std",
        ):
            if not float(getattr(self, field)) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if self.max_depth < self.min_depth:
            raise ValueError("max_depth must not be smaller than min_depth")
        if not 0.0 <= self.missing_value <= 1.0:
            raise ValueError(f"missing_value must lie in [0, 1], got {self.missing_value!r}")


# --------------------------------------------------------------------------- reading


def _squeeze_map(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise InputError(
            name, f"expected a single-channel depth map (H, W), got shape {tuple(arr.shape)}", ACCEPTED_DEPTH
        )
    if arr.size == 0:
        raise InputError(name, f"the depth map is empty (shape {tuple(arr.shape)})", ACCEPTED_DEPTH)
    return arr


def _array_to_meters(arr: np.ndarray, name: str, options: DepthOptions) -> np.ndarray:
    arr = _squeeze_map(arr, name)
    h, w = arr.shape
    if options.max_pixels is not None and h * w > options.max_pixels:
        raise InputError(
            name,
            f"the depth map is too large ({w} x {h} pixels, limit {options.max_pixels:,})",
            ACCEPTED_DEPTH,
        )
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64) / float(options.depth_scale)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    raise InputError(name, f"unsupported array dtype {arr.dtype} (need integer or float)", ACCEPTED_DEPTH)


def _image_to_array(img: Image.Image, name: str) -> np.ndarray:
    if img.mode.startswith("I") or img.mode == "F":
        return np.asarray(img)
    if img.mode in ("L", "P", "1", "LA", "PA"):
        problem = (
            f"8-bit image (mode {img.mode}): an 8-bit depth picture is a visualisation without metric "
            "scale; save raw depth as a 16-bit PNG (e.g. millimetres) or as .npy metres"
        )
    else:
        problem = f"colour image (mode {img.mode}); depth must be a single-channel 16-bit image"
    raise InputError(name, problem, ACCEPTED_DEPTH)


def _load_npy(src: Source, accepted: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(src.read_bytes()), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise src.error(f"not a valid .npy file ({type(e).__name__}: {e})", accepted) from None
    if not isinstance(arr, np.ndarray):
        raise src.error("the .npy file does not hold a single array", accepted)
    return arr


def _kind_of(src: Source, image_suffixes: Sequence[str], accepted: str, *, any_image: bool = False) -> str:
    """Return ``"npy"`` or ``"image"``: from the extension, or from the content for nameless bytes
    (``any_image``: anything that is not .npy is handed to Pillow)."""
    if src.suffix == ".npy":
        return "npy"
    if src.suffix in image_suffixes:
        return "image"
    if src.suffix:
        raise src.error(f"unsupported file extension '{src.suffix}'", accepted)
    head = src.read_bytes()[:8]
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if any_image or any(head.startswith(m) for m in _IMAGE_MAGICS):
        return "image"
    raise src.error("unrecognised content (neither .npy nor PNG/TIFF)", accepted)


def read_depth_meters(
    source: DepthInput,
    options: DepthOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> tuple[np.ndarray, str]:
    """Read a depth input as a float64 ``(H, W)`` array of metres (unchecked values) and the
    name used in messages."""
    options = options or DepthOptions()
    if isinstance(source, torch.Tensor):
        label = name or "<tensor>"
        return _array_to_meters(tensor_to_numpy(source), label, options), label
    if isinstance(source, np.ndarray):
        label = name or "<array>"
        return _array_to_meters(source, label, options), label
    src = as_source(source, name=name, max_bytes=max_bytes, accepted=ACCEPTED_DEPTH)
    kind = _kind_of(src, _IMAGE_SUFFIXES, ACCEPTED_DEPTH)
    if kind == "npy":
        arr = _load_npy(src, ACCEPTED_DEPTH)
    else:
        arr = _image_to_array(decode_source(src, options.max_pixels, ACCEPTED_DEPTH), src.name)
    return _array_to_meters(arr, src.name, options), src.name


# --------------------------------------------------------------------------- conversion


def depth_to_normalized_disparity(
    depth_m: np.ndarray, options: DepthOptions | None = None, *, name: str = "<depth>"
) -> np.ndarray:
    """Steps 1-3 of the module docstring on a full-resolution ``(H, W)`` map of metres.
    Returns float32 values in [0, 1]. The input array is not modified."""
    options = options or DepthOptions()
    depth = np.asarray(depth_m, dtype=np.float64)
    nan = np.isnan(depth)
    if nan.any() and not options.nan_is_missing:
        raise InputError(
            name,
            "the depth map contains NaN (use DepthOptions(nan_is_missing=True) if NaN marks holes)",
            ACCEPTED_DEPTH,
        )
    if np.isinf(depth).any():
        raise InputError(name, "the depth map contains infinite values", ACCEPTED_DEPTH)
    if (depth[~nan] < 0).any():
        raise InputError(
            name,
            f"negative depth values (min {float(depth[~nan].min()):g}); 0 marks missing depth",
            ACCEPTED_DEPTH,
        )
    valid = ~nan & (depth > 0)
    if not valid.any():
        raise InputError(name, "the depth map has no valid pixel (all zero / missing)", ACCEPTED_DEPTH)
    clipped = np.clip(np.where(valid, depth, 1.0), options.min_depth, options.max_depth)
    disparity = options.baseline * options.focal_length / clipped
    normed = np.clip(disparity, 0.01, options.max_disparity) / options.max_disparity
    return np.where(valid, normed, options.missing_value).astype(np.float32)


def _resize_crop_float(arr: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    img = center_crop(resize_short_side(img, size), size)
    return np.asarray(img, dtype=np.float32)


# --------------------------------------------------------------------------- public


def load_depth(
    source: DepthInput,
    options: DepthOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> torch.Tensor:
    """Load one depth map as a ``(1, size, size)`` float32 tensor (see the module docstring)."""
    options = options or DepthOptions()
    meters, label = read_depth_meters(source, options, max_bytes=max_bytes, name=name)
    disp = depth_to_normalized_disparity(meters, options, name=label)
    out = np.clip(_resize_crop_float(disp, options.size), 0.0, 1.0)
    x = torch.from_numpy(out.copy()).unsqueeze(0)
    return x.sub(float(options.mean)).div(float(options.std)).to(torch.float32)


def load_depth_batch(
    sources: Sequence[DepthInput],
    options: DepthOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Load several depth maps as a ``(B, 1, size, size)`` tensor; errors name the item index."""
    return torch.stack(load_each(sources, lambda s: load_depth(s, options, max_bytes=max_bytes), "depth", ACCEPTED_DEPTH))
