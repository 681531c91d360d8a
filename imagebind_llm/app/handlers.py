"""What the app does, as plain functions of the pipeline and the user's inputs.

Nothing here imports gradio: the UI (:mod:`.ui`) turns components' values into these
arguments, shows what comes back, and turns :class:`~imagebind_llm.errors.InputError` into a
message in the page. Tests call these functions directly.

Answers stream as the *whole text so far* (what a streaming text box shows), not as deltas.
Long steps report to ``progress(fraction, desc)`` when one is given (``gr.Progress`` fits).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import math
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..embedding import Media
from ..errors import InputError
from ..generation import CancelCheck, GenerationConfig
from ..pipeline import Chat, ChatTurn, Pipeline, Settings
from ..preprocess import (
    AUDIO_EXTENSIONS,
    CLOUD_EXTENSIONS,
    IMAGE_EXTENSIONS,
    IMU_EXTENSIONS,
    MESH_EXTENSIONS,
    NPY_LAYOUTS,
    PreprocessOptions,
    guess_kind,
    npy_shape,
)
from ..prompts import validate_question
from ..visual_cache import CacheConfig

log = logging.getLogger(__name__)

Progress = Callable[..., Any] | None
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# What the app accepts, and its defaults
# ---------------------------------------------------------------------------------------------

#: Video containers the app offers (decord reads them; browsers play .mp4/.webm).
VIDEO_FILE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".3gp")
POINT_FILE_EXTENSIONS = tuple(dict.fromkeys(CLOUD_EXTENSIONS + (".npy", ".txt") + MESH_EXTENSIONS))
#: Meshes the browser's 3D viewer (gr.Model3D) draws; other 3D files are drawn as a point cloud.
VIEWER_MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".stl")

ACCEPTED_FILES = (
    f"images ({' '.join(IMAGE_EXTENSIONS)}); audio ({' '.join(AUDIO_EXTENSIONS)}); "
    f"video ({' '.join(VIDEO_FILE_EXTENSIONS)}); depth maps (16-bit PNG/TIFF, or 'depth' in the name); "
    "thermal images (8/16-bit grayscale with 'thermal' in the name); "
    f"IMU recordings ({' '.join(IMU_EXTENSIONS)} or .npy (6, T)); point clouds "
    f"({' '.join(CLOUD_EXTENSIONS)} .npy (N, 3)) and meshes ({' '.join(MESH_EXTENSIONS)})"
)
ACCEPTED_BY_KIND = {
    "image": f"an image ({' '.join(IMAGE_EXTENSIONS)})",
    "audio": f"an audio file ({' '.join(AUDIO_EXTENSIONS)}) or a microphone recording",
    "video": f"a video ({' '.join(VIDEO_FILE_EXTENSIONS)}) or a webcam recording",
    "point": f"a point cloud or mesh ({' '.join(POINT_FILE_EXTENSIONS)})",
}

#: What the page takes for each kind, in the errors about a file's content (the preprocessing
#: lists also name the Python objects its functions take, which a page's user cannot give).
UPLOAD_ACCEPTED = {
    **ACCEPTED_BY_KIND,
    "depth": "a depth map: a 16-bit grayscale PNG/TIFF, an image with 'depth' in its name, or a .npy (H, W)",
    "thermal": "a thermal image: an 8/16-bit grayscale image with 'thermal' in its name",
    "imu": (f"an IMU recording: {' '.join(IMU_EXTENSIONS)} with 6 columns (accelerometer x, y, z, gyroscope x, "
            "y, z) or a .npy (6, T)"),
}


@contextlib.contextmanager
def upload_errors(media: Sequence[Media]):
    """Re-raise an error about one of ``media``'s files with what the page accepts for its kind."""
    try:
        yield
    except InputError as error:
        kind = {m.label: m.kind for m in media if m.kind != "text"}.get(error.source)
        if kind not in UPLOAD_ACCEPTED or error.accepted is None:
            raise
        raise InputError(error.source, error.problem, UPLOAD_ACCEPTED[kind]) from None


