"""The ``netdev`` generic netlink family: queue inspection and queue leasing (Linux 7.1).

Queue leasing lets a virtual device (a netkit in a pod) own a queue that is really an RX queue of a
physical NIC: ``queue-create`` on the virtual device with a ``lease`` naming the physical
(ifindex, queue) returns the new queue's id on the virtual device.  AF_XDP / io_uring bound to
that queue are proxied to the NIC.

Numbers are from ``Documentation/netlink/specs/netdev.yaml`` / ``linux/netdev.h``.  Generic
netlink op ids count the notification entries of the spec too, hence the gaps (2-4, 6-8).  The
messages are small and fixed, so they are built here with ``struct`` rather than through
pyroute2's genl classes: the unit tests check the exact bytes and the code has no dependency on
pyroute2 knowing this family.
"""

from __future__ import annotations

import enum
import errno
import struct

import attrs

from nkframe import netns as _netns
from nkframe.netlink import codec, nlsock
from nkframe.netlink.codec import AttrMap, Nested
from nkframe.errors import InvalidSpec, KernelError, NotSupported
from nkframe.uapi import (  # noqa: F401 - the CTRL_/NETDEV_ numbers are re-exported
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    CTRL_ATTR_OP_FLAGS,
    CTRL_ATTR_OP_ID,
    CTRL_ATTR_OPS,
    CTRL_ATTR_VERSION,
    NETDEV_A_DEV_IFINDEX,
    NETDEV_A_DEV_XDP_FEATURES,
    NETDEV_A_LEASE_IFINDEX,
    NETDEV_A_LEASE_NETNS_ID,
    NETDEV_A_LEASE_QUEUE,
    NETDEV_A_QUEUE_DMABUF,
    NETDEV_A_QUEUE_ID,
    NETDEV_A_QUEUE_IFINDEX,
    NETDEV_A_QUEUE_IO_URING,
    NETDEV_A_QUEUE_LEASE,
    NETDEV_A_QUEUE_NAPI_ID,
    NETDEV_A_QUEUE_TYPE,
    NETDEV_A_QUEUE_XSK,
    NETDEV_CMD_DEV_GET,
    NETDEV_CMD_QUEUE_CREATE,
    NETDEV_CMD_QUEUE_GET,
    NETDEV_FAMILY_VERSION,
    ETHTOOL_GDRVINFO,
    ETHTOOL_GTXCSUM,
    ETHTOOL_STXCSUM,
    SIOCETHTOOL,
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NETLINK_GENERIC,
    NLA_F_NESTED,
    NLM_F_DUMP,
)


NETDEV_FAMILY_NAME = "netdev"
#: enum netdev_xdp_act (bit -> name as in the spec)
XDP_ACT = {1: "basic", 2: "redirect", 4: "ndo-xmit", 8: "xsk-zerocopy", 16: "hw-offload",
           32: "rx-sg", 64: "ndo-xmit-sg"}

OPS = {
    1: "dev-get",
    5: "page-pool-get",
    9: "page-pool-stats-get",
    10: "queue-get",
    11: "napi-get",
    12: "qstats-get",
    13: "bind-rx",
    14: "napi-set",
    15: "bind-tx",
    16: "queue-create",
}

_LEASE_NEEDS = "queue leasing needs Linux 7.1 (netdev queue-create) and a driver that supports it"


class QueueType(enum.IntEnum):
    RX = 0
    TX = 1


