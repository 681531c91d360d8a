"""Text generation: greedy and sampled decoding with a KV cache, batches of prompts of different
lengths, stop at EOS, cancellation, and a streaming iterator of text deltas.

Semantics follow the official ``generate`` (reference.md 4.8): a prompt of n tokens produces at
most ``min(max_new_tokens, max_seq_len - n)`` tokens, stops at EOS, and top-p sampling drops
every token whose cumulative probability *before* it already exceeds p. Unlike the official
loop (which teacher-forces the longer prompts of a batch one token at a time), a batch is
left-padded, prefilled in one pass and decoded in lock-step; each row gives the tokens it would
give alone. The visual injection is computed once per request, not per token.
"""

from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .errors import InputError
from .llama import KVCache
from .prefix_cache import PrefixCache


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. ``temperature`` 0 means greedy. Defaults of the official demo."""

    max_new_tokens: int = 128
    temperature: float = 0.1
    top_p: float = 0.75
    top_k: int = 0  # 0 = no top-k filter
    seed: int | None = None

    def __post_init__(self) -> None:
        # InputError is a ValueError: a wrong type, NaN or a seed torch cannot take is named here
        # rather than failing deep inside the decoder.
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError("max_new_tokens", f"must be a whole number of at least 1, got {self.max_new_tokens!r}",
                             "1, 2, 3, ...")
        if not _is_real(self.temperature) or not 0 <= self.temperature < float("inf") \
                or 0 < self.temperature < MIN_TEMPERATURE:
            raise InputError("temperature", f"must be 0 (greedy) or a finite number of at least {MIN_TEMPERATURE:g}, "
                             f"got {self.temperature!r}", "0, or e.g. 0.1 to 2")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InputError("top_p", f"must be in (0, 1], got {self.top_p!r}", "a number above 0, at most 1")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise InputError("top_k", f"must be a whole number >= 0, got {self.top_k!r}", "0 (no top-k filter) or more")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2 ** 63):
            raise InputError("seed", f"must be a whole number from 0 to 2**63 - 1, got {self.seed!r}",
                             "None (random) or such a number")


#: The smallest positive temperature: logits divided by less overflow to infinity.
MIN_TEMPERATURE = 1e-4


def _is_int(value) -> bool:  # numpy integers too
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # NaN != NaN


def sample_next(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab), on the logits' device."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the better tokens
    sorted_probs = sorted_probs.masked_fill(before > config.top_p, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


class Cancelled(Exception):
    """Raised inside generation when its cancel check fires; :func:`generate_tokens` catches it."""


CancelCheck = Callable[[], bool] | threading.Event | None


def _is_cancelled(cancel: CancelCheck) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def prompt_lengths(model, prompts: Sequence[Sequence[int]]) -> list[int]:
    """The prompts' lengths, after checking that there is at least one, that none is empty and
    that each leaves room for an answer in the model's context."""
    if not prompts:
        raise InputError("prompt", "no prompt given", "one or more non-empty prompts")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise InputError("prompt", "a prompt has no tokens", "non-empty prompts")
    max_len = model.config.llama.max_seq_len
    if max(lengths) >= max_len:
        raise InputError("prompt", f"the prompt has {max(lengths)} tokens, the model's context holds "
                         f"{max_len} (including the answer)", f"prompts shorter than {max_len} tokens")
    return lengths


def step_outputs(tokens: list[int], done: list[bool], produced: list[int], limits: list[int],
                 eos_id: int | None) -> list[int | None]:
    """One decoding step's tokens as the streams see them (None for a row that has finished or
    just produced EOS), updating each row's ``done`` flag and ``produced`` count in place."""
    out: list[int | None] = []
    for row, token in enumerate(tokens):
        if done[row]:
            out.append(None)
            continue
        produced[row] += 1
        if eos_id is not None and token == eos_id:
            done[row] = True
            out.append(None)
            continue
        out.append(token)
        if produced[row] >= limits[row]:
            done[row] = True
    return out


