"""The training loop: optimizer groups, schedule, accumulation, precision, evaluation, logging,
checkpoints and export (reference.md 5.4-5.6).

One optimizer step = ``accum_iter`` micro-batches on every process. The loss of a step is, by
default, the mean over every answer token of the *global* batch: each micro-batch contributes
its summed cross-entropy divided by the global token count (known before the first backward),
so one process with batch 4 and two with batch 2 compute the same loss and gradients
(``optim.loss_reduction: official`` gives the official mean of per-micro-batch means instead).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagebind_llm.fusion import fuse
from imagebind_llm.model import IGNORE_INDEX
from imagebind_llm.preprocess import PreprocessOptions

from . import distributed as D
from .checkpointing import (
    export_adapter,
    find_resume,
    load_checkpoint,
    load_optimizer_state,
    restore_trainables,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, RunConfig
from .data import (
    OFFICIAL_IGNORE,
    Batch,
    BatchPlan,
    Collate,
    DataReport,
    ExampleDataset,
    Problem,
    StepSampler,
    check_media,
    eval_batches,
    read_records,
    split_eval,
)
from .features import FeatureStore, encode_items, precompute
from .modeling import TrainModule, build, loss_sums, parameter_report, unused_trainables
from .optim import adamw

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------


def optimizer_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """The official ``add_weight_decay``: 1-D tensors and ``.bias`` get no weight decay."""
    decay, no_decay = [], []
    for name, param in named:
        (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then half a cosine down to
    ``min_lr`` at ``total`` steps: the official per-iteration schedule in fractional epochs,
    expressed in optimizer steps."""

    base_lr: float
    min_lr: float
    warmup: float
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * step / self.warmup
        span = self.total - self.warmup
        progress = (step - self.warmup) / span if span > 0 else 1.0
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_schedule(config: RunConfig, steps_per_epoch: int, world: int) -> Schedule:
    o = config.optim
    effective = o.batch_size * o.accum_iter * world
    base = o.lr if o.lr is not None else o.blr * effective / 256
    total = o.max_steps if o.max_steps is not None else o.epochs * steps_per_epoch
    warmup = o.warmup_steps if o.warmup_steps is not None else o.warmup_epochs * steps_per_epoch
    return Schedule(base, o.min_lr, min(float(warmup), float(total)), total)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class Metrics:
    """JSON lines (``metrics.jsonl``) and TensorBoard scalars, written by the main process."""

    def __init__(self, directory: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = directory / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(directory / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard): metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any], prefix: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    config: RunConfig
    info: D.DistInfo
    precision: D.Precision
    wrapped: torch.nn.Module
    encoder: Any
    feature_dim: int
    ignore_index: int
    scaler: Any


def batch_features(batch: Batch, ctx: Context) -> torch.Tensor:
    """Fused ImageBind features (B, D) of a batch: precomputed ones, or the frozen encoder on
    the raw media, mixed per example (``data.fusion``; official: ``forward_visual``, cache off)."""
    device = ctx.info.device
    if batch.features is not None:
        return batch.features.to(device)
    features = torch.zeros(len(batch.tokens), ctx.feature_dim)
    items, owners = [], []
    for row, media in enumerate(batch.media):
        for kind, tensor, weight in media:
            items.append((kind, tensor))
            owners.append((row, weight))
    if items:
        with D.autocast(device, ctx.precision):
            unit = encode_items(ctx.encoder, items, ctx.config.data.feature_batch_size).float().cpu()
        for row in sorted({r for r, _ in owners}):
            picks = [i for i, (r, _) in enumerate(owners) if r == row]
            features[row] = fuse(unit[picks], [owners[i][1] for i in picks], mode=ctx.config.data.fusion)
    return features.to(device)


