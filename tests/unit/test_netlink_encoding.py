"""The exact bytes of the RTM_NEWLINK requests, computed here from the uAPI by hand.

Expected values are built with struct.pack from the numbers in linux/if_link.h and
linux/rtnetlink.h, not from the encoder, so a wrong attribute id, type width or nesting fails.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkframe.netlink import links, netkit
from nkframe.netlink.netkit import (
    NetkitMode,
    NetkitPairing,
    NetkitPolicy,
    NetkitScrub,
    NetkitSpec,
    decode_netkit,
    encode_netkit,
    encode_netkit_bytes,
)

# linux/if_link.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_NET_NS_FD, IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 28, 31, 32
IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE = 41, 58
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
NK_PEER_INFO, NK_POLICY, NK_PEER_POLICY, NK_MODE = 1, 3, 4, 5
NK_SCRUB, NK_PEER_SCRUB, NK_HEADROOM, NK_TAILROOM, NK_PAIRING = 6, 7, 8, 9, 10
VETH_INFO_PEER = 1


def nla(atype: int, payload: bytes) -> bytes:
    """struct nlattr {u16 nla_len; u16 nla_type;} + payload, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(atype: int, v: int) -> bytes:
    return nla(atype, struct.pack("=I", v))


def u16(atype: int, v: int) -> bytes:
    return nla(atype, struct.pack("=H", v))


def string(atype: int, s: str) -> bytes:
    return nla(atype, s.encode() + b"\0")


def mac(atype: int, m: str) -> bytes:
    return nla(atype, bytes(int(x, 16) for x in m.split(":")))


# struct ifinfomsg {u8 family; u8 pad; u16 type; s32 index; u32 flags; u32 change;}
IFINFOMSG = struct.pack("=BBHiII", 0, 0, 0, 0, 0, 0)


def linkinfo(kind: str, data: bytes) -> bytes:
    return nla(IFLA_LINKINFO, string(IFLA_INFO_KIND, kind) + nla(IFLA_INFO_DATA, data))


@pytest.fixture(autouse=True)
def _pyroute2_registry(restore_pyroute2_registry):
    """Every test here may register link kinds with pyroute2 (the oracle)."""


def test_l3_pair_defaults_same_netns():
    spec = NetkitSpec(name="nk0", peer_name="eth0")
    expected = IFINFOMSG + string(IFLA_IFNAME, "nk0") + linkinfo(
        "netkit",
        nla(NK_PEER_INFO, IFINFOMSG + string(IFLA_IFNAME, "eth0"))
        + u32(NK_MODE, 1)
        + u32(NK_POLICY, 0)
        + u32(NK_PEER_POLICY, 0),
    )
    assert encode_netkit_bytes(spec) == expected


def test_l2_with_macs_mtu_queues_peer_in_netns():
    spec = NetkitSpec(
        name="nk0",
        peer_name="eth0",
        peer_netns="pod",
        mode=NetkitMode.L2,
        address="02:00:00:00:00:01",
        peer_address="02:00:00:00:00:02",
        mtu=9000,
        num_tx_queues=2,
        num_rx_queues=3,
        peer_num_rx_queues=4,
    )
    peer = (
        IFINFOMSG
        + string(IFLA_IFNAME, "eth0")
        + u32(IFLA_NET_NS_FD, 42)
        + u32(IFLA_MTU, 9000)  # the peer MTU defaults to the primary's and is sent
        + u32(IFLA_NUM_RX_QUEUES, 4)
        + mac(IFLA_ADDRESS, "02:00:00:00:00:02")
    )
    expected = (
        IFINFOMSG
        + string(IFLA_IFNAME, "nk0")
        + u32(IFLA_MTU, 9000)
        + u32(IFLA_NUM_TX_QUEUES, 2)
        + u32(IFLA_NUM_RX_QUEUES, 3)
        + mac(IFLA_ADDRESS, "02:00:00:00:00:01")
        + linkinfo(
            "netkit",
            nla(NK_PEER_INFO, peer) + u32(NK_MODE, 0) + u32(NK_POLICY, 0) + u32(NK_PEER_POLICY, 0),
        )
    )
    assert encode_netkit_bytes(spec, peer_netns_fd=42) == expected


