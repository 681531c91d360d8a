"""Command line: ``python -m imagebind_llm chat|embed|image|build-cache ...``.

    python -m imagebind_llm chat --image photo.jpg "What is in this picture?"
    python -m imagebind_llm chat --image photo.jpg:0.6 --audio rain.wav:0.4 --cache "What is happening?"
    python -m imagebind_llm chat --image cat.jpg --text "a cat:-1" --text "a dog:1" "What animal is this?"
    python -m imagebind_llm chat --interactive --image photo.jpg
    python -m imagebind_llm embed --image a.jpg --image b.jpg --text "a cat" --out embeddings.pt
    python -m imagebind_llm image --image a.jpg --audio rain.wav:0.5 --out result.png "a painting"  (unCLIP)

An input is ``VALUE`` or ``VALUE:WEIGHT`` (the part after the last colon is a weight only if it
is a number); a file may be an http(s) URL (:mod:`imagebind_llm.url_inputs`). The model comes
from ``--preset`` or from explicit files (``--imagebind``, ``--llama``, ``--adapter``,
``--cache-index``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import torch

from .errors import ImageBindLLMError
from .log_setup import setup_logging
from .precision import AUTO, DTYPE_NAMES, default_device, default_dtype
from .preprocess import KINDS

DTYPES = DTYPE_NAMES  # --dtype's names


def parse_input(kind: str, text: str):
    """``VALUE[:WEIGHT]`` -> Media."""
    from .embedding import Media

    value, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            value = head
        except ValueError:
            pass
    return Media(kind, value, weight, name=value if kind != "text" else None)


def _threads_argument(value: str):
    from .threads import parse_threads

    try:
        return parse_threads(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_model_arguments(parser: argparse.ArgumentParser, language_model: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--preset", help="a named preset (see --list-presets)")
    group.add_argument("--imagebind", help="ImageBind checkpoint (imagebind_w3D.pth or imagebind_huge.pth)")
    group.add_argument("--imagebind-config", default="imagebind_huge",
                       help="ImageBind sizes: imagebind_huge, imagebind_tiny or a config .json")
    if language_model:
        group.add_argument("--llama", help="base LLaMA folder (Meta or Hugging Face format)")
        group.add_argument("--adapter", help="ImageBind-LLM adapter (7B.pth, ...)")
        group.add_argument("--tokenizer", help="tokenizer.model (default: found beside the LLaMA)")
        group.add_argument("--cache-index", help="visual cache index (knn.index)")
        group.add_argument("--skip-base-check", action="store_true",
                           help="do not run the preset's base-model check (tokenizer, perplexity probe; "
                                "imagebind_llm/sanity.py) before the first answer")
        group.add_argument("--decoder", choices=("eager", "static", "compiled", "auto"), default=None,
                           help="how answers are decoded: eager (the plain loop), static (static KV cache, "
                                "the same tokens), compiled (torch.compile of the step; CUDA graphs on a "
                                "GPU; compiles at the first answer) or auto (measured at the first answer). "
                                "Default: $IMAGEBIND_LLM_DECODER, else static on a CPU and eager on a GPU "
                                "(imagebind_llm/fast_decode.py)")
    group.add_argument("--device", default=default_device(),
                       help="where the model runs: cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    if language_model:
        group.add_argument("--threads", type=_threads_argument, default="auto", metavar="N|auto",
                           help="CPU threads for PyTorch: a number, or auto (default): the fewest that "
                                "answer about as fast as PyTorch's default, timed at start on a CPU "
                                "(imagebind_llm/threads.py)")
    group.add_argument("--dtype", choices=[*sorted(DTYPES), *([AUTO] if language_model else [])], default=None,
                       help="weights dtype (default: bfloat16 on GPU, float32 on CPU)"
                       + ("; auto: on a CPU the language model in the faster of float32 and bfloat16, measured "
                          "at start (bfloat16 can change answers; imagebind_llm/precision.py)" if language_model
                          else ""))
    group.add_argument("--mode", choices=("corrected", "official"), default="corrected",
                       help="preprocessing: the corrected default or the exact official behaviour")
    memory = parser.add_argument_group("memory (README: Memory)")
    if language_model:
        memory.add_argument("--quantize", choices=("int8", "int4"), default=None,
                            help="weight-only quantisation of the LLaMA projections (int4: CPU or a CUDA GPU of "
                                 "compute capability 8.0+); --dtype is then the activation dtype")
    memory.add_argument("--imagebind-dtype", choices=sorted(DTYPES), default=None,
                        help="ImageBind weights dtype (default: --dtype)")
    memory.add_argument("--lazy-encoders", action="store_true",
                        help="read each modality's encoder from the checkpoint when it is first used")
    if language_model:
        memory.add_argument("--offload-encoders", action="store_true",
                            help="keep the encoders in CPU memory and move each to the GPU only while it encodes")


# What each input flag takes (the loaders in imagebind_llm/preprocess say more).
INPUT_HELP = {
    "image": "an image file",
    "video": "a video file (5 clips of 2 frames are read from it)",
    "text": "a text, mixed like any other input (a negative weight subtracts it)",
    "audio": "an audio file",
    "depth": "a depth map: a 16-bit PNG/TIFF in millimetres or a .npy in metres",
    "thermal": "a thermal image",
    "imu": "an IMU recording: a .csv or a .npy of shape (6, T)",
    "point": "a point cloud (.npy (N, 3), .ply, .pcd, .xyz, ...) or a mesh (.obj, .glb, .stl, ...)",
}


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs (each VALUE or VALUE:WEIGHT, repeatable; a file may be an http(s) URL)")
    for kind in KINDS:
        group.add_argument(f"--{kind}", action="append", default=[], metavar="VALUE[:W]", help=INPUT_HELP[kind])


def add_cache_arguments(parser: argparse.ArgumentParser, switch_help: str) -> None:
    """``--cache`` and the blend settings, with the defaults of :class:`CacheConfig`."""
    from .visual_cache import CacheConfig

    defaults = CacheConfig()
    group = parser.add_argument_group("visual cache (README: Chat, mixing and the visual cache)")
    group.add_argument("--cache", action="store_true", help=switch_help)
    group.add_argument("--cache-size", type=int, default=defaults.size,
                       help=f"neighbours retrieved (default {defaults.size})")
    group.add_argument("--cache-t", type=float, default=defaults.temperature,
                       help=f"softmax temperature over their similarities (default {defaults.temperature:g})")
    group.add_argument("--cache-weight", type=float, default=defaults.weight,
                       help=f"share of the neighbours in the blend, 0 to 1 (default {defaults.weight:g})")


def cache_config_from(args):
    """The :class:`CacheConfig` of the cache flags, or None without ``--cache``."""
    from .visual_cache import CacheConfig

    return CacheConfig(args.cache_size, args.cache_t, args.cache_weight) if args.cache else None


def collect_inputs(args, downloads=None) -> list:
    """The input flags as Media, in flag order; with ``downloads`` (a :class:`Downloads`),
    http(s) URLs are fetched first and then read like files."""
    media = [parse_input(kind, text) for kind in KINDS for text in getattr(args, kind)]
    return [downloads.localize(item) for item in media] if downloads is not None else media


def memory_options(args) -> dict:
    """The memory flags as keyword arguments of ``Pipeline.from_paths`` / ``load_preset_pipeline``."""
    imagebind_dtype = getattr(args, "imagebind_dtype", None)
    return {"quantize": getattr(args, "quantize", None),
            "imagebind_dtype": DTYPES[imagebind_dtype] if imagebind_dtype else None,
            "lazy": bool(getattr(args, "lazy_encoders", False)),
            "offload_encoders": bool(getattr(args, "offload_encoders", False))}


def load_pipeline(args):
    """The pipeline the model flags name, with PyTorch's thread count set (``--threads``)."""
    from .threads import apply_threads

    pipeline = _load_pipeline(args)
    apply_threads(pipeline, getattr(args, "threads", "auto"))
    return pipeline


