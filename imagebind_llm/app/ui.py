"""The Gradio page: :func:`build_demo` returns the Blocks (not launched).

Layout: a header that says which model answers, a settings accordion shared by every tab,
then the tabs Chat, Image, Audio, Video, 3D and Embedding arithmetic.

* The model is a read-only global: :func:`build_demo` registers the pipeline under a key and
  the event functions (module-level, below) get a small :class:`AppContext` holding that key.
  Nothing big is ever passed as an argument, which is what ZeroGPU needs (it ships the
  arguments of ``@spaces.GPU`` functions to a worker process).
* Each browser session has its own ``gr.State`` (a :class:`~.handlers.ChatSession`).
* Every model event shares one concurrency group (``concurrency_id="model"``) whose limit is
  ``concurrency``; ``queue_size`` bounds the waiting line.
* A user mistake (unsupported, corrupt, empty or oversize file, empty question...) becomes a
  ``gr.Error`` with the library's message (what, why, what is accepted); any other exception
  is logged with its traceback on the server and shown as a short message. The user's text
  and files stay where they were.

Stable API names (gradio_client): ``chat``, ``retry``, ``undo``, ``clear``, ``ask_image``,
``ask_audio``, ``ask_video``, ``ask_3d``, ``mix``, and ``generate_image`` when the app has an
image generator (``--unclip``, :mod:`.image_ui`). See the README's "App" section.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from ..embedding import Media
from ..embedding_memo import EmbeddingMemo
from ..errors import ImageBindLLMError
from ..pipeline import Pipeline
from . import handlers as H

log = logging.getLogger(__name__)

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated function runs.
    import spaces

    GPU = spaces.GPU
except ImportError:  # anywhere else: the functions run as they are

    def GPU(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)


EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
API_NAMES = ("chat", "retry", "undo", "clear", "ask_image", "ask_audio", "ask_video", "ask_3d", "mix")
MODEL_GROUP = "model"
DEFAULT_QUEUE_SIZE = 32
DEFAULT_CONCURRENCY = 1
#: Memory (MiB) the app gives the prefix cache by default: 2 full-length 7B conversations in float16.
DEFAULT_PREFIX_CACHE_MB = 1024

# System fonts only: the default themes link Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
#header blockquote { border-left: 4px solid #f59e0b; background: #fffbeb; padding: 0.4em 0.8em; }
.dark #header blockquote { background: #3b2f12; }
#mix-examples table { table-layout: fixed; width: 100%; }
#mix-examples td, #mix-examples th, #mix-examples td *, #mix-examples th * {
  white-space: normal; overflow-wrap: anywhere;
}
"""

_PIPELINES: dict[str, Pipeline] = {}
#: The default that makes gradio pass a progress tracker (it makes a new one for every call).
PROGRESS = gr.Progress()


@dataclass
class _Request:
    """A chat session's model request: the flag that stops it (Stop, Undo, Clear, a closed page)
    and the event set once its worker has ended, i.e. made its last change to the session."""

    key: str  # the session's
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    worker_started: bool = False  # then the worker sets ``done`` when it ends
    superseded: bool = False  # Undo or Clear took over: the request sends the page nothing more


#: session key -> its running chat request. A session's requests run one at a time, in the order
#: they came: with several running at once (``--concurrency``), a Retry during an answer
#: interleaved two turns.
_REQUESTS: dict[str, _Request] = {}
#: session key -> [tickets given, tickets served], under _TURN.
_TICKETS: dict[str, list[int]] = {}
_TURN = threading.Condition()
#: How long Undo, Clear and a session's next request wait for a stopped answer to end (a file
#: being encoded cannot be interrupted).
UNDO_WAIT_S = 60.0


@dataclass(frozen=True)
class AppContext:
    """What every event function needs besides the user's inputs (small and picklable)."""

    key: str
    max_bytes: int | None = None
    stream_interval: float = 0.05

    @property
    def pipeline(self) -> Pipeline:
        return _PIPELINES[self.key]


def register_pipeline(pipeline: Pipeline) -> str:
    key = f"{pipeline.name}-{id(pipeline):x}"
    _PIPELINES[key] = pipeline
    return key


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def as_gr_error(error: BaseException) -> gr.Error:
    """The message a user sees for an exception; never a traceback."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, ImageBindLLMError):
        log.info("refused: %s", error)
        return gr.Error(str(error), print_exception=False)
    log.error("unexpected error in a request", exc_info=error)
    return gr.Error(f"Something went wrong on the server ({type(error).__name__}); it has been logged. "
                    "Your inputs are kept: try again, or with another file.", print_exception=False)


def guarded(fn):
    """Run an event function so that every exception reaches the page as a readable gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - every error becomes a message in the page
                raise as_gr_error(error) from None
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every error becomes a message in the page
            raise as_gr_error(error) from None
    return function


