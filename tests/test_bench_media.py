"""Smoke test of bench/media.py: the quick run (a 6 s video, 30 s of audio as WAV, MP3 and M4A)
gives the project's tensors identical to decoding everything, with figures for both."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?"


def test_quick_run_is_identical_and_prints_figures(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "media.py"), "--quick", "--json",
                          str(tmp_path / "media.json")], cwd=ROOT, capture_output=True, text=True, timeout=240)
    printed = run.stdout
    assert run.returncode == 0, printed + run.stderr
    for media in ("video 6 s 1280x720 30 fps H.264", "audio WAV 30 s", "audio MP3 30 s", "audio M4A 30 s"):
        # file MiB, project s, baseline s, speed-up, project CPU s, baseline CPU s, CPU speed-up, MiB, MiB, ratio
        row = re.search(rf"^{re.escape(media)}.*?\s({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x\s+({NUMBER})"
                        rf"\s+({NUMBER})\s+({NUMBER})x\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x\s+yes\s*$",
                        printed, re.MULTILINE)
        assert row, (media, printed)
        assert float(row.group(2)) > 0 and float(row.group(3)) > 0, printed
    saved = json.loads((tmp_path / "media.json").read_text())
    assert len(saved["rows"]) == 4 and all(r["identical"] for r in saved["rows"])
    assert saved["rows"][0]["shape"] == [15, 3, 2, 224, 224] and saved["rows"][1]["shape"] == [3, 1, 128, 204]
