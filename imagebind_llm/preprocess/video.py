"""Video preprocessing: a video file or an in-memory clip -> the ImageBind vision input.

Output of :func:`load_video`: a float32 CPU tensor of shape
``(clips_per_video * num_crops, 3, frames_per_clip, size, size)`` = ``(15, 3, 2, 224, 224)``
with the defaults, rows ordered clip-major (row ``r`` is clip ``r // num_crops``, spatial crop
``r % num_crops``; crop 0 = left/top, 1 = centre, 2 = right/bottom). The model embeds every
row and averages the 15 embeddings.

The pipeline is the official ``load_and_transform_video_data`` (reference.md 2.4), written
from its formulas:

1. **Clip windows** (``ConstantClipsPerVideoSampler(2, 5)``), in exact rational seconds:
   ``max_start = max(duration - 2, 0)``, clip ``k`` = ``[k * step, k * step + 2)`` with
   ``step = max_start / 5`` (official) or ``max_start / 4`` (corrected, see below).
2. **Frames of a window**: every frame whose presentation time ``t`` satisfies
   ``start <= t < end`` (the official ``ceil(start / time_base) <= pts < ceil(end / time_base)``
   is the same rule for integer ``pts``). Times are exact fractions: for a constant frame rate
   ``t_i = i / fps`` with ``fps`` the stream's exact rate; float seconds would pick wrong frames
   (e.g. ``25 * 11/5`` in floating point).
3. **Temporal subsample** (``UniformTemporalSubsample(2)``): indices
   ``linspace(0, T - 1, frames_per_clip)`` truncated, i.e. the first and the last frame of the
   window.
4. ``/ 255``, **short-side resize** to 224 (bilinear, ``align_corners=False``, no antialias, on
   float frames; long side ``floor(long / short * 224)``), **CLIP normalisation** per channel,
   **3 spatial crops** at offsets ``0, ceil((L - 224) / 2), L - 224`` along the long side.

Only the selected frames are decoded: the container is indexed (no decoding) by decord and
``VideoReader.get_batch`` seeks to the needed frames, so a long video costs about as much as
a short one.

Frame timing, as read through decord:

* MP4/MOV/M4V/3GP: constant frame rate when the container timestamps agree with ``i / fps``
  (``fps`` = the stream's average rate, recovered as an exact fraction); otherwise (variable
  frame rate) the container timestamps rounded to microseconds are used, which can move a
  frame that lies within a few microseconds of a window edge.
* AVI: always ``i / fps`` (AVI timestamps are unreliable).
* MKV/WebM: the container's millisecond timestamps, recovered exactly.

Modes (``VideoOptions.mode``; default :data:`~imagebind_llm.preprocess.common.DEFAULT_MODE`):

* ``"official"`` reproduces ImageBind-LLM (run with the PyPI pytorchvideo 0.1.5) bit for bit:
  the clip step divides by ``clips_per_video`` (not ``clips_per_video - 1``), so the last
  window ends ``max_start / 5`` before the end of the video and the tail is never seen; and for
  MKV/WebM (whose streams carry no duration for PyAV) the duration is the *start* time of the
  last frame, not its end.
* ``"corrected"`` divides the step by ``max(clips_per_video - 1, 1)`` (the fix pytorchvideo
  made upstream, which the original ImageBind's pinned pytorchvideo commit contains), so the
  windows cover the whole video, and uses the end of the last frame as the duration for every
  container. Everything else is identical; videos of at most 2 s give the same tensor in
  both modes.

Decisions that hold in both modes: a video must have at least 2 frames (the official code
would repeat a single frame; here that is an :class:`InputError`); a 2-frame video gives the
pair (frame 0, frame 1) in every clip; a window that contains no frame (frame rate below one
frame per clip duration, or a long gap in a variable-rate video) is an :class:`InputError`
(the official code crashes there); display rotation metadata is ignored (as PyAV's
``to_rgb`` does).

An in-memory clip is a tuple ``(frames, fps)``: ``frames`` a uint8 array or tensor of shape
``(T, H, W, 3)`` (RGB), ``fps`` its frame rate (int, :class:`~fractions.Fraction`, float or a
string such as ``"30000/1001"``). Frame ``i`` is shown at ``i / fps`` and the clip lasts
``T / fps`` seconds, like a constant-rate file.
"""

