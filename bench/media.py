"""Preprocessing of long media: the project's loader against decoding everything, in one run.

    python bench/media.py                 # a 60 s 1280x720 30 fps H.264 video, 10 min of audio
    python bench/media.py --quick         # a 6 s video and 30 s of audio (a smoke run)
    python bench/media.py --repeats 5 --json media.json

Media (generated at start in a temporary folder with the ``imageio_ffmpeg`` ffmpeg binary,
nothing downloaded):

* **video**: ``--video-seconds`` (60) of ffmpeg's ``testsrc2`` pattern (moving), 1280x720 at
  30 fps, H.264 (libx264 ``ultrafast``, yuv420p) with a keyframe every ``--gop-seconds`` (2 s,
  as phones and streaming encoders write; x264's default of 250 frames would make every seek
  decode up to 8 s), no audio;
* **audio**: ``--audio-seconds`` (600) of a stereo tone sweep with noise at 44.1 kHz, as a
  16-bit WAV, and the same encoded as MP3 (libmp3lame 192 kb/s) and M4A (AAC 192 kb/s).

For each file, the wall time and the CPU time (this process's threads plus its children, i.e.
ffmpeg; steadier than wall time when other processes take the cores), each the median of
``--repeats`` calls after one untimed call, and the peak memory (growth of the resident set
over the call's start, bench/common.py; the first call) of:

* **project**: ``imagebind_llm.preprocess.load(kind, path)``. Video: decord indexes the
  container and ``get_batch`` seeks to the 10 frames the 5 clips use (a seek decodes from the
  keyframe before). Audio: WAV (and FLAC) files are read only around the 3 clips and only
  those samples are resampled; MP3 is decoded whole (a lossy stream is not seeked, to keep the
  exact samples) and only its clips' samples resampled; M4A is decoded whole by ffmpeg into a
  temporary float WAV that is then read around the clips.
* **baseline** (decode everything, then pick): video: a decord ``VideoReader`` decodes every
  frame in order (``next()``), keeps the frames the project's plan names and applies the same
  transform; audio: ``librosa.load(path, sr=None, mono=False)`` (the whole file at its native
  rate; M4A, which librosa reads only through audioread, with the project's ffmpeg
  ``decode_audio`` instead), then ``waveform_to_clips(..., windowed=False)``, which resamples
  the whole waveform as the official code does and cuts the same clips.

The two tensors must be identical (``torch.equal``; the run fails otherwise). Printed: times and
memory of both, the speed-ups (baseline / project, wall and CPU) and the memory ratio
(baseline / project peak). The project runs first in each pair: memory the first call leaves in the
allocator could only lower the baseline's figure. Other processes on the machine slow both
down (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, fmt_number, trim_heap, write_json  # noqa: E402

AUDIO_FORMATS = ("wav", "mp3", "m4a")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/media.py",
                                description="Time and peak memory of preprocessing long media, project vs decode-everything.")
    p.add_argument("--video-seconds", type=float, default=None, help="video length (default 60; --quick 6)")
    p.add_argument("--audio-seconds", type=float, default=None, help="audio length (default 600; --quick 30)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--gop-seconds", type=float, default=2.0, help="seconds between keyframes (default 2)")
    p.add_argument("--audio-formats", default=",".join(AUDIO_FORMATS),
                   help=f"comma-separated, of {','.join(AUDIO_FORMATS)} (default all)")
    p.add_argument("--skip-video", action="store_true")
    p.add_argument("--skip-audio", action="store_true")
    p.add_argument("--mode", choices=("official", "corrected"), default=None,
                   help="preprocessing mode (default: the project's default)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per method (default 3; --quick 1)")
    p.add_argument("--quick", action="store_true", help="short media, one timed call (explicit options win)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    args.video_seconds = args.video_seconds or (6.0 if args.quick else 60.0)
    args.audio_seconds = args.audio_seconds or (30.0 if args.quick else 600.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    formats = [f.strip().lower() for f in args.audio_formats.split(",") if f.strip()]
    unknown = set(formats) - set(AUDIO_FORMATS)
    if unknown:
        p.error(f"--audio-formats: unknown {sorted(unknown)}; known: {','.join(AUDIO_FORMATS)}")
    args.audio_formats = [f for f in AUDIO_FORMATS if f in formats]
    if args.repeats < 1 or args.video_seconds <= 0 or args.audio_seconds <= 0 or args.gop_seconds <= 0:
        p.error("--repeats, --video-seconds, --audio-seconds and --gop-seconds must be positive")
    return args


# ------------------------------------------------------------------------------------------
# Media
# ------------------------------------------------------------------------------------------


def ffmpeg(*arguments: str) -> None:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *arguments]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({run.returncode}): {' '.join(command)}\n{run.stderr[-2000:]}")


def make_video(path: Path, args) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={args.width}x{args.height}:rate={args.fps}",
           "-t", f"{args.video_seconds:g}", "-c:v", "libx264", "-preset", "ultrafast",
           "-g", str(max(1, round(args.gop_seconds * args.fps))), "-pix_fmt", "yuv420p", "-an", str(path))
    return path


def make_audio(folder: Path, args) -> dict[str, Path]:
    wav = folder / "long.wav"
    left = "0.3*sin(2*PI*(300+200*sin(t/3))*t)+0.05*(random(0)-0.5)"
    right = "0.3*sin(2*PI*(500+150*sin(t/5))*t)+0.05*(random(1)-0.5)"
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc={left}|{right}:s=44100:d={args.audio_seconds:g}",
           "-c:a", "pcm_s16le", str(wav))
    out = {"wav": wav}
    if "mp3" in args.audio_formats:
        ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-b:a", "192k", str(folder / "long.mp3"))
        out["mp3"] = folder / "long.mp3"
    if "m4a" in args.audio_formats:
        ffmpeg("-i", str(wav), "-c:a", "aac", "-b:a", "192k", str(folder / "long.m4a"))
        out["m4a"] = folder / "long.m4a"
    return {k: v for k, v in out.items() if k in args.audio_formats}


# ------------------------------------------------------------------------------------------
# The two ways
# ------------------------------------------------------------------------------------------


def project_load(kind: str, path: Path, options):
    from imagebind_llm.preprocess import load

    return load(kind, str(path), options)


def baseline_video(path: Path, options):
    """Decode every frame in order with decord; keep those the plan names; same transform."""
    import decord

    from imagebind_llm.preprocess import video as V

    video_options = options.for_kind("video")
    plan = V.probe_video(str(path), video_options, max_bytes=None)
    needed = set(plan.needed_frames)
    reader = decord.VideoReader(str(path), num_threads=V.DECODER_THREADS)
    frames = {}
    for index in range(len(reader)):
        frame = reader.next()
        if index in needed:
            frames[index] = frame.asnumpy()
    del reader
    return V._assemble(plan, frames, video_options)


def baseline_audio(fmt: str, path: Path, options):
    """The whole file at its native rate (librosa; M4A through the project's ffmpeg decoding),
    the whole waveform resampled, the same clips cut."""
    import numpy as np
    import torch

    from imagebind_llm.preprocess import audio as A

    audio_options = options.for_kind("audio")
    if fmt == "m4a":
        waveform, rate = A.decode_audio(str(path), max_bytes=None)
    else:
        import librosa

        data, rate = librosa.load(str(path), sr=None, mono=False)
        waveform = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(data), dtype=np.float32))
    return A.waveform_to_clips(waveform, int(rate), audio_options, name=path.name, windowed=False)


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: float  # median wall time
    cpu_seconds: float  # median CPU time: this process's threads and its children (ffmpeg)
    runs: list[float]
    cpu_runs: list[float]
    peak_mib: float | None


def cpu_now() -> float:
    """CPU seconds used so far by this process (all threads) and its waited-for children."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Row:
    media: str
    file_mib: float
    detail: str
    project: Timing
    baseline: Timing
    speedup: float
    cpu_speedup: float
    memory_ratio: float | None
    identical: bool
    shape: list[int]


def timed(fn, repeats: int) -> tuple[Any, Timing]:
    import torch

    fn()  # untimed: lazy imports, caches, the page cache
    trim_heap()
    runs, cpu_runs = [], []
    with PeakMemory(torch.device("cpu")) as memory:
        t0, c0 = time.perf_counter(), cpu_now()
        out = fn()
        runs.append(time.perf_counter() - t0)
        cpu_runs.append(cpu_now() - c0)
    for _ in range(repeats - 1):
        del out
        t0, c0 = time.perf_counter(), cpu_now()
        out = fn()
        runs.append(time.perf_counter() - t0)
        cpu_runs.append(cpu_now() - c0)
    peak = memory.peak_bytes / 2**20 if memory.peak_bytes is not None else None
    return out, Timing(statistics.median(runs), statistics.median(cpu_runs), runs, cpu_runs, peak)


def compare(media: str, path: Path, detail: str, project, baseline, repeats: int) -> Row:
    import torch

    mine, project_timing = timed(project, repeats)
    print(f"#   {media}: project {project_timing.seconds:.3f} s ({project_timing.cpu_seconds:.3f} s CPU)", flush=True)
    theirs, baseline_timing = timed(baseline, repeats)
    print(f"#   {media}: baseline {baseline_timing.seconds:.3f} s ({baseline_timing.cpu_seconds:.3f} s CPU)",
          flush=True)
    identical = mine.shape == theirs.shape and mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    ratio = None
    if project_timing.peak_mib is not None and baseline_timing.peak_mib is not None:
        ratio = baseline_timing.peak_mib / max(project_timing.peak_mib, 1.0)
    return Row(media, path.stat().st_size / 2**20, detail, project_timing, baseline_timing,
               baseline_timing.seconds / project_timing.seconds,
               baseline_timing.cpu_seconds / max(project_timing.cpu_seconds, 1e-3), ratio, identical,
               list(mine.shape))


def audio_read_fraction(path: Path, options) -> str:
    """How many input samples the project reads and resamples (WAV): the windows around the clips."""
    import soundfile as sf

    from imagebind_llm.preprocess import audio as A
    from imagebind_llm.preprocess.resample import resample_window_input, resampled_length

    audio_options = options.for_kind("audio")
    info = sf.info(str(path))
    length, rate = info.frames, info.samplerate
    total = resampled_length(length, rate, audio_options.sample_rate)
    read = 0
    for start, stop in A._clip_segments(total, audio_options):
        window = resample_window_input(start, stop, length, rate, audio_options.sample_rate)
        read += (window[1] - window[0]) if window is not None else length
    return f"{min(read, length) / length:.1%} of the samples resampled"


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


_fmt = fmt_number  # noqa: E731 - the tables' number format (bench/common.py)


def report(info: dict[str, Any], args, rows: list[Row]) -> str:
    out = [f"machine: {info['cpu_count']} CPU cores; load average at start {info['loadavg_start']:.2f}, at end "
           f"{info['loadavg_end']:.2f} (other processes slow both sides down); mode {info['mode']}; "
           f"median of {args.repeats} call(s) after 1 untimed",
           ""]
    cells = [[r.media, f"{r.file_mib:.1f}", _fmt(r.project.seconds), _fmt(r.baseline.seconds),
              f"{r.speedup:.1f}x", _fmt(r.project.cpu_seconds), _fmt(r.baseline.cpu_seconds), f"{r.cpu_speedup:.1f}x",
              _fmt(r.project.peak_mib), _fmt(r.baseline.peak_mib),
              "-" if r.memory_ratio is None else f"{r.memory_ratio:.1f}x", "yes" if r.identical else "NO"]
             for r in rows]
    out.append(table(["media", "file MiB", "project s", "baseline s", "speed-up", "project CPU s", "baseline CPU s",
                      "CPU speed-up", "project MiB", "baseline MiB", "memory", "identical"], cells))
    out.append("s = wall time; CPU s = CPU time of this process's threads and its children (ffmpeg), the steadier "
               "figure on a busy machine; speed-up = baseline / project; memory = baseline peak / project peak "
               "(peak = growth of the resident set during the first call)")
    for r in rows:
        out.append(f"  {r.media}: {r.detail}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from imagebind_llm.preprocess import PreprocessOptions

    options = PreprocessOptions(max_bytes=None) if args.mode is None else PreprocessOptions(mode=args.mode,
                                                                                            max_bytes=None)
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0], "mode": options.mode}
    began = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="imagebind-media-") as tmp:
        folder = Path(tmp)
        if not args.skip_video:
            t0 = time.perf_counter()
            video = make_video(folder / "long.mp4", args)
            print(f"# generated a {args.video_seconds:g} s {args.width}x{args.height} {args.fps} fps video in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            from imagebind_llm.preprocess import video as V

            plan = V.probe_video(str(video), options.for_kind("video"), max_bytes=None)
            detail = (f"{len(plan.needed_frames)} of {plan.num_frames} frames used; keyframe every "
                      f"{args.gop_seconds:g} s; baseline decodes all {plan.num_frames}")
            rows.append(compare(f"video {args.video_seconds:g} s {args.width}x{args.height} {args.fps} fps H.264",
                                video, detail, lambda: project_load("video", video, options),
                                lambda: baseline_video(video, options), args.repeats))
        if not args.skip_audio and args.audio_formats:
            t0 = time.perf_counter()
            files = make_audio(folder, args)
            print(f"# generated {args.audio_seconds:g} s of audio as {','.join(files)} in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            minutes = f"{args.audio_seconds / 60:g} min" if args.audio_seconds >= 60 else f"{args.audio_seconds:g} s"
            for fmt, path in files.items():
                if fmt == "wav":
                    detail = f"read around the clips: {audio_read_fraction(path, options)}; baseline: librosa.load"
                    media = f"audio WAV {minutes} 44.1 kHz stereo 16-bit"
                elif fmt == "mp3":
                    detail = "decoded whole (lossy: not seeked), clips resampled; baseline: librosa.load"
                    media = f"audio MP3 {minutes} 192 kb/s"
                else:
                    detail = ("ffmpeg decodes whole, the float WAV is read around the clips; "
                              "baseline: the project's ffmpeg decode_audio, whole (librosa needs audioread)")
                    media = f"audio M4A {minutes} AAC 192 kb/s"
                rows.append(compare(media, path, detail,
                                    lambda path=path: project_load("audio", path, options),
                                    lambda fmt=fmt, path=path: baseline_audio(fmt, path, options), args.repeats))
    info["loadavg_end"] = os.getloadavg()[0]
    info["total_s"] = round(time.perf_counter() - began, 1)
    print()
    print(report(info, args, rows))
    print(f"total time: {info['total_s']:.0f} s")
    results = {"machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "rows": [asdict(r) for r in rows]}
    if args.json:
        write_json(args.json, results)
    different = [r.media for r in rows if not r.identical]
    if different:
        raise SystemExit(f"error: the project and the baseline differ for: {', '.join(different)}")
    return results


if __name__ == "__main__":
    main()
