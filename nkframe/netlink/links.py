"""Links, addresses, routes and neighbours over rtnetlink, one namespace at a time.

Every function takes ``netns``: the name (or path) of the namespace to act in, ``None`` for the
caller's own.  A missing namespace raises :class:`~nkframe.errors.NetnsNotFound`; nothing here ever
creates one.  Device pairs (veth here, netkit in :mod:`nkframe.netlink.netkit`) are made with the
peer created directly in its namespace under its final name: no temporary name, no move.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
import struct
import threading
from typing import Any, Iterator

import attrs

from nkframe import netns as _netns
from nkframe.errors import InvalidSpec, KernelError
from nkframe.types import validate_ifname  # noqa: F401 - re-exported
from nkframe.netlink import ifla, rtmsgs
from nkframe.netlink._rtnl import kernel_error, where
from nkframe.netlink.nlsock import NetlinkError, RtnlSocket, attr_map, encoded, open_rtnl
from nkframe.uapi import (
    IFA_F_NODAD,
    IFF_LOWER_UP,
    IFF_UP,
    IFLA_LINKINFO,
    IFLA_STATS64,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NUD_PERMANENT,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTNH_F_ONLINK,
    RTN_LOCAL,
    RTN_UNICAST,
    RTPROT_STATIC,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
)

MIN_MTU = 68  # ETH_MIN_MTU, and the IPv4 minimum
MAX_MTU = 65535  # ETH_MAX_MTU, the most veth and netkit accept
MAX_QUEUES = 4096  # rtnl_create_link refuses more (and fewer than 1)


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# --------------------------------------------------------------------------------------------
# validation


# validate_ifname lives with the value types (one definition for specs and netlink).


def _parse(value: Any, done: tuple[type, ...], parse: Any, problem: str) -> Any:
    """``value`` if it is one of the ``done`` types already, else ``parse(str(value))``; a
    ValueError becomes InvalidSpec(``problem``)."""
    if isinstance(value, done):
        return value
    try:
        return parse(str(value).strip())
    except ValueError:
        raise InvalidSpec(problem) from None


def parse_cidr(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """'10.0.0.1/24' or '2001:db8::1/64' -> an ip_interface; a bare address gets /32 or /128."""
    return _parse(cidr, (ipaddress.IPv4Interface, ipaddress.IPv6Interface), ipaddress.ip_interface,
                  f"{cidr!r} is not an IP address with a prefix length (e.g. 10.0.0.1/24, fd00::1/64)")


def parse_ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return _parse(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address), ipaddress.ip_address,
                  f"{addr!r} is not an IPv4 or IPv6 address")


def parse_network(net: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A route destination: 'default' (IPv4), 'default6', or a CIDR (host bits must be zero)."""
    if net == "default":
        return ipaddress.IPv4Network("0.0.0.0/0")
    if net in ("default6", "::/0"):
        return ipaddress.IPv6Network("::/0")
    try:
        return ipaddress.ip_network(str(net).strip())
    except ValueError as e:
        raise InvalidSpec(f"{net!r} is not a route destination: {e}") from None


