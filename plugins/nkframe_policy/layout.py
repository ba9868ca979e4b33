"""Byte layouts of the policy maps: the Python side of ``bpf/include/nkframe_policy.h``.

Native byte order ('=' in struct) everywhere, as the kernel stores map keys and values; only
addresses are in network order.  ``tests/unit/test_policy_compile.py`` reads the header and
checks these numbers against it.
"""

from __future__ import annotations

import ipaddress
import struct

from . import tables

# Limits (nkframe_policy.h)
MAX_RULES_PER_ENTRY = 16
ENTRIES = 131072
TAB4_BUCKETS = 131072
TAB6_BUCKETS = 65536
BUCKET_SLOTS = tables.BUCKET_SLOTS
MAX_LENS = tables.MAX_LENS
RULE_SLOTS = 65536
MAX_ENDPOINTS = 1024
ENDPOINT_ID_LEN = 64
MAX_ADDRS = 16384
ENTRY_BITS = 24

# enum nk_policy_dir / nk_policy_action
DIR_INGRESS = 0
DIR_EGRESS = 1
ACT_ALLOW = 1
ACT_DENY = 2

PORT_UNKNOWN = 0x10000  # nkframe_common.h: NK_PORT_UNKNOWN

# enum nk_drop_reason (nkframe_common.h)
DROP_REASONS = {
    1: "policy_deny",
    2: "policy_default",
    3: "malformed",
    4: "no_route",
    5: "no_policy",
}
DROP_MAX = 8

# enum nk_policy_stat
STAT_NAMES = ("allow_rule", "allow_default", "deny_rule", "deny_default", "malformed", "non_ip")

TABLE = struct.Struct(f"=IIIIIB{MAX_LENS}s3x")  # struct nk_policy_table
HEAD_SIZE = 4 * TABLE.size  # struct nk_policy_head: t[2][2]
SLOT4 = struct.Struct("=4sI")
SLOT6 = struct.Struct("=16sI")
RULE = struct.Struct("=IIBBBB16s")  # struct nk_policy_rule
ENTRY = struct.Struct(f"=BBH{MAX_RULES_PER_ENTRY}H")  # struct nk_policy_entry
GEN = struct.Struct("=I")
COUNTER = struct.Struct("=QQ")
STATS_SIZE = 2 * len(STAT_NAMES) * COUNTER.size
SLOT_KEY = struct.Struct("=I")
ADDR_KEY = struct.Struct("=I16s")  # struct nk_policy_addr_key

assert TABLE.size == 40 and HEAD_SIZE == 160 and RULE.size == 28 and ENTRY.size == 36


def head_index(slot: int, generation: int) -> int:
    return slot * 2 + generation - 1


def family_index(version: int) -> int:
    return 0 if version == 4 else 1


def pack_table(base: int, nbuckets: int, fallback: int, first: int, count: int,
               lengths: tuple[int, ...]) -> bytes:
    if len(lengths) > MAX_LENS:
        raise ValueError(f"{len(lengths)} prefix lengths do not fit a table (max {MAX_LENS})")
    return TABLE.pack(base, nbuckets - 1, fallback, first, count, len(lengths), bytes(lengths))


def unpack_table(raw: bytes) -> dict:
    base, mask, fallback, first, count, nlens, lens = TABLE.unpack_from(raw)
    return {"base": base, "nbuckets": mask + 1, "fallback": fallback, "first": first,
            "count": count, "lengths": tuple(lens[:nlens])}


def pack_head(tables_: dict[tuple[int, int], bytes]) -> bytes:
    """``tables_[(direction number, version)]`` -> packed table; the head is t[dir][family]."""
    return b"".join(tables_[(d, v)] for d in (DIR_INGRESS, DIR_EGRESS) for v in (4, 6))


def unpack_head(raw: bytes) -> dict[tuple[int, int], dict]:
    out = {}
    for i, (d, v) in enumerate((d, v) for d in (DIR_INGRESS, DIR_EGRESS) for v in (4, 6)):
        out[(d, v)] = unpack_table(raw[i * TABLE.size:(i + 1) * TABLE.size])
    return out


def pack_bucket(version: int, slots: tuple[tuple[bytes, int, int], ...], entry_base: int) -> bytes:
    """A bucket of ``(address bytes, prefix length, entry index)`` slots, entry ids offset by
    ``entry_base``."""
    fmt = SLOT4 if version == 4 else SLOT6
    out = bytearray(fmt.size * BUCKET_SLOTS)
    for i, (addr, plen, entry) in enumerate(slots):
        fmt.pack_into(out, i * fmt.size, addr, (plen << ENTRY_BITS) | (entry_base + entry))
    return bytes(out)


def pack_rule(proto: int, action: int, port_lo: int, port_hi: int,
              cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    return RULE.pack(port_lo, port_hi, proto, action, cidr.version, cidr.prefixlen,
                     cidr.network_address.packed.ljust(16, b"\0"))


def unpack_rule(raw: bytes) -> tuple[int, int, int, int, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """-> (proto, action, port_lo, port_hi, cidr)."""
    lo, hi, proto, action, family, plen, addr = RULE.unpack_from(raw)
    if family == 4:
        cidr = ipaddress.IPv4Network((addr[:4], plen))
    else:
        cidr = ipaddress.IPv6Network((addr, plen))
    return proto, action, lo, hi, cidr


def pack_entry(default_action: int, rule_ids: list[int]) -> bytes:
    """``rule_ids`` in scan order (denies first), at most 16."""
    if len(rule_ids) > MAX_RULES_PER_ENTRY:
        raise ValueError(f"{len(rule_ids)} rules do not fit one entry (max {MAX_RULES_PER_ENTRY})")
    ids = list(rule_ids) + [0] * (MAX_RULES_PER_ENTRY - len(rule_ids))
    return ENTRY.pack(len(rule_ids), default_action, 0, *ids)


def unpack_entry(raw: bytes) -> tuple[int, list[int]]:
    count, default, _pad, *ids = ENTRY.unpack_from(raw)
    return default, ids[:count]


def pack_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return ADDR_KEY.pack(addr.version, addr.packed.ljust(16, b"\0"))


def unpack_addr(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    family, addr = ADDR_KEY.unpack(raw)
    return ipaddress.IPv4Address(addr[:4]) if family == 4 else ipaddress.IPv6Address(addr)


def pack_owner(endpoint_id: str) -> bytes:
    raw = endpoint_id.encode()
    if len(raw) >= ENDPOINT_ID_LEN:
        raise ValueError(f"endpoint id {endpoint_id!r} is longer than {ENDPOINT_ID_LEN - 1} bytes")
    return raw.ljust(ENDPOINT_ID_LEN, b"\0")


def unpack_owner(raw: bytes) -> str:
    return bytes(raw).rstrip(b"\0").decode(errors="replace")
