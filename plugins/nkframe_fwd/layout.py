"""The datapath's map layouts in Python: the same bytes as ``bpf/include/nkframe_dp.h``.

Kept free of the libbpf bindings so it can be imported (and unit-tested) anywhere.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import zlib

import attrs

from nkframe.errors import InvalidSpec

ENDPOINTS_MAP = "nk_endpoints"  # pinned "global": every endpoint's addresses
STATS_MAP = "nk_dp_stats"  # keyed by ifindex: pinned "global" for endpoints, per uplink device
MAX_ENDPOINT_ADDRS = 16384  # NK_DP_MAX_ENDPOINT_ADDRS
MAX_DEVICES = 16384  # NK_DP_MAX_DEVICES

# struct nk_ep_key { __u32 family; __u32 addr[4]; }  (address bytes in network order)
KEY = struct.Struct("<I16s")
# struct nk_ep_info { __u32 ifindex, flags, owner; __u8 pod_mac[6], node_mac[6]; }
INFO = struct.Struct("<III6s6s")
# struct nk_counter { __u64 packets, bytes; }
COUNTER = struct.Struct("<QQ")

F_TO_POD_CHAIN = 0x1  # NK_EP_F_TO_POD_CHAIN
F_L2 = 0x2  # NK_EP_F_L2

ZERO_MAC = "00:00:00:00:00:00"


class Stat(enum.IntEnum):
    """Counter slots of ``nk_dp_stats`` (enum nk_dp_stat)."""

    SEEN = 0
    LOCAL = 1  # redirected to a local endpoint
    NEIGH = 2  # redirect_neigh() out of the FIB's device (the uplink)
    PEER = 3  # uplink -> redirect_peer() into a pod
    UPLINK_VIA_DEV = 4  # uplink -> redirect() via the node-side device (TO_POD chain present)
    STACK = 5  # handed to the node's stack
    ARP_REPLY = 6
    ND_REPLY = 7
    NON_IP = 8
    TTL = 9
    MALFORMED = 10
    REDIRECT_ERR = 11
    NOT_MINE = 12


STAT_SLOTS = 16  # NK_DP_STAT_MAX


def owner_tag(endpoint_id: str) -> int:
    """The 32-bit owner stored with each address: removal deletes only its own entries."""
    return zlib.crc32(endpoint_id.encode()) & 0xFFFFFFFF


def mac_bytes(mac: str | None) -> bytes:
    if not mac:
        return bytes(6)
    parts = mac.split(":")
    if len(parts) != 6:
        raise InvalidSpec(f"{mac!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def endpoint_key(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    addr = ipaddress.ip_address(str(ip).split("/")[0]) if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ip
    return KEY.pack(addr.version, addr.packed.ljust(16, b"\0"))


def parse_key(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    family, addr = KEY.unpack(raw)
    return ipaddress.IPv4Address(addr[:4]) if family == 4 else ipaddress.IPv6Address(addr)


@attrs.frozen
class EndpointEntry:
    """One pod address in ``nk_endpoints``: where the datapath delivers it."""

    ifindex: int  # node-side device
    flags: int = 0
    owner: int = 0
    pod_mac: str = ZERO_MAC
    node_mac: str = ZERO_MAC

    def pack(self) -> bytes:
        return INFO.pack(self.ifindex, self.flags, self.owner, mac_bytes(self.pod_mac), mac_bytes(self.node_mac))

    @classmethod
    def unpack(cls, raw: bytes) -> "EndpointEntry":
        ifindex, flags, owner, pod, node = INFO.unpack(raw[: INFO.size])
        return cls(ifindex, flags, owner, mac_str(pod), mac_str(node))


def sum_counters(per_cpu: list[bytes] | None, slot: int = 0) -> tuple[int, int]:
    """(packets, bytes) of counter ``slot`` summed over CPUs (each CPU's value holds
    STAT_SLOTS counters, struct nk_dp_counters)."""
    pk = by = 0
    off = slot * COUNTER.size
    for raw in per_cpu or ():
        p, b = COUNTER.unpack(raw[off : off + COUNTER.size])
        pk += p
        by += b
    return pk, by
