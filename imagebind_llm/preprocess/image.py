"""Image input for ImageBind's vision encoder: one picture -> a ``(3, 224, 224)`` float32 tensor.

**What it accepts** (``load_image``; ``load_image_batch`` takes a list of them):

* a file path (``str`` / ``os.PathLike``), raw ``bytes``, or a binary file object, holding
  any format Pillow reads: PNG, JPEG, GIF (first frame), BMP, TIFF, WEBP, ICO, PPM, ...
  The format is detected from the content, not from the extension;
* a ``PIL.Image.Image`` (never modified);
* a numpy array: ``uint8`` of shape ``(H, W, 3)`` (RGB), ``(H, W, 4)`` (RGBA) or ``(H, W)``
  (grayscale), or a float array of the same shapes with values in ``[0, 1]`` (converted to
  8 bit as ``round(x * 255)``). The array is never modified.

**The pipeline** (ImageBind's ``load_and_transform_vision_data``, reproduced bit for bit):
``convert("RGB")``; bicubic resize (Pillow) so the short side is 224 and the long side
``int(224 * long / short)``; centre crop 224 x 224 at offsets ``round((side - 224) / 2)``;
divide by 255; normalise with the OpenAI-CLIP mean/std. Every golden image matches the
official output with difference 0.

**Official vs corrected** (``ImageOptions(mode=...)``; default ``"corrected"``):

* ``"official"``: exactly the above. Transparency is dropped without compositing (the colour
  under a transparent pixel shows, often black), EXIF orientation is ignored (phone photos
  may arrive rotated), 16-bit grayscale is clipped at 255 by Pillow.
* ``"corrected"``: first applies the EXIF orientation (``ImageOps.exif_transpose``), then
  composites images with transparency (RGBA, LA, PA, P or L/RGB with a transparency key)
  over a white background, and scales 16-bit grayscale (Pillow modes ``I;16*``) to 8 bit
  (``round(v / 257)``) instead of clipping; otherwise identical (an opaque, upright 8-bit
  image gives the same tensor).

**Errors** (:class:`~imagebind_llm.errors.InputError`, naming the file, the problem and the
accepted formats): missing or empty file, file larger than ``max_bytes``, content that is
not an image (e.g. a misnamed file), truncated or corrupt data (the whole image is decoded
up front, so truncation is always caught unless another library set Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES``), decompression bombs (``width * height`` above
``ImageOptions.max_pixels`` is refused from the header, before decoding; Pillow's own
``DecompressionBombError`` above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` is also reported as
InputError), arrays of the wrong shape or dtype, NaN/inf or out-of-range float arrays.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..constants import CLIP_MEAN, CLIP_STD
from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, DEFAULT_MODE, FileInput, Mode, Source, as_source, check_mode, load_each

__all__ = [
    "ACCEPTED_IMAGES",
    "DEFAULT_MAX_PIXELS",
    "ImageInput",
    "ImageOptions",
    "center_crop",
    "decode_source",
    "image_to_tensor",
    "load_image",
    "load_image_batch",
    "open_image",
    "prepare_rgb",
    "resize_short_side",
]

#: The default pixel limit: Pillow's own warning threshold (about 9459 x 9459).
DEFAULT_MAX_PIXELS = 89_478_485

ACCEPTED_IMAGES = (
    "an image file Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WEBP, ...), a PIL.Image, or a numpy "
    "array uint8 (H, W, 3), (H, W, 4) or (H, W) (float arrays with values in [0, 1] also work)"
)

ImageInput = FileInput | Image.Image | np.ndarray

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class ImageOptions:
    """Settings of the image pipeline.

    Attributes:
        size: output side (ImageBind: 224; also the resize target of the short side).
        mean, std: per-channel normalisation (OpenAI CLIP constants).
        mode: ``"official"`` or ``"corrected"`` (see the module docstring).
        max_pixels: refuse images with more pixels than this (read from the header, before
            decoding); ``None`` disables this check (Pillow's own hard limit of
            ``2 * PIL.Image.MAX_IMAGE_PIXELS`` still applies).
        background: RGB colour that transparent images are composited over (corrected mode).
    """

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: Mode = DEFAULT_MODE
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive or None, got {self.max_pixels!r}")


# --------------------------------------------------------------------------- geometry


def resize_short_side(img: Image.Image, size: int, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Pillow resize so that the short side becomes ``size`` and the long side
    ``int(size * long / short)`` (torchvision's ``Resize(size)`` rule). Returns a new image
    (or the same one if it already has that size)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centre crop ``size`` x ``size`` with offsets ``round((side - size) / 2)`` (the image
    must be at least ``size`` on both sides, which :func:`resize_short_side` guarantees)."""
    w, h = img.size
    top = round((h - size) / 2.0)  # Python's round (half to even), as torchvision
    left = round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


