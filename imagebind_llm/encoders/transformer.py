"""Pre-norm transformer blocks shared by every ImageBind trunk and the Point-BERT encoder.

ImageBind calls ``torch.nn.MultiheadAttention`` (packed q/k/v projection, optional learned
``bias_k``/``bias_v`` token appended to keys and values); Point-BERT uses a timm-style block.
Both are the same computation: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` with an
exact-GELU MLP. This module implements it once with ``scaled_dot_product_attention``, batch
first, with parameter names of our own; ``checkpoint.py`` maps the official names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import scaled_dot_product_attention
from ..config import TransformerConfig


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int, qkv_bias: bool, bias_kv: bool, causal: bool):
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)
        if bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, width))
            self.bias_v = nn.Parameter(torch.empty(1, 1, width))
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        else:
            self.bias_k = self.bias_v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.bias_k is not None:
            # The learned extra key/value token sits in projected space, after the sequence.
            k = torch.cat([k, self.bias_k.expand(batch, 1, width)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, width)], dim=1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D/H)
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        out = scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.attn = Attention(config.width, config.num_heads, config.qkv_bias, config.bias_kv, config.causal)
        self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.mlp = Mlp(config.width, config.mlp_ratio * config.width)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_rates(config: TransformerConfig) -> list[float]:
    """Progressive stochastic depth: block i gets linspace(0, drop_path, depth)[i]."""
    if config.depth == 1:
        return [0.0]
    return [config.drop_path * i / (config.depth - 1) for i in range(config.depth)]


class Transformer(nn.Module):
    """An ImageBind trunk: optional pre-LayerNorm, then ``depth`` blocks. (B, L, D) -> (B, L, D)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.pre_norm = nn.LayerNorm(config.width, eps=config.norm_eps) if config.pre_norm else None
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_path_rates(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        for block in self.blocks:
            x = block(x)
        return x
