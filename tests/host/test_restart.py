"""Restart: SIGKILL the agent under steady traffic between pods and start another.

Programs stay attached through their pinned links (or, for TC, as filters the kernel keeps), so
no datagram of a 2,000-per-second stream is lost while no agent runs, and the new agent's view,
rebuilt from bpffs and the kernel, equals the old one program id for program id.
"""

from __future__ import annotations

import time

import pytest
from agent_support import NETKIT, AgentProcess, Flow, assert_no_loss, need, version_count, wire

from nkframe.agent import protocol
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root


def _wait_for(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.02)


def _view(client) -> list[dict]:
    return [protocol.endpoint_to_dict(e) for e in client.endpoints()]


@pytest.mark.parametrize("attach", ["auto", "tc", NETKIT])
def test_sigkill_restart_under_traffic_loses_nothing(node, bpffs_root, tmp_path, attach):
    need(attach)
    sock = str(tmp_path / "agent.sock")
    pa, pb = node.pod(), node.pod()
    agent = AgentProcess(node.netns, bpffs_root, sock)
    agent.start()
    try:
        with agent.client() as c:
            a = c.add_endpoint(EndpointSpec(id="pod-a", netns=pa, addresses=["10.77.4.10/32"], attach=attach))
            b = c.add_endpoint(EndpointSpec(id="pod-b", netns=pb, addresses=["10.77.4.11/32"], attach=attach))
            before = _view(c)
        wire(node.netns, pa, a.spec)
        wire(node.netns, pb, b.spec)
        flows = [Flow(pa, pb, "10.77.4.11", 7001).start(), Flow(pb, pa, "10.77.4.10", 7002).start()]
        time.sleep(0.3)
        restart_times = []
        for _ in range(3):
            counted = version_count(bpffs_root, "pod-a", 1)
            agent.kill()
            sent = flows[0].sent
            # No agent: the datapath runs on its own.  Wait for 300 more packets rather than a
            # fixed 0.3 s: under QEMU TCG the sender itself may run slower than its rate.
            _wait_for(lambda: flows[0].sent - sent >= 300, "the sender kept going")
            _wait_for(lambda: version_count(bpffs_root, "pod-a", 1) - counted >= 300,
                      "the programs kept running without an agent")
            agent.start()
            restart_times.append(agent.ready_after)
            with agent.client() as c:
                assert _view(c) == before, "the reconciled view equals the one before the kill"
                assert c.ping()["startup"]["reconcile"]["healthy"] == ["pod-a", "pod-b"]
        time.sleep(0.2)
        assert_no_loss([f.stop() for f in flows], min_sent=2000)
        with agent.client() as c:
            c.remove_endpoint("pod-a")
            c.remove_endpoint("pod-b")
        assert agent.terminate() == 0
        print(f"restart times: {', '.join(f'{1000 * t:.0f} ms' for t in restart_times)}")
    finally:
        agent.kill()
