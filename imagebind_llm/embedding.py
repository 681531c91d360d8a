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
from typing import Any, Mapping, Sequence

import torch

from .encoders.imagebind import ImageBind
from .errors import InputError
from .preprocess import KIND_TO_MODALITY, PreprocessOptions, check_kind, load_batch


@dataclass
class Embeddings:
    unit: dict[str, torch.Tensor] = field(default_factory=dict)
    official: dict[str, torch.Tensor] = field(default_factory=dict)
    prenorm: dict[str, torch.Tensor] = field(default_factory=dict)


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