#: Question used when a user sends only files.
DEFAULT_QUESTIONS = {
    "image": "Describe this image in detail.",
    "audio": "What do you hear in this sound?",
    "video": "What happens in this video?",
    "point": "What is this 3D object?",
    None: "Describe this in detail.",
}
#: The toy-world model knows only its own wordings (imagebind_llm/toyworld/world.py): these get
#: answers from it where the general ones above get broken sentences. A sound carries only its
#: object's kind and a video is about motion, so their defaults ask for those.
TOYWORLD_QUESTIONS = {
    "image": "Describe the scene.",
    "audio": "What kind of object is this?",
    "video": "What are the objects doing?",
    "point": "What shape is the object?",
    None: "Describe the scene.",
}


def default_questions(pipeline: Pipeline | None) -> dict[str | None, str]:
    """The question asked when only files are sent, by input kind (None: several kinds)."""
    from ..presets import TOYWORLD_PRESET

    return TOYWORLD_QUESTIONS if getattr(pipeline, "name", None) == TOYWORLD_PRESET else DEFAULT_QUESTIONS

#: Slider ranges and defaults of the official demo (reference.md 6.1); the values come from
#: the project's own defaults (GenerationConfig, CacheConfig), which equal the demo's.
_GEN, _CACHE = GenerationConfig(), CacheConfig()
DEFAULTS = {
    "max_new_tokens": _GEN.max_new_tokens, "temperature": _GEN.temperature, "top_p": _GEN.top_p,
    "cache_size": _CACHE.size, "cache_temperature": _CACHE.temperature, "cache_weight": _CACHE.weight,
}
RANGES = {
    "max_new_tokens": (1, 512), "temperature": (0.0, 1.0), "top_p": (0.01, 1.0),
    "cache_size": (1, 100), "cache_temperature": (0.0, 100.0), "cache_weight": (0.0, 1.0),
}
#: Room kept for the prompt when capping max new tokens to a model's context.
PROMPT_ROOM = 128
#: Nearest cache entries shown in the arithmetic tab.
NEAREST_SHOWN = 10


def max_new_tokens_limit(pipeline: Pipeline) -> int:
    """The largest max-new-tokens the chat can use: the official 512, or less when the model's
    context (prompt + answer) is shorter, so that a question still fits."""
    context = pipeline.model.config.llama.max_seq_len
    return max(1, min(RANGES["max_new_tokens"][1], context - PROMPT_ROOM))


def make_settings(max_new_tokens: float = DEFAULTS["max_new_tokens"], temperature: float = DEFAULTS["temperature"],
                  top_p: float = DEFAULTS["top_p"], use_cache: bool = False,
                  cache_size: float = DEFAULTS["cache_size"], cache_temperature: float = DEFAULTS["cache_temperature"],
                  cache_weight: float = DEFAULTS["cache_weight"], fusion: str = "normalized") -> Settings:
    """The settings accordion's values -> :class:`Settings` (an out-of-range value from an API
    caller is an :class:`InputError`)."""
    try:
        generation = GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                      top_p=float(top_p))
        cache = CacheConfig(int(cache_size), float(cache_temperature), float(cache_weight)) if use_cache else None
    except (TypeError, ValueError) as error:
        raise InputError("settings", str(error), "the ranges of the settings sliders") from None
    if fusion not in ("normalized", "official"):
        raise InputError("normalisation", f"unknown mode {fusion!r}", "'normalized' or 'official'")
    return Settings(generation=generation, cache=cache, fusion=fusion)  # type: ignore[arg-type]


def app_preprocess_options(options: PreprocessOptions | None = None, max_bytes: int | None = None) -> PreprocessOptions:
    """``options`` (default: the defaults) with the app's upload size limit, when one is given."""
    options = options or PreprocessOptions()
    return replace(options, max_bytes=max_bytes) if max_bytes is not None else options


