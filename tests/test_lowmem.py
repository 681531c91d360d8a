"""Low-memory ImageBind (imagebind_llm/lowmem.py): lazy reading of the encoders from the
checkpoint, CPU offload of the encoders not in use, and every modality in bf16/fp16."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from test_imagebind_golden import golden_config, modality_of

from imagebind_llm.checkpoint import load_imagebind
from imagebind_llm.lowmem import EncoderResidency, enable_offload, encoder_bytes
from imagebind_llm.pipeline import Media, Pipeline


@pytest.fixture(scope="module")
def weights(golden):
    return golden / "imagebind" / "weights.pth"


@pytest.fixture(scope="module")
def config(golden):
    return golden_config(golden)


@pytest.fixture(scope="module")
def eager(weights, config):
    return load_imagebind(weights, config)


@pytest.fixture(scope="module")
def inputs(golden):
    return torch.load(golden / "imagebind" / "inputs.pt", weights_only=True)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_lazy_reads_only_what_is_used_and_equals_eager(weights, config, eager, inputs):
    lazy = load_imagebind(weights, config, lazy=True)
    assert set(lazy.residency.pending()) == set(lazy.modalities)
    assert all(set(b) == {"meta"} for b in encoder_bytes(lazy).values())  # nothing read yet
    with torch.inference_mode():
        assert_same(lazy.encode_all("vision", inputs["vision"]), eager.encode_all("vision", inputs["vision"]))
    held = encoder_bytes(lazy)
    assert set(held["vision"]) == {"cpu"}
    for name in lazy.modalities:
        if name != "vision":  # the other trunks hold no real tensors
            assert set(held[name]) == {"meta"}, name
            assert all(t.is_meta for t in lazy.encoder(name).state_dict().values()), name
    assert lazy.residency.pending() == tuple(sorted(set(lazy.modalities) - {"vision"}))
    with torch.inference_mode():  # every other modality, then vision again: exact, read once each
        for name, x in inputs.items():
            assert_same(lazy.encode_all(modality_of(name), x), eager.encode_all(modality_of(name), x))
    assert lazy.residency.pending() == ()
    assert lazy.residency.reads == {name: 1 for name in lazy.modalities}
    # Weights read inside inference mode are ordinary tensors (usable outside it).
    assert not any(p.is_inference() for p in lazy.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lazy_in_half_precision_equals_eager(weights, config, inputs, dtype):
    eager = load_imagebind(weights, config, dtype=dtype)
    lazy = load_imagebind(weights, config, dtype=dtype, lazy=True)
    assert lazy.dtype == dtype and lazy.device == torch.device("cpu")
    with torch.inference_mode():
        for name in ("vision", "audio", "point"):
            x = inputs[name]
            assert_same(lazy.encode_all(name, x), eager.encode_all(name, x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_modality_runs_in_half_precision_on_cpu(weights, config, eager, inputs, dtype):
    half = load_imagebind(weights, config, dtype=dtype)
    with torch.inference_mode():
        for name, x in inputs.items():
            got = half.encode(modality_of(name), x, output="unit")
            want = eager.encode(modality_of(name), x, output="unit")
            assert got.dtype == dtype, name
            cosine = torch.nn.functional.cosine_similarity(got.float(), want, dim=-1)
            assert cosine.min() > 0.999, name  # measured: > 0.9999


def test_lazy_reading_is_thread_safe(weights, config, eager, inputs):
    lazy = load_imagebind(weights, config, lazy=True)
    calls = []
    original = lazy.residency._read

    def slow_read(model, modality):
        calls.append(modality)
        threading.Event().wait(0.05)  # widen the window in which a second thread could read too
        original(model, modality)

    lazy.residency._read = slow_read
    with torch.inference_mode(), ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: lazy.encode_all("vision", inputs["vision"]), range(8)))
        expected = eager.encode_all("vision", inputs["vision"])
    assert calls == ["vision"]
    for out in outs:
        assert_same(out, expected)


class RecordingResidency(EncoderResidency):
    """Offload between 'cpu:0' (the "GPU") and 'cpu' with every move recorded (no GPU here)."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.names = {id(model.encoder(m)): m for m in model.modalities}
        self.moves: list[tuple[str, str]] = []
        self.on_device: set[str] = set()
        self.most_on_device = 0
        self.guard = threading.Lock()

    def _move(self, module, device):
        name = self.names[id(module)]
        with self.guard:
            self.moves.append((name, "device" if device == self.device else "storage"))
            (self.on_device.add if device == self.device else self.on_device.discard)(name)
            self.most_on_device = max(self.most_on_device, len(self.on_device))
        threading.Event().wait(0.01)
        super()._move(module, device)


def test_offload_moves_one_encoder_in_and_back(weights, config, eager, inputs):
    model = load_imagebind(weights, config)
    residency = RecordingResidency(model, device="cpu:0", storage="cpu", offload=True, dtype=torch.float32)
    model.residency = residency
    with torch.inference_mode():
        assert_same(model.encode_all("vision", inputs["vision"]), eager.encode_all("vision", inputs["vision"]))
        assert residency.moves == [("vision", "device"), ("vision", "storage")]
        assert residency.on_device == set()
        with ThreadPoolExecutor(3) as pool:  # concurrent requests of different modalities
            jobs = [pool.submit(model.encode_all, name, inputs[name]) for name in ("audio", "text", "imu") * 2]
            results = [job.result() for job in jobs]
    assert residency.most_on_device == 1  # the GPU would hold one encoder at a time
    assert residency.on_device == set()
    for name, result in zip(("audio", "text", "imu") * 2, results):
        with torch.inference_mode():
            assert_same(result, eager.encode_all(name, inputs[name]))


def test_lazy_and_offload_compose(weights, config, eager, inputs):
    model = load_imagebind(weights, config, lazy=True)
    base = model.residency
    recording = RecordingResidency(model, device="cpu:0", storage="cpu", offload=True, dtype=torch.float32)
    recording._source, recording._pending, recording._convert_to = base._source, base._pending, None
    model.residency = recording
    with torch.inference_mode():
        assert_same(model.encode_all("audio", inputs["audio"]), eager.encode_all("audio", inputs["audio"]))
    assert recording.reads == {"audio": 1}  # read first, into storage ...
    assert recording.moves == [("audio", "device"), ("audio", "storage")]  # ... then a visit to the device
    assert "vision" in recording.pending()


def test_offload_on_a_cpu_changes_nothing(weights, config):
    model = load_imagebind(weights, config)
    assert enable_offload(model, "cpu") is False
    assert model.residency is None


def test_pipeline_lazy_embeddings_equal_eager(golden, config, weights):
    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    paths = {"imagebind": weights, "imagebind_config": config,
             "llama": golden / "llama_adapter" / adapter_config["llama_type_dir"],
             "adapter": golden / "llama_adapter" / "adapter.pth",
             "tokenizer": golden / "llama_adapter" / adapter_config["tokenizer"]}
    eager = Pipeline.from_paths(**paths)
    lazy = Pipeline.from_paths(**paths, lazy=True, offload_encoders=True)  # offload: a no-op on the CPU
    image = next(p for p in sorted((golden / "preprocess" / "files").iterdir()) if p.suffix == ".jpg")
    media = [Media("image", str(image)), Media("text", "a dog")]
    assert torch.equal(lazy.embed(media), eager.embed(media))
    assert set(lazy.imagebind.residency.pending()) == set(lazy.imagebind.modalities) - {"vision", "text"}
