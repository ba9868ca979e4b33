import ipaddress

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkframe import specstore
from nkframe.engine import order_chain
from nkframe.errors import InvalidSpec, PluginError
from nkframe.types import (  # noqa: I001
    reserved_reason,
    AttachMode,
    DeviceMode,
    EndpointSpec,
    Hook,
    ProgramSpec,
    default_host_ifname,
    validate_ifname,
)


def test_ifname_limits():
    assert validate_ifname("a" * 15) == "a" * 15
    with pytest.raises(InvalidSpec, match="16 bytes; Linux allows at most 15"):
        validate_ifname("a" * 16)
    # bytes, not characters: 8 two-byte characters are 16 bytes
    with pytest.raises(InvalidSpec, match="16 bytes"):
        validate_ifname("é" * 8)
    for bad in ("", "a/b", "a:b", "a b", ".", ".."):
        with pytest.raises(InvalidSpec):
            validate_ifname(bad)


def test_spec_validation_messages():
    with pytest.raises(InvalidSpec, match="not an IP address or CIDR"):
        EndpointSpec(id="a", netns="p", addresses=["10.0.0.300/32"])
    with pytest.raises(InvalidSpec, match="listed twice"):
        EndpointSpec(id="a", netns="p", addresses=["10.0.0.1/32", "10.0.0.1/24"])
    with pytest.raises(InvalidSpec, match="endpoint id"):
        EndpointSpec(id="-bad", netns="p")
    with pytest.raises(InvalidSpec, match="at most 15"):
        EndpointSpec(id="a", netns="p", ifname="averyveryverylongname")
    with pytest.raises(InvalidSpec, match="L2 mode"):
        EndpointSpec(id="a", netns="p", mac="02:00:00:00:00:01")
    with pytest.raises(InvalidSpec, match="multicast"):
        EndpointSpec(id="a", netns="p", mode="l2", mac="03:00:00:00:00:01")
    with pytest.raises(InvalidSpec, match="not a valid AttachMode"):
        EndpointSpec(id="a", netns="p", attach="xdp")
    with pytest.raises(InvalidSpec, match="may not contain '/'"):
        EndpointSpec(id="a", netns="a/b")
    with pytest.raises(InvalidSpec, match="outside 68..65535"):
        EndpointSpec(id="a", netns="p", mtu=10)


def test_spec_defaults():
    s = EndpointSpec(id="pod-a", netns="p", addresses="10.0.1.5")
    assert s.addresses == (ipaddress.ip_interface("10.0.1.5/32"),)
    assert s.mode is DeviceMode.L3 and s.attach is AttachMode.AUTO
    assert s.node_ifname == default_host_ifname("pod-a")
    assert len(s.node_ifname.encode()) <= 15
    assert default_host_ifname("pod-a") != default_host_ifname("pod-b")


ids = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)


@given(
    eid=ids,
    v4=st.lists(st.ip_addresses(v=4).filter(lambda a: reserved_reason(a) is None), max_size=2, unique=True),
    v6=st.lists(st.ip_addresses(v=6).filter(lambda a: reserved_reason(a) is None), max_size=2, unique=True),
    mode=st.sampled_from(["l2", "l3"]),
    mtu=st.one_of(st.none(), st.integers(68, 65535)),
)
def test_specstore_round_trip(eid, v4, v6, mode, mtu):
    spec = EndpointSpec(id=eid, netns="pod", addresses=[str(a) for a in v4 + v6], mode=mode, mtu=mtu, options={"policy": {"x": [1, 2]}})
    raw = specstore.encode(spec)
    assert len(raw) == specstore.VALUE_SIZE
    assert specstore.decode(raw) == spec


def test_specstore_rejects_bad_input():
    with pytest.raises(InvalidSpec, match="unknown endpoint field"):
        specstore.from_dict({"id": "a", "netns": "p", "adresses": []})
    with pytest.raises(InvalidSpec, match="'netns' is required"):
        specstore.from_dict({"id": "a"})
    with pytest.raises(InvalidSpec, match="at most"):
        specstore.encode(EndpointSpec(id="a", netns="p", options={"big": "x" * 5000}))


def _p(name, order=500, before=(), after=()):
    return ProgramSpec(name=name, object="/x.o", program=name, hook=Hook.FROM_POD, order=order, before=before, after=after)


def test_order_chain_by_order_then_constraints():
    chain = order_chain([_p("fwd", 500), _p("policy", 100), _p("audit", 900, before=("policy",))])
    assert [p.name for p in chain] == ["audit", "policy", "fwd"]
    chain = order_chain([_p("fwd", 500), _p("policy", 100), _p("late", 0, after=("fwd",))])
    assert [p.name for p in chain] == ["policy", "fwd", "late"]
    # a constraint naming a program that is not contributed is ignored
    assert [p.name for p in order_chain([_p("a", 2, before=("ghost",)), _p("b", 1)])] == ["b", "a"]


def test_order_chain_errors():
    with pytest.raises(PluginError, match="cycle"):
        order_chain([_p("a", before=("b",)), _p("b", before=("a",))])
    with pytest.raises(PluginError, match="share the name"):
        order_chain([_p("a"), _p("a")])


def test_program_spec_validation():
    with pytest.raises(InvalidSpec, match="program name"):
        _p("Bad-Name")
    with pytest.raises(InvalidSpec, match="pin scope"):
        ProgramSpec(name="a", object="/x", program="a", hook=Hook.TO_POD, maps={"m": "node"})
    s = _p("a")
    assert attrs.evolve(s, order=1).order == 1


