"""The embeddings of files encoded lately, so that a second question about the same file does not
read, decode and encode it again (for a video or a 7B setup's ImageBind huge, most of the time to
the first token).

A file is known by its resolved path, size and modification time (an upload the app stores once
keeps all three; a file written again gets a new time), together with the input kind, the output
asked for ("unit", "official", "prenorm") and the preprocessing options of that kind. Other inputs
(texts, arrays, bytes, PIL images) are always encoded: texts are cheap, the others have no cheap
identity. The embeddings are exactly the ones encoding gives. Used by
:class:`~imagebind_llm.embedding.Embedder` when its ``memo`` is set (the app sets one); it belongs
to one encoder: replace it when the encoder's weights change.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import torch

__all__ = ["EmbeddingMemo", "EmbeddingMemoStats"]

DEFAULT_ENTRIES = 256  # about 1 MiB of ImageBind-huge embeddings


@dataclass
class EmbeddingMemoStats:
    hits: int = 0
    misses: int = 0


class EmbeddingMemo:
    """The last ``entries`` file embeddings (least recently used first out); safe to share between threads."""

    def __init__(self, entries: int = DEFAULT_ENTRIES):
        if entries < 1:
            raise ValueError(f"entries must be at least 1, got {entries}")
        self.entries = int(entries)
        self.stats = EmbeddingMemoStats()
        self._rows: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def key(kind: str, value: Any, output: str, options: Any) -> Hashable | None:
        """The key of a file input, or None for an input that is not a file on disk (or is gone:
        reading it will say so)."""
        if kind == "text" or not isinstance(value, (str, Path)):
            return None
        try:
            path = os.path.realpath(value)
            status = os.stat(path)
        except (OSError, ValueError):
            return None
        return kind, output, path, status.st_size, status.st_mtime_ns, repr(options)

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                self.stats.misses += 1
                return None
            self._rows.move_to_end(key)
            self.stats.hits += 1
            return row

    def put(self, key: Hashable, row: torch.Tensor) -> None:
        with self._lock:
            self._rows[key] = row
            self._rows.move_to_end(key)
            while len(self._rows) > self.entries:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
