"""The one object the app and the CLI use: inputs of any modality + a question -> a streamed answer.

    pipeline = Pipeline.from_paths(imagebind="imagebind_w3D.pth", llama="llama/7B_chinese",
                                   adapter="7B.pth", cache="knn.index")
    for delta in pipeline.stream([Media("image", "photo.jpg")], "What is in this picture?"):
        print(delta, end="")

Steps of a request: preprocess and embed every input with the frozen ImageBind (unit vectors),
mix them (fusion.py), optionally blend with the visual cache (visual_cache.py), run the bind
network once, and decode with the gated LLaMA (generation.py). A :class:`Chat` keeps the
history of one conversation; the inputs of its most recent turn with media stay in use until
another turn brings new ones.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .checkpoint import load_imagebind
from .config import ImageBindConfig, imagebind_huge
from .embedding import Embedder, Media
from .encoders.imagebind import ImageBind
from .errors import InputError
from .fusion import FusionMode, fuse
from .generation import CancelCheck, GenerationConfig
from .model import ImageBindLLM
from .preprocess import PreprocessOptions
from .prompts import Turn, fit_chat, format_prompt, too_long, validate_question
from .tokenizer import Tokenizer
from .visual_cache import CacheConfig, CacheResult, VisualCache
from .weights import build_language_model, check_llama_folder, find_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Everything a request can change. ``cache`` None = visual cache off."""

    generation: GenerationConfig = GenerationConfig()
    cache: CacheConfig | None = None
    fusion: FusionMode = "normalized"
    context: str | None = None  # the official optional "### Input:" text


@dataclass
class Feature:
    """The fused ImageBind feature of a request and how it was made."""

    vector: torch.Tensor  # (D,) what enters the bind network
    embeddings: torch.Tensor  # (N, D) unit embeddings of the inputs
    labels: list[str]
    cache: CacheResult | None = None


@dataclass
class ChatTurn:
    question: str
    answer: str | None = None
    media: list[Media] = field(default_factory=list)
    feature: torch.Tensor | None = None  # set when the turn's media were encoded


@dataclass
class Chat:
    """The state of one conversation (small and copyable: it can live in a gr.State)."""

    turns: list[ChatTurn] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def active_feature(self) -> torch.Tensor | None:
        for turn in reversed(self.turns):
            if turn.feature is not None:
                return turn.feature
        return None


