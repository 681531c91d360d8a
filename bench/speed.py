"""Speed of this project's decoders against the baselines, in one run on one device.

    python bench/speed.py                          # small default model and a 7B-shaped model
    python bench/speed.py --models small           # skip the 13.5 GB model
    python bench/speed.py --quick                  # seconds: a smoke run
    python bench/speed.py --official /path/to/LLaMA-Adapter --models 7b   # + the official generate (CUDA)

Models: ``small`` = the default preset's pipeline (``load_preset_pipeline()``: the trained
toy-world model when installed, else the untrained tiny one), float32; ``7b`` = LLaMA-7B's shape
(4096 wide, 32 layers, vocabulary 32000) with ImageBind-LLM's adapter and random weights, in
bfloat16, with a random-weight ImageBind huge (bfloat16) for the image. A case that does not fit
the free memory is skipped with a printed note.

What is measured (greedy decoding, every row runs its full length):

* **decode tokens/s** at batch 1, 4 and 16 (``--batches``): tokens after the first x batch / the
  time of those steps. Decoders: ``eager`` (the baseline: ``generation.generate_tokens``, the
  plain eager loop, consumed as the pipeline consumes it) and the project's
  :class:`~imagebind_llm.fast_decode.StaticDecoder` kinds (``--decoders``; default ``static``,
  plus ``compiled`` on CUDA: compiling on a CPU takes 20 s to minutes, add it explicitly). ``x eager`` is
  project / baseline. ``same`` says whether the decoder gave the baseline's tokens. On a CPU
  also ``tok/cpu-s``: tokens per second of the process's CPU time (steadier than the wall clock
  on a shared machine; with several threads it counts the time of every thread).
* **bfloat16 on a CPU**: the float32 model (the small one) also decoded in bfloat16 (a converted
  copy, ``static, bfloat16``; ``same`` then says whether the rounding changed the greedy
  tokens), and the choice ``--dtype auto`` makes for a float32 model of each model's widths
  (imagebind_llm/precision.py).
* **time to first token** for an image plus a ``--prompt``-token prompt (30): preprocessing and
  ImageBind encoding of a 640x480 JPEG, the bind network, the prefill and the first token.
* **a chat's next turn**: time to first token of a prompt of ``--chat-history`` tokens of earlier
  turns, a 32-token answer and a ``--prompt``-token question, with the prefix cache
  (imagebind_llm/prefix_cache.py) off (the whole prompt prefilled) and on (holding what the
  earlier turn left, as in the app), with the device's default decoder.
* **ImageBind encode time per modality** (batch 1): preprocessing (``preprocess.load`` of a
  generated file) and ``encode_all``, for the ImageBind of each model (the 7B row: image only on
  a CPU, every kind on CUDA; ``--encode-kinds``).
* **peak memory** of each decode case (bench/common.py: CUDA ``max_memory_allocated``; CPU the
  growth of the resident set during the case).
* **fraction of the memory-bandwidth limit**: the bytes of weights read per step (every LLaMA
  tensor but the token embedding, which is a lookup) x steps/s / the device bandwidth. The
  bandwidth: ``--bandwidth GBps``, else a table of known GPUs, else (CPU) a quick ``torch`` copy
  measured here (read + write bytes / time; an estimate, printed as such). KV-cache reads are not
  counted (small next to the weights at these lengths).
* **official** (``--official PATH``, a checkout of OpenGVLab/LLaMA-Adapter or its
  ``imagebind_LLM`` folder): the official ``LLaMA_adapter.generate`` on the same weights
  (converted to its float16 model; its decode loop, ImageBind replaced by the same visual
  query; see bench/official.py). CUDA only (the official code hard-codes it) and the 7B shape
  only (it hard-codes the width 4096); otherwise a note says it was skipped.

The inputs (a JPEG, a video, ...) are written to a temporary folder, or to ``--media DIR``,
where a video already present is reused (bench/gpu_prepare.sh carries one to machines without
ffmpeg).

``main(argv)`` returns the results (the dict ``--json`` writes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakMemory, random_7b_model, trim_heap  # noqa: E402

#: Peak memory bandwidth (GB/s) of known GPUs, matched on the device name (first match wins).
GPU_BANDWIDTH_GBPS = (
    ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("GH200", 4000.0),
    ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB", 1935.0), ("A100", 1555.0),
    ("L40S", 864.0), ("L40", 864.0), ("L4", 300.0), ("A10G", 600.0), ("A10", 600.0), ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0), ("V100", 900.0), ("T4", 320.0),
)
PROMPT_TEXT_TOKENS = 30
CHAT_ANSWER = 32  # tokens of the earlier answer in the chat-turn case
TEMPLATE_START = 24  # prompt tokens two questions share in the same-image-again case (the template's header)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/speed.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small,7b", help="comma-separated: small, 7b (default both)")
    p.add_argument("--batches", default=None, help="decode batch sizes (default 1,4,16; --quick 1,4)")
    p.add_argument("--decoders", default=None,
                   help="the project's decoders: static, compiled (default static, plus compiled on CUDA)")
    p.add_argument("--prompt", type=int, default=PROMPT_TEXT_TOKENS, help="prompt tokens (default 30)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="new tokens per decode case (default 64; --quick 8)")
    p.add_argument("--new-tokens-7b-cpu", type=int, default=3,
                   help="new tokens of the 7B model on a CPU (default 3)")
    p.add_argument("--prompt-7b-cpu", type=int, default=8,
                   help="prompt tokens of the 7B decode cases on a CPU (default 8; the TTFT prompt stays "
                        "--prompt)")
    p.add_argument("--chat-history", type=int, default=512,
                   help="tokens of the earlier turns in the chat-turn case (default 512, at most what the "
                        "model's context leaves; 7B on a CPU: 64)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per case, best kept (default 3; 7B on CPU 1)")
    p.add_argument("--encode-kinds", default=None,
                   help="modalities of the encode table (default all for small; image only for 7b on a CPU)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--bandwidth", type=float, default=None, metavar="GBps",
                   help="device memory bandwidth in GB/s")
    p.add_argument("--official", type=Path, default=None, metavar="PATH",
                   help="LLaMA-Adapter checkout (or its imagebind_LLM folder) for the official generate "
                        "(CUDA)")
    p.add_argument("--media", type=Path, default=None, metavar="DIR",
                   help="write the generated inputs here and keep them (default: a temporary folder); "
                        "a video already there is reused, so a folder made on a machine with ffmpeg can be "
                        "carried to one without it")
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds (small model, few tokens)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    from imagebind_llm.preprocess import KINDS

    args.models = ["small"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    for model in args.models:
        if model not in ("small", "7b"):
            p.error(f"--models: unknown model {model!r} (small, 7b)")
    args.batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,4,16")).split(",")]
    args.new_tokens = args.new_tokens or (8 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.encode_kinds is not None:
        args.encode_kinds = [k.strip() for k in args.encode_kinds.split(",") if k.strip()]
        for kind in args.encode_kinds:
            if kind not in KINDS:
                p.error(f"--encode-kinds: unknown kind {kind!r} ({', '.join(KINDS)})")
    if args.decoders is not None:
        args.decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
        for decoder in args.decoders:
            if decoder not in ("static", "compiled"):
                p.error(f"--decoders: unknown decoder {decoder!r} (static, compiled)")
    if min(args.batches) < 1 or args.new_tokens < 2 or args.prompt < 2 or args.repeats < 1 or args.chat_history < 2:
        p.error("batches >= 1, --new-tokens >= 2, --prompt >= 2, --repeats >= 1, --chat-history >= 2")
    return args


# ---------------------------------------------------------------------------------------------
# Device facts
# ---------------------------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of ``dst.copy_(src)`` on float32 tensors of ``megabytes`` (bytes read + written)."""
    import torch

    n = megabytes * 2**20 // 4
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * n * 4 / best / 1e9


