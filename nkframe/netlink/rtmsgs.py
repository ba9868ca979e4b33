"""The rtnetlink address, route and neighbour messages, declared for
:mod:`nkframe.netlink.codec` (linux/if_addr.h, linux/rtnetlink.h, linux/neighbour.h): each a
fixed header and the attributes nkframe sends or reads.  The link message is in
:mod:`nkframe.netlink.ifla`."""

from __future__ import annotations

from nkframe.netlink.codec import IP, MAC, U32, AttrMap, Header, Message
from nkframe.uapi import (
    IFA_ADDRESS,
    IFA_FLAGS,
    IFA_LOCAL,
    NDA_DST,
    NDA_IFINDEX,
    NDA_LLADDR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
)

__all__ = ["ADDR", "ROUTE", "NEIGH"]

#: struct ifaddrmsg {u8 family; u8 prefixlen; u8 flags; u8 scope; u32 index;} + IFA_*
ADDR = Message(
    Header("BBBBI", ("family", "prefixlen", "flags", "scope", "index")),
    AttrMap("IFA", [
        ("IFA_ADDRESS", IFA_ADDRESS, IP),
        ("IFA_LOCAL", IFA_LOCAL, IP),
        ("IFA_FLAGS", IFA_FLAGS, U32),
    ]),
)

#: struct rtmsg {u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags;} + RTA_*
ROUTE = Message(
    Header("BBBBBBBBI", ("family", "dst_len", "src_len", "tos", "table", "protocol", "scope", "type", "flags")),
    AttrMap("RTA", [
        ("RTA_DST", RTA_DST, IP),
        ("RTA_OIF", RTA_OIF, U32),
        ("RTA_GATEWAY", RTA_GATEWAY, IP),
        ("RTA_PRIORITY", RTA_PRIORITY, U32),
        ("RTA_TABLE", RTA_TABLE, U32),
    ]),
)

#: struct ndmsg {u8 family; u8 pad1; u16 pad2; s32 ifindex; u16 state; u8 flags; u8 type;} + NDA_*
NEIGH = Message(
    Header("BxxxiHBB", ("family", "ifindex", "state", "flags", "type")),
    AttrMap("NDA", [
        ("NDA_DST", NDA_DST, IP),
        ("NDA_LLADDR", NDA_LLADDR, MAC),
        ("NDA_IFINDEX", NDA_IFINDEX, U32),
    ]),
)
