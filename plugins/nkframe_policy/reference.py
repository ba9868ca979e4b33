"""The reference evaluator: the policy semantics in plain Python, byte for byte what
``bpf/policy.c`` does (parsing included), so tests can compare verdicts packet by packet.

It is deliberately written the direct way — every rule is checked, no flattening, no LPM — so a
bug in the compiler or the BPF program cannot hide behind the same bug here.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import Mapping

import attrs

from .model import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Action,
    Direction,
    Policy,
    Proto,
    Rule,
)

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

# IPv6 extension headers we step over, and how many at most (the BPF loop bound).
IPV6_MAX_EXT_HEADERS = 8
_EXT_GENERIC = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_EXT_FRAGMENT = 44
_EXT_AH = 51  # (len + 2) * 4 bytes

# Minimal L4 header sizes: a shorter packet is malformed.
L4_MIN = {(4, IPPROTO_TCP): 20, (6, IPPROTO_TCP): 20, (4, IPPROTO_UDP): 8, (6, IPPROTO_UDP): 8,
          (4, IPPROTO_ICMP): 8, (6, IPPROTO_ICMPV6): 4}


class Kind(enum.Enum):
    IP = "ip"
    NON_IP = "non_ip"
    MALFORMED = "malformed"


@attrs.frozen
class Parsed:
    """What the policy looks at in a packet.  ``dport`` is ``None`` when ports are unknown: not
    TCP/UDP, or a fragment after the first."""

    kind: Kind
    version: int = 0
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    proto: int = 0
    dport: int | None = None
    later_fragment: bool = False


NON_IP = Parsed(Kind.NON_IP)
MALFORMED = Parsed(Kind.MALFORMED)


def parse(data: bytes, l3_offset: int = ETH_HLEN) -> Parsed:
    """Parse a packet that starts with an Ethernet header (``l3_offset`` 14) or directly with
    the IP header (``l3_offset`` 0: devices without a link-layer header)."""
    if l3_offset:
        if len(data) < ETH_HLEN:
            return NON_IP
        (ethertype,) = struct.unpack_from("!H", data, 12)
        if ethertype == ETH_P_IP:
            version = 4
        elif ethertype == ETH_P_IPV6:
            version = 6
        else:
            return NON_IP
    else:
        if len(data) < 1:
            return NON_IP
        version = data[0] >> 4
        if version not in (4, 6):
            return NON_IP
    off = l3_offset
    if version == 4:
        if len(data) < off + 20 or data[off] >> 4 != 4:
            return MALFORMED
        ihl = (data[off] & 0x0F) * 4
        if ihl < 20 or len(data) < off + ihl:
            return MALFORMED
        (frag,) = struct.unpack_from("!H", data, off + 6)
        proto = data[off + 9]
        src = ipaddress.IPv4Address(data[off + 12 : off + 16])
        dst = ipaddress.IPv4Address(data[off + 16 : off + 20])
        later = (frag & 0x1FFF) != 0
        off += ihl
    else:
        if len(data) < off + 40 or data[off] >> 4 != 6:
            return MALFORMED
        proto = data[off + 6]
        src = ipaddress.IPv6Address(data[off + 8 : off + 24])
        dst = ipaddress.IPv6Address(data[off + 24 : off + 40])
        off += 40
        later = False
        for _ in range(IPV6_MAX_EXT_HEADERS):
            # An extension header must be complete (all of its stated length present).
            if proto in _EXT_GENERIC:
                if len(data) < off + 2:
                    return MALFORMED
                proto, hlen = data[off], (data[off + 1] + 1) * 8
                if len(data) < off + hlen:
                    return MALFORMED
                off += hlen
            elif proto == _EXT_AH:
                if len(data) < off + 2:
                    return MALFORMED
                proto, hlen = data[off], (data[off + 1] + 2) * 4
                if len(data) < off + hlen:
                    return MALFORMED
                off += hlen
            elif proto == _EXT_FRAGMENT:
                if len(data) < off + 8:
                    return MALFORMED
                (fo,) = struct.unpack_from("!H", data, off + 2)
                proto = data[off]
                off += 8
                if fo & 0xFFF8:
                    later = True
                    break
            else:
                break
        else:
            if proto in _EXT_GENERIC or proto in (_EXT_AH, _EXT_FRAGMENT):
                return MALFORMED
    dport = None
    if not later:
        need = L4_MIN.get((version, proto))
        if need is not None and len(data) < off + need:
            return MALFORMED
        if proto in (IPPROTO_TCP, IPPROTO_UDP):
            (dport,) = struct.unpack_from("!H", data, off + 2)
    return Parsed(Kind.IP, version, src, dst, proto, dport, later)


def rule_matches(rule: Rule, version: int, addr, proto: int, dport: int | None) -> bool:
    """Does ``rule`` match a packet of this IP version, address (source for ingress, destination
    for egress), protocol number and destination port (``None`` = unknown)?"""
    if rule.cidr.version != version or addr not in rule.cidr:
        return False
    if rule.proto is Proto.ANY:
        return True
    if rule.proto.number(version) != proto:
        return False
    if rule.ports is None:
        return True
    return dport is not None and rule.ports.contains(dport)


@attrs.frozen
class Verdict:
    """``action`` ALLOW means "continue to the next program" (-1), DENY means drop (2).

    ``reason`` is one of ``rule``, ``default``, ``non_ip``, ``malformed``; ``rule_index`` is the
    deciding rule's position in ``policy.rules(direction)`` when ``reason == "rule"``."""

    action: Action
    reason: str
    rule_index: int | None = None

    @property
    def tc_retval(self) -> int:
        return -1 if self.action is Action.ALLOW else 2


