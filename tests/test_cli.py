"""The command line, driven through main([...]) on the golden small models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from test_hub import server  # noqa: F401  (a fixture: the HTTP server on 127.0.0.1 of the download tests)
from test_imagebind_golden import golden_config

from imagebind_llm.cli import main, parse_input
from imagebind_llm.pipeline import Pipeline
from imagebind_llm.preprocess import guess_kind


@pytest.fixture(scope="module")
def model_args(golden, tmp_path_factory):
    config_path = tmp_path_factory.mktemp("cli") / "imagebind.json"
    config_path.write_text(golden_config(golden).to_json())
    adapter_config = json.loads((golden / "llama_adapter" / "adapter_config.json").read_text())
    return ["--imagebind", str(golden / "imagebind" / "weights.pth"), "--imagebind-config", str(config_path),
            "--llama", str(golden / "llama_adapter" / adapter_config["llama_type_dir"]),
            "--adapter", str(golden / "llama_adapter" / "adapter.pth"),
            "--tokenizer", str(golden / "llama_adapter" / adapter_config["tokenizer"]),
            "--cache-index", str(golden / "cache" / "knn.index")]


@pytest.fixture(scope="module")
def files(golden):
    found = {}
    for path in sorted((golden / "preprocess" / "files").iterdir()):
        found.setdefault(guess_kind(path), str(path))
    return found


def test_parse_input_weights():
    assert (parse_input("image", "a.jpg:0.5").value, parse_input("image", "a.jpg:0.5").weight) == ("a.jpg", 0.5)
    assert parse_input("text", "a dog:-1").weight == -1.0
    assert parse_input("text", "ratio 16:9 screen").value == "ratio 16:9 screen"  # not a weight
    assert parse_input("image", "a.jpg").weight == 1.0


def test_chat_answers(model_args, files, capsys):
    assert main(["chat", *model_args, "--image", files["image"], "--audio", files["audio"] + ":0.5", "--cache",
                 "--temperature", "0", "--max-new-tokens", "8", "What is happening here?"]) == 0
    assert capsys.readouterr().out.strip()


def test_chat_every_modality_and_arithmetic(model_args, files, capsys):
    assert main(["chat", *model_args, "--video", files["video"], "--point", files["point"],
                 "--text", "a dog:-1", "--text", "a cat", "--temperature", "0", "--max-new-tokens", "4", "Hi?"]) == 0


def test_interactive_chat(model_args, files, capsys, monkeypatch):
    caches = []
    enable = Pipeline.enable_prefix_cache
    monkeypatch.setattr(Pipeline, "enable_prefix_cache", lambda self, *a: caches.append(enable(self, *a)) or caches[-1])
    printed = []
    for extra in ([], ["--prefix-cache-mb", "0"]):
        _lines_as_input(monkeypatch, [f"/image {files['image']}", "What is this?", "And what now?", "/reset",
                                      "And this?"])
        capsys.readouterr()
        assert main(["chat", *model_args, "--interactive", "--temperature", "0", "--max-new-tokens", "4", *extra]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]  # the same answers with the prefix cache (default) and without
    assert len(caches) == 1 and caches[0].stats.hits >= 1  # the second turn reused the first


def _lines_as_input(monkeypatch, lines):
    lines = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)


def test_interactive_chat_keeps_going_after_a_bad_file_or_a_stopped_answer(model_args, files, capsys, monkeypatch,
                                                                             tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    chat = Pipeline.chat
    asked = []

    def stopped_after_one_word(self, conversation, question, *args, **kwargs):
        asked.append(question)
        answer = chat(self, conversation, question, *args, **kwargs)
        if question != "Stop me.":
            yield from answer
            return
        yield next(answer)
        raise KeyboardInterrupt  # what Ctrl-C raises while the answer streams

    monkeypatch.setattr(Pipeline, "chat", stopped_after_one_word)
    _lines_as_input(monkeypatch, [f"/image {broken}", "What is this?", f"/image {files['image']}", "Stop me.",
                                  "/image", "/smell roses", "/help", "And now?"])
    assert main(["chat", *model_args, "--interactive", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "error: " in out and "broken.png" in out and "its 1 attached input was dropped: attach it again" in out
    assert "[stopped]" in out
    assert f"[image {files['image']!r} (weight 1) will go with the next question]" in out
    assert "/image needs a value" in out and "unknown command '/smell roses'; /help lists" in out
    assert out.count("'/help' shows this") == 2  # at the start and for /help
    assert asked == ["What is this?", "Stop me.", "And now?"]  # the session went on after both
    assert out.rstrip().splitlines()[-1] not in ("", "> ")  # the last question was answered


def _subcommands(parser):
    return next(action for action in parser._actions if action.dest == "command").choices


def test_every_command_line_flag_says_what_it_does():
    from imagebind_llm import cache_builder, cli

    commands = _subcommands(cli.build_parser())
    parsers = {name: commands[name] for name in ("chat", "embed", "image")}
    builder = cache_builder.build_parser()
    assert builder.prog == "python -m imagebind_llm build-cache"  # how the README runs it
    parsers |= {f"build-cache {name}": sub for name, sub in _subcommands(builder).items()}
    parsers["build-cache"] = builder
    from imagebind_llm.eval.toyworld import build_parser as toyworld_eval_parser
    from train.cli import parser as train_parser

    parsers["python -m train"] = train_parser()
    parsers["python -m imagebind_llm.eval toyworld"] = toyworld_eval_parser()
    from imagebind_llm.app.server import build_parser as app_parser

    parsers["python app.py"] = app_parser()
    from imagebind_llm.convert import build_parser as convert_parser
    from imagebind_llm.merge import build_parser as merge_parser
    from train.toyworld import build_parser as toyworld_parser

    parsers["python -m imagebind_llm.merge"] = merge_parser()
    parsers["python -m train.toyworld"] = toyworld_parser()
    parsers |= {f"python -m imagebind_llm.convert {name}": sub for name, sub in _subcommands(convert_parser()).items()}
    for name, parser in parsers.items():
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("flags, named", [
    (["--top-p", "2"], "top_p"), (["--max-new-tokens", "0"], "max_new_tokens"), (["--temperature", "-1"], "temperature"),
    (["--cache", "--cache-weight", "1.5"], "cache weight"), (["--cache", "--cache-size", "0"], "cache size"),
])
def test_settings_out_of_range_are_named_before_anything_loads(flags, named, capsys, monkeypatch):
    from imagebind_llm import cli

    monkeypatch.setattr(cli, "load_pipeline", lambda args: pytest.fail("loaded the model for unusable settings"))
    assert main(["chat", *flags, "Hi?"]) == 2
    assert named in capsys.readouterr().err
    if "--cache" in flags:
        assert main(["image", *flags, "--text", "a dog"]) == 2
        assert named in capsys.readouterr().err


def test_bad_input_is_an_error_line_not_a_traceback(model_args, capsys, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["chat", *model_args, "--image", str(broken), "Hi?"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_embed_prints_similarities_and_saves(model_args, files, tmp_path, capsys):
    out = tmp_path / "emb.pt"
    args = model_args[:4]  # ImageBind only
    assert main(["embed", *args, "--image", files["image"], "--text", "a dog", "--text", "a cat",
                 "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["unit"].shape[0] == 3 and len(saved["labels"]) == 3
    assert "text:a dog" in capsys.readouterr().out


def test_default_preset_needs_no_files(files, capsys):
    """Without model flags the small untrained preset runs (no download)."""
    assert main(["chat", "--image", files["image"], "--max-new-tokens", "3", "Hi?"]) == 0
    assert main(["--list-presets"]) == 0
    assert "tiny-untrained" in capsys.readouterr().out


def test_released_preset_without_base_llama_says_what_it_needs(golden, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["chat", "--preset", "imagebind-llm-7b", "Hi?"]) == 2
    assert "7B_chinese" in capsys.readouterr().err
    llama = golden / "llama_adapter" / "llama" / "tiny"  # a Meta folder, its tokenizer.model beside it
    assert main(["chat", "--preset", "imagebind-llm-7b", "--llama", str(llama), "Hi?"]) == 2
    error = capsys.readouterr().err
    assert "imagebind_w3D.pth" in error and "download" in error


def test_a_wrong_llama_folder_is_named_before_anything_is_downloaded(golden, capsys, monkeypatch, tmp_path):
    """A mistyped --llama must not cost the released ImageBind and adapter downloads (7 GB) first."""
    from imagebind_llm import hub

    def no_download(*args, **kwargs):
        raise AssertionError("the preset's files were resolved before --llama was checked")

    monkeypatch.setattr(hub, "resolve_preset", no_download)
    (tmp_path / "empty").mkdir()
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "params.json").write_text("{}")
    cases = {tmp_path / "missing": "LLaMA folder not found: " + str(tmp_path / "missing"),
             tmp_path / "empty": "no LLaMA weights at " + str(tmp_path / "empty"),
             golden / "llama_adapter" / "adapter.pth": "--llama must be a folder",
             tmp_path / "meta": "no tokenizer.model in " + str(tmp_path / "meta")}
    for llama, message in cases.items():
        assert main(["chat", "--preset", "imagebind-llm-7b", "--llama", str(llama), "Hi?"]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error


def test_build_cache_command_from_features(tmp_path, capsys):
    import numpy as np

    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    assert main(["build-cache", "from-features", str(features), str(tmp_path / "cache")]) == 0
    from imagebind_llm.visual_cache import VisualCache

    assert len(VisualCache.load(tmp_path / "cache")) == 64
    with pytest.raises(SystemExit):
        main(["build-cache", "--help"])
    assert "from-images" in capsys.readouterr().out


def test_chat_with_a_compressed_cache_answers_as_with_the_flat_index(model_args, files, golden, tmp_path, capsys,
                                                                     monkeypatch):
    """The README's recipe: compress the official knn.index, then pass the folder as --cache-index."""
    from imagebind_llm.visual_cache import VisualCache

    blended = []
    blend = VisualCache.blend
    monkeypatch.setattr(VisualCache, "blend",
                        lambda self, *args, **kwargs: blended.append(self.exact) or blend(self, *args, **kwargs))
    assert main(["build-cache", "--no-progress", "compress", str(golden / "cache" / "knn.index"),
                 str(tmp_path / "compact"), "--kind", "hnsw-sq8"]) == 0
    question = ["--image", files["image"], "--cache", "--temperature", "0", "--max-new-tokens", "8", "What is it?"]
    capsys.readouterr()
    assert main(["chat", *model_args, *question]) == 0
    flat = capsys.readouterr().out
    compact = [*model_args[:-1], str(tmp_path / "compact")]  # --cache-index is the last model flag
    assert model_args[-2] == "--cache-index"
    assert main(["chat", *compact, *question]) == 0
    assert capsys.readouterr().out == flat
    assert blended == [True, False]  # the flat index, then the compressed one (re-ranked to the same answer)


