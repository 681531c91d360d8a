"""Training data: the official file formats, the official tokens/labels (with two bugs fixed),
media loading, bad-data accounting and the world-size-independent batch order.

Formats (reference.md 5.1):

* **captions** (``.csv``/``.tsv``, pre-training): tab-separated, a header with ``url`` (a local
  media path) and ``caption``; an optional ``kind`` column names the modality (default: guessed
  from the file name, so audio or point clouds work as well as images).
* **conversations** (``.json``: a list; ``.jsonl``: one record per line, fine-tuning): LLaVA
  records ``{"image": path, "conversations": [{"from": "human", "value": q}, {"from": "gpt",
  "value": a}, ...]}`` and Alpaca records ``{"instruction", "input", "output"}`` (no media).
  Any record may name media of any kind under the kind's name (``"audio": "x.wav"``,
  ``"point": "chair.npy"``, ``"text": "a sentence"``) or as ``"media": [path, {"kind": ...,
  "path": ..., "weight": ...}]``; several media are mixed like the official ``forward_visual``.

Tokens and labels (reference.md 5.2), per example: ``p = format_prompt(instruction, input)``;
``ids = encode(p + answer, bos, eos)`` padded (or cut) to ``max_words``; the labels copy the
answer part (positions from ``len(encode(p, bos))`` on). Fixes, each documented in README:

1. Alpaca instructions are strings (the official code stores a 1-tuple and prints ``('...',)``
   into the prompt).
2. Ignored label positions (prompt, padding) are ``IGNORE_INDEX`` (-100) instead of 0, which is
   also ``<unk>``: a real ``<unk>`` in an answer is learnt. ``label_format: official`` gives the
   bit-exact official tensors (the golden parity test uses it).

Batches: the rows of a batch are padded only to its longest example (the official pads every
row to ``max_words``; positions after an example's end are ignored and, under the causal
mask, change nothing before them).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagebind_llm.model import IGNORE_INDEX
from imagebind_llm.preprocess import KINDS, PreprocessOptions, guess_kind
from imagebind_llm.prompts import Turn, chat_prompt

from .config import ConfigError, DataConfig, MissingFileError

log = logging.getLogger(__name__)

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
CAPTION_SUFFIXES = (".csv", ".tsv")
CONVERSATION_SUFFIXES = (".json", ".jsonl")
OFFICIAL_IGNORE = 0
#: The official training transform of images (reference.md 5.3): RandomResizedCrop scale/ratio.
CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


# ---------------------------------------------------------------------------------------------
# Records and problems
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaRef:
    """One media item of an example: its kind, its resolved path (or, for ``text``, the text)
    and its weight in the mix."""

    kind: str
    value: str
    weight: float = 1.0

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def is_file(self) -> bool:
        return self.kind != "text"


@dataclass(frozen=True)
class Record:
    """One example: where it comes from, its (question, input, answer) turns and its media."""

    file: str
    where: str  # "line 12" (CSV, JSONL) or "record 11" (JSON list, 0-based)
    turns: tuple[tuple[str, str | None, str], ...]
    media: tuple[MediaRef, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.file} {self.where}"


@dataclass(frozen=True)
class Problem:
    """A bad record or media item: the file, the row, what is wrong, the media file if any."""

    file: str
    where: str
    reason: str
    category: str = "malformed"
    media: str | None = None

    def __str__(self) -> str:
        extra = f" [{self.media}]" if self.media else ""
        return f"{self.file} {self.where}: {self.reason}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "where": self.where, "category": self.category, "reason": self.reason,
                "media": self.media}


class BadDataError(RuntimeError):
    """Raised at the first bad record when ``data.strict`` is on."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(f"bad training data (data.strict is on): {problem}")


