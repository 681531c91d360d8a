"""Smoke test of bench/toyworld.py: a tiny world, two steps per case, a row per training step."""

from __future__ import annotations

import json
import re

from conftest import ROOT, load_script


def test_tiny_run_prints_a_row_per_training_step(capsys, tmp_path):
    bench = load_script(ROOT / "bench" / "toyworld.py", "bench_toyworld")
    results = bench.main(["--steps", "2", "--repeats", "1", "--scenes", "24", "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    for step in ("vision", "bind", "llama"):
        assert re.search(rf"^{step}\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+x$", printed, re.MULTILINE), printed
        assert results[step]["fp32"] > 0 and results[step]["bf16"] > 0
    assert json.loads((tmp_path / "r.json").read_text()) == results
