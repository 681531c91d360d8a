"""Continuous batching of decode steps: the requests of many users share the model.

One background thread (:class:`DecodeBatcher`) owns the language model. A request (prompt ids,
its bind-network output, its :class:`~imagebind_llm.generation.GenerationConfig`, a cancel
check) is queued by :meth:`DecodeBatcher.stream`, which returns an iterator of the request's
token ids; the caller streams them while the thread decodes.

Design
------
* **Slots.** The thread keeps one pool of keys and values for every layer,
  ``(n_layers, slots, heads, max_seq_len, head_dim)``; a request owns one slot (row) from its
  admission to its end. Within a slot, cache column ``i`` holds the token at rotary position
  ``i``, exactly as the single-request cache does. The pool grows (doubling) up to ``max_batch``
  slots when more requests run at once; it is never larger than needed by the busiest moment.
* **Admission at step boundaries.** Between two decode steps the thread takes the waiting
  requests (up to ``max_batch`` running in all). An idle batcher starts a request at once
  (``window_ms``, default 0, makes it wait for others first): requests that come a little later
  join at the next step, and waiting cost a lone user its wait (with 10 ms, the app's one-user
  answers in bench/load.py took 107 instead of 58 ms, as gradio_client reads every 50 ms, and 8
  users gained nothing measurable). The requests taken at one boundary are prefilled together
  in one forward over the weights (``Llama.forward``'s arithmetic, each prompt right-padded to
  the longest and at its own positions; a lone request takes ``Llama.forward`` itself, so its
  first token is the unbatched one), then join the running batch. With a
  :class:`~imagebind_llm.prefix_cache.PrefixCache`, a slot first gets the keys and values of
  the longest prompt start an earlier request computed (a chat's earlier turns), and only the
  rest is prefilled; a request that ends normally leaves its own there.
* **One step decodes every running request.** Rows are kept compact in slots ``0 .. B-1``
  (when a request leaves, the last row moves into its slot), so a step reads the pool through
  plain views. Each row feeds its last token at its own position: per-row rotary angles, the
  new key and value written at the row's own column, and an attention mask that hides the
  columns past each row's length (stale values of earlier occupants included). The visual
  injection is per row (zero for text-only rows). Sampling is per row with the row's settings
  and its own seeded generator, so a seeded request draws the same tokens as it would alone.
* **Leaving.** A row leaves when it produced EOS or its token limit (the unbatched rules:
  ``min(max_new_tokens, max_seq_len - prompt length)``), when its cancel check fires, or when
  its consumer stopped reading. Its slot is freed at once.
* **Isolation.** An error while admitting a request (a malformed visual query, a token id
  outside the vocabulary, a cancel check that raises) goes to that request only. If a batched
  step or a group prefill fails, every row is retried alone and only the rows that fail alone
  get the error. The thread itself never stops on a request's error.

Exactness: a row's arithmetic is the unbatched path's, except that matrix products over B rows
may round differently than over one row (CPU BLAS uses other kernels for one row), so logits
agree to about 1e-6 and greedy tokens are the same unless two logits tie to that precision
(tests/test_batching.py checks every token on the golden model).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from .attention import scaled_dot_product_attention
from .errors import InputError
from .generation import CancelCheck, GenerationConfig, sample_next
from .llama import apply_rotary
from .prefix_cache import PrefixCache

log = logging.getLogger(__name__)

__all__ = ["BatcherClosed", "BatcherStats", "DecodeBatcher"]

_DONE = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed while a request was waiting or running."""