def _load_pipeline(args):
    from .pipeline import Pipeline
    from .preprocess import PreprocessOptions

    # 'auto' is resolved where the weights load, from the model's config (imagebind_llm/precision.py)
    dtype = AUTO if args.dtype == AUTO else DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    preprocess = PreprocessOptions(mode=args.mode)
    if args.preset or not (args.imagebind and args.llama and args.adapter):
        from .presets import load_preset_pipeline

        overrides = {"imagebind": args.imagebind, "adapter": args.adapter, "cache_index": args.cache_index}
        return load_preset_pipeline(args.preset, llama=args.llama, overrides=overrides,
                                    cache_index=args.cache or bool(args.cache_index),
                                    device=args.device, dtype=dtype, preprocess=preprocess,
                                    base_check=not getattr(args, "skip_base_check", False),
                                    decoder=getattr(args, "decoder", None), **memory_options(args))
    return Pipeline.from_paths(imagebind=args.imagebind, llama=args.llama, adapter=args.adapter,
                               tokenizer=args.tokenizer, cache=args.cache_index, device=args.device, dtype=dtype,
                               imagebind_config=imagebind_config(args.imagebind_config), preprocess=preprocess,
                               decoder=getattr(args, "decoder", None), **memory_options(args))


def imagebind_config(name: str):
    """A preset name or the path of a config written by ``ImageBindConfig.to_json``."""
    import json
    from pathlib import Path

    from .config import IMAGEBIND_PRESETS, ImageBindConfig

    if name in IMAGEBIND_PRESETS:
        return IMAGEBIND_PRESETS[name]()
    if name.endswith(".json") and Path(name).is_file():
        return ImageBindConfig.from_dict(json.loads(Path(name).read_text()))
    raise SystemExit(f"--imagebind-config must be one of {sorted(IMAGEBIND_PRESETS)} or a config .json file")


