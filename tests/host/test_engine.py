"""The Engine against the real kernel: lifecycle, hooks, rollback, bad input, reconcile."""

from __future__ import annotations

import os
import struct
import subprocess

import pytest

from nkframe import attach, bpf, hookimpl, netns, objects, probe
from nkframe.context import DeviceInfo
from nkframe.engine import Engine
from nkframe.errors import (
    EndpointExists,
    EndpointNotFound,
    InvalidSpec,
    NetnsNotFound,
    NotBpffs,
    NotSupported,
    PluginError,
)
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import DeviceKind, EndpointSpec, Hook, Mechanism, ProgramSpec

pytestmark = pytest.mark.root


class Counting:
    """A test plugin: a counter on both hooks of every endpoint; records the events it sees."""

    def __init__(self, verdict: int = -1):
        self.events: list[tuple[str, str]] = []
        self.verdict = verdict

    @hookimpl
    def nkframe_programs_collect(self, ctx):
        obj = objects.path("count")
        v = struct.pack("<i", self.verdict)
        return [
            ProgramSpec(name="count_out", object=obj, program="count", hook=Hook.FROM_POD, globals={"SLOT": struct.pack("<I", 0), "VERDICT": v}, maps={"counts": "endpoint"}, plugin="counting"),
            ProgramSpec(name="count_in", object=obj, program="count", hook=Hook.TO_POD, globals={"SLOT": struct.pack("<I", 1), "VERDICT": struct.pack("<i", -1)}, maps={"counts": "endpoint"}, plugin="counting"),
        ]

    @hookimpl
    def nkframe_endpoint_configure(self, ctx):
        assert "counts" in ctx.maps
        self.events.append(("configure", ctx.spec.id))

    @hookimpl
    def nkframe_endpoint_unconfigure(self, ctx):
        self.events.append(("unconfigure", ctx.spec.id))

    @hookimpl
    def nkframe_endpoint_added(self, endpoint):
        self.events.append(("added", endpoint.id))

    @hookimpl
    def nkframe_endpoint_removed(self, endpoint_id):
        self.events.append(("removed", endpoint_id))


def _engine(node, bpffs_root, *plugins, **kw):
    return Engine(node.netns, bpffs_root, plugin_objects=plugins, autoload=False, **kw)


def _counts(bpffs_root, eid, slot):
    with bpf.Map.from_pin(f"{bpffs_root}/endpoints/{eid}/maps/counts") as m:
        return sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", slot)))


def _kernel_snapshot(node):
    links_ = sorted(l.name for l in links.list_links(netns=node.netns))
    return links_


def test_add_list_remove_with_traffic(node, bpffs_root):
    plugin = Counting()
    eng = _engine(node, bpffs_root, plugin)
    pod = node.pod()
    links.add_address("lo", "10.98.0.1/32", netns=node.netns)  # a node-local address to talk to
    spec = EndpointSpec(id="pod-a", netns=pod, addresses=["10.98.0.10/32"])
    ep = eng.add_endpoint(spec)
    feats = probe.features()
    expect = Mechanism.NETKIT if feats.supported("netkit") else Mechanism.TCX if feats.supported("tcx") else Mechanism.TC
    assert ep.device_kind is (DeviceKind.NETKIT if expect is Mechanism.NETKIT else DeviceKind.VETH)
    assert set(ep.mechanism.values()) == {expect}
    assert "netkit" in ep.reasons["device"]
    assert [p.name for p in ep.programs] == ["count_out", "count_in"]
    # The pins are the state: a fresh engine sees the same endpoint.
    again = Engine(node.netns, bpffs_root, autoload=False).get_endpoint("pod-a")
    assert again.spec == spec
    assert {(p.name, p.prog_id) for p in again.programs} == {(p.name, p.prog_id) for p in ep.programs}
    # Each program says both where nkframe put it (hook) and the mechanism's word (direction),
    # the same when read back from the pins; the kernel's listing knows only the direction.
    want = {("count_out", "from-pod", attach.direction_for(expect, Hook.FROM_POD)),
            ("count_in", "to-pod", attach.direction_for(expect, Hook.TO_POD))}
    assert {(p.name, p.hook, p.direction) for p in ep.programs} == want
    assert {(p.name, p.hook, p.direction) for p in again.programs} == want
    listed = {p.prog_id: p for p in eng.attached(spec.node_ifname)}
    assert {(listed[p.prog_id].hook, listed[p.prog_id].direction) for p in ep.programs} == {("", d) for _n, _h, d in want}
    assert plugin.events == [("configure", "pod-a"), ("added", "pod-a")]

    # Real traffic through the attached programs: pod -> node-local address.
    links.add_route("10.98.0.1/32", dev="eth0", netns=pod)
    links.add_host_route("10.98.0.10", spec.node_ifname, netns=node.netns)
    got = udp_probe(pod, node.netns, "10.98.0.1", count=3)
    assert got == 3
    assert _counts(bpffs_root, "pod-a", 0) >= 3
    # The two hooks run the same function loaded twice with different globals (slot 0 vs 1):
    # each must be its own program, so only slot 0 counted packets from the pod.
    out_prog, in_prog = (p.prog_id for p in ep.programs)
    assert out_prog != in_prog
    assert _counts(bpffs_root, "pod-a", 1) < _counts(bpffs_root, "pod-a", 0)

    eng.remove_endpoint("pod-a")
    assert not links.link_exists(spec.node_ifname, netns=node.netns)
    assert not os.path.exists(f"{bpffs_root}/endpoints/pod-a")
    assert eng.endpoints() == []
    assert plugin.events[-2:] == [("unconfigure", "pod-a"), ("removed", "pod-a")]
    with pytest.raises(EndpointNotFound):
        eng.remove_endpoint("pod-a")


