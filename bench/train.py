"""Training throughput and peak memory per stage, from raw media against precomputed features.

    python bench/train.py                      # both stages, tiny-untrained preset, CPU or GPU
    python bench/train.py --steps 20 --batch-size 8 --json out.json

For each stage (pretrain: captions; finetune: LLaVA records) the script generates JPEG photos
(640x480, like a typical data set image) and the stage's data file in a temporary folder,
precomputes their ImageBind features once (``python -m train --precompute``; its items/s are
reported too), then trains the ``tiny-untrained`` preset for ``--warmup + --steps`` optimizer
steps twice: from the raw media (every step decodes, crops and encodes its images with the
frozen ImageBind) and from the precomputed features (no encoder loaded at all).

* **samples/s**: examples per step divided by the *best* step time over the timed steps (after
  the warm-up) of ``--repeats`` runs per case, raw and features alternating; the throughput at
  the median step time is printed beside it. The best time is what the work costs on an idle
  machine (the median includes other processes' load on a shared one). Each step is timed from
  fetching its batch to the end of the optimizer step (``metrics.jsonl``: data loading included,
  with ``--workers`` loader processes, default 0).
* **peak memory**: CUDA: ``torch.cuda.max_memory_allocated`` over the run. CPU: the peak
  resident set size (sampled from ``/proc/self/statm`` every 2 ms by a thread) minus the RSS
  before the run was built, i.e. what building and training the model adds to the process.
  Every case runs in its own process so that one case's allocations do not hide another's.

The table ends with the ratios features / raw (speed-up, memory). ``main(argv)`` returns the
results; importing this file is cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("pretrain", "finetune")
SOURCES = ("raw", "features")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def make_data(folder: Path, count: int) -> dict[str, Path]:
    """``count`` 640x480 JPEG photos-like images plus a caption CSV and a LLaVA JSON."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, records = [], []
    for i in range(count):
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([(x * (i + 1)) % 256, (y * 3 + i * 17) % 256, ((x + y) // (i % 5 + 1)) % 256], -1)
        noise = rng.integers(0, 40, size=base.shape)
        Image.fromarray((base + noise).clip(0, 255).astype("uint8")).save(folder / f"photo{i}.jpg", quality=90)
        caption = f"a synthetic photo number {i} with stripes and noise"
        rows.append(f"photo{i}.jpg\t{caption}\n")
        records.append({"image": f"photo{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": f"It shows {caption}, in colours that change from left to right."}]})
    (folder / "captions.csv").write_text("url\tcaption\n" + "".join(rows))
    (folder / "llava.json").write_text(json.dumps(records))
    return {"pretrain": folder / "captions.csv", "finetune": folder / "llava.json"}


# ---------------------------------------------------------------------------------------------
# One case, in its own process
# ---------------------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident set size of this process while active (a sampling thread)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def train_args(stage: str, data: Path, out: Path, args, features: Path | None) -> list[str]:
    items = ["--stage", stage, "model.preset=tiny-untrained", f"data.train=[{data}]", f"out_dir={out}",
             "progress=false", "log_interval=0", "tensorboard=false", "data.split_epoch=1",
             f"data.num_workers={args.workers}", f"optim.batch_size={args.batch_size}",
             f"optim.max_steps={args.warmup + args.steps}", "optim.warmup_steps=1", f"device={args.device}"]
    if features is not None:
        items.append(f"data.features={features}")
    return items


def run_case(args) -> dict:
    """Inside the child process: one training run, measured."""
    import logging

    import torch

    logging.disable(logging.INFO)
    sys.path.insert(0, str(ROOT))
    from train import main as train_main

    features = Path(args.case_features) if args.case_features else None
    out = Path(args.case_out)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as memory:
        started = time.perf_counter()
        summary = train_main(train_args(args.case_stage, Path(args.case_data), out, args, features))
        wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "lr" in r and r["step"] > args.warmup]
    peak = torch.cuda.max_memory_allocated() if cuda else memory.peak - memory.start
    return {"stage": args.case_stage, "source": "features" if features else "raw",
            "step_seconds": [r["samples"] / r["samples_per_s"] for r in timed],
            "step_samples": [r["samples"] for r in timed], "peak_bytes": peak,
            "memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS growth", "wall_s": wall,
            "final_loss": summary["losses"][-1]}