def configure_pipeline(pipeline: Pipeline, max_bytes: int | None = None) -> Pipeline:
    """Give a pipeline the app's upload size limit (files over it are refused before reading)."""
    pipeline.embedder.options = app_preprocess_options(pipeline.embedder.options, max_bytes)
    return pipeline


# ---------------------------------------------------------------------------------------------
# The header
# ---------------------------------------------------------------------------------------------

def header_markdown(pipeline: Pipeline) -> str:
    """The page header: what the app is and which model answers. The text comes from the
    pipeline (its ``name``, and ``description`` when it has one) and the preset registry, so a
    trained default model brings its own words."""
    from ..presets import TOYWORLD_PRESET, UNTRAINED_PRESET, get_preset, list_presets

    lines = ["# ImageBind-LLM 🚀",
             ("Chat with a LLaMA model about images, audio, video, depth, thermal, IMU and 3D, "
              "or mix inputs of any kind with weights (embedding arithmetic).")]
    cache = pipeline.cache
    dtype = str(pipeline.model.dtype).removeprefix("torch.")  # what --dtype auto chose, too
    about = (f"Model: `{pipeline.name}` · device `{pipeline.model.device}`, {dtype} · visual cache: "
             + (f"{len(cache):,} entries" if cache is not None else "not loaded"))
    if pipeline.name == UNTRAINED_PRESET:
        lines.append(
            "> ⚠️ **Untrained model: the answers are noise.** This app runs the `tiny-untrained` preset, a "
            "small model with random weights, so that it starts anywhere in seconds with no download. "
            "Inputs, previews, streaming, settings and embedding arithmetic all work for real; the words "
            "do not mean anything. For real answers start it with the released weights: "
            "`python app.py --preset imagebind-llm-7b --llama /path/to/llama/7B_chinese` (see the README).")
    elif pipeline.name == TOYWORLD_PRESET:
        lines.append(
            "> ℹ️ **The toy-world model.** This is the small default that ships with the app: it was trained "
            "(on a CPU, in minutes) on a generated world of balls, cubes, pyramids, rings and cylinders in five "
            "colours, one to five of them, standing still, sliding, bouncing, spinning or circling, with "
            "**image-text pairs only**. It answers about their shape, colour, count and motion in images and "
            "videos, and, through the shared embedding space, in sounds (each object kind has its sound), "
            "depth, thermal, IMU and 3D inputs; try the toy-world examples. It is always right about "
            "colours, the shape of a point cloud and the motion of an IMU trace; it names the shape, count "
            "and motion of an image's objects more than nine times in ten (a video's: nine, nine and eight "
            "in ten), the shape of a sound, depth map or thermal image nine to ten times in ten and the "
            "count of the other inputs eight to nine times in ten. It knows nothing else, and it was tuned on one "
            "question at a time: press **Clear** before each new question, as its answers in a longer chat often "
            "go wrong. For the "
            "released 7B model start the app with "
            "`python app.py --preset imagebind-llm-7b --llama /path/to/llama/7B_chinese` (see the README).")
    else:
        description = getattr(pipeline, "description", None)
        if not description and pipeline.name in list_presets():
            description = get_preset(pipeline.name).description
        if description:
            about += f" · {description}"
    lines.append(about)
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def file_path(value: Any) -> str | None:
    """A path from whatever a component or an API client passes: a path, a file dict
    (``{"path": ...}``), a video dict (``{"video": {...}}``) or an object with ``.path``."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        if value.get("video") is not None:
            return file_path(value["video"])
        return None
    path = getattr(value, "path", None)
    return str(path) if path else None


def file_paths(values: Any) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    return [p for p in (file_path(v) for v in values) if p]


def check_file(path: str, max_bytes: int | None, accepted: str = ACCEPTED_FILES) -> None:
    """Refuse a missing, empty or oversize upload with a message naming it."""
    name = Path(path).name
    try:
        size = Path(path).stat().st_size
    except OSError:
        raise InputError(name, "the upload was not found on the server (it may have expired); upload it again",
                         accepted) from None
    if size == 0:
        raise InputError(name, "the file is empty", accepted)
    if max_bytes is not None and size > max_bytes:
        raise InputError(name, f"the file is {_megabytes(size)}, over the limit of {_megabytes(max_bytes)}",
                         f"files up to {_megabytes(max_bytes)}")


def _megabytes(size: float) -> str:
    value, unit = (size / 1e6, "MB") if size >= 1e5 else (size / 1e3, "kB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def route_file(path: str, max_bytes: int | None = None, expected: str | None = None) -> Media:
    """One uploaded file -> :class:`Media` of the kind it is (``expected`` forces a tab's kind;
    a 3D tab still checks that the file is 3D)."""
    accepted = ACCEPTED_BY_KIND.get(expected, ACCEPTED_FILES) if expected else ACCEPTED_FILES
    check_file(path, max_bytes, accepted)
    name = Path(path).name
    kind = guess_kind(path)
    if expected == "point" and kind != "point":
        raise InputError(name, "not a point cloud or mesh file", accepted)
    if expected in ("image", "audio", "video"):
        kind = expected
    if kind is None:
        suffix = Path(path).suffix or "(no extension)"
        if suffix.lower() == ".npy":  # an accepted type whose array is none of the kinds
            shape = npy_shape(path)
            problem = ("not a readable .npy array" if shape is None else
                       f"a .npy array of shape {shape} is not {NPY_LAYOUTS}")
            raise InputError(name, problem, accepted)
        raise InputError(name, f"unsupported file type {suffix}", accepted)
    return Media(kind, path, 1.0, name=name)


def route_files(paths: Iterable[str], max_bytes: int | None = None) -> list[Media]:
    """Files dropped in the chat -> media, each of the kind it is. Unsupported, empty or
    oversize files are refused together, in one message that names every one."""
    media, problems = [], []
    for path in paths:
        try:
            media.append(route_file(path, max_bytes))
        except InputError as error:
            problems.append(error)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputError(", ".join(e.source for e in problems), "; ".join(e.problem for e in problems),
                         problems[0].accepted)
    return media


def describe_media(media: Sequence[Media]) -> str:
    return ", ".join(f"{m.kind} {m.label}" for m in media)


def _report(progress: Progress, fraction: float | None, desc: str) -> None:
    """Tell the page what a long step is doing (the page shows ``desc`` with a bar)."""
    if progress is not None:
        progress(fraction, desc=desc)


def throttle(items: Iterable[T], interval: float = 0.05) -> Iterator[T]:
    """Pass on at most one item per ``interval`` seconds (the newest), and always the last one:
    a streamed answer re-sends the whole page state, so a token-per-update stream is wasteful."""
    last = -math.inf
    pending: list[T] = []
    for item in items:
        now = time.monotonic()
        if now - last >= interval:
            pending.clear()
            last = now
            yield item
        else:
            pending[:] = [item]
    if pending:
        yield pending[0]


def in_thread(produce: Callable[[threading.Event], Iterable[T]], stop: threading.Event | None = None,
              done: threading.Event | None = None) -> Iterator[T]:
    """Start ``produce(stop)`` in one worker thread now, and return an iterator of its items.

    A request's generation must run in one thread: PyTorch's inference mode is per thread, and
    the pipeline's generators yield inside ``torch.inference_mode()``, while a web server may
    resume a generator on any of its worker threads (gradio does), which leaks inference mode
    into its threads. Closing the iterator (Stop, a closed page) sets ``stop``, which the
    pipeline checks between two tokens (a Stop button may also set it directly). ``done`` is set
    when the worker has ended, so its last change to shared state is made. The worker sees the
    caller's context variables (so a progress bar reaches the right page)."""
    items: queue.Queue = queue.Queue()
    stop = stop if stop is not None else threading.Event()

    def work() -> None:
        try:
            for item in produce(stop):
                items.put(("item", item))
                if stop.is_set():
                    break
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            items.put(("error", error))
        else:
            items.put(("done", None))
        finally:
            if done is not None:
                done.set()

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(work,), name="imagebind-llm-request", daemon=True)
    thread.start()
    return _items_of(items, stop)


