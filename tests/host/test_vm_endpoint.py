"""VM endpoints: a netkit single device in the pod with physical RX queues leased to it.

Needs Linux 7.1+ (netkit single mode, netdev queue-create): the vm-next tier runs these, and a
skip there is a failure (``next_kernel``).  Leases need a device with queue management
operations; the tier loads netdevsim for that (built from Debian's linux-source, see
tests/README.md), and the lease tests make their own netdevsim device inside the test's node
namespace.  Refusals that need no lease source (veth as a lease source, a policy, a plugin's
program, a taken name) run without it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
from agent_support import Counting, count_obj  # noqa: F401 - fixture

from nkframe import faults, netns, probe
from nkframe.engine import Engine
from nkframe.errors import EndpointExists, InvalidSpec, KernelError, NotSupported
from nkframe.netlink import links, netkit
from nkframe.netlink.netdev import NetdevFamily, QueueType
from nkframe.types import DeviceKind, EndpointSpec

pytestmark = [pytest.mark.root, pytest.mark.next_kernel]

NSIM_BUS = "/sys/bus/netdevsim"


@pytest.fixture(autouse=True)
def _needs_single_mode():
    f = probe.features()
    if not f.supported("netkit_single"):
        pytest.skip(f"netkit single mode: {f['netkit_single'].reason}")


def _engine(node, bpffs_root, *plugins, **kw):
    return Engine(node.netns, bpffs_root, plugin_objects=plugins, autoload=False, **kw)


def _single(eid, pod, **kw):
    return EndpointSpec(id=eid, netns=pod, device="netkit-single", **kw)


def _pins(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _state(node, pod, root) -> dict:
    return {
        "node devices": sorted(l.name for l in links.list_links(netns=node.netns)),
        "pod devices": sorted(l.name for l in links.list_links(netns=pod)) if netns.exists(pod) else None,
        "pins": [p for p in _pins(root) if p.startswith("endpoints/")],
    }


class Nsim:
    """A netdevsim device moved into a test's node namespace (the netdevsim bus makes its
    netdev in the init namespace), deleted at the end."""

    def __init__(self, node_ns: str, queues: int = 4):
        if not os.path.exists(f"{NSIM_BUS}/new_device"):
            pytest.skip("no lease source: " + (os.environ.get("NKFRAME_LEASE_SOURCE_WHY") or
                        "the netdevsim module is not loaded (the vm-next tier loads the one it "
                        "builds from Debian's linux-source)"))
        for _ in range(50):
            self.id = random.randint(1000, 60000)
            if not os.path.exists(f"{NSIM_BUS}/devices/netdevsim{self.id}"):
                break
        with open(f"{NSIM_BUS}/new_device", "w") as f:
            f.write(f"{self.id} 1 {queues}")
        nets = f"{NSIM_BUS}/devices/netdevsim{self.id}/net"
        deadline = time.monotonic() + 10
        while not (os.path.isdir(nets) and os.listdir(nets)):
            assert time.monotonic() < deadline, f"netdevsim{self.id} made no netdev in 10 s"
            time.sleep(0.05)
        self.name = f"nsim{self.id}"
        self.node_ns = node_ns
        self.ifindex = links.move_link(os.listdir(nets)[0], node_ns, new_name=self.name)
        links.set_up(self.name, netns=node_ns)

    def lease_of(self, queue: int):
        with NetdevFamily(self.node_ns) as fam:
            return fam.queue_get(self.ifindex, queue, QueueType.RX).lease

    def close(self) -> None:
        try:
            with open(f"{NSIM_BUS}/del_device", "w") as f:
                f.write(str(self.id))
        except OSError:
            pass


@pytest.fixture
def nsim(node):
    dev = Nsim(node.netns)
    try:
        yield dev
    finally:
        dev.close()


def test_single_endpoint_lifecycle_without_leases(node, bpffs_root):
    pod = node.pod()
    before = _state(node, pod, bpffs_root)
    eng = _engine(node, bpffs_root)
    ep = eng.add_endpoint(_single("vm-a", pod, mode="l2", mac="02:00:00:00:0a:01", addresses=["10.77.50.9/32"]))
    assert ep.device_kind is DeviceKind.NETKIT_SINGLE and ep.programs == () and ep.leases == ()
    # One device, in the pod, single mode, up; nothing new in the node namespace.
    info = netkit.get_netkit("eth0", netns=pod)
    assert info.pairing == netkit.NetkitPairing.SINGLE
    st = links.get_link("eth0", netns=pod)
    assert st.ifindex == ep.node_ifindex and st.up and st.address == "02:00:00:00:0a:01"
    assert _state(node, pod, bpffs_root)["node devices"] == before["node devices"]
    # The addresses are the guest's: none configured in the pod.
    assert not [a for a in links.list_addresses("eth0", netns=pod) if not a.ip.is_link_local]
    # A fresh engine (a restarted agent) reads the same endpoint back from bpffs and the kernel.
    again = _engine(node, bpffs_root).get_endpoint("vm-a")
    assert (again.device_kind, again.node_ifindex, again.spec) == (ep.device_kind, ep.node_ifindex, ep.spec)
    from nkframe import status

    s = status.gather(eng)
    (e,) = s.endpoints
    assert e.problems == () and e.device_kind == "netkit-single" and e.pod and e.pod.up
    rep = eng.reconcile()
    assert rep.healthy == ("vm-a",) and rep.problems == ()
    assert eng.upgrade() == []  # nothing to upgrade on a device without programs
    with pytest.raises(InvalidSpec, match="no programs"):
        eng.switch_mechanism("vm-a", "tc")
    eng.remove_endpoint("vm-a")
    assert _state(node, pod, bpffs_root) == before


def test_single_endpoint_refusals_leave_nothing(node, bpffs_root, count_obj):
    pod = node.pod()
    before = _state(node, pod, bpffs_root)
    # A plugin program: the kernel would refuse it, so nkframe does, naming it.
    with pytest.raises(InvalidSpec, match="runs no BPF programs.*count_out"):
        _engine(node, bpffs_root, Counting()).add_endpoint(_single("vm-b", pod))
    assert _state(node, pod, bpffs_root) == before
    # A policy (the policy plugin, loaded by name as the agent does).
    eng = Engine(node.netns, bpffs_root, plugins=["policy"])
    with pytest.raises(InvalidSpec, match="single device"):
        eng.add_endpoint(_single("vm-b", pod, options={"policy": {"default_ingress": "deny"}}))
    assert _state(node, pod, bpffs_root) == before
    # Spec-level refusals: before anything is created.
    for bad, match in ((dict(attach="tc"), "runs no BPF programs"), (dict(options={"netkit_policy": "drop"}), "pass policy"),
                       (dict(mode="l2", host_mac="02:00:00:00:0b:01"), "no node side")):
        with pytest.raises(InvalidSpec, match=match):
            _single("vm-b", pod, **bad)
    with pytest.raises(InvalidSpec, match="need device 'netkit-single'"):
        EndpointSpec(id="vm-b", netns=pod, leases=["up0:0"])
    # A lease of a device the node does not have.
    eng = _engine(node, bpffs_root)
    with pytest.raises(InvalidSpec, match="no device nope0"):
        eng.add_endpoint(_single("vm-b", pod, leases=["nope0:0"]))
    assert _state(node, pod, bpffs_root) == before
    # A lease of a veth queue: the kernel's own capability refusal, as NotSupported naming veth.
    with pytest.raises(NotSupported, match="veth") as ei:
        eng.add_endpoint(_single("vm-b", pod, leases=[f"{node.uplink}:0"]))
    assert ei.value.feature == "queue_lease"
    assert _state(node, pod, bpffs_root) == before
    # The pod interface name is taken.
    links.create_veth(links.VethSpec("eth0", "other0"), netns=pod)
    with pytest.raises(EndpointExists, match="eth0"):
        eng.add_endpoint(_single("vm-b", pod))
    links.delete_link("eth0", netns=pod)
    assert _state(node, pod, bpffs_root) == before


def test_leased_endpoint_add_list_restart_remove(node, bpffs_root, nsim, tmp_path):
    pod = node.pod()
    eng = _engine(node, bpffs_root)
    ep = eng.add_endpoint(_single("vm-c", pod, leases=[f"{nsim.name}:2", f"{nsim.name}:3"]))
    # The kernel's view, from both sides: the single device's queues 1 and 2 stand for the
    # physical queues 2 and 3.
    assert [(x.queue, x.uplink, x.uplink_queue) for x in ep.leases] == [(1, nsim.name, 2), (2, nsim.name, 3)]
    for q in (2, 3):
        lease = nsim.lease_of(q)
        assert lease is not None and lease.queue_id in (1, 2), lease
    assert nsim.lease_of(0) is None
    # endpoint ls --json from another process (no agent), as a user would see it.
    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    out = subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "--bpffs-root", bpffs_root, "--no-agent",
                          "endpoint", "ls", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    (doc,) = json.loads(out.stdout)
    assert doc["device_kind"] == "netkit-single" and doc["pod_ifname"] == "eth0" and doc["node_ifname"] == ""
    assert [(x["queue"], x["uplink"], x["uplink_queue"]) for x in doc["leases"]] == [(1, nsim.name, 2), (2, nsim.name, 3)]
    # A restarted engine sees the same leases; status and graph show them.
    from nkframe import graph, status

    again = _engine(node, bpffs_root)
    assert again.get_endpoint("vm-c").leases == ep.leases
    s = status.gather(again)
    assert s.endpoints[0].problems == () and len(s.endpoints[0].leases) == 2
    dot = graph.to_dot(s)
    assert "rx queue 2 leased as queue 1" in dot and f"{nsim.name} (lease source)" in dot
    # The same physical queue cannot go to a second endpoint: refused, nothing of it left.
    pod2 = node.pod()
    before2 = _state(node, pod2, bpffs_root)
    with pytest.raises(KernelError) as ei:
        again.add_endpoint(_single("vm-d", pod2, leases=[f"{nsim.name}:3"]))
    assert ei.value.errno == 16  # EBUSY
    assert _state(node, pod2, bpffs_root) == before2
    assert again.get_endpoint("vm-c").leases == ep.leases
    # Remove: the physical queues come back and can be leased again.
    again.remove_endpoint("vm-c")
    assert nsim.lease_of(2) is None and nsim.lease_of(3) is None
    assert not links.link_exists("eth0", netns=pod)
    ep2 = again.add_endpoint(_single("vm-d", pod2, leases=[f"{nsim.name}:3"]))
    assert [(x.queue, x.uplink_queue) for x in ep2.leases] == [(1, 3)]
    again.remove_endpoint("vm-d")


def _agent(node, bpffs_root, sock):
    """The real agent, started as the docs say (L3 datapath and policy plugins loaded)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "--bpffs-root", bpffs_root, "agent", "run",
         "--socket", sock, "--plugin", "l3", "--plugin", "policy"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from nkframe.agent.client import AgentClient
    from nkframe.agent.protocol import AgentUnavailable

    deadline = time.monotonic() + 300  # an interpreter start under TCG takes 30-60 s
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with AgentClient(sock, timeout=5) as c:
                if c.ping()["pid"] == proc.pid:
                    return proc
        except (AgentUnavailable, OSError):
            pass
        assert time.monotonic() < deadline, "the agent did not come up"
        time.sleep(0.1)


