"""Benchmark of the low-memory settings: peak memory of every setting, the weight bytes the
12 GB GPU recipe adds up to, and how often int8 (and int4) answer like bfloat16.

    python bench/memory.py                 # small preset + 7B-shaped model, every setting (~15 min on 2 cores)
    python bench/memory.py --models small  # the small default preset only (a minute)
    python bench/memory.py --quick         # seconds: a smoke run

Models: ``small`` = the default preset (the toy-world model when installed, else the untrained
one), loaded from its files like a user would (the untrained one is first written to a temporary
folder in the official formats); ``7b`` = LLaMA-7B's shape with ImageBind-LLM's adapter and
ImageBind-huge's shape, random weights. The 7B LLaMA is built on the meta device and made tensor
by tensor (each projection quantised as soon as it exists, so no full-precision copy is ever
whole); its ImageBind is written once to a temporary float32 checkpoint in the official layout
(4.8 GB, like imagebind_w3D.pth) and loaded from it, so the lazy setting reads a real file.

Settings: the LLaMA in float32 / bfloat16 / int8 / int4 (int8/int4 with bfloat16 activations);
ImageBind in float32 / bfloat16, its encoders read eagerly or lazily; offload of the encoders on/off
(a GPU only: on a CPU there is nowhere to offload from). Then the whole recipe on one image
question. Figures:

* weights MiB: the bytes of the model's tensors (meta tensors excluded: unread lazy encoders);
* peak MiB: CUDA ``max_memory_allocated``; CPU: the peak growth of the resident set during load +
  one request (bench/common.py). On a CPU the resident set also counts the pages of the
  memory-mapped checkpoint that were read (page cache the kernel can drop at any time), so a
  second CPU column, "anon", gives the growth of the anonymous memory only (statm resident -
  shared);
* agreement: greedy answers of the default model to fixed questions about the files in
  ``examples/`` (the same bfloat16 ImageBind features for every variant): the share of identical
  answers and of identical first tokens, against the bfloat16 model.

A 7B setting whose weights would not fit the memory available now is skipped with a note
(float32, 27 GB, always is on a 24 GB machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakMemory, cheap_random_init

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MIB = 2**20
GIB = 2**30

#: (kind, file in examples/, question): the fixed questions of the agreement measure.
QUESTIONS = [
    ("image", "sunset.png", "What is in this picture?"),
    ("image", "sunset.png", "Describe the image in detail."),
    ("image", "house.png", "What is in this picture?"),
    ("image", "house.png", "What colour is the roof?"),
    ("audio", "birdsong.wav", "What do you hear?"),
    ("audio", "doorbell.wav", "What is this sound?"),
    ("video", "bouncing_ball.mp4", "What is happening in this video?"),
    ("depth", "room_depth.png", "Describe the scene."),
    ("thermal", "person_thermal.png", "What is in this thermal image?"),
    ("imu", "walking_imu.npy", "What is the person doing?"),
    ("point", "sphere_points.npy", "What shape is this?"),
    (None, None, "Hello! Who are you?"),
]


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


class Peak(PeakMemory):
    """PeakMemory plus, on a CPU, the peak growth of anonymous memory (resident - shared)."""

    @staticmethod
    def anon() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                fields = f.read().split()
            return (int(fields[1]) - int(fields[2])) * PeakMemory._PAGE
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        super().__enter__()
        self.anon_bytes = None
        if self.device.type != "cuda":
            self._anon_base = self.anon()
            self._anon_peak = self._anon_base or 0
            self._anon_stop = threading.Event()
            self._anon_thread = threading.Thread(target=self._poll_anon, daemon=True)
            self._anon_thread.start()
        return self

    def _poll_anon(self) -> None:
        while not self._anon_stop.wait(0.002):
            value = self.anon()
            if value is not None and value > self._anon_peak:
                self._anon_peak = value

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self.device.type != "cuda":
            self._anon_stop.set()
            self._anon_thread.join()
            if self._anon_base is not None:
                self.anon_bytes = max(0, max(self._anon_peak, self.anon() or 0) - self._anon_base)


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fits(device, needed: int) -> str | None:
    """None when ``needed`` bytes (plus 15 % and 1.5 GB) fit the device now, else a note."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = available_bytes()
        if free is None:
            return None
    if needed * 1.15 + 1.5 * GIB > free:
        return f"skipped: needs about {needed / GIB:.1f} GiB, {free / GIB:.1f} GiB available"
    return None


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclass
class SmallFiles:
    name: str
    imagebind: Path
    imagebind_config: object
    llama: Path
    adapter: Path
    tokenizer: Path


