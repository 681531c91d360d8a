"""The app's image output (unCLIP), as plain functions: no gradio here (the page is in
:mod:`.image_ui`). Off unless the app is started with ``--unclip`` and diffusers is installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..embedding import Media
from ..errors import InputError
from ..generation import CancelCheck
from ..image_output import (
    DEFAULT_GUIDANCE,
    DEFAULT_NOISE_LEVEL,
    DEFAULT_STEPS,
    ImageGenerator,
    check_width,
    default_unclip_dtype,
    unclip_embedding,
)
from ..pipeline import Pipeline
from ..visual_cache import CacheConfig
from .handlers import Progress, _report

#: The page's choice of output and its api name.
OUTPUT_TYPES = ("Text", "Image")
API_NAME = "generate_image"
#: Slider ranges of the image settings (the defaults are the official call's).
IMAGE_RANGES = {"steps": (1, 100), "guidance": (0.0, 20.0)}

#: pipeline key (the page's AppContext.key) -> its image generator.
_GENERATORS: dict[str, ImageGenerator] = {}


def register_generator(key: str, generator: ImageGenerator) -> None:
    _GENERATORS[key] = generator


def generator_for(key: str) -> ImageGenerator:
    generator = _GENERATORS.get(key)
    if generator is None:
        raise InputError("output type", "image output is not configured on this server",
                         "the Text output (start the app with --unclip to enable images)")
    return generator


@dataclass(frozen=True)
class ImageOptions:
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    noise_level: int = DEFAULT_NOISE_LEVEL
    seed: int | None = None


def make_image_options(steps: Any = DEFAULT_STEPS, guidance: Any = DEFAULT_GUIDANCE,
                       noise_level: Any = DEFAULT_NOISE_LEVEL, seed: Any = None) -> ImageOptions:
    """The image settings' values -> :class:`ImageOptions`. A seed that is empty, None or
    negative means a new random image every time."""
    def number(name: str, value: Any) -> float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(name, f"{value!r} is not a number", "a number") from None
        if not math.isfinite(value):
            raise InputError(name, f"{value!r} is not a finite number", "a finite number")
        return value

    steps_value = number("steps", steps)
    if steps_value < 1 or steps_value != int(steps_value):
        raise InputError("steps", f"{steps!r} is not a positive whole number", "1 to 100 steps")
    noise = number("noise level", noise_level)
    if noise < 0 or noise != int(noise):
        raise InputError("noise level", f"{noise_level!r} is not a whole number >= 0", "0 to 999 (official: 0)")
    scale = number("guidance", guidance)
    if scale < 0:
        raise InputError("guidance", f"{guidance!r} is negative", "a guidance scale >= 0 (official: 10)")
    seed_value = None
    if seed is not None and seed != "":
        seed_number = number("seed", seed)
        if seed_number >= 0:
            seed_value = int(seed_number)
    return ImageOptions(int(steps_value), scale, int(noise), seed_value)


def generate_image(pipeline: Pipeline, generator: ImageGenerator, media: Sequence[Media], prompt: str | None,
                   cache: CacheConfig | None = None, options: ImageOptions = ImageOptions(),
                   progress: Progress = None, cancel: CancelCheck = None):
    """The official "output type Image": the unCLIP embedding of the inputs (with the visual
    cache when ``cache`` is given), then Stable unCLIP with ``prompt``. Returns a PIL image."""
    if not media:
        raise InputError("inputs", "no input given", "one or more files or texts")
    _report(progress, 0.0, f"Reading and encoding {len(media)} input{'s' if len(media) != 1 else ''}")
    embedding = unclip_embedding(pipeline, media, cache_config=cache)
    generator.check_embedding(embedding)

    def step(done: int, total: int) -> None:
        _report(progress, done / total, f"Generating the image (step {done} of {total})")

    _report(progress, 0.0, f"Generating the image ({options.steps} steps)")
    return generator.generate(embedding, (prompt or "").strip(), steps=options.steps, guidance=options.guidance,
                              noise_level=options.noise_level, seed=options.seed, progress=step, cancel=cancel)


def load_app_generator(args: Any, pipeline: Pipeline | None = None) -> ImageGenerator | None:
    """The image generator the app's flags ask for (``--unclip``), or None. Refuses, before
    the page is built, an unCLIP model whose embedding width differs from the ImageBind's."""
    source = getattr(args, "unclip", None)
    if not source:
        return None
    from ..cli import DTYPES
    from ..precision import default_device

    device = getattr(args, "device", None) or default_device()
    dtype = DTYPES.get(getattr(args, "dtype", None) or "") or default_unclip_dtype(device)  # also for 'auto'
    if pipeline is not None:  # a known width is checked before the download
        check_width(source, pipeline.imagebind.config.embed_dim)
    generator = ImageGenerator(source, device=device, dtype=dtype, progress_bar=False)
    if pipeline is not None:
        check_width(source, pipeline.imagebind.config.embed_dim, generator.embedding_dim)
    return generator