from __future__ import annotations

import io
import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CLIP_MEAN, CLIP_STD
from ..errors import InputError
from .common import DEFAULT_MAX_BYTES, DEFAULT_MODE, FileInput, Mode, Source, as_source, check_mode, load_each

logger = logging.getLogger(__name__)

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoOptions",
    "VideoPlan",
    "clip_windows",
    "load_video",
    "load_video_batch",
    "probe_video",
    "uniform_subsample_indices",
]

# Official defaults (reference.md 2.4).
DEFAULT_CLIP_DURATION = 2  # seconds
DEFAULT_CLIPS_PER_VIDEO = 5
DEFAULT_FRAMES_PER_CLIP = 2  # UniformTemporalSubsample(num_samples=clip_duration)
DEFAULT_SIZE = 224  # ShortSideScale and SpatialCrop size
DEFAULT_NUM_CROPS = 3
SUPPORTED_NUM_CROPS = (1, 3)  # what the official SpatialCrop supports: centre only, or 3

# Limits on what a caller may hand us (besides the byte limit of common.as_source).
DEFAULT_MAX_FRAMES = 1_000_000  # about 9 hours at 30 fps
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD
MIN_FRAMES = 2

# A frame rate read as a float (decord's average fps) is turned back into the exact rational
# the container stores; every rate with a denominator up to this is recovered exactly.
FPS_MAX_DENOMINATOR = 100_000
# Matroska/WebM timestamps count milliseconds (the default TimestampScale).
MATROSKA_TICK = Fraction(1, 1000)
# Variable-rate timestamps are rounded to this grid.
VFR_TICK = Fraction(1, 1_000_000)
# Timestamps agree with a constant rate when they are within this many seconds of i / fps
# (and within a quarter frame); decord stores them as float32, hence the relative slack.
CFR_TOLERANCE_SEC = 1e-3
CFR_MAX_FRAME_FRACTION = 0.25
FLOAT32_RELATIVE_SLACK = 2.0**-22
# How far a timestamp may be from a tick of the expected grid to count as "on the grid".
GRID_SNAP_TOLERANCE = 0.05  # in ticks
SNIFF_BYTES = 64
# decord's decoder threads: 0 = FFmpeg's automatic choice. Some streams (e.g. realtime VP9,
# as browsers record) make the multi-threaded decoder fail; decoding is then retried once
# with a single thread before the file is called corrupt.
DECODER_THREADS = 0
FALLBACK_DECODER_THREADS = 1

# Container families, recognised by extension and by content.
_ISO_BMFF = "MP4/QuickTime"
_MATROSKA = "Matroska/WebM"
_AVI = "AVI"
_FAMILY_EXTENSIONS = {
    _ISO_BMFF: (".mp4", ".m4v", ".mov", ".3gp"),
    _MATROSKA: (".mkv", ".webm"),
    _AVI: (".avi",),
}
VIDEO_EXTENSIONS: tuple[str, ...] = tuple(e for exts in _FAMILY_EXTENSIONS.values() for e in exts)
_EXTENSION_FAMILY = {e: fam for fam, exts in _FAMILY_EXTENSIONS.items() for e in exts}
_ISO_BMFF_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")

ACCEPTED = (
    f"a video file ({' '.join(VIDEO_EXTENSIONS)}) with at least {MIN_FRAMES} frames, "
    "or a tuple (frames, fps) with frames a uint8 RGB array of shape (T, H, W, 3)"
)

#: An in-memory clip: ``(frames, fps)``.
FramesAndRate = tuple[np.ndarray | torch.Tensor, int | float | str | Fraction]
VideoInput = FileInput | FramesAndRate


# --------------------------------------------------------------------------------------------
# Options and plan


