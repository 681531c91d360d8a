"""Shared fixtures. The golden folder comes from IMAGEBIND_LLM_GOLDEN (default tests/golden);
tests read every size from it so that they pass on any set of the same layout."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(path: Path, name: str):
    """A script that is not part of a package (bench/*.py, examples/make_examples.py) as a
    module. It is registered under ``name`` only while it runs its top level, which dataclasses
    need, so that scripts of the same file name never see each other."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def golden_root() -> Path:
    return Path(os.environ.get("IMAGEBIND_LLM_GOLDEN", ROOT / "tests" / "golden")).resolve()


def golden_err(a, r) -> float:
    """The golden README's error measure: max|a - r| / max(1, max|r|)."""
    a = a.double()
    r = r.double()
    return float((a - r).abs().max() / max(1.0, float(r.abs().max())))


@pytest.fixture(scope="session")
def golden() -> Path:
    root = golden_root()
    if not (root / "imagebind" / "config.json").exists():
        pytest.fail(f"golden folder not found at {root} (set IMAGEBIND_LLM_GOLDEN)")
    return root


@pytest.fixture(scope="session")
def preprocess_manifest(golden) -> list[dict]:
    return json.loads((golden / "preprocess" / "manifest.json").read_text())["entries"]


def golden_pipeline(golden: Path):
    """The Pipeline of the golden files: tiny ImageBind, adapter, LLaMA, tokenizer and cache."""
    from imagebind_llm.pipeline import Pipeline
    from test_imagebind_golden import golden_config

    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    return Pipeline.from_paths(
        imagebind=golden / "imagebind" / "weights.pth", imagebind_config=golden_config(golden),
        llama=golden / "llama_adapter" / adapter_config["llama_type_dir"],
        adapter=golden / "llama_adapter" / "adapter.pth",
        tokenizer=golden / "llama_adapter" / adapter_config["tokenizer"], cache=golden / "cache" / "knn.index")


def golden_media_files(golden: Path) -> dict[str, str]:
    """One golden media file per kind."""
    from imagebind_llm.preprocess import guess_kind

    found = {}
    for path in sorted((golden / "preprocess" / "files").iterdir()):
        found.setdefault(guess_kind(path), str(path))
    return found


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Loading a pipeline through the CLI or the app sets PyTorch's thread count (--threads auto,
    imagebind_llm/threads.py); it is process-wide, so each test gets back the count it started with."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
