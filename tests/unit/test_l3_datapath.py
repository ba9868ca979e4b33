"""The L3/L2 datapath plugins without the kernel: layouts against the C header and the built
object, options, MACs, which plugin acts on which endpoint, the one-uplink-program rule."""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path

import pytest

import nkframe_l2
import nkframe_l3
from nkframe import objects, plugins
from nkframe.context import DeviceInfo, EndpointContext, UplinkContext
from nkframe.errors import InvalidSpec
from nkframe.types import DeviceHook, DeviceKind, DeviceMode, EndpointSpec, Hook
from nkframe_fwd import datapath, layout

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "include" / "nkframe_dp.h"


def _header() -> str:
    return HEADER.read_text()


def _define(name: str) -> int:
    m = re.search(rf"#define {name}\s+(0x[0-9a-fA-F]+|\d+)", _header())
    assert m, f"{name} not in {HEADER}"
    return int(m.group(1), 0)


def test_constants_match_the_header():
    assert layout.F_TO_POD_CHAIN == _define("NK_EP_F_TO_POD_CHAIN")
    assert layout.F_L2 == _define("NK_EP_F_L2")
    assert layout.MAX_ENDPOINT_ADDRS == _define("NK_DP_MAX_ENDPOINT_ADDRS")
    assert layout.MAX_DEVICES == _define("NK_DP_MAX_DEVICES")
    enum = dict(re.findall(r"\bNK_DP_([A-Z_]+)\s*=\s*(\d+),", _header()))
    assert int(enum.pop("STAT_MAX")) == layout.STAT_SLOTS
    assert {k: int(v) for k, v in enum.items()} == {s.name: s.value for s in layout.Stat}


def test_map_sizes_match_the_built_object():
    from nkframe import bpf

    for name in ("l3", "l2"):
        with bpf.BpfObject.open(objects.path(name)) as obj:
            eps = obj.maps[layout.ENDPOINTS_MAP]
            assert (eps.key_size, eps.value_size, eps.max_entries) == (layout.KEY.size, layout.INFO.size, layout.MAX_ENDPOINT_ADDRS)
            st = obj.maps[layout.STATS_MAP]
            # struct nk_dp_counters (every slot of one device) per ifindex
            assert (st.key_size, st.value_size, st.max_entries) == (4, layout.COUNTER.size * layout.STAT_SLOTS, layout.MAX_DEVICES)


def test_entry_and_key_round_trip():
    e = layout.EndpointEntry(ifindex=7, flags=layout.F_L2, owner=layout.owner_tag("pod-a"), pod_mac="02:00:00:00:00:01", node_mac="02:00:00:00:00:02")
    assert layout.EndpointEntry.unpack(e.pack()) == e
    assert len(e.pack()) == 24
    assert layout.endpoint_key("10.0.0.1") == struct.pack("<I", 4) + bytes([10, 0, 0, 1]) + bytes(12)
    for ip in ("10.0.0.1", "fd00::1"):
        assert layout.parse_key(layout.endpoint_key(ip)) == ipaddress.ip_address(ip)
    assert layout.owner_tag("pod-a") != layout.owner_tag("pod-b")


def test_counters_sum_over_cpus():
    cpus = [layout.COUNTER.pack(2, 100), layout.COUNTER.pack(3, 50)]
    assert layout.sum_counters(cpus) == (5, 150)
    assert layout.sum_counters(None) == (0, 0)
    # A device's value holds every slot; slot 2 of two CPUs.
    two = [layout.COUNTER.pack(1, 1) + layout.COUNTER.pack(0, 0) + layout.COUNTER.pack(7, 70),
           layout.COUNTER.pack(0, 0) * 2 + layout.COUNTER.pack(1, 10)]
    assert layout.sum_counters(two, 2) == (8, 80)
    assert layout.sum_counters(two, 0) == (1, 1)


def test_derived_macs_are_stable_unicast_and_local():
    a = datapath.derived_mac("pod-a", "pod")
    assert a == datapath.derived_mac("pod-a", "pod")
    assert a != datapath.derived_mac("pod-a", "node") != datapath.derived_mac("pod-b", "node")
    for mac in (a, datapath.derived_mac("x", "node")):
        first = int(mac[:2], 16)
        assert first & 1 == 0, "unicast"
        assert first & 2 == 2, "locally administered"


def test_l2_macs_from_the_spec_or_derived():
    s = EndpointSpec(id="p", netns="ns", mode="l2")
    assert datapath.l2_macs(s) == (datapath.derived_mac("p", "pod"), datapath.derived_mac("p", "node"))
    s = EndpointSpec(id="p", netns="ns", mode="l2", mac="02:aa:00:00:00:01", host_mac="02:aa:00:00:00:02")
    assert datapath.l2_macs(s) == ("02:aa:00:00:00:01", "02:aa:00:00:00:02")
    with pytest.raises(InvalidSpec, match="must differ"):
        datapath.l2_macs(EndpointSpec(id="p", netns="ns", mode="l2", mac="02:aa:00:00:00:01", host_mac="02:aa:00:00:00:01"))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"datapath": "x"}, "must be a mapping"),
        ({"datapath": {"gw": "1.2.3.4"}}, "unknown key"),
        ({"datapath": {"gateway4": "fe80::1"}}, "IPv4"),
        ({"datapath": {"gateway6": "169.254.1.1"}}, "IPv6"),
        ({"datapath": {"gateway4": "nonsense"}}, "not an IP address"),
        ({"datapath": {"gateway4": "224.0.0.1"}}, "unicast"),
        ({"datapath": {"gateway4": "10.1.0.5"}}, "also an address"),
    ],
)
def test_bad_options_are_refused(options, match):
    spec = EndpointSpec(id="p", netns="ns", addresses=["10.1.0.5/32"], options=options)
    with pytest.raises(InvalidSpec, match=match):
        datapath.validate(spec)