def _items_of(items: queue.Queue, stop: threading.Event) -> Iterator[Any]:
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------
# Chat
# ---------------------------------------------------------------------------------------------

@dataclass
class ChatSession:
    """One browser session's chat: the history (with each turn's media, the uploaded files'
    paths) and how many of the pipeline's notices were shown. Small and deep-copyable, so it
    lives in a ``gr.State``."""

    chat: Chat = field(default_factory=Chat)
    notices_shown: int = 0
    id: str = ""  # set on first use (the initial value is copied for every session)
    pending: Any = None  # (message, turns before it) while a message is being answered

    def key(self) -> str:
        if not self.id:
            self.id = uuid.uuid4().hex
        return self.id

    def new_notices(self) -> list[str]:
        notices = self.chat.notices[self.notices_shown:]
        self.notices_shown = len(self.chat.notices)
        return notices


def chat_question(text: str | None, media: Sequence[Media], pipeline: Pipeline | None = None) -> str:
    """The question of a chat message: the text, or ``pipeline``'s default when only files were
    sent."""
    text = (text or "").strip()
    if text:
        return text
    if not media:
        raise InputError("message", "the message is empty", "a question, files, or both")
    kinds = {m.kind for m in media}
    questions = default_questions(pipeline)
    return questions.get(kinds.pop() if len(kinds) == 1 else None, questions[None])


