"""The LLaMA SentencePiece tokenizer, with explicit BOS/EOS and a streaming decoder.

Read with the ``sentencepiece`` package directly (transformers' LlamaTokenizer built the wrong
way silently has 3 pieces; this wrapper checks the vocabulary instead). A Hugging Face model
folder is accepted too: its ``tokenizer.model`` is the same SentencePiece file.

For the transformers side, :func:`load_hf_tokenizer` builds a ``transformers`` tokenizer from
the same file (or a folder's ``tokenizer.json``), makes it split text exactly as SentencePiece
does and checks its vocabulary against the SentencePiece model; :func:`save_hf_tokenizer`
writes the files a Hugging Face model folder needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import CheckpointError


class Tokenizer:
    def __init__(self, model_path: str | Path):
        import sentencepiece

        path = Path(model_path)
        if path.is_dir():
            path = path / "tokenizer.model"
        if not path.is_file():
            raise CheckpointError(f"tokenizer not found: {path} (a SentencePiece tokenizer.model is expected)")
        self.path = path
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except Exception as error:  # sentencepiece raises OSError/RuntimeError with C++ text
            raise CheckpointError(f"{path.name}: not a SentencePiece model ({error})") from error
        self.n_words = self.sp.GetPieceSize()
        if self.n_words < 4:
            raise CheckpointError(f"{path.name}: the tokenizer has only {self.n_words} pieces")
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()  # -1 for LLaMA: no pad piece
        self.unk_id = self.sp.unk_id()

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.sp.EncodeAsIds(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns a growing list of token ids into text deltas without ever showing half a UTF-8
    character: byte-fallback pieces (``<0xE4>``...) are held back while they may still be the
    start of a character. The deltas concatenate to exactly ``tokenizer.decode(ids)``."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def _pending_bytes(self) -> bool:
        """True when the ids end in byte pieces that do not yet form complete characters."""
        sp = self.tokenizer.sp
        tail = bytearray()
        for token in reversed(self.ids):
            if not sp.IsByte(token):
                break
            tail[:0] = bytes([int(sp.IdToPiece(token)[3:5], 16)])
            if len(tail) >= 4:
                break
        if not tail:
            return False
        # Incomplete if the last lead byte announces more continuation bytes than follow it.
        for back in range(1, min(len(tail), 4) + 1):
            byte = tail[-back]
            if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
                continue
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back < need
        return False

    def push(self, token: int) -> str:
        """Add one token; return the new text that can be shown now (may be empty)."""
        self.ids.append(int(token))
        if self._pending_bytes():
            return ""
        return self._emit()

    def flush(self) -> str:
        """The rest of the text, at the end of generation (incomplete bytes become U+FFFD)."""
        return self._emit()

    def _emit(self) -> str:
        text = self.tokenizer.decode(self.ids)
        if not text.startswith(self.emitted):
            # SentencePiece changed earlier text (rare: e.g. a leading space resolved later);
            # show nothing new until the full text is consistent again.
            return ""
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta


# ---------------------------------------------------------------------------------------------
# transformers tokenizers, checked against the SentencePiece model
# ---------------------------------------------------------------------------------------------


def _sentencepiece_file(path: Path) -> Path | None:
    candidate = path / "tokenizer.model" if path.is_dir() else path
    return candidate if candidate.is_file() else None


def _splits_like_sentencepiece(hf_tokenizer, model_file: Path) -> None:
    """transformers 5 converts a SentencePiece BPE model with a ``Metaspace(prepend_scheme=
    "first")`` pre-tokenizer, which does not add SentencePiece's dummy "▁" prefix when the text
    already starts with a space (" x" -> one "▁" less than LLaMA was trained with). For the
    LLaMA kind of model (identity normalisation, dummy prefix, whitespace kept) the exact
    equivalent is the normaliser "prepend ▁, spaces -> ▁" with no pre-tokenizer."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import normalizers, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    spec = proto.normalizer_spec
    if spec.name != "identity" or not spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        return  # another normalisation: keep what transformers built
    backend = hf_tokenizer.backend_tokenizer
    if backend.normalizer is None and isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace):
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None


