"""rtnetlink and generic netlink for nkframe: links, netkit/veth pairs, addresses, routes,
neighbours (:mod:`.links`, :mod:`.netkit`) and the netdev family for queue leasing
(:mod:`.netdev`).  Everything takes ``netns=`` and never creates a namespace by accident."""

from nkframe.netlink.links import (
    LinkPair,
    LinkState,
    VethSpec,
    add_address,
    add_host_route,
    add_neighbour,
    add_route,
    create_veth,
    del_address,
    del_neighbour,
    del_route,
    delete_link,
    get_link,
    ifindex,
    link_exists,
    list_addresses,
    list_links,
    list_neighbours,
    list_routes,
    parse_cidr,
    set_address,
    set_down,
    set_mtu,
    set_up,
    sysctl,
    validate_ifname,
    validate_mac,
)
from nkframe.netlink.netdev import (
    Lease,
    NetdevFamily,
    QueueInfo,
    QueueType,
    decode_queue,
    encode_queue_create,
)
from nkframe.netlink.netkit import (
    NetkitInfo,
    NetkitMode,
    NetkitPairing,
    NetkitPolicy,
    NetkitScrub,
    NetkitSpec,
    create_netkit,
    encode_netkit,
    get_netkit,
)

__all__ = [
    "LinkPair", "LinkState", "VethSpec", "add_address", "add_host_route", "add_neighbour",
    "add_route", "create_veth", "del_address", "del_neighbour", "del_route", "delete_link",
    "get_link", "ifindex", "link_exists", "list_addresses", "list_links", "list_neighbours",
    "list_routes", "parse_cidr", "set_address", "set_down", "set_mtu", "set_up", "sysctl",
    "validate_ifname", "validate_mac", "NetkitInfo", "NetkitMode", "NetkitPairing",
    "NetkitPolicy", "NetkitScrub", "NetkitSpec", "create_netkit", "encode_netkit", "get_netkit",
    "Lease", "NetdevFamily", "QueueInfo", "QueueType", "decode_queue", "encode_queue_create",
]
