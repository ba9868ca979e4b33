"""Byte layouts of the policy maps: the Python side of ``bpf/include/nkframe_policy.h``.

Native byte order ('=' in struct) everywhere, as the kernel stores map keys and values; only
addresses are in network order.  ``tests/unit/test_policy_layout.py`` reads the header and checks
these numbers against it.
"""

from __future__ import annotations

import ipaddress
import struct

# Limits (nkframe_policy.h)
MAX_RULES_PER_ENTRY = 16
LPM_ENTRIES = 131072
RULE_SLOTS = 65536
MAX_ENDPOINTS = 1024
KEY_FIXED_BITS = 96
ENDPOINT_ID_LEN = 64
MAX_ADDRS = 16384

# enum nk_policy_dir / nk_policy_action
DIR_INGRESS = 0
DIR_EGRESS = 1
ACT_ALLOW = 1
ACT_DENY = 2
RULE_OWN = 0x01

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

KEY = struct.Struct("=IIIBB2x16s")
RULE = struct.Struct("=IIIBBBx")
ENTRY_HEAD = struct.Struct("=BB6x")
ENTRY_SIZE = ENTRY_HEAD.size + MAX_RULES_PER_ENTRY * RULE.size
GEN = struct.Struct("=I")
COUNTER = struct.Struct("=QQ")
STATS_SIZE = 2 * len(STAT_NAMES) * COUNTER.size
SLOT_KEY = struct.Struct("=I")
ADDR_KEY = struct.Struct("=I16s")  # struct nk_policy_addr_key

assert KEY.size == 32 and RULE.size == 16 and ENTRY_SIZE == 264


def pack_key(slot: int, generation: int, direction: int, version: int, addr: bytes, plen: int) -> bytes:
    """An LPM key; ``addr`` is the 4 or 16 network-order bytes, ``plen`` the CIDR length."""
    return KEY.pack(KEY_FIXED_BITS + plen, slot, generation, direction, version, addr.ljust(16, b"\0"))


def unpack_key(raw: bytes) -> tuple[int, int, int, int, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """-> (slot, generation, direction, version, network)."""
    prefixlen, slot, gen, direction, version, addr = KEY.unpack(raw)
    plen = prefixlen - KEY_FIXED_BITS
    if version == 4:
        net = ipaddress.IPv4Network((addr[:4], plen))
    else:
        net = ipaddress.IPv6Network((addr, plen))
    return slot, gen, direction, version, net


def pack_entry(default_action: int, rules: list[tuple[int, int, int, int, int, int]]) -> bytes:
    """``rules``: (rule_id, port_lo, port_hi, proto, action, flags), at most 16."""
    if len(rules) > MAX_RULES_PER_ENTRY:
        raise ValueError(f"{len(rules)} rules do not fit one entry (max {MAX_RULES_PER_ENTRY})")
    out = bytearray(ENTRY_SIZE)
    ENTRY_HEAD.pack_into(out, 0, len(rules), default_action)
    for i, r in enumerate(rules):
        RULE.pack_into(out, ENTRY_HEAD.size + i * RULE.size, *r)
    return bytes(out)


def unpack_entry(raw: bytes) -> tuple[int, list[tuple[int, int, int, int, int, int]]]:
    count, default = ENTRY_HEAD.unpack_from(raw, 0)
    rules = [RULE.unpack_from(raw, ENTRY_HEAD.size + i * RULE.size) for i in range(count)]
    return default, rules


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