def test_failed_add_leaves_nothing(node, bpffs_root):
    class Boom(Counting):
        @hookimpl
        def nkframe_endpoint_configure(self, ctx):
            raise RuntimeError("injected failure after programs were attached")

    before = _kernel_snapshot(node)
    eng = _engine(node, bpffs_root, Boom())
    pod = node.pod()
    with pytest.raises(PluginError, match="injected failure") as err:
        eng.add_endpoint(EndpointSpec(id="pod-b", netns=pod, addresses=["10.98.0.11/32"]))
    assert "Boom" in str(err.value) and "nkframe_endpoint_configure" in str(err.value)
    assert "the add was undone" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
    assert _kernel_snapshot(node) == before, "no device left in the node"
    assert [l.name for l in links.list_links(netns=pod)] == ["lo"], "no device left in the pod"
    assert not os.path.exists(f"{bpffs_root}/endpoints/pod-b"), "no pins left"
    # and the same endpoint can be added afterwards
    ok = _engine(node, bpffs_root, Counting())
    ok.add_endpoint(EndpointSpec(id="pod-b", netns=pod, addresses=["10.98.0.11/32"]))
    ok.remove_endpoint("pod-b")


def test_bad_input_is_refused_and_leaves_nothing(node, bpffs_root, tmp_path):
    eng = _engine(node, bpffs_root, Counting())
    before_ns = set(os.listdir("/run/netns"))
    with pytest.raises(NetnsNotFound, match="does not exist"):
        eng.add_endpoint(EndpointSpec(id="x", netns="nkt-no-such-netns"))
    assert set(os.listdir("/run/netns")) == before_ns, "a missing netns is never created"
    with pytest.raises(NetnsNotFound):
        Engine("nkt-no-such-node", bpffs_root, autoload=False)
    with pytest.raises(InvalidSpec, match="at most 15"):
        EndpointSpec(id="x", netns=node.pod(), host_ifname="sixteen-bytes-xx")
    with pytest.raises(NotBpffs, match="not on a BPF filesystem"):
        Engine(node.netns, str(tmp_path / "bpf"), autoload=False)
    with pytest.raises(InvalidSpec, match="attach mode"):
        Engine(node.netns, bpffs_root, attach="xdp", autoload=False)
    pod = node.pod()
    eng.add_endpoint(EndpointSpec(id="dup", netns=pod))
    with pytest.raises(EndpointExists):
        eng.add_endpoint(EndpointSpec(id="dup", netns=pod))
    eng.remove_endpoint("dup")


def test_forcing_an_unsupported_mechanism_is_an_error(node, bpffs_root):
    """Forcing netkit links on a veth device (or TCX where the kernel lacks it) fails loudly
    and leaves nothing: never a silent fallback."""
    feats = probe.features()
    pod = node.pod()
    cases = [("netkit", "veth")]
    if not feats.supported("tcx"):
        cases.append(("tcx", "auto"))
    for mech, device in cases:
        eng = _engine(node, bpffs_root, Counting(), attach=mech)
        with pytest.raises(NotSupported) as err:
            eng.add_endpoint(EndpointSpec(id="forced", netns=pod, device=device))
        assert err.value.feature == mech and err.value.reason
        assert not os.path.exists(f"{bpffs_root}/endpoints/forced")
        assert [l.name for l in links.list_links(netns=pod)] == ["lo"]


