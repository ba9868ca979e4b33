"""A crash inside Engine.switch_mechanism, then reconcile.

The switch runs in a child process that SIGKILLs itself at a chosen moment of a real switch
(nkframe.faults has no switch points, so the child wraps the attach backends or os.rename):

* ``staging``: one program of the new chain attached and pinned under ``staging-*`` (:data:`nkframe.engine.STAGING_PREFIX`), the old
  chain untouched.  Reconcile detaches the staged program: the endpoint is as before the switch.
* ``detaching``: the whole new chain runs, one old program is already detached.  Reconcile
  finishes the switch: the new chain moves into place, the rest of the old chain goes.
* ``moved``: everything done but removing the emptied staging directory.

In every case reconcile changes pins and links only: the device, the spec, the pinned map (same
id, counts kept) and a second endpoint on the node are untouched, traffic flows, and no BPF
object of ours is left over.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from agent_support import HERE, Counting, count_obj, counts  # noqa: F401 - fixture

from nkframe import bpf, probe, specstore
from tools import kobjects
from nkframe.engine import STAGING_PREFIX, Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec, Mechanism

pytestmark = pytest.mark.root

CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from agent_support import Counting
from nkframe import attach
from nkframe.engine import Engine
_, _, node, root, eid, source, target, when = sys.argv

def die_on_call(obj, name, n, after=False):
    real, calls = getattr(obj, name), []
    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*a, **kw)
        if len(calls) == n and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(obj, name, wrapper)

eng = Engine(node, root, plugin_objects=[Counting()], autoload=False)
if when == "staging":      # the second new program is never attached
    die_on_call(attach.backend(target), "attach", 2)
elif when == "detaching":  # the first old program is detached, the second never
    die_on_call(attach.backend(source), "detach", 2)
else:                      # the staged pins moved into place, the staging dir not removed
    die_on_call(os, "rename", 1, after=True)
eng.switch_mechanism(eid, target)
print("the switch finished", file=sys.stderr)
"""

GW = "10.77.40.1"


def _pins(d: str) -> set[str]:
    return {os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs}


def _chain(pins: set[str]) -> set[str]:
    return {p for p in pins if p.startswith(("links/", "tc/"))}


def _engine(node, bpffs_root, attach="auto"):
    return Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False, attach=attach)


def _add(node, bpffs_root, eid, addr, attach):
    pod = node.pod()
    ep = _engine(node, bpffs_root, attach).add_endpoint(EndpointSpec(id=eid, netns=pod, addresses=[f"{addr}/32"]))
    links.add_route(f"{GW}/32", dev="eth0", netns=pod)
    links.add_host_route(addr, ep.spec.node_ifname, netns=node.netns)
    return pod, ep


def _map_id(bpffs_root, eid) -> int:
    with bpf.Map.from_pin(f"{bpffs_root}/endpoints/{eid}/maps/counts") as m:
        return m.id


