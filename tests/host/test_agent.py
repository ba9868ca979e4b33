"""The agent's API against the real kernel: lifecycle, errors, refusals, CLI routing, gc,
32 concurrent adds and removes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from agent_support import Counting, count_obj, served, version_count, wire  # noqa: F401 - fixture

from nkframe import netns
from nkframe.agent import protocol
from tools import kobjects
from nkframe.agent.client import AgentClient
from nkframe.agent.protocol import AddressInUse, Refused
from nkframe.agent.server import Agent, AgentRunning
from nkframe.cli import cli
from nkframe.engine import Engine
from nkframe.errors import EndpointExists, EndpointNotFound, NetnsNotFound
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root


@pytest.fixture
def sockdir(tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def agent(node, bpffs_root, sockdir):
    """An agent in this process (a thread serves the socket), with the Counting plugin."""
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False)
    with served(eng, str(sockdir / "agent.sock")) as ag:
        yield ag


def _raw(path: str, *lines: bytes) -> list[dict]:
    """Send raw lines on one connection; one decoded answer per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        f = s.makefile("rb")
        out = []
        for line in lines:
            s.sendall(line)
            out.append(json.loads(f.readline()))
        return out


def test_socket_is_root_only_and_ping_answers(agent, node, bpffs_root):
    st = os.stat(agent.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 0
    assert stat.S_IMODE(os.stat(os.path.dirname(agent.socket_path)).st_mode) & 0o077 == 0
    with AgentClient(agent.socket_path) as c:
        info = c.ping()
    assert info["pid"] == os.getpid()
    assert info["node_netns"] == node.netns and info["bpffs_root"] == bpffs_root
    assert info["protocol"] == protocol.VERSION
    assert info["startup"]["reconcile"] == {"healthy": [], "removed": [], "problems": []}


def test_lifecycle_through_the_api_with_traffic(agent, node, bpffs_root):
    pa, pb = node.pod(), node.pod()
    with AgentClient(agent.socket_path, node_netns=node.netns, bpffs_root=bpffs_root) as c:
        a = c.add_endpoint(EndpointSpec(id="pod-a", netns=pa, addresses=["10.77.1.10/32"]))
        b = c.add_endpoint(EndpointSpec(id="pod-b", netns=pb, addresses=["10.77.1.11/32"]))
        assert [p.name for p in a.programs] == ["count_out", "count_in"]
        wire(node.netns, pa, a.spec)
        wire(node.netns, pb, b.spec)
        assert udp_probe(pa, pb, "10.77.1.11", count=3) == 3
        assert version_count(bpffs_root, "pod-a", 1) >= 3 and version_count(bpffs_root, "pod-b", 1) >= 3
        assert c.get_endpoint("pod-a") == Engine(node.netns, bpffs_root, autoload=False).get_endpoint("pod-a")
        assert sorted(e.id for e in c.endpoints()) == ["pod-a", "pod-b"]
        with pytest.raises(EndpointExists):
            c.add_endpoint(EndpointSpec(id="pod-a", netns=pa))
        c.remove_endpoint("pod-a")
        with pytest.raises(EndpointNotFound):
            c.remove_endpoint("pod-a")
        with pytest.raises(EndpointNotFound):
            c.get_endpoint("pod-a")
        with pytest.raises(NetnsNotFound):
            c.add_endpoint(EndpointSpec(id="pod-x", netns="nkt-no-such-netns"))
        c.remove_endpoint("pod-b")
        assert c.endpoints() == []
    assert not os.path.exists(f"{bpffs_root}/endpoints/pod-a")
    assert not links.link_exists(a.spec.node_ifname, netns=node.netns)


def test_requests_are_validated_like_cli_input(agent):
    answers = _raw(
        agent.socket_path,
        b"not json\n",
        b'{"id": 2, "method": "endpoint.explode"}\n',
        b'{"id": 3, "method": "endpoint.del", "params": {"id": "x", "force": true}}\n',
        b'{"id": 4, "method": "endpoint.del"}\n',
        b'{"id": 5, "method": "endpoint.del", "params": {"id": "../../etc"}}\n',
        b'{"id": 6, "method": "endpoint.add", "params": {"spec": {"id": "a", "netns": "p", "host_ifname": "sixteen-bytes-xx"}}}\n',
        b'{"id": 7, "method": "endpoint.add", "params": {"spec": {"id": "a", "netns": "p", "addresses": ["10.0.0.999/32"]}}}\n',
        b'{"id": 8, "method": "endpoint.add", "params": {"spec": {"id": "a", "netns": "p", "colour": "red"}}}\n',
        b'{"id": 9, "v": 99, "method": "ping"}\n',
        b'{"id": 10, "method": "ping", "extra": 1}\n',
        b'[1, 2]\n',
        b'{"id": 12, "method": "ping"}\n',  # the connection survived all of the above
    )
    *bad, good = answers
    for a in bad:
        assert a["ok"] is False, a
        assert a["error"]["code"] == 2, a
        assert a["error"]["type"] in ("ProtocolError", "InvalidSpec"), a
    assert [a["id"] for a in bad] == [None, 2, 3, 4, 5, 6, 7, 8, 9, 10, None]
    assert "unknown method" in bad[1]["error"]["message"]
    assert "force" in bad[2]["error"]["message"]
    assert "required" in bad[3]["error"]["message"]
    assert "endpoint id" in bad[4]["error"]["message"]
    assert "at most 15" in bad[5]["error"]["message"]
    assert "not an IP address" in bad[6]["error"]["message"]
    assert "colour" in bad[7]["error"]["message"]
    assert good["ok"] is True and good["id"] == 12
    # An over-long line is refused and the connection closed (memory stays bounded).
    [big] = _raw(agent.socket_path, b'{"id": 1, "method": "ping", "params": {"x": "' + b"a" * protocol.MAX_LINE + b'"}}\n')
    assert big["ok"] is False and "longer than" in big["error"]["message"]


def test_refuses_other_nodes_outside_paths_and_the_node_namespace(agent, node, bpffs_root, make_netns):
    other = make_netns("othernode")
    pod = node.pod()
    with AgentClient(agent.socket_path, node_netns=other) as c:
        with pytest.raises(Refused, match="serves node namespace"):
            c.endpoints()
    with AgentClient(agent.socket_path, bpffs_root=bpffs_root + "/../elsewhere") as c:
        with pytest.raises(Refused, match="serves bpffs root"):
            c.endpoints()
    host_proc = subprocess.Popen(["sleep", "60"])  # a process in the agent's own (the host's) netns
    with host_proc, AgentClient(agent.socket_path, node_netns=node.netns, bpffs_root=bpffs_root) as c:
        assert c.endpoints() == []
        for bad, why in [
            ("/tmp/some-netns", "outside the allowed roots"),
            (f"/run/netns/../netns/{pod}", "not normalised"),
            ("/run/netns/sub/dir", "outside the allowed roots"),
            ("/proc/self/ns/net", "outside the allowed roots"),
            (node.netns, "node's own network namespace"),
            (f"/run/netns/{node.netns}", "node's own network namespace"),
            (f"/proc/{host_proc.pid}/ns/net", "node's own network namespace"),
        ]:
            with pytest.raises(Refused, match=why):
                c.add_endpoint(EndpointSpec(id="sneaky", netns=bad))
        # Allowed forms: a name, /run/netns/<name>, /proc/<pid>/ns/net of a process in the pod.
        ep = c.add_endpoint(EndpointSpec(id="by-path", netns=f"/run/netns/{pod}"))
        c.remove_endpoint(ep.id)
        host_proc.kill()
    assert os.listdir(f"{bpffs_root}/endpoints") == []
    assert links.list_links(netns=node.netns) and all(l.name in ("lo", node.uplink) for l in links.list_links(netns=node.netns))


def test_non_root_callers_are_refused(node, bpffs_root):
    # Layer 1: the socket is 0600, so another uid cannot even connect.
    # Layer 2: were the mode loosened, SO_PEERCRED still says who calls and the agent refuses.
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="nkt-agent-", dir="/run")
    os.chmod(d, 0o755)  # traversable by others, writable only by root: the agent accepts it
    ag = Agent(Engine(node.netns, bpffs_root, autoload=False), os.path.join(d, "agent.sock"))
    ag.start()
    t = threading.Thread(target=ag.serve_forever, daemon=True)
    t.start()
    prog = (
        "import os, socket, sys, json\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "except PermissionError:\n"
        "    print('EACCES'); sys.exit(0)\n"
        # The agent answers a refused peer at once and closes: a send that comes after that
        # fails with EPIPE, but the answer is already queued for reading.
        "try:\n"
        "    s.sendall(b'{\"id\": 1, \"method\": \"endpoint.list\"}\\n')\n"
        "except BrokenPipeError:\n"
        "    pass\n"
        "print(s.makefile('rb').readline().decode())\n"
    )
    try:
        r = subprocess.run([sys.executable, "-c", prog, ag.socket_path], capture_output=True, text=True, timeout=300)
        assert r.stdout.strip() == "EACCES", r.stderr
        os.chmod(ag.socket_path, 0o666)
        r = subprocess.run([sys.executable, "-c", prog, ag.socket_path], capture_output=True, text=True, timeout=300)
        answer = json.loads(r.stdout)
        assert answer["ok"] is False and answer["error"]["type"] == "Refused" and "uid 65534" in answer["error"]["message"]
    finally:
        ag.stop()
        t.join(10)
        shutil.rmtree(d, ignore_errors=True)


