"""Reuse of earlier requests' keys and values: a chat turn prefills only what is new.

Every turn of a chat sends the whole conversation as its prompt, so without reuse the n-th turn
recomputes the keys and values of every earlier turn before its first token (on a CPU with a 7B
model that is seconds per turn, growing with the conversation). A causal model's keys and values
at position i depend only on the tokens 0..i and on the visual injection, which ImageBind-LLM
adds to every token of the injected layers. So when a request ends, :class:`PrefixCache` keeps
the keys and values of its tokens (prompt and answer) with its visual query; a later request with
the same visual query (or none, for both) whose prompt starts with the same tokens copies them
into its cache and prefills only the rest. Requests of different users share the prompt
template's header the same way.

Entries are looked up by the longest common prefix over all entries with an equal visual query
(compared exactly), kept in least-recently-used order and evicted beyond ``max_bytes``. An entry
that another one extends (same visual query, its tokens a prefix of the other's) is dropped.

Exactness: a prefill split at the reused prefix computes the rest with matrix products over fewer
rows than one prefill of the whole prompt, and the reused keys and values may come from decode
steps; CPU and GPU kernels round such products differently, so logits agree to about 1e-6 and
greedy tokens are the same unless two logits tie to that precision (the continuous batcher makes
the same trade). The pipeline leaves reuse off unless asked (:meth:`Pipeline.enable_prefix_cache`);
the app turns it on (``--prefix-cache-mb``).

The caches it reads and writes have the layout of :class:`~imagebind_llm.llama.KVCache`:
``(n_layers, batch, heads, length, head_dim)``, one row per request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

__all__ = ["PrefixCache", "PrefixCacheStats"]


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0  # prompt tokens not prefilled thanks to the cache
    prompt_tokens: int = 0  # prompt tokens of every lookup
    stored: int = 0
    evicted: int = 0


@dataclass(eq=False)
class _Entry:
    tokens: np.ndarray  # int64, the tokens at cache columns 0 .. len-1
    visual_query: torch.Tensor | None
    keys: torch.Tensor  # (n_layers, heads, len, head_dim)
    values: torch.Tensor
    nbytes: int = field(init=False)

    def __post_init__(self):
        self.nbytes = 2 * self.keys.numel() * self.keys.element_size() + self.tokens.nbytes


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differs = np.flatnonzero(a[:n] != b[:n])
    return int(differs[0]) if len(differs) else n


def _same_visual(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


class PrefixCache:
    """Keys and values of finished requests, reused by later requests that start alike (see the
    module doc). Safe to share between threads. ``max_bytes``: the most memory the entries take
    (on the model's device); an entry larger than that is not kept."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._next_id = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (call it when the model's weights change)."""
        with self._lock:
            self._entries.clear()

    def restore(self, prompt: Sequence[int], visual_query: torch.Tensor | None, keys: torch.Tensor,
                values: torch.Tensor, row: int = 0) -> int:
        """Copy the cached keys and values of ``prompt``'s longest known prefix into row ``row``
        of ``keys``/``values`` (n_layers, batch, heads, length, head_dim), columns 0..n-1, and
        return n: the prompt's tokens left to prefill start at n. At most ``len(prompt) - 1``
        tokens are reused, so that the prefill still gives the last token's logits."""
        tokens = np.asarray(prompt, dtype=np.int64)
        with self._lock:
            self.stats.lookups += 1
            self.stats.prompt_tokens += len(tokens)
            best, length = None, 0
            for key, entry in self._entries.items():
                if not _same_visual(entry.visual_query, visual_query):
                    continue
                common = _common_prefix(entry.tokens, tokens)
                if common > length:
                    best, length = key, common
            length = min(length, len(tokens) - 1, keys.shape[3])
            if best is None or length <= 0:
                return 0
            entry = self._entries[best]
            self._entries.move_to_end(best)
            self.stats.hits += 1
            self.stats.reused_tokens += length
        keys[:, row, :, :length] = entry.keys[:, :, :length]
        values[:, row, :, :length] = entry.values[:, :, :length]
        return length

    def keep_request(self, prompt: Sequence[int], answer: Sequence[int], visual_query: torch.Tensor | None,
                     keys: torch.Tensor, values: torch.Tensor, row: int = 0) -> bool:
        """Keep what a request left in row ``row`` once it produced ``answer`` (its tokens, EOS
        included): its prompt and every answer token but the last, which was produced but never
        fed. Nothing before its first token (the prefill may not have run). Returns whether kept."""
        if not answer:
            return False
        return self.store(list(prompt) + list(answer[:-1]), visual_query, keys, values, row)

    def store(self, tokens: Sequence[int], visual_query: torch.Tensor | None, keys: torch.Tensor,
              values: torch.Tensor, row: int = 0) -> bool:
        """Keep the keys and values of ``tokens``, which sit in row ``row`` of ``keys``/``values``
        at columns 0..len(tokens)-1 (copied: the caller may reuse its buffers). Returns whether
        the entry was kept."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 0:
            return False
        layers, _, heads, _, head_dim = keys.shape
        size = 2 * layers * heads * len(tokens) * head_dim * keys.element_size() + tokens.nbytes
        if size > self.max_bytes:
            return False
        with self._lock:
            # Nothing to add when a kept entry already holds these tokens (and perhaps more).
            for key, entry in self._entries.items():
                if (len(entry.tokens) >= len(tokens) and _same_visual(entry.visual_query, visual_query)
                        and _common_prefix(entry.tokens, tokens) == len(tokens)):
                    self._entries.move_to_end(key)
                    return True
        entry = _Entry(tokens, None if visual_query is None else visual_query.detach().clone(),
                       keys[:, row, :, :len(tokens)].clone(), values[:, row, :, :len(tokens)].clone())
        with self._lock:
            for key in [k for k, e in self._entries.items()  # entries the new one extends
                        if _same_visual(e.visual_query, visual_query)
                        and _common_prefix(e.tokens, tokens) == len(e.tokens)]:
                del self._entries[key]
            self._entries[self._next_id] = entry
            self._next_id += 1
            self.stats.stored += 1
            total = sum(e.nbytes for e in self._entries.values())
            while total > self.max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                total -= evicted.nbytes
                self.stats.evicted += 1
        return True