@dataclass(frozen=True)
class VideoOptions:
    """Everything that shapes the video tensor. The sizes default to the official ones; the
    mode defaults to ``common.DEFAULT_MODE``. Invalid values raise ``ValueError``.

    Attributes:
        clip_duration: length of each clip window in seconds, kept as an exact fraction
            (int, Fraction, str such as "5/2", or a float read as the nearest simple fraction).
        clips_per_video: number of windows spread over the video.
        frames_per_clip: frames kept per window (uniformly, first and last included).
        size: short side after resizing and side of the square crops, in pixels.
        num_crops: 3 (left/top, centre, right/bottom) or 1 (centre).
        mean, std: per-channel RGB normalisation (CLIP constants).
        mode: "official" or "corrected" (see the module docstring).
        max_frames: videos (or arrays) with more frames are refused.
        max_frame_pixels: videos whose frames have more pixels (H * W) are refused.
    """

    clip_duration: Fraction = Fraction(DEFAULT_CLIP_DURATION)
    clips_per_video: int = DEFAULT_CLIPS_PER_VIDEO
    frames_per_clip: int = DEFAULT_FRAMES_PER_CLIP
    size: int = DEFAULT_SIZE
    num_crops: int = DEFAULT_NUM_CROPS
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: Mode = DEFAULT_MODE
    max_frames: int = DEFAULT_MAX_FRAMES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "clip_duration", _positive_fraction(self.clip_duration, "VideoOptions.clip_duration")
        )
        for field in ("clips_per_video", "frames_per_clip", "size", "max_frames", "max_frame_pixels"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"VideoOptions.{field} must be a positive integer, got {value!r}")
        if self.num_crops not in SUPPORTED_NUM_CROPS:
            raise ValueError(
                f"VideoOptions.num_crops must be one of {SUPPORTED_NUM_CROPS}, got {self.num_crops!r}"
            )
        for field in ("mean", "std"):
            value = tuple(getattr(self, field))
            if len(value) != 3 or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in value):
                raise ValueError(f"VideoOptions.{field} must be 3 finite numbers (R, G, B), got {value!r}")
            object.__setattr__(self, field, tuple(float(v) for v in value))
        if any(v <= 0 for v in self.std):
            raise ValueError(f"VideoOptions.std must be positive, got {self.std!r}")
        try:
            check_mode(self.mode)
        except ValueError as e:
            raise ValueError(f"VideoOptions.mode: {e}") from None

    @property
    def output_shape(self) -> tuple[int, int, int, int, int]:
        """Shape of :func:`load_video`'s result."""
        return (self.clips_per_video * self.num_crops, 3, self.frames_per_clip, self.size, self.size)


@dataclass(frozen=True)
class VideoPlan:
    """Which frames the pipeline uses, computed from the container index without decoding.

    Attributes:
        name: the input's name (for messages).
        num_frames: frames in the video stream.
        fps: the exact (average) frame rate.
        timing: "constant-rate" (t_i = i / fps), "container-ms" (Matroska millisecond
            timestamps) or "timestamps" (variable rate, microsecond-rounded).
        duration: the duration the clip sampler used, in seconds (exact).
        clip_windows: ``(start, end)`` of each clip in seconds (exact), end exclusive.
        clip_frame_indices: all frame indices inside each window (presentation order).
        selected_frame_indices: the ``frames_per_clip`` indices kept per window.
        mode: the mode the plan was made for.
    """

    name: str
    num_frames: int
    fps: Fraction
    timing: str
    duration: Fraction
    clip_windows: tuple[tuple[Fraction, Fraction], ...]
    clip_frame_indices: tuple[range, ...]
    selected_frame_indices: tuple[tuple[int, ...], ...]
    mode: Mode

    @property
    def needed_frames(self) -> list[int]:
        """The distinct frame indices to decode, ascending."""
        return sorted({i for clip in self.selected_frame_indices for i in clip})


# --------------------------------------------------------------------------------------------
# Pure helpers (no I/O)