@pytest.mark.parametrize("when", ["staging", "detaching", "moved"])
@pytest.mark.parametrize("source,target", [("tc", "tcx"), ("tcx", "tc")])
def test_reconcile_settles_a_switch_killed_midway(node, bpffs_root, count_obj, source, target, when):
    if not probe.features().supported("tcx"):
        pytest.skip(f"needs TCX and TC to switch between: {probe.features()['tcx'].reason}")
    links.add_address("lo", f"{GW}/32", netns=node.netns)
    pod, ep = _add(node, bpffs_root, "mover", "10.77.40.10", source)
    _, other = _add(node, bpffs_root, "bystander", "10.77.40.11", source)
    assert udp_probe(pod, node.netns, GW, count=2) == 2
    ep_dir = f"{bpffs_root}/endpoints/mover"
    before_pins = _pins(ep_dir)
    before_ids = {p.prog_id for p in ep.programs}
    bystander = (_pins(f"{bpffs_root}/endpoints/bystander"), _engine(node, bpffs_root).get_endpoint("bystander"))
    spec_before = specstore.load(f"{ep_dir}/spec")
    map_id = _map_id(bpffs_root, "mover")
    counted = counts(bpffs_root, "mover", 0)
    census = kobjects.Census.take()

    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    r = subprocess.run([sys.executable, "-c", CHILD, HERE, node.netns, bpffs_root, "mover", source, target, when],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, f"the child was to die {when}, it exited {r.returncode}: {r.stderr[-2000:]}"
    left = [n for n in os.listdir(ep_dir) if n.startswith(STAGING_PREFIX)]
    assert len(left) == 1, f"the crash was to leave one staging dir: {os.listdir(ep_dir)}"

    eng = _engine(node, bpffs_root)
    report = eng.reconcile()
    assert report.healthy == ("bystander", "mover") and report.removed == (), report
    assert not [n for n in os.listdir(ep_dir) if n.startswith(STAGING_PREFIX)]
    after = eng.get_endpoint("mover")
    running = eng.attached(ep.spec.node_ifname)
    if when == "staging":
        # Back to exactly the state before the switch: same pins, same programs.
        assert any("detached 1 program(s) staged" in p for p in report.problems), report
        assert _pins(ep_dir) == before_pins
        assert {p.prog_id for p in after.programs} == before_ids
        assert kobjects.settle(census, object_name=count_obj) == {}, "the staged program leaked"
    else:
        if when == "detaching":
            assert any("finished a cut-over" in p for p in report.problems), report
        assert set(after.mechanism.values()) == {Mechanism(target)}
        assert [p.name for p in after.programs] == ["count_out", "count_in"]
        assert not {p.prog_id for p in after.programs} & before_ids
        # Only the chain's pins changed, and they sit where a clean switch puts them.
        now = _pins(ep_dir)
        assert now - _chain(now) == before_pins - _chain(before_pins)
        assert {p.split("/")[0] for p in _chain(now)} == {"links" if target == "tcx" else "tc"}
        assert {p.pin for p in after.programs} == {f"{ep_dir}/{p}" for p in _chain(now)}
    # Exactly the endpoint's chain runs on its device: nothing staged, nothing old.
    assert sorted(p.prog_id for p in running) == sorted(p.prog_id for p in after.programs)
    assert specstore.load(f"{ep_dir}/spec") == spec_before
    assert after.node_ifindex == ep.node_ifindex
    assert _map_id(bpffs_root, "mover") == map_id
    assert udp_probe(pod, node.netns, GW, count=2) == 2
    assert counts(bpffs_root, "mover", 0) >= counted + 2, "the pinned map carried over"
    assert (_pins(f"{bpffs_root}/endpoints/bystander"), eng.get_endpoint("bystander")) == bystander
    assert other.node_ifindex == bystander[1].node_ifindex
    # A second reconcile has nothing left to do.
    again = eng.reconcile()
    assert again.problems == ()
    for eid in ("mover", "bystander"):
        eng.remove_endpoint(eid)
    assert kobjects.settle(census, object_name=count_obj) == {}


UPGRADE_CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from test_restart_upgrade import Extra
from nkframe import attach
from nkframe.engine import Engine
_, _, node, root, eid, when = sys.argv

def die_on_call(obj, name, n):
    real, calls = getattr(obj, name), []
    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    setattr(obj, name, wrapper)

eng = Engine(node, root, plugin_objects=[Extra()], autoload=False)
if when == "staging":     # the grown from-pod chain is half staged
    die_on_call(attach.backend("tcx"), "attach", 2)
else:                     # cutting over: the old from-pod program detached, nothing moved yet
    die_on_call(os, "rename", 1)
eng.upgrade([eid])
print("the upgrade finished", file=sys.stderr)
"""


@pytest.mark.parametrize("when", ["staging", "cutover"])
def test_reconcile_settles_an_upgrade_killed_midway(node, bpffs_root, count_obj, when):
    """Issue 12: upgrade and switch share one stage/cut-over/settle algorithm, so an upgrade
    that reshapes a chain (one more program per hook) and is SIGKILLed while staging or while
    cutting over is settled by reconcile like a switch: the old chain whole, or the new one."""
    if not probe.features().supported("tcx"):
        pytest.skip(f"needs TCX links to stage a reshaped chain: {probe.features()['tcx'].reason}")
    links.add_address("lo", f"{GW}/32", netns=node.netns)
    pod, ep = _add(node, bpffs_root, "grower", "10.77.41.10", "tcx")
    assert udp_probe(pod, node.netns, GW, count=2) == 2
    ep_dir = f"{bpffs_root}/endpoints/grower"
    before_ids = {p.prog_id for p in ep.programs}
    r = subprocess.run([sys.executable, "-c", UPGRADE_CHILD, HERE, node.netns, bpffs_root, "grower", when],
                       env=dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, f"the child was to die {when}, it exited {r.returncode}: {r.stderr[-2000:]}"
    assert [n for n in os.listdir(ep_dir) if n.startswith(STAGING_PREFIX)], "the crash was to leave a staging dir"

    eng = _engine(node, bpffs_root)
    report = eng.reconcile()
    assert report.healthy == ("grower",) and report.removed == (), report
    assert not [n for n in os.listdir(ep_dir) if n.startswith(STAGING_PREFIX)]
    after = eng.get_endpoint("grower")
    running = eng.attached(ep.spec.node_ifname)
    if when == "staging":
        assert any("staged by an interrupted switch or upgrade" in p for p in report.problems), report
        assert {p.prog_id for p in after.programs} == before_ids, "the old chain stays, untouched"
        assert [p.name for p in after.programs] == ["count_out", "count_in"]
    else:
        assert any("finished a cut-over" in p for p in report.problems), report
        names = {h: [p.name for p in after.programs if p.hook == h] for h in ("from-pod", "to-pod")}
        # The cut-over had begun (an old program was gone), so staging was complete: reconcile
        # finished it, on both hooks.
        assert names == {"from-pod": ["audit_out", "count_out"], "to-pod": ["audit_in", "count_in"]}, names
        assert not {p.prog_id for p in after.programs} & before_ids
    # Exactly the pinned chain runs on the device: nothing staged, nothing old left over.
    assert sorted(p.prog_id for p in running) == sorted(p.prog_id for p in after.programs)
    assert all(p.ifindex == ep.node_ifindex for p in after.programs)
    assert udp_probe(pod, node.netns, GW, count=2) == 2
    assert eng.reconcile().problems == ()
    eng.remove_endpoint("grower")