def small_files(workdir: Path) -> SmallFiles:
    """The default preset's files: the installed toy-world folder, or the untrained preset
    written in the official formats (ImageBind .pth, Meta LLaMA folder, adapter .pth)."""
    import torch

    from imagebind_llm import presets
    from imagebind_llm.checkpoint import project_to_official
    from imagebind_llm.weights import llama_shapes, project_to_adapter, write_adapter, write_meta_llama

    name = presets.default_preset() if hasattr(presets, "default_preset") else presets.DEFAULT_PRESET
    if name != presets.UNTRAINED_PRESET:
        files = presets.verify_manifest(presets.TOYWORLD_DIR)
        return SmallFiles(name, files["imagebind.pth"], presets._config_file(files["imagebind.json"]),
                          Path(files["llama/params.json"]).parent, files["adapter.pth"], files["tokenizer.model"])
    pipeline = presets.build_untrained_pipeline()
    model, imagebind = pipeline.model, pipeline.imagebind
    torch.save(project_to_official(imagebind), workdir / "imagebind.pth")
    state = model.state_dict()
    base = {key: state["llama." + key] for key in llama_shapes(model.config.llama)}
    write_meta_llama(base, model.config.llama, workdir / "llama")
    write_adapter(project_to_adapter(model), workdir / "adapter.pth")
    shutil.copy(presets.untrained_tokenizer(), workdir / "tokenizer.model")
    return SmallFiles(name, workdir / "imagebind.pth", imagebind.config, workdir / "llama", workdir / "adapter.pth",
                      workdir / "tokenizer.model")


