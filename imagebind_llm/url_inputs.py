"""Inputs given as http(s) URLs on the command line (``--image https://.../cat.jpg``).

Each URL is downloaded once into a temporary folder and then read like a local file; the URL
stays the input's name, so messages name what the user typed. A download is refused past
``max_bytes`` (the loaders' own limit) and any failure is an :class:`InputError` that names the
URL and the reason. The folder is removed when the :class:`Downloads` is closed or collected.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import InputError
from .preprocess.common import DEFAULT_MAX_BYTES

URL_SCHEMES = ("http://", "https://")
CHUNK_BYTES = 1 << 20


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 2**20 else f"{n / 2**20:.1f} MB"


def is_url(value) -> bool:
    return isinstance(value, str) and value.lower().startswith(URL_SCHEMES)


class Downloads:
    """A temporary folder of downloaded inputs (one file per distinct URL)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 30.0):
        self.max_bytes, self.timeout = max_bytes, timeout
        self._folder: tempfile.TemporaryDirectory | None = None
        self._paths: dict[str, Path] = {}

    def localize(self, media):
        """``media`` with a URL value replaced by the downloaded file; anything else as it is."""
        if media.kind == "text" or not is_url(media.value):
            return media
        return dataclasses.replace(media, value=str(self.fetch(media.value)), name=media.name or media.value)

    def fetch(self, url: str) -> Path:
        if url not in self._paths:
            self._paths[url] = self._download(url)
        return self._paths[url]

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder, self._paths = None, {}

    def __enter__(self) -> Downloads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _download(self, url: str) -> Path:
        from . import __version__

        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="imagebind-llm-inputs-")
        request = urllib.request.Request(url, headers={"User-Agent": f"imagebind-llm/{__version__}"})
        limit = f"the limit of {_size(self.max_bytes)}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise InputError(url, f"the file is {_size(int(declared))}, over {limit}")
                # keep the extension (the loaders tell formats by it), else derive it from the type
                suffix = Path(urllib.parse.urlparse(response.geturl()).path).suffix
                if not suffix:
                    suffix = mimetypes.guess_extension(response.headers.get_content_type()) or ""
                path = Path(self._folder.name) / f"{len(self._paths)}{suffix}"
                size = 0
                with open(path, "wb") as out:
                    while chunk := response.read(CHUNK_BYTES):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InputError(url, f"the download passed {limit}")
                        out.write(chunk)
        except urllib.error.HTTPError as error:
            raise InputError(url, f"could not be downloaded (HTTP {error.code} {error.reason})") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise InputError(url, f"could not be downloaded ({reason})",
                             "a local file, or a URL this machine can reach") from None
        return path
