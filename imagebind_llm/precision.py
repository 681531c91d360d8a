"""``--dtype auto``: the language model's dtype chosen by speed (the faster of float32 and
bfloat16 on a CPU; bfloat16 on a GPU).

Decoding reads every weight once per token, so bfloat16 weights (half the bytes) decode faster
where reading memory is the limit; but a CPU's bfloat16 matrix kernels are slower than its
float32 ones where the weights are small enough to stay in its caches. On the 2-core test
machine (AVX512-BF16, no AMX; ``bench/speed.py``), the toy-world model decoded 502 tokens/s in
float32 and 386 in bfloat16 (static decoder, batch 1), while at LLaMA-7B's widths a token took
111 ms in float32 and 61 in bfloat16 (the probe below); so neither is right for every model;
``auto`` measures. The probe is a model of the loaded one's widths (vocabulary, dim, SwiGLU
width, heads, adapter) with :data:`PROBE_LAYERS` layers and random weights (a token's time does
not depend on their values), decoded greedily by the device's default decoder in float32 and in
bfloat16; bfloat16 is kept when it is :data:`MARGIN` faster. The choice is made where the
weights are loaded (:func:`~imagebind_llm.weights.build_language_model`), after reading the
config and before converting anything, so a model that only fits in bfloat16 is never held in
float32, and ``auto`` gives exactly the model ``--dtype`` names. The probe takes about 0.2 s for
the toy world and 15 s at LLaMA-7B's widths (2.7 GB more memory while it runs: two layers,
embedding and head).

bfloat16 changes answers: it keeps about three significant digits, so logits move and a greedy
answer can take another word where two were close. That is why float32 stays the CPU default
and ``auto`` is asked for by name. It concerns the language model only: the ImageBind encoders
take the device's default (or ``--imagebind-dtype``), and a quantised model the device's default
activation dtype (not measured).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Layers of the probe model: enough that the layers, not the output head, are most of a step.
PROBE_LAYERS = 2
#: bfloat16 must be this much faster (a fraction of float32's time) to be chosen.
MARGIN = 0.10
#: The setting that asks for the measured choice.
AUTO = "auto"


def cheap_random_init(model: nn.Module, seed: int = 0, skip=lambda name: False) -> None:
    """Fill a (possibly ``to_empty``) model with random values fast: every tensor repeats the
    start of one shared normal pool, scaled by fan-in (norms 1, biases 0). The values only need
    to be finite and of a realistic scale: timings do not depend on them. ``skip(name)`` keeps a
    tensor as is."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    size = min(max(p.numel() for p in model.parameters()), 1 << 24)
    # The start of a draw of size + 4099 values (the draw this has always made: the same weights).
    pool = torch.randn(size + 4099, generator=generator)[:size]
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if skip(full):
                    continue
                if isinstance(module, norms) or type(module).__name__ == "RMSNorm":
                    param.fill_(1.0 if name == "weight" else 0.0)
                    continue
                if name == "bias":
                    param.zero_()
                    continue
                std = 0.02 if param.ndim < 2 or isinstance(module, nn.Embedding) else param[0].numel() ** -0.5
                flat = param.view(-1)
                for start in range(0, flat.numel(), size):
                    chunk = flat[start:start + size]
                    chunk.copy_(pool[:chunk.numel()].to(chunk.dtype)).mul_(std)


def probe_model(config, dtype: torch.dtype, device="cpu", layers: int = PROBE_LAYERS):
    """An :class:`~imagebind_llm.model.ImageBindLLM` of ``config``'s widths with ``layers``
    layers (every one injected) and random weights, in ``dtype``."""
    from .config import ImageBindLLMConfig
    from .model import ImageBindLLM

    layers = min(layers, config.llama.n_layers)
    small = ImageBindLLMConfig(replace(config.llama, n_layers=layers),
                               replace(config.adapter, query_layer=min(layers, config.adapter.query_layer)))
    with torch.device("meta"):
        model = ImageBindLLM(small)
    model = model.to(dtype=dtype).to_empty(device=device)
    cheap_random_init(model)
    return model.eval().requires_grad_(False)


