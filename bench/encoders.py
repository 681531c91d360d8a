"""Benchmark of the ImageBind encoders and of the project's preprocessing, per modality.

    python bench/encoders.py                       # tiny + huge, batch 1 and 8, fp32 and bf16
    python bench/encoders.py --quick               # tiny, batch 1, 1 repeat (a smoke run)
    python bench/encoders.py --presets huge --modalities image,video --batches 1 --json out.json

What it measures, per input kind (image, video, audio, text, depth, thermal, imu, point):

1. **Preprocessing** throughput (items/s) of ``imagebind_llm.preprocess.load`` on media
   generated at start in a temporary folder (a 640x480 JPEG, a 10 s 320x240 H.264 mp4 written
   with the ``imageio_ffmpeg`` ffmpeg binary, a 10 s 44.1 kHz stereo WAV, English sentences,
   a 640x480 16-bit depth PNG, a 640x480 8-bit thermal PNG, an IMU ``.npy`` (6, 2000), a point
   cloud ``.npy`` (8192, 3)). Items are read from their file every time (the OS page cache is
   warm), one at a time, as ``load_batch`` does.
2. **Encoding** throughput (items/s) of ``ImageBind.encode_all`` for every (preset, dtype,
   batch): the preprocessed item repeated ``batch`` times, under ``torch.inference_mode()``,
   after ``--warmup`` iterations; the figure is ``batch / median iteration time``. A video item
   is 15 clips and an audio item 3 clips, so batch 8 of video is 120 vision passes. The huge
   preset has random weights (built on the meta device, then filled cheaply); throughput does
   not depend on the values.
3. **Peak memory** of each encoding case. CUDA: ``torch.cuda.max_memory_allocated`` during the
   case (weights, inputs and activations: the total the case needs). CPU: the peak resident
   set size (RSS) of the process during the case *minus* its RSS when the case started, i.e.
   what the forward passes add on top of the resident weights and the input batch (activations,
   oneDNN/MKL workspaces, allocator slack). It is sampled from ``/proc/self/statm`` every 2 ms
   by a thread, after ``malloc_trim`` has returned freed heap pages to the OS; without
   ``/proc`` the growth of ``getrusage().ru_maxrss`` is used, which only counts a case that
   raises the process's all-time peak (then shown with a ``*``). The weights' own size is in
   the ``weights MiB`` column.

A configuration that would not finish within ``--max-seconds-per-case`` is skipped with a
printed note, never silently: before a case is run its cost per iteration is predicted from
the smaller batch of the same (kind, preset, dtype) scaled linearly (for video at its first
batch: from the image rate times the clips per video, as a video clip is one image-sized vision
pass), and a case whose warm-up + one timed iteration would not fit is skipped; after the
warm-up the number of timed iterations is cut to what still fits (none fitting means skipped).

``main(argv)`` runs it and returns the results (the same dict ``--json`` writes). Importing
this file is cheap: torch and the project are imported inside ``main``.
"""

import argparse
import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, fmt_number, trim_heap, write_json  # noqa: E402

KINDS = ("image", "video", "audio", "text", "depth", "thermal", "imu", "point")
PRESETS = ("tiny", "huge")
DTYPES = ("float32", "bfloat16")

SENTENCES = (
    "A dog is playing with a red ball in the park.",
    "Two children are building a sandcastle on a sunny beach while the tide comes in.",
    "The orchestra tunes its instruments before the evening concert begins.",
    "A bright green parrot sits on a branch and calls loudly.",
    "Heavy rain falls on the tin roof of an old farmhouse.",
    "A chef slices onions quickly on a wooden cutting board.",
    "The city skyline glows with thousands of lights after sunset.",
    "Someone is typing on a mechanical keyboard in a quiet office.",
)


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------


def _csv(values: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"--{what}: give at least one value")
    if allowed is not None:
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"--{what}: unknown {unknown}; known: {','.join(allowed)}")
    return list(dict.fromkeys(items))


