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


def golden_paths(golden) -> dict:
    import json

    from test_imagebind_golden import golden_config

    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    return dict(imagebind=golden / "imagebind" / "weights.pth", imagebind_config=golden_config(golden),
                llama=golden / "llama_adapter" / adapter_config["llama_type_dir"],
                adapter=golden / "llama_adapter" / "adapter.pth",
                tokenizer=golden / "llama_adapter" / adapter_config["tokenizer"])


@pytest.mark.parametrize("chosen", [torch.bfloat16, torch.float32])
def test_auto_loads_exactly_the_model_of_the_dtype_it_chooses(golden, monkeypatch, caplog, chosen):
    """The choice is made from the config before the weights are converted: the model (LoRA
    merged) is bit for bit the one loaded in that dtype, so its answers are too; the encoders
    keep the device's default."""
    from imagebind_llm.pipeline import Pipeline

    calls = force(monkeypatch, chosen)
    paths = golden_paths(golden)
    with caplog.at_level(logging.INFO, logger="imagebind_llm.precision"):
        auto = Pipeline.from_paths(**paths, dtype="auto")
    assert len(calls) == 1 and calls[0].llama == auto.model.config.llama
    assert f"dtype auto: {str(chosen).removeprefix('torch.')} for the language model" in caplog.text
    named = Pipeline.from_paths(**paths, dtype=chosen, imagebind_dtype=torch.float32)
    ours, theirs = auto.model.state_dict(), named.model.state_dict()
    assert all(v.dtype == chosen for v in ours.values() if v.is_floating_point())
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert next(auto.imagebind.parameters()).dtype == torch.float32
    files = golden_media_files(golden)
    settings = Settings(GenerationConfig(max_new_tokens=6, temperature=0.0))
    question = [Media("image", files["image"])]
    assert auto.answer(question, "What is it?", settings) == named.answer(question, "What is it?", settings)


def test_the_untrained_preset_takes_auto_too(monkeypatch):
    force(monkeypatch, torch.bfloat16)
    pipeline = build_untrained_pipeline(dtype="auto")
    assert pipeline.model.dtype == torch.bfloat16 and next(pipeline.imagebind.parameters()).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, None])
def test_only_auto_measures(monkeypatch, dtype):
    calls = force(monkeypatch, torch.bfloat16)
    config = build_untrained_pipeline().model.config
    assert precision.resolve_dtype(dtype, config) is dtype and not calls


def test_a_quantised_model_is_not_measured(monkeypatch):
    calls = force(monkeypatch, torch.bfloat16)
    config = build_untrained_pipeline().model.config
    assert precision.resolve_dtype("auto", config, "cpu", quantize="int8") == torch.float32 and not calls
    assert precision.resolve_dtype("auto", config, "cuda", quantize="int8") == torch.bfloat16 and not calls
    assert precision.encoder_dtype("auto", "cpu") == torch.float32
    assert precision.encoder_dtype("auto", "cuda") == torch.bfloat16
    assert precision.encoder_dtype(torch.float16, "cpu") == torch.float16


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


def test_a_dtype_may_be_given_by_its_name(golden):
    """``dtype: torch.dtype | str``: the names the command line takes work from Python too (only
    'auto' did; 'bfloat16' failed with an AttributeError deep in the memory check)."""
    from imagebind_llm.checkpoint import load_imagebind
    from imagebind_llm.errors import InputError
    from imagebind_llm.pipeline import Pipeline
    from imagebind_llm.precision import as_dtype
    from imagebind_llm.presets import load_preset_pipeline

    paths = golden_paths(golden)
    assert Pipeline.from_paths(**paths, dtype="float16").model.dtype == torch.float16
    pipeline = Pipeline.from_paths(**paths, dtype="torch.bfloat16", imagebind_dtype="float32")
    assert pipeline.model.dtype == torch.bfloat16 and next(pipeline.imagebind.parameters()).dtype == torch.float32
    assert next(load_imagebind(paths["imagebind"], paths["imagebind_config"], dtype="bfloat16")
                .parameters()).dtype == torch.bfloat16
    assert load_preset_pipeline("tiny-untrained", dtype="bfloat16").model.dtype == torch.bfloat16
    assert as_dtype(torch.float16) is torch.float16 and as_dtype(None) is None
    with pytest.raises(InputError, match="unknown dtype 'foo'. Accepted: float32, float16, bfloat16, auto"):
        Pipeline.from_paths(**paths, dtype="foo")
    with pytest.raises(InputError, match="unknown dtype 'auto'"):
        load_imagebind(paths["imagebind"], paths["imagebind_config"], dtype="auto")
