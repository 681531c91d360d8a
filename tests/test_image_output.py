"""Image output (reference.md 6.2): the unCLIP embedding against a hand computation on the
golden ImageBind, and Stable unCLIP generation through a tiny pipeline built from configs here
(nothing downloaded): the library, the app's handler and page events, the flags and the CLI."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import golden_media_files, golden_pipeline
from test_imagebind_golden import golden_config

from imagebind_llm import image_output as IO
from imagebind_llm.embedding import Embedder, Media
from imagebind_llm.errors import CheckpointError, InputError
from imagebind_llm.image_output import ImageGenerator, unclip_embedding
from imagebind_llm.preprocess import KIND_TO_MODALITY, PreprocessOptions, load
from imagebind_llm.visual_cache import CacheConfig, VisualCache

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def pipeline(golden):
    return golden_pipeline(golden)


@pytest.fixture(scope="module")
def files(golden):
    return golden_media_files(golden)


@pytest.fixture(scope="module")
def media(files):
    return [Media("image", files["image"], 1.0), Media("audio", files["audio"], 0.5),
            Media("point", files["point"], 0.7), Media("text", "a photo of a dog", 0.3)]


def hand_prenorm(imagebind, item: Media) -> torch.Tensor:
    """The official step 1 for one input: ImageBind on a batch of one, the head output before
    normalisation (clip-averaged)."""
    x = load(item.kind, item.value, PreprocessOptions())[None]
    with torch.inference_mode():
        return imagebind.encode(KIND_TO_MODALITY[item.kind], x, output="prenorm")[0].float()


def hand_mix(imagebind, media, point_scale=5.0) -> torch.Tensor:
    rows = [hand_prenorm(imagebind, m) / (point_scale if m.kind == "point" else 1.0) for m in media]
    total = sum(m.weight for m in media)
    return sum((m.weight / (total + 1e-6)) * row for m, row in zip(media, rows))


# ------------------------------------------------------------------------------ the embedding

def test_unclip_embedding_is_the_official_formula(pipeline, media):
    got = unclip_embedding(pipeline, media)
    expected = hand_mix(pipeline.imagebind, media)
    width = pipeline.imagebind.config.embed_dim
    assert got.shape == (1, width) and got.dtype == torch.float32
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-5)
    # Pre-normalisation outputs: not the unit embeddings the chat mixes.
    unit_mix = (torch.tensor([m.weight for m in media]) / (2.5 + 1e-6)) @ pipeline.embed(media)
    assert (got[0] - unit_mix).abs().max() > 1e-2
    # The same from an Embedder or a bare ImageBind.
    torch.testing.assert_close(unclip_embedding(pipeline.embedder, media), got)
    torch.testing.assert_close(unclip_embedding(pipeline.imagebind, media), got)


def test_point_embeddings_are_divided_by_point_scale(pipeline, files):
    point = [Media("point", files["point"])]
    raw = hand_prenorm(pipeline.imagebind, point[0])
    torch.testing.assert_close(unclip_embedding(pipeline, point)[0], raw / 5.0 / (1 + 1e-6), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unclip_embedding(pipeline, point, point_scale=1.0)[0], raw / (1 + 1e-6),
                               rtol=1e-5, atol=1e-6)
    image = [Media("image", files["image"])]  # other kinds are not scaled
    torch.testing.assert_close(unclip_embedding(pipeline, image, point_scale=1.0), unclip_embedding(pipeline, image))


def test_cache_blend_keeps_the_magnitude(pipeline, media):
    mixed = hand_mix(pipeline.imagebind, media)
    norm = mixed.norm()
    for config in (CacheConfig(), CacheConfig(size=3, temperature=5.0, weight=0.3)):
        got = unclip_embedding(pipeline, media, cache_config=config)
        blended = pipeline.cache.blend(F.normalize(mixed, dim=-1)[None], config).enhanced[0]
        torch.testing.assert_close(got[0], blended * norm, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.norm(), norm, rtol=1e-5, atol=1e-5)
    # cache= alone: that cache with the official defaults (10, 20, 0.5).
    other = VisualCache.from_vectors(torch.randn(64, mixed.shape[0], generator=torch.Generator().manual_seed(0)))
    got = unclip_embedding(pipeline.embedder, media, cache=other)
    torch.testing.assert_close(got[0], other.blend(F.normalize(mixed, dim=-1)[None]).enhanced[0] * norm,
                               rtol=1e-5, atol=1e-5)


def test_unclip_embedding_refuses_what_the_formula_cannot_do(pipeline, files):
    with pytest.raises(InputError, match="no input"):
        unclip_embedding(pipeline, [])
    with pytest.raises(InputError, match="sum to 0"):
        unclip_embedding(pipeline, [Media("text", "a cat", 1.0), Media("text", "a dog", -1.0)])
    with pytest.raises(InputError, match="no cache index"):
        unclip_embedding(Embedder(pipeline.imagebind), [Media("image", files["image"])], cache_config=CacheConfig())
    with pytest.raises(InputError, match="empty"):
        unclip_embedding(pipeline, [Media("text", "  ")])
    with pytest.raises(TypeError):
        unclip_embedding(object(), [Media("text", "a cat")])


# ------------------------------------------------------------------- a tiny Stable unCLIP pipeline

def tiny_unclip(folder: Path, width: int, *, image_encoder: bool = False, seed: int = 0):
    """A StableUnCLIPImg2ImgPipeline of a few thousand random weights, built from configs:
    16x16 images, image embeddings ``width`` wide (the UNet's class embedding projects the
    embedding and its noise-level embedding, 2 x width)."""
    pytest.importorskip("diffusers")
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    vocab["ca"], vocab["cat</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=2 * width)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, layers_per_block=1, sample_size=16)
    extractor = encoder = None
    if image_encoder:  # like the released repo, which ships a CLIP image encoder
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, projection_dim=width, num_hidden_layers=1, num_attention_heads=4, image_size=32,
            patch_size=8, intermediate_size=37))
        extractor = CLIPImageProcessor(size=32, crop_size=32)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=extractor, image_encoder=encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=width),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1),
        vae=vae)


class Spy:
    """Stands for the diffusers pipeline: records every call's arguments, then runs it."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@pytest.fixture(scope="module")