def chat_turn(pipeline: Pipeline, session: ChatSession, question: str, media: Sequence[Media] = (),
              settings: Settings | None = None, progress: Progress = None, cancel: CancelCheck = None) -> Iterator[str]:
    """Answer the next turn, yielding the answer so far. On an error the session is left as it
    was (the turn is not kept); when stopped (``cancel``) the partial answer stays, and a turn
    stopped before its first word is not kept."""
    settings = settings or Settings()
    validate_question(question)
    if media:
        _report(progress, 0.0, f"Reading and encoding {describe_media(media)}")
    before = len(session.chat.turns)
    answer = ""
    try:
        with upload_errors(media):
            for delta in pipeline.chat(session.chat, question, media, settings, cancel):
                answer += delta
                yield answer
    except Exception:
        del session.chat.turns[before:]
        raise
    if len(session.chat.turns) > before and not session.chat.turns[-1].answer and _cancelled(cancel):
        del session.chat.turns[before:]
        return
    yield session.chat.turns[-1].answer or ""


def _cancelled(cancel: CancelCheck) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def retry_turn(pipeline: Pipeline, session: ChatSession, settings: Settings | None = None, progress: Progress = None,
               cancel: CancelCheck = None) -> Iterator[str]:
    """Answer the last question again (with the same media); on an error the old answer stays."""
    settings = settings or Settings()
    if not session.chat.turns:
        raise InputError("chat", "there is no answer to retry yet", "a question first")
    last = session.chat.turns.pop()
    count = len(session.chat.turns)
    try:
        yield from chat_turn(pipeline, session, last.question, last.media, settings, progress, cancel)
    except Exception:
        session.chat.turns.append(last)
        raise
    if len(session.chat.turns) == count:  # stopped before the first word: the old answer stays
        session.chat.turns.append(last)


def undo_turn(session: ChatSession) -> ChatTurn | None:
    """Remove the last turn (question and answer); returns it, or None when there is none."""
    return session.chat.turns.pop() if session.chat.turns else None


# ---------------------------------------------------------------------------------------------
# One input + a question (the image, audio, video and 3D tabs)
# ---------------------------------------------------------------------------------------------

