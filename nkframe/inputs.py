"""Bounded decoding of untrusted JSON: what every surface that reads a document from outside
(the agent socket, the CNI plugin's stdin, the CLI's JSON options) decodes with.

Python's json module recurses once per nesting level: a document of 100,000 opening brackets
raises RecursionError deep inside the decoder (a traceback in the agent's log, a crash of the
CNI plugin), and a few hundred levels already cost stack nobody needs.  Nothing nkframe reads
nests more than a handful of levels (a policy inside an endpoint spec inside a request: ~8), so
documents are refused above :data:`MAX_DEPTH` before the decoder sees them, by a linear scan.

:class:`InputTooDeep` is a :class:`ValueError`, like the decoder's own errors, so callers that
already turn "not JSON" into their surface's error (ProtocolError code 2, CNI code 6) do the
same for it.  Stdlib only: the CNI plugin imports this on its fast path.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Deepest nesting of arrays/objects accepted.
MAX_DEPTH = 64

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


class InputTooDeep(ValueError):
    """A JSON document nests deeper than allowed."""


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings are skipped)."""
    deepest = level = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            level += 1
            if level > deepest:
                deepest = level
        else:
            level -= 1
    return deepest


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``max_depth`` (InputTooDeep)
    before decoding them.  Raises ValueError (UnicodeDecodeError, JSONDecodeError included)."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    d = depth(text)
    if d > max_depth:
        raise InputTooDeep(f"the document nests {d} levels deep; at most {max_depth} are accepted")
    return json.loads(text)