def validate_mac(mac: str) -> str:
    """A unicast Ethernet address in lower-case colon form."""
    norm = str(mac).strip().lower().replace("-", ":")
    if not _MAC_RE.match(norm):
        raise InvalidSpec(f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    first = int(norm[:2], 16)
    if first & 1:
        raise InvalidSpec(f"MAC address {mac!r} is multicast; a device address must be unicast")
    if norm == "00:00:00:00:00:00":
        raise InvalidSpec("MAC address 00:00:00:00:00:00 is not a valid device address")
    return norm


def _opt(validator: Any) -> Any:
    return attrs.validators.optional(validator)


def check_ifname(_inst: Any, attr: attrs.Attribute, value: str) -> None:
    validate_ifname(value)


def check_netns_name(_inst: Any, attr: attrs.Attribute, value: str | None) -> None:
    if value is not None and "/" not in value:
        _netns.validate_name(value)


def int_range(lo: int, hi: int, what: str) -> Any:
    def check(_inst: Any, attr: attrs.Attribute, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise InvalidSpec(f"{attr.name} = {value!r}: {what} must be an integer in {lo}..{hi}")

    return check


def to_mac(value: str | None) -> str | None:
    return None if value is None else validate_mac(value)


check_mtu = _opt(int_range(MIN_MTU, MAX_MTU, "MTU"))
check_queues = _opt(int_range(1, MAX_QUEUES, "queue count"))
check_size = _opt(int_range(1, 0xFFFFFFFF, "size"))


def optional_mtu() -> Any:
    """An optional device MTU field of a pair spec (None: not sent)."""
    return attrs.field(default=None, validator=check_mtu)


def optional_queues() -> Any:
    """An optional RX or TX queue count field of a pair spec."""
    return attrs.field(default=None, validator=check_queues)


def optional_size() -> Any:
    """An optional GSO/GRO size field of a pair spec."""
    return attrs.field(default=None, validator=check_size)


# --------------------------------------------------------------------------------------------
# value types


@attrs.frozen
class LinkPair:
    """The two ends of a created device pair and where they live (None: the caller's netns)."""

    ifindex: int
    peer_ifindex: int
    name: str
    peer_name: str
    netns: str | None
    peer_netns: str | None


@attrs.frozen
class LinkState:
    """What the kernel says about one device."""

    ifindex: int
    name: str
    kind: str | None
    mtu: int
    up: bool  # administratively up (IFF_UP)
    lower_up: bool  # carrier (IFF_LOWER_UP)
    operstate: str | None
    address: str | None
    link_ifindex: int | None  # IFLA_LINK: the peer's ifindex for veth/netkit
    link_netnsid: int | None  # IFLA_LINK_NETNSID: where that peer lives, if elsewhere
    num_tx_queues: int | None
    num_rx_queues: int | None
    gso_max_size: int | None
    gro_max_size: int | None
    netns: str | None

    @classmethod
    def from_msg(cls, msg: "RawLink", netns: str | None) -> "LinkState":
        a = msg.attrs
        v = ifla.LINK_ATTRS.value  # only the attributes read here are decoded
        op = v(a, "IFLA_OPERSTATE")
        return cls(
            ifindex=msg.index,
            name=msg.name,
            kind=msg.kind,
            mtu=v(a, "IFLA_MTU"),
            up=bool(msg.flags & IFF_UP),
            lower_up=bool(msg.flags & IFF_LOWER_UP),
            operstate=None if op is None else (_OPERSTATES[op] if op < len(_OPERSTATES) else str(op)),
            address=v(a, "IFLA_ADDRESS"),
            link_ifindex=v(a, "IFLA_LINK"),
            link_netnsid=v(a, "IFLA_LINK_NETNSID"),
            num_tx_queues=v(a, "IFLA_NUM_TX_QUEUES"),
            num_rx_queues=v(a, "IFLA_NUM_RX_QUEUES"),
            gso_max_size=v(a, "IFLA_GSO_MAX_SIZE"),
            gro_max_size=v(a, "IFLA_GRO_MAX_SIZE"),
            netns=netns,
        )


@attrs.frozen
class VethSpec:
    """A veth pair; the peer is created straight in ``peer_netns`` (None: next to ``name``)."""

    name: str = attrs.field(validator=check_ifname)
    peer_name: str = attrs.field(validator=check_ifname)
    peer_netns: str | None = attrs.field(default=None, validator=check_netns_name)
    mtu: int | None = optional_mtu()
    peer_mtu: int | None = optional_mtu()
    address: str | None = attrs.field(default=None, converter=to_mac)
    peer_address: str | None = attrs.field(default=None, converter=to_mac)
    num_tx_queues: int | None = optional_queues()
    num_rx_queues: int | None = optional_queues()
    peer_num_tx_queues: int | None = optional_queues()
    peer_num_rx_queues: int | None = optional_queues()
    gso_max_size: int | None = optional_size()
    gro_max_size: int | None = optional_size()
    peer_gso_max_size: int | None = optional_size()
    peer_gro_max_size: int | None = optional_size()

    def __attrs_post_init__(self) -> None:
        if self.peer_netns is None and self.name == self.peer_name:
            raise InvalidSpec(f"veth {self.name!r}: both ends in one netns need different names")


# --------------------------------------------------------------------------------------------
# message building (shared with netkit)


def device_attrs(
    *,
    name: str | None,
    mtu: int | None = None,
    num_tx_queues: int | None = None,
    num_rx_queues: int | None = None,
    address: str | None = None,
    gso_max_size: int | None = None,
    gro_max_size: int | None = None,
    netns_fd: int | None = None,
) -> list[tuple[str, Any]]:
    """The IFLA_* attributes of one device end, in a fixed order; None means "not sent"."""
    attrs_ = (("IFLA_IFNAME", name), ("IFLA_NET_NS_FD", netns_fd), ("IFLA_MTU", mtu),
              ("IFLA_NUM_TX_QUEUES", num_tx_queues), ("IFLA_NUM_RX_QUEUES", num_rx_queues),
              ("IFLA_ADDRESS", address), ("IFLA_GSO_MAX_SIZE", gso_max_size),
              ("IFLA_GRO_MAX_SIZE", gro_max_size))
    return [(key, value) for key, value in attrs_ if value is not None]


def peer_attrs(spec: Any, peer_netns_fd: int | None) -> list:
    """The peer's device attributes of a pair spec (veth or netkit: both have ``peer_*``)."""
    return device_attrs(
        name=spec.peer_name,
        netns_fd=peer_netns_fd,
        # The peer MTU is only what we send: say it, defaulting to the primary's.
        mtu=spec.peer_mtu if spec.peer_mtu is not None else spec.mtu,
        num_tx_queues=spec.peer_num_tx_queues,
        num_rx_queues=spec.peer_num_rx_queues,
        address=spec.peer_address,
        gso_max_size=spec.peer_gso_max_size,
        gro_max_size=spec.peer_gro_max_size,
    )


def encode_veth(spec: VethSpec, peer_netns_fd: int | None = None) -> Any:
    """The RTM_NEWLINK message (pyroute2 ifinfmsg, not yet encoded) that creates ``spec``."""
    peer = {"attrs": peer_attrs(spec, peer_netns_fd)}
    return new_link_message(spec, "veth", [("VETH_INFO_PEER", peer)])


def main_attrs(spec: Any) -> list[tuple[str, Any]]:
    """The primary end's device attributes of a pair spec (veth or netkit)."""
    return device_attrs(
        name=spec.name,
        mtu=spec.mtu,
        num_tx_queues=spec.num_tx_queues,
        num_rx_queues=spec.num_rx_queues,
        address=spec.address,
        gso_max_size=spec.gso_max_size,
        gro_max_size=spec.gro_max_size,
    )


def new_link_bytes(spec: Any, kind: str, info_data: Any, **header: int) -> bytes:
    """An RTM_NEWLINK body (after the nlmsghdr) through the codec: ``spec``'s own device
    attributes and ``info_data`` (a mapping in the kind's map of :mod:`nkframe.netlink.kinds`)
    as IFLA_INFO_DATA.  ``spec`` None sends no device attributes (a change to a device named
    by ``index=`` in ``header``)."""
    attrs_ = dict(main_attrs(spec)) if spec is not None else {}
    attrs_["IFLA_LINKINFO"] = {"IFLA_INFO_KIND": kind, "IFLA_INFO_DATA": info_data}
    return ifla.LINK.encode(attrs_, **header)


def encode_veth_bytes(spec: VethSpec, peer_netns_fd: int | None = None) -> bytes:
    """:func:`encode_veth`'s bytes after the nlmsghdr, built by the codec (pyroute2's encoder
    was a sixth of an endpoint add's CPU); the encoding tests hold both to the uAPI's bytes."""
    return new_link_bytes(spec, "veth", {"VETH_INFO_PEER": dict(peer_attrs(spec, peer_netns_fd))})


def new_link_message(spec: Any, kind: str, info_data: list) -> Any:
    """An RTM_NEWLINK message (pyroute2 ifinfmsg, not yet encoded) for a device of ``kind``:
    the device attributes from ``spec``'s own fields (name, mtu, queues, address, gso/gro
    sizes, as VethSpec and NetkitSpec have them) and ``info_data`` as IFLA_INFO_DATA."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["family"] = socket.AF_UNSPEC
    msg["attrs"] = main_attrs(spec) + [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind), ("IFLA_INFO_DATA", {"attrs": info_data})]})]
    return msg


# --------------------------------------------------------------------------------------------
# sessions and raw messages


_batch = threading.local()


@contextlib.contextmanager
def rtnl_session(netns: str | None, ipr: Any = None) -> Iterator[RtnlSocket]:
    """``ipr`` if the caller holds a socket (see :func:`session`), the batch's socket for
    ``netns`` inside :func:`batch`, else a new one for this call."""
    if ipr is not None:
        yield ipr
        return
    socks = getattr(_batch, "socks", None)
    if socks is not None and netns in socks:
        yield socks[netns]
        return
    sock = open_rtnl(netns)  # NetnsNotFound for a missing namespace (netns.enter checks)
    if socks is not None:
        socks[netns] = sock  # closed when the batch ends
        yield sock
        return
    try:
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Calls made in this thread inside the block share one socket per namespace.

    Opening a socket in another namespace costs two setns() and a socket (~0.06 ms); an endpoint
    add makes a dozen calls in two namespaces.  The sockets are closed when the block ends (an
    open socket keeps its namespace alive).  Nested blocks use the outermost one's sockets.
    """
    if getattr(_batch, "socks", None) is not None:
        yield
        return
    _batch.socks = {}
    try:
        yield
    finally:
        socks, _batch.socks = _batch.socks, None
        for sock in socks.values():
            sock.close()


def session(netns: str | None = None) -> contextlib.AbstractContextManager[RtnlSocket]:
    """One rtnetlink socket for ``netns``, to pass as ``ipr=`` to several calls in a row.

    Closing it matters: an open socket keeps its namespace alive.
    """
    return rtnl_session(netns)


@contextlib.contextmanager
def peer_netns_fd(peer_netns: str | None) -> Iterator[int | None]:
    """An fd on the peer's namespace for IFLA_NET_NS_FD, closed after the request."""
    if peer_netns is None:
        yield None
        return
    fd = _netns.open_fd(peer_netns)
    try:
        yield fd
    finally:
        os.close(fd)


_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


@attrs.frozen
class RawLink:
    """One RTM_NEWLINK reply: the ifinfomsg header and its top-level attributes (undecoded)."""

    index: int
    flags: int
    attrs: dict[int, bytes]
    data: bytes  # the whole payload, for decoders that need more (netkit)

    @classmethod
    def parse(cls, payload: bytes) -> "RawLink":
        hdr = ifla.IFINFOMSG.decode(payload)
        return cls(hdr["index"], hdr["flags"], attr_map(payload, ifla.IFINFOMSG.size), bytes(payload))

    @property
    def name(self) -> str | None:
        return ifla.LINK_ATTRS.value(self.attrs, "IFLA_IFNAME")

    @property
    def kind(self) -> str | None:
        info = self.attrs.get(IFLA_LINKINFO)
        return ifla.LINKINFO.value(attr_map(info), "IFLA_INFO_KIND") if info else None

    def decode(self) -> dict:
        """The whole message through the codec (ifla.LINK): header fields, every attribute,
        IFLA_LINKINFO with its kind's INFO_DATA."""
        return ifla.LINK.decode(self.data)

    def stats64(self) -> dict[str, int]:
        raw = self.attrs.get(IFLA_STATS64)
        if not raw or len(raw) < ifla.STATS64.size:
            return {}
        return ifla.STATS64.decode(raw)

    def to_pyroute2(self) -> Any:
        """The same message parsed by pyroute2 (a cross-check; nkframe's readers use decode())."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        hdr = struct.pack("=IHHII", 16 + len(self.data), RTM_NEWLINK, 0, 0, 0)
        msg = ifinfmsg(hdr + self.data)
        msg.decode()
        return msg


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return ifla.IFINFOMSG.encode({"family": socket.AF_UNSPEC, "index": index, "flags": flags, "change": change})


def get_msg(ipr: RtnlSocket, name: str, netns: str | None) -> RawLink:
    try:
        replies = ipr.request(RTM_GETLINK, 0, ifla.LINK.encode({"IFLA_IFNAME": name}))
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            raise KernelError(
                errno.ENODEV, f"no interface {name!r} in {where(netns)}"
            ) from None
        raise kernel_error(e, f"get interface {name!r} in {where(netns)}") from None
    for rtype, payload in replies:
        if rtype == RTM_NEWLINK:
            return RawLink.parse(payload)
    raise KernelError(errno.ENODEV, f"no interface {name!r} in {where(netns)}")


def _index(ipr: RtnlSocket, name: str, netns: str | None) -> int:
    # Only the header's index: decoding the reply's ~50 attributes cost more than the request
    # (an endpoint add resolves a dozen names).
    try:
        replies = ipr.request(RTM_GETLINK, 0, ifla.LINK.encode({"IFLA_IFNAME": validate_ifname(name)}))
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            raise KernelError(errno.ENODEV, f"no interface {name!r} in {where(netns)}") from None
        raise kernel_error(e, f"get interface {name!r} in {where(netns)}") from None
    for rtype, payload in replies:
        if rtype == RTM_NEWLINK:
            return ifla.IFINFOMSG.decode(payload)["index"]
    raise KernelError(errno.ENODEV, f"no interface {name!r} in {where(netns)}")


def ifindex(name: str, netns: str | None = None, *, ipr: Any = None) -> int:
    with rtnl_session(netns, ipr) as sock:
        return _index(sock, name, netns)


def get_link(name: str, netns: str | None = None, *, ipr: Any = None) -> LinkState:
    """Read one device back; KernelError(ENODEV) if there is none by that name."""
    with rtnl_session(netns, ipr) as sock:
        return LinkState.from_msg(get_msg(sock, validate_ifname(name), netns), netns)


def get_raw_link(name: str, netns: str | None = None, *, ipr: Any = None) -> RawLink:
    """The kernel's whole answer about one device (counters, nested info), undecoded."""
    with rtnl_session(netns, ipr) as sock:
        return get_msg(sock, validate_ifname(name), netns)


def link_exists(name: str, netns: str | None = None, *, ipr: Any = None) -> bool:
    try:
        ifindex(name, netns, ipr=ipr)
    except KernelError as e:
        if e.errno == errno.ENODEV:
            return False
        raise
    return True


def _dump_links(sock: RtnlSocket) -> list[RawLink]:
    return [RawLink.parse(p) for t, p in sock.request(RTM_GETLINK, NLM_F_DUMP, ifinfomsg()) if t == RTM_NEWLINK]


def list_links(netns: str | None = None, *, ipr: Any = None) -> list[LinkState]:
    with rtnl_session(netns, ipr) as sock:
        try:
            msgs = _dump_links(sock)
        except NetlinkError as e:
            raise kernel_error(e, f"list interfaces in {where(netns)}") from None
        return sorted((LinkState.from_msg(m, netns) for m in msgs), key=lambda s: s.ifindex)


def request(ipr: RtnlSocket, msg: Any, msg_type: int, msg_flags: int) -> list[tuple[int, bytes]]:
    """Send a prepared message (bytes after the nlmsghdr, or a pyroute2 message) on ``ipr``."""
    return ipr.request(msg_type, msg_flags, encoded(msg))


def _new_link(ipr: Any, msg: Any, what: str) -> None:
    try:
        request(ipr, msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            raise KernelError(
                errno.EEXIST,
                f"{what}: an interface with one of these names already exists "
                "(choose other names or delete the old device)",
            ) from None
        raise kernel_error(e, what) from None


def pair_result(
    ipr: Any, name: str, peer_name: str, netns: str | None, peer_netns: str | None
) -> LinkPair:
    idx = _index(ipr, name, netns)
    if peer_netns is None:
        pidx = _index(ipr, peer_name, netns)
    else:
        with rtnl_session(peer_netns) as psock:
            pidx = _index(psock, peer_name, peer_netns)
    return LinkPair(idx, pidx, name, peer_name, netns, peer_netns if peer_netns else netns)


def create_veth(spec: VethSpec, *, netns: str | None = None) -> LinkPair:
    """Create a veth pair: ``spec.name`` in ``netns``, the peer straight in ``spec.peer_netns``."""
    what = f"create veth {spec.name!r}/{spec.peer_name!r} in {where(netns)}"
    with rtnl_session(netns) as ipr, peer_netns_fd(spec.peer_netns) as fd:
        _new_link(ipr, encode_veth_bytes(spec, fd), what)
        try:
            return pair_result(ipr, spec.name, spec.peer_name, netns, spec.peer_netns)
        except BaseException:
            delete_raw(ipr, spec.name, netns, missing_ok=True)
            raise


def delete_raw(ipr: Any, name: str, netns: str | None, *, missing_ok: bool) -> bool:
    try:
        request(ipr, ifla.LINK.encode({"IFLA_IFNAME": name}), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)
    except NetlinkError as e:
        if e.code == errno.ENODEV and missing_ok:
            return False
        raise kernel_error(e, f"delete interface {name!r} in {where(netns)}") from None
    return True


def delete_link(
    name: str, *, netns: str | None = None, missing_ok: bool = True, ipr: Any = None
) -> bool:
    """Delete a device; deleting either end of a veth/netkit pair deletes both.

    Returns False if there was nothing to delete (and ``missing_ok``), True otherwise.
    """
    validate_ifname(name)
    if netns is not None and ipr is None and not _netns_exists(netns):
        if missing_ok:
            return False
        raise _netns_missing(netns)
    with rtnl_session(netns, ipr) as sock:
        return delete_raw(sock, name, netns, missing_ok=missing_ok)


def _netns_exists(netns: str) -> bool:
    path = netns if "/" in netns else _netns.netns_path(netns)
    return _netns.is_netns_file(path)


def _netns_missing(netns: str) -> Exception:
    from nkframe.errors import NetnsNotFound

    return NetnsNotFound(netns)


# --------------------------------------------------------------------------------------------
# link settings


def _set(name: str, netns: str | None, ipr: Any, what: str, *, flags: int = 0, change: int = 0,
         attrs_: dict[str, Any] | None = None) -> None:
    with rtnl_session(netns, ipr) as sock:
        idx = _index(sock, name, netns)
        try:
            sock.request(RTM_NEWLINK, 0, ifla.LINK.encode(attrs_, index=idx, flags=flags, change=change))
        except NetlinkError as e:
            raise kernel_error(e, f"{what} {name!r} in {where(netns)}") from None


def set_up(name: str, netns: str | None = None, *, ipr: Any = None) -> None:
    _set(name, netns, ipr, "set up", flags=IFF_UP, change=IFF_UP)


def set_down(name: str, netns: str | None = None, *, ipr: Any = None) -> None:
    _set(name, netns, ipr, "set down", flags=0, change=IFF_UP)


def set_mtu(name: str, mtu: int, netns: str | None = None, *, ipr: Any = None) -> None:
    if not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise InvalidSpec(f"MTU {mtu!r} must be an integer in {MIN_MTU}..{MAX_MTU}")
    _set(name, netns, ipr, f"set MTU {mtu} on", attrs_={"IFLA_MTU": mtu})


def set_address(name: str, mac: str, netns: str | None = None, *, ipr: Any = None) -> None:
    _set(name, netns, ipr, f"set MAC address {mac} on", attrs_={"IFLA_ADDRESS": validate_mac(mac)})


def move_link(name: str, to_netns: str, *, new_name: str | None = None, netns: str | None = None) -> int:
    """Move device ``name`` from ``netns`` into ``to_netns`` (a name or a namespace file),
    renamed to ``new_name`` in the same request; returns its ifindex there.  A name taken in the
    target is the kernel's EEXIST and the device stays where it was."""
    target = new_name or name
    validate_ifname(target)
    with peer_netns_fd(to_netns) as fd:
        extra = {"IFLA_NET_NS_FD": fd, "IFLA_IFNAME": new_name or None}
        _set(name, netns, None, f"move into netns {to_netns}" + (f" as {new_name!r}" if new_name else ""), attrs_=extra)
    return ifindex(target, to_netns)


# --------------------------------------------------------------------------------------------
# addresses


def _family(ip: Any) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6




def _addr_msg(idx: int, iface: Any, nodad: bool) -> bytes:
    flags = IFA_F_NODAD if nodad else 0
    return rtmsgs.ADDR.encode({
        "family": _family(iface), "prefixlen": iface.network.prefixlen, "flags": flags,
        "scope": RT_SCOPE_UNIVERSE, "index": idx, "IFA_LOCAL": iface.ip, "IFA_ADDRESS": iface.ip,
        # IFA_FLAGS (u32) carries the same flag bits as the u8 header field, and wins over it.
        "IFA_FLAGS": IFA_F_NODAD if nodad else None,
    })


def add_address(
    name: str,
    cidr: str,
    netns: str | None = None,
    *,
    nodad: bool = False,
    exist_ok: bool = False,
    ipr: Any = None,
) -> None:
    """Add an address (v4 or v6) to a device.

    ``nodad`` skips IPv6 duplicate address detection, so the address is usable at once instead of
    ``tentative`` for a second or two (and never ``dadfailed`` between two test namespaces).
    """
    iface = parse_cidr(cidr)
    with rtnl_session(netns, ipr) as sock:
        idx = _index(sock, name, netns)
        try:
            sock.request(
                RTM_NEWADDR,
                NLM_F_CREATE | NLM_F_EXCL,
                _addr_msg(idx, iface, nodad and iface.version == 6),
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST and exist_ok:
                return
            raise kernel_error(e, f"add address {iface} to {name!r} in {where(netns)}") from None
        if nodad and iface.version == 6:
            _wait_local_route(sock, iface.ip, f"{iface} on {name!r} in {where(netns)}")


_LOCAL_ROUTE_WAIT = 2.0  # seconds; the kernel's address workqueue normally needs well under 1 ms


def _wait_local_route(sock: RtnlSocket, ip: Any, what: str) -> None:
    """Return once the kernel routes ``ip`` locally.

    An IPv6 address added without DAD is not usable when RTM_NEWADDR returns: its local route
    is installed by the addrconf workqueue a moment later, and a packet to the address in
    between is dropped ("no route").  A pod that was just given its address, or a test that
    sends at once, would lose its first packets.
    """
    import time

    req = rtmsgs.ROUTE.encode({"family": socket.AF_INET6, "dst_len": 128, "RTA_DST": ip})
    deadline = time.monotonic() + _LOCAL_ROUTE_WAIT
    delay = 0.0002
    while True:
        try:
            replies = sock.request(RTM_GETROUTE, 0, req)
        except NetlinkError as e:
            if e.code not in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise kernel_error(e, f"look up the route to {what}") from None
            replies = []
        if any(rtmsgs.ROUTE.header.decode(p)["type"] == RTN_LOCAL for _t, p in replies):
            return
        if time.monotonic() > deadline:
            raise KernelError(errno.ETIMEDOUT, f"address {what}: the kernel did not install its local route")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def del_address(
    name: str, cidr: str, netns: str | None = None, *, missing_ok: bool = True, ipr: Any = None
) -> None:
    iface = parse_cidr(cidr)
    _delete_on_device(name, netns, ipr, RTM_DELADDR, lambda idx: _addr_msg(idx, iface, False),
                      errno.EADDRNOTAVAIL, missing_ok,
                      f"delete address {iface} from {name!r} in {where(netns)}")


def _delete_on_device(name: str, netns: str | None, ipr: Any, mtype: int, build: Any,
                      missing_errno: int, missing_ok: bool, what: str) -> None:
    """Send one RTM_DEL* request about device ``name`` (``build(ifindex)`` is the message);
    ``missing_errno`` is the kernel's answer for "no such entry", fine with ``missing_ok``."""
    with rtnl_session(netns, ipr) as sock:
        idx = _index(sock, name, netns)
        try:
            sock.request(mtype, 0, build(idx))
        except NetlinkError as e:
            if e.code == missing_errno and missing_ok:
                return
            raise kernel_error(e, what) from None


def _device_dump(name: str, netns: str | None, ipr: Any, mtype: int, msg: Any, request_key: str,
                 index_field: str, noun: str) -> list[dict]:
    """The decoded entries (addresses, neighbours) of device ``name``, IPv4 then IPv6.  Strict
    checking lets the kernel filter the dump by ifindex; entries of other devices are dropped
    anyway for kernels that do not."""
    with rtnl_session(netns, ipr) as sock:
        idx = _index(sock, name, netns)
        what = f"list {noun} of {name!r} in {where(netns)}"
        req = lambda fam: msg.encode({"family": fam, request_key: idx})  # noqa: E731
        entries = map(msg.decode, _dump_both_families(sock, mtype, req, what))
        return [d for d in entries if d[index_field] == idx]


def list_addresses(
    name: str, netns: str | None = None, *, ipr: Any = None
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The addresses on a device, v4 first, as ip_interface values."""
    out = []
    for d in _device_dump(name, netns, ipr, RTM_GETADDR, rtmsgs.ADDR, "index", "index",
                          "addresses"):
        ip = d.get("IFA_LOCAL") or d.get("IFA_ADDRESS")
        if ip:
            out.append(ipaddress.ip_interface((ip, d["prefixlen"])))
    return sorted(out, key=lambda i: (i.version, i))


def node_addresses(netns: str | None = None, *, ipr: Any = None, versions: Any = (4, 6),
                   link_local: bool = True) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Every address on every device of a namespace (one dump per family).

    ``versions``: only these IP versions (a family not asked for is not dumped);
    ``link_local=False`` leaves out IPv6 link-local addresses (fe80::/10, on a prefix inside
    it), which every device that is up has one of: a node with a thousand pods has a thousand."""
    families = tuple(f for f, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)) if v in versions)
    with rtnl_session(netns, ipr) as sock:
        out = []
        what = f"list the addresses in {where(netns)}"
        req = lambda fam: rtmsgs.ADDR.encode({"family": fam})  # noqa: E731
        for p in _dump_both_families(sock, RTM_GETADDR, req, what, families):
            d = rtmsgs.ADDR.decode(p)
            plen = d["prefixlen"]
            ip = d.get("IFA_LOCAL") or d.get("IFA_ADDRESS")
            if not ip or (not link_local and ip.version == 6 and ip.is_link_local and plen >= 10):
                continue
            out.append(ipaddress.ip_interface((ip, plen)))
        return sorted(out, key=lambda i: (i.version, i))


def _dump_both_families(sock: RtnlSocket, mtype: int, request_for, what: str,
                        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> Iterator[bytes]:
    """The payloads of an IPv4 and then an IPv6 dump (a kernel without IPv6 gives only the first)."""
    for fam in families:
        try:
            replies = sock.request(mtype, NLM_F_DUMP, request_for(fam))
        except NetlinkError as e:
            if e.code == errno.EAFNOSUPPORT:
                continue
            raise kernel_error(e, what) from None
        for _t, p in replies:
            yield p


# --------------------------------------------------------------------------------------------
# routes


def _route_msg(
    dst: Any,
    *,
    idx: int | None,
    via: Any,
    onlink: bool,
    metric: int | None,
    table: int,
    scope: int | None,
) -> bytes:
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if via is not None else RT_SCOPE_LINK
    return rtmsgs.ROUTE.encode({
        "family": _family(dst), "dst_len": dst.prefixlen,
        "table": table if table < 256 else 252,  # RT_TABLE_COMPAT; RTA_TABLE carries the id
        "protocol": RTPROT_STATIC, "scope": scope, "type": RTN_UNICAST,
        "flags": RTNH_F_ONLINK if onlink else 0,
        "RTA_DST": dst.network_address if dst.prefixlen else None,
        "RTA_GATEWAY": via,
        "RTA_OIF": idx,
        "RTA_PRIORITY": metric,
        "RTA_TABLE": table,
    })


def _route(
    cmd: int,
    flags: int,
    dst: str,
    *,
    via: str | None,
    dev: str | None,
    onlink: bool,
    metric: int | None,
    table: int,
    netns: str | None,
    ipr: Any,
    what: str,
    ok_errno: int | None,
) -> None:
    net = parse_network(dst)
    gw = parse_ip(via) if via is not None else None
    if gw is not None and gw.version != net.version:
        raise InvalidSpec(f"route {dst}: gateway {via} is IPv{gw.version}, destination is not")
    if onlink and (gw is None or dev is None):
        raise InvalidSpec(f"route {dst}: 'onlink' needs both a gateway and a device")
    if gw is None and dev is None:
        raise InvalidSpec(f"route {dst}: needs a gateway, a device or both")
    with rtnl_session(netns, ipr) as sock:
        idx = _index(sock, dev, netns) if dev is not None else None
        msg = _route_msg(
            net, idx=idx, via=gw, onlink=onlink, metric=metric, table=table, scope=None
        )
        try:
            sock.request(cmd, flags, msg)
        except NetlinkError as e:
            if ok_errno is not None and e.code == ok_errno:
                return
            via_s = f" via {gw}" if gw is not None else ""
            dev_s = f" dev {dev}" if dev is not None else ""
            raise kernel_error(e, f"{what} {net}{via_s}{dev_s} in {where(netns)}") from None


def add_route(
    dst: str,
    *,
    via: str | None = None,
    dev: str | None = None,
    onlink: bool = False,
    metric: int | None = None,
    table: int = RT_TABLE_MAIN,
    replace: bool = False,
    netns: str | None = None,
    ipr: Any = None,
) -> None:
    """Add a route. ``dst`` is a CIDR, 'default' or 'default6'.

    ``onlink`` tells the kernel the gateway is reachable on ``dev`` even though no address on
    ``dev`` covers it: the usual pod default route ``default via 169.254.1.1 dev eth0 onlink``.
    A route with a device and no gateway is a link-scope route (``/32`` host routes to a pod).
    ``replace`` makes it idempotent.
    """
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
    flags |= NLM_F_REPLACE if replace else NLM_F_EXCL
    _route(
        RTM_NEWROUTE, flags, dst, via=via, dev=dev, onlink=onlink, metric=metric, table=table,
        netns=netns, ipr=ipr, what="add route", ok_errno=None,
    )


def del_route(
    dst: str,
    *,
    via: str | None = None,
    dev: str | None = None,
    metric: int | None = None,
    table: int = RT_TABLE_MAIN,
    missing_ok: bool = True,
    netns: str | None = None,
    ipr: Any = None,
) -> None:
    try:
        _route(
            RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, dst, via=via, dev=dev, onlink=False,
            metric=metric, table=table, netns=netns, ipr=ipr, what="delete route",
            ok_errno=errno.ESRCH if missing_ok else None,
        )
    except KernelError as e:
        # The route's device is gone: so is the route.
        if missing_ok and e.errno == errno.ENODEV:
            return
        raise


def add_host_route(
    ip: str, dev: str, *, netns: str | None = None, replace: bool = True, ipr: Any = None
) -> None:
    """A /32 (or /128) link-scope route to ``ip`` through ``dev``: how a node reaches a pod."""
    addr = parse_ip(ip)
    add_route(
        f"{addr}/{addr.max_prefixlen}", dev=dev, netns=netns, replace=replace, ipr=ipr
    )


def list_routes(
    netns: str | None = None, *, family: int = socket.AF_INET, table: int = RT_TABLE_MAIN,
    ipr: Any = None,
) -> list[dict[str, Any]]:
    """Routes of one table as plain dicts: dst ('default' or CIDR), via, dev, scope, flags."""
    with rtnl_session(netns, ipr) as sock:
        try:
            names = {m.index: m.name for m in _dump_links(sock)}
            replies = sock.request(RTM_GETROUTE, NLM_F_DUMP, rtmsgs.ROUTE.encode({"family": family}))
        except NetlinkError as e:
            raise kernel_error(e, f"list routes in {where(netns)}") from None
        out = []
        for _t, p in replies:
            d = rtmsgs.ROUTE.decode(p)
            if (d.get("RTA_TABLE") or d["table"]) != table or d["family"] != family:
                continue
            dst, gw = d.get("RTA_DST"), d.get("RTA_GATEWAY")
            out.append(
                {
                    "dst": f"{dst}/{d['dst_len']}" if dst else "default",
                    "via": str(gw) if gw else None,
                    "dev": names.get(d.get("RTA_OIF")),
                    "scope": d["scope"],
                    "onlink": bool(d["flags"] & RTNH_F_ONLINK),
                    "metric": d.get("RTA_PRIORITY"),
                }
            )
        return out


# --------------------------------------------------------------------------------------------
# neighbours


def _neigh_msg(idx: int, ip: Any, mac: str | None, state: int) -> bytes:
    return rtmsgs.NEIGH.encode({"family": _family(ip), "ifindex": idx, "state": state,
                                "NDA_DST": ip, "NDA_LLADDR": mac})


def add_neighbour(
    name: str, ip: str, mac: str, netns: str | None = None, *, ipr: Any = None
) -> None:
    """A permanent neighbour entry (replaces an existing one): no ARP/ND for that address."""
    addr = parse_ip(ip)
    mac = validate_mac(mac)
    with rtnl_session(netns, ipr) as sock:
        idx = _index(sock, name, netns)
        try:
            sock.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, _neigh_msg(idx, addr, mac, NUD_PERMANENT))
        except NetlinkError as e:
            raise kernel_error(
                e, f"add neighbour {addr} lladdr {mac} on {name!r} in {where(netns)}"
            ) from None


def del_neighbour(
    name: str, ip: str, netns: str | None = None, *, missing_ok: bool = True, ipr: Any = None
) -> None:
    addr = parse_ip(ip)
    _delete_on_device(name, netns, ipr, RTM_DELNEIGH, lambda idx: _neigh_msg(idx, addr, None, 0),
                      errno.ENOENT, missing_ok, f"delete neighbour {addr} on {name!r} in {where(netns)}")


def list_neighbours(
    name: str, netns: str | None = None, *, ipr: Any = None
) -> dict[str, str | None]:
    """{ip: lladdr} of the neighbour entries on a device."""
    return {str(d["NDA_DST"]): d.get("NDA_LLADDR")
            for d in _device_dump(name, netns, ipr, RTM_GETNEIGH, rtmsgs.NEIGH, "NDA_IFINDEX",
                                  "ifindex", "neighbours")
            if d.get("NDA_DST") is not None}


# --------------------------------------------------------------------------------------------
# sysctl


def _sysctl_path(key: str) -> str:
    rel = key.replace(".", "/") if "/" not in key else key
    if not rel.startswith("net/") or ".." in rel.split("/"):
        raise InvalidSpec(f"sysctl {key!r}: only keys under net. can be set per namespace")
    return f"/proc/sys/{rel}"


def _sysctl_io(key: str, path: str, value: str | int | None, netns: str | None) -> str:
    try:
        if value is not None:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        raise InvalidSpec(f"sysctl {key!r} does not exist") from None
    except OSError as e:
        raise KernelError(e.errno or errno.EIO, f"sysctl {key} in {where(netns)}") from None


def sysctl(key: str, value: str | int | None = None, netns: str | None = None) -> str:
    """Read (value None) or write a net sysctl, in ``netns``; returns the value now in force.

    ``key`` is dotted or slashed below /proc/sys (``net.ipv4.ip_forward``).  /proc/sys/net shows
    the namespace of the thread that opens the file, so switching the netns is enough.
    """
    path = _sysctl_path(key)
    with _netns.enter(netns):
        return _sysctl_io(key, path, value, netns)


def sysctls(values: dict[str, str | int], netns: str | None = None) -> dict[str, str]:
    """Write several net sysctls in ``netns`` with one namespace switch; the values in force."""
    paths = {k: _sysctl_path(k) for k in values}
    with _netns.enter(netns):
        return {k: _sysctl_io(k, paths[k], v, netns) for k, v in values.items()}
