"""LLaMA with ImageBind-LLM's zero-initialised, attention-free gated injection (reference.md 4.2-4.6).

Weights use Meta's layout and names (``layers.N.attention.wq.weight``, rotary embedding on
adjacent pairs), so Meta checkpoints load as they are; Hugging Face checkpoints are converted
in ``weights.py``. The fine-tune phase adds bias tuning (wq, wo, w1, w2, w3) and rank-16 LoRA
on every projection.

The injection: in each injected layer the adapter vector ``a`` (bind-network output + that
layer's prefix query) goes through the layer's frozen base ``wv`` only, is multiplied per head
by ``tanh(gate)`` (gate initialised to zero) and is added, before ``wo``, to the attention
output of every position. There is no attention to the adapter and no RoPE on it. Since it
does not depend on the tokens, :meth:`Llama.injections` computes it once per request and
:meth:`Llama.forward` only adds it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import scaled_dot_product_attention
from .config import AdapterConfig, LlamaConfig


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps)`` computed in float32, cast back, then times the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LoRA(nn.Module):
    """Low-rank update ``up(down(x))`` without scaling (alpha = 1); ``up`` starts at zero."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def merge_lora_(block: nn.Module, keep: tuple[str, ...] = ()) -> int:
    """Fold the LoRA updates of an Attention or FeedForward block into its frozen linears, for
    inference: ``W + up @ down``, summed in float32 and stored in W's dtype (a new tensor, so a
    memory-mapped checkpoint is not written to). One matrix product per projection instead of
    three. Projections named in ``keep``, and those whose linear is not a plain ``nn.Linear``
    (the int8/int4 layers keep their update in full precision), stay unmerged. Returns how many
    were merged."""
    if block.lora is None:
        return 0
    merged = 0
    with torch.no_grad():
        for name in list(block.lora):
            base = getattr(block, name)
            if name in keep or type(base) is not nn.Linear:
                continue
            lora = block.lora[name]
            delta = (lora.up.weight.float() @ lora.down.weight.float()).to(base.weight.device)
            merged_weight = (base.weight.float() + delta).to(base.weight.dtype)
            base.weight = nn.Parameter(merged_weight, requires_grad=False)
            del block.lora[name]
            merged += 1
    if not len(block.lora):
        block.lora = None
    return merged


def rotary_tables(config: LlamaConfig, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim / 2) in float32 for positions 0..length-1."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, device=device, dtype=torch.float32) * 2
                                              / config.head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... (Meta convention) of x (B, L, H, D) by the
    angles of cos/sin (B or 1, L, D/2), in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class KVCache:
    """Preallocated keys and values of every layer: (B, H, max_len, head_dim) each."""

    def __init__(self, config: LlamaConfig, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (config.n_layers, batch, config.n_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions, {end} were asked for")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, adapter: AdapterConfig):
        super().__init__()
        dim, bias = config.dim, adapter.bias_lora
        self.n_heads = config.n_heads
        self.wq = nn.Linear(dim, dim, bias=bias)
        self.wk = nn.Linear(dim, dim, bias=False)  # wk and wv never have a bias
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=bias)
        self.lora = nn.ModuleDict(
            {name: LoRA(dim, dim, adapter.lora_rank) for name in ("wq", "wk", "wv", "wo")}) if adapter.bias_lora else None
        self.gate = nn.Parameter(torch.zeros(1, config.n_heads, 1, 1))  # zero init: training starts from LLaMA
        if bias:
            nn.init.zeros_(self.wq.bias)
            nn.init.zeros_(self.wo.bias)

    def _project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, name)(x)
        return out if self.lora is None or name not in self.lora else out + self.lora[name](x)

    def adapter_values(self, adapter: torch.Tensor) -> torch.Tensor:
        """wv(adapter) per head, ungated: (B, 1, dim) -> (B, H, 1, head_dim). Base wv only."""
        return self.wv(adapter).unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def injection(self, adapter: torch.Tensor) -> torch.Tensor:
        """tanh(gate) x wv(adapter) per head: (B, 1, dim) -> (B, H, 1, head_dim)."""
        v = self.adapter_values(adapter)
        return self.gate.tanh().to(v.dtype) * v

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, start: int,
                injection: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = x.shape
        q = self._project("wq", x).unflatten(-1, (self.n_heads, -1))
        k = self._project("wk", x).unflatten(-1, (self.n_heads, -1))
        v = self._project("wv", x).unflatten(-1, (self.n_heads, -1))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if injection is not None:
            out = out + injection  # the same per-head vector at every position
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self._project("wo", out)


