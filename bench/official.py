"""The official ImageBind-LLM decoder on a project model's weights: bench/speed.py's baseline.

The official code (``imagebind_LLM/llama`` of OpenGVLab/LLaMA-Adapter) is imported from a
checkout the user names (``--official PATH``), read-only: nothing of it is copied into this
repository. What is timed is its own ``LLaMA_adapter.generate`` and ``forward_inference`` and
its ``Transformer``, unchanged, built the way its ``load`` builds them (float16 weights, the
float32 KV caches that ``eval()`` allocates, autocast), holding the project model's weights.

Two imports of ``llama_adapter.py`` that ``generate`` never uses are given empty placeholder
modules instead of the official ones, which no longer import:

* ``util.misc`` (its checkpoint ``download`` helper): it imports ``torch._six``, gone since
  torch 2.0;
* ``ImageBind.models.imagebind_model`` (the encoder): its Point-BERT part needs ``knn_cuda``, a
  CUDA extension. ``generate`` receives the project's visual query instead (``forward_visual``
  replaced), so both decoders start from the same bind-network output.

The official code hard-codes CUDA (``.cuda()``) and the width 4096 (``forward_inference``).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

#: The name the official ``llama`` package is imported under (not ``llama``, which another
#: installed package may own).
PACKAGE = "official_imagebind_llm_llama"
PLACEHOLDERS = ("util", "util.misc", "ImageBind", "ImageBind.models", "ImageBind.models.imagebind_model")
OFFICIAL_WIDTH = 4096


def find_folder(path: Path) -> Path:
    """The official ``imagebind_LLM`` folder in a checkout (or the folder itself)."""
    path = Path(path)
    for candidate in (path / "imagebind_LLM", path):
        if (candidate / "llama" / "llama_adapter.py").is_file():
            return candidate
    raise FileNotFoundError(f"no llama/llama_adapter.py under {path} or {path / 'imagebind_LLM'} (--official "
                            "takes a checkout of OpenGVLab/LLaMA-Adapter or its imagebind_LLM folder)")


def _placeholder(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"placeholder for the official {name}, unused by generate")
    if name == "util.misc":
        def download(*args, **kwargs):
            raise RuntimeError("placeholder: the official download helper is not loaded")
        module.download = download
    return module


def import_official(folder: Path) -> types.ModuleType:
    """The official ``llama`` package (``.llama``, ``.llama_adapter``), imported once."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    source = find_folder(folder) / "llama"
    added = [name for name in PLACEHOLDERS if name not in sys.modules]
    for name in added:
        sys.modules[name] = _placeholder(name)
    sys.modules["ImageBind"].models = sys.modules["ImageBind.models"]
    sys.modules["ImageBind.models"].imagebind_model = sys.modules["ImageBind.models.imagebind_model"]
    sys.modules["util"].misc = sys.modules["util.misc"]
    spec = importlib.util.spec_from_file_location(PACKAGE, source / "__init__.py",
                                                  submodule_search_locations=[str(source)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        raise
    finally:
        for name in added:  # the package holds what it imported; nothing else should see them
            sys.modules.pop(name, None)
    return package


def build(model, folder: Path, max_batch: int, dtype=None):
    """The official ``LLaMA_adapter`` holding ``model``'s LLaMA and adapter weights (ImageBind
    and the bind network are not built: ``generate`` gets the visual query from
    :func:`generate`). ``dtype`` defaults to float16, as the official loader uses."""
    import torch
    from torch import nn

    from imagebind_llm.weights import project_to_adapter

    config = model.config.llama
    if config.dim != OFFICIAL_WIDTH:
        raise ValueError(f"the official code hard-codes the width {OFFICIAL_WIDTH}; "
                         f"this model is {config.dim} wide")
    import_official(folder)
    llama_module = sys.modules[PACKAGE + ".llama"]
    adapter_module = sys.modules[PACKAGE + ".llama_adapter"]
    args = llama_module.ModelArgs(dim=config.dim, n_layers=config.n_layers, n_heads=config.n_heads,
                                  vocab_size=config.vocab_size, multiple_of=config.multiple_of,
                                  norm_eps=config.norm_eps, max_seq_len=config.max_seq_len,
                                  max_batch_size=max_batch, w_bias=True, w_lora=True,
                                  lora_rank=model.config.adapter.lora_rank)
    dtype = dtype or torch.float16
    previous = torch.get_default_dtype()
    wrapper = adapter_module.LLaMA_adapter.__new__(adapter_module.LLaMA_adapter)
    nn.Module.__init__(wrapper)
    # The official loader builds the Transformer under torch.cuda.HalfTensor as default type.
    torch.set_default_dtype(dtype)
    try:
        with torch.device(model.device):
            wrapper.llama = llama_module.Transformer(args)
    finally:
        torch.set_default_dtype(previous)
    state = {k: v for k, v in model.llama.state_dict().items() if ".lora." not in k}
    adapter = project_to_adapter(model)
    state.update((k[len("llama."):], v) for k, v in adapter.items() if k.startswith("llama."))
    wrapper.llama.load_state_dict(state, strict=True)  # every official tensor gets a project tensor
    wrapper.query_layer = model.config.adapter.query_layer
    wrapper.query_len = model.config.adapter.query_len
    with torch.device(model.device):
        wrapper.prefix_query = nn.Embedding(wrapper.query_layer * wrapper.query_len, config.dim)
    with torch.no_grad():
        wrapper.prefix_query.weight.copy_(model.prefix_query.float().reshape(-1, config.dim))
    wrapper.tokenizer = _IdTokenizer()
    wrapper.knn = False
    return wrapper.eval()  # eval() allocates the official KV caches (float32, on CUDA)


class _IdTokenizer:
    """Token ids in, token ids out. No end-of-sequence id, so every row runs its full length
    (the official loop stops a batch of one at EOS), as the project's decoders do in the bench."""

    pad_id, eos_id = -1, -1

    def decode(self, ids):
        return ids


def generate(official, prompts: list[list[int]], new_tokens: int, visual_query) -> list[list[int]]:
    """The official greedy ``generate`` from a bind-network output (B, 1, dim): new token ids."""
    official.forward_visual = lambda *args, **kwargs: visual_query
    return official.generate({}, prompts, max_gen_len=new_tokens, temperature=0.0)
