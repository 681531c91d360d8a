"""train/ against the official training step (golden llama_adapter/train_loss.pt): the data
pipeline's tokens, labels, masks and images, the trainable sets, the loss and every gradient
of both stages. Sizes and values are read from the golden set."""

from __future__ import annotations

import json

import pytest
import torch

from imagebind_llm.preprocess import PreprocessOptions
from imagebind_llm.weights import project_to_adapter_key
from train import distributed as D
from train.config import build_config
from train.data import Collate, DataReport, ExampleDataset, read_records
from train.engine import Context, batch_features, forward_loss, train_step
from train.modeling import TrainModule, build, unused_trainables

LOSS_TOLERANCE = 1e-5  # golden README section 8
GRAD_TOLERANCE = 1e-3  # x max |grad|
IMAGE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(golden):
    return torch.load(golden / "llama_adapter" / "train_loss.pt", weights_only=True)


def golden_config(golden, stage: str, **overrides):
    adapter = golden / "llama_adapter"
    meta = json.loads((adapter / "adapter_config.json").read_text())
    return build_config(stage, None, {
        "model.llama": str(adapter / meta["llama_type_dir"]), "model.tokenizer": str(adapter / meta["tokenizer"]),
        "model.adapter": str(adapter / "adapter.pth"), "model.imagebind": str(golden / "imagebind" / "weights.pth"),
        "model.imagebind_config": str(golden / "imagebind" / "config.json"), "data.label_format": "official",
        "data.preprocess_mode": "official", "data.augment": False, "precision": "fp32", **overrides})


def stage_reference(reference, stage):
    return reference if stage == "finetune" else reference["pretrain"]


def write_stage_data(golden, reference, stage, folder):
    """The golden examples in the official file format of the stage."""
    images = [str(golden / "preprocess" / "files" / example[0]) for example in reference["examples"]]
    if stage == "finetune":
        records = [{"image": image, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
                   for image, (_, q, a) in zip(images, reference["examples"])]
        path = folder / "finetune.json"
        path.write_text(json.dumps(records))
    else:
        path = folder / "pretrain.csv"
        path.write_text("url\tcaption\n" + "".join(f"{i}\t{c}\n" for i, c in
                                                   zip(images, reference["pretrain"]["captions"])))
    return path


@pytest.fixture(scope="module", params=["finetune", "pretrain"])
def stage_setup(request, golden, reference, tmp_path_factory):
    stage = request.param
    ref = stage_reference(reference, stage)
    config = golden_config(golden, stage, **{"data.max_words": reference["max_words"]})
    if stage == "pretrain":
        assert ref["instruction"] == config.data.instruction
    comps = build(config, need_encoder=True, device=torch.device("cpu"), frozen_dtype=torch.float32)
    path = write_stage_data(golden, reference, stage, tmp_path_factory.mktemp(stage))
    records = read_records([str(path)], config.data, DataReport(strict=True))
    dataset = ExampleDataset(records, comps.tokenizer, config.data, config.seed, PreprocessOptions(mode="official"))
    batch = Collate(config.data.max_words, 0, None)([dataset[(i, 0)] for i in range(len(records))])
    return stage, ref, config, comps, batch


def test_data_pipeline_reproduces_the_official_tensors(stage_setup, golden, reference):
    _, ref, _, _, batch = stage_setup
    width = batch.tokens.shape[1]  # batches are cut after the longest example; the rest is padding
    assert torch.equal(batch.tokens, ref["tokens"][:, :width]) and (ref["tokens"][:, width:] == 0).all()
    assert torch.equal(batch.labels, ref["labels"][:, :width]) and (ref["labels"][:, width:] == 0).all()
    if "example_mask" in ref:
        assert torch.equal(batch.mask, ref["example_mask"][:, :width]) and (ref["example_mask"][:, width:] == 0).all()
    images = torch.cat([torch.load(golden / path, weights_only=True) for path in reference["imgs_from"]])
    loaded = torch.stack([media[0][1] for media in batch.media])
    assert (loaded - images).abs().max() <= IMAGE_TOLERANCE


def test_trainable_sets_are_the_official_ones(stage_setup, golden):
    stage, ref, _, comps, _ = stage_setup
    meta = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    names = [n for n, p in comps.model.named_parameters() if p.requires_grad]
    official = sorted(project_to_adapter_key(n) for n in names)
    assert official == sorted(meta[f"trainable_{stage}"]) == sorted(ref["trainable_params"])
    assert all(p.dtype == torch.float32 for p in comps.model.parameters() if p.requires_grad)
    frozen = [n for n, p in comps.model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("llama.layers.") for n in frozen)
    assert not any(p.requires_grad for p in comps.encoder.parameters())


class _Capture:
    """Stands in for the optimizer: keeps the gradients train_step produced."""

    def __init__(self, params):
        self.params, self.param_groups, self.grads = params, [], None

    def step(self):
        self.grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in self.params.items()}

    def zero_grad(self, set_to_none=True):
        for p in self.params.values():
            p.grad = None


def test_loss_and_gradients_match_the_official(stage_setup):
    _, ref, config, comps, batch = stage_setup
    model = comps.model
    module = TrainModule(model)
    ctx = Context(config, D.DistInfo(), D.choose_precision("fp32", "auto", torch.device("cpu"), "ddp"), module,
                  comps.encoder, comps.imagebind_config.embed_dim, 0, None)
    ce, count = forward_loss(module, batch, ctx)
    assert abs(float((ce / count).detach()) - float(ref["loss"])) <= LOSS_TOLERANCE
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    capture = _Capture(trainable)
    model.zero_grad(set_to_none=True)
    stats = train_step([batch], ctx, capture, list(trainable.values()))
    assert abs(stats["loss"] - float(ref["loss"])) <= LOSS_TOLERANCE
    unused = set(unused_trainables(model, list(trainable)))
    for name, grad in capture.grads.items():
        expected = ref["grads"].get(project_to_adapter_key(name))
        if expected is None:
            assert name in unused or grad is None
            continue
        got = grad if grad is not None else torch.zeros_like(expected)
        scale = float(expected.abs().max())
        assert float((got - expected).abs().max()) <= GRAD_TOLERANCE * max(scale, 1e-12), name
    assert stats["samples"] == len(ref["tokens"]) and stats["grad_norm"] > 0


def test_the_models_own_loss_is_the_training_loss(stage_setup):
    """ImageBindLLM.loss (the one-call loss for Python users) gives the training loop's mean
    next-token loss, hence the official one, on the same batch."""
    _, ref, config, comps, batch = stage_setup
    ctx = Context(config, D.DistInfo(), D.choose_precision("fp32", "auto", torch.device("cpu"), "ddp"),
                  TrainModule(comps.model), comps.encoder, comps.imagebind_config.embed_dim, 0, None)
    assert bool((batch.visual == 1).all()), "every golden example has media"
    with torch.no_grad():
        loss = comps.model.loss(batch.tokens, batch.labels, batch_features(batch, ctx), ignore_index=ctx.ignore_index)
    assert abs(float(loss) - float(ref["loss"])) <= LOSS_TOLERANCE
    # Labels with no target at all: a zero that still has a graph (a step on such a batch is a no-op).
    empty = torch.full_like(batch.labels, ctx.ignore_index)
    zero = comps.model.loss(batch.tokens, empty, batch_features(batch, ctx), ignore_index=ctx.ignore_index)
    assert float(zero) == 0.0 and zero.requires_grad
