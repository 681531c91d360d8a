"""ImageBind with ImageBind-LLM's 3D branch: seven encoders into one embedding space.

``ImageBind(config)({modality: input})`` returns, per modality, what the official
``ImageBindModel.forward`` returns: the head output L2-normalised and multiplied by the
modality's logit scale, averaged over clips when the input has a clip axis (ndim >= 5:
video (B, S, 3, T, H, W), audio (B, S, 1, mel, frames)). ``output="prenorm"`` gives the
clip-averaged head output before the postprocessor (what unCLIP image output uses) and
``output="unit"`` the official output re-normalised to unit length (what ImageBind-LLM's
``forward_visual`` feeds to the bind network).
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ImageBindConfig
from ..constants import MAX_LOGIT_SCALE
from .modalities import AudioEncoder, Head, ImageLikeEncoder, ImuEncoder, TextEncoder, VisionEncoder
from .point import PointEncoder

MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu", "point")
Output = Literal["official", "prenorm", "unit"]


class PointModality(nn.Module):
    """Point-BERT encoder + ImageBind-style head (LayerNorm, dropout, projection)."""

    def __init__(self, config: ImageBindConfig):
        super().__init__()
        point = config.point
        self.encoder = PointEncoder(point)
        self.head = Head(point.projection_dim, config.embed_dim, config.head_norm_eps, config.point_head_dropout)

    def forward(self, points: torch.Tensor, start_indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(points, start_indices))


class ImageBind(nn.Module):
    #: Optional :class:`~imagebind_llm.lowmem.EncoderResidency`: lazy reading of each encoder from
    #: the checkpoint and CPU offload. None = every encoder is in place on one device.
    residency = None

    def __init__(self, config: ImageBindConfig):
        super().__init__()
        self.config = config
        c, dim = config, config.embed_dim
        self.vision = VisionEncoder(c.vision, dim, c.head_norm_eps)
        self.text = TextEncoder(c.text, dim, c.head_norm_eps)
        self.audio = AudioEncoder(c.audio, dim, c.head_norm_eps, c.stem_norm_eps)
        self.depth = ImageLikeEncoder(c.depth, dim, c.head_norm_eps, c.stem_norm_eps)
        self.thermal = ImageLikeEncoder(c.thermal, dim, c.head_norm_eps, c.stem_norm_eps)
        self.imu = ImuEncoder(c.imu, dim, c.head_norm_eps, c.stem_norm_eps, c.imu_head_dropout)
        self.point = PointModality(c) if c.point is not None else None
        # Postprocessor logit scales, stored as logs. Text's is learnable, the others fixed.
        for name in self.modalities:
            scale = getattr(c.logit_scales, name)
            if scale is None:
                continue
            value = torch.tensor(math.log(scale))
            encoder = self.encoder(name)
            if name == "text":
                encoder.log_logit_scale = nn.Parameter(value)
            else:
                encoder.register_buffer("log_logit_scale", value)
        self.init_weights()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m != "point" or self.point is not None)

    @property
    def dtype(self) -> torch.dtype:
        if self.residency is not None:
            return self.residency.dtype
        return self.vision.patch_embed.dtype

    @property
    def device(self) -> torch.device:
        """Where the encoders run (with offload, not where idle encoders are kept)."""
        if self.residency is not None:
            return self.residency.device
        return self.vision.patch_embed.device

    def encoder(self, modality: str) -> nn.Module:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
        module = getattr(self, modality)
        if module is None:
            raise ValueError(f"this ImageBind has no {modality!r} branch (a checkpoint without point weights)")
        return module

    def logit_scale(self, modality: str) -> torch.Tensor | None:
        log_scale = getattr(self.encoder(modality), "log_logit_scale", None)
        if log_scale is None:
            return None
        return log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def encode_all(self, modality: str, x: torch.Tensor,
                   point_start_indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All three outputs of one forward pass: ``prenorm`` (clip-averaged head output),
        ``official`` (normalised, logit-scaled, clip-averaged) and ``unit`` (official re-normalised)."""
        if self.residency is not None:  # read the encoder / bring it to the device for this call
            with self.residency.use(self, modality):
                return self._encode_all(modality, x, point_start_indices)
        return self._encode_all(modality, x, point_start_indices)

    def _encode_all(self, modality: str, x: torch.Tensor,
                    point_start_indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        encoder = self.encoder(modality)
        weight = next(p for p in encoder.parameters() if p.is_floating_point())
        x = x.to(weight.device)
        if x.is_floating_point():
            x = x.to(weight.dtype)
        clips = None
        if x.ndim >= 5:  # (B, S, ...): several clips or crops per item, averaged at the end
            clips = x.shape[:2]
            x = x.flatten(0, 1)
        head = encoder(x, point_start_indices) if modality == "point" else encoder(x)
        official = F.normalize(head, dim=-1)
        scale = self.logit_scale(modality)
        if scale is not None:
            official = official * scale
        if clips is not None:
            head = head.view(*clips, -1).mean(1)
            official = official.view(*clips, -1).mean(1)
        return {"prenorm": head, "official": official, "unit": F.normalize(official, dim=-1)}

    def encode(self, modality: str, x: torch.Tensor, *, output: Output = "official",
               point_start_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Embed one modality's batch. See the module docstring for ``output``."""
        if output not in ("official", "prenorm", "unit"):
            raise ValueError(f"output must be 'official', 'prenorm' or 'unit', got {output!r}")
        return self.encode_all(modality, x, point_start_indices)[output]

    def forward(self, inputs: Mapping[str, torch.Tensor], *, output: Output = "official") -> dict[str, torch.Tensor]:
        return {name: self.encode(name, x, output=output) for name, x in inputs.items()}

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official from-scratch initialisation (reference.md 1.2): trunk Linears
        xavier-uniform with zero bias, cls/position embeddings normal x width^-0.5, text token
        embeddings std 0.02, text and IMU positions std 0.01. Checkpoints overwrite all of it."""
        for name in ("vision", "text", "audio", "depth", "thermal", "imu"):
            encoder = self.encoder(name)
            for module in encoder.trunk.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            width = encoder.pos_embed.shape[-1]
            if name in ("text", "imu"):
                nn.init.normal_(encoder.pos_embed, std=0.01)
            else:
                nn.init.normal_(encoder.pos_embed, std=width**-0.5)
            if hasattr(encoder, "cls_token"):
                nn.init.normal_(encoder.cls_token, std=width**-0.5)
        nn.init.normal_(self.text.token_embed.weight, std=0.02)
