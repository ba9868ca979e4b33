"""Upgrade: a new version of a plugin's programs replaces the old on every endpoint, under
traffic, with zero datagrams lost and maps carried over.

netkit/TCX swap programs with BPF_LINK_UPDATE (same link, same pin); TC adds the new filter at a
free priority and then deletes the old one.  A chain that changed shape is attached in front of
the old one before the old one goes.  Switching mechanism (TC -> TCX) is checked the same way.
"""

from __future__ import annotations

import os
import struct
import time

import pytest
from agent_support import NETKIT, AgentProcess, Counting, Flow, assert_no_loss, counts, need, version_count, wire

from nkframe import hookimpl, objects, probe
from nkframe.engine import STAGING_PREFIX, Engine
from nkframe.errors import KernelError, VerifierError
from nkframe.types import EndpointSpec, Hook, Mechanism, ProgramSpec

pytestmark = pytest.mark.root


class Extra(Counting):
    """Version 3: the counters of version 3 plus one more program per hook, before them."""

    def __init__(self):
        super().__init__(version=3)

    @hookimpl
    def nkframe_programs_collect(self, ctx):
        obj = objects.path("count")
        base = super().nkframe_programs_collect(ctx)
        return base + [
            ProgramSpec(name="audit_out", object=obj, program="count", hook=Hook.FROM_POD, order=100, globals={"SLOT": struct.pack("<I", 10)}, maps={"counts": "endpoint"}, plugin="audit"),
            ProgramSpec(name="audit_in", object=obj, program="count", hook=Hook.TO_POD, order=100, globals={"SLOT": struct.pack("<I", 11)}, maps={"counts": "endpoint"}, plugin="audit"),
        ]


def _engine(node, bpffs_root, plugin, attach="auto"):
    return Engine(node.netns, bpffs_root, plugin_objects=[plugin], autoload=False, attach=attach)


def _pair(node, bpffs_root, attach, net):
    eng = _engine(node, bpffs_root, Counting(1), attach)
    pa, pb = node.pod(), node.pod()
    a = eng.add_endpoint(EndpointSpec(id="up-a", netns=pa, addresses=[f"10.77.{net}.10/32"]))
    b = eng.add_endpoint(EndpointSpec(id="up-b", netns=pb, addresses=[f"10.77.{net}.11/32"]))
    wire(node.netns, pa, a.spec)
    wire(node.netns, pb, b.spec)
    flows = [Flow(pa, pb, f"10.77.{net}.11", 7101).start(), Flow(pb, pa, f"10.77.{net}.10", 7102).start()]
    return eng, a, b, flows


def _no_loss(flows):
    assert_no_loss([f.stop() for f in flows])


def _attached_ids(eng, ep) -> set[int]:
    return {p.prog_id for p in eng.attached(ep.spec.node_ifname)}


def _pins(bpffs_root, eid) -> list[str]:
    base = f"{bpffs_root}/endpoints/{eid}"
    return sorted(os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(base) for f in fs if not f.startswith("spec"))


@pytest.mark.parametrize("attach", ["auto", "tc", NETKIT])
def test_upgrade_in_place_under_traffic(node, bpffs_root, attach):
    need(attach)
    eng, a, b, flows = _pair(node, bpffs_root, attach, 20)
    try:
        time.sleep(0.3)
        old = {e.id: e for e in eng.endpoints()}
        v1_before = version_count(bpffs_root, "up-a", 1)
        assert v1_before > 0
        new = {e.id: e for e in _engine(node, bpffs_root, Counting(2), attach).upgrade()}
        time.sleep(0.3)
        for eid in ("up-a", "up-b"):
            o, n = old[eid], new[eid]
            assert [p.name for p in n.programs] == [p.name for p in o.programs]
            assert all(np.prog_id != op.prog_id for np, op in zip(n.programs, o.programs)), "every program was replaced"
            assert n.mechanism == o.mechanism, "an upgrade never changes the mechanism"
            # What runs on the device is exactly the new chain: nothing old, nothing doubled.
            assert _attached_ids(eng, n) == {p.prog_id for p in n.programs}
            if o.programs[0].mechanism is Mechanism.TC:
                # Ordered replace: new filters at new priorities, pins renamed to match.
                assert all(np.tc_priority != op.tc_priority for np, op in zip(n.programs, o.programs))
                assert all(np.pin.endswith(f"-p{np.tc_priority}") for np in n.programs)
            else:
                # Link update: same links, same pins.
                assert [p.link_id for p in n.programs] == [p.link_id for p in o.programs]
                assert [p.pin for p in n.programs] == [p.pin for p in o.programs]
            assert len(_pins(bpffs_root, eid)) == len(n.programs) + 1, _pins(bpffs_root, eid)  # + maps/counts
        v1_after = version_count(bpffs_root, "up-a", 1)
        assert v1_after >= v1_before, "the pinned map carried over (old counts are still there)"
        time.sleep(0.2)
        assert version_count(bpffs_root, "up-a", 1) == v1_after, "the old programs no longer run"
        assert version_count(bpffs_root, "up-a", 2) > 0, "the new programs run"
        # And back again (TC: the old priorities are free again).
        back = {e.id: e for e in _engine(node, bpffs_root, Counting(1), attach).upgrade(["up-a"])}
        time.sleep(0.2)
        assert version_count(bpffs_root, "up-a", 1) > v1_after, "v1 counts on from where it stopped"
        assert _attached_ids(eng, back["up-a"]) == {p.prog_id for p in back["up-a"].programs}
        _no_loss(flows)
    finally:
        for f in flows:
            f._stop.set()
        for eid in ("up-a", "up-b"):
            eng.remove_endpoint(eid)


