"""train/ under torchrun: two gloo processes (DDP and FSDP2) give the loss and the weights of
one process for the same global batch, and an FSDP run resumes exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_data import write_captions, write_images

from train import main

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
COMMON = ["model.preset=tiny-untrained", "data.num_workers=0", "progress=false", "log_interval=0", "tensorboard=false",
          "data.split_epoch=1", f"optim.max_steps={STEPS}", "optim.lr=1e-2", "optim.warmup_steps=0"]


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "train", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def trainables(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["trainable"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_captions(folder, write_images(folder))


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return main(["--stage", "pretrain", *COMMON, f"data.train=[{data}]", f"out_dir={out}", "optim.batch_size=4"])


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_for_the_same_global_batch(strategy, data, single, tmp_path):
    import json

    out = tmp_path / strategy
    extra = ["save_interval=2", "keep_checkpoints=5"] if strategy == "fsdp" else []
    torchrun(["--stage", "pretrain", *COMMON, f"data.train=[{data}]", f"out_dir={out}", "optim.batch_size=2",
              "--strategy", strategy, *extra])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == 2 and summary["strategy"] == strategy
    assert len(summary["losses"]) == STEPS
    assert max(abs(a - b) for a, b in zip(summary["losses"], single["losses"])) <= 1e-5
    one, two = trainables(single["checkpoint"]), trainables(summary["checkpoint"])
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-4
    assert Path(summary["exports"]["official"]).is_file()
    if strategy == "fsdp":  # resume the sharded run from its step-2 checkpoint
        torchrun(["--stage", "pretrain", *COMMON, f"data.train=[{data}]", f"out_dir={tmp_path / 'resumed'}",
                  "optim.batch_size=2", "--strategy", strategy, "--resume", str(out / "checkpoint-0000002.pt")])
        resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
        assert resumed["losses"] == summary["losses"][2:]
        again = trainables(resumed["checkpoint"])
        assert all(torch.equal(again[k], two[k]) for k in two)
