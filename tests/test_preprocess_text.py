"""CLIP BPE tokenizer: golden tokens (official and corrected), special ids, bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch

from imagebind_llm.errors import InputError
from imagebind_llm.preprocess import text as T
from imagebind_llm.preprocess.text import TextOptions, decode, get_tokenizer, tokenize

OFFICIAL = TextOptions(mode="official")
CORRECTED = TextOptions(mode="corrected")


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def text_entry(golden, preprocess_manifest):
    entries = [e for e in preprocess_manifest if e["modality"] == "text"]
    assert entries, "no text entry in the preprocess manifest"
    entry = entries[0]
    texts = json.loads((golden / "preprocess" / entry["file"]).read_text(encoding="utf-8"))
    return entry, texts


def test_constants():
    assert T.VOCAB_SIZE == 49408
    assert (T.SOT_ID, T.EOT_ID, T.PAD_ID, T.CONTEXT_LENGTH) == (49406, 49407, 0, 77)
    assert T.NUM_MERGES == 48894
    tok = get_tokenizer()
    assert len(tok.encoder) == T.VOCAB_SIZE
    assert tok.encoder["<|startoftext|>"] == T.SOT_ID and tok.encoder["<|endoftext|>"] == T.EOT_ID
    assert get_tokenizer() is tok  # built once


def test_golden_official_every_row(golden, text_entry):
    entry, texts = text_entry
    expected = _load(golden / "preprocess" / entry["expected"])
    got = tokenize(texts, OFFICIAL)
    assert got.dtype == torch.int64 and got.shape == expected.shape
    for i, text in enumerate(texts):
        assert torch.equal(got[i], expected[i]), f"row {i} differs: {text!r}"
        # one text at a time gives the same row
        assert torch.equal(tokenize(text, OFFICIAL)[0], expected[i])
    if "argmax_position" in entry:
        assert got.argmax(dim=-1).tolist() == entry["argmax_position"]
    if "eot_present" in entry:
        assert [bool((r == T.EOT_ID).any()) for r in got] == entry["eot_present"]


def test_golden_corrected_every_row(golden, text_entry):
    _, texts = text_entry
    reference = _load(golden / "preprocess" / "reference_text_tokens_original_imagebind.pt")
    got = tokenize(texts)  # corrected is the default
    assert torch.equal(got, reference)
    official = tokenize(texts, OFFICIAL)
    for i in range(len(texts)):
        has_eot = bool((official[i] == T.EOT_ID).any())
        # identical whenever the official row kept its EOT; otherwise EOT is last
        assert torch.equal(got[i], official[i]) == has_eot
        assert (got[i] == T.EOT_ID).any()


def test_golden_imagebind_inputs(golden):
    texts = json.loads((golden / "imagebind" / "config.json").read_text())["texts"]
    inputs = _load(golden / "imagebind" / "inputs.pt")
    assert torch.equal(tokenize(texts, OFFICIAL), inputs["text"])
    original = _load(golden / "imagebind" / "text_original_imagebind_tokenizer.pt")
    assert list(original["texts"]) == list(texts)
    assert torch.equal(tokenize(list(original["texts"]), CORRECTED), original["tokens"])


def test_known_example_and_empty():
    assert tokenize("A dog.", OFFICIAL)[0, :6].tolist() == [49406, 320, 1929, 269, 49407, 0]
    for opts in (OFFICIAL, CORRECTED):
        row = tokenize("", opts)[0]
        assert row[:2].tolist() == [T.SOT_ID, T.EOT_ID] and not row[2:].any()


def test_long_text_truncation():
    long = "word " * 200
    off = tokenize(long, OFFICIAL)[0]
    cor = tokenize(long, CORRECTED)[0]
    assert off.shape == cor.shape == (77,)
    assert T.EOT_ID not in off.tolist() and off[0] == T.SOT_ID
    assert cor[-1] == T.EOT_ID and torch.equal(cor[:-1], off[:-1])
    # exactly at the limit: 75 BPE tokens still fit with EOT in both modes
    text75 = " ".join(["dog"] * 75)
    assert torch.equal(tokenize(text75, OFFICIAL), tokenize(text75, CORRECTED))
    assert tokenize(text75, OFFICIAL)[0, -1] == T.EOT_ID


def test_cleaning():
    assert T.clean_text("  Tom &amp;amp; JERRY\t\n ok ") == "tom & jerry ok"
    assert torch.equal(tokenize("HELLO   world"), tokenize("hello world"))


def test_custom_context_length():
    out = tokenize(["a b c d e f"], TextOptions(context_length=5, mode="corrected"))
    assert out.shape == (1, 5) and out[0, -1] == T.EOT_ID
    with pytest.raises(ValueError):
        TextOptions(context_length=1)
    with pytest.raises(ValueError):
        TextOptions(mode="bogus")


def test_decode_roundtrip():
    ids = tokenize(["A photo of a DOG!", "naïve café"])
    assert decode(ids) == ["a photo of a dog !", "naïve café"]
    assert decode(ids[0]) == "a photo of a dog !"
    assert decode(ids[0].tolist(), skip_special=False).startswith("<|startoftext|>")


@pytest.mark.parametrize(
    "bad, where",
    [
        (None, "text"),
        (b"bytes", "text"),
        (42, "text"),
        ([], "texts"),
        (["ok", "fine", "good", 3], "text 3"),
        (["ok", None], "text 1"),
    ],
)
def test_bad_input(bad, where):
    with pytest.raises(InputError) as info:
        tokenize(bad)
    assert info.value.source == where
    assert str(info.value).startswith(where)


def test_fast():
    get_tokenizer()
    texts = ["a fairly ordinary caption about a cat sitting on a mat"] * 200
    start = time.perf_counter()
    tokenize(texts)
    assert time.perf_counter() - start < 2.0
