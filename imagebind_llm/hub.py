"""Weight files on disk: found in the Hugging Face cache or downloaded, with progress, resume
and sha256 checks, and errors that say where a file is expected and how to get it.

Where files go:

* hub files (``repo_id`` + ``filename``) use ``huggingface_hub.hf_hub_download`` and its cache
  (``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
  so a copy made with ``hf download`` (``huggingface-cli download`` before huggingface_hub 1.0)
  is found, and offline mode (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) reads that cache
  without touching the network;
* URL files are saved as ``<dir>/<filename>`` with ``<dir>`` = ``cache_dir``, else
  ``$IMAGEBIND_LLM_CACHE``, else ``$XDG_CACHE_HOME/imagebind_llm`` (``~/.cache/imagebind_llm``).
  They are written to ``<filename>.part`` (resumed with an HTTP Range request after an
  interruption), checked, then renamed, so the final name never holds a partial file;
* local files (``WeightFile(local_path=...)``) are used where they are.

Checks: ``size_bytes`` and ``sha256`` when the :class:`~imagebind_llm.presets.WeightFile`
gives them. The hash of a large file (64 MiB or more) is remembered in ``<real file>.sha256``
with the file's size and modification time, so it is computed once, not at every start (for a
hub file the real file is the blob the snapshot links to). A mismatch raises
:class:`ChecksumMismatchError` and deletes nothing.

:func:`resolve_preset` resolves all the files of a preset; a path given on the command line
(``--imagebind``, ``--adapter``, ``--cache-index``) or in the environment
(``IMAGEBIND_LLM_IMAGEBIND``, ``IMAGEBIND_LLM_ADAPTER``, ``IMAGEBIND_LLM_CACHE_INDEX``) replaces
the download of that file.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import inspect
import json
import logging
import os
import re
import shlex
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import CheckpointError
from .presets import Preset, WeightFile, get_preset

log = logging.getLogger(__name__)

# A local copy of a preset's file, by role: the command-line flag and the environment variable.
CLI_FLAGS = {"imagebind": "--imagebind", "adapter": "--adapter", "cache_index": "--cache-index"}
ENV_OVERRIDES = {"imagebind": "IMAGEBIND_LLM_IMAGEBIND", "adapter": "IMAGEBIND_LLM_ADAPTER",
                 "cache_index": "IMAGEBIND_LLM_CACHE_INDEX"}
#: How an error tells each role's user to point at a local copy instead of a download.
LOCAL_COPY_HINTS = {**{role: f"{flag} PATH, or {ENV_OVERRIDES[role]}=PATH" for role, flag in CLI_FLAGS.items()},
                    "pretrained": "--pretrained PATH (python -m train), or model.adapter: PATH in the config"}
URL_CACHE_ENV = "IMAGEBIND_LLM_CACHE"

_HASH_CHUNK = 16 << 20  # bytes read at a time when hashing
_MARKER_MIN_BYTES = 64 << 20  # smaller files are hashed every time (fast) and get no marker
_NET_CHUNK = 1 << 20  # bytes read at a time from the network
_TRUE = {"1", "ON", "YES", "TRUE"}


class WeightsUnavailableError(CheckpointError):
    """A weight file that is not on disk and cannot be fetched (offline, no network, 404,
    gated or private repository, interrupted download). The message says why, where the file is
    expected and how to get it."""

    def __init__(self, message: str, *, weight_file: WeightFile | None = None,
                 expected_path: Path | None = None):
        super().__init__(message)
        self.weight_file = weight_file
        self.expected_path = expected_path


class ChecksumMismatchError(CheckpointError):
    """A weight file whose size or sha256 differs from the expected one. Nothing is deleted."""

    def __init__(self, path: Path, *, expected: str, actual: str, check: str = "sha256", advice: str = ""):
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        self.check = check
        message = f"{path}: {check} mismatch\n  expected: {expected}\n  actual:   {actual}"
        if advice:
            message += "\n" + advice
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Settings read at call time (so that changing the environment takes effect)
# ---------------------------------------------------------------------------------------------


def is_offline(local_files_only: bool | None = None) -> bool:
    """``local_files_only`` when given, else ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``)."""
    if local_files_only is not None:
        return bool(local_files_only)
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.strip().upper() in _TRUE
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face cache: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or the default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def url_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where URL files are saved: ``cache_dir``, ``$IMAGEBIND_LLM_CACHE``, or
    ``$XDG_CACHE_HOME/imagebind_llm`` (``~/.cache/imagebind_llm``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(URL_CACHE_ENV):
        return Path(os.environ[URL_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "imagebind_llm"


def expected_path(weight_file: WeightFile, cache_dir: str | Path | None = None) -> Path:
    """Where ``weight_file`` is (or would be, once downloaded) on disk. For a hub file on a
    branch that has never been fetched the commit is unknown: the path then holds ``<commit>``."""
    if weight_file.kind == "local":
        return weight_file.path  # type: ignore[return-value]
    if weight_file.kind == "url":
        return url_cache_dir(cache_dir) / _relative_name(weight_file)
    repo = hub_cache_dir(cache_dir) / ("models--" + weight_file.repo_id.replace("/", "--"))  # type: ignore[union-attr]
    revision = weight_file.revision or "main"
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        ref = repo / "refs" / revision
        revision = ref.read_text().strip() if ref.is_file() else "<commit>"
    return repo / "snapshots" / revision / Path(*PurePosixPath(weight_file.filename).parts)  # type: ignore[arg-type]


def download_command(weight_file: WeightFile, cache_dir: str | Path | None = None) -> str:
    """A shell command that fetches ``weight_file`` to where :func:`resolve` looks for it."""
    if weight_file.kind == "hub":
        command = ["hf", "download", weight_file.repo_id, weight_file.filename]
        if weight_file.revision:
            command += ["--revision", weight_file.revision]
        if cache_dir is not None:
            command += ["--cache-dir", str(hub_cache_dir(cache_dir))]
        return shlex.join(command)  # type: ignore[arg-type]
    if weight_file.kind == "url":
        target = expected_path(weight_file, cache_dir)
        return shlex.join(["curl", "-L", "-C", "-", "--create-dirs", "-o", str(target), weight_file.url])  # type: ignore[list-item]
    return ""


# ---------------------------------------------------------------------------------------------
# Hashing, with the result remembered beside the file
# ---------------------------------------------------------------------------------------------


def _hash_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (the one place that reads a whole file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".sha256")


def _read_marker(path: Path) -> str | None:
    try:
        stat = os.stat(path)
        data = json.loads(_marker_path(path).read_text())
        if data.get("size") == stat.st_size and data.get("mtime_ns") == stat.st_mtime_ns:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_marker(path: Path, digest: str) -> None:
    marker = _marker_path(path)
    try:
        stat = os.stat(path)
        marker.write_text(json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    except OSError as error:  # a read-only cache: fine, the file is hashed again next time
        log.debug("cannot write the hash marker %s (%s)", marker, error)


def file_sha256(path: str | Path, *, use_marker: bool = True) -> str:
    """The sha256 of ``path`` (hex). With ``use_marker`` the result of a large file is read from,
    or saved to, ``<real file>.sha256``, valid while the file keeps its size and modification
    time (small files are simply hashed)."""
    path = Path(path)
    use_marker = use_marker and os.stat(path).st_size >= _MARKER_MIN_BYTES
    if use_marker and (cached := _read_marker(path)) is not None:
        return cached
    log.info("computing the sha256 of %s", path)
    digest = _hash_file(path)
    if use_marker:
        _write_marker(path, digest)
    return digest


def verify(path: str | Path, weight_file: WeightFile, *, advice: str = "") -> None:
    """Check the size and sha256 that ``weight_file`` gives (skipped where it gives none)."""
    path = Path(path)
    if weight_file.size_bytes is not None:
        size = os.stat(path).st_size
        if size != weight_file.size_bytes:
            raise ChecksumMismatchError(path, expected=f"{weight_file.size_bytes} bytes", actual=f"{size} bytes",
                                        check="size", advice=advice)
    if weight_file.sha256 is None:
        log.debug("%s: no sha256 is known for %s; not verified", path, weight_file.name)
        return
    actual = file_sha256(path)
    if actual != weight_file.sha256:
        raise ChecksumMismatchError(path, expected=weight_file.sha256, actual=actual, advice=advice)
    log.debug("%s: sha256 verified", path)


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------


def resolve(
    weight_file: WeightFile,
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    progress: bool = True,
    role: str | None = None,
) -> Path:
    """The path of ``weight_file`` on disk, downloading it first when needed and allowed.

    ``cache_dir``: the Hugging Face cache for hub files, the folder for URL files (defaults in the
    module docstring). ``local_files_only``: None follows ``HF_HUB_OFFLINE``; True never uses the
    network. ``progress``: show download progress bars. ``role`` (a key of
    :data:`LOCAL_COPY_HINTS`) only makes the error message name the matching flag and variable.

    Raises :class:`WeightsUnavailableError` when the file is missing and cannot be fetched, and
    :class:`ChecksumMismatchError` when it does not match the known size or sha256.
    """
    if weight_file.kind == "local":
        path = weight_file.path
        if not path.is_file():  # type: ignore[union-attr]
            raise WeightsUnavailableError(
                f"{weight_file.describe()} does not exist. "
                + ("It ships inside the imagebind_llm package: reinstall the package."
                   if not Path(weight_file.local_path).expanduser().is_absolute()  # type: ignore[arg-type]
                   else "Check the path."),
                weight_file=weight_file, expected_path=path)
        verify(path, weight_file, advice="Replace it with a good copy.")  # type: ignore[arg-type]
        log.info("%s: using %s", weight_file.name, path)
        return path  # type: ignore[return-value]
    if weight_file.kind == "hub":
        return _resolve_hub(weight_file, cache_dir, is_offline(local_files_only), progress, role)
    return _resolve_url(weight_file, cache_dir, is_offline(local_files_only), progress, role)


def _hf_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.23 kept them in utils
        from huggingface_hub import utils as errors
    return errors


def _error_class(name: str):
    return getattr(_hf_errors(), name, ())


def _hub_reason(error: Exception, weight_file: WeightFile, offline: bool) -> str:
    repo = weight_file.repo_id
    if isinstance(error, _error_class("GatedRepoError")):
        return (f"the repository {repo} is gated: accept its conditions at https://huggingface.co/{repo} "
                "and log in (`hf auth login`, or set HF_TOKEN)")
    if isinstance(error, _error_class("RepositoryNotFoundError")):
        return f"the repository {repo} was not found (private, renamed or deleted; log in if you have access)"
    if isinstance(error, _error_class("RevisionNotFoundError")):
        return f"the revision {weight_file.revision} does not exist in {repo}"
    if isinstance(error, _error_class("LocalEntryNotFoundError")):
        if offline:
            return ("offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True) and the file is not in the "
                    "local Hugging Face cache")
        return ("the Hugging Face hub cannot be reached and the file is not in the local cache (with no "
                "network, set HF_HUB_OFFLINE=1 to skip the connection attempts)")
    if isinstance(error, _error_class("EntryNotFoundError")):
        return f"the file does not exist in {repo} at revision {weight_file.revision or 'main'}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"the download failed ({type(error).__name__}: {first})"


def _unavailable(weight_file: WeightFile, reason: str, cache_dir, offline: bool,
                 role: str | None) -> WeightsUnavailableError:
    where = expected_path(weight_file, cache_dir)
    lines = [f"{weight_file.describe()} is not available: {reason}.",
             f"  expected at: {where}"]
    if weight_file.kind == "hub":
        lines.append(f"  download it: {download_command(weight_file, cache_dir)}")
        lines.append("               (huggingface_hub < 1.0: `huggingface-cli download`, same arguments; for an "
                     "offline machine, run it elsewhere and copy the cache folder)")
    else:
        lines.append(f"  download it: {download_command(weight_file, cache_dir)}")
    lines.append(f"  URL:         {weight_file.download_url}")
    if role in LOCAL_COPY_HINTS:
        lines.append(f"  or point at a local copy: {LOCAL_COPY_HINTS[role]}")
    else:
        lines.append("  or point at a local copy with --imagebind / --adapter / --cache-index PATH (or "
                     + " / ".join(ENV_OVERRIDES.values()) + ")")
    if offline:
        lines.append("  (offline mode: unset HF_HUB_OFFLINE or pass local_files_only=False to download)")
    return WeightsUnavailableError("\n".join(lines), weight_file=weight_file, expected_path=where)


@functools.cache
def _silent_tqdm():
    """A tqdm class that never draws, for ``progress=False`` (built on first use: tqdm is not
    imported with this module)."""
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Errors a download can end with besides OSError: huggingface_hub's own, and httpx's
    (huggingface_hub >= 1.0 uses httpx, whose errors are not OSErrors)."""
    errors: list[type[BaseException]] = [http.client.HTTPException]
    errors += [c for c in (_error_class("EntryNotFoundError"), _error_class("HfHubHTTPError")) if c]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return (OSError, *errors)


