"""Convert LLaMA base models and ImageBind-LLM adapters between the Meta and Hugging Face layouts.

    python -m imagebind_llm.convert llama-meta-to-hf SRC DST [--tokenizer FILE] [--shard-size 5GB] [--dtype D]
    python -m imagebind_llm.convert llama-hf-to-meta SRC DST [--tokenizer FILE] [--dtype D]
    python -m imagebind_llm.convert adapter-to-hf SRC DST.safetensors [--n-heads N | --base DIR]
    python -m imagebind_llm.convert adapter-from-hf SRC.safetensors DST.pth [--n-heads N]
    python -m imagebind_llm.convert convert-ckpt SRC [DST | --target DST]

* ``llama-meta-to-hf``: a Meta folder (params.json, consolidated.*.pth in one or several
  model-parallel shards; tokenizer.model in it or beside it) -> a Hugging Face folder
  (config.json, safetensors shards with an index when there are several, tokenizer.model,
  tokenizer.json, tokenizer_config.json) that ``transformers.LlamaForCausalLM`` and
  ``AutoTokenizer`` load. The q/k weights are rotary-permuted.
* ``llama-hf-to-meta``: the way back (params.json, consolidated.00.pth, tokenizer.model).
* ``adapter-to-hf``: an official adapter (``{'model': ...}``, 7B.pth / 7B-beta.pth, or a full
  training checkpoint) -> safetensors in Hugging Face naming, with the wq bias and the q/k LoRA
  up factors rotary-permuted (for a Hugging Face base). The head count comes from the adapter's
  gates; ``--n-heads`` or ``--base`` must agree with it, and ``--base`` also checks that the
  adapter fits that model.
* ``adapter-from-hf``: the way back, to the official ``{'model': ...}`` format.
* ``convert-ckpt``: the official ``convert_ckpt.py``: a full training checkpoint
  (``checkpoint-N.pth``, ``7B-pretrained.pth``: ``{'model', 'optimizer', 'epoch', 'scaler',
  'args'}``) -> the adapter file the loaders read, ``{'model': ...}`` with 'llma' renamed
  'llama' and without ``image_bind.*``, the frozen ``llama.*`` matrices (names with none of
  bias/gate/lora/norm) and ``prefix_projector_norm.*``. DST defaults to ``converted_<stem>.pth``
  beside SRC, like the official; ``--target`` (which the official parses but ignores) is the
  same as DST here, and ``--ori`` the same as SRC.

Round trips are exact (same tensors, same dtypes). Problems are reported as one clear line
(exit status 1); the destination must not exist yet (or be an empty folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import LlamaConfig
from .errors import CheckpointError
from .tokenizer import Tokenizer, save_hf_tokenizer
from .weights import (
    check_adapter_fits,
    find_tokenizer,
    hf_config_to_llama,
    read_adapter,
    read_llama,
    write_adapter,
    write_adapter_hf,
    write_hf_llama,
    write_meta_llama,
)

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_SHARD_BYTES = 5 * 2**30


def parse_size(text: str) -> int:
    """'5GB', '500MB', '2GiB', '1000' (bytes) -> bytes. GB/MB/KB are taken as binary units,
    as transformers does for ``max_shard_size``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 5GB, 500MB, 1000)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit[:1]]
    return int(number * scale)


def _fresh(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} already exists; choose a new destination")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def _cast(state: dict[str, torch.Tensor], dtype: str | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    return {k: v.to(DTYPES[dtype]) for k, v in state.items()}


def _tokenizer_for(src: Path, tokenizer: str | Path | None, config: LlamaConfig) -> Path:
    path = Path(tokenizer) if tokenizer is not None else find_tokenizer(src)
    words = Tokenizer(path).n_words
    if words != config.vocab_size:
        raise CheckpointError(f"the tokenizer {path} has {words} pieces but the weights' vocabulary is "
                              f"{config.vocab_size}: wrong tokenizer for this model")
    return path


def convert_llama_meta_to_hf(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None,
                             max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: str | None = None) -> Path:
    """Meta folder -> Hugging Face folder (weights, config.json and the tokenizer files)."""
    src, dst = Path(src), _fresh(Path(dst))
    if not (src / "params.json").is_file():
        raise CheckpointError(f"{src} is not a Meta LLaMA folder (no params.json)"
                              + ("; it is a Hugging Face folder already" if (src / "config.json").is_file() else ""))
    config, state = read_llama(src)
    tokenizer_file = _tokenizer_for(src, tokenizer, config)
    write_hf_llama(_cast(state, dtype), config, dst, max_shard_bytes=max_shard_bytes)
    save_hf_tokenizer(tokenizer_file, dst)
    log.info("wrote the Hugging Face LLaMA %s (%d tensors)", dst, len(state))
    return dst