def generate_tokens(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    visual_query: torch.Tensor | None = None,
    eos_id: int | None = 2,
    cancel: CancelCheck = None,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[list[int | None]]:
    """Yield, after every decoding step, the new token of each row (None for finished rows).

    ``prompts`` are token ids (BOS included). ``visual_query`` (B, 1, dim) is the bind-network
    output for each row (or None for text only). Stops when every row has finished or when
    ``cancel`` fires. With a ``prefix_cache`` (used for one prompt only), the prompt's known
    start is not prefilled again and the request's keys and values are kept when it ends
    (imagebind_llm/prefix_cache.py).
    """
    lengths = prompt_lengths(model, prompts)
    max_len = model.config.llama.max_seq_len
    device = model.device
    batch, longest = len(prompts), max(lengths)
    limits = [min(config.max_new_tokens, max_len - n) for n in lengths]
    total = longest + max(limits)

    # Left-pad: row b's real tokens sit at cache positions pad[b] .. longest-1.
    pad = torch.tensor([longest - n for n in lengths], device=device)
    tokens = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
    padded = any(n != longest for n in lengths)
    key_padding = torch.arange(total, device=device)[None] < pad[:, None] if padded else None
    positions = (torch.arange(longest, device=device)[None] - pad[:, None]).clamp(min=0) if padded else None

    # Inference mode is entered per step, never held across a yield: a consumer may resume this
    # generator on another thread (gradio does), where the mode must not leak.
    with torch.inference_mode():
        cache = KVCache(model.config.llama, batch, total, model.dtype, device)
        if visual_query is not None:
            visual_query = visual_query.to(device)
        injections = model.injections(visual_query) if visual_query is not None else None
        reuse = prefix_cache if batch == 1 else None
        reused = reuse.restore(prompts[0], visual_query, cache.keys, cache.values) if reuse is not None else 0
    generator = None
    if config.seed is not None and config.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(config.seed)

    def keep() -> None:
        if reuse is not None:
            with torch.inference_mode():
                reuse.keep_request(prompts[0], generated, visual_query, cache.keys, cache.values)

    done = [False] * batch
    produced = [0] * batch
    generated: list[int] = []  # row 0's tokens, for the prefix cache
    step_tokens, start = tokens[:, reused:], reused
    for _ in range(max(limits)):
        if _is_cancelled(cancel):
            keep()
            return
        with torch.inference_mode():
            logits = model.llama(step_tokens, start=start, cache=cache, injections=injections, positions=positions,
                                 key_padding=None if key_padding is None else key_padding[:, :start + step_tokens.shape[1]],
                                 last_only=True)
            next_tokens = sample_next(logits, config, generator)
        start += step_tokens.shape[1]
        values = next_tokens.tolist()
        generated.append(values[0])
        yield step_outputs(values, done, produced, limits, eos_id)
        if all(done):
            keep()
            return
        step_tokens = next_tokens[:, None]
        if padded:
            positions = (start - pad)[:, None]
    keep()


def generate(model, prompts: Sequence[Sequence[int]], config: GenerationConfig, **kwargs) -> list[list[int]]:
    """The generated ids of each prompt (EOS excluded), like the official ``generate`` before decoding."""
    results: list[list[int]] = [[] for _ in prompts]
    for step in generate_tokens(model, prompts, config, **kwargs):
        for row, token in enumerate(step):
            if token is not None:
                results[row].append(token)
    return results


def stream_text(model, tokenizer, prompt: Sequence[int], config: GenerationConfig, **kwargs) -> Iterator[str]:
    """Text deltas of one prompt's answer, never half a UTF-8 character; they join to
    ``tokenizer.decode(generated ids)``."""
    decoder = tokenizer.stream()
    for step in generate_tokens(model, [prompt], config, eos_id=tokenizer.eos_id, **kwargs):
        if step[0] is not None:
            delta = decoder.push(step[0])
            if delta:
                yield delta
    rest = decoder.flush()
    if rest:
        yield rest
