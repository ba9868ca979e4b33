"""``nkframe status`` against the real kernel: chains, interface counters, run statistics,
counter maps, and the problems an operator needs to see (foreign programs, missing devices)."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from nkframe import attach, bpf, hookimpl, netns, objects, probe, status
from nkframe.cli import cli
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec, Hook, Mechanism, ProgramSpec

pytestmark = pytest.mark.root

NODE_IP, POD_IP = "10.97.0.1", "10.97.0.10"


class Counting:
    """count_out on from-pod, count_in on to-pod, one endpoint-scoped ``counts`` map; an uplink
    counter when asked."""

    def __init__(self, uplink: bool = False):
        self.uplink = uplink

    @hookimpl
    def nkframe_programs_collect(self, ctx):
        obj = objects.path("count")
        return [
            ProgramSpec(name="count_out", object=obj, program="count", hook=Hook.FROM_POD, globals={"SLOT": struct.pack("<I", 0)}, maps={"counts": "endpoint"}, plugin="counting"),
            ProgramSpec(name="count_in", object=obj, program="count", hook=Hook.TO_POD, globals={"SLOT": struct.pack("<I", 1)}, maps={"counts": "endpoint"}, plugin="counting"),
        ]

    @hookimpl
    def nkframe_datapath_program(self, mode):
        return "count_out"  # stands in for a datapath plugin: its program is what must be there

    @hookimpl
    def nkframe_uplink_programs(self, ctx):
        if not self.uplink:
            return None
        return [ProgramSpec(name="up_count", object=objects.path("count"), program="count", hook="ingress", globals={"SLOT": struct.pack("<I", 5)}, maps={"counts": "global"})]


@pytest.fixture
def built(node, bpffs_root):
    """A node with one endpoint (counters on both hooks) and a route pod -> node-local address."""
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting(uplink=True)], autoload=False, uplink=node.uplink)
    eng.setup_uplink()
    pod = node.pod()
    links.add_address("lo", f"{NODE_IP}/32", netns=node.netns)
    spec = EndpointSpec(id="pod-s", netns=pod, addresses=[f"{POD_IP}/32"])
    ep = eng.add_endpoint(spec)
    links.add_route(f"{NODE_IP}/32", dev="eth0", netns=pod)
    links.add_host_route(POD_IP, spec.node_ifname, netns=node.netns)
    try:
        yield eng, ep, pod
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)
        eng.teardown_uplink()


def _cli(node, bpffs_root, *args, check=True):
    """The CLI in-process (a fresh interpreter costs many seconds per start in the VM tiers)."""
    r = CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", bpffs_root, *args],
                           env={"NKFRAME_DISABLE_PLUGIN_AUTOLOAD": "1"})
    if check and r.exit_code != 0:
        raise AssertionError(f"nkframe {' '.join(args)} exited {r.exit_code}: {r.stderr} {r.exception!r}")
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def test_status_shows_chain_device_and_counters(node, bpffs_root, built):
    eng, ep, pod = built
    before = status.gather(eng).endpoints[0]
    assert udp_probe(pod, node.netns, NODE_IP, 7001, count=5) == 5

    st = status.gather(eng)
    assert [e.id for e in st.endpoints] == ["pod-s"]
    e = st.endpoints[0]
    assert e.device_kind == str(ep.device_kind)
    assert e.netns == pod and e.addresses == (f"{POD_IP}/32",)
    assert dict(e.attach) == {h: str(m) for h, m in ep.mechanism.items()}
    # The chain as the kernel holds it: same programs, same ids, in order, all ours, attached.
    assert [(p.hook, p.position, p.name, p.prog_id) for p in e.programs] == [
        (p.hook, 1, p.name, p.prog_id) for p in sorted(ep.programs, key=lambda p: p.hook)
    ]
    assert all(p.nkframe and p.attached for p in e.programs)
    assert e.problems == ()
    # Interface counters moved by at least the datagrams the pod sent: they arrive on the
    # node side (rx) and leave the pod side (tx).
    assert e.node.counters.rx_packets - before.node.counters.rx_packets >= 5
    assert e.pod.counters.tx_packets - before.pod.counters.tx_packets >= 5
    assert e.node.ifindex == ep.node_ifindex and e.pod.netns == pod
    # The counter map is read generically: slot 0 is count_out's.
    assert e.counters["maps"]["counts[0]"] >= 5
    # The uplink is listed with the program nkframe put there.
    assert [d.name for d in st.devices] == [node.uplink]
    assert [(p.name, p.nkframe) for p in st.devices[0].programs] == [("up_count", True)]


def test_status_json_and_plain_output_from_the_cli(node, bpffs_root, built):
    eng, ep, pod = built
    udp_probe(pod, node.netns, NODE_IP, 7002, count=2)
    doc = json.loads(_cli(node, bpffs_root, "status", "--json").stdout)
    assert set(doc) == {"node_netns", "bpffs_root", "bpf_stats", "endpoints", "devices", "problems"}
    (e,) = doc["endpoints"]
    assert e["id"] == "pod-s" and e["node_ifname"] == ep.spec.node_ifname
    assert {p["name"]: p["prog_id"] for p in e["programs"]} == {p.name: p.prog_id for p in ep.programs}
    assert e["node"]["counters"]["rx_packets"] >= 2
    assert e["counters"]["maps"]["counts[0]"] >= 2
    assert doc["problems"] == []
    # Only the asked-for endpoint; an unknown one is "not found" (exit 5).
    assert [x["id"] for x in json.loads(_cli(node, bpffs_root, "status", "--json", "pod-s").stdout)["endpoints"]] == ["pod-s"]
    r = _cli(node, bpffs_root, "status", "no-such-pod", check=False)
    assert r.returncode == 5 and "no-such-pod" in r.stderr
    # Piped output is plain text: section headers, aligned columns, no box drawing or colour.
    # A real process with a real pipe for this one.
    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    out = subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "--bpffs-root", bpffs_root, "status"],
                         capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "# endpoints" in out and "# programs" in out and "# interface counters" in out
    assert "pod-s" in out and "count_out" in out and "counts[0]" in out
    assert not any(ch in out for ch in "│┃━─\x1b")
    assert _cli(node, bpffs_root, "status", "--check").returncode == 0


def _enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): statistics stay on while the returned fd is open.

    Called through ctypes because nkframe's bindings do not wrap it (yet); closing the fd
    restores the kernel's previous state, so nothing outlives the test.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.create_string_buffer(struct.pack("<I", 0) + b"\0" * 4)
    fd = libc.syscall(321, 32, attr, 8)  # __NR_bpf on x86_64, BPF_ENABLE_STATS
    if fd < 0:
        pytest.fail(f"BPF_ENABLE_STATS failed: {os.strerror(ctypes.get_errno())}")
    return fd


def test_run_statistics_count_real_runs(node, bpffs_root, built):
    eng, ep, pod = built
    fd = _enable_bpf_stats()
    try:
        before = {p.name: p.run_cnt for p in status.gather(eng).endpoints[0].programs}
        assert udp_probe(pod, node.netns, NODE_IP, 7003, count=4) == 4
        after = {p.name: p for p in status.gather(eng).endpoints[0].programs}
    finally:
        os.close(fd)
    out = after["count_out"]
    assert out.run_cnt - before["count_out"] >= 4
    assert out.run_time_ns > 0
    # Statistics off again: a program's counter stands still however much traffic passes.
    if not status.bpf_stats_enabled():
        still = status.gather(eng).endpoints[0].programs
        udp_probe(pod, node.netns, NODE_IP, 7004, count=3)
        assert {p.name: p.run_cnt for p in status.gather(eng).endpoints[0].programs} == {p.name: p.run_cnt for p in still}


def test_foreign_program_and_missing_device_are_problems(node, bpffs_root, built):
    eng, ep, pod = built
    # A program someone else attached to the endpoint's device (pinned outside nkframe's
    # layout, or a TC filter on a kernel without TCX).
    feats = probe.features()
    mech = Mechanism.TCX if feats.supported("tcx") else Mechanism.TC
    backend = attach.backend(mech)
    direction = attach.direction_for(mech, Hook.FROM_POD)
    with bpf.BpfObject.open(objects.path("count")) as obj:
        obj.load()
        with netns.enter(node.netns):
            # One call for every mechanism: a TC filter at the tail of the chain, a link pinned.
            foreign = backend.attach(ep.node_ifindex, direction, obj.programs["count"], name="intruder",
                                     pin=None if mech is Mechanism.TC else f"{bpffs_root}/intruder")
    try:
        st = status.gather(eng)
        e = st.endpoints[0]
        intruders = [p for p in e.programs if not p.nkframe]
        assert [p.prog_id for p in intruders] == [foreign.prog_id]
        assert (intruders[0].hook, intruders[0].direction) == ("from-pod", direction)
        assert any("not attached by nkframe" in p for p in st.problems)
        assert _cli(node, bpffs_root, "status", "--check", check=False).returncode == 1
    finally:
        with netns.enter(node.netns):
            backend.detach(foreign)
    assert status.gather(eng).problems == []

    # The node-side device vanishes behind nkframe's back: status reports it, never raises.
    links.delete_link(ep.spec.node_ifname, netns=node.netns)
    st = status.gather(eng)
    e = st.endpoints[0]
    assert e.node is None and e.pod is None  # deleting one end of a pair deletes both
    assert any("node-side device" in p and "missing" in p for p in e.problems)
    doc = json.loads(_cli(node, bpffs_root, "status", "--json").stdout)
    assert doc["endpoints"][0]["node"] is None and doc["problems"]


def test_plugin_counters_are_attributed_and_isolated(node, bpffs_root, built):
    eng, ep, pod = built

    class Good:
        @hookimpl
        def nkframe_endpoint_counters(self, endpoint, bpffs_root):
            with bpf.Map.from_pin(f"{bpffs_root}/endpoints/{endpoint.id}/maps/counts") as m:
                return {"sent": sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", 0)))}

    class Broken:
        @hookimpl
        def nkframe_endpoint_counters(self, endpoint):
            raise RuntimeError("map vanished")

    eng.pm.register(Good(), name="good")
    eng.pm.register(Broken(), name="broken")
    udp_probe(pod, node.netns, NODE_IP, 7005, count=3)
    e = status.gather(eng).endpoints[0]
    assert e.counters["good"]["sent"] >= 3
    assert e.counters["good"]["sent"] == e.counters["maps"]["counts[0]"]
    assert "broken" not in e.counters
    assert any("plugin broken: counters unreadable (map vanished)" in p for p in e.problems)


class ClaimsL3:
    @hookimpl
    def nkframe_datapath_program(self, mode):
        return "xx_fwd" if mode == "l3" else None


def test_status_check_fails_for_an_endpoint_without_its_datapath(node, bpffs_root):
    """An endpoint whose mode's forwarding program is not attached (added by an agent without
    that plugin) is a problem: the pod has a device and no datapath (issue 16)."""
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting(), ClaimsL3()], autoload=False)
    try:
        eng.add_endpoint(EndpointSpec(id="pod-n", netns=node.pod(), addresses=["10.88.0.9/32"]))
        (e,) = status.gather(eng).endpoints
        assert any("datapath program xx_fwd is not attached" in p for p in e.problems), e.problems
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)


def test_ls_and_attached_print_plain_whole_lines_when_piped(node, bpffs_root):
    """Issue 12: piped `endpoint ls` and `attached` were box-drawn tables cut to 80 columns,
    losing names and addresses; docs/cli.md promises plain text."""
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False)
    pod = node.pod("a-rather-long-pod-namespace-name")
    addrs = [f"10.88.1.{i}/32" for i in range(1, 7)]
    ep = eng.add_endpoint(EndpointSpec(id="pod-with-a-long-identifier", netns=pod, addresses=addrs))
    try:
        out = _cli(node, bpffs_root, "--no-agent", "endpoint", "ls").stdout
        assert not set(out) & set("─│┃┏┗╭╰━"), out
        [line] = [ln for ln in out.splitlines() if ln.startswith("pod-with-a-long-identifier")]
        assert pod in line and all(a in line for a in addrs), line
        out = _cli(node, bpffs_root, "attached", ep.spec.node_ifname).stdout
        assert not set(out) & set("─│┃┏┗╭╰━") and "count_out" in out and "count_in" in out, out
    finally:
        eng.remove_endpoint(ep.id)
