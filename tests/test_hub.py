"""Weight resolution without a network: a Hugging Face cache built in tmp_path, local files, and
URL downloads from an HTTP server on 127.0.0.1 (with Range support for resume)."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagebind_llm import hub
from imagebind_llm.errors import CheckpointError
from imagebind_llm.hub import ChecksumMismatchError, WeightsUnavailableError, resolve, resolve_preset
from imagebind_llm.presets import (
    IMAGEBIND_W3D,
    Preset,
    UnknownPresetError,
    WeightFile,
    get_preset,
    list_presets,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # assets/README.md


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_to_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT,
                     ref: str | None = "main") -> Path:
    """huggingface_hub's cache layout: blobs/<etag> holds the data, snapshots/<commit>/<filename>
    is a relative symlink to it, refs/<branch> holds the commit of the branch."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for filename, data in files.items():
        blob = repo / "blobs" / sha(data)  # the etag of an LFS file is its sha256
        blob.write_bytes(data)
        pointer = repo / "snapshots" / commit / filename
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Offline, with both caches inside tmp_path and no local-copy variables set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("IMAGEBIND_LLM_CACHE", str(tmp_path / "downloads"))
    for name in hub.ENV_OVERRIDES.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 0)  # markers for the small test files too
    (tmp_path / "hub").mkdir()
    return tmp_path


@pytest.fixture
def hash_calls(monkeypatch):
    calls = []
    real = hub._hash_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(hub, "_hash_file", counting)
    return calls


# ---------------------------------------------------------------------------------------------
# Hugging Face cache
# ---------------------------------------------------------------------------------------------


def test_resolve_finds_a_cached_file_on_main(env):
    add_to_hub_cache(env / "hub", "org/model", {"w.pth": b"weights"})
    path = resolve(WeightFile(repo_id="org/model", filename="w.pth"))
    assert path == env / "hub" / "models--org--model" / "snapshots" / COMMIT / "w.pth"
    assert path.read_bytes() == b"weights"


def test_resolve_pinned_revision_nested_name_and_explicit_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "elsewhere"
    add_to_hub_cache(cache, "org/delta", {"7B_delta/params.json": b"{}"}, commit=OTHER_COMMIT, ref=None)
    source = WeightFile(repo_id="org/delta", filename="7B_delta/params.json", revision=OTHER_COMMIT,
                        sha256=sha(b"{}"), size_bytes=2)
    path = resolve(source, cache_dir=cache)
    assert path.read_bytes() == b"{}"
    assert path.parent.name == "7B_delta"


def test_sha256_is_checked_and_a_mismatch_names_both_hashes(env):
    add_to_hub_cache(env / "hub", "org/model", {"w.pth": b"weights"})
    good = WeightFile(repo_id="org/model", filename="w.pth", sha256=sha(b"weights"))
    assert resolve(good).read_bytes() == b"weights"

    wrong = "ab" * 32
    with pytest.raises(ChecksumMismatchError) as info:
        resolve(WeightFile(repo_id="org/model", filename="w.pth", sha256=wrong))
    message = str(info.value)
    assert wrong in message and sha(b"weights") in message
    assert "w.pth" in message and "hf download org/model w.pth" in message and "--force-download" in message
    assert isinstance(info.value, CheckpointError)
    assert resolve(good).is_file()  # nothing was deleted


def test_size_mismatch(env):
    add_to_hub_cache(env / "hub", "org/model", {"w.pth": b"weights"})
    with pytest.raises(ChecksumMismatchError, match="7 bytes"):
        resolve(WeightFile(repo_id="org/model", filename="w.pth", size_bytes=8))