def stream_answer(pipeline: Pipeline, feature: torch.Tensor | None, question: str, settings: Settings,
                  cancel: CancelCheck = None) -> Iterator[str]:
    """The answer so far to ``question`` about an already computed feature (the official
    single-turn prompt, like :meth:`Pipeline.stream`)."""
    prompt = pipeline.question_prompt(question, settings)
    decoder = pipeline.tokenizer.stream()
    answer = ""
    for token in pipeline.stream_ids(prompt, feature, settings, cancel):
        delta = decoder.push(token)
        if delta:
            answer += delta
            yield answer
    answer += decoder.flush()
    yield answer.strip()


def ask(pipeline: Pipeline, kind: str, file: Any, question: str | None, settings: Settings | None = None,
        progress: Progress = None, cancel: CancelCheck = None, max_bytes: int | None = None) -> Iterator[str]:
    """One file of ``kind`` (image, audio, video, point) and a question -> the answer so far."""
    settings = settings or Settings()
    path = file_path(file)
    if path is None:
        raise InputError(kind if kind != "point" else "3D input", "no file given", ACCEPTED_BY_KIND[kind])
    media = route_file(path, max_bytes, expected=kind)
    question = (question or "").strip() or default_questions(pipeline)[kind]
    pipeline.question_prompt(question, settings)  # a question that does not fit is refused before the encoding
    _report(progress, 0.0, f"Reading and encoding {media.label}")
    with upload_errors([media]):
        feature = pipeline.feature([media], settings)
    _report(progress, 0.9, "Generating the answer")
    yield from stream_answer(pipeline, feature.vector, question, settings, cancel)


# ---------------------------------------------------------------------------------------------
# Embedding arithmetic
# ---------------------------------------------------------------------------------------------

@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class MixResult:
    answer: str
    similarities: Table
    nearest: Table


def text_lines(texts: str | Sequence[str] | None) -> list[str]:
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = texts.splitlines()
    return [t.strip() for t in texts if t and t.strip()]


def _weight_values(text: str | Sequence[float] | None) -> list[Any]:
    if text is None:
        return []
    if isinstance(text, str):
        return [v for v in re.split(r"[,;\s]+", text.strip()) if v]
    return list(text)


def parse_weights(text: str | Sequence[float] | None, count: int) -> list[float]:
    """Weights in input order from ``"1, -0.5, 0.3"`` (commas, semicolons or spaces); missing
    ones are 1, extra ones are not used (:func:`unused_weights_notice` says so)."""
    values = _weight_values(text)
    weights = []
    for value in values[:count]:
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise InputError("weights", f"{value!r} is not a number", "numbers separated by commas, e.g. 1, -0.5") from None
        if not math.isfinite(weight):
            raise InputError("weights", f"{value!r} is not a finite number", "numbers between -1 and 1")
        weights.append(weight)
    return weights + [1.0] * (count - len(weights))


def unused_weights_notice(text: str | Sequence[float] | None, count: int) -> str | None:
    """A notice when more weights than inputs were given (e.g. an input removed after its weight
    was typed): the weights pair with the inputs in order, so the last ones are not used."""
    values = _weight_values(text)
    extra = len(values) - count
    if extra <= 0:
        return None
    unused = ", ".join(str(v) for v in values[count:])
    return (f"{len(values)} weights for {count} input{'s' if count != 1 else ''}: the weights pair with the inputs "
            f"in order (files, then texts), so the last {extra} ({unused}) {'was' if extra == 1 else 'were'} not used.")


def format_weights(*values: float) -> str:
    """Slider values -> the weights text (``"1, -0.5"``)."""
    return ", ".join(f"{float(v):g}" for v in values)


def mix_labels(files: Any, texts: str | Sequence[str] | None) -> list[str]:
    """The names of the arithmetic inputs, in order (files first, then texts)."""
    return [Path(p).name for p in file_paths(files)] + [f'"{t}"' for t in text_lines(texts)]