def test_options_defaults_and_overrides():
    spec = EndpointSpec(id="p", netns="ns")
    assert datapath.Options.from_spec(spec) == datapath.Options(ipaddress.IPv4Address("169.254.1.1"), ipaddress.IPv6Address("fe80::1"))
    spec = EndpointSpec(id="p", netns="ns", options={"datapath": {"gateway4": "10.255.0.1", "gateway6": "fe80::beef"}})
    assert str(datapath.Options.from_spec(spec).gateway6) == "fe80::beef"


@pytest.fixture
def pm(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    return plugins.make_manager(extra=[nkframe_l3, nkframe_l2])


@pytest.mark.parametrize("mode", ["l3", "l2"])
def test_validate_refuses_non_host_prefixes_in_its_mode(pm, mode):
    with pytest.raises(InvalidSpec, match="host addresses"):
        pm.hook.nkframe_endpoint_validate(spec=EndpointSpec(id="p", netns="ns", mode=mode, addresses=["10.1.0.5/24"]))
    pm.hook.nkframe_endpoint_validate(spec=EndpointSpec(id="p", netns="ns", mode=mode, addresses=["10.1.0.5/32", "fd00::5/128"]))


def test_netkit_single_endpoints_are_not_ours(pm):
    # the VM plugin's business: a prefix the datapath would refuse passes untouched
    pm.hook.nkframe_endpoint_validate(spec=EndpointSpec(id="p", netns="ns", device="netkit-single", addresses=["10.1.0.5/24"]))


def _ctx(mode: str, kind=DeviceKind.VETH) -> EndpointContext:
    spec = EndpointSpec(id="p", netns="ns", mode=mode, addresses=["10.1.0.5/32"])
    ctx = EndpointContext(spec=spec, node_netns="node", bpffs_root="/sys/fs/bpf/x", features=None)
    ctx.device = DeviceInfo(kind=kind, mode=spec.mode, node_ifname="nk0", node_ifindex=42, pod_ifname="eth0", pod_ifindex=2, reason="test")
    return ctx


@pytest.mark.parametrize("mode", ["l3", "l2"])
def test_each_plugin_contributes_for_its_own_mode_only(pm, mode):
    specs = [s for c in pm.hook.nkframe_programs_collect(ctx=_ctx(mode)) for s in (c or ())]
    assert [s.name for s in specs] == [f"{mode}_fwd"]
    [s] = specs
    assert s.hook is Hook.FROM_POD and s.order == 500
    assert s.maps == {"nk_endpoints": "global", "nk_dp_stats": "global"}
    # L3 has nothing per endpoint in its program: one loaded copy serves the node.  L2 compiles
    # the endpoint's MAC and gateways in, so each endpoint loads its own.
    assert "NODE_IFINDEX" not in s.globals
    assert s.shared is (mode == "l3")
    if mode == "l2":
        assert s.globals["GW4"] == bytes([169, 254, 1, 1])
        assert s.globals["GW6"] == ipaddress.IPv6Address("fe80::1").packed
        assert s.globals["NODE_MAC"] == layout.mac_bytes(datapath.derived_mac("p", "node"))


def test_no_programs_for_a_single_device(pm):
    ctx = _ctx("l3")
    ctx.device = DeviceInfo(kind=DeviceKind.NETKIT_SINGLE, mode=DeviceMode.L3, node_ifname="nk0", node_ifindex=42, pod_ifname=None, pod_ifindex=0, reason="test")
    assert [c for c in pm.hook.nkframe_programs_collect(ctx=ctx) if c] == []


@pytest.mark.parametrize("which", [[nkframe_l3], [nkframe_l2], [nkframe_l3, nkframe_l2], [nkframe_l2, nkframe_l3]])
def test_one_uplink_program_whichever_plugins_are_loaded(monkeypatch, which):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    pm = plugins.make_manager(extra=which)
    ctx = UplinkContext(ifname="up0", ifindex=2, node_netns=None, bpffs_root="/x", features=None)
    specs = [s for c in pm.hook.nkframe_uplink_programs(ctx=ctx) for s in (c or ())]
    assert [(s.name, s.hook, s.program) for s in specs] == [("dp_uplink", DeviceHook.INGRESS, "dp_uplink_in")]
    assert specs[0].maps["nk_endpoints"] == "global"


def test_uplink_program_kept_next_to_other_contributions():
    other = [object()]
    out = datapath.add_uplink_program([other, None])
    assert out[0] is other and [s.name for s in out[-1]] == ["dp_uplink"]
    assert datapath.add_uplink_program(out) == out
