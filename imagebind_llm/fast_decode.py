"""Fast decoding: a static KV cache, a one-token step that ``torch.compile`` can compile (CUDA
graphs on a GPU) and a decode loop without a host synchronisation per token.

:func:`imagebind_llm.generation.generate_tokens` is the plain eager loop (the baseline): it
calls ``Llama.forward`` for every token, builds the mask and positions on the host and copies
every step's tokens to the host. :class:`StaticDecoder` gives the same tokens with:

* **A static KV cache.** Keys and values of every layer live in two buffers
  ``(n_layers, B, H, L, head_dim)`` allocated once per (batch, length) and reused by the next
  request of the same shape; a step writes its new column in place (``index_copy_`` in the
  compiled step), so the shapes a compiled step sees never change during a request.
* **Device-side state.** The new tokens, each row's rotary position, the cache column and the
  left padding are tensors on the device, advanced in place; the visual injection
  (:meth:`~imagebind_llm.model.ImageBindLLM.injections`) is computed once per request into a
  buffer (zeros for a text-only row).
* **Sampling on the device** with :func:`~imagebind_llm.generation.sample_next` itself (greedy
  argmax; temperature, top-k, top-p and the seeded ``torch.Generator`` exactly as the eager
  loop: the same logits give the same draws).
* **No host synchronisation per token** in :meth:`StaticDecoder.generate` (tokens are gathered
  on the device; whether every row has finished is read every ``check_every`` steps).
  :meth:`StaticDecoder.generate_tokens`, the streaming form the pipeline uses, must hand every
  token to its caller: it reads one small tensor per step and, on CUDA, launches the next step
  before it waits for that read, so the GPU computes while the caller handles the token.

Decoders (``kind``):

* ``"eager"``: the baseline :func:`~imagebind_llm.generation.generate_tokens`.
* ``"static"``: the static cache and the device-side loop, steps run eagerly. A step attends to
  the columns written so far (the host knows that count without asking the device), which is the
  eager loop's arithmetic: its tokens are bit-identical to ``"eager"``.
* ``"compiled"``: the same step over the whole cache length (a mask hides the unwritten columns)
  through ``torch.compile`` (CUDA: ``mode="reduce-overhead"``, i.e. CUDA graphs; CPU: inductor's
  default). It compiles lazily at the first request of each (batch, length) shape; if compiling
  fails, a warning is logged and the decoder runs the ``"static"`` step instead. Logits agree
  with the eager loop to rounding (fused kernels sum in another order), so greedy tokens are the
  same unless two logits tie to about 1e-6.
* ``"auto"``: :func:`choose_decoder` measures a few greedy steps of each candidate on the model
  (the first time only; the choice is cached per model) and keeps the fastest that gives the
  eager tokens. On a CPU the candidates are ``eager`` and ``static``: compiling the step with
  inductor (C++ code generation and a compiler run, per (batch, length) shape, at the first
  answer) took about 20 s on 2 idle cores and 78 to 150 s on 2 cores shared with a training job
  (about 6 s when inductor's on-disk cache already holds the graph), for decode steps of 0.52 ms
  against 0.62 (static) and 0.78 (eager) on the small preset, nothing on a memory-bound 7B, and
  tokens that are not guaranteed bit-identical; so ``compiled`` is only tried on a CPU when
  ``IMAGEBIND_LLM_CPU_COMPILE=1``. A decoder never changes the model's dtype: bfloat16 changes
  greedy answers, which must not depend on the decoder; ``--dtype auto``
  (:mod:`imagebind_llm.precision`) is where the faster of float32 and bfloat16 is chosen, by name.

The default (no decoder named, no ``IMAGEBIND_LLM_DECODER``) is :func:`default_decoder`:
``static`` on a CPU, where its steps run 1.15 to 1.3 times faster (CPU time) than the eager
loop's on the small preset (the same operations without ``nn.Module`` call overhead, hence the
same bits; a memory-bound 7B model gains nothing measurable), and the eager loop on other devices
until the static path is measured there.

With a :class:`~imagebind_llm.prefix_cache.PrefixCache` (one prompt at a time), the prefill
starts after the prompt's longest start whose keys and values an earlier request left, and the
request leaves its own when it ends; the eager loop does the same, so the two stay bit-identical.

Requests that arrive while a decoder is busy with another (several threads on one pipeline) are
decoded by the eager loop instead, with the same tokens; the app's continuous batching
(:mod:`imagebind_llm.batching`) is the way to serve many requests at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import scaled_dot_product_attention
from .generation import (CancelCheck, GenerationConfig, _is_cancelled, generate_tokens, prompt_lengths, sample_next,
                         step_outputs)
from .llama import KVCache, LoRA, RMSNorm, apply_rotary
from .prefix_cache import PrefixCache

log = logging.getLogger(__name__)

__all__ = ["DECODERS", "StaticDecoder", "check_decoder", "choose_decoder", "decode_tokens", "default_decoder",
           "get_decoder", "probe_prompt", "resolve_decoder"]

#: The decoder kinds a pipeline accepts (``auto`` resolves to one of the others).
DECODERS = ("eager", "static", "compiled", "auto")
#: Environment variable that sets the pipeline's decoder when none is given.
DECODER_ENV = "IMAGEBIND_LLM_DECODER"
#: Set to 1 to let ``auto`` try ``compiled`` on a CPU (slow to compile; see the module doc).
CPU_COMPILE_ENV = "IMAGEBIND_LLM_CPU_COMPILE"


def check_decoder(kind: str | None) -> str | None:
    """``None`` or one of :data:`DECODERS`; anything else is a ValueError naming the options."""
    if kind is None:
        return None
    kind = str(kind).strip().lower()
    if kind not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {kind!r}")
    return kind


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# The layer arithmetic of llama.py without nn.Module calls (their dispatch is a fifth of a small
# model's step on a CPU): the same operations in the same order, so the same bits. Any other
# module type (the int8/int4 layers of quantize.py, a subclass) is called as it is, and a model
# with hooks on any module runs through the modules (see _has_hooks).


def _linear(module, x: torch.Tensor) -> torch.Tensor:
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)


def _project(block, name: str, x: torch.Tensor) -> torch.Tensor:
    """``Attention._project`` / ``FeedForward._project``: the frozen linear plus its LoRA."""
    out = _linear(getattr(block, name), x)
    if block.lora is None or name not in block.lora:  # no LoRA, or merged into the weight
        return out
    lora = block.lora[name]
    if type(lora) is LoRA:
        return out + _linear(lora.up, _linear(lora.down, x))
    return out + lora(x)


def _norm(norm, x: torch.Tensor) -> torch.Tensor:
    if type(norm) is RMSNorm:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps)
        return normed.type_as(x) * norm.weight
    return norm(x)


def _has_hooks(module: nn.Module) -> bool:
    from torch.nn.modules import module as module_globals

    if any(getattr(module_globals, name, None) for name in
           ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _module_linear(module, x):
    return module(x)


def _module_project(block, name, x):
    return block._project(name, x)


def _module_norm(norm, x):
    return norm(x)


_FAST = (_linear, _project, _norm)
_MODULES = (_module_linear, _module_project, _module_norm)


class _CacheView(KVCache):
    """The :class:`~imagebind_llm.llama.KVCache` interface over the static buffers, so that the
    prefill is ``Llama.forward`` itself (the eager loop's call, hence its first token)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):  # noqa: D107 - no allocation
        self.keys, self.values = keys, values
        self.max_len = keys.shape[3]


class _State:
    """The device buffers of one (batch, length): the cache, the injections and the step inputs."""

    def __init__(self, model, batch: int, length: int, injected: int):
        config, dtype, device = model.config.llama, model.dtype, model.device
        shape = (config.n_layers, batch, config.n_heads, length, config.head_dim)
        self.batch, self.length = batch, length
        # Uninitialised: a column is always written (prefill or step) before a step reads it, and the
        # compiled step's unwritten columns are zeroed per request (StaticDecoder._start).
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.inject = torch.zeros((max(injected, 1), batch, config.n_heads, 1, config.head_dim), dtype=dtype,
                                  device=device)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)  # the tokens the next step feeds
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)  # their rotary positions
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # their cache column
        self.pad = torch.zeros(batch, dtype=torch.long, device=device)  # left padding of each row
        if device.type == "cuda":  # CUDA graphs read these buffers in place: their addresses never change
            for tensor in (self.keys, self.values, self.inject, self.tokens, self.pos, self.index, self.pad):
                try:
                    torch._dynamo.mark_static_address(tensor)
                except Exception:  # noqa: BLE001 - only an optimisation
                    pass


