"""The attention helper: bfloat16 on the CPU is computed in float32 (faster there), the rest
is torch's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imagebind_llm.attention import scaled_dot_product_attention


def test_bfloat16_attention_on_the_cpu_is_computed_in_float32_even_under_autocast():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 16).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.randn(10, 10).bfloat16()
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.bfloat16())
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()


def test_float32_attention_is_torch_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 16) for _ in range(3))
    for kwargs in ({"is_causal": True}, {"attn_mask": torch.rand(10, 10) > 0.3}):
        assert torch.equal(scaled_dot_product_attention(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v, **kwargs))
