"""Smoke test of bench/encoders.py: the quick run on two modalities prints a table with their rows."""

from __future__ import annotations

import json
import re

from conftest import ROOT, load_script


def load_bench():
    return load_script(ROOT / "bench" / "encoders.py", "bench_encoders")


def test_quick_run_prints_rows(capsys, tmp_path):
    bench = load_bench()
    out_json = tmp_path / "bench.json"
    results = bench.main(["--quick", "--modalities", "image,text", "--device", "cpu",
                          "--json", str(out_json)])
    printed = capsys.readouterr().out

    for kind in ("image", "text"):
        # preprocessing row: modality, items/s
        assert re.search(rf"^{kind}\s+[0-9.e+]+\s", printed, re.MULTILINE), printed
        # encoding rows: modality, preset, batch, dtype, items/s
        for dtype in ("float32", "bfloat16"):
            assert re.search(rf"^{kind}\s+tiny\s+1\s+{dtype}\s+[0-9.e+]+\s", printed, re.MULTILINE), printed
    assert not re.search(r"^(video|audio|depth|thermal|imu|point)\s", printed, re.MULTILINE)
    assert "bf16/fp32" in printed

    saved = json.loads(out_json.read_text())
    assert {(r["kind"], r["dtype"]) for r in saved["encode"]} == {
        (k, d) for k in ("image", "text") for d in ("float32", "bfloat16")}
    assert all(r["items_per_s"] > 0 and r["skipped"] is None for r in results["encode"])
    assert all(r["bf16_ratio"] > 0 for r in results["encode"] if r["dtype"] == "bfloat16")


def test_make_media_keeps_a_video_already_there(tmp_path):
    # a machine without ffmpeg uses a video written elsewhere (bench/gpu_prepare.sh)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"a video made elsewhere")
    items = load_bench().make_media(tmp_path, ["video", "image"])
    assert items["video"] == video and video.read_bytes() == b"a video made elsewhere"
    assert items["image"].is_file()