def forward_loss(module: torch.nn.Module, batch: Batch, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    device = ctx.info.device
    features = batch_features(batch, ctx)
    with D.autocast(device, ctx.precision):
        logits = module(batch.tokens.to(device), features, batch.visual.to(device))
    return loss_sums(logits, batch.labels.to(device), ctx.ignore_index)


def train_step(micro: list[Batch], ctx: Context, optimizer, trainables: list[torch.nn.Parameter]) -> dict:
    """Forward/backward of every micro-batch, then one optimizer step. Returns the global
    loss, sample and token counts and the gradient norm."""
    info, reduction = ctx.info, ctx.config.optim.loss_reduction
    counts = [mb.targets(ctx.ignore_index) for mb in micro]
    global_tokens = float(D.all_reduce_sum(torch.tensor([float(sum(counts))], dtype=torch.float64), info)[0])
    ce_total = torch.zeros((), dtype=torch.float64)
    mean_total = torch.zeros((), dtype=torch.float64)
    for k, mb in enumerate(micro):
        with D.gradient_sync(ctx.wrapped, k == len(micro) - 1):
            ce, count = forward_loss(ctx.wrapped, mb, ctx)
            if reduction == "tokens":
                loss = ce * info.world / max(global_tokens, 1.0)
            else:
                loss = ce / count.clamp(min=1) / len(micro)
            (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
        ce_total += ce.detach().double().cpu()
        mean_total += (ce.detach() / count.clamp(min=1)).double().cpu() / len(micro)
    if ctx.scaler is not None:
        ctx.scaler.unscale_(optimizer)
    with_grad = [p for p in trainables if p.grad is not None]
    clip = ctx.config.optim.clip_grad
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(with_grad, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad]) if with_grad else torch.zeros(())
    norm = float(D.full_tensor(norm))
    if ctx.scaler is not None:
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sums = D.all_reduce_sum(torch.stack([ce_total, mean_total, torch.tensor(float(sum(mb.good for mb in micro)),
                                                                            dtype=torch.float64)]), info)
    loss = float(sums[0]) / max(global_tokens, 1.0) if reduction == "tokens" else float(sums[1]) / info.world
    return {"loss": loss, "samples": int(sums[2]), "tokens": int(global_tokens), "grad_norm": norm}


@torch.no_grad()
def evaluate(loader, ctx: Context) -> float | None:
    """Token-mean loss over the held-out set (every process takes its share)."""
    module = D.unwrap(ctx.wrapped) if ctx.config.strategy != "fsdp" else ctx.wrapped
    module.eval()
    sums = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        ce, count = forward_loss(module, batch, ctx)
        sums += torch.tensor([float(ce), float(count)], dtype=torch.float64)
    module.train()
    sums = D.all_reduce_sum(sums, ctx.info)
    return float(sums[0] / sums[1]) if sums[1] > 0 else None


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _loader(dataset, batch_sampler, collate, config: RunConfig, info: D.DistInfo):
    workers = config.data.num_workers
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=workers,
                                       pin_memory=info.device.type == "cuda", persistent_workers=False)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


#: Settings that do not change what is learnt (not reported when a resumed run changes them).
_BOOKKEEPING = {"resume", "out_dir", "log_interval", "eval_interval", "save_interval", "keep_checkpoints",
                "progress", "tensorboard", "optim.max_steps", "data.num_workers"}