class _Plan:
    """What the eager loop computes from the prompts before its first step."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], config: GenerationConfig):
        lengths = prompt_lengths(model, prompts)
        self.prompts = [list(map(int, p)) for p in prompts]
        self.lengths = lengths
        self.batch, self.longest = len(prompts), max(lengths)
        max_len = model.config.llama.max_seq_len
        self.limits = [min(config.max_new_tokens, max_len - n) for n in lengths]
        self.steps = max(self.limits)
        self.total = self.longest + self.steps
        self.padded = any(n != self.longest for n in lengths)


class StaticDecoder:
    """Greedy and sampled decoding of one model with a static KV cache (see the module doc).

    ``compile``: run the step through ``torch.compile`` (``mode`` default: ``"reduce-overhead"``
    on CUDA, inductor's default elsewhere). The decoder keeps the buffers of its most recent
    (batch, length) for the next request; :meth:`release` frees them."""

    def __init__(self, model, *, compile: bool = False, mode: str | None = None):
        self._model = weakref.ref(model)
        self.compile = bool(compile)
        self.mode = mode
        self.kind = "compiled" if compile else "static"
        self._state: _State | None = None
        self._lock = threading.Lock()
        self._compiled = None
        self.compile_failed: str | None = None  # the error, once compiling failed
        self.compile_seconds = 0.0  # time spent in the first call of each compiled shape
        self._compiled_shapes: set[tuple[int, int]] = set()
        llama = model.llama
        self._injected = list(llama.injected_layers)
        self._inject_row = {layer: row for row, layer in enumerate(self._injected)}
        self._hooks = False  # the model has forward hooks: call its modules (checked per request)

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this decoder was deleted")
        return model

    def release(self) -> None:
        """Free the cached buffers (the next request allocates new ones)."""
        self._state = None

    # ------------------------------------------------------------------------------ buffers

    def _length(self, total: int) -> int:
        if self.compile:  # one graph per batch size: the whole context (more only for ragged batches)
            max_len = self.model.config.llama.max_seq_len
            return max_len if total <= max_len else _round_up(total, 256)
        return _round_up(total, 16)

    def _state_for(self, batch: int, total: int) -> _State:
        model = self.model
        length = self._length(total)
        state = self._state
        if state is not None and state.batch == batch and state.keys.device == model.device \
                and state.keys.dtype == model.dtype and (state.length == length or
                                                         (not self.compile and total <= state.length)):
            return state
        self._state = None  # free the old buffers before allocating the new ones
        self._state = state = _State(model, batch, length, len(self._injected))
        return state

    # ------------------------------------------------------------------------------ the step

    def _layers(self, state: _State, h: torch.Tensor, cos, sin, mask, end: int | None, column: int | None,
                injections: bool) -> torch.Tensor:
        """The layer loop of ``Llama.forward`` for one new token per row.

        ``end``/``column`` (host ints): write the cache column ``column`` by slicing and attend to
        columns ``:end`` (the eager loop's shapes); None: write at ``state.index`` with
        ``index_copy_`` and attend to the whole buffer (fixed shapes, for compiling)."""
        llama = self.model.llama
        batch = h.shape[0]
        _linear, _project, _norm = _MODULES if self._hooks else _FAST
        for index, layer in enumerate(llama.layers):
            attention = layer.attention
            heads = attention.n_heads
            x = _norm(layer.attention_norm, h)
            q = _project(attention, "wq", x).unflatten(-1, (heads, -1))
            k = _project(attention, "wk", x).unflatten(-1, (heads, -1))
            v = _project(attention, "wv", x).unflatten(-1, (heads, -1))
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, 1, D)
            keys, values = state.keys[index], state.values[index]
            if end is None:
                keys.index_copy_(2, state.index, k)
                values.index_copy_(2, state.index, v)
            else:
                keys[:, :, column:column + 1] = k
                values[:, :, column:column + 1] = v
                keys, values = keys[:, :, :end], values[:, :, :end]
            out = scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            row = self._inject_row.get(index)
            if injections and row is not None:
                out = out + state.inject[row]
            out = out.transpose(1, 2).reshape(batch, 1, -1)
            h = h + _project(attention, "wo", out)
            x = _norm(layer.ffn_norm, h)
            ffn = layer.feed_forward
            h = h + _project(ffn, "w2", F.silu(_project(ffn, "w1", x)) * _project(ffn, "w3", x))
        return _linear(llama.output, _norm(llama.norm, h[:, -1])).float()

    def _step_full(self, state: _State) -> torch.Tensor:
        """One step over the whole buffer, every input a device tensor (what is compiled)."""
        llama = self.model.llama
        h = llama.tok_embeddings(state.tokens[:, None])
        cos_table, sin_table = llama.rotary(h.device)
        cos, sin = cos_table[state.pos][:, None], sin_table[state.pos][:, None]  # (B, 1, head_dim / 2)
        columns = torch.arange(state.length, device=h.device)
        blocked = (columns[None, :] > state.index[:, None]) | (columns[None, :] < state.pad[:, None])  # B, L
        mask = torch.zeros(blocked.shape, dtype=h.dtype, device=h.device)
        mask = mask.masked_fill(blocked, torch.finfo(h.dtype).min)[:, None, None, :]
        return self._layers(state, h, cos, sin, mask, None, None, True)

    def _step_eager(self, state: _State, column: int, mask: torch.Tensor | None,
                    injections: bool) -> torch.Tensor:
        """One step attending to columns ``:column + 1`` (``mask``: the padding's, or None)."""
        llama = self.model.llama
        h = llama.tok_embeddings(state.tokens[:, None])
        cos_table, sin_table = llama.rotary(h.device)
        cos, sin = cos_table[state.pos][:, None], sin_table[state.pos][:, None]
        return self._layers(state, h, cos, sin, mask, column + 1, column, injections)

    def _compiled_step(self):
        if self._compiled is None:
            mode = self.mode or ("reduce-overhead" if self.model.device.type == "cuda" else None)
            self._compiled = torch.compile(self._step_full, mode=mode, dynamic=False)
        return self._compiled

    def _run_step(self, state: _State, column: int, padding: torch.Tensor | None,
                  injections: bool) -> torch.Tensor:
        """Logits (B, vocab) of the step that writes cache column ``column``."""
        if self.compile and self.compile_failed is None:
            shape = (state.batch, state.length)
            first = shape not in self._compiled_shapes
            started = time.perf_counter()
            try:
                step = self._compiled_step()
                if state.keys.device.type == "cuda":  # a new CUDA-graph step: earlier outputs are consumed
                    torch.compiler.cudagraph_mark_step_begin()
                logits = step(state)
            except Exception as error:  # noqa: BLE001 - compiling is an optimisation: fall back
                self.compile_failed = f"{type(error).__name__}: {error}"
                log.warning("torch.compile of the decode step failed (%s); decoding without it",
                            self.compile_failed)
            else:
                if first:
                    self._compiled_shapes.add(shape)
                    self.compile_seconds += time.perf_counter() - started
                    log.info("decode step compiled for batch %d, cache length %d in %.1f s", *shape,
                             time.perf_counter() - started)
                return logits
        mask = None
        if padding is not None:
            mask = torch.zeros((state.batch, column + 1), dtype=state.keys.dtype, device=state.keys.device)
            mask = mask.masked_fill(padding[:, :column + 1], torch.finfo(mask.dtype).min)[:, None, None, :]
        return self._step_eager(state, column, mask, injections)

    # ------------------------------------------------------------------------------ requests

    def _start(self, plan: _Plan, visual_query: torch.Tensor | None, prefix_cache: PrefixCache | None = None):
        """Fill the buffers for a request and prefill it: (state, first logits, padding mask).
        ``prefix_cache`` is only given for one prompt."""
        model = self.model
        device = model.device
        self._hooks = _has_hooks(model.llama)
        state = self._state_for(plan.batch, plan.total)
        if visual_query is not None:
            visual_query = visual_query.to(device)
        reused = 0
        if prefix_cache is not None:
            reused = prefix_cache.restore(plan.prompts[0], visual_query, state.keys, state.values)
        tokens = torch.zeros(plan.batch, plan.longest, dtype=torch.long)
        for row, prompt in enumerate(plan.prompts):
            tokens[row, plan.longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        tokens = tokens.to(device)
        pad = torch.tensor([plan.longest - n for n in plan.lengths], device=device)
        state.pad.copy_(pad)
        padding = positions = None
        if plan.padded:
            padding = torch.arange(state.length, device=device)[None] < pad[:, None]  # (B, L) True = padding
            positions = (torch.arange(plan.longest, device=device)[None] - pad[:, None]).clamp(min=0)
        injections = None
        if visual_query is not None:
            injections = model.injections(visual_query)
            for layer, row in self._inject_row.items():
                state.inject[row].copy_(injections[layer])
        else:
            state.inject.zero_()
        view = _CacheView(state.keys, state.values)
        key_padding = None if padding is None else padding[:, :plan.longest]
        logits = model.llama(tokens[:, reused:], start=reused, cache=view, injections=injections,
                             positions=positions, key_padding=key_padding, last_only=True)
        # The step state describes the last token fed: the next step feeds the sampled token one
        # column (and one rotary position) further.
        state.index.fill_(plan.longest - 1)
        state.pos.copy_(plan.longest - 1 - pad)
        if self.compile:  # a compiled step reads every column (masked): no stale non-finite values
            state.keys[:, :, :, plan.longest:].zero_()
            state.values[:, :, :, plan.longest:].zero_()
        return state, logits, padding, injections is not None

    @staticmethod
    def _advance(state: _State, tokens: torch.Tensor) -> None:
        """Feed ``tokens`` next: at the following cache column and rotary position."""
        state.tokens.copy_(tokens)
        state.index += 1
        state.pos += 1

    def generate_tokens(self, prompts: Sequence[Sequence[int]], config: GenerationConfig, *,
                        visual_query: torch.Tensor | None = None, eos_id: int | None = 2,
                        cancel: CancelCheck = None, prefix_cache: PrefixCache | None = None,
                        ) -> Iterator[list[int | None]]:
        """The eager loop's contract (:func:`~imagebind_llm.generation.generate_tokens`): after
        every step, the new token of each row (None for finished rows); stops when every row has
        finished or when ``cancel`` fires. ``prefix_cache`` as for the eager loop."""
        plan = _Plan(self.model, prompts, config)  # errors before anything is yielded, like the eager loop
        if not self._lock.acquire(blocking=False):  # another request is decoding: the eager loop
            yield from generate_tokens(self.model, prompts, config, visual_query=visual_query, eos_id=eos_id,
                                       cancel=cancel, prefix_cache=prefix_cache)
            return
        try:
            yield from self._stream(plan, config, visual_query, eos_id, cancel,
                                    prefix_cache if plan.batch == 1 else None)
        finally:
            self._lock.release()

    def _stream(self, plan: _Plan, config, visual_query, eos_id, cancel,
                prefix_cache: PrefixCache | None = None) -> Iterator[list[int | None]]:
        model = self.model
        device = model.device
        if visual_query is not None:
            visual_query = visual_query.to(device)
        generated: list[int] = []  # row 0's tokens, for the prefix cache

        def keep() -> None:
            if prefix_cache is not None and state is not None:
                with torch.inference_mode():
                    prefix_cache.keep_request(plan.prompts[0], generated, visual_query, state.keys, state.values)

        ahead = device.type == "cuda"
        generator = None
        if config.seed is not None and config.temperature > 0:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        done = [False] * plan.batch
        produced = [0] * plan.batch
        state = padding = None
        injections = False
        pending: torch.Tensor | None = None  # tokens of the next step, already computing (CUDA)
        host = torch.empty(plan.batch, dtype=torch.long, pin_memory=True) if ahead else None
        for step in range(plan.steps):
            if _is_cancelled(cancel):
                keep()
                return
            # Inference mode per step, never across a yield (a consumer may resume on another thread).
            with torch.inference_mode():
                if pending is not None:
                    next_tokens = pending
                elif state is None:
                    state, logits, padding, injections = self._start(plan, visual_query, prefix_cache)
                    next_tokens = sample_next(logits, config, generator)
                else:
                    logits = self._run_step(state, plan.longest + step - 1, padding, injections)
                    next_tokens = sample_next(logits, config, generator)
                pending = None
                if ahead:
                    host.copy_(next_tokens, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record()
                    if step + 1 < plan.steps:  # (a cancel is seen before the next yield)
                        self._advance(state, next_tokens)
                        logits = self._run_step(state, plan.longest + step, padding, injections)
                        pending = sample_next(logits, config, generator)
                    ready.synchronize()
                    values = host.tolist()
                else:
                    values = next_tokens.tolist()
                    if step + 1 < plan.steps:
                        self._advance(state, next_tokens)
            generated.append(values[0])
            yield step_outputs(values, done, produced, plan.limits, eos_id)
            if all(done):
                keep()
                return
        keep()

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig, *,
                 visual_query: torch.Tensor | None = None, eos_id: int | None = 2, cancel: CancelCheck = None,
                 check_every: int = 16, stats: dict | None = None) -> list[list[int]]:
        """The generated ids of each prompt (EOS excluded), as
        :func:`~imagebind_llm.generation.generate` gives them, without a host synchronisation
        per token: the tokens stay on the device, and whether every row has finished is read
        every ``check_every`` steps (the rows run at most that many steps past their end).

        ``stats`` (a dict, for benchmarks): filled with ``first_s`` (start to the first token,
        prefill included; one extra synchronisation), ``decode_s`` (the steps after it),
        ``decode_cpu_s`` (the process CPU time of those steps) and ``steps`` (their number)."""
        plan = _Plan(self.model, prompts, config)
        if not self._lock.acquire(blocking=False):
            from .generation import generate

            return generate(self.model, prompts, config, visual_query=visual_query, eos_id=eos_id,
                            cancel=cancel)
        try:
            return self._generate(plan, config, visual_query, eos_id, cancel, max(1, int(check_every)), stats)
        finally:
            self._lock.release()

    def _generate(self, plan: _Plan, config, visual_query, eos_id, cancel, check_every: int,
                  stats: dict | None = None) -> list[list[int]]:
        device = self.model.device
        started = time.perf_counter()
        first_at = first_cpu = None
        generator = None
        if config.seed is not None and config.temperature > 0:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        with torch.inference_mode():
            out = torch.zeros(plan.batch, plan.steps, dtype=torch.long, device=device)
            limits = torch.tensor(plan.limits, device=device)
            taken = 0
            state = None
            for step in range(plan.steps):
                if _is_cancelled(cancel):
                    break
                if state is None:
                    state, logits, padding, injections = self._start(plan, visual_query)
                else:
                    logits = self._run_step(state, plan.longest + step - 1, padding, injections)
                next_tokens = sample_next(logits, config, generator)
                out[:, step] = next_tokens
                taken = step + 1
                if stats is not None and step == 0:
                    _synchronize(device)
                    first_at, first_cpu = time.perf_counter(), time.process_time()
                if taken % check_every == 0 and taken < plan.steps:  # has every row finished? (one read)
                    finished = limits <= taken
                    if eos_id is not None:
                        finished |= (out[:, :taken] == eos_id).any(dim=1)
                    if bool(finished.all()):
                        break
                if step + 1 < plan.steps:
                    self._advance(state, next_tokens)
            if stats is not None:
                _synchronize(device)
                ended, ended_cpu = time.perf_counter(), time.process_time()
                first_at, first_cpu = first_at or ended, first_cpu or ended_cpu
                stats.update(first_s=first_at - started, decode_s=ended - first_at,
                             decode_cpu_s=ended_cpu - first_cpu, steps=max(0, taken - 1))
            rows = out[:, :taken].tolist()
        results = []
        for row, tokens in enumerate(rows):
            tokens = tokens[:plan.limits[row]]
            if eos_id is not None and eos_id in tokens:
                tokens = tokens[:tokens.index(eos_id)]
            results.append(tokens)
        return results


# ---------------------------------------------------------------------------------------------
# One decoder per (model, kind), and the automatic choice
# ---------------------------------------------------------------------------------------------

_DECODERS: "weakref.WeakKeyDictionary[object, dict[str, StaticDecoder]]" = weakref.WeakKeyDictionary()
_CHOICES: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def get_decoder(model, kind: str) -> StaticDecoder:
    """The model's shared :class:`StaticDecoder` of ``kind`` ('static' or 'compiled')."""
    if kind not in ("static", "compiled"):
        raise ValueError(f"no static decoder of kind {kind!r} (static or compiled)")
    with _REGISTRY_LOCK:
        decoders = _DECODERS.setdefault(model, {})
        if kind not in decoders:
            decoders[kind] = StaticDecoder(model, compile=kind == "compiled")
        return decoders[kind]


def _cpu_compile_allowed() -> bool:
    return os.environ.get(CPU_COMPILE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def probe_prompt(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    """A reproducible random prompt (BOS, then ids from 3 up) for timing a model's decoding."""
    generator = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(3, vocab_size, (length - 1,), generator=generator).tolist()


def _probe(model, kind: str, prompt: list[int], steps: int) -> tuple[list[int], float]:
    """Greedy tokens of ``prompt`` and the seconds of the best of two runs."""
    config = GenerationConfig(max_new_tokens=steps, temperature=0.0)
    best, tokens = float("inf"), []
    for _ in range(2):  # the first run also compiles (kind 'compiled')
        started = time.perf_counter()
        if kind == "eager":
            from .generation import generate

            tokens = generate(model, [prompt], config, eos_id=None)[0]
        else:
            tokens = get_decoder(model, kind).generate([prompt], config, eos_id=None)[0]
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        best = min(best, time.perf_counter() - started)
    return tokens, best


def choose_decoder(model, *, candidates: Sequence[str] | None = None, steps: int = 16, prompt_len: int = 24,
                   margin: float = 0.05, refresh: bool = False) -> str:
    """The fastest decoder kind for ``model`` among ``candidates`` that gives the eager loop's
    greedy tokens, measured once on a random prompt and cached per model.

    Default candidates: eager, static and compiled on CUDA; eager and static on a CPU (plus
    compiled with ``IMAGEBIND_LLM_CPU_COMPILE=1``; see the module doc). A candidate must be
    ``margin`` faster than eager to be chosen. A candidate that fails or disagrees is dropped
    with a logged warning."""
    if not refresh and model in _CHOICES:
        return _CHOICES[model]
    device = model.device
    if candidates is None:
        candidates = ["eager", "static"]
        if device.type == "cuda" or _cpu_compile_allowed():
            candidates.append("compiled")
    candidates = [c for c in candidates if c != "auto"]
    config = model.config.llama
    steps = max(2, min(steps, config.max_seq_len - prompt_len - 1))
    prompt = probe_prompt(config.vocab_size, prompt_len)
    started = time.perf_counter()
    reference, eager_time = _probe(model, "eager", prompt, steps)
    timings = {"eager": eager_time}
    for kind in candidates:
        if kind == "eager":
            continue
        try:
            tokens, seconds = _probe(model, kind, prompt, steps)
        except Exception as error:  # noqa: BLE001 - a candidate that fails is not chosen
            log.warning("decoder %s failed on this model (%s); not using it", kind, error)
            continue
        if tokens != reference:
            log.warning("decoder %s gave other greedy tokens than the eager loop on this model; not using it",
                        kind)
            continue
        if kind == "compiled" and get_decoder(model, kind).compile_failed:
            continue
        timings[kind] = seconds
    best = min(timings, key=timings.get)
    if best != "eager" and timings[best] > (1 - margin) * eager_time:
        best = "eager"
    log.info("decoder auto-choice for this model: %s (%s; measured in %.1f s)", best,
             ", ".join(f"{k} {1000 * v / steps:.2f} ms/token" for k, v in timings.items()),
             time.perf_counter() - started)
    _CHOICES[model] = best
    return best


def default_decoder(device) -> str:
    """The decoder used when none is named: 'static' on a CPU (measured faster there, same
    tokens), the eager loop elsewhere (the static decoder's GPU path is not measured yet)."""
    return "static" if torch.device(device).type == "cpu" else "eager"


def resolve_decoder(model, kind: str | None) -> str:
    """A concrete decoder kind: ``kind`` (None: ``IMAGEBIND_LLM_DECODER``, else
    :func:`default_decoder`), with 'auto' resolved by :func:`choose_decoder`."""
    if kind is None:
        kind = os.environ.get(DECODER_ENV) or default_decoder(model.device)
    kind = check_decoder(kind)
    if kind == "auto":
        kind = choose_decoder(model)
    return kind


def decode_tokens(model, prompts: Sequence[Sequence[int]], config: GenerationConfig, *,
                  decoder: str | None = "eager", visual_query: torch.Tensor | None = None,
                  eos_id: int | None = 2, cancel: CancelCheck = None,
                  prefix_cache: PrefixCache | None = None) -> Iterator[list[int | None]]:
    """:func:`~imagebind_llm.generation.generate_tokens` with the decoder ``decoder`` (see
    :data:`DECODERS`; None: :func:`resolve_decoder`'s default)."""
    kind = resolve_decoder(model, decoder)
    if kind == "eager":
        return generate_tokens(model, prompts, config, visual_query=visual_query, eos_id=eos_id,
                               cancel=cancel, prefix_cache=prefix_cache)
    return get_decoder(model, kind).generate_tokens(prompts, config, visual_query=visual_query, eos_id=eos_id,
                                                    cancel=cancel, prefix_cache=prefix_cache)