def mix_media(files: Any, texts: str | Sequence[str] | None, weights: str | Sequence[float] | None,
              max_bytes: int | None = None) -> list[Media]:
    """Files (any kind), texts (one per line) and weights -> the inputs of a mix."""
    media = [route_file(path, max_bytes) for path in file_paths(files)]
    media += [Media("text", text, 1.0) for text in text_lines(texts)]
    if not media:
        raise InputError("inputs", "no input given", "one or more files or texts")
    for item, weight in zip(media, parse_weights(weights, len(media))):
        item.weight = weight
    return media


def similarity_table(labels: Sequence[str], embeddings: torch.Tensor, mix: torch.Tensor | None = None) -> Table:
    """Cosine similarities of the inputs (and of each input with the mix)."""
    units = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    sims = units @ units.T
    headers = ["input"] + [f"{i + 1}" for i in range(len(labels))]
    if mix is not None:
        headers.append("mix")
        with_mix = units @ torch.nn.functional.normalize(mix.float(), dim=-1)
    rows = []
    for i, label in enumerate(labels):
        row = [f"{i + 1}. {label}"] + [round(float(v), 3) for v in sims[i]]
        if mix is not None:
            row.append(round(float(with_mix[i]), 3))
        rows.append(row)
    return Table(headers, rows)


def nearest_table(pipeline: Pipeline, similarities: torch.Tensor, indices: torch.Tensor) -> Table:
    """The nearest cache entries: rank, row id, similarity and, when the cache knows them, the
    source files."""
    names = pipeline.cache.names(indices[None])[0] if hasattr(pipeline.cache, "names") else [None] * len(indices)
    rows = [[rank + 1, int(index), round(float(sim), 3), name or ""]
            for rank, (sim, index, name) in enumerate(zip(similarities.tolist(), indices.tolist(), names))
            if index >= 0]
    if not any(row[3] for row in rows):
        return Table(["rank", "cache entry", "similarity"], [row[:3] for row in rows])
    return Table(["rank", "cache entry", "similarity", "source"], rows)


def mix(pipeline: Pipeline, media: Sequence[Media], question: str | None, settings: Settings | None = None,
        progress: Progress = None, cancel: CancelCheck = None) -> Iterator[MixResult]:
    """Embed and mix the inputs (``settings.fusion``), look up the nearest cache entries when a
    cache is loaded, and answer the question about the mix. Yields the tables first (with an
    empty answer), then the answer so far."""
    settings = settings or Settings()
    question = (question or "").strip() or default_questions(pipeline)[None]
    pipeline.question_prompt(question, settings)  # a question that does not fit is refused before the encoding
    _report(progress, 0.0, f"Reading and encoding {len(media)} input{'s' if len(media) != 1 else ''}")
    with upload_errors(media):
        feature = pipeline.feature(media, replace(settings, cache=None))
    vector = feature.vector
    similarities = similarity_table(feature.labels, feature.embeddings, vector)
    nearest = Table(["rank", "cache entry", "similarity"], [])
    if pipeline.cache is not None:
        _report(progress, 0.6, f"Searching the visual cache ({len(pipeline.cache):,} entries)")
        if settings.cache is not None:
            result = pipeline.cache.blend(vector[None], settings.cache)
            vector = result.enhanced[0]
            sims, ids = result.similarities[0], result.indices[0]
        else:
            sims, ids = (t[0] for t in pipeline.cache.search(vector[None], NEAREST_SHOWN))
        nearest = nearest_table(pipeline, sims[:NEAREST_SHOWN], ids[:NEAREST_SHOWN])
    yield MixResult("", similarities, nearest)
    _report(progress, 0.9, "Generating the answer")
    for answer in stream_answer(pipeline, vector, question, settings, cancel):
        yield MixResult(answer, similarities, nearest)


# ---------------------------------------------------------------------------------------------
# Previews (what the page draws for an input)
# ---------------------------------------------------------------------------------------------

PREVIEW_DIR = Path(tempfile.gettempdir()) / "imagebind_llm_app"
#: Image formats every browser draws; others are converted to PNG for display.
WEB_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
PREVIEW_POINTS = 2048


