"""Where ImageBind's modality encoders live: lazy reading from the checkpoint and CPU offload.

ImageBind-huge has seven encoders (1.2 G parameters, 2.4 GB in bfloat16) but a chat session
usually needs one or two of them. Two independent options, set on an :class:`ImageBind` through
its ``residency`` attribute (see :meth:`ImageBind.encode_all`):

* **lazy** (``load_imagebind(..., lazy=True)``): the model is built on the meta device and
  every encoder's weights stay in the memory-mapped checkpoint until the first request of that
  modality reads them (converted to the dtype and placed on the device then). Memory grows only
  with the modalities used; unused encoders keep meta tensors. Thread-safe: two requests that
  need the same encoder read it once.
* **offload** (:func:`enable_offload`; ``offload_encoders=True`` in the loaders): every encoder
  is kept in CPU memory and moved to the GPU only while it encodes, then moved back, so the GPU
  holds the LLaMA plus one encoder at a time. Encodes are serialised (one encoder on the GPU at
  a time). On a CPU-only machine there is nothing to offload to and the option does nothing.

Both compose: with lazy + offload an encoder is read into CPU memory on first use and visits
the GPU for each encode.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)


class EncoderResidency:
    """The placement policy of one ImageBind's encoders.

    ``device``/``dtype``: where and in which dtype encoders run (``ImageBind.device`` and
    ``.dtype`` report these). ``storage``: where an idle encoder is kept (``device`` unless
    offloading). ``source``: project-key -> tensor of the encoders not read yet (lazy loading);
    None when every encoder is already in place.
    """

    def __init__(self, *, device: torch.device | str, dtype: torch.dtype | None = None,
                 storage: torch.device | str | None = None, offload: bool = False,
                 source: Mapping[str, torch.Tensor] | None = None, modalities: tuple[str, ...] = ()):
        self.device = torch.device(device)
        self.storage = torch.device(storage) if storage is not None else self.device
        self.offload = offload
        self._source = dict(source) if source is not None else {}
        stray = [k for k in self._source if k.split(".")[0] not in modalities]
        if stray:  # ImageBind has no weights outside its encoders; anything else would never be read
            raise ValueError(f"lazy loading: tensors outside the encoders {modalities}: {stray[:5]}")
        self._pending = {m for m in modalities if any(k.startswith(m + ".") for k in self._source)}
        self._convert_to = dtype  # None: keep the checkpoint's dtype
        if dtype is None:
            dtype = next((t.dtype for t in self._source.values() if t.is_floating_point()), torch.float32)
        self.dtype = dtype
        self._lock = threading.RLock()
        self.reads: dict[str, int] = {}  # modality -> times read from the checkpoint (1 at most)

    @property
    def lazy(self) -> bool:
        return bool(self._pending)

    def pending(self) -> tuple[str, ...]:
        """The modalities whose weights are still only in the checkpoint."""
        return tuple(sorted(self._pending))

    # ------------------------------------------------------------------------------ moves

    def _move(self, module: nn.Module, device: torch.device) -> None:
        """One encoder to a device (a seam for tests)."""
        module.to(device)

    def _read(self, model: nn.Module, modality: str) -> None:
        """Load one encoder from the checkpoint tensors, in ``dtype``, onto ``storage``."""
        encoder = model.encoder(modality)
        prefix = modality + "."
        state = {k[len(prefix):]: self._source.pop(k) for k in [k for k in self._source if k.startswith(prefix)]}
        with torch.inference_mode(False), torch.no_grad():
            encoder.load_state_dict(state, strict=True, assign=True)
            encoder.to(device=self.storage, dtype=self._convert_to)
        encoder.eval()
        self._pending.discard(modality)
        self.reads[modality] = self.reads.get(modality, 0) + 1
        log.info("read the %s encoder from the checkpoint (%.1f MiB)", modality,
                 sum(t.numel() * t.element_size() for t in encoder.state_dict().values()) / 2**20)

    def materialise(self, model: nn.Module, modality: str) -> None:
        """Make sure ``modality``'s weights are read (lazy loading); a no-op once they are."""
        if modality not in self._pending:
            return
        with self._lock:
            if modality in self._pending:
                self._read(model, modality)

    @contextlib.contextmanager
    def use(self, model: nn.Module, modality: str) -> Iterator[nn.Module]:
        """The encoder of ``modality``, read if needed and on ``device`` for the duration."""
        self.materialise(model, modality)
        encoder = model.encoder(modality)
        if not self.offload:
            yield encoder
            return
        with self._lock:  # one encoder on the GPU at a time
            with torch.inference_mode(False), torch.no_grad():
                self._move(encoder, self.device)
            try:
                yield encoder
            finally:
                with torch.inference_mode(False), torch.no_grad():
                    self._move(encoder, self.storage)


def residency_of(model: nn.Module) -> EncoderResidency | None:
    return getattr(model, "residency", None)


def enable_offload(model: nn.Module, device: torch.device | str) -> bool:
    """Keep every encoder of ``model`` (an ImageBind) in CPU memory and move it to ``device``
    only while it encodes. Returns False (and changes nothing) when ``device`` is the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        log.info("encoder offload: the model runs on the CPU, nothing to offload")
        return False
    residency = residency_of(model)
    if residency is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point() and not p.is_meta), None)
        residency = EncoderResidency(device=device, dtype=dtype)
    cpu = torch.device("cpu")
    with torch.no_grad():
        for name in model.modalities:
            encoder = model.encoder(name)
            if name not in residency.pending():
                residency._move(encoder, cpu)
    residency.device, residency.storage, residency.offload = device, cpu, True
    model.residency = residency
    log.info("encoder offload: encoders kept on the CPU, moved to %s while they encode", device)
    return True


def encoder_bytes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per modality: bytes of its weights on each device type (``meta`` = not read)."""
    out: dict[str, dict[str, int]] = {}
    for name in model.modalities:
        per_device: dict[str, int] = {}
        for tensor in model.encoder(name).state_dict().values():
            kind = tensor.device.type
            per_device[kind] = per_device.get(kind, 0) + tensor.numel() * tensor.element_size()
        out[name] = per_device
    return out


def apply_memory_options(pipeline, *, device: torch.device | str = "cpu", quantize: str | None = None,
                         imagebind_dtype: torch.dtype | None = None, offload_encoders: bool = False,
                         lazy: bool = False):
    """The memory options of :meth:`Pipeline.from_paths` for a pipeline built in memory (the
    ``tiny-untrained`` preset): quantise its LLaMA in place, convert its ImageBind, offload its
    encoders. ``lazy`` needs a checkpoint to read from and is ignored here (logged)."""
    if quantize is not None:
        from .quantize import quantize_llama_

        quantize_llama_(pipeline.model, quantize, device=device)
    if imagebind_dtype is not None:
        pipeline.imagebind.to(dtype=imagebind_dtype)
    if lazy:
        log.info("lazy encoders: %s is built in memory, there is no checkpoint to read lazily", pipeline.name)
    if offload_encoders:
        enable_offload(pipeline.imagebind, device)
    return pipeline
