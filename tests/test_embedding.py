"""The embedding API: files of every kind -> ImageBind embeddings, against the official outputs
of golden/e2e (raw files through the official loaders and the golden ImageBind)."""

from __future__ import annotations

import json

import pytest
import torch

from imagebind_llm.checkpoint import load_imagebind
from imagebind_llm.embedding import Embedder
from imagebind_llm.errors import InputError
from imagebind_llm.preprocess import PreprocessOptions, guess_kind

from conftest import golden_err
from test_imagebind_golden import golden_config

# Official input names of the e2e manifest -> our input kinds.
KIND = {"Image": "image", "Video": "video", "Audio": "audio", "Point": "point", "Text": "text"}


@pytest.fixture(scope="module")
def embedder(golden):
    model = load_imagebind(golden / "imagebind" / "weights.pth", golden_config(golden))
    return Embedder(model, PreprocessOptions(mode="official"))


def e2e_sources(golden) -> dict[str, str]:
    """Official input name -> its source (a file under golden/ or a text), from the manifest."""
    manifest = json.loads((golden / "e2e" / "manifest.json").read_text())
    sources = {}
    for case in manifest["cases"]:
        for name, spec in case["inputs"].items():
            source = spec["source"]
            sources[name] = source if name == "Text" else str(golden / source)
    return sources


def test_raw_files_give_the_official_embeddings(golden, embedder):
    expected = torch.load(golden / "e2e" / "expected.pt", weights_only=True)["imagebind_embeddings"]
    sources = e2e_sources(golden)
    out = embedder.embed({KIND[name]: [source] for name, source in sources.items()})
    for name, reference in expected.items():
        assert golden_err(out.official[KIND[name]], reference) <= 1e-4, name
        unit = torch.nn.functional.normalize(reference, dim=-1)
        assert golden_err(out.unit[KIND[name]], unit) <= 1e-4, name


def test_several_items_per_kind_keep_their_order_and_batching_does_not_matter(golden, embedder):
    files = sorted((golden / "preprocess" / "files").glob("*"))
    images = [str(f) for f in files if guess_kind(f) == "image"]
    assert len(images) >= 2
    both = embedder.embed({"image": images, "text": ["a dog", "a cat", ""]})
    assert both.unit["image"].shape[0] == len(images) and both.unit["text"].shape[0] == 3
    small_batches = Embedder(embedder.model, embedder.options, batch_size=1)
    again = small_batches.embed({"image": list(reversed(images))})
    assert golden_err(again.unit["image"].flip(0), both.unit["image"]) <= 1e-5
    single = embedder.embed({"image": images[0]})  # one item, not a list
    assert golden_err(single.unit["image"][0], both.unit["image"][0]) <= 1e-5


def test_bad_input_names_the_kind_or_file(embedder, tmp_path):
    with pytest.raises(InputError, match="unknown input kind"):
        embedder.embed({"smell": ["x"]})
    with pytest.raises(InputError, match="no items"):
        embedder.embed({"image": []})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="broken.png"):
        embedder.embed({"image": [str(broken)]})


def test_guess_kind_from_names_and_content(tmp_path):
    import numpy as np

    assert guess_kind("holiday.JPG") == "image"
    assert guess_kind("clip.webm") == "video"
    assert guess_kind("song.flac") == "audio"
    assert guess_kind("chair.glb") == "point"
    assert guess_kind("kitchen_depth.png") == "depth"
    assert guess_kind("street.thermal.jpg") == "thermal"
    assert guess_kind("walk.csv") == "imu"
    assert guess_kind("notes.docx") is None
    for shape, kind in (((8192, 3), "point"), ((6, 2000), "imu"), ((2000, 6), "imu"), ((240, 320), "depth")):
        path = tmp_path / f"array_{shape[0]}x{shape[1]}.npy"
        np.save(path, np.zeros(shape, dtype=np.float32))
        assert guess_kind(path) == kind, shape


def test_every_kind_loads_through_the_single_entry_point(tmp_path):
    """preprocess.load works for every kind, in both modes (depth/thermal/IMU have no mode)."""
    import numpy as np
    from PIL import Image

    from imagebind_llm.preprocess import KINDS, load

    Image.fromarray((np.random.rand(64, 80) * 4000).astype(np.uint16)).save(tmp_path / "d.png")
    Image.fromarray((np.random.rand(64, 80) * 255).astype(np.uint8)).save(tmp_path / "t.png")
    Image.fromarray((np.random.rand(64, 80, 3) * 255).astype(np.uint8)).save(tmp_path / "i.png")
    np.save(tmp_path / "imu.npy", np.random.randn(6, 500).astype(np.float32))
    np.save(tmp_path / "p.npy", np.random.randn(100, 3).astype(np.float32))
    import soundfile

    soundfile.write(tmp_path / "a.wav", np.random.randn(16000).astype(np.float32) * 0.1, 16000)
    frames = (np.random.rand(8, 32, 48, 3) * 255).astype(np.uint8)
    items = {"image": tmp_path / "i.png", "depth": tmp_path / "d.png", "thermal": tmp_path / "t.png",
             "imu": tmp_path / "imu.npy", "point": tmp_path / "p.npy", "audio": tmp_path / "a.wav",
             "text": "a dog", "video": (frames, 4)}
    assert set(items) == set(KINDS)
    for mode in ("official", "corrected"):
        options = PreprocessOptions(mode=mode)
        for kind, item in items.items():
            assert load(kind, item if kind in ("text", "video") else str(item), options).numel() > 0, kind
