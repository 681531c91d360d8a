"""Preprocessing: a user's file, bytes or in-memory object -> the tensor an ImageBind encoder takes.

One module per modality (image, video, audio, text, depth, thermal, imu, point), each pure
(no device logic) and importable alone. This package adds one entry point over them,
:func:`load`, and :func:`guess_kind`, which tells what a dropped file is. Input *kinds* are what
a user has ("image", "video", ...); two kinds share the ``vision`` encoder.

Modules are imported lazily so that importing the package stays cheap.
"""

from __future__ import annotations

import importlib
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, DEFAULT_MODE, MODES, Mode, check_mode, load_each

#: Input kind -> ImageBind modality (the encoder that embeds it).
KIND_TO_MODALITY = {
    "image": "vision", "video": "vision", "text": "text", "audio": "audio", "depth": "depth",
    "thermal": "thermal", "imu": "imu", "point": "point",
}
KINDS = tuple(KIND_TO_MODALITY)

# kind -> (module, single-item loader, options class)
_LOADERS = {
    "image": ("image", "load_image", "ImageOptions"),
    "video": ("video", "load_video", "VideoOptions"),
    "audio": ("audio", "load_audio", "AudioOptions"),
    "depth": ("depth", "load_depth", "DepthOptions"),
    "thermal": ("thermal", "load_thermal", "ThermalOptions"),
    "imu": ("imu", "load_imu", "IMUOptions"),
    "point": ("point", "load_point_cloud", "PointOptions"),
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac")
MESH_EXTENSIONS = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
CLOUD_EXTENSIONS = (".pt", ".pth", ".pcd", ".xyz", ".pts")
IMU_EXTENSIONS = (".csv",)


def _module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


@dataclass(frozen=True)
class PreprocessOptions:
    """Options of every modality in one object. ``mode`` and ``max_bytes`` apply to all;
    a per-kind options object (e.g. ``options={"point": PointOptions(num_points=4096)}``)
    overrides the defaults of that kind (its own ``mode`` is replaced by ``mode``)."""

    mode: Mode = DEFAULT_MODE
    max_bytes: int | None = DEFAULT_MAX_BYTES
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        unknown = set(self.options) - set(_LOADERS) - {"text"}
        if unknown:
            raise ValueError(f"unknown input kinds in options: {sorted(unknown)}; known: {KINDS}")

    def for_kind(self, kind: str):
        if kind == "text":
            module, cls = "text", "TextOptions"
        else:
            module, _, cls = _LOADERS[kind]
        options_class = getattr(_module(module), cls)
        given = self.options.get(kind) or options_class()
        # depth, thermal and IMU have no official loader, hence no mode
        return replace(given, mode=self.mode) if hasattr(given, "mode") else given


def check_kind(kind: str) -> str:
    if kind not in KIND_TO_MODALITY:
        raise InputError(str(kind), "unknown input kind", ", ".join(KINDS))
    return kind


def load(kind: str, item: Any, options: PreprocessOptions | None = None, *, name: str | None = None) -> torch.Tensor:
    """One item -> its model input without a batch axis (text: one (77,) row of token ids)."""
    check_kind(kind)
    options = options or PreprocessOptions()
    if kind == "text":
        return _module("text").tokenize([item], options.for_kind("text"))[0]
    module, function, _ = _LOADERS[kind]
    loader = getattr(_module(module), function)
    return loader(item, options.for_kind(kind), max_bytes=options.max_bytes, name=name)


def load_batch(kind: str, items: Sequence[Any], options: PreprocessOptions | None = None) -> torch.Tensor:
    """Several items of one kind, stacked: (B, ...)."""
    if kind == "text":
        return _module("text").tokenize(list(items), (options or PreprocessOptions()).for_kind("text"))
    return torch.stack(load_each(list(items), lambda item: load(kind, item, options), kind, f"{kind} inputs"))


def guess_kind(path_or_name: str | Path, data: bytes | None = None) -> str | None:
    """What a file most likely is, from its extension, a kind word in its name (``*_depth.png``,
    ``thermal_*.png``, ``*.imu.npy``) and, for .npy / 16-bit PNG, its content. None if unknown.

    Ambiguous containers: ``.npy`` is a point cloud (N, 3), an IMU trace (6, T)/(T, 6) or a depth
    map (H, W); a 16-bit grayscale PNG is a depth map; ``.obj``/``.ply`` are 3D. A kind word in the
    name wins: name an (N, 6) cloud with normals ``chair_points.npy``, or it reads as IMU.
    """
    path = Path(path_or_name)
    name, suffix = path.name.lower(), path.suffix.lower()
    stem_words = set(name.replace("-", "_").replace(".", "_").split("_"))
    for word, kind in (("depth", "depth"), ("thermal", "thermal"), ("imu", "imu"), ("points", "point"),
                       ("pointcloud", "point")):
        if word in stem_words:
            return kind
    if suffix in _module("video").VIDEO_EXTENSIONS and suffix not in (".m4a",):
        return "video"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in MESH_EXTENSIONS or suffix in CLOUD_EXTENSIONS:
        return "point"
    if suffix in IMU_EXTENSIONS:
        return "imu"
    if suffix == ".npy":
        return _guess_npy(path, data)
    if suffix in IMAGE_EXTENSIONS:
        if suffix in (".png", ".tif", ".tiff") and _is_16bit_gray(path, data):
            return "depth"
        return "image"
    return None


def _read_head(path: Path, data: bytes | None, size: int = 4096) -> bytes | None:
    if data is not None:
        return data[:size]
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return None


def npy_shape(path: str | Path, data: bytes | None = None) -> tuple[int, ...] | None:
    """The array shape in a .npy file's header (nothing else is read), or None when the file is
    not a readable .npy array."""
    import numpy as np

    head = _read_head(Path(path), data)
    if head is None:
        return None
    try:
        stream = io.BytesIO(head)
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read_header(stream)[0])
    except Exception:  # noqa: BLE001 - numpy raises ValueError, EOFError, SyntaxError, ... for other bytes
        return None


#: What each kind of .npy array must look like (for the error when an array is none of them).
NPY_LAYOUTS = "a point cloud (N, 3), an IMU recording (6, T) or (T, 6), or a depth map (H, W) of at least 16 x 16"


def _guess_npy(path: Path, data: bytes | None) -> str | None:
    shape = npy_shape(path, data)
    if shape is None or len(shape) != 2:
        return None
    if shape[1] == 3:
        return "point"
    if 6 in shape:
        return "imu"
    return "depth" if min(shape) >= 16 else None


def _is_16bit_gray(path: Path, data: bytes | None) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            return img.mode.startswith("I;16") or img.mode == "I"
    except Exception:
        return False


__all__ = [
    "KINDS", "KIND_TO_MODALITY", "MODES", "DEFAULT_MODE", "PreprocessOptions", "load", "load_batch",
    "guess_kind", "check_kind", "npy_shape", "NPY_LAYOUTS",
]
