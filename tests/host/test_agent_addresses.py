"""The agent's address index (nkframe.agent.addresses) against real endpoints: rebuilt when an
agent starts, changed by adds, removes and gc, untouched by failed adds, atomic among racing
adds, and following changes made behind the agent's back."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from agent_support import Counting

from nkframe import faults, netns
from nkframe.agent.client import AgentClient
from nkframe.agent.protocol import AddressInUse
from nkframe.agent.server import Agent
from nkframe.engine import Engine
from nkframe.errors import NkframeError
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root


@pytest.fixture
def run_agent(node, bpffs_root, tmp_path):
    """Factory: a started agent serving in a thread, stopped at the end (or by ``stop(agent)``)."""
    sockdir = tmp_path / "run"
    sockdir.mkdir(mode=0o700)
    running: list[tuple[Agent, threading.Thread]] = []

    def start() -> Agent:
        eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False)
        ag = Agent(eng, str(sockdir / "agent.sock"))
        ag.start()
        t = threading.Thread(target=ag.serve_forever, daemon=True)
        t.start()
        running.append((ag, t))
        return ag

    try:
        yield start
    finally:
        for ag, t in reversed(running):
            ag.stop()
            t.join(10)
        eng = Engine(node.netns, bpffs_root, autoload=False)
        for eid in eng.layout.endpoint_ids():  # whatever a failed test left
            with contextlib.suppress(Exception):
                eng.remove_endpoint(eid)


def _stop(ag: Agent) -> None:
    ag.stop()


def test_a_restarted_agent_rebuilds_the_index_and_still_refuses_a_clash(run_agent, node):
    first = run_agent()
    with AgentClient(first.socket_path) as c:
        c.add_endpoint(EndpointSpec(id="old", netns=node.pod(), addresses=["10.77.20.1/32", "fd00:77:20::1/128"]))
    _stop(first)
    again = run_agent()
    # Built at start-up from the stored specs, before any request asked.
    assert again._index.endpoint_ids() == {"old"}
    assert again._index.owners("10.77.20.1") == {"old"} and again._index.owners("fd00:77:20::1") == {"old"}
    with AgentClient(again.socket_path) as c:
        with pytest.raises(AddressInUse) as e:
            c.add_endpoint(EndpointSpec(id="new", netns=node.pod(), addresses=["10.77.20.2/32", "fd00:77:20::1/128"]))
        assert str(e.value) == "address(es) fd00:77:20::1 already belong to endpoint old; remove it first or pick another address"
        assert [x.id for x in c.endpoints()] == ["old"]
        c.remove_endpoint("old")


def test_a_removed_endpoints_addresses_are_free_again(run_agent, node):
    ag = run_agent()
    with AgentClient(ag.socket_path) as c:
        c.add_endpoint(EndpointSpec(id="a", netns=node.pod(), addresses=["10.77.21.1/32"]))
        c.remove_endpoint("a")
        assert ag._index.owners("10.77.21.1") == set() and "a" not in ag._index.endpoint_ids()
        c.add_endpoint(EndpointSpec(id="b", netns=node.pod(), addresses=["10.77.21.1/32"]))
        assert ag._index.owners("10.77.21.1") == {"b"}
        # The same id and address again after a remove: a new directory, held once.
        c.remove_endpoint("b")
        c.add_endpoint(EndpointSpec(id="b", netns=node.pod(), addresses=["10.77.21.1/32"]))
        assert ag._index.owners("10.77.21.1") == {"b"} and len(ag._index) == 1
        c.remove_endpoint("b")
    assert len(ag._index) == 0


def test_a_failed_add_leaves_no_index_entry(run_agent, node, monkeypatch):
    ag = run_agent()
    pod = node.pod()
    # A real rollback: the add gets as far as configuring the device, then a fault point raises.
    monkeypatch.setenv(faults.ENV, "add.after_configure")
    monkeypatch.setenv(faults.ACTION_ENV, "raise")
    with AgentClient(ag.socket_path) as c:
        with pytest.raises(NkframeError, match="injected fault at add.after_configure"):
            c.add_endpoint(EndpointSpec(id="broken", netns=pod, addresses=["10.77.22.1/32"]))
        assert len(ag._index) == 0 and ag._index.owners("10.77.22.1") == set()
        monkeypatch.delenv(faults.ENV)
        ep = c.add_endpoint(EndpointSpec(id="fine", netns=pod, addresses=["10.77.22.1/32"]))
        assert ep.id == "fine" and ag._index.owners("10.77.22.1") == {"fine"}
        c.remove_endpoint("fine")


def test_racing_adds_of_one_address_exactly_one_wins(run_agent, node):
    ag = run_agent()
    n = 8
    pods = [node.pod() for _ in range(n)]
    start = threading.Barrier(n)

    def add(i):
        with AgentClient(ag.socket_path) as c:
            start.wait()
            try:
                c.add_endpoint(EndpointSpec(id=f"race-{i}", netns=pods[i], addresses=["10.77.23.1/32"]))
                return "ok"
            except AddressInUse:
                return "in use"

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(add, range(n)))
    assert sorted(outcomes) == ["in use"] * (n - 1) + ["ok"]
    winner = f"race-{outcomes.index('ok')}"
    assert ag._index.owners("10.77.23.1") == {winner} and ag._index.endpoint_ids() == {winner}
    with AgentClient(ag.socket_path) as c:
        assert [e.id for e in c.endpoints()] == [winner]
        c.remove_endpoint(winner)


def test_gc_drops_the_endpoints_it_removes(run_agent, node, make_netns):
    ag = run_agent()
    lose = make_netns("gone")
    with AgentClient(ag.socket_path) as c:
        c.add_endpoint(EndpointSpec(id="lose", netns=lose, addresses=["10.77.24.1/32"]))
        netns.delete(lose)
        assert c.reconcile().removed == ("lose",)
        assert ag._index.owners("10.77.24.1") == set() and len(ag._index) == 0
        c.add_endpoint(EndpointSpec(id="next", netns=node.pod(), addresses=["10.77.24.1/32"]))
        c.remove_endpoint("next")


def test_changes_behind_the_agents_back_are_seen(run_agent, node, bpffs_root):
    """nkframe --no-agent (here: an Engine of our own) writes bpffs directly; the agent's check
    still sees what it added and removed, and an id removed and re-added with another address."""
    ag = run_agent()
    direct = Engine(node.netns, bpffs_root, autoload=False)
    pod = node.pod()
    direct.add_endpoint(EndpointSpec(id="side", netns=pod, addresses=["10.77.25.1/32"]))
    with AgentClient(ag.socket_path) as c:
        with pytest.raises(AddressInUse, match="10.77.25.1 already belong to endpoint side"):
            c.add_endpoint(EndpointSpec(id="mine", netns=node.pod(), addresses=["10.77.25.1/32"]))
        direct.remove_endpoint("side")
        direct.add_endpoint(EndpointSpec(id="side", netns=pod, addresses=["10.77.25.2/32"]))
        c.add_endpoint(EndpointSpec(id="mine", netns=node.pod(), addresses=["10.77.25.1/32"]))
        with pytest.raises(AddressInUse, match="10.77.25.2 already belong to endpoint side"):
            c.add_endpoint(EndpointSpec(id="other", netns=node.pod(), addresses=["10.77.25.2/32"]))
        assert ag._index.owners("10.77.25.1") == {"mine"} and ag._index.owners("10.77.25.2") == {"side"}
        c.remove_endpoint("mine")
    direct.remove_endpoint("side")