def decide(policy: Policy, direction: Direction, parsed: Parsed) -> Verdict:
    if parsed.kind is Kind.NON_IP:
        return Verdict(Action.ALLOW, "non_ip")
    if parsed.kind is Kind.MALFORMED:
        return Verdict(Action.DENY, "malformed")
    addr = parsed.src if direction is Direction.INGRESS else parsed.dst
    first_allow = None
    for i, rule in enumerate(policy.rules(direction)):
        if rule_matches(rule, parsed.version, addr, parsed.proto, parsed.dport):
            if rule.action is Action.DENY:
                return Verdict(Action.DENY, "rule", i)
            if first_allow is None:
                first_allow = i
    if first_allow is not None:
        return Verdict(Action.ALLOW, "rule", first_allow)
    return Verdict(policy.default(direction), "default")


def verdict(
    policy: Policy, direction: Direction, data: bytes, l3_offset: int = ETH_HLEN
) -> Verdict:
    """The verdict for raw packet bytes, as the BPF program for ``direction`` gives it."""
    return decide(policy, direction, parse(data, l3_offset))


def destination(data: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The destination address the uplink program reads from an Ethernet frame to find the
    endpoint: an IPv4 header of at least 20 bytes with version 4, or an IPv6 header of 40 bytes
    with version 6; ``None`` otherwise (``nk_policy_daddr()`` in the header)."""
    if len(data) < ETH_HLEN:
        return None
    (ethertype,) = struct.unpack_from("!H", data, 12)
    ip = data[ETH_HLEN:]
    if ethertype == ETH_P_IP and len(ip) >= 20 and ip[0] >> 4 == 4:
        return ipaddress.IPv4Address(ip[16:20])
    if ethertype == ETH_P_IPV6 and len(ip) >= 40 and ip[0] >> 4 == 6:
        return ipaddress.IPv6Address(ip[24:40])
    return None


def uplink_verdict(policies: Mapping[ipaddress.IPv4Address | ipaddress.IPv6Address, Policy | None],
                   data: bytes) -> Verdict:
    """The verdict of the uplink program (``policy_uplink``) for an Ethernet frame, given which
    endpoint address has which policy (``None``: the endpoint holds a slot but has no policy).

    Non-IP frames and packets whose destination is no endpoint's continue (reason
    ``not_local``); the rest is judged by the destination endpoint's ingress policy, as its
    ``policy_ingress`` would, and an endpoint without a policy drops (``no_policy``)."""
    parsed = parse(data, ETH_HLEN)
    dst = destination(data)
    if parsed.kind is Kind.NON_IP or dst is None or dst not in policies:
        return Verdict(Action.ALLOW, "not_local")
    policy = policies[dst]
    if policy is None:
        return Verdict(Action.DENY, "no_policy")
    return decide(policy, Direction.INGRESS, parsed)
