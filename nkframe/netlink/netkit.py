"""netkit devices over rtnetlink.

The messages are the codec's (:mod:`nkframe.netlink.codec`; netkit's IFLA_INFO_DATA is declared in
:mod:`nkframe.netlink.kinds.netkit`).  pyroute2 0.9 has no netkit attributes; the nla class here
(registered as link kind ``netkit``, process-global, idempotent, re-done before every use so a
test that restores pyroute2's registry cannot break us) serves :func:`encode_netkit` and
:func:`encode_set_policy`, pyroute2's encoding of the same messages, which the unit tests hold
the codec's bytes to.  Nothing on the create, read or change paths goes through pyroute2.

Kernel behaviour the code relies on:

* The peer is created by the same RTM_NEWLINK as the primary, from the ifinfomsg + IFLA_*
  attributes nested in IFLA_NETKIT_PEER_INFO: IFLA_NET_NS_FD there puts it straight into its
  namespace under its final name, and IFLA_MTU there is the only way it gets an MTU (it does not
  inherit the primary's).
* rtnetlink parses IFLA_INFO_DATA leniently: an attribute newer than the running kernel is
  ignored, not refused.  So after creating we read the device back; an attribute we sent that the
  kernel does not report was not applied, and we remove the pair and raise NotSupported.
* A kernel without netkit answers RTM_NEWLINK with EOPNOTSUPP, "Unknown device type".
"""

from __future__ import annotations

import enum
import errno
from typing import Any

import attrs

from nkframe.errors import InvalidSpec, KernelError, NotSupported
from nkframe.netlink import ifla
from nkframe.netlink import links as _links
from nkframe.netlink._rtnl import extack, kernel_error, where
from nkframe.netlink.nlsock import NetlinkError
from nkframe.netlink.links import LinkPair, validate_ifname

__all__ = [
    "NetkitMode",
    "NetkitPolicy",
    "NetkitScrub",
    "NetkitPairing",
    "NetkitSpec",
    "NetkitInfo",
    "LinkPair",
    "validate_ifname",
    "encode_netkit",
    "create_netkit",
    "get_netkit",
    "register_link_kind",
]

from nkframe import uapi  # linux/if_link.h IFLA_NETKIT_* live there

class NetkitMode(enum.IntEnum):
    L2 = 0  # Ethernet device with a MAC, ARP/ND
    L3 = 1  # no L2 address, NOARP; the default


class NetkitPolicy(enum.IntEnum):
    """What a netkit end does with a packet when no BPF program is attached."""

    PASS = 0  # iproute2: forward
    DROP = 2  # iproute2: blackhole


class NetkitScrub(enum.IntEnum):
    """Whether skb->mark/priority are cleared when crossing to the peer (6.13, 6.12.y)."""

    NONE = 0
    DEFAULT = 1


class NetkitPairing(enum.IntEnum):
    PAIR = 0
    SINGLE = 1  # one device, no peer (7.1)


# Attributes a kernel may not know yet, the kernel that added them, and how we talk about them.
_NEWER_ATTRS = {
    "IFLA_NETKIT_SCRUB": ("scrub", "6.13 (6.12.y with the backport)"),
    "IFLA_NETKIT_PEER_SCRUB": ("peer_scrub", "6.13 (6.12.y with the backport)"),
    "IFLA_NETKIT_HEADROOM": ("headroom", "6.14"),
    "IFLA_NETKIT_TAILROOM": ("tailroom", "6.14"),
    "IFLA_NETKIT_PAIRING": ("pairing (single device mode)", "7.1"),
}

_NO_NETKIT = "the kernel has no netkit device (CONFIG_NETKIT is off; netkit needs Linux 6.7+)"


# --------------------------------------------------------------------------------------------
# pyroute2 nla classes


