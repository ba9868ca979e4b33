"""YAML loading that remembers where every item came from.

PyYAML's node graph carries marks; we build plain Python values from it ourselves and record the
1-based line of each mapping value and list item under its path, so validation errors raised far
from the parser can still name a line.
"""

from __future__ import annotations

from typing import Any

import yaml

from .model import PolicyError


def load_with_lines(text: str) -> tuple[Any, dict[tuple, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", (), line) from None
    lines: dict[tuple, int] = {}
    if node is None:
        return None, lines
    return _build(node, (), lines), lines


def _build(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise PolicyError(
                    f"key {key!r} appears twice", path + (key,), key_node.start_mark.line + 1
                )
            out[key] = _build(value_node, path + (key,), lines)
            # An error about the key itself (unknown field) points at the key's line.
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise PolicyError("keys must be plain scalars", (), node.start_mark.line + 1)
    # Resolve the tag the way SafeLoader would (int, bool, null, str...).
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
