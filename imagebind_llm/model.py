"""The ImageBind-LLM language model: bind network + prefix queries + gated LLaMA.

The frozen ImageBind encoder, the fusion of several modalities and the visual cache all act
before this module: it takes the fused ImageBind feature (B, imagebind_dim) and turns it into
per-layer injections, then runs LLaMA. Keeping the encoder outside lets training use
precomputed features and lets the app encode once per request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bind_network import BindNetwork
from .config import ImageBindLLMConfig
from .llama import KVCache, Llama

#: Label value that the loss ignores in this project (the official code uses 0, which is also
#: LLaMA's <unk> id; see train/ for the fix). The golden parity uses ``ignore_index=0``.
IGNORE_INDEX = -100


class ImageBindLLM(nn.Module):
    def __init__(self, config: ImageBindLLMConfig):
        super().__init__()
        self.config = config
        adapter, dim = config.adapter, config.llama.dim
        self.bind_network = BindNetwork(adapter, dim)
        # One learned query per injected layer (nn.Embedding's N(0, 1) init, as the official).
        self.prefix_query = nn.Parameter(torch.randn(adapter.query_layer * adapter.query_len, dim))
        self.llama = Llama(config.llama, adapter)

    @property
    def dtype(self) -> torch.dtype:
        return self.llama.tok_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llama.tok_embeddings.weight.device

    def visual_query(self, feature: torch.Tensor) -> torch.Tensor:
        """Fused ImageBind feature (B, imagebind_dim) -> bind-network output (B, 1, dim)."""
        if feature.ndim != 2 or feature.shape[-1] != self.config.adapter.imagebind_dim:
            raise ValueError(f"the visual feature must be (B, {self.config.adapter.imagebind_dim}), "
                             f"got {tuple(feature.shape)}")
        return self.bind_network(feature.to(self.bind_network.proj.weight.dtype).unsqueeze(1))

    def injections(self, visual_query: torch.Tensor) -> list[torch.Tensor | None]:
        """Per-layer injected vectors for a bind-network output (B, 1, dim): layer i of the
        injected ones gets ``visual_query + prefix_query[i]`` through its gated ``wv``."""
        adapters = visual_query + self.prefix_query.unsqueeze(0)  # (B, query_layer, dim)
        return self.llama.injections(adapters.to(self.dtype))

    def forward(
        self,
        tokens: torch.Tensor,
        feature: torch.Tensor | None = None,
        *,
        visual_query: torch.Tensor | None = None,
        start: int = 0,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for ``tokens`` with the visual ``feature`` (B, imagebind_dim) injected (or a
        precomputed ``visual_query``); with neither, the plain LLaMA (with bias/LoRA) runs."""
        injections = None
        if visual_query is None and feature is not None:
            visual_query = self.visual_query(feature)
        if visual_query is not None:
            injections = self.injections(visual_query)
        return self.llama(tokens, start=start, cache=cache, injections=injections, positions=positions,
                          key_padding=key_padding, last_only=last_only)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, feature: torch.Tensor | None,
             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Next-token cross-entropy: logits[:, :-1] against labels[:, 1:] (official shift)."""
        logits = self(tokens, feature)
        targets = labels[:, 1:]
        if (targets != ignore_index).sum() == 0:  # nothing to learn: a zero that keeps the graph
            return logits.mean() * 0
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=ignore_index)
