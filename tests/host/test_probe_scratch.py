"""The probe's scratch namespace: named after the probing process, and left-overs of a probe
that died mid-way (SIGKILL inside a probe) removed by the next probe -- only those."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from nkframe import netns, probe

pytestmark = pytest.mark.root

# A probe run that dies inside its scratch namespace, as a crash would: the kernel ends it.
CHILD = """
import os, signal
from nkframe import probe
probe._probe_tc = lambda scratch: os.kill(os.getpid(), signal.SIGKILL)
probe.features()
"""


def _scratch_names() -> set[str]:
    return {n for n in os.listdir(netns.NETNS_RUN_DIR) if n.startswith(probe.SCRATCH_PREFIX)} if os.path.isdir(netns.NETNS_RUN_DIR) else set()


@pytest.fixture
def made():
    """Names this test creates or expects a child to leave; deleted at the end whatever happens."""
    names: list[str] = []
    try:
        yield names
    finally:
        for n in names:
            netns.delete(n)


def test_scratch_names_carry_the_pid():
    name = probe.scratch_name()
    assert name.startswith(f"nkprobe-{os.getpid()}-") and probe._SCRATCH_NAME.fullmatch(name)
    assert probe.scratch_name(4242).startswith("nkprobe-4242-")


def test_a_probe_killed_midway_leaves_a_namespace_the_next_probe_removes(made):
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        # Namespaces that must survive: a live process's scratch, our own, and names that only
        # look similar.
        keep = [probe.scratch_name(sleeper.pid), probe.scratch_name(), "nkprobe-x-abc123", f"nkprobe-{sleeper.pid}"]
        for n in keep:
            netns.create(n)
            made.append(n)
        before = _scratch_names()
        child = subprocess.Popen([sys.executable, "-c", CHILD], stderr=subprocess.PIPE, text=True)
        _, err = child.communicate(timeout=300)
        assert child.returncode == -9, err[-2000:]
        left = _scratch_names() - before
        made.extend(left)
        # What the crash left: one live namespace named after the dead child.
        assert [n.split("-")[1] for n in left] == [str(child.pid)], left
        (stale,) = left
        assert netns.exists(stale) and not probe.process_alive(child.pid)

        f = probe.features(refresh=True)
        assert f.supported("tc"), f["tc"].reason
        assert not os.path.lexists(netns.netns_path(stale)), "the next probe did not remove the dead probe's namespace"
        for n in keep:
            assert netns.exists(n), f"{n} was removed but is not a dead probe's"
        assert _scratch_names() == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_reused_pid_does_not_keep_a_dead_probes_namespace():
    """A pid number taken by a process started after the namespace was made is not the maker."""
    child = subprocess.Popen(["sleep", "300"])
    try:
        time.sleep(0.1)
        assert probe.process_alive(child.pid)
        assert probe.process_alive(child.pid, since=time.time())
        assert not probe.process_alive(child.pid, since=time.time() - 60), "started a minute after the name was made"
        assert probe.process_alive(os.getpid(), since=time.time())
    finally:
        child.kill()
        child.wait()
    assert not probe.process_alive(child.pid)


def test_an_add_that_probes_leaves_the_node_namespace_as_the_user_asked(node, bpffs_root):
    """Issue 16: the kernel probe, run by the first endpoint add inside links.batch(), created
    its tc/xdp veth pairs through the node's cached netlink socket: a stray pair appeared in the
    node's namespace and stayed.  Now: the node holds its own devices plus the endpoint's
    node-side device, and after the remove exactly what it held before."""
    import nkframe_l3

    from nkframe import probe
    from nkframe.engine import Engine
    from nkframe.netlink import links
    from nkframe.types import EndpointSpec

    from nkframe import netns

    saved = probe._cache
    probe._cache = None  # make the add probe the kernel again, as a new agent's first add does
    pod = node.pod()
    try:
        before = {link.name for link in links.list_links(node.netns)}
        # An agent serving the namespace it runs in (node_netns=None), as on a real node: run
        # inside the test's node namespace so a leak would land there, not on the machine.
        with netns.enter(node.netns):
            eng = Engine(None, bpffs_root, plugin_objects=[nkframe_l3], autoload=False)
            ep = eng.add_endpoint(EndpointSpec(id="pod-p", netns=pod, addresses=["10.66.0.5/32"]))
        assert probe._cache is not None, "the add did not probe: this test would prove nothing"
        during = {link.name for link in links.list_links(node.netns)}
        assert during - before == {ep.spec.node_ifname}, f"unexpected devices in the node: {during - before}"
        with netns.enter(node.netns):
            eng.remove_endpoint("pod-p")
        assert {link.name for link in links.list_links(node.netns)} == before
    finally:
        if probe._cache is None:
            probe._cache = saved
