"""Training of ImageBind-LLM: stage 1 image-caption pre-training and stage 2 multimodal
instruction tuning, on one CPU or many GPUs (``python -m train --stage pretrain|finetune``).
See train/README.md."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> dict:
    """The command line (``python -m train ...``); returns the run summary."""
    from .cli import main as _main

    return _main(argv)


__all__ = ["main"]