def _resolve_hub(weight_file: WeightFile, cache_dir, offline: bool, progress: bool, role: str | None) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hub_cache_dir(cache_dir)
    cached = try_to_load_from_cache(weight_file.repo_id, weight_file.filename, cache_dir=str(cache),  # type: ignore[arg-type]
                                    revision=weight_file.revision)
    if not isinstance(cached, str) and not offline:
        log.info("downloading %s (%s) to %s", weight_file.describe(), weight_file.download_url, cache)
    kwargs = {"repo_id": weight_file.repo_id, "filename": weight_file.filename, "revision": weight_file.revision,
              "cache_dir": str(cache), "local_files_only": offline}
    if not progress and "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        kwargs["tqdm_class"] = _silent_tqdm()
    try:
        path = Path(hf_hub_download(**kwargs))
    except _transport_errors() as error:
        raise _unavailable(weight_file, _hub_reason(error, weight_file, offline), cache_dir, offline, role) from error
    advice = (f"The cached copy may be corrupted, or the repository may have changed. Download it again with\n"
              f"  {download_command(weight_file, cache_dir)} --force-download\n"
              f"or delete {path} and {Path(os.path.realpath(path))} and run again.")
    verify(path, weight_file, advice=advice)
    log.info("%s: using %s", weight_file.name, path)
    return path