def test_policies_scrub_headroom_tailroom_and_peer_mtu():
    spec = NetkitSpec(
        name="nk0",
        peer_name="eth0",
        policy=NetkitPolicy.DROP,
        peer_policy=NetkitPolicy.DROP,
        scrub=NetkitScrub.NONE,
        peer_scrub=NetkitScrub.DEFAULT,
        headroom=64,
        tailroom=32,
        mtu=1500,
        peer_mtu=1400,
    )
    expected = IFINFOMSG + string(IFLA_IFNAME, "nk0") + u32(IFLA_MTU, 1500) + linkinfo(
        "netkit",
        nla(NK_PEER_INFO, IFINFOMSG + string(IFLA_IFNAME, "eth0") + u32(IFLA_MTU, 1400))
        + u32(NK_MODE, 1)
        + u32(NK_POLICY, 2)
        + u32(NK_PEER_POLICY, 2)
        + u32(NK_SCRUB, 0)
        + u32(NK_PEER_SCRUB, 1)
        + u16(NK_HEADROOM, 64)  # u16: 6-byte attribute padded to 8
        + u16(NK_TAILROOM, 32),
    )
    assert encode_netkit_bytes(spec) == expected


def test_big_tcp_sizes_on_both_ends():
    spec = NetkitSpec(
        name="nk0",
        peer_name="eth0",
        gso_max_size=196608,
        gro_max_size=196608,
        peer_gso_max_size=131072,
        peer_gro_max_size=131072,
    )
    expected = (
        IFINFOMSG
        + string(IFLA_IFNAME, "nk0")
        + u32(IFLA_GSO_MAX_SIZE, 196608)
        + u32(IFLA_GRO_MAX_SIZE, 196608)
        + linkinfo(
            "netkit",
            nla(
                NK_PEER_INFO,
                IFINFOMSG
                + string(IFLA_IFNAME, "eth0")
                + u32(IFLA_GSO_MAX_SIZE, 131072)
                + u32(IFLA_GRO_MAX_SIZE, 131072),
            )
            + u32(NK_MODE, 1)
            + u32(NK_POLICY, 0)
            + u32(NK_PEER_POLICY, 0),
        )
    )
    assert encode_netkit_bytes(spec) == expected


def test_single_mode_sends_no_peer_attribute_and_pairing_single():
    spec = NetkitSpec.single("nk0", mode=NetkitMode.L2, num_rx_queues=4)
    expected = IFINFOMSG + string(IFLA_IFNAME, "nk0") + u32(IFLA_NUM_RX_QUEUES, 4) + linkinfo(
        "netkit", u32(NK_MODE, 0) + u32(NK_POLICY, 0) + u32(NK_PAIRING, 1)
    )
    assert encode_netkit_bytes(spec) == expected


def test_nothing_unset_is_sent():
    """Old kernels must not see attributes the user did not ask for."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = encode_netkit(NetkitSpec(name="nk0", peer_name="eth0"))
    msg.encode()
    parsed = ifinfmsg(bytes(msg.data))
    parsed.decode()
    data = parsed.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert [a[0] for a in data["attrs"]] == [
        "IFLA_NETKIT_PEER_INFO",
        "IFLA_NETKIT_MODE",
        "IFLA_NETKIT_POLICY",
        "IFLA_NETKIT_PEER_POLICY",
    ]
    assert [a[0] for a in parsed["attrs"]] == ["IFLA_IFNAME", "IFLA_LINKINFO"]


def test_veth_encoding_with_peer_in_netns():
    spec = links.VethSpec(name="ve0", peer_name="eth0", peer_netns="pod", mtu=1450,
                          peer_address="02:00:00:00:00:02", peer_num_tx_queues=2)
    msg = links.encode_veth(spec, peer_netns_fd=7)
    msg.encode()
    peer = (
        IFINFOMSG
        + string(IFLA_IFNAME, "eth0")
        + u32(IFLA_NET_NS_FD, 7)
        + u32(IFLA_MTU, 1450)
        + u32(IFLA_NUM_TX_QUEUES, 2)
        + mac(IFLA_ADDRESS, "02:00:00:00:00:02")
    )
    expected = IFINFOMSG + string(IFLA_IFNAME, "ve0") + u32(IFLA_MTU, 1450) + linkinfo(
        "veth", nla(VETH_INFO_PEER, peer)
    )
    assert bytes(msg.data[16:]) == expected
    assert links.encode_veth_bytes(spec, peer_netns_fd=7) == expected


@given(st.builds(
    links.VethSpec, name=st.just("ve0"), peer_name=st.just("eth0"), peer_netns=st.sampled_from([None, "pod"]),
    mtu=st.none() | st.integers(68, 65535), peer_mtu=st.none() | st.integers(68, 65535),
    address=st.none() | st.just("02:00:00:00:00:01"), peer_address=st.none() | st.just("02:0a:0b:0c:0d:0e"),
    num_tx_queues=st.none() | st.integers(1, 64), peer_num_rx_queues=st.none() | st.integers(1, 64),
    gso_max_size=st.none() | st.integers(1, 65536), peer_gro_max_size=st.none() | st.integers(1, 65536)),
    st.none() | st.integers(0, 1000))
def test_veth_bytes_are_pyroute2s_bytes(spec, fd):
    """create_veth sends encode_veth_bytes; pyroute2's encoding of the same spec is the same."""
    msg = links.encode_veth(spec, peer_netns_fd=fd)
    msg.encode()
    assert links.encode_veth_bytes(spec, peer_netns_fd=fd) == bytes(msg.data[16:])


