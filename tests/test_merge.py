"""The Open-Chinese-LLaMA merge (imagebind_llm/merge.py) on small random Meta checkpoints built
here: the official formula bit for bit, the Meta and Hugging Face outputs, named mismatches,
the download path (through huggingface_hub from a Hub endpoint on 127.0.0.1 that serves a local
folder in the hub's repository layout, with progress and the ETag checksums; and offline, from a
local Hugging Face cache), and the peak memory of a merge of a few hundred MB measured in a
fresh process."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_hub import add_to_hub_cache

from imagebind_llm import hub
from imagebind_llm.config import LlamaConfig
from imagebind_llm.errors import CheckpointError
from imagebind_llm.hub import ChecksumMismatchError
from imagebind_llm.merge import LLAMA_7B, git_blob_sha1, main, merge_delta, merge_tensor, verify_hub_blob
from imagebind_llm.presets import get_preset
from imagebind_llm.weights import llama_shapes, read_llama

CONFIG = LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=1000, multiple_of=32)
DELTA_PARAMS = {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-06, "vocab_size": -1,
                "note": "copied from the delta"}


@pytest.fixture(scope="module")
def tokenizer_file(golden):
    return golden / "llama_adapter" / "llama" / "tokenizer.model"


def random_state(config: LlamaConfig, seed: int, scale: float, dtype=torch.float16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(shape, generator=g) * scale).to(dtype) for k, shape in llama_shapes(config).items()}
    state["rope.freqs"] = torch.arange(config.head_dim // 2, dtype=torch.float32)  # LLaMA-1 files have it
    return state


def write_folder(folder, state, params, tokenizer=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(params))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, folder.parent / "tokenizer.model")  # Meta: beside the size folders
    return folder


@pytest.fixture
def llama_dir(tmp_path, tokenizer_file):
    """<tmp>/llama/{7B, 7B_chinese_delta, tokenizer.model} of a small model, float16."""
    root = tmp_path / "llama"
    base = random_state(CONFIG, 0, 0.02)
    delta = random_state(CONFIG, 1, 0.001)
    delta["rope.freqs"] = torch.full_like(delta["rope.freqs"], 99.0)  # must not be added
    write_folder(root / "7B", base, CONFIG.to_params() | {"vocab_size": -1}, tokenizer_file)
    write_folder(root / "7B_chinese_delta", delta, DELTA_PARAMS)
    return root


def expected_merge(root):
    base = torch.load(root / "7B" / "consolidated.00.pth", weights_only=True)
    delta = torch.load(root / "7B_chinese_delta" / "consolidated.00.pth", weights_only=True)
    return {k: (base[k].float() + delta[k].float()).half() for k in base if "rope" not in k}


def assert_equal_states(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.float16, key
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------
# The merge
# ---------------------------------------------------------------------------------------------


def test_merge_tensor_is_the_official_formula_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        a = (torch.randn(37, 53, generator=g) * 3).to(dtype)
        b = (torch.randn(37, 53, generator=g) * 1e-3).to(dtype)
        reference = (a.float() + b.float()).half()
        assert torch.equal(merge_tensor(a, b), reference)
        small_chunks = torch.empty(2, 100)  # chunked through a buffer smaller than the tensor
        assert torch.equal(merge_tensor(a, b, small_chunks), reference)
    with pytest.raises(CheckpointError, match="shapes"):
        merge_tensor(torch.zeros(2, 3), torch.zeros(3, 2))


def test_merge_writes_the_meta_layout_like_the_official_tool(llama_dir):
    out = llama_dir / "7B_chinese"
    report = merge_delta(llama_dir / "7B", out, llama_dir / "7B_chinese_delta", expected=None, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    merged = torch.load(out / "consolidated.00.pth", weights_only=True)
    assert_equal_states(merged, expected_merge(llama_dir))
    assert "rope.freqs" not in merged and report.skipped == ["rope.freqs"]
    assert json.loads((out / "params.json").read_text()) == DELTA_PARAMS  # copied from the delta
    assert (out / "tokenizer.model").read_bytes() == (llama_dir / "tokenizer.model").read_bytes()
    assert report.tensors == len(merged) and report.bytes == sum(v.numel() * 2 for v in merged.values())
    config, _ = read_llama(out)  # a valid base for the rest of the project
    assert config.dim == CONFIG.dim and config.vocab_size == 1000


def test_merge_also_writes_the_hugging_face_layout(llama_dir):
    out, hf = llama_dir / "7B_chinese", llama_dir / "7B_chinese-hf"
    merge_delta(llama_dir / "7B", out, llama_dir / "7B_chinese_delta", hf=hf, expected=None, progress=False)
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
    assert (hf / "tokenizer.model").is_file() and (hf / "tokenizer.json").is_file()
    meta_config, meta_state = read_llama(out)
    hf_config, hf_state = read_llama(hf)  # un-permuted back to the Meta layout
    assert hf_config.dim == meta_config.dim and hf_config.n_layers == meta_config.n_layers
    assert set(hf_state) == set(meta_state)
    assert all(torch.equal(hf_state[k], meta_state[k]) for k in meta_state)


def test_key_mismatches_name_the_keys(llama_dir):
    delta_file = llama_dir / "7B_chinese_delta" / "consolidated.00.pth"
    delta = torch.load(delta_file, weights_only=True)
    del delta["layers.1.feed_forward.w2.weight"]
    delta["layers.2.attention.wq.weight"] = torch.zeros(64, 64, dtype=torch.float16)
    torch.save(delta, delta_file)
    with pytest.raises(CheckpointError) as info:
        merge_delta(llama_dir / "7B", llama_dir / "out", llama_dir / "7B_chinese_delta", expected=None, progress=False)
    message = str(info.value)
    assert "in the base but not in the delta (1): layers.1.feed_forward.w2.weight" in message
    assert "in the delta but not in the base (1): layers.2.attention.wq.weight" in message
    assert not (llama_dir / "out" / "consolidated.00.pth").exists()


def test_shape_mismatches_name_the_tensors(llama_dir):
    delta_file = llama_dir / "7B_chinese_delta" / "consolidated.00.pth"
    delta = torch.load(delta_file, weights_only=True)
    delta["tok_embeddings.weight"] = torch.zeros(1001, 64, dtype=torch.float16)
    torch.save(delta, delta_file)
    with pytest.raises(CheckpointError, match=r"tok_embeddings.weight: base \(1000, 64\), delta \(1001, 64\)"):
        merge_delta(llama_dir / "7B", llama_dir / "out", llama_dir / "7B_chinese_delta", expected=None, progress=False)


def test_a_base_that_is_not_llama_7b_is_named(llama_dir):
    assert LLAMA_7B.hidden_dim == 11008 and LLAMA_7B.vocab_size == 32000
    with pytest.raises(CheckpointError) as info:
        merge_delta(llama_dir / "7B", llama_dir / "out", llama_dir / "7B_chinese_delta", progress=False)
    message = str(info.value)
    assert "is not Meta's LLaMA-7B" in message
    assert "dim 64 (LLaMA-7B: 4096)" in message and "layers 2 (LLaMA-7B: 32)" in message
    assert "vocabulary 1000 (LLaMA-7B: 32000)" in message
    # The same through the command line: one error line, status 1.
    assert main([str(llama_dir / "7B"), str(llama_dir / "out"), "--delta", str(llama_dir / "7B_chinese_delta"),
                 "--no-progress"]) == 1


def test_wrong_inputs_are_refused_before_anything_is_written(llama_dir, tmp_path, tokenizer_file):
    out = llama_dir / "7B_chinese"
    (out).mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="already exists"):
        merge_delta(llama_dir / "7B", out, llama_dir / "7B_chinese_delta", expected=None, progress=False)
    hf_folder = tmp_path / "hf-base"
    hf_folder.mkdir()
    (hf_folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="llama-hf-to-meta"):
        merge_delta(hf_folder, tmp_path / "o", llama_dir / "7B_chinese_delta", expected=None, progress=False)
    # Two shards: not 7B.
    two = tmp_path / "13B"
    two.mkdir()
    for name in ("consolidated.00.pth", "consolidated.01.pth", "params.json"):
        shutil.copyfile(llama_dir / "7B" / ("params.json" if name == "params.json" else "consolidated.00.pth"),
                        two / name)
    shutil.copyfile(tokenizer_file, two / "tokenizer.model")
    with pytest.raises(CheckpointError, match="2 model-parallel shards"):
        merge_delta(two, tmp_path / "o2", llama_dir / "7B_chinese_delta", expected=None, progress=False)


def test_a_tokenizer_of_another_size_is_refused(llama_dir):
    config = LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=1200, multiple_of=32)
    torch.save(random_state(config, 3, 0.02), llama_dir / "7B" / "consolidated.00.pth")
    torch.save(random_state(config, 4, 0.001), llama_dir / "7B_chinese_delta" / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="1000 pieces but the embedding has 1200 rows"):
        merge_delta(llama_dir / "7B", llama_dir / "o", llama_dir / "7B_chinese_delta", expected=None, progress=False)


# ---------------------------------------------------------------------------------------------
# The download path (a local Hugging Face cache, offline) and the command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 0)
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def test_the_delta_is_resolved_through_the_hub_cache(llama_dir, offline_hub, capsys):
    files = get_preset("imagebind-llm-7b").llama_delta
    assert [(f.repo_id, f.filename) for f in files] == [
        ("Cxxs/Open-Chinese-LLaMA", "7B_chinese_delta/consolidated.00.pth"),
        ("Cxxs/Open-Chinese-LLaMA", "7B_chinese_delta/params.json")]
    delta = llama_dir / "7B_chinese_delta"
    add_to_hub_cache(offline_hub, "Cxxs/Open-Chinese-LLaMA", {
        "7B_chinese_delta/consolidated.00.pth": (delta / "consolidated.00.pth").read_bytes(),
        "7B_chinese_delta/params.json": (delta / "params.json").read_bytes()})
    shutil.rmtree(delta)  # only the cache has it now
    # Default output: 7B_chinese beside the base (the official layout).
    assert main([str(llama_dir / "7B"), "--any-size", "--no-progress"]) == 0
    out = llama_dir / "7B_chinese"
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"--llama {out}" in printed
    assert "--preset imagebind-llm-7b" not in printed  # a merge of another size is not the released 7B
    assert json.loads((out / "params.json").read_text()) == DELTA_PARAMS
    merged = torch.load(out / "consolidated.00.pth", weights_only=True)
    base = torch.load(llama_dir / "7B" / "consolidated.00.pth", weights_only=True)
    assert set(merged) == set(base) - {"rope.freqs"} and not any(torch.equal(merged[k], base[k].half())
                                                                  for k in merged if k.startswith("layers.0.att"))


def test_a_missing_delta_says_how_to_download_it(llama_dir, offline_hub, capsys):
    assert main([str(llama_dir / "7B"), str(llama_dir / "o"), "--any-size", "--no-progress", "--offline"]) == 1
    error = capsys.readouterr().err
    assert "hf download Cxxs/Open-Chinese-LLaMA 7B_chinese_delta/params.json" in error
    assert "https://huggingface.co/Cxxs/Open-Chinese-LLaMA/resolve/main/7B_chinese_delta/" in error


def test_a_wrong_base_is_named_before_the_delta_is_downloaded(llama_dir, hub_endpoint, capsys):
    publish_delta(hub_endpoint, llama_dir)
    assert main([str(llama_dir / "7B"), str(llama_dir / "o"), "--no-progress"]) == 1  # the base is not 7B-sized
    assert "is not Meta's LLaMA-7B" in capsys.readouterr().err
    assert hub_endpoint.requests == []  # nothing was fetched


def test_the_preset_points_at_the_merge_command(tmp_path):
    from imagebind_llm.presets import load_preset_pipeline

    preset = get_preset("imagebind-llm-7b")
    assert "python -m imagebind_llm.merge /path/to/llama/7B" in preset.llama_requirement
    assert "7B_chinese" in preset.llama_requirement
    with pytest.raises(CheckpointError, match=r"--llama PATH.*python -m imagebind_llm\.merge"):
        load_preset_pipeline("imagebind-llm-7b")


# ---------------------------------------------------------------------------------------------
# The download itself: huggingface_hub against a Hub endpoint on 127.0.0.1
# ---------------------------------------------------------------------------------------------

HUB_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


class _HubHandler(BaseHTTPRequestHandler):
    """``/<owner>/<name>/resolve/<revision>/<path>`` served from ``<root>/<owner>/<name>/<path>``
    with the headers huggingface_hub reads: X-Repo-Commit, the ETag (the sha256 of an LFS file,
    as X-Linked-Etag; the git blob sha1 of a small file kept in git, as ETag) and the size.
    Files named in ``server.damage`` are sent with one byte changed (same size, same ETag)."""

    def _target(self) -> Path | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        repo, found, rest = path.strip("/").partition("/resolve/")
        if not found:
            return None
        _revision, _, filename = rest.partition("/")
        target = self.server.root / repo / filename
        return target if target.is_file() else None

    def _head(self, target: Path | None) -> bytes | None:
        self.server.requests.append((self.command, self.path))
        if target is None:
            self.send_response(404)
            self.send_header("X-Repo-Commit", HUB_COMMIT)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", HUB_COMMIT)
        if target.suffix == ".json":  # kept in git
            self.send_header("ETag", f'"{git_blob_sha1(target)}"')
        else:  # LFS
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):
        self._head(self._target())

    def do_GET(self):
        target = self._target()
        data = self._head(target)
        if data is None:
            return
        if target.name in self.server.damage:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_endpoint(tmp_path, monkeypatch):
    """A Hub endpoint over ``<tmp>/hub-repos`` (a local folder in the hub's layout), online
    mode, an empty Hugging Face cache; yields the server (``root``, ``damage``, ``requests``)."""
    from huggingface_hub import constants

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    httpd.root, httpd.damage, httpd.requests = tmp_path / "hub-repos", set(), []
    endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 0)
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def publish_delta(server, llama_dir: Path) -> Path:
    """Put the test's delta in the endpoint's folder as Cxxs/Open-Chinese-LLaMA/7B_chinese_delta/."""
    repo = server.root / "Cxxs" / "Open-Chinese-LLaMA"
    shutil.copytree(llama_dir / "7B_chinese_delta", repo / "7B_chinese_delta")
    shutil.rmtree(llama_dir / "7B_chinese_delta")
    return repo / "7B_chinese_delta"


def test_the_delta_is_downloaded_with_progress_and_checked_against_the_hub_etags(llama_dir, hub_endpoint, capfd,
                                                                                 monkeypatch):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub draws its bars on a terminal only, unless this is set
    published = publish_delta(hub_endpoint, llama_dir)
    out = llama_dir / "7B_chinese"
    assert main([str(llama_dir / "7B"), str(out), "--any-size"]) == 0  # progress bars on
    captured = capfd.readouterr()
    assert f"wrote {out}" in captured.out
    assert "consolidated.00.pth" in captured.err and "100%" in captured.err  # huggingface_hub's progress bar
    fetched = [path for method, path in hub_endpoint.requests if method == "GET"]
    assert fetched == ["/Cxxs/Open-Chinese-LLaMA/resolve/main/7B_chinese_delta/params.json",
                       "/Cxxs/Open-Chinese-LLaMA/resolve/main/7B_chinese_delta/consolidated.00.pth"]
    # In the cache, under the ETags: sha256 for the LFS weights, the git sha1 for params.json.
    snapshot = Path(hub.hub_cache_dir()) / "models--Cxxs--Open-Chinese-LLaMA" / "snapshots" / HUB_COMMIT
    weights = snapshot / "7B_chinese_delta" / "consolidated.00.pth"
    params = snapshot / "7B_chinese_delta" / "params.json"
    assert verify_hub_blob(weights) == "sha256" and verify_hub_blob(params) == "git sha1"
    assert weights.resolve().name == hashlib.sha256((published / "consolidated.00.pth").read_bytes()).hexdigest()
    assert params.resolve().name == git_blob_sha1(published / "params.json")
    merged = torch.load(out / "consolidated.00.pth", weights_only=True)
    base = torch.load(llama_dir / "7B" / "consolidated.00.pth", weights_only=True)
    delta = torch.load(published / "consolidated.00.pth", weights_only=True)
    assert all(torch.equal(merged[k], (base[k].float() + delta[k].float()).half()) for k in merged)
    assert json.loads((out / "params.json").read_text()) == DELTA_PARAMS
    # A second merge finds the delta in the cache: no new download.
    hub_endpoint.requests.clear()
    assert main([str(llama_dir / "7B"), str(llama_dir / "again"), "--any-size", "--no-progress"]) == 0
    assert not [r for r in hub_endpoint.requests if r[0] == "GET"]


@pytest.mark.parametrize("damaged", ["consolidated.00.pth", "params.json"])
def test_a_damaged_download_is_caught_by_its_etag_before_merging(llama_dir, hub_endpoint, capsys, damaged):
    publish_delta(hub_endpoint, llama_dir)
    hub_endpoint.damage.add(damaged)
    assert main([str(llama_dir / "7B"), str(llama_dir / "7B_chinese"), "--any-size", "--no-progress"]) == 1
    error = capsys.readouterr().err
    check = "git sha1" if damaged == "params.json" else "sha256"
    assert f"{damaged}: {check} mismatch" in error and "the hub's ETag" in error
    assert f"hf download Cxxs/Open-Chinese-LLaMA 7B_chinese_delta/{damaged} --force-download" in error
    assert not (llama_dir / "7B_chinese").exists()
    with pytest.raises(ChecksumMismatchError):
        verify_hub_blob(next(Path(hub.hub_cache_dir()).rglob(damaged)))


def test_a_sha256_given_by_the_preset_is_checked_too(llama_dir, hub_endpoint, monkeypatch, capsys):
    import dataclasses

    from imagebind_llm import presets

    publish_delta(hub_endpoint, llama_dir)
    preset = get_preset("imagebind-llm-7b")
    wrong = tuple(dataclasses.replace(f, sha256="0" * 64) if f.name == "params.json" else f
                  for f in preset.llama_delta)
    monkeypatch.setattr(presets, "get_preset", lambda name: dataclasses.replace(preset, llama_delta=wrong))
    assert main([str(llama_dir / "7B"), str(llama_dir / "7B_chinese"), "--any-size", "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "params.json: sha256 mismatch" in error and "expected: " + "0" * 64 in error
    assert not (llama_dir / "7B_chinese").exists()


def test_a_local_copy_is_not_a_cache_blob(llama_dir):
    assert verify_hub_blob(llama_dir / "7B_chinese_delta" / "consolidated.00.pth") is None


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------

MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import imagebind_llm.merge as merge

    def status():
        values = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
        return values

    root = Path(sys.argv[1])
    before = status()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    merge.merge_delta(root / "7B", root / "7B_chinese", root / "7B_chinese_delta", expected=None, progress=False)
    after = status()
    print(json.dumps({"before": before["VmRSS"], "peak": after["VmHWM"]}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_stays_near_one_output(tmp_path, tokenizer_file):
    """A 415 MB model (dim 1024, 16 layers): the merge's peak RSS grows by about one output
    (measured 1.1x: the output, the 23 MB work buffer and the imports of the tokenizer), where
    reading both inputs whole and adding them grows it by 3.1x."""
    config = LlamaConfig(dim=1024, n_layers=16, n_heads=16, vocab_size=1000)
    root = tmp_path / "llama"
    write_folder(root / "7B", random_state(config, 0, 0.02), config.to_params() | {"vocab_size": -1}, tokenizer_file)
    write_folder(root / "7B_chinese_delta", random_state(config, 1, 0.001), config.to_params() | {"vocab_size": -1})
    output_bytes = sum(torch.Size(s).numel() * 2 for s in llama_shapes(config).values())
    largest = max(torch.Size(s).numel() for s in llama_shapes(config).values()) * 2
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["before"]
    print(f"output {output_bytes / 1e6:.0f} MB, peak RSS growth {growth / 1e6:.0f} MB "
          f"({growth / output_bytes:.2f}x), largest tensor {largest / 1e6:.1f} MB")
    assert output_bytes > 300e6
    assert growth < output_bytes + 8 * largest + 80e6, (growth, output_bytes)  # about 1x + one tensor, not 3x
    assert growth < 1.35 * output_bytes
    merged = torch.load(root / "7B_chinese" / "consolidated.00.pth", weights_only=True, mmap=True)
    assert len(merged) == len(llama_shapes(config))
