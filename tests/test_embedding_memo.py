"""The embedding memo (imagebind_llm/embedding_memo.py): a file asked about again is not read or
encoded again, and gets exactly the embedding encoding gives; anything that changes the result
(another file content, output, preprocessing) is encoded afresh."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
import torch
from test_app_handlers import EXAMPLES, golden_pipeline

import imagebind_llm.embedding as embedding_module
from imagebind_llm.app import ui
from imagebind_llm.embedding import Media
from imagebind_llm.embedding_memo import EmbeddingMemo


@pytest.fixture(scope="module")
def pipeline(golden):
    return golden_pipeline(golden)


@pytest.fixture
def loads(monkeypatch):
    """The files the embedder reads (kind, value), in order."""
    calls = []
    real = embedding_module.load

    def counting(kind, value, *args, **kwargs):
        calls.append((kind, str(value)))
        return real(kind, value, *args, **kwargs)

    monkeypatch.setattr(embedding_module, "load", counting)
    return calls


@pytest.fixture
def embedder(pipeline):
    saved = pipeline.embedder.memo
    pipeline.embedder.memo = EmbeddingMemo()
    yield pipeline.embedder
    pipeline.embedder.memo = saved


def test_a_file_seen_again_is_not_read_again_and_gets_the_same_embedding(embedder, loads, tmp_path):
    image, video = tmp_path / "sunset.png", tmp_path / "ball.mp4"
    shutil.copy(EXAMPLES / "sunset.png", image)
    shutil.copy(EXAMPLES / "bouncing_ball.mp4", video)
    media = [Media("image", str(image)), Media("video", str(video)), Media("text", "a sunset")]
    memo = embedder.memo
    embedder.memo = None
    expected = embedder.embed_media(media)
    embedder.memo = memo
    loads.clear()
    first = embedder.embed_media(media)
    again = embedder.embed_media(list(reversed(media)))
    assert torch.equal(first, expected) and torch.equal(again, expected.flip(0))
    assert loads == [("image", str(image)), ("video", str(video))]  # read once each; texts are not kept
    assert memo.stats.hits == 2 and len(memo) == 2
    # another output of the same file is another entry
    prenorm = embedder.embed_media(media[:1], output="prenorm")
    assert not torch.equal(prenorm, first[:1]) and len(loads) == 3


def test_what_changes_the_embedding_is_encoded_afresh(embedder, loads, tmp_path):
    image = tmp_path / "picture.png"
    shutil.copy(EXAMPLES / "sunset.png", image)
    media = [Media("image", str(image))]
    sunset = embedder.embed_media(media)
    shutil.copy(EXAMPLES / "house.png", image)  # the same path, another picture
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # even within a clock tick
    house = embedder.embed_media(media)
    assert not torch.equal(house, sunset) and len(loads) == 2
    saved = embedder.options
    try:
        embedder.options = replace(saved, mode="official")  # other preprocessing, another entry
        embedder.embed_media(media)
        assert len(loads) == 3
    finally:
        embedder.options = saved
    with open(image, "rb") as handle:  # not a path: no identity, always encoded
        embedder.embed_media([Media("image", handle.read())])
    assert len(loads) == 4


def test_the_memo_keeps_the_most_recently_used_entries():
    memo = EmbeddingMemo(entries=2)
    memo.put("a", torch.zeros(3))
    memo.put("b", torch.ones(3))
    assert memo.get("a") is not None  # a is now the most recent
    memo.put("c", torch.ones(3))
    assert memo.get("b") is None and memo.get("a") is not None and memo.get("c") is not None
    assert EmbeddingMemo.key("image", "/no/such/file.png", "unit", None) is None  # reading it will say why
    assert EmbeddingMemo.key("text", "a cat", "unit", None) is None
    with pytest.raises(ValueError):
        EmbeddingMemo(0)


def test_the_app_keeps_the_embeddings_of_files_asked_about(golden):
    pipeline = golden_pipeline(golden)
    assert pipeline.embedder.memo is None  # off unless asked: the library encodes every time
    ui.build_demo(pipeline, examples_dir=None)
    assert isinstance(pipeline.embedder.memo, EmbeddingMemo)
