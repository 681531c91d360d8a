"""Official training checkpoints (``checkpoint-N.pth``, ``7B-pretrained.pth``: ``{'model': full
state dict incl. image_bind.* and the frozen LLaMA, 'optimizer', 'epoch', 'scaler', 'args'}``,
possibly with the 'llma' spelling), faked on the tiny-untrained model:

* ``python -m train --stage finetune --pretrained PATH`` starts from one (and ``--pretrained
  7B-pretrained`` finds it in the Hugging Face cache, offline here);
* ``python -m imagebind_llm.convert convert-ckpt`` does what the official convert_ckpt.py does.
"""

from __future__ import annotations

import argparse
import logging
import pickle

import pytest
import torch
from test_hub import add_to_hub_cache
from test_train_data import write_conversations, write_images

from imagebind_llm import hub
from imagebind_llm.convert import convert_official_checkpoint
from imagebind_llm.convert import main as convert_main
from imagebind_llm.presets import build_untrained_pipeline
from imagebind_llm.weights import is_adapter_key, project_to_adapter, read_adapter
from train import main as train_main
from train.config import ConfigError

QUIET = ["model.preset=tiny-untrained", "data.num_workers=0", "progress=false", "log_interval=0", "tensorboard=false"]


def official_training_checkpoint(seed: int = 7) -> tuple[dict, dict[str, torch.Tensor]]:
    """(checkpoint, the adapter tensors a converter must keep) of a stage-1 (pretrain phase:
    no bias, no LoRA) training run on the tiny model, written the official way."""
    model = build_untrained_pipeline(seed=seed).model
    adapter = {k: v.clone() for k, v in project_to_adapter(model).items()
               if not (k.startswith("llama.") and ("lora" in k or k.endswith(".bias")))}
    frozen = {f"llama.{k[len('llama.'):]}": v.clone() for k, v in model.state_dict().items()
              if k.startswith("llama.") and not is_adapter_key(k)}
    full = {}
    for key, value in {**adapter, **frozen}.items():
        full[key.replace("llama.", "llma.", 1)] = value  # the 'llma' spelling of some releases
    generator = torch.Generator().manual_seed(seed)
    full.update({  # ImageBind, frozen, saved with the model
        "image_bind.modality_trunks.vision.blocks.0.attn.in_proj_weight": torch.randn(12, 4, generator=generator),
        "image_bind.modality_heads.vision.2.weight": torch.randn(8, 4, generator=generator),
        "prefix_projector_norm.weight": torch.ones(4), "prefix_projector_norm.bias": torch.zeros(4),
    })
    checkpoint = {
        "model": full,
        "optimizer": {"state": {0: {"step": torch.tensor(30.0), "exp_avg": torch.zeros(3),
                                    "exp_avg_sq": torch.zeros(3)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.02,
                                        "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                                        "differentiable": False, "fused": None, "params": [0]}]},
        "epoch": 3,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 11},
        "args": argparse.Namespace(batch_size=4, epochs=4, lr=None, blr=1e-3, llama_type="7B_chinese",
                                   output_dir="./output", pretrained_path="", distributed=True, max_words=96),
    }
    return checkpoint, adapter


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    checkpoint, adapter = official_training_checkpoint()
    path = folder / "checkpoint-3.pth"
    torch.save(checkpoint, path)
    return path, adapter


def test_reading_a_training_checkpoint_keeps_the_adapter_only(checkpoint_file):
    path, adapter = checkpoint_file
    with pytest.raises(pickle.UnpicklingError):  # a bare weights-only load refuses the argparse Namespace ...
        torch.load(path, weights_only=True)
    state = read_adapter(path)  # ... the project's reader allows it (reference.md 5.6)
    assert set(state) == set(adapter)
    assert all(torch.equal(state[k], adapter[k]) for k in adapter)
    assert not any(k.startswith(("image_bind.", "llma.", "prefix_projector_norm")) for k in state)


def test_convert_ckpt_does_what_the_official_script_does(checkpoint_file, tmp_path, capsys):
    path, adapter = checkpoint_file
    local = tmp_path / path.name
    local.write_bytes(path.read_bytes())
    assert convert_main(["convert-ckpt", str(local)]) == 0  # default: converted_<stem>.pth beside SRC
    out = tmp_path / "converted_checkpoint-3.pth"
    assert f"wrote {out}" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert list(saved) == ["model"]
    assert set(saved["model"]) == set(adapter) and all(torch.equal(saved["model"][k], adapter[k]) for k in adapter)
    assert {k for k in saved["model"] if k.startswith("llama.")} == {k for k in adapter if k.startswith("llama.")}
    assert out.stat().st_size < local.stat().st_size  # frozen matrices and ImageBind left out
    # --target is where the output goes (the official script ignores it); --ori is SRC.
    target = tmp_path / "sub" / "mine.pth"
    assert convert_main(["convert-ckpt", "--ori", str(local), "--target", str(target)]) == 0
    assert set(torch.load(target, weights_only=True)["model"]) == set(adapter)
    assert convert_main(["convert-ckpt", str(local), str(tmp_path / "third.pth")]) == 0
    # An existing destination is not overwritten; contradicting names are refused.
    assert convert_main(["convert-ckpt", str(local), str(target)]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(["convert-ckpt", str(local), str(tmp_path / "a.pth"), "--target", str(tmp_path / "b.pth")])
    with pytest.raises(SystemExit):
        convert_main(["convert-ckpt"])
    assert convert_official_checkpoint(local, tmp_path / "fourth.pth") == tmp_path / "fourth.pth"


@pytest.fixture(autouse=True)
def restore_logging():
    """train's command line makes the 'train' and 'imagebind_llm' loggers stop propagating (its
    own handlers); give later tests (caplog) the loggers back as they were."""
    loggers = [logging.getLogger(name) for name in ("train", "imagebind_llm")]
    saved = [(logger.propagate, logger.level) for logger in loggers]
    yield
    for logger, (propagate, level) in zip(loggers, saved):
        logger.propagate = propagate
        logger.setLevel(level)


def finetune(tmp_path, *args):
    data = write_conversations(tmp_path, write_images(tmp_path))
    return train_main(["--stage", "finetune", *QUIET, f"out_dir={tmp_path / 'run'}", f"data.train=[{data}]",
                       "optim.batch_size=2", "optim.max_steps=2", "optim.lr=1e-2", "optim.warmup_steps=0", *args])


def assert_started_from(export, adapter):
    """Fine-tuning trains norms, biases and LoRA only: the bind network, prefix queries and
    gates of the export are the checkpoint's, unchanged."""
    frozen = [k for k in adapter if k.startswith(("image_bind_", "prefix_query")) or k.endswith(".gate")]
    assert frozen and all(torch.equal(export[k].float(), adapter[k].float()) for k in frozen)
    assert any("lora" in k for k in export)  # added fresh for the fine-tuning phase


def test_finetune_starts_from_an_official_training_checkpoint(checkpoint_file, tmp_path):
    path, adapter = checkpoint_file
    summary = finetune(tmp_path, "--pretrained", str(path))
    assert summary["steps"] == 2
    export = read_adapter(tmp_path / "run" / "export" / "adapter-official.pth")
    assert_started_from(export, adapter)
    default = build_untrained_pipeline().model  # without --pretrained the preset's own adapter is used
    assert not torch.equal(project_to_adapter(default)["image_bind_proj.weight"], export["image_bind_proj.weight"])


def test_pretrained_by_name_is_resolved_through_the_hub_cache(checkpoint_file, tmp_path, monkeypatch):
    path, adapter = checkpoint_file
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 0)
    (tmp_path / "hub").mkdir()
    with pytest.raises(SystemExit, match="hf download Cxxs/ImageBind-LLM 7B-pretrained.pth") as info:
        finetune(tmp_path, "--pretrained", "7B-pretrained")
    assert "local copy: --pretrained PATH" in str(info.value)  # python -m train has no --adapter
    # A mistyped config is named before the released weights are looked for (or downloaded).
    monkeypatch.setattr(hub, "resolve", lambda *a, **k: pytest.fail("resolved before the config was read"))
    with pytest.raises(ConfigError, match="config file not found: nothing.yaml"):
        finetune(tmp_path, "--config", "nothing.yaml", "--pretrained", "7B-pretrained")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 0)
    add_to_hub_cache(tmp_path / "hub", "Cxxs/ImageBind-LLM", {"7B-pretrained.pth": path.read_bytes()})
    finetune(tmp_path, "--pretrained", "7B-pretrained")
    assert_started_from(read_adapter(tmp_path / "run" / "export" / "adapter-official.pth"), adapter)
    with pytest.raises(SystemExit, match="not the name of an official adapter"):
        finetune(tmp_path, "--pretrained", "8B-nothing")
