"""ImageBind and Point-Bind encoders against the official outputs in golden/imagebind/."""

from __future__ import annotations

import json
import re

import pytest
import torch

from imagebind_llm.checkpoint import (
    load_imagebind,
    official_to_project,
    project_to_official,
    read_state_dict,
)
from imagebind_llm.config import ImageBindConfig, PointConfig
from imagebind_llm.errors import CheckpointError

from conftest import golden_err

TOLERANCE = 1e-4  # golden README section 8


def golden_config(golden, with_point: bool = True) -> ImageBindConfig:
    meta = json.loads((golden / "imagebind" / "config.json").read_text())
    point = None
    if with_point:
        pe = meta["point_encoder"]
        point = PointConfig.from_official(pe["model_config"], pe["npoints"], pe["pc_projection_shape"][1])
    return ImageBindConfig.from_official_kwargs(meta["kwargs"], point=point)


@pytest.fixture(scope="module")
def official_state(golden):
    return read_state_dict(golden / "imagebind" / "weights.pth")


@pytest.fixture(scope="module")
def model(golden):
    return load_imagebind(golden / "imagebind" / "weights.pth", golden_config(golden))


@pytest.fixture(scope="module")
def inputs(golden):
    return torch.load(golden / "imagebind" / "inputs.pt", weights_only=True)


def modality_of(name: str) -> str:
    return "vision" if name == "video" else name  # the video input runs the vision trunk


@pytest.mark.parametrize("output_file, output", [("outputs.pt", "official"), ("outputs_prenorm.pt", "prenorm")])
def test_every_modality_matches_official(golden, model, inputs, output_file, output):
    expected = torch.load(golden / "imagebind" / output_file, weights_only=True)
    assert set(expected) == set(inputs)
    with torch.no_grad():
        for name, x in inputs.items():
            got = model.encode(modality_of(name), x, output=output)
            assert got.shape == expected[name].shape, name
            assert golden_err(got, expected[name]) <= TOLERANCE, name


def test_unit_output_is_normalised_official(golden, model, inputs):
    expected = torch.load(golden / "imagebind" / "outputs.pt", weights_only=True)
    with torch.no_grad():
        for name, x in inputs.items():
            unit = model.encode(modality_of(name), x, output="unit")
            assert golden_err(unit, torch.nn.functional.normalize(expected[name], dim=-1)) <= TOLERANCE
            assert torch.allclose(unit.norm(dim=-1), torch.ones(len(unit)), atol=1e-5)


def test_batch_of_one_equals_row_of_batch(model, inputs):
    with torch.no_grad():
        for name, x in inputs.items():
            both = model.encode(modality_of(name), x)
            first = model.encode(modality_of(name), x[:1])
            assert golden_err(first[0], both[0]) <= 1e-5, name


def test_an_image_equals_its_frame_repeated_as_a_clip(model, inputs):
    """Images skip the repeat: the time-summed kernel must give the clip's tokens and gradients."""
    image = inputs["vision"][:2]
    assert image.ndim == 4
    clip = image.unsqueeze(2).expand(-1, -1, model.vision.config.frames, -1, -1).contiguous()
    outputs, grads = [], []
    for x in (image, clip):
        model.vision.patch_embed.grad = None
        out = model.vision(x)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(model.vision.patch_embed.grad.clone())
    model.zero_grad(set_to_none=True)
    assert golden_err(outputs[0], outputs[1]) <= 1e-5
    assert golden_err(grads[0], grads[1]) <= 1e-5


def test_text_runs_only_up_to_the_last_pooled_token(model, inputs):
    """The causal text trunk skips the padding after the longest caption's end token: the
    same embeddings as the full context, from a shorter sequence."""
    tokens = inputs["text"]
    assert model.text.config.trunk.causal
    lengths = []
    hook = model.text.trunk.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            got = model.text(tokens)
    finally:
        hook.remove()
    assert lengths == [int(tokens.argmax(-1).max()) + 1] and lengths[0] < tokens.shape[1]
    with torch.no_grad():  # the full context, written out
        x = model.text.trunk(model.text.token_embed(tokens) + model.text.pos_embed)
        full = model.text.head(x[torch.arange(len(tokens)), tokens.argmax(-1)])
    assert golden_err(got, full) <= 1e-5


def test_original_imagebind_checkpoint_without_point_keys(golden, official_state, inputs):
    """imagebind_huge.pth has no point keys: it loads without the point branch and gives the
    original ImageBind outputs."""
    original = {k: v for k, v in official_state.items()
                if not k.startswith(("point_trunk.", "modality_heads.point.", "modality_postprocessors.point."))}
    model = load_imagebind(original, golden_config(golden))
    assert "point" not in model.modalities
    expected = torch.load(golden / "imagebind" / "outputs_original_imagebind.pt", weights_only=True)
    with torch.no_grad():
        for name, reference in expected.items():
            assert golden_err(model.encode(modality_of(name), inputs[name]), reference) <= TOLERANCE, name
    with pytest.raises(ValueError, match="no 'point' branch"):
        model.encode("point", inputs["point"])


def test_point_keys_required_when_point_is_used(golden, official_state):
    original = {k: v for k, v in official_state.items() if not k.startswith("point_trunk.")}
    with pytest.raises(CheckpointError) as error:
        load_imagebind(original, golden_config(golden), with_point=True)
    message = str(error.value)
    assert re.search(r"missing keys \(\d+\): point_trunk\.", message)
    assert "point-cloud branch" in message and "another ImageBind size" not in message