def width(pipeline):
    return pipeline.imagebind.config.embed_dim


@pytest.fixture(scope="module")
def generator(tmp_path_factory, width):
    return ImageGenerator(tiny_unclip(tmp_path_factory.mktemp("unclip"), width), progress_bar=False)


@pytest.fixture
def spy(generator, monkeypatch):
    spy = Spy(generator.pipe)
    monkeypatch.setattr(generator, "pipe", spy)
    return spy


def pixels(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image).copy())


def test_generate_passes_the_unclip_embedding_to_the_pipeline(pipeline, media, generator, spy, width):
    from PIL import Image

    embedding = unclip_embedding(pipeline, media, cache_config=CacheConfig())
    image = generator.generate(embedding, "a cat", steps=2, seed=0)
    assert isinstance(image, Image.Image) and image.size == (16, 16) and image.mode == "RGB"
    call = spy.calls[-1]
    assert torch.equal(call["image_embeds"].cpu(), embedding) and call["image_embeds"].shape == (1, width)
    assert call["prompt"] == "a cat" and call["num_inference_steps"] == 2
    assert (call["guidance_scale"], call["noise_level"]) == (10.0, 0)  # the official call's defaults
    assert "image" not in call or call["image"] is None
    # A (D,) embedding is the same one; the same seed gives the same image.
    again = generator.generate(embedding[0], "a cat", steps=2, seed=0)
    assert torch.equal(spy.calls[-1]["image_embeds"].cpu(), embedding)
    assert torch.equal(pixels(again), pixels(image))
    # The embedding conditions the image.
    other = generator.generate(unclip_embedding(pipeline, media[:1]), "a cat", steps=2, seed=0)
    assert not torch.equal(pixels(other), pixels(image))