def check_hf_tokenizer(hf_tokenizer, reference: Tokenizer | int | None) -> None:
    """Raise :class:`CheckpointError` unless a transformers tokenizer has the vocabulary of the
    SentencePiece model (``reference``: a :class:`Tokenizer` or its piece count; None: only
    rule out the empty 3-piece tokenizer) and, given a :class:`Tokenizer`, its BOS/EOS ids."""
    pieces = len(hf_tokenizer)
    expected = reference.n_words if isinstance(reference, Tokenizer) else reference
    if (expected is None and pieces <= 3) or (expected is not None and pieces != expected):
        raise CheckpointError(
            f"the transformers tokenizer has {pieces} pieces but the SentencePiece model has "
            f"{expected if expected is not None else 'more than 3'}: it was built the wrong way (in "
            "transformers 5, LlamaTokenizer(vocab_file=...) ignores the file and keeps 3 pieces; use "
            "load_hf_tokenizer or LlamaTokenizer.from_pretrained) or protobuf is missing")
    if isinstance(reference, Tokenizer):
        ids = (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id)
        if ids != (reference.bos_id, reference.eos_id):
            raise CheckpointError(f"the transformers tokenizer has BOS/EOS ids {ids}, the SentencePiece model "
                                  f"{(reference.bos_id, reference.eos_id)}")


def load_hf_tokenizer(path: str | Path, exact: bool = True):
    """A ``transformers`` tokenizer for LLaMA: from a SentencePiece ``tokenizer.model`` (a file
    or a folder holding it; converted by transformers, which needs ``protobuf``) or from a
    folder's ``tokenizer.json``. It adds BOS like :meth:`Tokenizer.encode`. With ``exact`` it
    splits text exactly as SentencePiece does (see :func:`_splits_like_sentencepiece`).

    Checked: its vocabulary equals the SentencePiece model's (when the folder has one) and is
    not the 3-piece tokenizer a wrong build gives; otherwise :class:`CheckpointError`.
    """
    try:
        from transformers import AutoTokenizer, LlamaTokenizer
    except ImportError as error:
        raise CheckpointError(f"the transformers package is needed for a Hugging Face tokenizer ({error})") from error

    path = Path(path)
    model_file = _sentencepiece_file(path)
    reference = Tokenizer(model_file) if model_file is not None else None
    try:
        # Absolute and local only: transformers reads a relative path such as llama/tokenizer.model
        # as a hub repository id first (five network retries before it looks at the disk).
        if path.is_dir() and (path / "tokenizer.json").is_file():
            hf_tokenizer = AutoTokenizer.from_pretrained(str(path.resolve()), local_files_only=True)
        elif model_file is not None:
            hf_tokenizer = LlamaTokenizer.from_pretrained(str(model_file.resolve()), add_bos_token=True,
                                                          add_eos_token=False, local_files_only=True)
        else:
            raise CheckpointError(f"no tokenizer at {path}: a SentencePiece tokenizer.model or a folder with "
                                  "tokenizer.json is expected")
    except (OSError, ValueError, ImportError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: transformers cannot build the tokenizer ({error}); converting a "
                              "SentencePiece model needs the protobuf package") from error
    check_hf_tokenizer(hf_tokenizer, reference)
    if exact and model_file is not None:
        _splits_like_sentencepiece(hf_tokenizer, model_file)
    return hf_tokenizer


def save_hf_tokenizer(source: str | Path, directory: str | Path) -> Path:
    """Write a Hugging Face tokenizer into ``directory``: ``tokenizer.model`` (the SentencePiece
    file, for sentencepiece users), ``tokenizer.json`` (the exact split of
    :func:`load_hf_tokenizer`) and ``tokenizer_config.json``. The config names the generic
    fast tokenizer class so that ``AutoTokenizer`` loads ``tokenizer.json`` as written
    (transformers 5's LlamaTokenizer would rebuild its pre-tokenizer). Returns ``directory``."""
    source = Path(source)
    model_file = _sentencepiece_file(source)
    if model_file is None:
        raise CheckpointError(f"no SentencePiece tokenizer.model at {source}")
    reference = Tokenizer(model_file)
    hf_tokenizer = load_hf_tokenizer(model_file)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model_file.resolve() != (directory / "tokenizer.model").resolve():
        shutil.copyfile(model_file, directory / "tokenizer.model")
    hf_tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    piece = reference.sp.IdToPiece
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": piece(reference.bos_id),
              "eos_token": piece(reference.eos_id), "unk_token": piece(reference.unk_id),
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 2048}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    check_hf_tokenizer(load_hf_tokenizer(directory), reference)
    return directory
