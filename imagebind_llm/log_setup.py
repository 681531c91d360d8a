"""Logging of the command lines and the app: one line per message, whichever library sends it."""

from __future__ import annotations

import logging

#: The command lines' format: time, logger, message.
FORMAT = "%(asctime)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, fmt: str = FORMAT) -> None:
    """``logging.basicConfig`` for a command, with each message printed once.

    huggingface_hub prints through a handler of its own and also passes its messages on to the
    root logger, so every download retry or warning showed twice; its own handler is kept."""
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger("huggingface_hub").propagate = False