def test_a_released_preset_loads_from_the_hugging_face_cache_and_answers_as_its_files(
        model_args, files, golden, tmp_path, capsys, monkeypatch):
    """The path a released model takes (``--preset NAME --llama PATH``): its ImageBind, adapter and
    cache index come from the Hugging Face cache, offline, checked against their sha256; the
    answer is the one of the same files given by path."""
    import hashlib

    from test_hub import add_to_hub_cache

    from imagebind_llm import config, hub, presets

    hub_cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    for name in hub.ENV_OVERRIDES.values():
        monkeypatch.delenv(name, raising=False)
    given = dict(zip(model_args[::2], model_args[1::2]))
    weights = {}
    for role, flag, repo in (("imagebind", "--imagebind", "org/imagebind"), ("adapter", "--adapter", "org/adapter"),
                             ("cache_index", "--cache-index", "org/knn")):
        data = Path(given[flag]).read_bytes()
        filename = given[flag].rsplit("/", 1)[-1]
        add_to_hub_cache(hub_cache, repo, {filename: data})
        weights[role] = presets.WeightFile(repo_id=repo, filename=filename, sha256=hashlib.sha256(data).hexdigest(),
                                           size_bytes=len(data))
    monkeypatch.setitem(config.IMAGEBIND_PRESETS, "golden", lambda with_point=True: golden_config(golden, with_point))
    preset = presets.Preset(name="golden-release", description="the golden files as a released preset",
                            llama_type="tiny", llama_requirement="the golden tiny LLaMA", imagebind_config="golden",
                            **weights)
    monkeypatch.setitem(presets._PRESETS, preset.name, preset)
    question = ["--image", files["image"], "--cache", "--temperature", "0", "--max-new-tokens", "8", "What is it?"]

    assert main(["chat", *model_args, *question]) == 0
    by_path = capsys.readouterr().out
    assert main(["chat", "--preset", preset.name, "--llama", given["--llama"], *question]) == 0
    assert capsys.readouterr().out == by_path

    blob = next((hub_cache / "models--org--adapter" / "blobs").iterdir())  # a damaged download is named
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    assert main(["chat", "--preset", preset.name, "--llama", given["--llama"], *question]) == 2
    error = capsys.readouterr().err
    assert "adapter.pth" in error and "sha256 mismatch" in error


