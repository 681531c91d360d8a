"""The README's runnable example (the shipped default model) does what the README says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_python_example_on_the_default_model_answers_as_shown(monkeypatch):
    from imagebind_llm.presets import toyworld_available

    if not toyworld_available():
        pytest.skip("the toy-world model is not installed (python -m train.toyworld --install)")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    *statements, expected = code.strip().splitlines()
    assert expected.startswith("# "), "the example ends with the answer it prints, as a comment"
    monkeypatch.chdir(ROOT)  # its paths are relative to the repository
    namespace: dict = {}
    body = "\n".join(statements)
    tree = ast.parse(body)
    last = ast.Expression(tree.body.pop().value)  # the call whose value the comment shows
    exec(compile(tree, "README.md", "exec"), namespace)
    assert repr(eval(compile(last, "README.md", "eval"), namespace)) == expected[2:]
