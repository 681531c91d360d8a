"""Refuse, before allocating, weights that cannot fit the memory left.

Loading the released 7B model in float32 on a CPU allocates 27 GB while it converts the float16
checkpoint; on a smaller machine the kernel then kills the process with no word of why (a
7B-shaped float16 checkpoint on the 24 GB test machine: killed after 24 GB). The loaders of the
language model and of ImageBind call :func:`require_memory` with the bytes the conversion is
about to allocate (tensors already in the target dtype and place stay memory-mapped and cost
nothing), and a shortfall is a :class:`~imagebind_llm.errors.NotEnoughMemoryError` naming the
sizes and the ways out, in seconds.

Available memory: on Linux ``MemAvailable`` plus free swap (``/proc/meminfo``); on a CUDA device
the free memory plus what PyTorch's allocator holds unused. Elsewhere nothing is checked.
``IMAGEBIND_LLM_NO_MEMORY_CHECK=1`` turns the check off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from .errors import NotEnoughMemoryError

#: Set to 1 to load without the check (where the estimate of available memory is wrong).
NO_CHECK_ENV = "IMAGEBIND_LLM_NO_MEMORY_CHECK"
MEMINFO = Path("/proc/meminfo")


def available_bytes(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device``, or None where that is not known."""
    device = torch.device(device)
    if device.type == "cpu":
        try:
            fields = dict(line.split(":", 1) for line in MEMINFO.read_text().splitlines() if ":" in line)
            kib = int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])
        except (OSError, KeyError, ValueError):
            return None
        return kib * 1024
    if device.type == "cuda" and torch.cuda.is_available():
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except Exception:  # noqa: BLE001 - e.g. ZeroGPU at start, where no GPU is attached yet
            return None
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def conversion_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None,
                     device: torch.device | str) -> int:
    """Bytes that ``tensor.to(device, dtype)`` allocates over ``tensors`` (floating tensors
    take ``dtype``; a tensor already in place and dtype is kept as is)."""
    device = torch.device(device)
    total = 0
    for tensor in tensors:
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        if target != tensor.dtype or tensor.device.type != device.type:
            total += tensor.numel() * target.itemsize
    return total


def require_memory(needed: int, device: torch.device | str, what: str, ways_out: str) -> None:
    """Raise :class:`NotEnoughMemoryError` when ``needed`` bytes exceed what ``device`` has
    left; ``what`` names the allocation, ``ways_out`` says how to need less."""
    if os.environ.get(NO_CHECK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        return
    free = available_bytes(device)
    if free is None or needed <= free:
        return
    place = "CPU memory (RAM and swap)" if torch.device(device).type == "cpu" else f"memory on {device}"
    raise NotEnoughMemoryError(f"{what} needs {_size(needed)} of {place} but {_size(free)} is available. "
                               f"{ways_out} ({NO_CHECK_ENV}=1 loads anyway)")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"
