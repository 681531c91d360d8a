"""A small engine for explicit, invertible state-dict key maps.

A :class:`KeyRule` pairs an official key template with a project key template; placeholders
name a list of (official text, project text) choices, and ``{n}`` is a number kept as is.
The same rule maps a key both ways, so saving back to the official layout is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence


def same(*names: str) -> list[tuple[str, str]]:
    """Choices spelled the same on both sides."""
    return [(n, n) for n in names]


@dataclass(frozen=True)
class KeyRule:
    """``official`` and ``project`` are key templates; ``{name}`` placeholders take one of
    ``choices[name]`` (official text, project text), ``{n}`` a block number and ``{rest}`` any
    remainder, both kept as they are. ``project=None``
    marks an official tensor that the project derives instead of storing."""

    official: str
    project: str | None
    choices: Mapping[str, list[tuple[str, str]]] = field(default_factory=dict)

    def _regex(self, template: str, side: int) -> re.Pattern:
        pattern = ""
        for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
            pattern += re.escape(literal)
            if name == "n":
                pattern += r"(?P<n>\d+)"
            elif name == "rest":
                pattern += r"(?P<rest>.+)"
            elif name:
                options = "|".join(re.escape(c[side]) for c in self.choices[name])
                pattern += f"(?P<{name}>{options})"
        return re.compile(pattern + r"\Z")

    def match(self, key: str, side: int) -> dict[str, str] | None:
        template = self.official if side == 0 else self.project
        if template is None:
            return None
        m = self._regex(template, side).match(key)
        return None if m is None else m.groupdict()

    def render(self, values: Mapping[str, str], from_side: int) -> str | None:
        template = self.project if from_side == 0 else self.official
        if template is None:
            return None
        out = {}
        for name, value in values.items():
            if name in ("n", "rest"):
                out[name] = value
            else:
                out[name] = next(c[1 - from_side] for c in self.choices[name] if c[from_side] == value)
        return template.format(**out)


def find_rule(rules: Sequence[KeyRule], key: str, side: int) -> tuple[int, KeyRule, dict[str, str]]:
    """The first rule matching ``key`` on ``side`` (0 = official, 1 = project); KeyError if none."""
    for index, rule in enumerate(rules):
        values = rule.match(key, side)
        if values is not None:
            return index, rule, values
    raise KeyError(key)


def translate(rules: Sequence[KeyRule], key: str, side: int) -> str | None:
    _, rule, values = find_rule(rules, key, side)
    return rule.render(values, side)
