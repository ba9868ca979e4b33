"""``nkframe agent run --metrics``: a real agent (the command line, in a child process living in
the test's node namespace, so its HTTP port is that namespace's loopback and never the
machine's) scraped over HTTP while endpoints are added and removed, an add is refused, a policy
drops packets and the agent restarts; every figure is checked against what happened."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from agent_support import AgentProcess
from prometheus_client.parser import text_string_to_metric_families

from nkframe import netns, probe
from nkframe.agent.client import AgentClient
from nkframe.agent.protocol import AddressInUse
from nkframe.engine import Engine
from nkframe.errors import EndpointExists, EndpointNotFound
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root

NODE_IP = "10.95.0.1"
ALLOWED, DENIED = 7311, 7312
# pod-0: UDP to the node on ALLOWED only; pod-1: everything allowed; pod-2, pod-3: no policy.
DENYING = {"default_egress": "deny", "default_ingress": "allow",
           "egress": [{"action": "allow", "cidr": f"{NODE_IP}/32", "proto": "udp", "ports": ALLOWED}]}
ALLOW_ALL = {"default_egress": "allow", "default_ingress": "allow"}
POLICIES = [DENYING, ALLOW_ALL, None, None]


class MetricsAgent(AgentProcess):
    """``nkframe agent run --plugin policy --metrics ADDR`` inside the node's namespace (nsenter
    enters the network namespace only and execs, so the pid is the agent's)."""

    def __init__(self, node, bpffs_root: str, socket_path: str, metrics: str = "127.0.0.1:0"):
        super().__init__(node.netns, bpffs_root, socket_path)
        self.args = ["nsenter", f"--net=/run/netns/{node.netns}", sys.executable, "-c",
                     "from nkframe.cli import main; main()",
                     "--netns", node.netns, "--bpffs-root", bpffs_root,
                     "agent", "run", "--socket", socket_path, "--plugin", "policy", "--metrics", metrics]
        self.node_netns = node.netns
        self.url = ""

    def start(self, timeout: float = 300.0) -> "MetricsAgent":
        super().start(timeout)
        with self.client() as c:
            self.url = c.ping()["metrics"]
        return self

    def scrape(self, timeout: float = 30) -> dict:
        return scrape(self.node_netns, self.url, timeout)


def scrape(node_netns: str, url: str, timeout: float = 30) -> dict:
    """{(name, frozenset(labels)): value} of one scrape, over HTTP from the node's namespace."""
    with netns.enter(node_netns):
        with urllib.request.urlopen(url, timeout=timeout) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(s: dict, name: str, **labels) -> float | None:
    return s.get((name, frozenset(labels.items())))


def series(s: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in s.items() if n == name}


def total(s: dict, name: str) -> float:
    return sum(series(s, name).values())


def expected_endpoints(eps) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for e in eps:
        key = (str(e.device_kind), "+".join(sorted({str(m) for m in e.mechanism.values()})) or "none")
        out[key] = out.get(key, 0) + 1
    return out


@pytest.fixture
def sockdir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def cleanup(node, bpffs_root):
    """Whatever a failed test left: agents killed, endpoints removed."""
    agents: list[MetricsAgent] = []
    yield agents
    for a in agents:
        a.kill()
    eng = Engine(node.netns, bpffs_root, plugins=["policy"])
    for eid in eng.layout.endpoint_ids():
        try:
            eng.remove_endpoint(eid)
        except Exception:  # noqa: BLE001 - best effort after a failed test
            pass


