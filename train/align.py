"""Training ImageBind encoders by contrastive alignment, the way ImageBind was made.

ImageBind starts from an image-text model and binds every other modality to *images* only:
no modality but images is ever paired with text, and text reaches the other modalities
through the shared image space ("emergent" alignment). This module reproduces that recipe
for models trained from scratch (the toy world's small ImageBind):

1. :func:`align` with an ``image <-> text`` task (and, optionally, ``video <-> image``: video
   runs the same vision encoder, so its clips are tied to the stills of the same scene),
   training the vision and text encoders together;
2. :func:`align` with ``<modality> <-> image`` tasks whose image side is a *fixed* table of
   embeddings of the now-frozen vision encoder: each modality encoder learns to land where
   the images of its scene are.

The loss is the symmetric InfoNCE of CLIP with a learnable temperature. Items that describe
the same thing (``groups``: e.g. identical captions) are all positives of each other, instead
of being pushed apart as false negatives. A task may also contrast each item with a fixed set
of text prompts (:class:`PromptContrast`, CLIP's zero-shot classifier used as a loss).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import autocast_context
from .optim import adamw

log = logging.getLogger(__name__)

Encode = Callable[[torch.Tensor], torch.Tensor]


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
             positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive loss of two batches of embeddings (B, D) paired row by row.
    ``positives`` (B, B) bool marks every (a_i, b_j) that belong together (the diagonal must
    be set); by default only the diagonal."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = logit_scale.exp().clamp(max=100) * a @ b.t()
    if positives is None:
        target = torch.arange(len(a), device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    positives = positives.float()
    rows = positives / positives.sum(dim=1, keepdim=True)
    columns = positives.t() / positives.t().sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-rows * logits.log_softmax(dim=1), dim=1).mean()
                  + torch.sum(-columns * logits.t().log_softmax(dim=1), dim=1).mean())


class PromptContrast:
    """Each item contrasted with a fixed set of text prompts, in groups of ``group_size``
    alternatives (e.g. "Ball.", "Cube.", ... "Cylinder." for shape): a softmax over each group,
    the prompt that describes the item as the positive. These are the hardest negatives a
    caption can have, a description that differs from the right one in a single word, which
    a random batch of 32 captions almost never holds (and a small model learns a fine
    attribute like a count slowly without them).

    ``labels[i, g]``: which prompt of group ``g`` describes item ``i`` of the task's inputs.
    ``encode`` is trained only if its parameters are among the task's ``parameters``.
    """

    def __init__(self, prompts: torch.Tensor, encode: Encode, labels: torch.Tensor, group_size: int,
                 weight: float = 1.0):
        if len(prompts) != labels.shape[1] * group_size:
            raise ValueError(f"{len(prompts)} prompts for {labels.shape[1]} groups of {group_size}")
        self.prompts, self.encode, self.labels = prompts, encode, labels
        self.group_size, self.weight = group_size, weight
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, index: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        prompts = F.normalize(self.encode(self.prompts).float(), dim=-1)
        prompts = prompts.view(self.labels.shape[1], self.group_size, -1)
        items = F.normalize(embeddings.float(), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * torch.einsum("bd,gkd->bgk", items, prompts)
        return F.cross_entropy(logits.reshape(-1, self.group_size), self.labels[index].reshape(-1))


@dataclass
class Task:
    """One pairing: ``inputs_a[i]`` goes with ``inputs_b[i]``.

    ``encode_a``/``encode_b`` turn a batch of inputs into embeddings; a side whose encoder is
    frozen may be given as precomputed embeddings with ``encode_b=None``. ``parameters``:
    what this task trains (besides its temperature). Positives beyond the pair itself: items
    of the same ``groups`` value, or ``positives(index) -> (B, B) bool`` for anything else.
    ``inputs_a``/``inputs_b`` may be anything indexable by a tensor of indices. ``every``: the
    task takes part in one step out of ``every`` (a costly, secondary pairing).
    ``prompts``: an extra :class:`PromptContrast` on side a's embeddings.
    """

    name: str
    encode_a: Encode
    inputs_a: torch.Tensor
    inputs_b: torch.Tensor
    encode_b: Encode | None
    parameters: Sequence[nn.Parameter]
    groups: torch.Tensor | None = None
    positives: Callable[[torch.Tensor], torch.Tensor] | None = None
    batch_size: int = 64
    weight: float = 1.0
    every: int = 1
    prompts: PromptContrast | None = None

    def __post_init__(self) -> None:
        if len(self.inputs_a) != len(self.inputs_b):
            raise ValueError(f"task {self.name}: {len(self.inputs_a)} vs {len(self.inputs_b)} items")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


@dataclass
class AlignConfig:
    steps: int = 1000
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    seed: int = 0
    log_every: int = 50
    autocast: torch.dtype | None = None  # e.g. torch.bfloat16: encoders run under CPU autocast


def align(tasks: Sequence[Task], config: AlignConfig, progress: bool = True,
          transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> list[dict]:
    """Train every task together for ``config.steps`` steps (AdamW, warm-up + cosine); each step
    draws one batch per task and sums the weighted losses. ``transform(task_name, batch)`` may
    turn stored inputs (e.g. float16) into model inputs. Returns the logged history."""
    generator = torch.Generator().manual_seed(config.seed)
    params, seen = [], set()
    for task in tasks:
        extra = [task.prompts.logit_scale] if task.prompts is not None else []
        for p in list(task.parameters) + [task.logit_scale] + extra:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = adamw([{"params": decay, "weight_decay": config.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    schedule = lambda step: min(1.0, (step + 1) / max(1, config.warmup_steps)) * 0.5 * (  # noqa: E731
        1 + math.cos(math.pi * min(1.0, step / max(1, config.steps))))
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="align " + ",".join(t.name for t in tasks), leave=False)
    autocast = autocast_context(params[0].device.type, config.autocast)
    started = time.perf_counter()
    latest = {}  # each task's last loss (a task with every > 1 skips steps)
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule(step)
        losses = {}
        total = 0.0
        for task in tasks:
            if step % task.every:
                continue
            index = torch.randint(len(task.inputs_a), (min(task.batch_size, len(task.inputs_a)),), generator=generator)
            a = task.inputs_a[index]
            b = task.inputs_b[index]
            if transform is not None:
                a = transform(task.name + ":a", a)
                b = transform(task.name + ":b", b)
            positives = None
            if task.positives is not None:
                positives = task.positives(index)
            elif task.groups is not None:
                positives = task.groups[index][:, None] == task.groups[index][None, :]
            with autocast:
                embedding_b = b if task.encode_b is None else task.encode_b(b)
                embedding_a = task.encode_a(a)
            loss = info_nce(embedding_a, embedding_b, task.logit_scale, positives)  # in float32, as the prompts' loss
            total = total + task.weight * loss
            losses[task.name] = loss.item()
            if task.prompts is not None:
                loss = task.prompts.loss(index, embedding_a)
                total = total + task.prompts.weight * loss
                losses[task.name + " prompts"] = loss.item()
        latest.update(losses)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in latest.items()})
        if step % config.log_every == 0 or step == config.steps - 1:
            record = {"step": step, "seconds": round(time.perf_counter() - started, 1), **latest}
            history.append(record)
            log.info("align %s", record)
    if bar is not None:
        bar.close()
    return history


@torch.no_grad()
def embed_all(encode: Encode, inputs: torch.Tensor, batch_size: int = 128,
              transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Unit embeddings (N, D) of stored inputs, in batches (for the frozen image targets)."""
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        if transform is not None:
            batch = transform(batch)
        out.append(F.normalize(encode(batch).float(), dim=-1))
    return torch.cat(out)
