"""Video preprocessing: golden parity with the official pipeline, input forms, decoding only
the needed frames, and bad input.

Golden entries are read from the preprocess manifest (media names differ between golden sets).
Test videos are generated in tmp_path with the ffmpeg binary shipped in the imageio-ffmpeg
wheel (tests that need it are skipped without it). Lossless codecs are used where a test
compares a file with the same frames held in memory.
"""

from __future__ import annotations

import io
import math
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from imagebind_llm.errors import InputError
from imagebind_llm.preprocess.common import DEFAULT_MODE
from imagebind_llm.preprocess.video import (
    VIDEO_EXTENSIONS,
    VideoOptions,
    clip_windows,
    load_video,
    load_video_batch,
    probe_video,
    uniform_subsample_indices,
)

OFFICIAL = VideoOptions(mode="official")
CORRECTED = VideoOptions(mode="corrected")
GOLDEN_TOL = 1e-4  # golden README section 8: video sub / mean_hw / std_hw


# ------------------------------------------------------------------------------------------
# helpers


def video_entries(manifest: list[dict]) -> list[dict]:
    entries = [e for e in manifest if e.get("modality") == "video"]
    assert entries, "the golden manifest lists no video entry"
    return entries


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip(
        "imageio_ffmpeg", reason="test videos are written with imageio-ffmpeg"
    )
    return imageio_ffmpeg.get_ffmpeg_exe()