def settings_from(args):
    from .generation import GenerationConfig
    from .pipeline import Settings

    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    return Settings(generation=generation, cache=cache_config_from(args), fusion=args.fusion, context=args.context)


def run_chat(args) -> int:
    from .pipeline import Chat
    from .url_inputs import Downloads

    if not args.interactive and not args.question:
        raise SystemExit("give a question (or --interactive)")
    downloads = Downloads()
    media = collect_inputs(args, downloads)  # URLs are fetched before the model loads
    pipeline = load_pipeline(args)
    settings = settings_from(args)
    if not args.interactive:
        for delta in pipeline.stream(media, args.question, settings):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    if args.prefix_cache_mb > 0:  # each turn then prefills only its new tokens, not the whole conversation
        pipeline.enable_prefix_cache(int(args.prefix_cache_mb * 2**20))
    chat = Chat()
    usage = ("Type a question; '/<kind> VALUE[:W]' attaches an input to the next question "
             f"(kinds: {', '.join(KINDS)}), '/reset' starts over, '/help' shows this, Ctrl-C stops an answer, "
             "Ctrl-D quits.")
    print(usage)
    pending = list(media)
    question = args.question
    while True:
        if not question:
            try:
                question = input("> ").strip()
            except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt quits
                print()
                return 0
        if question.startswith("/"):
            command, _, rest = question[1:].partition(" ")
            if command == "reset":
                chat, pending = Chat(), []
                print("[a new conversation]")
            elif command == "help":
                print(usage)
            elif command in KINDS and rest.strip():
                try:
                    pending.append(downloads.localize(parse_input(command, rest.strip())))
                except ImageBindLLMError as error:  # a URL that cannot be fetched
                    print(f"error: {error}")
                else:
                    print(f"[{command} {pending[-1].label!r} (weight {pending[-1].weight:g}) will go with the "
                          "next question]")
            elif command in KINDS:
                print(f"/{command} needs a value: /{command} VALUE[:WEIGHT]")
            else:
                print(f"unknown command {question!r}; /help lists the commands")
            question = None
            continue
        notices = len(chat.notices)
        try:
            for delta in pipeline.chat(chat, question, pending, settings):
                sys.stdout.write(delta)
                sys.stdout.flush()
        except ImageBindLLMError as error:  # a bad file or question ends this turn, not the session
            many = len(pending) > 1
            dropped = (f"; its {len(pending)} attached input{'s were' if many else ' was'} dropped: attach "
                       f"{'them' if many else 'it'} again") if pending else ""
            print(f"\nerror: {error}\n[the question was not asked{dropped}]")
        except KeyboardInterrupt:  # Ctrl-C stops the answer; the chat keeps what was said
            if chat.turns and chat.turns[-1].question == question and chat.turns[-1].answer is None:
                chat.turns.pop()  # stopped before its first word: as if not asked
            print(" [stopped]", end="")
        sys.stdout.write("\n")
        for notice in chat.notices[notices:]:
            print(f"[{notice}]")
        pending, question = [], None


