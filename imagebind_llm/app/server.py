"""``python app.py``: parse flags (and environment variables), load the model once, build the
page and serve it.

Every flag has an environment variable (Hugging Face Spaces and containers set those instead
of flags); a flag given on the command line wins. The model flags are the command line's
(:func:`imagebind_llm.cli.add_model_arguments`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence

from ..log_setup import setup_logging

log = logging.getLogger("imagebind_llm.app")

#: flag destination -> environment variable.
ENVIRONMENT = {
    "preset": "IMAGEBIND_LLM_PRESET",
    "imagebind": "IMAGEBIND_LLM_IMAGEBIND",
    "imagebind_config": "IMAGEBIND_LLM_IMAGEBIND_CONFIG",
    "llama": "IMAGEBIND_LLM_LLAMA",
    "adapter": "IMAGEBIND_LLM_ADAPTER",
    "tokenizer": "IMAGEBIND_LLM_TOKENIZER",
    "cache_index": "IMAGEBIND_LLM_CACHE_INDEX",
    "visual_cache": "IMAGEBIND_LLM_VISUAL_CACHE",
    "device": "IMAGEBIND_LLM_DEVICE",
    "dtype": "IMAGEBIND_LLM_DTYPE",
    "mode": "IMAGEBIND_LLM_MODE",
    "host": "GRADIO_SERVER_NAME",
    "port": "GRADIO_SERVER_PORT",
    "share": "IMAGEBIND_LLM_SHARE",
    "queue_size": "IMAGEBIND_LLM_QUEUE_SIZE",
    "concurrency": "IMAGEBIND_LLM_CONCURRENCY",
    "max_file_size": "IMAGEBIND_LLM_MAX_FILE_SIZE",
    "unclip": "IMAGEBIND_LLM_UNCLIP",
    "quantize": "IMAGEBIND_LLM_QUANTIZE",
    "imagebind_dtype": "IMAGEBIND_LLM_IMAGEBIND_DTYPE",
    "lazy_encoders": "IMAGEBIND_LLM_LAZY_ENCODERS",
    "offload_encoders": "IMAGEBIND_LLM_OFFLOAD_ENCODERS",
    "skip_base_check": "IMAGEBIND_LLM_SKIP_BASE_CHECK",
    "batch_decoding": "IMAGEBIND_LLM_BATCH_DECODING",
    "stream_interval": "IMAGEBIND_LLM_STREAM_INTERVAL",
    "prefix_cache_mb": "IMAGEBIND_LLM_PREFIX_CACHE_MB",
    "decoder": "IMAGEBIND_LLM_DECODER",
    "threads": "IMAGEBIND_LLM_THREADS",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_model_arguments

    parser = argparse.ArgumentParser(
        prog="python app.py", description="ImageBind-LLM app: multimodal chat, per-modality tabs and embedding "
        "arithmetic in the browser. Every flag also reads an environment variable (shown in brackets).")
    add_model_arguments(parser)
    group = parser.add_argument_group("app")
    group.add_argument("--visual-cache", type=_flag, nargs="?", const=True, default=False, metavar="BOOL",
                       help="load the preset's visual-cache index (the official knn.index is about 13 GB); "
                            "the toyworld and tiny-untrained presets always have their small caches")
    group.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    group.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    group.add_argument("--share", type=_flag, nargs="?", const=True, default=False, metavar="BOOL",
                       help="also serve through a public gradio.live link (needs internet)")
    group.add_argument("--queue-size", type=int, default=32, help="requests that may wait in the queue (0: no bound)")
    group.add_argument("--concurrency", type=int, default=1,
                       help="model requests running at once, all tabs together (1 on a CPU or a small GPU)")
    group.add_argument("--batch-decoding", action=argparse.BooleanOptionalAction, default=None,
                       help="decode the running requests together, one step for all (continuous batching; "
                            "default: on when --concurrency is above 1)")
    group.add_argument("--stream-interval", type=float, default=0.05, metavar="SECONDS",
                       help="least time between two streamed updates of an answer: each update re-sends the "
                            "page state, so a longer interval leaves more CPU to the model under load")
    group.add_argument("--prefix-cache-mb", type=float, default=None, metavar="MB",
                       help="memory for the keys and values of finished answers, so that a chat's next turn "
                            "prefills only its new tokens (0: off; default 1024, 0 on ZeroGPU)")
    group.add_argument("--max-file-size", type=float, default=200.0, metavar="MB",
                       help="largest upload in megabytes (0: no limit)")
    group.add_argument("--unclip", metavar="PATH_OR_REPO",
                       help="add the image output (Stable unCLIP) to the Embedding arithmetic tab: a local "
                            "diffusers folder or a Hugging Face repo id (the official one is "
                            "stabilityai/stable-diffusion-2-1-unclip, a download of several GB); needs "
                            'pip install "imagebind-llm[image]". Default: off')
    for action in parser._actions:
        if action.dest in ENVIRONMENT:
            action.help = f"{action.help or ''} [{ENVIRONMENT[action.dest]}]".strip()
    return parser


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Flags over environment variables over defaults."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    defaults = {dest: environ[name] for dest, name in ENVIRONMENT.items() if environ.get(name, "") != ""}
    # String defaults go through each flag's type (argparse converts them), so "8" becomes 8.
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for dest in ("visual_cache", "share", "lazy_encoders", "offload_encoders",
                 "skip_base_check", "batch_decoding"):  # environment defaults are strings
        if isinstance(getattr(args, dest), str):
            setattr(args, dest, _flag(getattr(args, dest)))
    for dest, auto in (("dtype", ("auto",)), ("imagebind_dtype", ())):
        if getattr(args, dest) is not None and getattr(args, dest) not in ("float32", "float16", "bfloat16", *auto):
            accepted = "float32, float16, bfloat16 or auto" if auto else "float32, float16 or bfloat16"
            parser.error(f"--{dest.replace('_', '-')} / {ENVIRONMENT[dest]} must be {accepted}, "
                         f"got {getattr(args, dest)!r}")
    if args.quantize is not None and args.quantize not in ("int8", "int4"):
        parser.error(f"--quantize / {ENVIRONMENT['quantize']} must be int8 or int4, got {args.quantize!r}")
    if getattr(args, "decoder", None) not in (None, "eager", "static", "compiled", "auto"):
        parser.error(f"--decoder / {ENVIRONMENT['decoder']} must be eager, static, compiled or auto, "
                     f"got {args.decoder!r}")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if (args.queue_size < 0 or args.max_file_size < 0 or args.stream_interval < 0
            or (args.prefix_cache_mb is not None and args.prefix_cache_mb < 0)):
        parser.error("--queue-size, --max-file-size, --stream-interval and --prefix-cache-mb must be >= 0")
    return args


def max_bytes_of(args: argparse.Namespace) -> int | None:
    return int(args.max_file_size * 1e6) if args.max_file_size else None


def load_app_pipeline(args: argparse.Namespace):
    """Load the model the flags name (default: the shipped toy-world model), logging how long it took."""
    from ..cli import load_pipeline
    from ..presets import DEFAULT_PRESET
    from .handlers import configure_pipeline

    args.cache = args.visual_cache  # the command line's name for "load the preset's cache index"
    name = args.preset or (DEFAULT_PRESET if not (args.imagebind and args.llama and args.adapter) else "custom files")
    log.info("loading model %s on %s (%s) ...", name, args.device, args.dtype or "default dtype")
    started = time.perf_counter()
    pipeline = load_pipeline(args)
    configure_pipeline(pipeline, max_bytes_of(args))
    pipeline.check_base_model()  # the preset's base-model check, before serving (--skip-base-check skips it)
    log.info("model %s ready in %.1f s", pipeline.name, time.perf_counter() - started)
    return pipeline


def freeze_startup_objects() -> tuple[int, float]:
    """Keep the objects made while starting (the model's modules, Gradio's blocks, imported
    modules: about half a million) out of the garbage collector's full passes, which otherwise
    scan them all with every request thread stopped: on 2 cores with the toy-world model, two
    passes of about 300 ms in 188 requests of bench/load.py, against one of 23 ms frozen. They
    live as long as the process anyway (garbage is collected first). Returns the number of
    objects frozen and how long one full pass over them took."""
    started = time.perf_counter()
    gc.collect()
    elapsed = time.perf_counter() - started
    gc.freeze()
    return gc.get_freeze_count(), elapsed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "faiss.loader"):  # one line per HTTP request / per faiss build tried
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..errors import ImageBindLLMError

    try:
        pipeline = load_app_pipeline(args)
        from .image_handlers import load_app_generator

        image_generator = load_app_generator(args, pipeline)
    except ImageBindLLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    from .ui import build_demo, launch_kwargs

    max_bytes = max_bytes_of(args)
    demo = build_demo(pipeline, concurrency=args.concurrency, queue_size=args.queue_size or None, max_bytes=max_bytes,
                      image_generator=image_generator, batch_decoding=args.batch_decoding,
                      stream_interval=args.stream_interval, prefix_cache_mb=args.prefix_cache_mb)
    prefix_cache = getattr(pipeline, "prefix_cache", None)
    log.info("page built in %.1f s; serving on http://%s:%d (queue %s, %d at once%s%s, uploads up to %s)",
             time.perf_counter() - started, args.host, args.port, args.queue_size or "unbounded", args.concurrency,
             ", batched decoding" if getattr(pipeline, "batcher", None) is not None else "",
             f", prefix cache {prefix_cache.max_bytes / 2**20:g} MiB" if prefix_cache is not None else "",
             f"{args.max_file_size:g} MB" if max_bytes else "any size")
    frozen, pass_s = freeze_startup_objects()
    log.info("%d objects made at start kept out of the garbage collector's full passes (one pass over them "
             "took %.0f ms)", frozen, 1e3 * pass_s)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(max_bytes))
    except OSError as error:  # most often: the port is taken
        print(f"error: cannot serve on {args.host}:{args.port}: {error} (choose another with --port)",
              file=sys.stderr)
        return 2
    return 0