def test_toyworld_evaluation_command(tmp_path, capsys):
    from imagebind_llm.eval.__main__ import main as evaluate

    assert evaluate(["toyworld", "--n", "2", "--modalities", "image, audio", "--json", str(tmp_path / "r.json")]) == 0
    table = capsys.readouterr().out
    assert "image" in table and "audio" in table and "depth" not in table
    assert json.loads((tmp_path / "r.json").read_text())
    with pytest.raises(SystemExit):
        evaluate(["toyworld", "--modalities", "image,smell"])
    assert "unknown smell" in capsys.readouterr().err
    assert evaluate(["mmbench"]) == 2
    assert "unknown benchmark 'mmbench'" in capsys.readouterr().err


def test_inputs_given_as_urls_are_downloaded_and_read_like_files(model_args, files, server, capsys, monkeypatch):
    from imagebind_llm.errors import InputError
    from imagebind_llm.url_inputs import Downloads

    image = Path(files["image"])
    server.files[f"/pictures/{image.name}"] = image.read_bytes()
    url = f"{server.base}/pictures/{image.name}"
    question = ["--temperature", "0", "--max-new-tokens", "6", "What is it?"]
    assert main(["chat", *model_args, "--image", files["image"], *question]) == 0
    local = capsys.readouterr().out
    assert main(["chat", *model_args, "--image", f"{url}:1", *question]) == 0
    assert capsys.readouterr().out == local

    assert main(["chat", *model_args, "--image", f"{server.base}/missing.jpg", *question]) == 2
    assert f"{server.base}/missing.jpg: could not be downloaded (HTTP 404" in capsys.readouterr().err
    with pytest.raises(InputError, match=rf"{url}: the file is [\d,]+ bytes, over the limit of 100 bytes"):
        Downloads(max_bytes=100).fetch(url)

    _lines_as_input(monkeypatch, [f"/image {server.base}/missing.jpg", f"/image {url}", "What is it?"])
    assert main(["chat", *model_args, "--interactive", *question[:-1]]) == 0
    out = capsys.readouterr().out
    assert "error: " in out and "HTTP 404" in out and f"[image {url!r} (weight 1) will go with the next" in out


