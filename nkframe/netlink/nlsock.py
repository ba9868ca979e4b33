"""A plain netlink socket (rtnetlink, generic netlink) and the attribute primitives.

Why not pyroute2 for this: an endpoint add makes a few dozen small requests (look up a device,
add an address, a route, a neighbour, set a device up).  Through pyroute2 0.9 each ``IPRoute``
builds an asyncio loop (~0.5 ms) and each request goes through its async core and generic
message classes (~0.65 ms for one ``link get``), against ~0.02 ms for the same request on a
socket of our own (``bench/profile.py`` prints both).  That was most of an add.  So every
request goes out on this socket; the messages are declared for :mod:`nkframe.netlink.codec`
and replies are decoded only as far as we read them.  pyroute2 stays as the tests' oracle for
our encoding (docs/architecture.md, "Netlink: one codec").

A socket belongs for life to the network namespace it was created in, so :func:`open_rtnl`
creates it inside :func:`nkframe.netns.enter` and leaves again at once.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from typing import Any

from nkframe.netlink import codec
from nkframe.uapi import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NETLINK_ROUTE,
    NLMSGERR_ATTR_MSG,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    SOL_NETLINK,
)


_HDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid


class NetlinkError(Exception):
    """The kernel refused a request: ``code`` is the positive errno, ``extack`` its text (or '')."""

    def __init__(self, code: int, extack: str = ""):
        super().__init__(code, extack or os.strerror(code))
        self.code = code
        self.extack = extack


# --------------------------------------------------------------------------------------------
# attributes


# The primitives are the codec's (one implementation); these names stay for callers that build
# or read a single attribute by hand.
nla = codec.nla
iter_attrs = codec.iter_attrs


def nla_u8(atype: int, v: int) -> bytes:
    return nla(atype, codec.U8.encode(v))


def nla_u16(atype: int, v: int) -> bytes:
    return nla(atype, codec.U16.encode(v))


def nla_u32(atype: int, v: int) -> bytes:
    return nla(atype, codec.U32.encode(v))


def nla_str(atype: int, s: str) -> bytes:
    return nla(atype, codec.STRING.encode(s))


def attr_map(buf: bytes | memoryview, off: int = 0) -> dict[int, bytes]:
    """Attribute type -> payload (the last one wins, as in the kernel's own parser)."""
    return dict(iter_attrs(buf, off))


def u32(p: bytes | None) -> int | None:
    return None if p is None else codec.U32.decode(p)


def u16(p: bytes | None) -> int | None:
    return None if p is None else codec.U16.decode(p)


def u8(p: bytes | None) -> int | None:
    return p[0] if p else None


def string(p: bytes | None) -> str | None:
    return None if p is None else codec.STRING.decode(p)


def mac(p: bytes | None) -> str | None:
    return None if p is None else codec.MAC.decode(p)


def extack_of(payload: bytes, flags: int) -> str:
    """The NLMSGERR_ATTR_MSG text of an NLMSG_ERROR payload, if the kernel sent one."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # struct nlmsgerr: int error + the request's nlmsghdr (+ its payload unless capped).
    off = 4 + 16
    if not flags & NLM_F_CAPPED:
        (orig_len,) = struct.unpack_from("=I", payload, 4)
        off = 4 + ((orig_len + 3) & ~3)
    for atype, p in iter_attrs(payload, off):
        if atype == NLMSGERR_ATTR_MSG:
            return string(p) or ""
    return ""


# --------------------------------------------------------------------------------------------
# the socket


class NetlinkSocket:
    """A blocking netlink socket (NETLINK_ROUTE unless told otherwise; netdev.py uses it for
    generic netlink), bound for life to the namespace it was created in.

    One request at a time (callers hold it per thread); every request carries NLM_F_ACK (or is
    a dump), so a reply sequence always ends with the kernel's ack, error or NLMSG_DONE.
    """

    def __init__(self, protocol: int = NETLINK_ROUTE):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            # Dumps filtered by the kernel (and requests with bad headers refused, not guessed).
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except BaseException:
            self.sock.close()
            raise
        self._seq = itertools.count(int.from_bytes(os.urandom(2), "little") + 1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "NetlinkSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, mtype: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Send one message; return the (type, payload) of every reply before the ack/DONE.

        Raises :class:`NetlinkError` when the kernel answers with an error.
        """
        seq = next(self._seq) & 0xFFFFFFFF
        if (flags & NLM_F_DUMP) != NLM_F_DUMP:
            flags |= NLM_F_ACK
        self.sock.send(_HDR.pack(16 + len(payload), mtype, flags | NLM_F_REQUEST, seq, 0) + payload)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, rtype, rflags, rseq, _pid = _HDR.unpack_from(data, off)
                if length < 16:
                    break
                body = data[off + 16 : off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue  # a late answer to an earlier, abandoned request
                if rtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", body, 0)
                    if err == 0:
                        return replies
                    raise NetlinkError(-err, extack_of(body, rflags))
                if rtype == NLMSG_DONE:
                    (err,) = struct.unpack_from("=i", body, 0) if len(body) >= 4 else (0,)
                    if err < 0:
                        raise NetlinkError(-err, "")
                    return replies
                replies.append((rtype, body))


RtnlSocket = NetlinkSocket  # the rtnetlink users' name for it


def open_rtnl(netns: str | None) -> NetlinkSocket:
    """An rtnetlink socket talking to ``netns`` (None: the caller's own namespace)."""
    from nkframe import netns as _netns

    with _netns.enter(netns):
        return NetlinkSocket()


def encoded(msg: Any) -> bytes:
    """The payload (after the nlmsghdr) of a pyroute2 message, or ``msg`` if it is bytes."""
    if isinstance(msg, (bytes, bytearray)):
        return bytes(msg)
    msg.encode()
    return bytes(msg.data[16:])
