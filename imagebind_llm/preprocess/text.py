"""Text input: the CLIP byte-pair-encoding tokenizer used by ImageBind's text encoder.

**What it expects.** A Python ``str`` or a list/tuple of ``str`` (any Unicode, any length;
the empty string is valid). Every text becomes one row of 77 token ids (int64), so a batch
is a ``LongTensor`` of shape ``(B, 77)``.

**What it does to a text**, in this order (the official ImageBind recipe):

1. cleaning: ``ftfy.fix_text``, then ``html.unescape`` twice (so ``&amp;amp;`` becomes ``&``),
   strip, collapse every run of whitespace to one space, strip, lower-case;
2. pre-tokenisation with CLIP's regex: the special tokens, the contractions
   ``'s 't 're 've 'm 'll 'd``, runs of letters, single digits, runs of other symbols;
3. each piece as UTF-8 bytes mapped to printable characters, then merged with the first
   48,894 merges of ``bpe_simple_vocab_16e6.txt.gz`` (vocabulary 49,408);
4. ``<|startoftext|>`` (49406) in front, ``<|endoftext|>`` (49407) at the end, zero padding.

**Official vs corrected** (``TextOptions(mode=...)``; default ``"corrected"``):

* ``"official"`` reproduces ImageBind-LLM: ``[SOT] + bpe + [EOT]`` cut to 77 tokens. A text
  longer than 75 BPE tokens therefore loses its end-of-text token; ImageBind's text head
  pools the position of the largest id (meant to be EOT), so every such text is pooled at
  SOT and all long texts get the same embedding.
* ``"corrected"`` is what the original ImageBind does since 2025-11-21: ``[SOT] + bpe`` cut
  to 76 tokens, then EOT, so EOT is always present. Both modes are identical for texts of
  at most 75 BPE tokens.

Bad input (``None``, bytes, a number, a list holding a non-string, an empty list) raises
:class:`~imagebind_llm.errors.InputError` naming the text by its list index (``"text 3"``).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ftfy
import regex
import torch

from ..errors import InputError
from .common import DEFAULT_MODE, Mode, check_mode

__all__ = [
    "BPE_FILE",
    "CONTEXT_LENGTH",
    "EOT_ID",
    "NUM_MERGES",
    "PAD_ID",
    "SOT_ID",
    "VOCAB_SIZE",
    "ClipTokenizer",
    "TextOptions",
    "clean_text",
    "decode",
    "get_tokenizer",
    "tokenize",
]

#: Package resource holding CLIP's merges (see ``imagebind_llm/assets/README.md``).
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Merges used: lines 1 .. 48,894 of the decoded file (49152 - 256 - 2).
NUM_MERGES = 49152 - 256 - 2
#: 256 byte symbols + the same with ``</w>`` + the merges + SOT + EOT.
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
CONTEXT_LENGTH = 77
#: How many distinct words the BPE cache keeps.
BPE_CACHE_SIZE = 65536

_WORD_END = "</w>"
# The CLIP pre-tokenizer (case-insensitive).
_PIECE_RE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE_RE = regex.compile(r"\s+")


@dataclass(frozen=True)
class TextOptions:
    """How texts become token rows.

    Attributes:
        context_length: tokens per row (ImageBind: 77; the text model's positional table has
            exactly that many rows, so change it only for experiments).
        mode: ``"official"`` (EOT lost for long texts, ImageBind-LLM) or ``"corrected"``
            (EOT always last, current original ImageBind). Default ``"corrected"``.
    """

    context_length: int = CONTEXT_LENGTH
    mode: Mode = DEFAULT_MODE

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not isinstance(self.context_length, int) or isinstance(self.context_length, bool):
            raise TypeError(f"context_length must be an int, got {self.context_length!r}")
        if self.context_length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {self.context_length}")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for the bytes 0..255, indexed by byte value.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; every other byte, in increasing order, gets the next code point from 256 on.
    """
    keep = (
        set(range(ord("!"), ord("~") + 1))
        | set(range(ord("¡"), ord("¬") + 1))
        | set(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def _vocab_byte_order() -> list[int]:
    # The vocabulary lists the printable bytes first (in byte order), then the others.
    printable = [b for b in range(256) if _BYTE_SYMBOLS[b] == chr(b)]
    others = [b for b in range(256) if _BYTE_SYMBOLS[b] != chr(b)]
    return printable + others


_BYTE_SYMBOLS = _byte_symbols()
_SYMBOL_TO_BYTE = {s: b for b, s in enumerate(_BYTE_SYMBOLS)}


def clean_text(text: str) -> str:
    """The official cleaning: ftfy, HTML-unescape twice, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _WHITESPACE_RE.sub(" ", text).strip()
    return text.lower()


class ClipTokenizer:
    """CLIP's byte-level BPE. Build it with :func:`get_tokenizer` (cached) rather than directly."""

    def __init__(self, merges: Sequence[tuple[str, str]]):
        if len(merges) != NUM_MERGES:
            raise ValueError(f"expected {NUM_MERGES} merges, got {len(merges)}")
        order = _vocab_byte_order()
        vocab = [_BYTE_SYMBOLS[b] for b in order]
        vocab += [s + _WORD_END for s in vocab]
        vocab += [a + b for a, b in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        if len(vocab) != VOCAB_SIZE:
            raise AssertionError(len(vocab))
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: tok for tok, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self._specials = {SOT_TOKEN: self.sot_id, EOT_TOKEN: self.eot_id}
        # A bounded, thread-safe cache of word -> ids.
        self._bpe_ids = functools.lru_cache(maxsize=BPE_CACHE_SIZE)(self._bpe_ids_uncached)

    # -- BPE -------------------------------------------------------------------------------
    def bpe(self, word: str) -> list[str]:
        """Merge one pre-token (already mapped to byte symbols) into BPE symbols."""
        if not word:
            return []
        parts = list(word)
        parts[-1] = parts[-1] + _WORD_END
        ranks = self.ranks
        while len(parts) > 1:
            best = None
            best_rank = None
            for pair in itertools.pairwise(parts):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            n = len(parts)
            while i < n:
                if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _bpe_ids_uncached(self, piece: str) -> tuple[int, ...]:
        special = self._specials.get(piece)
        if special is not None:
            return (special,)
        symbols = "".join(_BYTE_SYMBOLS[b] for b in piece.encode("utf-8"))
        return tuple(self.encoder[s] for s in self.bpe(symbols))

    # -- public ----------------------------------------------------------------------------
    def encode(self, text: str, *, limit: int | None = None) -> list[int]:
        """Clean ``text`` and return its BPE ids (no SOT/EOT). With ``limit``, stop once at
        least ``limit`` ids are produced (the rest would be truncated anyway)."""
        ids: list[int] = []
        for match in _PIECE_RE.finditer(clean_text(text)):
            ids.extend(self._bpe_ids(match.group()))
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def row(self, text: str, options: TextOptions) -> list[int]:
        """One row of ``options.context_length`` ids, padded with :data:`PAD_ID`."""
        length = options.context_length
        if options.mode == "official":
            ids = [self.sot_id] + self.encode(text, limit=length) + [self.eot_id]
            ids = ids[:length]
        else:
            ids = ([self.sot_id] + self.encode(text, limit=length))[: length - 1] + [self.eot_id]
        return ids + [PAD_ID] * (length - len(ids))

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Ids back to text (lower-cased, cleaned). A full row is cut after its EOT, so the
        zero padding is not decoded as ``!`` (id 0 is also the token ``!``)."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id) + 1]
        pieces = []
        for i in ids:
            if skip_special and i in (self.sot_id, self.eot_id):
                continue
            if i not in self.decoder:
                raise ValueError(f"token id {i} is outside the vocabulary (0..{VOCAB_SIZE - 1})")
            pieces.append(self.decoder[i])
        joined = "".join(pieces)
        out = bytearray()
        for ch in joined:
            b = _SYMBOL_TO_BYTE.get(ch)
            if b is None:  # a special token's characters are all printable ASCII
                out.extend(ch.encode("utf-8"))
            else:
                out.append(b)
        return out.decode("utf-8", errors="replace").replace(_WORD_END, " ").strip()


def _read_merges() -> list[tuple[str, str]]:
    data = importlib.resources.files("imagebind_llm").joinpath("assets", BPE_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n", NUM_MERGES + 1)
    merges = []
    for line in lines[1 : NUM_MERGES + 1]:
        a, b = line.split()
        merges.append((a, b))
    return merges


_TOKENIZER: ClipTokenizer | None = None
_TOKENIZER_LOCK = threading.Lock()


def get_tokenizer() -> ClipTokenizer:
    """The process-wide tokenizer, built on first use (about 0.1 s) and then reused."""
    global _TOKENIZER
    if _TOKENIZER is None:
        with _TOKENIZER_LOCK:
            if _TOKENIZER is None:
                _TOKENIZER = ClipTokenizer(_read_merges())
    return _TOKENIZER


def _check_texts(texts: object) -> list[str]:
    accepted = "a str or a list of str"
    if isinstance(texts, str):
        return [texts]
    if texts is None:
        raise InputError("text", "no text given (None)", accepted)
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise InputError(
            "text", "got bytes, not text; decode them first (e.g. data.decode('utf-8'))", accepted
        )
    if not isinstance(texts, (list, tuple)):
        raise InputError("text", f"unsupported input type {type(texts).__name__}", accepted)
    if len(texts) == 0:
        raise InputError("texts", "the list of texts is empty", accepted)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            what = "None" if t is None else f"a {type(t).__name__}"
            raise InputError(f"text {i}", f"expected a string, got {what}", accepted)
    return list(texts)


def tokenize(texts: str | Sequence[str], options: TextOptions | None = None) -> torch.Tensor:
    """Tokenise one text or a list of texts into a ``(B, context_length)`` int64 tensor.

    A single ``str`` gives ``B = 1``. See the module docstring for the official/corrected
    truncation rule. Raises :class:`InputError` for anything that is not text.
    """
    options = options or TextOptions()
    items = _check_texts(texts)
    tok = get_tokenizer()
    rows = [tok.row(t, options) for t in items]
    return torch.tensor(rows, dtype=torch.long)


def decode(ids: Iterable[int] | torch.Tensor, *, skip_special: bool = True) -> str | list[str]:
    """Debugging aid: token ids back to (cleaned, lower-case) text.

    A 1-D sequence gives one string; a 2-D tensor (a batch) gives a list of strings.
    """
    tok = get_tokenizer()
    if isinstance(ids, torch.Tensor):
        if ids.ndim == 2:
            return [tok.decode(r.tolist(), skip_special=skip_special) for r in ids]
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D or 2-D tensor, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    return tok.decode(ids, skip_special=skip_special)
