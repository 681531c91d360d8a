"""Weight-only int8/int4 quantisation of the LLaMA (imagebind_llm/quantize.py) on the golden tiny
model: logits close to float, greedy tokens mostly equal, a quarter of the bytes, loading one
weight at a time, and the --quantize flag end to end."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from test_cli import files, model_args  # noqa: F401  (fixtures)
from torch import nn

from imagebind_llm.cli import main
from imagebind_llm.generation import GenerationConfig, generate
from imagebind_llm.quantize import (
    Int4Linear,
    Int8Linear,
    check_quantize,
    dequantize_int4,
    dequantize_int8,
    int4_group_size,
    int4_unsupported_reason,
    projection_bytes,
    quantize_int4,
    quantize_int8,
    quantize_llama_,
    quantized_mode,
    tensor_bytes,
)
from imagebind_llm.tokenizer import Tokenizer
from imagebind_llm.weights import build_language_model, project_to_adapter, read_adapter


@pytest.fixture(scope="module")
def adapter_dir(golden):
    return golden / "llama_adapter"


@pytest.fixture(scope="module")
def base(adapter_dir):
    return adapter_dir / json.loads((adapter_dir / "adapter_config.json").read_text())["llama_type_dir"]


@pytest.fixture(scope="module")
def float_model(base, adapter_dir):
    return build_language_model(base, adapter_dir / "adapter.pth")


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request, base, adapter_dir):
    return request.param, build_language_model(base, adapter_dir / "adapter.pth", quantize=request.param)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ---------------------------------------------------------------------------------------------
# Single layers
# ---------------------------------------------------------------------------------------------


def test_int8_round_trip_and_layer_paths():
    torch.manual_seed(0)
    linear = nn.Linear(192, 100, bias=True)
    nn.init.normal_(linear.bias)
    q, scale = quantize_int8(linear.weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (100,)
    step = scale[:, None] / 2  # rounding error is at most half a step per weight
    assert ((dequantize_int8(q, scale) - linear.weight).abs() <= step + 1e-7).all()
    layer = Int8Linear.from_weight(linear.weight, linear.bias)
    assert layer.bias is linear.bias  # the adapter's bias is kept, not copied
    reference = nn.functional.linear
    with torch.no_grad():
        for rows in (1, 7):  # 1 row: the fused int8 kernel; several float32 rows: dequantised matmul
            x = torch.randn(2, rows, 192)
            expected = reference(x, layer.dequantized_weight(), linear.bias)
            assert torch.allclose(layer(x), expected, rtol=1e-4, atol=1e-4)
            assert relative_error(layer(x), linear(x)) < 0.01
        x = torch.randn(3, 192, dtype=torch.bfloat16)  # bfloat16: the fused kernel at any row count
        expected = linear(x.float())
        assert relative_error(layer.to(torch.bfloat16)(x).float(), expected) < 0.02


def test_zero_rows_and_an_all_zero_weight_quantise():
    weight = torch.zeros(4, 32)
    weight[1] = 1.0
    q, scale = quantize_int8(weight)
    assert torch.equal(dequantize_int8(q, scale), weight)
    q4, sz = quantize_int4(weight, 32)
    assert torch.allclose(dequantize_int4(q4, sz, 32), weight, atol=1e-6)


def test_int4_layer_on_cpu_pads_odd_widths():
    assert int4_unsupported_reason("cpu") is None
    torch.manual_seed(0)
    linear = nn.Linear(192, 1000, bias=False)  # 1000 outputs: not a multiple of 16, padded inside
    layer = Int4Linear.from_weight(linear.weight, group_size=128)
    assert layer.group_size == 64 == int4_group_size(192, 128)  # the largest kernel size dividing 192
    q, sz = quantize_int4(linear.weight, 64)
    with torch.no_grad():
        x = torch.randn(5, 192)
        got = layer(x)
        assert got.shape == (5, 1000) and got.dtype == torch.float32
        expected = x.bfloat16().float() @ dequantize_int4(q, sz, 64).t()
        assert relative_error(got, expected) < 0.01  # the kernel computes the dequantised weight in bf16
        assert relative_error(got, linear(x)) < 0.1  # 4 bits: a few per cent


def test_int4_refusals_say_why():
    assert "CUDA" in int4_unsupported_reason("meta") and "int8" in int4_unsupported_reason("meta")
    assert int4_group_size(48) is None
    with pytest.raises(ValueError, match="divisible by 32"):
        Int4Linear.from_weight(torch.randn(16, 48))
    layer = Int4Linear.from_weight(torch.randn(16, 64))
    layer.packed_for = "cuda"  # as if packed on a GPU and moved
    with pytest.raises(RuntimeError, match="packed for cuda"):
        layer(torch.randn(1, 64))
    with pytest.raises(ValueError, match="int8"):
        check_quantize("int3")


# ---------------------------------------------------------------------------------------------
# The golden tiny model
# ---------------------------------------------------------------------------------------------


def test_only_frozen_projections_are_quantised(quantized, float_model, adapter_dir):
    mode, model = quantized
    assert quantized_mode(model) == mode
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    for name in ("llama.layers.0.attention.wq", "llama.layers.1.feed_forward.w2", "llama.output"):
        assert kinds[name] == ("Int4Linear" if mode == "int4" else "Int8Linear"), name
    assert kinds["llama.layers.0.attention.lora.wq.down"] == "Linear"  # LoRA stays
    assert kinds["bind_network.proj"] == "Linear"
    assert kinds["llama.tok_embeddings"] == "Embedding"
    # The trained adapter tensors are untouched: the adapter saves back exactly.
    original = read_adapter(adapter_dir / "adapter.pth")
    back = project_to_adapter(model)
    assert set(back) == set(original)
    assert all(torch.equal(back[k], v) for k, v in original.items())


def test_logits_close_to_float(quantized, float_model):
    mode, model = quantized
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.config.llama.vocab_size, (2, 16), generator=generator)
    feature = nn.functional.normalize(torch.randn(2, model.config.adapter.imagebind_dim, generator=generator), dim=-1)
    with torch.no_grad():
        expected, got = float_model(tokens, feature), model(tokens, feature)
    bound = 0.02 if mode == "int8" else 0.15  # measured: 0.005 (int8), 0.07 (int4)
    assert relative_error(got, expected) < bound
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agree >= (0.95 if mode == "int8" else 0.8)


def test_greedy_tokens_mostly_equal(quantized, adapter_dir):
    """On the golden generation cases (24 greedy tokens each), int8 keeps the official tokens
    (measured: all of them); int4 at least starts the same way."""
    mode, model = quantized
    expected = torch.load(adapter_dir / "generate.pt", weights_only=True)
    tokenizer = Tokenizer(adapter_dir / "llama" / "tokenizer.model")
    config = GenerationConfig(max_new_tokens=expected["max_gen_len"], temperature=0.0)
    prefix, total, first, count = 0, 0, 0, 0
    for case in expected["cases"]:
        out = generate(model, case["prompt_token_ids"], config, visual_query=case["visual_query"],
                       eos_id=tokenizer.eos_id)
        for got, want in zip(out, case["generated_token_ids"]):
            same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            prefix, total = prefix + same, total + len(want)
            first, count = first + (got[:1] == want[:1]), count + 1
    if mode == "int8":
        assert first == count and prefix / total >= 0.8
    else:
        assert first / count >= 0.6


def test_int8_bfloat16_activations(base, adapter_dir, float_model):
    model = build_language_model(base, adapter_dir / "adapter.pth", quantize="int8", dtype=torch.bfloat16)
    tokens = torch.randint(3, model.config.llama.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(model(tokens), float_model(tokens)) < 0.03


def test_int8_linear_weights_take_a_quarter_of_float32(quantized, float_model):
    mode, model = quantized
    before, after = projection_bytes(float_model), projection_bytes(model)
    if mode == "int8":
        # one byte per weight plus a float32 scale per output row (width 64 here: +6 %)
        width = float_model.config.llama.dim
        assert after / before == pytest.approx(0.25 * (1 + 4 / width), rel=0.05)
    else:
        assert after / before < 0.2  # half a byte per weight plus per-group scales and zeros
    assert tensor_bytes(float_model) - tensor_bytes(model) == pytest.approx(before - after, rel=1e-6)


def test_quantising_holds_one_full_precision_weight_at_a_time(float_model):
    """Built on the meta device and filled tensor by tensor: every full-precision weight is
    gone before the next one is made."""
    with torch.device("meta"):
        model = type(float_model)(float_model.config)
    alive: list[weakref.ref] = []
    worst = 0

    def weights(name: str, linear: nn.Linear) -> torch.Tensor:
        nonlocal worst
        gc.collect()
        worst = max(worst, sum(ref() is not None for ref in alive))
        tensor = torch.randn(linear.out_features, linear.in_features)
        alive.append(weakref.ref(tensor))
        return tensor

    report = quantize_llama_(model, "int8", weights=weights)
    assert worst == 0 and len(alive) == len(report.quantized) == 7 * model.config.llama.n_layers + 1
    assert report.bytes_after < report.bytes_before / 3.5
    assert all(not t.is_meta for m in model.modules() if isinstance(m, Int8Linear) for t in m.buffers())


def test_wrong_mode_or_device_fails_before_reading(base, adapter_dir):
    with pytest.raises(ValueError, match="int8"):
        build_language_model(base, adapter_dir / "adapter.pth", quantize="fp8")
    with pytest.raises(RuntimeError, match="int4 runs on a CPU or a CUDA GPU"):
        build_language_model(base, adapter_dir / "adapter.pth", quantize="int4", device="meta")


# ---------------------------------------------------------------------------------------------
# Command line and presets
# ---------------------------------------------------------------------------------------------


def test_cli_quantize_end_to_end(model_args, files, capsys):  # noqa: F811
    question = ["--image", files["image"], "--temperature", "0", "--max-new-tokens", "8", "What is happening here?"]
    assert main(["chat", *model_args, *question]) == 0
    plain = capsys.readouterr().out
    assert main(["chat", *model_args, "--quantize", "int8", *question]) == 0
    assert capsys.readouterr().out == plain  # int8 keeps the greedy answer of the golden model
    assert main(["chat", *model_args, "--quantize", "int4", "--imagebind-dtype", "bfloat16", "--lazy-encoders",
                 "--offload-encoders", *question]) == 0
    assert capsys.readouterr().out.strip()


def test_untrained_preset_with_every_memory_option(files):  # noqa: F811
    from imagebind_llm.pipeline import Media, Settings
    from imagebind_llm.presets import load_preset_pipeline

    pipeline = load_preset_pipeline("tiny-untrained", quantize="int8", imagebind_dtype=torch.bfloat16,
                                    offload_encoders=True, lazy=True)
    assert quantized_mode(pipeline.model) == "int8"
    assert pipeline.imagebind.dtype == torch.bfloat16
    assert pipeline.imagebind.residency is None  # offload on a CPU: nothing to do
    settings = Settings(generation=GenerationConfig(max_new_tokens=4, temperature=0.0))
    assert isinstance(pipeline.answer([Media("image", files["image"])], "Hi?", settings), str)