def _relative_name(weight_file: WeightFile) -> Path:
    parts = PurePosixPath(weight_file.filename).parts  # type: ignore[arg-type]
    if not parts or parts[0] == "/" or ".." in parts:
        raise ValueError(f"{weight_file.url}: the file name {weight_file.filename!r} must be a relative path")
    return Path(*parts)


def _resolve_url(weight_file: WeightFile, cache_dir, offline: bool, progress: bool, role: str | None) -> Path:
    destination = expected_path(weight_file, cache_dir)
    if not destination.is_file():
        if offline:
            reason = "offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True) and it has not been downloaded"
            raise _unavailable(weight_file, reason, cache_dir, True, role)
        try:
            download_url(weight_file.url, destination, sha256=weight_file.sha256,  # type: ignore[arg-type]
                         size_bytes=weight_file.size_bytes, progress=progress)
        except WeightsUnavailableError as error:
            raise _unavailable(weight_file, str(error), cache_dir, offline, role) from error
    # after a download this reads the hash marker the download wrote: no second pass over the file
    verify(destination, weight_file, advice=f"Delete {destination} and run again to download it afresh.")
    log.info("%s: using %s", weight_file.name, destination)
    return destination


# ---------------------------------------------------------------------------------------------
# Plain HTTP downloads with resume
# ---------------------------------------------------------------------------------------------


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/n`` (or ``bytes */n``) header."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def download_url(
    url: str,
    destination: str | Path,
    *,
    sha256: str | None = None,
    size_bytes: int | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``destination`` through ``<destination>.part``.

    An existing ``.part`` is resumed with an HTTP Range request (started over if the server
    ignores the range). The complete file is checked against ``size_bytes`` and ``sha256``
    when given and only then renamed to ``destination``. An interrupted download keeps its
    ``.part`` for the next attempt; a checksum mismatch keeps it too and raises
    :class:`ChecksumMismatchError`. A lock file serialises concurrent downloads of one file.
    """
    from filelock import FileLock
    from tqdm.auto import tqdm

    from . import __version__

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    with FileLock(str(destination.with_name(destination.name + ".lock"))):
        if destination.is_file():  # another process finished it meanwhile
            return destination
        done = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": f"imagebind-llm/{__version__}", "Accept-Encoding": "identity"}
        if done:
            headers["Range"] = f"bytes={done}-"
            log.info("resuming %s from byte %d", url, done)
        else:
            log.info("downloading %s to %s", url, destination)
        complete = False
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as error:
            total = _content_range(error.headers.get("Content-Range"))[1] if error.headers else None
            error.close()
            if error.code != 416 or not done:
                raise WeightsUnavailableError(f"the server answered HTTP {error.code} {error.reason} for {url}",
                                              expected_path=destination) from error
            if total is not None and total != done:  # the part is longer than the file
                raise WeightsUnavailableError(
                    f"{part} has {done} bytes but the file at {url} has {total}; delete {part} and run again",
                    expected_path=destination) from error
            complete = True  # 416 for a range starting at the end: the part is the whole file
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise WeightsUnavailableError(f"cannot reach {url} ({reason})", expected_path=destination) from error
        if not complete:
            with response:
                done = _receive(response, part, done, url, size_bytes, progress, tqdm, destination)
        if size_bytes is not None and done != size_bytes:
            raise ChecksumMismatchError(part, expected=f"{size_bytes} bytes", actual=f"{done} bytes", check="size",
                                        advice=_part_advice(part, url))
        digest = None
        if sha256 is not None:
            digest = _hash_file(part)
            if digest != sha256.lower():
                raise ChecksumMismatchError(part, expected=sha256.lower(), actual=digest,
                                            advice=_part_advice(part, url))
        os.replace(part, destination)
        if digest is not None and done >= _MARKER_MIN_BYTES:
            _write_marker(destination, digest)
    log.info("saved %s (%d bytes)", destination, done)
    return destination


def _part_advice(part: Path, url: str) -> str:
    return (f"The downloaded data is kept at {part} and was not used. Delete it and run again to download "
            f"afresh; if the mismatch repeats, the file at {url} has changed: check it and update the "
            "expected value.")


def _receive(response, part: Path, done: int, url: str, size_bytes: int | None, progress: bool, tqdm,
             destination: Path) -> int:
    """Stream the response body into ``part``; returns the part's final size."""
    if done and response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range"))
        if start != done:
            raise WeightsUnavailableError(f"{url}: asked for bytes from {done}, the server sent from {start}",
                                          expected_path=destination)
        mode = "ab"
    else:
        if done:
            log.info("%s: the server does not resume downloads; starting over", url)
        done, mode, total = 0, "wb", None
    length = response.headers.get("Content-Length")
    if total is None and length is not None and length.isdigit():
        total = done + int(length)
    total = total if total is not None else size_bytes
    with open(part, mode) as f, tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=destination.name, disable=not progress) as bar:
        try:
            while chunk := response.read(_NET_CHUNK):
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise WeightsUnavailableError(
                f"the download of {url} was interrupted after {done} bytes ({error}); the partial file {part} is "
                "kept: run again to resume", expected_path=destination) from error
    if total is not None and done < total:
        raise WeightsUnavailableError(
            f"the download of {url} stopped after {done} of {total} bytes; the partial file {part} is kept: run "
            "again to resume", expected_path=destination)
    return done


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetFiles:
    """The paths of a preset's files, as :func:`resolve_preset` found them."""

    preset: Preset
    imagebind: Path
    adapter: Path
    cache_index: Path | None = None
    llama_delta: tuple[Path, ...] = ()


