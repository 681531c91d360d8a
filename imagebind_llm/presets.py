"""Named presets: which weight files make up a released ImageBind-LLM model, and where they live.

A :class:`WeightFile` says where one file comes from: a file in a Hugging Face repository
(``repo_id`` + ``filename``, optionally pinned to a ``revision``), a plain ``url``, or a
``local_path`` (absolute, or relative to the installed ``imagebind_llm`` package, for files that
ship with it). A :class:`Preset` groups the files of one model: the ImageBind encoder, the
adapter (bind network, gates, norms, biases, LoRA), the optional visual-cache index and the base
LLaMA it needs. The weights registry is separate from the architecture: a preset names its
ImageBind config factory (``imagebind_huge``) instead of repeating sizes.

Nothing here touches the network or the disk; :func:`imagebind_llm.hub.resolve` turns a
:class:`WeightFile` into a path.

Checksums: the official files are published without checksums, and the Hugging Face hub (whose
file pages list the LFS sha256) cannot be reached from where this registry was written, so every
``sha256`` and ``size_bytes`` below is ``None`` (unknown) rather than a guessed value. Unknown
values only skip the check; fill them in from the hub's file pages (or ``sha256sum`` of a copy
you trust) to have every load verified.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from .errors import ImageBindLLMError

HF_ENDPOINT = "https://huggingface.co"
PACKAGE_DIR = Path(__file__).resolve().parent

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


class UnknownPresetError(ImageBindLLMError, ValueError):
    """A preset name that is not registered; the message lists the known names."""


@dataclass(frozen=True)
class WeightFile:
    """Where one weight file comes from, and how to check it.

    Exactly one source: ``repo_id`` + ``filename`` (Hugging Face hub; ``revision`` is a branch,
    tag or commit, default ``main``), ``url`` (any HTTP(S) URL; ``filename`` defaults to the last
    part of the URL path and names the downloaded file), or ``local_path`` (a path; relative
    paths are taken inside the ``imagebind_llm`` package). ``sha256`` (hex) and ``size_bytes`` are
    checked when given; None means unknown, not "do not care".
    """

    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    url: str | None = None
    local_path: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        sources = [name for name, value in (("repo_id", self.repo_id), ("url", self.url),
                                            ("local_path", self.local_path)) if value]
        if len(sources) != 1:
            raise ValueError("WeightFile needs exactly one source (repo_id + filename, url or local_path), "
                             f"got {', '.join(sources) or 'none'}")
        if self.repo_id:
            if self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
                raise ValueError(f"WeightFile.repo_id must look like 'owner/name', got {self.repo_id!r}")
            if not self.filename:
                raise ValueError(f"WeightFile for {self.repo_id} needs a filename")
        if self.url:
            if urlparse(self.url).scheme not in ("http", "https"):
                raise ValueError(f"WeightFile.url must be an http(s) URL, got {self.url!r}")
            if not self.filename:
                name = PurePosixPath(urlparse(self.url).path).name
                if not name:
                    raise ValueError(f"WeightFile: cannot take a file name from {self.url!r}; give filename")
                object.__setattr__(self, "filename", name)
        if self.revision is not None and not self.repo_id:
            raise ValueError("WeightFile.revision only applies to Hugging Face hub files")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"WeightFile.sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", digest)
        if self.size_bytes is not None and self.size_bytes < 0:
            raise ValueError(f"WeightFile.size_bytes must be >= 0, got {self.size_bytes}")

    @property
    def kind(self) -> str:
        """``"hub"``, ``"url"`` or ``"local"``."""
        return "hub" if self.repo_id else "url" if self.url else "local"

    @property
    def name(self) -> str:
        """The file's base name (``consolidated.00.pth``), for messages and logs."""
        if self.local_path:
            return Path(self.local_path).name
        return PurePosixPath(self.filename).name  # type: ignore[arg-type]

    @property
    def download_url(self) -> str | None:
        """The HTTP URL of a hub or URL file (None for a local file)."""
        if self.repo_id:
            return f"{HF_ENDPOINT}/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"
        return self.url

    @property
    def path(self) -> Path | None:
        """The path of a local file (relative paths inside the package); None for other kinds."""
        if not self.local_path:
            return None
        path = Path(self.local_path).expanduser()
        return path if path.is_absolute() else PACKAGE_DIR / path

    def describe(self) -> str:
        """One line naming the file and its source, for messages."""
        if self.repo_id:
            at = f" @ {self.revision}" if self.revision else ""
            return f"{self.filename} from the Hugging Face repository {self.repo_id}{at}"
        if self.url:
            return f"{self.filename} from {self.url}"
        return f"local file {self.path}"