# ---------------------------------------------------------------------------------------------
# Previews
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _point_figure(path: str, key: str, height: int):
    import plotly.graph_objects as go

    points = H.point_preview(path)
    x, y, z = points.T
    marker = {"size": 1.6, "color": z, "colorscale": "Viridis", "opacity": 0.9}
    figure = go.Figure(go.Scatter3d(x=x, y=y, z=z, mode="markers", marker=marker))
    hidden = {"visible": False, "showbackground": False}
    figure.update_layout(scene={"xaxis": hidden, "yaxis": hidden, "zaxis": hidden, "aspectmode": "data"},
                         margin={"l": 0, "r": 0, "t": 0, "b": 0}, height=height, showlegend=False)
    return figure


def point_figure(path: str, height: int = 360):
    """An interactive plotly scatter of a point cloud or mesh file (gr.Model3D cannot draw clouds)."""
    return _point_figure(str(path), H._file_key(path), height)


@functools.lru_cache(maxsize=32)
def _imu_figure(path: str, key: str):
    import plotly.graph_objects as go

    data = H.imu_preview(path)[:, ::4]
    figure = go.Figure()
    for channel, name in zip(data, ("acc x", "acc y", "acc z", "gyro x", "gyro y", "gyro z")):
        figure.add_trace(go.Scatter(y=channel, mode="lines", name=name, line={"width": 1}))
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, height=220, legend={"orientation": "h"})
    return figure


def imu_figure(path: str):
    return _imu_figure(str(path), H._file_key(path))


def media_content(media: Media) -> Any:
    """How one input shows in the chat history: images, audio and video play inline, meshes in
    the 3D viewer, point clouds and IMU traces as plots, depth and thermal in false colour."""
    path = str(media.value)
    try:
        if media.kind in ("image", "depth", "thermal"):
            return {"path": H.picture_preview(media.kind, path)}
        if media.kind == "point" and not H.is_viewer_mesh(path):
            return gr.Plot(point_figure(path, height=260), label=media.label, show_label=True)
        if media.kind == "imu":
            return gr.Plot(imu_figure(path), label=media.label, show_label=True)
    except Exception as error:  # noqa: BLE001 - a preview never breaks the chat: fall back to a file link
        log.warning("no preview for %s: %s", path, error)
    return {"path": path}


def chat_messages(session: H.ChatSession, pending: tuple[str, list[Media]] | None = None) -> list[dict]:
    """The chat history to show, from the session (and a message still being read: its answer
    says what is being done, e.g. which video is being decoded)."""
    messages: list[dict] = []
    turns = [(t.question, t.media, t.answer or "…") for t in session.chat.turns]
    if pending is not None:
        question, media = pending
        turns.append((question, media, f"⏳ Reading {H.describe_media(media)}…" if media else "…"))
    for question, media, answer in turns:
        messages.append({"role": "user", "content": [question, *(media_content(m) for m in media)]})
        messages.append({"role": "assistant", "content": answer})
    return messages


def preview_3d(ctx: AppContext, file: Any):
    """The 3D tab's preview: meshes in the 3D viewer, point clouds as a scatter plot. (The
    viewers start "hidden", not invisible: a gr.Model3D first drawn invisible never gets its
    canvas when it is shown later.)"""
    path = H.file_path(file)
    if path is None:
        return gr.Model3D(value=None, visible="hidden"), gr.Plot(value=None, visible="hidden")
    H.route_file(path, ctx.max_bytes, expected="point")
    if H.is_viewer_mesh(path):
        return gr.Model3D(value=path, visible=True), gr.Plot(value=None, visible="hidden")
    return gr.Model3D(value=None, visible="hidden"), gr.Plot(value=point_figure(path), visible=True)


# ---------------------------------------------------------------------------------------------
# Event functions (module-level; bound to an AppContext with functools.partial)
# ---------------------------------------------------------------------------------------------

def _box(**props):
    """An update of the chat input box: only the given properties change."""
    return gr.MultimodalTextbox(**props)


@GPU
@guarded
def chat(ctx: AppContext, session: H.ChatSession, message: dict | None, max_new_tokens: float, temperature: float,
         top_p: float, use_cache: bool, cache_size: float, cache_temperature: float, cache_weight: float,
         progress: gr.Progress = PROGRESS):
    message = message or {}
    settings = H.make_settings(max_new_tokens, temperature, top_p, use_cache, cache_size, cache_temperature,
                               cache_weight)
    media = H.route_files(H.file_paths(message.get("files")), ctx.max_bytes)
    question = H.chat_question(message.get("text"), media, ctx.pipeline)
    request = _start_request(session)
    try:
        session.pending = (message, len(session.chat.turns))
        yield session, chat_messages(session, (question, media)), _box(value=None, interactive=False), ""
        answers = H.in_thread(lambda stop: H.chat_turn(ctx.pipeline, session, question, media, settings, progress,
                                                       stop), request.stop, request.done)
        request.worker_started = True
        yield from _stream_turn(ctx, session, answers, request, restore=message)
    finally:
        _end_request(request)