def _batches(values: str) -> list[int]:
    try:
        out = sorted({int(v) for v in values.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batches: integers expected, got {values!r}") from None
    if not out or out[0] < 1:
        raise argparse.ArgumentTypeError("--batches: positive integers expected")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/encoders.py",
        description="Throughput and peak memory of ImageBind preprocessing and encoders, per modality.",
    )
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu, or e.g. cuda:1")
    p.add_argument("--presets", type=lambda s: _csv(s, PRESETS, "presets"), default=None,
                   help="comma-separated presets of imagebind_llm.config (default tiny,huge)")
    p.add_argument("--batches", type=_batches, default=None, help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--dtypes", type=lambda s: _csv(s, ("float32", "bfloat16", "float16"), "dtypes"),
                   default=None, help="comma-separated (default float32,bfloat16)")
    p.add_argument("--modalities", type=lambda s: _csv(s, KINDS, "modalities"), default=list(KINDS),
                   help=f"comma-separated input kinds (default all: {','.join(KINDS)})")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed iterations per case, at least (default 3; more run until --min-time)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per case (default 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="keep timing fast cases until this many seconds (default 1.0; --quick 0)")
    p.add_argument("--max-seconds-per-case", type=float, default=150.0,
                   help="skip (with a note) a case that would take longer, warm-up included (default 150)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--skip-preprocess", action="store_true", help="only the encoders")
    p.add_argument("--skip-encode", action="store_true", help="only the preprocessing")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny preset, batch 1, 1 repeat, no minimum time (explicit options win)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.presets = args.presets or ["tiny"]
        args.batches = args.batches or [1]
        args.repeats = args.repeats if args.repeats is not None else 1
        args.min_time = args.min_time if args.min_time is not None else 0.0
    args.modalities = [k for k in KINDS if k in args.modalities]  # image first: video is predicted from it
    args.presets = args.presets or list(PRESETS)
    args.batches = args.batches or [1, 8]
    args.dtypes = args.dtypes or list(DTYPES)
    args.repeats = args.repeats if args.repeats is not None else 3
    args.min_time = args.min_time if args.min_time is not None else 1.0
    if args.repeats < 1 or args.warmup < 0 or args.max_seconds_per_case <= 0:
        p.error("--repeats must be >= 1, --warmup >= 0, --max-seconds-per-case > 0")
    return args


# ------------------------------------------------------------------------------------------
# Generated media
# ------------------------------------------------------------------------------------------


def make_media(folder: Path, kinds: list[str]) -> dict[str, Any]:
    """Write one realistic input per requested kind into ``folder``; return kind -> item. A
    video already in the folder is kept: writing one needs imageio-ffmpeg's ffmpeg, so a folder
    made here can be carried to a machine without it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    items: dict[str, Any] = {}
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    if "image" in kinds:
        rgb = np.stack([x / 640 * 255, y / 480 * 255, 128 + 100 * np.sin(x / 23) * np.cos(y / 17)], -1)
        rgb += rng.normal(0, 12, rgb.shape)  # texture, so the JPEG is not trivially small
        path = folder / "photo.jpg"
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        items["image"] = path
    if "video" in kinds:
        video = folder / "clip.mp4"
        items["video"] = video if video.is_file() else _write_video(video, seconds=10, fps=25, width=320,
                                                                     height=240)
    if "audio" in kinds:
        items["audio"] = _write_wav(folder / "sound.wav", seconds=10, rate=44100, rng=rng)
    if "text" in kinds:
        items["text"] = list(SENTENCES)
    if "depth" in kinds:
        mm = 800 + 3500 * (x / 640) + 400 * np.sin(y / 40) + rng.normal(0, 5, x.shape)
        mm[200:260, 300:380] = 0  # a hole without depth, as real sensors have
        path = folder / "scene_depth.png"
        Image.fromarray(mm.clip(0, 65535).astype(np.uint16)).save(path)
        items["depth"] = path
    if "thermal" in kinds:
        t = 90 + 60 * np.exp(-(((x - 320) / 120) ** 2 + ((y - 240) / 90) ** 2)) + rng.normal(0, 3, x.shape)
        path = folder / "scene_thermal.png"
        Image.fromarray(t.clip(0, 255).astype(np.uint8), "L").save(path)
        items["thermal"] = path
    if "imu" in kinds:
        steps = np.arange(2000) / 200.0
        trace = np.stack([np.sin(2 * np.pi * f * steps + k) for k, f in enumerate((1, 1.5, 2, 0.5, 3, 2.5))])
        trace[2] += 9.81
        path = folder / "walk.imu.npy"
        np.save(path, (trace + rng.normal(0, 0.05, trace.shape)).astype(np.float32))
        items["imu"] = path
    if "point" in kinds:
        direction = rng.normal(size=(8192, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        path = folder / "object_points.npy"
        # an ellipsoid shell
        cloud = direction * np.array([1.0, 0.6, 0.3]) * rng.uniform(0.95, 1.0, (8192, 1))
        np.save(path, cloud.astype(np.float32))
        items["point"] = path
    return items


def _write_video(path: Path, seconds: int, fps: int, width: int, height: int) -> Path:
    import imageio_ffmpeg
    import numpy as np

    frames = seconds * fps
    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):  # a moving gradient and a moving checkerboard
        video[i, ..., 0] = (x + 3 * i) % 256
        video[i, ..., 1] = (y + i) % 256
        video[i, ..., 2] = (((x + 2 * i) // 20 + y // 20) % 2) * 200
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-g", str(2 * fps), str(path)]
    subprocess.run(cmd, input=video.tobytes(), check=True, timeout=300)
    return path


def _write_wav(path: Path, seconds: int, rate: int, rng) -> Path:
    import wave

    import numpy as np

    t = np.arange(seconds * rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    left = tone + 0.03 * rng.standard_normal(t.size)
    right = 0.8 * tone + 0.03 * rng.standard_normal(t.size)
    pcm = (np.stack([left, right], 1).clip(-1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def preprocess_options():
    """Default options of every kind. Depth, thermal and IMU get explicit option objects:
    their option classes have no ``mode`` field, and ``PreprocessOptions.for_kind`` builds a
    missing one with ``mode=`` (a TypeError), but leaves a given object without ``mode`` as is."""
    from imagebind_llm.preprocess import PreprocessOptions
    from imagebind_llm.preprocess.depth import DepthOptions
    from imagebind_llm.preprocess.imu import IMUOptions
    from imagebind_llm.preprocess.thermal import ThermalOptions

    return PreprocessOptions(
        options={"depth": DepthOptions(), "thermal": ThermalOptions(), "imu": IMUOptions()})


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------


@dataclass
class PreprocessResult:
    kind: str
    items_per_s: float
    ms_per_item: float
    items: int
    shape: list[int]
    dtype: str
    source: str


@dataclass
class EncodeResult:
    kind: str
    preset: str
    batch: int
    dtype: str
    items_per_s: float | None = None
    ms_per_item: float | None = None
    iterations: int = 0
    iteration_s: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    peak_exact: bool = True
    cpu_share: float | None = None  # CPU: process CPU time / (wall time x torch threads) while timed
    weights_mib: float | None = None
    bf16_ratio: float | None = None
    skipped: str | None = None
    note: str | None = None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preprocess(items: dict[str, Any], kinds: list[str], repeats: int,
                     min_time: float) -> list[PreprocessResult]:
    from imagebind_llm.preprocess import load

    options = preprocess_options()
    results = []
    for kind in kinds:
        item = items[kind]
        sources = item if isinstance(item, list) else [item]
        out = load(kind, sources[0], options)  # warm-up: lazy imports, filter-bank caches
        times = []
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_time:
            src = sources[len(times) % len(sources)]
            t0 = time.perf_counter()
            out = load(kind, src, options)
            times.append(time.perf_counter() - t0)
            if len(times) >= 10_000:
                break
        per_item = statistics.median(times)
        desc = (f"{len(sources)} sentences" if kind == "text"
                else f"{Path(sources[0]).name} ({Path(sources[0]).stat().st_size / 1024:.0f} KiB)")
        results.append(PreprocessResult(kind, 1.0 / per_item, per_item * 1e3, len(times),
                                        list(out.shape), str(out.dtype).replace("torch.", ""), desc))
    return results


def build_model(preset: str, dtype, device):
    """The ImageBind of a preset. tiny: built normally (the project's init). Others: built on
    the meta device and filled with cheap random values (scaled like a fan-in init; norms 1,
    biases 0, logit scales and batch-norm statistics as a fresh model has them)."""
    import torch

    from imagebind_llm.config import imagebind_huge, imagebind_tiny
    from imagebind_llm.encoders.imagebind import ImageBind

    config = {"tiny": imagebind_tiny, "huge": imagebind_huge}[preset]()
    if preset == "tiny":
        return ImageBind(config).to(device=device, dtype=dtype).eval()
    with torch.device("meta"):
        model = ImageBind(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    _cheap_init(model, config)
    return model.eval()


def _cheap_init(model, config) -> None:
    import torch
    from torch import nn

    generator = torch.Generator(device="cpu").manual_seed(0)
    largest = max(p.numel() for p in model.parameters())
    pool = torch.randn(largest + 4099, generator=generator).to(model.device)
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    counter = 0
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if name.endswith("log_logit_scale"):
                    continue
                if isinstance(module, norms):
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif name == "bias":
                    param.zero_()
                else:
                    if isinstance(module, nn.Embedding):
                        std = 0.02
                    elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and param.ndim >= 2:
                        std = (param[0].numel()) ** -0.5
                    else:  # free tensors: cls tokens, position embeddings, bias_kv tokens
                        std = 0.02
                    offset = (counter * 4099) % (pool.numel() - param.numel() + 1)
                    param.copy_(pool[offset:offset + param.numel()].view_as(param)).mul_(std)
                    counter += 1
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        for name, tensor in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith("log_logit_scale"):
                scale = getattr(config.logit_scales, name.split(".")[0])
                tensor.fill_(math.log(scale))
        for name, buf in model.named_buffers():
            if buf.is_floating_point() and not name.endswith("log_logit_scale") and "running_" not in name:
                buf.zero_()


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def bench_case(model, kind: str, item, preset: str, batch: int, dtype_name: str, args, device,
               predicted: tuple[float, str] | None) -> EncodeResult:
    """Time ``encode_all`` on a batch of ``item`` repeated; see the module doc for the budget rules."""
    import torch

    from imagebind_llm.preprocess import KIND_TO_MODALITY

    result = EncodeResult(kind, preset, batch, dtype_name)
    result.weights_mib = model_bytes(model) / 2**20
    budget = args.max_seconds_per_case
    planned = args.warmup + 1
    predicted_s = predicted[0] if predicted is not None else None
    if predicted_s is not None and predicted_s * planned > budget:
        result.skipped = (f"predicted {predicted_s:.3g} s per iteration ({predicted[1]}) x "
                          f"{planned} (warm-up + 1 timed) > --max-seconds-per-case {budget:g}")
        return result
    modality = KIND_TO_MODALITY[kind]
    x = item.unsqueeze(0).expand(batch, *item.shape).contiguous().to(device)
    timed: list[float] = []
    with PeakMemory(device) as memory, torch.inference_mode():
        start = time.perf_counter()
        for _ in range(args.warmup):
            t0 = time.perf_counter()
            model.encode_all(modality, x)
            _sync(device)
            result.warmup_s.append(time.perf_counter() - t0)
        spent = time.perf_counter() - start
        per_iter = result.warmup_s[-1] if result.warmup_s else predicted_s
        wanted = args.repeats
        if per_iter is not None:
            fits = int((budget - spent) // per_iter) if per_iter > 0 else wanted
            if fits < 1:
                result.skipped = (f"warm-up iteration took {per_iter:.3g} s; no timed iteration fits "
                                  f"in --max-seconds-per-case {budget:g}")
            elif fits < wanted:
                result.note = f"{fits} timed iteration(s) instead of {wanted} to stay within {budget:g} s"
                wanted = fits
        if result.skipped is None:
            timed_start = time.perf_counter()
            cpu_start = time.process_time()
            while len(timed) < wanted or (time.perf_counter() - timed_start < args.min_time
                                          and time.perf_counter() - start < budget):
                t0 = time.perf_counter()
                model.encode_all(modality, x)
                _sync(device)
                timed.append(time.perf_counter() - t0)
                if len(timed) >= 10_000:
                    break
            if device.type == "cpu":
                wall = time.perf_counter() - timed_start
                result.cpu_share = (time.process_time() - cpu_start) / (wall * torch.get_num_threads())
    del x
    if timed:
        median = statistics.median(timed)
        result.iteration_s = timed
        result.iterations = len(timed)
        result.items_per_s = batch / median
        result.ms_per_item = median / batch * 1e3
    if memory.peak_bytes is not None:
        result.peak_mib = memory.peak_bytes / 2**20
        result.peak_exact = memory.exact
    return result


def bench_encoders(items: dict[str, Any], args, device) -> list[EncodeResult]:
    import torch

    from imagebind_llm.preprocess import load

    options = preprocess_options()
    inputs = {kind: load(kind, items[kind][0] if kind == "text" else items[kind], options)
              for kind in args.modalities}
    results: list[EncodeResult] = []
    for preset in args.presets:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            trim_heap()
            t0 = time.perf_counter()
            model = build_model(preset, dtype, device)
            print(f"# built {preset} in {dtype_name} on {device} in {time.perf_counter() - t0:.1f} s "
                  f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
                  f"{model_bytes(model) / 2**20:.0f} MiB)", flush=True)
            image_rate = None  # images/s of this preset and dtype (the smallest batch measured)
            for kind in args.modalities:
                previous: EncodeResult | None = None
                for batch in args.batches:
                    predicted = None
                    if previous is not None and previous.items_per_s:
                        predicted = (batch / previous.items_per_s, f"batch {previous.batch} scaled")
                    elif previous is not None and previous.skipped:
                        predicted = (math.inf, "")
                    elif kind == "video" and image_rate:
                        clips = inputs["video"].shape[0]
                        predicted = (batch * clips / image_rate, f"{clips} clips x the image rate")
                    t0 = time.perf_counter()
                    result = bench_case(model, kind, inputs[kind], preset, batch, dtype_name, args, device,
                                        predicted)
                    if previous is not None and previous.skipped and result.skipped:
                        result.skipped = f"batch {previous.batch} of the same case was already skipped"
                    status = (f"skipped: {result.skipped}" if result.skipped
                              else f"{result.items_per_s:.3g} items/s, {result.iterations} iteration(s)")
                    print(f"#   {kind:8s} {preset:5s} b{batch:<3d} {dtype_name:9s} {status} "
                          f"[{time.perf_counter() - t0:.1f} s]", flush=True)
                    results.append(result)
                    previous = result
                    if kind == "image" and result.items_per_s and image_rate is None:
                        image_rate = result.items_per_s
            del model
            trim_heap()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for r in results:  # bfloat16 / float32 throughput of the same (kind, preset, batch)
        if r.dtype == "float32" or not r.items_per_s:
            continue
        base = next((b for b in results if b.dtype == "float32" and (b.kind, b.preset, b.batch)
                     == (r.kind, r.preset, r.batch)), None)
        if base is not None and base.items_per_s:
            r.bf16_ratio = r.items_per_s / base.items_per_s
    return results


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


_fmt = fmt_number  # noqa: E731 - the tables' number format (bench/common.py)


def table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def machine_info(device) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError, ValueError):
        info["ram_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def report(info, args, pre: list[PreprocessResult], enc: list[EncodeResult], device) -> str:
    out = []
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ", no GPU"
    out.append(f"machine: {info['cpu']}, {info['cpu_count']} CPU cores, torch {info['torch']} with "
               f"{info['torch_threads']} threads{gpu}; device {info['device']}")
    if info.get("loadavg_start") is not None:
        out.append(f"load average at start: {info['loadavg_start'][0]:.2f}, "
                   f"at end: {info['loadavg_end'][0]:.2f} "
                   f"(other processes on the machine slow the figures down)")
    if pre:
        out.append("")
        out.append("Preprocessing (imagebind_llm.preprocess.load, one item at a time, CPU)")
        rows = [[r.kind, _fmt(r.items_per_s), _fmt(r.ms_per_item), str(r.items), "x".join(map(str, r.shape)),
                 r.source] for r in pre]
        out.append(table(["modality", "items/s", "ms/item", "items", "output shape", "input"], rows,
                         {1, 2, 3}))
    if enc:
        mem = ("peak MiB = torch.cuda.max_memory_allocated during the case (weights + inputs + activations)"
               if device.type == "cuda" else
               "peak MiB = peak RSS growth over the case's start (activations and workspaces on top of the "
               "resident weights and input)")
        out.append("")
        out.append(f"Encoding (ImageBind.encode_all under inference_mode, "
                   f"{args.warmup} warm-up iteration(s), "
                   f"items/s = batch / median iteration time)")
        rows = []
        for r in enc:
            cpu = [] if device.type != "cpu" else ["-" if r.cpu_share is None else f"{100 * r.cpu_share:.0f}"]
            if r.skipped:
                rows.append([r.kind, r.preset, str(r.batch), r.dtype, "skipped", "-", "0", *cpu, "-",
                             _fmt(r.weights_mib), "-"])
                continue
            peak = _fmt(r.peak_mib) + ("" if r.peak_exact else "*")
            ratio = (f"{r.bf16_ratio:.2f}" if r.bf16_ratio is not None
                     else ("-" if r.dtype != "float32" else ""))
            rows.append([r.kind, r.preset, str(r.batch), r.dtype, _fmt(r.items_per_s), _fmt(r.ms_per_item),
                         str(r.iterations), *cpu, peak, _fmt(r.weights_mib), ratio])
        header = ["modality", "preset", "batch", "dtype", "items/s", "ms/item", "iters",
                  *(["cpu%"] if device.type == "cpu" else []), "peak MiB", "weights MiB",
                  "bf16/fp32" if "float16" not in args.dtypes else "vs fp32"]
        out.append(table(header, rows, set(range(4, len(header))) | {2}))
        out.append(mem + ("; * = from ru_maxrss growth, only new process peaks count" if
                          any(not r.peak_exact for r in enc) else ""))
        out.append("video: 1 item = 15 clips (vision passes); audio: 1 item = 3 clips. "
                   f"{out_ratio_note(args)}")
        if device.type == "cpu":
            out.append("cpu% = process CPU time / (wall time x torch threads) over the timed iterations; "
                       "well below 100: other processes took the cores and the row's figures are too low.")
            starved = [r for r in enc if r.cpu_share is not None and r.cpu_share < 0.8]
            if starved:
                out.append(f"WARNING: {len(starved)} case(s) ran with cpu% below 80 (contended machine).")
        notes = [r for r in enc if r.skipped or r.note]
        if notes:
            out.append("")
            out.append("Notes")
            for r in notes:
                what = f"{r.kind} {r.preset} batch {r.batch} {r.dtype}"
                out.append(f"  {what}: {'SKIPPED: ' + r.skipped if r.skipped else r.note}")
    out.append("")
    out.append(f"process peak RSS (ru_maxrss): {PeakMemory.maxrss() / 2**20:.0f} MiB")
    return "\n".join(out)


def out_ratio_note(args) -> str:
    if "float32" not in args.dtypes or len(args.dtypes) < 2:
        return ""
    return ("The last column: items/s of the row's dtype / items/s of float32 for the same modality, "
            "preset, batch.")


# ------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    info = machine_info(device)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imagebind-bench-") as tmp:
        t0 = time.perf_counter()
        items = make_media(Path(tmp), args.modalities)
        print(f"# generated media for {','.join(args.modalities)} in {time.perf_counter() - t0:.1f} s",
              flush=True)
        pre = ([] if args.skip_preprocess
               else bench_preprocess(items, args.modalities, args.repeats, args.min_time))
        enc = [] if args.skip_encode else bench_encoders(items, args, device)
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["total_s"] = round(time.perf_counter() - began, 1)
    text = report(info, args, pre, enc, device)
    print()
    print(text)
    print(f"total time: {info['total_s']:.0f} s")
    results = {
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "peak_memory": ("cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"),
        "preprocess": [asdict(r) for r in pre],
        "encode": [asdict(r) for r in enc],
        "process_peak_rss_mib": PeakMemory.maxrss() / 2**20,
    }
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