def device_bandwidth(device, given: float | None, quick: bool) -> tuple[float | None, str]:
    import torch

    if given:
        return given, "--bandwidth"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BANDWIDTH_GBPS:
            if key.lower() in name.lower():
                return value, f"table ({name})"
        return None, f"unknown GPU {name!r}: pass --bandwidth GBps"
    gbps = cpu_copy_bandwidth(32 if quick else 256)
    return gbps, "estimate: torch copy measured here (read + write)"


def free_memory_bytes(device) -> int | None:
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def machine(device) -> dict:
    import platform

    import torch

    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def build_small(device):
    """The default preset's ImageBind and language model, without its visual cache (nothing
    here uses it, and it would need faiss, which a GPU machine may lack)."""
    import torch

    from imagebind_llm import presets

    if presets.DEFAULT_PRESET == presets.TOYWORLD_PRESET:  # LoRA merged later (see bench_model)
        pipeline = presets.build_toyworld_pipeline(device=device, dtype=torch.float32, visual_cache=False,
                                                   merge_lora=False)
    else:
        pipeline = presets.build_untrained_pipeline(device=device, dtype=torch.float32)
    return pipeline.imagebind, pipeline.model.eval(), pipeline.name


def seven_b_bytes() -> int:
    from imagebind_llm.config import AdapterConfig, ImageBindLLMConfig, llama_7b
    from imagebind_llm.model import ImageBindLLM

    import torch

    with torch.device("meta"):
        model = ImageBindLLM(ImageBindLLMConfig(llama_7b(), AdapterConfig()))
    return sum(p.numel() for p in model.parameters()) * 2  # bfloat16