def encode(ffmpeg: str, path: Path, frames: np.ndarray, fps, codec: list[str]) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames to ``path`` at ``fps`` with the given codec args."""
    _, h, w, _ = frames.shape
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{w}x{h}", "-r", str(fps), "-i", "-", *codec, str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True, timeout=120)
    return path


LOSSLESS = {
    ".mp4": ["-c:v", "libx264rgb", "-qp", "0"],
    ".mov": ["-c:v", "libx264rgb", "-qp", "0"],
    ".mkv": ["-c:v", "ffv1"],
    ".avi": ["-c:v", "ffv1"],
    ".webm": ["-c:v", "libvpx-vp9", "-lossless", "1", "-deadline", "realtime", "-cpu-used", "8"],
}


def numbered_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames that differ from each other (the frame number is in R and G) and have some
    spatial structure (B is a gradient), cheap to compress losslessly."""
    i = np.arange(num_frames)
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 0] = ((i * 37) % 256)[:, None, None]
    frames[..., 1] = (i // 7 % 256)[:, None, None]
    frames[..., 2] = (x * 3 + y * 5) % 256
    return frames


def expected_selection(
    duration: Fraction, fps: Fraction, num_frames: int, mode: str
) -> list[tuple[int, int]]:
    """Independent restatement of the official rule for a constant-rate stream."""
    n = 5 if mode == "official" else 4
    step = max(duration - 2, 0) / Fraction(n)
    out = []
    for k in range(5):
        start, end = k * step, k * step + 2
        lo, hi = math.ceil(start * fps), min(math.ceil(end * fps), num_frames)
        out.append((lo, hi - 1))
    return out


# ------------------------------------------------------------------------------------------
# golden parity


def test_golden_videos(golden, preprocess_manifest):
    """Every video in the golden manifest: exact frame choice, tensor within 1e-4."""
    root = golden / "preprocess"
    report, failures = [], []
    for entry in video_entries(preprocess_manifest):
        expected = torch.load(root / entry["expected"], map_location="cpu", weights_only=True)
        path = root / entry["file"]
        plan = probe_video(path, OFFICIAL)
        out = load_video(path, OFFICIAL).unsqueeze(0)  # the official output has a batch dim
        s = int(expected["sub_stride"])

        assert list(out.shape) == list(expected["full_shape"]), entry["file"]
        assert out.dtype == torch.float32
        selected = [list(c) for c in plan.selected_frame_indices]
        assert selected == expected["selected_frame_indices"], entry["file"]
        assert selected == entry["selected_frame_indices"], entry["file"]
        assert [list(r) for r in plan.clip_frame_indices] == expected["clip_frame_indices"], entry["file"]
        assert plan.duration == Fraction(expected["duration_sec"]["exact"]), entry["file"]
        windows = [(Fraction(a["exact"]), Fraction(b["exact"])) for a, b in expected["clip_timepoints_sec"]]
        assert list(plan.clip_windows) == windows, entry["file"]

        diffs = {
            "sub": (out[..., ::s, ::s] - expected["sub"]).abs().max().item(),
            "mean_hw": (out.mean(dim=(-2, -1)) - expected["mean_hw"]).abs().max().item(),
            "std_hw": (out.std(dim=(-2, -1)) - expected["std_hw"]).abs().max().item(),
        }
        report.append(f"{entry['file']}: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
        if max(diffs.values()) > GOLDEN_TOL:
            failures.append(report[-1])
    print("\n" + "\n".join(report))
    assert not failures, "video golden mismatch:\n" + "\n".join(failures)


def test_golden_corrected_mode_covers_the_whole_video(golden, preprocess_manifest):
    root = golden / "preprocess"
    for entry in video_entries(preprocess_manifest):
        official = probe_video(root / entry["file"], OFFICIAL)
        corrected = probe_video(root / entry["file"], CORRECTED)
        assert corrected.duration == official.duration
        if official.duration <= 2:
            assert corrected.selected_frame_indices == official.selected_frame_indices
        else:
            assert corrected.clip_windows[-1][1] == corrected.duration
            assert corrected.selected_frame_indices[-1][-1] == corrected.num_frames - 1
            assert official.clip_windows[-1][1] < official.duration


def test_input_forms_match_the_path(golden, preprocess_manifest):
    """bytes (named or sniffed), a file object and the decoded frames in memory all give the
    tensor that the path gives."""
    import decord

    entry = video_entries(preprocess_manifest)[0]
    path = golden / "preprocess" / entry["file"]
    reference = load_video(path, OFFICIAL)
    data = path.read_bytes()
    assert torch.equal(load_video(data, OFFICIAL), reference)
    assert torch.equal(load_video(data, OFFICIAL, name=path.name), reference)
    with open(path, "rb") as f:
        assert torch.equal(load_video(f, OFFICIAL), reference)
    assert torch.equal(load_video(io.BytesIO(data), OFFICIAL), reference)

    reader = decord.VideoReader(str(path))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    fps = Fraction(entry["source_video"]["avg_fps"])
    assert torch.equal(load_video((frames, fps), OFFICIAL), reference)
    assert torch.equal(load_video((torch.from_numpy(frames), str(fps)), OFFICIAL), reference)
    assert torch.equal(load_video((frames, float(fps)), OFFICIAL), reference)


def test_batch(golden, preprocess_manifest):
    entries = video_entries(preprocess_manifest)
    paths = [golden / "preprocess" / e["file"] for e in entries[:2]]
    sources = [paths[0], paths[-1].read_bytes()]
    batch = load_video_batch(sources, OFFICIAL)
    assert batch.shape == (2, *OFFICIAL.output_shape)
    assert torch.equal(batch[0], load_video(paths[0], OFFICIAL))
    assert torch.equal(batch[1], load_video(paths[-1], OFFICIAL))
    with pytest.raises(InputError):
        load_video_batch([], OFFICIAL)


# ------------------------------------------------------------------------------------------
# pure helpers and options


def test_clip_windows_official_and_corrected():
    assert clip_windows(4, mode="official") == [
        (Fraction(2 * k, 5), Fraction(2 * k, 5) + 2) for k in range(5)
    ]
    assert clip_windows(4, mode="corrected") == [(Fraction(k, 2), Fraction(k, 2) + 2) for k in range(5)]
    for mode in ("official", "corrected"):
        assert clip_windows(Fraction(3, 2), mode=mode) == [(0, 2)] * 5
        assert clip_windows(2, mode=mode) == [(0, 2)] * 5
    assert clip_windows(10, clips_per_video=1, mode="corrected") == [(0, 2)]
    assert all(isinstance(a, Fraction) for w in clip_windows(Fraction(11, 3)) for a in w)


def test_uniform_subsample_indices():
    assert uniform_subsample_indices(50, 2) == [0, 49]
    assert uniform_subsample_indices(1, 2) == [0, 0]
    assert uniform_subsample_indices(10, 4) == [0, 3, 6, 9]


def test_options_defaults_and_validation():
    options = VideoOptions()
    assert options.mode == DEFAULT_MODE
    assert options.output_shape == (15, 3, 2, 224, 224)
    assert VideoOptions(clip_duration=2.5).clip_duration == Fraction(5, 2)
    assert VideoOptions(clip_duration="5/2").clip_duration == Fraction(5, 2)
    bad = [
        {"clips_per_video": 0},
        {"frames_per_clip": -1},
        {"size": 0},
        {"size": 2.5},
        {"num_crops": 2},
        {"mode": "faithful"},
        {"clip_duration": 0},
        {"clip_duration": float("nan")},
        {"mean": (0.5, 0.5)},
        {"std": (0.2, 0.0, 0.2)},
        {"max_frames": True},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match="VideoOptions|clip_duration"):
            VideoOptions(**kwargs)


def _undo_normalisation(x: torch.Tensor, channel: int, options: VideoOptions) -> torch.Tensor:
    return ((x * options.std[channel] + options.mean[channel]) * 255).round()


@pytest.mark.parametrize("portrait", [False, True])
def test_crop_offsets_and_order(portrait):
    """Short side already 224 (the resize is the identity): the crops start at 0, ceil(d/2)
    and d along the long side, ordered clip-major."""
    long_side, size = 250, 224
    h, w = (long_side, size) if portrait else (size, long_side)
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frame = np.stack([x % 256, y % 256, np.zeros_like(x)], axis=-1).astype(np.uint8)
    frames = np.repeat(frame[None], 4, axis=0)
    out = load_video((frames, 1), OFFICIAL)  # 4 s at 1 fps
    assert out.shape == OFFICIAL.output_shape
    d = long_side - size
    channel = 1 if portrait else 0
    for r in range(out.shape[0]):
        corner = out[r, channel, 0, 0, 0]
        origin = _undo_normalisation(corner, channel, OFFICIAL).item()
        assert origin == [0, math.ceil(d / 2), d][r % 3], (r, origin)

    single = load_video((frames, 1), VideoOptions(mode="official", num_crops=1))
    assert single.shape == (5, 3, 2, 224, 224)
    assert torch.equal(single, out[1::3])


def test_other_options_shapes():
    frames = numbered_frames(40, 60, 80)
    options = VideoOptions(
        clips_per_video=2, frames_per_clip=4, size=32, num_crops=1, clip_duration=1, mode="corrected"
    )
    out = load_video((frames, 10), options)
    assert out.shape == options.output_shape == (2, 3, 4, 32, 32)
    plan = probe_video((frames, 10), options)
    assert plan.selected_frame_indices == ((0, 3, 6, 9), (30, 33, 36, 39))  # corrected: windows [0,1), [3,4)


# ------------------------------------------------------------------------------------------
# generated videos


def spy_on_decord(monkeypatch) -> list[int]:
    """Replace decord.VideoReader by a subclass that records the frames asked for; random
    access and sequential reading are refused, so get_batch is the only way to decode."""
    import decord

    requested: list[int] = []

    class Spy(decord.VideoReader):
        def get_batch(self, indices):
            requested.extend(int(i) for i in indices)
            return super().get_batch(indices)

        def __getitem__(self, idx):  # pragma: no cover - must not be used
            raise AssertionError("frames must be decoded with get_batch only")

        def next(self):  # pragma: no cover - must not be used
            raise AssertionError("frames must be decoded with get_batch only")

    monkeypatch.setattr(decord, "VideoReader", Spy)
    return requested


def test_long_video_decodes_only_needed_frames(ffmpeg, tmp_path, monkeypatch):
    """2 minutes at 25 fps (3000 frames, GOP of 250 with B-frames): only the 10 selected frames
    are requested, the result equals the in-memory frames' result, and it is fast."""
    fps, seconds = 25, 120
    frames = numbered_frames(fps * seconds)
    path = encode(ffmpeg, tmp_path / "long.mp4", frames, fps, LOSSLESS[".mp4"] + ["-g", "250", "-bf", "2"])
    requested = spy_on_decord(monkeypatch)

    for options in (OFFICIAL, CORRECTED):
        requested.clear()
        start = time.perf_counter()
        plan = probe_video(path, options)
        out = load_video(path, options)
        elapsed = time.perf_counter() - start
        assert plan.timing == "constant-rate" and plan.num_frames == len(frames) and plan.fps == fps
        assert plan.duration == seconds
        assert [tuple(p) for p in plan.selected_frame_indices] == expected_selection(
            Fraction(seconds), Fraction(fps), len(frames), options.mode
        )
        assert sorted(requested) == plan.needed_frames and len(requested) == len(plan.needed_frames) == 10
        assert torch.equal(out, load_video((frames, fps), options))
        assert elapsed < 10, f"{elapsed:.1f} s"


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".avi", ".mkv", ".webm"])
def test_containers(ffmpeg, tmp_path, suffix):
    """Lossless files of every container family give the in-memory result (corrected mode);
    in official mode MKV/WebM use the last frame's start as the duration (PyAV sees no stream
    duration there), the others the end of the last frame."""
    fps, num_frames = 25, 90  # 3.6 s; 40 ms frames are exact in Matroska's millisecond clock
    frames = numbered_frames(num_frames)
    path = encode(ffmpeg, tmp_path / f"clip{suffix}", frames, fps, LOSSLESS[suffix])

    assert torch.equal(load_video(path, CORRECTED), load_video((frames, fps), CORRECTED))
    official = probe_video(path, OFFICIAL)
    matroska = suffix in (".mkv", ".webm")
    duration = Fraction(num_frames - 1 if matroska else num_frames, fps)
    assert official.duration == duration
    assert [tuple(p) for p in official.selected_frame_indices] == expected_selection(
        duration, Fraction(fps), num_frames, "official"
    )
    out = load_video(path, OFFICIAL)
    assert out.shape == OFFICIAL.output_shape
    if not matroska:
        assert torch.equal(out, load_video((frames, fps), OFFICIAL))