def test_missing_file_error_says_where_and_how(env):
    add_to_hub_cache(env / "hub", "org/model", {"w.pth": b"weights"})
    with pytest.raises(WeightsUnavailableError) as info:
        resolve(WeightFile(repo_id="org/model", filename="adapter.pth"), role="adapter")
    message = str(info.value)
    assert "org/model" in message and "adapter.pth" in message
    assert "hf download org/model adapter.pth" in message
    assert "huggingface-cli download" in message
    assert str(env / "hub" / "models--org--model" / "snapshots" / COMMIT / "adapter.pth") in message
    assert "--adapter PATH" in message and "IMAGEBIND_LLM_ADAPTER=PATH" in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(info.value, CheckpointError)


def test_missing_official_file_names_the_pinned_revision(env):
    with pytest.raises(WeightsUnavailableError) as info:
        resolve(IMAGEBIND_W3D, role="imagebind")
    message = str(info.value)
    assert ("hf download ZiyuG/ImageBind_w3D imagebind_w3D.pth --revision "
            "e9206a10f118b0790c730264e7b3aa5c324c35cb") in message
    assert "https://huggingface.co/ZiyuG/ImageBind_w3D/resolve/e9206a10f118b0790c730264e7b3aa5c324c35cb/" in message
    assert "--imagebind PATH" in message
    assert info.value.expected_path.name == "imagebind_w3D.pth"


def test_local_files_only_overrides_the_environment(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # local_files_only=True must not try the network even though the environment allows it
    with pytest.raises(WeightsUnavailableError, match="offline mode"):
        resolve(WeightFile(repo_id="org/none", filename="x.bin"), local_files_only=True)


@pytest.mark.parametrize("error_name, expected", [
    ("GatedRepoError", "is gated"),
    ("RepositoryNotFoundError", "was not found"),
    ("RemoteEntryNotFoundError", "does not exist in org/model"),
    ("LocalEntryNotFoundError", "cannot be reached"),
])
def test_hub_errors_become_clear_errors(env, monkeypatch, error_name, expected):
    import huggingface_hub
    from huggingface_hub import errors

    base = getattr(errors, error_name, None)
    if base is None:
        pytest.skip(f"this huggingface_hub has no {error_name}")

    class Fake(base):
        def __init__(self):
            Exception.__init__(self, "from the hub")

    def fail(**kwargs):
        assert kwargs["local_files_only"] is False
        raise Fake()

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(WeightsUnavailableError, match=expected) as info:
        resolve(WeightFile(repo_id="org/model", filename="w.pth"), role="cache_index")
    assert "hf download org/model w.pth" in str(info.value) and "--cache-index PATH" in str(info.value)
    assert isinstance(info.value.__cause__, Fake)


def test_the_hash_marker_avoids_hashing_again(env, hash_calls):
    repo = add_to_hub_cache(env / "hub", "org/model", {"w.pth": b"weights"})
    source = WeightFile(repo_id="org/model", filename="w.pth", sha256=sha(b"weights"))
    resolve(source)
    resolve(source)
    resolve(source)
    assert len(hash_calls) == 1
    blob = repo / "blobs" / sha(b"weights")
    assert (repo / "blobs" / (blob.name + ".sha256")).is_file()  # beside the real file, not the symlink

    # a changed file (other size and time) is hashed again, and then fails the check
    blob.write_bytes(b"weights, changed")
    os.utime(blob, ns=(1, 1))
    with pytest.raises(ChecksumMismatchError):
        resolve(source)
    assert len(hash_calls) == 2


def test_small_files_get_no_marker(env, hash_calls, monkeypatch):
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 1 << 20)
    repo = add_to_hub_cache(env / "hub", "org/model", {"w.pth": b"weights"})
    source = WeightFile(repo_id="org/model", filename="w.pth", sha256=sha(b"weights"))
    resolve(source)
    resolve(source)
    assert len(hash_calls) == 2
    assert not list((repo / "blobs").glob("*.sha256"))


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


