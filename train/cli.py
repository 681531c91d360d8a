"""``python -m train --stage pretrain|finetune --config run.yaml [section.key=value ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import STAGES, build_config, describe, parse_overrides

EPILOG = """\
examples:
  python -m train --stage pretrain --config train/configs/pretrain.yaml
  python -m train --stage finetune --config train/configs/finetune.yaml optim.batch_size=2 optim.accum_iter=8
  python -m train --stage pretrain --config run.yaml --precompute          # ImageBind features to data.features
  torchrun --nproc_per_node 8 -m train --stage finetune --config run.yaml --strategy fsdp
  python -m train --stage finetune --config run.yaml --resume auto         # continue the newest checkpoint
  python -m train --stage finetune --config run.yaml --pretrained 7B-pretrained   # start from the official stage 1
overrides are section.key=value (sections: model, data, optim; run keys have no section), values in YAML
syntax: optim.blr=1e-3 data.train=[a.json,b.json] optim.clip_grad=null. See train/README.md.
"""

_TAG = "_imagebind_llm_train"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="Train ImageBind-LLM (stage 1 pre-training, "
                                "stage 2 instruction tuning).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=tuple(STAGES), help="which stage's defaults to start from (default: the "
                   "config's 'stage', else finetune)")
    p.add_argument("--config", help="run YAML (sections model, data, optim; the official META data YAML works too), "
                   "or a bundled one by name: laptop, pretrain, finetune (train/configs/)")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), help="ddp (default) or fsdp (FSDP2 fully_shard)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--resume", help="a checkpoint file, a run folder, or 'auto' (the newest in out_dir)")
    p.add_argument("--out", help="output folder (out_dir; may contain {stage})")
    p.add_argument("--pretrained", metavar="PATH|NAME",
                   help="the adapter to start from (model.adapter): a file (an official {'model': ...} adapter or "
                        "full training checkpoint such as 7B-pretrained.pth, 'llma' keys accepted; a project "
                        "export), or an official name: 7B-pretrained (the released stage-1 weights), 7B, 7B-beta, "
                        "found in the Hugging Face cache or downloaded")
    p.add_argument("--precompute", action="store_true",
                   help="only write the ImageBind features of the data to data.features (resumable), then stop")
    p.add_argument("--export-only", action="store_true",
                   help="only export the adapter of the --resume checkpoint (no training; give the run's "
                        "configuration and data.train again)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="settings that replace the config's (see below)")
    return p


#: Official adapter files that ``--pretrained`` accepts by name (imagebind_llm.presets.WEIGHT_FILES).
PRETRAINED_NAMES = ("7B-pretrained", "7B", "7B-beta")


def pretrained_path(value: str) -> str:
    """``--pretrained``: an existing file as given, or an official adapter's name resolved by
    :func:`imagebind_llm.hub.resolve` (Hugging Face cache, else a download with progress)."""
    path = Path(value).expanduser()
    if path.is_file():
        return str(path)
    if value not in PRETRAINED_NAMES:
        raise SystemExit(f"--pretrained {value}: no such file, and not the name of an official adapter "
                         f"({', '.join(PRETRAINED_NAMES)})")
    from imagebind_llm.errors import CheckpointError
    from imagebind_llm.hub import resolve
    from imagebind_llm.presets import WEIGHT_FILES

    try:
        return str(resolve(WEIGHT_FILES[value], role="pretrained"))
    except CheckpointError as error:
        raise SystemExit(f"error: --pretrained {value}: {error}") from None


LOGGERS = ("train", "imagebind_llm")  # the loggers a training run sends to stdout and train.log


def setup_logging(is_main: bool, out_dir: Path | None) -> list[logging.Handler]:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main and out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _TAG, True)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _TAG, False)]:
            logger.removeHandler(old)
            old.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO if is_main else logging.WARNING)
        logger.propagate = False
    return handlers


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_intermixed_args(argv)
    overrides = parse_overrides(args.overrides)
    for flag, key in (("strategy", "strategy"), ("device", "device"), ("resume", "resume"), ("out", "out_dir")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.export_only and not (args.resume or overrides.get("resume")):
        raise SystemExit("--export-only needs --resume CHECKPOINT")
    config = build_config(args.stage, args.config, overrides)  # a bad config fails before any download
    if args.pretrained is not None:
        overrides["model.adapter"] = pretrained_path(args.pretrained)
        config = build_config(args.stage, args.config, overrides)
    if args.print_config:
        print(describe(config))
        return {"config": config.to_dict()}

    from . import distributed as D
    from .engine import run

    info = D.init(config.device)
    # restored on return: a caller in the same process (python -m train.toyworld, tests) keeps
    # its own logging, instead of loggers that no longer propagate
    previous = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in LOGGERS}
    handlers = setup_logging(info.is_main, config.output_dir)
    ok = False
    try:
        summary = run(config, info, precompute_only=args.precompute, export_only=args.export_only)
        ok = True
        return summary
    finally:
        if ok:
            D.cleanup(info)
        elif info.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
        for name, (level, propagate) in previous.items():
            logger = logging.getLogger(name)
            for handler in handlers:
                logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        for handler in handlers:
            handler.flush()
            if isinstance(handler, logging.FileHandler):
                handler.close()