@pytest.mark.parametrize("attach", ["auto", "tc", NETKIT])
def test_upgrade_to_a_chain_of_another_shape(node, bpffs_root, attach):
    need(attach)
    eng, a, b, flows = _pair(node, bpffs_root, attach, 21)
    try:
        time.sleep(0.2)
        grown = _engine(node, bpffs_root, Extra(), attach).upgrade(["up-a"])[0]
        assert [p.name for p in grown.programs if p.hook == Hook.FROM_POD.value] == ["audit_out", "count_out"]
        assert [p.name for p in grown.programs if p.hook == Hook.TO_POD.value] == ["audit_in", "count_in"]
        assert _attached_ids(eng, grown) == {p.prog_id for p in grown.programs}
        # The kernel runs them in chain order.
        order = [p.prog_id for p in eng.attached(grown.spec.node_ifname) if p.direction in ("ingress", "peer")]
        assert order == [p.prog_id for p in grown.programs if p.hook == Hook.FROM_POD.value]
        assert not any(n.startswith(STAGING_PREFIX) for n in os.listdir(f"{bpffs_root}/endpoints/up-a"))
        time.sleep(0.2)
        assert counts(bpffs_root, "up-a", 10) > 0 and version_count(bpffs_root, "up-a", 3) > 0
        # Shrink back to one program per hook.
        small = _engine(node, bpffs_root, Counting(1), attach).upgrade(["up-a"])[0]
        assert [p.name for p in small.programs] == ["count_out", "count_in"]
        assert _attached_ids(eng, small) == {p.prog_id for p in small.programs}
        assert len(_pins(bpffs_root, "up-a")) == 3
        _no_loss(flows)
    finally:
        for f in flows:
            f._stop.set()
        for eid in ("up-a", "up-b"):
            eng.remove_endpoint(eid)


def test_a_failed_upgrade_leaves_the_old_version_running(node, bpffs_root, monkeypatch):
    eng = _engine(node, bpffs_root, Counting(1))
    pod = node.pod()
    ep = eng.add_endpoint(EndpointSpec(id="keep", netns=pod))
    before = eng.get_endpoint("keep")

    class Broken(Counting):
        @hookimpl
        def nkframe_programs_collect(self, ctx):
            specs = super().nkframe_programs_collect(ctx)
            return [specs[0], ProgramSpec(name="count_in", object=objects.path("test_bad"), program="bad_read", hook=Hook.TO_POD)]

    with pytest.raises(VerifierError):
        _engine(node, bpffs_root, Broken(2)).upgrade()
    assert eng.get_endpoint("keep") == before
    assert _attached_ids(eng, ep) == {p.prog_id for p in before.programs}

    # A failure after the first program was already swapped: the kernel can't be made to fail
    # the second link update on demand, so the second update raises here (a stand-in) and the
    # rollback must put the first program back.
    from nkframe.attach import links as link_backends
    from nkframe.attach import tc

    calls = []
    real_update, real_attach = link_backends.LinkBackend.update, tc.TcBackend.attach

    def flaky_update(self, *a, **kw):
        calls.append("update")
        if len(calls) == 2:
            raise KernelError(5, "injected failure of the second link update")
        return real_update(self, *a, **kw)

    def flaky_attach(self, *a, **kw):
        calls.append("attach")
        if len(calls) == 2:
            raise KernelError(5, "injected failure of the second tc attach")
        return real_attach(self, *a, **kw)

    monkeypatch.setattr(link_backends.LinkBackend, "update", flaky_update)
    monkeypatch.setattr(tc.TcBackend, "attach", flaky_attach)
    with pytest.raises(KernelError, match="injected"):
        _engine(node, bpffs_root, Counting(2)).upgrade()
    monkeypatch.undo()
    # The second step failed; the rollback swaps the first link's program back through the
    # backend's update (a TC rollback detaches the new filter instead).
    assert calls in (["update", "update", "update"], ["attach", "attach"]), calls
    assert eng.get_endpoint("keep") == before, "the first swap was undone"
    assert _attached_ids(eng, ep) == {p.prog_id for p in before.programs}
    eng.remove_endpoint("keep")


