"""Smoke test of bench/memory.py: the quick run measures every small setting and the agreement."""

from __future__ import annotations

from conftest import ROOT, load_script


def load_bench():
    return load_script(ROOT / "bench" / "memory.py", "bench_memory")


def test_quick_run(capsys, tmp_path):
    bench = load_bench()
    results = bench.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "memory.json")])
    printed = capsys.readouterr().out
    rows = results["rows"]
    llama = {r["setting"]: r for r in rows if r["part"] == "LLaMA"}
    assert set(llama) == {"float32", "bfloat16", "int8 (bf16 act.)", "int4 (bf16 act.)"}
    assert all(r["peak_mib"] >= 0 and r["weights_mib"] > 0 for r in llama.values())
    # Quantised projections make the weights smaller than bfloat16, float32 the largest.
    assert llama["int4 (bf16 act.)"]["weights_mib"] < llama["int8 (bf16 act.)"]["weights_mib"] \
        < llama["bfloat16"]["weights_mib"] < llama["float32"]["weights_mib"]
    imagebind = [r for r in rows if r["part"] == "ImageBind"]
    assert len(imagebind) == 4
    eager = next(r for r in imagebind if r["setting"] == "float32" and not r["lazy"])
    lazy = next(r for r in imagebind if r["setting"] == "float32" and r["lazy"])
    assert lazy["weights_mib"] < eager["weights_mib"]  # only the vision encoder was read
    assert any(r["part"] == "recipe" for r in rows)
    modes = {r["mode"]: r for r in results["agreement"]["rows"]}
    assert set(modes) == {"int8", "int4", "float32", "lora-apart"}
    assert 0 <= modes["int8"]["identical"] <= 1 and 0 <= modes["int8"]["first_token"] <= 1
    assert "7B-shaped weights, computed" in printed and "Answer agreement" in printed
    assert (tmp_path / "memory.json").is_file()