def test_forced_tc_is_used(node, bpffs_root):
    eng = _engine(node, bpffs_root, Counting(), attach="tc")
    pod = node.pod()
    ep = eng.add_endpoint(EndpointSpec(id="pod-tc", netns=pod, addresses=["10.98.0.12/32"]))
    assert set(ep.mechanism.values()) == {Mechanism.TC}
    assert all(p.tc_priority for p in ep.programs)
    seen = {p.prog_id for p in eng.attached(ep.spec.node_ifname)}
    assert {p.prog_id for p in ep.programs} <= seen
    eng.remove_endpoint("pod-tc")
    assert not os.path.exists(f"{bpffs_root}/endpoints/pod-tc")


def test_plugin_hooks_decide(node, bpffs_root):
    """nkframe_device_create, nkframe_attach_select, nkframe_pin_path and
    nkframe_endpoint_validate from a plugin win over the built-in answers."""

    class Deciding(Counting):
        def __init__(self):
            super().__init__()
            self.created = []

        @hookimpl
        def nkframe_endpoint_validate(self, spec):
            if spec.options.get("forbidden"):
                raise InvalidSpec("option 'forbidden' is not allowed by the deciding plugin")

        @hookimpl
        def nkframe_device_create(self, ctx):
            pair = links.create_veth(links.VethSpec(name=ctx.spec.node_ifname, peer_name=ctx.spec.ifname, peer_netns=ctx.spec.netns), netns=ctx.node_netns)
            ctx.undo.push("delete", lambda: links.delete_link(ctx.spec.node_ifname, netns=ctx.node_netns, missing_ok=True))
            self.created.append(ctx.spec.id)
            return DeviceInfo(kind=DeviceKind.VETH, mode=ctx.spec.mode, node_ifname=ctx.spec.node_ifname, node_ifindex=pair.ifindex, pod_ifname=ctx.spec.ifname, pod_ifindex=pair.peer_ifindex, reason="the deciding plugin wants veth")

        @hookimpl
        def nkframe_attach_select(self, ctx, hook, candidates):
            return (Mechanism.TC, "the deciding plugin prefers tc") if Mechanism.TC in candidates else None

        @hookimpl
        def nkframe_pin_path(self, root, scope, owner, kind, name):
            if kind == "map" and name == "counts":
                return f"{root}/globals/custom_counts"
            return None

    plugin = Deciding()
    eng = _engine(node, bpffs_root, plugin)
    pod = node.pod()
    with pytest.raises(InvalidSpec, match="deciding plugin"):
        eng.add_endpoint(EndpointSpec(id="pod-d", netns=pod, options={"forbidden": True}))
    ep = eng.add_endpoint(EndpointSpec(id="pod-d", netns=pod))
    assert plugin.created == ["pod-d"]
    assert ep.reasons["device"] == "the deciding plugin wants veth"
    assert set(ep.mechanism.values()) == {Mechanism.TC}
    assert ep.reasons[Hook.FROM_POD.value] == "the deciding plugin prefers tc"
    assert os.path.exists(f"{bpffs_root}/globals/custom_counts")
    eng.remove_endpoint("pod-d")


def test_attach_select_choice_must_be_available(node, bpffs_root):
    class Wrong(Counting):
        @hookimpl
        def nkframe_attach_select(self, ctx, hook, candidates):
            return Mechanism.NETKIT, "wants netkit on a veth"

    if probe.features().supported("netkit"):
        pytest.skip("netkit kernels give netkit devices: the choice would be valid")
    eng = _engine(node, bpffs_root, Wrong())
    pod = node.pod()
    with pytest.raises(PluginError, match="not available"):
        eng.add_endpoint(EndpointSpec(id="pod-w", netns=pod))
    assert not os.path.exists(f"{bpffs_root}/endpoints/pod-w")