@dataclass(frozen=True)
class Preset:
    """The files and settings of one released model.

    ``llama_type`` is the base folder name the official code uses (``<llama_dir>/<llama_type>``):
    ``7B`` is Meta's LLaMA-7B, ``7B_chinese`` is LLaMA-7B plus the Open-Chinese-LLaMA delta
    (``llama_delta``: add it to the 7B weights, reference.md 4.12). ``llama_requirement`` says the
    same in words, for users. ``legacy_bridge`` selects the LayerNorm bind network of the beta
    adapter (reference.md 7.2, item 1).
    """

    name: str
    description: str
    imagebind: WeightFile
    adapter: WeightFile
    llama_type: str
    llama_requirement: str
    imagebind_config: str = "imagebind_huge"
    cache_index: WeightFile | None = None
    llama_delta: tuple[WeightFile, ...] = ()
    legacy_bridge: bool = False

    def __post_init__(self) -> None:
        if not _PRESET_NAME.fullmatch(self.name):
            raise ValueError(f"preset names are lower-case letters, digits, '.', '_' and '-', got {self.name!r}")
        from .config import IMAGEBIND_PRESETS

        if self.imagebind_config not in IMAGEBIND_PRESETS:
            raise ValueError(f"preset {self.name}: unknown ImageBind config {self.imagebind_config!r}; "
                             f"known: {', '.join(IMAGEBIND_PRESETS)}")

    def build_imagebind_config(self, with_point: bool = True):
        """The :class:`~imagebind_llm.config.ImageBindConfig` these weights were trained with."""
        from .config import IMAGEBIND_PRESETS

        return IMAGEBIND_PRESETS[self.imagebind_config](with_point=with_point)

    def files(self) -> dict[str, WeightFile]:
        """Every downloadable file of the preset by role (``imagebind``, ``adapter``,
        ``cache_index``, ``llama_delta/<name>``)."""
        out = {"imagebind": self.imagebind, "adapter": self.adapter}
        if self.cache_index is not None:
            out["cache_index"] = self.cache_index
        out.update({f"llama_delta/{f.name}": f for f in self.llama_delta})
        return out


# ---------------------------------------------------------------------------------------------
# The official files (reference.md 1.9, 4.12, 7.3)
# ---------------------------------------------------------------------------------------------
# sha256 / size_bytes: None everywhere = not published where we could read it (see the module
# docstring). Revisions: only imagebind_w3D.pth is pinned, because the official code pins it; the
# others are read from `main`, as the official code does. Approximate sizes are in descriptions.

IMAGEBIND_W3D = WeightFile(
    repo_id="ZiyuG/ImageBind_w3D", filename="imagebind_w3D.pth",
    revision="e9206a10f118b0790c730264e7b3aa5c324c35cb",
    description="ImageBind-huge with the Point-BERT 3D branch, as used by ImageBind-LLM (1,476 tensors)")
IMAGEBIND_HUGE = WeightFile(
    url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
    description="the original ImageBind-huge from Meta (no 3D branch; about 4.5 GB)")
ADAPTER_7B = WeightFile(
    repo_id="Cxxs/ImageBind-LLM", filename="7B.pth",
    description="the stable ImageBind-LLM adapter, trained on Open-Chinese-LLaMA-7B")
ADAPTER_7B_BETA = WeightFile(
    repo_id="Cxxs/ImageBind-LLM", filename="7B-beta.pth",
    description="the beta ImageBind-LLM adapter (legacy LayerNorm bridge), on LLaMA-7B")
ADAPTER_7B_PRETRAINED = WeightFile(
    repo_id="Cxxs/ImageBind-LLM", filename="7B-pretrained.pth",
    description="the image-text pretrained adapter, the starting point of fine-tuning")
