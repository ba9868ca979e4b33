"""Crash consistency: SIGKILL inside add and remove at every named fault point, then reconcile.

Each case runs the add (or remove) in a child process with ``NKFRAME_FAULT=<point>``, so the
kernel, not Python, ends it, exactly where the point sits.  A fresh Engine then reconciles, and
the test checks that nothing of ours is left: no device in the node or the pod, no netns entry,
no pin, and no BPF program, map or link (counted by id before and after) -- and that the same
endpoint can then be added and carries traffic.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from agent_support import HERE, AgentProcess, Counting, count_obj  # noqa: F401 - fixture

from nkframe import faults, netns
from tools import kobjects
from nkframe.agent.protocol import AgentUnavailable
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from agent_support import Counting
from nkframe.engine import Engine
from nkframe.types import EndpointSpec
_, _, node, root, pod, verb, attach = sys.argv
eng = Engine(node, root, plugin_objects=[Counting()], autoload=False, attach=attach)
if verb == "add":
    eng.add_endpoint(EndpointSpec(id="crash", netns=pod, addresses=["10.77.30.10/32"]))
else:
    eng.remove_endpoint("crash")
"""


def _state(node, pod, bpffs_root) -> dict:
    pins = sorted(os.path.relpath(os.path.join(d, f), bpffs_root) for d, _, fs in os.walk(bpffs_root) for f in fs)
    return {
        "node devices": sorted(l.name for l in links.list_links(netns=node.netns)),
        "pod devices": sorted(l.name for l in links.list_links(netns=pod)),
        # Other tests on the machine come and go under /run/netns, so look at ours: still live
        # namespaces, not stale files.  (nkframe never creates or deletes a namespace itself.)
        "our netns entries": sorted(n for n in (node.netns, node.outside, pod) if netns.exists(n)),
        "pins": pins,
    }


def _child(node, bpffs_root, pod, verb, attach, point):
    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1", **{faults.ENV: point, faults.ACTION_ENV: "kill"})
    return subprocess.run([sys.executable, "-c", CHILD, HERE, node.netns, bpffs_root, pod, verb, attach], env=env, capture_output=True, text=True, timeout=600)


def _add_and_check_traffic(node, bpffs_root, pod, attach):
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False, attach=attach)
    ep = eng.add_endpoint(EndpointSpec(id="crash", netns=pod, addresses=["10.77.30.10/32"]))
    links.add_route("10.77.30.1/32", dev="eth0", netns=pod, replace=True)
    links.add_host_route("10.77.30.10", ep.spec.node_ifname, netns=node.netns)
    assert udp_probe(pod, node.netns, "10.77.30.1", count=2) == 2
    return eng


def _crash_case(node, bpffs_root, verb, point, attach, obj):
    pod = node.pod()
    if not any(str(a).startswith("10.77.30.1/") for a in links.list_addresses("lo", netns=node.netns)):
        links.add_address("lo", "10.77.30.1/32", netns=node.netns)
    clean = _state(node, pod, bpffs_root)
    census = kobjects.Census.take()
    if verb == "remove":
        _add_and_check_traffic(node, bpffs_root, pod, attach)
    r = _child(node, bpffs_root, pod, verb, attach, point)
    assert r.returncode == -9, f"the child was to die at {point}, it exited {r.returncode}: {r.stderr[-2000:]}"

    report = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False).reconcile()
    assert report.removed == ("crash",), report
    assert _state(node, pod, bpffs_root) == clean, f"leftovers after a crash at {point}"
    leaked = kobjects.settle(census, object_name=obj)
    assert leaked == {}, f"BPF objects leaked by a crash at {point}: {leaked}"

    eng = _add_and_check_traffic(node, bpffs_root, pod, attach)
    eng.remove_endpoint("crash")
    assert _state(node, pod, bpffs_root) == clean
    assert kobjects.settle(census, object_name=obj) == {}


@pytest.mark.parametrize("attach", ["auto", "tc"])
@pytest.mark.parametrize("point", faults.ADD_POINTS)
def test_crash_during_add(node, bpffs_root, point, attach, count_obj):
    _crash_case(node, bpffs_root, "add", point, attach, count_obj)


@pytest.mark.parametrize("attach", ["auto", "tc"])
@pytest.mark.parametrize("point", faults.REMOVE_POINTS)
def test_crash_during_remove(node, bpffs_root, point, attach, count_obj):
    _crash_case(node, bpffs_root, "remove", point, attach, count_obj)


def test_every_fault_point_is_reached():
    """The parametrised lists above come from nkframe.faults; make sure each name is really
    called in the engine package, or a renamed point would silently test nothing."""
    from pathlib import Path

    from nkframe import engine

    src = "".join(p.read_text() for p in sorted(Path(engine.__file__).parent.glob("*.py")))
    for p in faults.ADD_POINTS + faults.REMOVE_POINTS:
        assert f'faults.point("{p}")' in src, p


@pytest.mark.parametrize("verb,point", [("add", "add.after_attach"), ("remove", "remove.after_detach")])
def test_agent_killed_mid_request_is_repaired_by_the_next_agent(node, bpffs_root, tmp_path, verb, point, count_obj):
    sock = str(tmp_path / "agent.sock")
    pod = node.pod()
    census = kobjects.Census.take()
    clean = _state(node, pod, bpffs_root)
    spec = EndpointSpec(id="mid", netns=pod, addresses=["10.77.31.10/32"])
    if verb == "remove":
        with AgentProcess(node.netns, bpffs_root, sock) as ag, ag.client() as c:
            c.add_endpoint(spec)
    dying = AgentProcess(node.netns, bpffs_root, sock, env={faults.ENV: point, faults.ACTION_ENV: "kill"}).start()
    try:
        with dying.client() as c, pytest.raises(AgentUnavailable, match="closed the connection"):
            c.add_endpoint(spec) if verb == "add" else c.remove_endpoint("mid")
        dying.proc.wait(10)
        assert dying.proc.returncode == -9
    finally:
        dying.kill()
    with AgentProcess(node.netns, bpffs_root, sock) as ag:
        with ag.client() as c:
            assert c.ping()["startup"]["reconcile"]["removed"] == ["mid"]
            assert c.endpoints() == []
        assert _state(node, pod, bpffs_root) == clean
        assert kobjects.settle(census, object_name=count_obj) == {}
        with ag.client() as c:
            c.add_endpoint(spec)
            c.remove_endpoint("mid")


def test_the_census_sees_a_leak(bpffs_root, count_obj):
    """The leak check above can fail: an object kept alive by a pin is found, by id and name,
    and goes once the pin does."""
    from nkframe import bpf

    census = kobjects.Census.take()
    with bpf.BpfObject.open(os.environ["NKT_COUNT_OBJ"]) as obj:
        obj.load()
        obj.programs["count"].pin(f"{bpffs_root}/leak")
    left = kobjects.settle(census, object_name=count_obj, timeout=0.2)
    assert [n for _, n in left["prog"]] == ["count"]
    assert sorted(n for _, n in left["map"]) == sorted(["counts", f"{count_obj}.rodata"])
    os.unlink(f"{bpffs_root}/leak")
    assert kobjects.settle(census, object_name=count_obj) == {}
