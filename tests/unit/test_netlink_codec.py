"""The declarative netlink codec (nkframe/netlink/codec.py) against pyroute2 as the oracle.

What the create paths send (links.encode_veth_bytes, netkit.encode_netkit_bytes, the netkit
policy change) is the codec's encoding; pyroute2's own encoding of the same message
(links.encode_veth, netkit.encode_netkit, netkit.encode_set_policy) must be byte for byte the
same, for every option.  Decoding is checked by round trips through the codec and pyroute2.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkframe.netlink import codec, ifla, links, netdev, netkit
from nkframe.netlink.kinds import netkit as nk_kind
from nkframe.netlink.kinds import veth as veth_kind
from nkframe.netlink.netkit import NetkitMode, NetkitPairing, NetkitPolicy, NetkitScrub, NetkitSpec
from nkframe.uapi import NETDEV_CMD_QUEUE_CREATE, NETDEV_CMD_QUEUE_GET


@pytest.fixture(autouse=True)
def _pyroute2_registry(restore_pyroute2_registry):
    """Every test here may register link kinds with pyroute2 (the oracle)."""


def pyroute2_bytes(msg) -> bytes:
    msg.encode()
    return bytes(msg.data[16:])


def pyroute2_parse(body: bytes):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    netkit.register_link_kind()
    msg = ifinfmsg(struct.pack("=IHHII", 16 + len(body), 16, 0, 0, 0) + body)
    msg.decode()
    return msg


# --------------------------------------------------------------------------------------------
# the codec itself


def test_scalars_strings_macs_and_padding():
    m = codec.AttrMap("T", [("A", 1, codec.U8), ("B", 2, codec.U16), ("C", 3, codec.U32),
                            ("D", 4, codec.S32), ("E", 5, codec.U64), ("F", 6, codec.STRING),
                            ("G", 7, codec.MAC), ("H", 8, codec.FLAG), ("I", 9, codec.UINT)])
    value = {"A": 7, "B": 0x1234, "C": 0xDEADBEEF, "D": -2, "E": 1 << 40, "F": "eth0",
             "G": "02:00:00:00:00:01", "H": True, "I": 1 << 33}
    raw = m.encode(value)
    assert raw == (
        struct.pack("=HHB3x", 5, 1, 7) + struct.pack("=HHH2x", 6, 2, 0x1234)
        + struct.pack("=HHI", 8, 3, 0xDEADBEEF) + struct.pack("=HHi", 8, 4, -2)
        + struct.pack("=HHQ", 12, 5, 1 << 40) + struct.pack("=HH", 9, 6) + b"eth0\0\0\0\0"
        + struct.pack("=HH", 10, 7) + bytes([2, 0, 0, 0, 0, 1]) + b"\0\0"
        + struct.pack("=HH", 4, 8) + struct.pack("=HHQ", 12, 9, 1 << 33)
    )
    assert m.decode(raw) == value


def test_none_is_not_sent_order_is_the_callers_and_unknown_names_refused():
    m = codec.AttrMap("T", [("A", 1, codec.U32), ("B", 2, codec.U32)])
    assert m.encode({"B": 2, "A": None}) == struct.pack("=HHI", 8, 2, 2)
    assert m.encode([("B", 2), ("A", 1)]) == struct.pack("=HHIHHI", 8, 2, 2, 8, 1, 1)
    with pytest.raises(codec.CodecError, match="no attribute 'C'"):
        m.encode({"C": 1})
    with pytest.raises(codec.CodecError, match="does not fit"):
        m.encode({"A": -1})


def test_decode_keeps_unknown_attributes_and_stops_at_a_truncated_tail():
    m = codec.AttrMap("T", [("A", 1, codec.U32)])
    raw = struct.pack("=HHI", 8, 1, 5) + struct.pack("=HHI", 8, 77, 9) + struct.pack("=HH", 40, 1)
    assert m.decode(raw) == {"A": 5, 77: struct.pack("=I", 9)}
    assert m.decode(struct.pack("=HHH2x", 6, 1, 3)) == {"A": None}  # too short for a u32


def test_nested_flag_is_set_only_where_declared():
    inner = codec.AttrMap("I", [("X", 1, codec.U32)])
    m = codec.AttrMap("T", [("N", 1, codec.Nested(inner, nested=True)), ("P", 2, codec.Nested(inner))])
    raw = m.encode({"N": {"X": 1}, "P": {"X": 2}})
    assert struct.unpack_from("=HH", raw, 0)[1] == 1 | 0x8000
    assert struct.unpack_from("=HH", raw, 12)[1] == 2
    assert m.decode(raw) == {"N": {"X": 1}, "P": {"X": 2}}


def test_array_and_header_message():
    arr = codec.AttrMap("T", [("L", 1, codec.Array(codec.U32, nested=True))])
    assert arr.decode(arr.encode({"L": [5, 6]})) == {"L": [5, 6]}
    msg = codec.Message(codec.Header("BxH", ("a", "b")), arr)
    raw = msg.encode({"b": 3, "L": [1]}, a=2)
    assert raw[:4] == bytes([2, 0, 3, 0])
    assert msg.decode(raw) == {"a": 2, "b": 3, "L": [1]}


def test_link_info_data_follows_the_kind():
    body = links.encode_veth_bytes(links.VethSpec(name="ve0", peer_name="eth0", mtu=1400))
    d = ifla.LINK.decode(body)
    assert d["IFLA_LINKINFO"] == {
        "IFLA_INFO_KIND": "veth",
        "IFLA_INFO_DATA": {"VETH_INFO_PEER": {"family": 0, "type": 0, "index": 0, "flags": 0,
                                              "change": 0, "IFLA_IFNAME": "eth0", "IFLA_MTU": 1400}},
    }
    other = ifla.LINK.encode({"IFLA_LINKINFO": {"IFLA_INFO_KIND": "dummy", "IFLA_INFO_DATA": b"\1\2\3\4"}})
    assert ifla.LINK.decode(other)["IFLA_LINKINFO"]["IFLA_INFO_DATA"] == b"\1\2\3\4"


def test_kind_modules_declare_the_uapi_numbers():
    assert veth_kind.INFO_DATA.type_of("VETH_INFO_PEER") == 1
    assert [nk_kind.INFO_DATA.type_of(n) for n in (
        "IFLA_NETKIT_PEER_INFO", "IFLA_NETKIT_PRIMARY", "IFLA_NETKIT_POLICY", "IFLA_NETKIT_PEER_POLICY",
        "IFLA_NETKIT_MODE", "IFLA_NETKIT_SCRUB", "IFLA_NETKIT_PEER_SCRUB", "IFLA_NETKIT_HEADROOM",
        "IFLA_NETKIT_TAILROOM", "IFLA_NETKIT_PAIRING")] == list(range(1, 11))


# --------------------------------------------------------------------------------------------
# our bytes are pyroute2's bytes

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=15)
_macs = st.lists(st.integers(0, 255), min_size=5, max_size=5).map(
    lambda b: ":".join(f"{x:02x}" for x in [0x02, *b]))
_fds = st.none() | st.integers(0, 100000)
_opt_mtu = st.none() | st.integers(68, 65535)
_opt_q = st.none() | st.integers(1, 4096)
_opt_size = st.none() | st.integers(1, 0xFFFFFFFF)


@st.composite
def veth_specs(draw):
    name = draw(_names)
    peer_netns = draw(st.sampled_from([None, "pod"]))
    peer_name = draw(_names.filter(lambda n: n != name or peer_netns is not None))
    return links.VethSpec(
        name=name, peer_name=peer_name, peer_netns=peer_netns,
        mtu=draw(_opt_mtu), peer_mtu=draw(_opt_mtu),
        address=draw(st.none() | _macs), peer_address=draw(st.none() | _macs),
        num_tx_queues=draw(_opt_q), num_rx_queues=draw(_opt_q),
        peer_num_tx_queues=draw(_opt_q), peer_num_rx_queues=draw(_opt_q),
        gso_max_size=draw(_opt_size), gro_max_size=draw(_opt_size),
        peer_gso_max_size=draw(_opt_size), peer_gro_max_size=draw(_opt_size),
    )


@st.composite
def netkit_specs(draw):
    mode = draw(st.sampled_from(list(NetkitMode)))
    l2 = mode == NetkitMode.L2
    name = draw(_names)
    common = dict(
        mode=mode,
        scrub=draw(st.none() | st.sampled_from(list(NetkitScrub))),
        headroom=draw(st.none() | st.integers(0, 0xFFFF)),
        tailroom=draw(st.none() | st.integers(0, 0xFFFF)),
        mtu=draw(_opt_mtu), num_tx_queues=draw(_opt_q), num_rx_queues=draw(_opt_q),
        address=draw(st.none() | _macs) if l2 else None,
        gso_max_size=draw(_opt_size), gro_max_size=draw(_opt_size),
    )
    if draw(st.booleans()):
        return NetkitSpec.single(name, **common)
    peer_netns = draw(st.sampled_from([None, "pod"]))
    return NetkitSpec.pair(
        name, draw(_names.filter(lambda n: n != name or peer_netns is not None)), peer_netns=peer_netns,
        policy=draw(st.sampled_from(list(NetkitPolicy))),
        peer_policy=draw(st.sampled_from(list(NetkitPolicy))),
        peer_scrub=draw(st.none() | st.sampled_from(list(NetkitScrub))),
        peer_mtu=draw(_opt_mtu), peer_num_tx_queues=draw(_opt_q), peer_num_rx_queues=draw(_opt_q),
        peer_address=draw(st.none() | _macs) if l2 else None,
        peer_gso_max_size=draw(_opt_size), peer_gro_max_size=draw(_opt_size),
        **common,
    )


@settings(max_examples=300)
@given(veth_specs(), _fds)
def test_veth_bytes_equal_pyroute2s(spec, fd):
    assert links.encode_veth_bytes(spec, fd) == pyroute2_bytes(links.encode_veth(spec, fd))


@settings(max_examples=300)
@given(netkit_specs(), _fds)
def test_netkit_bytes_equal_pyroute2s(spec, fd):
    assert netkit.encode_netkit_bytes(spec, fd) == pyroute2_bytes(netkit.encode_netkit(spec, fd))


@given(st.integers(1, 2**31 - 1), st.none() | st.sampled_from(list(NetkitPolicy)),
       st.none() | st.sampled_from(list(NetkitPolicy)))
def test_set_policy_bytes_equal_pyroute2s(ifindex, pol, peer_pol):
    assert netkit.encode_set_policy_bytes(ifindex, pol, peer_pol) == pyroute2_bytes(
        netkit.encode_set_policy(ifindex, pol, peer_pol))


# --------------------------------------------------------------------------------------------
# decoding: codec round trip, and pyroute2 reads what the codec wrote


@given(netkit_specs(), _fds)
def test_netkit_codec_round_trip(spec, fd):
    body = netkit.encode_netkit_bytes(spec, fd)
    d = ifla.LINK.decode(body)
    assert d["IFLA_IFNAME"] == spec.name
    assert d.get("IFLA_MTU") == spec.mtu
    assert d.get("IFLA_ADDRESS") == spec.address
    info = d["IFLA_LINKINFO"]
    assert info["IFLA_INFO_KIND"] == "netkit"
    assert info["IFLA_INFO_DATA"] == {
        k: (dict(v, family=0, type=0, index=0, flags=0, change=0) if isinstance(v, dict) else v)
        for k, v in netkit.info_data(spec, fd).items()
    }
    assert ifla.LINK.encode(d) == body  # decoded values encode to the same bytes


@given(veth_specs(), _fds)
def test_pyroute2_reads_what_the_codec_wrote(spec, fd):
    parsed = pyroute2_parse(links.encode_veth_bytes(spec, fd))
    assert parsed.get_attr("IFLA_IFNAME") == spec.name
    assert parsed.get_attr("IFLA_ADDRESS") == spec.address
    peer = parsed.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == spec.peer_name
    assert peer.get_attr("IFLA_NET_NS_FD") == fd
    assert peer.get_attr("IFLA_MTU") == (spec.peer_mtu if spec.peer_mtu is not None else spec.mtu)


def test_single_mode_sends_pairing_and_no_peer():
    d = ifla.LINK.decode(netkit.encode_netkit_bytes(NetkitSpec.single("nk0")))
    assert d["IFLA_LINKINFO"]["IFLA_INFO_DATA"] == {
        "IFLA_NETKIT_MODE": 1, "IFLA_NETKIT_POLICY": 0, "IFLA_NETKIT_PAIRING": int(NetkitPairing.SINGLE)}


# --------------------------------------------------------------------------------------------
# generic netlink: the netdev family's messages against pyroute2's genlmsg encoding


def _pyroute2_netdev_classes():
    from pyroute2.netlink import NLA_F_NESTED, genlmsg, nla

    class queue_msg(genlmsg):
        nla_map = (
            (1, "NETDEV_A_QUEUE_ID", "uint32"),
            (2, "NETDEV_A_QUEUE_IFINDEX", "uint32"),
            (3, "NETDEV_A_QUEUE_TYPE", "uint32"),
            (8, "NETDEV_A_QUEUE_LEASE", "lease", NLA_F_NESTED),
        )

        class lease(nla):
            nla_map = (
                (1, "NETDEV_A_LEASE_IFINDEX", "uint32"),
                (2, "NETDEV_A_LEASE_QUEUE", "queue_ref", NLA_F_NESTED),
                (3, "NETDEV_A_LEASE_NETNS_ID", "int32"),
            )

            class queue_ref(nla):  # the queue id/type a lease names
                nla_map = ((1, "NETDEV_A_QUEUE_ID", "uint32"), (3, "NETDEV_A_QUEUE_TYPE", "uint32"))

    return queue_msg


def genl_bytes(cls, cmd: int, attrs_: list) -> bytes:
    msg = cls()
    msg["cmd"] = cmd
    msg["version"] = 1
    msg["attrs"] = attrs_
    msg.encode()
    return bytes(msg.data[16:])


@given(st.integers(1, 2**32 - 1), st.sampled_from(list(netdev.QueueType)), st.integers(1, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.none() | st.integers(-(2**31), 2**31 - 1))
def test_queue_create_bytes_equal_pyroute2s(ifindex, qtype, lease_ifindex, lease_qid, nsid):
    lease = [("NETDEV_A_LEASE_IFINDEX", lease_ifindex),
             ("NETDEV_A_LEASE_QUEUE", {"attrs": [("NETDEV_A_QUEUE_ID", lease_qid), ("NETDEV_A_QUEUE_TYPE", int(qtype))]})]
    if nsid is not None:
        lease.append(("NETDEV_A_LEASE_NETNS_ID", nsid))
    expected = genl_bytes(_pyroute2_netdev_classes(), NETDEV_CMD_QUEUE_CREATE, [
        ("NETDEV_A_QUEUE_IFINDEX", ifindex), ("NETDEV_A_QUEUE_TYPE", int(qtype)),
        ("NETDEV_A_QUEUE_LEASE", {"attrs": lease})])
    ours = netdev.encode_queue_create(ifindex, qtype, lease_ifindex, lease_qid, nsid)
    assert netdev.GENLMSGHDR.encode({"cmd": NETDEV_CMD_QUEUE_CREATE, "version": 1}) + ours == expected
    q = netdev.decode_queue(ours)
    assert (q.ifindex, q.type, q.lease) == (ifindex, qtype, netdev.Lease(lease_ifindex, lease_qid, qtype, nsid))


@given(st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from(list(netdev.QueueType)))
def test_queue_get_bytes_equal_pyroute2s(ifindex, qid, qtype):
    expected = genl_bytes(_pyroute2_netdev_classes(), NETDEV_CMD_QUEUE_GET, [
        ("NETDEV_A_QUEUE_IFINDEX", ifindex), ("NETDEV_A_QUEUE_TYPE", int(qtype)), ("NETDEV_A_QUEUE_ID", qid)])
    ours = netdev.encode_queue_get(ifindex, qid, qtype)
    assert netdev.GENLMSGHDR.encode({"cmd": NETDEV_CMD_QUEUE_GET, "version": 1}) + ours == expected


@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 3)), max_size=12),
       st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_ctrl_family_reply_round_trip(ops, fam_id, version):
    value = {"CTRL_ATTR_FAMILY_ID": fam_id, "CTRL_ATTR_FAMILY_NAME": "netdev", "CTRL_ATTR_VERSION": version,
             "CTRL_ATTR_OPS": [{"CTRL_ATTR_OP_ID": i, "CTRL_ATTR_OP_FLAGS": f} for i, f in ops]}
    assert netdev.CTRL.decode(netdev.CTRL.encode(value)) == value


def test_xdp_features_decode_either_width():
    for raw in (struct.pack("=HHI", 8, 3, 9), struct.pack("=HHQ", 12, 3, 9 | 1 << 40)):
        assert netdev.DEV.decode(raw)["NETDEV_A_DEV_XDP_FEATURES"] & 0xFFFF == 9


# --------------------------------------------------------------------------------------------
# reading links back: RawLink / LinkState / NetkitInfo through the codec, pyroute2 as the oracle

_opt_u32 = st.none() | st.integers(0, 2**32 - 1)


@st.composite
def netkit_replies(draw):
    """An RTM_NEWLINK body as the kernel answers about a netkit device (what we read of it)."""
    mode = draw(st.sampled_from([0, 1]))
    data = {
        "IFLA_NETKIT_PRIMARY": draw(st.sampled_from([0, 1])),
        "IFLA_NETKIT_POLICY": draw(st.sampled_from([0, 2])),
        "IFLA_NETKIT_PEER_POLICY": draw(st.none() | st.sampled_from([0, 2])),
        "IFLA_NETKIT_MODE": mode,
        "IFLA_NETKIT_SCRUB": draw(st.none() | st.sampled_from([0, 1])),
        "IFLA_NETKIT_PEER_SCRUB": draw(st.none() | st.sampled_from([0, 1])),
        "IFLA_NETKIT_HEADROOM": draw(st.none() | st.integers(0, 0xFFFF)),
        "IFLA_NETKIT_TAILROOM": draw(st.none() | st.integers(0, 0xFFFF)),
        "IFLA_NETKIT_PAIRING": draw(st.none() | st.sampled_from([0, 1])),
    }
    return ifla.LINK.encode({
        "IFLA_ADDRESS": draw(_macs) if mode == 0 else None,
        "IFLA_IFNAME": draw(_names),
        "IFLA_MTU": draw(st.integers(68, 65535)),
        "IFLA_LINK": draw(_opt_u32),
        "IFLA_OPERSTATE": draw(st.none() | st.integers(0, 6)),
        "IFLA_NUM_TX_QUEUES": draw(_opt_u32), "IFLA_NUM_RX_QUEUES": draw(_opt_u32),
        "IFLA_LINK_NETNSID": draw(st.none() | st.integers(-(2**31), 2**31 - 1)),
        "IFLA_GSO_MAX_SIZE": draw(_opt_u32), "IFLA_GRO_MAX_SIZE": draw(_opt_u32),
        "IFLA_LINKINFO": {"IFLA_INFO_KIND": "netkit", "IFLA_INFO_DATA": data},
    }, index=draw(st.integers(1, 2**31 - 1)), flags=draw(st.integers(0, 2**32 - 1)), type=draw(st.sampled_from([1, 65534])))


@given(netkit_replies())
def test_reading_a_link_back_agrees_with_pyroute2(body):
    raw = links.RawLink.parse(body)
    state = links.LinkState.from_msg(raw, None)
    info = netkit.decode_netkit(raw)
    p = pyroute2_parse(body)
    pdata = p.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert (state.ifindex, state.name, state.kind, state.mtu) == (
        p["index"], p.get_attr("IFLA_IFNAME"), "netkit", p.get_attr("IFLA_MTU"))
    assert (state.address, state.link_ifindex, state.link_netnsid) == (
        p.get_attr("IFLA_ADDRESS"), p.get_attr("IFLA_LINK"), p.get_attr("IFLA_LINK_NETNSID"))
    assert (state.num_tx_queues, state.num_rx_queues, state.gso_max_size, state.gro_max_size) == (
        p.get_attr("IFLA_NUM_TX_QUEUES"), p.get_attr("IFLA_NUM_RX_QUEUES"),
        p.get_attr("IFLA_GSO_MAX_SIZE"), p.get_attr("IFLA_GRO_MAX_SIZE"))
    assert state.up == bool(p["flags"] & 1)
    for key, got in [("IFLA_NETKIT_PRIMARY", int(info.primary)), ("IFLA_NETKIT_MODE", info.mode),
                     ("IFLA_NETKIT_POLICY", info.policy), ("IFLA_NETKIT_PEER_POLICY", info.peer_policy),
                     ("IFLA_NETKIT_SCRUB", info.scrub), ("IFLA_NETKIT_PEER_SCRUB", info.peer_scrub),
                     ("IFLA_NETKIT_HEADROOM", info.headroom), ("IFLA_NETKIT_TAILROOM", info.tailroom),
                     ("IFLA_NETKIT_PAIRING", info.pairing)]:
        assert got == pdata.get_attr(key), key
    assert (info.name, info.ifindex, info.mtu, info.address) == (state.name, state.ifindex, state.mtu, state.address)
    assert info.peer_ifindex == (state.link_ifindex or None)
    assert raw.decode() == ifla.LINK.decode(body)
    assert netkit.decode_netkit(p) == info  # a pyroute2 message is read from its bytes


def test_decode_netkit_refuses_another_kind_from_bytes():
    from nkframe.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match="is veth, not netkit"):
        netkit.decode_netkit(links.encode_veth_bytes(links.VethSpec(name="ve0", peer_name="eth0")))


# --------------------------------------------------------------------------------------------
# addresses, routes, neighbours: the add path's messages against pyroute2's ifaddrmsg/rtmsg/ndmsg

import ipaddress  # noqa: E402

from nkframe.netlink import rtmsgs  # noqa: E402

_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


def _pr2(cls, header: dict, attrs_: list) -> bytes:
    msg = cls()
    for k, v in header.items():
        msg[k] = v
    msg["attrs"] = attrs_
    msg.encode()
    return bytes(msg.data[16:])


@given(st.one_of(st.tuples(_v4, st.integers(0, 32)), st.tuples(_v6, st.integers(0, 128))),
       st.integers(1, 2**31 - 1), st.booleans())
def test_address_bytes_equal_pyroute2s(addr_plen, idx, nodad):
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    ip, plen = addr_plen
    iface = ipaddress.ip_interface((ip, plen))
    nodad = nodad and ip.version == 6
    attrs_ = [("IFA_LOCAL", str(ip)), ("IFA_ADDRESS", str(ip))] + ([("IFA_FLAGS", 2)] if nodad else [])
    expected = _pr2(ifaddrmsg, {"family": 2 if ip.version == 4 else 10, "prefixlen": plen,
                                "flags": 2 if nodad else 0, "scope": 0, "index": idx}, attrs_)
    ours = links._addr_msg(idx, iface, nodad)
    assert ours == expected
    d = rtmsgs.ADDR.decode(ours)
    assert (d["index"], d["prefixlen"], d["IFA_LOCAL"]) == (idx, plen, ip)


@given(st.one_of(st.tuples(_v4, st.integers(0, 32), st.none() | _v4),
                 st.tuples(_v6, st.integers(0, 128), st.none() | _v6)),
       st.none() | st.integers(1, 2**31 - 1), st.none() | st.integers(0, 2**32 - 1),
       st.sampled_from([254, 100, 1000]), st.booleans())
def test_route_bytes_equal_pyroute2s(dst_plen_via, idx, metric, table, onlink):
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    ip, plen, via = dst_plen_via
    if via is None and idx is None:
        idx = 3
    dst = ipaddress.ip_network((ip, plen), strict=False)
    attrs_ = ([("RTA_DST", str(dst.network_address))] if plen else []) + \
        ([("RTA_GATEWAY", str(via))] if via is not None else []) + \
        ([("RTA_OIF", idx)] if idx is not None else []) + \
        ([("RTA_PRIORITY", metric)] if metric is not None else []) + [("RTA_TABLE", table)]
    expected = _pr2(rtmsg, {"family": 2 if ip.version == 4 else 10, "dst_len": plen, "src_len": 0, "tos": 0,
                            "table": table if table < 256 else 252, "proto": 4,
                            "scope": 0 if via is not None else 253, "type": 1, "flags": 4 if onlink else 0},
                    attrs_)
    ours = links._route_msg(dst, idx=idx, via=via, onlink=onlink, metric=metric, table=table, scope=None)
    assert ours == expected
    d = rtmsgs.ROUTE.decode(ours)
    assert (d.get("RTA_GATEWAY"), d.get("RTA_OIF"), d.get("RTA_PRIORITY"), d["RTA_TABLE"]) == (via, idx, metric, table)


@given(st.one_of(_v4, _v6), st.integers(1, 2**31 - 1), st.none() | _macs, st.sampled_from([0, 0x80]))
def test_neighbour_bytes_equal_pyroute2s(ip, idx, mac, state):
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    attrs_ = [("NDA_DST", str(ip))] + ([("NDA_LLADDR", mac)] if mac is not None else [])
    expected = _pr2(ndmsg, {"family": 2 if ip.version == 4 else 10, "ifindex": idx, "state": state,
                            "flags": 0, "ndm_type": 0}, attrs_)
    ours = links._neigh_msg(idx, ip, mac, state)
    assert ours == expected
    d = rtmsgs.NEIGH.decode(ours)
    assert (d["ifindex"], d["NDA_DST"], d.get("NDA_LLADDR")) == (idx, ip, mac)


@given(st.integers(1, 2**31 - 1), _names, st.none() | st.integers(68, 65535), st.none() | _macs)
def test_link_requests_equal_pyroute2s(idx, name, mtu, mac):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    attrs_ = [("IFLA_IFNAME", name)] + ([("IFLA_MTU", mtu)] if mtu else []) + ([("IFLA_ADDRESS", mac)] if mac else [])
    expected = _pr2(ifinfmsg, {"family": 0, "index": idx, "flags": 1, "change": 1}, attrs_)
    assert ifla.LINK.encode(dict(attrs_), index=idx, flags=1, change=1) == expected
