"""Names, CIDRs, MACs and spec invariants: everything refused before a syscall is made."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkframe import netns
from nkframe.errors import InvalidSpec
from nkframe.netlink import links
from nkframe.netlink.netkit import (
    NetkitMode,
    NetkitPairing,
    NetkitPolicy,
    NetkitScrub,
    NetkitSpec,
)
from nkframe.netlink.links import VethSpec, parse_cidr, validate_ifname, validate_mac


# --- interface names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "eth0", "x" * 15, "nk-pod_1.2", "é" * 7])
def test_ifname_ok(name):
    assert validate_ifname(name) == name


def test_ifname_16_bytes_refused_with_the_count():
    with pytest.raises(InvalidSpec, match=r"'x{16}' is 16 bytes; Linux allows at most 15"):
        validate_ifname("x" * 16)


def test_ifname_counts_utf8_bytes_not_characters():
    name = "é" * 8  # 8 characters, 16 bytes
    assert len(name) == 8
    with pytest.raises(InvalidSpec, match="16 bytes"):
        validate_ifname(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\nb", "a\0b"])
def test_ifname_refused(name):
    with pytest.raises(InvalidSpec):
        validate_ifname(name)


@given(st.text(min_size=1, max_size=20))
def test_ifname_rule_matches_kernel_rule(name):
    raw = name.encode()
    ok = (
        len(raw) <= 15
        and name not in (".", "..")
        and not any(c in "/:\0" or c.isspace() for c in name)
    )
    if ok:
        assert validate_ifname(name) == name
    else:
        with pytest.raises(InvalidSpec):
            validate_ifname(name)


# --- netns names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 256, "a\0b"])
def test_netns_name_refused(name):
    with pytest.raises(InvalidSpec):
        netns.validate_name(name)


def test_netns_name_ok_and_path():
    assert netns.netns_path("pod-1") == "/run/netns/pod-1"
    assert netns.validate_name("x" * 255) == "x" * 255


# --- CIDRs, addresses, MACs -----------------------------------------------------------------


def test_cidr_parses_v4_and_v6():
    assert parse_cidr("10.0.0.1/24") == ipaddress.ip_interface("10.0.0.1/24")
    assert parse_cidr("fd00::1/64").version == 6
    assert parse_cidr("10.0.0.7").network.prefixlen == 32


@pytest.mark.parametrize("bad", ["10.0.0.1/33", "10.0.0/24", "fd00::1/129", "nonsense", "", "1.2.3.4/-1"])
def test_cidr_errors_are_invalid_spec(bad):
    with pytest.raises(InvalidSpec, match="not an IP address"):
        parse_cidr(bad)


def test_route_destination_must_be_a_network():
    assert links.parse_network("default") == ipaddress.ip_network("0.0.0.0/0")
    assert links.parse_network("default6") == ipaddress.ip_network("::/0")
    with pytest.raises(InvalidSpec, match="route destination"):
        links.parse_network("10.0.0.1/24")  # host bits set


def test_mac_normalised_and_checked():
    assert validate_mac("02-AA-bb-00-00-01") == "02:aa:bb:00:00:01"
    for bad in ["01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00", "zz:00:00:00:00:00"]:
        with pytest.raises(InvalidSpec):
            validate_mac(bad)


# --- NetkitSpec invariants ------------------------------------------------------------------


def test_netkit_defaults_are_l3_pass_pair():
    s = NetkitSpec(name="nk0", peer_name="eth0")
    assert (s.mode, s.policy, s.peer_policy, s.pairing) == (
        NetkitMode.L3,
        NetkitPolicy.PASS,
        NetkitPolicy.PASS,
        NetkitPairing.PAIR,
    )
    assert s.scrub is None and s.headroom is None and s.mtu is None


def test_netkit_accepts_names_and_iproute2_words():
    s = NetkitSpec(name="nk0", peer_name="eth0", mode="l2", policy="blackhole", peer_policy="drop",
                   scrub="none")
    assert s.mode is NetkitMode.L2
    assert s.policy is NetkitPolicy.DROP and s.peer_policy is NetkitPolicy.DROP
    assert s.scrub is NetkitScrub.NONE


def test_netkit_unknown_enum_value():
    with pytest.raises(InvalidSpec, match="NetkitPolicy"):
        NetkitSpec(name="nk0", peer_name="eth0", policy=1)
    with pytest.raises(InvalidSpec, match="NetkitMode"):
        NetkitSpec(name="nk0", peer_name="eth0", mode="l7")


def test_netkit_l3_rejects_mac():
    with pytest.raises(InvalidSpec, match="L3 mode devices have no MAC"):
        NetkitSpec(name="nk0", peer_name="eth0", address="02:00:00:00:00:01")
    with pytest.raises(InvalidSpec, match="L3 mode"):
        NetkitSpec(name="nk0", peer_name="eth0", peer_address="02:00:00:00:00:01")
    NetkitSpec(name="nk0", peer_name="eth0", mode=NetkitMode.L2, address="02:00:00:00:00:01")


def test_netkit_pair_needs_a_valid_peer_name():
    with pytest.raises(InvalidSpec, match="needs peer_name"):
        NetkitSpec(name="nk0")
    with pytest.raises(InvalidSpec, match="16 bytes"):
        NetkitSpec(name="nk0", peer_name="p" * 16)
    with pytest.raises(InvalidSpec, match="different names"):
        NetkitSpec(name="nk0", peer_name="nk0")
    NetkitSpec(name="eth0", peer_name="eth0", peer_netns="pod")  # fine: other netns


@pytest.mark.parametrize(
    "extra",
    [
        {"peer_name": "eth0"},
        {"peer_netns": "pod"},
        {"peer_mtu": 1500},
        {"peer_scrub": NetkitScrub.NONE},
        {"peer_policy": NetkitPolicy.DROP},
        {"peer_num_rx_queues": 2},
        {"peer_gso_max_size": 65536},
    ],
)
def test_single_mode_has_no_peer_options(extra):
    with pytest.raises(InvalidSpec, match="single mode has no peer"):
        NetkitSpec(name="nk0", pairing=NetkitPairing.SINGLE, **extra)


def test_single_mode_policy_pass_only():
    with pytest.raises(InvalidSpec, match="only supports policy PASS"):
        NetkitSpec.single("nk0", policy=NetkitPolicy.DROP)
    s = NetkitSpec.single("nk0", num_rx_queues=4, mode="l2")
    assert s.pairing is NetkitPairing.SINGLE and s.peer_name is None


@pytest.mark.parametrize(
    "field,value",
    [("mtu", 67), ("mtu", 65536), ("peer_mtu", 0), ("num_tx_queues", 0), ("num_rx_queues", 4097),
     ("headroom", 65536), ("tailroom", -1), ("gso_max_size", 0), ("mtu", True)],
)
def test_netkit_numeric_ranges(field, value):
    with pytest.raises(InvalidSpec, match=field):
        NetkitSpec(name="nk0", peer_name="eth0", **{field: value})


def test_netkit_bad_peer_netns_name():
    with pytest.raises(InvalidSpec):
        NetkitSpec(name="nk0", peer_name="eth0", peer_netns="..")


def test_netkit_spec_is_frozen():
    s = NetkitSpec(name="nk0", peer_name="eth0")
    with pytest.raises(AttributeError):
        s.mtu = 1500  # type: ignore[misc]


def test_veth_spec_validation():
    VethSpec(name="ve0", peer_name="eth0", peer_netns="pod", mtu=9000, peer_address="02:00:00:00:00:02")
    with pytest.raises(InvalidSpec, match="16 bytes"):
        VethSpec(name="v" * 16, peer_name="eth0")
    with pytest.raises(InvalidSpec, match="different names"):
        VethSpec(name="ve0", peer_name="ve0")
    with pytest.raises(InvalidSpec, match="MTU"):
        VethSpec(name="ve0", peer_name="eth0", mtu=10)
    with pytest.raises(InvalidSpec, match="multicast"):
        VethSpec(name="ve0", peer_name="eth0", address="03:00:00:00:00:01")