def convert_llama_hf_to_meta(src: str | Path, dst: str | Path, *, tokenizer: str | Path | None = None,
                             dtype: str | None = None) -> Path:
    """Hugging Face folder -> Meta folder (params.json, consolidated.00.pth, tokenizer.model)."""
    src, dst = Path(src), _fresh(Path(dst))
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} is not a Hugging Face LLaMA folder (no config.json)"
                              + ("; it is a Meta folder already" if (src / "params.json").is_file() else ""))
    config, state = read_llama(src)
    tokenizer_file = _tokenizer_for(src, tokenizer, config)
    write_meta_llama(_cast(state, dtype), config, dst)
    (dst / "tokenizer.model").write_bytes(tokenizer_file.read_bytes())
    log.info("wrote the Meta LLaMA %s (%d tensors)", dst, len(state))
    return dst


def base_config(path: str | Path) -> LlamaConfig:
    """The sizes of a base model from its params.json / config.json alone (no weights read).
    A Meta params.json has no vocabulary (-1): it is then taken from the tokenizer beside it,
    or left at 1 when there is none (the adapter does not depend on it)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return hf_config_to_llama(_read_json(path / "config.json"))
    if (path / "params.json").is_file():
        params = _read_json(path / "params.json")
        vocab = params.get("vocab_size") or -1
        if vocab <= 0:
            try:
                vocab = Tokenizer(find_tokenizer(path)).n_words
            except CheckpointError:
                vocab = 1
        try:
            return LlamaConfig.from_params({**params, "vocab_size": vocab})
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path / 'params.json'}: {error}") from None
    raise CheckpointError(f"no params.json or config.json in {path}")


def convert_adapter_to_hf(src: str | Path, dst: str | Path, *, n_heads: int | None = None,
                          base: str | Path | None = None) -> Path:
    """Official adapter -> safetensors in Hugging Face naming (rotary-permuted q/k parts)."""
    src, dst = Path(src), _fresh(Path(dst))
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: a Hugging Face adapter is written as .safetensors")
    state = read_adapter(src)
    if base is not None:
        config = base_config(base)
        check_adapter_fits(None, state, config)
        if n_heads is not None and n_heads != config.n_heads:
            raise CheckpointError(f"--n-heads {n_heads} but the base {base} has {config.n_heads} heads")
        n_heads = config.n_heads
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_adapter_hf(state, n_heads, dst)
    log.info("wrote the Hugging Face adapter %s (%d tensors)", dst, len(state))
    return dst


def convert_adapter_from_hf(src: str | Path, dst: str | Path, *, n_heads: int | None = None) -> Path:
    """Safetensors adapter in Hugging Face naming -> official ``{'model': ...}`` file."""
    src, dst = Path(src), _fresh(Path(dst))
    if src.suffix != ".safetensors":
        raise CheckpointError(f"{src}: a Hugging Face adapter is a .safetensors file")
    if dst.suffix == ".safetensors":
        raise CheckpointError(f"{dst}: the official adapter format is a torch file (.pth)")
    state = read_adapter(src, n_heads=n_heads)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_adapter(state, dst)
    log.info("wrote the official adapter %s (%d tensors)", dst, len(state))
    return dst


def convert_official_checkpoint(src: str | Path, dst: str | Path | None = None) -> Path:
    """The official convert_ckpt.py (reference.md 4.12): keep the adapter tensors of a training
    checkpoint, renaming 'llma' to 'llama', and save ``{'model': ...}`` to ``dst`` (default
    ``converted_<stem>.pth`` beside ``src``)."""
    from .checkpoint import read_state_dict
    from .weights import normalise_adapter_state

    src = Path(src)
    dst = _fresh(Path(dst) if dst is not None else src.with_name(f"converted_{src.stem}.pth"))
    if dst.suffix == ".safetensors":
        raise CheckpointError(f"{dst}: the official adapter format is a torch file (.pth); for safetensors use "
                              "adapter-to-hf")
    state = read_state_dict(src)
    kept = normalise_adapter_state(state)
    if not kept:
        raise CheckpointError(f"{src}: no adapter tensors (bind network, prefix, gates, biases, LoRA, norms) in it")
    # A tensor that is a view into a larger storage would drag the whole storage into the file.
    kept = {k: v.clone() if v.untyped_storage().nbytes() > v.numel() * v.element_size() else v
            for k, v in kept.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_adapter(kept, dst)
    log.info("kept %d of %d tensors of %s in %s", len(kept), len(state), src, dst)
    return dst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imagebind_llm.convert",
                                     description="Convert LLaMA bases and ImageBind-LLM adapters between the "
                                                 "Meta and Hugging Face layouts (exact round trips).")
    commands = parser.add_subparsers(dest="command", required=True)

    def llama_command(name: str, help: str, src: str, dst: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        command.add_argument("src", type=Path, help=src)
        command.add_argument("dst", type=Path, help=dst)
        command.add_argument("--tokenizer", type=Path, default=None,
                             help="the SentencePiece tokenizer.model (default: in SRC or beside it)")
        command.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                             help="cast the weights (default: keep the checkpoint's dtype)")
        return command

    meta_to_hf = llama_command("llama-meta-to-hf", "Meta LLaMA folder -> Hugging Face folder",
                               "the Meta folder (consolidated.*.pth, params.json)", "the Hugging Face folder to write")
    meta_to_hf.add_argument("--shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES,
                            help="largest safetensors shard, e.g. 5GB (default), 500MB")
    llama_command("llama-hf-to-meta", "Hugging Face LLaMA folder -> Meta folder",
                  "the Hugging Face folder (config.json, *.safetensors or *.bin)", "the Meta folder to write")

    to_hf = commands.add_parser("adapter-to-hf", help="official adapter (.pth) -> Hugging Face naming (.safetensors)")
    to_hf.add_argument("src", type=Path, help="the official adapter (.pth, e.g. 7B.pth)")
    to_hf.add_argument("dst", type=Path, help="the .safetensors file to write")
    heads = to_hf.add_mutually_exclusive_group()
    heads.add_argument("--n-heads", type=int, default=None, help="attention heads (default: from the gates)")
    heads.add_argument("--base", type=Path, default=None,
                       help="the base LLaMA folder: its head count is used and the adapter is checked against it")

    from_hf = commands.add_parser("adapter-from-hf", help="Hugging Face adapter (.safetensors) -> official .pth")
    from_hf.add_argument("src", type=Path, help="the Hugging Face adapter (.safetensors)")
    from_hf.add_argument("dst", type=Path, help="the official .pth to write")
    from_hf.add_argument("--n-heads", type=int, default=None,
                         help="attention heads (default: the file's metadata, else the gates)")

    ckpt = commands.add_parser(
        "convert-ckpt", help="official training checkpoint -> adapter file (the official convert_ckpt.py)",
        description="Keep the adapter tensors of an official training checkpoint (checkpoint-N.pth, "
                    "7B-pretrained.pth): 'llma' -> 'llama'; drop image_bind.*, the frozen llama.* matrices and "
                    "prefix_projector_norm.*; save {'model': ...}.")
    ckpt.add_argument("src", type=Path, nargs="?", default=None, help="the training checkpoint")
    ckpt.add_argument("dst", type=Path, nargs="?", default=None,
                      help="where the adapter is written (default: converted_<stem>.pth beside SRC)")
    ckpt.add_argument("--ori", type=Path, default=None, help="the same as SRC (the official option's name)")
    ckpt.add_argument("--target", type=Path, default=None,
                      help="the same as DST: where the adapter is written (the official script parses this "
                           "option but ignores it; here it is used)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one conversion; 0 on success, 1 (with one ``error:`` line on stderr) on a problem
    with the inputs. Bad command lines exit with argparse's status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "convert-ckpt":
        for first, second, name in ((args.src, args.ori, "SRC and --ori"), (args.dst, args.target, "DST and --target")):
            if first is not None and second is not None and first != second:
                parser.error(f"{name} name different files ({first}, {second}); give one")
        args.src, args.dst = args.src or args.ori, args.dst or args.target
        if args.src is None:
            parser.error("convert-ckpt needs the checkpoint: SRC (or --ori SRC)")
    try:
        if args.command == "llama-meta-to-hf":
            out = convert_llama_meta_to_hf(args.src, args.dst, tokenizer=args.tokenizer,
                                           max_shard_bytes=args.shard_size, dtype=args.dtype)
        elif args.command == "llama-hf-to-meta":
            out = convert_llama_hf_to_meta(args.src, args.dst, tokenizer=args.tokenizer, dtype=args.dtype)
        elif args.command == "adapter-to-hf":
            out = convert_adapter_to_hf(args.src, args.dst, n_heads=args.n_heads, base=args.base)
        elif args.command == "convert-ckpt":
            out = convert_official_checkpoint(args.src, args.dst)
        else:
            out = convert_adapter_from_hf(args.src, args.dst, n_heads=args.n_heads)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
