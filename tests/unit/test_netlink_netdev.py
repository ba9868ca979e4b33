"""netdev genl encodings, checked against bytes computed here from linux/netdev.h.

queue attrs: ID 1, IFINDEX 2, TYPE 3 (rx 0, tx 1), NAPI_ID 4, DMABUF 5, IO_URING 6, XSK 7,
LEASE 8; lease nest: IFINDEX 1 (u32), QUEUE 2 (nest {ID, TYPE}), NETNS_ID 3 (s32).  Nests carry
NLA_F_NESTED (0x8000).  Every attribute is u32/s32 here, so each is 8 bytes, no padding.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkframe import uapi
from nkframe.errors import InvalidSpec
from nkframe.netlink import netdev
from nkframe.netlink.netdev import QueueType, decode_queue, encode_queue_create, encode_queue_get

NESTED = 0x8000


def hdr(length: int, atype: int) -> bytes:
    return struct.pack("<HH", length, atype)


def test_queue_create_exact_bytes():
    got = encode_queue_create(ifindex=7, qtype=QueueType.RX, lease_ifindex=2, lease_queue_id=5)
    expected = (
        hdr(8, 2) + struct.pack("<I", 7)  # ifindex
        + hdr(8, 3) + struct.pack("<I", 0)  # type rx
        + hdr(4 + 8 + 20, 8 | NESTED)  # lease: header + ifindex + queue nest = 32 bytes
        + hdr(8, 1) + struct.pack("<I", 2)  # lease.ifindex
        + hdr(4 + 16, 2 | NESTED)  # lease.queue (20 bytes)
        + hdr(8, 1) + struct.pack("<I", 5)  # queue.id
        + hdr(8, 3) + struct.pack("<I", 0)  # queue.type rx
    )
    assert got == expected
    assert len(got) == 16 + 32


def test_queue_create_with_netns_id_is_signed():
    got = encode_queue_create(9, "rx", 3, 0, lease_netns_id=-1)
    lease = (
        hdr(8, 1) + struct.pack("<I", 3)
        + hdr(20, 2 | NESTED) + hdr(8, 1) + struct.pack("<I", 0) + hdr(8, 3) + struct.pack("<I", 0)
        + hdr(8, 3) + struct.pack("<i", -1)
    )
    expected = (
        hdr(8, 2) + struct.pack("<I", 9)
        + hdr(8, 3) + struct.pack("<I", 0)
        + hdr(4 + len(lease), 8 | NESTED) + lease
    )
    assert got == expected


def test_queue_get_exact_bytes():
    assert encode_queue_get(4, 1, "tx") == (
        hdr(8, 2) + struct.pack("<I", 4) + hdr(8, 3) + struct.pack("<I", 1)
        + hdr(8, 1) + struct.pack("<I", 1)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ifindex": 0, "qtype": "rx", "lease_ifindex": 1, "lease_queue_id": 0},
        {"ifindex": 1, "qtype": "rx", "lease_ifindex": 0, "lease_queue_id": 0},
        {"ifindex": 1, "qtype": "rx", "lease_ifindex": 1, "lease_queue_id": -1},
        {"ifindex": 1, "qtype": "bogus", "lease_ifindex": 1, "lease_queue_id": 0},
        {"ifindex": 1, "qtype": 2, "lease_ifindex": 1, "lease_queue_id": 0},
        {"ifindex": 1, "qtype": "rx", "lease_ifindex": 1, "lease_queue_id": 0, "lease_netns_id": 2**31},
    ],
)
def test_queue_create_argument_errors(kwargs):
    with pytest.raises(InvalidSpec):
        encode_queue_create(**kwargs)


def test_decode_queue_get_reply_with_lease_and_flags():
    """A reply as the kernel would write it: queue 3 of dev 5, xsk bound, leased from dev 2 q 7."""
    lease = (
        hdr(8, 1) + struct.pack("<I", 2)
        + hdr(20, 2 | NESTED) + hdr(8, 1) + struct.pack("<I", 7) + hdr(8, 3) + struct.pack("<I", 0)
        + hdr(8, 3) + struct.pack("<i", 4)
    )
    reply = (
        hdr(8, 1) + struct.pack("<I", 3)
        + hdr(8, 2) + struct.pack("<I", 5)
        + hdr(8, 3) + struct.pack("<I", 0)
        + hdr(8, 4) + struct.pack("<I", 8193)
        + hdr(4, 7 | NESTED)  # empty xsk nest
        + hdr(4 + len(lease), 8 | NESTED) + lease
        + hdr(8, 99) + struct.pack("<I", 1)  # an attribute from a future kernel: ignored
    )
    q = decode_queue(reply)
    assert (q.id, q.ifindex, q.type, q.napi_id) == (3, 5, QueueType.RX, 8193)
    assert q.xsk and not q.io_uring and q.dmabuf is None
    assert q.lease == netdev.Lease(ifindex=2, queue_id=7, queue_type=QueueType.RX, netns_id=4)


def test_iter_attrs_stops_at_truncated_tail():
    data = hdr(8, 1) + struct.pack("<I", 1) + hdr(12, 2) + b"\0\0"
    assert list(netdev.iter_attrs(data)) == [(1, struct.pack("<I", 1))]


@given(
    ifindex=st.integers(1, 2**32 - 1),
    qtype=st.sampled_from(list(QueueType)),
    lease_ifindex=st.integers(1, 2**32 - 1),
    lease_queue_id=st.integers(0, 2**32 - 1),
    netns_id=st.none() | st.integers(-(2**31), 2**31 - 1),
)
def test_queue_create_round_trip(ifindex, qtype, lease_ifindex, lease_queue_id, netns_id):
    q = decode_queue(encode_queue_create(ifindex, qtype, lease_ifindex, lease_queue_id, netns_id))
    assert (q.ifindex, q.type, q.id) == (ifindex, qtype, None)
    assert q.lease == netdev.Lease(lease_ifindex, lease_queue_id, qtype, netns_id)


def test_op_table_matches_the_uapi_numbers():
    assert netdev.OPS[netdev.NETDEV_CMD_QUEUE_GET] == "queue-get"
    assert netdev.OPS[netdev.NETDEV_CMD_QUEUE_CREATE] == "queue-create"
    assert (netdev.NETDEV_CMD_QUEUE_GET, netdev.NETDEV_CMD_QUEUE_CREATE) == (10, 16)


def test_extack_text_is_extracted_from_a_capped_error():
    # nlmsgerr{error=-95, capped request header} + NLMSGERR_ATTR_MSG "nope"
    msg = struct.pack("<i", -95) + struct.pack("<IHHII", 20, 20, 5, 1, 0) + hdr(9, 1) + b"nope\0" + b"\0" * 3
    assert netdev._extack(msg, uapi.NLM_F_CAPPED | uapi.NLM_F_ACK_TLVS) == "nope"
    assert netdev._extack(msg, 0) == ""