class Scraper(threading.Thread):
    """Scrapes in a loop until stopped: what Prometheus does while the node changes."""

    def __init__(self, agent: MetricsAgent):
        super().__init__(daemon=True)
        self.agent = agent
        self.results: list[tuple[float, float]] = []  # (endpoints gauge total, seconds)
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                s = self.agent.scrape()
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(f"{type(e).__name__}: {e}")
                continue
            self.results.append((total(s, "nkframe_endpoints"), time.monotonic() - t0))

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def test_metrics_follow_adds_removes_refusals_drops_and_a_restart(node, bpffs_root, sockdir, cleanup):
    sock = str(sockdir / "agent.sock")
    agent = MetricsAgent(node, bpffs_root, sock)
    cleanup.append(agent)
    agent.start()
    assert agent.url.startswith("http://127.0.0.1:") and agent.url.endswith("/metrics"), agent.url

    s0 = agent.scrape()
    assert total(s0, "nkframe_endpoints") == 0
    assert value(s0, "nkframe_endpoint_add_seconds_count") == 0
    assert value(s0, "nkframe_reconcile_seconds_count") == 1  # the start-up reconcile
    assert series(s0, "nkframe_operation_failures_total") == {}
    # The feature set is the probe's, one series per feature.
    feats = probe.features()
    for name in feats:
        assert value(s0, "nkframe_kernel_feature", feature=name, supported=str(feats.supported(name)).lower()) == 1, name
    assert len(series(s0, "nkframe_kernel_feature")) == len(list(feats))
    assert all(n.startswith("nkframe_") for n, _ in s0)

    links.add_address("lo", f"{NODE_IP}/32", netns=node.netns)
    pods = [node.pod(f"m{i}") for i in range(4)]
    scraper = Scraper(agent)
    scraper.start()
    with agent.client(node_netns=node.netns, bpffs_root=bpffs_root) as c:
        eps = []
        for i, (pod, pol) in enumerate(zip(pods, POLICIES)):
            ip = f"10.95.0.{10 + i}"
            spec = EndpointSpec(id=f"pod-{i}", netns=pod, addresses=[f"{ip}/32"], options={"policy": pol} if pol else {})
            eps.append(c.add_endpoint(spec))
            links.add_route(f"{NODE_IP}/32", dev="eth0", netns=pod)
            links.add_host_route(ip, spec.node_ifname, netns=node.netns)
        # Two refused adds: an id that exists, an address another endpoint holds.
        with pytest.raises(EndpointExists):
            c.add_endpoint(EndpointSpec(id="pod-0", netns=pods[0]))
        with pytest.raises(AddressInUse):
            c.add_endpoint(EndpointSpec(id="pod-x", netns=node.pod("mx"), addresses=["10.95.0.11/32"]))
        time.sleep(0.5)  # a scrape or two after the last add
        scraper.stop()
        assert scraper.errors == [], scraper.errors[:3]
        seen = [n for n, _ in scraper.results]
        assert len(seen) >= 2 and seen == sorted(seen) and set(seen) <= {0, 1, 2, 3, 4}, seen
        assert seen[-1] == 4
        assert max(d for _, d in scraper.results) < 10, "a scrape took that long while endpoints were added"

        s1 = agent.scrape()
        assert total(s1, "nkframe_endpoints") == 4
        got = {(dict(k)["device"], dict(k)["mechanism"]): v for k, v in series(s1, "nkframe_endpoints").items() if v}
        assert got == expected_endpoints(c.endpoints())
        assert ("veth" if eps[0].device_kind == "veth" else "netkit", "none") in got  # pod-2, pod-3: no programs
        assert value(s1, "nkframe_endpoint_add_seconds_count") == 4  # the refused ones failed
        assert value(s1, "nkframe_operation_failures_total", operation="add", error="EndpointExists") == 1
        assert value(s1, "nkframe_operation_failures_total", operation="add", error="AddressInUse") == 1
        assert total(s1, "nkframe_operation_failures_total") == 2
        for e in c.endpoints():
            assert value(s1, "nkframe_endpoint_programs", endpoint=e.id) == len(e.programs), e.id
            maps_dir = f"{bpffs_root}/endpoints/{e.id}/maps"
            assert value(s1, "nkframe_endpoint_maps", endpoint=e.id) == (len(os.listdir(maps_dir)) if os.path.isdir(maps_dir) else 0)
        progs = [p for e in c.endpoints() for p in e.programs]
        assert total(s1, "nkframe_programs") == len(progs) == 4  # two policy programs each for pod-0, pod-1
        assert value(s1, "nkframe_endpoints_incomplete") == 0
        assert series(s1, "nkframe_scrape_errors_total") == {}  # every part was read
        assert value(s1, "nkframe_global_maps") == len(os.listdir(f"{bpffs_root}/globals/maps"))
        # Policy series for the endpoints with a policy only.
        with_policy = {dict(k)["endpoint"] for k in series(s1, "nkframe_policy_drops_total")}
        assert with_policy == {"pod-0", "pod-1"}
        assert {dict(k)["verdict"] for k in series(s1, "nkframe_policy_verdicts_total")} == \
            {"allow_rule", "allow_default", "deny_rule", "deny_default", "malformed", "non_ip"}
        assert {dict(k)["reason"] for k in series(s1, "nkframe_events_lost_total")} == {"ring_full", "rate_limited"}

        # Traffic: pod-0's policy drops DENIED and lets ALLOWED through.
        assert udp_probe(pods[0], node.netns, NODE_IP, DENIED, count=5, timeout=0.5) == 0
        assert udp_probe(pods[0], node.netns, NODE_IP, ALLOWED, count=3) == 3
        s2 = agent.scrape()
        d = "nkframe_policy_drops_total"
        assert value(s2, d, endpoint="pod-0", reason="policy_default") - value(s1, d, endpoint="pod-0", reason="policy_default") >= 5
        assert value(s2, d, endpoint="pod-0", reason="policy_deny") == 0
        assert value(s2, d, endpoint="pod-1", reason="policy_default") == 0
        v = "nkframe_policy_verdicts_total"
        assert value(s2, v, endpoint="pod-0", direction="egress", verdict="deny_default") >= 5
        assert value(s2, v, endpoint="pod-0", direction="egress", verdict="allow_rule") >= 3
        assert value(s2, "nkframe_policy_node_drops_total", reason="policy_default") >= 5
        # The same counters the policy plugin reports to `nkframe status`, read afterwards.
        from nkframe_policy.plugin import counters

        pc = counters(bpffs_root, "pod-0")
        assert pc.drops["policy_default"].packets >= value(s2, d, endpoint="pod-0", reason="policy_default")
        # A policy changed by another process (`nkframe policy apply` without the agent): the
        # agent's view of the policy maps is stale, the scrape reads the slots' owners instead.
        from nkframe_policy.plugin import apply

        apply(bpffs_root, "pod-0", {**DENYING, "ingress": [{"action": "deny", "cidr": "192.0.2.0/24"}]})
        s2b = agent.scrape()
        assert {dict(k)["endpoint"] for k in series(s2b, d)} == {"pod-0", "pod-1"}
        assert value(s2b, d, endpoint="pod-0", reason="policy_default") >= value(s2, d, endpoint="pod-0", reason="policy_default")
        assert series(s2b, "nkframe_scrape_errors_total") == {}

        # Removes: the gauge follows, the removed endpoints' series go away.
        c.remove_endpoint("pod-3")
        c.remove_endpoint("pod-1")
        with pytest.raises(EndpointNotFound):
            c.remove_endpoint("pod-1")
        s3 = agent.scrape()
        assert total(s3, "nkframe_endpoints") == 2
        assert value(s3, "nkframe_endpoint_remove_seconds_count") == 2
        assert value(s3, "nkframe_operation_failures_total", operation="remove", error="EndpointNotFound") == 1
        assert value(s3, "nkframe_endpoint_programs", endpoint="pod-1") is None
        assert {dict(k)["endpoint"] for k in series(s3, d)} == {"pod-0"}

    # A restart: what the agent did starts again from zero, what the node is carries over.
    old_url = agent.url
    assert agent.terminate() == 0
    # Scrapes raced adds and removes hundreds of times: nothing in the log about them.
    log = agent.proc.stderr.read()
    assert "WARNING" not in log and "ERROR" not in log, log
    with pytest.raises(urllib.error.URLError):
        scrape(node.netns, old_url, timeout=5)
    agent2 = MetricsAgent(node, bpffs_root, sock)
    cleanup.append(agent2)
    agent2.start()
    s4 = agent2.scrape()
    assert total(s4, "nkframe_endpoints") == 2
    assert value(s4, "nkframe_endpoint_add_seconds_count") == 0
    assert value(s4, "nkframe_reconcile_seconds_count") == 1
    assert series(s4, "nkframe_operation_failures_total") == {}
    assert series(s4, "nkframe_scrape_errors_total") == {}
    assert value(s4, d, endpoint="pod-0", reason="policy_default") >= value(s2, d, endpoint="pod-0", reason="policy_default")
    with agent2.client() as c:
        c.reconcile()
        c.remove_endpoint("pod-0")
        c.remove_endpoint("pod-2")
    s5 = agent2.scrape()
    assert total(s5, "nkframe_endpoints") == 0
    assert value(s5, "nkframe_reconcile_seconds_count") == 2
    assert series(s5, d) == {}
    assert agent2.terminate() == 0


def test_an_address_in_use_stops_the_agent_before_it_touches_the_node(node, bpffs_root, sockdir):
    import socket

    with netns.enter(node.netns):
        taken = socket.socket()
    with taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock = str(sockdir / "agent.sock")
        agent = MetricsAgent(node, bpffs_root, sock, metrics=str(port))
        r = subprocess.run(agent.args, env=agent.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in lines[0], r.stderr
    assert not os.path.exists(sock)
    assert not os.path.exists(f"{bpffs_root}/endpoints") or os.listdir(f"{bpffs_root}/endpoints") == []