class FeedForward(nn.Module):
    def __init__(self, config: LlamaConfig, adapter: AdapterConfig):
        super().__init__()
        dim, hidden, bias = config.dim, config.hidden_dim, adapter.bias_lora
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden, bias=bias)
        self.lora = nn.ModuleDict({
            "w1": LoRA(dim, hidden, adapter.lora_rank), "w2": LoRA(hidden, dim, adapter.lora_rank),
            "w3": LoRA(dim, hidden, adapter.lora_rank)}) if adapter.bias_lora else None
        if bias:
            for layer in (self.w1, self.w2, self.w3):
                nn.init.zeros_(layer.bias)

    def _project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, name)(x)
        return out if self.lora is None or name not in self.lora else out + self.lora[name](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._project("w2", F.silu(self._project("w1", x)) * self._project("w3", x))


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig, adapter: AdapterConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, adapter)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config, adapter)

    def forward(self, x, cos, sin, mask, cache, layer, start, injection):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer, start, injection)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig, adapter: AdapterConfig):
        super().__init__()
        self.config = config
        self.adapter = adapter
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config, adapter) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lora_merged = False  # merge_lora_() folded LoRA into the weights (inference only)

    def merge_lora_(self) -> int:
        """Fold the LoRA updates into the frozen weights for inference (:func:`merge_lora_`),
        except ``wv``'s: the injection reads the base ``wv`` alone (as the official model does)
        while the tokens read ``wv`` plus its update, so that one stays separate and both stay
        exact. The model can no longer be trained or saved as an adapter afterwards. Returns
        the number of projections merged."""
        merged = 0
        for layer in self.layers:
            merged += merge_lora_(layer.attention, keep=("wv",)) + merge_lora_(layer.feed_forward)
        self.lora_merged = self.lora_merged or merged > 0
        return merged

    @property
    def injected_layers(self) -> range:
        return range(self.config.n_layers - self.adapter.query_layer, self.config.n_layers)

    def rotary(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        # Positions up to 2 x max_seq_len like the official table; not a buffer (not in checkpoints).
        if self._rotary is None or self._rotary[0].device != torch.device(device):
            self._rotary = rotary_tables(self.config, 2 * self.config.max_seq_len, device)
        return self._rotary

    def injections(self, adapters: torch.Tensor) -> list[torch.Tensor | None]:
        """Per-layer injected vectors from the adapter tokens (B, query_layer, dim): the i-th
        injected layer gets row i. Non-injected layers get None."""
        out: list[torch.Tensor | None] = [None] * self.config.n_layers
        for row, layer in enumerate(self.injected_layers):
            # Copied out of the view: a (B, 1, dim) view keeps the stride of all the rows, and for
            # such strides PyTorch's CPU bfloat16 linear takes a path about 50x slower (7B: 2 s of
            # every image request's first token instead of 50 ms).
            adapter = adapters[:, row:row + 1].clone(memory_format=torch.contiguous_format)
            out[layer] = self.layers[layer].attention.injection(adapter)
        return out

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        start: int = 0,
        cache: KVCache | None = None,
        injections: list[torch.Tensor | None] | None = None,
        positions: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for ``tokens`` (B, L) placed at cache positions ``start .. start+L-1``.

        ``positions`` (B, L) overrides the rotary positions (rows that start later in a
        left-padded batch); ``key_padding`` (B, start+L) is True where a cached/new position is
        padding, which no query may attend to. ``last_only`` returns (B, vocab) for the last
        position only.
        """
        batch, length = tokens.shape
        h = self.tok_embeddings(tokens)
        cos_table, sin_table = self.rotary(tokens.device)
        if positions is None:
            cos, sin = cos_table[start:start + length][None], sin_table[start:start + length][None]
        else:
            cos, sin = cos_table[positions], sin_table[positions]
        total = start + length
        mask = None
        if length > 1 or key_padding is not None:
            # Additive mask (B or 1, 1, L, total): causal, plus padded keys. A large finite negative
            # instead of -inf keeps rows of pure padding finite; real rows are unaffected.
            query_pos = torch.arange(start, total, device=tokens.device)[:, None]
            blocked = torch.arange(total, device=tokens.device)[None, :] > query_pos
            if key_padding is not None:
                blocked = blocked[None] | key_padding[:, None, :]
            else:
                blocked = blocked[None]
            mask = torch.zeros(blocked.shape, dtype=h.dtype, device=h.device)
            mask = mask.masked_fill(blocked, torch.finfo(h.dtype).min).unsqueeze(1)
        for index, layer in enumerate(self.layers):
            injection = injections[index] if injections is not None else None
            h = layer(h, cos, sin, mask, cache, index, start, injection)
        if last_only:
            h = h[:, -1]
        return self.output(self.norm(h)).float()