# --------------------------------------------------------------------------- opening


def _too_many_pixels(name: str, w: int, h: int, limit: int, accepted: str) -> InputError:
    return InputError(
        name,
        f"the image is too large ({w} x {h} = {w * h:,} pixels, limit {limit:,}); "
        "this looks like a decompression bomb (raise ImageOptions.max_pixels if it is genuine)",
        accepted,
    )


def open_image(
    source: FileInput,
    options: ImageOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
    accepted: str = ACCEPTED_IMAGES,
) -> Image.Image:
    """Open and fully decode an image file (path, bytes or binary file object) with all the
    checks described in the module docstring. Returns a loaded ``PIL.Image`` in its original
    mode (first frame for animations); nothing else is done to it."""
    options = options or ImageOptions()
    src = as_source(source, name=name, max_bytes=max_bytes, accepted=accepted)
    return decode_source(src, options.max_pixels, accepted)


def _extension_hint(suffix: str) -> str:
    """Why a file Pillow cannot identify was refused, from its extension: an image extension on
    other content (a renamed file), or an extension that is not an image's at all."""
    if not suffix:
        return ""
    if suffix in Image.registered_extensions():
        return f"; its content does not match the '{suffix}' extension"
    return f"; '{suffix}' is not an image extension"


def decode_source(src: Source, max_pixels: int | None, accepted: str = ACCEPTED_IMAGES) -> Image.Image:
    """:func:`open_image` for an already wrapped :class:`~imagebind_llm.preprocess.common.Source`."""
    data = src.read_bytes()
    with warnings.catch_warnings(record=True):
        # Pillow warns above MAX_IMAGE_PIXELS; our own max_pixels decides instead.
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise src.error(f"the image is too large for Pillow to open safely ({e})", accepted) from None
        except UnidentifiedImageError:
            raise src.error(f"not a recognised image file{_extension_hint(src.suffix)}", accepted) from None
        except Exception as e:  # noqa: BLE001 - a broken header, whatever Pillow raises
            raise src.error(f"corrupt image file ({type(e).__name__}: {e})", accepted) from None
        w, h = img.size
        if w < 1 or h < 1:
            raise src.error(f"the image has no pixels ({w} x {h})", accepted)
        if max_pixels is not None and w * h > max_pixels:
            raise _too_many_pixels(src.name, w, h, max_pixels, accepted)
        try:
            # Structural check first (PNG: every chunk's CRC up to IEND), then a full decode:
            # truncated or corrupt data fails here, not later.
            Image.open(io.BytesIO(data)).verify()
            img.load()
        except Image.DecompressionBombError as e:
            raise src.error(f"the image is too large for Pillow to open safely ({e})", accepted) from None
        except Exception as e:  # noqa: BLE001 - whatever the decoder raises
            raise src.error(f"truncated or corrupt image data ({type(e).__name__}: {e})", accepted) from None
    return img


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    accepted = ACCEPTED_IMAGES
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        pil_mode = "RGB" if arr.shape[2] == 3 else "RGBA"
    elif arr.ndim == 2:
        pil_mode = "L"
    else:
        raise InputError(name, f"array of shape {tuple(arr.shape)} is not an image", accepted)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(name, f"the array is empty (shape {tuple(arr.shape)})", accepted)
    if arr.dtype == np.uint8:
        data = arr
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(name, "the float array contains NaN or infinite values", accepted)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(name, f"float array values must lie in [0, 1], found [{lo:g}, {hi:g}]", accepted)
        data = np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise InputError(name, f"unsupported array dtype {arr.dtype}", accepted)
    img = Image.fromarray(np.ascontiguousarray(data))
    assert img.mode == pil_mode, img.mode
    return img


