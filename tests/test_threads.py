"""--threads (imagebind_llm/threads.py): parsing, the 'auto' rule, and the flag in the CLI and app."""

from __future__ import annotations

import pytest
import torch

from imagebind_llm import threads
from imagebind_llm.presets import build_untrained_pipeline


@pytest.fixture(scope="module")
def pipeline():
    return build_untrained_pipeline()


@pytest.mark.parametrize("value, expected", [(None, "auto"), ("", "auto"), ("auto", "auto"),
                                             (" AUTO ", "auto"), ("1", 1), ("4", 4), (3, 3)])
def test_parse(value, expected):
    assert threads.parse_threads(value) == expected


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two", "2x"])
def test_bad_values_are_named(value):
    with pytest.raises(ValueError, match=f"whole number of at least 1, got {value!r}"):
        threads.parse_threads(value)


@pytest.mark.parametrize("times, expected", [({1: 0.0130, 2: 0.0114}, 1),  # 14 % faster: not worth it
                                              ({1: 0.0200, 2: 0.0100}, 2),   # twice as fast: kept
                                              ({1: 0.0100, 2: 0.0120}, 1)])
def test_auto_keeps_the_fewest_threads_within_a_quarter_of_the_fastest(pipeline, monkeypatch, times,
                                                                        expected):
    monkeypatch.setattr(threads, "_probe_seconds", lambda p, steps: times[torch.get_num_threads()])
    chosen, timings = threads.choose_threads(pipeline, candidates=[1, 2])
    assert chosen == expected and torch.get_num_threads() == expected
    assert timings == times


def test_the_probe_runs_the_model_and_the_encoder(pipeline):
    torch.set_num_threads(2)
    chosen, timings = threads.choose_threads(pipeline, candidates=[1, 2], repeats=1)
    assert chosen in (1, 2) and set(timings) == {1, 2} and all(t > 0 for t in timings.values())


def test_apply(pipeline, monkeypatch):
    assert threads.apply_threads(pipeline, "1") == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "PROBE_MAX_BYTES", 0)  # a model too large to time: the default stays
    assert threads.apply_threads(pipeline, "auto") == 2 and torch.get_num_threads() == 2


def test_the_flag(capsys):
    from imagebind_llm.app.server import parse_args
    from imagebind_llm.cli import build_parser

    assert parse_args([]).threads == "auto"
    assert parse_args(["--threads", "2"]).threads == 2
    assert parse_args([], {"IMAGEBIND_LLM_THREADS": "1"}).threads == 1
    assert build_parser().parse_args(["chat", "--threads", "3", "hello"]).threads == 3
    with pytest.raises(SystemExit):
        parse_args(["--threads", "none"])
    assert "--threads: threads must be 'auto' or a whole number" in capsys.readouterr().err