KNN_INDEX = WeightFile(
    repo_id="csuhan/knn", filename="knn.index",
    description="FAISS index of about 3 million ImageBind image features for the visual cache (about 13 GB)")
CHINESE_DELTA_WEIGHTS = WeightFile(
    repo_id="Cxxs/Open-Chinese-LLaMA", filename="7B_chinese_delta/consolidated.00.pth",
    description="Open-Chinese-LLaMA-7B as an additive delta over Meta's LLaMA-7B")
CHINESE_DELTA_PARAMS = WeightFile(
    repo_id="Cxxs/Open-Chinese-LLaMA", filename="7B_chinese_delta/params.json",
    description="params.json of Open-Chinese-LLaMA-7B (copied beside the merged weights)")

WEIGHT_FILES: dict[str, WeightFile] = {
    "imagebind_w3D": IMAGEBIND_W3D,
    "imagebind_huge": IMAGEBIND_HUGE,
    "7B": ADAPTER_7B,
    "7B-beta": ADAPTER_7B_BETA,
    "7B-pretrained": ADAPTER_7B_PRETRAINED,
    "knn": KNN_INDEX,
    "7B_chinese_delta/consolidated.00.pth": CHINESE_DELTA_WEIGHTS,
    "7B_chinese_delta/params.json": CHINESE_DELTA_PARAMS,
}

_LLAMA_FORM = "https://forms.gle/jk851eBVbX1m5TAv5"