def test_a_checkpoint_of_another_size_gets_a_short_error_naming_the_file(golden, official_state, tmp_path):
    """Hundreds of keys miss when the config is not the checkpoint's: the error names the file,
    lists a few keys with the count, and says which flag gives the config."""
    path = tmp_path / "imagebind.pth"
    torch.save({k: v for k, v in official_state.items() if k.startswith("modality_preprocessors.")}, path)
    with pytest.raises(CheckpointError) as error:
        load_imagebind(path, golden_config(golden))
    message = str(error.value)
    assert message.startswith(f"{path}: the checkpoint does not match")
    assert re.search(r"missing keys \(\d{3,}\): .*\.\.\. and \d+ more", message)
    assert "--imagebind-config FILE" in message and len(message) < 2000
    wider = {k: torch.cat([v, v]) if k.endswith("heads.vision.2.weight") else v for k, v in official_state.items()}
    with pytest.raises(CheckpointError, match="(?s)shape mismatch .*--imagebind-config FILE"):
        load_imagebind(wider, golden_config(golden))


def test_fps_start_variants(golden, model, inputs):
    variants = torch.load(golden / "imagebind" / "outputs_point_fps_start.pt", weights_only=True)["variants"]
    with torch.no_grad():
        for variant in variants:
            starts = torch.tensor(variant["start_indices"])
            got = model.encode("point", inputs["point"], point_start_indices=starts)
            assert golden_err(got, variant["output"]) <= TOLERANCE


def test_save_round_trips_to_the_official_layout(official_state, model):
    back = project_to_official(model)
    assert list(back) == list(official_state)  # same keys, same order, the text mask included
    for key, value in official_state.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key


def test_save_original_layout_drops_only_point_keys(official_state, model):
    back = project_to_official(model, include_point=False)
    assert list(back) == [k for k in official_state if "point" not in k]


def test_point_bind_checkpoint_layout(golden, official_state, model, inputs):
    """A Point-Bind (Point-BERT) checkpoint: bind.*, point_encoder.*, pc_projection, logit_scale."""
    renamed = {}
    for key, value in official_state.items():
        if key.startswith("point_trunk.point_encoder."):
            key = key.replace("point_trunk.point_encoder.", "point_encoder.", 1)
        elif key == "point_trunk.pc_projection":
            key = "pc_projection"
        elif key.startswith("modality_heads.point."):
            key = key.replace("modality_heads.point.", "bind.modality_head_point.", 1)
        elif key.startswith("modality_postprocessors.point."):
            key = key.replace("modality_postprocessors.point.", "bind.modality_postprocessor_point.", 1)
        else:
            key = "bind." + key
        renamed[key] = value
    renamed["logit_scale"] = torch.tensor(2.6592)
    loaded = load_imagebind(renamed, golden_config(golden))
    with torch.no_grad():
        assert torch.equal(loaded.encode("point", inputs["point"]), model.encode("point", inputs["point"]))


def test_wrapped_checkpoint_and_file_roundtrip(golden, official_state, model, inputs, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": project_to_official(model)}, path)
    loaded = load_imagebind(path, golden_config(golden))
    with torch.no_grad():
        assert torch.equal(loaded.encode("vision", inputs["vision"]), model.encode("vision", inputs["vision"]))


def test_unexpected_and_missing_keys_are_listed(golden, official_state):
    broken = dict(official_state)
    broken["modality_trunks.vision.blocks.99.attn.extra"] = torch.zeros(1)
    del broken["modality_heads.audio.2.weight"]
    with pytest.raises(CheckpointError) as error:
        official_to_project(broken, golden_config(golden))
    message = str(error.value)
    assert "modality_trunks.vision.blocks.99.attn.extra" in message
    assert "modality_heads.audio.2.weight" in message


def test_shape_mismatch_names_key_and_shapes(golden, official_state):
    broken = dict(official_state)
    key = "modality_heads.vision.2.weight"
    broken[key] = torch.zeros(7, 3)
    with pytest.raises(CheckpointError) as error:
        load_imagebind(broken, golden_config(golden))
    message = str(error.value)
    expected_shape = tuple(official_state[key].shape)
    assert key in message and "(7, 3)" in message and str(expected_shape) in message


def test_wrong_text_mask_is_refused(golden, official_state):
    broken = dict(official_state)
    broken["modality_preprocessors.text.mask"] = torch.zeros_like(broken["modality_preprocessors.text.mask"])
    with pytest.raises(CheckpointError, match="causal mask"):
        official_to_project(broken, golden_config(golden))


def test_corrupt_file_is_a_checkpoint_error(tmp_path, golden):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_imagebind(path, golden_config(golden))
    with pytest.raises(CheckpointError, match="not found"):
        load_imagebind(tmp_path / "missing.pth", golden_config(golden))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_and_stays_close(golden, model, inputs, dtype):
    half = load_imagebind(golden / "imagebind" / "weights.pth", golden_config(golden), dtype=dtype)
    with torch.no_grad():
        for name, x in inputs.items():
            got = half.encode(modality_of(name), x, output="unit")
            assert got.dtype == dtype
            reference = model.encode(modality_of(name), x, output="unit")
            cosine = torch.nn.functional.cosine_similarity(got.float(), reference, dim=-1)
            assert cosine.min() > 0.99, (name, cosine)


def test_huge_preset_has_the_official_sizes():
    """Parameter and state-dict entry counts of the released models (reference.md 1.1)."""
    from imagebind_llm.config import imagebind_huge
    from imagebind_llm.encoders.imagebind import ImageBind

    for with_point, params, entries in ((False, 1_200_781_057, 1311), (True, 1_223_558_401, 1476)):
        with torch.device("meta"):
            model = ImageBind(imagebind_huge(with_point=with_point))
        assert sum(p.numel() for p in model.parameters()) == params
        assert len(project_to_official(model)) == entries