def test_reconcile_cleans_vanished_netns(node, bpffs_root, make_netns):
    plugin = Counting()
    eng = _engine(node, bpffs_root, plugin)
    keep, lose = node.pod(), make_netns("gone")
    eng.add_endpoint(EndpointSpec(id="keep", netns=keep))
    gone = eng.add_endpoint(EndpointSpec(id="lose", netns=lose))
    netns.delete(lose)  # behind our back: the pair dies with the namespace
    rep = eng.reconcile()
    assert rep.removed == ("lose",)
    assert "keep" in rep.healthy
    assert not os.path.exists(f"{bpffs_root}/endpoints/lose")
    assert not links.link_exists(gone.spec.node_ifname, netns=node.netns)
    assert ("removed", "lose") in plugin.events
    eng.remove_endpoint("keep")


def test_programs_outlive_the_process(node, bpffs_root):
    """An endpoint added by a process that exits keeps its programs; another process removes it."""
    pod = node.pod()
    script = (
        "import sys; from nkframe.engine import Engine; from nkframe.types import EndpointSpec;"
        "e = Engine(sys.argv[1], sys.argv[2], plugins=[], autoload=False);"
        "e.add_endpoint(EndpointSpec(id='survivor', netns=sys.argv[3]))"
    )
    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    subprocess.run([os.sys.executable, "-c", script, node.netns, bpffs_root, pod], check=True, env=env)
    eng = _engine(node, bpffs_root)
    [ep] = eng.endpoints()
    assert ep.id == "survivor" and ep.node_ifindex
    eng.remove_endpoint("survivor")
    assert not links.link_exists(ep.spec.node_ifname, netns=node.netns)


def test_uplink_programs_attach_update_and_teardown(node, bpffs_root):
    class Uplink:
        @hookimpl
        def nkframe_uplink_programs(self, ctx):
            assert ctx.ifname == node.uplink
            return [ProgramSpec(name="up_count", object=objects.path("count"), program="count", hook="ingress", globals={"SLOT": struct.pack("<I", 3)}, maps={"counts": "global"})]


    eng = _engine(node, bpffs_root, Uplink(), uplink=node.uplink)
    first = eng.setup_uplink()
    assert [p.name for p in first] == ["up_count"]
    ids = [p.prog_id for p in eng.attached(node.uplink)]
    assert ids == [first[0].prog_id]
    # Idempotent: a second setup replaces the program in place instead of stacking another.
    second = eng.setup_uplink()
    assert [p.prog_id for p in eng.attached(node.uplink)] == [second[0].prog_id]
    assert second[0].prog_id != first[0].prog_id
    # It runs: traffic from the outside netns to the node's uplink address is counted.
    assert udp_probe(node.outside, node.netns, "192.0.2.1", count=2) == 2
    with bpf.Map.from_pin(f"{bpffs_root}/globals/maps/counts") as m:
        assert sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", 3))) >= 2
    eng.teardown_uplink()
    assert eng.attached(node.uplink) == []


def test_switch_mechanism_never_leaves_a_gap(node, bpffs_root):
    """TC -> TCX (what a kernel upgrade allows): the new chain is attached before the old goes,
    counters carry over in the pinned map, and traffic flows throughout."""
    if not probe.features().supported("tcx"):
        pytest.skip(f"needs TCX to switch to: {probe.features()['tcx'].reason}")
    eng = _engine(node, bpffs_root, Counting(), attach="tc")
    pod = node.pod()
    links.add_address("lo", "10.98.0.1/32", netns=node.netns)
    spec = EndpointSpec(id="mover", netns=pod, addresses=["10.98.0.20/32"])
    ep = eng.add_endpoint(spec)
    links.add_route("10.98.0.1/32", dev="eth0", netns=pod)
    links.add_host_route("10.98.0.20", spec.node_ifname, netns=node.netns)
    assert udp_probe(pod, node.netns, "10.98.0.1", count=2) == 2
    counted = _counts(bpffs_root, "mover", 0)
    assert counted >= 2

    # Watch the device while switching: at every observation some chain is attached.
    import threading

    seen_empty = []
    stop = threading.Event()

    def watch():
        # Look at the old mechanism (TC) first, then the new: the switch attaches the new chain
        # before it detaches the old, so a look that finds TC gone comes after TCX was attached.
        # (One listing in the other order, TCX first, can straddle the whole switch and see
        # neither: its first call in a thread is slow enough.)
        tc, tcx = attach.backend(Mechanism.TC), attach.backend(Mechanism.TCX)
        while not stop.is_set():
            with netns.enter(node.netns):
                progs = tc.query(ep.node_ifindex, "ingress") + tcx.query(ep.node_ifindex, "ingress")
            if not progs:
                seen_empty.append(progs)

    t = threading.Thread(target=watch)
    t.start()
    try:
        moved = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False).switch_mechanism("mover", "tcx")
    finally:
        stop.set()
        t.join()
    assert seen_empty == [], "there was a moment with no program on the from-pod hook"
    assert set(moved.mechanism.values()) == {Mechanism.TCX}
    assert moved.spec.attach.value == "tcx"
    mechs = {p.mechanism for p in eng.attached(spec.node_ifname)}
    assert mechs == {Mechanism.TCX}, "the old TC filters are gone"
    assert udp_probe(pod, node.netns, "10.98.0.1", count=2) == 2
    assert _counts(bpffs_root, "mover", 0) >= counted + 2, "the pinned map carried over"
    eng.remove_endpoint("mover")