_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset, *, overwrite: bool = False) -> Preset:
    """Add a preset to the registry (``overwrite=True`` replaces one of the same name)."""
    if preset.name in _PRESETS and not overwrite:
        raise ValueError(f"a preset named {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    """The registered preset names, in registration order."""
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    """The registered preset called ``name``; an unknown name raises :class:`UnknownPresetError`
    listing the known ones, the shipped ones (:data:`LOCAL_PRESETS`) first."""
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        pass
    known = [*LOCAL_PRESETS, *list_presets()]
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownPresetError(f"unknown preset {name!r}. Known presets: {', '.join(known) or '(none)'}.{hint}")


register_preset(Preset(
    name="imagebind-llm-7b",
    description="ImageBind-LLM stable release (7B.pth) on Open-Chinese-LLaMA-7B",
    imagebind=IMAGEBIND_W3D,
    adapter=ADAPTER_7B,
    cache_index=KNN_INDEX,
    llama_type="7B_chinese",
    llama_requirement=(
        "Open-Chinese-LLaMA-7B ('7B_chinese'): Meta's LLaMA-7B (request it at " + _LLAMA_FORM + ") plus the "
        "Open-Chinese-LLaMA delta (Cxxs/Open-Chinese-LLaMA, 7B_chinese_delta/), added tensor by tensor: "
        "build it with `python -m imagebind_llm.merge /path/to/llama/7B` (downloads the delta, writes "
        "/path/to/llama/7B_chinese) and pass that folder. The adapter was trained on this base; the "
        "official demo.py loads it on plain LLaMA-7B, which does not match its training."),
    llama_delta=(CHINESE_DELTA_WEIGHTS, CHINESE_DELTA_PARAMS),
    legacy_bridge=False,
))

register_preset(Preset(
    name="imagebind-llm-7b-beta",
    description="ImageBind-LLM beta release (7B-beta.pth) with the legacy LayerNorm bridge",
    imagebind=IMAGEBIND_W3D,
    adapter=ADAPTER_7B_BETA,
    cache_index=KNN_INDEX,
    llama_type="7B",
    llama_requirement="Meta's LLaMA-7B ('7B'), unchanged (request it at " + _LLAMA_FORM + ").",
    legacy_bridge=True,
))


# ---------------------------------------------------------------------------------------------
# Small models that need no download
# ---------------------------------------------------------------------------------------------

#: A random-weight model of the small sizes: every feature works, the answers are noise.
UNTRAINED_PRESET = "tiny-untrained"
#: The model trained on the toy world and shipped in the package (python -m train.toyworld --install).
TOYWORLD_PRESET = "toyworld"
TOYWORLD_DIR = PACKAGE_DIR / "assets" / "toyworld"
MANIFEST = "manifest.json"
#: The files of the shipped toy-world model, by role.
TOYWORLD_FILES = ("imagebind.pth", "imagebind.json", "llama/params.json", "llama/consolidated.00.pth",
                  "tokenizer.model", "adapter.pth", "knn.index")


def toyworld_available() -> bool:
    return (TOYWORLD_DIR / MANIFEST).is_file()


def default_preset() -> str:
    """The toy-world model when it is installed, else the untrained one."""
    return TOYWORLD_PRESET if toyworld_available() else UNTRAINED_PRESET


DEFAULT_PRESET = default_preset()

#: The presets that need no download, with what they are (the released ones carry their own).
LOCAL_PRESETS = {
    TOYWORLD_PRESET: ("a small model trained on the generated toy world, kept in the package: it answers "
                      "about shapes, colours, counts and motions seen in images, video, sound, depth, "
                      "thermal, IMU and 3D"),
    UNTRAINED_PRESET: "random small weights, no download (every feature works; the answers are noise)",
}


def untrained_tokenizer(directory: Path | None = None) -> Path:
    """A small SentencePiece tokenizer (1000 pieces, byte fallback, LLaMA's special ids) trained
    on this package's own docstrings, written once to the user cache."""
    import importlib
    import inspect
    import io
    import os
    import pkgutil

    import sentencepiece

    from . import __version__

    directory = Path(directory or os.environ.get("IMAGEBIND_LLM_CACHE", Path.home() / ".cache" / "imagebind_llm"))
    path = directory / f"untrained-tokenizer-{__version__}.model"
    if path.is_file():
        return path
    package = importlib.import_module(__package__)
    texts = []
    for info in sorted(pkgutil.walk_packages(package.__path__, __package__ + "."), key=lambda i: i.name):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        texts += [inspect.getdoc(obj) or "" for obj in [module, *vars(module).values()]
                  if obj is module or getattr(obj, "__module__", None) == info.name]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter("\n".join(texts).splitlines()), model_writer=model, vocab_size=1000,
        model_type="bpe", byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(model.getvalue())
    partial.replace(path)
    return path


def build_untrained_pipeline(seed: int = 0, *, device="cpu", dtype=None, preprocess=None, cache_size: int = 2000,
                             adapter=None, cache=None):
    """The ``tiny-untrained`` pipeline: ImageBind ``imagebind_tiny`` and a 2-layer LLaMA with
    seeded random weights, the untrained tokenizer and a random visual cache. Built in memory.
    ``adapter`` (a file or state, e.g. the export of a ``train/configs/laptop.yaml`` run on this
    preset) replaces the random adapter on the same base; ``cache`` (an index file or cache
    folder) replaces the random cache."""
    import torch

    from .config import AdapterConfig, ImageBindLLMConfig, LlamaConfig, imagebind_tiny
    from .encoders.imagebind import ImageBind
    from .model import ImageBindLLM
    from .pipeline import Pipeline
    from .precision import encoder_dtype, resolve_dtype
    from .tokenizer import Tokenizer
    from .visual_cache import VisualCache

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        imagebind = ImageBind(imagebind_tiny()).eval()
        tokenizer = Tokenizer(untrained_tokenizer())
        llama = LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=tokenizer.n_words, multiple_of=32)
        adapter_config = AdapterConfig(imagebind_dim=imagebind.config.embed_dim, query_layer=2)
        model = ImageBindLLM(ImageBindLLMConfig(llama, adapter_config)).eval().requires_grad_(False)
        random_cache = VisualCache.from_vectors(torch.randn(cache_size, imagebind.config.embed_dim))
    finally:
        torch.random.set_rng_state(generator_state)
    if adapter is not None:  # the trained adapter on the same seeded base, as train/modeling.py builds it
        from .weights import base_llama_state, build_language_model

        model = build_language_model((model.config.llama, base_llama_state(model)), adapter,
                                     tokenizer_words=tokenizer.n_words)
    cache = VisualCache.load(cache) if cache is not None else random_cache
    imagebind.to(device=device, dtype=encoder_dtype(dtype, device))
    model.to(device=device, dtype=resolve_dtype(dtype, model.config, device))
    return Pipeline(imagebind, model, tokenizer, cache, preprocess, name=UNTRAINED_PRESET)


def load_preset_pipeline(name: str | None = None, *, llama=None, overrides=None, cache_index: bool = True,
                         device="cpu", dtype=None, preprocess=None, base_check: bool = True,
                         decoder: str | None = None, merge_lora: bool = True, **memory):
    """A ready :class:`~imagebind_llm.pipeline.Pipeline` for a preset name (default
    :data:`DEFAULT_PRESET`). Released presets need ``llama``, the base LLaMA folder (see
    ``preset.llama_requirement``); their files are resolved (downloaded) by :mod:`.hub`.
    ``memory``: ``quantize``, ``imagebind_dtype``, ``lazy``, ``offload_encoders`` (see
    :meth:`~imagebind_llm.pipeline.Pipeline.from_paths`). ``base_check``: run the preset's
    base-model check (:mod:`imagebind_llm.sanity`) before the first answer, if it has one.
    ``decoder``: how answers are decoded (:meth:`~imagebind_llm.pipeline.Pipeline.set_decoder`).
    ``merge_lora``: fold the LoRA updates into the weights (:meth:`~imagebind_llm.pipeline.Pipeline.merge_lora`)."""
    from .fast_decode import check_decoder

    check_decoder(decoder)
    return _load_preset_pipeline(name, llama=llama, overrides=overrides, cache_index=cache_index, device=device,
                                 dtype=dtype, preprocess=preprocess, base_check=base_check,
                                 merge_lora=merge_lora, **memory).set_decoder(decoder)


def _load_preset_pipeline(name, *, llama, overrides, cache_index, device, dtype, preprocess, base_check, merge_lora,
                          **memory):
    import torch

    from .errors import CheckpointError
    from .hub import resolve_preset
    from .pipeline import Pipeline
    from .precision import as_dtype

    name = name or DEFAULT_PRESET
    dtype = as_dtype(dtype)  # a name ("bfloat16") as the command line takes it
    if memory.get("imagebind_dtype") is not None:
        memory["imagebind_dtype"] = as_dtype(memory["imagebind_dtype"], allow_auto=False)
    given = {role: path for role, path in (overrides or {}).items() if path}
    if name == UNTRAINED_PRESET:
        from .lowmem import apply_memory_options

        fixed = [flag for flag, used in (("--imagebind", "imagebind" in given), ("--llama", llama)) if used]
        if fixed:  # its ImageBind and LLaMA come from a seed: a file given for them would be ignored
            raise CheckpointError(f"the {name} preset builds its ImageBind and LLaMA from a seed, so "
                                  f"{' and '.join(fixed)} cannot replace them; it takes "
                                  "--adapter and --cache-index. To run other weights, give --imagebind, --llama "
                                  "and --adapter without a preset")
        pipeline = build_untrained_pipeline(device=device, dtype=dtype, preprocess=preprocess,
                                            adapter=given.get("adapter"), cache=given.get("cache_index"))
        pipeline = apply_memory_options(pipeline, device=device, **memory)
        return pipeline.merge_lora() if merge_lora else pipeline
    from .sanity import attach_probe
    from .weights import check_llama_folder

    if name == TOYWORLD_PRESET:
        return attach_probe(build_toyworld_pipeline(device=device, dtype=dtype, preprocess=preprocess, llama=llama,
                                                    overrides=given, merge_lora=merge_lora, **memory),
                            name, base_check)
    preset = get_preset(name)
    if llama is None:
        raise CheckpointError(f"preset {name} needs a base LLaMA folder (--llama PATH): {preset.llama_requirement}")
    check_llama_folder(llama)  # a mistyped folder is named before gigabytes are downloaded
    files = resolve_preset(preset, overrides=overrides, cache_index=cache_index)
    pipeline = Pipeline.from_paths(imagebind=files.imagebind, llama=llama, adapter=files.adapter,
                                   cache=files.cache_index, imagebind_config=preset.build_imagebind_config(),
                                   device=device, dtype=dtype or torch.float32, preprocess=preprocess, name=name,
                                   merge_lora=merge_lora, **memory)
    return attach_probe(pipeline, name, base_check)


def load_preset_imagebind(name: str | None = None, *, imagebind=None, device="cpu", dtype=None):
    """Only the ImageBind encoder of a preset (for embeddings; no LLaMA needed), in ``dtype``
    (default float32, as in the preset's pipeline, so that the embeddings are the pipeline's)."""
    import torch

    from .checkpoint import load_imagebind
    from .hub import resolve

    name = name or DEFAULT_PRESET
    dtype = dtype or torch.float32
    if name == UNTRAINED_PRESET:
        return build_untrained_pipeline(device=device, dtype=dtype).imagebind
    if name == TOYWORLD_PRESET:
        files = verify_manifest(TOYWORLD_DIR)
        return load_imagebind(files["imagebind.pth"], _config_file(files["imagebind.json"]), device=device, dtype=dtype)
    preset = get_preset(name)
    path = imagebind or resolve(preset.imagebind, role="imagebind")
    return load_imagebind(path, preset.build_imagebind_config(), device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The shipped toy-world model: files in the package, checked against their sha256 at load
# ---------------------------------------------------------------------------------------------


def _config_file(path: Path):
    import json

    from .config import ImageBindConfig

    return ImageBindConfig.from_dict(json.loads(Path(path).read_text()))


def write_manifest(folder: Path, report: dict | None = None) -> dict:
    """Record the sha256 and size of every file of a model folder (and the training report)."""
    import hashlib
    import json

    folder = Path(folder)
    files = {}
    for name in TOYWORLD_FILES:
        data = (folder / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"format": "imagebind-llm-model", "files": files, "report": report or {}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def verify_manifest(folder: Path) -> dict[str, Path]:
    """The paths of a model folder's files after checking each against the manifest's sha256."""
    import hashlib
    import json

    from .errors import CheckpointError

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"no model in {folder}: {MANIFEST} is missing (train it with python -m train.toyworld "
                              "--install)")
    manifest = json.loads(manifest_path.read_text())
    paths = {}
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (the package is incomplete: reinstall it, or rebuild the model "
                                  "with python -m train.toyworld --install)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected["sha256"]:
            raise CheckpointError(f"{path}: sha256 {digest} does not match the manifest ({expected['sha256']}); the "
                                  "file is damaged or was changed: reinstall the package or rebuild the model")
        paths[name] = path
    return paths


def pipeline_from_folder(files: dict, *, device="cpu", dtype=None, preprocess=None, name: str = TOYWORLD_PRESET,
                         visual_cache: bool = True, **memory):
    """A Pipeline from the files of a toy-world-style model folder (roles of :data:`TOYWORLD_FILES`,
    and optionally ``llama``: a base LLaMA folder in place of ``llama/``); ``visual_cache=False``
    leaves its cache index out (then faiss is not needed)."""
    import torch

    from .pipeline import Pipeline

    return Pipeline.from_paths(
        imagebind=files["imagebind.pth"], imagebind_config=_config_file(files["imagebind.json"]),
        llama=files.get("llama") or Path(files["llama/params.json"]).parent, adapter=files["adapter.pth"],
        tokenizer=files["tokenizer.model"], cache=files["knn.index"] if visual_cache else None, device=device,
        dtype=dtype or torch.float32, preprocess=preprocess, name=name, **memory)


def build_toyworld_pipeline(*, device="cpu", dtype=None, preprocess=None, visual_cache: bool = True, llama=None,
                            overrides=None, **memory):
    """The shipped toy-world model, checksums verified (``memory``: see :func:`load_preset_pipeline`).
    ``overrides`` (role -> path: ``imagebind``, ``adapter``, ``cache_index``) and ``llama`` (a base
    LLaMA folder) put the user's files in place of the shipped ones."""
    files = dict(verify_manifest(TOYWORLD_DIR))
    for role, file in (("imagebind", "imagebind.pth"), ("adapter", "adapter.pth"), ("cache_index", "knn.index")):
        if (overrides or {}).get(role):
            files[file] = Path(overrides[role])
    if llama:
        files["llama"] = Path(llama)
    return pipeline_from_folder(files, device=device, dtype=dtype, preprocess=preprocess, visual_cache=visual_cache,
                                **memory)