def _to_pil(
    source: Any, options: ImageOptions, max_bytes: int | None, name: str | None
) -> tuple[Image.Image, str]:
    if isinstance(source, Image.Image):
        label = name or "<PIL image>"
        w, h = source.size
        if w < 1 or h < 1:
            raise InputError(label, f"the image has no pixels ({w} x {h})", ACCEPTED_IMAGES)
        if options.max_pixels is not None and w * h > options.max_pixels:
            raise _too_many_pixels(label, w, h, options.max_pixels, ACCEPTED_IMAGES)
        try:
            source.load()
        except Exception as e:  # noqa: BLE001 - whatever the decoder raises
            raise InputError(
                label, f"truncated or corrupt image data ({type(e).__name__}: {e})", ACCEPTED_IMAGES
            ) from None
        return source, label
    if isinstance(source, np.ndarray):
        label = name or "<array>"
        return _array_to_pil(source, label), label
    if isinstance(source, torch.Tensor):
        raise InputError(
            name or "<tensor>",
            "torch tensors are not accepted as images (convert with tensor.numpy(), layout (H, W, 3) uint8)",
            ACCEPTED_IMAGES,
        )
    src = as_source(source, name=name, max_bytes=max_bytes, accepted=ACCEPTED_IMAGES)
    return decode_source(src, options.max_pixels), src.name


# --------------------------------------------------------------------------- pixels


def _sixteen_bit_to_8bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))


def prepare_rgb(img: Image.Image, options: ImageOptions | None = None) -> Image.Image:
    """The mode handling before resizing: official = ``img.convert("RGB")``; corrected = EXIF
    orientation, 16-bit to 8-bit scaling, compositing over ``options.background``, then RGB.
    Always returns a new image; the input is untouched."""
    options = options or ImageOptions()
    if options.mode == "official":
        return img.convert("RGB")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001, S110 - a broken EXIF block
        pass  # a broken EXIF block: keep the pixels as stored
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _sixteen_bit_to_8bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, tuple(options.background) + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_to_tensor(rgb: Image.Image, options: ImageOptions | None = None) -> torch.Tensor:
    """Resize (short side), centre crop, scale to [0, 1] and normalise an RGB ``PIL.Image``."""
    options = options or ImageOptions()
    if rgb.mode != "RGB":
        raise ValueError(f"image_to_tensor expects an RGB image, got mode {rgb.mode}")
    img = center_crop(resize_short_side(rgb, options.size), options.size)
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    mean = torch.tensor(options.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(options.std, dtype=torch.float32).view(3, 1, 1)
    return x.sub(mean).div(std)


# --------------------------------------------------------------------------- public


def load_image(
    source: ImageInput,
    options: ImageOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> torch.Tensor:
    """Load one image as a ``(3, size, size)`` float32 tensor (see the module docstring).

    Args:
        source: path, bytes, binary file object, ``PIL.Image`` or numpy array.
        options: :class:`ImageOptions` (default: corrected mode, 224, CLIP normalisation).
        max_bytes: refuse files larger than this (``None``: no limit).
        name: what to call the input in error messages (default: the file name).
    """
    options = options or ImageOptions()
    img, _ = _to_pil(source, options, max_bytes, name)
    return image_to_tensor(prepare_rgb(img, options), options)


def load_image_batch(
    sources: Sequence[ImageInput],
    options: ImageOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Load several images as a ``(B, 3, size, size)`` tensor. An error names the failing
    item by its index, e.g. ``"image 2 (cat.png): ..."``."""
    return torch.stack(load_each(sources, lambda s: load_image(s, options, max_bytes=max_bytes), "image",
                                 ACCEPTED_IMAGES))