class RandomWeights:
    """Random weights of a realistic scale, made fast from one shared pool of normal values."""

    def __init__(self, device, seed: int = 0):
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.pool = torch.randn((1 << 22) + 4099, generator=generator).to(device=device, dtype=torch.bfloat16)
        self.calls = 0

    def matrix(self, rows: int, cols: int, dtype, device):
        import torch

        out = torch.empty(rows, cols, dtype=dtype, device=device)
        flat, step = out.view(-1), self.pool.numel() - 4099
        for start in range(0, flat.numel(), step):
            chunk = flat[start:start + step]
            offset = (self.calls * 7919 + (start // step) * 131) % 4099
            chunk.copy_(self.pool[offset:offset + chunk.numel()])
        self.calls += 1
        return out.mul_(cols**-0.5)


def materialise_(model, device, dtype) -> set[str]:
    """Replace every meta parameter/buffer by an empty tensor (floating ones in ``dtype``);
    returns the names of the parameters made."""
    import torch
    from torch import nn

    made = set()
    for module_name, module in model.named_modules():
        for name, tensor in list(module._parameters.items()):
            if tensor is not None and tensor.is_meta:
                kind = dtype if tensor.is_floating_point() else tensor.dtype
                module._parameters[name] = nn.Parameter(torch.empty(tensor.shape, dtype=kind, device=device),
                                                        requires_grad=False)
                made.add(f"{module_name}.{name}" if module_name else name)
        for name, tensor in list(module._buffers.items()):
            if tensor is not None and tensor.is_meta:
                kind = dtype if tensor.is_floating_point() else tensor.dtype
                module._buffers[name] = torch.zeros(tensor.shape, dtype=kind, device=device)
    return made


def random_7b_language_model(device, dtype, quantize: str | None):
    """LLaMA-7B + adapter with random weights, projections quantised as they are made."""
    import torch

    from imagebind_llm.config import AdapterConfig, ImageBindLLMConfig, llama_7b
    from imagebind_llm.model import ImageBindLLM
    from imagebind_llm.quantize import quantize_llama_

    with torch.device("meta"):
        model = ImageBindLLM(ImageBindLLMConfig(llama_7b(), AdapterConfig()))
    if quantize:
        source = RandomWeights(device)
        quantize_llama_(model, quantize, device=device,
                        weights=lambda name, linear: source.matrix(*linear.weight.shape, torch.bfloat16, device))
        del source
    made = materialise_(model, device, dtype)
    cheap_random_init(model, skip=lambda name: name not in made)
    return model.eval().requires_grad_(False)


def random_imagebind_file(config, path: Path) -> None:
    """A random ImageBind of ``config`` saved as an official float32 checkpoint."""
    import torch

    from imagebind_llm.checkpoint import project_to_official
    from imagebind_llm.encoders.imagebind import ImageBind

    with torch.device("meta"):
        model = ImageBind(config)
    model = model.to_empty(device="cpu")
    cheap_random_init(model)
    for name in model.modalities:  # the postprocessor scales are buffers: keep them finite
        encoder = model.encoder(name)
        if "log_logit_scale" in encoder._buffers:
            encoder.log_logit_scale.fill_(2.0)
    torch.save(project_to_official(model), path)
    del model
    release()


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def answer_once(model, device, prompt: int, new_tokens: int) -> float:
    """Bind network + prefill ``prompt`` random tokens + ``new_tokens`` greedy steps; decode tok/s."""
    import torch

    from imagebind_llm.llama import KVCache

    config = model.config
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, config.llama.vocab_size, (1, prompt), generator=generator).to(device)
    feature = torch.nn.functional.normalize(torch.randn(1, config.adapter.imagebind_dim, generator=generator), dim=-1)
    with torch.inference_mode():
        injections = model.injections(model.visual_query(feature.to(device)))
        cache = KVCache(config.llama, 1, prompt + new_tokens, model.dtype, device)
        token = model.llama(tokens, cache=cache, injections=injections, last_only=True).argmax(-1)
        started = time.perf_counter()
        for step in range(new_tokens - 1):
            token = model.llama(token[:, None], start=prompt + step, cache=cache, injections=injections,
                                last_only=True).argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    return (new_tokens - 1) / elapsed if elapsed > 0 else float("nan")


LLAMA_SETTINGS = [("float32", None), ("bfloat16", None), ("int8", "int8"), ("int4", "int4")]


def llama_case(model_name: str, setting: str, quantize, device, args, files: SmallFiles | None,
               computed: dict) -> dict:
    import torch

    from imagebind_llm.quantize import int4_unsupported_reason, tensor_bytes
    from imagebind_llm.tokenizer import Tokenizer
    from imagebind_llm.weights import build_language_model

    dtype = torch.float32 if setting == "float32" else torch.bfloat16
    row = {"model": model_name, "part": "LLaMA", "setting": setting if not quantize else f"{setting} (bf16 act.)"}
    if quantize == "int4" and (reason := int4_unsupported_reason(device)):
        return row | {"note": reason}
    if model_name == "7b":
        needed = computed["llama"][setting]
        if device.type == "cpu" and setting == "float32":
            return row | {"note": f"skipped on a CPU: {needed / 1e9:.1f} GB of float32 weights"}
        if (note := fits(device, needed)) is not None:
            return row | {"note": note}
    release()
    with Peak(device) as peak:
        started = time.perf_counter()
        if model_name == "7b":
            model = random_7b_language_model(device, dtype, quantize)
        else:
            words = Tokenizer(files.tokenizer).n_words
            model = build_language_model(files.llama, files.adapter, tokenizer_words=words, dtype=dtype,
                                         device=device, quantize=quantize)
        load_s = time.perf_counter() - started
        prompt = min(args.prompt, model.config.llama.max_seq_len - args.new_tokens - 1)
        decode = answer_once(model, device, prompt, args.new_tokens if model_name == "small" else args.new_tokens_7b)
    row |= {"weights_mib": tensor_bytes(model) / MIB, "peak_mib": peak.peak_bytes / MIB,
            "anon_mib": (peak.anon_bytes or 0) / MIB if peak.anon_bytes is not None else None,
            "load_s": load_s, "decode_tok_s": decode}
    del model
    release()
    return row


def imagebind_case(model_name: str, path: Path, config, dtype_name: str, lazy: bool, offload: bool, device) -> dict:
    import torch

    from imagebind_llm.checkpoint import load_imagebind
    from imagebind_llm.embedding import Embedder, Media
    from imagebind_llm.lowmem import enable_offload
    from imagebind_llm.quantize import tensor_bytes

    dtype = getattr(torch, dtype_name)
    row = {"model": model_name, "part": "ImageBind", "setting": dtype_name, "lazy": lazy, "offload": offload}
    if offload and device.type != "cuda":
        return row | {"note": "n/a on a CPU (nothing to offload to)"}
    release()
    with Peak(device) as peak:
        started = time.perf_counter()
        model = load_imagebind(path, config, dtype=dtype, device="cpu" if offload else device, lazy=lazy)
        if offload:
            enable_offload(model, device)
        embedder = Embedder(model)
        embedder.embed_media([Media("image", str(EXAMPLES / "sunset.png"))])
        seconds = time.perf_counter() - started
    on_device = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
                    if t.device.type == device.type)
    row |= {"weights_mib": tensor_bytes(model) / MIB, "on_device_mib": on_device / MIB,
            "peak_mib": peak.peak_bytes / MIB,
            "anon_mib": (peak.anon_bytes or 0) / MIB if peak.anon_bytes is not None else None, "load_s": seconds}
    del model, embedder
    release()
    return row


