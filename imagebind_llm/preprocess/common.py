"""What every preprocessing module shares: turning a user's input into a readable source,
the size limit on files, and the choice between the official and the corrected behaviour.

Preprocessing never touches a device: it returns CPU tensors and the caller moves them.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Literal, Sequence, Union

from ..errors import InputError

#: "official" reproduces the official ImageBind-LLM preprocessing bit for bit, bugs included
#: (the golden tests use it); "corrected" fixes the bugs listed in the README. Default: corrected.
Mode = Literal["official", "corrected"]
MODES = ("official", "corrected")
DEFAULT_MODE: Mode = "corrected"

#: Files larger than this are refused before they are read (bytes); every loader takes
#: ``max_bytes=`` to change it, and the app exposes it as a setting.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024

#: What a loader accepts as a file: a path, raw bytes, or an open binary file object.
FileInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass
class Source:
    """A file-like input with a name for messages and its (lower-case) extension.

    Exactly one of ``path`` and ``data`` is set. ``suffix`` is taken from the path or from a
    file object's ``name``; for raw bytes it is ``""`` unless the caller passes ``name=``.
    """

    name: str
    suffix: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        return io.BytesIO(self.data)

    def read_bytes(self) -> bytes:
        if self.path is not None:
            return self.path.read_bytes()
        return self.data  # type: ignore[return-value]

    def error(self, problem: str, accepted: str | None = None) -> InputError:
        return InputError(self.name, problem, accepted)


def as_source(
    obj: FileInput,
    *,
    name: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    accepted: str | None = None,
) -> Source:
    """Wrap a path, bytes or binary file object; check that it exists, is not empty and not
    larger than ``max_bytes``. ``accepted`` is quoted in error messages."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        display = name or path.name or str(path)
        if not path.exists():
            raise InputError(display, f"file not found ({path})", accepted)
        if not path.is_file():
            raise InputError(display, "not a regular file", accepted)
        size = path.stat().st_size
        source = Source(name=display, suffix=_suffix(name or path.name), path=path)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        size = len(data)
        source = Source(name=name or "<bytes>", suffix=_suffix(name or ""), data=data)
    elif hasattr(obj, "read"):
        file_name = name or os.path.basename(str(getattr(obj, "name", "") or "")) or "<file object>"
        if isinstance(obj, io.TextIOBase):  # reading it would decode the bytes as text (and fail on most)
            raise InputError(file_name, "file object is open in text mode", "a file opened in binary mode ('rb')")
        data = obj.read()
        if isinstance(data, str):
            raise InputError(file_name, "file object is open in text mode", "a file opened in binary mode ('rb')")
        size = len(data)
        source = Source(name=file_name, suffix=_suffix(file_name), data=data)
    else:
        raise InputError(
            repr(obj)[:60], f"unsupported input type {type(obj).__name__}", "a path, bytes or a binary file object"
        )
    if size == 0:
        raise source.error("the file is empty", accepted)
    if max_bytes is not None and size > max_bytes:
        raise source.error(
            f"the file is too large ({human_bytes(size)}, limit {human_bytes(max_bytes)})", accepted
        )
    return source


def tensor_to_numpy(tensor):
    """A tensor's values as a numpy array, on the CPU; bfloat16, which numpy lacks, as float32
    (exactly: every bfloat16 is a float32)."""
    import torch

    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _suffix(name: str) -> str:
    # The type is chosen by the real extension, never by a substring of the whole path.
    return Path(name).suffix.lower()


def load_each(items: Any, load_one: Callable[[Any], Any], what: str, accepted: str) -> list:
    """Apply ``load_one`` to every item of a non-empty list; an error names the failing item
    by its index (``"image 2 (cat.png): ..."``). Shared by every ``load_*_batch``."""
    if not isinstance(items, (list, Sequence)) or isinstance(items, (str, bytes, bytearray, memoryview, tuple)):
        raise InputError(f"{what} inputs", f"expected a list, got {type(items).__name__}", "a list of " + accepted)
    if len(items) == 0:
        raise InputError(f"{what} inputs", "the list is empty", "a list of " + accepted)
    out = []
    for index, item in enumerate(items):
        try:
            out.append(load_one(item))
        except InputError as error:
            raise InputError(f"{what} {index} ({error.source})", error.problem, error.accepted) from None
    return out