class DataReport:
    """Counts bad records by category and keeps them (for the log and ``bad_data.jsonl``)."""

    def __init__(self, strict: bool = False, log_first: int = 20):
        self.strict = strict
        self.log_first = log_first
        self.problems: list[Problem] = []

    def add(self, problem: Problem) -> None:
        if self.strict:
            raise BadDataError(problem)
        if len(self.problems) < self.log_first:
            log.warning("skipped: %s", problem)
        elif len(self.problems) == self.log_first:
            log.warning("more bad records follow; all are listed in bad_data.jsonl at the end")
        self.problems.append(problem)

    def extend(self, problems: Sequence[Problem]) -> None:
        for problem in problems:
            self.add(problem)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for problem in self.problems:
            out[problem.category] = out.get(problem.category, 0) + 1
        return out

    def summary(self) -> str:
        counts = self.counts()
        if not counts:
            return "no bad records"
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return f"{len(self.problems)} bad records skipped ({listed})"


# ---------------------------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------------------------


class _Malformed(Exception):
    def __init__(self, reason: str, category: str = "malformed", media: str | None = None):
        super().__init__(reason)
        self.reason, self.category, self.media = reason, category, media


def _media_ref(value: Any, kind: str | None, base: Path, weight: Any = 1.0) -> MediaRef:
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise _Malformed("a text input must be a non-empty string")
        return MediaRef("text", value, float(weight))
    if not isinstance(value, str) or not value.strip():
        raise _Malformed(f"a media path must be a non-empty string, got {value!r}")
    if kind is None:
        kind = guess_kind(value)
        if kind is None:
            raise _Malformed(f"cannot tell the kind of media from the name {value!r} (add a kind)", media=value)
    if kind not in KINDS:
        raise _Malformed(f"unknown media kind {kind!r}; known: {', '.join(KINDS)}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise _Malformed(f"a media weight must be a positive number, got {weight!r}")
    path = Path(value)
    return MediaRef(kind, os.path.abspath(path if path.is_absolute() else base / path), float(weight))


def _record_media(record: dict, base: Path) -> tuple[MediaRef, ...]:
    media = []
    for kind in KINDS:
        if kind in record and record[kind] is not None:
            values = record[kind] if isinstance(record[kind], list) else [record[kind]]
            media += [_media_ref(v, kind, base) for v in values]
    extra = record.get("media")
    if extra is not None:
        if not isinstance(extra, list):
            extra = [extra]
        for item in extra:
            if isinstance(item, str):
                media.append(_media_ref(item, None, base))
            elif isinstance(item, dict):
                value = item.get("text") if item.get("kind") == "text" else item.get("path", item.get("text"))
                kind = item.get("kind") or ("text" if "text" in item and "path" not in item else None)
                media.append(_media_ref(value, kind, base, item.get("weight", 1.0)))
            else:
                raise _Malformed(f"a 'media' entry must be a path or an object, got {type(item).__name__}")
    return tuple(media)


_MARKER = re.compile(r"\n?<image>\n?")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Malformed(f"{what} is empty")
    return value


def _turns_of(record: dict, multi_turn: bool, strip_markers: bool) -> tuple[tuple[str, str | None, str], ...]:
    if "conversations" in record:
        conversation = record["conversations"]
        if not isinstance(conversation, list) or len(conversation) < 2:
            raise _Malformed("'conversations' must be a list of at least one question and one answer")
        turns = []
        for i in range(0, len(conversation) - 1, 2):
            question, answer = conversation[i], conversation[i + 1]
            if not isinstance(question, dict) or not isinstance(answer, dict):
                raise _Malformed(f"conversation message {i} is not an object with 'from' and 'value'")
            if question.get("from") not in HUMAN_ROLES or answer.get("from") not in ASSISTANT_ROLES:
                # The official code takes messages 0 and 1 whoever speaks: a swapped pair would
                # train the model to ask questions. Refuse it instead.
                raise _Malformed(f"conversation messages {i}/{i + 1} are from {question.get('from')!r}/"
                                 f"{answer.get('from')!r}; expected {HUMAN_ROLES[0]!r} then {ASSISTANT_ROLES[0]!r}")
            q = _text(question.get("value"), f"conversation message {i}")
            if strip_markers:
                q = _MARKER.sub("\n", q).strip()
            turns.append((q, None, _text(answer.get("value"), f"conversation message {i + 1}")))
            if not multi_turn:
                break
        return tuple(turns)
    if "instruction" in record and "output" in record:
        instruction = _text(record["instruction"], "'instruction'")
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise _Malformed(f"'input' must be a string, got {type(extra).__name__}")
        return ((instruction, extra or None, _text(record["output"], "'output'")),)
    raise _Malformed("neither 'conversations' (LLaVA) nor 'instruction' and 'output' (Alpaca)")


def read_caption_file(path: Path, media_root: Path | None, instruction: str, report: DataReport) -> list[Record]:
    """The official pre-training CSV (tab-separated, columns ``url`` and ``caption``)."""
    base = media_root or path.parent
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise ConfigError(f"{path}: the file is empty (a header with url and caption is expected)")
        columns = {name.strip(): i for i, name in enumerate(header)}
        if "url" not in columns or "caption" not in columns:
            raise ConfigError(f"{path}: the header must name 'url' and 'caption' (tab-separated), got {header}")
        for row in reader:
            where = f"line {reader.line_num}"
            try:
                if len(row) != len(header):
                    raise _Malformed(f"{len(row)} fields, the header has {len(header)} (a tab inside a field?)")
                kind = row[columns["kind"]].strip() or None if "kind" in columns else None
                media = _media_ref(row[columns["url"]].strip(), kind, base)
                caption = _text(row[columns["caption"]], "the caption")
                records.append(Record(str(path), where, ((instruction, None, caption),), (media,)))
            except _Malformed as error:
                report.add(Problem(str(path), where, error.reason, error.category, error.media))
    return records


def read_conversation_file(path: Path, media_root: Path | None, multi_turn: bool, strip_markers: bool,
                           report: DataReport) -> list[Record]:
    """LLaVA/Alpaca records from a JSON list or a JSONL file."""
    base = media_root or path.parent
    items: list[tuple[str, Any]] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                report.add(Problem(str(path), f"line {number}", f"not valid JSON ({error.msg})"))
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(loaded, list):
            raise ConfigError(f"{path}: a JSON list of records is expected")
        items = [(f"record {i}", item) for i, item in enumerate(loaded)]
    records = []
    for where, item in items:
        try:
            if not isinstance(item, dict):
                raise _Malformed(f"a record must be an object, got {type(item).__name__}")
            turns = _turns_of(item, multi_turn, strip_markers)
            records.append(Record(str(path), where, turns, _record_media(item, base)))
        except _Malformed as error:
            report.add(Problem(str(path), where, error.reason, error.category, error.media))
    return records


def read_records(files: Sequence[str], config: DataConfig, report: DataReport) -> list[Record]:
    """Every record of the listed files, in order (the format follows the file extension)."""
    media_root = Path(config.media_root) if config.media_root else None
    records: list[Record] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise MissingFileError(f"data file not found: {path}")
        suffix = path.suffix.lower()
        if suffix in CAPTION_SUFFIXES:
            records += read_caption_file(path, media_root, config.instruction, report)
        elif suffix in CONVERSATION_SUFFIXES:
            records += read_conversation_file(path, media_root, config.multi_turn, config.strip_media_markers, report)
        else:
            known = ", ".join(CAPTION_SUFFIXES + CONVERSATION_SUFFIXES)
            raise ConfigError(f"{path}: unknown data format (expected {known})")
    return records


def check_media(records: list[Record], how: str, options: PreprocessOptions, report: DataReport) -> list[Record]:
    """Drop records whose media are missing (``exists``) or do not decode (``decode``)."""
    if how == "none":
        return records
    kept = []
    for record in records:
        problem = None
        for ref in record.media:
            if not ref.is_file:
                continue
            if not os.path.isfile(ref.value):
                problem = Problem(record.file, record.where, "media file not found", "missing_media", ref.value)
                break
            if how == "decode":
                try:
                    load_media(ref, options)
                except Exception as error:  # noqa: BLE001 - any decoder failure is a bad record
                    problem = Problem(record.file, record.where, f"media cannot be read ({error})", "corrupt_media",
                                      ref.value)
                    break
        if problem is None:
            kept.append(record)
        else:
            report.add(problem)
    return kept


# ---------------------------------------------------------------------------------------------
# Tokens and labels
# ---------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    tokens: torch.Tensor  # (max_words,) int64, padding 0
    labels: torch.Tensor  # (max_words,) int64, ignored positions = ignore_index
    mask: torch.Tensor  # (max_words,) float32, 1 on real tokens (the official example_mask)
    answer_tokens: int  # label positions kept
    truncated: bool  # the example was longer than max_words (its end, maybe EOS, is cut)


class NoAnswerTokens(ValueError):
    pass


def encode_example(tokenizer, turns: Sequence[tuple[str, str | None, str]], max_words: int,
                   label_format: str = "corrected") -> Encoded:
    """The official tokens/labels/mask of one example (reference.md 5.2), extended to several
    turns: every answer is learnt (the last one with EOS), prompts and padding are ignored.
    Each answer's token span is found as the official does: the length of the encoded text up
    to the answer, then up to its end (SentencePiece decides the boundary tokens)."""
    ignore = OFFICIAL_IGNORE if label_format == "official" else IGNORE_INDEX
    chat = [Turn(q, a) for q, _, a in turns]
    context = turns[0][1]
    spans = []
    full = ""
    for k in range(len(turns)):
        prefix = chat_prompt([*chat[:k], Turn(chat[k].question)], context)
        full = prefix + chat[k].answer
        start = len(tokenizer.encode(prefix, bos=True, eos=False))
        end = len(tokenizer.encode(full, bos=True, eos=False))
        spans.append([start, end])
    ids = tokenizer.encode(full, bos=True, eos=True)
    spans[-1][1] = len(ids)  # the last answer ends with EOS
    truncated = len(ids) > max_words
    ids = ids[:max_words]
    tokens = torch.zeros(max_words, dtype=torch.int64)
    tokens[:len(ids)] = torch.tensor(ids, dtype=torch.int64)
    labels = torch.full((max_words,), ignore, dtype=torch.int64)
    for start, end in spans:
        end = min(end, max_words)
        if start < end:
            labels[start:end] = tokens[start:end]
    mask = torch.zeros(max_words, dtype=torch.float32)
    mask[:len(ids)] = 1.0
    answer = int((labels != ignore).sum())
    if answer == 0:
        raise NoAnswerTokens(f"the prompt fills all {max_words} tokens (data.max_words): no answer token is left")
    return Encoded(tokens, labels, mask, answer, truncated)


# ---------------------------------------------------------------------------------------------
# Media
# ---------------------------------------------------------------------------------------------


def random_resized_crop(img, rng: np.random.Generator, size: int, scale=CROP_SCALE, ratio=CROP_RATIO):
    """The official ``RandomResizedCrop(size, scale, ratio, BICUBIC)`` on a PIL image: up to 10
    draws of an area fraction and a log-uniform aspect ratio for a crop that fits, else a centre
    crop at the clamped ratio; then a bicubic resize to size x size."""
    from PIL import Image

    width, height = img.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        box = (left, top, left + w, top + h)
    return img.crop(box).resize((size, size), Image.Resampling.BICUBIC)


def load_media(ref: MediaRef, options: PreprocessOptions, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The encoder input of one media item. Images with ``rng``: the official training crop;
    everything else: the project's loaders (deterministic, like inference)."""
    from imagebind_llm.preprocess import load

    if ref.kind == "image" and rng is not None:
        from imagebind_llm.preprocess.image import image_to_tensor, open_image, prepare_rgb

        image_options = options.for_kind("image")
        img = prepare_rgb(open_image(ref.value, image_options, max_bytes=options.max_bytes), image_options)
        return image_to_tensor(random_resized_crop(img, rng, image_options.size), image_options)
    return load(ref.kind, ref.value, options)


# ---------------------------------------------------------------------------------------------
# Dataset and batches
# ---------------------------------------------------------------------------------------------


DUMMY = -1  # index of a padding item (an eval shard shorter than the others)


@dataclass
class Item:
    index: int
    encoded: Encoded | None = None
    media: list[tuple[str, torch.Tensor, float]] = field(default_factory=list)
    feature: torch.Tensor | None = None  # fused precomputed feature
    problem: Problem | None = None


class ExampleDataset(torch.utils.data.Dataset):
    """Records -> items. A key is ``(index, epoch)``: the epoch seeds the image crop of that
    example, so augmentation does not depend on workers, ranks or resumption."""

    def __init__(self, records: list[Record], tokenizer, config: DataConfig, seed: int,
                 options: PreprocessOptions, features=None, augment: bool | None = None):
        self.records = records
        self.tokenizer = tokenizer
        self.config = config
        self.seed = seed
        self.options = options
        self.features = features
        self.augment = config.augment if augment is None else augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> Item:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if index == DUMMY:
            return Item(DUMMY)
        record = self.records[index]
        try:
            encoded = encode_example(self.tokenizer, record.turns, self.config.max_words, self.config.label_format)
        except NoAnswerTokens as error:
            return Item(index, problem=Problem(record.file, record.where, str(error), "too_long"))
        item = Item(index, encoded)
        if not record.media:
            return item
        if self.features is not None:
            try:
                item.feature = self.features.fused(record.media, self.config.fusion)
            except KeyError as error:
                ref = error.args[0]
                reason = self.features.failure(ref) or "no precomputed feature"
                item.problem = Problem(record.file, record.where, f"media failed during precompute: {reason}",
                                       "corrupt_media", ref.value)
            return item
        rng = np.random.default_rng([self.seed, epoch, index]) if self.augment else None
        for ref in record.media:
            try:
                item.media.append((ref.kind, load_media(ref, self.options, rng), ref.weight))
            except Exception as error:  # noqa: BLE001 - any loader failure is a bad record
                missing = ref.is_file and not os.path.isfile(ref.value)
                item.problem = Problem(record.file, record.where,
                                       "media file not found" if missing else f"media cannot be read ({error})",
                                       "missing_media" if missing else "corrupt_media", ref.value)
                break
        return item


@dataclass
class Batch:
    tokens: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L) float, 1 on real tokens
    visual: torch.Tensor  # (B,) float, 1 where the example has media
    features: torch.Tensor | None  # (B, D) precomputed fused features (rows without media: 0)
    media: list[list[tuple[str, torch.Tensor, float]]]  # raw media per row
    indices: list[int]
    problems: list[Problem]
    truncated: int
    good: int  # rows that are real, usable examples

    def targets(self, ignore_index: int) -> int:
        return int((self.labels[:, 1:] != ignore_index).sum())


class Collate:
    """Items -> a :class:`Batch`. Bad and padding items become rows that are ignored
    everywhere (no label, no media), so every process still runs the same number of rows'
    steps and nothing is learnt from them."""

    def __init__(self, max_words: int, ignore_index: int, feature_dim: int | None, trim: bool = True):
        self.max_words = max_words
        self.ignore_index = ignore_index
        self.feature_dim = feature_dim
        self.trim = trim

    def __call__(self, items: list[Item]) -> Batch:
        rows = len(items)
        tokens = torch.zeros(rows, self.max_words, dtype=torch.int64)
        labels = torch.full((rows, self.max_words), self.ignore_index, dtype=torch.int64)
        mask = torch.zeros(rows, self.max_words)
        visual = torch.zeros(rows)
        features = torch.zeros(rows, self.feature_dim) if self.feature_dim else None
        media: list[list] = [[] for _ in range(rows)]
        problems, truncated, good = [], 0, 0
        for row, item in enumerate(items):
            if item.problem is not None:
                problems.append(item.problem)
                continue
            if item.encoded is None:
                continue
            good += 1
            tokens[row], labels[row], mask[row] = item.encoded.tokens, item.encoded.labels, item.encoded.mask
            truncated += item.encoded.truncated
            if item.feature is not None:
                features[row] = item.feature
                visual[row] = 1.0
            if item.media:
                media[row] = item.media
                visual[row] = 1.0
        if self.trim:
            used = int(mask.sum(0).nonzero().max()) + 1 if mask.any() else 2
            used = max(used, 2)
            tokens, labels, mask = tokens[:, :used], labels[:, :used], mask[:, :used]
        return Batch(tokens, labels, mask, visual, features, media, [i.index for i in items], problems, truncated, good)


# ---------------------------------------------------------------------------------------------
# Batch order
# ---------------------------------------------------------------------------------------------


class BatchPlan:
    """Which examples each process sees, independent of the number of processes.

    Epoch ``e`` uses the permutation ``randperm(n)`` seeded with ``seed + e // split_epoch``
    (``split_epoch`` 1: ``seed + e``, as the official DistributedSampler) and, with sub-epochs,
    its slice ``perm[e % split_epoch :: split_epoch][:n // split_epoch]``. Optimizer step ``s``
    takes the next ``global_batch = batch_size x accum_iter x world`` examples; micro-step ``k``
    of it the ``k``-th block of ``batch_size x world``, of which process ``r`` takes every
    ``world``-th row from ``r`` on (the official strided split). So one process with
    ``batch_size 4`` and two with ``batch_size 2`` see the same global batches.
    """

    def __init__(self, n: int, batch_size: int, accum_iter: int, world: int, rank: int, seed: int,
                 split_epoch: int = 1):
        self.n, self.batch_size, self.accum_iter = n, batch_size, accum_iter
        self.world, self.rank, self.seed, self.split_epoch = world, rank, seed, split_epoch
        self.global_batch = batch_size * accum_iter * world
        if split_epoch > 1 and n // split_epoch < self.global_batch:
            fitting = max(1, n // self.global_batch)
            log.warning("data.split_epoch %d leaves less than one global batch (%d) per sub-epoch of %d examples; "
                        "using %d", split_epoch, self.global_batch, n, fitting)
            split_epoch = fitting
            self.split_epoch = split_epoch
        self.per_epoch = n // split_epoch
        self.steps_per_epoch = self.per_epoch // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"{n} training example{'' if n == 1 else 's'} (per sub-epoch: {self.per_epoch}) "
                             f"do{'es' if n == 1 else ''} not fill one global batch "
                             f"of {self.global_batch} (batch_size {batch_size} x accum_iter {accum_iter} x "
                             f"{world} processes)")

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch // self.split_epoch)
        perm = torch.randperm(self.n, generator=generator)
        return perm[epoch % self.split_epoch::self.split_epoch][:self.per_epoch]

    def global_batch_indices(self, epoch: int, step: int) -> list[int]:
        order = self.epoch_order(epoch)
        return order[step * self.global_batch:(step + 1) * self.global_batch].tolist()

    def micro_batches(self, epoch: int, start_step: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This process's micro-batches of ``epoch`` from optimizer step ``start_step`` on:
        ``accum_iter`` lists of ``(index, epoch)`` per step."""
        order = self.epoch_order(epoch).tolist()
        block = self.batch_size * self.world
        for step in range(start_step, self.steps_per_epoch):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            for k in range(self.accum_iter):
                sub = chunk[k * block:(k + 1) * block]
                yield [(i, epoch) for i in sub[self.rank::self.world]]


class StepSampler(torch.utils.data.Sampler):
    """A DataLoader ``batch_sampler`` over :meth:`BatchPlan.micro_batches`."""

    def __init__(self, plan: BatchPlan, epoch: int, start_step: int):
        self.plan, self.epoch, self.start_step = plan, epoch, start_step

    def __iter__(self):
        return self.plan.micro_batches(self.epoch, self.start_step)

    def __len__(self) -> int:
        return (self.plan.steps_per_epoch - self.start_step) * self.plan.accum_iter


def eval_batches(n: int, batch_size: int, world: int, rank: int) -> list[list[tuple[int, int]]]:
    """Every held-out example once: process ``r`` takes ``r, r + world, ...``; shards are padded
    with :data:`DUMMY` items to the same number of batches on every process."""
    mine = list(range(rank, n, world))
    per_rank = math.ceil(n / world) if n else 0
    mine += [DUMMY] * (per_rank - len(mine))
    return [[(i, 0) for i in mine[j:j + batch_size]] for j in range(0, len(mine), batch_size)]


def split_eval(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of the records (a seeded, fixed choice)."""
    if fraction <= 0 or not records:
        return records, []
    generator = torch.Generator()
    generator.manual_seed(seed + 7919)
    perm = torch.randperm(len(records), generator=generator).tolist()
    count = max(1, round(len(records) * fraction))
    held = set(perm[:count])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])