@GPU
@guarded
def retry(ctx: AppContext, session: H.ChatSession, max_new_tokens: float, temperature: float, top_p: float,
          use_cache: bool, cache_size: float, cache_temperature: float, cache_weight: float, progress: gr.Progress = PROGRESS):
    settings = H.make_settings(max_new_tokens, temperature, top_p, use_cache, cache_size, cache_temperature,
                               cache_weight)
    if not session.chat.turns:
        gr.Warning("Nothing to retry yet: ask a question first.")
        yield session, chat_messages(session), gr.skip(), ""
        return
    request = _start_request(session)
    try:
        if not session.chat.turns:  # the turn it was to retry was undone while it waited
            yield session, chat_messages(session), gr.skip(), ""
            return
        last = session.chat.turns[-1]
        shown = H.ChatSession(H.Chat(session.chat.turns[:-1]))
        yield session, chat_messages(shown, (last.question, last.media)), _box(interactive=False), ""
        answers = H.in_thread(lambda stop: H.retry_turn(ctx.pipeline, session, settings, progress, stop),
                              request.stop, request.done)
        request.worker_started = True
        yield from _stream_turn(ctx, session, answers, request, restore=None)
    finally:
        _end_request(request)


def _start_request(session: H.ChatSession) -> _Request:
    """The session's next request, once the ones that came before it have ended (it waits)."""
    key = session.key()
    with _TURN:
        tickets = _TICKETS.setdefault(key, [0, 0])
        ticket, tickets[0] = tickets[0], tickets[0] + 1
        _TURN.wait_for(lambda: tickets[1] == ticket)
        request = _REQUESTS[key] = _Request(key)
        return request


def _end_request(request: _Request) -> None:
    """A request's generator ended (answered, failed, stopped or left by its page): its worker is
    stopped and waited for, and the session's next request may start."""
    request.stop.set()
    if request.worker_started:
        request.done.wait(UNDO_WAIT_S)  # it stops within a token (or a file's encoding)
    request.done.set()
    with _TURN:
        if _REQUESTS.get(request.key) is request:
            del _REQUESTS[request.key]
        tickets = _TICKETS[request.key]
        tickets[1] += 1
        if tickets[0] == tickets[1]:  # none waiting
            del _TICKETS[request.key]
        _TURN.notify_all()


def _stop_request(session: H.ChatSession, wait: float = 0.0, supersede: bool = False) -> None:
    """Stop the session's running request, waiting up to ``wait`` seconds for its end;
    ``supersede``: its last updates would undo the caller's (Undo, Clear), so it sends none."""
    request = _REQUESTS.get(session.id) if session.id else None
    if request is not None:
        request.superseded = request.superseded or supersede
        request.stop.set()
        request.done.wait(wait)


def _stream_turn(ctx: AppContext, session: H.ChatSession, answers, request: _Request, restore: dict | None):
    answer = ""
    try:
        for answer in H.throttle(answers, ctx.stream_interval):
            if request.superseded:
                return
            yield session, chat_messages(session), gr.skip(), answer
    except Exception:
        if request.superseded:
            return
        # The turn was not kept: show the history as it is and give the message back.
        session.pending = None
        yield session, chat_messages(session), _box(**({"value": restore} if restore is not None else {}),
                                                    interactive=True), ""
        raise
    if request.superseded:
        return
    session.pending = None
    for notice in session.new_notices():
        gr.Warning(notice)
    yield session, chat_messages(session), _box(**({"value": None} if restore is not None else {}),
                                                interactive=True), answer


@guarded
def undo(session: H.ChatSession, message: dict | None):
    """Remove the last turn and give its message back in the box. During an answer: stop it (and
    wait for its end), then remove that turn, which a message stopped before its first word never
    became."""
    _stop_request(session, wait=UNDO_WAIT_S, supersede=True)
    message = message or {}
    typed = bool(message.get("text") or message.get("files"))
    back = None  # what goes back into the box
    if session.pending is not None:  # the message being answered: it goes back as it was sent
        (back, count), session.pending = session.pending, None
        del session.chat.turns[count:]
    elif (turn := H.undo_turn(session)) is not None:
        back = {"text": turn.question, "files": [str(m.value) for m in turn.media]}
    box = _box(value=back, interactive=True) if back is not None and not typed else _box(interactive=True)
    return session, chat_messages(session), box


