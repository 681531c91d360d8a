"""Reproduce the embedded default model from scratch: ``python -m train.toyworld``.

The toy world (:mod:`imagebind_llm.toyworld`) is rendered to files, read back through the
project's preprocessing, and every model is trained with the project's own code:

1. ``world``      render scenes in every modality (images for all, the other modalities for a subset)
2. ``vision``     a small ImageBind (``imagebind_toy``): vision + text by contrastive alignment on
                  image-caption pairs (videos tied to their stills; both mirrored and shifted)
   ``bind``       every other modality aligned to the frozen image embeddings (depth and thermal
                  maps mirrored and shifted); no modality but images ever meets text
3. ``tokenizer``  SentencePiece on the world's text (LLaMA's special ids, byte fallback)
4. ``llama``      a small LLaMA language model on the world's text (half of the lines also get a
                  summary of themselves through the injection path: :func:`summary_injections`)
5. ``pretrain``   ImageBind-LLM stage 1 with ``python -m train`` on image captions only
6. ``finetune``   stage 2 with ``python -m train`` on image question-answers only
7. ``cache``      the visual cache: image embeddings of fresh scenes
8. ``evaluate``   the evaluation of :mod:`imagebind_llm.eval.toyworld` on held-out scenes
9. ``install``    (``--install``) copy the artifacts into the package as the default preset

Steps whose outputs exist are skipped (``--force STEP`` redoes one), so an interrupted run
resumes. ``--quick`` shrinks everything for a smoke test. Training runs in bfloat16 autocast on
a CPU with bfloat16 instructions, else in float32 (``precision``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("train.toyworld")

STEPS = ("world", "vision", "bind", "tokenizer", "llama", "pretrain", "finetune", "cache", "evaluate", "install")


@dataclass
class ToyWorldConfig:
    out: str = "runs/toyworld"
    seed: int = 0
    image_scenes: int = 3000  # scenes with an image (image-caption pairs)
    modality_scenes: int = 600  # of those, scenes also rendered in every other modality
    # Fresh scenes whose image embeddings form the visual cache: about ten per combination of
    # attributes (625), so that the top-10 neighbours mostly share the query's (2,000 blurred counts).
    cache_scenes: int = 6000
    # Vision + text (+ video): many small batches. The encoder learns from the number of updates
    # more than from their size: 1,500 steps of 32 beat 500 of 96 at about the same cost. Images
    # and videos are mirrored and shifted (train/augment.py); with that, more steps keep helping.
    # Every image is also contrasted with the one-attribute prompts ("Ball.", "Cube.", ...).
    align_steps: int = 10000
    align_batch: int = 32
    align_lr: float = 5e-4  # a linear probe read 2e-3's features far worse, 1e-3's 3 points worse
    align_augment: bool = True
    align_max_shift: int = 16  # pixels, half a vision patch
    align_prompt_weight: float = 1.0  # 0 turns the prompt contrast off
    align_video_every: int = 3  # video <-> image pairs (costly) take part in one step out of this many
    bind_steps: int = 300  # every other modality to the frozen images
    bind_batch: int = 96
    bind_augment: bool = True  # depth and thermal maps mirrored and shifted like the images
    lm_steps: int = 1300
    lm_batch: int = 32
    lm_dim: int = 128
    lm_layers: int = 4
    lm_heads: int = 4
    lm_lr: float = 3e-3
    lm_weight_decay: float = 0.01
    lm_summary_fraction: float = 0.5  # lines that also get their summary through the injection path
    lm_summary_scale: float = 30.0
    vocab_size: int = 1000
    pretrain_steps: int = 800
    finetune_steps: int = 1000
    stage_batch: int = 32
    pretrain_lr: float = 5e-3
    finetune_lr: float = 2e-3
    eval_scenes: int = 60  # per modality, for the final report (the eval script takes any n)
    threads: int | None = None
    # Training in bfloat16 autocast (float32 weights and losses), "auto": where the CPU has
    # bfloat16 instructions. There it took the run from 30.3 to 21.1 min (bench/toyworld.py).
    precision: str = "auto"  # "auto", "bf16" or "fp32"

    @classmethod
    def quick(cls, out: str) -> "ToyWorldConfig":
        return cls(out=out, image_scenes=48, modality_scenes=16, cache_scenes=32, align_steps=3, bind_steps=2,
                   align_batch=8, bind_batch=8, lm_steps=3, lm_batch=4, vocab_size=400, pretrain_steps=2,
                   finetune_steps=2, stage_batch=4, eval_scenes=3)


PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}  # training precision -> autocast dtype


def training_precision(config: ToyWorldConfig) -> str:
    """``config.precision`` with ``auto`` resolved: bf16 where the CPU has bfloat16 instructions."""
    from .distributed import cpu_has_native_bf16

    if config.precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, bf16 or fp32, got {config.precision!r}")
    return config.precision


def autocast_dtype(config: ToyWorldConfig) -> torch.dtype | None:
    """The training autocast dtype of ``config.precision``."""
    return PRECISIONS[training_precision(config)]


class Run:
    """The output folder of a reproduction run and its step bookkeeping."""

    def __init__(self, config: ToyWorldConfig):
        self.config = config
        self.root = Path(config.out)
        self.root.mkdir(parents=True, exist_ok=True)
        self.report_path = self.root / "report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.exists() else {"steps": {}}
        self.report["config"] = asdict(config)

    def done(self, step: str) -> bool:
        return step in self.report["steps"]

    def finish(self, step: str, seconds: float, **details) -> None:
        self.report["steps"][step] = {"seconds": round(seconds, 1), **details}
        self.report_path.write_text(json.dumps(self.report, indent=2))

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


# ---------------------------------------------------------------------------------------------
# 1. the world
# ---------------------------------------------------------------------------------------------


def step_world(run: Run) -> dict:
    from imagebind_llm.toyworld.dataset import write_scenes
    from imagebind_llm.toyworld.world import MODALITIES, sample_scenes

    c = run.config
    scenes = sample_scenes(c.seed, c.image_scenes)
    images = write_scenes(run.path("world", "images"), scenes, ["image"])
    rich = write_scenes(run.path("world", "modalities"), scenes[: c.modality_scenes], MODALITIES)
    cache = write_scenes(run.path("world", "cache"), sample_scenes(c.seed + 1, c.cache_scenes), ["image"])
    return {"image_scenes": len(images), "modality_scenes": len(rich), "cache_scenes": len(cache)}


# ---------------------------------------------------------------------------------------------
# 2. ImageBind
# ---------------------------------------------------------------------------------------------

def _attribute_groups(records: list[dict], attributes) -> torch.Tensor:
    keys = [tuple(r[a] for a in attributes) for r in records]
    ids = {k: i for i, k in enumerate(sorted(set(keys), key=str))}
    return torch.tensor([ids[k] for k in keys])


def _caption_tokens(records: list[dict], rng: random.Random):
    """Captions naming a random subset of the attributes (always at least one), with the mask
    of which images each caption truly describes. Full captions half of the time."""
    from imagebind_llm.preprocess.text import tokenize
    from imagebind_llm.toyworld.dataset import scene_of
    from imagebind_llm.toyworld.world import ATTRIBUTES, caption

    names = list(ATTRIBUTES)
    subsets, texts = [], []
    for record in records:
        if rng.random() < 0.5:
            subset = tuple(names)
        else:
            subset = tuple(a for a in names if rng.random() < 0.5) or (rng.choice(names),)
        subsets.append(subset)
        texts.append(caption(scene_of(record), subset))
    return tokenize(texts), subsets


def _grouped_points(model, clouds: torch.Tensor):
    """Point clouds -> their (parameter-free, deterministic) FPS + kNN groups, computed once;
    and the encoder from groups: (B, G, 1 + K, 3) with the centre first."""
    encoder = model.point.encoder
    with torch.no_grad():
        parts = [torch.cat([c.unsqueeze(2), g], dim=2)
                 for c, g in (encoder.group(clouds[i:i + 64]) for i in range(0, len(clouds), 64))]

    def encode(grouped: torch.Tensor) -> torch.Tensor:
        return model.point.head(encoder.encode_groups(grouped[:, :, 0], grouped[:, :, 1:]))

    return torch.cat(parts), encode


def _new_imagebind(run: Run):
    from imagebind_llm.config import imagebind_toy
    from imagebind_llm.encoders.imagebind import ImageBind

    torch.manual_seed(run.config.seed)
    return ImageBind(imagebind_toy())


def _preprocess_options():
    from imagebind_llm.preprocess import PreprocessOptions
    from imagebind_llm.preprocess.video import VideoOptions

    # Square 224 x 224 videos: the three spatial crops are the same, one is enough for training.
    return PreprocessOptions(options={"video": VideoOptions(num_crops=1)})


def _stored_float(name: str, x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x  # inputs are stored as float16


class RandomClip:
    """Videos (N, clips, 3, T, H, W) indexed as one random clip each: ``view[index]`` is
    (B, 3, T, H, W), gathered in one go (gathering all five clips and then picking one cost a
    tenth of a vision step)."""

    def __init__(self, videos: torch.Tensor, generator: torch.Generator):
        self.videos, self.generator = videos, generator

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.videos[index, torch.randint(self.videos.shape[1], (len(index),), generator=self.generator)]


def step_vision(run: Run) -> dict:
    """Vision and text encoders by contrastive alignment on image-caption pairs (and of each
    image with the one-attribute prompts), videos tied to the stills of their scenes (the vision
    encoder embeds both)."""
    from imagebind_llm.preprocess.text import tokenize
    from imagebind_llm.toyworld.dataset import load_tensors, read_index
    from imagebind_llm.toyworld.world import ATTRIBUTES, value_prompts

    from .align import AlignConfig, PromptContrast, Task, align
    from .augment import mirror_and_shift

    c = run.config
    model = _new_imagebind(run)
    image_records = read_index(run.path("world", "images"))
    rich_records = read_index(run.path("world", "modalities"))
    options = _preprocess_options()
    images = load_tensors(run.path("world", "images"), image_records, "image", options=options)
    videos = load_tensors(run.path("world", "modalities"), rich_records, "video", options=options)
    tokens, subsets = _caption_tokens(image_records, random.Random(c.seed))
    values = [{a: r[a] for a in ATTRIBUTES} for r in image_records]

    def caption_mask(index: torch.Tensor) -> torch.Tensor:
        """positives[i, j]: caption j describes image i (partial captions describe many)."""
        rows = index.tolist()
        return torch.tensor([[all(values[i][a] == values[j][a] for a in subsets[j]) for j in rows] for i in rows])

    augmentation = torch.Generator().manual_seed(c.seed)

    def inputs(name: str, x: torch.Tensor) -> torch.Tensor:
        if c.align_augment and name != "image-text:b":  # every image and video, not the captions
            x = mirror_and_shift(x, augmentation, c.align_max_shift)  # still float16: half the bytes
        return _stored_float(name, x)

    prompts = None
    if c.align_prompt_weight > 0:
        (group_size,) = {len(values) for values in ATTRIBUTES.values()}  # five values each
        labels = torch.tensor([[ATTRIBUTES[a].index(r[a]) for a in ATTRIBUTES] for r in image_records])
        prompts = PromptContrast(tokenize([p for a in ATTRIBUTES for p in value_prompts(a)]), model.text, labels,
                                 group_size=group_size, weight=c.align_prompt_weight)
    image_text = Task("image-text", model.vision, images, tokens, model.text,
                      list(model.vision.parameters()) + list(model.text.parameters()),
                      positives=caption_mask, batch_size=c.align_batch, prompts=prompts)
    # Weight 1/2 per step when it takes part every step, the same share of the loss otherwise.
    video_image = Task("video-image", model.vision, RandomClip(videos, torch.Generator().manual_seed(c.seed)),
                       images[: len(rich_records)], model.vision, list(model.vision.parameters()),
                       groups=_attribute_groups(rich_records, ATTRIBUTES), batch_size=c.align_batch // 2,
                       weight=0.5 * c.align_video_every, every=c.align_video_every)
    model.train()
    history = align([image_text, video_image], AlignConfig(steps=c.align_steps, lr=c.align_lr, seed=c.seed,
                                                           autocast=autocast_dtype(c)), transform=inputs)
    run.path("imagebind").mkdir(exist_ok=True)
    torch.save(model.state_dict(), run.path("imagebind", "vision-text.pth"))
    return {"loss": history[-1]}


def step_bind(run: Run) -> dict:
    """Every other modality aligned to the frozen image embeddings of its scenes."""
    from imagebind_llm.checkpoint import project_to_official
    from imagebind_llm.toyworld.dataset import load_tensors, read_index
    from imagebind_llm.toyworld.world import CARRIED

    from .align import AlignConfig, Task, align, embed_all
    from .augment import mirror_and_shift

    c = run.config
    model = _new_imagebind(run)
    model.load_state_dict(torch.load(run.path("imagebind", "vision-text.pth"), weights_only=True))
    model.eval().requires_grad_(False)
    rich_records = read_index(run.path("world", "modalities"))
    options = _preprocess_options()
    images = load_tensors(run.path("world", "modalities"), rich_records, "image", options=options)
    targets = embed_all(model.vision, images, transform=lambda x: x.float())
    tasks = []
    for modality in ("audio", "depth", "thermal", "imu", "point"):
        inputs = load_tensors(run.path("world", "modalities"), rich_records, modality, options=options)
        encoder = model.encoder(modality)
        encode, batch = encoder, c.bind_batch
        if modality == "audio":
            inputs = inputs[:, 0]  # 2 s sounds: the three clips are the same
        if modality == "point":
            inputs, encode = _grouped_points(model, inputs)
            batch = c.bind_batch // 2  # the costliest encoder
        encoder.train().requires_grad_(True)
        tasks.append(Task(f"{modality}-image", encode, inputs, targets, None, list(encoder.parameters()),
                          groups=_attribute_groups(rich_records, CARRIED[modality]), batch_size=batch))
    augmentation = torch.Generator().manual_seed(c.seed + 1)

    def model_inputs(name: str, x: torch.Tensor) -> torch.Tensor:
        # 600 scenes are few: without augmentation the depth and thermal encoders learn them by
        # heart. The image targets need none, the vision encoder having learnt to ignore both.
        if c.bind_augment and name in ("depth-image:a", "thermal-image:a"):
            x = mirror_and_shift(x, augmentation, c.align_max_shift)
        return _stored_float(name, x)

    history = align(tasks, AlignConfig(steps=c.bind_steps, seed=c.seed + 1, autocast=autocast_dtype(c)),
                    transform=model_inputs)
    model.eval()
    state = {k: (v.half() if v.is_floating_point() and v.ndim > 0 else v) for k, v in project_to_official(model).items()}
    torch.save(state, run.path("imagebind", "imagebind.pth"))
    run.path("imagebind", "config.json").write_text(model.config.to_json())
    return {"loss": history[-1]}


# ---------------------------------------------------------------------------------------------
# 3-4. tokenizer and language model
# ---------------------------------------------------------------------------------------------


def _world_text(run: Run) -> list[str]:
    from imagebind_llm.toyworld.world import all_scenes, corpus, sample_scenes

    c = run.config
    return corpus(all_scenes(c.seed) + sample_scenes(c.seed + 2, 2000), seed=c.seed)


def step_tokenizer(run: Run) -> dict:
    import io

    import sentencepiece

    lines = _world_text(run)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=run.config.vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2, max_sentence_length=8192,
        hard_vocab_limit=False)  # vocab_size is an upper bound: the world's small text may need fewer pieces
    run.path("llama").mkdir(exist_ok=True)
    run.path("llama", "tokenizer.model").write_bytes(model.getvalue())
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    return {"pieces": pieces, "lines": len(lines)}


def summary_injections(model, tokens: torch.Tensor, real: torch.Tensor, scale: float, fraction: float):
    """The language model's summary channel: for a random ``fraction`` of the lines, the mean
    embedding of the line's own tokens (``real`` marks them), times ``scale``, goes through every
    layer's ``wv`` and is added to every position, the way ImageBind-LLM injects a visual
    feature (gate fixed at 1). The model learns to let an added vector decide what it says.

    Why: a 1M-parameter LM trained from scratch, unlike LLaMA-7B, could not be steered by the
    injection at all. With *perfect* attribute features, stage 1 taught shape, count and motion
    but left colour at chance (23 %, chance 20 %); after this channel, every attribute at 100 %
    within 200 steps. The weights stay a plain LLaMA (the lines without a summary keep it a
    language model), and nothing here sees an image."""
    summary = (model.tok_embeddings(tokens) * real.unsqueeze(-1)).sum(1) / real.sum(1, keepdim=True)
    summary = (summary * scale * (torch.rand(len(tokens), 1) < fraction)).unsqueeze(1)
    return [layer.attention.adapter_values(summary) for layer in model.layers]


def step_llama(run: Run) -> dict:
    from imagebind_llm.config import AdapterConfig, LlamaConfig
    from imagebind_llm.llama import Llama
    from imagebind_llm.tokenizer import Tokenizer
    from imagebind_llm.weights import write_meta_llama

    from .distributed import autocast_context
    from .optim import adamw

    c = run.config
    tokenizer = Tokenizer(run.path("llama", "tokenizer.model"))
    lines = _world_text(run)
    sequences = [tokenizer.encode(line, bos=True, eos=True) for line in lines]
    config = LlamaConfig(dim=c.lm_dim, n_layers=c.lm_layers, n_heads=c.lm_heads, vocab_size=tokenizer.n_words,
                         multiple_of=32, max_seq_len=256)
    torch.manual_seed(c.seed)
    model = Llama(config, AdapterConfig(bias_lora=False, query_layer=c.lm_layers, imagebind_dim=8))
    for name, p in model.named_parameters():
        if p.ndim == 2:
            torch.nn.init.normal_(p, std=0.02)
    model.train()
    params = [p for n, p in model.named_parameters() if "gate" not in n]
    optimizer = adamw(params, lr=c.lm_lr, betas=(0.9, 0.95), weight_decay=c.lm_weight_decay)
    rng = random.Random(c.seed)
    autocast = autocast_context("cpu", autocast_dtype(c))
    from tqdm.auto import tqdm

    losses = []
    for step in tqdm(range(c.lm_steps), desc="language model", leave=False):
        for group in optimizer.param_groups:
            group["lr"] = c.lm_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / c.lm_steps))
        batch = rng.sample(sequences, min(c.lm_batch, len(sequences)))
        length = max(len(s) for s in batch)
        tokens = torch.zeros(len(batch), length, dtype=torch.long)
        targets = torch.full((len(batch), length), -100, dtype=torch.long)
        for row, seq in enumerate(batch):
            tokens[row, :len(seq)] = torch.tensor(seq)
            targets[row, :len(seq) - 1] = torch.tensor(seq[1:])
        with autocast:
            summary = summary_injections(model, tokens, targets != -100, c.lm_summary_scale,
                                         c.lm_summary_fraction)
            logits = model(tokens, injections=summary)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    state = {k: v.half() for k, v in model.state_dict().items() if "gate" not in k}
    write_meta_llama(state, config, run.path("llama", "toy"))
    return {"loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])), "params": sum(
        v.numel() for v in state.values())}


# ---------------------------------------------------------------------------------------------
# 5-6. ImageBind-LLM stage 1 and 2 (python -m train), on images only
# ---------------------------------------------------------------------------------------------


def _stage_data(run: Run) -> tuple[Path, Path]:
    from imagebind_llm.toyworld.dataset import read_index, scene_of
    from imagebind_llm.toyworld.world import caption, phrasing_rng, questions_for

    folder = run.path("world", "images").resolve()  # the data files hold absolute paths
    records = read_index(folder)
    captions = run.path("stages", "captions.csv")
    captions.parent.mkdir(parents=True, exist_ok=True)
    with open(captions, "w") as f:
        f.write("url\tcaption\n")
        for r in records:
            f.write(f"{folder / r['files']['image']}\t{caption(scene_of(r))}\n")
    rng = phrasing_rng(run.config.seed)
    llava = []
    for r in records:  # one question per example: every answer is learnt with its EOS
        for qa in questions_for(scene_of(r), rng):
            llava.append({"image": str(folder / r["files"]["image"]), "conversations": [
                {"from": "human", "value": qa.question}, {"from": "gpt", "value": qa.answer}]})
    instructions = run.path("stages", "questions.json")
    instructions.write_text(json.dumps(llava))
    return captions, instructions


def _stage(run: Run, stage: str) -> dict:
    import train

    c = run.config
    captions, instructions = _stage_data(run)
    features = run.path("stages", "features")
    common = [
        f"model.imagebind={run.path('imagebind', 'imagebind.pth')}",
        f"model.imagebind_config={run.path('imagebind', 'config.json')}",
        f"model.llama={run.path('llama', 'toy')}", f"model.tokenizer={run.path('llama', 'tokenizer.model')}",
        f"data.features={features}", "data.num_workers=0", "data.check_media=none", "tensorboard=false",
        f"optim.batch_size={c.stage_batch}", f"seed={c.seed}", "log_interval=50", "save_interval=0",
        "data.eval_fraction=0", f"precision={training_precision(c)}",
    ]
    if stage == "pretrain":
        # a longer warm-up and clipping against early gradient spikes (norms up to 56 were seen
        # when the language model did not yet know the caption prompt)
        args = ["--stage", "pretrain", f"data.train=[{captions}]", f"optim.max_steps={c.pretrain_steps}",
                "optim.warmup_steps=100", "optim.clip_grad=1.0", f"optim.lr={c.pretrain_lr}",
                "data.split_epoch=1", "data.augment=false"]
    else:
        args = ["--stage", "finetune", f"data.train=[{instructions}]", f"optim.max_steps={c.finetune_steps}",
                "optim.warmup_steps=20", f"optim.lr={c.finetune_lr}", "data.max_words=160",
                f"model.adapter={run.path('stages', 'pretrain', 'export', 'adapter-official.pth')}", "data.augment=false"]
    out = run.path("stages", stage)
    train.main(args + common + ["--precompute", "--out", str(out)])  # resumable: computes only what is missing
    summary = train.main(args + common + ["--out", str(out)])
    return {k: summary[k] for k in summary if k in ("loss", "final_loss", "steps", "exported")}


def step_pretrain(run: Run) -> dict:
    return _stage(run, "pretrain")


def step_finetune(run: Run) -> dict:
    return _stage(run, "finetune")


# ---------------------------------------------------------------------------------------------
# 7. visual cache, 8. evaluation, 9. install
# ---------------------------------------------------------------------------------------------


def step_cache(run: Run) -> dict:
    from imagebind_llm.checkpoint import load_imagebind
    from imagebind_llm.config import ImageBindConfig
    from imagebind_llm.embedding import Embedder
    from imagebind_llm.toyworld.dataset import read_index
    from imagebind_llm.visual_cache import VisualCache

    folder = run.path("world", "cache")
    records = read_index(folder)
    config = ImageBindConfig.from_dict(json.loads(run.path("imagebind", "config.json").read_text()))
    embedder = Embedder(load_imagebind(run.path("imagebind", "imagebind.pth"), config), batch_size=64)
    vectors = embedder.embed({"image": [str(folder / r["files"]["image"]) for r in records]}).unit["image"]
    cache = VisualCache.from_vectors(vectors)
    run.path("cache").mkdir(exist_ok=True)
    cache.save(run.path("cache", "knn.index"))
    return {"vectors": len(cache), "dim": cache.dim}


def artifacts(run: Run) -> dict[str, Path]:
    return {
        "imagebind.pth": run.path("imagebind", "imagebind.pth"),
        "imagebind.json": run.path("imagebind", "config.json"),
        "llama/params.json": run.path("llama", "toy", "params.json"),
        "llama/consolidated.00.pth": run.path("llama", "toy", "consolidated.00.pth"),
        "tokenizer.model": run.path("llama", "tokenizer.model"),
        "adapter.pth": run.path("stages", "finetune", "export", "adapter-official.pth"),
        "knn.index": run.path("cache", "knn.index"),
    }


def step_evaluate(run: Run) -> dict:
    from imagebind_llm.eval.toyworld import evaluate, format_table
    from imagebind_llm.presets import pipeline_from_folder

    pipeline = pipeline_from_folder(artifacts(run))
    results = evaluate(pipeline, seed=run.config.seed + 100, n=run.config.eval_scenes,
                       folder=run.path("eval"))
    print(format_table(results))
    return {"results": results}


def step_install(run: Run) -> dict:
    from imagebind_llm.presets import TOYWORLD_DIR, write_manifest

    TOYWORLD_DIR.mkdir(parents=True, exist_ok=True)
    for name, source in artifacts(run).items():
        target = TOYWORLD_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    manifest = write_manifest(TOYWORLD_DIR, report={k: v for k, v in run.report["steps"].items()
                                                    if k != "install"})
    return {"files": len(manifest["files"]), "bytes": sum(f["bytes"] for f in manifest["files"].values())}


STEP_FUNCTIONS = {"world": step_world, "vision": step_vision, "bind": step_bind, "tokenizer": step_tokenizer,
                  "llama": step_llama, "pretrain": step_pretrain, "finetune": step_finetune, "cache": step_cache,
                  "evaluate": step_evaluate, "install": step_install}


def _with_setting(config: ToyWorldConfig, item: str) -> ToyWorldConfig:
    """``config`` with one ``KEY=VALUE`` of ``--set`` applied, read like ``python -m train``'s
    overrides (``true``/``false``, ``1e-3``, ``null``), as the field's type."""
    import typing

    from .config import ConfigError, read_setting

    key, _, text = item.partition("=")
    types = typing.get_type_hints(ToyWorldConfig)
    if key not in types:
        raise ConfigError(f"no setting named {key!r} (known: {', '.join(types)})")
    return replace(config, **{key: read_setting(key, text, types[key])})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.toyworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/toyworld",
                        help="run folder: every step's output, kept so that a rerun resumes (default runs/toyworld)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the training (default 0)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every step")
    parser.add_argument("--install", action="store_true", help="copy the result into the package as the default")
    parser.add_argument("--force", action="append", default=[], choices=STEPS, help="redo a finished step")
    parser.add_argument("--until", choices=STEPS, help="stop after this step")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a setting of ToyWorldConfig")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = ToyWorldConfig.quick(args.out) if args.quick else ToyWorldConfig(out=args.out)
    config = replace(config, seed=args.seed)
    for item in args.set:
        try:
            config = _with_setting(config, item)
        except ValueError as error:
            parser.error(f"--set {item}: {error}")
    try:
        precision = training_precision(config)
    except ValueError as error:
        parser.error(str(error))
    if config.threads:
        torch.set_num_threads(config.threads)
    logging.basicConfig(level=logging.WARNING)
    run = Run(config)
    run.report["training_precision"] = precision  # what precision=auto chose on this machine
    print(f"training precision: {precision}", flush=True)
    started = time.perf_counter()
    for step in STEPS:
        if step == "install" and not args.install:
            break
        if run.done(step) and step not in args.force:
            print(f"[{step}] done earlier, skipped")
            continue
        print(f"[{step}] ...", flush=True)
        t = time.perf_counter()
        details = STEP_FUNCTIONS[step](run)
        run.finish(step, time.perf_counter() - t, **details)
        print(f"[{step}] {time.perf_counter() - t:.0f} s", flush=True)
        if step == args.until:
            break
    total = time.perf_counter() - started
    run.report["total_seconds"] = round(total, 1)
    run.report_path.write_text(json.dumps(run.report, indent=2, default=str))
    print(f"finished in {total / 60:.1f} min; report: {run.report_path}")
    return run.report


if __name__ == "__main__":
    main()
