"""One call from user inputs of several kinds to their ImageBind embeddings.

    embedder = Embedder(imagebind, device="cuda", dtype=torch.bfloat16)
    out = embedder.embed({"image": ["cat.jpg", pil_image], "text": ["a cat", "a dog"], "audio": ["meow.wav"]})
    out.unit["image"]      # (2, D) unit vectors, one row per item, in input order
    out.official["text"]   # ImageBind's own outputs (normalised x the modality's logit scale)
    out.prenorm["audio"]   # head outputs before normalisation (what unCLIP image output uses)

Items of one kind are preprocessed and encoded in batches of ``batch_size``. Images and videos
are separate kinds (they share the vision encoder but not the input shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .embedding_memo import EmbeddingMemo
from .encoders.imagebind import ImageBind
from .errors import InputError
from .preprocess import KIND_TO_MODALITY, PreprocessOptions, check_kind, load, load_batch


@dataclass
class Media:
    """One input: a kind (image, video, audio, text, depth, thermal, imu, point), the item (a path,
    bytes, array, PIL image, (waveform, rate) or a text) and its weight in the mix."""

    kind: str
    value: Any
    weight: float = 1.0
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.value, (str, Path)):
            return self.value if self.kind == "text" else Path(self.value).name
        return f"{self.kind} input"


@dataclass
class Embeddings:
    unit: dict[str, torch.Tensor] = field(default_factory=dict)
    official: dict[str, torch.Tensor] = field(default_factory=dict)
    prenorm: dict[str, torch.Tensor] = field(default_factory=dict)


def _first_non_finite(batch: torch.Tensor) -> int | None:
    """The first row of ``batch`` holding NaN or an infinity, or None (integer rows never do)."""
    if not batch.is_floating_point():
        return None
    finite = torch.isfinite(batch.flatten(1)).all(dim=1)
    return None if finite.all() else int((~finite).nonzero()[0])


class Embedder:
    def __init__(self, model: ImageBind, options: PreprocessOptions | None = None, *, batch_size: int = 8,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.options = options or PreprocessOptions()
        self.batch_size = batch_size
        #: An :class:`~imagebind_llm.embedding_memo.EmbeddingMemo`: :meth:`embed_media` then skips
        #: files it encoded lately (None: every input is read and encoded).
        self.memo: EmbeddingMemo | None = None

    def preprocess(self, kind: str, items: Sequence[Any]) -> torch.Tensor:
        """Model inputs (N, ...) of a list of items of one kind (CPU)."""
        return load_batch(kind, items, self.options)

    @torch.inference_mode()
    def encode_inputs(self, kind: str, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed inputs (N, ...) -> {"unit", "official", "prenorm"} (N, D), in batches."""
        modality = KIND_TO_MODALITY[kind]
        parts = [self.model.encode_all(modality, batch[i:i + self.batch_size])
                 for i in range(0, len(batch), self.batch_size)]
        return {key: torch.cat([p[key] for p in parts]) for key in ("unit", "official", "prenorm")}

    def embed(self, inputs: Mapping[str, Sequence[Any] | Any]) -> Embeddings:
        """``inputs`` maps a kind (image, video, text, audio, depth, thermal, imu, point) to one
        item or a list of items (a list means several items). Returns the embeddings of every kind, rows in input order."""
        out = Embeddings()
        for kind, items in inputs.items():
            check_kind(kind)
            if not isinstance(items, list):  # one item (a path, an array, a (waveform, rate) tuple...)
                items = [items]
            if len(items) == 0:
                raise InputError(kind, "no items given", f"one or more {kind} inputs")
            encoded = self.encode_inputs(kind, self.preprocess(kind, items))
            out.unit[kind] = encoded["unit"]
            out.official[kind] = encoded["official"]
            out.prenorm[kind] = encoded["prenorm"]
        return out

    def embed_media(self, media: Sequence[Media], output: str = "unit") -> torch.Tensor:
        """Embeddings (N, D) of the inputs, in order (batched per kind): ``output`` "unit" (the
        default), "official" or "prenorm" (see :meth:`encode_inputs`)."""
        if output not in ("unit", "official", "prenorm"):
            raise ValueError(f"output must be 'unit', 'official' or 'prenorm', got {output!r}")
        if isinstance(media, Media) or not isinstance(media, (list, tuple)):
            raise InputError("inputs", f"expected a list of Media, got {type(media).__name__}",
                             "[Media(kind, value), ...] (a single input in a list too)")
        if not media:
            raise InputError("inputs", "no input given", "one or more inputs")
        rows: list[torch.Tensor | None] = [None] * len(media)
        by_kind: dict[str, list[int]] = {}
        for index, item in enumerate(media):
            if not isinstance(item, Media):
                raise InputError(f"input {index + 1}", f"expected a Media, got {type(item).__name__}",
                                 "Media(kind, value), e.g. Media('image', 'photo.jpg')")
            check_kind(item.kind)
            if item.kind == "text" and not isinstance(item.value, str):
                raise InputError(f"text input {index + 1}", f"expected a string, got {type(item.value).__name__}",
                                 "a non-empty text")
            if item.kind == "text" and not item.value.strip():
                raise InputError(item.label or "text input", "the text is empty", "a non-empty text")
            by_kind.setdefault(item.kind, []).append(index)
        memo = self.memo
        for kind, indices in by_kind.items():
            keys: dict[int, Any] = {}
            if memo is not None:  # files encoded lately are not read again
                options = (self.options.max_bytes, self.options.for_kind(kind))
                for index in indices:
                    key = memo.key(kind, media[index].value, output, options)
                    if key is not None and (known := memo.get(key)) is not None:
                        rows[index] = known
                    else:
                        keys[index] = key
                indices = [i for i in indices if rows[i] is None]
                if not indices:
                    continue
            items = [media[i] for i in indices]
            if kind == "text":
                inputs = load_batch("text", [m.value for m in items], self.options)
            else:  # one by one, so that an error names the user's file
                inputs = torch.stack([load(kind, m.value, self.options, name=m.name) for m in items])
            if (bad := _first_non_finite(inputs)) is not None:
                raise InputError(items[bad].label, "its values are too large: after preprocessing they are not "
                                 "finite", "values of a real recording or picture (e.g. audio samples in [-1, 1])")
            unit = self.encode_inputs(kind, inputs)[output]
            if (bad := _first_non_finite(unit)) is not None:  # e.g. IMU values of 1e30 overflow in the encoder
                raise InputError(items[bad].label, "its embedding is not finite: its values are out of the range "
                                 "the encoder computes in (or a float16 encoder overflowed)",
                                 "values of a real recording or picture")
            for row, index in zip(unit, indices):
                rows[index] = row.float().cpu()
                if keys.get(index) is not None:
                    memo.put(keys[index], rows[index])
        return torch.stack(rows)  # type: ignore[arg-type]