def clip_windows(
    duration: Fraction | int,
    *,
    clip_duration: Fraction | int = DEFAULT_CLIP_DURATION,
    clips_per_video: int = DEFAULT_CLIPS_PER_VIDEO,
    mode: Mode = DEFAULT_MODE,
) -> list[tuple[Fraction, Fraction]]:
    """``ConstantClipsPerVideoSampler`` in exact arithmetic: ``clips_per_video`` windows
    ``[k * step, k * step + clip_duration)``. ``step = max(duration - clip_duration, 0) / n``
    with ``n = clips_per_video`` (official) or ``max(clips_per_video - 1, 1)`` (corrected).
    A video not longer than ``clip_duration`` gives identical windows ``[0, clip_duration)``."""
    check_mode(mode)
    duration = Fraction(duration)
    clip_duration = Fraction(clip_duration)
    max_start = max(duration - clip_duration, Fraction(0))
    divisor = clips_per_video if mode == "official" else max(clips_per_video - 1, 1)
    step = max_start / divisor
    return [(k * step, k * step + clip_duration) for k in range(clips_per_video)]


def uniform_subsample_indices(num_frames: int, num_samples: int) -> list[int]:
    """``UniformTemporalSubsample``: ``linspace(0, T - 1, num_samples)`` truncated to integers
    (computed with torch's float32 linspace, as the official transform does)."""
    if num_frames < 1 or num_samples < 1:
        raise ValueError(f"need num_frames >= 1 and num_samples >= 1, got {num_frames}, {num_samples}")
    positions = torch.linspace(0, num_frames - 1, num_samples)
    return torch.clamp(positions, 0, num_frames - 1).long().tolist()


def _positive_fraction(value: Any, what: str) -> Fraction:
    """An exact positive rational from an int, Fraction or str (``"30000/1001"``), or from a
    float read as the nearest fraction with a denominator up to ``FPS_MAX_DENOMINATOR``
    (so ``29.97`` -> 2997/100 and ``30000 / 1001`` -> 30000/1001)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (numbers.Rational, str)):
            result = Fraction(value)
        elif isinstance(value, numbers.Real):  # float, numpy floats
            value_f = float(value)
            if not math.isfinite(value_f):
                raise ValueError
            result = Fraction(value_f).limit_denominator(FPS_MAX_DENOMINATOR)
        else:
            raise TypeError
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(
            f"{what} must be a positive number (int, Fraction, float or str), got {value!r}"
        ) from None
    if result <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return result


@dataclass(frozen=True)
class _Timeline:
    """Presentation times of a stream's frames, exact.

    Constant rate: ``ticks is None`` and frame ``i`` is at ``i / fps``. Otherwise frame ``i`` is
    at ``ticks[i] * tick`` (ascending integers)."""

    num_frames: int
    fps: Fraction
    timing: str
    ticks: np.ndarray | None = None
    tick: Fraction = Fraction(1)
    end_tick: int | None = None  # end of the last frame, in ticks, if the container says

    @property
    def last_start(self) -> Fraction:
        if self.ticks is None:
            return (self.num_frames - 1) / self.fps
        return int(self.ticks[-1]) * self.tick

    @property
    def end(self) -> Fraction:
        """End of the last frame: its start plus its duration (or one average frame)."""
        if self.ticks is None:
            return self.num_frames / self.fps
        if self.end_tick is not None and self.end_tick > int(self.ticks[-1]):
            return self.end_tick * self.tick
        return self.last_start + 1 / self.fps

    def frames_between(self, start: Fraction, end: Fraction) -> range:
        """Indices ``i`` with ``start <= t_i < end``."""
        if self.ticks is None:
            lo, hi = math.ceil(start * self.fps), math.ceil(end * self.fps)
        else:
            # For integer ticks k: k * tick >= s <=> k >= ceil(s / tick), and likewise for end.
            ticks = self.ticks
            lo = int(np.searchsorted(ticks, math.ceil(start / self.tick), side="left"))
            hi = int(np.searchsorted(ticks, math.ceil(end / self.tick), side="left"))
        lo = min(max(lo, 0), self.num_frames)
        hi = min(max(hi, lo), self.num_frames)
        return range(lo, hi)


def _plan(name: str, timeline: _Timeline, family: str | None, options: VideoOptions) -> VideoPlan:
    if options.mode == "official" and family == _MATROSKA:
        # PyAV reports no stream duration for Matroska, so pytorchvideo decodes everything and
        # takes the last frame's timestamp as the duration.
        duration = timeline.last_start
    else:
        duration = timeline.end
    windows = clip_windows(
        duration,
        clip_duration=options.clip_duration,
        clips_per_video=options.clips_per_video,
        mode=options.mode,
    )
    in_window, selected = [], []
    for start, end in windows:
        frames = timeline.frames_between(start, end)
        if len(frames) == 0:
            raise InputError(
                name,
                f"no frame lies in the clip window [{float(start):.3f} s, {float(end):.3f} s) "
                f"(frame rate {float(timeline.fps):.3g} fps; each {float(options.clip_duration):g} s window "
                "needs at least one frame)",
                ACCEPTED,
            )
        in_window.append(frames)
        selected.append(
            tuple(frames[j] for j in uniform_subsample_indices(len(frames), options.frames_per_clip))
        )
    return VideoPlan(
        name=name,
        num_frames=timeline.num_frames,
        fps=timeline.fps,
        timing=timeline.timing,
        duration=duration,
        clip_windows=tuple(windows),
        clip_frame_indices=tuple(in_window),
        selected_frame_indices=tuple(selected),
        mode=options.mode,
    )


# --------------------------------------------------------------------------------------------
# The transform (per clip)


def _short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """pytorchvideo ``short_side_scale``'s output size, with its float formula."""
    if width < height:
        return math.floor((float(height) / width) * size), size
    return size, math.floor((float(width) / height) * size)


