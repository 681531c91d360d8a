"""Raw files -> generated text through the whole Pipeline, against golden/e2e (official
ImageBind-LLM on the small random-weight models: every case, cache on and off)."""

from __future__ import annotations

import json

import pytest
import torch

from imagebind_llm.generation import GenerationConfig
from imagebind_llm.pipeline import Media, Pipeline, Settings
from imagebind_llm.preprocess import PreprocessOptions
from imagebind_llm.prompts import format_prompt
from imagebind_llm.visual_cache import CacheConfig

from conftest import golden_err
from test_imagebind_golden import golden_config

KIND = {"Image": "image", "Video": "video", "Audio": "audio", "Point": "point", "Text": "text"}


@pytest.fixture(scope="module")
def manifest(golden):
    return json.loads((golden / "e2e" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def pipeline(golden, manifest):
    model = manifest["model"]
    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    return Pipeline.from_paths(
        imagebind=golden / "imagebind" / "weights.pth", imagebind_config=golden_config(golden),
        llama=golden / model["llama_ckpt_dir"], adapter=golden / model["adapter"].split(" ")[0],
        tokenizer=golden / "llama_adapter" / adapter_config["tokenizer"], cache=golden / "cache" / "knn.index",
        preprocess=PreprocessOptions(mode="official"), name="golden")


def test_prompt_is_the_official_template(manifest):
    assert format_prompt(*manifest["prompt_from"]["args"]) == manifest["prompt"]


def test_every_case(golden, manifest, pipeline):
    expected = {r["name"]: r for r in torch.load(golden / "e2e" / "expected.pt", weights_only=True)["results"]}
    call = manifest["generate_call"]
    prompt = pipeline.tokenizer.encode(manifest["prompt"])
    for case in manifest["cases"]:
        media = [Media(KIND[name], spec["source"] if name == "Text" else str(golden / spec["source"]), spec["weight"])
                 for name, spec in case["inputs"].items()]
        cache = CacheConfig(call["cache_size"], call["cache_t"], call["cache_weight"]) if case["knn"] else None
        settings = Settings(generation=GenerationConfig(max_new_tokens=call["max_gen_len"],
                                                        temperature=call["temperature"], top_p=call["top_p"]),
                            cache=cache, fusion="official")
        feature = pipeline.feature(media, settings).vector
        reference = expected[case["name"]]
        assert golden_err(feature, reference["feature_into_bind_network"][0]) <= 1e-4, case["name"]
        # (The set's stored e2e visual_query is not asserted: in the shared set it disagrees with its
        # own generated tokens, which this pipeline reproduces exactly; the bind network itself is
        # checked against llama_adapter/bind_network.pt and cache/expected.pt.)
        ids = list(pipeline.stream_ids(prompt, feature, settings))
        assert ids == case["generated_token_ids"], case["name"]
        assert pipeline.tokenizer.decode(ids) == case["decoded"]