def test_matroska_millisecond_timestamps(ffmpeg, tmp_path):
    """At 30 fps Matroska stores 0, 33, 67, 100 ... ms; those exact times decide the frames."""
    frames = numbered_frames(100)
    path = encode(ffmpeg, tmp_path / "clip.mkv", frames, 30, LOSSLESS[".mkv"])
    plan = probe_video(path, OFFICIAL)
    assert plan.timing == "container-ms"
    ms = [round(Fraction(i * 1000, 30)) for i in range(100)]  # the muxer rounds to nearest
    assert plan.duration == Fraction(ms[-1], 1000)
    for (start, end), frames_in in zip(plan.clip_windows, plan.clip_frame_indices):
        assert list(frames_in) == [i for i, t in enumerate(ms) if start <= Fraction(t, 1000) < end]
    assert load_video(path, OFFICIAL).shape == OFFICIAL.output_shape


def test_short_and_two_frame_videos(ffmpeg, tmp_path):
    frames = numbered_frames(30)
    path = encode(ffmpeg, tmp_path / "short.mp4", frames, 30, LOSSLESS[".mp4"])
    for options in (OFFICIAL, CORRECTED):
        plan = probe_video(path, options)
        assert plan.selected_frame_indices == ((0, 29),) * 5
        out = load_video(path, options).view(5, 3, *options.output_shape[1:])
        assert all(torch.equal(out[0], out[k]) for k in range(5))

    two = encode(ffmpeg, tmp_path / "two.mp4", frames[:2], 30, LOSSLESS[".mp4"])
    assert probe_video(two, OFFICIAL).selected_frame_indices == ((0, 1),) * 5
    assert torch.equal(load_video(two, OFFICIAL), load_video((frames[:2], 30), OFFICIAL))


