"""The static-cache decoder (imagebind_llm/fast_decode.py) against the plain eager loop
(generation.generate_tokens) on the golden tiny model: the same greedy tokens for one prompt
and for a left-padded batch, with and without a visual feature; seeded sampling; EOS;
cancellation; the compiled step's arithmetic; the pipeline option; and a smoke run of
bench/speed.py."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from imagebind_llm.errors import InputError
from imagebind_llm.fast_decode import (DECODERS, StaticDecoder, check_decoder, choose_decoder, decode_tokens,
                                       default_decoder, get_decoder, resolve_decoder)
from imagebind_llm.generation import GenerationConfig, generate, generate_tokens
from imagebind_llm.tokenizer import Tokenizer
from imagebind_llm.weights import build_language_model

ROOT = Path(__file__).resolve().parent.parent
GREEDY = GenerationConfig(max_new_tokens=20, temperature=0.0)


@pytest.fixture(scope="module")
def adapter_dir(golden):
    return golden / "llama_adapter"


@pytest.fixture(scope="module")
def model(adapter_dir):
    return golden_model(adapter_dir)


def golden_model(adapter_dir):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tokenizer = Tokenizer(adapter_dir / config["tokenizer"])
    return build_language_model(adapter_dir / config["llama_type_dir"], adapter_dir / "adapter.pth",
                                tokenizer_words=tokenizer.n_words)


@pytest.fixture(scope="module")
def cases(adapter_dir):
    """The official generate cases: (prompt ids, visual query) of one and of two prompts."""
    expected = torch.load(adapter_dir / "generate.pt", weights_only=True)
    return expected


def ragged(model) -> list[list[int]]:
    vocab = model.config.llama.vocab_size
    generator = torch.Generator().manual_seed(3)
    return [[1] + torch.randint(3, vocab, (n - 1,), generator=generator).tolist() for n in (5, 23, 2, 14)]


def queries(model, batch: int):
    generator = torch.Generator().manual_seed(5)
    feature = torch.nn.functional.normalize(torch.randn(batch, model.config.adapter.imagebind_dim,
                                                        generator=generator), dim=-1)
    with torch.inference_mode():
        return model.visual_query(feature)


def streamed(steps) -> list[list[int]]:
    rows: list[list[int]] = []
    for step in steps:
        if not rows:
            rows = [[] for _ in step]
        for row, token in enumerate(step):
            if token is not None:
                rows[row].append(token)
    return rows


def test_greedy_tokens_equal_the_eager_loop_on_the_official_cases(model, cases):
    decoder = StaticDecoder(model)
    config = GenerationConfig(max_new_tokens=cases["max_gen_len"], temperature=0.0)
    for case in cases["cases"]:
        ids, query = case["prompt_token_ids"], case["visual_query"]
        eager = generate(model, ids, config, visual_query=query)
        assert eager == case["generated_token_ids"], case["name"]  # the official tokens, EOS included
        assert decoder.generate(ids, config, visual_query=query) == eager, case["name"]
        assert streamed(decoder.generate_tokens(ids, config, visual_query=query)) == eager, case["name"]


@pytest.mark.parametrize("visual", [False, True])
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_tokens_equal_the_eager_loop(model, visual, batch):
    prompts = ragged(model)[:batch] if batch > 1 else [ragged(model)[1]]
    query = queries(model, len(prompts)) if visual else None
    expected = list(generate_tokens(model, prompts, GREEDY, visual_query=query, eos_id=None))
    decoder = StaticDecoder(model)
    assert list(decoder.generate_tokens(prompts, GREEDY, visual_query=query, eos_id=None)) == expected
    assert decoder.generate(prompts, GREEDY, visual_query=query, eos_id=None) == streamed(expected)
    # the buffers are reused by the next request of the same shape (and a smaller one fits)
    assert decoder.generate(prompts, GREEDY, visual_query=query, eos_id=None) == streamed(expected)


def test_compiled_step_arithmetic_gives_the_eager_tokens(model):
    """The step that torch.compile compiles (whole-length cache, mask, index_copy_), run eagerly."""
    decoder = StaticDecoder(model, compile=True)
    decoder._compiled = decoder._step_full  # the arithmetic without the compiler (tested: test below)
    for prompts, query in ((ragged(model), queries(model, 4)), ([ragged(model)[0]], None)):
        expected = generate(model, prompts, GREEDY, visual_query=query, eos_id=None)
        assert decoder.generate(prompts, GREEDY, visual_query=query, eos_id=None) == expected
        assert streamed(decoder.generate_tokens(prompts, GREEDY, visual_query=query, eos_id=None)) == expected
    assert decoder._state.length == model.config.llama.max_seq_len  # one shape per batch size
    assert decoder.compile_failed is None


def test_a_failing_compile_falls_back_with_a_warning(model, caplog):
    decoder = StaticDecoder(model, compile=True)

    def broken(state):
        raise RuntimeError("no compiler here")

    decoder._compiled = broken
    prompts = ragged(model)[:2]
    with caplog.at_level(logging.WARNING, logger="imagebind_llm.fast_decode"):
        out = decoder.generate(prompts, GREEDY, eos_id=None)
    assert out == generate(model, prompts, GREEDY, eos_id=None)
    assert "no compiler here" in decoder.compile_failed
    assert any("decoding without it" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.environ.get("IMAGEBIND_LLM_TEST_COMPILE") != "1",
                    reason="torch.compile of the step takes 20 s to minutes on a small CPU; "
                           "IMAGEBIND_LLM_TEST_COMPILE=1 runs it")
def test_torch_compile_gives_the_eager_tokens(model):
    decoder = StaticDecoder(model, compile=True)
    prompts, query = [ragged(model)[1]], queries(model, 1)
    expected = generate(model, prompts, GREEDY, visual_query=query, eos_id=None)
    assert decoder.generate(prompts, GREEDY, visual_query=query, eos_id=None) == expected
    assert decoder.compile_failed is None and decoder.compile_seconds > 0


@pytest.mark.skipif(os.environ.get("IMAGEBIND_LLM_TEST_COMPILE") != "1",
                    reason="torch.compile of the step takes 20 s to minutes on a small CPU; "
                           "IMAGEBIND_LLM_TEST_COMPILE=1 runs it")
def test_torch_compile_of_a_model_with_its_lora_merged(adapter_dir):
    merged = golden_model(adapter_dir)  # a model of its own: merging is in place
    merged.llama.merge_lora_()
    prompts, query = [ragged(merged)[1]], queries(merged, 1)
    expected = generate(merged, prompts, GREEDY, visual_query=query, eos_id=None)
    decoder = StaticDecoder(merged, compile=True)
    assert decoder.generate(prompts, GREEDY, visual_query=query, eos_id=None) == expected
    assert decoder.compile_failed is None


def test_seeded_sampling_is_the_eager_loops(model):
    prompts, query = ragged(model)[:3], queries(model, 3)
    decoder = StaticDecoder(model)
    config = GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=40, seed=7)
    expected = generate(model, prompts, config, visual_query=query, eos_id=None)
    assert decoder.generate(prompts, config, visual_query=query, eos_id=None) == expected
    assert decoder.generate(prompts, config, visual_query=query, eos_id=None) == expected  # deterministic
    other = GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=40, seed=8)
    assert decoder.generate(prompts, other, visual_query=query, eos_id=None) != expected
    # top_k = 1 keeps only the best token: greedy, whatever the temperature and seed
    top1 = GenerationConfig(max_new_tokens=16, temperature=1.5, top_p=1.0, top_k=1, seed=1)
    greedy = GenerationConfig(max_new_tokens=16, temperature=0.0)
    assert decoder.generate(prompts, top1, visual_query=query, eos_id=None) == \
        generate(model, prompts, greedy, visual_query=query, eos_id=None)


def test_eos_and_limits_like_the_eager_loop(model):
    prompts = ragged(model)
    free = generate(model, prompts, GREEDY, eos_id=None)
    eos = free[1][5]  # a token that row 1 produces at step 6: it stops there (and maybe others earlier)
    decoder = StaticDecoder(model)
    expected = list(generate_tokens(model, prompts, GREEDY, eos_id=eos))
    assert list(decoder.generate_tokens(prompts, GREEDY, eos_id=eos)) == expected
    assert decoder.generate(prompts, GREEDY, eos_id=eos, check_every=3) == \
        generate(model, prompts, GREEDY, eos_id=eos)
    assert len(decoder.generate(prompts, GREEDY, eos_id=eos)[1]) == free[1].index(eos)
    # a prompt near the end of the context gets fewer tokens (min(max_new_tokens, context - length))
    max_len = model.config.llama.max_seq_len
    long = [[1] + [5] * (max_len - 4), [1, 5]]
    assert [len(r) for r in decoder.generate(long, GREEDY, eos_id=None)] == [3, 20]
    assert streamed(decoder.generate_tokens(long, GREEDY, eos_id=None)) == \
        generate(model, long, GREEDY, eos_id=None)


def test_cancellation_stops_like_the_eager_loop(model):
    prompts = ragged(model)[:2]
    decoder = StaticDecoder(model)
    event = threading.Event()
    got = []
    for step in decoder.generate_tokens(prompts, GREEDY, eos_id=None, cancel=event):
        got.append(step)
        if len(got) == 3:
            event.set()
    assert len(got) == 3
    calls = iter(range(100))
    assert len(decoder.generate(prompts, GREEDY, eos_id=None, cancel=lambda: next(calls) >= 5)[0]) == 5
    event = threading.Event()
    event.set()
    assert list(decoder.generate_tokens(prompts, GREEDY, cancel=event)) == []


def test_bad_prompts_are_refused_like_the_eager_loop(model):
    decoder = StaticDecoder(model)
    for prompts in ([], [[]], [[1] * model.config.llama.max_seq_len]):
        with pytest.raises(InputError):
            list(decoder.generate_tokens(prompts, GREEDY))
        with pytest.raises(InputError):
            decoder.generate(prompts, GREEDY)


def test_a_busy_decoder_hands_the_request_to_the_eager_loop(model):
    decoder = StaticDecoder(model)
    prompts = [ragged(model)[1]]
    expected = generate(model, prompts, GREEDY, eos_id=None)
    first = decoder.generate_tokens(prompts, GREEDY, eos_id=None)
    next(first)  # holds the decoder
    assert decoder.generate(prompts, GREEDY, eos_id=None) == expected
    assert streamed(decoder.generate_tokens(prompts, GREEDY, eos_id=None)) == expected
    first.close()
    assert not decoder._lock.locked()


def test_decoder_names_and_the_automatic_choice(model, monkeypatch):
    assert check_decoder(None) is None and check_decoder(" Static ") == "static"
    with pytest.raises(ValueError, match="eager, static, compiled, auto"):
        check_decoder("fast")
    assert set(DECODERS) == {"eager", "static", "compiled", "auto"}
    assert get_decoder(model, "static") is get_decoder(model, "static")
    monkeypatch.delenv("IMAGEBIND_LLM_DECODER", raising=False)
    assert resolve_decoder(model, None) == "static" == default_decoder("cpu")  # measured faster, same tokens
    assert default_decoder("cuda") == "eager"
    monkeypatch.setenv("IMAGEBIND_LLM_DECODER", "eager")
    assert resolve_decoder(model, None) == "eager"
    monkeypatch.delenv("IMAGEBIND_LLM_CPU_COMPILE", raising=False)
    choice = choose_decoder(model, steps=4, prompt_len=6, refresh=True)
    assert choice in ("eager", "static")  # never compiled on a CPU unless asked
    assert choose_decoder(model) == choice  # cached per model
    assert resolve_decoder(model, "auto") == choice
    prompts = ragged(model)[:2]
    assert streamed(decode_tokens(model, prompts, GREEDY, decoder="static", eos_id=None)) == \
        generate(model, prompts, GREEDY, eos_id=None)


def test_pipeline_decoder_option(golden, monkeypatch):
    from test_imagebind_golden import golden_config

    from imagebind_llm.pipeline import Media, Pipeline, Settings

    monkeypatch.delenv("IMAGEBIND_LLM_DECODER", raising=False)
    config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    paths = dict(imagebind=golden / "imagebind" / "weights.pth", imagebind_config=golden_config(golden),
                 llama=golden / "llama_adapter" / config["llama_type_dir"],
                 adapter=golden / "llama_adapter" / "adapter.pth",
                 tokenizer=golden / "llama_adapter" / config["tokenizer"])
    with pytest.raises(ValueError, match="decoder must be one of"):
        Pipeline.from_paths(**paths, decoder="turbo")
    pipeline = Pipeline.from_paths(**paths)
    assert pipeline.decoder is None and pipeline.decoder_kind() == "static"  # the default on a CPU
    image = next(p for p in sorted((golden / "preprocess" / "files").iterdir()) if p.suffix == ".jpg")
    settings = Settings(generation=GenerationConfig(max_new_tokens=16, temperature=0.0))
    assert pipeline.set_decoder("eager") is pipeline and pipeline.decoder_kind() == "eager"
    eager = list(pipeline.stream([Media("image", str(image))], "What is here?", settings))
    pipeline.set_decoder("static")
    assert list(pipeline.stream([Media("image", str(image))], "What is here?", settings)) == eager
    monkeypatch.setenv("IMAGEBIND_LLM_DECODER", "eager")
    assert pipeline.set_decoder(None).decoder_kind() == "eager"
    monkeypatch.setenv("IMAGEBIND_LLM_DECODER", "warp")
    with pytest.raises(ValueError):
        pipeline.set_decoder(None)


def test_cli_has_the_decoder_flag():
    from imagebind_llm.cli import build_parser

    args = build_parser().parse_args(["chat", "--decoder", "static", "hello"])
    assert args.decoder == "static"
    assert build_parser().parse_args(["chat", "hello"]).decoder is None


def test_bench_speed_quick_prints_its_tables(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "bench" / "speed.py"), "--quick", "--threads", "1",
               "--batches", "1", "--new-tokens", "3", "--encode-kinds", "text", "--json", str(out),
               "--media", str(tmp_path / "media"), "--official", str(tmp_path)]
    run = subprocess.run(command,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout
    assert "decode tok/s" in printed and "x eager" in printed and "TTFT ms" in printed, printed
    for decoder in ("eager", "static"):
        assert re.search(rf"^small\s+1\s+{decoder}\s+[0-9.]+\s", printed, re.MULTILINE), printed
    assert "memory bandwidth" in printed
    assert "official generate skipped: the official code hard-codes CUDA" in printed
    assert (tmp_path / "media" / "photo.jpg").is_file()  # --media keeps the inputs
    saved = json.loads(out.read_text())
    rows = saved["models"][0]["decode"]
    assert {r["decoder"] for r in rows} == {"eager", "static", "static, LoRA apart", "static, bfloat16"}
    float32 = [r for r in rows if r["decoder"] != "static, bfloat16"]
    assert all(r["decode_tok_s"] > 0 and r["same_tokens"] for r in float32)  # merged or not, the same tokens
    bf16 = next(r for r in rows if r["decoder"] == "static, bfloat16")  # half the bytes read per step
    assert bf16["decode_tok_s"] > 0 and bf16["same_tokens"] in (True, False)
    assert bf16["bandwidth_pct"] == pytest.approx(float32[0]["bandwidth_pct"] / 2 * bf16["steps_per_s"]
                                                  / float32[0]["steps_per_s"], rel=0.01)
    auto = saved["models"][0]["dtype_auto"]
    assert auto["chosen"] in ("float32", "bfloat16") and set(auto["probe_s_per_token"]) == {"float32", "bfloat16"}
    assert f"--dtype auto chooses {auto['chosen']} for a float32 model of these widths" in printed
    assert saved["models"][0]["lora_merged"] > 0
    assert re.search(r"^small batch 1: static decoder, LoRA merged / apart = [0-9.]+x", printed, re.MULTILINE)
    again = [c for c in saved["models"][0]["ttft"] if c["decoder"] == "static, same image again"]
    assert len(again) == 1 and again[0]["same_as_alone"] and again[0]["ttft_ms"] > 0
    chat = saved["models"][0]["chat_ttft"]  # a chat's next turn, prefix cache off and on
    assert chat["same_tokens"] and chat["off_ms"] > 0 and chat["on_ms"] > 0
    assert chat["reused"] == chat["prompt"] - 30 - 1  # all but the question and the answer's last token
    assert re.search(r"^small\s+static\s+\d+\s+\d+\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+yes", printed, re.MULTILINE)


def test_modules_with_hooks_are_called(model):
    calls = []
    handle = model.llama.layers[0].feed_forward.w2.register_forward_hook(lambda *args: calls.append(1))
    try:
        prompts = ragged(model)[:2]
        expected = generate(model, prompts, GREEDY, eos_id=None)
        assert StaticDecoder(model).generate(prompts, GREEDY, eos_id=None) == expected
    finally:
        handle.remove()
    assert len(calls) == 2 * GREEDY.max_new_tokens  # the eager loop's calls and the decoder's


def test_bfloat16_steps_are_the_eager_loops_bits(adapter_dir):
    # On a CPU, attention over bfloat16 runs in float32 (imagebind_llm/attention.py); the static
    # step must use the same rule as the eager loop, or its logits drift from the eager ones.
    model = golden_model(adapter_dir).to(torch.bfloat16)
    logits = []
    model.llama.output.register_forward_hook(
        lambda module, args, out: logits.append((out if out.dim() == 2 else out[:, -1]).clone()))
    prompts, query = ragged(model)[:2], queries(model, 2)
    config = GenerationConfig(max_new_tokens=6, temperature=0.0)
    generate(model, prompts, config, visual_query=query, eos_id=None)
    eager, logits[:] = logits[:], []
    StaticDecoder(model).generate(prompts, config, visual_query=query, eos_id=None)
    assert len(logits) == len(eager) == config.max_new_tokens
    assert all(torch.equal(a, b) for a, b in zip(eager, logits))