def test_generate_defaults_and_options(generator, spy, width):
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(generator.generate).parameters.items()}
    assert (defaults["steps"], defaults["guidance"], defaults["noise_level"]) == (20, 10, 0)
    steps = []
    generator.generate(torch.randn(width), "", steps=3, guidance=1.0, noise_level=5, seed=1,
                       progress=lambda done, total: steps.append((done, total)))
    call = spy.calls[-1]
    assert (call["num_inference_steps"], call["guidance_scale"], call["noise_level"]) == (3, 1.0, 5)
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_generate_refuses_a_width_mismatch_and_bad_options(generator, width):
    with pytest.raises(InputError, match=f"features are {width + 1} wide .* conditioned on {width}-wide"):
        generator.generate(torch.randn(1, width + 1), "a cat", steps=1)
    with pytest.raises(InputError, match="one embedding"):
        generator.generate(torch.randn(2, width), "a cat", steps=1)
    with pytest.raises(InputError, match="NaN"):
        generator.generate(torch.full((width,), float("nan")), steps=1)
    with pytest.raises(InputError, match="steps"):
        generator.generate(torch.randn(width), steps=0)
    with pytest.raises(InputError, match="noise level"):
        generator.generate(torch.randn(width), steps=1, noise_level=generator.noise_levels)
    assert generator.embedding_dim == width


def test_generate_can_be_stopped(generator, width):
    import threading

    stop = threading.Event()
    done = []

    def progress(step, total):
        done.append(step)
        stop.set()  # a Stop button pressed during the first step

    with pytest.raises(IO.GenerationCancelled):
        generator.generate(torch.randn(width), steps=5, progress=progress, cancel=stop)
    assert done == [1]


def test_missing_diffusers_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(IO, "image_output_available", lambda: False)
    with pytest.raises(IO.MissingExtraError, match=r'pip install "imagebind-llm\[image\]"'):
        ImageGenerator("anything")


