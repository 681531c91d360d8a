"""The LLaMA SentencePiece tokenizer, with explicit BOS/EOS and a streaming decoder.

Read with the ``sentencepiece`` package directly (transformers' LlamaTokenizer built the wrong
way silently has 3 pieces; this wrapper checks the vocabulary instead). A Hugging Face model
folder is accepted too: its ``tokenizer.model`` is the same SentencePiece file.
"""

from __future__ import annotations

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

    def stream(self) -> "StreamDecoder":
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