def test_socket_directory_and_single_agent_checks(node, bpffs_root, tmp_path, agent):
    eng = Engine(node.netns, bpffs_root, autoload=False)
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    with pytest.raises(Refused, match="writable by group or others"):
        Agent(eng, str(loose / "a.sock")).start()
    assert not os.path.exists(loose / "a.sock")
    with pytest.raises(AgentRunning, match=f"pid {os.getpid()}"):
        Agent(eng, agent.socket_path).start()
    with AgentClient(agent.socket_path) as c:  # the running one is untouched
        assert c.ping()["pid"] == os.getpid()


def test_addresses_are_unique_across_endpoints(agent, node):
    pa, pb = node.pod(), node.pod()
    with AgentClient(agent.socket_path) as c:
        c.add_endpoint(EndpointSpec(id="first", netns=pa, addresses=["10.77.2.1/32", "fd00:77::1/128"]))
        with pytest.raises(AddressInUse, match="already belong to endpoint first"):
            c.add_endpoint(EndpointSpec(id="second", netns=pb, addresses=["10.77.2.2/32", "fd00:77::1/128"]))
        c.remove_endpoint("first")
        c.add_endpoint(EndpointSpec(id="second", netns=pb, addresses=["10.77.2.2/32", "fd00:77::1/128"]))
        c.remove_endpoint("second")


