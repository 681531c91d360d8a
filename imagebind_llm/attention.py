"""Scaled dot-product attention, with one precision rule for the CPU.

Mixed-precision (bfloat16 autocast) training on a CPU with native bfloat16 instructions runs
the matrix products about twice as fast, but torch's CPU attention kernels are slower in
bfloat16 than in float32: 7x for the backward of a toy-world vision step (torch 2.13, 2 cores).
So on the CPU, attention over bfloat16 inputs is computed in float32; everywhere else this is
``F.scaled_dot_product_attention`` itself. Every attention goes through it (the encoders, the
LLaMA, the static decoder and the batcher), so that the decoders keep the eager loop's bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    if q.dtype != torch.bfloat16 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.float()
    with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bfloat16
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                             is_causal=is_causal)
    return out.to(q.dtype)
