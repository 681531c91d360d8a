"""Typed configuration of the ImageBind encoders (and, later, of the language model).

Every size lives here; model code reads it from these objects. Configs are frozen
dataclasses validated on construction, so a wrong size fails at once with a message that
names the field instead of deep inside a matmul.

Presets: :func:`imagebind_huge` (the released sizes, reference.md 1.1 and 3.1) and
:func:`imagebind_tiny` (small sizes for tests). :meth:`ImageBindConfig.from_official_kwargs`
builds a config from the keyword arguments of the official ``ImageBindModel``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value!r}")


def _probability(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")


@dataclass(frozen=True)
class TransformerConfig:
    """A stack of pre-norm transformer blocks (attention + GELU MLP)."""

    width: int
    depth: int
    num_heads: int
    mlp_ratio: int = 4
    drop_path: float = 0.0  # the largest stochastic-depth rate; block i gets linspace(0, this)[i]
    qkv_bias: bool = True
    bias_kv: bool = False  # one learned key/value token appended to every sequence
    norm_eps: float = 1e-6
    pre_norm: bool = False  # a LayerNorm before the first block (the vision trunk only)
    causal: bool = False  # causal self-attention (the text trunk only)

    def __post_init__(self) -> None:
        _positive("TransformerConfig", width=self.width, depth=self.depth, num_heads=self.num_heads,
                  mlp_ratio=self.mlp_ratio, norm_eps=self.norm_eps)
        _probability("TransformerConfig", drop_path=self.drop_path)
        if self.width % self.num_heads:
            raise ValueError(
                f"TransformerConfig.width ({self.width}) must be divisible by num_heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@dataclass(frozen=True)
class VisionConfig:
    """Images and video clips: a Conv3d patch stem over (frames, H, W); an image is repeated
    to ``frames`` frames."""

    trunk: TransformerConfig
    image_size: int = 224
    frames: int = 2
    patch_size: tuple[int, int, int] = (2, 14, 14)  # (time, height, width); stride = kernel
    channels: int = 3

    def __post_init__(self) -> None:
        _positive("VisionConfig", image_size=self.image_size, frames=self.frames, channels=self.channels)
        if len(self.patch_size) != 3:
            raise ValueError(f"VisionConfig.patch_size must be (time, height, width), got {self.patch_size}")
        t, h, w = self.patch_size
        if self.frames % t or self.image_size % h or self.image_size % w:
            raise ValueError(
                f"VisionConfig: patch_size {self.patch_size} must divide (frames, image_size, image_size)"
                f" = ({self.frames}, {self.image_size}, {self.image_size})"
            )
        if not self.trunk.pre_norm:
            raise ValueError("VisionConfig.trunk.pre_norm must be True (the vision trunk has a pre-LayerNorm)")

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w = self.patch_size
        return self.frames // t, self.image_size // h, self.image_size // w

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass(frozen=True)
class TextConfig:
    trunk: TransformerConfig
    vocab_size: int = 49408
    context_length: int = 77

    def __post_init__(self) -> None:
        _positive("TextConfig", vocab_size=self.vocab_size, context_length=self.context_length)
        if not self.trunk.causal:
            raise ValueError("TextConfig.trunk.causal must be True (the text trunk is causal)")


@dataclass(frozen=True)
class AudioConfig:
    """Log-mel spectrograms (1, num_mel_bins, target_length) cut into overlapping patches."""

    trunk: TransformerConfig
    num_mel_bins: int = 128
    target_length: int = 204
    patch_size: int = 16
    stride: int = 10

    def __post_init__(self) -> None:
        _positive("AudioConfig", num_mel_bins=self.num_mel_bins, target_length=self.target_length,
                  patch_size=self.patch_size, stride=self.stride)
        if self.patch_size > min(self.num_mel_bins, self.target_length):
            raise ValueError(f"AudioConfig.patch_size {self.patch_size} is larger than the spectrogram")

    @property
    def grid(self) -> tuple[int, int]:
        rows = (self.num_mel_bins - self.patch_size) // self.stride + 1
        cols = (self.target_length - self.patch_size) // self.stride + 1
        return rows, cols

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols


@dataclass(frozen=True)
class ImageLikeConfig:
    """Single-channel images (depth, thermal) cut into non-overlapping patches."""

    trunk: TransformerConfig
    image_size: int = 224
    patch_size: int = 16
    channels: int = 1
    # Standardisation of the input, (x - mean) / std, before the stem. ImageBind's checkpoints
    # have none (identity); a model trained from scratch may fix constants here.
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self) -> None:
        _positive("ImageLikeConfig", image_size=self.image_size, patch_size=self.patch_size,
                  channels=self.channels, input_std=self.input_std)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ImageLikeConfig.patch_size {self.patch_size} must divide image_size {self.image_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class ImuConfig:
    """IMU traces (channels, length) cut into windows; each token is channel-major."""

    trunk: TransformerConfig
    channels: int = 6
    length: int = 2000
    window: int = 8  # the official code hard-codes 8 (its imu_kernel_size is ignored)
    # Per-channel standardisation (x - mean) / std before the stem; None = identity (official).
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _positive("ImuConfig", channels=self.channels, length=self.length, window=self.window)
        if self.length % self.window:
            raise ValueError(f"ImuConfig.window {self.window} must divide length {self.length}")
        for name in ("input_mean", "input_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"ImuConfig.{name} needs {self.channels} values, got {len(value)}")
        if self.input_std is not None and min(self.input_std) <= 0:
            raise ValueError("ImuConfig.input_std must be positive")

    @property
    def num_patches(self) -> int:
        return self.length // self.window

    @property
    def patch_features(self) -> int:
        return self.channels * self.window


@dataclass(frozen=True)
class PointConfig:
    """The Point-BERT encoder of Point-Bind (reference.md 3): FPS + kNN groups, a mini-PointNet
    per group, a transformer whose position embedding is re-added before every block, and a
    projection of [cls, max-pool] (2 x width) to ``projection_dim``."""

    width: int = 384  # trans_dim
    depth: int = 12
    num_heads: int = 6
    num_groups: int = 512
    group_size: int = 32
    group_feature_dim: int = 256  # encoder_dims: the token width the mini-PointNet produces
    group_mlp_widths: tuple[int, int, int] = (128, 256, 512)  # its hidden widths (fixed officially)
    num_points: int = 8192
    projection_dim: int = 512  # the point head's input width (pc_projection columns)
    pos_hidden: int = 128
    mlp_ratio: int = 4
    drop_path: float = 0.1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _positive("PointConfig", width=self.width, depth=self.depth, num_heads=self.num_heads,
                  num_groups=self.num_groups, group_size=self.group_size,
                  group_feature_dim=self.group_feature_dim, num_points=self.num_points,
                  projection_dim=self.projection_dim, pos_hidden=self.pos_hidden)
        _probability("PointConfig", drop_path=self.drop_path)
        if self.width % self.num_heads:
            raise ValueError(f"PointConfig.width ({self.width}) must be divisible by num_heads ({self.num_heads})")
        if len(self.group_mlp_widths) != 3 or min(self.group_mlp_widths) <= 0:
            raise ValueError(f"PointConfig.group_mlp_widths must be 3 positive widths, got {self.group_mlp_widths}")
        if self.group_mlp_widths[2] != 2 * self.group_mlp_widths[1]:
            raise ValueError("PointConfig.group_mlp_widths[2] must be twice [1] (local + global feature)")

    @property
    def trunk(self) -> TransformerConfig:
        return TransformerConfig(width=self.width, depth=self.depth, num_heads=self.num_heads,
                                 mlp_ratio=self.mlp_ratio, drop_path=self.drop_path, qkv_bias=False,
                                 norm_eps=self.norm_eps)

    @classmethod
    def from_official(cls, model_config: Mapping[str, Any], npoints: int = 8192,
                      projection_dim: int = 512) -> "PointConfig":
        """From the ``model:`` section of the official PointTransformer yaml."""
        return cls(width=model_config["trans_dim"], depth=model_config["depth"],
                   num_heads=model_config["num_heads"], num_groups=model_config["num_group"],
                   group_size=model_config["group_size"], group_feature_dim=model_config["encoder_dims"],
                   drop_path=model_config.get("drop_path_rate", 0.1), num_points=npoints,
                   projection_dim=projection_dim)


@dataclass(frozen=True)
class LogitScales:
    """Initial logit scales of the postprocessors (the trained values come from the checkpoint).
    ``None`` means no scaling (vision). Text's scale is learnable, the others are fixed."""

    vision: float | None = None
    text: float = 1 / 0.07
    audio: float = 20.0
    depth: float = 5.0
    thermal: float = 10.0
    imu: float = 5.0
    point: float = 1.0