def _qtype(value: object) -> QueueType:
    if isinstance(value, QueueType):
        return value
    if isinstance(value, str) and value.upper() in QueueType.__members__:
        return QueueType[value.upper()]
    try:
        return QueueType(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidSpec(f"{value!r} is not a queue type (rx or tx)") from None


# --------------------------------------------------------------------------------------------
# attribute encoding


def nla(atype: int, payload: bytes, *, nested: bool = False) -> bytes:
    return codec.nla(atype | (NLA_F_NESTED if nested else 0), payload)


def nla_u32(atype: int, value: int) -> bytes:
    return codec.nla(atype, codec.U32.encode(value))


def nla_s32(atype: int, value: int) -> bytes:
    return codec.nla(atype, codec.S32.encode(value))


iter_attrs = codec.iter_attrs  # (type without flags, payload) of each attribute


#: struct genlmsghdr {u8 cmd; u8 version; u16 reserved;}
GENLMSGHDR = codec.Header("BBH", ("cmd", "version", "reserved"))

# The family's attribute sets (netdev.yaml), declared for the codec.  Nests carry NLA_F_NESTED:
# generic netlink validates them strictly.  A lease names a queue with the queue set's id and
# type, so the two sets nest each other.
LEASE = AttrMap("netdev lease", [
    ("NETDEV_A_LEASE_IFINDEX", NETDEV_A_LEASE_IFINDEX, codec.U32),
    ("NETDEV_A_LEASE_QUEUE", NETDEV_A_LEASE_QUEUE, Nested(lambda: QUEUE, nested=True)),
    ("NETDEV_A_LEASE_NETNS_ID", NETDEV_A_LEASE_NETNS_ID, codec.S32),
])
_EMPTY_NEST = Nested(AttrMap("netdev empty nest", []), nested=True)  # io-uring / xsk info
QUEUE = AttrMap("netdev queue", [
    ("NETDEV_A_QUEUE_ID", NETDEV_A_QUEUE_ID, codec.U32),
    ("NETDEV_A_QUEUE_IFINDEX", NETDEV_A_QUEUE_IFINDEX, codec.U32),
    ("NETDEV_A_QUEUE_TYPE", NETDEV_A_QUEUE_TYPE, codec.U32),
    ("NETDEV_A_QUEUE_NAPI_ID", NETDEV_A_QUEUE_NAPI_ID, codec.U32),
    ("NETDEV_A_QUEUE_DMABUF", NETDEV_A_QUEUE_DMABUF, codec.U32),
    ("NETDEV_A_QUEUE_IO_URING", NETDEV_A_QUEUE_IO_URING, _EMPTY_NEST),
    ("NETDEV_A_QUEUE_XSK", NETDEV_A_QUEUE_XSK, _EMPTY_NEST),
    ("NETDEV_A_QUEUE_LEASE", NETDEV_A_QUEUE_LEASE, Nested(LEASE, nested=True)),
])
DEV = AttrMap("netdev dev", [
    ("NETDEV_A_DEV_IFINDEX", NETDEV_A_DEV_IFINDEX, codec.U32),
    ("NETDEV_A_DEV_XDP_FEATURES", NETDEV_A_DEV_XDP_FEATURES, codec.UINT),
])
# genetlink's control family: what resolve_family sends and reads.
CTRL = AttrMap("ctrl", [
    ("CTRL_ATTR_FAMILY_ID", CTRL_ATTR_FAMILY_ID, codec.U16),
    ("CTRL_ATTR_FAMILY_NAME", CTRL_ATTR_FAMILY_NAME, codec.STRING),
    ("CTRL_ATTR_VERSION", CTRL_ATTR_VERSION, codec.U32),
    ("CTRL_ATTR_OPS", CTRL_ATTR_OPS, codec.Array(Nested(AttrMap("ctrl op", [
        ("CTRL_ATTR_OP_ID", CTRL_ATTR_OP_ID, codec.U32),
        ("CTRL_ATTR_OP_FLAGS", CTRL_ATTR_OP_FLAGS, codec.U32),
    ])))),
])


def _check_u32(name: str, v: int, lo: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= 0xFFFFFFFF:
        raise InvalidSpec(f"{name} = {v!r} must be an integer in {lo}..{0xFFFFFFFF}")
    return v


def encode_queue_create(
    ifindex: int,
    qtype: QueueType | int | str,
    lease_ifindex: int,
    lease_queue_id: int,
    lease_netns_id: int | None = None,
) -> bytes:
    """The attribute payload of a queue-create request (after the genl header).

    ``ifindex``/``qtype``: the virtual device and the kind of queue to create on it; the lease
    names the physical device's queue (of the same type) to lend.  ``lease_netns_id`` is the id,
    as seen from the requesting socket's netns, of the netns the physical device lives in.
    """
    qt = _qtype(qtype)
    _check_u32("ifindex", ifindex, 1)
    _check_u32("lease_ifindex", lease_ifindex, 1)
    _check_u32("lease_queue_id", lease_queue_id)
    if lease_netns_id is not None:
        if not isinstance(lease_netns_id, int) or not -(2**31) <= lease_netns_id < 2**31:
            raise InvalidSpec(f"lease_netns_id = {lease_netns_id!r} must be an s32")
    return QUEUE.encode({
        "NETDEV_A_QUEUE_IFINDEX": ifindex,
        "NETDEV_A_QUEUE_TYPE": int(qt),
        "NETDEV_A_QUEUE_LEASE": {
            "NETDEV_A_LEASE_IFINDEX": lease_ifindex,
            "NETDEV_A_LEASE_QUEUE": {"NETDEV_A_QUEUE_ID": lease_queue_id, "NETDEV_A_QUEUE_TYPE": int(qt)},
            "NETDEV_A_LEASE_NETNS_ID": lease_netns_id,
        },
    })


def encode_queue_get(ifindex: int, queue_id: int, qtype: QueueType | int | str) -> bytes:
    _check_u32("ifindex", ifindex, 1)
    _check_u32("queue_id", queue_id)
    return QUEUE.encode({
        "NETDEV_A_QUEUE_IFINDEX": ifindex,
        "NETDEV_A_QUEUE_TYPE": int(_qtype(qtype)),
        "NETDEV_A_QUEUE_ID": queue_id,
    })


# --------------------------------------------------------------------------------------------
# values and decoding


@attrs.frozen
class Lease:
    """The physical queue a virtual device's queue stands for (or, seen from the physical side,
    the virtual queue holding it)."""

    ifindex: int
    queue_id: int | None
    queue_type: QueueType | None
    netns_id: int | None = None


@attrs.frozen
class QueueInfo:
    ifindex: int | None
    id: int | None
    type: QueueType | None
    napi_id: int | None = None
    dmabuf: int | None = None
    io_uring: bool = False
    xsk: bool = False
    lease: Lease | None = None


def _queue_type(v: int | None) -> QueueType | None:
    return None if v is None else QueueType(v)


def lease_from(d: dict) -> Lease:
    """A Lease from a decoded NETDEV_A_QUEUE_LEASE nest."""
    if d.get("NETDEV_A_LEASE_IFINDEX") is None:
        raise InvalidSpec("lease attribute without an ifindex")
    q = d.get("NETDEV_A_LEASE_QUEUE") or {}
    return Lease(d["NETDEV_A_LEASE_IFINDEX"], q.get("NETDEV_A_QUEUE_ID"),
                 _queue_type(q.get("NETDEV_A_QUEUE_TYPE")), d.get("NETDEV_A_LEASE_NETNS_ID"))


def decode_lease(payload: bytes) -> Lease:
    return lease_from(LEASE.decode(payload))


def decode_queue(payload: bytes) -> QueueInfo:
    """A QueueInfo from queue attributes: a queue-get reply or a queue-create request."""
    d = QUEUE.decode(payload)
    fields: dict[str, object] = {
        "ifindex": d.get("NETDEV_A_QUEUE_IFINDEX"),
        "id": d.get("NETDEV_A_QUEUE_ID"),
        "type": _queue_type(d.get("NETDEV_A_QUEUE_TYPE")),
        # io-uring / xsk are nests, empty today: presence is the information
        "io_uring": "NETDEV_A_QUEUE_IO_URING" in d,
        "xsk": "NETDEV_A_QUEUE_XSK" in d,
    }
    if "NETDEV_A_QUEUE_NAPI_ID" in d:
        fields["napi_id"] = d["NETDEV_A_QUEUE_NAPI_ID"]
    if "NETDEV_A_QUEUE_DMABUF" in d:
        fields["dmabuf"] = d["NETDEV_A_QUEUE_DMABUF"]
    if "NETDEV_A_QUEUE_LEASE" in d:
        fields["lease"] = lease_from(d["NETDEV_A_QUEUE_LEASE"])
    return QueueInfo(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# the socket


_NetlinkError = nlsock.NetlinkError
_extack = nlsock.extack_of  # the NLMSGERR_ATTR_MSG text of an error message


class GenlSocket:
    """A blocking generic netlink socket, created in (and bound for life to) one netns."""

    def __init__(self, netns: str | None = None):
        # Same rule as rtnetlink: the socket is made inside the namespace, never by a helper that
        # might create a missing one.
        with _netns.enter(netns):
            self._nl = nlsock.NetlinkSocket(NETLINK_GENERIC)
        self.netns = netns

    @property
    def sock(self):
        return self._nl.sock

    def close(self) -> None:
        self._nl.close()

    def request(
        self, family: int, cmd: int, version: int, attrs_: bytes, *, dump: bool = False
    ) -> list[bytes]:
        """Send one request; return the attribute payloads of the replies (raises _NetlinkError)."""
        body = GENLMSGHDR.encode({"cmd": cmd, "version": version}) + attrs_
        replies = self._nl.request(family, NLM_F_DUMP if dump else 0, body)
        return [p[4:] for _t, p in replies]  # skip the genlmsghdr

    def __enter__(self) -> "GenlSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.frozen
class FamilyInfo:
    id: int
    version: int
    op_ids: frozenset[int]


def resolve_family(gsock: GenlSocket, name: str) -> FamilyInfo:
    """CTRL_CMD_GETFAMILY: the family's id, version and the op ids this kernel implements."""
    try:
        replies = gsock.request(
            GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, CTRL.encode({"CTRL_ATTR_FAMILY_NAME": name})
        )
    except _NetlinkError as e:
        if e.code == errno.ENOENT:
            raise NotSupported(
                f"genl:{name}", f"the kernel has no {name!r} generic netlink family"
            ) from None
        raise KernelError(e.code, f"resolve generic netlink family {name!r}") from None
    if not replies:
        raise KernelError(errno.EPROTO, f"resolve generic netlink family {name!r}: no reply")
    d = CTRL.decode(replies[0])
    fam_id, version = d.get("CTRL_ATTR_FAMILY_ID"), d.get("CTRL_ATTR_VERSION")
    ops = {op["CTRL_ATTR_OP_ID"] for op in d.get("CTRL_ATTR_OPS") or ()
           if op.get("CTRL_ATTR_OP_ID") is not None}
    if fam_id is None:
        raise KernelError(errno.EPROTO, f"resolve generic netlink family {name!r}: no id")
    return FamilyInfo(fam_id, version or 1, frozenset(ops))


class NetdevFamily:
    """The netdev genl family in one netns (None: the caller's).  Use as a context manager."""

    def __init__(self, netns: str | None = None):
        self._sock = GenlSocket(netns)
        try:
            try:
                self.family = resolve_family(self._sock, NETDEV_FAMILY_NAME)
            except NotSupported:
                raise NotSupported(
                    "netdev_genl", "the kernel has no netdev generic netlink family (Linux 6.3+)"
                ) from None
        except BaseException:
            self._sock.close()
            raise
        self.netns = netns

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "NetdevFamily":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def op_ids(self) -> frozenset[int]:
        return self.family.op_ids

    def ops(self) -> set[str]:
        """Names of the operations this kernel implements ('queue-get', 'queue-create', ...)."""
        return {OPS.get(i, f"op-{i}") for i in self.family.op_ids}

    def has_queue_lease(self) -> bool:
        return NETDEV_CMD_QUEUE_CREATE in self.family.op_ids

    def _do(self, cmd: int, payload: bytes, *, dump: bool = False) -> list[bytes]:
        return self._sock.request(self.family.id, cmd, NETDEV_FAMILY_VERSION, payload, dump=dump)

    def queue_get(
        self, ifindex: int, queue_id: int, qtype: QueueType | int | str = QueueType.RX
    ) -> QueueInfo:
        qt = _qtype(qtype)
        what = f"get {qt.name.lower()} queue {queue_id} of ifindex {ifindex}"
        try:
            replies = self._do(NETDEV_CMD_QUEUE_GET, encode_queue_get(ifindex, queue_id, qt))
        except _NetlinkError as e:
            if e.code == errno.EOPNOTSUPP:
                raise NotSupported("netdev_queue_get", "queue-get needs Linux 6.8+") from None
            if e.code == errno.EINVAL:
                # The attributes themselves passed the policy: what is left is the queue id.
                raise InvalidSpec(
                    f"{what}: no such queue" + (f" ({e.extack})" if e.extack else "")
                ) from None
            if e.code == errno.ENOENT:
                raise KernelError(
                    errno.ENOENT, f"{what}: the device is down (queues are listed only while up)"
                ) from None
            raise _kernel_error(e, what) from None
        if not replies:
            raise KernelError(errno.EPROTO, f"{what}: empty reply")
        return decode_queue(replies[0])

    def queues(self, ifindex: int | None = None) -> list[QueueInfo]:
        """Every queue (of one device, or of all devices in the netns) — queue-get dump."""
        payload = QUEUE.encode({"NETDEV_A_QUEUE_IFINDEX": ifindex})
        try:
            replies = self._do(NETDEV_CMD_QUEUE_GET, payload, dump=True)
        except _NetlinkError as e:
            raise _kernel_error(e, "dump queues") from None
        return [decode_queue(r) for r in replies]

    def queue_create(
        self,
        ifindex: int,
        lease_ifindex: int,
        lease_queue_id: int,
        *,
        qtype: QueueType | int | str = QueueType.RX,
        lease_netns_id: int | None = None,
    ) -> int:
        """Lease physical queue ``lease_queue_id`` of ``lease_ifindex`` to virtual ``ifindex``.

        Returns the new queue's id on the virtual device (its old real_num_rx_queues).
        """
        qt = _qtype(qtype)
        payload = encode_queue_create(ifindex, qt, lease_ifindex, lease_queue_id, lease_netns_id)
        dev = device_label(ifindex, self.netns)
        phys = (device_label(lease_ifindex, self.netns) if lease_netns_id is None
                else f"ifindex {lease_ifindex} in netns id {lease_netns_id}")
        what = f"lease {qt.name.lower()} queue {lease_queue_id} of {phys} to {dev}"
        try:
            replies = self._do(NETDEV_CMD_QUEUE_CREATE, payload)
        except _NetlinkError as e:
            raise self._lease_refusal(e, what, ifindex, lease_ifindex, lease_queue_id,
                                      lease_netns_id) from None
        for r in replies:
            info = decode_queue(r)
            if info.id is not None:
                return info.id
        raise KernelError(errno.EPROTO, f"{what}: reply without a queue id")


    def _lease_refusal(self, e: "_NetlinkError", what: str, ifindex: int, lease_ifindex: int,
                       lease_queue_id: int, lease_netns_id: int | None) -> Exception:
        """The typed error for a refused queue-create (net/core/netdev-genl.c and
        drivers/net/netkit.c, 7.3): each names the devices, the queue and the kernel's reason."""
        says = f" (kernel says: {e.extack})" if e.extack else ""
        ext = e.extack or ""
        if e.code == errno.EINVAL and any(w in ext for w in _CAPABILITY_WORDS):
            # A capability refusal, whatever errno the kernel picked (7.3: EINVAL with
            # "Lease device does not support queue management operations" for virtio_net,
            # "Lease device is a virtual device" for veth).
            lease_drv = (device_driver(lease_ifindex, self.netns) if lease_netns_id is None
                         else f"ifindex {lease_ifindex} in netns id {lease_netns_id}")
            return NotSupported(
                "queue_lease",
                f"{what}: refused: {ext} (lease device driver: {lease_drv}, virtual device "
                f"driver: {device_driver(ifindex, self.netns)}); the lease device must be a "
                "physical NIC whose driver has queue management operations (netdevsim and some "
                "NIC drivers have them; veth and virtio_net do not)")
        if e.code == errno.EINVAL and "queue limit" in ext:
            return InvalidSpec(
                f"{what}: refused: {ext}: the virtual device has no spare RX queue; create it "
                "with num_rx_queues of at least 1 + the number of leases")
        if e.code == errno.EOPNOTSUPP:
            if "peer device" in ext:
                return NotSupported(
                    "queue_lease",
                    f"{what}: refused: {ext}: the primary of a netkit pair manages the pair and "
                    "cannot hold leased queues; lease to the peer or to a single-mode netkit")
            if "different devices" in ext:
                return NotSupported(
                    "queue_lease",
                    f"{what}: refused: {ext}: every queue leased to one device must come from "
                    "the same physical device")
            if self.has_queue_lease():
                return NotSupported(
                    "queue_lease",
                    f"{what}: a device refused leasing{says}; the physical device needs queue "
                    "management ops and the virtual one spare RX queues")
            return NotSupported("queue_lease", f"{_LEASE_NEEDS}{says}")
        if e.code == errno.ERANGE:
            src = (device_label(lease_ifindex, self.netns) if lease_netns_id is None
                   else f"ifindex {lease_ifindex}")
            return InvalidSpec(f"{what}: refused: {src} has no queue "
                               f"{lease_queue_id} (ERANGE){says}")
        if e.code == errno.EBUSY:
            return KernelError(
                errno.EBUSY,
                f"{what}: refused: the queue is busy{says}: it is already leased or in use by "
                "AF_XDP, io_uring or a memory provider (release it first)")
        if e.code == errno.ENODEV:
            where = ("in this netns" if lease_netns_id is None
                     else f"in netns id {lease_netns_id}")
            return KernelError(
                errno.ENODEV,
                f"{what}: refused: no such device {where}{says} (a physical device in another "
                "netns is named with lease_netns_id, the id this netns has for it)")
        if e.code == errno.ENONET:
            return InvalidSpec(f"{what}: refused: this netns knows no netns id {lease_netns_id}")
        return _kernel_error(e, what)

    def leased_queues(self) -> list[QueueInfo]:
        """The queues in this netns that are lent out, seen from the physical side.

        On 7.3 only the physical device's queue-get carries the lease (the virtual queue's
        does not: netdev_nl_queue_fill_lease walks physical -> virtual only), so this is how a
        virtual queue's physical queue is found: ``lease`` names the virtual device (ifindex,
        queue, and netns id when it lives in another netns).
        """
        return [q for q in self.queues() if q.lease is not None]

    def leases_held_by(self, ifindex: int, netns_id: int | None = None) -> list[tuple[int, QueueInfo]]:
        """(virtual queue id, physical queue) of every queue of this netns lent to the virtual
        device ``ifindex``, which lives in the netns this one calls ``netns_id`` (None: here).

        The way to list a virtual device's leases on 7.3: ask in the physical device's netns.
        """
        return sorted(((q.lease.queue_id, q) for q in self.leased_queues()
                       if q.lease is not None and q.lease.ifindex == ifindex
                       and q.lease.netns_id == netns_id and q.lease.queue_id is not None),
                      key=lambda t: t[0])

    def xdp_features(self, ifindex: int) -> set[str]:
        """The device's XDP features (dev-get ``xdp-features``: 'basic', 'xsk-zerocopy', ...)."""
        try:
            replies = self._do(NETDEV_CMD_DEV_GET, DEV.encode({"NETDEV_A_DEV_IFINDEX": ifindex}))
        except _NetlinkError as e:
            raise _kernel_error(e, f"get the XDP features of ifindex {ifindex}") from None
        for r in replies:
            bits = DEV.decode(r).get("NETDEV_A_DEV_XDP_FEATURES")
            if bits is not None:
                return {n for b, n in XDP_ACT.items() if bits & b}
        return set()


# Words of the kernel's extack when queue-create is refused for what a device is, not for what
# was asked (net/core/netdev-genl.c, 7.3).
_CAPABILITY_WORDS = ("not support", "virtual device", "queue management")
_DRVINFO = struct.Struct("=I32s32s32s32s32s12s5I")  # struct ethtool_drvinfo


def _ethtool(name: str, buf: bytearray, netns: str | None) -> None:
    """One SIOCETHTOOL request on device ``name`` in ``netns``; the kernel answers in ``buf``."""
    import fcntl
    import socket

    with _netns.enter(netns):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, struct.pack("16sP", name.encode(), _buf_addr(buf)))


def device_driver(ifindex: int, netns: str | None = None) -> str:
    """The driver of a device (ethtool GDRVINFO), e.g. ``veth``, ``virtio_net``, ``netdevsim``;
    ``"ifindex N (driver unknown)"`` when the kernel does not say."""
    import socket

    try:
        with _netns.enter(netns):
            name = socket.if_indextoname(ifindex)
        buf = bytearray(_DRVINFO.pack(ETHTOOL_GDRVINFO, *(b"",) * 6, *(0,) * 5))
        _ethtool(name, buf, netns)
        driver = _DRVINFO.unpack(bytes(buf))[1].split(b"\0", 1)[0].decode(errors="replace")
        return driver or f"ifindex {ifindex} (driver unknown)"
    except OSError:
        return f"ifindex {ifindex} (driver unknown)"


_ETHTOOL_VALUE = struct.Struct("=II")  # struct ethtool_value


def tx_checksum(name: str, netns: str | None = None) -> bool:
    """Does device ``name`` offload TX checksums (ethtool ``tx-checksumming``)?"""
    buf = bytearray(_ETHTOOL_VALUE.pack(ETHTOOL_GTXCSUM, 0))
    try:
        _ethtool(name, buf, netns)
    except OSError as e:
        raise KernelError(e.errno or 0, f"ethtool: read tx-checksumming of {name}") from None
    return bool(_ETHTOOL_VALUE.unpack(bytes(buf))[1])


def set_tx_checksum(name: str, on: bool, netns: str | None = None) -> None:
    """Turn TX checksum offload of device ``name`` on or off.  Off, the kernel completes every
    checksum (and segments GSO packets, which need it) before the device transmits."""
    buf = bytearray(_ETHTOOL_VALUE.pack(ETHTOOL_STXCSUM, int(on)))
    try:
        _ethtool(name, buf, netns)
    except OSError as e:
        raise KernelError(e.errno or 0, f"ethtool: turn tx-checksumming of {name} "
                                        f"{'on' if on else 'off'}") from None


def device_label(ifindex: int, netns: str | None = None) -> str:
    """``eth0 (ifindex 2)``, or ``ifindex 2`` when the device is not in ``netns``."""
    import socket

    try:
        with _netns.enter(netns):
            return f"{socket.if_indextoname(ifindex)} (ifindex {ifindex})"
    except OSError:
        return f"ifindex {ifindex}"


def _buf_addr(buf: bytearray) -> int:
    import ctypes

    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _kernel_error(e: _NetlinkError, what: str) -> KernelError:
    return KernelError(e.code, f"{what} (kernel says: {e.extack})" if e.extack else what)