def clear(session: H.ChatSession):
    """A new conversation; an answer being written is stopped. The session is emptied in place
    (the stopped request holds it too)."""
    _stop_request(session, wait=UNDO_WAIT_S, supersede=True)
    session.chat, session.pending, session.notices_shown = H.Chat(), None, 0
    return session, [], _box(value=None, interactive=True), ""


def stop(session: H.ChatSession):
    """Stop the session's answer: the words so far stay; a message stopped before its first word
    goes back into the box."""
    _stop_request(session)
    box = _box(interactive=True)
    if session.pending is not None:
        (message, count), session.pending = session.pending, None
        if not (len(session.chat.turns) > count and session.chat.turns[-1].answer):
            box = _box(value=message, interactive=True)
    return session, chat_messages(session), box


def _ask(ctx: AppContext, kind: str, file: Any, question: str | None, settings: tuple, progress):
    settings = H.make_settings(*settings)
    answers = H.in_thread(lambda stop: H.ask(ctx.pipeline, kind, file, question, settings, progress, stop,
                                             max_bytes=ctx.max_bytes))
    yield from H.throttle(answers, ctx.stream_interval)


@GPU
@guarded
def ask_image(ctx: AppContext, image: Any, question: str, max_new_tokens: float, temperature: float, top_p: float,
              use_cache: bool, cache_size: float, cache_temperature: float, cache_weight: float,
              progress: gr.Progress = PROGRESS):
    yield from _ask(ctx, "image", image, question, (max_new_tokens, temperature, top_p, use_cache, cache_size,
                                                    cache_temperature, cache_weight), progress)


@GPU
@guarded
def ask_audio(ctx: AppContext, audio: Any, question: str, max_new_tokens: float, temperature: float, top_p: float,
              use_cache: bool, cache_size: float, cache_temperature: float, cache_weight: float,
              progress: gr.Progress = PROGRESS):
    yield from _ask(ctx, "audio", audio, question, (max_new_tokens, temperature, top_p, use_cache, cache_size,
                                                    cache_temperature, cache_weight), progress)


@GPU
@guarded
def ask_video(ctx: AppContext, video: Any, question: str, max_new_tokens: float, temperature: float, top_p: float,
              use_cache: bool, cache_size: float, cache_temperature: float, cache_weight: float,
              progress: gr.Progress = PROGRESS):
    yield from _ask(ctx, "video", video, question, (max_new_tokens, temperature, top_p, use_cache, cache_size,
                                                    cache_temperature, cache_weight), progress)


@GPU
@guarded
def ask_3d(ctx: AppContext, shape: Any, question: str, max_new_tokens: float, temperature: float, top_p: float,
           use_cache: bool, cache_size: float, cache_temperature: float, cache_weight: float,
           progress: gr.Progress = PROGRESS):
    yield from _ask(ctx, "point", shape, question, (max_new_tokens, temperature, top_p, use_cache, cache_size,
                                                    cache_temperature, cache_weight), progress)


def _frame(table: H.Table):
    import pandas as pd

    return pd.DataFrame(table.rows, columns=table.headers)


@GPU
@guarded
def mix(ctx: AppContext, files: Any = None, texts: str = "", weights: str = "", fusion: str = "normalized",
        question: str = "", max_new_tokens: float = H.DEFAULTS["max_new_tokens"],
        temperature: float = H.DEFAULTS["temperature"], top_p: float = H.DEFAULTS["top_p"], use_cache: bool = False,
        cache_size: float = H.DEFAULTS["cache_size"], cache_temperature: float = H.DEFAULTS["cache_temperature"],
        cache_weight: float = H.DEFAULTS["cache_weight"], progress: gr.Progress = PROGRESS):
    settings = H.make_settings(max_new_tokens, temperature, top_p, use_cache, cache_size, cache_temperature,
                               cache_weight, fusion=fusion)
    media = H.mix_media(files, texts, weights, ctx.max_bytes)
    notice = H.unused_weights_notice(weights, len(media))
    if notice:
        gr.Warning(notice)
    results = H.in_thread(lambda stop: H.mix(ctx.pipeline, media, question, settings, progress, stop))
    for result in H.throttle(results, ctx.stream_interval):
        yield result.answer, _frame(result.similarities), _frame(result.nearest)


def weights_from_sliders(*values: float) -> str:
    return H.format_weights(*values)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

def _examples_of(examples_dir: Path, rows: list[list[Any]]) -> list[list[Any]]:
    """Example rows whose files exist, with paths made absolute (``"@name"`` is a file)."""
    def resolve(value):
        if isinstance(value, str) and value.startswith("@"):
            path = examples_dir / value[1:]
            return str(path) if path.is_file() else None
        if isinstance(value, list):
            resolved = [resolve(v) for v in value]
            return None if any(v is None for v in resolved) else resolved
        if isinstance(value, dict):
            resolved = {k: resolve(v) for k, v in value.items()}
            return None if any(v is None for v in resolved.values()) else resolved
        return value

    out = []
    for row in rows:
        resolved = [resolve(v) for v in row]
        if all(v is not None for v in resolved):
            out.append(resolved)
    return out


