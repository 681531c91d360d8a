"""Smoke test of bench/load.py: the quick run starts the app twice (batching off and on), drives it
with 1 and 2 gradio clients and prints a table of figures without errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?$")


def test_quick_run_prints_numbers_and_no_errors(tmp_path):
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--quick", "--json",
                          str(tmp_path / "load.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    printed = run.stdout
    assert run.returncode == 0, printed + run.stderr
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("batching  clients"))
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[header + 1])]  # the columns
    columns = [lines[header][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[header + 2:]:
        cells = [line[a:b].strip() for a, b in spans]
        if cells[0] not in ("off", "on"):
            break
        rows[(cells[0], int(cells[1]))] = dict(zip(columns, cells))
    assert set(rows) == {("off", 1), ("off", 2), ("on", 1), ("on", 2)}, printed
    for (_, clients), row in rows.items():
        assert int(row["requests"]) == 2 * clients and int(row["errors"]) == 0 and int(row["tokens"]) > 0, printed
        for name in ("tok/ans", "wall s", "tokens/s", "p50 s", "p95 s", "TTFT p50", "TTFT p95", "app CPU s",
                     "tokens/app CPU s"):  # the figures are numbers
            value = row[name]
            assert NUMBER.match(value) and float(value) > 0, (name, printed)
    assert re.search(r"^errors: 0$", printed, re.MULTILINE), printed
    assert re.search(r"scaling, batching on: 2 clients / 1 client = [0-9.]+x", printed), printed
    assert re.search(r"CPU bound, batching on: 1 client kept [0-9.]+ of [0-9]+ cores busy", printed), printed
    saved = json.loads((tmp_path / "load.json").read_text())
    assert len(saved["phases"]) == 4 and all(p["errors"] == 0 for p in saved["phases"])


def test_the_cpu_ceiling_is_the_cores_over_what_one_client_keeps_busy():
    load = load_script(ROOT / "bench" / "load.py", "bench_load")
    one = load.PhaseResult("on", 1, wall_s=2.0, app_cpu_s=1.5, client_cpu_s=0.9)  # 1.2 cores busy
    assert abs(load.busy_cores(one) - 1.2) < 1e-9
    assert abs(load.cpu_ceiling(one, cores=2, clients=8) - 2 / 1.2) < 1e-9
    assert load.cpu_ceiling(one, cores=64, clients=8) == 8.0  # never more than the clients
    attached = load.PhaseResult("as served", 1, wall_s=2.0)  # --url: the app's CPU is unknown
    assert load.busy_cores(attached) is None and load.cpu_ceiling(attached, 2, 8) is None


def test_the_clients_message_reader_sleeps_at_most_five_milliseconds(monkeypatch):
    import time

    import gradio_client.utils

    monkeypatch.setattr(gradio_client.utils, "time", time)  # put back after the test
    load = load_script(ROOT / "bench" / "load.py", "bench_load")
    load.prompt_client_reads()
    shim = gradio_client.utils.time
    assert shim is not time and shim.perf_counter is time.perf_counter  # the rest of the module as it is
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    shim.sleep(0.05)  # what its reader sleeps when no message is waiting
    shim.sleep(0.001)
    assert slept == [load.CLIENT_READ_S, 0.001] and load.CLIENT_READ_S == 0.005


def test_a_random_language_model_of_the_given_shape_is_served(tmp_path):
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--quick", "--batching", "on",
                          "--random-llm", "128,3", "--json", str(tmp_path / "load.json")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "random language model 128 wide, 3 layers" in run.stdout
    saved = json.loads((tmp_path / "load.json").read_text())
    assert len(saved["phases"]) == 2 and all(p["errors"] == 0 and p["tokens"] > 0 for p in saved["phases"])


def test_random_model_shapes_are_checked():
    load = load_script(ROOT / "bench" / "load.py", "bench_load")
    assert load.parse_args(["--random-llm", "256,2"]).random_llm == (256, 2)
    for wrong in (["--random-llm", "100,2"], ["--random-llm", "256"], ["--random-llm", "256,2", "--preset", "toyworld"]):
        try:
            load.parse_args(wrong)
        except SystemExit:
            continue
        raise AssertionError(f"{wrong} was accepted")


def test_the_random_model_files_load_as_a_pipeline(tmp_path):
    common = load_script(ROOT / "bench" / "common.py", "bench_common")
    files = common.write_random_llm(tmp_path, 128, 3)
    from imagebind_llm.cli import imagebind_config
    from imagebind_llm.pipeline import Pipeline

    pipeline = Pipeline.from_paths(imagebind=files["imagebind"], imagebind_config=imagebind_config(str(files["imagebind_config"])),
                                   llama=files["llama"], adapter=files["adapter"], tokenizer=files["tokenizer"])
    llama = pipeline.model.config.llama
    assert (llama.dim, llama.n_layers, llama.n_heads) == (128, 3, 2)
    assert llama.vocab_size == pipeline.tokenizer.n_words
    assert pipeline.model.config.adapter.query_layer <= 3
