"""The Pipeline as a user drives it: chat history, media on any turn, context overflow,
streaming, cancellation, sampling, embedding arithmetic and every kind of bad input."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch

from imagebind_llm.errors import InputError
from imagebind_llm.fusion import fuse
from imagebind_llm.generation import GenerationConfig, generate, sample_next
from imagebind_llm.pipeline import Chat, Media, Pipeline, Settings
from imagebind_llm.prompts import format_prompt
from imagebind_llm.tokenizer import Tokenizer
from imagebind_llm.visual_cache import CacheConfig, VisualCache

from conftest import golden_media_files, golden_pipeline

GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def pipeline(golden):
    return golden_pipeline(golden)


@pytest.fixture(scope="module")
def files(golden):
    return golden_media_files(golden)


def test_single_turn_chat_equals_the_official_single_prompt(pipeline, files):
    media = [Media("image", files["image"])]
    single = "".join(pipeline.stream(media, "What is happening here?", Settings(generation=GREEDY)))
    chat = Chat()
    streamed = "".join(pipeline.chat(chat, "What is happening here?", media, Settings(generation=GREEDY)))
    assert streamed == single
    assert chat.turns[0].answer == single.strip()


def test_history_is_kept_and_media_stay_until_replaced(pipeline, files):
    settings = Settings(generation=GREEDY)
    chat = Chat()
    list(pipeline.chat(chat, "What is happening here?", [Media("image", files["image"])], settings))
    image_feature = chat.turns[0].feature
    list(pipeline.chat(chat, "Tell me more.", [], settings))
    assert len(chat.turns) == 2 and chat.turns[1].feature is None
    assert torch.equal(chat.active_feature(), image_feature)  # the image is still what the model sees
    list(pipeline.chat(chat, "And now?", [Media("audio", files["audio"])], settings))
    assert not torch.equal(chat.active_feature(), image_feature)  # new media replace it
    # The history shapes the prompt: the same question without history gives another prompt.
    assert all(t.answer is not None for t in chat.turns)


def test_context_overflow_drops_oldest_turns_with_a_notice(pipeline, files):
    settings = Settings(generation=GenerationConfig(max_new_tokens=200, temperature=0.0))
    chat = Chat()
    long_question = "Describe everything in this picture in great detail, please. " * 12
    for _ in range(4):
        list(pipeline.chat(chat, long_question, [Media("image", files["image"])], settings))
    assert len(chat.turns) == 4
    assert chat.notices and "oldest" in chat.notices[-1]
    for notice in chat.notices:  # one turn or several, said in good English
        assert re.search(r"the oldest turn was left out|the [2-9]\d* oldest turns were left out", notice), notice


def test_a_turn_whose_decoding_fails_is_not_kept(pipeline, monkeypatch):
    """A half-made turn left in the chat changed the next answers."""
    chat, settings = Chat(), Settings(generation=GREEDY)
    list(pipeline.chat(chat, "What is it?", [], settings))
    kept = [(t.question, t.answer) for t in chat.turns]

    def broken(*args, **kwargs):
        yield 5
        raise RuntimeError("the decoder failed")

    monkeypatch.setattr(pipeline, "stream_ids", broken)
    with pytest.raises(RuntimeError, match="the decoder failed"):
        list(pipeline.chat(chat, "And now?", [], settings))
    assert [(t.question, t.answer) for t in chat.turns] == kept


def test_a_question_longer_than_the_context_is_refused_and_not_kept(pipeline):
    chat = Chat()
    with pytest.raises(InputError, match="too long"):
        list(pipeline.chat(chat, "word " * 2000, [], Settings(generation=GREEDY)))
    assert chat.turns == []


def test_a_single_question_without_room_for_its_answer_is_refused_as_in_a_chat(pipeline, files):
    """A single question gets the chat's rule: a prompt that leaves less room than max new
    tokens is refused (it was answered with what room was left, an answer cut short silently)."""
    max_len = pipeline.model.config.llama.max_seq_len
    settings = Settings(generation=GenerationConfig(max_new_tokens=max_len // 2, temperature=0.0))
    words = 1
    while len(pipeline.tokenizer.encode(format_prompt("word " * words))) <= max_len // 2:
        words += 1
    question = "word " * words
    needed = len(pipeline.tokenizer.encode(format_prompt(question)))
    assert max_len // 2 < needed < max_len  # it would fit alone: the answer has no room
    message = f"its prompt needs {needed} tokens but at most {max_len - max_len // 2} fit beside the answer"
    with pytest.raises(InputError, match=message):
        list(pipeline.stream([Media("image", files["image"])], question, settings))
    with pytest.raises(InputError, match=message):
        list(pipeline.chat(Chat(), question, [], settings))
    with pytest.raises(InputError, match="leaves no room for the question"):
        pipeline.question_prompt("Hi?", Settings(generation=GenerationConfig(max_new_tokens=max_len)))
    assert pipeline.answer([], "Hi?", Settings(generation=GenerationConfig(max_new_tokens=4, temperature=0.0)))


def test_stream_never_shows_half_a_character(golden):
    tokenizer = Tokenizer(golden / "llama_adapter" / "llama" / "tokenizer.model")
    text = "caf\u00e9 \u6771\u4eac \U0001f415"
    ids = tokenizer.encode(text, bos=False)
    decoder = tokenizer.stream()
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    assert any(tokenizer.sp.IsByte(i) for i in ids)  # the test really exercises byte pieces


def test_cancellation_stops_the_stream(pipeline, files):
    cancel = threading.Event()
    settings = Settings(generation=GenerationConfig(max_new_tokens=50, temperature=0.0))
    received = []
    for delta in pipeline.stream([Media("image", files["image"])], "What is happening here?", settings, cancel):
        received.append(delta)
        cancel.set()
    assert len(received) == 1


def test_sampling_is_reproducible_with_a_seed_and_respects_top_k(pipeline):
    prompt = pipeline.tokenizer.encode("Hello")
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    first = generate(pipeline.model, [prompt], config)
    assert first == generate(pipeline.model, [prompt], config)
    logits = torch.tensor([[5.0, 4.0, 3.0, -1.0]])
    for _ in range(20):
        assert int(sample_next(logits, GenerationConfig(temperature=1.0, top_k=2, top_p=1.0), None)) in (0, 1)
    # top-p keeps the smallest prefix whose mass before each kept token is <= p
    assert int(sample_next(logits, GenerationConfig(temperature=1.0, top_p=0.01), None)) == 0


def test_batch_of_prompts_equals_each_alone(pipeline):
    prompts = [pipeline.tokenizer.encode(q) for q in ("Hi", "What is the weather like today in the city?")]
    batch = generate(pipeline.model, prompts, GREEDY)
    assert batch == [generate(pipeline.model, [p], GREEDY)[0] for p in prompts]


def test_embedding_arithmetic(pipeline, files):
    image, dog, cat = pipeline.embed([Media("image", files["image"]), Media("text", "a dog"), Media("text", "a cat")])
    mixed = fuse(torch.stack([image, dog, cat]), [1.0, -1.0, 1.0])
    expected = torch.nn.functional.normalize(image - dog + cat, dim=-1)
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert torch.isclose(mixed.norm(), torch.tensor(1.0))
    official = fuse(torch.stack([image, cat]), [0.6, 0.4], "official")
    assert torch.allclose(official, (0.6 * image + 0.4 * cat) / (1 + 1e-6), atol=1e-6)  # not re-normalised
    with pytest.raises(InputError, match="positive sum"):
        fuse(torch.stack([image, dog]), [1.0, -1.0], "official")



@pytest.mark.parametrize("embeddings, weights, mode, error, match", [
    (torch.ones(2, 4), [1.0, 1.0], "sum", ValueError, "fusion mode must be one of"),
    (torch.ones(2, 4), [1.0], "normalized", ValueError, "need N embeddings"),
    (torch.ones(4), [1.0], "normalized", ValueError, "need N embeddings"),
    (torch.ones(0, 4), [], "normalized", InputError, "no input to mix"),
    (torch.ones(2, 4), [1.0, float("inf")], "normalized", InputError, "a weight is NaN or infinite"),
    (torch.ones(2, 4), [0.0, 0.0], "official", InputError, "all weights are zero"),
    # Too large for float32 arithmetic: 1e30 squared made the mix a zero vector, 1e300 an infinity.
    (torch.eye(2, 4), [1e30, 1.0], "normalized", InputError, r"the weight 1e\+30 is too large"),
    (torch.eye(2, 4), [1.0, -1e300], "official", InputError, r"the weight -1e\+300 is too large"),
])
def test_fuse_names_what_is_wrong(embeddings, weights, mode, error, match):
    with pytest.raises(error, match=match):
        fuse(embeddings, weights, mode)
    if "too large" in match:  # the bound: a million is still mixed
        assert torch.isfinite(fuse(embeddings, [1e6, 1.0], mode)).all()


def test_bad_inputs_are_clear_errors(pipeline, files, tmp_path):
    settings = Settings(generation=GREEDY)
    image = Media("image", files["image"])
    # Not Media where Media are expected: named, not an AttributeError or "object has no len()".
    for media, message in ((image, "inputs: expected a list of Media, got Media"),
                           ([files["image"]], "input 1: expected a Media, got str"),
                           ([image, None], "input 2: expected a Media, got NoneType"),
                           ([Media("text", 5)], "text input 1: expected a string, got int")):
        with pytest.raises(InputError, match=message):
            pipeline.answer(media, "What is it?", settings)
    # A weight that is not a number, and settings left out (None: the defaults).
    for weight in (None, "0.5"):
        with pytest.raises(InputError, match=f"its weight must be a number, got {weight!r}"):
            pipeline.feature([image, Media("text", "a dog", weight)], settings)
    assert pipeline.feature([image], None).vector.shape == pipeline.feature([image]).vector.shape
    assert pipeline.answer([image], "What is it?", None)
    # Finite but absurd values: named as the input's, not as a model output that is not finite.
    loud = Media("audio", (np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 1e30, 16000))
    with pytest.raises(InputError, match="audio input: its values are too large"):
        pipeline.embed([loud])
    with pytest.raises(InputError, match="imu input: its embedding is not finite"):
        pipeline.embed([Media("imu", np.random.default_rng(0).standard_normal((6, 2000)) * 1e30)])
    with pytest.raises(InputError, match="question is empty"):
        pipeline.answer([image], "   ", settings)
    with pytest.raises(InputError, match="all weights are zero"):
        pipeline.feature([Media("image", files["image"], 0.0)], settings)
    with pytest.raises(InputError, match="cancel out"):
        pipeline.feature([image, Media("image", files["image"], -1.0)], settings)
    with pytest.raises(InputError, match="NaN"):
        fuse(torch.tensor([[float("nan")] * 4]), [1.0])
    with pytest.raises(InputError, match="the text is empty"):
        pipeline.embed([Media("text", "  ")])
    with pytest.raises(InputError, match="unknown input kind"):
        pipeline.embed([Media("smell", "x")])
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 broken")
    with pytest.raises(InputError, match="holiday.jpg"):
        pipeline.feature([Media("image", str(broken), name="holiday.jpg")], settings)
    with pytest.raises(InputError, match="no cache index"):
        Pipeline(pipeline.imagebind, pipeline.model, pipeline.tokenizer).feature([image], Settings(cache=CacheConfig()))
    chat = Chat()
    with pytest.raises(InputError, match="max new tokens"):
        list(pipeline.chat(chat, "Hi", [image], Settings(generation=GenerationConfig(max_new_tokens=10_000))))
    assert chat.turns == []  # a refused turn is not kept (it would have no answer)
    with pytest.raises(InputError, match="holiday.jpg"):
        list(pipeline.chat(chat, "Hi", [Media("image", str(broken), name="holiday.jpg")], settings))
    assert chat.turns == []


def test_cache_width_mismatch_is_refused(pipeline):
    wrong = VisualCache.from_vectors(torch.randn(50, pipeline.imagebind.config.embed_dim + 3))
    with pytest.raises(InputError, match="width"):
        Pipeline(pipeline.imagebind, pipeline.model, pipeline.tokenizer, wrong)


def test_stream_can_be_resumed_on_another_thread(pipeline, files):
    """gradio resumes generators on other threads: inference mode must not leak between steps."""
    from concurrent.futures import ThreadPoolExecutor

    stream = pipeline.stream([Media("image", files["image"])], "What is happening here?", Settings(generation=GREEDY))
    with ThreadPoolExecutor(2) as pool:
        parts = [pool.submit(next, stream).result() for _ in range(2)]
    assert all(isinstance(p, str) for p in parts)
    assert not torch.is_inference_mode_enabled()
    torch.zeros(2).add_(1)  # plain in-place work still runs on this thread


@pytest.mark.parametrize("settings, match", [
    ({"max_new_tokens": 0}, "max_new_tokens: must be a whole number of at least 1, got 0"),
    ({"temperature": -0.5}, "temperature: must be 0 .* got -0.5"),
    ({"top_p": 0.0}, r"top_p: must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p: must be in \(0, 1\], got 1.5"),
    ({"top_k": -1}, "top_k: must be a whole number >= 0, got -1"),
    # Types, NaN and values torch cannot take: they failed deep inside the decoder before.
    ({"max_new_tokens": 2.5}, "max_new_tokens: must be a whole number of at least 1, got 2.5"),
    ({"temperature": float("nan")}, "temperature: must be 0 .* got nan"),
    ({"temperature": 1e-45}, "temperature: must be 0 .* got 1e-45"),
    ({"temperature": float("inf")}, "temperature: must be 0 .* got inf"),
    ({"top_p": float("nan")}, "top_p: must be in"),
    ({"top_k": 1.5}, "top_k: must be a whole number >= 0, got 1.5"),
    ({"seed": 2 ** 70}, "seed: must be a whole number from 0 to 2\\*\\*63 - 1"),
    ({"seed": "a"}, "seed: must be a whole number"),
])
def test_generation_settings_out_of_range_are_named(settings, match):
    with pytest.raises(InputError, match=match):  # an InputError is a ValueError too
        GenerationConfig(**settings)
    assert GenerationConfig(max_new_tokens=np.int64(3), temperature=np.float32(0.5), seed=np.int64(1))
