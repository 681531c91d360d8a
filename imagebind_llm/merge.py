"""Build Open-Chinese-LLaMA-7B (``7B_chinese``) from Meta's LLaMA-7B and the published delta.

    python -m imagebind_llm.merge /data/llama/7B                        # -> /data/llama/7B_chinese
    python -m imagebind_llm.merge /data/llama/7B /data/llama/7B_chinese --hf /data/llama/7B_chinese-hf
    python -m imagebind_llm.merge /data/llama/7B OUT --delta /downloads/7B_chinese_delta    # no download

The stable ImageBind-LLM adapter (preset ``imagebind-llm-7b``) was trained on Open-Chinese-LLaMA-7B,
which is published as an additive delta over LLaMA-7B (``Cxxs/Open-Chinese-LLaMA``,
``7B_chinese_delta/{consolidated.00.pth, params.json}``, reference.md 4.12). The merge is the
official one: for every tensor of the LLaMA-7B checkpoint except those whose name contains
``rope``, ``merged = (base.float() + delta.float()).half()``; ``params.json`` is copied from the
delta. Unlike the official script, the inputs are checked first (the base must have LLaMA-7B's
sizes; base and delta must hold the same tensors with the same shapes; the tokenizer must fit),
each mismatch named.

Output (``OUT``, default ``<base>/../7B_chinese``, the official ``<llama_dir>/7B_chinese``): the
Meta layout ``consolidated.00.pth``, ``params.json`` and a copy of ``tokenizer.model``; with
``--hf DIR`` also a Hugging Face folder (config.json, safetensors, tokenizer files).

Memory: both checkpoints are read memory-mapped (``torch.load(mmap=True, weights_only=True)``)
and merged one tensor at a time (in chunks, through one reused float32 buffer of at most
2 x 64 MB) into the output dict of float16 tensors, which is then saved. The pages of an input
tensor are handed back to the kernel once it is merged (Linux), so the peak resident memory is
about one output (13.5 GB for 7B) plus one tensor, not the 3x of reading both inputs whole
(``tests/test_merge.py`` measures it: 1.1x for a 415 MB model, where the naive merge takes
3.1x). ``--hf`` then reads the merged file back memory-mapped; writing safetensors holds one
shard (5 GB) and the permuted q/k weights (2 GB) on top.

The delta files come from :func:`imagebind_llm.hub.resolve` (Hugging Face cache, download with
progress and resume, checksums when the preset knows them, ``HF_HUB_OFFLINE`` honoured); each is
then checked against the checksum the hub published for it, its ETag, which the cache keeps as
the blob's name (sha256 for the weights, an LFS file; the git blob sha1 for params.json):
a damaged or truncated download is named before anything is merged.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import LlamaConfig
from .errors import CheckpointError
from .log_setup import setup_logging
from .weights import find_tokenizer, llama_shapes, meta_shard_files

log = logging.getLogger(__name__)

#: LLaMA-7B's sizes (params.json: dim 4096, 32 layers, 32 heads, multiple_of 256; 32000 pieces).
LLAMA_7B = LlamaConfig(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256)
#: The preset whose ``llama_delta`` files are merged.
DELTA_PRESET = "imagebind-llm-7b"
WEIGHTS_NAME = "consolidated.00.pth"
PARAMS_NAME = "params.json"
TOKENIZER_NAME = "tokenizer.model"


def is_merged_key(key: str) -> bool:
    """The official rule: every tensor except those whose name contains 'rope' (``rope.freqs``)."""
    return "rope" not in key


#: Elements merged at a time through the float32 work buffer (2 x 64 MB).
CHUNK = 1 << 24


def merge_tensor(base: torch.Tensor, delta: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """``(base.float() + delta.float()).half()``, bit for bit, computed in chunks through one
    float32 ``work`` buffer of shape (2, n), reused for every tensor. Nothing else is allocated
    but the float16 output: no float32 copies of whole tensors, and no temporaries that would
    leave holes in the heap between the outputs (a mixed-dtype add allocates one). fp16/bf16 ->
    fp32 is exact, so the chunked float32 sum rounds exactly like the formula."""
    if base.shape != delta.shape:
        raise CheckpointError(f"cannot add tensors of shapes {tuple(base.shape)} and {tuple(delta.shape)}")
    out = torch.empty(base.shape, dtype=torch.float16)
    total = base.numel()
    if work is None:
        work = merge_buffer(total)
    step = work.shape[1]
    flat_out, flat_base, flat_delta = out.view(-1), base.reshape(-1), delta.reshape(-1)
    for start in range(0, total, step):
        stop = min(start + step, total)
        first, second = work[0, :stop - start], work[1, :stop - start]
        first.copy_(flat_base[start:stop])
        second.copy_(flat_delta[start:stop])
        first.add_(second)
        flat_out[start:stop].copy_(first)
    return out


def merge_buffer(largest: int) -> torch.Tensor:
    """The float32 work buffer of :func:`merge_tensor` for tensors of up to ``largest`` elements
    (at most :data:`CHUNK` elements per row)."""
    return torch.empty(2, max(1, min(CHUNK, largest)), dtype=torch.float32)


@dataclass
class MergeReport:
    out: Path
    tensors: int
    bytes: int
    seconds: float
    base: Path
    delta: Path
    hf: Path | None = None
    skipped: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading memory-mapped, and handing pages back
# ---------------------------------------------------------------------------------------------


def load_mapped(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A checkpoint's tensors, memory-mapped when the file is in torch's zip format (every
    LLaMA release is). Returns (state, mapped)."""
    from .checkpoint import unwrap_state_dict

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    mapped = zipfile.is_zipfile(path)
    if not mapped:
        log.warning("%s is in torch's legacy format and cannot be memory-mapped: it is read whole", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except Exception as error:  # pickle errors, truncated files, foreign objects
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint ({first})") from error
    state = unwrap_state_dict(obj)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a state dict of tensors ({_some(bad)} are not tensors)")
    return state, mapped


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def release_pages(tensor: torch.Tensor) -> None:
    """Give the resident pages of a tensor read from a memory-mapped file back to the kernel
    (``madvise(MADV_DONTNEED)``; a later read would fetch them from the file again). Only for
    tensors of :func:`load_mapped` with ``mapped`` True: on anonymous memory this would zero it.
    A no-op where madvise is not available."""
    if _LIBC is None or tensor.numel() == 0:
        return
    start = tensor.untyped_storage().data_ptr()
    end = start + tensor.untyped_storage().nbytes()
    start -= start % _PAGE
    end += -end % _PAGE
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _some(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _read_params(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        params = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: a JSON object is expected")
    return params


def check_base_shape(state: dict[str, torch.Tensor], params: dict, expected: LlamaConfig | None,
                     source: Path) -> LlamaConfig:
    """The base's config (from params.json and its embedding), and, when ``expected`` is given,
    a named error if the base does not have those sizes (e.g. a 13B, or a smaller model)."""
    if "tok_embeddings.weight" not in state:
        raise CheckpointError(f"{source}: no tok_embeddings.weight: not a Meta LLaMA checkpoint")
    rows = state["tok_embeddings.weight"].shape[0]
    try:
        config = LlamaConfig.from_params(params, rows)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source / PARAMS_NAME}: {error}") from None
    if expected is None:
        return config
    found = {"dim": config.dim, "layers": config.n_layers, "heads": config.n_heads,
             "FFN width": config.hidden_dim, "vocabulary": config.vocab_size}
    wanted = {"dim": expected.dim, "layers": expected.n_layers, "heads": expected.n_heads,
              "FFN width": expected.hidden_dim, "vocabulary": expected.vocab_size}
    differ = [f"{name} {found[name]} (LLaMA-7B: {wanted[name]})" for name in found if found[name] != wanted[name]]
    shapes = llama_shapes(expected)
    keys = {k for k in state if is_merged_key(k)}
    missing, unexpected = sorted(set(shapes) - keys), sorted(keys - set(shapes))
    wrong = [f"{k} {tuple(state[k].shape)} (LLaMA-7B: {shapes[k]})" for k in sorted(keys & set(shapes))
             if tuple(state[k].shape) != shapes[k]]
    if differ:  # the sizes say it all; the tensors then differ everywhere
        missing, unexpected, wrong = [], [], []
    if differ or missing or unexpected or wrong:
        lines = []
        if differ:
            lines.append("params.json / embedding: " + ", ".join(differ))
        if missing:
            lines.append(f"tensors missing: {_some(missing)}")
        if unexpected:
            lines.append(f"tensors LLaMA-7B does not have: {_some(unexpected)}")
        if wrong:
            lines.append(f"shapes: {_some(wrong, 4)}")
        raise CheckpointError(f"{source} is not Meta's LLaMA-7B, which the Open-Chinese-LLaMA delta applies to:\n  - "
                              + "\n  - ".join(lines))
    return config


def check_delta_matches(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], base_path: Path,
                        delta_path: Path) -> None:
    """Base and delta hold the same tensors (rope aside) with the same shapes; else every
    difference is named."""
    base_keys = {k for k in base if is_merged_key(k)}
    delta_keys = {k for k in delta if is_merged_key(k)}
    problems = []
    only_base, only_delta = sorted(base_keys - delta_keys), sorted(delta_keys - base_keys)
    if only_base:
        problems.append(f"in the base but not in the delta ({len(only_base)}): {_some(only_base)}")
    if only_delta:
        problems.append(f"in the delta but not in the base ({len(only_delta)}): {_some(only_delta)}")
    wrong = [f"{k}: base {tuple(base[k].shape)}, delta {tuple(delta[k].shape)}" for k in sorted(base_keys & delta_keys)
             if base[k].shape != delta[k].shape]
    if wrong:
        problems.append(f"different shapes ({len(wrong)}): {_some(wrong, 4)}")
    if problems:
        raise CheckpointError(f"the base {base_path} and the delta {delta_path} do not hold the same tensors (a delta "
                              "for another model, or a damaged file?):\n  - " + "\n  - ".join(problems))


def _fresh_output(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} already exists and is not empty; choose a new destination (or delete it)")
    return path


# ---------------------------------------------------------------------------------------------
# The delta: download or local folder
# ---------------------------------------------------------------------------------------------


def download_delta(*, cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                   progress: bool = True) -> tuple[Path, Path]:
    """(consolidated.00.pth, params.json) of the Open-Chinese-LLaMA delta, as the preset
    ``imagebind-llm-7b`` names them, from the Hugging Face cache or downloaded there (about
    13.5 GB; progress bars, resume, sha256/size checks where the preset gives them). Both files
    are then checked against the hub's ETag, the name of their cache blob (:func:`verify_hub_blob`)."""
    from .hub import resolve
    from .presets import get_preset

    files = get_preset(DELTA_PRESET).llama_delta
    by_name = {f.name: f for f in files}
    if set(by_name) != {WEIGHTS_NAME, PARAMS_NAME}:
        raise CheckpointError(f"preset {DELTA_PRESET}: llama_delta must name {WEIGHTS_NAME} and {PARAMS_NAME}, "
                              f"got {sorted(by_name)}")
    params = resolve(by_name[PARAMS_NAME], cache_dir=cache_dir, local_files_only=local_files_only, progress=progress)
    weights = resolve(by_name[WEIGHTS_NAME], cache_dir=cache_dir, local_files_only=local_files_only, progress=progress)
    for path, weight_file in ((params, by_name[PARAMS_NAME]), (weights, by_name[WEIGHTS_NAME])):
        verify_hub_blob(path, weight_file, cache_dir=cache_dir)
    return weights, params


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SHA1_HEX = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(path: str | Path) -> str:
    """The git object id of a file's content (``sha1(b"blob <size>\\0" + content)``): the hub's
    ETag of a file kept in git rather than LFS (small files such as params.json)."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_hub_blob(path: str | Path, weight_file=None, *, cache_dir: str | Path | None = None) -> str | None:
    """Check a file of the Hugging Face cache against the checksum its cache entry carries.

    The cache keeps every file as ``blobs/<etag>`` (the snapshot path links to it), and the
    hub's ETag is the sha256 of the content for LFS files (the 13.5 GB delta) and the git blob
    sha1 for files kept in git (params.json). So the blob name is a published checksum even
    where the preset gives none: a truncated or damaged download is caught before the merge.
    Returns the check made ('sha256' or 'git sha1'), or None when ``path`` is not a cache blob
    (a local copy) or its name is not a hash. Raises
    :class:`~imagebind_llm.hub.ChecksumMismatchError` on a mismatch (nothing is deleted)."""
    from .hub import ChecksumMismatchError, download_command, file_sha256

    path = Path(path)
    real = Path(os.path.realpath(path))
    if real.parent.name != "blobs":
        log.debug("%s is not a Hugging Face cache blob: no checksum to compare with", path)
        return None
    etag = real.name.lower()
    if _SHA256_HEX.fullmatch(etag):
        check, actual = "sha256", file_sha256(real)
    elif _SHA1_HEX.fullmatch(etag):
        check, actual = "git sha1", git_blob_sha1(real)
    else:
        log.debug("%s: blob name %s is not a hash: not verified", path, real.name)
        return None
    if actual != etag:
        how = (f"  {download_command(weight_file, cache_dir)} --force-download\n" if weight_file is not None
               and weight_file.kind == "hub" else "")
        raise ChecksumMismatchError(
            path, expected=f"{etag} (the hub's ETag, the name of the cached blob {real})", actual=actual, check=check,
            advice=f"The download is damaged or incomplete. Download it again:\n{how}or delete {path} and {real} "
                   "and run again.")
    log.info("%s: %s matches the hub's ETag", path, check)
    return check


def _delta_files(delta: str | Path | tuple[Path, Path]) -> tuple[Path, Path]:
    if isinstance(delta, tuple):
        return Path(delta[0]), Path(delta[1])
    delta = Path(delta)
    if delta.is_file():  # the weights file; params.json beside it
        return delta, delta.with_name(PARAMS_NAME)
    return delta / WEIGHTS_NAME, delta / PARAMS_NAME


# ---------------------------------------------------------------------------------------------
# The merge
# ---------------------------------------------------------------------------------------------


def merge_delta(
    base: str | Path,
    out: str | Path,
    delta: str | Path | tuple[Path, Path] | None = None,
    *,
    tokenizer: str | Path | None = None,
    hf: str | Path | None = None,
    expected: LlamaConfig | None = LLAMA_7B,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> MergeReport:
    """Merge the Open-Chinese-LLaMA delta into Meta's LLaMA-7B folder ``base`` and write the
    Meta layout to ``out`` (``consolidated.00.pth``, ``params.json`` from the delta, the
    tokenizer); with ``hf`` also a Hugging Face folder.

    ``delta``: a folder (or the weights file, params.json beside it, or a (weights, params)
    pair); None downloads it (:func:`download_delta`). ``tokenizer``: default the
    ``tokenizer.model`` in ``base`` or beside it (Meta keeps it in the parent folder).
    ``expected``: the sizes the base must have (LLaMA-7B; None accepts any, for tests).
    """
    started = time.perf_counter()
    base, out = Path(base), Path(out)
    if not (base / PARAMS_NAME).is_file():
        hint = (" (it is a Hugging Face folder: convert it first with python -m imagebind_llm.convert "
                "llama-hf-to-meta)" if (base / "config.json").is_file() else "")
        raise CheckpointError(f"{base} is not a Meta LLaMA folder: {PARAMS_NAME} and {WEIGHTS_NAME} are expected{hint}")
    shards = meta_shard_files(base)
    if len(shards) != 1:
        raise CheckpointError(f"{base} has {len(shards)} model-parallel shards; LLaMA-7B is one file, "
                              f"{WEIGHTS_NAME} (is this 13B or larger?)" if shards else
                              f"{base} has no {WEIGHTS_NAME}")
    tokenizer_path = Path(tokenizer) if tokenizer is not None else find_tokenizer(base)
    if out.resolve() == base.resolve():
        raise CheckpointError("the output folder must differ from the base folder")
    _fresh_output(out)
    if hf is not None:
        _fresh_output(Path(hf))

    # The base and its tokenizer first: a wrong base is named before the 13.5 GB delta is downloaded.
    base_state, base_mapped = load_mapped(shards[0])
    config = check_base_shape(base_state, _read_params(base / PARAMS_NAME), expected, base)

    from .tokenizer import Tokenizer

    words = Tokenizer(tokenizer_path).n_words
    if words != config.vocab_size:
        raise CheckpointError(f"the tokenizer {tokenizer_path} has {words} pieces but the embedding has "
                              f"{config.vocab_size} rows: not LLaMA's tokenizer.model")

    if delta is None:
        delta_weights, delta_params = download_delta(cache_dir=cache_dir, local_files_only=local_files_only,
                                                     progress=progress)
    else:
        delta_weights, delta_params = _delta_files(delta)
    params = _read_params(delta_params)
    delta_state, delta_mapped = load_mapped(delta_weights)
    check_delta_matches(base_state, delta_state, shards[0], delta_weights)
    for name in ("dim", "n_layers", "n_heads"):
        if name in params and params[name] != getattr(config, name):
            raise CheckpointError(f"{delta_params} says {name} {params[name]} but the weights have "
                                  f"{getattr(config, name)}")

    from tqdm.auto import tqdm

    keys = [k for k in base_state if is_merged_key(k)]
    skipped = [k for k in base_state if not is_merged_key(k)]
    total = sum(base_state[k].numel() * 2 for k in keys)
    log.info("merging %d tensors (%.2f GB in float16) of %s and %s", len(keys), total / 1e9, shards[0], delta_weights)
    merged: dict[str, torch.Tensor] = {}
    work = merge_buffer(max((base_state[k].numel() for k in keys), default=1))
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="merge",
              disable=not progress) as bar:
        for key in keys:
            a, b = base_state[key], delta_state[key]
            merged[key] = merge_tensor(a, b, work)
            if base_mapped:
                release_pages(a)
            if delta_mapped:
                release_pages(b)
            bar.update(merged[key].numel() * 2)
    del base_state, delta_state, work

    out.mkdir(parents=True, exist_ok=True)
    part = out / (WEIGHTS_NAME + ".part")
    log.info("writing %s", out / WEIGHTS_NAME)
    try:
        torch.save(merged, part)
    except BaseException:  # a full disk, Ctrl-C: leave no partial file (the folder stays usable)
        part.unlink(missing_ok=True)
        raise
    os.replace(part, out / WEIGHTS_NAME)
    del merged
    shutil.copyfile(delta_params, out / PARAMS_NAME)
    if tokenizer_path.resolve() != (out / TOKENIZER_NAME).resolve():
        shutil.copyfile(tokenizer_path, out / TOKENIZER_NAME)

    hf_out = None
    if hf is not None:
        hf_out = write_hf_copy(out, Path(hf), tokenizer_path)
    report = MergeReport(out=out, tensors=len(keys), bytes=total, seconds=time.perf_counter() - started,
                         base=base, delta=delta_weights, hf=hf_out, skipped=skipped)
    log.info("merged %d tensors into %s in %.1f s", report.tensors, out, report.seconds)
    return report


def write_hf_copy(meta: Path, hf: Path, tokenizer: Path) -> Path:
    """The merged Meta folder as a Hugging Face folder (weights.write_hf_llama, tokenizer files)."""
    from .tokenizer import save_hf_tokenizer
    from .weights import read_llama, write_hf_llama

    config, state = read_llama(meta)  # memory-mapped
    write_hf_llama(state, config, hf)
    save_hf_tokenizer(tokenizer, hf)
    return hf


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imagebind_llm.merge",
        description="Build Open-Chinese-LLaMA-7B (7B_chinese, the base of the imagebind-llm-7b preset) from Meta's "
                    "LLaMA-7B and the Open-Chinese-LLaMA delta (downloaded from Cxxs/Open-Chinese-LLaMA unless --delta "
                    "is given): (base.float() + delta.float()).half() for every tensor but rope, params.json from "
                    "the delta.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m imagebind_llm.merge /data/llama/7B\n"
               "  python -m imagebind_llm.merge /data/llama/7B /data/llama/7B_chinese --hf /data/llama/7B_chinese-hf\n"
               "  python -m imagebind_llm.merge /data/llama/7B /data/llama/7B_chinese --delta ./7B_chinese_delta\n"
               "then: python -m imagebind_llm chat --preset imagebind-llm-7b --llama /data/llama/7B_chinese ...")
    parser.add_argument("base", type=Path, help="Meta's LLaMA-7B folder (params.json, consolidated.00.pth; "
                        "tokenizer.model in it or beside it)")
    parser.add_argument("out", type=Path, nargs="?", default=None,
                        help="output folder (default: 7B_chinese beside BASE, the official layout); must not exist "
                             "or be empty")
    parser.add_argument("--delta", type=Path, default=None,
                        help="a local copy of 7B_chinese_delta/ (consolidated.00.pth and params.json) instead of "
                             "the download")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="LLaMA's tokenizer.model (default: in BASE or its parent folder)")
    parser.add_argument("--hf", type=Path, default=None, help="also write a Hugging Face folder here")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="Hugging Face cache for the delta download (default: $HF_HUB_CACHE or "
                             "~/.cache/huggingface/hub)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: the delta must be in the cache (same as HF_HUB_OFFLINE=1)")
    parser.add_argument("--any-size", action="store_true",
                        help="do not require LLaMA-7B's sizes (merge deltas of other models; not for the release)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def default_output(base: Path) -> Path:
    return base.resolve().parent / "7B_chinese"


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success; 1 with one ``error:`` message on stderr for a problem with the inputs."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    out = args.out or default_output(args.base)
    try:
        report = merge_delta(args.base, out, args.delta, tokenizer=args.tokenizer, hf=args.hf,
                             expected=None if args.any_size else LLAMA_7B, progress=not args.no_progress,
                             cache_dir=args.cache_dir, local_files_only=True if args.offline else None)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {report.out} ({report.tensors} tensors, {report.bytes / 1e9:.2f} GB, {report.seconds:.0f} s)"
          + (f" and the Hugging Face folder {report.hf}" if report.hf else ""))
    if args.any_size:  # not the released 7B: no preset is made for it
        print(f"use it as a base LLaMA folder: --llama {report.out} (with an adapter trained for it)")
    else:
        print(f"use it with: --preset imagebind-llm-7b --llama {report.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
