"""--dtype auto (imagebind_llm/precision.py): the probe model, the rule, the conversion and the flag."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import golden_media_files, golden_pipeline
from imagebind_llm import precision
from imagebind_llm.embedding import Media
from imagebind_llm.generation import GenerationConfig
from imagebind_llm.pipeline import Settings
from imagebind_llm.presets import build_untrained_pipeline


def test_the_probe_model_has_the_widths_of_the_model_and_few_layers():
    config = build_untrained_pipeline().model.config
    for dtype in (torch.float32, torch.bfloat16):
        probe = precision.probe_model(config, dtype, layers=1)
        llama = probe.config.llama
        assert (llama.dim, llama.hidden_dim, llama.n_heads, llama.vocab_size) == \
            (config.llama.dim, config.llama.hidden_dim, config.llama.n_heads, config.llama.vocab_size)
        assert llama.n_layers == 1 and probe.config.adapter.query_layer == 1 and probe.dtype == dtype
        assert probe.config.adapter.bind_blocks == config.adapter.bind_blocks
        assert all(torch.isfinite(p).all() and p.abs().max() > 0 for n, p in probe.named_parameters()
                   if "gate" not in n and "bias" not in n)
        assert precision.seconds_per_token(probe, steps=2, repeats=1) > 0


@pytest.mark.parametrize("float32, bfloat16, expected", [(0.010, 0.0085, torch.bfloat16),  # 15 % faster
                                                         (0.010, 0.0095, torch.float32),   # 5 %: not enough
                                                         (0.0011, 0.0021, torch.float32)])  # the toy world
def test_bfloat16_is_chosen_only_when_a_tenth_faster(monkeypatch, float32, bfloat16, expected):
    measured = []
    monkeypatch.setattr(precision, "seconds_per_token",
                        lambda model: measured.append(model.dtype) or {torch.float32: float32,
                                                                       torch.bfloat16: bfloat16}[model.dtype])
    config = build_untrained_pipeline().model.config
    chosen, timings = precision.choose_dtype(config)
    assert chosen == expected and timings == {"float32": float32, "bfloat16": bfloat16}
    assert measured == [torch.float32, torch.bfloat16]


def test_off_a_cpu_bfloat16_is_chosen_unmeasured():
    config = build_untrained_pipeline().model.config
    assert precision.choose_dtype(config, "cuda") == (torch.bfloat16, {})


def test_a_real_measurement_names_both_dtypes():
    chosen, timings = precision.choose_dtype(build_untrained_pipeline().model.config)
    assert chosen in (torch.float32, torch.bfloat16)
    assert set(timings) == {"float32", "bfloat16"} and all(t > 0 for t in timings.values())


def force(monkeypatch, dtype):
    calls = []
    monkeypatch.setattr(precision, "choose_dtype",
                        lambda config, device: calls.append(config) or (dtype, {"float32": 1.0, "bfloat16": 0.5}))
    return calls


def test_auto_choosing_bfloat16_gives_the_model_loaded_in_bfloat16(golden, monkeypatch, caplog):
    """Without a LoRA merge the converted model is bit for bit the one loaded in bfloat16, so
    its answers are too; the encoders keep float32 and the prefix cache is emptied."""
    from imagebind_llm.pipeline import Pipeline
    from test_imagebind_golden import golden_config

    force(monkeypatch, torch.bfloat16)
    auto = golden_pipeline(golden)  # merged, float32
    files = golden_media_files(golden)
    settings = Settings(GenerationConfig(max_new_tokens=6, temperature=0.0))
    question = [Media("image", files["image"])]
    auto.enable_prefix_cache(1 << 20)
    auto.answer(question, "What is it?", settings)
    assert len(auto.prefix_cache)
    with caplog.at_level(logging.INFO, logger="imagebind_llm.precision"):
        assert precision.apply_dtype(auto, "auto") == torch.bfloat16
    assert "dtype auto: bfloat16" in caplog.text
    assert auto.model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in auto.model.parameters())
    assert next(auto.imagebind.parameters()).dtype == torch.float32
    assert len(auto.prefix_cache) == 0
    assert auto.answer(question, "What is it?", settings)  # it answers in bfloat16

    import json

    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    paths = dict(imagebind=golden / "imagebind" / "weights.pth", imagebind_config=golden_config(golden),
                 llama=golden / "llama_adapter" / adapter_config["llama_type_dir"],
                 adapter=golden / "llama_adapter" / "adapter.pth",
                 tokenizer=golden / "llama_adapter" / adapter_config["tokenizer"])
    unmerged = Pipeline.from_paths(**paths, merge_lora=False)
    precision.apply_dtype(unmerged, "auto")
    direct = Pipeline.from_paths(**paths, merge_lora=False, dtype=torch.bfloat16, imagebind_dtype=torch.float32)
    ours, theirs = unmerged.model.state_dict(), direct.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert unmerged.answer(question, "What is it?", settings) == direct.answer(question, "What is it?", settings)


def test_auto_choosing_float32_leaves_the_model_as_loaded(monkeypatch):
    force(monkeypatch, torch.float32)
    pipeline = build_untrained_pipeline()
    before = {k: v.data_ptr() for k, v in pipeline.model.state_dict().items()}
    assert precision.apply_dtype(pipeline, "auto") == torch.float32
    assert {k: v.data_ptr() for k, v in pipeline.model.state_dict().items()} == before


@pytest.mark.parametrize("setting", [None, "float32", "bfloat16"])
def test_only_auto_measures(monkeypatch, setting):
    calls = force(monkeypatch, torch.bfloat16)
    pipeline = build_untrained_pipeline()
    assert precision.apply_dtype(pipeline, setting) == torch.float32 and not calls


def test_a_model_loaded_in_another_dtype_or_quantised_is_not_measured(monkeypatch):
    from imagebind_llm.lowmem import apply_memory_options

    calls = force(monkeypatch, torch.bfloat16)
    half = build_untrained_pipeline(dtype=torch.float16)
    assert precision.apply_dtype(half, "auto") == torch.float16
    quantised = apply_memory_options(build_untrained_pipeline(), device="cpu", quantize="int8")
    assert precision.apply_dtype(quantised, "auto") == torch.float32 and not calls


def test_the_flag(golden, monkeypatch, capsys, caplog):
    from imagebind_llm.app.server import parse_args
    from imagebind_llm.cli import build_parser, main

    assert parse_args(["--dtype", "auto"]).dtype == "auto"
    assert parse_args([], {"IMAGEBIND_LLM_DTYPE": "auto"}).dtype == "auto"
    with pytest.raises(SystemExit):
        parse_args([], {"IMAGEBIND_LLM_IMAGEBIND_DTYPE": "auto"})
    assert "must be float32, float16 or bfloat16, got 'auto'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args([], {"IMAGEBIND_LLM_DTYPE": "fp8"})
    assert "must be float32, float16, bfloat16 or auto, got 'fp8'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # embeddings only: ImageBind has no measured choice
        build_parser().parse_args(["embed", "--dtype", "auto", "--text", "a dog"])
    capsys.readouterr()

    calls = force(monkeypatch, torch.bfloat16)
    image = golden_media_files(golden)["image"]
    with caplog.at_level(logging.INFO, logger="imagebind_llm.precision"):
        assert main(["chat", "--dtype", "auto", "--threads", "1", "--image", image, "--max-new-tokens", "3",
                     "--temperature", "0", "What is it?"]) == 0
    assert len(calls) == 1 and "dtype auto: bfloat16 for the language model" in caplog.text
    assert capsys.readouterr().out.strip()