def test_nlmsghdr_length_matches():
    msg = encode_netkit(NetkitSpec(name="nk0", peer_name="eth0"))
    msg.encode()
    (length,) = struct.unpack_from("=I", msg.data, 0)
    assert length == len(msg.data)


def test_register_link_kind_is_idempotent_and_restorable():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    before = dict(ifinfmsg.ifinfo.data_map)
    netkit.register_link_kind()
    netkit.register_link_kind()
    assert ifinfmsg.ifinfo.data_map["netkit"] is netkit.nla_class()
    assert {k: v for k, v in ifinfmsg.ifinfo.data_map.items() if k != "netkit"} == {
        k: v for k, v in before.items() if k != "netkit"
    }


def test_encode_survives_a_registry_reset():
    """A test (or plugin) that restores pyroute2's registry must not break the next encode."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    ifinfmsg.ifinfo.data_map.pop("netkit", None)
    data = encode_netkit_bytes(NetkitSpec(name="nk0", peer_name="eth0"))
    assert u32(NK_MODE, 1) in data


# --- round trip through pyroute2's decoder --------------------------------------------------

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=15)
_macs = st.lists(st.integers(0, 255), min_size=5, max_size=5).map(
    lambda b: ":".join(f"{x:02x}" for x in [0x02, *b])
)


@st.composite
def specs(draw):
    mode = draw(st.sampled_from(list(NetkitMode)))
    l2 = mode == NetkitMode.L2
    return NetkitSpec(
        name=draw(_names),
        peer_name=draw(_names.filter(lambda n: True)),
        peer_netns="pod",
        mode=mode,
        policy=draw(st.sampled_from(list(NetkitPolicy))),
        peer_policy=draw(st.sampled_from(list(NetkitPolicy))),
        scrub=draw(st.none() | st.sampled_from(list(NetkitScrub))),
        peer_scrub=draw(st.none() | st.sampled_from(list(NetkitScrub))),
        headroom=draw(st.none() | st.integers(0, 0xFFFF)),
        tailroom=draw(st.none() | st.integers(0, 0xFFFF)),
        mtu=draw(st.none() | st.integers(68, 65535)),
        num_rx_queues=draw(st.none() | st.integers(1, 4096)),
        address=draw(_macs) if l2 and draw(st.booleans()) else None,
    )


@given(specs())
def test_encode_decode_round_trip(spec):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = encode_netkit(spec, peer_netns_fd=5)
    msg.encode()
    parsed = ifinfmsg(bytes(msg.data))
    parsed.decode()
    info = decode_netkit(parsed)
    assert info.name == spec.name
    assert info.mode == spec.mode
    assert info.policy == spec.policy
    assert info.peer_policy == spec.peer_policy
    assert info.scrub == spec.scrub
    assert info.peer_scrub == spec.peer_scrub
    assert info.headroom == spec.headroom
    assert info.tailroom == spec.tailroom
    assert info.mtu == spec.mtu
    assert info.num_rx_queues == spec.num_rx_queues
    assert info.address == spec.address
    assert info.pairing is None  # PAIR is never sent
    data = parsed.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    peer = data.get_attr("IFLA_NETKIT_PEER_INFO")
    assert peer.get_attr("IFLA_IFNAME") == spec.peer_name
    assert peer.get_attr("IFLA_MTU") == spec.mtu


def test_decode_refuses_other_kinds():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = links.encode_veth(links.VethSpec(name="ve0", peer_name="eth0"))
    msg.encode()
    parsed = ifinfmsg(bytes(msg.data))
    parsed.decode()
    from nkframe.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match="is veth, not netkit"):
        decode_netkit(parsed)


def test_single_mode_round_trip_reports_single():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = encode_netkit(NetkitSpec.single("nk1"))
    msg.encode()
    parsed = ifinfmsg(bytes(msg.data))
    parsed.decode()
    assert decode_netkit(parsed).pairing is NetkitPairing.SINGLE
