"""The app served on 127.0.0.1 and driven through gradio_client: every api_name, bad input,
and two sessions at once."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_app_handlers import EXAMPLES, golden_pipeline

from imagebind_llm.app import handlers as H
from imagebind_llm.app import ui
from imagebind_llm.pipeline import Chat

MAX_BYTES = 1_000_000
FAST = {"max_new_tokens": 8, "temperature": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(pipeline, **kwargs):
    """Launch build_demo(pipeline) in this process; yield its local URL; close it."""
    demo = ui.build_demo(pipeline, max_bytes=MAX_BYTES, **kwargs)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                **ui.launch_kwargs(MAX_BYTES))
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def url(golden):
    with serve(golden_pipeline(golden), concurrency=2) as local_url:
        yield local_url


def example(name: str):
    return handle_file(str(EXAMPLES / name))


def test_every_endpoint(url):
    client = Client(url, verbose=False)
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        f"/{name}" for name in ui.API_NAMES}

    history, box, answer = client.predict({"text": "What is happening here?", "files": [example("sunset.png")]},
                                          **FAST, api_name="/chat")
    assert answer and history[-1]["role"] == "assistant" and history[-1]["content"][0]["text"] == answer
    assert history[0]["content"][1]["type"] == "file" and box["value"] == {"text": "", "files": []}
    history, _, second = client.predict({"text": "Tell me more.", "files": []}, **FAST, api_name="/chat")
    assert len(history) == 4 and second  # multi-turn: the session keeps its history
    history, _, again = client.predict(**FAST, api_name="/retry")
    assert len(history) == 4 and again
    history, box = client.predict({"text": "", "files": []}, api_name="/undo")
    assert len(history) == 2 and box["value"]["text"] == "Tell me more."
    history, box, answer = client.predict(api_name="/clear")
    assert history == [] and answer == ""

    for api_name, file in (("/ask_image", "house.png"), ("/ask_audio", "birdsong.wav"),
                           ("/ask_video", "bouncing_ball.mp4"), ("/ask_3d", "cube.obj"), ("/ask_3d", "sphere_points.npy")):
        assert client.predict(example(file), "What is this?", **FAST, api_name=api_name), api_name

    answer, similarities, nearest = client.predict(
        files=[example("room_depth.png"), example("person_thermal.png"), example("walking_imu.npy")],
        texts="a room\na person", weights="1, 0.5, 0.5, -0.3", question="What is going on?", **FAST, api_name="/mix")
    assert answer and similarities["headers"][-1] == "mix" and len(similarities["data"]) == 5
    assert len(nearest["data"]) == 10
    answer, similarities, _ = client.predict(texts="a dog\na cat", fusion="official", **FAST, api_name="/mix")
    assert answer and len(similarities["data"]) == 2


def test_bad_input_gets_a_readable_error_and_the_server_keeps_serving(url, tmp_path):
    client = Client(url, verbose=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    with pytest.raises(AppError, match=r"notes.txt: unsupported file type .txt. Accepted: images"):
        client.predict({"text": "Read this", "files": [handle_file(str(notes))]}, **FAST, api_name="/chat")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not the rest of a png")
    with pytest.raises(AppError, match="broken.png"):
        client.predict(handle_file(str(broken)), "What?", **FAST, api_name="/ask_image")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match="empty.wav: the file is empty"):
        client.predict(handle_file(str(empty)), "What?", **FAST, api_name="/ask_audio")
    with pytest.raises(AppError, match="not a point cloud or mesh"):
        client.predict(example("sunset.png"), "What?", **FAST, api_name="/ask_3d")
    with pytest.raises(AppError, match="weights: 'heavy' is not a number"):
        client.predict(texts="a\nb", weights="1, heavy", api_name="/mix")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_BYTES + 1))
    with pytest.raises(Exception, match="(?i)size|large|exceed"):  # refused by the upload limit
        client.predict(handle_file(str(big)), "What?", **FAST, api_name="/ask_image")
    # Nothing broke: the same client still gets answers.
    assert client.predict(example("house.png"), "What?", **FAST, api_name="/ask_image")
    history, _, answer = client.predict({"text": "Hello", "files": []}, **FAST, api_name="/chat")
    assert answer and len(history) == 2  # the failed turn was not kept


def test_two_sessions_never_see_each_other(url):
    results: dict[str, list] = {}

    def converse(name: str, file: str, question: str):
        client = Client(url, verbose=False)
        history = None
        for i in range(2):
            files = [example(file)] if i == 0 else []
            history, _, _ = client.predict({"text": f"{question} {i}", "files": files}, **FAST, api_name="/chat")
        results[name] = history

    threads = [threading.Thread(target=converse, args=("a", "sunset.png", "Alice asks")),
               threading.Thread(target=converse, args=("b", "doorbell.wav", "Bob asks"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(results) == {"a", "b"}
    for name, own, other, other_file in (("a", "Alice", "Bob", "doorbell.wav"), ("b", "Bob", "Alice", "sunset.png")):
        text = repr(results[name])
        assert len(results[name]) == 4 and f"{own} asks 0" in text and f"{own} asks 1" in text
        assert other not in text and Path(other_file).name not in text


def test_a_chats_next_turn_reuses_the_conversation_so_far(golden):
    """The app keeps finished answers' keys and values (--prefix-cache-mb, on by default): the
    second turn of a chat prefills only what is new, and answers as the model does without it."""
    pipeline = golden_pipeline(golden)
    with serve(pipeline, concurrency=2) as local_url:
        cache = pipeline.prefix_cache
        assert cache is not None and cache.max_bytes == ui.DEFAULT_PREFIX_CACHE_MB * 2**20
        client = Client(local_url, verbose=False)
        first = client.predict({"text": "What is happening here?", "files": [example("sunset.png")]}, **FAST,
                               api_name="/chat")[2]
        assert cache.stats.lookups == 1 and cache.stats.hits == 0 and len(cache) == 1
        first_prompt = cache.stats.prompt_tokens
        second = client.predict({"text": "Tell me more.", "files": []}, **FAST, api_name="/chat")[2]
        assert cache.stats.hits == 1 and cache.stats.reused_tokens >= first_prompt
    pipeline.disable_batching()
    pipeline.enable_prefix_cache(0)
    chat = Chat()
    settings = H.make_settings(**FAST, use_cache=True)  # the app's default where a cache index is loaded
    media = H.route_files([str(EXAMPLES / "sunset.png")])
    assert "".join(pipeline.chat(chat, "What is happening here?", media, settings)).strip() == first
    assert "".join(pipeline.chat(chat, "Tell me more.", (), settings)).strip() == second


def test_the_prefix_cache_can_be_sized_or_switched_off(golden):
    pipeline = golden_pipeline(golden)
    ui.build_demo(pipeline, examples_dir=None, prefix_cache_mb=2.5)
    assert pipeline.prefix_cache.max_bytes == int(2.5 * 2**20)
    ui.build_demo(pipeline, examples_dir=None, prefix_cache_mb=0)
    assert pipeline.prefix_cache is None


def test_the_mix_tables_name_their_columns_before_the_first_mix(golden):
    """Before any mix the two tables are empty; they show their own column names, not 1, 2, 3."""
    demo = ui.build_demo(golden_pipeline(golden), examples_dir=None)
    tables = {block.label: block for block in demo.blocks.values() if isinstance(block, gr.Dataframe)}
    assert tables["Cosine similarities of the inputs (and with the mix)"].headers == ["input", "mix"]
    assert tables["Nearest visual-cache entries to the mix"].headers == ["rank", "cache entry", "similarity"]


def test_one_sessions_requests_run_one_at_a_time_with_concurrency(golden):
    """With several requests running at once (--concurrency), two messages of one session (or a
    Retry during an answer) interleaved their turns: each got the other's half-made history."""
    import time

    pipeline = golden_pipeline(golden)
    settings = {"max_new_tokens": 24, "temperature": 0.0}
    fast = pipeline.stream_ids

    def paced(*args, **kwargs):  # answers at a human pace, so that two of them overlap
        for token in fast(*args, **kwargs):
            time.sleep(0.02)
            yield token

    with serve(pipeline, concurrency=4) as url:
        alone = Client(url, verbose=False)
        expected = [alone.predict({"text": text, "files": []}, **settings, api_name="/chat")[2]
                    for text in ("first", "second")]
        pipeline.stream_ids = paced
        try:
            client = Client(url, verbose=False)
            first = client.submit({"text": "first", "files": []}, **settings, api_name="/chat")
            time.sleep(0.2)
            second = client.submit({"text": "second", "files": []}, **settings, api_name="/chat")
            time.sleep(0.2)
            retry = client.submit(**settings, api_name="/retry")
            assert [first.result()[2], second.result()[2]] == expected
            history, _, answer = retry.result()  # the second question answered again, after it
            assert [m["content"][0]["text"] for m in history if m["role"] == "user"] == ["first", "second"]
            assert answer and history[-1]["content"][0]["text"] == answer
        finally:
            pipeline.stream_ids = fast
