"""Weight-only int8 and int4 quantisation of the frozen LLaMA projections.

Why: the released model is a 7B LLaMA. Its Linear weights (wq, wk, wv, wo, w1, w2, w3 of every
layer, and the output head) are 6.6 G of its 6.7 G parameters: 13.2 GB in bfloat16, 6.6 GB in
int8, about 3.5 GB in int4. Quantising only those (the trained adapter parts stay as they are:
LoRA, biases, norms, gates, bind network, prefix queries; and the token embedding, which is a
lookup, not a matmul) is what lets the 7B model fit a 12 GB GPU beside ImageBind.

* **int8** (:class:`Int8Linear`): symmetric, one scale per output channel,
  ``w ~ q * scale`` with ``q`` in [-127, 127]. The forward uses ``torch._weight_int8pack_mm``
  (a fused int8-weight matmul in torch's CPU build) where it is fast: bfloat16 activations, or a
  single row (decoding) in float32/float16, with the input width a multiple of 16 (other widths
  give wrong results or crash in torch 2.13, measured). Everywhere else (prefill in float32,
  CUDA) it computes ``(x @ q^T) * scale``, which casts one layer's int8 weight to the activation
  dtype for the duration of that matmul only.
* **int4** (:class:`Int4Linear`): asymmetric, one scale and offset per group of ``group_size``
  input channels, in the layout of the "tinygemm" kernels that ship with torch
  (``w ~ (q - 8) * scale + zero``, ``q`` in [0, 15]). CPU: ``torch._weight_int4pack_mm_for_cpu``;
  CUDA GPUs of compute capability 8.0+: ``torch._weight_int4pack_mm``. Both compute in
  bfloat16 (the activations are cast to it and back; the float32 kernels are 10x slower).
  Packing is device-specific: quantise on the device the model runs on (``device=``).
  Other devices get an error that says so. torchao 0.18 (which installs beside torch 2.13
  without changing it) was checked as an alternative: its ``Int4WeightOnlyConfig`` needs CUDA
  (or the separate ``mslk`` package) and does not run on a CPU, so it is not used.

The full-precision weight is never held twice: :func:`quantize_llama_` takes the weights one
Linear at a time (memory-mapped from the checkpoint by :func:`~imagebind_llm.weights.build_language_model`,
or produced by a callback), quantises them in row chunks and drops the Linear before the next.
Quantised models are for inference: the int8/int4 buffers are not trainable (LoRA and biases
still are).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

QuantMode = Literal["int8", "int4"]
QUANT_MODES: tuple[str, ...] = ("int8", "int4")
#: The int4 group sizes the torch kernels accept.
INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128

#: The frozen LLaMA projections that are quantised (names relative to an ImageBindLLM or a Llama).
TARGET = re.compile(r"^(llama\.)?(layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])|output)$")

_ROW_CHUNK_ELEMENTS = 1 << 22  # quantise this many weights at a time (16 MB of float32 scratch)


def check_quantize(mode: str | None) -> str | None:
    """``None`` or one of :data:`QUANT_MODES`; anything else is a ValueError naming the options."""
    if mode is None or mode in QUANT_MODES:
        return mode
    raise ValueError(f"quantize must be None, 'int8' or 'int4', got {mode!r}")


def _row_chunks(rows: int, width: int):
    step = max(1, _ROW_CHUNK_ELEMENTS // max(1, width))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


# ---------------------------------------------------------------------------------------------
# int8: symmetric, per output channel
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> int8 ``q`` (out, in) and float32 ``scale`` (out,) with
    ``weight ~ q * scale[:, None]``; ``scale = max|row| / 127`` (rows of zeros get scale 1)."""
    if weight.ndim != 2:
        raise ValueError(f"a Linear weight is 2-D, got shape {tuple(weight.shape)}")
    rows, width = weight.shape
    q = torch.empty(rows, width, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, dtype=torch.float32, device=weight.device)
    for start, end in _row_chunks(rows, width):
        chunk = weight[start:end].float()
        amax = chunk.abs().amax(dim=1)
        step = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q[start:end] = torch.round(chunk / step[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[start:end] = step
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def _int8_kernel_ok(x2: torch.Tensor, in_features: int) -> bool:
    """Where torch._weight_int8pack_mm is right and fast (measured on torch 2.13 CPU)."""
    if x2.device.type != "cpu" or in_features % 16 or not hasattr(torch, "_weight_int8pack_mm"):
        return False
    return x2.dtype == torch.bfloat16 or (x2.shape[0] == 1 and x2.dtype in (torch.float32, torch.float16))


class Int8Linear(nn.Module):
    """A frozen Linear with int8 weights (``weight_int8`` (out, in), ``scale`` (out,)) and an
    optional full-precision bias (the adapter's bias tuning)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """Quantise ``weight`` (out, in) on its device; ``bias`` is kept as it is (not copied)."""
        q, scale = quantize_int8(weight)
        with torch.device("meta"):
            module = cls(weight.shape[1], weight.shape[0], bias=False)
        module.weight_int8, module.scale = q, scale
        if bias is not None:
            module.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
        return module

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_int8(self.weight_int8, self.scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        scale = self.scale.to(x.dtype)
        if _int8_kernel_ok(x2, self.in_features):
            out = torch._weight_int8pack_mm(x2.contiguous(), self.weight_int8, scale)
        else:
            out = F.linear(x2, self.weight_int8.to(x.dtype)) * scale
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


# ---------------------------------------------------------------------------------------------
# int4: asymmetric, per group of input channels (tinygemm layout)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> ``q`` (out, in) int32 in [0, 15] and ``scales_and_zeros``
    (in / group_size, out, 2) float32 with ``w ~ (q - 8) * scale + zero`` per group
    (``zero = min + 8 * scale``, ``scale = (max - min) / 15``)."""
    rows, width = weight.shape
    if width % group_size:
        raise ValueError(f"int4 groups of {group_size} do not divide the input width {width}")
    groups = width // group_size
    q = torch.empty(rows, width, dtype=torch.int32, device=weight.device)
    scales_and_zeros = torch.empty(groups, rows, 2, dtype=torch.float32, device=weight.device)
    for start, end in _row_chunks(rows, width):
        chunk = weight[start:end].float().view(end - start, groups, group_size)
        low, high = chunk.amin(-1, keepdim=True), chunk.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp_(min=1e-8)
        q[start:end] = torch.round((chunk - low) / scale).clamp_(0, 15).view(end - start, width).to(torch.int32)
        scales_and_zeros[:, start:end, 0] = scale.squeeze(-1).t()
        scales_and_zeros[:, start:end, 1] = (low + 8 * scale).squeeze(-1).t()
    return q, scales_and_zeros


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    rows, width = q.shape
    scale = scales_and_zeros[..., 0].t().float().unsqueeze(-1)  # (out, groups, 1)
    zero = scales_and_zeros[..., 1].t().float().unsqueeze(-1)
    grouped = q.float().view(rows, width // group_size, group_size)
    return ((grouped - 8) * scale + zero).view(rows, width).to(dtype)


def int4_unsupported_reason(device: torch.device | str) -> str | None:
    """None where int4 runs on ``device``, else why not (for an error message)."""
    device = torch.device(device)
    if device.type == "cpu":
        if hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(torch, "_convert_weight_to_int4pack_for_cpu"):
            return None
        return f"this torch ({torch.__version__}) has no CPU int4 kernel (torch._weight_int4pack_mm_for_cpu); use int8"
    if device.type == "cuda":
        if getattr(torch.version, "hip", None):
            return "int4 uses the CUDA tinygemm kernel, which this ROCm build does not provide; use int8"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:
            return (f"int4 needs a CUDA GPU of compute capability 8.0 or newer (Ampere, Ada, Hopper: tinygemm), "
                    f"this one is {major}.x; use int8")
        return None
    return f"int4 runs on a CPU or a CUDA GPU (compute capability 8.0+), not on {device.type!r}; use int8"


def int4_group_size(in_features: int, requested: int = DEFAULT_GROUP_SIZE) -> int | None:
    """The largest kernel group size <= ``requested`` that divides ``in_features`` (None: none does)."""
    for size in sorted(INT4_GROUP_SIZES, reverse=True):
        if size <= requested and in_features % size == 0:
            return size
    return None


def _inner_k_tiles(in_features: int) -> int | None:
    for tiles in (8, 4, 2):  # the CUDA kernel needs in_features % (tiles * 16) == 0
        if in_features % (tiles * 16) == 0:
            return tiles
    return None


class Int4Linear(nn.Module):
    """A frozen Linear with int4 weights packed for one device type's kernel. The output
    width is padded to a multiple of 16 inside (the kernels need it) and sliced back."""

    def __init__(self, in_features: int, out_features: int, group_size: int, packed_for: str,
                 inner_k_tiles: int = 1):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.packed_for, self.inner_k_tiles = group_size, packed_for, inner_k_tiles
        self.padded_out = -(-out_features // 16) * 16
        self.register_parameter("bias", None)  # the buffers are registered by from_weight

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    group_size: int = DEFAULT_GROUP_SIZE) -> Int4Linear:
        """Quantise and pack ``weight`` (out, in) for its own device's kernel."""
        device = weight.device
        reason = int4_unsupported_reason(device)
        if reason:
            raise RuntimeError(reason)
        out_features, in_features = weight.shape
        group = int4_group_size(in_features, group_size)
        tiles = 1 if device.type == "cpu" else _inner_k_tiles(in_features)
        if group is None or tiles is None:
            raise ValueError(f"int4 needs an input width divisible by 32, got {in_features}")
        module = cls(in_features, out_features, group, device.type, tiles)
        pad = module.padded_out - out_features
        if pad:  # zero rows: their outputs are sliced off
            weight = torch.cat([weight, weight.new_zeros(pad, in_features)])
        q, scales_and_zeros = quantize_int4(weight, group)
        if device.type == "cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu(q, tiles)
        else:  # the CUDA kernel takes two nibbles per byte, the even column in the high nibble
            packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), tiles)
        del q
        module.register_buffer("weight_int4", packed)
        module.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16))
        if bias is not None:
            module.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != self.packed_for:
            raise RuntimeError(f"this int4 layer is packed for {self.packed_for} but the input is on {x.device}: "
                               "quantise on the device the model runs on (device=...)")
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        kernel = torch._weight_int4pack_mm_for_cpu if self.packed_for == "cpu" else torch._weight_int4pack_mm
        out = kernel(x2, self.weight_int4, self.group_size, self.scales_and_zeros.to(torch.bfloat16))
        out = out[:, :self.out_features].to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int4 group {self.group_size}, packed for {self.packed_for}")