def recipe_case(model_name: str, files: SmallFiles | None, ib_path: Path, ib_config, device, args,
                quantize: str, computed: dict) -> dict:
    """The low-memory recipe end to end: quantised LLaMA + bf16 ImageBind, lazy, offload on a GPU,
    one image question (encode + prefill + a few tokens)."""
    import torch

    from imagebind_llm.checkpoint import load_imagebind
    from imagebind_llm.embedding import Embedder, Media
    from imagebind_llm.lowmem import enable_offload
    from imagebind_llm.quantize import tensor_bytes
    from imagebind_llm.tokenizer import Tokenizer
    from imagebind_llm.weights import build_language_model

    offload = device.type == "cuda"
    row = {"model": model_name, "part": "recipe",
           "setting": f"{quantize} LLaMA + bf16 ImageBind, lazy" + (", offload" if offload else "")}
    needed = computed["llama"][quantize] + computed["encoders_bf16"]["vision"]
    if model_name == "7b" and (note := fits(device, needed)) is not None:
        return row | {"note": note}
    release()
    with Peak(device) as peak:
        started = time.perf_counter()
        imagebind = load_imagebind(ib_path, ib_config, dtype=torch.bfloat16, device="cpu" if offload else device,
                                   lazy=True)
        if offload:
            enable_offload(imagebind, device)
        if model_name == "7b":
            model = random_7b_language_model(device, torch.bfloat16, quantize)
        else:
            model = build_language_model(files.llama, files.adapter, tokenizer_words=Tokenizer(files.tokenizer).n_words,
                                         dtype=torch.bfloat16, device=device, quantize=quantize)
        feature = Embedder(imagebind).embed_media([Media("image", str(EXAMPLES / "sunset.png"))])
        with torch.inference_mode():
            model.visual_query(feature.to(device))
        answer_once(model, device, 16, 4)
        seconds = time.perf_counter() - started
    row |= {"weights_mib": (tensor_bytes(model) + tensor_bytes(imagebind)) / MIB, "peak_mib": peak.peak_bytes / MIB,
            "anon_mib": (peak.anon_bytes or 0) / MIB if peak.anon_bytes is not None else None, "load_s": seconds}
    del model, imagebind
    release()
    return row


# ---------------------------------------------------------------------------------------------
# Computed weight bytes (arithmetic on the shapes, nothing allocated)
# ---------------------------------------------------------------------------------------------


