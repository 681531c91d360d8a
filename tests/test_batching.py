"""The decode batcher (imagebind_llm/batching.py): many requests decoded together give each the
tokens it gets alone; cancelling or failing one request leaves the others as they were."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from test_app_handlers import golden_pipeline

from imagebind_llm.batching import BatcherClosed, DecodeBatcher
from imagebind_llm.errors import InputError
from imagebind_llm.generation import GenerationConfig, generate_tokens
from imagebind_llm.pipeline import Chat, Media, Settings

GREEDY = GenerationConfig(max_new_tokens=24, temperature=0.0)
QUESTIONS = ["Hi", "What is happening here?", "Describe everything you can see in this picture in great detail.",
             "Why?", "What sound is this, and where could it have been recorded?", "Count to ten",
             "Tell me a story about a dog who lives by the sea", "What moves in this video?"]


@pytest.fixture(scope="module")
def pipeline(golden):
    return golden_pipeline(golden)


@pytest.fixture(scope="module")
def requests(pipeline, golden):
    """(prompt ids, visual query or None, config) of requests of different lengths and media."""
    files = golden / "preprocess" / "files"
    media = [None, Media("image", str(files / "img_640x480.jpg")), None, Media("audio", str(files / "aud_44k1_stereo_5s.wav")),
             Media("audio", str(files / "aud_16k_mono_3s.wav")), None, Media("image", str(files / "img_300x500_rgba.png")),
             Media("video", str(files / "vid_1s_30fps_320x240.mp4"))]
    out = []
    for index, (question, item) in enumerate(zip(QUESTIONS, media)):
        prompt = pipeline.tokenizer.encode(f"### Instruction:\n{question}\n\n### Response:")
        query = None
        if item is not None:
            with torch.inference_mode():
                query = pipeline.model.visual_query(pipeline.feature([item]).vector[None])
        config = GenerationConfig(max_new_tokens=8 + 4 * index, temperature=0.0)
        if index == 5:  # a seeded sampled request draws what it draws alone
            config = GenerationConfig(max_new_tokens=20, temperature=0.9, top_p=0.9, top_k=50, seed=11)
        out.append((prompt, query, config))
    return out


def alone(model, prompt, query, config, eos_id=2) -> list[int]:
    tokens = []
    for step in generate_tokens(model, [prompt], config, visual_query=query, eos_id=eos_id):
        if step[0] is not None:
            tokens.append(step[0])
    return tokens


def run_together(batcher, jobs, **kwargs) -> list:
    """Each (prompt, query, config) on its own thread at once; a list of ids or the exception."""
    results: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(index, prompt, query, config):
        start.wait()
        try:
            results[index] = list(batcher.stream(prompt, query, config, **kwargs))
        except Exception as error:  # noqa: BLE001 - inspected by the test
            results[index] = error

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


@pytest.mark.parametrize("max_batch", [16, 3])
def test_concurrent_requests_get_exactly_their_alone_tokens(pipeline, requests, max_batch):
    expected = [alone(pipeline.model, *job) for job in requests]
    assert len({len(e) for e in expected}) > 3  # the rows really end at different steps
    batcher = DecodeBatcher(pipeline.model, max_batch=max_batch, window_ms=20)
    try:
        got = run_together(batcher, requests)
        assert got == expected
        assert batcher.stats.max_rows == min(max_batch, len(requests)) and batcher.stats.mean_rows > 1.5
        assert batcher.stats.prefill_forwards < batcher.stats.prefills == len(requests)  # admitted together
        assert batcher.running == 0
        # Later requests reuse the freed slots and still match.
        assert run_together(batcher, requests[:2]) == expected[:2]
    finally:
        batcher.close()


def test_pipeline_routes_through_the_batcher_and_answers_the_same(pipeline, golden):
    files = golden / "preprocess" / "files"
    settings = Settings(generation=GenerationConfig(max_new_tokens=16, temperature=0.0))
    cases = [([Media("image", str(files / "img_640x480.jpg"))], "What is happening here?"),
             ([Media("audio", str(files / "aud_22k05_mono_2.5s.flac"))], "What do you hear?"),
             ([], "Hello there, how are you today?")]
    expected = ["".join(pipeline.stream(media, question, settings)) for media, question in cases]
    batcher = pipeline.enable_batching(max_batch=4, window_ms=20)
    try:
        results: list = [None] * len(cases)

        def work(index):
            media, question = cases[index]
            chat = Chat()
            results[index] = "".join(pipeline.chat(chat, question, media, settings))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results == expected
        assert batcher.stats.requests == len(cases)
    finally:
        pipeline.disable_batching()
    assert pipeline.batcher is None and batcher.closed


def test_cancelling_one_request_leaves_the_others_exact(pipeline, requests):
    expected = [alone(pipeline.model, *job) for job in requests[:4]]
    long_config = GenerationConfig(max_new_tokens=60, temperature=0.0)
    batcher = DecodeBatcher(pipeline.model, max_batch=8, window_ms=20)
    try:
        cancel = threading.Event()
        received: list[int] = []
        started = threading.Event()

        def cancelled_request():
            started.wait()
            for token in batcher.stream(requests[1][0], requests[1][1], long_config, eos_id=None, cancel=cancel):
                received.append(token)
                if len(received) == 3:
                    cancel.set()

        def early_leaver():  # the consumer stops reading after two tokens (a closed page)
            started.wait()
            stream = batcher.stream(requests[2][0], requests[2][1], long_config, eos_id=None)
            next(stream), next(stream)
            stream.close()

        side = [threading.Thread(target=cancelled_request), threading.Thread(target=early_leaver)]
        for thread in side:
            thread.start()
        started.set()
        got = run_together(batcher, requests[:4])
        for thread in side:
            thread.join(timeout=60)
        assert got == expected
        assert 3 <= len(received) <= 4  # stopped at the next step boundary
        assert received == alone(pipeline.model, requests[1][0], requests[1][1], long_config, eos_id=None)[:len(received)]
        deadline = threading.Event()
        for _ in range(50):
            if batcher.running == 0:
                break
            deadline.wait(0.1)
        assert batcher.running == 0  # every slot was freed
    finally:
        batcher.close()


def test_an_error_in_one_request_does_not_disturb_the_others(pipeline, requests, monkeypatch):
    expected = [alone(pipeline.model, *job) for job in requests[:3]]
    vocab = pipeline.model.config.llama.vocab_size
    batcher = DecodeBatcher(pipeline.model, max_batch=8, window_ms=30)
    calls = {"n": 0}

    def failing_cancel():
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("the cancel check broke")
        return False

    poisoned_prompt = [1, 5, 7, vocab + 3]  # a token id outside the vocabulary: fails in its prefill
    wrong_query = torch.zeros(1, 1, pipeline.model.config.llama.dim + 1)  # fails in its injections
    jobs = list(requests[:3]) + [(poisoned_prompt, None, GREEDY), (requests[0][0], wrong_query, GREEDY)]
    try:
        results = run_together(batcher, jobs)
        assert results[:3] == expected
        assert isinstance(results[3], IndexError) and isinstance(results[4], RuntimeError)

        # A cancel check that raises fails only its own request.
        results = [None, None]

        def broken():
            try:
                results[0] = list(batcher.stream(requests[1][0], None, GenerationConfig(max_new_tokens=40, temperature=0),
                                                 eos_id=None, cancel=failing_cancel))
            except RuntimeError as error:
                results[0] = error

        thread = threading.Thread(target=broken)
        thread.start()
        results[1] = run_together(batcher, requests[:3])
        thread.join(timeout=60)
        assert isinstance(results[0], RuntimeError) and "cancel check broke" in str(results[0])
        assert results[1] == expected

        # A batched step that fails is retried row by row: only the row that fails alone errs.
        original = batcher._forward
        marker = requests[2][0]

        def forward(rows, first_slot):
            if any(r.prompt == marker for r in rows):
                raise RuntimeError("this row cannot be decoded")
            return original(rows, first_slot)

        monkeypatch.setattr(batcher, "_forward", forward)
        results = run_together(batcher, requests[:3])
        assert results[:2] == expected[:2]
        assert isinstance(results[2], RuntimeError) and "cannot be decoded" in str(results[2])
        monkeypatch.undo()
        # The batcher still serves.
        assert run_together(batcher, requests[:2]) == expected[:2]
        assert batcher.stats.errors >= 4
    finally:
        batcher.close()


def test_requests_admitted_together_are_prefilled_in_one_forward_like_alone(pipeline, requests):
    """Each row's first logits and its keys and values are those of its prefill alone (to
    rounding); the right padding of shorter prompts is not written."""
    from imagebind_llm.llama import KVCache

    model = pipeline.model
    batcher = DecodeBatcher(model)
    jobs = [batcher._make_request(prompt, query, config, 2, None) for prompt, query, config in requests[:4]]
    seen = []
    hook = model.llama.output.register_forward_hook(lambda module, args, out: seen.append(out.float().clone()))
    try:
        with torch.inference_mode():
            tokens = batcher._prefill_together(jobs)
            together = seen.pop()
            for row, job in enumerate(jobs):
                cache = KVCache(model.config.llama, 1, model.config.llama.max_seq_len, model.dtype, model.device)
                ids = torch.tensor([job.prompt])
                alone_logits = model.llama(ids, cache=cache, injections=job.injections, last_only=True)
                assert (together[row] - alone_logits[0]).abs().max() <= 1e-5
                assert tokens[row] == int(alone_logits[0].argmax())
                length = len(job.prompt)
                for layer in range(model.config.llama.n_layers):
                    assert torch.allclose(batcher._keys[layer, row, :, :length], cache.keys[layer][0, :, :length],
                                          atol=1e-5)
                    assert torch.allclose(batcher._values[layer, row, :, :length],
                                          cache.values[layer][0, :, :length], atol=1e-5)
                    assert not batcher._keys[layer, row, :, length:].any()  # padding: nothing written
    finally:
        hook.remove()
    assert batcher.stats.prefill_forwards == 1 and batcher.stats.prefills == 4


def test_requests_that_ended_while_waiting_are_not_prefilled(pipeline, requests):
    from imagebind_llm.batching import _DONE, _Failure

    batcher = DecodeBatcher(pipeline.model)
    stopped = threading.Event()
    stopped.set()

    def broken():
        raise RuntimeError("cancel check broke")

    jobs = [batcher._make_request(prompt, None, config, 2, cancel)
            for (prompt, _, config), cancel in zip(requests[:3], [stopped, broken, None])]
    jobs[2].closed = True  # its consumer went away
    with torch.inference_mode():
        batcher._prefill_group(jobs)
    assert jobs[0].out.get_nowait() is _DONE and jobs[2].out.get_nowait() is _DONE
    failure = jobs[1].out.get_nowait()
    assert isinstance(failure, _Failure) and "cancel check broke" in str(failure.error)
    assert batcher.stats.prefills == 3 and batcher.stats.prefill_forwards == 0 and batcher.stats.errors == 1
    assert batcher.running == 0


def test_a_group_prefill_that_fails_falls_back_to_one_by_one(pipeline, requests, monkeypatch):
    expected = [alone(pipeline.model, *job) for job in requests[:3]]
    batcher = DecodeBatcher(pipeline.model, window_ms=50)

    def broken(group):
        raise RuntimeError("no group prefill today")

    monkeypatch.setattr(batcher, "_prefill_together", broken)
    try:
        assert run_together(batcher, requests[:3]) == expected
        assert batcher.stats.prefill_forwards == batcher.stats.prefills == 3 and batcher.stats.errors == 0
        monkeypatch.undo()
        # A token id outside the vocabulary breaks the group's forward: only its request errs.
        vocab = pipeline.model.config.llama.vocab_size
        bad = ([1, vocab + 5], None, GenerationConfig(max_new_tokens=4, temperature=0.0))
        results = run_together(batcher, [*requests[:2], bad])
        assert results[:2] == expected[:2] and isinstance(results[2], Exception)
        assert batcher.stats.prefills == 6 and batcher.stats.errors == 1
    finally:
        batcher.close()


def test_bad_prompts_are_refused_like_the_unbatched_path(pipeline):
    batcher = DecodeBatcher(pipeline.model)
    with pytest.raises(InputError, match="no tokens"):
        batcher.stream([], None, GREEDY)
    too_long = [1] * pipeline.model.config.llama.max_seq_len
    with pytest.raises(InputError, match="context holds"):
        batcher.stream(too_long, None, GREEDY)
    with pytest.raises(ValueError):
        DecodeBatcher(pipeline.model, max_batch=0)
    batcher.close()


def test_close_ends_waiting_requests(pipeline, requests):
    batcher = DecodeBatcher(pipeline.model)
    stream = batcher.stream(requests[0][0], None, GenerationConfig(max_new_tokens=200, temperature=0.0), eos_id=None)
    first = next(stream)
    assert isinstance(first, int)
    batcher.close()
    with pytest.raises(BatcherClosed):
        list(stream)
    with pytest.raises(BatcherClosed):
        list(batcher.stream(requests[0][0], None, GREEDY))


def test_app_sessions_with_batching_are_exact_and_separate(golden):
    """Three gradio_client sessions at once on an app with batching on: each gets the answers the
    unbatched pipeline gives to its own conversation, and nothing of the others'."""
    from gradio_client import Client, handle_file
    from test_app_client import MAX_BYTES, serve

    from imagebind_llm.app import handlers as H

    examples = Path(__file__).resolve().parent.parent / "examples"
    fast = {"max_new_tokens": 16, "temperature": 0.0}
    pipeline = golden_pipeline(golden, MAX_BYTES)
    settings = H.make_settings(**fast, use_cache=True)  # the page's default when a cache is loaded
    assert pipeline.cache is not None
    conversations = {"alice": ("sunset.png", "Alice asks what this is"), "bob": ("doorbell.wav", "Bob asks about the sound"),
                     "carol": ("house.png", "Carol wants a long description of the house")}
    expected = {}
    for name, (file, question) in conversations.items():
        chat = Chat()
        media = H.route_files([str(examples / file)])
        expected[name] = ["".join(pipeline.chat(chat, f"{question} 0", media, settings)).strip(),
                          "".join(pipeline.chat(chat, f"{question} 1", [], settings)).strip()]
    results: dict[str, list] = {}
    start = threading.Barrier(len(conversations))

    def converse(name):
        file, question = conversations[name]
        client = Client(url, verbose=False)
        start.wait()
        answers, history = [], None
        for turn in range(2):
            files = [handle_file(str(examples / file))] if turn == 0 else []
            history, _, answer = client.predict({"text": f"{question} {turn}", "files": files}, **fast, api_name="/chat")
            answers.append(answer)
        results[name] = [answers, history]

    with serve(pipeline, concurrency=3) as url:
        assert pipeline.batcher is not None and pipeline.batcher.max_batch == 3
        threads = [threading.Thread(target=converse, args=(name,)) for name in conversations]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        stats = pipeline.batcher.stats
    pipeline.disable_batching()
    assert set(results) == set(conversations)
    for name, (answers, history) in results.items():
        assert answers == expected[name], name
        text = repr(history)
        assert len(history) == 4
        for other, (file, question) in conversations.items():
            if other != name:
                assert question not in text and file not in text
    assert stats.requests == 6