# Toy-world scenes first (the default model was trained on that world and answers about them),
# then everyday media (which need the released weights for meaningful answers).
CHAT_EXAMPLES = [
    [{"text": "How many objects are there?", "files": ["@toyworld/two_red_balls.png"]}],
    [{"text": "What colour are the objects?", "files": ["@toyworld/three_blue_cubes.png"]}],
    [{"text": "How is the object moving?", "files": ["@toyworld/yellow_rings_circling.mp4"]}],
    [{"text": "What are the objects?", "files": ["@toyworld/four_bells.wav"]}],
    [{"text": "How many objects are there?", "files": ["@toyworld/three_cylinders_depth.png"]}],
    [{"text": "What shape is the object?", "files": ["@toyworld/two_cubes_thermal.png"]}],
    [{"text": "Describe the motion.", "files": ["@toyworld/spinning_imu.npy"]}],
    [{"text": "What are the objects?", "files": ["@toyworld/two_pyramids.ply"]}],
    [{"text": "Describe the scene.", "files": ["@toyworld/two_red_balls.png", "@toyworld/one_rattle.wav"]}],
    [{"text": "What is happening in this picture?", "files": ["@sunset.png"]}],
    [{"text": "What animal makes this sound?", "files": ["@birdsong.wav"]}],
    [{"text": "What is the ball doing?", "files": ["@bouncing_ball.mp4"]}],
    [{"text": "Where is the box in this room?", "files": ["@room_depth.png"]}],
    [{"text": "Is there a person in this thermal image?", "files": ["@person_thermal.png"]}],
    [{"text": "What is the person wearing this sensor doing?", "files": ["@walking_imu.csv"]}],
    [{"text": "What shape is this?", "files": ["@torus.glb"]}],
    [{"text": "What is this object?", "files": ["@sphere_points.npy"]}],
    [{"text": "Describe the scene and the sound together.", "files": ["@house.png", "@doorbell.wav"]}],
]
IMAGE_EXAMPLES = [["@toyworld/two_red_balls.png", "How are the objects moving?"],
                  ["@toyworld/three_blue_cubes.png", "Describe the scene."],
                  ["@sunset.png", "What is happening in this picture?"], ["@house.png", "Describe the house."]]
AUDIO_EXAMPLES = [["@toyworld/four_bells.wav", "What are the objects?"],
                  ["@toyworld/one_rattle.wav", "What kind of object is this?"],
                  ["@birdsong.wav", "What animal makes this sound?"], ["@doorbell.wav", "What is this sound?"]]
VIDEO_EXAMPLES = [["@toyworld/yellow_rings_circling.mp4", "What are the objects doing?"],
                  ["@bouncing_ball.mp4", "What is the ball doing?"]]
SHAPE_EXAMPLES = [["@toyworld/two_pyramids.ply", "How many objects are there?"],
                  ["@toyworld/one_ring_points.npy", "What shape is the object?"],
                  ["@torus.glb", "What shape is this?"], ["@cube.obj", "What is this object?"],
                  ["@sphere_points.npy", "Describe this point cloud."]]
MIX_EXAMPLES = [
    [["@toyworld/two_red_balls.png", "@toyworld/one_rattle.wav"], "", "0.5, 0.5", "normalized",
     "Describe the scene."],
    [["@toyworld/three_blue_cubes.png"], "blue cubes\nred cubes", "1, -0.8, 0.8", "normalized",
     "What colour are the objects?"],
    [["@toyworld/three_cylinders_depth.png", "@toyworld/two_cubes_thermal.png", "@toyworld/sliding_imu.csv"], "",
     "1, 1, 1", "official", "Describe the scene."],
    [["@sunset.png", "@birdsong.wav"], "", "1, 0.5", "normalized", "What is happening here?"],
    [["@house.png"], "a house in winter\na house in summer", "1, 0.6, -0.6", "normalized", "Describe the house."],
    [["@room_depth.png", "@person_thermal.png", "@walking_imu.npy"], "", "1, 1, 1", "official",
     "What is going on in this room?"],
    [["@cube.obj"], "a dice", "0.7, 0.3", "normalized", "What is this?"],
]