def _nla_classes() -> tuple[type, type]:
    from pyroute2.netlink import nla
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfveth

    class netkit_peer_info(ifinfveth):
        """struct ifinfomsg followed by IFLA_* attributes, like VETH_INFO_PEER."""

    class netkit_data(nla):
        prefix = "IFLA_NETKIT_"
        nla_map = (
            (0, "IFLA_NETKIT_UNSPEC", "none"),
            (uapi.IFLA_NETKIT_PEER_INFO, "IFLA_NETKIT_PEER_INFO", "peer_info"),
            (uapi.IFLA_NETKIT_PRIMARY, "IFLA_NETKIT_PRIMARY", "uint8"),
            (uapi.IFLA_NETKIT_POLICY, "IFLA_NETKIT_POLICY", "uint32"),
            (uapi.IFLA_NETKIT_PEER_POLICY, "IFLA_NETKIT_PEER_POLICY", "uint32"),
            (uapi.IFLA_NETKIT_MODE, "IFLA_NETKIT_MODE", "uint32"),
            (uapi.IFLA_NETKIT_SCRUB, "IFLA_NETKIT_SCRUB", "uint32"),
            (uapi.IFLA_NETKIT_PEER_SCRUB, "IFLA_NETKIT_PEER_SCRUB", "uint32"),
            (uapi.IFLA_NETKIT_HEADROOM, "IFLA_NETKIT_HEADROOM", "uint16"),
            (uapi.IFLA_NETKIT_TAILROOM, "IFLA_NETKIT_TAILROOM", "uint16"),
            (uapi.IFLA_NETKIT_PAIRING, "IFLA_NETKIT_PAIRING", "uint32"),
        )

        @staticmethod
        def peer_info(self: Any, *argv: Any, **kwarg: Any) -> type:
            return netkit_peer_info

    return netkit_data, netkit_peer_info


_netkit_data: type | None = None


def nla_class() -> type:
    """The IFLA_INFO_DATA nla class for kind ``netkit`` (built once)."""
    global _netkit_data
    if _netkit_data is None:
        _netkit_data = _nla_classes()[0]
    return _netkit_data


def register_link_kind() -> None:
    """Make pyroute2 encode/decode kind ``netkit`` with our class (idempotent).

    pyroute2's registry is one dict shared by the whole process; we only ever add our own entry.
    """
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    cls = nla_class()
    if ifinfmsg.ifinfo.data_map.get("netkit") is not cls:
        ifinfmsg.ifinfo.register_link_kind(module={"netkit": cls})


# --------------------------------------------------------------------------------------------
# value types


def _enum(cls: type[enum.IntEnum]) -> Any:
    def conv(value: Any) -> Any:
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.name.lower() for m in cls)
            raise InvalidSpec(f"{value!r} is not a {cls.__name__} ({names})") from None

    return conv


# iproute2 spells the policies forward/blackhole; accept those too.
def _policy(value: Any) -> NetkitPolicy:
    if isinstance(value, str) and value.lower() in ("forward", "blackhole"):
        return NetkitPolicy.PASS if value.lower() == "forward" else NetkitPolicy.DROP
    return _enum(NetkitPolicy)(value)


def _opt_policy(value: Any) -> NetkitPolicy | None:
    return None if value is None else _policy(value)


_u16 = attrs.validators.optional(_links.int_range(0, 0xFFFF, "headroom/tailroom"))


