"""veth's IFLA_INFO_DATA (linux/veth.h): the peer, an ifinfomsg + IFLA_* attributes."""

from __future__ import annotations

from nkframe.netlink.codec import AttrMap, Nested
from nkframe.netlink.ifla import LINK
from nkframe.uapi import VETH_INFO_PEER

INFO_DATA = AttrMap("VETH_INFO", [
    ("VETH_INFO_PEER", VETH_INFO_PEER, Nested(LINK)),
])
