"""Image output: ImageBind features turned into a picture by Stable unCLIP (reference.md 6.2).

Stable Diffusion 2.1 unCLIP (H) is conditioned on OpenCLIP ViT-H/14 image embeddings, and
ImageBind's vision space *is* OpenCLIP ViT-H/14's, so any mix of ImageBind inputs (images,
sounds, texts, 3D, ...) can stand in for the image embedding:

    embedding = unclip_embedding(pipeline, [Media("audio", "rain.wav"), Media("image", "city.jpg")])
    generator = ImageGenerator()  # stabilityai/stable-diffusion-2-1-unclip (a download)
    generator.generate(embedding, "a painting").save("out.png")

:func:`unclip_embedding` is the official ``image_generate`` formula: per input the head output
*before* normalisation (clip-averaged, no logit scale), point-cloud embeddings divided by
``point_scale`` (5), a weighted sum with weights divided by ``sum + 1e-6`` and, with the visual
cache, the cache blend of the unit direction with the sum's norm restored afterwards (unCLIP
expects embeddings of the magnitude of a real image embedding).

:class:`ImageGenerator` wraps diffusers' ``StableUnCLIPImg2ImgPipeline``. It needs the optional
extra: ``pip install "imagebind-llm[image]"`` (diffusers and accelerate). Nothing here imports
diffusers until a generator is built.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .embedding import Embedder, Media
from .encoders.imagebind import ImageBind
from .errors import CheckpointError, ImageBindLLMError, InputError
from .precision import default_device
from .visual_cache import CacheConfig, VisualCache

log = logging.getLogger(__name__)

#: The official unCLIP model of the ImageBind-LLM demo (Hugging Face repo id).
DEFAULT_UNCLIP = "stabilityai/stable-diffusion-2-1-unclip"
#: Point-cloud embeddings are divided by this before mixing (official ``point_scale``).
POINT_SCALE = 5.0
#: The official weight normalisation: w_i / (sum(w) + 1e-6).
WEIGHT_EPS = 1e-6
#: The diffusers defaults of the official call (20 steps, guidance 10, noise level 0).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 10.0
DEFAULT_NOISE_LEVEL = 0
INSTALL_HINT = 'pip install "imagebind-llm[image]" (or: pip install diffusers accelerate)'
#: The image-embedding width of the released unCLIP models (H: OpenCLIP ViT-H/14; small: CLIP ViT-L/14).
KNOWN_UNCLIP_WIDTHS = {DEFAULT_UNCLIP: 1024, "stabilityai/stable-diffusion-2-1-unclip-small": 768}


def expected_embedding_width(source: Any) -> int | None:
    """The image-embedding width the unCLIP model ``source`` is conditioned on, told without
    loading (or downloading) it: a local folder's ``image_normalizer/config.json``, or a released
    repository's known width; None when it cannot be told (a built pipeline knows its own:
    :attr:`ImageGenerator.embedding_dim`)."""
    import json
    from pathlib import Path

    if not isinstance(source, (str, os.PathLike)):
        return None
    config = Path(source).expanduser() / "image_normalizer" / "config.json"
    if config.is_file():
        try:
            return int(json.loads(config.read_text())["embedding_dim"])
        except (ValueError, KeyError, TypeError):
            return None
    return KNOWN_UNCLIP_WIDTHS.get(str(source))


def check_width(source: Any, width: int, expected: int | None = None) -> None:
    """Refuse ImageBind features of ``width`` for an unCLIP model conditioned on another width
    (``expected``; default :func:`expected_embedding_width`, a check that is skipped when it is
    unknown), before gigabytes are downloaded or loaded for nothing."""
    expected = expected_embedding_width(source) if expected is None else expected
    if expected is not None and int(width) != expected:
        raise InputError("image embedding", f"the ImageBind features are {width} wide but the unCLIP model "
                         f"{source} is conditioned on {expected}-wide image embeddings",
                         "an ImageBind whose width equals the unCLIP model's (the released ImageBind huge: 1024, "
                         "like SD 2.1 unCLIP H; the small default model cannot make images)")


class MissingExtraError(ImageBindLLMError, ImportError):
    """An optional dependency (the ``image`` extra) is not installed."""


class GenerationCancelled(ImageBindLLMError):
    """The image generation was stopped before it finished."""


def image_output_available() -> bool:
    """Whether the ``image`` extra (diffusers) is installed."""
    return importlib.util.find_spec("diffusers") is not None


def require_diffusers():
    """The diffusers module, or a :class:`MissingExtraError` that says how to install it."""
    if not image_output_available():
        raise MissingExtraError(f"image output needs the diffusers package, which is not installed: {INSTALL_HINT}")
    import diffusers

    return diffusers


# ---------------------------------------------------------------------------------------------
# The embedding (reference.md 6.2, steps 1 to 4)
# ---------------------------------------------------------------------------------------------

def _embedder_and_cache(source: Any) -> tuple[Embedder, VisualCache | None]:
    if isinstance(source, Embedder):
        return source, None
    if isinstance(source, ImageBind):
        return Embedder(source), None
    embedder = getattr(source, "embedder", None)
    if isinstance(embedder, Embedder):  # a Pipeline (or anything shaped like one)
        return embedder, getattr(source, "cache", None)
    raise TypeError(f"expected a Pipeline, an Embedder or an ImageBind, got {type(source).__name__}")


def unclip_embedding(source: Any, media: Sequence[Media], *, cache: VisualCache | None = None,
                     cache_config: CacheConfig | None = None, point_scale: float = POINT_SCALE) -> torch.Tensor:
    """The unCLIP image embedding (1, D) of a weighted mix of inputs, as the official demo's
    "output type Image" computes it.

    ``source``: a :class:`~imagebind_llm.pipeline.Pipeline`, an :class:`Embedder` or an
    :class:`ImageBind`. The visual cache is used when ``cache_config`` or ``cache`` is given:
    ``cache`` defaults to the pipeline's cache and ``cache_config`` to :class:`CacheConfig`'s
    defaults (10 neighbours, temperature 20, weight 0.5, the official values).

    Steps: the pre-normalisation head output of every input; point inputs divided by
    ``point_scale``; weights divided by ``sum + 1e-6`` (so they must have a positive sum);
    the weighted sum. With the cache: its norm s is kept, the unit direction is blended with
    the cache exactly as :meth:`VisualCache.blend` does, and the result is multiplied by s.
    Returns float32 on the CPU.
    """
    embedder, own_cache = _embedder_and_cache(source)
    media = list(media)
    if not media:
        raise InputError("inputs", "no input given", "one or more inputs")
    if not point_scale > 0:
        raise ValueError(f"point_scale must be positive, got {point_scale}")
    weights = torch.tensor([float(m.weight) for m in media], dtype=torch.float32)
    if not torch.isfinite(weights).all():
        raise InputError("weights", "a weight is NaN or infinite", "finite weights")
    total = float(weights.sum())
    if total <= 0:
        raise InputError("weights", f"the weights sum to {total:g}; image output divides them by their sum",
                         "weights with a positive sum")
    use_cache = cache_config is not None or cache is not None
    if use_cache:
        cache = cache if cache is not None else own_cache
        cache_config = cache_config or CacheConfig()
        if cache is None:
            raise InputError("visual cache", "the cache is switched on but no cache index is loaded",
                             "switch the cache off, or start with a cache index")

    prenorm = embedder.embed_media(media, output="prenorm").float()  # (N, D)
    scale = torch.tensor([1.0 / point_scale if m.kind == "point" else 1.0 for m in media])
    prenorm = prenorm * scale[:, None]
    mixed = (weights / (total + WEIGHT_EPS)) @ prenorm  # (D,)
    if not torch.isfinite(mixed).all():
        raise InputError("inputs", "the mixed embedding contains NaN or infinite values", "inputs the model can read")
    if not use_cache:
        return mixed[None]
    norm = mixed.norm()
    if norm < 1e-12:
        raise InputError("weights", "the weighted inputs cancel out (the mix is a zero vector)",
                         "weights whose mix is not zero")
    if cache.dim != mixed.shape[-1]:
        raise InputError("visual cache", f"the cache holds vectors of width {cache.dim} but ImageBind embeds "
                         f"to width {mixed.shape[-1]}", "a cache built with the same ImageBind")
    blended = cache.blend(F.normalize(mixed, dim=-1)[None], cache_config).enhanced  # (1, D), unit length
    return blended.float().cpu() * norm


# ---------------------------------------------------------------------------------------------
# The diffusion pipeline (reference.md 6.2, step 5)
# ---------------------------------------------------------------------------------------------

class _NoImageEncoder(torch.nn.Module):
    """Stands in for the CLIP image encoder when the pipeline is loaded without it (it is only
    used to embed an input image; here the embedding comes from ImageBind). The pipeline reads
    the dtype of the encoder's parameters even when it is given ``image_embeds``."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.placeholder = torch.nn.Parameter(torch.zeros(1, dtype=dtype), requires_grad=False)

    @property
    def device(self) -> torch.device:  # diffusers asks every component for its device and dtype
        return self.placeholder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placeholder.dtype

    def forward(self, *args, **kwargs):
        raise RuntimeError("this unCLIP pipeline was loaded without its CLIP image encoder: give image_embeds")