def _crop_offsets(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """``(y, x)`` of each crop, as pytorchvideo's ``uniform_crop`` with spatial_idx 0, 1, 2
    (or only 1 for a single crop): centred, except along the long side where crop 0 starts at
    0 and crop 2 ends at the border."""
    y_centre = math.ceil((height - size) / 2)
    x_centre = math.ceil((width - size) / 2)
    spatial = (1,) if num_crops == 1 else (0, 1, 2)
    offsets = []
    for idx in spatial:
        y, x = y_centre, x_centre
        if height > width:
            y = {0: 0, 1: y_centre, 2: height - size}[idx]
        else:
            x = {0: 0, 1: x_centre, 2: width - size}[idx]
        offsets.append((y, x))
    return offsets


def _transform_clip(frames: np.ndarray, options: VideoOptions) -> list[torch.Tensor]:
    """(T, H, W, 3) uint8 RGB frames of one clip -> ``num_crops`` tensors (3, T, size, size)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # (C, T, H, W)
    video = video.to(torch.float32).contiguous() / 255.0
    _, _, height, width = video.shape
    new_h, new_w = _short_side_size(height, width, options.size)
    # (C, T, H, W) is read as a batch of C images with T channels: each plane is resized alone.
    video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False)
    mean = torch.as_tensor(options.mean, dtype=video.dtype)[:, None, None, None]
    std = torch.as_tensor(options.std, dtype=video.dtype)[:, None, None, None]
    video = (video - mean) / std
    size = options.size
    return [
        video[:, :, y : y + size, x : x + size]
        for y, x in _crop_offsets(new_h, new_w, size, options.num_crops)
    ]


def _assemble(plan: VideoPlan, frames_by_index: dict[int, np.ndarray], options: VideoOptions) -> torch.Tensor:
    crops: list[torch.Tensor] = []
    for indices in plan.selected_frame_indices:
        clip = np.stack([frames_by_index[i] for i in indices])
        crops.extend(_transform_clip(clip, options))
    out = torch.stack(crops, dim=0)  # (clips * crops, 3, T, size, size), clip-major
    assert out.shape == options.output_shape, (out.shape, options.output_shape)
    return out


# --------------------------------------------------------------------------------------------
# Inputs: files (through decord) and in-memory clips


def _sniff(head: bytes) -> tuple[str | None, str | None]:
    """``(family, other)``: the video container family the bytes start like, or a description
    of a known non-video format, or ``(None, None)``."""
    if len(head) >= 8 and head[4:8] in _ISO_BMFF_FIRST_BOXES:
        return _ISO_BMFF, None
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _MATROSKA, None
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return _AVI, None
    others = (
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"BM", "a BMP image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"fLaC", "a FLAC audio file"),
        (b"OggS", "an Ogg file"),
        (b"ID3", "an MP3 audio file"),
        (b"FLV", "an FLV video (not supported)"),
        (b"\x00\x00\x01\xba", "an MPEG program stream (not supported)"),
    )
    for magic, what in others:
        if head.startswith(magic):
            return None, what
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return None, "a WAV audio file"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return None, "a WebP image"
    return None, None


def _container_family(source: Source) -> str:
    """Decide the container from the extension and the first bytes; refuse what we do not read."""
    with source.open() as f:
        head = f.read(SNIFF_BYTES)
    family, other = _sniff(head)
    if source.suffix:
        expected = _EXTENSION_FAMILY.get(source.suffix)
        if expected is None:
            raise source.error(f"unsupported file type '{source.suffix}'", ACCEPTED)
        if other is not None:
            raise source.error(f"the content is {other}, not a {source.suffix} video", ACCEPTED)
        if family is not None and family != expected:
            raise source.error(
                f"the content is a {family} file but the name ends in '{source.suffix}' "
                f"(rename it to {' or '.join(_FAMILY_EXTENSIONS[family])})",
                ACCEPTED,
            )
        return expected  # unusual first bytes: the decoder decides whether it is readable
    if family is None:
        what = f"the content is {other}" if other else "the content is not a recognised video container"
        raise source.error(f"{what} (no file name extension to go by)", ACCEPTED)
    return family


def _open_reader(source: Source, num_threads: int = DECODER_THREADS) -> Any:
    import decord

    try:
        if source.path is not None:
            return decord.VideoReader(str(source.path), num_threads=num_threads)
        return decord.VideoReader(io.BytesIO(source.data), num_threads=num_threads)
    except Exception as e:  # decord raises DECORDError, RuntimeError or AssertionError
        raise _decode_error(source, e) from e


def _decode_error(source: Source, e: Exception) -> InputError:
    text = str(e)
    if "cannot find video stream" in text:
        return source.error("the file contains no video stream (or it is unreadable)", ACCEPTED)
    detail = text.strip().splitlines()[-1][-200:] if text.strip() else type(e).__name__
    if source.path is not None:  # the decoder names the server's temporary path: name the file as the user did
        detail = detail.replace(str(source.path), source.name)
    return source.error(f"the file is corrupt or cannot be decoded ({detail})", ACCEPTED)


def _exact_fps(value: float) -> Fraction | None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        return None
    return Fraction(value).limit_denominator(FPS_MAX_DENOMINATOR)


def _on_grid(seconds: np.ndarray, tick: Fraction) -> np.ndarray | None:
    """The timestamps as integer ticks if every one lies on the grid, else None."""
    scaled = seconds.astype(np.float64) / float(tick)
    ticks = np.rint(scaled)
    if not np.all(np.abs(scaled - ticks) <= GRID_SNAP_TOLERANCE):
        return None
    return ticks.astype(np.int64)


def _file_timeline(source: Source, reader: Any, family: str) -> _Timeline:
    """Frame times of the stream decord opened (container index only, nothing decoded)."""
    num_frames = len(reader)
    fps = _exact_fps(reader.get_avg_fps())
    stamps = np.asarray(reader.get_frame_timestamp(range(num_frames)), dtype=np.float64)  # (N, 2)
    starts, stops = stamps[:, 0], stamps[:, 1]
    valid = bool(np.all(np.isfinite(stamps))) and bool(np.all(np.diff(starts) > 0)) and starts[0] >= 0

    if family == _MATROSKA and valid:
        ticks = _on_grid(starts, MATROSKA_TICK)
        end = _on_grid(stops[-1:], MATROSKA_TICK)
        if ticks is not None:
            if fps is None:
                fps = _average_rate(ticks, MATROSKA_TICK)
            return _Timeline(
                num_frames, fps, "container-ms", ticks, MATROSKA_TICK, None if end is None else int(end[0])
            )
    if fps is None:
        if not valid or num_frames < 2:
            raise source.error("the frame rate cannot be determined (broken timestamps)", ACCEPTED)
        ticks = np.rint(starts / float(VFR_TICK)).astype(np.int64)
        fps = _average_rate(ticks, VFR_TICK)
    if family == _AVI or not valid:
        if not valid:
            logger.debug("%s: unusable container timestamps, using i / %s s", source.name, fps)
        return _Timeline(num_frames, fps, "constant-rate")
    nominal = np.arange(num_frames, dtype=np.float64) / float(fps)
    tolerance = min(CFR_TOLERANCE_SEC, CFR_MAX_FRAME_FRACTION / float(fps)) + starts * FLOAT32_RELATIVE_SLACK
    if np.all(np.abs(starts - nominal) <= tolerance):
        return _Timeline(num_frames, fps, "constant-rate")
    ticks = np.rint(starts / float(VFR_TICK)).astype(np.int64)
    if np.any(np.diff(ticks) <= 0):
        raise source.error("the frame timestamps are not strictly increasing", ACCEPTED)
    end_tick = int(np.rint(stops[-1] / float(VFR_TICK)))
    logger.debug("%s: variable frame rate, using container timestamps", source.name)
    return _Timeline(num_frames, fps, "timestamps", ticks, VFR_TICK, end_tick)


def _average_rate(ticks: np.ndarray, tick: Fraction) -> Fraction:
    span = int(ticks[-1] - ticks[0])
    if span <= 0:
        return Fraction(1)
    return (Fraction(len(ticks) - 1) / (span * tick)).limit_denominator(FPS_MAX_DENOMINATOR)


def _check_frame_count(name: str, num_frames: int, options: VideoOptions) -> None:
    if num_frames < MIN_FRAMES:
        raise InputError(
            name,
            f"the video has {num_frames} frame{'s' if num_frames != 1 else ''}; at least {MIN_FRAMES} are needed "
            "(send a single picture as an image)",
            ACCEPTED,
        )
    if num_frames > options.max_frames:
        raise InputError(
            name, f"the video has too many frames ({num_frames}, limit {options.max_frames})", ACCEPTED
        )


def _check_frame_size(name: str, height: int, width: int, options: VideoOptions) -> None:
    if height * width > options.max_frame_pixels:
        raise InputError(
            name,
            f"the frames are too large ({width}x{height}, limit {options.max_frame_pixels} pixels per frame)",
            ACCEPTED,
        )


class _FileVideo:
    """A video file opened through decord, with its plan."""

    def __init__(self, obj: FileInput, options: VideoOptions, name: str | None, max_bytes: int | None):
        self.source = as_source(obj, name=name, max_bytes=max_bytes, accepted=ACCEPTED)
        self.family = _container_family(self.source)
        self.reader = _open_reader(self.source)
        try:
            num_frames = len(self.reader)
        except Exception as e:
            raise _decode_error(self.source, e) from e
        _check_frame_count(self.source.name, num_frames, options)
        try:
            timeline = _file_timeline(self.source, self.reader, self.family)
        except InputError:
            raise
        except Exception as e:
            raise _decode_error(self.source, e) from e
        self.plan = _plan(self.source.name, timeline, self.family, options)

    def read(self, indices: list[int], options: VideoOptions) -> dict[int, np.ndarray]:
        """Decode exactly ``indices`` (ascending) with ``get_batch``: the first frame alone, to
        check its size before decoding the rest."""
        try:
            frames = self._decode(indices, options)
        except InputError:
            raise
        except Exception as first_error:  # noqa: BLE001 - decord raises several types; retried below
            logger.debug(
                "%s: threaded decoding failed (%s); retrying with one thread", self.source.name, first_error
            )
            self.reader = _open_reader(self.source, FALLBACK_DECODER_THREADS)
            try:
                frames = self._decode(indices, options)
            except InputError:
                raise
            except Exception as e:
                raise _decode_error(self.source, e) from e
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            raise self.source.error(f"the decoder returned frames of shape {frames.shape}", ACCEPTED)
        return {i: frames[k] for k, i in enumerate(indices)}

    def _decode(self, indices: list[int], options: VideoOptions) -> np.ndarray:
        first = self.reader.get_batch(indices[:1]).asnumpy()
        _check_frame_size(self.source.name, first.shape[1], first.shape[2], options)
        if len(indices) == 1:
            return first
        return np.concatenate([first, self.reader.get_batch(indices[1:]).asnumpy()])


class _ArrayVideo:
    """An in-memory clip ``(frames, fps)``."""

    def __init__(self, obj: tuple, options: VideoOptions, name: str | None):
        self.name = name or "<frames>"
        if len(obj) != 2:
            raise InputError(
                self.name, f"a tuple input must be (frames, fps), got {len(obj)} items", ACCEPTED
            )
        frames, fps = obj
        if isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8:
                raise InputError(self.name, f"frames must be uint8, got {frames.dtype}", ACCEPTED)
            frames = frames.detach().cpu().numpy()
        if not isinstance(frames, np.ndarray):
            raise InputError(
                self.name,
                f"frames must be a numpy array or torch tensor, got {type(frames).__name__}",
                ACCEPTED,
            )
        if frames.dtype != np.uint8:
            raise InputError(self.name, f"frames must be uint8, got {frames.dtype}", ACCEPTED)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] < 1 or frames.shape[2] < 1:
            raise InputError(
                self.name, f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}", ACCEPTED
            )
        try:
            rate = _positive_fraction(fps, "fps")
        except ValueError as e:
            raise InputError(self.name, str(e), ACCEPTED) from None
        _check_frame_count(self.name, frames.shape[0], options)
        _check_frame_size(self.name, frames.shape[1], frames.shape[2], options)
        self.frames = frames
        self.plan = _plan(self.name, _Timeline(frames.shape[0], rate, "constant-rate"), None, options)

    def read(self, indices: list[int], options: VideoOptions) -> dict[int, np.ndarray]:
        return {i: self.frames[i] for i in indices}


def _open(obj: VideoInput, options: VideoOptions, name: str | None, max_bytes: int | None):
    if isinstance(obj, tuple):
        return _ArrayVideo(obj, options, name)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        raise InputError(
            name or "<frames>", "an array needs its frame rate: pass a tuple (frames, fps)", ACCEPTED
        )
    return _FileVideo(obj, options, name, max_bytes)


# --------------------------------------------------------------------------------------------
# Public API


def probe_video(
    source: VideoInput,
    options: VideoOptions | None = None,
    *,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> VideoPlan:
    """The clip windows and frame indices :func:`load_video` would use, without decoding any
    frame. ``name`` names raw bytes or arrays in messages (and gives bytes an extension)."""
    options = options or VideoOptions()
    return _open(source, options, name, max_bytes).plan


def load_video(
    source: VideoInput,
    options: VideoOptions | None = None,
    *,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Load one video as the ImageBind vision input.

    Args:
        source: a path, bytes, a binary file object, or an in-memory clip ``(frames, fps)``
            with ``frames`` uint8 RGB of shape (T, H, W, 3).
        options: :class:`VideoOptions` (defaults: the official 5 clips x 3 crops x 2 frames).
        name: what to call the input in error messages; for bytes, its extension also sets the
            expected format (without one the format is recognised from the content).
        max_bytes: files larger than this are refused (None: no limit).

    Returns:
        float32 CPU tensor ``(clips_per_video * num_crops, 3, frames_per_clip, size, size)``.

    Raises:
        InputError: unsupported or misnamed format, empty, oversize, corrupt or unreadable
            file, no video stream, fewer than 2 frames, too many or too large frames, a clip
            window without frames, or a malformed in-memory clip.
    """
    options = options or VideoOptions()
    video = _open(source, options, name, max_bytes)
    plan = video.plan
    logger.debug("%s: %s", plan.name, plan)
    frames = video.read(plan.needed_frames, options)
    return _assemble(plan, frames, options)


def load_video_batch(
    sources: Sequence[VideoInput],
    options: VideoOptions | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> torch.Tensor:
    """Load several videos: ``(B, clips_per_video * num_crops, 3, frames_per_clip, size, size)``."""
    options = options or VideoOptions()
    return torch.stack(load_each(sources, lambda s: load_video(s, options, max_bytes=max_bytes), "video", ACCEPTED))