def run(config: RunConfig, info: D.DistInfo, *, precompute_only: bool = False, export_only: bool = False) -> dict:
    """Train (or only precompute features, or only export a checkpoint) as ``config`` says."""
    if not config.data.train:
        again = (" (--export-only rebuilds the run that wrote the checkpoint: give its configuration and data "
                 "again)") if export_only else ""
        raise ConfigError("no training data: list the caption or conversation files in data.train, e.g. "
                          f"data.train=[captions.csv] (train/README.md, section Data){again}")
    out = config.output_dir
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(info)
    precision = D.choose_precision(config.precision, config.model.frozen_dtype, info.device, config.strategy)
    torch.manual_seed(config.seed)
    data = config.data
    use_features = data.features is not None and not precompute_only
    comps = build(config, need_encoder=not use_features, device=info.device, frozen_dtype=precision.frozen_dtype,
                  encoder_dtype=precision.autocast_dtype if info.device.type == "cuda" else torch.float32)
    model, tokenizer = comps.model, comps.tokenizer
    options = PreprocessOptions(mode=data.preprocess_mode)
    report = DataReport(strict=data.strict, log_first=20 if info.is_main else 0)
    train_records = read_records(data.train, data, report)
    eval_records = read_records(data.eval, data, report) if data.eval else []
    if not data.eval:
        train_records, eval_records = split_eval(train_records, data.eval_fraction, config.seed)

    if precompute_only:
        if data.features is None:
            raise ConfigError("--precompute needs data.features (the folder to write)")
        preset = config.model.preset
        manifest = {"imagebind": config.model.imagebind or preset,
                    "imagebind_config": config.model.imagebind_config if preset is None else preset,
                    "preprocess_mode": data.preprocess_mode}
        counts = precompute(train_records + eval_records, data.features, comps.encoder, options, manifest=manifest,
                            batch_size=data.feature_batch_size, shard_size=data.feature_shard_size, rank=info.rank,
                            world=info.world, strict=data.strict, progress=config.progress and info.is_main,
                            barrier=lambda: D.barrier(info))
        totals = D.all_reduce_sum(torch.tensor([counts["computed"], counts["failed"]], dtype=torch.float64), info)
        summary = {"precompute": {"total": counts["total"], "done_before": counts["done_before"],
                                  "computed": int(totals[0]), "failed": int(totals[1])},
                   "bad_data": report.counts(), "features": str(data.features)}
        log.info("precompute: %s", summary["precompute"])
        return summary

    store = None
    if use_features:
        store = FeatureStore(data.features)
        if store.dim != comps.imagebind_config.embed_dim:
            raise ConfigError(f"{data.features} holds features of width {store.dim}, the model takes "
                             f"{comps.imagebind_config.embed_dim}")
        missing = store.missing(train_records + eval_records)
        if missing:
            raise ConfigError(f"{len(missing)} media items have no precomputed feature in {data.features} (e.g. "
                             f"{missing[0].value}): run the same command with --precompute first")

        def usable(records):
            kept = []
            for record in records:
                failed = next((ref for ref in record.media if store.failure(ref) is not None), None)
                if failed is None:
                    kept.append(record)
                else:
                    report.add(Problem(record.file, record.where, f"media failed during precompute: "
                                       f"{store.failure(failed)}", "corrupt_media", failed.value))
            return kept

        train_records, eval_records = usable(train_records), usable(eval_records)
    else:
        train_records = check_media(train_records, data.check_media, options, report)
        eval_records = check_media(eval_records, data.check_media, options, report)
    log.info("data: %d training and %d held-out examples; %s", len(train_records), len(eval_records), report.summary())

    ignore = OFFICIAL_IGNORE if data.label_format == "official" else IGNORE_INDEX
    feature_dim = comps.imagebind_config.embed_dim
    dataset = ExampleDataset(train_records, tokenizer, data, config.seed, options, store)
    eval_dataset = ExampleDataset(eval_records, tokenizer, data, config.seed, options, store, augment=False)
    collate = Collate(data.max_words, ignore, feature_dim if store is not None else None)
    o = config.optim
    try:
        plan = BatchPlan(len(train_records), o.batch_size, o.accum_iter, info.world, info.rank, config.seed,
                         data.split_epoch)
    except ValueError as error:  # too few examples: say which settings decide it
        held = (f"; {len(eval_records)} more {'is' if len(eval_records) == 1 else 'are'} held out for evaluation "
                f"(data.eval_fraction={data.eval_fraction}; 0 trains on all)") if eval_records and not data.eval else ""
        raise ConfigError(f"{error}. Lower optim.batch_size or optim.accum_iter, or add examples{held}") from None
    schedule = make_schedule(config, plan.steps_per_epoch, info.world)

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if info.is_main:
        for line in parameter_report(model, comps.encoder, names):
            log.info(line)
    unused = unused_trainables(model, names)
    module = TrainModule(model)
    wrapped = D.wrap(module, info, config.strategy, precision, find_unused=bool(unused))
    params = dict(module.model.named_parameters())
    trainables = [params[n] for n in names]
    groups = optimizer_groups([(n, params[n]) for n in names], o.weight_decay)
    optimizer = adamw(groups, lr=schedule.base_lr, betas=(o.beta1, o.beta2))
    scaler = D.grad_scaler(info.device, precision)
    ctx = Context(config, info, precision, wrapped, comps.encoder, feature_dim, ignore, scaler)
    log.info("stage %s: %d processes (%s, %s), device %s, precision %s; global batch %d (%d x %d micro-steps x %d), "
             "%d steps per epoch, %d steps, lr %.3g (warm-up %.1f steps)", config.stage, info.world, config.strategy,
             info.backend or "single", info.device, precision.name, plan.global_batch, o.batch_size, o.accum_iter,
             info.world, plan.steps_per_epoch, schedule.total, schedule.base_lr, schedule.warmup)

    step = 0
    earlier_problems: list[dict] = []
    resume = find_resume(config.resume, out)
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        progress = checkpoint["progress"]
        if (progress["global_batch"], progress["n_train"]) != (plan.global_batch, len(train_records)):
            raise ConfigError(f"{resume} was made with a global batch of {progress['global_batch']} over "
                             f"{progress['n_train']} examples; this run has {plan.global_batch} over "
                             f"{len(train_records)}: keep batch_size x accum_iter x processes and the data")
        now = _flat(config.to_dict())
        changed = {k: (v, now.get(k)) for k, v in _flat(checkpoint["config"]).items()
                   if now.get(k) != v and k not in _BOOKKEEPING}
        if changed:
            log.warning("resuming with settings that differ from the checkpoint's: %s", changed)
        restore_trainables({n: params[n] for n in names}, checkpoint["trainable"])
        load_optimizer_state(optimizer, checkpoint["optimizer"], {n: params[n] for n in names})
        if scaler is not None and checkpoint["scaler"] is not None:
            scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint["world"] == info.world:
            set_rng_state(checkpoint["rng"][info.rank])
        step = checkpoint["step"]
        earlier_problems = checkpoint.get("problems", [])
        log.info("resumed from %s at step %d", resume, step)

    metrics = Metrics(out, info.is_main, config.tensorboard)
    eval_loader = _loader(eval_dataset, eval_batches(len(eval_records), o.batch_size, info.world, info.rank),
                          collate, config, info) if eval_records else None
    runtime = DataReport(strict=data.strict, log_first=20)
    losses: list[float] = []
    eval_loss = None
    truncated = 0
    last_checkpoint = None

    def save(at: int) -> Path | None:
        progress = {"step": at, "epoch": at // plan.steps_per_epoch, "step_in_epoch": at % plan.steps_per_epoch,
                    "steps_per_epoch": plan.steps_per_epoch, "global_batch": plan.global_batch,
                    "n_train": len(train_records)}
        problems = earlier_problems + [p.to_dict() for ranks in D.all_gather_objects(runtime.problems, info)
                                       for p in ranks]
        return save_checkpoint(out, info, step=at, params=params, names=names, optimizer=optimizer, scaler=scaler,
                               progress=progress, config=config.to_dict(), model_config=model.config,
                               problems=problems, keep=config.keep_checkpoints)

    from tqdm import tqdm

    bar = tqdm(total=schedule.total, initial=step, desc=config.stage, unit="step", dynamic_ncols=True,
               disable=export_only or not (config.progress and info.is_main))
    started = time.perf_counter()
    while step < schedule.total and not export_only:
        epoch, in_epoch = divmod(step, plan.steps_per_epoch)
        iterator = iter(_loader(dataset, StepSampler(plan, epoch, in_epoch), collate, config, info))
        for _ in range(in_epoch, plan.steps_per_epoch):
            if step >= schedule.total:
                break
            tick = time.perf_counter()
            micro = [next(iterator) for _ in range(o.accum_iter)]
            for mb in micro:
                runtime.extend(mb.problems)
                truncated += mb.truncated
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            stats = train_step(micro, ctx, optimizer, trainables)
            step += 1
            seconds = time.perf_counter() - tick
            losses.append(stats["loss"])
            record = {"split": "train", "step": step, "epoch": step / plan.steps_per_epoch, "loss": stats["loss"],
                      "lr": lr, "grad_norm": stats["grad_norm"], "samples": stats["samples"],
                      "samples_per_s": stats["samples"] / seconds, "tokens_per_s": stats["tokens"] / seconds}
            metrics.write(record, "train")
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}", samples_s=f"{record['samples_per_s']:.1f}")
            if config.log_interval and (step % config.log_interval == 0 or step == 1):
                log.info("step %d/%d epoch %.2f loss %.4f lr %.3e grad norm %.3g %.1f samples/s", step,
                         schedule.total, record["epoch"], stats["loss"], lr, stats["grad_norm"],
                         record["samples_per_s"])
            if eval_loader is not None and config.eval_interval and step % config.eval_interval == 0:
                eval_loss = evaluate(eval_loader, ctx)
                metrics.write({"split": "eval", "step": step, "loss": eval_loss}, "eval")
                log.info("step %d: held-out loss %s", step, f"{eval_loss:.4f}" if eval_loss is not None else "n/a")
            if config.save_interval and step % config.save_interval == 0 and step < schedule.total:
                last_checkpoint = save(step)
    bar.close()
    elapsed = time.perf_counter() - started

    if eval_loader is not None and not (config.eval_interval and step % config.eval_interval == 0 and losses):
        eval_loss = evaluate(eval_loader, ctx)
        metrics.write({"split": "eval", "step": step, "loss": eval_loss}, "eval")
        log.info("held-out loss %s", f"{eval_loss:.4f}" if eval_loss is not None else "n/a (no answer tokens)")
    if not export_only:
        last_checkpoint = save(step)
    training = {"stage": config.stage, "step": step, "loss": losses[-1] if losses else None, "eval_loss": eval_loss,
                "data": {"train": data.train, "eval": data.eval}, "run_config": config.to_dict()}
    exports = export_adapter(module.model, out / "export", info, model.config, training)
    problems = earlier_problems + [p.to_dict() for ranks in D.all_gather_objects(runtime.problems, info)
                                   for p in ranks]
    problems = [p.to_dict() for p in report.problems] + problems
    counts: dict[str, int] = {}
    for p in problems:
        counts[p["category"]] = counts.get(p["category"], 0) + 1
    truncated = int(D.all_reduce_sum(torch.tensor([float(truncated)], dtype=torch.float64), info)[0])
    summary = {"stage": config.stage, "steps": step, "losses": losses, "eval_loss": eval_loss,
               "elapsed_s": elapsed, "trainable_parameters": sum(params[n].numel() for n in names),
               "trainable_tensors": len(names),
               "examples": {"train": len(train_records), "held_out": len(eval_records)},
               "bad_data": counts, "truncated_examples": truncated,
               "checkpoint": str(last_checkpoint) if last_checkpoint else None,
               "exports": {k: str(v) for k, v in exports.items()}, "out_dir": str(out),
               "world": info.world, "strategy": config.strategy, "precision": precision.name}
    if info.is_main:
        with open(out / "bad_data.jsonl", "w") as f:
            f.write("".join(json.dumps(p) + "\n" for p in problems))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if problems:
            log.warning("bad data: %d records skipped (%s); listed in %s", len(problems), counts,
                        out / "bad_data.jsonl")
        log.info("done: %d steps in %.1f s; exports in %s", step, elapsed, out / "export")
    metrics.close()
    return summary