@attrs.frozen
class NetkitSpec:
    """A netkit device to create.

    ``name`` is the primary (the end that owns the BPF programs, usually in the node's netns);
    ``peer_name`` the peer, created directly in ``peer_netns`` (None: next to the primary).  Every
    option left None is not sent, so a spec that does not use a new feature works on old kernels.
    ``peer_mtu`` defaults to ``mtu``: the peer gets only the MTU we send.
    """

    name: str = attrs.field(validator=_links.check_ifname)
    peer_name: str | None = attrs.field(default=None)
    peer_netns: str | None = attrs.field(default=None, validator=_links.check_netns_name)
    mode: NetkitMode = attrs.field(default=NetkitMode.L3, converter=_enum(NetkitMode))
    policy: NetkitPolicy = attrs.field(default=NetkitPolicy.PASS, converter=_policy)
    peer_policy: NetkitPolicy = attrs.field(default=NetkitPolicy.PASS, converter=_policy)
    scrub: NetkitScrub | None = attrs.field(default=None, converter=_enum(NetkitScrub))
    peer_scrub: NetkitScrub | None = attrs.field(default=None, converter=_enum(NetkitScrub))
    headroom: int | None = attrs.field(default=None, validator=_u16)
    tailroom: int | None = attrs.field(default=None, validator=_u16)
    pairing: NetkitPairing = attrs.field(default=NetkitPairing.PAIR, converter=_enum(NetkitPairing))
    mtu: int | None = _links.optional_mtu()
    peer_mtu: int | None = _links.optional_mtu()
    num_tx_queues: int | None = _links.optional_queues()
    num_rx_queues: int | None = _links.optional_queues()
    peer_num_tx_queues: int | None = _links.optional_queues()
    peer_num_rx_queues: int | None = _links.optional_queues()
    address: str | None = attrs.field(default=None, converter=_links.to_mac)
    peer_address: str | None = attrs.field(default=None, converter=_links.to_mac)
    gso_max_size: int | None = _links.optional_size()
    gro_max_size: int | None = _links.optional_size()
    peer_gso_max_size: int | None = _links.optional_size()
    peer_gro_max_size: int | None = _links.optional_size()

    # Options that describe the peer; single mode has none of them.
    _PEER_FIELDS = (
        "peer_name", "peer_netns", "peer_scrub", "peer_mtu", "peer_num_tx_queues",
        "peer_num_rx_queues", "peer_address", "peer_gso_max_size", "peer_gro_max_size",
    )

    def __attrs_post_init__(self) -> None:
        label = f"netkit {self.name!r}"
        if self.pairing == NetkitPairing.SINGLE:
            set_peer = [f for f in self._PEER_FIELDS if getattr(self, f) is not None]
            if self.peer_policy != NetkitPolicy.PASS:
                set_peer.append("peer_policy")
            if set_peer:
                raise InvalidSpec(
                    f"{label}: single mode has no peer, but {', '.join(set_peer)} "
                    "is set; drop the peer options or use pairing=PAIR"
                )
            if self.policy != NetkitPolicy.PASS:
                raise InvalidSpec(
                    f"{label}: single mode only supports policy PASS (the kernel refuses DROP)"
                )
        else:
            if self.peer_name is None:
                raise InvalidSpec(f"{label}: a netkit pair needs peer_name")
            validate_ifname(self.peer_name)
            if self.peer_netns is None and self.peer_name == self.name:
                raise InvalidSpec(f"{label}: both ends in one netns need different names")
        if self.mode == NetkitMode.L3 and (self.address or self.peer_address):
            raise InvalidSpec(
                f"{label}: L3 mode devices have no MAC address; use mode=L2 to set one"
            )

    @classmethod
    def pair(cls, name: str, peer_name: str, *, peer_netns: str | None = None, **kw: Any) -> "NetkitSpec":
        return cls(name=name, peer_name=peer_name, peer_netns=peer_netns, **kw)

    @classmethod
    def single(cls, name: str, **kw: Any) -> "NetkitSpec":
        return cls(name=name, pairing=NetkitPairing.SINGLE, **kw)


@attrs.frozen
class NetkitInfo:
    """A netkit device read back from the kernel (primary or peer).

    ``peer_policy`` / ``peer_scrub`` are the *other* end's settings as the kernel reports them: on
    the peer they describe the primary.  Fields the running kernel does not report are None.
    """

    name: str
    ifindex: int
    primary: bool
    mode: NetkitMode
    policy: NetkitPolicy
    peer_policy: NetkitPolicy | None
    scrub: NetkitScrub | None
    peer_scrub: NetkitScrub | None
    headroom: int | None
    tailroom: int | None
    pairing: NetkitPairing | None
    mtu: int
    num_tx_queues: int | None
    num_rx_queues: int | None
    address: str | None
    gso_max_size: int | None
    gro_max_size: int | None
    peer_ifindex: int | None
    up: bool
    netns: str | None


# --------------------------------------------------------------------------------------------
# encoding