def test_variable_frame_rate_mp4(ffmpeg, tmp_path):
    """50 frames at 25 fps, then 50 at 50 fps: the container timestamps decide the frames."""
    path = tmp_path / "vfr.mp4"
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=25",
    ]
    cmd += ["-frames:v", "100", "-vf", "settb=1/100,setpts='if(lt(N,50),N*4,200+(N-50)*2)'"]
    cmd += ["-fps_mode", "passthrough", "-enc_time_base", "1/100", *LOSSLESS[".mp4"], str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    times = [Fraction(i, 25) if i < 50 else 2 + Fraction(i - 50, 50) for i in range(100)]
    for options in (OFFICIAL, CORRECTED):
        plan = probe_video(path, options)
        assert plan.timing == "timestamps" and plan.num_frames == 100
        assert times[-1] < plan.duration <= times[-1] + Fraction(1, 25)
        assert list(plan.clip_windows) == clip_windows(plan.duration, mode=options.mode)
        for (start, end), frames_in in zip(plan.clip_windows, plan.clip_frame_indices):
            assert list(frames_in) == [i for i, t in enumerate(times) if start <= t < end]
        assert load_video(path, options).shape == options.output_shape


def test_ntsc_rate_is_exact(ffmpeg, tmp_path):
    path = encode(ffmpeg, tmp_path / "ntsc.mp4", numbered_frames(100), "30000/1001", LOSSLESS[".mp4"])
    plan = probe_video(path, OFFICIAL)
    assert plan.timing == "constant-rate"
    assert plan.fps == Fraction(30000, 1001) and plan.duration == Fraction(100 * 1001, 30000)
    assert [tuple(p) for p in plan.selected_frame_indices] == expected_selection(
        plan.duration, plan.fps, 100, "official"
    )


# ------------------------------------------------------------------------------------------
# bad input


def _raises(source, match: str, shown_as: str, **kwargs) -> InputError:
    """load_video(source) raises an InputError matching ``match`` that names the input."""
    with pytest.raises(InputError, match=match) as info:
        load_video(source, OFFICIAL, **kwargs)
    assert info.value.source == shown_as
    assert str(info.value).startswith(f"{shown_as}: ")
    return info.value


def test_bad_files(golden, preprocess_manifest, ffmpeg, tmp_path):
    path = golden / "preprocess" / video_entries(preprocess_manifest)[0]["file"]
    data = path.read_bytes()

    (tmp_path / "empty.mp4").write_bytes(b"")
    _raises(tmp_path / "empty.mp4", "empty", "empty.mp4")
    _raises(tmp_path / "missing.mp4", "not found", "missing.mp4")

    (tmp_path / "clip.gif").write_bytes(data)
    err = _raises(tmp_path / "clip.gif", "unsupported file type '.gif'", "clip.gif")
    assert all(ext in err.accepted for ext in VIDEO_EXTENSIONS)

    (tmp_path / "picture.mp4").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    _raises(tmp_path / "picture.mp4", "PNG image", "picture.mp4")
    _raises(b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG image", "<bytes>")
    _raises(np.random.default_rng(0).bytes(4000), "not a recognised video container", "<bytes>")

    mkv = encode(ffmpeg, tmp_path / "real.mkv", numbered_frames(10), 25, LOSSLESS[".mkv"])
    (tmp_path / "misnamed.mp4").write_bytes(mkv.read_bytes())
    _raises(tmp_path / "misnamed.mp4", "Matroska/WebM .* '.mp4'", "misnamed.mp4")

    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "truncated.mp4", "corrupt", "truncated.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4000))  # an mp4 head, no moov
    err = _raises(tmp_path / "garbage.mp4", "corrupt", "garbage.mp4")
    assert str(tmp_path) not in str(err)  # the server's temporary path is not shown to the user
    _raises(
        data[:64] + np.random.default_rng(1).bytes(4000), "no video stream|corrupt", "x.mp4", name="x.mp4"
    )

    audio = tmp_path / "audio_only.mp4"
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1"]
    subprocess.run([*cmd, "-c:a", "aac", str(audio)], check=True, timeout=60)
    _raises(audio, "no video stream", "audio_only.mp4")

    _raises(path, "too large", path.name, max_bytes=100)
    one = encode(ffmpeg, tmp_path / "one.mp4", numbered_frames(1), 25, LOSSLESS[".mp4"])
    _raises(one, "has 1 frame; at least 2", "one.mp4")

    with pytest.raises(InputError, match="too large") as info:
        load_video(path, VideoOptions(mode="official", max_frame_pixels=100))
    assert info.value.source == path.name
    with pytest.raises(InputError, match="too many frames"):
        load_video(path, VideoOptions(max_frames=10))


def test_bad_arrays():
    frames = numbered_frames(8)
    _raises((frames.astype(np.float32), 25), "uint8", "<frames>")
    _raises((torch.from_numpy(frames).float(), 25), "uint8", "<frames>")
    _raises((frames.transpose(0, 3, 1, 2), 25), r"shape \(T, H, W, 3\)", "<frames>")
    _raises((frames[..., 0], 25), r"shape \(T, H, W, 3\)", "<frames>")
    _raises((frames[:1], 25), "at least 2", "<frames>")
    _raises((frames, 0), "fps must be positive", "<frames>")
    _raises((frames, float("nan")), "fps must be", "<frames>")
    _raises((frames, "fast"), "fps must be", "<frames>")
    _raises((frames, 25, 1), r"\(frames, fps\)", "<frames>")
    _raises(([[0]], 25), "numpy array or torch tensor", "<frames>")
    _raises(frames, "needs its frame rate", "my clip", name="my clip")
    _raises(12345, "unsupported input type", "12345")
    # 8 frames at 0.25 fps: one frame every 4 s, so 2 s windows can be empty
    _raises((frames, Fraction(1, 4)), "no frame lies in the clip window", "<frames>")
