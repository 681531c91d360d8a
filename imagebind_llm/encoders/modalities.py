"""One encoder per ImageBind modality: tokens -> trunk -> head.

Every encoder maps its preprocessed input to the head output (B, embed_dim), i.e. the
embedding *before* ImageBind's postprocessor (L2 normalisation and logit scale), which
``imagebind.py`` applies. Shapes follow reference.md 1.3-1.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioConfig, ImageLikeConfig, ImuConfig, TextConfig, TransformerConfig, VisionConfig
from .transformer import Transformer


class Head(nn.Module):
    """LayerNorm -> dropout -> bias-free projection of one pooled token into the shared space."""

    def __init__(self, width: int, embed_dim: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(self.norm(x)))


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """Cut (B, C, *spatial) into non-overlapping patches: (B, num_patches, C * prod(patch)).

    Patches come in raster order of the spatial dims (the first slowest) and each patch is
    flattened channel-major, which is the layout of a Conv weight (out, C, *patch): a
    matmul with ``weight.flatten(1)`` is then exactly a Conv with stride = kernel, and it
    works in every dtype on every device.
    """
    batch, channels = x.shape[:2]
    spatial = x.shape[2:]
    if len(spatial) != len(patch) or any(s % p for s, p in zip(spatial, patch)):
        raise ValueError(f"input of spatial shape {tuple(spatial)} cannot be cut into patches of {patch}")
    split = [channels]
    for s, p in zip(spatial, patch):
        split += [s // p, p]
    x = x.reshape(batch, *split)
    n = len(patch)
    grid_dims = [2 + 2 * i for i in range(n)]  # the patch-grid axes
    inner_dims = [3 + 2 * i for i in range(n)]  # the within-patch axes
    x = x.permute(0, *grid_dims, 1, *inner_dims)
    return x.reshape(batch, -1, channels * math.prod(patch))


class TokenEncoder(nn.Module):
    """Common tail: prepend a cls token, add the learned position embedding, run the trunk,
    take token 0 through the head."""

    def __init__(self, trunk: TransformerConfig, num_patches: int, embed_dim: int, head_eps: float,
                 head_dropout: float = 0.0):
        super().__init__()
        width = trunk.width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, width))
        self.trunk = Transformer(trunk)
        self.head = Head(width, embed_dim, head_eps, head_dropout)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_tokens(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.trunk(tokens)[:, 0])


class VisionEncoder(TokenEncoder):
    """Images (B, 3, H, W) or clips (B, 3, T, H, W); an image is repeated to ``frames`` frames.
    Conv3d stem without bias and without norm."""

    def __init__(self, config: VisionConfig, embed_dim: int, head_eps: float):
        super().__init__(config.trunk, config.num_patches, embed_dim, head_eps)
        self.config = config
        self.patch_embed = nn.Parameter(torch.empty(config.trunk.width, config.channels, *config.patch_size))
        nn.init.kaiming_uniform_(self.patch_embed, a=5**0.5)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim == 4 and c.patch_size[0] == c.frames and tuple(x.shape[1:]) == (
                c.channels, c.image_size, c.image_size):
            # An image is one frame repeated in time and the kernel spans every frame: the
            # kernel summed over time gives the same tokens at 1/frames of the cost.
            return patchify(x, c.patch_size[1:]) @ self.patch_embed.sum(dim=2).flatten(1).t()
        if x.ndim == 4:  # an image: repeat it along time
            x = x.unsqueeze(2).expand(-1, -1, c.frames, -1, -1)
        expected = (c.channels, c.frames, c.image_size, c.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"vision input must be (B, {expected}), got {tuple(x.shape)}")
        return patchify(x, c.patch_size) @ self.patch_embed.flatten(1).t()


class ImageLikeEncoder(TokenEncoder):
    """Depth and thermal: (B, 1, H, W), Conv2d stem without bias, then LayerNorm."""

    def __init__(self, config: ImageLikeConfig, embed_dim: int, head_eps: float, stem_eps: float):
        super().__init__(config.trunk, config.num_patches, embed_dim, head_eps)
        self.config = config
        width = config.trunk.width
        self.patch_embed = nn.Parameter(
            torch.empty(width, config.channels, config.patch_size, config.patch_size))
        nn.init.kaiming_uniform_(self.patch_embed, a=5**0.5)
        self.patch_norm = nn.LayerNorm(width, eps=stem_eps)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        expected = (c.channels, c.image_size, c.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"input must be (B, {expected}), got {tuple(x.shape)}")
        if (c.input_mean, c.input_std) != (0.0, 1.0):
            x = (x - c.input_mean) / c.input_std
        tokens = patchify(x, (c.patch_size, c.patch_size)) @ self.patch_embed.flatten(1).t()
        return self.patch_norm(tokens)


class AudioEncoder(TokenEncoder):
    """Log-mel spectrograms (B, 1, mel, frames): overlapping Conv2d patches, then LayerNorm.
    Tokens in raster order with the mel axis slowest."""

    def __init__(self, config: AudioConfig, embed_dim: int, head_eps: float, stem_eps: float):
        super().__init__(config.trunk, config.num_patches, embed_dim, head_eps)
        self.config = config
        width = config.trunk.width
        self.patch_embed = nn.Parameter(torch.empty(width, 1, config.patch_size, config.patch_size))
        nn.init.kaiming_uniform_(self.patch_embed, a=5**0.5)
        self.patch_norm = nn.LayerNorm(width, eps=stem_eps)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        expected = (1, c.num_mel_bins, c.target_length)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"audio input must be (B, {expected}), got {tuple(x.shape)}")
        # im2col keeps this a matmul (any dtype); columns come out in raster order.
        cols = F.unfold(x, kernel_size=c.patch_size, stride=c.stride)  # (B, patch*patch, L)
        return self.patch_norm(cols.transpose(1, 2) @ self.patch_embed.flatten(1).t())


class ImuEncoder(TokenEncoder):
    """IMU (B, channels, length): windows of ``window`` steps, each token channel-major
    (ch0 t0..t7, ch1 t0..t7, ...), a bias-free Linear, then LayerNorm."""

    def __init__(self, config: ImuConfig, embed_dim: int, head_eps: float, stem_eps: float, dropout: float):
        super().__init__(config.trunk, config.num_patches, embed_dim, head_eps, dropout)
        self.config = config
        self.patch_embed = nn.Linear(config.patch_features, config.trunk.width, bias=False)
        self.patch_norm = nn.LayerNorm(config.trunk.width, eps=stem_eps)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if tuple(x.shape[1:]) != (c.channels, c.length):
            raise ValueError(f"IMU input must be (B, {c.channels}, {c.length}), got {tuple(x.shape)}")
        if c.input_mean is not None:
            x = x - x.new_tensor(c.input_mean)[:, None]
        if c.input_std is not None:
            x = x / x.new_tensor(c.input_std)[:, None]
        windows = x.unflatten(-1, (c.num_patches, c.window)).permute(0, 2, 1, 3)  # (B, L, C, W)
        return self.patch_norm(self.patch_embed(windows.flatten(2)))


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch 2.3 and later
    return bool(is_compiling and is_compiling())


class TextEncoder(nn.Module):
    """CLIP-style causal text transformer over (B, context_length) token ids; the head pools
    the position of the largest id (the end-of-text token when it is present)."""

    def __init__(self, config: TextConfig, embed_dim: int, head_eps: float):
        super().__init__()
        self.config = config
        width = config.trunk.width
        self.token_embed = nn.Embedding(config.vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.context_length, width))
        self.trunk = Transformer(config.trunk)
        self.head = Head(width, embed_dim, head_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.config.context_length:
            raise ValueError(f"text input must be (B, {self.config.context_length}) token ids, "
                             f"got {tuple(tokens.shape)}")
        pooled_at = tokens.argmax(dim=-1)
        if self.config.trunk.causal and not _compiling():
            # Causal attention: no position sees a later one, so the positions after the last
            # pooled one (padding) change nothing; skipping them is 4-6x less work for short
            # captions. (Compiled callers keep the fixed shape.)
            length = int(pooled_at.max()) + 1
            tokens = tokens[:, :length]
        else:
            length = tokens.shape[1]
        x = self.trunk(self.token_embed(tokens) + self.pos_embed[:, :length])
        pooled = x[torch.arange(x.shape[0], device=x.device), pooled_at]
        return self.head(pooled)