def info_data(spec: NetkitSpec, peer_netns_fd: int | None) -> dict[str, Any]:
    """IFLA_INFO_DATA of the RTM_NEWLINK that creates ``spec``, in the map of
    :mod:`nkframe.netlink.kinds.netkit` (the peer as a dict of IFLA_* attributes); only what
    is sent, in the order it is sent."""
    data: dict[str, Any] = {}
    if spec.pairing == NetkitPairing.PAIR:
        data["IFLA_NETKIT_PEER_INFO"] = dict(_links.peer_attrs(spec, peer_netns_fd))
    data["IFLA_NETKIT_MODE"] = int(spec.mode)
    data["IFLA_NETKIT_POLICY"] = int(spec.policy)
    if spec.pairing == NetkitPairing.PAIR:
        # Single mode counts any peer attribute as "a peer was asked for" and refuses it.
        data["IFLA_NETKIT_PEER_POLICY"] = int(spec.peer_policy)
    if spec.scrub is not None:
        data["IFLA_NETKIT_SCRUB"] = int(spec.scrub)
    if spec.peer_scrub is not None:
        data["IFLA_NETKIT_PEER_SCRUB"] = int(spec.peer_scrub)
    if spec.headroom is not None:
        data["IFLA_NETKIT_HEADROOM"] = spec.headroom
    if spec.tailroom is not None:
        data["IFLA_NETKIT_TAILROOM"] = spec.tailroom
    if spec.pairing == NetkitPairing.SINGLE:
        # PAIR is every kernel's default: only "single" is sent, so pairs work before 7.1.
        data["IFLA_NETKIT_PAIRING"] = int(spec.pairing)
    return data


def encode_netkit(spec: NetkitSpec, peer_netns_fd: int | None = None) -> Any:
    """The RTM_NEWLINK message as pyroute2 builds it (ifinfmsg, not yet encoded) for ``spec``.

    Not what :func:`create_netkit` sends (that is :func:`encode_netkit_bytes`, the codec's):
    this is the independent encoding the unit tests hold those bytes to.  ``peer_netns_fd`` is
    an open fd on the peer's namespace (None: the peer stays with the primary).  ``msg.encode()``
    then ``msg.data`` gives the bytes; nothing is sent.
    """
    register_link_kind()
    data = [(k, {"attrs": list(v.items())} if k == "IFLA_NETKIT_PEER_INFO" else v)
            for k, v in info_data(spec, peer_netns_fd).items()]
    return _links.new_link_message(spec, "netkit", data)


def encode_netkit_bytes(spec: NetkitSpec, peer_netns_fd: int | None = None) -> bytes:
    """The request's bytes after the 16-byte nlmsghdr: ifinfomsg + attributes, by the codec."""
    return _links.new_link_bytes(spec, "netkit", info_data(spec, peer_netns_fd))


# --------------------------------------------------------------------------------------------
# decoding


