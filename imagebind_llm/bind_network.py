"""The bind network: ImageBind embedding (B, 1, imagebind_dim) -> LLaMA width (B, 1, dim).

A linear projection (with bias) followed by ``bind_blocks`` residual SwiGLU blocks,
``x = x + w2(silu(w1(norm(x))) * w3(norm(x)))``, hidden width ``bind_hidden_mult x dim``,
no final norm (reference.md 4.4). Two variants exist in the released weights:

* stable (``7B.pth``): RMSNorm (eps 1e-6) and bias-free w1/w2/w3;
* legacy (``7B-beta.pth``): LayerNorm (eps 1e-5) and w1/w2/w3 with biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .llama import RMSNorm


class BindBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, legacy: bool, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps) if legacy else RMSNorm(dim, eps)
        self.w1 = nn.Linear(dim, hidden, bias=legacy)
        self.w2 = nn.Linear(hidden, dim, bias=legacy)
        self.w3 = nn.Linear(dim, hidden, bias=legacy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return x + self.w2(F.silu(self.w1(n)) * self.w3(n))


class BindNetwork(nn.Module):
    def __init__(self, adapter: AdapterConfig, dim: int):
        super().__init__()
        legacy = adapter.legacy_bridge
        eps = adapter.legacy_norm_eps if legacy else adapter.bind_norm_eps
        self.proj = nn.Linear(adapter.imagebind_dim, dim)
        self.blocks = nn.ModuleList(
            BindBlock(dim, adapter.bind_hidden_mult * dim, legacy, eps) for _ in range(adapter.bind_blocks))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.proj(feature)
        for block in self.blocks:
            x = block(x)
        return x
