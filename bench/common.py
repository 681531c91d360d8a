"""Helpers shared by the benchmark scripts: peak-memory measurement, cheap random weights and
the JSON results file."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import sys
import threading

from imagebind_llm.precision import cheap_random_init  # noqa: F401 - shared with the bench scripts


class PeakMemory:
    """Peak memory of a block. CUDA: ``torch.cuda.max_memory_allocated`` during the block.
    CPU: the peak resident set size during the block minus the RSS when it started (what the
    block adds on top of what was already resident), sampled from ``/proc/self/statm`` every
    2 ms after ``malloc_trim``; without ``/proc``, the growth of ``ru_maxrss`` (``exact`` is
    then False: only a block that raises the process's all-time peak is seen)."""

    _PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self, device):
        self.device = device
        self.peak_bytes: int | None = None
        self.exact = True

    @staticmethod
    def rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * PeakMemory._PAGE
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def maxrss() -> int:
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value if sys.platform == "darwin" else value * 1024  # Linux reports KiB

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        trim_heap()
        self._base = self.rss()
        self._base_maxrss = self.maxrss()
        self._peak = self._base or 0
        self._stop = threading.Event()
        if self._base is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            value = self.rss()
            if value is not None and value > self._peak:
                self._peak = value

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        if self._base is None:
            self.peak_bytes = max(0, self.maxrss() - self._base_maxrss)
            self.exact = False
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss() or 0)
        self.peak_bytes = max(0, self._peak - self._base)


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc), so that RSS growth is measured from a floor."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)


def random_7b_model(device, dtype):
    """ImageBind-LLM at LLaMA-7B's shape with cheap random weights, built without a float32 copy."""
    import torch

    from imagebind_llm.config import AdapterConfig, ImageBindLLMConfig, llama_7b
    from imagebind_llm.model import ImageBindLLM

    config = ImageBindLLMConfig(llama_7b(), AdapterConfig())
    with torch.device("meta"):
        model = ImageBindLLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    cheap_random_init(model)
    return model.eval().requires_grad_(False)


def write_random_llm(folder, dim: int, n_layers: int, head_dim: int = 64, dtype=None) -> dict:
    """The toy-world model's ImageBind and tokenizer with a language model of another shape and
    random weights, the LLaMA and the adapter written in the official formats under ``folder``
    (in ``dtype``, default float32): a model whose decoding, not the rest of the app, takes
    most of the time, as a released model's does. Returns the app's model flags as a dict (imagebind, imagebind_config, llama,
    adapter, tokenizer)."""
    from pathlib import Path

    import torch

    from imagebind_llm import presets
    from imagebind_llm.config import ImageBindLLMConfig, LlamaConfig
    from imagebind_llm.model import ImageBindLLM
    from imagebind_llm.tokenizer import Tokenizer
    from imagebind_llm.weights import (infer_adapter_config, llama_shapes, project_to_adapter, read_adapter,
                                       write_adapter, write_meta_llama)

    if not presets.toyworld_available():
        raise RuntimeError("a random language model needs the toy-world model's ImageBind and tokenizer, "
                           "which are not installed")
    files = presets.verify_manifest(presets.TOYWORLD_DIR)
    toy_layers = json.loads(Path(files["llama/params.json"]).read_text())["n_layers"]
    toy = infer_adapter_config(read_adapter(files["adapter.pth"]), n_layers=toy_layers)
    llama = LlamaConfig(dim=dim, n_layers=n_layers, n_heads=dim // head_dim,
                        vocab_size=Tokenizer(files["tokenizer.model"]).n_words)
    adapter = type(toy)(**{**vars(toy), "query_layer": min(toy.query_layer, n_layers)})
    with torch.device("meta"):
        model = ImageBindLLM(ImageBindLLMConfig(llama, adapter))
    model = model.to(dtype=dtype or torch.float32).to_empty(device="cpu")
    cheap_random_init(model)
    folder = Path(folder)
    state = model.state_dict()
    write_meta_llama({key: state["llama." + key] for key in llama_shapes(llama)}, llama, folder / "llama")
    write_adapter(project_to_adapter(model), folder / "adapter.pth")
    return {"imagebind": files["imagebind.pth"], "imagebind_config": files["imagebind.json"],
            "llama": folder / "llama", "adapter": folder / "adapter.pth", "tokenizer": files["tokenizer.model"]}


def fmt_number(value: float | None, digits: int = 3) -> str:
    """A figure for a table: '-' for none, whole numbers from 100 up, else ``digits`` significant."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def write_json(path, results: dict) -> None:
    """The ``--json`` results file (its folder made when missing)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