def run_embed(args) -> int:
    from .checkpoint import load_imagebind
    from .embedding import Embedder
    from .preprocess import PreprocessOptions
    from .url_inputs import Downloads

    downloads = Downloads()  # holds the downloaded files until the command ends
    media = collect_inputs(args, downloads)
    if not media:
        raise SystemExit("give at least one input (--image, --text, ...)")
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    dtype = memory_options(args)["imagebind_dtype"] or dtype
    if args.imagebind and not args.preset:
        model = load_imagebind(args.imagebind, imagebind_config(args.imagebind_config), device=args.device,
                               dtype=dtype, lazy=args.lazy_encoders)
    else:
        from .presets import load_preset_imagebind

        model = load_preset_imagebind(args.preset, imagebind=args.imagebind, device=args.device, dtype=dtype)
    embedder = Embedder(model, PreprocessOptions(mode=args.mode))
    unit = embedder.embed_media(media)
    labels = [f"{m.kind}:{m.label}" for m in media]
    similarity = unit @ unit.T
    width = max(len(label) for label in labels)
    print(" " * width + "  " + "  ".join(f"{i:>6d}" for i in range(len(labels))))
    for i, label in enumerate(labels):
        print(f"{label:<{width}}  " + "  ".join(f"{v:6.3f}" for v in similarity[i].tolist()) + f"   [{i}]")
    if args.out:
        payload = {"labels": labels, "unit": unit, "weights": [m.weight for m in media]}
        if args.out.endswith(".npy"):
            import numpy as np

            np.save(args.out, unit.numpy())
        else:
            torch.save(payload, args.out)
        print(f"wrote {args.out}")
    return 0


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags, with the defaults of :class:`GenerationConfig` (the official demo's)."""
    from .generation import GenerationConfig

    defaults = GenerationConfig()
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                       help=f"longest answer, in tokens (default {defaults.max_new_tokens})")
    group.add_argument("--temperature", type=float, default=defaults.temperature,
                       help=f"sampling temperature; 0 is greedy (default {defaults.temperature:g})")
    group.add_argument("--top-p", type=float, default=defaults.top_p,
                       help=f"sample among the likeliest tokens that hold this much probability "
                            f"(default {defaults.top_p:g})")
    group.add_argument("--top-k", type=int, default=defaults.top_k,
                       help="sample among the k likeliest tokens only (default: 0, no limit)")
    group.add_argument("--seed", type=int, default=defaults.seed,
                       help="random seed, for a sampled answer that can be repeated (default: a new one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imagebind_llm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded")
    parser.add_argument("--list-presets", action="store_true", help="list the model presets and exit")
    commands = parser.add_subparsers(dest="command")

    chat = commands.add_parser("chat", help="ask a question about inputs of any modality")
    add_model_arguments(chat)
    add_input_arguments(chat)
    chat.add_argument("question", nargs="?", help="the question (with --interactive: the first one, if given)")
    chat.add_argument("--interactive", action="store_true", help="multi-turn chat on stdin")
    chat.add_argument("--prefix-cache-mb", type=float, default=1024.0, metavar="MB",
                      help="--interactive: memory for the keys and values of the conversation so far, so that "
                           "a turn prefills only its new tokens (0: off; default 1024)")
    chat.add_argument("--context", help="the official optional '### Input:' text")
    chat.add_argument("--fusion", choices=("normalized", "official"), default="normalized",
                      help="how weighted inputs are mixed: normalized (default; negative weights subtract, the "
                           "sum is made unit length) or official (weights divided by their sum)")
    add_cache_arguments(chat, "blend the input with its nearest cached image features (needs a cache index: "
                              "--cache-index, or a preset's)")
    add_generation_arguments(chat)
    chat.set_defaults(run=run_chat)

    embed = commands.add_parser("embed", help="ImageBind embeddings and their similarities")
    add_model_arguments(embed, language_model=False)
    add_input_arguments(embed)
    embed.add_argument("--out", help="write the unit embeddings (.pt with labels, or .npy)")
    embed.set_defaults(run=run_embed)

    from .image_cli import add_image_command

    add_image_command(commands)  # image output (Stable unCLIP; the image extra)

    # listed for --help; main() hands its arguments to imagebind_llm.cache_builder
    commands.add_parser("build-cache", help="build a visual cache: from-images, from-features, compress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build-cache"]:  # its own command line (argparse's REMAINDER would eat --help)
        from .cache_builder import main as build_cache

        return int(build_cache(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        from .presets import DEFAULT_PRESET, LOCAL_PRESETS, TOYWORLD_PRESET, get_preset, list_presets, \
            toyworld_available

        for name in list(LOCAL_PRESETS) + list_presets():
            description = LOCAL_PRESETS[name] if name in LOCAL_PRESETS else get_preset(name).description
            if name == TOYWORLD_PRESET and not toyworld_available():
                description = "[not installed: python -m train.toyworld --install] " + description
            marker = " (default)" if name == DEFAULT_PRESET else ""
            print(f"{name + marker:24s} {description}")
        return 0
    if args.command is None:
        parser.error("choose a command: chat, embed, image or build-cache")
    try:  # settings out of range are named now, not after minutes of loading
        if args.command == "chat":
            settings_from(args)
        elif args.command == "image":
            cache_config_from(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except ImageBindLLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading or answering: no traceback
        print("\nstopped", file=sys.stderr)
        return 130