def _load_failure(source: Any, error: Exception) -> str:
    """What went wrong loading ``source``, without diffusers' pointer to a stack trace nobody sees."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    first = first.replace(" Please check out the root cause in the stacktrace above.", "")
    message = f"cannot load a Stable unCLIP pipeline from {source}: {first}"
    if not os.path.isdir(os.path.expanduser(str(source))) and "cached" in first:
        message += (f"\n  download it once where there is a network: hf download {source} (then "
                    "copy the Hugging Face cache folder), or give a local folder: --unclip PATH")
    return message


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` in recent diffusers (``torch_dtype`` is
    deprecated there), ``torch_dtype`` before."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def _whole(value: Any) -> bool:
    """A whole number (an int, or a float without a fraction), not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and int(value) == value)


def default_unclip_dtype(device: str | torch.device) -> torch.dtype:
    """float16 on a GPU, float32 on the CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


class ImageGenerator:
    """Stable unCLIP turning an image embedding and a prompt into a picture.

    Args:
        source: a Hugging Face repo id (default :data:`DEFAULT_UNCLIP`, the official SD 2.1
            unCLIP H, downloaded once into the Hugging Face cache), a local folder written by
            ``save_pretrained``, or an already built ``StableUnCLIPImg2ImgPipeline``.
        device: where to run (default: CUDA when available, else the CPU). For a built pipeline,
            None leaves it where it is.
        dtype: weights dtype (default float16 on a GPU, float32 on the CPU; a built pipeline is
            left as it is unless a dtype is given).
        keep_image_encoder: also load the pipeline's CLIP image encoder (ViT-H, about 1.3 GB in
            float16). Not needed here, so it is left out by default. A pipeline without one
            (also a built pipeline given without one) gets a small stand-in module, because
            diffusers reads the encoder's dtype even when it is given ``image_embeds``.
        progress_bar: show diffusers' progress bar.
        **load_kwargs: passed to ``from_pretrained`` (``cache_dir``, ``variant``,
            ``local_files_only``, ...).
    """

    def __init__(self, source: Any = DEFAULT_UNCLIP, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, keep_image_encoder: bool = False, progress_bar: bool = True,
                 **load_kwargs):
        diffusers = require_diffusers()
        if isinstance(source, (str, os.PathLike)):
            device = device or default_device()
            kwargs = dict(load_kwargs)
            if "dtype" not in kwargs and "torch_dtype" not in kwargs:
                kwargs[_dtype_keyword()] = dtype or default_unclip_dtype(device)
            if not keep_image_encoder:
                kwargs.setdefault("image_encoder", None)
                kwargs.setdefault("feature_extractor", None)
            try:
                pipe = diffusers.StableUnCLIPImg2ImgPipeline.from_pretrained(str(source), **kwargs)
            except (OSError, ValueError) as error:
                raise CheckpointError(_load_failure(source, error)) from error
            pipe.to(device)
            self.source = str(source)
        else:
            if not all(hasattr(source, name) for name in ("unet", "image_normalizer", "vae", "__call__")):
                raise TypeError(f"expected a StableUnCLIPImg2ImgPipeline, got {type(source).__name__}")
            pipe = source
            if device is not None or dtype is not None:
                pipe.to(device=device, dtype=dtype)
            self.source = type(source).__name__
        if getattr(pipe, "image_encoder", None) is None:
            pipe.image_encoder = _NoImageEncoder(pipe.unet.dtype).to(pipe.unet.device)
        pipe.set_progress_bar_config(disable=not progress_bar)
        self.pipe = pipe
        self._lock = threading.Lock()
        accepted = inspect.signature(pipe.__call__).parameters
        self._step_callback = ("callback_on_step_end" if "callback_on_step_end" in accepted
                               else "callback" if "callback" in accepted else None)

    @property
    def embedding_dim(self) -> int:
        """The width of the image embeddings the pipeline is conditioned on (1024 for SD 2.1 unCLIP H)."""
        normalizer = self.pipe.image_normalizer
        dim = getattr(getattr(normalizer, "config", None), "embedding_dim", None)
        return int(dim) if dim else int(normalizer.mean.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def noise_levels(self) -> int:
        """Noise levels accepted: 0 to this minus one."""
        return int(self.pipe.image_noising_scheduler.config.num_train_timesteps)

    def check_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` (D,) or (1, D) -> (1, D), refusing a width the pipeline was not trained on."""
        embedding = torch.as_tensor(embedding)
        if embedding.ndim == 1:
            embedding = embedding[None]
        if embedding.ndim != 2 or embedding.shape[0] != 1:
            raise InputError("image embedding", f"expected one embedding of shape (D,) or (1, D), "
                             f"got {tuple(embedding.shape)}", "one embedding per image")
        check_width(self.source, embedding.shape[1], self.embedding_dim)
        if not torch.isfinite(embedding).all():
            raise InputError("image embedding", "the embedding contains NaN or infinite values", "finite values")
        return embedding

    def generate(self, embedding: torch.Tensor, prompt: str | None = "", *, steps: int = DEFAULT_STEPS,
                 guidance: float = DEFAULT_GUIDANCE, noise_level: int = DEFAULT_NOISE_LEVEL, seed: int | None = None,
                 negative_prompt: str | None = None, progress: Callable[[int, int], Any] | None = None,
                 cancel: Callable[[], bool] | threading.Event | None = None):
        """A PIL image from an image embedding (D,) or (1, D) and a text prompt.

        ``steps``, ``guidance`` (classifier-free guidance scale; 1 or less turns it off) and
        ``noise_level`` (noise added to the embedding, 0 to ``noise_levels - 1``) default to the
        official call's. ``seed``: a fixed seed gives the same image again (on one device).
        ``progress(step, steps)`` is called after each step; ``cancel`` (a callable or an
        Event) stops the generation between steps with :class:`GenerationCancelled`.
        """
        embedding = self.check_embedding(embedding)
        if not _whole(steps) or steps < 1:
            raise InputError("steps", f"{steps!r} is not a positive whole number", "1 or more steps")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < math.inf:
            raise InputError("guidance", f"{guidance!r} is not a number >= 0", "a guidance scale >= 0 (official: 10)")
        if not _whole(noise_level) or not 0 <= noise_level < self.noise_levels:
            raise InputError("noise level", f"{noise_level!r} is out of range",
                             f"a whole number from 0 to {self.noise_levels - 1}")
        generator = torch.Generator("cpu").manual_seed(int(seed)) if seed is not None else None
        kwargs: dict[str, Any] = {
            "prompt": prompt or "", "image_embeds": embedding.to(device=self.device, dtype=self.dtype),
            "num_inference_steps": int(steps), "guidance_scale": float(guidance), "noise_level": int(noise_level),
            "generator": generator,
        }
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        stopped = (cancel.is_set if isinstance(cancel, threading.Event) else cancel) if cancel is not None else None
        if (progress is not None or stopped is not None) and self._step_callback is not None:
            total = int(steps)

            def after_step(index: int) -> None:
                if progress is not None:
                    progress(index + 1, total)
                if stopped is not None and stopped():
                    raise GenerationCancelled("the image generation was stopped")

            if self._step_callback == "callback":
                kwargs["callback"] = lambda index, timestep, latents: after_step(index)
                kwargs["callback_steps"] = 1
            else:
                def on_step_end(pipe, index, timestep, tensors):
                    after_step(index)
                    return tensors

                kwargs["callback_on_step_end"] = on_step_end
        with self._lock:  # one generation at a time per pipeline (its scheduler has state)
            if stopped is not None and stopped():
                raise GenerationCancelled("the image generation was stopped")
            return self.pipe(**kwargs).images[0]
