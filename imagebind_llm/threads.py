"""How many CPU threads PyTorch's operations use: the fewest that are as fast as the most.

PyTorch splits every operation over all cores. A small model's operations are too small for
that to pay: on 2 cores the toy-world model answered a question in the same wall time with one
thread as with two (7.2 against 7.5 ms) and in half the CPU time (7.3 against 14.5 ms). In the
app, where several users' requests share the machine, that CPU is taken from the others.

``auto`` (the default of ``--threads``; the app also reads ``IMAGEBIND_LLM_THREADS``) times a
short greedy answer and an image encoding with each candidate count (one thread and PyTorch's
default) and keeps the fewest threads within ``tolerance`` (25 %) of the fastest: threads that
do not buy a quarter of the speed are not worth their CPU time when users share the machine
(the toy-world model: 13.0 ms with one thread, 11.4 with two, so one), while a model whose
operations gain from threads keeps them. It is measured on a CPU only (elsewhere the default
stays) and only for models whose language-model weights are under :data:`PROBE_MAX_BYTES`: a
7B model's probe would take seconds per thread count, and such operations are large enough to
share.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)

#: Models with more language-model weight bytes than this keep PyTorch's default under ``auto``.
PROBE_MAX_BYTES = 1 << 30


def parse_threads(value: str | int | None) -> int | str:
    """'auto' (also for None or ''), or a thread count of at least 1; anything else is a
    ValueError that names the accepted values."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be 'auto' or a whole number of at least 1, got {value!r}") from None
    if count < 1 or str(count) != str(value).strip():
        raise ValueError(f"threads must be 'auto' or a whole number of at least 1, got {value!r}")
    return count


def _probe_seconds(pipeline, steps: int) -> float:
    """One greedy answer of ``steps`` tokens (the pipeline's decoder) plus one image encoding."""
    from .fast_decode import decode_tokens, probe_prompt
    from .generation import GenerationConfig

    model, imagebind = pipeline.model, pipeline.imagebind
    prompt = probe_prompt(model.config.llama.vocab_size, 24)
    size = imagebind.config.vision.image_size
    image = torch.rand(1, imagebind.config.vision.channels, size, size,
                       generator=torch.Generator().manual_seed(0))
    config = GenerationConfig(max_new_tokens=steps, temperature=0.0)
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in decode_tokens(model, [prompt], config, decoder=pipeline.decoder, eos_id=None):
            pass
        imagebind.encode_all("vision", image)
    return time.perf_counter() - started


def language_model_bytes(pipeline) -> int:
    return sum(t.numel() * t.element_size() for t in pipeline.model.llama.parameters())


def choose_threads(pipeline, *, candidates: list[int] | None = None, tolerance: float = 0.25,
                   steps: int = 8, repeats: int = 3) -> tuple[int, dict[int, float]]:
    """The fewest threads among ``candidates`` (default: 1 and PyTorch's current count) whose
    probe time is within ``tolerance`` of the fastest, and the best time of each. The thread
    count is left at the choice."""
    default = torch.get_num_threads()
    candidates = sorted(set(candidates or (1, default)))
    timings: dict[int, float] = {}
    for count in candidates:
        torch.set_num_threads(count)
        _probe_seconds(pipeline, 2)  # warm-up: allocations, lazy encoders, thread pool
        timings[count] = min(_probe_seconds(pipeline, steps) for _ in range(repeats))
    fastest = min(timings.values())
    chosen = min(count for count, seconds in timings.items() if seconds <= (1 + tolerance) * fastest)
    torch.set_num_threads(chosen)
    return chosen, timings


def apply_threads(pipeline, setting: str | int | None) -> int:
    """Set PyTorch's thread count for serving ``pipeline``: a number as given, or ``auto`` (see
    the module doc). Returns the count in use."""
    setting = parse_threads(setting)
    if setting != "auto":
        torch.set_num_threads(setting)
        log.info("PyTorch threads: %d (as asked)", setting)
        return setting
    if pipeline.model.device.type != "cpu" or torch.get_num_threads() == 1:
        return torch.get_num_threads()
    if language_model_bytes(pipeline) > PROBE_MAX_BYTES:
        log.info("PyTorch threads: %d (the default; the model is too large to time cheaply)",
                 torch.get_num_threads())
        return torch.get_num_threads()
    started = time.perf_counter()
    chosen, timings = choose_threads(pipeline)
    measured = ", ".join(f"{count} thread{'s' if count > 1 else ''} {1e3 * seconds:.1f} ms"
                         for count, seconds in timings.items())
    log.info("PyTorch threads: %d (auto: %s per answer and image; measured in %.1f s)", chosen, measured,
             time.perf_counter() - started)
    return chosen