def computed_bytes(group_size: int = 128) -> dict:
    """Bytes of the 7B-shaped model's weights per setting, from the shapes alone."""
    import torch

    from imagebind_llm.config import AdapterConfig, ImageBindLLMConfig, imagebind_huge, llama_7b
    from imagebind_llm.encoders.imagebind import ImageBind
    from imagebind_llm.model import ImageBindLLM
    from imagebind_llm.quantize import TARGET, int4_group_size

    with torch.device("meta"):
        model = ImageBindLLM(ImageBindLLMConfig(llama_7b(), AdapterConfig()))
        imagebind = ImageBind(imagebind_huge(with_point=True))
    projections = [m.weight.shape for n, m in model.named_modules() if TARGET.match(n)]
    proj_params = sum(o * i for o, i in projections)
    rest_params = sum(p.numel() for p in model.parameters()) - proj_params
    int8 = sum(o * i + 2 * o for o, i in projections)  # int8 + a bf16 scale per row
    int4 = 0
    for out, width in projections:
        padded = -(-out // 16) * 16
        int4 += padded * width // 2 + (width // int4_group_size(width, group_size)) * padded * 2 * 2
    llama = model.config.llama
    kv_cache = 2 * llama.n_layers * llama.max_seq_len * llama.dim * 2  # keys + values, bf16, one sequence
    encoders = {name: sum(t.numel() for t in imagebind.encoder(name).state_dict().values())
                for name in imagebind.modalities}
    return {"projection_params": proj_params, "rest_params": rest_params,
            "llama": {"float32": 4 * (proj_params + rest_params), "bfloat16": 2 * (proj_params + rest_params),
                      "int8": int8 + 2 * rest_params, "int4": int4 + 2 * rest_params},
            "imagebind": {"float32": 4 * sum(encoders.values()), "bfloat16": 2 * sum(encoders.values())},
            "encoders_bf16": {name: 2 * count for name, count in encoders.items()},
            "kv_cache_bf16": kv_cache, "max_seq_len": llama.max_seq_len}


def print_computed(c: dict) -> None:
    gb = 1e9
    print("\n== 7B-shaped weights, computed from the shapes (GB = 1e9 bytes) ==")
    print(f"{'part':34s} {'float32':>8s} {'bfloat16':>8s} {'int8':>8s} {'int4':>8s}")
    llama = c["llama"]
    print(f"{'LLaMA-7B + adapter':34s} {llama['float32'] / gb:8.2f} {llama['bfloat16'] / gb:8.2f} "
          f"{llama['int8'] / gb:8.2f} {llama['int4'] / gb:8.2f}")
    ib = c["imagebind"]
    print(f"{'ImageBind-huge + 3D (7 encoders)':34s} {ib['float32'] / gb:8.2f} {ib['bfloat16'] / gb:8.2f}")
    print("encoders in bfloat16: " + ", ".join(f"{n} {b / gb:.2f}" for n, b in c["encoders_bf16"].items()))
    print(f"KV cache, one {c['max_seq_len']}-token sequence, bfloat16: {c['kv_cache_bf16'] / gb:.2f}")
    largest = max(c["encoders_bf16"].values())
    for name, llama_bytes in (("bfloat16", llama["bfloat16"]), ("int8", llama["int8"]), ("int4", llama["int4"])):
        eager = llama_bytes + ib["bfloat16"] + c["kv_cache_bf16"]
        lean = llama_bytes + largest + c["kv_cache_bf16"]
        print(f"GPU weights + KV cache, {name} LLaMA + bf16 ImageBind: all encoders {eager / gb:5.2f} GB, "
              f"offload/lazy (largest encoder only) {lean / gb:5.2f} GB")


# ---------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------


def agreement(device, questions: int, new_tokens: int,
              modes=("int8", "int4", "float32", "lora-apart")) -> dict:
    """Greedy answers of the default model in each mode vs bfloat16, on the same features.
    ``lora-apart``: bfloat16 with the LoRA updates kept apart, where pipelines fold them into the
    weights (one more bfloat16 rounding of the weights)."""
    import torch

    from imagebind_llm.embedding import Media
    from imagebind_llm.generation import GenerationConfig
    from imagebind_llm.pipeline import Settings
    from imagebind_llm.presets import load_preset_pipeline
    from imagebind_llm.prompts import format_prompt
    from imagebind_llm.quantize import int4_unsupported_reason

    baseline = load_preset_pipeline(None, device=device, dtype=torch.bfloat16)
    settings = Settings(generation=GenerationConfig(max_new_tokens=new_tokens, temperature=0.0))
    cases = []
    for kind, name, question in QUESTIONS[:questions]:
        feature = baseline.feature([Media(kind, str(EXAMPLES / name))]).vector if kind else None
        cases.append((feature, baseline.tokenizer.encode(format_prompt(question))))

    def answers(pipeline) -> list[list[int]]:
        return [list(pipeline.stream_ids(prompt, feature, settings)) for feature, prompt in cases]

    reference = answers(baseline)
    out = {"model": baseline.name, "questions": len(cases), "new_tokens": new_tokens, "rows": []}
    for mode in modes:
        if mode == "int4" and (reason := int4_unsupported_reason(device)):
            out["rows"].append({"mode": mode, "note": reason})
            continue
        if mode == "float32":
            other = load_preset_pipeline(None, device=device, dtype=torch.float32)
        elif mode == "lora-apart":
            other = load_preset_pipeline(None, device=device, dtype=torch.bfloat16, merge_lora=False)
        else:
            other = load_preset_pipeline(None, device=device, dtype=torch.bfloat16, quantize=mode)
        got = answers(other)
        identical = sum(a == b for a, b in zip(got, reference))
        first = sum(a[:1] == b[:1] for a, b in zip(got, reference))
        prefix = []
        for a, b in zip(got, reference):
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            prefix.append(same / max(1, len(b)))
        out["rows"].append({"mode": mode, "identical": identical / len(cases), "first_token": first / len(cases),
                            "common_prefix": sum(prefix) / len(prefix)})
        del other
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_row(row: dict) -> None:
    extra = row.get("lazy")
    what = row["setting"] + ("" if extra is None else f", lazy {'on' if extra else 'off'}")
    if row.get("offload"):
        what += ", offload"
    if "note" in row:
        print(f"{row['model']:5s} {row['part']:9s} {what:44s} {row['note']}", flush=True)
        return
    print(f"{row['model']:5s} {row['part']:9s} {what:44s} {row['weights_mib']:10.1f} {row['peak_mib']:10.1f} "
          f"{fmt(row.get('anon_mib'), '10.1f')} {row['load_s']:7.1f} {fmt(row.get('decode_tok_s'), '8.2f')}",
          flush=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,7b")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens of the LLaMA cases")
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens of the small LLaMA cases")
    parser.add_argument("--new-tokens-7b", type=int, default=4, help="new tokens of the 7B cases")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="agreement questions")
    parser.add_argument("--answer-tokens", type=int, default=32, help="greedy tokens per agreement answer")
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small model, few tokens, 3 questions")
    parser.add_argument("--workdir", help="where the temporary checkpoints go (default: a temp folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = ["small"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        args.prompt, args.new_tokens, args.questions, args.answer_tokens = 8, 3, 3, 6
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({where}); peak = "
          + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else "growth of the resident set (RSS)"))
    computed = computed_bytes()
    print_computed(computed)
    results = {"device": str(device), "computed": computed, "rows": []}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print("\n== Measured: load + one request ==")
    print(f"{'model':5s} {'part':9s} {'setting':44s} {'weights':>10s} {'peak':>10s} {'anon':>10s} {'load s':>7s} "
          f"{'tok/s':>8s}")
    print(f"{'':5s} {'':9s} {'':44s} {'MiB':>10s} {'MiB':>10s} {'MiB':>10s}")
    try:
        for name in models:
            files = None
            if name == "small":
                files = small_files(workdir)
                ib_path, ib_config = files.imagebind, files.imagebind_config
            else:
                from imagebind_llm.config import imagebind_huge

                ib_config = imagebind_huge(with_point=True)
                ib_path = workdir / "imagebind_huge_random.pth"
                if not ib_path.is_file():
                    note = fits(torch.device("cpu"), int(4.8e9))
                    if note is None:
                        print(f"(writing a random ImageBind-huge checkpoint to {ib_path} ...)", flush=True)
                        random_imagebind_file(ib_config, ib_path)
                    else:
                        ib_path = None
                        print(f"7b    ImageBind  {note}")
            if name == "small":  # one-time costs (kernel set-up, first allocations) out of the figures
                for setting, quantize in LLAMA_SETTINGS:
                    llama_case(name, setting, quantize, device, args, files, computed)
                for dtype_name in ("float32", "bfloat16"):
                    imagebind_case(name, ib_path, ib_config, dtype_name, False, False, device)
            for setting, quantize in LLAMA_SETTINGS:
                row = llama_case(name, setting, quantize, device, args, files, computed)
                results["rows"].append(row)
                print_row(row)
            if ib_path is not None:
                for dtype_name in ("float32", "bfloat16"):
                    for lazy in (False, True):
                        for offload in ((False, True) if device.type == "cuda" else (False,)):
                            row = imagebind_case(name, ib_path, ib_config, dtype_name, lazy, offload, device)
                            results["rows"].append(row)
                            print_row(row)
                for quantize in ("int8", "int4") if not args.quick else ("int8",):
                    row = recipe_case(name, files, ib_path, ib_config, device, args, quantize, computed)
                    results["rows"].append(row)
                    print_row(row)
        if device.type != "cuda":
            print("(offload moves encoders between CPU memory and a GPU: not measured without a GPU)")
        if not args.no_agreement:
            result = agreement(device, args.questions, args.answer_tokens)
            results["agreement"] = result
            print(f"\n== Answer agreement with bfloat16, model {result['model']} ({result['questions']} questions with "
                  f"media from examples/, greedy, {result['new_tokens']} tokens) ==")
            print(f"{'variant':10s} {'identical answers':>18s} {'identical first token':>22s} {'common prefix':>14s}")
            for row in result["rows"]:
                if "note" in row:
                    print(f"{row['mode']:10s} {row['note']}")
                else:
                    print(f"{row['mode']:10s} {row['identical']:18.0%} {row['first_token']:22.0%} "
                          f"{row['common_prefix']:14.0%}")
            if result["model"] == "tiny-untrained":
                print("(the untrained model's answers are noise: its agreement only shows how often quantisation "
                      "flips a near-tie)")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