def _file_key(path: str) -> str:
    stat = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def is_viewer_mesh(path: str) -> bool:
    """True for a mesh with faces that gr.Model3D draws (.obj with faces, .glb, .gltf, .stl)."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIEWER_MESH_EXTENSIONS:
        return False
    if suffix == ".obj":
        try:
            with open(path, "rb") as f:
                return any(line.startswith(b"f ") for line in f)
        except OSError:
            return False
    return True


@functools.lru_cache(maxsize=64)
def _point_preview(path: str, key: str) -> np.ndarray:
    from ..preprocess.point import PointOptions, load_point_cloud, point_cloud_preview

    points = load_point_cloud(path, PointOptions(num_points=PREVIEW_POINTS), name=Path(path).name, max_bytes=None)
    return point_cloud_preview(points, PREVIEW_POINTS)


def point_preview(path: str) -> np.ndarray:
    """(M, 3) float32 points to draw for a point cloud or mesh file (centred, radius 1)."""
    return _point_preview(str(path), _file_key(path))


@functools.lru_cache(maxsize=64)
def _imu_preview(path: str, key: str) -> np.ndarray:
    from ..preprocess import load

    return load("imu", path, app_preprocess_options(), name=Path(path).name).numpy()


def imu_preview(path: str) -> np.ndarray:
    """(6, 2000) float32: the IMU channels the model reads."""
    return _imu_preview(str(path), _file_key(path))


def _colormap(values: np.ndarray, stops: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """values in [0, 1] (H, W) -> uint8 RGB (H, W, 3) by linear interpolation between colour stops."""
    positions = np.linspace(0, 1, len(stops))
    stops_arr = np.asarray(stops, dtype=np.float64)
    channels = [np.interp(values, positions, stops_arr[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


_DEPTH_COLOURS = [(255, 245, 120), (240, 120, 50), (150, 40, 110), (40, 20, 80), (5, 5, 20)]  # near -> far
_THERMAL_COLOURS = [(0, 0, 0), (80, 10, 120), (200, 50, 60), (250, 160, 20), (255, 255, 220)]  # cold -> hot


@functools.lru_cache(maxsize=64)
def _picture_preview(kind: str, path: str, key: str) -> str:
    from PIL import Image

    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False).astype(np.float64)
    else:
        with Image.open(path) as img:
            if kind == "image":
                img.seek(0)
                array = None
                picture = img.convert("RGB")
            else:
                array = np.asarray(img.convert("I") if img.mode not in ("I;16", "I;16B", "I", "F", "L") else img,
                                   dtype=np.float64)
    if kind != "image":
        if array.ndim == 3:
            array = array.mean(axis=-1)
        finite = np.isfinite(array)
        valid = finite & (array > 0) if kind == "depth" else finite
        low, high = (np.percentile(array[valid], [1, 99]) if valid.any() else (0.0, 1.0))
        scaled = np.clip((array - low) / max(high - low, 1e-9), 0, 1)
        scaled[~valid] = 1.0 if kind == "depth" else 0.0  # missing depth drawn as far
        picture = Image.fromarray(_colormap(scaled, _DEPTH_COLOURS if kind == "depth" else _THERMAL_COLOURS))
    PREVIEW_DIR.mkdir(parents=True, exist_ok=True)
    out = PREVIEW_DIR / f"{Path(path).stem}.{kind}-{key}.png"
    picture.save(out)
    return str(out)


def picture_preview(kind: str, path: str) -> str:
    """A PNG the browser can draw: depth and thermal maps in false colour (near/hot = bright),
    images in formats browsers do not draw (TIFF, PPM...) converted. Returns the path (cached)."""
    if kind == "image" and Path(path).suffix.lower() in WEB_IMAGE_EXTENSIONS:
        return str(path)
    try:
        return _picture_preview(kind, str(path), _file_key(path))
    except Exception as error:  # noqa: BLE001 - a preview never fails a request: the model step reports bad files
        log.warning("no preview for %s: %s", path, error)
        return str(path)