def _decode(d: dict, netns: str | None) -> NetkitInfo:
    """A NetkitInfo from an RTM_NEWLINK body as the codec decodes it (ifla.LINK)."""
    linkinfo = d.get("IFLA_LINKINFO") or {}
    kind = linkinfo.get("IFLA_INFO_KIND")
    name = d.get("IFLA_IFNAME")
    if kind != "netkit":
        raise InvalidSpec(f"interface {name!r} in {where(netns)} is {kind or 'no kind'}, not netkit")
    data = linkinfo.get("IFLA_INFO_DATA")
    get = data.get if isinstance(data, dict) else (lambda key: None)

    def opt(key: str, cls: type[enum.IntEnum]) -> Any:
        v = get(key)
        if v is None:
            return None
        try:
            return cls(v)
        except ValueError:
            return v

    mode = opt("IFLA_NETKIT_MODE", NetkitMode)
    policy = opt("IFLA_NETKIT_POLICY", NetkitPolicy)
    return NetkitInfo(
        name=name,
        ifindex=d["index"],
        primary=bool(get("IFLA_NETKIT_PRIMARY")),
        mode=mode if mode is not None else NetkitMode.L3,
        policy=policy if policy is not None else NetkitPolicy.PASS,
        peer_policy=opt("IFLA_NETKIT_PEER_POLICY", NetkitPolicy),
        scrub=opt("IFLA_NETKIT_SCRUB", NetkitScrub),
        peer_scrub=opt("IFLA_NETKIT_PEER_SCRUB", NetkitScrub),
        headroom=get("IFLA_NETKIT_HEADROOM"),
        tailroom=get("IFLA_NETKIT_TAILROOM"),
        pairing=opt("IFLA_NETKIT_PAIRING", NetkitPairing),
        mtu=d.get("IFLA_MTU"),
        num_tx_queues=d.get("IFLA_NUM_TX_QUEUES"),
        num_rx_queues=d.get("IFLA_NUM_RX_QUEUES"),
        address=d.get("IFLA_ADDRESS"),
        gso_max_size=d.get("IFLA_GSO_MAX_SIZE"),
        gro_max_size=d.get("IFLA_GRO_MAX_SIZE"),
        peer_ifindex=d.get("IFLA_LINK") or None,
        up=bool(d["flags"] & _links.IFF_UP),
        netns=netns,
    )


def decode_netkit(msg: Any, netns: str | None = None) -> NetkitInfo:
    """A NetkitInfo from an RTM_NEWLINK message: its body (bytes after the nlmsghdr), a
    :class:`~nkframe.netlink.links.RawLink`, or a pyroute2 message (its bytes are decoded)."""
    if isinstance(msg, _links.RawLink):
        body = msg.data
    elif isinstance(msg, (bytes, bytearray, memoryview)):
        body = bytes(msg)
    else:  # a pyroute2 message: decode the bytes it was parsed from (or encoded to)
        raw = bytes(msg.data)
        body = raw[msg.offset + 16 : msg.offset + msg["header"]["length"]] if msg["header"]["length"] else raw[16:]
    return _decode(ifla.LINK.decode(body), netns)


def get_netkit(name: str, *, netns: str | None = None, ipr: Any = None) -> NetkitInfo:
    """Read a netkit device back (either end)."""
    with _links.rtnl_session(netns, ipr) as sock:
        return decode_netkit(_links.get_msg(sock, validate_ifname(name), netns), netns)


# --------------------------------------------------------------------------------------------
# creation


def _not_applied(spec: NetkitSpec, info: NetkitInfo) -> list[str]:
    """Newer attributes we sent that the kernel did not report back (so did not apply)."""
    sent = set(info_data(spec, None))
    missing = []
    for key, (label, version) in _NEWER_ATTRS.items():
        if key not in sent:
            continue
        field = {
            "IFLA_NETKIT_SCRUB": info.scrub,
            "IFLA_NETKIT_PEER_SCRUB": info.peer_scrub,
            "IFLA_NETKIT_HEADROOM": info.headroom,
            "IFLA_NETKIT_TAILROOM": info.tailroom,
            "IFLA_NETKIT_PAIRING": info.pairing,
        }[key]
        if field is None:
            missing.append(f"{label} (Linux {version})")
    return missing