def test_netkit_set_policy_encoding():
    """RTM_NEWLINK body: ifinfomsg(index) + IFLA_LINKINFO{KIND "netkit", DATA{POLICY, PEER_POLICY}}."""
    import struct as st_

    from nkframe.netlink import netkit

    msg = netkit.encode_set_policy(7, netkit.NetkitPolicy.PASS, netkit.NetkitPolicy.DROP)
    msg.encode()
    body = bytes(msg.data[16:])
    ifinfo = st_.pack("<BxHiII", 0, 0, 7, 0, 0)
    kind = st_.pack("<HH", 4 + 7, 1) + b"netkit\0" + b"\0"  # IFLA_INFO_KIND, padded to 4
    pol = st_.pack("<HHI", 8, 3, 0) + st_.pack("<HHI", 8, 4, 2)  # POLICY=PASS, PEER_POLICY=DROP
    data = st_.pack("<HH", 4 + len(pol), 2) + pol  # IFLA_INFO_DATA
    linkinfo = st_.pack("<HH", 4 + len(kind) + len(data), 18) + kind + data  # IFLA_LINKINFO
    assert body[:16] == ifinfo
    # pyroute2 may or may not set NLA_F_NESTED on nests; compare with the flag masked off.
    got = bytearray(body[16:])
    for off in (0, 4 + len(kind)):
        got[off + 2 : off + 4] = (int.from_bytes(got[off + 2 : off + 4], "little") & 0x7FFF).to_bytes(2, "little")
    assert bytes(got) == linkinfo


@pytest.mark.parametrize("addr,why", [
    ("0.0.0.0/32", "unspecified"), ("255.255.255.255/32", "limited broadcast"), ("224.0.0.1/32", "multicast"),
    ("127.0.0.1/32", "loopback"), ("169.254.1.1/32", "link-local"), ("240.0.0.1/32", "class E"),
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("ff02::1/128", "multicast"), ("fe80::1/128", "link-local"),
])
def test_addresses_that_are_never_a_pods_are_refused_as_input(addr, why):
    with pytest.raises(InvalidSpec, match=why):
        EndpointSpec(id="a", netns="p", addresses=[addr])


def test_addresses_must_be_a_list():
    with pytest.raises(InvalidSpec, match="must be a list"):
        EndpointSpec(id="a", netns="p", addresses={"10.77.40.9/32": 1})


# --- VM endpoints: netkit single device and leases ---------------------------------------------


def test_lease_forms_and_round_trip():
    from nkframe import specstore
    from nkframe.agent import protocol
    from nkframe.types import DeviceKind, Endpoint, LeaseInfo, LeaseSpec

    s = EndpointSpec(id="vm", netns="p", device="netkit-single", mode="l2", mac="02:00:00:00:00:01",
                     leases=["eth1:3", {"uplink": "eth1", "queue": 4}, LeaseSpec("eth1", 0)])
    assert s.single and s.leases == (LeaseSpec("eth1", 3), LeaseSpec("eth1", 4), LeaseSpec("eth1", 0))
    assert specstore.from_dict(specstore.to_dict(s)) == s
    assert specstore.decode(specstore.encode(s)) == s
    ep = Endpoint(spec=s, device_kind=DeviceKind.NETKIT_SINGLE, node_ifindex=7, mechanism={},
                  leases=[LeaseInfo(queue=1, uplink_ifindex=3, uplink_queue=3, uplink="eth1")])
    assert protocol.endpoint_from_dict(protocol.endpoint_to_dict(ep)) == ep
    # A pair spec still round-trips with no leases.
    p = EndpointSpec(id="pod", netns="p")
    assert specstore.from_dict(specstore.to_dict(p)).leases == ()


@pytest.mark.parametrize("kw,match", [
    (dict(leases=["eth1:3"]), "need device 'netkit-single'"),
    (dict(device="veth", leases=["eth1:3"]), "need device 'netkit-single'"),
    (dict(device="netkit-single", leases=["eth1"]), "DEVICE:QUEUE"),
    (dict(device="netkit-single", leases=["eth1:x"]), "DEVICE:QUEUE"),
    (dict(device="netkit-single", leases=[":3"]), "non-empty"),
    (dict(device="netkit-single", leases=["a-very-long-device-name:3"]), "at most 15"),
    (dict(device="netkit-single", leases=["eth1:65536"]), "0..65535"),
    (dict(device="netkit-single", leases=[{"uplink": "eth1", "queue": True}]), "0..65535"),
    (dict(device="netkit-single", leases=[{"uplink": "eth1"}]), "exactly the keys"),
    (dict(device="netkit-single", leases=[{"uplink": "eth1", "queue": 1, "x": 2}]), "exactly the keys"),
    (dict(device="netkit-single", leases=["eth1:3", "eth1:3"]), "listed twice"),
    (dict(device="netkit-single", leases=[f"eth1:{i}" for i in range(65)]), "at most 64"),
    (dict(device="netkit-single", leases=7), "must be a list"),
    (dict(device="netkit-single", leases=["eth1:1", "eth2:1"]), "one physical device only"),
    (dict(device="netkit-single", attach="tcx"), "runs no BPF programs"),
    (dict(device="netkit-single", options={"netkit_policy": "drop"}), "pass policy"),
    (dict(device="netkit-single", mode="l2", host_mac="02:00:00:00:00:02"), "no node side"),
])
def test_bad_vm_endpoint_specs_are_refused(kw, match):
    with pytest.raises(InvalidSpec, match=match):
        EndpointSpec(id="vm", netns="p", **kw)


def test_vm_endpoint_spec_from_the_wire_refuses_bad_leases():
    from nkframe import specstore

    with pytest.raises(InvalidSpec, match="DEVICE:QUEUE"):
        specstore.from_dict({"id": "vm", "netns": "p", "device": "netkit-single", "leases": ["eth1"]})