def test_leased_endpoint_through_the_agent_survives_its_restart(node, bpffs_root, nsim, tmp_path):
    from nkframe.agent.client import AgentClient

    sock = str(tmp_path / "agent.sock")
    pod = node.pod()
    before = _state(node, pod, bpffs_root)
    agent = _agent(node, bpffs_root, sock)
    try:
        with AgentClient(sock) as c:
            ep = c.add_endpoint(_single("vm-g", pod, mode="l2", mac="02:00:00:00:0c:01",
                                        addresses=["10.77.51.9/32"], leases=[f"{nsim.name}:1"]))
        assert [(x.queue, x.uplink, x.uplink_queue) for x in ep.leases] == [(1, nsim.name, 1)]
        agent.kill()  # a crash, not a clean stop
        agent.wait(30)
        # The device and its lease do not depend on the agent.
        assert nsim.lease_of(1) is not None
        agent = _agent(node, bpffs_root, sock)
        with AgentClient(sock) as c:
            (listed,) = c.endpoints()
            assert listed.spec == ep.spec and listed.leases == ep.leases
            assert c.reconcile().healthy == ("vm-g",)
            c.remove_endpoint("vm-g")
        assert nsim.lease_of(1) is None
        assert _state(node, pod, bpffs_root) == before
    finally:
        if agent.poll() is None:
            agent.terminate()
            agent.wait(60)