class Pipeline:
    #: The base-model check run once before the first answer (a :class:`~imagebind_llm.sanity.Probe`;
    #: None: no check). :func:`~imagebind_llm.presets.load_preset_pipeline` sets the preset's.
    base_check = None
    base_check_result = None  # its CheckResult, once run
    _base_check_lock = threading.Lock()
    #: The shared :class:`~imagebind_llm.batching.DecodeBatcher` when :meth:`enable_batching` was called.
    batcher = None
    #: How answers are decoded (:mod:`imagebind_llm.fast_decode`): 'eager' (the plain loop of
    #: generation.py), 'static', 'compiled' or 'auto'; None: ``IMAGEBIND_LLM_DECODER``, else
    #: :func:`~imagebind_llm.fast_decode.default_decoder` ('static' on a CPU, 'eager' elsewhere).
    decoder: str | None = None
    #: The :class:`~imagebind_llm.prefix_cache.PrefixCache` when :meth:`enable_prefix_cache` was called.
    prefix_cache = None

    def __init__(self, imagebind: ImageBind, model: ImageBindLLM, tokenizer: Tokenizer,
                 cache: VisualCache | None = None, preprocess: PreprocessOptions | None = None,
                 *, name: str = "custom"):
        if imagebind.config.embed_dim != model.config.adapter.imagebind_dim:
            raise InputError("model", f"the ImageBind embeds to width {imagebind.config.embed_dim} but the adapter "
                             f"expects {model.config.adapter.imagebind_dim}", "an ImageBind and adapter of one release")
        if cache is not None and cache.dim != imagebind.config.embed_dim:
            raise InputError("visual cache", f"the cache holds vectors of width {cache.dim} but ImageBind embeds to "
                             f"width {imagebind.config.embed_dim}", "a cache built with the same ImageBind")
        self.imagebind = imagebind
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.embedder = Embedder(imagebind, preprocess)
        self.name = name

    # ----------------------------------------------------------------------------- building

    @classmethod
    def from_paths(cls, *, imagebind: str | Path, llama: str | Path, adapter: str | Path,
                   cache: str | Path | None = None, tokenizer: str | Path | None = None,
                   imagebind_config: ImageBindConfig | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype | str = torch.float32, imagebind_dtype: torch.dtype | None = None,
                   preprocess: PreprocessOptions | None = None, name: str = "custom",
                   quantize: str | None = None, lazy: bool = False,
                   offload_encoders: bool = False, decoder: str | None = None,
                   merge_lora: bool = True) -> "Pipeline":
        """Load every part from local files, logging what is loaded and how long it took.

        Memory options (README "Memory"): ``quantize`` 'int8'/'int4' for the LLaMA projections
        (``dtype`` is then the activation dtype), ``imagebind_dtype`` for the encoders (default:
        ``dtype``; with ``dtype`` 'auto', chosen for the language model by
        :mod:`~imagebind_llm.precision`, the device's default),
        ``lazy`` reads each encoder from the checkpoint on first use, ``offload_encoders`` keeps
        the encoders in CPU memory and moves each to ``device`` only while it encodes (nothing
        to do on a CPU). ``decoder``: see :meth:`set_decoder`. ``merge_lora``: fold the LoRA
        updates into the weights (:meth:`merge_lora`; False keeps the model trainable and
        savable as an adapter)."""
        from .fast_decode import check_decoder
        from .lowmem import enable_offload
        from .precision import as_dtype, encoder_dtype

        check_decoder(decoder)  # a wrong name or folder fails before anything is loaded
        check_llama_folder(llama, tokenizer)
        dtype, imagebind_dtype = as_dtype(dtype), as_dtype(imagebind_dtype, allow_auto=False)

        started = time.perf_counter()
        offloading = offload_encoders and torch.device(device).type != "cpu"
        encoder = load_imagebind(imagebind, imagebind_config or imagebind_huge(),
                                 device="cpu" if offloading else device,
                                 dtype=imagebind_dtype or encoder_dtype(dtype, device), lazy=lazy)
        if offloading:
            enable_offload(encoder, device)
        log.info("ImageBind loaded from %s in %.1f s", imagebind, time.perf_counter() - started)
        step = time.perf_counter()
        tok = Tokenizer(tokenizer or find_tokenizer(llama))
        model = build_language_model(llama, adapter, tokenizer_words=tok.n_words, dtype=dtype, device=device,
                                     quantize=quantize)
        log.info("LLaMA %s + adapter %s loaded in %.1f s", llama, adapter, time.perf_counter() - step)
        visual_cache = VisualCache.load(cache) if cache else None
        log.info("pipeline %r ready in %.1f s", name, time.perf_counter() - started)
        pipeline = cls(encoder, model, tok, visual_cache, preprocess, name=name)
        if merge_lora:
            pipeline.merge_lora()
        return pipeline.set_decoder(decoder)

    def merge_lora(self) -> "Pipeline":
        """Fold the adapter's LoRA updates into the language model's frozen weights
        (:meth:`~imagebind_llm.llama.Llama.merge_lora_`): the same answers with one matrix product
        per projection instead of three (float32: equal to about 1e-7; bfloat16/float16: each
        weight is rounded once more, and the default model's answers stayed the same, see
        bench/memory.py). Quantised projections keep their update separate. Irreversible: the
        model cannot be trained or saved as an adapter afterwards (load with
        ``merge_lora=False`` for that)."""
        merged = self.model.llama.merge_lora_()
        if merged:
            log.info("LoRA merged into %d projections for inference", merged)
            if self.prefix_cache is not None:  # keys and values of the weights before
                self.prefix_cache.clear()
        return self

    # ----------------------------------------------------------------------------- features

    def embed(self, media: Sequence[Media]) -> torch.Tensor:
        """Unit embeddings (N, D) of the inputs, in order (batched per kind)."""
        return self.embedder.embed_media(media)

    def feature(self, media: Sequence[Media], settings: Settings = Settings()) -> Feature:
        """Embed, mix and (optionally) cache-blend the inputs of one request."""
        settings = settings if settings is not None else Settings()
        embeddings = self.embed(media)
        for item in media:  # before the mix, which would fail on it without naming the input
            if not isinstance(item.weight, numbers.Real) or isinstance(item.weight, bool):
                raise InputError(item.label, f"its weight must be a number, got {item.weight!r}", "e.g. 1.0 or -0.5")
        labels = [m.label for m in media]
        vector = fuse(embeddings, [m.weight for m in media], settings.fusion, labels)
        result = None
        if settings.cache is not None:
            if self.cache is None:
                raise InputError("visual cache", "the cache is switched on but no cache index is loaded",
                                 "switch the cache off, or start with a cache index")
            result = self.cache.blend(vector[None], settings.cache)
            vector = result.enhanced[0]
        return Feature(vector, embeddings, labels, result)

    # ----------------------------------------------------------------------------- answers

    def check_base_model(self):
        """Run :attr:`base_check` once (imagebind_llm/sanity.py) and return its result (None when
        there is no check); raise :class:`~imagebind_llm.sanity.BaseModelError` if it failed, now
        and at every later answer. Warnings are logged."""
        if self.base_check is None:
            return None
        with self._base_check_lock:
            if self.base_check_result is None:
                from .sanity import check_base_model

                result = check_base_model(self.model, self.tokenizer, self.base_check)
                log.info("base-model check: %s", result.summary())
                for warning in result.warnings:
                    log.warning("%s", warning)
                self.base_check_result = result
        self.base_check_result.raise_if_failed()
        return self.base_check_result

    def stream_ids(self, prompt_ids: list[int], feature: torch.Tensor | None, settings: Settings,
                   cancel: CancelCheck = None) -> Iterator[int]:
        self.check_base_model()
        visual_query = None
        if feature is not None:
            with torch.inference_mode():
                visual_query = self.model.visual_query(feature[None].to(self.model.device))
        if self.batcher is not None:  # decoded together with the other requests (enable_batching)
            yield from self.batcher.stream(prompt_ids, visual_query, settings.generation,
                                           eos_id=self.tokenizer.eos_id, cancel=cancel)
            return
        from .fast_decode import decode_tokens

        steps = decode_tokens(self.model, [prompt_ids], settings.generation, decoder=self.decoder,
                              visual_query=visual_query, eos_id=self.tokenizer.eos_id, cancel=cancel,
                              prefix_cache=self.prefix_cache)
        for step in steps:
            if step[0] is not None:
                yield step[0]

    def set_decoder(self, decoder: str | None) -> "Pipeline":
        """Choose how answers are decoded (imagebind_llm/fast_decode.py): 'eager' (the plain
        loop), 'static' (static KV cache, the same tokens), 'compiled' (the static step through
        torch.compile; CUDA graphs on a GPU; compiles at the first answer) or 'auto' (measured
        at the first answer, cached per model); None: ``IMAGEBIND_LLM_DECODER``, else 'static'
        on a CPU and 'eager' elsewhere.
        Returns the pipeline. The shared batcher (:meth:`enable_batching`) has its own loop."""
        from .fast_decode import DECODER_ENV, check_decoder

        self.decoder = check_decoder(decoder)
        if decoder is None:  # a wrong environment value fails now, not at the first answer
            check_decoder(os.environ.get(DECODER_ENV) or None)
        return self

    def decoder_kind(self) -> str:
        """The decoder in use: :attr:`decoder` (None: ``IMAGEBIND_LLM_DECODER``, else 'static'
        on a CPU and 'eager' elsewhere) with 'auto' resolved (measured once, cached per model)."""
        from .fast_decode import resolve_decoder

        return resolve_decoder(self.model, self.decoder)

    def enable_batching(self, max_batch: int = 16, window_ms: float = 0.0):
        """Decode the requests of every caller of this pipeline together: from now on each answer
        is generated by one shared :class:`~imagebind_llm.batching.DecodeBatcher` (a thread that
        owns the language model and decodes all running requests in one step), for callers on
        many threads (the app with concurrency > 1). Greedy answers stay the same. Returns the
        batcher; :meth:`disable_batching` goes back to decoding each request on its caller's thread."""
        from .batching import DecodeBatcher

        self.disable_batching()
        self.batcher = DecodeBatcher(self.model, max_batch=max_batch, window_ms=window_ms,
                                     prefix_cache=self.prefix_cache)
        return self.batcher

    def enable_prefix_cache(self, max_bytes: int = 1 << 30):
        """Reuse the keys and values of earlier requests (imagebind_llm/prefix_cache.py): a chat
        turn prefills only what follows the conversation so far, and requests that share the
        prompt template's start skip it, in every decoder and the batcher. Logits agree with a
        full prefill to about 1e-6, so greedy answers stay the same unless two logits tie to that
        precision; off by default. ``max_bytes`` bounds the memory it keeps on the model's
        device (least recently used entries go first; 0 turns it off). Returns the cache (None
        when off)."""
        from .prefix_cache import PrefixCache

        self.prefix_cache = PrefixCache(max_bytes) if max_bytes > 0 else None
        if self.batcher is not None:
            self.batcher.prefix_cache = self.prefix_cache
        return self.prefix_cache

    def disable_batching(self) -> None:
        """Stop the shared batcher, if any (requests it is running end with an error)."""
        batcher, self.batcher = self.batcher, None
        if batcher is not None:
            batcher.close()

    def stream(self, media: Sequence[Media], question: str, settings: Settings = Settings(),
               cancel: CancelCheck = None) -> Iterator[str]:
        """Single-turn answer as text deltas (official prompt template)."""
        settings = settings if settings is not None else Settings()
        prompt = self.question_prompt(question, settings)
        feature = self.feature(media, settings).vector if media else None
        yield from self._decode(self.stream_ids(prompt, feature, settings, cancel))

    def question_prompt(self, question: str, settings: Settings = Settings()) -> list[int]:
        """The token ids of the official single-turn prompt for ``question``. A prompt that leaves
        less room than ``settings``' max new tokens is refused, as in a chat, rather than answered
        with what room is left."""
        validate_question(question)
        settings = settings if settings is not None else Settings()
        prompt = self.tokenizer.encode(format_prompt(question, settings.context))
        budget = self._prompt_budget(settings)
        if len(prompt) > budget:
            raise too_long(len(prompt), budget)
        return prompt

    def _prompt_budget(self, settings: Settings) -> int:
        """The prompt tokens that fit beside ``settings``' answer in the model's context."""
        max_len, max_new = self.model.config.llama.max_seq_len, settings.generation.max_new_tokens
        if max_len - max_new < 1:
            raise InputError("settings", f"max new tokens ({max_new}) leaves no room for the question in a "
                             f"context of {max_len}", "fewer max new tokens")
        return max_len - max_new

    def answer(self, media: Sequence[Media], question: str, settings: Settings = Settings()) -> str:
        return "".join(self.stream(media, question, settings)).strip()

    def _decode(self, ids: Iterator[int]) -> Iterator[str]:
        decoder = self.tokenizer.stream()
        for token in ids:
            delta = decoder.push(token)
            if delta:
                yield delta
        rest = decoder.flush()
        if rest:
            yield rest

    def chat(self, chat: Chat, question: str, media: Sequence[Media] = (), settings: Settings = Settings(),
             cancel: CancelCheck = None) -> Iterator[str]:
        """Answer the next turn of ``chat`` (which is updated in place: the new turn is added
        before streaming and its answer filled in as it grows). New media replace the earlier
        turns' media. If the history does not fit the context, the oldest turns are left out of
        the prompt and a notice is added to ``chat.notices``."""
        validate_question(question)
        settings = settings if settings is not None else Settings()
        checked = self.check_base_model()
        for warning in checked.warnings if checked is not None else ():
            if warning not in chat.notices:
                chat.notices.append(warning)
        budget = self._prompt_budget(settings)
        turn = ChatTurn(question=question, media=list(media))
        if media:
            turn.feature = self.feature(media, settings).vector
        chat.turns.append(turn)  # only a turn that can be asked: a refused one leaves the chat as it was
        turns = [Turn(t.question, t.answer) for t in chat.turns]
        try:
            prompt, dropped = fit_chat(turns, lambda text: self.tokenizer.encode(text), budget, settings.context)
        except InputError:
            chat.turns.pop()
            raise
        if dropped:
            left_out = "the oldest turn was" if dropped == 1 else f"the {dropped} oldest turns were"
            chat.notices.append(f"The conversation is longer than the model's context: {left_out} left out of "
                                f"the prompt.")
        turn.answer = ""
        try:
            for delta in self._decode(self.stream_ids(prompt, chat.active_feature(), settings, cancel)):
                turn.answer += delta
                yield delta
        except Exception:  # a turn that failed is not kept (a stopped or abandoned one keeps its words)
            if chat.turns and chat.turns[-1] is turn:
                chat.turns.pop()
            raise
        turn.answer = turn.answer.strip()