# The CLI's own Engine (--no-agent, or no agent) loads no installed plugin in these tests.
_NO_PLUGINS = {"NKFRAME_DISABLE_PLUGIN_AUTOLOAD": "1"}


def _cli(agent_socket, node, bpffs_root, *args):
    return CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", bpffs_root, "--agent-socket", agent_socket, *args], env=_NO_PLUGINS)


def test_cli_goes_through_the_agent_and_can_bypass_it(agent, node, bpffs_root):
    pod = node.pod()
    r = _cli(agent.socket_path, node, bpffs_root, "endpoint", "add", "cli-a", "--pod-netns", pod, "--address", "10.77.3.1/32", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    # Only the agent has the Counting plugin (no plugin is installed for the CLI's own Engine).
    assert [p["name"] for p in doc["programs"]] == ["count_out", "count_in"]
    r = _cli(agent.socket_path, node, bpffs_root, "--no-agent", "endpoint", "ls", "--json")
    assert r.exit_code == 0 and [e["id"] for e in json.loads(r.output)] == ["cli-a"]
    r = _cli(agent.socket_path, node, bpffs_root, "endpoint", "del", "nope")
    assert r.exit_code == 5 and "no endpoint 'nope'" in r.output
    r = _cli(agent.socket_path, node, bpffs_root, "endpoint", "add", "cli-b", "--pod-netns", pod, "--address", "10.77.3.1/32")
    assert r.exit_code == 2 and "already belong to endpoint cli-a" in r.output
    r = CliRunner().invoke(cli, ["--netns", node.pod(), "--bpffs-root", bpffs_root, "--agent-socket", agent.socket_path, "endpoint", "ls"], env=_NO_PLUGINS)
    assert r.exit_code == 2 and "serves node namespace" in r.output
    r = _cli(agent.socket_path, node, bpffs_root, "agent", "status", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["endpoints"] == 1
    before = {p["name"]: p["prog_id"] for p in doc["programs"]}
    r = _cli(agent.socket_path, node, bpffs_root, "agent", "upgrade", "cli-a", "--json")
    assert r.exit_code == 0, r.output
    after = {p["name"]: p["prog_id"] for p in json.loads(r.output)[0]["programs"]}
    assert after.keys() == before.keys() and not set(after.values()) & set(before.values())
    r = _cli(agent.socket_path, node, bpffs_root, "agent", "upgrade", "nope")
    assert r.exit_code == 5
    r = _cli(agent.socket_path, node, bpffs_root, "endpoint", "del", "cli-a")
    assert r.exit_code == 0, r.output


def test_cli_works_without_an_agent_behind_a_stale_socket(node, bpffs_root, sockdir):
    path = str(sockdir / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # a socket file nobody listens on: what a SIGKILLed agent leaves
    r = _cli(path, node, bpffs_root, "endpoint", "ls", "--json")
    assert r.exit_code == 0, r.output
    assert "stale socket" in r.output and "working without the agent" in r.output
    r = _cli(path, node, bpffs_root, "agent", "status")
    assert r.exit_code == 4 and "no agent listens" in r.output


def test_gc_through_the_agent_cleans_vanished_namespaces(agent, node, bpffs_root, make_netns):
    keep, lose = node.pod(), make_netns("gone")
    with AgentClient(agent.socket_path) as c:
        c.add_endpoint(EndpointSpec(id="keep", netns=keep))
        gone = c.add_endpoint(EndpointSpec(id="lose", netns=lose))
    netns.delete(lose)
    r = _cli(agent.socket_path, node, bpffs_root, "gc", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["removed"] == ["lose"] and doc["healthy"] == ["keep"]
    assert not links.link_exists(gone.spec.node_ifname, netns=node.netns)
    with AgentClient(agent.socket_path) as c:
        assert [e.id for e in c.endpoints()] == ["keep"]
        c.remove_endpoint("keep")


def test_32_concurrent_adds_and_removes(count_obj, agent, node, bpffs_root, make_netns):
    n = 32
    pods = [make_netns(f"c{i}") for i in range(n)]
    before = kobjects.Census.take()
    node_links = sorted(l.name for l in links.list_links(netns=node.netns))

    def add(i):
        with AgentClient(agent.socket_path) as c:
            return c.add_endpoint(EndpointSpec(id=f"conc-{i:02d}", netns=pods[i], addresses=[f"10.77.8.{i + 1}/32"]))

    def remove(i):
        with AgentClient(agent.socket_path) as c:
            c.remove_endpoint(f"conc-{i:02d}")
            return i

    with ThreadPoolExecutor(n) as pool:
        # The first half is added; then the second half is added while the first is removed.
        first = list(pool.map(add, range(n // 2)))
        futures = [pool.submit(add, i) for i in range(n // 2, n)] + [pool.submit(remove, i) for i in range(n // 2)]
        results = [f.result() for f in futures]  # re-raises any failure
    second = results[: n // 2]
    added = first + second
    assert len({e.spec.node_ifname for e in added}) == n
    assert len({e.node_ifindex for e in added}) == n
    assert len({str(a) for e in added for a in e.spec.addresses}) == n
    with AgentClient(agent.socket_path) as c:
        assert sorted(e.id for e in c.endpoints()) == [f"conc-{i:02d}" for i in range(n // 2, n)]
    # A racing duplicate: eight adds of one address, exactly one wins.
    def dup(i):
        try:
            with AgentClient(agent.socket_path) as c:
                c.add_endpoint(EndpointSpec(id=f"dup-{i}", netns=pods[i], addresses=["10.77.9.9/32"]))
            return "ok"
        except AddressInUse:
            return "in use"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(dup, range(8)))
    assert sorted(outcomes) == ["in use"] * 7 + ["ok"]
    with ThreadPoolExecutor(n) as pool:
        ids = [f"conc-{i:02d}" for i in range(n // 2, n)] + [f"dup-{outcomes.index('ok')}"]
        list(pool.map(lambda eid: AgentClient(agent.socket_path).remove_endpoint(eid), ids))
    # Nothing leaked: devices, pins, kernel objects.
    assert sorted(l.name for l in links.list_links(netns=node.netns)) == node_links
    assert os.listdir(f"{bpffs_root}/endpoints") == []
    assert kobjects.settle(before, object_name=count_obj) == {}


def test_nkframe_agent_run_serves_until_sigterm(node, bpffs_root, sockdir):
    """The real command: `nkframe agent run` (plugins from entry points only), a CLI client,
    SIGTERM -> exit 0 with the socket removed."""
    import signal
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "nkframe")
    sock = str(sockdir / "cli.sock")
    base = [exe, "--netns", node.netns, "--bpffs-root", bpffs_root, "--agent-socket", sock]
    env = dict(os.environ, **_NO_PLUGINS)  # builtin behaviour only: no installed plugin needed
    proc = subprocess.Popen([*base, "agent", "run", "-v"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300  # an interpreter start under TCG takes a while
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.05)
        pod = node.pod()
        r = subprocess.run([*base, "endpoint", "add", "run-a", "--pod-netns", pod, "--json"], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([*base, "endpoint", "ls", "--json"], capture_output=True, text=True, timeout=300, env=env)
        assert [e["id"] for e in json.loads(r.stdout)] == ["run-a"]
        r = subprocess.run([*base, "endpoint", "del", "run-a"], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log = proc.stderr.read()
        assert "endpoint.add" in log and "endpoint.del" in log, log
        assert not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _spec_req(rid, **spec):
    return json.dumps({"id": rid, "method": "endpoint.add",
                       "params": {"spec": {"id": f"h{rid}", "netns": "p", **spec}}}).encode() + b"\n"


HOSTILE = [
    # (request line, words the one-line answer must contain) -- issue 17's agent cases
    (b'{"id": 1, "method": ["ping"]}\n', "unknown method"),
    (_spec_req(2, mtu="abc"), "mtu"),
    (_spec_req(3, options="x"), "options"),
    (b'{"id": 4, "method": "endpoint.add", "params": {"spec": {"id": "h4", "netns": "p", "options": '
     + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}}}\n", "nests"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nests"),
    (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"\n", "nests"),
    (_spec_req(7, addresses={"10.77.40.9/32": 1}), "must be a list"),
    (_spec_req(8, addresses=["0.0.0.0/32"]), "unspecified"),
    (_spec_req(9, addresses=["255.255.255.255/32"]), "broadcast"),
    (_spec_req(10, addresses=["224.0.0.1/32"]), "multicast"),
    (_spec_req(11, addresses=["127.0.0.1/32"]), "loopback"),
    (_spec_req(12, addresses=["::/128"]), "unspecified"),
    (_spec_req(13, addresses=["::1/128"]), "loopback"),
    (_spec_req(14, addresses=["ff02::1/128"]), "multicast"),
    (b'{"id": 15, "method": "ping", "params": []}\n', "params"),
    (b'{"id": 16, "method": "endpoint.del", "params": {"id": ["x"]}}\n', "id"),
    (b'{"id": 17, "method": null}\n', "unknown method"),
    (b'{"id": {"x": 1}, "method": "ping"}\n', "id"),
]


def test_hostile_requests_get_one_answer_each_and_the_agent_keeps_serving(agent, caplog):
    """Every malformed request is answered (code 2), on the same connection, with no traceback
    in the agent's log; afterwards the agent still serves (issue 17)."""
    import logging

    caplog.set_level(logging.INFO, logger="nkframe.agent")
    lines = [line for line, _ in HOSTILE] + [b'{"id": 99, "method": "ping"}\n']
    *answers, last = _raw(agent.socket_path, *lines)
    for (line, words), a in zip(HOSTILE, answers):
        assert a["ok"] is False, (line[:80], a)
        assert a["error"]["code"] == 2, (line[:80], a)
        assert a["error"]["type"] in ("ProtocolError", "InvalidSpec"), (line[:80], a)
        assert words in a["error"]["message"], (line[:80], a["error"]["message"])
    assert last["ok"] is True and last["id"] == 99
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    assert agent.engine.layout.endpoint_ids() == []


def test_addresses_the_node_owns_are_refused(agent, node):
    """The node's uplink address (a pod holding it took the node's traffic), and the network and
    broadcast addresses of the node's subnet (issue 17)."""
    pod = node.pod()
    for addr, words in (("192.0.2.1/32", "belongs to the node"), ("192.0.2.0/32", "network address"),
                        ("192.0.2.255/32", "broadcast address"), ("2001:db8:ff::1/128", "belongs to the node")):
        [a] = _raw(agent.socket_path, json.dumps({"id": 1, "method": "endpoint.add", "params": {
            "spec": {"id": "own", "netns": pod, "addresses": [addr]}}}).encode() + b"\n")
        assert a["ok"] is False and a["error"]["code"] == 2, a
        assert words in a["error"]["message"], a
    assert agent.engine.layout.endpoint_ids() == []


def test_one_agent_per_node_whichever_socket_and_the_loser_changes_nothing(node, bpffs_root, tmp_path):
    """Issue 17: a second `agent run` for a node was refused only after it had replaced the
    uplink programs, and one on another socket started and served.  Now the node lock is taken
    first: the second agent exits, naming the first, and the uplink is as the first left it."""
    import signal
    import subprocess
    import sys
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "nkframe")
    base = [exe, "--netns", node.netns, "--bpffs-root", bpffs_root, "agent", "run", "--plugin", "l3", "--uplink", node.uplink]
    d1, d2 = tmp_path / "a", tmp_path / "b"
    for d in (d1, d2):
        d.mkdir(mode=0o700)
    first = subprocess.Popen([*base, "--socket", str(d1 / "s.sock")], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (d1 / "s.sock").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first agent did not start"
            time.sleep(0.1)
        eng = Engine(node.netns, bpffs_root, plugin_objects=[], autoload=False)
        before = [(a.name, a.prog_id, a.link_id) for a in eng.attached(node.uplink)]
        assert before, "the first agent attached its uplink programs"
        for d in (d1, d2):  # the same socket, and another one
            r = subprocess.run([*base, "--socket", str(d / "s.sock")], capture_output=True, text=True, timeout=120)
            assert r.returncode != 0
            assert "another agent" in r.stderr and "Traceback" not in r.stderr, r.stderr
            assert [(a.name, a.prog_id, a.link_id) for a in eng.attached(node.uplink)] == before
        assert not (d2 / "s.sock").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)


def test_300_concurrent_clients_all_get_answers(agent):
    """Issue 17: 300 concurrent AgentClient connections gave 147 raw BlockingIOError (EAGAIN
    at connect: the listen queue was full).  Now connect waits for a full queue, bounded, and
    every client is answered."""
    from concurrent.futures import ThreadPoolExecutor

    from nkframe.agent.client import AgentClient

    def one(_):
        with AgentClient(agent.socket_path) as c:
            return c.ping()["pid"]

    with ThreadPoolExecutor(300) as pool:
        pids = list(pool.map(one, range(300)))
    assert pids == [os.getpid()] * 300


def test_the_cli_without_an_agent_validates_like_the_agent(node, bpffs_root, tmp_path):
    """Issue 17: `--no-agent --pod-netns <the node's own netns>` created the pod end inside the
    node; a missing namespace was InvalidSpec by path and NetnsNotFound by name.  One check now."""
    base = ["--netns", node.netns, "--bpffs-root", bpffs_root, "--no-agent", "endpoint", "add"]
    cases = [
        (["own", "--pod-netns", node.netns, "--address", "10.77.9.1/32"], 2, "node's own network namespace"),
        (["own", "--pod-netns", f"/run/netns/{node.netns}", "--address", "10.77.9.1/32"], 2, "node's own network namespace"),
        (["gone", "--pod-netns", "nkt-no-such-ns"], 5, "nkt-no-such-ns"),
        (["gone", "--pod-netns", "/run/netns/nkt-no-such-ns"], 5, "nkt-no-such-ns"),
        (["mine", "--pod-netns", node.pod(), "--address", "192.0.2.1/32"], 2, "belongs to the node"),
        (["bc", "--pod-netns", node.pod(), "--address", "192.0.2.255/32"], 2, "broadcast address"),
        (["lo", "--pod-netns", node.pod(), "--address", "127.0.0.1/32"], 2, "loopback"),
    ]
    before = {link.name for link in links.list_links(node.netns)}
    for argv, code, words in cases:
        r = CliRunner().invoke(cli, base + argv, env=_NO_PLUGINS)
        assert r.exit_code == code, (argv, r.exit_code, r.output)
        assert words in r.output and r.output.startswith("nkframe: error: "), (argv, r.output)
    assert {link.name for link in links.list_links(node.netns)} == before
    assert not os.path.isdir(os.path.join(bpffs_root, "endpoints")) or not os.listdir(os.path.join(bpffs_root, "endpoints"))