def test_pod_deleted_then_reconcile_removes_the_endpoint(node, bpffs_root, nsim, make_netns):
    pod = make_netns("vmpod")
    eng = _engine(node, bpffs_root)
    eng.add_endpoint(_single("vm-e", pod, leases=[f"{nsim.name}:1"]))
    assert nsim.lease_of(1) is not None
    netns.delete(pod)
    # The kernel returns the queue when the device goes with its namespace (asynchronously:
    # namespace cleanup runs in a workqueue).
    deadline = time.monotonic() + 10
    while nsim.lease_of(1) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nsim.lease_of(1) is None
    rep = eng.reconcile()
    assert rep.removed == ("vm-e",), rep
    assert any("leased queues" in p for p in rep.problems), rep.problems
    assert [p for p in _pins(bpffs_root) if p.startswith("endpoints/")] == []


CHILD = """
import sys
from nkframe.engine import Engine
from nkframe.types import EndpointSpec
_, node, root, pod, leases = sys.argv
eng = Engine(node, root, autoload=False)
eng.add_endpoint(EndpointSpec(id="vm-crash", netns=pod, device="netkit-single", leases=[x for x in leases.split(",") if x]))
"""


@pytest.mark.parametrize("point", faults.SINGLE_ADD_POINTS)
def test_crash_during_single_add_then_reconcile(node, bpffs_root, nsim, point):
    pod = node.pod()
    before = _state(node, pod, bpffs_root)
    leases = f"{nsim.name}:0,{nsim.name}:1"
    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1", **{faults.ENV: point, faults.ACTION_ENV: "kill"})
    r = subprocess.run([sys.executable, "-c", CHILD, node.netns, bpffs_root, pod, leases], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, f"the child was not killed at {point}: rc {r.returncode}\n{r.stderr}"
    eng = _engine(node, bpffs_root)
    rep = eng.reconcile()
    if point != "add.after_pin_dir":
        assert rep.removed == ("vm-crash",), rep
    assert _state(node, pod, bpffs_root) == before, f"leftovers after a crash at {point}"
    assert nsim.lease_of(0) is None and nsim.lease_of(1) is None, f"a lease outlived a crash at {point}"
    # The same endpoint can be added again.
    ep = eng.add_endpoint(_single("vm-crash", pod, leases=leases.split(",")))
    assert len(ep.leases) == 2
    eng.remove_endpoint("vm-crash")


def test_single_faults_are_reached():
    """Every point of SINGLE_ADD_POINTS is called by the engine or the single-device builder."""
    from pathlib import Path

    from nkframe import builtin, engine

    src = "".join(p.read_text() for p in sorted(Path(engine.__file__).parent.glob("*.py")))
    src += Path(builtin.__file__).read_text()
    for p in faults.SINGLE_ADD_POINTS:
        assert f'faults.point("{p}")' in src, p


def test_probe_says_which_uplink_can_lend_queues(node, nsim, bpffs_root):
    """nkframe probe --uplink: a trial lease from a scratch namespace, nothing left behind."""
    before = sorted(l.name for l in links.list_links(netns=node.netns))
    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    out = subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "probe", "--json",
                          "--uplink", nsim.name, "--uplink", node.uplink], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr  # the veth uplink cannot lend queues
    src = json.loads(out.stdout)["lease_sources"]
    assert src[nsim.name]["supported"] is True and "netdevsim" in src[nsim.name]["reason"], src
    assert src[node.uplink]["supported"] is False and "veth" in src[node.uplink]["reason"], src
    # The queue tried is back at once, and the node namespace holds what it held.
    assert nsim.lease_of(3) is None
    assert sorted(l.name for l in links.list_links(netns=node.netns)) == before
    # The queue tried can be leased right away.
    eng = _engine(node, bpffs_root)
    eng.add_endpoint(_single("vm-p", node.pod(), leases=[f"{nsim.name}:3"]))
    eng.remove_endpoint("vm-p")