class _Failure:
    """An exception travelling to a request's consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def _cancelled(cancel: CancelCheck) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@dataclass
class BatcherStats:
    """Counters since the batcher started (read them for a benchmark)."""

    requests: int = 0
    prefills: int = 0
    prefill_forwards: int = 0  # forwards that prefilled them (several requests admitted together share one)
    steps: int = 0
    row_steps: int = 0  # sum over steps of the rows decoded
    max_rows: int = 0
    errors: int = 0

    @property
    def mean_rows(self) -> float:
        return self.row_steps / self.steps if self.steps else 0.0


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    visual_query: torch.Tensor | None
    config: GenerationConfig
    eos_id: int | None
    cancel: CancelCheck
    limit: int
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    closed: bool = False  # the consumer stopped reading
    # state while running
    slot: int = -1
    length: int = 0  # cached positions = rotary position of the next token fed
    produced: int = 0
    last: int = 0  # the token to feed next
    injections: list[torch.Tensor | None] | None = None
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)  # every token produced (EOS included)


class _SlotCache:
    """The :class:`~imagebind_llm.llama.KVCache` interface over one slot of the pool, for the
    prefill (``Llama.forward`` writes the prompt's keys and values straight into the slot)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slot: int):
        self.keys, self.values, self.slot = keys, values, slot
        self.max_len = keys.shape[3]

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions, {end} were asked for")
        rows = slice(self.slot, self.slot + 1)
        self.keys[layer, rows, :, start:end] = k
        self.values[layer, rows, :, start:end] = v
        return self.keys[layer, rows, :, :end], self.values[layer, rows, :, :end]


class DecodeBatcher:
    """Decode the requests of many callers together (see the module doc).

    ``model`` is an :class:`~imagebind_llm.model.ImageBindLLM`; ``max_batch`` the most requests
    decoded at once (later ones wait for a free slot); ``window_ms`` how long an idle batcher
    waits for more requests before it starts. The thread starts with the first request and
    runs until :meth:`close`.
    """

    def __init__(self, model, *, max_batch: int = 16, window_ms: float = 0.0,
                 prefix_cache: PrefixCache | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        self.model = model
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self.prefix_cache = prefix_cache
        self.stats = BatcherStats()
        self._pending: list[_Request] = []
        self._rows: list[_Request] = []  # row i sits in slot i
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self._batch_injections: tuple[tuple[int, ...], list[torch.Tensor | None]] | None = None

    # ------------------------------------------------------------------------------ callers

    def stream(self, prompt: Sequence[int], visual_query: torch.Tensor | None, config: GenerationConfig, *,
               eos_id: int | None = 2, cancel: CancelCheck = None) -> Iterator[int]:
        """The generated ids of one prompt (EOS excluded), as the unbatched
        ``generate_tokens(model, [prompt], config, visual_query=..., eos_id=..., cancel=...)``
        gives them. ``visual_query`` is the bind-network output (1, 1, dim) or None. Errors of
        this request are raised here; closing the iterator ends the request."""
        request = self._make_request(prompt, visual_query, config, eos_id, cancel)
        return self._consume(request)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; waiting and running requests end with :class:`BatcherClosed`."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def running(self) -> int:
        """Requests in the batch now (admitted, not finished)."""
        return len(self._rows)

    def _make_request(self, prompt, visual_query, config, eos_id, cancel) -> _Request:
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise InputError("prompt", "a prompt has no tokens", "non-empty prompts")
        max_len = self.model.config.llama.max_seq_len
        if len(prompt) >= max_len:
            raise InputError("prompt", f"the prompt has {len(prompt)} tokens, the model's context holds "
                             f"{max_len} (including the answer)", f"prompts shorter than {max_len} tokens")
        if visual_query is not None and (visual_query.ndim != 3 or visual_query.shape[0] != 1):
            raise ValueError(f"visual_query must be (1, 1, dim) for one request, got {tuple(visual_query.shape)}")
        return _Request(prompt, visual_query, config, eos_id, cancel,
                        limit=min(config.max_new_tokens, max_len - len(prompt)))

    def _consume(self, request: _Request) -> Iterator[int]:
        with self._cond:
            if self._closing:
                raise BatcherClosed("the decode batcher is closed")
            self._pending.append(request)
            self.stats.requests += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imagebind-llm-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        try:
            while True:
                try:
                    item = request.out.get(timeout=1.0)
                except queue.Empty:
                    if self._thread is None or not self._thread.is_alive():
                        raise BatcherClosed("the decode batcher stopped") from None
                    continue
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            request.closed = True  # the consumer is gone (done, error or closed early)
            with self._cond:
                self._cond.notify_all()

    # ------------------------------------------------------------------------------ the thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    admitted = self._admit()
                    if admitted is None:
                        break
                    self._prefill_group(admitted)
                    if self._rows:
                        self._decode_step()
                except Exception as error:  # noqa: BLE001 - a bug here must not stop serving
                    log.exception("decode batcher: unexpected error; ending the running requests")
                    for request in list(self._rows):
                        self._finish(request, _Failure(error))
        failure = _Failure(BatcherClosed("the decode batcher was closed"))
        with self._cond:
            waiting, self._pending = self._pending, []
        for request in waiting:
            request.out.put(failure)
        for request in list(self._rows):
            self._finish(request, failure)
        self._keys = self._values = None

    def _admit(self) -> list[_Request] | None:
        """The requests to start now (waits while there is nothing to do); None when closing."""
        with self._cond:
            if not self._rows:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return None
                deadline = time.monotonic() + self.window
                while len(self._pending) < self.max_batch and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            if self._closing:
                return None
            free = self.max_batch - len(self._rows)
            admitted, self._pending = self._pending[:free], self._pending[free:]
        return admitted

    def _ensure_slots(self, count: int) -> None:
        capacity = 0 if self._keys is None else self._keys.shape[1]
        if count <= capacity:
            return
        config = self.model.config.llama
        new_capacity = min(self.max_batch, max(count, 2 * capacity, 2))
        shape = (config.n_layers, new_capacity, config.n_heads, config.max_seq_len, config.head_dim)
        keys = torch.zeros(shape, dtype=self.model.dtype, device=self.model.device)
        values = torch.zeros(shape, dtype=self.model.dtype, device=self.model.device)
        if capacity:
            keys[:, :capacity] = self._keys
            values[:, :capacity] = self._values
        self._keys, self._values = keys, values

    def _prefill(self, request: _Request) -> None:
        """Admit one live request (see :meth:`_prefill_group`): its prompt into a free slot, its
        first token."""
        self.stats.prefills += 1
        try:
            self._ensure_slots(len(self._rows) + 1)
            slot = len(self._rows)
            start = self._prepare(request, slot)
            tokens = torch.tensor([request.prompt[start:]], dtype=torch.long, device=self.model.device)
            self.stats.prefill_forwards += 1
            logits = self.model.llama(tokens, start=start, cache=_SlotCache(self._keys, self._values, slot),
                                      injections=request.injections, last_only=True)
            token = int(sample_next(logits, request.config, request.generator)[0])
        except Exception as error:  # noqa: BLE001 - this request's error only
            self.stats.errors += 1
            request.out.put(_Failure(error))
            return
        self._join([request], [token])

    def _prepare(self, request: _Request, slot: int) -> int:
        """A request's injections and generator, and the prompt start that the prefix cache
        restored into ``slot`` (0 without one): where its prefill begins."""
        device = self.model.device
        if request.visual_query is not None:
            request.visual_query = request.visual_query.to(device)
            request.injections = self.model.injections(request.visual_query)
        if request.config.seed is not None and request.config.temperature > 0:
            request.generator = torch.Generator(device=device).manual_seed(request.config.seed)
        if self.prefix_cache is None:
            return 0
        return self.prefix_cache.restore(request.prompt, request.visual_query, self._keys, self._values, slot)

    def _prefill_group(self, requests: list[_Request]) -> None:
        """Admit the requests taken at one step boundary: those that ended while they waited are
        told so; the others get one forward over all their prompts (see
        :meth:`_prefill_together`), or go through :meth:`_prefill` one by one when alone or when
        the group's forward fails (so a failure stays with its request)."""
        live = []
        for request in requests:
            try:
                stop = request.closed or _cancelled(request.cancel)
            except Exception as error:  # noqa: BLE001 - this request's error only
                self.stats.prefills += 1
                self.stats.errors += 1
                request.out.put(_Failure(error))
                continue
            if stop:
                self.stats.prefills += 1
                request.out.put(_DONE)
                continue
            live.append(request)
        if len(live) > 1:
            try:
                tokens = self._prefill_together(live)
            except Exception as error:  # noqa: BLE001 - find the request(s) that fail alone
                log.warning("decode batcher: prefilling %d requests together failed (%s); one by one",
                            len(live), error)
            else:
                self._join(live, tokens)
                return
        for request in live:
            self._prefill(request)

    def _join(self, requests: list[_Request], tokens: list[int]) -> None:
        """Seat prefilled requests in the next slots (where their keys and values are) and pass
        on their first tokens: every row in place before any can leave."""
        first = len(self._rows)
        for index, request in enumerate(requests):
            request.slot, request.length = first + index, len(request.prompt)
            self._rows.append(request)
        self._batch_injections = None
        for request, token in zip(requests, tokens):
            self._emit(request, token)

    def _prefill_together(self, requests: list[_Request]) -> list[int]:
        """Prefill ``requests`` into the next free slots in one forward and sample their first
        tokens. Each prompt continues from what the prefix cache restored for it, at its own
        positions; shorter ones are right-padded (padding is neither written nor attended to
        by real tokens). One pass over the weights instead of one per request: on the 2-core
        CPU, 8 prompts of 50 tokens of the 2048-wide, 16-layer bfloat16 model of bench/load.py's
        decode-bound case took 2.0 s in one forward against 3.2 s one by one, and 8 users got
        1.05x to 1.12x the tokens/s (README, Performance)."""
        device = self.model.device
        first = len(self._rows)
        self._ensure_slots(first + len(requests))
        starts = [self._prepare(request, first + index) for index, request in enumerate(requests)]
        counts = [len(request.prompt) - start for request, start in zip(requests, starts)]
        tokens = torch.zeros(len(requests), max(counts), dtype=torch.long)
        for index, (request, start) in enumerate(zip(requests, starts)):
            tokens[index, :counts[index]] = torch.tensor(request.prompt[start:], dtype=torch.long)
        positions = torch.tensor(starts)[:, None] + torch.arange(tokens.shape[1])[None, :]
        logits = self._layers(tokens.to(device), positions.to(device), first, self._injections(requests),
                              counts=torch.tensor(counts, device=device))
        self.stats.prefills += len(requests)
        self.stats.prefill_forwards += 1
        return self._sample(requests, logits)

    def _emit(self, request: _Request, token: int) -> None:
        """Pass on a request's new token (the unbatched rules for EOS and the limit)."""
        request.produced += 1
        request.generated.append(token)
        if request.eos_id is not None and token == request.eos_id:
            self._finish(request, _DONE)
            return
        request.out.put(token)
        request.last = token
        if request.produced >= request.limit:
            self._finish(request, _DONE)

    def _finish(self, request: _Request, item) -> None:
        """Remove a running request (its slot goes to the last row) and tell its consumer."""
        running = request.slot >= 0 and request in self._rows
        prefix_cache = self.prefix_cache
        if running and prefix_cache is not None and item is _DONE:
            # Kept before the consumer hears of the end: a chat's next turn may follow at once.
            self._keep_prefix(prefix_cache, request)
        request.out.put(item)
        if not running:
            return
        slot, last = request.slot, self._rows[-1]
        if last is not request:
            length = last.length
            self._keys[:, slot, :, :length] = self._keys[:, last.slot, :, :length]
            self._values[:, slot, :, :length] = self._values[:, last.slot, :, :length]
            self._rows[slot] = last
            last.slot = slot
        self._rows.pop()
        request.slot = -1
        self._batch_injections = None

    def _keep_prefix(self, prefix_cache: PrefixCache, request: _Request) -> None:
        """Hand the finished request's keys and values to the prefix cache."""
        try:
            prefix_cache.keep_request(request.prompt, request.generated, request.visual_query, self._keys,
                                      self._values, request.slot)
        except Exception:  # noqa: BLE001 - only an optimisation: the answer is already complete
            log.exception("decode batcher: could not keep a finished request's keys and values")

    def _decode_step(self) -> None:
        # Rows whose request ended (cancelled, consumer gone, or a cancel check that raises) leave first.
        for request in list(self._rows):
            try:
                stop = request.closed or _cancelled(request.cancel)
            except Exception as error:  # noqa: BLE001
                self.stats.errors += 1
                self._finish(request, _Failure(error))
                continue
            if stop:
                self._finish(request, _DONE)
        rows = list(self._rows)
        if not rows:
            return
        try:
            logits = self._forward(rows, 0)
            outcomes: list[object] = self._sample(rows, logits)
        except Exception as batch_error:  # noqa: BLE001 - find the row(s) that fail alone
            if len(rows) == 1:
                outcomes = [_Failure(batch_error)]
            else:
                log.warning("decode batcher: a batched step failed (%s); retrying its %d rows one by one",
                            batch_error, len(rows))
                outcomes = []
                for request in rows:
                    try:
                        outcomes += self._sample([request], self._forward([request], request.slot))
                    except Exception as error:  # noqa: BLE001
                        outcomes.append(_Failure(error))
        self.stats.steps += 1
        self.stats.row_steps += len(rows)
        self.stats.max_rows = max(self.stats.max_rows, len(rows))
        for request in rows:  # every row's new column is written: count it before any row moves
            request.length += 1
        for request, outcome in zip(rows, outcomes):
            if isinstance(outcome, _Failure):
                self.stats.errors += 1
                self._finish(request, outcome)
            else:
                self._emit(request, outcome)  # type: ignore[arg-type]

    def _sample(self, rows: list[_Request], logits: torch.Tensor) -> list[int]:
        greedy = None
        tokens = []
        for index, request in enumerate(rows):
            if request.config.temperature == 0:
                if greedy is None:
                    greedy = logits.argmax(dim=-1).tolist()
                tokens.append(int(greedy[index]))
            else:
                tokens.append(int(sample_next(logits[index:index + 1], request.config, request.generator)[0]))
        return tokens

    def _injections(self, rows: list[_Request]) -> list[torch.Tensor | None]:
        """Per layer: the rows' injections stacked (B, H, 1, head_dim), zero for text-only rows;
        None for a layer no row injects into. Rebuilt only when the batch changes."""
        key = tuple(id(r) for r in rows)
        if self._batch_injections is not None and self._batch_injections[0] == key:
            return self._batch_injections[1]
        layers: list[torch.Tensor | None] = [None] * self.model.config.llama.n_layers
        for index in range(len(layers)):
            parts = [r.injections[index] if r.injections is not None else None for r in rows]
            present = [p for p in parts if p is not None]
            if present:
                zero = torch.zeros_like(present[0])
                layers[index] = torch.cat([p if p is not None else zero for p in parts])
        if len(rows) == len(self._rows):
            self._batch_injections = (key, layers)
        return layers

    def _forward(self, rows: list[_Request], first_slot: int) -> torch.Tensor:
        """One decoding step of ``rows`` (in slots ``first_slot ..``): logits (B, vocab) float32,
        each row feeding its last token at its own position."""
        device = self.model.device
        tokens = torch.tensor([[r.last] for r in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[r.length] for r in rows], dtype=torch.long, device=device)
        return self._layers(tokens, positions, first_slot, self._injections(rows))

    def _layers(self, tokens: torch.Tensor, positions: torch.Tensor, first_slot: int,
                injections: list[torch.Tensor | None], counts: torch.Tensor | None = None) -> torch.Tensor:
        """The layer loop of ``Llama.forward`` for ``tokens`` (B, L) in slots ``first_slot ..``,
        each row at its own ``positions`` (B, L): per-row rotary angles, keys and values written
        at those columns, attention to the columns up to each position. ``counts`` (B): a row's
        real tokens, the rest right padding (not written; real tokens never attend to it).
        Returns the logits (B, vocab) float32 of each row's last real token."""
        llama = self.model.llama
        device = self.model.device
        batch, length = tokens.shape
        last = counts - 1 if counts is not None else torch.full((batch,), length - 1, device=device)
        rows = torch.arange(batch, device=device)
        end = int(positions[rows, last].max()) + 1
        cos_table, sin_table = llama.rotary(device)
        angles = positions.clamp(max=cos_table.shape[0] - 1)  # padding may run past the context
        cos, sin = cos_table[angles], sin_table[angles]  # (B, L, head_dim / 2)
        h = llama.tok_embeddings(tokens)
        mask = None
        if length > 1 or bool((positions[rows, last] + 1 != end).any()):
            blocked = torch.arange(end, device=device)[None, None, :] > positions[:, :, None]  # (B, L, end)
            mask = torch.zeros(blocked.shape, dtype=h.dtype, device=device)
            mask = mask.masked_fill(blocked, torch.finfo(h.dtype).min)[:, None]
        written = (torch.arange(length, device=device)[None, :] <= last[:, None])  # (B, L)
        slot_of = (rows + first_slot)[:, None].expand(batch, length)[written]
        column_of = positions[written]
        slots = slice(first_slot, first_slot + batch)
        for index, layer in enumerate(llama.layers):
            attention = layer.attention
            x = layer.attention_norm(h)
            q = attention._project("wq", x).unflatten(-1, (attention.n_heads, -1))
            k = attention._project("wk", x).unflatten(-1, (attention.n_heads, -1))
            v = attention._project("wv", x).unflatten(-1, (attention.n_heads, -1))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, L, H, D)
            keys, values = self._keys[index], self._values[index]
            keys[slot_of, :, column_of] = k[written]
            values[slot_of, :, column_of] = v[written]
            q = q.transpose(1, 2)  # (B, H, L, D)
            out = scaled_dot_product_attention(q, keys[slots, :, :end], values[slots, :, :end], attn_mask=mask)
            if injections[index] is not None:
                out = out + injections[index]
            out = out.transpose(1, 2).reshape(batch, length, -1)
            h = h + attention._project("wo", out)
            h = h + layer.feed_forward(layer.ffn_norm(h))
        return llama.output(llama.norm(h[rows, last])).float()
