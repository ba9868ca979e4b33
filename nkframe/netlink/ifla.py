"""The rtnetlink link message, declared for :mod:`nkframe.netlink.codec`: struct ifinfomsg and
the IFLA_* attributes nkframe sends or reads (linux/if_link.h, linux/rtnetlink.h).

IFLA_LINKINFO's IFLA_INFO_DATA depends on IFLA_INFO_KIND; each kind nkframe creates has its
own module in :mod:`nkframe.netlink.kinds` (``veth``, ``netkit``) with its INFO_DATA map, found
here by name.  Other kinds' INFO_DATA stays raw bytes.
"""

from __future__ import annotations

import importlib

from nkframe.netlink.codec import (
    BYTES, MAC, S32, STRING, U8, U32, AttrMap, Header, Kind, Message, Nested, Switch,
)
from nkframe.uapi import (
    IFLA_ADDRESS,
    IFLA_GRO_MAX_SIZE,
    IFLA_GSO_MAX_SIZE,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINK,
    IFLA_LINKINFO,
    IFLA_LINK_NETNSID,
    IFLA_MTU,
    IFLA_NET_NS_FD,
    IFLA_NUM_RX_QUEUES,
    IFLA_NUM_TX_QUEUES,
    IFLA_OPERSTATE,
    IFLA_STATS64,
)

__all__ = ["IFINFOMSG", "LINK", "LINK_ATTRS", "LINKINFO", "STATS64", "KINDS", "info_data_kind"]

#: struct ifinfomsg {u8 family; u8 pad; u16 type; s32 index; u32 flags; u32 change;}
IFINFOMSG = Header("BxHiII", ("family", "type", "index", "flags", "change"))

#: struct rtnl_link_stats64 (IFLA_STATS64), the fields nkframe reads: its first eight u64
STATS64 = Header("8Q", ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
                        "rx_dropped", "tx_dropped"))

#: link kind -> the module in nkframe.netlink.kinds declaring its IFLA_INFO_DATA as ``INFO_DATA``
KINDS = {"veth": "nkframe.netlink.kinds.veth", "netkit": "nkframe.netlink.kinds.netkit"}


def info_data_kind(kind: object) -> Kind | None:
    """The codec kind of IFLA_INFO_DATA for link kind ``kind`` (None: unknown, raw bytes)."""
    mod = KINDS.get(kind) if isinstance(kind, str) else None
    if mod is None:
        return None
    return Nested(importlib.import_module(mod).INFO_DATA)


LINKINFO = AttrMap("IFLA_INFO", [
    ("IFLA_INFO_KIND", IFLA_INFO_KIND, STRING),
    ("IFLA_INFO_DATA", IFLA_INFO_DATA, Switch("IFLA_INFO_KIND", info_data_kind)),
])

#: The IFLA_* attributes of one device, the order of the uAPI's enum.
LINK_ATTRS = AttrMap("IFLA", [
    ("IFLA_ADDRESS", IFLA_ADDRESS, MAC),
    ("IFLA_IFNAME", IFLA_IFNAME, STRING),
    ("IFLA_MTU", IFLA_MTU, U32),
    ("IFLA_LINK", IFLA_LINK, U32),
    ("IFLA_OPERSTATE", IFLA_OPERSTATE, U8),
    ("IFLA_LINKINFO", IFLA_LINKINFO, Nested(LINKINFO)),
    ("IFLA_STATS64", IFLA_STATS64, BYTES),
    ("IFLA_NET_NS_FD", IFLA_NET_NS_FD, U32),
    ("IFLA_NUM_TX_QUEUES", IFLA_NUM_TX_QUEUES, U32),
    ("IFLA_NUM_RX_QUEUES", IFLA_NUM_RX_QUEUES, U32),
    ("IFLA_LINK_NETNSID", IFLA_LINK_NETNSID, S32),
    ("IFLA_GSO_MAX_SIZE", IFLA_GSO_MAX_SIZE, U32),
    ("IFLA_GRO_MAX_SIZE", IFLA_GRO_MAX_SIZE, U32),
])

#: An RTM_NEWLINK/RTM_GETLINK/RTM_DELLINK body, and the peer description nested in veth's and
#: netkit's INFO_DATA (the same ifinfomsg + IFLA_* layout).
LINK = Message(IFINFOMSG, LINK_ATTRS)
