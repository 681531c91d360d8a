"""Toy-world training step times in float32 and in bfloat16 autocast.

    python bench/toyworld.py                   # vision, bind and language-model steps
    python bench/toyworld.py --steps 40 --json out.json

Renders a small toy world (``--scenes`` image scenes, half of them in every modality) into a
temporary folder, then runs the training steps of ``python -m train.toyworld`` that dominate its
run time, each for ``--steps`` optimizer steps with the default sizes (batches, models), once per
precision, alternating, ``--repeats`` times:

* **vision**: image-caption (+ video-image every third step) contrastive steps of the vision and
  text encoders;
* **bind**: audio, depth, thermal, IMU and point-cloud encoders bound to the frozen images;
* **language model**: the small LLaMA on the world's text.

Vision and bind are timed by their training loop (loading the inputs excluded); the language
model's time is its whole step (a tokenizer load and a few hundred lines encoded besides the
training). Printed: seconds per step (the best of the repeats: what the work costs on an idle
machine) and the float32 / bfloat16 ratio, the speed-up of ``precision=auto`` on a CPU with
bfloat16 instructions. ``main(argv)`` returns the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on the path, and bench/train.py would hide the train package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

PRECISIONS = ("fp32", "bf16")
STEPS = ("vision", "bind", "llama")


def time_step(run, step: str, steps: int) -> float:
    """Seconds per optimizer step of one toy-world training step."""
    from train import toyworld

    c = run.config
    if step == "vision":
        run.config = replace(c, align_steps=steps)
        details = toyworld.step_vision(run)
        return details["loss"]["seconds"] / steps  # the training loop's own clock, at its last step
    if step == "bind":
        run.config = replace(c, bind_steps=steps)
        return toyworld.step_bind(run)["loss"]["seconds"] / steps
    run.config = replace(c, lm_steps=steps)
    started = time.perf_counter()
    toyworld.step_llama(run)
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per case")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=192)
    parser.add_argument("--only", choices=STEPS, action="append", help="time only these steps")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    from train import toyworld
    from train.distributed import cpu_has_native_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bfloat16 instructions: {'yes' if cpu_has_native_bf16() else 'no (emulated: expect a slow-down)'}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        config = toyworld.ToyWorldConfig(out=folder, image_scenes=args.scenes, modality_scenes=args.scenes // 2,
                                         cache_scenes=8)
        run = toyworld.Run(config)
        toyworld.step_world(run)
        toyworld.step_vision(toyworld.Run(replace(config, align_steps=2)))  # the frozen vision weights for bind
        toyworld.step_tokenizer(run)
        for step in args.only or STEPS:
            best = {p: float("inf") for p in PRECISIONS}
            for _ in range(args.repeats):
                for precision in PRECISIONS:
                    trial = toyworld.Run(replace(config, precision=precision))
                    best[precision] = min(best[precision], time_step(trial, step, args.steps))
            results[step] = {**best, "ratio": best["fp32"] / best["bf16"]}
    print(f"\n{'step':<16}{'fp32 s/step':>12}{'bf16 s/step':>12}{'fp32/bf16':>11}")
    for step, r in results.items():
        print(f"{step:<16}{r['fp32']:>12.3f}{r['bf16']:>12.3f}{r['ratio']:>10.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