def test_generator_from_a_local_folder(tmp_path, width):
    pytest.importorskip("diffusers")
    folder = tmp_path / "sd-unclip"
    tiny_unclip(tmp_path / "parts", width, image_encoder=True).save_pretrained(folder)
    generator = ImageGenerator(str(folder), device="cpu", progress_bar=False)
    assert isinstance(generator.pipe.image_encoder, IO._NoImageEncoder)  # not loaded: ImageBind replaces it
    assert generator.dtype == torch.float32 and generator.device.type == "cpu" and generator.embedding_dim == width
    assert generator.generate(torch.randn(width), "a cat", steps=1, seed=0).size == (16, 16)
    kept = ImageGenerator(folder, keep_image_encoder=True, device="cpu", progress_bar=False)
    assert type(kept.pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"

    with pytest.raises(CheckpointError, match="cannot load a Stable unCLIP pipeline"):
        ImageGenerator(str(tmp_path / "missing"), local_files_only=True)


# --------------------------------------------------------------------------------------- the app

def test_app_handler(pipeline, generator, spy):
    from imagebind_llm.app import image_handlers as IH

    items = [Media("image", str(EXAMPLES / "sunset.png"), 1.0), Media("text", "a bird", 0.5)]
    reports = []
    image = IH.generate_image(pipeline, generator, items, " a bird at sunset ", CacheConfig(),
                              IH.ImageOptions(steps=2, seed=0), progress=lambda f, desc: reports.append(desc))
    assert image.size == (16, 16)
    call = spy.calls[-1]
    assert torch.equal(call["image_embeds"].cpu(), unclip_embedding(pipeline, items, cache_config=CacheConfig()))
    assert call["prompt"] == "a bird at sunset" and call["num_inference_steps"] == 2
    assert reports[0].startswith("Reading and encoding 2 inputs") and "step 2 of 2" in reports[-1]
    with pytest.raises(InputError, match="no input"):
        IH.generate_image(pipeline, generator, [], "x")


def test_image_options():
    from imagebind_llm.app import image_handlers as IH

    assert IH.make_image_options() == IH.ImageOptions(20, 10.0, 0, None)
    assert IH.make_image_options(5.0, 7.5, 3.0, 42.0) == IH.ImageOptions(5, 7.5, 3, 42)
    assert IH.make_image_options(seed=-1).seed is None and IH.make_image_options(seed="").seed is None
    for bad in ({"steps": 0}, {"steps": 2.5}, {"guidance": -1}, {"noise_level": "x"}):
        with pytest.raises(InputError):
            IH.make_image_options(**bad)


def test_page_with_and_without_image_output(pipeline, generator, spy):
    pytest.importorskip("gradio")
    from PIL import Image

    from imagebind_llm.app import image_handlers as IH
    from imagebind_llm.app import image_ui, ui

    plain = ui.build_demo(pipeline, examples_dir=None)
    labels = {getattr(block, "label", None) for block in plain.blocks.values()}
    assert "Output type" not in labels and "Prompt" not in labels
    assert f"/{IH.API_NAME}" not in plain.get_api_info()["named_endpoints"]

    demo = ui.build_demo(pipeline, examples_dir=None, image_generator=generator)
    info = demo.get_api_info()["named_endpoints"]
    assert set(info) == {f"/{name}" for name in ui.API_NAMES} | {"/generate_image"}
    params = [p["parameter_name"] for p in info["/generate_image"]["parameters"]]
    assert params[:8] == ["files", "texts", "weights", "prompt", "steps", "guidance", "noise_level", "seed"]
    assert all(p["parameter_has_default"] for p in info["/generate_image"]["parameters"])
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"Output type", "Prompt", "Image out"} <= labels
    event = next(f for f in demo.fns.values() if f.api_name == "generate_image").fn
    out = list(event([{"path": str(EXAMPLES / "sunset.png")}], "a bird", "1, 0.5", "a bird at sunset", 2, 10, 0, 0,
                     True, 10, 20.0, 0.5, progress=None))
    assert isinstance(out[-1], Image.Image)
    expected = unclip_embedding(pipeline, [Media("image", str(EXAMPLES / "sunset.png")), Media("text", "a bird", 0.5)],
                                cache_config=CacheConfig())
    torch.testing.assert_close(spy.calls[-1]["image_embeds"].cpu(), expected)
    import gradio as gr

    with pytest.raises(gr.Error, match="weights sum to 0"):
        list(event(None, "a\nb", "1, -1", "", 2, 10, 0, 0, False, 10, 20.0, 0.5, progress=None))
    # The switch: in Image mode the question box gives way to the prompt (the text moves along).
    question, prompt, fusion, ask, _, row, settings, answer, image = image_ui.switch_output("Image", "a dog", "")
    assert (question.visible, prompt.visible, prompt.value, answer.visible, image.visible) == (False, True, "a dog",
                                                                                              False, True)
    assert (fusion.visible, ask.visible, row.visible, settings.visible) == (False, False, True, True)
    question, prompt, *_, answer, image = image_ui.switch_output("Text", "", "a cat")
    assert (question.visible, question.value, prompt.visible, answer.visible, image.visible) == (True, "a cat", False,
                                                                                                True, False)