def test_the_default_models_files_can_be_replaced_and_a_missing_one_is_named(tmp_path, capsys, monkeypatch):
    """--cache-index (and --adapter, --imagebind, --llama) replace the shipped toy-world model's
    files; before, they were silently ignored for the default model."""
    from imagebind_llm.presets import TOYWORLD_DIR, toyworld_available
    from imagebind_llm.visual_cache import VisualCache

    if not toyworld_available():
        pytest.skip("the toy-world model is not installed")
    image = str(Path(__file__).parents[1] / "examples" / "toyworld" / "two_red_balls.png")
    question = ["--image", image, "--cache", "--temperature", "0", "--max-new-tokens", "8", "What are they?"]
    assert main(["chat", "--cache-index", str(tmp_path / "nowhere.index"), *question]) == 2
    assert "nowhere.index" in capsys.readouterr().err
    assert main(["build-cache", "--no-progress", "compress", str(TOYWORLD_DIR / "knn.index"),
                 str(tmp_path / "compact")]) == 0
    blended = []
    blend = VisualCache.blend
    monkeypatch.setattr(VisualCache, "blend", lambda self, *a, **k: blended.append(self.source) or blend(self, *a, **k))
    capsys.readouterr()
    assert main(["chat", *question]) == 0
    shipped = capsys.readouterr().out
    assert main(["chat", "--cache-index", str(tmp_path / "compact"), *question]) == 0
    assert capsys.readouterr().out == shipped
    assert "compact" not in str(blended[0]) and "compact" in str(blended[1])
    assert main(["chat", "--adapter", str(tmp_path / "nowhere.pth"), *question]) == 2
    assert "nowhere.pth" in capsys.readouterr().err


def test_a_download_without_a_declared_size_is_cut_at_the_limit(tmp_path, monkeypatch):
    """A server that sends no Content-Length (chunked, or a stream) is read up to the limit only."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from imagebind_llm.errors import InputError
    from imagebind_llm.url_inputs import Downloads

    class Endless(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"x" * 65536)

        def log_message(self, *args):
            pass

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/stream.wav"
        with pytest.raises(InputError, match=r"stream.wav: the download passed the limit of 1.0 MB"):
            Downloads(max_bytes=2**20).fetch(url)
        with Downloads() as downloads:  # under the default limit it is read whole, with its extension
            path = downloads.fetch(url)
            assert path.suffix == ".wav" and path.stat().st_size == 64 * 65536
        assert not path.exists()  # closing removes the folder
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_hugging_face_hub_message_is_printed_once():
    """huggingface_hub prints through its own handler and passed its messages on to the command's
    root handler too: every download retry showed twice."""
    import subprocess
    import sys

    code = ("import logging; from imagebind_llm.log_setup import setup_logging; setup_logging(); "
            "from huggingface_hub import hf_hub_download; "  # this import gives huggingface_hub its handler
            "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.count("Retrying in 1s") == 1, err
