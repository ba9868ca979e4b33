"""YAML loading that remembers where every item came from.

PyYAML's node graph carries marks; we build plain Python values from it ourselves and record the
1-based line of each mapping value and list item under its path, so validation errors raised far
from the parser can still name a line.
"""

from __future__ import annotations

from typing import Any

import yaml

from .model import PolicyError


#: Bounds on what a policy document may be: far above any real policy (10,000 rules are ~600 KB
#: of YAML and nest 4 deep), far below what would exhaust the interpreter.  A YAML alias is
#: counted each time it is used, so an alias bomb (a few lines that expand to billions of items)
#: stops at MAX_ITEMS instead of filling the memory.
MAX_BYTES = 16 << 20
MAX_DEPTH = 32
MAX_ITEMS = 1_000_000


def load_with_lines(text: str) -> tuple[Any, dict[tuple, int]]:
    if len(text) > MAX_BYTES:
        raise PolicyError(f"the policy document is {len(text)} bytes; at most {MAX_BYTES} are accepted")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise PolicyError(f"the document nests too deeply (a policy nests at most {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", (), line) from None
    lines: dict[tuple, int] = {}
    if node is None:
        return None, lines
    budget = [MAX_ITEMS]
    return _build(node, (), lines, budget), lines


def _build(node: yaml.Node, path: tuple, lines: dict[tuple, int], budget: list[int]) -> Any:
    if len(path) > MAX_DEPTH:
        raise PolicyError(f"the document nests more than {MAX_DEPTH} levels deep",
                          (), node.start_mark.line + 1)
    budget[0] -= 1
    if budget[0] < 0:
        raise PolicyError(f"the document expands to more than {MAX_ITEMS} items "
                          f"(YAML aliases count each time they are used)", (), node.start_mark.line + 1)
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise PolicyError(
                    f"key {key!r} appears twice", path + (key,), key_node.start_mark.line + 1
                )
            out[key] = _build(value_node, path + (key,), lines, budget)
            # An error about the key itself (unknown field) points at the key's line.
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), lines, budget) for i, item in enumerate(node.value)]
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
