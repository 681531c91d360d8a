"""Mixing the embeddings of several inputs into one feature ("embedding arithmetic").

Every input is first L2-normalised (this removes ImageBind's per-modality logit scales and
re-normalises clip averages), then weighted and summed. Two normalisations:

``"official"`` (ImageBind-LLM's ``forward_visual``)
    weights are divided by ``sum(weights) + 1e-6`` and the sum is **not** re-normalised (a
    single input has norm 1/(1 + 1e-6); a mix of different inputs has norm < 1). The weights
    must have a positive sum. This is what the released model saw and what the golden tests use.

``"normalized"`` (the default for arithmetic, e.g. image - text "dog" + text "cat")
    the weights are used as given (negative ones subtract), and the sum is L2-normalised, so
    the bind network always receives a unit vector like the image embeddings it was trained
    on. A mix that cancels out (norm below 1e-6) is refused.

With the visual cache on, the cache blend re-normalises in both modes (visual_cache.py).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError

FusionMode = Literal["official", "normalized"]
FUSION_MODES = ("official", "normalized")
OFFICIAL_EPS = 1e-6
#: The largest weight magnitude accepted: the mix depends on the weights' ratios only, and a
#: larger one overflows float32 arithmetic (1e30 squared), which turned the mix into zeros.
MAX_WEIGHT = 1e6


def fuse(embeddings: torch.Tensor, weights: Sequence[float] | torch.Tensor, mode: FusionMode = "normalized",
         labels: Sequence[str] | None = None) -> torch.Tensor:
    """Mix N embeddings (N, D) with N weights into one feature (D,).

    ``labels`` name the inputs in error messages.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
    weights = torch.as_tensor(weights, dtype=torch.float64).flatten()  # float64: 1e300 is not yet infinite
    if embeddings.ndim != 2 or len(embeddings) != len(weights):
        raise ValueError(f"need N embeddings (N, D) and N weights, got {tuple(embeddings.shape)} and {len(weights)}")
    if len(weights) == 0:
        raise InputError("inputs", "no input to mix", "at least one input with a non-zero weight")
    embeddings = embeddings.float()
    finite = torch.isfinite(embeddings).all(dim=-1)
    if not finite.all():
        bad = int((~finite).nonzero()[0])
        name = labels[bad] if labels else f"input {bad + 1}"
        raise InputError(name, "its embedding contains NaN or infinite values", "finite inputs")
    if not torch.isfinite(weights).all():
        raise InputError("weights", "a weight is NaN or infinite", "finite weights")
    if (weights.abs() > MAX_WEIGHT).any():
        largest = float(weights[weights.abs().argmax()])
        raise InputError("weights", f"the weight {largest:g} is too large",
                         f"weights between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g} (the mix depends on their ratios only)")
    weights = weights.float()
    if (weights == 0).all():
        raise InputError("weights", "all weights are zero", "at least one non-zero weight")
    units = F.normalize(embeddings, dim=-1)
    if mode == "official":
        total = float(weights.sum())
        if total <= 0:
            raise InputError("weights", f"the weights sum to {total:g}; the official normalisation divides by "
                             "the sum", "weights with a positive sum (or the 'normalized' mode for arithmetic)")
        return (weights / (total + OFFICIAL_EPS)) @ units
    mixed = weights @ units
    if mixed.norm() < 1e-6:
        raise InputError("weights", "the weighted inputs cancel out (the mix is a zero vector)",
                         "weights whose mix is not zero")
    return F.normalize(mixed, dim=-1)
