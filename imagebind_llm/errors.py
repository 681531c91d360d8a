"""The project's exception types.

Every problem with something a user gave us (a file, an array, a prompt) is an
:class:`InputError` whose message names the input, the problem and what is accepted, so
that an app can show it as is and keep serving. Problems with weight files are a
:class:`CheckpointError`.
"""

from __future__ import annotations


class ImageBindLLMError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(ImageBindLLMError, ValueError):
    """A user input that cannot be used.

    Args:
        source: what the input is called in the message (a file name, ``"<bytes>"``, ``"text 3"``).
        problem: what is wrong with it, in plain words.
        accepted: what would have been accepted (formats, sizes, ranges); optional.
    """

    def __init__(self, source: str, problem: str, accepted: str | None = None):
        self.source = source
        self.problem = problem
        self.accepted = accepted
        message = f"{source}: {problem}"
        if accepted:
            message += f". Accepted: {accepted}"
        super().__init__(message)


class CheckpointError(ImageBindLLMError, ValueError):
    """A weight file that does not fit the model (missing/unexpected keys, shapes, format)."""


class NotEnoughMemoryError(ImageBindLLMError, MemoryError):
    """Weights that would not fit the memory left (refused before allocating them)."""
