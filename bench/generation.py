"""Benchmark of generation: prompt processing, decoding, time to first token, peak memory, and
the KV cache against a loop that recomputes the whole sequence at every step.

    python bench/generation.py                    # small preset and a 7B-shaped model, batch 1 and 4
    python bench/generation.py --models small --new-tokens 64
    python bench/generation.py --quick            # seconds: a smoke run

Models: ``small`` = the language model of the default preset (the trained toy-world model
when installed, else the untrained one); ``7b`` = LLaMA-7B's shape (4096 wide, 32 layers,
vocabulary 32000) with ImageBind-LLM's adapter and random weights, in bfloat16 (13.5 GB; on a
CPU only a few tokens are decoded). For every (model, batch): a ``--prompt``-token prompt with
an injected visual feature, then ``--new-tokens`` greedy steps. Figures:

* prefill tokens/s: prompt tokens x batch / the time of the first forward pass;
* decode tokens/s: new tokens x batch / the time of the single-token steps;
* time to first token: bind network + injections + prefill + sampling of the first token;
* peak memory: see bench/common.py (CPU: growth of the resident set during the case);
* cache speed-up: decode tokens/s with the KV cache / without (the no-cache loop feeds the whole
  sequence at every step, like nanoGPT's ``generate``), measured on the same steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakMemory, random_7b_model  # noqa: E402


def build(name: str, device, dtype):
    if name == "small":
        from imagebind_llm.presets import load_preset_pipeline

        model = load_preset_pipeline(None, device=device, dtype=dtype).model
        return model.eval()
    return random_7b_model(device, dtype)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(model, batch: int, prompt_len: int, new_tokens: int, device, use_cache: bool) -> dict:
    import torch

    from imagebind_llm.llama import KVCache

    config = model.config
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, config.llama.vocab_size, (batch, prompt_len), generator=generator).to(device)
    feature = torch.nn.functional.normalize(torch.randn(batch, config.adapter.imagebind_dim, generator=generator), dim=-1)
    times = []
    with torch.inference_mode(), PeakMemory(device) as memory:
        sync(device)
        start = time.perf_counter()
        injections = model.injections(model.visual_query(feature.to(device)))
        cache = KVCache(config.llama, batch, prompt_len + new_tokens, model.dtype, device) if use_cache else None
        logits = model.llama(prompt, cache=cache, injections=injections, last_only=True)
        token = logits.argmax(-1)
        sync(device)
        first = time.perf_counter() - start
        sequence = torch.cat([prompt, token[:, None]], dim=1)
        for step in range(new_tokens - 1):
            t = time.perf_counter()
            if use_cache:
                logits = model.llama(token[:, None], start=prompt_len + step, cache=cache, injections=injections,
                                     last_only=True)
            else:
                logits = model.llama(sequence, injections=injections, last_only=True)
            token = logits.argmax(-1)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            sync(device)
            times.append(time.perf_counter() - t)
    decode = sum(times)
    return {"ttft_s": first, "prefill_tok_s": batch * prompt_len / first,
            "decode_tok_s": batch * len(times) / decode if decode else float("nan"),
            "peak_mib": (memory.peak_bytes or 0) / 2**20}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,7b")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--new-tokens-7b", type=int, default=4, help="new tokens for the 7B model on a CPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: float32 for small, bfloat16 for 7b")
    parser.add_argument("--quick", action="store_true", help="small model, batch 1, few tokens")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = ["small"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    results = []
    print(f"device {device} ({torch.get_num_threads()} threads), prompt {args.prompt} tokens")
    header = (f"{'model':6s} {'dtype':9s} {'batch':>5s} {'prefill tok/s':>13s} {'decode tok/s':>12s} "
              f"{'no-cache tok/s':>14s} {'cache x':>7s} {'TTFT ms':>8s} {'peak MiB':>9s}")
    print(header)
    for name in models:
        dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if name == "7b" else torch.float32)
        started = time.perf_counter()
        model = build(name, device, dtype)
        build_s = time.perf_counter() - started
        new_tokens = 4 if args.quick else (args.new_tokens_7b if name == "7b" and device.type == "cpu"
                                           else args.new_tokens)
        prompt = min(args.prompt, model.config.llama.max_seq_len - new_tokens - 1)
        for batch in batches:
            run_case(model, batch, min(prompt, 8), 2, device, True)  # warm-up
            cached = run_case(model, batch, prompt, new_tokens, device, True)
            plain = run_case(model, batch, prompt, new_tokens, device, False)
            row = {"model": name, "dtype": str(dtype).replace("torch.", ""), "batch": batch, "prompt": prompt,
                   "new_tokens": new_tokens, "build_s": build_s, **cached, "no_cache_decode_tok_s": plain["decode_tok_s"],
                   "cache_speedup": cached["decode_tok_s"] / plain["decode_tok_s"]}
            results.append(row)
            print(f"{name:6s} {row['dtype']:9s} {batch:5d} {row['prefill_tok_s']:13.1f} {row['decode_tok_s']:12.2f} "
                  f"{row['no_cache_decode_tok_s']:14.2f} {row['cache_speedup']:7.1f} {1000 * row['ttft_s']:8.1f} "
                  f"{row['peak_mib']:9.0f}", flush=True)
        del model
    summary = {"device": str(device), "threads": torch.get_num_threads(), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