@pytest.mark.parametrize("attach", ["auto", NETKIT])
def test_upgrade_through_a_restarted_agent_of_the_new_version(node, bpffs_root, tmp_path, attach):
    """The deployment story: agent v1 runs; it is replaced (SIGKILL) by agent v2, which is asked
    to upgrade every endpoint.  Traffic flows throughout."""
    need(attach)
    sock = str(tmp_path / "agent.sock")
    pa, pb = node.pod(), node.pod()
    v1 = AgentProcess(node.netns, bpffs_root, sock, version=1).start()
    v2 = AgentProcess(node.netns, bpffs_root, sock, version=2)
    flows = []
    try:
        with v1.client() as c:
            a = c.add_endpoint(EndpointSpec(id="ag-a", netns=pa, addresses=["10.77.22.10/32"], attach=attach))
            b = c.add_endpoint(EndpointSpec(id="ag-b", netns=pb, addresses=["10.77.22.11/32"], attach=attach))
        wire(node.netns, pa, a.spec)
        wire(node.netns, pb, b.spec)
        flows = [Flow(pa, pb, "10.77.22.11", 7201).start(), Flow(pb, pa, "10.77.22.10", 7202).start()]
        time.sleep(0.3)
        v1.kill()
        v2.start()
        with v2.client() as c:
            up = c.upgrade()
            assert sorted(e.id for e in up) == ["ag-a", "ag-b"]
        time.sleep(0.3)
        assert version_count(bpffs_root, "ag-a", 2) > 0 and version_count(bpffs_root, "ag-b", 2) > 0
        _no_loss(flows)
        with v2.client() as c:
            c.remove_endpoint("ag-a")
            c.remove_endpoint("ag-b")
    finally:
        for f in flows:
            f._stop.set()
        v1.kill()
        v2.kill()


@pytest.mark.parametrize("target", ["tcx", NETKIT])
def test_switch_from_tc_under_traffic_through_the_agent(node, bpffs_root, tmp_path, target):
    """What a kernel upgrade allows: TC -> TCX, or TC -> netkit links on a netkit device."""
    need(target)
    if not probe.features().supported("tcx"):
        pytest.skip(f"needs TCX to switch to: {probe.features()['tcx'].reason}")
    sock = str(tmp_path / "agent.sock")
    pa, pb = node.pod(), node.pod()
    agent = AgentProcess(node.netns, bpffs_root, sock).start()
    flows = []
    try:
        with agent.client() as c:
            a = c.add_endpoint(EndpointSpec(id="sw-a", netns=pa, addresses=["10.77.23.10/32"], attach="tc"))
            b = c.add_endpoint(EndpointSpec(id="sw-b", netns=pb, addresses=["10.77.23.11/32"], attach="tc"))
            wire(node.netns, pa, a.spec)
            wire(node.netns, pb, b.spec)
            flows = [Flow(pa, pb, "10.77.23.11", 7301).start(), Flow(pb, pa, "10.77.23.10", 7302).start()]
            time.sleep(0.3)
            counted = version_count(bpffs_root, "sw-a", 1)
            for eid in ("sw-a", "sw-b"):
                moved = c.switch_mechanism(eid, target)
                assert set(moved.mechanism.values()) == {Mechanism(target)}
            time.sleep(0.3)
            assert version_count(bpffs_root, "sw-a", 1) > counted, "counters carried over and go on"
            _no_loss(flows)
            c.remove_endpoint("sw-a")
            c.remove_endpoint("sw-b")
    finally:
        for f in flows:
            f._stop.set()
        agent.kill()
