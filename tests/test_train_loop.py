"""train/ end to end through ``train.main(argv)`` on small generated data: the loss falls,
outputs are written, a resumed run continues exactly, precomputed features train like raw
media, bad data is reported and skipped (or stops the run), and the exported adapter loads
into the Pipeline and changes its answers."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_data import write_captions, write_conversations, write_images

from train import main
from train.checkpointing import read_project_adapter
from train.data import BadDataError
from train.modeling import imagebind_config_from_spec

QUIET = ["model.preset=tiny-untrained", "data.num_workers=0", "progress=false", "log_interval=0"]


def run(stage: str, out, *args: str) -> dict:
    return main(["--stage", stage, *QUIET, f"out_dir={out}", *args])


def trainables(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["trainable"]


def test_tiny_run_loss_falls_and_writes_its_outputs(tmp_path):
    data = write_conversations(tmp_path, write_images(tmp_path))
    out = tmp_path / "run"
    summary = run("finetune", out, f"data.train=[{data}]", "data.multi_turn=true", "data.eval_fraction=0.2",
                  "optim.batch_size=3", "optim.max_steps=24", "optim.lr=1e-2", "optim.warmup_steps=2",
                  "eval_interval=12")
    losses = summary["losses"]
    assert len(losses) == 24 and summary["steps"] == 24
    assert sum(losses[-4:]) / 4 < losses[0] - 1.0, losses
    assert summary["eval_loss"] is not None and summary["bad_data"] == {}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == list(range(1, 25))
    assert all(r["samples_per_s"] > 0 and r["samples"] == 3 for r in train_lines)
    assert [r["step"] for r in lines if r["split"] == "eval"] == [12, 24]  # held-out loss
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "export" / "adapter-official.pth").is_file() and (out / "summary.json").is_file()
    assert summary["trainable_tensors"] > 0 and (out / "train.log").read_text()


def test_resumed_run_continues_exactly(tmp_path):
    names = write_images(tmp_path)
    data = write_captions(tmp_path, names)
    common = [f"data.train=[{data}]", "data.split_epoch=1", "optim.batch_size=2", "optim.accum_iter=2",
              "optim.max_steps=4", "optim.lr=1e-2", "optim.warmup_steps=0", "tensorboard=false"]
    whole = run("pretrain", tmp_path / "whole", *common, "save_interval=2", "keep_checkpoints=5")
    resumed = run("pretrain", tmp_path / "resumed", *common, f"resume={tmp_path / 'whole' / 'checkpoint-0000002.pt'}")
    assert resumed["losses"] == whole["losses"][2:]
    a, b = trainables(whole["checkpoint"]), trainables(resumed["checkpoint"])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    first = torch.load(whole["checkpoint"], weights_only=False)["optimizer"]["state"]
    second = torch.load(resumed["checkpoint"], weights_only=False)["optimizer"]["state"]
    assert all(torch.equal(first[k]["exp_avg_sq"], second[k]["exp_avg_sq"]) for k in first)
    start = trainables(tmp_path / "whole" / "checkpoint-0000002.pt")
    assert any(not torch.equal(start[k], a[k]) for k in a)  # it did train after the checkpoint


def test_precomputed_features_train_like_raw_media(tmp_path):
    names = write_images(tmp_path)
    data = write_captions(tmp_path, names)
    features = tmp_path / "features"
    common = [f"data.train=[{data}]", "data.split_epoch=1", "optim.batch_size=4", "optim.max_steps=3",
              "optim.lr=1e-2", "optim.warmup_steps=0", "data.augment=false", "tensorboard=false"]
    first = run("pretrain", tmp_path / "pre", *common, f"data.features={features}", "--precompute")
    assert first["precompute"] == {"total": len(names), "done_before": 0, "computed": len(names), "failed": 0}
    again = run("pretrain", tmp_path / "pre", *common, f"data.features={features}", "--precompute")
    assert again["precompute"]["done_before"] == len(names) and again["precompute"]["computed"] == 0
    raw = run("pretrain", tmp_path / "raw", *common)
    cached = run("pretrain", tmp_path / "cached", *common, f"data.features={features}")
    assert max(abs(x - y) for x, y in zip(raw["losses"], cached["losses"])) <= 1e-5
    assert raw["losses"][1] != raw["losses"][2]


def test_examples_with_two_images_are_mixed_by_the_chosen_fusion(tmp_path):
    # An example with two images trains on their mix: "official" divides by the weight sum (a mix
    # shorter than 1), "normalized" makes it a unit vector like the app. Precomputed features and
    # raw media agree in both modes; the two modes differ.
    names = write_images(tmp_path)
    mixes = tmp_path / "mixes.json"
    mixes.write_text(json.dumps([{"image": [a, b], "conversations": [
        {"from": "human", "value": "Generate caption of this image"}, {"from": "gpt", "value": f"{a} and {b}"}]}
        for a, b in zip(names, names[1:] + names[:1])]))
    features = tmp_path / "features"
    common = [f"data.train=[{mixes}]", "data.split_epoch=1", "optim.batch_size=4", "optim.max_steps=2",
              "optim.lr=1e-2", "optim.warmup_steps=0", "data.augment=false", "tensorboard=false"]
    run("pretrain", tmp_path / "pre", *common, f"data.features={features}", "--precompute")
    losses = {}
    for fusion in ("official", "normalized"):
        raw = run("pretrain", tmp_path / f"raw-{fusion}", *common, f"data.fusion={fusion}")
        cached = run("pretrain", tmp_path / f"cached-{fusion}", *common, f"data.fusion={fusion}",
                     f"data.features={features}")
        assert max(abs(x - y) for x, y in zip(raw["losses"], cached["losses"])) <= 1e-5
        losses[fusion] = raw["losses"]
    assert losses["official"][1] != losses["normalized"][1]
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="data.fusion"):
        run("pretrain", tmp_path / "bad", *common, "data.fusion=average")


def test_bad_data_is_counted_reported_and_skipped(tmp_path):
    names = write_images(tmp_path, 6)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    data = write_captions(tmp_path, names + ["broken.png", "missing.png"], [f"caption {i}" for i in range(8)],
                          extra_rows="img0.png\t\n")
    features = tmp_path / "features"
    common = [f"data.train=[{data}]", "data.split_epoch=1", "optim.batch_size=4", "optim.max_steps=2",
              "data.check_media=none", "tensorboard=false"]
    summary = run("pretrain", tmp_path / "raw", *common)
    assert summary["bad_data"] == {"malformed": 1, "missing_media": 1, "corrupt_media": 1}
    listed = [json.loads(line) for line in (tmp_path / "raw" / "bad_data.jsonl").read_text().splitlines()]
    assert {(p["where"], p["category"]) for p in listed} == {("line 10", "malformed"), ("line 8", "corrupt_media"),
                                                            ("line 9", "missing_media")}
    assert all(p["file"] == str(data) for p in listed)
    # Found before training when the media are checked at start (the default), or by the precompute.
    assert summary["examples"] == {"train": 8, "held_out": 0}  # the malformed row never became an example
    checked = run("pretrain", tmp_path / "checked", *common[:-2], "data.check_media=decode", "tensorboard=false")
    assert checked["bad_data"] == {"malformed": 1, "missing_media": 1, "corrupt_media": 1}
    assert checked["examples"] == {"train": 6, "held_out": 0}
    pre = run("pretrain", tmp_path / "pre", *common, f"data.features={features}", "--precompute")
    assert pre["precompute"]["failed"] == 2
    from_features = run("pretrain", tmp_path / "feat", *common, f"data.features={features}")
    assert from_features["bad_data"] == {"malformed": 1, "corrupt_media": 2}
    with pytest.raises(BadDataError, match=r"captions.csv line (8|9|10)"):
        run("pretrain", tmp_path / "strict", *common, "data.strict=true")


def test_exported_adapter_loads_into_the_pipeline_and_changes_its_answers(golden, tmp_path):
    from test_train_golden import golden_config, write_stage_data

    from imagebind_llm.generation import GenerationConfig
    from imagebind_llm.pipeline import Media, Pipeline, Settings
    from imagebind_llm.weights import read_adapter

    reference = torch.load(golden / "llama_adapter" / "train_loss.pt", weights_only=True)
    data = write_stage_data(golden, reference, "finetune", tmp_path)
    config = golden_config(golden, "finetune")
    model_args = [f"model.{k}={v}" for k, v in config.to_dict()["model"].items()
                  if k in ("llama", "tokenizer", "adapter", "imagebind", "imagebind_config")]
    summary = main(["--stage", "finetune", *model_args, "data.num_workers=0", "progress=false", "log_interval=0",
                    "tensorboard=false", f"out_dir={tmp_path / 'run'}", f"data.train=[{data}]", "optim.batch_size=2",
                    "optim.max_steps=4", "optim.lr=5e-2", "optim.warmup_steps=0"])
    exports = summary["exports"]
    official = torch.load(exports["official"], weights_only=True)
    assert set(official) == {"model"}
    assert set(official["model"]) == set(read_adapter(golden / "llama_adapter" / "adapter.pth"))
    tensors, model_config, training = read_project_adapter(exports["project"])
    assert training["stage"] == "finetune" and training["step"] == 4 and model_config.adapter.bias_lora
    assert all(torch.equal(tensors[k], official["model"][k]) for k in tensors)

    meta = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())

    def answer(adapter) -> str:
        pipeline = Pipeline.from_paths(imagebind=config.model.imagebind,
                                       imagebind_config=imagebind_config_from_spec(config.model.imagebind_config),
                                       llama=golden / "llama_adapter" / meta["llama_type_dir"], adapter=adapter,
                                       tokenizer=golden / "llama_adapter" / meta["tokenizer"])
        image = golden / "preprocess" / "files" / reference["examples"][0][0]
        settings = Settings(generation=GenerationConfig(max_new_tokens=12, temperature=0.0))
        return pipeline.answer([Media("image", str(image))], reference["examples"][0][1], settings)

    before = answer(golden / "llama_adapter" / "adapter.pth")
    after_official, after_project = answer(exports["official"]), answer(exports["project"])
    assert after_official == after_project
    assert after_official != before


def test_too_few_examples_for_a_batch_say_which_settings_decide_it(tmp_path):
    """Two images with the laptop settings (batch 4, a tenth held out): a configuration error
    that names the batch settings and the held-out example, not a traceback."""
    from train.config import ConfigError

    data = write_captions(tmp_path, write_images(tmp_path, 2))
    with pytest.raises(ConfigError, match=r"1 training example \(per sub-epoch: 1\) does not fill one global "
                                          r"batch of 4.*Lower optim.batch_size or optim.accum_iter, or add "
                                          r"examples; 1 more is held out .*data.eval_fraction=0.1"):
        run("pretrain", tmp_path / "run", f"data.train=[{data}]", "data.eval_fraction=0.1", "optim.batch_size=4")
    summary = run("pretrain", tmp_path / "run", f"data.train=[{data}]", "optim.batch_size=2", "optim.max_steps=2")
    assert summary["steps"] == 2  # what the message suggests works


@pytest.mark.parametrize("args, message", [
    ([], "configuration error: no training data: list the caption or conversation files in data.train"),
    (["data.train=[nowhere.csv]"], "configuration error: data file not found: nowhere.csv"),
    (["data.train=[picture.png]"], "configuration error: picture.png: unknown data format"),
    (["model.preset=null", "model.llama=nowhere", "model.imagebind=nowhere.pth", "data.train=[x.csv]"],
     "error: no LLaMA weights at nowhere"),
])
def test_the_command_names_what_is_wrong_without_a_traceback(args, message, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    (tmp_path / "picture.png").write_bytes(b"")
    (tmp_path / "x.csv").write_text("url\tcaption\n")
    result = subprocess.run([sys.executable, "-m", "train", "--config", str(root / "train/configs/laptop.yaml"),
                             *args, f"out_dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_adapter_trained_on_the_untrained_preset_runs_in_the_command_line_and_app(tmp_path, capsys):
    """The laptop recipe's result is chatted with through ``--preset tiny-untrained --adapter
    PATH``: the trained tensors are the ones loaded, on the same seeded base."""
    from imagebind_llm.cli import main as cli
    from imagebind_llm.errors import CheckpointError
    from imagebind_llm.presets import load_preset_pipeline
    from imagebind_llm.weights import adapter_to_project, is_adapter_key, read_adapter

    data = write_captions(tmp_path, write_images(tmp_path))
    summary = run("pretrain", tmp_path / "run", f"data.train=[{data}]", "optim.batch_size=2", "optim.max_steps=3",
                  "optim.lr=5e-2", "optim.warmup_steps=0")
    exported = summary["exports"]["official"]
    trained = adapter_to_project(read_adapter(exported))
    pipeline = load_preset_pipeline("tiny-untrained", overrides={"adapter": exported})
    state = pipeline.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items() if k in state)
    assert any(k.startswith("bind") for k in trained)  # the bind network was compared
    untrained = load_preset_pipeline("tiny-untrained", merge_lora=False).model.state_dict()
    assert not torch.equal(untrained["prefix_query"], state["prefix_query"])
    base = [k for k in untrained if not is_adapter_key(k)]
    assert base and all(torch.equal(untrained[k], state[k]) for k in base)  # the same seeded LLaMA

    assert cli(["chat", "--preset", "tiny-untrained", "--adapter", exported, "--max-new-tokens", "2", "Hi?"]) == 0
    with pytest.raises(CheckpointError, match="builds its ImageBind and LLaMA from a seed, so --llama cannot"):
        load_preset_pipeline("tiny-untrained", llama=tmp_path)
