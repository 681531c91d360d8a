"""Processes, devices, precision and model wrapping: the one place that names an accelerator.

Launch with ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or ``srun`` (``SLURM_PROCID``/
``SLURM_NTASKS``/``SLURM_LOCALID``, with ``MASTER_ADDR``/``MASTER_PORT`` exported by the batch
script); a plain ``python -m train`` is one process. The backend is NCCL on GPUs and gloo on
CPUs. Strategies:

* ``ddp``: DistributedDataParallel of the trainable model (frozen weights replicated).
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every LLaMA layer and on the rest
  of the model, for a LLaMA that does not fit one device. With autocast precision the compute
  copy of the weights is cast by a ``MixedPrecisionPolicy`` and gradients are reduced in
  float32.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when there is one, else the CPU. ``cuda`` means the local
    rank's GPU; ``cuda:N`` and ``cpu`` are taken as given."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if preference == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def _launch_env() -> tuple[int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in env:
            raise RuntimeError("srun without torchrun: export MASTER_ADDR (the first node of the job) and "
                               "MASTER_PORT in the batch script (see train/README.md)")
        env.setdefault("MASTER_PORT", "29500")
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init(device: str = "auto") -> DistInfo:
    """Join the process group of this launch (if any) and choose the device."""
    rank, world, local_rank = _launch_env()
    chosen = pick_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    info = DistInfo(rank, world, local_rank, chosen)
    if world > 1 and not dist.is_initialized():
        info.backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(info.backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    elif dist.is_initialized():
        info.backend = dist.get_backend()
    return info


def cleanup(info: DistInfo) -> None:
    """Leave the process group (without it, gloo runs crash intermittently at exit)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over processes (float64 on the CPU with gloo, on the device with NCCL)."""
    if not info.distributed:
        return values
    device = info.device if info.backend == "nccl" else torch.device("cpu")
    out = values.to(device)
    dist.all_reduce(out)
    return out.to(values.device)


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    autocast_dtype: torch.dtype | None  # None: no autocast (float32)
    frozen_dtype: torch.dtype  # dtype of the frozen weights
    scaler: bool  # float16 needs a gradient scaler

    @property
    def name(self) -> str:
        return {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[self.autocast_dtype]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX), where bfloat16
    autocast pays off; elsewhere torch emulates bfloat16 and it is slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu helpers
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:
        return False


def choose_precision(precision: str, frozen: str, device: torch.device, strategy: str) -> Precision:
    """``auto``: bfloat16 autocast on a GPU that supports it, else float16 + gradient scaler;
    float32 on the CPU. Frozen weights (``auto``) are stored in the autocast dtype with DDP on a
    GPU, and in float32 otherwise (FSDP casts its compute copy through the mixed-precision
    policy; the CPU needs float32 weights for float32 compute)."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if frozen == "auto":
        on_gpu_ddp = autocast is not None and device.type == "cuda" and strategy == "ddp"
        frozen_dtype = autocast if on_gpu_ddp else torch.float32
    else:
        frozen_dtype = _DTYPES[frozen]
    return Precision(autocast, frozen_dtype, precision == "fp16")


def autocast_context(device_type: str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device_type``; nothing for ``None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def autocast(device: torch.device, precision: Precision):
    return autocast_context(device.type, precision.autocast_dtype)


def grad_scaler(device: torch.device, precision: Precision):
    return torch.amp.GradScaler(device.type) if precision.scaler else None


# ---------------------------------------------------------------------------------------------
# Wrapping
# ---------------------------------------------------------------------------------------------


def wrap(module: torch.nn.Module, info: DistInfo, strategy: str, precision: Precision,
         find_unused: bool) -> torch.nn.Module:
    """DDP or FSDP2 around the training module (one process with DDP: the module itself)."""
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            raise RuntimeError("strategy fsdp needs a process group: launch with torchrun (one process works too)")
        mesh = init_device_mesh(info.device.type, (info.world,))
        policy = MixedPrecisionPolicy(param_dtype=precision.autocast_dtype, reduce_dtype=torch.float32) \
            if precision.autocast_dtype is not None else MixedPrecisionPolicy()
        for layer in module.model.llama.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(module, mesh=mesh, mp_policy=policy)
        return module
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused,
                                   broadcast_buffers=False)


def unwrap(wrapped: torch.nn.Module) -> torch.nn.Module:
    return getattr(wrapped, "module", wrapped)


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, enabled: bool):
    """Skip the gradient reduction on micro-steps before the last of an accumulation cycle."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(enabled)
        yield
    elif isinstance(wrapped, DistributedDataParallel) and not enabled:
        with wrapped.no_sync():
            yield
    else:
        yield


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered whole; a plain tensor as it is. Collective under FSDP:
    every process must call it in the same order."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` placed as ``like`` is (this process's shard of a DTensor; else moved/cast)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)
    return full.to(device=like.device, dtype=like.dtype)