def test_app_flags(tmp_path, width, monkeypatch):
    from imagebind_llm.app import image_handlers as IH
    from imagebind_llm.app.server import parse_args

    assert parse_args([], {}).unclip is None
    assert parse_args([], {"IMAGEBIND_LLM_UNCLIP": "/models/unclip"}).unclip == "/models/unclip"
    assert parse_args(["--unclip", "stabilityai/stable-diffusion-2-1-unclip"], {}).unclip.endswith("2-1-unclip")
    assert IH.load_app_generator(types.SimpleNamespace(unclip=None)) is None
    pytest.importorskip("diffusers")
    folder = tmp_path / "sd-unclip"
    tiny_unclip(tmp_path / "parts", width).save_pretrained(folder)
    args = types.SimpleNamespace(unclip=str(folder), device="cpu", dtype=None)
    assert IH.load_app_generator(args).embedding_dim == width
    other = types.SimpleNamespace(imagebind=types.SimpleNamespace(config=types.SimpleNamespace(embed_dim=width + 8)))
    with pytest.raises(InputError, match=f"features are {width + 8} wide .* conditioned on {width}-wide"):
        IH.load_app_generator(args, other)
    # A released unCLIP model of another width is refused before it is downloaded or loaded.
    monkeypatch.setattr(IH, "ImageGenerator", lambda *a, **k: pytest.fail("the unCLIP model was loaded"))
    released = types.SimpleNamespace(unclip=IO.DEFAULT_UNCLIP, device="cpu", dtype=None)
    with pytest.raises(InputError, match="features are 40 wide .* conditioned on 1024-wide"):
        IH.load_app_generator(released, types.SimpleNamespace(imagebind=types.SimpleNamespace(
            config=types.SimpleNamespace(embed_dim=40))))


# --------------------------------------------------------------------------------------- the CLI

def test_cli_image(golden, files, tmp_path, width, capsys, monkeypatch):
    pytest.importorskip("diffusers")
    from PIL import Image

    from imagebind_llm.cli import main

    folder = tmp_path / "sd-unclip"
    tiny_unclip(tmp_path / "parts", width).save_pretrained(folder)
    config = tmp_path / "imagebind.json"
    config.write_text(golden_config(golden).to_json())
    out = tmp_path / "result.png"
    model = ["--imagebind", str(golden / "imagebind" / "weights.pth"), "--imagebind-config", str(config)]
    calls = []
    original = ImageGenerator.generate

    def record(self, embedding, *args, **kwargs):
        calls.append(embedding)
        return original(self, embedding, *args, **kwargs)

    monkeypatch.setattr(ImageGenerator, "generate", record)
    assert main(["image", *model, "--image", files["image"], "--point", files["point"] + ":0.5", "--cache",
                 "--cache-index", str(golden / "cache" / "knn.index"), "--unclip", str(folder), "--steps", "2",
                 "--seed", "0", "--out", str(out), "a cat"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size == (16, 16)
    embedder = Embedder(golden_pipeline_imagebind(golden))
    expected = unclip_embedding(embedder, [Media("image", files["image"]), Media("point", files["point"], 0.5)],
                                cache=VisualCache.load(golden / "cache" / "knn.index"), cache_config=CacheConfig())
    torch.testing.assert_close(calls[-1], expected)
    with pytest.raises(SystemExit):
        main(["image", *model, "--unclip", str(folder)])  # no input
    assert main(["image", *model, "--text", "a cat", "--cache", "--unclip", str(folder)]) == 2  # no index
    assert "no visual cache index" in capsys.readouterr().err
    # The released unCLIP model wants 1024-wide features: the README command on a small model is
    # refused before gigabytes are downloaded, and an uncached model says how to fetch it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["image", *model, "--text", "a cat"]) == 2
    assert f"features are {width} wide but the unCLIP model {IO.DEFAULT_UNCLIP} is conditioned on 1024" \
        in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=f"(?s)cannot load .*hf download {IO.DEFAULT_UNCLIP}") as info:
        ImageGenerator(IO.DEFAULT_UNCLIP, device="cpu")
    assert "stacktrace" not in str(info.value)
    monkeypatch.setattr(IO, "image_output_available", lambda: False)
    assert main(["image", *model, "--text", "a cat", "--unclip", str(folder)]) == 2
    assert "imagebind-llm[image]" in capsys.readouterr().err


def golden_pipeline_imagebind(golden):
    from imagebind_llm.checkpoint import load_imagebind

    return load_imagebind(golden / "imagebind" / "weights.pth", golden_config(golden))
