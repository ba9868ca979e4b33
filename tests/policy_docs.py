"""The examples of docs/policy.md as data: each ```yaml policy=NAME block and the rows of the
tables headed ``| example | direction | packet | verdict |``.

Packet syntax in a row: ``PROTO SRC[:PORT] -> DST[:PORT] [first-fragment|later-fragment]``
(IPv6 addresses in brackets when a port follows), or ``arp``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from nkframe_policy import Direction, Policy
from nkframe_policy import packet as pk

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
PROTOS = {"tcp": 6, "udp": 17}
_BLOCK = re.compile(r"^```yaml policy=(\S+)\n(.*?)^```", re.S | re.M)
_HEADER = "| example | direction | packet | verdict |"


def policies(text: str | None = None) -> dict[str, Policy]:
    text = DOC.read_text() if text is None else text
    return {name: Policy.from_yaml(body) for name, body in _BLOCK.findall(text)}


def _endpoint(s: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[(.+)\]:(\d+)", s) or re.fullmatch(r"([^:\[\]]+):(\d+)", s)
    if m:
        return m.group(1), int(m.group(2))
    return s.strip("[]"), 0


def build(spec: str) -> bytes:
    words = spec.split()
    if words == ["arp"]:
        return pk.arp()
    proto, src, arrow, dst, *flags = words
    assert arrow == "->", spec
    (sip, sport), (dip, dport) = _endpoint(src), _endpoint(dst)
    version = ipaddress.ip_address(sip).version
    number = PROTOS.get(proto) or (1 if version == 4 else 58)
    return pk.build(sip, dip, number, sport=sport, dport=dport,
                    first_fragment="first-fragment" in flags,
                    later_fragment="later-fragment" in flags)


def rows(text: str | None = None) -> list[tuple[str, Direction, str, str]]:
    text = DOC.read_text() if text is None else text
    out = []
    in_table = False
    for line in text.splitlines():
        if line.strip() == _HEADER:
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                in_table = False
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set(cells[0]) <= {"-"}:
                continue
            name, direction, spec, want = cells
            out.append((name, Direction(direction), spec, want))
    return out
