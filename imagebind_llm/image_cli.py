"""``python -m imagebind_llm image``: inputs of any modality -> a picture (Stable unCLIP).

    python -m imagebind_llm image --image photo.jpg --audio rain.wav:0.5 --out result.png "a watercolor painting"
    python -m imagebind_llm image --point airplane.pt --cache --cache-index knn.index --unclip ./sd-unclip --seed 0

Only ImageBind (and the visual cache, with ``--cache``) is loaded: no LLaMA. Needs the
``image`` extra (``pip install "imagebind-llm[image]"``). The embedding is the official
image-output formula (:func:`imagebind_llm.image_output.unclip_embedding`).
"""

from __future__ import annotations

import argparse

from .image_output import (
    DEFAULT_GUIDANCE,
    DEFAULT_NOISE_LEVEL,
    DEFAULT_STEPS,
    DEFAULT_UNCLIP,
    POINT_SCALE,
)


def add_image_command(commands) -> argparse.ArgumentParser:
    """The ``image`` subcommand, added to the command line's subparsers."""
    from .cli import add_cache_arguments, add_input_arguments, add_model_arguments

    image = commands.add_parser("image", help="draw a mix of inputs with Stable unCLIP (needs the image extra)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(image, language_model=False)
    add_input_arguments(image)
    image.add_argument("prompt", nargs="?", default="", help="text prompt for the picture (optional)")
    image.add_argument("--unclip", default=DEFAULT_UNCLIP, metavar="PATH_OR_REPO",
                       help=f"Stable unCLIP pipeline: a local diffusers folder or a Hugging Face repo id "
                            f"(default {DEFAULT_UNCLIP}, a download of several GB)")
    image.add_argument("--out", default="image.png", help="where to write the picture (default image.png)")
    image.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                       help=f"denoising steps (default {DEFAULT_STEPS})")
    image.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                       help=f"classifier-free guidance scale; 1 or less turns it off (default {DEFAULT_GUIDANCE:g})")
    image.add_argument("--noise-level", type=int, default=DEFAULT_NOISE_LEVEL,
                       help=f"noise added to the embedding: more gives freer pictures (default {DEFAULT_NOISE_LEVEL})")
    image.add_argument("--seed", type=int, default=None,
                       help="random seed, for a picture that can be repeated (default: a new one)")
    image.add_argument("--point-scale", type=float, default=POINT_SCALE,
                       help="point-cloud embeddings are divided by this (official: 5)")
    add_cache_arguments(image, "blend with the visual cache (needs --cache-index, or a released preset's index)")
    image.add_argument("--cache-index", help="visual cache index (knn.index or a cache folder) for --cache")
    image.add_argument("--unclip-dtype", choices=("float32", "float16", "bfloat16"), default=None,
                       help="unCLIP weights dtype (default: float16 on GPU, float32 on CPU)")
    image.set_defaults(run=run_image)
    return image


def _load_cache(args):
    """The visual cache of ``--cache``: ``--cache-index``, else a released preset's index."""
    if not args.cache:
        return None
    from .visual_cache import VisualCache

    if args.cache_index:
        return VisualCache.load(args.cache_index)
    from .errors import InputError
    from .presets import get_preset, list_presets

    preset = get_preset(args.preset) if args.preset in list_presets() else None
    if preset is None or preset.cache_index is None:
        raise InputError("--cache", "no visual cache index given", "--cache-index PATH (knn.index or a cache folder)")
    from .hub import resolve

    return VisualCache.load(resolve(preset.cache_index, role="cache_index"))


def run_image(args) -> int:
    import time

    from .checkpoint import load_imagebind
    from .cli import DTYPES, cache_config_from, collect_inputs, default_dtype, imagebind_config
    from .embedding import Embedder
    from .image_output import ImageGenerator, check_width, default_unclip_dtype, require_diffusers, unclip_embedding
    from .preprocess import PreprocessOptions
    from .url_inputs import Downloads

    downloads = Downloads()  # holds the downloaded files until the command ends
    media = collect_inputs(args, downloads)
    if not media:
        raise SystemExit("give at least one input (--image, --audio, --text, ...)")
    require_diffusers()  # before loading anything
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    if getattr(args, "imagebind_dtype", None):  # the memory flags, where the command line has them
        dtype = DTYPES[args.imagebind_dtype]
    lazy = {"lazy": True} if getattr(args, "lazy_encoders", False) else {}
    if args.imagebind and not args.preset:
        model = load_imagebind(args.imagebind, imagebind_config(args.imagebind_config), device=args.device,
                               dtype=dtype, **lazy)
    else:
        from .presets import load_preset_imagebind

        model = load_preset_imagebind(args.preset, imagebind=args.imagebind, device=args.device, dtype=dtype)
    check_width(args.unclip, model.config.embed_dim)  # before the unCLIP model is downloaded or loaded
    cache = _load_cache(args)
    cache_config = cache_config_from(args) if cache is not None else None
    embedder = Embedder(model, PreprocessOptions(mode=args.mode))
    embedding = unclip_embedding(embedder, media, cache=cache, cache_config=cache_config,
                                 point_scale=args.point_scale)
    unclip_dtype = DTYPES[args.unclip_dtype] if args.unclip_dtype else default_unclip_dtype(args.device)
    generator = ImageGenerator(args.unclip, device=args.device, dtype=unclip_dtype)
    started = time.perf_counter()
    picture = generator.generate(embedding, args.prompt, steps=args.steps, guidance=args.guidance,
                                 noise_level=args.noise_level, seed=args.seed)
    picture.save(args.out)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {time.perf_counter() - started:.1f} s)")
    return 0