def build_demo(pipeline: Pipeline, *, concurrency: int = DEFAULT_CONCURRENCY, queue_size: int | None = DEFAULT_QUEUE_SIZE,
               max_bytes: int | None = None, examples_dir: Path | str | None = EXAMPLES_DIR,
               stream_interval: float = 0.05, image_generator=None, batch_decoding: bool | None = None,
               prefix_cache_mb: float | None = None) -> gr.Blocks:
    """The app's Blocks over ``pipeline``, queued but not launched.

    ``concurrency``: model requests running at once (all tabs together); ``queue_size``: how
    many may wait (None: no bound); ``max_bytes``: per-file limit checked before anything is
    read (default: the pipeline's preprocessing limit); ``examples_dir``: where the example
    media are (None: no examples); ``stream_interval``: the least seconds between two updates
    of a streamed answer; ``image_generator``: an :class:`~imagebind_llm.image_output.ImageGenerator`
    adds the image output to the Embedding arithmetic tab (None: text only); ``batch_decoding``:
    decode the running requests together (:meth:`Pipeline.enable_batching`, up to ``concurrency``
    at once); None: on when ``concurrency`` > 1 (except on ZeroGPU, where the model runs in
    another process), False: off. ``prefix_cache_mb``: memory for the keys and values of
    finished answers, so that a chat's next turn prefills only its new tokens
    (:meth:`Pipeline.enable_prefix_cache`); None: :data:`DEFAULT_PREFIX_CACHE_MB` (0 on
    ZeroGPU, whose calls run in other processes); 0: off. The embeddings of the files asked
    about lately are kept too (:mod:`imagebind_llm.embedding_memo`; not on ZeroGPU).
    """
    if max_bytes is None:
        max_bytes = pipeline.embedder.options.max_bytes
    local = GPU.__module__ == __name__  # not ZeroGPU
    if prefix_cache_mb is None:
        prefix_cache_mb = DEFAULT_PREFIX_CACHE_MB if local else 0
    prefix_bytes = int(prefix_cache_mb * 2**20)
    current = getattr(pipeline, "prefix_cache", None)
    if (current.max_bytes if current is not None else 0) != prefix_bytes:
        pipeline.enable_prefix_cache(prefix_bytes)
    if local and pipeline.embedder.memo is None:  # a second question about a file skips its encoding
        pipeline.embedder.memo = EmbeddingMemo()
    if batch_decoding is None:
        batch_decoding = True if concurrency > 1 and local else None
    batcher = getattr(pipeline, "batcher", None)
    if batch_decoding and (batcher is None or batcher.closed or batcher.max_batch != concurrency):
        pipeline.enable_batching(max_batch=concurrency)
    elif batch_decoding is False and batcher is not None:
        pipeline.disable_batching()
    ctx = AppContext(register_pipeline(pipeline), max_bytes, stream_interval)
    from .image_ui import ImageOutputUI

    image_output = ImageOutputUI(ctx, image_generator)
    examples_dir = Path(examples_dir) if examples_dir is not None else None
    limit = H.max_new_tokens_limit(pipeline)
    model_event = {"concurrency_id": MODEL_GROUP, "concurrency_limit": concurrency}
    accepted_info = (f"Drop or attach files of any kind, several at once (up to {H._megabytes(max_bytes)} each)"
                     if max_bytes else "Drop or attach files of any kind, several at once")

    def examples(rows, inputs, label="Examples", elem_id=None):
        if examples_dir is None:
            return
        rows = _examples_of(examples_dir, rows)
        if rows:
            gr.Examples(rows, inputs, label=label, cache_examples=False, elem_id=elem_id)

    with gr.Blocks(title="ImageBind-LLM", analytics_enabled=False) as demo:
        gr.Markdown(H.header_markdown(pipeline), elem_id="header")
        with gr.Accordion("Settings (all tabs)", open=False):
            with gr.Row():
                max_new_tokens = gr.Slider(*_range("max_new_tokens", limit), value=min(H.DEFAULTS["max_new_tokens"], limit),
                                           step=1, label="Max new tokens")
                temperature = gr.Slider(*H.RANGES["temperature"], value=H.DEFAULTS["temperature"], step=0.01,
                                        label="Temperature", info="0 = always the most likely word")
                top_p = gr.Slider(*H.RANGES["top_p"], value=H.DEFAULTS["top_p"], step=0.01, label="Top p")
            with gr.Row():
                has_cache = pipeline.cache is not None
                use_cache = gr.Checkbox(value=has_cache, interactive=has_cache, label="Visual cache",
                                        info=(f"blend the input with its nearest of {len(pipeline.cache):,} cached "
                                              "image features" if has_cache else "no cache index loaded"))
                cache_size = gr.Slider(*H.RANGES["cache_size"], value=H.DEFAULTS["cache_size"], step=1,
                                       label="Cache size")
                cache_temperature = gr.Slider(*H.RANGES["cache_temperature"], value=H.DEFAULTS["cache_temperature"],
                                              step=0.5, label="Cache temperature")
                cache_weight = gr.Slider(*H.RANGES["cache_weight"], value=H.DEFAULTS["cache_weight"], step=0.01,
                                         label="Cache weight")
        settings = [max_new_tokens, temperature, top_p, use_cache, cache_size, cache_temperature, cache_weight]

        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                session = gr.State(H.ChatSession())
                chatbot = gr.Chatbot(label="Chat", height=480, layout="bubble", buttons=["copy"],
                                     placeholder="Ask a question, and drop images, sounds, videos, depth or "
                                                 "thermal maps, IMU recordings or 3D files into the box below.")
                chat_input = gr.MultimodalTextbox(file_count="multiple", sources=["upload", "microphone"],
                                                  placeholder="Ask a question, drop or attach files…",
                                                  label="Message", show_label=False, info=accepted_info,
                                                  elem_id="chat-input")
                answer = gr.Textbox(visible=False, label="Answer")
                with gr.Row():
                    stop_button = gr.Button("⏹ Stop", variant="stop", size="sm")
                    retry_button = gr.Button("🔄 Retry", size="sm")
                    undo_button = gr.Button("↩️ Undo", size="sm")
                    clear_button = gr.Button("🗑️ Clear", size="sm")
                examples(CHAT_EXAMPLES, [chat_input], "Examples (click one, then press Enter)")
                chat_outputs = [session, chatbot, chat_input, answer]
                chat_event = chat_input.submit(
                    functools.partial(chat, ctx), [session, chat_input, *settings], chat_outputs, api_name="chat",
                    api_description="Send a message (text and files) in this session's chat; returns the history, "
                                    "the input box and the answer.", show_progress="minimal",
                    show_progress_on=[chat_input], **model_event)
                retry_event = retry_button.click(
                    functools.partial(retry, ctx), [session, *settings], chat_outputs, api_name="retry",
                    api_description="Answer the last question again.", show_progress="minimal",
                    show_progress_on=[chat_input], **model_event)
                # Undo and Clear during an answer stop it (cancels: its page updates end too).
                undo_button.click(undo, [session, chat_input], [session, chatbot, chat_input], api_name="undo",
                                  api_description="Remove the last turn (its question goes back into the box).",
                                  queue=False, cancels=[chat_event, retry_event])
                clear_button.click(clear, [session], chat_outputs, api_name="clear",
                                   api_description="Start a new conversation.", queue=False,
                                   cancels=[chat_event, retry_event])
                stop_button.click(stop, [session], [session, chatbot, chat_input], cancels=[chat_event, retry_event],
                                  queue=False, api_visibility="private")

            asks = {}
            for kind, title, api_name in (("image", "Image", "ask_image"), ("audio", "Audio", "ask_audio"),
                                          ("video", "Video", "ask_video"), ("point", "3D", "ask_3d")):
                with gr.Tab(title, id=kind):
                    with gr.Row():
                        with gr.Column():
                            if kind == "image":
                                source = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"],
                                                  label="Image", height=320)
                            elif kind == "audio":
                                source = gr.Audio(type="filepath", sources=["upload", "microphone"], label="Audio")
                            elif kind == "video":
                                source = gr.Video(sources=["upload", "webcam"], label="Video")
                            else:
                                source = gr.File(label="Point cloud or mesh", file_count="single", height=120)
                                mesh_view = gr.Model3D(label="Mesh", visible="hidden", height=320)
                                cloud_view = gr.Plot(label="Point cloud", visible="hidden")
                                source.change(functools.partial(guarded(preview_3d), ctx), [source],
                                              [mesh_view, cloud_view], api_visibility="private",
                                              concurrency_id="preview", concurrency_limit=4)
                            question = gr.Textbox("", label="Question", lines=2,
                                                  placeholder=H.default_questions(pipeline)[kind])
                            with gr.Row():
                                ask_button = gr.Button("Ask", variant="primary")
                                stop_ask = gr.Button("⏹ Stop", variant="stop")
                        with gr.Column():
                            output = gr.Textbox(label="Answer", lines=10, buttons=["copy"], autoscroll=True)
                    function = {"image": ask_image, "audio": ask_audio, "video": ask_video, "point": ask_3d}[kind]
                    event = gr.on([ask_button.click, question.submit], functools.partial(function, ctx),
                                  [source, question, *settings], [output], api_name=api_name,
                                  api_description=f"Ask a question about {H.ACCEPTED_BY_KIND[kind]}; "
                                                  "streams the answer.", preprocess=False, **model_event)
                    stop_ask.click(None, None, None, cancels=[event], queue=False, api_visibility="private")
                    examples({"image": IMAGE_EXAMPLES, "audio": AUDIO_EXAMPLES, "video": VIDEO_EXAMPLES,
                              "point": SHAPE_EXAMPLES}[kind], [source, question])
                    asks[kind] = event

            with gr.Tab("Embedding arithmetic", id="mix"):
                gr.Markdown("Mix inputs of any kind with weights from -1 to 1 and ask about the mix, e.g. a "
                            "photo + 0.5 × a sound, or an image − \"summer\" + \"winter\". Each input is "
                            "normalised first; the table shows how alike the inputs are.")
                with gr.Row():
                    with gr.Column():
                        mix_files = gr.File(label="Files (any kind)", file_count="multiple", height=140)
                        mix_texts = gr.Textbox("", label="Texts, one per line", lines=3,
                                               placeholder="a photo of a dog\na photo of a cat")
                        mix_weights = gr.Textbox("", label="Weights, in input order (files, then texts)",
                                                 placeholder="1, -0.5, 0.5  (missing = 1; the sliders set this)")

                        @gr.render(inputs=[mix_files, mix_texts, mix_weights],
                                   triggers=[demo.load, mix_files.change, mix_texts.change, mix_weights.change,
                                             mix_weights.blur], queue=False)
                        def weight_sliders(files, texts, weights):
                            labels = H.mix_labels(files, texts)
                            if not labels:
                                gr.Markdown("*Add files or texts: each input gets a weight slider here.*")
                                return
                            try:
                                values = H.parse_weights(weights, len(labels))
                            except ImageBindLLMError:
                                values = [1.0] * len(labels)
                            # A typed weight outside [-1, 1] widens its slider rather than being
                            # clamped (moving another slider rewrites every weight from the sliders).
                            # A slider made in a render can only be moved when it says so.
                            sliders = [gr.Slider(min(-1.0, v), max(1.0, v), value=v, step=0.05, interactive=True,
                                                 label=f"{i + 1}. {label}", key=f"weight-{i}-{label}")
                                       for i, (label, v) in enumerate(zip(labels, values))]
                            for slider in sliders:
                                slider.release(weights_from_sliders, sliders, [mix_weights], queue=False,
                                               api_visibility="private")

                        fusion = gr.Radio([("corrected", "normalized"), ("official", "official")],
                                          value="normalized", label="Normalisation",
                                          info="corrected: the weights as given and the mix re-normalised "
                                               "(subtraction works); official: the weights divided by their sum")
                        image_output.controls()
                        mix_question = gr.Textbox("", label="Question", lines=2,
                                                  placeholder=H.default_questions(pipeline)[None])
                        with gr.Row():
                            mix_button = gr.Button("Mix and ask", variant="primary")
                            stop_mix = gr.Button("⏹ Stop", variant="stop")
                    with gr.Column():
                        mix_answer = gr.Textbox(label="Answer", lines=8, buttons=["copy"])
                        image_output.output()
                        # Empty until the first mix, with its own column names rather than Gradio's 1, 2, 3.
                        similarities = gr.Dataframe(headers=["input", "mix"], label="Cosine similarities of the inputs "
                                                    "(and with the mix)", interactive=False)
                        nearest = gr.Dataframe(headers=["rank", "cache entry", "similarity"], interactive=False,
                                               label="Nearest visual-cache entries to the mix",
                                               visible=pipeline.cache is not None)
                mix_event = gr.on([mix_button.click, mix_question.submit], functools.partial(mix, ctx),
                                  [mix_files, mix_texts, mix_weights, fusion, mix_question, *settings],
                                  [mix_answer, similarities, nearest], api_name="mix",
                                  api_description="Mix files and texts with weights and ask about the mix; returns "
                                                  "the answer, the similarity table and the nearest cache entries.",
                                  preprocess=False, **model_event)
                stop_mix.click(None, None, None, cancels=[mix_event], queue=False, api_visibility="private")
                image_output.wire(files=mix_files, texts=mix_texts, weights=mix_weights, fusion=fusion,
                                  question=mix_question, ask_button=mix_button, stop_ask=stop_mix, answer=mix_answer,
                                  cache_settings=[use_cache, cache_size, cache_temperature, cache_weight],
                                  model_event=model_event)
                examples(MIX_EXAMPLES, [mix_files, mix_texts, mix_weights, fusion, mix_question],
                         elem_id="mix-examples")

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo


def _range(name: str, maximum: int | None = None) -> tuple[float, float]:
    low, high = H.RANGES[name]
    return low, (maximum if maximum is not None else high)


def launch_kwargs(max_bytes: int | None = None, examples_dir: Path | str | None = EXAMPLES_DIR) -> dict:
    """The ``launch()`` arguments that belong to the page (theme, CSS, upload limit, examples)."""
    allowed = [str(examples_dir)] if examples_dir is not None and Path(examples_dir).is_dir() else []
    return {"theme": THEME, "css": CSS, "max_file_size": max_bytes, "allowed_paths": allowed}
