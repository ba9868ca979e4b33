"""Hand-built packets for tests and tools: Ethernet, IPv4, IPv6 (+ extension headers), TCP, UDP,
ICMP/ICMPv6, fragments and truncation.  Bytes only — checksums of L4 headers are left zero
because nothing on the policy path looks at them."""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_HLEN = 14

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(payload: bytes, ethertype: int, src: bytes = SRC_MAC, dst: bytes = DST_MAC) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes = b"",
    *,
    frag_offset: int = 0,
    more_fragments: bool = False,
    options: bytes = b"",
    ttl: int = 64,
    ident: int = 0x1234,
) -> bytes:
    """An IPv4 header (+ ``options``, padded to 4 bytes) followed by ``payload``.

    ``frag_offset`` is in bytes and must be a multiple of 8, as on the wire."""
    if frag_offset % 8:
        raise ValueError("IPv4 fragment offset must be a multiple of 8 bytes")
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    flags = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(payload),
        ident,
        flags,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    ) + options
    header = header[:10] + struct.pack("!H", _csum(header)) + header[12:]
    return header + payload


def ipv6(
    src: str,
    dst: str,
    nexthdr: int,
    payload: bytes = b"",
    *,
    hop_limit: int = 64,
) -> bytes:
    """An IPv6 header; ``payload`` holds any extension headers already chained (see
    :func:`ext_header`, :func:`frag_header`)."""
    return struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        nexthdr,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    ) + payload


def ext_header(nexthdr: int, body_len: int = 6) -> bytes:
    """A hop-by-hop / routing / destination-options style header: ``(hdr_ext_len + 1) * 8``
    bytes; ``body_len`` (6, 14, 22…) is the size after the two fixed bytes."""
    if (body_len + 2) % 8:
        raise ValueError("extension header length must be a multiple of 8 bytes")
    return struct.pack("!BB", nexthdr, (body_len + 2) // 8 - 1) + b"\x01" * body_len


def ah_header(nexthdr: int, icv_len: int = 12) -> bytes:
    """An IPsec AH header; its length field counts 4-byte units minus 2."""
    total = 12 + icv_len
    return struct.pack("!BBHII", nexthdr, total // 4 - 2, 0, 0x100, 1) + b"\0" * icv_len


def frag_header(nexthdr: int, offset: int = 0, more: bool = False, ident: int = 7) -> bytes:
    if offset % 8:
        raise ValueError("IPv6 fragment offset must be a multiple of 8 bytes")
    return struct.pack("!BBHI", nexthdr, 0, offset | (1 if more else 0), ident)


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x02) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(type_: int = 8, code: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", type_, code, 0, 1, 1) + payload


def l4(proto: int, sport: int = 40000, dport: int = 80, payload: bytes = b"") -> bytes:
    """The usual L4 header for ``proto``: TCP, UDP, ICMP(v6) echo; other protocols get
    ``payload`` only."""
    if proto == IPPROTO_TCP:
        return tcp(sport, dport, payload)
    if proto == IPPROTO_UDP:
        return udp(sport, dport, payload)
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return icmp(8 if proto == IPPROTO_ICMP else 128, 0, payload)
    return payload


def build(
    src: str,
    dst: str,
    proto: int,
    *,
    sport: int = 40000,
    dport: int = 80,
    payload: bytes = b"",
    l2: bool = True,
    later_fragment: bool = False,
    first_fragment: bool = False,
    ext: tuple[int, ...] = (),
    truncate: int | None = None,
) -> bytes:
    """One packet from ``src`` to ``dst`` (both the same IP version).

    ``later_fragment`` makes a fragment with a non-zero offset (its payload is not an L4 header);
    ``first_fragment`` sets more-fragments at offset 0.  ``ext`` lists IPv6 extension headers to
    insert (HOPOPTS, ROUTING, DSTOPTS, AH, FRAGMENT).  ``truncate`` cuts the result to that many
    bytes, counted from the start of the IP header.
    """
    version = ipaddress.ip_address(src).version
    if later_fragment:
        body = payload or b"\xab" * 16
    else:
        body = l4(proto, sport, dport, payload)
    if version == 4:
        if ext:
            raise ValueError("extension headers are IPv6 only")
        packet = ipv4(
            src,
            dst,
            proto,
            body,
            frag_offset=64 if later_fragment else 0,
            more_fragments=first_fragment,
        )
        ethertype = ETH_P_IP
    else:
        chain = list(ext)
        if (later_fragment or first_fragment) and IPPROTO_FRAGMENT not in chain:
            chain.append(IPPROTO_FRAGMENT)
        for kind in reversed(chain):
            if kind == IPPROTO_FRAGMENT:
                body = frag_header(
                    proto, 64 if later_fragment else 0, first_fragment or later_fragment
                ) + body
            elif kind == IPPROTO_AH:
                body = ah_header(proto) + body
            else:
                body = ext_header(proto) + body
            proto = kind
        packet = ipv6(src, dst, proto, body)
        ethertype = ETH_P_IPV6
    if truncate is not None:
        packet = packet[:truncate]
    return ether(packet, ethertype) if l2 else packet


def arp() -> bytes:
    """A broadcast ARP request (non-IP: the policy hands it on)."""
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + SRC_MAC + bytes(4) + bytes(6) + bytes(4)
    return ether(body, ETH_P_ARP, dst=b"\xff" * 6)