def create_netkit(spec: NetkitSpec, *, netns: str | None = None) -> LinkPair:
    """Create a netkit device: the primary in ``netns``, the peer straight into its own netns.

    Returns a LinkPair (for single mode the peer fields repeat the device).  Raises
    NotSupported when the kernel has no netkit or ignores an option the spec asks for,
    KernelError(EEXIST) when a name is taken, NetnsNotFound for a missing namespace.  On any
    failure nothing is left behind.
    """
    peer_desc = "" if spec.pairing == NetkitPairing.SINGLE else f"/{spec.peer_name!r}"
    what = f"create netkit {spec.name!r}{peer_desc} in {where(netns)}"
    with _links.rtnl_session(netns) as ipr, _links.peer_netns_fd(spec.peer_netns) as fd:
        msg = encode_netkit_bytes(spec, fd)
        try:
            _links.request(
                ipr,
                msg,
                _links.RTM_NEWLINK,
                _links.NLM_F_REQUEST | _links.NLM_F_ACK | _links.NLM_F_CREATE | _links.NLM_F_EXCL,
            )
        except NetlinkError as e:
            raise _create_error(e, spec, what) from None
        try:
            info = decode_netkit(_links.get_msg(ipr, spec.name, netns), netns)
            missing = _not_applied(spec, info)
            if missing:
                raise NotSupported(
                    "netkit",
                    f"the running kernel ignored {', '.join(missing)}; "
                    f"upgrade the kernel or leave those options unset ({what})",
                )
            if spec.pairing == NetkitPairing.SINGLE:
                return LinkPair(info.ifindex, info.ifindex, spec.name, spec.name, netns, netns)
            return _links.pair_result(ipr, spec.name, spec.peer_name, netns, spec.peer_netns)
        except BaseException:
            _links.delete_raw(ipr, spec.name, netns, missing_ok=True)
            raise


def _create_error(e: Any, spec: NetkitSpec, what: str) -> Exception:
    text = extack(e)
    if e.code == errno.EOPNOTSUPP:
        if "Unknown device type" in text or not text:
            return NotSupported("netkit", _NO_NETKIT)
        return NotSupported("netkit", f"{what}: the kernel refused the options ({text})")
    if e.code == errno.EEXIST:
        return KernelError(
            errno.EEXIST,
            f"{what}: an interface with one of these names already exists "
            "(choose other names or delete the old device)",
        )
    if e.code == errno.EADDRNOTAVAIL:
        return InvalidSpec(f"{what}: the kernel refused the MAC address ({text or 'not unicast'})")
    from nkframe.netlink._rtnl import kernel_error

    return kernel_error(e, what)


def encode_set_policy_bytes(ifindex: int, policy: NetkitPolicy | None, peer_policy: NetkitPolicy | None) -> bytes:
    """The RTM_NEWLINK body (no NLM_F_CREATE) that changes the default policies of an existing
    pair, by the codec; None leaves a policy out."""
    data = {"IFLA_NETKIT_POLICY": None if policy is None else int(policy),
            "IFLA_NETKIT_PEER_POLICY": None if peer_policy is None else int(peer_policy)}
    return _links.new_link_bytes(None, "netkit", data, index=ifindex)


def encode_set_policy(ifindex: int, policy: NetkitPolicy | None, peer_policy: NetkitPolicy | None) -> Any:
    """:func:`encode_set_policy_bytes` as pyroute2 builds it (ifinfmsg, not yet encoded): the
    tests' independent encoding."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    register_link_kind()
    data: list[tuple[str, Any]] = []
    if policy is not None:
        data.append(("IFLA_NETKIT_POLICY", int(policy)))
    if peer_policy is not None:
        data.append(("IFLA_NETKIT_PEER_POLICY", int(peer_policy)))
    msg = ifinfmsg()
    msg["family"] = 0
    msg["index"] = ifindex
    msg["attrs"] = [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "netkit"), ("IFLA_INFO_DATA", {"attrs": data})]})]
    return msg


def set_policy(
    name: str,
    *,
    policy: NetkitPolicy | str | None = None,
    peer_policy: NetkitPolicy | str | None = None,
    netns: str | None = None,
) -> None:
    """Change what a pair does with packets when no program is attached.

    Only the primary can change settings (the kernel answers EACCES on the peer); mode and peer
    info are fixed at creation, the two policies are not.  ``None`` leaves one as it is.
    """
    pol = _opt_policy(policy)
    peer_pol = _opt_policy(peer_policy)
    what = f"set netkit policy of {name!r} in {where(netns)}"
    with _links.rtnl_session(netns) as ipr:
        idx = _links.ifindex(name, netns, ipr=ipr)
        msg = encode_set_policy_bytes(idx, pol, peer_pol)
        try:
            _links.request(ipr, msg, _links.RTM_NEWLINK, _links.NLM_F_REQUEST | _links.NLM_F_ACK)
        except NetlinkError as e:
            raise kernel_error(e, what) from None