# ---------------------------------------------------------------------------------------------
# Whole model
# ---------------------------------------------------------------------------------------------


@dataclass
class QuantReport:
    mode: str
    quantized: list[str] = field(default_factory=list)
    #: Linears left in full precision, with the reason (int4 on a width the kernels refuse: int8 instead).
    fallbacks: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0


WeightSource = Callable[[str, nn.Linear], torch.Tensor]


def quantize_llama_(model: nn.Module, mode: str, *, device: torch.device | str | None = None,
                    group_size: int = DEFAULT_GROUP_SIZE, weights: WeightSource | None = None) -> QuantReport:
    """Replace every frozen LLaMA projection of ``model`` (an ImageBindLLM or a Llama) by an
    :class:`Int8Linear` or :class:`Int4Linear`, in place, one Linear at a time.

    ``device``: where the quantised weights live (and int4 is packed); default: where each
    weight is. ``weights(name, linear)``: where the full-precision weight comes from (default:
    ``linear.weight``, e.g. a memory-mapped checkpoint tensor); a model built on the meta
    device can be filled this way, tensor by tensor. Bytes before count the source weights at
    their own dtype. An int4 layer whose width the kernels refuse falls back to int8 (listed in
    the report).
    """
    mode = check_quantize(mode)
    if mode is None:
        raise ValueError("quantize_llama_ needs 'int8' or 'int4'")
    if mode == "int4" and device is not None:
        reason = int4_unsupported_reason(device)
        if reason:
            raise RuntimeError(reason)
    report = QuantReport(mode)
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and TARGET.match(name)]
    if not names:
        raise ValueError("no LLaMA projections (layers.N.attention.wq ... output) found to quantise")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        weight = linear.weight if weights is None else weights(name, linear)
        if weight.is_meta:
            raise ValueError(f"{name}: the weight is on the meta device; give weights=... to fill it")
        report.bytes_before += weight.numel() * weight.element_size()
        weight = weight.detach().to(device) if device is not None else weight.detach()
        bias = linear.bias  # kept as it is (on a meta-built model: still meta, filled with the rest)
        if mode == "int4":
            try:
                new = Int4Linear.from_weight(weight, bias, group_size)
            except ValueError as error:
                report.fallbacks[name] = f"{error}: int8 instead"
                new = Int8Linear.from_weight(weight, bias)
        else:
            new = Int8Linear.from_weight(weight, bias)
        setattr(parent, child, new)
        report.quantized.append(name)
        report.bytes_after += sum(t.numel() * t.element_size() for t in new.buffers())
        del linear, weight, new
    for name, why in report.fallbacks.items():
        log.warning("%s: %s", name, why)
    log.info("quantised %d LLaMA projections to %s: %.1f MiB -> %.1f MiB", len(report.quantized), mode,
             report.bytes_before / 2**20, report.bytes_after / 2**20)
    return report


def quantized_mode(model: nn.Module) -> str | None:
    """'int8', 'int4', 'int4+int8' (with fallbacks) or None for a model without quantised layers."""
    kinds = {("int4" if isinstance(m, Int4Linear) else "int8") for m in model.modules()
             if isinstance(m, (Int8Linear, Int4Linear))}
    return "+".join(sorted(kinds, reverse=True)) or None


def tensor_bytes(module: nn.Module, *, include_meta: bool = False) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once; meta tensors only
    with ``include_meta``): what its weights occupy."""
    seen: set[int] = set()
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_meta and not include_meta:
            continue
        key = id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def projection_bytes(model: nn.Module) -> int:
    """Bytes of the LLaMA projections only (quantised or not): the part quantisation shrinks."""
    total = 0
    for name, module in model.named_modules():
        if TARGET.match(name):
            total += sum(t.numel() * t.element_size() for n, t in module.named_parameters(recurse=False)
                         if n != "bias")
            total += sum(t.numel() * t.element_size() for t in module.buffers(recurse=False))
    return total
