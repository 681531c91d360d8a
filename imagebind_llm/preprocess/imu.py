"""IMU input for ImageBind's IMU encoder: one recording -> a ``(6, 2000)`` float32 tensor.

Neither ImageBind nor ImageBind-LLM ships an IMU loader. ImageBind's IMU encoder was trained
on Ego4D's head-mounted IMU: 6 channels, **accelerometer x, y, z then gyroscope x, y, z**,
2000 time steps per window, values in physical units (Ego4D: m/s² and rad/s). The model
cuts the 2000 steps into 250 windows of 8, so the channel order and the time scale matter.

**What it accepts** (``load_imu``; ``load_imu_batch`` takes a list):

* a ``.npy`` array of shape ``(6, T)`` or ``(T, 6)``. With ``layout="auto"`` (default) the
  axis of length 6 is the channel axis; if both axes are 6 the array is read as
  ``(6, T)``, the model's own layout. Force it with ``layout="channels_first"`` /
  ``"time_first"``;
* a ``.csv`` file (comma, semicolon or tab separated; lines starting with ``#`` ignored)
  with one row per time step and 6 numeric columns ``ax, ay, az, gx, gy, gz``; an optional
  header row is detected (first row not numeric). Other columns (a timestamp, ...) need
  ``IMUOptions(columns=...)`` with 6 column indices or header names, in channel order;
* the same data as an in-memory numpy array or torch tensor (``(6, T)`` or ``(T, 6)``);
* paths, ``bytes`` or binary file objects.

**The conversion**:

1. optional unit scaling: accelerometer x ``accel_scale`` (e.g. 9.80665 for data in g),
   gyroscope x ``gyro_scale`` (e.g. ``math.pi / 180`` for deg/s). Defaults 1 (no change);
2. length to ``num_steps`` (2000), ``length_mode``:
   * ``"crop"`` (default): longer recordings keep their **centre** 2000 steps (start
     ``(T - 2000) // 2``); shorter ones are padded at both ends (centred) by repeating the
     first / last sample. The sampling rate is kept, so motion frequencies stay as
     recorded -- resample your data to the sensor rate you want covered beforehand;
   * ``"resample"``: linear interpolation of the whole recording onto 2000 evenly spaced
     points (first and last samples kept). This squeezes or stretches time;
3. float32. No mean/std normalisation (none is published for ImageBind's IMU input).

**Errors** (:class:`~imagebind_llm.errors.InputError`, naming the file): missing, empty,
too large or corrupt files; unsupported extensions; no axis of length 6 (wrong channel
count) or not 2-D; empty recordings; non-numeric CSV cells or ragged rows; NaN or infinite
values; non-numeric dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, FileInput, Source, as_source, load_each, tensor_to_numpy
from .depth import _NPY_MAGIC, _load_npy

__all__ = [
    "ACCEPTED_IMU",
    "IMU_CHANNELS",
    "IMUInput",
    "IMUOptions",
    "fit_length",
    "load_imu",
    "load_imu_batch",
    "read_imu",
]

IMU_CHANNELS = ("accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z")

ACCEPTED_IMU = (
    "a .npy array (6, T) or (T, 6), or a .csv with 6 numeric columns (accelerometer x, y, z, "
    "gyroscope x, y, z; optional header row), or such a numpy array / torch tensor"
)

IMUInput = FileInput | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class IMUOptions:
    """Settings of the IMU pipeline.

    Attributes:
        num_steps: output length (ImageBind: 2000; must be a multiple of 8 for the model).
        length_mode: ``"crop"`` (centre crop / edge pad, default) or ``"resample"`` (linear).
        layout: ``"auto"``, ``"channels_first"`` ``(6, T)`` or ``"time_first"`` ``(T, 6)``.
        accel_scale, gyro_scale: factors applied to channels 0-2 and 3-5.
        columns: for CSV files with more than 6 columns: the 6 columns to use (indices or
            header names) in the order ax, ay, az, gx, gy, gz.
    """

    num_steps: int = 2000
    length_mode: Literal["crop", "resample"] = "crop"
    layout: Literal["auto", "channels_first", "time_first"] = "auto"
    accel_scale: float = 1.0
    gyro_scale: float = 1.0
    columns: tuple[int | str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}")
        if self.length_mode not in ("crop", "resample"):
            raise ValueError(f"length_mode must be 'crop' or 'resample', got {self.length_mode!r}")
        if self.layout not in ("auto", "channels_first", "time_first"):
            raise ValueError(f"layout must be 'auto', 'channels_first' or 'time_first', got {self.layout!r}")
        if not (math.isfinite(self.accel_scale) and math.isfinite(self.gyro_scale)):
            raise ValueError("accel_scale and gyro_scale must be finite")
        if self.columns is not None:
            if len(self.columns) != 6:
                raise ValueError(f"columns must name exactly 6 columns, got {len(self.columns)}")
            object.__setattr__(self, "columns", tuple(self.columns))


# --------------------------------------------------------------------------- reading


def _orient(arr: np.ndarray, name: str, layout: str) -> np.ndarray:
    """Return ``(6, T)``."""
    if arr.ndim != 2:
        raise InputError(
            name, f"expected a 2-D array (6, T) or (T, 6), got shape {tuple(arr.shape)}", ACCEPTED_IMU
        )
    if arr.size == 0:
        raise InputError(name, f"the recording is empty (shape {tuple(arr.shape)})", ACCEPTED_IMU)
    rows, cols = arr.shape
    if layout == "channels_first" or (layout == "auto" and rows == 6):
        if rows != 6:
            raise InputError(
                name, f"expected 6 channels in the first axis, got shape {tuple(arr.shape)}", ACCEPTED_IMU
            )
        return arr
    if layout == "time_first" or (layout == "auto" and cols == 6):
        if cols != 6:
            raise InputError(
                name, f"expected 6 channels in the second axis, got shape {tuple(arr.shape)}", ACCEPTED_IMU
            )
        return arr.T
    raise InputError(
        name,
        f"no axis of length 6 in shape {tuple(arr.shape)}; IMU data needs 6 channels "
        "(accelerometer x, y, z, gyroscope x, y, z)",
        ACCEPTED_IMU,
    )


def _check_values(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind not in "iuf":
        raise InputError(name, f"unsupported array dtype {arr.dtype} (need numbers)", ACCEPTED_IMU)
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise InputError(
            name,
            f"the recording contains NaN or infinite values (first at channel {bad[0]}, step {bad[1]})",
            ACCEPTED_IMU,
        )
    return values


def _split(line: str, delimiter: str | None) -> list[str]:
    return [c.strip() for c in (line.split(delimiter) if delimiter else line.split())]


def _parse_csv(src: Source, options: IMUOptions) -> np.ndarray:
    try:
        text = src.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise src.error("not a text (UTF-8) CSV file", ACCEPTED_IMU) from None
    lines = [
        (i + 1, ln)
        for i, ln in enumerate(text.splitlines())
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        raise src.error("the CSV file has no data rows", ACCEPTED_IMU)
    first = lines[0][1]
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)

    header: list[str] | None = None
    cells = _split(first, delimiter)
    if not all(_is_number(c) for c in cells):
        header = cells
        lines = lines[1:]
        if not lines:
            raise src.error("the CSV file has a header but no data rows", ACCEPTED_IMU)

    width = len(header) if header is not None else len(_split(lines[0][1], delimiter))
    if options.columns is None:
        if width != 6:
            raise src.error(
                f"the CSV file has {width} columns; expected 6 (ax, ay, az, gx, gy, gz), "
                "or choose them with IMUOptions(columns=...)",
                ACCEPTED_IMU,
            )
        picks = list(range(6))
    else:
        picks = []
        for c in options.columns:
            if isinstance(c, str):
                if header is None or c not in header:
                    raise src.error(f"column '{c}' not found in the CSV header {header}", ACCEPTED_IMU)
                picks.append(header.index(c))
            else:
                if not 0 <= int(c) < width:
                    raise src.error(
                        f"column index {c} out of range (the file has {width} columns)", ACCEPTED_IMU
                    )
                picks.append(int(c))

    data = np.empty((len(lines), 6), dtype=np.float64)
    for r, (lineno, line) in enumerate(lines):
        row = _split(line, delimiter)
        if len(row) != width:
            raise src.error(f"line {lineno} has {len(row)} columns, expected {width}", ACCEPTED_IMU)
        for k, c in enumerate(picks):
            try:
                data[r, k] = float(row[c])
            except ValueError:
                raise src.error(
                    f"line {lineno}, column {c + 1}: {row[c]!r} is not a number", ACCEPTED_IMU
                ) from None
    return data.T  # (6, T)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def read_imu(
    source: IMUInput,
    options: IMUOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> tuple[np.ndarray, str]:
    """Read an IMU input as a float64 ``(6, T)`` array (checked: finite, non-empty) and the
    name used in messages. No scaling and no length change."""
    options = options or IMUOptions()
    if isinstance(source, torch.Tensor):
        label = name or "<tensor>"
        arr = _orient(tensor_to_numpy(source), label, options.layout)
    elif isinstance(source, np.ndarray):
        label = name or "<array>"
        arr = _orient(source, label, options.layout)
    else:
        src = as_source(source, name=name, max_bytes=max_bytes, accepted=ACCEPTED_IMU)
        label = src.name
        suffix = src.suffix
        if not suffix:
            suffix = ".npy" if src.read_bytes().startswith(_NPY_MAGIC) else ".csv"
        if suffix == ".npy":
            arr = _orient(_load_npy(src, ACCEPTED_IMU), label, options.layout)
        elif suffix == ".csv":
            arr = _parse_csv(src, options)
        else:
            raise src.error(f"unsupported file extension '{src.suffix}'", ACCEPTED_IMU)
    return _check_values(arr, label), label


# --------------------------------------------------------------------------- length


def fit_length(x: np.ndarray, num_steps: int, mode: str = "crop") -> np.ndarray:
    """``(C, T)`` -> ``(C, num_steps)`` by centre crop / edge padding or linear resampling."""
    t = x.shape[1]
    if t == num_steps:
        return x.copy()
    if mode == "resample":
        if t == 1:
            return np.repeat(x, num_steps, axis=1)
        src_pos = np.arange(t, dtype=np.float64)
        dst_pos = np.linspace(0.0, t - 1, num_steps)
        return np.stack([np.interp(dst_pos, src_pos, ch) for ch in x])
    if t > num_steps:
        start = (t - num_steps) // 2
        return x[:, start : start + num_steps].copy()
    before = (num_steps - t) // 2
    return np.pad(x, ((0, 0), (before, num_steps - t - before)), mode="edge")


# --------------------------------------------------------------------------- public


def load_imu(
    source: IMUInput,
    options: IMUOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> torch.Tensor:
    """Load one IMU recording as a ``(6, num_steps)`` float32 tensor (see the module docstring)."""
    options = options or IMUOptions()
    data, _ = read_imu(source, options, max_bytes=max_bytes, name=name)
    scale = np.array([options.accel_scale] * 3 + [options.gyro_scale] * 3, dtype=np.float64)[:, None]
    out = fit_length(data * scale, options.num_steps, options.length_mode)
    return torch.from_numpy(out.astype(np.float32))


def load_imu_batch(
    sources: Sequence[IMUInput],
    options: IMUOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Load several recordings as a ``(B, 6, num_steps)`` tensor; errors name the item index."""
    return torch.stack(load_each(sources, lambda s: load_imu(s, options, max_bytes=max_bytes), "imu", ACCEPTED_IMU))