def build_7b(device, dtype):
    return random_7b_model(device, dtype)


def build_huge_imagebind(device, dtype):
    from encoders import build_model

    return build_model("huge", dtype, device)


def weight_bytes(model) -> int:
    """Bytes a decode step reads from the LLaMA's weights (the token embedding is a lookup)."""
    llama = model.llama
    skip = {id(t) for t in llama.tok_embeddings.parameters()}
    tensors = [t for t in list(llama.parameters()) + list(llama.buffers()) if id(t) not in skip]
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def random_prompts(vocab: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (length - 1,), generator=generator).tolist() for _ in range(batch)]


def visual_queries(model, batch: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    feature = torch.nn.functional.normalize(torch.randn(batch, model.config.adapter.imagebind_dim,
                                                        generator=generator), dim=-1)
    with torch.inference_mode():
        return model.visual_query(feature.to(model.device))


def run_decoder(model, kind: str, prompts, new_tokens: int, visual_query) -> dict:
    """One greedy run: first_s (prefill + first token), decode_s, steps, tokens."""
    from imagebind_llm.fast_decode import get_decoder
    from imagebind_llm.generation import GenerationConfig, generate_tokens

    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    device = model.device
    if kind == "eager":
        rows: list[list[int]] = [[] for _ in prompts]
        sync(device)
        started = time.perf_counter()
        first_at, first_cpu, steps = None, None, 0
        for step in generate_tokens(model, prompts, config, visual_query=visual_query, eos_id=None):
            if first_at is None:
                first_at, first_cpu = time.perf_counter(), time.process_time()
            else:
                steps += 1
            for row, token in enumerate(step):
                if token is not None:
                    rows[row].append(token)
        ended, ended_cpu = time.perf_counter(), time.process_time()
        return {"first_s": first_at - started, "decode_s": ended - first_at,
                "decode_cpu_s": ended_cpu - first_cpu, "steps": steps, "tokens": rows}
    stats: dict = {}
    rows = get_decoder(model, kind).generate(prompts, config, visual_query=visual_query, eos_id=None,
                                             stats=stats)
    return {**stats, "tokens": rows}


def decode_case(model, kind: str, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                warmup: bool) -> dict:
    prompts = random_prompts(model.config.llama.vocab_size, batch, prompt_len, seed=batch)
    query = visual_queries(model, batch, seed=batch)
    compile_s = None
    if warmup:
        started = time.perf_counter()
        run_decoder(model, kind, prompts, 2, query)  # first calls: allocations, kernels, compiling
        if kind == "compiled":
            compile_s = time.perf_counter() - started
    if kind != "eager":  # its cache is allocated inside the measured block, as the eager loop's is
        from imagebind_llm.fast_decode import get_decoder

        get_decoder(model, kind).release()
    trim_heap()
    best = None
    with PeakMemory(model.device) as memory:
        for _ in range(repeats):
            run = run_decoder(model, kind, prompts, new_tokens, query)
            if best is None or run["decode_s"] < best["decode_s"]:
                best = run
    steps_per_s = best["steps"] / best["decode_s"] if best["decode_s"] > 0 else float("nan")
    cpu_s = best["decode_cpu_s"]
    return {"decoder": kind, "batch": batch, "prompt": prompt_len, "new_tokens": new_tokens,
            "decode_tok_s": batch * steps_per_s, "steps_per_s": steps_per_s,
            "decode_tok_per_cpu_s": batch * best["steps"] / cpu_s if cpu_s > 0 else float("nan"),
            "first_ms": 1e3 * best["first_s"],
            "peak_mib": (memory.peak_bytes or 0) / 2**20, "tokens": best["tokens"], "compile_s": compile_s}


def encode_image(imagebind, path: str):
    """Unit ImageBind feature (1, D) of an image file: preprocessing + encoding, as the pipeline does."""
    from imagebind_llm.embedding import Embedder, Media

    return Embedder(imagebind).embed_media([Media("image", path)])


def ttft_case(imagebind, model, kind: str, image: str, prompt: list[int], repeats: int) -> dict:
    """Image file + prompt -> first token: encode, bind network, prefill, first token (streaming)."""
    import torch

    from imagebind_llm.fast_decode import decode_tokens
    from imagebind_llm.generation import GenerationConfig

    config = GenerationConfig(max_new_tokens=1, temperature=0.0)
    best = None
    for _ in range(repeats + 1):  # the first run warms up
        sync(model.device)
        started = time.perf_counter()
        feature = encode_image(imagebind, image)
        with torch.inference_mode():
            query = model.visual_query(feature.to(model.device))
        sync(model.device)
        encoded = time.perf_counter()
        steps = decode_tokens(model, [prompt], config, decoder=kind, visual_query=query, eos_id=None)
        token = next(iter(steps))
        ended = time.perf_counter()
        run = {"decoder": kind, "encode_ms": 1e3 * (encoded - started), "ttft_ms": 1e3 * (ended - started),
               "token": token}
        if best is None or run["ttft_ms"] < best["ttft_ms"]:
            best = run
    return best


def ttft_again_case(imagebind, model, kind: str, image: str, prompt: list[int], repeats: int) -> dict:
    """A second question about the same image, as the app answers it: the image's embedding comes
    from the embedding memo and the prompt's first ``TEMPLATE_START`` tokens (the template's
    header) from the prefix cache; the question after them differs. Every repeat starts from a
    memo and a prefix cache that hold only what the first question left."""
    import torch

    from imagebind_llm.embedding import Embedder, Media
    from imagebind_llm.embedding_memo import EmbeddingMemo
    from imagebind_llm.fast_decode import decode_tokens
    from imagebind_llm.generation import GenerationConfig
    from imagebind_llm.prefix_cache import PrefixCache

    config = GenerationConfig(max_new_tokens=1, temperature=0.0)
    shared = min(TEMPLATE_START, len(prompt) - 1)
    second = prompt[:shared] + random_prompts(model.config.llama.vocab_size, 1, len(prompt) - shared + 1,
                                              seed=5)[0][1:]

    def first_token(embedder, tokens, cache):
        feature = embedder.embed_media([Media("image", image)])
        with torch.inference_mode():
            query = model.visual_query(feature.to(model.device))
        steps = decode_tokens(model, [tokens], config, decoder=kind, visual_query=query, eos_id=None,
                              prefix_cache=cache)
        return next(iter(steps))[0]

    expected = first_token(Embedder(imagebind), second, None)
    best = None
    for _ in range(repeats + 1):  # the first run warms up
        embedder, cache = Embedder(imagebind), PrefixCache(1 << 40)
        embedder.memo = EmbeddingMemo()
        first_token(embedder, prompt, cache)
        sync(model.device)
        started = time.perf_counter()
        token = first_token(embedder, second, cache)
        sync(model.device)
        elapsed = 1e3 * (time.perf_counter() - started)
        if best is None or elapsed < best["ttft_ms"]:
            best = {"decoder": f"{kind}, same image again", "ttft_ms": elapsed, "same_as_alone": token == expected,
                    "reused": shared}
    return best


def chat_ttft_case(model, kind: str, history: int, answer: int, question: int, repeats: int) -> dict:
    """A chat's next turn: time to its first token with the prefix cache off and on.

    The earlier turns are ``history`` random tokens and the last answer ``answer`` greedy tokens;
    the new turn's prompt is all of that plus ``question`` tokens. "on": a prefix cache that holds
    what the earlier turn left (the app's state between two turns); every repeat starts from
    such a cache, so the timed turn never reuses itself."""
    from imagebind_llm.fast_decode import decode_tokens
    from imagebind_llm.generation import GenerationConfig
    from imagebind_llm.prefix_cache import PrefixCache

    vocab = model.config.llama.vocab_size
    earlier = random_prompts(vocab, 1, history, seed=7)[0]
    asked = random_prompts(vocab, 1, question + 1, seed=8)[0][1:]

    def first_token(prompt, new_tokens, cache):
        config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
        steps = decode_tokens(model, [prompt], config, decoder=kind, eos_id=None, prefix_cache=cache)
        return [step[0] for step in steps]

    best: dict = {}
    reused = 0
    for mode in ("off", "on"):
        for _ in range(repeats + 1):  # the first run warms up
            cache = PrefixCache(1 << 40) if mode == "on" else None
            replied = first_token(earlier, answer, cache)
            prompt = earlier + replied + asked
            before = cache.stats.reused_tokens if cache is not None else 0
            sync(model.device)
            started = time.perf_counter()
            token = first_token(prompt, 1, cache)[0]
            sync(model.device)
            elapsed = 1e3 * (time.perf_counter() - started)
            if cache is not None:
                reused = cache.stats.reused_tokens - before
            if mode not in best or elapsed < best[mode][0]:
                best[mode] = (elapsed, token)
    return {"decoder": kind, "prompt": len(earlier) + answer + question, "reused": reused,
            "off_ms": best["off"][0], "on_ms": best["on"][0], "x_off": best["off"][0] / best["on"][0],
            "same_tokens": best["off"][1] == best["on"][1]}


def encode_table(imagebind, kinds: list[str], items: dict, device, repeats: int) -> list[dict]:
    import torch

    from encoders import preprocess_options

    from imagebind_llm.preprocess import KIND_TO_MODALITY, load

    options = preprocess_options()
    rows = []
    for kind in kinds:
        item = items[kind]
        item = item[0] if isinstance(item, list) else item
        load(kind, item, options)  # warm-up
        pre, enc = [], []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            x = load(kind, item, options)
            loaded = time.perf_counter()
            with torch.inference_mode():
                imagebind.encode_all(KIND_TO_MODALITY[kind], x[None].to(device=imagebind.device))
            sync(device)
            pre.append(loaded - started)
            enc.append(time.perf_counter() - loaded)
        pre, enc = pre[1:], enc[1:]  # the first run warms up
        rows.append({"kind": kind, "preprocess_ms": 1e3 * statistics.median(pre),
                     "encode_ms": 1e3 * statistics.median(enc)})
    return rows


# ---------------------------------------------------------------------------------------------
# The official generate (CUDA, 7B shape): bench/official.py
# ---------------------------------------------------------------------------------------------


def official_case(built, model, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Decode tokens/s of the official generate: runs of new_tokens and of 1 token, subtracted."""
    import official

    prompts = random_prompts(model.config.llama.vocab_size, batch, prompt_len, seed=batch)
    query = visual_queries(model, batch, seed=batch).half()
    tokens = None

    def timed(count: int) -> float:
        nonlocal tokens
        best = float("inf")
        for _ in range(repeats):
            sync(model.device)
            started = time.perf_counter()
            tokens = official.generate(built, prompts, count, query)
            sync(model.device)
            best = min(best, time.perf_counter() - started)
        return best

    timed(2)  # warm-up
    first = timed(1)
    total = timed(new_tokens)
    steps = new_tokens - 1
    return {"decoder": "official", "batch": batch, "decode_tok_s": batch * steps / max(total - first, 1e-9),
            "first_ms": 1e3 * first, "tokens": tokens}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value != value:
        return "nan"
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"


def default_decoders(device, given) -> list[str]:
    if given is not None:
        return given
    return ["static", "compiled"] if device.type == "cuda" else ["static"]


def bench_model(name: str, args, device, bandwidth: float | None, media: dict, notes: list[str]) -> dict:
    import torch

    cpu = device.type == "cpu"
    result: dict = {"model": name, "decode": [], "ttft": [], "encode": [], "skipped": None}
    if name == "7b":
        need = seven_b_bytes() + 2.6e9 + 1.0e9  # LLaMA + ImageBind huge (bf16) + activations and caches
        if cpu:
            need += 2.7e9  # --dtype auto's float32 probe of these widths (imagebind_llm/precision.py)
        free = free_memory_bytes(device)
        if free is not None and free < need:
            result["skipped"] = (f"the 7B-shaped model needs about {need / 1e9:.1f} GB, "
                                 f"{free / 1e9:.1f} GB is free")
            print(f"\n[7b] skipped: {result['skipped']}", flush=True)
            return result
    started = time.perf_counter()
    if name == "small":
        imagebind, model, label = build_small(device)
        result["preset"] = label
    else:
        model = build_7b(device, torch.bfloat16)
        imagebind = build_huge_imagebind(device, torch.bfloat16)
    result["build_s"] = time.perf_counter() - started
    result["dtype"] = str(model.dtype).replace("torch.", "")
    result["weight_bytes"] = weight_bytes(model)
    slow = name == "7b" and cpu
    new_tokens = args.new_tokens_7b_cpu if slow else args.new_tokens
    prompt_len = min(args.prompt_7b_cpu if slow else args.prompt,
                     model.config.llama.max_seq_len - new_tokens - 1)
    repeats = 1 if slow and args.repeats == 3 else args.repeats
    decoders = default_decoders(device, args.decoders)
    print(f"\n[{name}] {result.get('preset', '7B-shaped, random weights')}, {result['dtype']}, "
          f"{result['weight_bytes'] / 2**20:.1f} MiB of weights read per step, "
          f"built in {result['build_s']:.1f} s; "
          f"decode: prompt {prompt_len} tokens, {new_tokens} new tokens, best of {repeats}", flush=True)

    # LoRA folded into the weights, as pipelines load models (Pipeline.merge_lora). The official
    # model is built first (it reads the LoRA tensors). The static decoder is timed on a copy
    # with the LoRA apart too, alternating with the merged model so that neither gets the
    # first, colder runs.
    if args.official is not None:
        official_model(args, model, device, notes, name)
    apart = {}
    free = free_memory_bytes(device)
    if not slow and "static" in decoders and free is not None and free < 1.2 * weight_bytes(model):
        notes.append(f"[{name}] static decoder with LoRA apart not timed: a copy of the model does not fit "
                     f"the free memory ({free / 1e9:.1f} GB)")
    elif not slow and "static" in decoders:
        import copy

        merged = copy.deepcopy(model)
        merged.llama.merge_lora_()
        for batch in args.batches:
            runs = {"apart": [], "merged": []}
            for _ in range(2):
                for label, which in (("apart", model), ("merged", merged)):
                    runs[label].append(decode_case(which, "static", batch, prompt_len, new_tokens, repeats,
                                                   warmup=True))
            best = {label: max(cases, key=lambda c: c["decode_tok_s"]) for label, cases in runs.items()}
            best["apart"]["decoder"] = "static, LoRA apart"
            best["apart"]["x_merged"] = best["merged"]["decode_tok_s"] / best["apart"]["decode_tok_s"]
            apart[batch] = best["apart"]
        del merged
    result["lora_merged"] = model.llama.merge_lora_()
    if result["lora_merged"]:
        result["weight_bytes"] = weight_bytes(model)
        print(f"LoRA merged into {result['lora_merged']} projections: "
              f"{result['weight_bytes'] / 2**20:.1f} MiB of weights read per step (BW %)", flush=True)

    # On a CPU, the float32 model's decoding in bfloat16 too (a converted copy), and what
    # --dtype auto's probe chooses (imagebind_llm/precision.py): bfloat16 is one of the CPU's
    # candidates, but it changes answers, so it is only chosen when asked for.
    bf16_model = None
    if cpu:
        from imagebind_llm.precision import choose_dtype

        chosen, probe = choose_dtype(model.config, device)
        result["dtype_auto"] = {"chosen": str(chosen).replace("torch.", ""), "probe_s_per_token": probe}
        print(f"--dtype auto chooses {result['dtype_auto']['chosen']} for a float32 model of these widths "
              "(probe: " + ", ".join(f"{k} {1e3 * v:.2f} ms/token" for k, v in probe.items()) + ")", flush=True)
    if cpu and not slow and model.dtype == torch.float32:
        import copy

        bf16_model = copy.deepcopy(model).to(torch.bfloat16)

    # decode tokens/s
    rows = []
    for batch in args.batches:
        baseline = decode_case(model, "eager", batch, prompt_len, new_tokens, repeats, warmup=not slow)
        cases = [baseline] + ([apart[batch]] if batch in apart else [])
        for kind in decoders:
            # the same warm-up as the baseline; compiling (the compiled decoder's first call) is never timed
            try:
                cases.append(decode_case(model, kind, batch, prompt_len, new_tokens, repeats,
                                         warmup=not slow or kind == "compiled"))
            except Exception as error:  # noqa: BLE001 - report and go on
                notes.append(f"[{name}] decoder {kind} at batch {batch} failed: {error}")
        if bf16_model is not None:
            case = decode_case(bf16_model, "static", batch, prompt_len, new_tokens, repeats, warmup=True)
            case.update(decoder="static, bfloat16", weight_bytes=weight_bytes(bf16_model))
            cases.append(case)
        if args.official is not None:
            cases.append(run_official(args, model, batch, prompt_len, new_tokens, repeats, device, notes,
                                      name))
        official_row = next((c for c in cases if c is not None and c["decoder"] == "official"), None)
        for case in [c for c in cases if c is not None]:
            case["x_eager"] = case["decode_tok_s"] / baseline["decode_tok_s"]
            if official_row is not None:
                case["x_official"] = case["decode_tok_s"] / official_row["decode_tok_s"]
            if "decode_tok_per_cpu_s" in case:
                case["x_eager_cpu"] = case["decode_tok_per_cpu_s"] / baseline["decode_tok_per_cpu_s"]
            case["same_tokens"] = case["tokens"] == baseline["tokens"] if "tokens" in case else None
            if bandwidth:
                steps_per_s = case["decode_tok_s"] / case["batch"]
                case["bandwidth_pct"] = (100 * case.get("weight_bytes", result["weight_bytes"]) * steps_per_s
                                         / (bandwidth * 1e9))
            result["decode"].append(case)
            row = [name, str(batch), case["decoder"], fmt(case["decode_tok_s"], 2), fmt(case["x_eager"], 2)]
            if cpu:
                row += [fmt(case.get("decode_tok_per_cpu_s"), 2), fmt(case.get("x_eager_cpu"), 2)]
            rows.append(row + [fmt(case.get("first_ms")), fmt(case.get("peak_mib"), 0),
                               fmt(case.get("bandwidth_pct"), 2),
                               {True: "yes", False: "NO", None: "-"}[case["same_tokens"]],
                               fmt(case.get("compile_s"))])
    for case in result["decode"]:
        case.pop("tokens", None)
    header = ["model", "batch", "decoder", "decode tok/s", "x eager"]
    if cpu:  # on a shared CPU the process's CPU time is steadier than the wall clock
        header += ["tok/cpu-s", "x eager cpu"]
    print(table(header + ["first ms", "peak MiB", "BW %", "same", "compile s"], rows), flush=True)
    if any(case["decoder"] == "official" for case in result["decode"]):
        print(f"official: float16 weights under autocast, as its loader builds them; {name} runs in "
              f"{result['dtype']}, so 'same' compares two roundings of the same weights")
    del bf16_model
    for batch, case in apart.items():
        print(f"{name} batch {batch}: static decoder, LoRA merged / apart = {case['x_merged']:.2f}x "
              "(alternating runs)")
    for case in result["decode"]:
        if "x_official" in case and case["decoder"] != "official":
            print(f"{name} batch {case['batch']}: {case['decoder']} / official generate = "
                  f"{case['x_official']:.2f}x")

    # time to first token: image + prompt
    prompt = random_prompts(model.config.llama.vocab_size, 1, args.prompt, seed=99)[0]
    ttft_rows = []
    baseline = None
    for kind in ["eager"] + decoders:
        try:
            case = ttft_case(imagebind, model, kind, str(media["image"]), prompt, 1 if slow else repeats)
        except Exception as error:  # noqa: BLE001
            notes.append(f"[{name}] time to first token with {kind} failed: {error}")
            continue
        baseline = baseline or case
        case["x_eager"] = baseline["ttft_ms"] / case["ttft_ms"]
        case["same_tokens"] = case["token"] == baseline["token"]
        result["ttft"].append(case)
        ttft_rows.append([name, kind, fmt(case["encode_ms"]), fmt(case["ttft_ms"]), fmt(case["x_eager"], 2),
                          "yes" if case["same_tokens"] else "NO"])
    for case in result["ttft"]:
        case.pop("token", None)
    from imagebind_llm.fast_decode import default_decoder

    try:  # a second question about the same image: embedding memo and prefix cache, as in the app
        case = ttft_again_case(imagebind, model, default_decoder(device), str(media["image"]), prompt,
                               1 if slow else repeats)
        case["x_eager"] = baseline["ttft_ms"] / case["ttft_ms"] if baseline else None
        result["ttft"].append(case)
        ttft_rows.append([name, case["decoder"], "-", fmt(case["ttft_ms"]), fmt(case["x_eager"], 2),
                          "yes" if case["same_as_alone"] else "NO"])
    except Exception as error:  # noqa: BLE001
        notes.append(f"[{name}] time to first token for the same image again failed: {error}")
    print(f"time to first token: a 640x480 JPEG + a {args.prompt}-token prompt (x eager: eager time / this "
          f"time; 'same image again': a second question, its embedding remembered and its first "
          f"{TEMPLATE_START} tokens, the template's header, reused from the prefix cache)")
    print(table(["model", "decoder", "encode ms", "TTFT ms", "x eager", "same"], ttft_rows), flush=True)

    # time to first token of a chat's next turn, prefix cache off and on
    kind = default_decoder(device)
    history = 64 if slow else args.chat_history
    history = min(history, model.config.llama.max_seq_len - CHAT_ANSWER - args.prompt - 1)
    try:
        case = chat_ttft_case(model, kind, history, CHAT_ANSWER, args.prompt, 1 if slow else repeats)
        result["chat_ttft"] = case
        print(f"a chat's next turn: {history} tokens of earlier turns, a {CHAT_ANSWER}-token answer, a "
              f"{args.prompt}-token question; time to its first token (x: off / on)")
        print(table(["model", "decoder", "prompt", "reused", "cache off ms", "cache on ms", "x", "same"],
                    [[name, kind, str(case["prompt"]), str(case["reused"]), fmt(case["off_ms"]),
                      fmt(case["on_ms"]), fmt(case["x_off"], 2), "yes" if case["same_tokens"] else "NO"]]),
              flush=True)
    except Exception as error:  # noqa: BLE001
        notes.append(f"[{name}] chat time to first token failed: {error}")

    # ImageBind encode per modality
    kinds = args.encode_kinds or (["image"] if slow else (["image", "text"] if args.quick else list(media)))
    kinds = [k for k in kinds if k in media]
    result["encode"] = encode_table(imagebind, kinds, media, device, 1 if slow else repeats)
    which = "huge, random weights, bfloat16" if name == "7b" else "the preset"
    print(f"ImageBind encode, batch 1 ({which}):")
    encode_rows = [[name, r["kind"], fmt(r["preprocess_ms"]), fmt(r["encode_ms"])] for r in result["encode"]]
    print(table(["model", "kind", "preprocess ms", "encode ms"], encode_rows), flush=True)
    _OFFICIAL.clear()
    del model, imagebind
    trim_heap()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


_OFFICIAL: dict = {}


def run_official(args, model, batch, prompt_len, new_tokens, repeats, device, notes, name):
    built = official_model(args, model, device, notes, name)
    if built is None:
        return None
    try:
        return official_case(built, model, batch, prompt_len, new_tokens, repeats)
    except Exception as error:  # noqa: BLE001 - the official code is outside this project
        notes.append(f"[{name}] official generate failed at batch {batch}: {type(error).__name__}: {error}")
        return None


def official_model(args, model, device, notes, name):
    """The official model holding ``model``'s weights, built once per model (None, with a note,
    where it cannot run)."""
    reason = None
    if device.type != "cuda":
        reason = "the official code hard-codes CUDA"
    elif model.config.llama.dim != 4096:
        reason = "the official code hard-codes the width 4096 (7B shape only)"
    if reason:
        note = f"[{name}] official generate skipped: {reason}"
        if note not in notes:
            notes.append(note)
        return None
    key = (id(model), max(args.batches))
    if _OFFICIAL.get("key") != key:
        _OFFICIAL.clear()
        try:
            import official

            _OFFICIAL.update(key=key, model=official.build(model, args.official, max(args.batches)))
        except Exception as error:  # noqa: BLE001 - the official code is outside this project
            _OFFICIAL.update(key=key, model=None)
            notes.append(f"[{name}] official model could not be built: {type(error).__name__}: {error}")
    return _OFFICIAL["model"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = machine(device)
    bandwidth, source = device_bandwidth(device, args.bandwidth, args.quick)
    where = info.get("gpu") or f"{info['threads']} threads"
    print(f"device {device} ({where}), torch {info['torch']}, load average {info.get('loadavg')}")
    print(f"memory bandwidth: {fmt(bandwidth)} GB/s ({source})")
    notes: list[str] = []
    if device.type == "cpu" and "compiled" not in default_decoders(device, args.decoders):
        notes.append("compiled decoder not measured on a CPU (compiling takes 20 s to minutes per shape "
                     "here; --decoders static,compiled to include it)")
    if args.official is None:
        notes.append("official generate not measured (--official PATH, CUDA only)")
    from encoders import make_media

    results = []
    with contextlib.ExitStack() as stack:
        folder = args.media or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        wanted = ["image", "text"] if args.quick else list(_all_kinds())
        media = make_media(folder, wanted)
        for name in args.models:
            results.append(bench_model(name, args, device, bandwidth, media, notes))
    for note in notes:
        print(f"note: {note}")
    summary = {"machine": info, "bandwidth_gbps": bandwidth, "bandwidth_source": source, "models": results,
               "notes": notes}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _all_kinds():
    from imagebind_llm.preprocess import KINDS

    return KINDS


if __name__ == "__main__":
    main()
