"""The app without a server: its handlers (plain functions of the pipeline and the inputs), the
event functions of build_demo called directly, the example media, and the flags."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import sys
import threading
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import load_script
from test_imagebind_golden import golden_config

from imagebind_llm.app import handlers as H
from imagebind_llm.app import ui
from imagebind_llm.app.server import parse_args
from imagebind_llm.errors import InputError
from imagebind_llm.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FAST = {"max_new_tokens": 12, "temperature": 0.0}
SETTINGS = H.make_settings(**FAST)
#: The settings inputs of every model event, in the page's order (fast and greedy).
SLIDERS = (12, 0.0, 0.75, False, 10, 20.0, 0.5)


def golden_pipeline(golden: Path, max_bytes: int | None = None, merge_lora: bool = True) -> Pipeline:
    """The golden-set model (small, official-parity weights) as the app configures it."""
    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    pipeline = Pipeline.from_paths(
        imagebind=golden / "imagebind" / "weights.pth", imagebind_config=golden_config(golden),
        llama=golden / "llama_adapter" / adapter_config["llama_type_dir"],
        adapter=golden / "llama_adapter" / "adapter.pth",
        tokenizer=golden / "llama_adapter" / adapter_config["tokenizer"], cache=golden / "cache" / "knn.index",
        merge_lora=merge_lora)
    return H.configure_pipeline(pipeline, max_bytes)


def load_examples_module():
    return load_script(EXAMPLES / "make_examples.py", "make_examples")


@pytest.fixture(scope="module")
def pipeline(golden):
    return golden_pipeline(golden)


def example(name: str) -> str:
    return str(EXAMPLES / name)


def drain(iterator):
    items = list(iterator)
    assert items, "a stream must yield at least once"
    return items


# ------------------------------------------------------------------------------------- examples

EXPECTED_KINDS = {
    "sunset.png": "image", "house.png": "image", "birdsong.wav": "audio", "doorbell.wav": "audio",
    "bouncing_ball.mp4": "video", "room_depth.png": "depth", "person_thermal.png": "thermal",
    "walking_imu.npy": "imu", "walking_imu.csv": "imu", "sphere_points.npy": "point", "cube.obj": "point",
    "torus.glb": "point",
}


def test_examples_cover_every_modality_and_load(pipeline):
    module = load_examples_module()
    assert set(module.EXAMPLES) == set(EXPECTED_KINDS)
    total = 0
    for name, kind in EXPECTED_KINDS.items():
        media = H.route_file(example(name))
        assert media.kind == kind, name
        total += Path(example(name)).stat().st_size
    assert set(EXPECTED_KINDS.values()) == {"image", "audio", "video", "depth", "thermal", "imu", "point"}
    assert total < 2_000_000
    # Every example goes through the model (one batch per kind).
    embeddings = pipeline.embed([H.route_file(example(name)) for name in EXPECTED_KINDS])
    assert embeddings.shape[0] == len(EXPECTED_KINDS) and bool(np.isfinite(embeddings.numpy()).all())


def test_example_generator_is_deterministic(tmp_path):
    module = load_examples_module()
    first, second = tmp_path / "a", tmp_path / "b"
    module.make_examples(first)
    module.make_examples(second)
    for name in module.EXAMPLES:
        digest = [hashlib.sha256((folder / name).read_bytes()).hexdigest() for folder in (first, second)]
        assert digest[0] == digest[1], name
        assert (EXAMPLES / name).is_file(), f"examples/{name} is missing: run python examples/make_examples.py"
    for name in module.TOYWORLD_EXAMPLES:
        digest = [hashlib.sha256((folder / "toyworld" / name).read_bytes()).hexdigest() for folder in (first, second)]
        assert digest[0] == digest[1], name
        assert digest[0] == hashlib.sha256((EXAMPLES / "toyworld" / name).read_bytes()).hexdigest(), (
            f"examples/toyworld/{name} differs from what the generator writes: run python examples/make_examples.py")


def test_toy_world_examples_are_read_as_their_kind(pipeline):
    module = load_examples_module()
    media = [H.route_file(str(EXAMPLES / "toyworld" / name)) for name in module.TOYWORLD_EXAMPLES]
    assert [m.kind for m in media] == [kind for kind, _ in module.TOYWORLD_EXAMPLES.values()]


# ------------------------------------------------------------------------------ header, settings

def test_header_says_when_the_weights_are_untrained(pipeline):
    from imagebind_llm.presets import UNTRAINED_PRESET

    header = H.header_markdown(pipeline)
    assert "ImageBind-LLM" in header and "untrained" not in header.lower()
    assert f"device `cpu`, {str(pipeline.model.dtype).removeprefix('torch.')} ·" in header
    pipeline.name, name = UNTRAINED_PRESET, pipeline.name
    try:
        header = H.header_markdown(pipeline)
    finally:
        pipeline.name = name
    assert "Untrained model: the answers are noise" in header
    assert "--preset imagebind-llm-7b --llama" in header


def test_settings_defaults_are_the_official_demo_s():
    assert H.DEFAULTS == {"max_new_tokens": 128, "temperature": 0.1, "top_p": 0.75, "cache_size": 10,
                          "cache_temperature": 20.0, "cache_weight": 0.5}
    settings = H.make_settings(use_cache=True)
    assert settings.cache is not None and settings.cache.size == 10 and settings.generation.max_new_tokens == 128
    assert H.make_settings().cache is None
    with pytest.raises(InputError, match="top_p"):
        H.make_settings(top_p=0)
    with pytest.raises(InputError, match="normalisation"):
        H.make_settings(fusion="average")


def test_max_new_tokens_leaves_room_for_the_question(pipeline):
    assert H.max_new_tokens_limit(pipeline) == min(512, pipeline.model.config.llama.max_seq_len - H.PROMPT_ROOM)


# ----------------------------------------------------------------------------------------- files

def test_bad_uploads_are_refused_with_the_name_and_what_is_accepted(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError) as error:
        H.route_files([example("sunset.png"), str(notes)])
    assert error.value.source == "notes.txt" and "unsupported file type .txt" in str(error.value)
    assert ".png" in error.value.accepted and ".wav" in error.value.accepted and ".glb" in error.value.accepted
    # A .npy is an accepted type: what is wrong is its content, not its extension.
    np.save(tmp_path / "picture.npy", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InputError, match=r"picture.npy: a .npy array of shape \(10, 10, 3\) is not a point cloud"):
        H.route_files([str(tmp_path / "picture.npy")])
    (tmp_path / "renamed.npy").write_bytes(Path(example("sunset.png")).read_bytes())
    with pytest.raises(InputError, match=r"renamed.npy: not a readable .npy array"):
        H.route_files([str(tmp_path / "renamed.npy")])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: the file is empty"):
        H.route_files([str(empty)])
    with pytest.raises(InputError, match=r"sunset.png: the file is 1.7 kB, over the limit of 1 kB"):
        H.route_files([example("sunset.png")], max_bytes=1000)
    with pytest.raises(InputError) as error:  # several bad files: one message naming all
        H.route_files([str(notes), str(empty)])
    assert error.value.source == "notes.txt, empty.png"
    with pytest.raises(InputError, match="not a point cloud or mesh"):
        H.route_file(example("sunset.png"), expected="point")
    assert H.file_path({"path": "/x/a.png"}) == "/x/a.png" and H.file_path({"video": {"path": "/v.mp4"}}) == "/v.mp4"
    assert H.file_path(None) is None and H.file_paths(None) == []


def test_previews(tmp_path):
    cloud = H.point_preview(example("sphere_points.npy"))
    assert cloud.shape == (H.PREVIEW_POINTS, 3) and cloud.dtype == np.float32
    assert H.point_preview(example("torus.glb")).shape == (H.PREVIEW_POINTS, 3)
    assert H.is_viewer_mesh(example("cube.obj")) and H.is_viewer_mesh(example("torus.glb"))
    assert not H.is_viewer_mesh(example("sphere_points.npy"))
    obj_cloud = tmp_path / "cloud.obj"
    obj_cloud.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    assert not H.is_viewer_mesh(str(obj_cloud))  # vertices only: drawn as a scatter plot
    assert H.imu_preview(example("walking_imu.csv")).shape == (6, 2000)
    from PIL import Image

    for kind, name in (("depth", "room_depth.png"), ("thermal", "person_thermal.png")):
        with Image.open(H.picture_preview(kind, example(name))) as img:
            assert img.mode == "RGB"
    assert H.picture_preview("image", example("sunset.png")) == example("sunset.png")


# ------------------------------------------------------------------------------------------ chat

def test_chat_streams_keeps_history_and_media(pipeline):
    session = H.ChatSession()
    media = H.route_files([example("sunset.png")])
    answers = drain(H.chat_turn(pipeline, session, "What is happening here?", media, SETTINGS))
    for shorter, longer in itertools.pairwise(answers[:-1]):
        assert longer.startswith(shorter)  # the whole answer so far, growing
    assert answers[-1] == session.chat.turns[0].answer == answers[-2].strip()
    assert session.chat.turns[0].media[0].name == "sunset.png"
    drain(H.chat_turn(pipeline, session, "Tell me more.", [], SETTINGS))
    assert [t.question for t in session.chat.turns] == ["What is happening here?", "Tell me more."]
    # The same question about the same media, alone, gives the single-turn answer.
    single = "".join(pipeline.stream(media, "What is happening here?", SETTINGS)).strip()
    assert answers[-1] == single


def test_retry_undo_and_bad_media_keep_the_session_consistent(pipeline, tmp_path):
    session = H.ChatSession()
    drain(H.chat_turn(pipeline, session, "What is this?", H.route_files([example("birdsong.wav")]), SETTINGS))
    first = session.chat.turns[0].answer
    sampled = H.make_settings(max_new_tokens=12, temperature=1.0)
    drain(H.retry_turn(pipeline, session, sampled))
    assert len(session.chat.turns) == 1 and session.chat.turns[0].media[0].name == "birdsong.wav"
    assert session.chat.turns[0].answer  # a new answer to the same question
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="broken.png"):
        drain(H.chat_turn(pipeline, session, "And this?", H.route_files([str(corrupt)]), SETTINGS))
    assert len(session.chat.turns) == 1  # the failed turn is not kept
    turn = H.undo_turn(session)
    assert turn.question == "What is this?" and session.chat.turns == [] and H.undo_turn(session) is None
    with pytest.raises(InputError, match="nothing|no answer"):
        drain(H.retry_turn(pipeline, session, SETTINGS))
    assert first is not None


def test_stop_keeps_the_partial_answer(pipeline):
    long = H.make_settings(max_new_tokens=60, temperature=0.0)
    full = H.ChatSession()
    complete = drain(H.chat_turn(pipeline, full, "Describe it.", H.route_files([example("house.png")]), long))[-1]
    session = H.ChatSession()
    stream = H.in_thread(lambda stop: H.chat_turn(pipeline, session, "Describe it.",
                                                  H.route_files([example("house.png")]), long, cancel=stop))
    next(stream)
    stream.close()  # what the Stop button does
    for _ in range(200):  # the worker stops at the next token
        if session.chat.turns and not any(t.name == "imagebind-llm-request" for t in threading.enumerate()):
            break
        threading.Event().wait(0.01)
    partial = session.chat.turns[0].answer
    assert len(session.chat.turns) == 1 and complete.startswith(partial) and len(partial) < len(complete)


def test_in_thread_runs_the_whole_stream_in_one_thread():
    seen = []

    def produce(stop):
        for i in range(5):
            seen.append(threading.get_ident())
            yield i

    stream = H.in_thread(produce)
    out = []
    for _ in range(5):  # a server resumes generators from different threads
        worker = threading.Thread(target=lambda: out.append(next(stream)))
        worker.start()
        worker.join()
    assert out == [0, 1, 2, 3, 4] and len(set(seen)) == 1

    def fail(stop):
        yield 1
        raise InputError("x.png", "broken")

    with pytest.raises(InputError, match="broken"):
        list(H.in_thread(fail))


def test_throttle_keeps_the_last_item():
    assert list(H.throttle(iter(range(100)), interval=10.0)) == [0, 99]
    assert list(H.throttle(iter(range(5)), interval=0.0)) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------- one input + ask

@pytest.mark.parametrize("kind,name", [("image", "sunset.png"), ("audio", "doorbell.wav"),
                                       ("video", "bouncing_ball.mp4"), ("point", "torus.glb"),
                                       ("point", "sphere_points.npy")])
def test_ask_every_tab(pipeline, kind, name):
    answers = drain(H.ask(pipeline, kind, {"path": example(name)}, "", SETTINGS))  # empty: default question
    expected = "".join(pipeline.stream([H.route_file(example(name), expected=kind)], H.DEFAULT_QUESTIONS[kind],
                                       SETTINGS)).strip()
    assert answers[-1] == expected


def test_ask_refuses_bad_input(pipeline, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no file given"):
        drain(H.ask(pipeline, "image", None, "What?", SETTINGS))
    with monkeypatch.context() as patch:  # a question with no room for its answer: refused before the encoding
        patch.setattr(pipeline, "feature", lambda *a, **k: pytest.fail("the file was encoded"))
        for tab in (lambda q: H.ask(pipeline, "image", example("sunset.png"), q, SETTINGS),
                    lambda q: H.mix(pipeline, [H.route_file(example("sunset.png"))], q, SETTINGS)):
            with pytest.raises(InputError, match="the question is too long: its prompt needs"):
                drain(tab("word " * pipeline.model.config.llama.max_seq_len))
    fake = tmp_path / "song.wav"
    fake.write_bytes(b"RIFF0000WAVEfmt nothing useful here")
    with pytest.raises(InputError, match="song.wav") as error:
        drain(H.ask(pipeline, "audio", str(fake), "What?", SETTINGS))
    # What the page accepts, not the Python objects the preprocessing functions also take.
    assert error.value.accepted == H.UPLOAD_ACCEPTED["audio"] and "waveform" not in str(error.value)
    imu = tmp_path / "walk_imu.csv"
    imu.write_text("1,2,3\n4,5,6\n")
    for turn in (lambda media: H.chat_turn(pipeline, H.ChatSession(), "What?", media, SETTINGS),
                 lambda media: H.mix(pipeline, media, "What?", SETTINGS)):
        with pytest.raises(InputError, match="walk_imu.csv: the CSV file has 3 columns") as error:
            drain(turn(H.route_files([str(imu)])))
        assert error.value.accepted == H.UPLOAD_ACCEPTED["imu"] and "torch tensor" not in str(error.value)


# ---------------------------------------------------------------------------------------- mixing

def test_mix_tables_and_answer(pipeline):
    media = H.mix_media([example("sunset.png"), {"path": example("walking_imu.npy")}], "a dog\n\na cat\n", "1, -0.5")
    assert [(m.kind, m.weight) for m in media] == [("image", 1.0), ("imu", -0.5), ("text", 1.0), ("text", 1.0)]
    results = drain(H.mix(pipeline, media, "What is this?", SETTINGS))
    first, last = results[0], results[-1]
    assert first.answer == "" and last.answer
    table = last.similarities
    assert table.headers == ["input", "1", "2", "3", "4", "mix"] and len(table.rows) == 4
    assert [row[i + 1] for i, row in enumerate(table.rows)] == [1.0] * 4
    assert len(last.nearest.rows) == H.NEAREST_SHOWN
    similarities = [row[2] for row in last.nearest.rows]
    assert similarities == sorted(similarities, reverse=True)
    with_cache = drain(H.mix(pipeline, media, "What is this?", H.make_settings(**FAST, use_cache=True)))[-1]
    assert with_cache.nearest.rows and with_cache.answer
    # The official normalisation divides by the sum of the weights.
    with pytest.raises(InputError, match="sum"):
        drain(H.mix(pipeline, H.mix_media([], "a\nb", "1, -1"), "?", H.make_settings(**FAST, fusion="official")))


def test_mix_inputs_and_weights():
    assert H.parse_weights("1, -0.5;0.25 ", 4) == [1.0, -0.5, 0.25, 1.0]
    assert H.parse_weights("1 2 3", 2) == [1.0, 2.0]
    assert H.unused_weights_notice("1 2 3", 2) == ("3 weights for 2 inputs: the weights pair with the inputs in order "
                                                   "(files, then texts), so the last 1 (3) was not used.")
    assert "the last 2 (-1, 0.5) were not used" in H.unused_weights_notice("1, -1, 0.5", 1)
    assert H.unused_weights_notice("1, 2", 2) is None and H.unused_weights_notice("1", 3) is None
    assert H.unused_weights_notice(None, 1) is None and H.unused_weights_notice([1.0, 0.5], 1) is not None
    assert H.format_weights(1.0, -0.5) == "1, -0.5"
    with pytest.raises(InputError, match="'x' is not a number"):
        H.parse_weights("1, x", 2)
    with pytest.raises(InputError, match="no input given"):
        H.mix_media(None, " \n ", "")
    assert H.mix_labels([example("cube.obj")], "a dice") == ["cube.obj", '"a dice"']


# ------------------------------------------------------------------------- the page, no server

@pytest.fixture(scope="module")
def demo(pipeline):
    return ui.build_demo(pipeline, max_bytes=5_000_000)


def event_fn(demo, api_name):
    return next(f for f in demo.fns.values() if f.api_name == api_name).fn


def test_build_demo_names_every_endpoint(demo):
    info = demo.get_api_info()["named_endpoints"]
    assert set(info) == {f"/{name}" for name in ui.API_NAMES}
    assert [p["parameter_name"] for p in info["/chat"]["parameters"]][:2] == ["message", "max_new_tokens"]
    assert [p["parameter_name"] for p in info["/mix"]["parameters"]][:5] == ["files", "texts", "weights", "fusion",
                                                                            "question"]
    assert all(p["parameter_has_default"] for p in info["/mix"]["parameters"])


def test_chat_event_streams_and_gives_the_message_back_on_error(demo, tmp_path):
    chat = event_fn(demo, "chat")
    session = H.ChatSession()
    updates = list(chat(session, {"text": "What is this?", "files": [example("sunset.png")]}, *SLIDERS, progress=None))
    history, box, answer = updates[-1][1:]
    assert history[0]["role"] == "user" and history[0]["content"][1] == {"path": example("sunset.png")}
    assert history[1]["content"] == answer == session.chat.turns[0].answer
    assert updates[0][2].interactive is False and box.interactive is True  # locked while answering
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"not an image")
    message = {"text": "And this one?", "files": [str(corrupt)]}
    stream = chat(session, message, *SLIDERS, progress=None)
    with pytest.raises(gr.Error) as error:
        updates = []
        for update in stream:
            updates.append(update)
    assert "broken.png" in str(error.value) and "Traceback" not in str(error.value)
    given_back = updates[-1][2].value  # the message goes back in the box
    assert given_back["text"] == "And this one?" and [Path(f["path"]).name for f in given_back["files"]] == ["broken.png"]
    assert len(session.chat.turns) == 1
    with pytest.raises(gr.Error, match="unsupported file type .txt"):
        notes = tmp_path / "notes.txt"
        notes.write_text("x")
        list(chat(session, {"text": "read", "files": [str(notes)]}, *SLIDERS, progress=None))
    with pytest.raises(gr.Error, match="the message is empty"):
        list(chat(session, {"text": "  ", "files": []}, *SLIDERS, progress=None))


def test_unexpected_errors_are_short_and_logged(caplog):
    def broken():
        raise RuntimeError("secret internal detail")

    with pytest.raises(gr.Error) as error:
        ui.guarded(broken)()
    assert "secret" not in str(error.value) and "RuntimeError" in str(error.value)
    assert "secret internal detail" in caplog.text


def test_chat_history_shows_every_kind_inline(pipeline):
    session = H.ChatSession()
    names = ["sunset.png", "doorbell.wav", "bouncing_ball.mp4", "room_depth.png", "walking_imu.csv",
             "sphere_points.npy", "torus.glb"]
    media = H.route_files([example(n) for n in names])
    content = ui.chat_messages(session, ("Q?", media))[0]["content"]
    assert content[0] == "Q?"
    assert content[1] == {"path": example("sunset.png")} and content[2] == {"path": example("doorbell.wav")}
    assert content[3] == {"path": example("bouncing_ball.mp4")} and content[7] == {"path": example("torus.glb")}
    assert content[4]["path"].endswith(".png") and content[4]["path"] != example("room_depth.png")  # false colour
    assert isinstance(content[5], gr.Plot) and isinstance(content[6], gr.Plot)  # IMU trace, point cloud


# ---------------------------------------------------------------------------------------- flags

def test_flags_and_environment():
    args = parse_args([], {})
    assert (args.host, args.port, args.share, args.queue_size, args.concurrency) == ("127.0.0.1", 7860, False, 32, 1)
    assert args.preset is None and args.max_file_size == 200.0 and args.visual_cache is False
    assert args.stream_interval == 0.05 and args.prefix_cache_mb is None
    env = {"GRADIO_SERVER_PORT": "8000", "IMAGEBIND_LLM_CONCURRENCY": "3", "IMAGEBIND_LLM_SHARE": "yes",
           "IMAGEBIND_LLM_PRESET": "imagebind-llm-7b", "IMAGEBIND_LLM_LLAMA": "/llama", "GRADIO_SERVER_NAME": "0.0.0.0",
           "IMAGEBIND_LLM_MAX_FILE_SIZE": "50", "IMAGEBIND_LLM_VISUAL_CACHE": "1",
           "IMAGEBIND_LLM_STREAM_INTERVAL": "0.25", "IMAGEBIND_LLM_PREFIX_CACHE_MB": "256"}
    args = parse_args(["--port", "9000"], env)
    assert (args.port, args.concurrency, args.share, args.preset, args.llama, args.host) == (
        9000, 3, True, "imagebind-llm-7b", "/llama", "0.0.0.0")
    assert args.max_file_size == 50.0 and args.visual_cache is True and args.stream_interval == 0.25
    assert args.prefix_cache_mb == 256.0 and parse_args(["--prefix-cache-mb", "0"], env).prefix_cache_mb == 0
    with pytest.raises(SystemExit):
        parse_args(["--prefix-cache-mb", "-1"], {})
    with pytest.raises(SystemExit):
        parse_args(["--concurrency", "0"], {})
    with pytest.raises(SystemExit):
        parse_args(["--stream-interval", "-1"], {})
    with pytest.raises(SystemExit):
        parse_args([], {"IMAGEBIND_LLM_DTYPE": "float8"})


def test_model_functions_use_zero_gpu_when_the_spaces_package_is_there(monkeypatch, pipeline):
    calls = []

    def gpu(fn=None, **kwargs):  # what spaces.GPU does on ZeroGPU, reduced to counting calls
        def decorate(function):
            @functools.wraps(function)
            def run(*args, **kw):
                calls.append(function.__name__)
                yield from function(*args, **kw)
            return run
        return decorate(fn) if fn is not None else decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    spec = importlib.util.spec_from_file_location("imagebind_llm.app._ui_on_zerogpu", ui.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    demo = module.build_demo(pipeline, examples_dir=None)
    answer = list(event_fn(demo, "ask_image")(example("house.png"), "What?", *SLIDERS, progress=None))[-1]
    assert answer and calls == ["ask_image"]
    assert pipeline.prefix_cache is None  # the calls run in other processes: nothing would be kept
    assert ui.GPU(ui.ask_image) is ui.ask_image  # without the package: the functions as they are


def test_startup_objects_are_frozen_out_of_full_collections():
    import gc
    import time

    from imagebind_llm.app.server import freeze_startup_objects

    try:
        frozen, seconds = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000 and seconds >= 0
        started = time.perf_counter()
        gc.collect()  # only what was made since: the frozen objects are not scanned
        assert time.perf_counter() - started <= max(seconds, 0.05)
    finally:
        gc.unfreeze()