def aggregate(runs: list[dict]) -> dict:
    """The repeats of one case: throughput at the best and at the median step time (all timed
    steps of all repeats), the largest peak memory."""
    seconds = [t for run in runs for t in run["step_seconds"]]
    samples = statistics.median(n for run in runs for n in run["step_samples"])
    return {"stage": runs[0]["stage"], "source": runs[0]["source"], "samples_per_s": samples / min(seconds),
            "samples_per_s_median": samples / statistics.median(seconds), "timed_steps": len(seconds),
            "repeats": len(runs), "peak_bytes": max(run["peak_bytes"] for run in runs),
            "memory_kind": runs[0]["memory_kind"]}


def spawn(extra: list[str], threads: int = 0) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    result = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, cwd=ROOT, env=env,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark case failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated: pretrain,finetune")
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per case (default 12)")
    p.add_argument("--repeats", type=int, default=3, help="runs per case, alternating raw/features (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    p.add_argument("--images", type=int, default=32, help="distinct images generated (default 32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per case (default: torch's choice; 1 gives steadier figures on a "
                        "machine shared with other jobs)")
    p.add_argument("--json", help="also write the results here")
    for hidden in ("case-stage", "case-data", "case-out", "case-features"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def table(results: list[dict]) -> str:
    header = (f"{'stage':<9} {'raw samples/s':>14} {'features samples/s':>19} {'speed-up':>9} {'(median)':>9} "
              f"{'raw peak MiB':>13} {'features peak MiB':>18} {'memory ratio':>13}")
    lines = [header, "-" * len(header)]
    for stage in dict.fromkeys(r["stage"] for r in results):
        raw = next(r for r in results if r["stage"] == stage and r["source"] == "raw")
        feat = next(r for r in results if r["stage"] == stage and r["source"] == "features")
        lines.append(f"{stage:<9} {raw['samples_per_s']:>14.1f} {feat['samples_per_s']:>19.1f} "
                     f"{feat['samples_per_s'] / raw['samples_per_s']:>8.1f}x "
                     f"{feat['samples_per_s_median'] / raw['samples_per_s_median']:>8.1f}x "
                     f"{raw['peak_bytes'] / 2**20:>13.1f} "
                     f"{feat['peak_bytes'] / 2**20:>18.1f} {feat['peak_bytes'] / max(raw['peak_bytes'], 1):>12.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.case_stage:
        result = run_case(args)
        print(json.dumps(result))
        return result
    stages = [s for s in args.stages.split(",") if s]
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
              "--workers", str(args.workers), "--device", args.device, "--threads", str(args.threads)]
    results, precompute = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        files = make_data(tmp / "data", args.images)
        for stage in stages:
            features = tmp / f"features-{stage}"
            started = time.perf_counter()
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            command = [sys.executable, "-m", "train", *train_args(stage, files[stage], tmp / "pre", args, features),
                       "--precompute"]
            subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
            precompute[stage] = args.images / (time.perf_counter() - started)
            runs: dict[str, list[dict]] = {source: [] for source in SOURCES}
            for repeat in range(args.repeats):  # alternate the sources, so that load spikes hit both
                for source in SOURCES:
                    case = ["--case-stage", stage, "--case-data", str(files[stage]), "--case-out",
                            str(tmp / f"run-{stage}-{source}-{repeat}")]
                    if source == "features":
                        case += ["--case-features", str(features)]
                    runs[source].append(spawn(common + case, args.threads))
            for source in SOURCES:
                result = aggregate(runs[source])
                results.append(result)
                print(f"{stage:<9} {source:<9} best {result['samples_per_s']:8.1f} samples/s, median "
                      f"{result['samples_per_s_median']:8.1f}; peak {result['peak_bytes'] / 2**20:8.1f} MiB "
                      f"({result['memory_kind']})", flush=True)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print()
    print(f"tiny-untrained preset, batch {args.batch_size}, {args.repeats} x {args.steps} timed steps after "
          f"{args.warmup}, "
          f"{args.workers} loader workers, {args.threads or torch.get_num_threads()} torch threads, device {device}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{platform.machine()}")
    print(table(results))
    rates = ", ".join(f"{s} {v:.1f} images/s" for s, v in precompute.items())
    print(f"precompute (whole command incl. start-up): {rates}")
    output = {"results": results, "precompute_images_per_s": precompute, "device": device, "threads": args.threads,
              "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats}
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2))
    return output


if __name__ == "__main__":
    main()