def test_local_path_sources(env, tmp_path):
    file = tmp_path / "mine.pth"
    file.write_bytes(b"local")
    assert resolve(WeightFile(local_path=str(file), sha256=sha(b"local"))) == file
    with pytest.raises(ChecksumMismatchError):
        resolve(WeightFile(local_path=str(file), sha256="00" * 32))
    with pytest.raises(WeightsUnavailableError, match="Check the path"):
        resolve(WeightFile(local_path=str(tmp_path / "missing.pth")))


def test_package_relative_local_path(env, monkeypatch):
    # relative paths point inside the installed package, for files that ship with it; a small
    # file gets no hash marker, so nothing is written into the package
    monkeypatch.setattr(hub, "_MARKER_MIN_BYTES", 64 << 20)
    path = resolve(WeightFile(local_path="assets/bpe_simple_vocab_16e6.txt.gz", sha256=BPE_SHA256))
    assert path.is_file() and path.parent.name == "assets"
    assert not path.with_name(path.name + ".sha256").exists()
    with pytest.raises(WeightsUnavailableError, match="reinstall"):
        resolve(WeightFile(local_path="assets/not_there.pth"))


# ---------------------------------------------------------------------------------------------
# URL downloads
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.ranges.append(self.headers.get("Range"))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        if requested and server.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:  # promise the whole body, send part of it, hang up
            self.wfile.write(body[: server.cut_after])
            server.cut_after = None
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.ranges, httpd.honour_range, httpd.cut_after = {}, [], True, None
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def online(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return env


def test_url_download(online, server, hash_calls):
    server.files["/files/big.pth"] = PAYLOAD
    source = WeightFile(url=server.base + "/files/big.pth", sha256=sha(PAYLOAD), size_bytes=len(PAYLOAD))
    assert source.filename == "big.pth"
    path = resolve(source, progress=False)
    assert path == online / "downloads" / "big.pth"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("big.pth.part").exists()
    # the second time the file is used as is, with no request and no hashing (marker)
    assert resolve(source) == path
    assert server.ranges == [None]
    assert len(hash_calls) == 1


def test_url_offline_and_not_downloaded(env, server):
    server.files["/big.pth"] = PAYLOAD
    with pytest.raises(WeightsUnavailableError) as info:
        resolve(WeightFile(url=server.base + "/big.pth"), role="imagebind")
    message = str(info.value)
    assert server.base + "/big.pth" in message and "curl" in message and "--imagebind PATH" in message
    assert server.ranges == []  # offline: no request at all


def test_url_resume_from_a_partial_file(online, server):
    server.files["/big.pth"] = PAYLOAD
    part = online / "downloads" / "big.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:3000])
    path = resolve(WeightFile(url=server.base + "/big.pth", sha256=sha(PAYLOAD)), progress=False)
    assert server.ranges == ["bytes=3000-"]
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_url_interrupted_then_resumed(online, server):
    server.files["/big.pth"] = PAYLOAD
    server.cut_after = 4000
    source = WeightFile(url=server.base + "/big.pth", sha256=sha(PAYLOAD))
    with pytest.raises(WeightsUnavailableError, match="run again to resume") as info:
        resolve(source, progress=False)
    final = online / "downloads" / "big.pth"
    assert not final.exists()  # never a half file under the final name
    assert final.with_name("big.pth.part").stat().st_size == 4000
    assert "hf download" not in str(info.value) and "curl" in str(info.value)

    assert resolve(source, progress=False).read_bytes() == PAYLOAD
    assert server.ranges == [None, "bytes=4000-"]


def test_url_server_without_range_support_starts_over(online, server):
    server.files["/big.pth"] = PAYLOAD
    server.honour_range = False
    part = online / "downloads" / "big.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    path = resolve(WeightFile(url=server.base + "/big.pth", sha256=sha(PAYLOAD)), progress=False)
    assert path.read_bytes() == PAYLOAD


def test_url_complete_part_is_finished_without_a_body(online, server):
    server.files["/big.pth"] = PAYLOAD
    part = online / "downloads" / "big.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)
    path = resolve(WeightFile(url=server.base + "/big.pth", sha256=sha(PAYLOAD)), progress=False)
    assert server.ranges == [f"bytes={len(PAYLOAD)}-"]  # answered 416
    assert path.read_bytes() == PAYLOAD


def test_url_checksum_failure_keeps_the_part_and_no_final_file(online, server):
    server.files["/big.pth"] = PAYLOAD
    wrong = "cd" * 32
    with pytest.raises(ChecksumMismatchError) as info:
        resolve(WeightFile(url=server.base + "/big.pth", sha256=wrong), progress=False)
    message = str(info.value)
    assert wrong in message and sha(PAYLOAD) in message and "big.pth.part" in message
    final = online / "downloads" / "big.pth"
    assert not final.exists()
    assert final.with_name("big.pth.part").read_bytes() == PAYLOAD


def test_url_not_found(online, server):
    with pytest.raises(WeightsUnavailableError, match="404") as info:
        resolve(WeightFile(url=server.base + "/nothing.pth"), progress=False)
    assert server.base + "/nothing.pth" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Registry and presets
# ---------------------------------------------------------------------------------------------


def test_get_preset_and_unknown_names():
    assert {"imagebind-llm-7b", "imagebind-llm-7b-beta"} <= set(list_presets())
    stable, beta = get_preset("imagebind-llm-7b"), get_preset("imagebind-llm-7b-beta")
    assert stable.adapter.filename == "7B.pth" and stable.llama_type == "7B_chinese" and not stable.legacy_bridge
    assert [f.filename for f in stable.llama_delta] == ["7B_chinese_delta/consolidated.00.pth",
                                                        "7B_chinese_delta/params.json"]
    assert beta.adapter.filename == "7B-beta.pth" and beta.llama_type == "7B" and beta.legacy_bridge
    assert stable.imagebind.revision == "e9206a10f118b0790c730264e7b3aa5c324c35cb"
    assert stable.imagebind_config == "imagebind_huge"

    with pytest.raises(UnknownPresetError) as info:
        get_preset("imagebind-llm-7b-bta")
    message = str(info.value)
    for name in list_presets():
        assert name in message
    assert "Did you mean 'imagebind-llm-7b-beta'" in message
    # The names a new user means most often are the shipped ones, which are not registered downloads.
    message = str(pytest.raises(UnknownPresetError, get_preset, "toyword").value)
    assert "tiny-untrained" in message and "Did you mean 'toyworld'" in message
    assert isinstance(info.value, ValueError)


def test_weight_file_validation():
    with pytest.raises(ValueError, match="exactly one source"):
        WeightFile(repo_id="a/b", filename="x", url="https://example.org/x")
    with pytest.raises(ValueError, match="exactly one source"):
        WeightFile()
    with pytest.raises(ValueError, match="64 hex"):
        WeightFile(repo_id="a/b", filename="x", sha256="123")
    with pytest.raises(ValueError, match="owner/name"):
        WeightFile(repo_id="ab", filename="x")
    assert WeightFile(repo_id="a/b", filename="x", sha256="AB" * 32).sha256 == "ab" * 32
    assert WeightFile(url="https://dl.example.org/a/imagebind_huge.pth").filename == "imagebind_huge.pth"
    with pytest.raises(ValueError, match="ImageBind config"):
        Preset(name="x", description="", imagebind=IMAGEBIND_W3D, adapter=IMAGEBIND_W3D, llama_type="7B",
               llama_requirement="", imagebind_config="imagebind_giant")


def test_resolve_preset_with_local_copies(env, monkeypatch, tmp_path):
    add_to_hub_cache(env / "hub", "org/ib", {"ib.pth": b"ib"})
    preset = Preset(name="test-preset", description="", llama_type="7B", llama_requirement="LLaMA-7B",
                    imagebind=WeightFile(repo_id="org/ib", filename="ib.pth"),
                    adapter=WeightFile(repo_id="org/adapter", filename="adapter.pth"),
                    cache_index=WeightFile(repo_id="org/knn", filename="knn.index"))
    with pytest.raises(WeightsUnavailableError, match="--adapter PATH"):
        resolve_preset(preset)

    adapter = tmp_path / "my_adapter.pth"
    adapter.write_bytes(b"a")
    files = resolve_preset(preset, overrides={"adapter": adapter})
    assert files.imagebind.read_bytes() == b"ib" and files.adapter == adapter and files.cache_index is None

    monkeypatch.setenv("IMAGEBIND_LLM_ADAPTER", str(adapter))
    assert resolve_preset(preset).adapter == adapter
    with pytest.raises(WeightsUnavailableError, match="--cache-index PATH"):
        resolve_preset(preset, cache_index=True)
    with pytest.raises(WeightsUnavailableError, match="from --imagebind"):
        resolve_preset(preset, overrides={"imagebind": tmp_path / "nope.pth"})
    with pytest.raises(ValueError, match="unknown override"):
        resolve_preset(preset, overrides={"llama": "x"})


@pytest.mark.parametrize("fields, match", [
    ({}, r"exactly one source .*got none"),
    ({"repo_id": "org/model", "filename": "w.pth", "url": "https://example.org/w.pth"}, "got repo_id, url"),
    ({"repo_id": "model", "filename": "w.pth"}, "repo_id must look like 'owner/name', got 'model'"),
    ({"repo_id": "org/", "filename": "w.pth"}, "repo_id must look like 'owner/name'"),
    ({"repo_id": "org/model"}, "WeightFile for org/model needs a filename"),
    ({"url": "ftp://example.org/w.pth"}, r"url must be an http\(s\) URL"),
    ({"url": "https://example.org/"}, "cannot take a file name from"),
    ({"local_path": "w.pth", "revision": "main"}, "revision only applies to Hugging Face hub files"),
    ({"local_path": "w.pth", "sha256": "abc"}, "sha256 must be 64 hex digits, got 'abc'"),
    ({"local_path": "w.pth", "size_bytes": -1}, "size_bytes must be >= 0, got -1"),
])
def test_a_weight_file_that_cannot_be_fetched_is_refused_when_declared(fields, match):
    """For people who declare their own presets: mistakes fail at declaration, not at download."""
    with pytest.raises(ValueError, match=match):
        WeightFile(**fields)


def test_weight_file_names_and_digests_are_normalised():
    assert WeightFile(url="https://example.org/files/7B.pth?download=1").filename == "7B.pth"
    assert WeightFile(local_path="w.pth", sha256="AB" * 32).sha256 == "ab" * 32


def test_a_preset_of_its_own_is_registered_once(monkeypatch):
    from imagebind_llm import presets

    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))
    mine = Preset(name="my-adapter", description="mine", imagebind=IMAGEBIND_W3D,
                  adapter=WeightFile(repo_id="me/my-adapter", filename="adapter.pth"), llama_type="7B",
                  llama_requirement="LLaMA-7B")
    assert presets.register_preset(mine) is mine and get_preset("my-adapter") is mine
    with pytest.raises(ValueError, match="a preset named 'my-adapter' is already registered"):
        presets.register_preset(mine)
    assert presets.register_preset(mine, overwrite=True) is mine
    with pytest.raises(ValueError, match="preset names are lower-case letters"):
        Preset(name="My Adapter", description="", imagebind=IMAGEBIND_W3D, adapter=mine.adapter, llama_type="7B",
               llama_requirement="")
    with pytest.raises(ValueError, match="unknown ImageBind config 'imagebind_giant'; known: "):
        Preset(name="x", description="", imagebind=IMAGEBIND_W3D, adapter=mine.adapter, llama_type="7B",
               llama_requirement="", imagebind_config="imagebind_giant")