def resolve_preset(
    preset: Preset | str,
    *,
    overrides: Mapping[str, str | Path | None] | None = None,
    cache_index: bool = False,
    llama_delta: bool = False,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    progress: bool = True,
) -> PresetFiles:
    """Resolve the files of a preset: ImageBind and adapter always, the visual-cache index when
    ``cache_index`` (it is large), the Open-Chinese-LLaMA delta files when ``llama_delta``.

    ``overrides`` maps a role (``imagebind``, ``adapter``, ``cache_index``) to a local path, e.g.
    from the ``--imagebind`` / ``--adapter`` / ``--cache-index`` flags; a role without one reads
    ``IMAGEBIND_LLM_IMAGEBIND`` / ``IMAGEBIND_LLM_ADAPTER`` / ``IMAGEBIND_LLM_CACHE_INDEX``. A local
    copy is used as given (it may be a different file on purpose), not checked against the
    preset's sha256. The base LLaMA is not downloadable: see ``preset.llama_requirement``.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(CLI_FLAGS)
    if unknown:
        raise ValueError(f"unknown override roles {sorted(unknown)}; known: {', '.join(CLI_FLAGS)}")

    def one(role: str, source: WeightFile | None) -> Path:
        given = overrides.get(role)
        origin = CLI_FLAGS[role]
        if not given and os.environ.get(ENV_OVERRIDES[role]):
            given, origin = os.environ[ENV_OVERRIDES[role]], ENV_OVERRIDES[role]
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise WeightsUnavailableError(f"{role} file {path} (from {origin}) does not exist",
                                              weight_file=source, expected_path=path)
            log.info("%s: using the local copy %s (from %s)", role, path, origin)
            return path
        if source is None:
            raise WeightsUnavailableError(
                f"preset {preset.name} has no {role} file: pass {CLI_FLAGS[role]} PATH or set {ENV_OVERRIDES[role]}")
        return resolve(source, cache_dir=cache_dir, local_files_only=local_files_only, progress=progress, role=role)

    imagebind = one("imagebind", preset.imagebind)
    adapter = one("adapter", preset.adapter)
    index = one("cache_index", preset.cache_index) if cache_index else None
    delta = tuple(resolve(f, cache_dir=cache_dir, local_files_only=local_files_only, progress=progress)
                  for f in preset.llama_delta) if llama_delta else ()
    return PresetFiles(preset, imagebind, adapter, index, delta)