def test_verifier_rejection_shows_the_log_and_leaves_nothing(node, bpffs_root):
    from nkframe.errors import VerifierError

    class Bad:
        @hookimpl
        def nkframe_programs_collect(self, ctx):
            return [ProgramSpec(name="bad", object=objects.path("test_bad"), program="bad_read", hook=Hook.FROM_POD,
                                plugin="badplugin")]

    eng = _engine(node, bpffs_root, Bad())
    pod = node.pod()
    before = _kernel_snapshot(node)
    with pytest.raises(VerifierError) as err:
        eng.add_endpoint(EndpointSpec(id="badprog", netns=pod))
    assert err.value.log and "invalid access to packet" in err.value.log
    assert "verifier log" in str(err.value)
    # Issue 12: it read "EACCES (Permission denied)"; it names the plugin and the program.
    first = str(err.value).splitlines()[0]
    assert "rejected by the verifier" in first and "plugin 'badplugin'" in first and "program bad " in first, first
    assert _kernel_snapshot(node) == before
    assert not os.path.exists(f"{bpffs_root}/endpoints/badprog")


@pytest.mark.netkit
def test_netkit_endpoint_is_born_closed_and_opened_after_attach(node, bpffs_root):
    """netkit pairs are created with policy drop and opened only once programs are attached."""
    from nkframe.netlink import netkit

    if not probe.features().supported("netkit"):
        pytest.skip(f"netkit unsupported here: {probe.features()['netkit'].reason}")
    seen = {}

    class Peek(Counting):
        @hookimpl
        def nkframe_endpoint_configure(self, ctx):
            info = netkit.get_netkit(ctx.device.node_ifname, netns=ctx.node_netns)
            seen["during"] = (info.policy, info.peer_policy)

    eng = _engine(node, bpffs_root, Peek())
    ep = eng.add_endpoint(EndpointSpec(id="nk-a", netns=node.pod(), addresses=["10.98.0.30/32"]))
    assert ep.device_kind is DeviceKind.NETKIT
    assert set(ep.mechanism.values()) == {Mechanism.NETKIT}
    assert seen["during"] == (netkit.NetkitPolicy.DROP, netkit.NetkitPolicy.DROP)
    info = netkit.get_netkit(ep.spec.node_ifname, netns=node.netns)
    assert (info.policy, info.peer_policy) == (netkit.NetkitPolicy.PASS, netkit.NetkitPolicy.PASS)
    assert info.mode == netkit.NetkitMode.L3
    eng.remove_endpoint("nk-a")


def test_a_plugin_that_raises_is_named_and_the_add_undone(node, bpffs_root):
    """Issue 12: a plugin raising in nkframe_endpoint_configure gave a 50-line traceback.  Now one
    PluginError names the plugin's hook and says the add was undone, and nothing is left."""
    from nkframe.errors import PluginError

    class Raising(Counting):
        @hookimpl
        def nkframe_endpoint_configure(self, ctx):
            raise RuntimeError("boom")

    eng = _engine(node, bpffs_root, Raising())
    before = _kernel_snapshot(node)
    with pytest.raises(PluginError) as err:
        eng.add_endpoint(EndpointSpec(id="raiser", netns=node.pod(), addresses=["10.99.5.1/32"]))
    msg = str(err.value)
    assert "hook nkframe_endpoint_configure" in msg and "RuntimeError: boom" in msg and "the add was undone" in msg, msg
    assert "\n" not in msg
    assert _kernel_snapshot(node) == before
    assert not os.path.exists(f"{bpffs_root}/endpoints/raiser")