def seconds_per_token(model, steps: int = 16, repeats: int = 3, prompt_len: int = 16) -> float:
    """The best of ``repeats`` greedy answers of ``steps`` tokens (after a warm-up answer; one
    answer when the warm-up took over a second), by the device's default decoder, per token."""
    from .fast_decode import decode_tokens, default_decoder, probe_prompt
    from .generation import GenerationConfig

    prompt = probe_prompt(model.config.llama.vocab_size, prompt_len)
    config = GenerationConfig(max_new_tokens=steps, temperature=0.0)
    kind = default_decoder(model.device)

    def answer() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for _ in decode_tokens(model, [prompt], config, decoder=kind, eos_id=None):
                pass
        return time.perf_counter() - started

    if answer() > 1.0:  # a wide model: one timed answer is long enough to be steady
        repeats = 1
    return min(answer() for _ in range(repeats)) / steps


def choose_dtype(config, device="cpu", *, margin: float = MARGIN) -> tuple[torch.dtype, dict[str, float]]:
    """The faster dtype for a language model of ``config`` on ``device`` and the probe's
    seconds per token of each (empty off a CPU, where bfloat16 is chosen unmeasured)."""
    if torch.device(device).type != "cpu":
        return torch.bfloat16, {}
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = probe_model(config, dtype, device)
        timings[_name(dtype)] = seconds_per_token(model)
        del model
    chosen = torch.bfloat16 if timings["bfloat16"] < (1 - margin) * timings["float32"] else torch.float32
    return chosen, timings


def resolve_dtype(dtype: torch.dtype | str, config, device="cpu", *, quantize: str | None = None) -> torch.dtype:
    """``dtype`` itself, or for 'auto' the dtype the language model of ``config`` loads in: on a
    CPU the faster of float32 and bfloat16 (:func:`choose_dtype`, logged), with ``quantize``
    the device's default activation dtype (not measured), elsewhere bfloat16."""
    if dtype != AUTO:
        return dtype
    if quantize is not None:
        chosen = default_dtype(device)
        log.info("dtype auto: %s activations (a quantised model is not measured)", _name(chosen))
        return chosen
    started = time.perf_counter()
    chosen, timings = choose_dtype(config, device)
    if timings:
        log.info("dtype auto: %s for the language model (probe of %d layers: %s; measured in %.1f s)",
                 _name(chosen), min(PROBE_LAYERS, config.llama.n_layers),
                 ", ".join(f"{name} {1e3 * seconds:.2f} ms/token" for name, seconds in timings.items()),
                 time.perf_counter() - started)
    else:
        log.info("dtype auto: %s for the language model (%s)", _name(chosen), torch.device(device).type)
    return chosen


def default_device() -> str:
    """The device when none is named: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device) -> torch.dtype:
    """The weights dtype when none is named: bfloat16 on a GPU, float32 elsewhere."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


#: The dtypes a model loads in, by name (``--dtype``).
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def as_dtype(value: torch.dtype | str | None, allow_auto: bool = True) -> torch.dtype | str | None:
    """A torch dtype from itself or its name ("bfloat16", "torch.float16"); 'auto' is kept where
    it is allowed; any other name is an InputError listing the names."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    if allow_auto and name == AUTO:
        return AUTO
    if name in DTYPE_NAMES:
        return DTYPE_NAMES[name]
    from .errors import InputError

    raise InputError("dtype", f"unknown dtype {value!r}", ", ".join([*DTYPE_NAMES, *([AUTO] if allow_auto else [])]))


def encoder_dtype(dtype: torch.dtype | str | None, device) -> torch.dtype | None:
    """The dtype the encoders follow when ``dtype`` is the language model's setting: 'auto' is
    the language model's alone (the encoders take the device's default)."""
    return default_dtype(device) if dtype == AUTO else dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
