"""Weights that cannot fit are refused before they are allocated (imagebind_llm/memory_check.py)."""

from __future__ import annotations

import pytest
import torch

from imagebind_llm import memory_check
from imagebind_llm.errors import ImageBindLLMError, NotEnoughMemoryError
from test_precision import golden_paths


def test_conversion_bytes_count_what_the_conversion_allocates():
    half = torch.zeros(10, 10, dtype=torch.float16)
    ids = torch.zeros(7, dtype=torch.int64)
    assert memory_check.conversion_bytes([half, ids], torch.float32, "cpu") == 400  # ids stay as they are
    assert memory_check.conversion_bytes([half, ids], torch.float16, "cpu") == 0  # kept, memory-mapped or not
    assert memory_check.conversion_bytes([half], torch.bfloat16, "cpu") == 200
    assert memory_check.conversion_bytes([half, ids], torch.float16, "meta") == 200 + 56  # another device: all


def test_available_memory_is_meminfo_s_available_plus_free_swap(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemAvailable:   1000 kB\nSwapFree:   24 kB\n")
    monkeypatch.setattr(memory_check, "MEMINFO", meminfo)
    assert memory_check.available_bytes("cpu") == 1024 * 1024
    meminfo.write_text("MemTotal: 16000000 kB\n")  # an old kernel: unknown, nothing is refused
    assert memory_check.available_bytes("cpu") is None
    monkeypatch.setattr(memory_check, "MEMINFO", tmp_path / "missing")
    assert memory_check.available_bytes("cpu") is None
    assert memory_check.available_bytes("meta") is None


def test_the_real_machine_reports_some_memory():
    available = memory_check.available_bytes("cpu")
    assert available is None or available > 0


def test_a_shortfall_names_the_sizes_and_the_ways_out(monkeypatch):
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: int(2.5e9))
    memory_check.require_memory(int(2.5e9), "cpu", "x", "y")  # just fits
    with pytest.raises(NotEnoughMemoryError) as caught:
        memory_check.require_memory(int(27e9), "cpu", "the language model in float32", "Use less.")
    message = str(caught.value)
    assert "the language model in float32 needs 27.0 GB of CPU memory (RAM and swap) but 2.5 GB is available" in message
    assert "Use less." in message and "IMAGEBIND_LLM_NO_MEMORY_CHECK=1" in message
    assert isinstance(caught.value, ImageBindLLMError) and isinstance(caught.value, MemoryError)
    monkeypatch.setenv("IMAGEBIND_LLM_NO_MEMORY_CHECK", "1")
    memory_check.require_memory(int(27e9), "cpu", "x", "y")
    monkeypatch.delenv("IMAGEBIND_LLM_NO_MEMORY_CHECK")
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: None)
    memory_check.require_memory(int(27e9), "cpu", "x", "y")  # unknown: not refused


def test_loading_refuses_a_conversion_that_does_not_fit(golden, monkeypatch):
    """The golden base LLaMA is float16 and its adapter float32: float32 converts the base,
    float16 only the adapter; the check counts exactly that and refuses before allocating."""
    from imagebind_llm.pipeline import Pipeline
    from imagebind_llm.weights import adapter_to_project, build_language_model, read_adapter, read_llama

    paths = golden_paths(golden)
    _, base = read_llama(paths["llama"])
    adapter = adapter_to_project(read_adapter(paths["adapter"]))  # its norms replace the base's
    base = {k: v for k, v in base.items() if f"llama.{k}" not in adapter}
    assert {t.dtype for t in base.values()} == {torch.float16} and {t.dtype for t in adapter.values()} == {torch.float32}
    base_numel, adapter_numel = (sum(t.numel() for t in state.values()) for state in (base, adapter))

    def load(available, dtype, **options):
        monkeypatch.setattr(memory_check, "available_bytes", lambda device: available)
        return build_language_model(paths["llama"], paths["adapter"], dtype=dtype, **options)

    assert load(4 * base_numel, torch.float32).dtype == torch.float32  # the adapter is float32 already
    with pytest.raises(NotEnoughMemoryError, match=r"the language model in float32 needs [0-9.]+ MB of CPU memory .* "
                                                   r"--dtype bfloat16 \(or --dtype auto on a CPU\) halves float32"):
        load(4 * base_numel - 1, torch.float32)
    assert load(2 * adapter_numel, torch.float16).dtype == torch.float16  # the base stays memory-mapped
    with pytest.raises(NotEnoughMemoryError, match="in float16 needs") as caught:
        load(2 * adapter_numel - 1, torch.float16)
    assert "halves" not in str(caught.value) and "--quantize int8" in str(caught.value)
    assert load(0, torch.float32, quantize="int8").dtype == torch.float32  # not checked: it allocates less
    with pytest.raises(NotEnoughMemoryError):  # the loaders refuse it too
        Pipeline.from_paths(**paths, dtype=torch.float32)


def test_the_command_line_says_it_and_exits(golden, monkeypatch, capsys):
    from imagebind_llm.cli import main

    paths = golden_paths(golden)
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: 1000)
    code = main(["chat", "--imagebind", str(paths["imagebind"]), "--imagebind-config", "imagebind_tiny",
                 "--llama", str(paths["llama"]), "--adapter", str(paths["adapter"]),
                 "--tokenizer", str(paths["tokenizer"]), "--dtype", "float32", "Hi?"])
    assert code == 2
    assert "error: the language model in float32 needs" in capsys.readouterr().err


def test_imagebind_is_checked_too(golden, monkeypatch):
    from imagebind_llm.checkpoint import load_imagebind, read_state_dict

    paths = golden_paths(golden)
    assert {t.dtype for t in read_state_dict(paths["imagebind"]).values() if t.is_floating_point()} == {torch.float32}
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: 0)
    with pytest.raises(NotEnoughMemoryError, match=r"ImageBind in bfloat16 needs [0-9.]+ MB .* \(--lazy-encoders\)"):
        load_imagebind(paths["imagebind"], paths["imagebind_config"], dtype=torch.bfloat16)
    assert load_imagebind(paths["imagebind"], paths["imagebind_config"], dtype=torch.float32)  # no copy made
    lazy = load_imagebind(paths["imagebind"], paths["imagebind_config"], dtype=torch.bfloat16, lazy=True)
    assert lazy.residency is not None  # each encoder is read when first used


def test_a_gpu_that_cannot_say_is_not_checked(monkeypatch):
    """ZeroGPU reports CUDA at start but attaches a GPU only inside its calls."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def no_gpu(device=None):
        raise RuntimeError("no GPU attached")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_gpu)
    assert memory_check.available_bytes("cuda") is None
    memory_check.require_memory(int(1e15), "cuda", "x", "y")
