"""bench/official.py: importing the official decoder and building it from a project model.

The import test runs everywhere, on a stand-in package with the official layout. The parity
test is opt-in: it needs a checkout of OpenGVLab/LLaMA-Adapter, which is never part of this
repository (``IMAGEBIND_LLM_OFFICIAL=PATH``). It runs the official ``generate`` on the CPU with
its ``.cuda()`` calls made no-ops, in float32 so that it must give the project's greedy tokens,
on a model 4096 wide (the official code hard-codes the width) with 2 layers and a small
vocabulary: about 4 GB of memory and half a minute.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, load_script
from imagebind_llm.config import AdapterConfig, ImageBindLLMConfig, LlamaConfig
from imagebind_llm.generation import GenerationConfig, generate_tokens
from imagebind_llm.model import ImageBindLLM

OFFICIAL_CHECKOUT = os.environ.get("IMAGEBIND_LLM_OFFICIAL")


@pytest.fixture()
def official(monkeypatch):
    module = load_script(ROOT / "bench" / "official.py", "bench_official")
    yield module
    for name in [n for n in sys.modules if n == module.PACKAGE or n.startswith(module.PACKAGE + ".")]:
        del sys.modules[name]


def write_stand_in(root: Path) -> Path:
    """A package laid out like the official imagebind_LLM/llama, with the same two imports
    that no longer resolve (util.misc, ImageBind.models.imagebind_model)."""
    llama = root / "imagebind_LLM" / "llama"
    llama.mkdir(parents=True)
    (llama / "__init__.py").write_text("from .llama import Transformer\nfrom .llama_adapter import *\n")
    (llama / "llama.py").write_text("class Transformer:\n    pass\n")
    (llama / "llama_adapter.py").write_text(textwrap.dedent("""\
        from .llama import Transformer
        from util.misc import download
        from ImageBind.models import imagebind_model


        class LLaMA_adapter:
            pass
        """))
    return root


def test_import_uses_placeholders_for_the_unused_official_imports(official, tmp_path):
    package = official.import_official(write_stand_in(tmp_path))
    assert package.LLaMA_adapter.__module__ == official.PACKAGE + ".llama_adapter"
    assert official.import_official(tmp_path) is package  # imported once
    for name in official.PLACEHOLDERS:  # nothing outside the package sees the placeholders
        assert name not in sys.modules
    with pytest.raises(RuntimeError, match="placeholder"):
        sys.modules[official.PACKAGE + ".llama_adapter"].download("url", "folder")


def test_a_folder_without_the_official_code_is_named(official, tmp_path):
    with pytest.raises(FileNotFoundError, match="no llama/llama_adapter.py under"):
        official.find_folder(tmp_path)


def test_a_model_not_4096_wide_is_refused(official, tmp_path):
    config = ImageBindLLMConfig(LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=100),
                                AdapterConfig(imagebind_dim=32, query_layer=1))
    with pytest.raises(ValueError, match="hard-codes the width 4096"):
        official.build(ImageBindLLM(config), write_stand_in(tmp_path), max_batch=1)


def random_wide_model() -> ImageBindLLM:
    """4096 wide, 2 layers (one injected), random values everywhere: biases, norms, gates and
    LoRA too, so that every tensor the official model reads is checked."""
    config = ImageBindLLMConfig(LlamaConfig(dim=4096, n_layers=2, n_heads=32, vocab_size=512),
                                AdapterConfig(query_layer=1))
    with torch.device("meta"):
        model = ImageBindLLM(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = torch.randn(param.shape, generator=generator)
            if "norm" in name:
                param.copy_(1.0 + 0.1 * values)
            elif "gate" in name:  # open gates: the visual query moves the logits by about 1
                param.copy_(values)
            elif param.ndim < 2 or name.endswith("bias"):
                param.copy_(0.1 * values)
            else:
                param.copy_(values * param.shape[-1] ** -0.5)
    return model.eval().requires_grad_(False)


@pytest.mark.slow
@pytest.mark.skipif(not OFFICIAL_CHECKOUT, reason="set IMAGEBIND_LLM_OFFICIAL to a LLaMA-Adapter checkout")
def test_official_generate_gives_the_project_tokens(official, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)  # run it on the CPU
    model = random_wide_model()
    prompts = [[1, 5, 9, 200, 37, 81], [1, 44, 3, 17, 400, 99]]
    feature = F.normalize(torch.randn(2, model.config.adapter.imagebind_dim,
                                      generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.inference_mode():
        query = model.visual_query(feature)
        expected_logits = model(torch.tensor(prompts), visual_query=query)[:, -1].float()
    built = official.build(model, Path(OFFICIAL_CHECKOUT), max_batch=2, dtype=torch.float32)
    logits = built.forward_inference(query, torch.tensor(prompts), 0)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)

    new_tokens = 6
    expected = [[] for _ in prompts]
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0)
    for step in generate_tokens(model, prompts, config, visual_query=query, eos_id=None):
        for row, token in enumerate(step):
            expected[row].append(token)
    assert official.generate(built, prompts, new_tokens, query) == expected
    # the visual query reaches the official layers: another one changes the logits
    built.llama.train(False)  # fresh official caches
    other = built.forward_inference(-query, torch.tensor(prompts), 0)
    assert (other - logits).abs().max() > 0.1

    # bench/speed.py's case around it: timings and the tokens of the last run
    speed = load_script(ROOT / "bench" / "speed.py", "bench_speed_official")
    case = speed.official_case(built, model, batch=2, prompt_len=6, new_tokens=4, repeats=1)
    assert case["decoder"] == "official" and case["decode_tok_s"] > 0 and case["first_ms"] > 0
    assert [len(row) for row in case["tokens"]] == [4, 4]