@dataclass(frozen=True)
class ImageBindConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    audio: AudioConfig
    depth: ImageLikeConfig
    thermal: ImageLikeConfig
    imu: ImuConfig
    point: PointConfig | None = None  # None: the original ImageBind without the 3D branch
    head_norm_eps: float = 1e-6
    stem_norm_eps: float = 1e-5
    imu_head_dropout: float = 0.5
    point_head_dropout: float = 0.5
    logit_scales: LogitScales = field(default_factory=LogitScales)

    def __post_init__(self) -> None:
        _positive("ImageBindConfig", embed_dim=self.embed_dim)

    def modality_config(self, modality: str):
        return getattr(self, modality)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageBindConfig":
        def trunk(d):
            return TransformerConfig(**d)

        d = dict(data)
        vision = dict(d["vision"], trunk=trunk(d["vision"]["trunk"]))
        vision["patch_size"] = tuple(vision["patch_size"])
        return cls(
            embed_dim=d["embed_dim"],
            vision=VisionConfig(**vision),
            text=TextConfig(**dict(d["text"], trunk=trunk(d["text"]["trunk"]))),
            audio=AudioConfig(**dict(d["audio"], trunk=trunk(d["audio"]["trunk"]))),
            depth=ImageLikeConfig(**dict(d["depth"], trunk=trunk(d["depth"]["trunk"]))),
            thermal=ImageLikeConfig(**dict(d["thermal"], trunk=trunk(d["thermal"]["trunk"]))),
            imu=ImuConfig(**{**d["imu"], "trunk": trunk(d["imu"]["trunk"]),
                             **{k: tuple(d["imu"][k]) for k in ("input_mean", "input_std") if d["imu"].get(k)}}),
            point=PointConfig(**dict(d["point"], group_mlp_widths=tuple(d["point"]["group_mlp_widths"])))
            if d.get("point") else None,
            head_norm_eps=d.get("head_norm_eps", 1e-6),
            stem_norm_eps=d.get("stem_norm_eps", 1e-5),
            imu_head_dropout=d.get("imu_head_dropout", 0.5),
            point_head_dropout=d.get("point_head_dropout", 0.5),
            logit_scales=LogitScales(**d.get("logit_scales", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_official_kwargs(
        cls,
        kwargs: Mapping[str, Any] | None = None,
        point: PointConfig | None = None,
    ) -> "ImageBindConfig":
        """Build from the keyword arguments of the official ``ImageBindModel`` (missing ones take
        the official class defaults, reference.md 1.1). ``point`` adds the Point-Bind branch."""
        k = dict(OFFICIAL_CLASS_DEFAULTS)
        unknown = set(kwargs or {}) - set(k)
        if unknown:
            raise ValueError(f"unknown ImageBindModel arguments: {sorted(unknown)}")
        k.update(kwargs or {})

        def blocks(prefix: str, **extra) -> TransformerConfig:
            return TransformerConfig(width=k[f"{prefix}_embed_dim"], depth=k[f"{prefix}_num_blocks"],
                                     num_heads=k[f"{prefix}_num_heads"],
                                     drop_path=k.get(f"{prefix}_drop_path", 0.0), **extra)

        return cls(
            embed_dim=k["out_embed_dim"],
            vision=VisionConfig(trunk=blocks("vision", pre_norm=True), frames=k["video_frames"],
                                patch_size=tuple(k["kernel_size"])),
            text=TextConfig(trunk=blocks("text", causal=True)),
            audio=AudioConfig(trunk=blocks("audio", bias_kv=True), num_mel_bins=k["audio_num_mel_bins"],
                              target_length=k["audio_target_len"], patch_size=k["audio_kernel_size"],
                              stride=k["audio_stride"]),
            depth=ImageLikeConfig(trunk=blocks("depth", bias_kv=True), patch_size=k["depth_kernel_size"]),
            thermal=ImageLikeConfig(trunk=blocks("thermal", bias_kv=True), patch_size=k["thermal_kernel_size"]),
            # imu_kernel_size is accepted but, as in the official code, not used.
            imu=ImuConfig(trunk=blocks("imu", bias_kv=True)),
            point=point,
        )


#: The official ``ImageBindModel.__init__`` defaults (reference.md 1.1).
OFFICIAL_CLASS_DEFAULTS: dict[str, Any] = {
    "video_frames": 2, "kernel_size": (2, 14, 14), "audio_kernel_size": 16, "audio_stride": 10,
    "out_embed_dim": 768, "vision_embed_dim": 1024, "vision_num_blocks": 24, "vision_num_heads": 16,
    "audio_embed_dim": 768, "audio_num_blocks": 12, "audio_num_heads": 12, "audio_num_mel_bins": 128,
    "audio_target_len": 204, "audio_drop_path": 0.1, "text_embed_dim": 768, "text_num_blocks": 12,
    "text_num_heads": 12, "depth_embed_dim": 384, "depth_kernel_size": 16, "depth_num_blocks": 12,
    "depth_num_heads": 8, "depth_drop_path": 0.0, "thermal_embed_dim": 768, "thermal_kernel_size": 16,
    "thermal_num_blocks": 12, "thermal_num_heads": 12, "thermal_drop_path": 0.0, "imu_embed_dim": 512,
    "imu_kernel_size": 8, "imu_num_blocks": 6, "imu_num_heads": 8, "imu_drop_path": 0.7,
}

#: The ``imagebind_huge`` overrides (reference.md 1.1).
HUGE_KWARGS: dict[str, Any] = {
    "out_embed_dim": 1024, "vision_embed_dim": 1280, "vision_num_blocks": 32, "vision_num_heads": 16,
    "text_embed_dim": 1024, "text_num_blocks": 24, "text_num_heads": 16, "audio_drop_path": 0.1,
    "imu_drop_path": 0.7,
}


def imagebind_huge(with_point: bool = True) -> ImageBindConfig:
    """The released ImageBind-huge; ``with_point`` adds ImageBind-LLM's Point-BERT branch."""
    return ImageBindConfig.from_official_kwargs(HUGE_KWARGS, point=PointConfig() if with_point else None)


def imagebind_tiny(with_point: bool = True) -> ImageBindConfig:
    """Small random-weight sizes for tests; the real input geometry (224 px, 77 tokens,
    128 x 204 spectrograms, 6 x 2000 IMU, 8192 points)."""
    kwargs = {
        "out_embed_dim": 32, "vision_embed_dim": 64, "vision_num_blocks": 2, "vision_num_heads": 4,
        "audio_embed_dim": 48, "audio_num_blocks": 2, "audio_num_heads": 4, "text_embed_dim": 24,
        "text_num_blocks": 2, "text_num_heads": 4, "depth_embed_dim": 32, "depth_num_blocks": 1,
        "depth_num_heads": 2, "thermal_embed_dim": 32, "thermal_num_blocks": 1, "thermal_num_heads": 2,
        "imu_embed_dim": 32, "imu_num_blocks": 1, "imu_num_heads": 2,
    }
    point = PointConfig(width=48, depth=2, num_heads=4, group_feature_dim=64) if with_point else None
    return ImageBindConfig.from_official_kwargs(kwargs, point=point)


def imagebind_toy(with_point: bool = True) -> ImageBindConfig:
    """The toy world's small ImageBind (the embedded default model): real input geometry, larger
    patch strides so that it trains on a CPU in minutes."""
    t = TransformerConfig
    point = PointConfig(width=64, depth=2, num_heads=4, num_groups=64, group_size=32, group_feature_dim=64,
                        group_mlp_widths=(32, 64, 128), projection_dim=128, pos_hidden=64,
                        drop_path=0.0) if with_point else None
    return ImageBindConfig(
        embed_dim=128,
        vision=VisionConfig(trunk=t(width=128, depth=3, num_heads=4, pre_norm=True), patch_size=(2, 32, 32)),
        text=TextConfig(trunk=t(width=64, depth=2, num_heads=4, causal=True)),
        audio=AudioConfig(trunk=t(width=96, depth=2, num_heads=4, bias_kv=True), patch_size=16, stride=16),
        # Input standardisation measured on the world's data (depth disparity, thermal, IMU).
        depth=ImageLikeConfig(trunk=t(width=64, depth=2, num_heads=4, bias_kv=True), patch_size=32,
                              input_mean=0.15, input_std=0.05),
        thermal=ImageLikeConfig(trunk=t(width=64, depth=2, num_heads=4, bias_kv=True), patch_size=32,
                                input_mean=0.28, input_std=0.18),
        imu=ImuConfig(trunk=t(width=64, depth=2, num_heads=4, bias_kv=True), window=40,
                      input_mean=(0.0, 0.0, 9.81, 0.0, 0.0, 0.0), input_std=(2.0, 2.0, 2.0, 1.0, 1.0, 2.0)),
        point=point,
    )


IMAGEBIND_PRESETS = {"imagebind_huge": imagebind_huge, "imagebind_tiny": imagebind_tiny, "imagebind_toy": imagebind_toy}


# --------------------------------------------------------------------------------------------
# Language model side (reference.md section 4)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaConfig:
    """LLaMA sizes, as in Meta's ``params.json`` (plus the vocabulary from the tokenizer)."""

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_hidden: int | None = None  # an explicit SwiGLU width (Hugging Face intermediate_size)
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 512  # the official adapter builds LLaMA with 512

    def __post_init__(self) -> None:
        _positive("LlamaConfig", dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
                  vocab_size=self.vocab_size, multiple_of=self.multiple_of, norm_eps=self.norm_eps,
                  rope_theta=self.rope_theta, max_seq_len=self.max_seq_len)
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: the head width {self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4 x dim (times ffn_dim_multiplier), rounded up to multiple_of,
        unless ``ffn_hidden`` gives it."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], vocab_size: int | None = None, **overrides) -> "LlamaConfig":
        """From Meta's params.json; ``vocab_size`` -1 there means "take it from the tokenizer"."""
        known = {"dim", "n_layers", "n_heads", "multiple_of", "ffn_dim_multiplier", "norm_eps", "rope_theta"}
        values = {k: v for k, v in params.items() if k in known}
        if "n_kv_heads" in params and params["n_kv_heads"] not in (None, params["n_heads"]):
            raise ValueError("grouped-query attention (n_kv_heads != n_heads) is not an ImageBind-LLM base model "
                             "(LLaMA-1 7B is expected)")
        vocab = params.get("vocab_size", -1)
        if vocab is None or vocab <= 0:
            if vocab_size is None:
                raise ValueError("params.json has no vocab_size; pass the tokenizer's vocabulary size")
            vocab = vocab_size
        elif vocab_size is not None and vocab != vocab_size:
            raise ValueError(f"params.json says vocab_size {vocab} but the tokenizer has {vocab_size} pieces")
        return cls(vocab_size=vocab, **values, **overrides)

    def to_params(self) -> dict[str, Any]:
        """Meta's params.json. An explicit ``ffn_hidden`` is written as the ``multiple_of`` that
        reproduces it (Meta's format has no field for the width itself)."""
        multiple_of = self.multiple_of
        if self.ffn_hidden is not None:
            base = int(2 * 4 * self.dim / 3)
            candidates = [m for m in (256, 128, 64, 32, 16, 8, 4, 2, 1) if m * ((base + m - 1) // m) == self.ffn_hidden]
            if not candidates or self.ffn_dim_multiplier is not None:
                raise ValueError(f"the SwiGLU width {self.ffn_hidden} cannot be written as a Meta params.json")
            multiple_of = candidates[0]
        params = {"dim": self.dim, "multiple_of": multiple_of, "n_heads": self.n_heads,
                  "n_layers": self.n_layers, "norm_eps": self.norm_eps, "vocab_size": self.vocab_size}
        if self.ffn_dim_multiplier is not None:
            params["ffn_dim_multiplier"] = self.ffn_dim_multiplier
        if self.rope_theta != 10000.0:
            params["rope_theta"] = self.rope_theta
        return params


@dataclass(frozen=True)
class AdapterConfig:
    """The ImageBind-LLM additions to LLaMA (reference.md 4.1-4.6).

    ``query_layer`` is the number of LAST layers that receive the injected visual feature;
    ``bias_lora`` adds the fine-tune phase's bias tuning and LoRA to every layer;
    ``legacy_bridge`` selects the LayerNorm + biased-Linear bind network of ``7B-beta.pth``.
    """

    imagebind_dim: int = 1024
    query_layer: int = 32
    query_len: int = 1
    bind_blocks: int = 3
    bind_hidden_mult: int = 4  # hidden width of a bind block = mult x LLaMA dim
    legacy_bridge: bool = False
    bias_lora: bool = True
    lora_rank: int = 16
    bind_norm_eps: float = 1e-6  # RMSNorm; the legacy LayerNorm uses 1e-5
    legacy_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _positive("AdapterConfig", imagebind_dim=self.imagebind_dim, query_layer=self.query_layer,
                  query_len=self.query_len, bind_blocks=self.bind_blocks, bind_hidden_mult=self.bind_hidden_mult,
                  lora_rank=self.lora_rank)
        if self.query_len != 1:
            raise ValueError("AdapterConfig.query_len must be 1: ImageBind-LLM's injection is attention-free "
                             "(the official multi-token path is dead code)")


@dataclass(frozen=True)
class ImageBindLLMConfig:
    llama: LlamaConfig
    adapter: AdapterConfig

    def __post_init__(self) -> None:
        if self.adapter.query_layer > self.llama.n_layers:
            raise ValueError(f"AdapterConfig.query_layer ({self.adapter.query_layer}) exceeds the LLaMA's "
                             f"{self.llama.n_layers} layers")

    @property
    def injected_layers(self) -> range:
        return range(self.llama.n_layers - self.adapter.query_layer, self.llama.n_layers)


def llama_7b(vocab_size: int = 32000) -> LlamaConfig:
    """LLaMA-1 7B (Meta params.json: dim 4096, 32 layers, 32 heads, multiple_of 256, eps 1e-6)."""
    return LlamaConfig(dim=4096, n_layers=32, n_heads=32, vocab_size=vocab_size, multiple_of=256, norm_eps=1e-6)
