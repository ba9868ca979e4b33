"""nkframe's CNI plugin as a runtime uses it: each of its two executables (the Python
``nkframe-cni``, and ``nkframe-cni-shim``, which has the agent run the commands), exec'd with
the CNI environment and the configuration on stdin, found through a private CNI_PATH next to
Debian's ``host-local`` IPAM plugin, against a real agent serving a node namespace on a private
bpffs; real packets from the pods, then DEL.  Failures after the address was leased leave no
lease, no device and no pin behind."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requires

import nkframe
from nkframe import netns
from nkframe.agent.client import AgentClient
from nkframe.agent.server import Agent
from nkframe.cni import config
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root

HOST_LOCAL = "/usr/lib/cni/host-local"
EXE = Path(sys.executable).parent / "nkframe-cni"
SHIM = Path(nkframe.__file__).parent / "_bin" / "nkframe-cni-shim"
NODE_IP = "192.0.2.1"  # the node's uplink address (tests/conftest.py Node)
SUBNET = "10.77.0.0/24"


@pytest.fixture(params=["python", "shim"])
def cni_path(request, tmp_path):
    """A private CNI_PATH: host-local and our plugin (as type "nkframe"), nothing else; every
    test runs with each executable."""
    requires.tool(HOST_LOCAL, "containernetworking-plugins")
    exe = EXE if request.param == "python" else SHIM
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe} is missing: make setup builds it")
    d = tmp_path / "cni-bin"
    d.mkdir()
    (d / "host-local").symlink_to(HOST_LOCAL)
    (d / "nkframe").symlink_to(exe)
    return str(d)


class Harness:
    """An agent serving ``node`` (a thread of this process, as in test_agent.py) and the means
    to run the plugin against it."""

    def __init__(self, node, bpffs_root, tmp_path, cni_path):
        self.node, self.bpffs_root, self.cni_path = node, bpffs_root, cni_path
        rundir = tmp_path / "run"
        rundir.mkdir(mode=0o700)
        self.socket = str(rundir / "agent.sock")
        self.ipam_dir = tmp_path / "ipam"
        self.engine = Engine(node.netns, bpffs_root, plugins=["l3", "l2", "policy"], uplink=node.uplink)
        self.agent: Agent | None = None
        self._thread: threading.Thread | None = None
        self.start()

    def start(self):
        self.agent = Agent(self.engine, self.socket)
        self.agent.start()
        self._thread = threading.Thread(target=self.agent.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        if self.agent is not None:
            self.agent.stop()
            self._thread.join(10)
            self.agent = None

    def conf(self, version="1.0.0", name="nkt-net", **kw) -> dict:
        d = {"cniVersion": version, "name": name, "type": "nkframe", "agentSocket": self.socket,
             "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(self.ipam_dir), "routes": [{"dst": "0.0.0.0/0"}]}}
        d.update(kw)
        return d

    def run(self, command: str, conf: dict, *, cid: str, pod: str | None, ifname: str = "eth0", args: str = "",
            stdin: bytes | None = None, env: dict | None = None) -> tuple[int, dict]:
        """Exec the plugin as a runtime does (from the host's namespace: a runtime runs plugins
        in its own); (exit status, decoded stdout or {})."""
        # NKFRAME_AGENT_SOCKET as a runtime's own environment would carry it: the shim reads no
        # agentSocket from the configuration (the Python plugin prefers that one).
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
                   "CNI_IFNAME": ifname, "CNI_PATH": self.cni_path, "NKFRAME_AGENT_SOCKET": self.socket}
        if pod is not None:
            environ["CNI_NETNS"] = netns.netns_path(pod)
        if args:
            environ["CNI_ARGS"] = args
        environ.update(env or {})
        exe = os.path.join(self.cni_path, conf["type"])
        p = subprocess.run([exe], input=json.dumps(conf).encode() if stdin is None else stdin, env=environ,
                           capture_output=True, timeout=120)
        out = p.stdout.decode().strip()
        return p.returncode, (json.loads(out) if out else {})

    def ok(self, command: str, conf: dict, **kw) -> dict:
        rc, doc = self.run(command, conf, **kw)
        assert rc == 0, f"{command} failed: {doc}"
        return doc

    def leases(self, name="nkt-net") -> dict[str, str]:
        """host-local's reservations: address -> container id (its files are named by address)."""
        d = self.ipam_dir / name
        out = {}
        for f in d.iterdir() if d.is_dir() else ():
            try:
                ipaddress.ip_address(f.name)
            except ValueError:
                continue  # its lock and last_reserved_ip files
            out[f.name] = f.read_text().splitlines()[0].strip()
        return out

    def endpoint_ids(self) -> list[str]:
        return sorted(self.engine.layout.endpoint_ids())

    def node_links(self) -> set[str]:
        return {l.name for l in links.list_links(netns=self.node.netns)} - {"lo", self.node.uplink}


@pytest.fixture
def cni(node, bpffs_root, tmp_path, cni_path):
    h = Harness(node, bpffs_root, tmp_path, cni_path)
    try:
        yield h
    finally:
        h.stop()
        for eid in h.engine.layout.endpoint_ids():  # whatever a failed test left
            try:
                h.engine.remove_endpoint(eid)
            except Exception:  # noqa: BLE001
                pass


def _pod_addr(doc: dict) -> str:
    [ip] = [i for i in doc["ips"] if i["interface"] == 1]
    return ip["address"].split("/")[0]


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_packets_check_del(cni, node, version):
    pod = node.pod()
    conf = cni.conf(version, mtu=1400)
    doc = cni.ok("ADD", conf, cid="ctr-a", pod=pod, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0")
    eid = config.endpoint_id("ctr-a", "eth0")
    host = config.host_ifname(eid)
    addr = _pod_addr(doc)
    assert ipaddress.ip_address(addr) in ipaddress.ip_network(SUBNET)
    ip = {"address": f"{addr}/32", "gateway": "169.254.1.1", "interface": 1}
    if version == "0.4.0":
        ip = {"version": "4", **ip}
    mtu = {"mtu": 1400} if version == "1.1.0" else {}
    # Every interface carries the MAC the kernel reports (runtimes such as podman refuse a
    # result interface without one), L3 mode included.
    host_mac = links.get_link(host, netns=node.netns).address
    pod_mac = links.get_link("eth0", netns=pod).address
    assert host_mac and pod_mac
    assert doc == {
        "cniVersion": version,
        "interfaces": [{"name": host, "mac": host_mac, **mtu},
                       {"name": "eth0", "mac": pod_mac, **mtu, "sandbox": netns.netns_path(pod)}],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {},
    }
    # what exists: the lease, the endpoint (recording its attachment), the devices
    assert cni.leases() == {addr: "ctr-a"}
    with AgentClient(cni.socket) as c:
        ep = c.get_endpoint(eid)
    assert ep.spec.options["cni"] == {"network": "nkt-net", "containerID": "ctr-a", "ifname": "eth0", "podNamespace": "prod", "podName": "web-0"}
    assert ep.spec.mtu == 1400 and links.get_link(host, netns=node.netns).mtu == 1400
    assert links.link_exists("eth0", netns=pod)
    # real packets, pod -> node
    assert udp_probe(pod, node.netns, NODE_IP, count=3) == 3
    # CHECK against the ADD's result
    rc, err = cni.run("CHECK", dict(conf, prevResult=doc), cid="ctr-a", pod=pod)
    assert rc == 0, err
    # DEL: endpoint, devices and lease gone
    assert cni.run("DEL", dict(conf, prevResult=doc), cid="ctr-a", pod=pod) == (0, {})
    assert cni.leases() == {} and cni.endpoint_ids() == [] and cni.node_links() == set()
    assert not links.link_exists("eth0", netns=pod)
    assert udp_probe(pod, node.netns, NODE_IP, count=1, timeout=0.3) == 0


def test_two_pods_talk_and_get_their_own_addresses(cni, node):
    pa, pb = node.pod(), node.pod()
    conf = cni.conf()
    a = cni.ok("ADD", conf, cid="ctr-a", pod=pa)
    b = cni.ok("ADD", conf, cid="ctr-b", pod=pb)
    assert _pod_addr(a) != _pod_addr(b)
    assert udp_probe(pa, pb, _pod_addr(b), count=3) == 3
    assert udp_probe(pb, pa, _pod_addr(a), count=3) == 3
    for cid, pod in (("ctr-a", pa), ("ctr-b", pb)):
        cni.ok("DEL", conf, cid=cid, pod=pod)
    assert cni.leases() == {} and cni.endpoint_ids() == []


def test_del_is_idempotent(cni, node):
    pod = node.pod()
    conf = cni.conf()
    # never added: success, and the IPAM plugin was asked too (host-local forgets nothing it lacks)
    assert cni.run("DEL", conf, cid="ctr-never", pod=pod) == (0, {})
    cni.ok("ADD", conf, cid="ctr-a", pod=pod)
    for _ in range(2):
        assert cni.run("DEL", conf, cid="ctr-a", pod=pod) == (0, {})
    assert cni.leases() == {} and cni.endpoint_ids() == []
    # the pod's namespace gone before DEL (and no CNI_NETNS at all): still success, nothing left
    pod2 = node.pod()
    cni.ok("ADD", conf, cid="ctr-b", pod=pod2)
    netns.delete(pod2)
    assert cni.run("DEL", conf, cid="ctr-b", pod=None) == (0, {})
    assert cni.run("DEL", conf, cid="ctr-b", pod=None) == (0, {})
    assert cni.leases() == {} and cni.endpoint_ids() == [] and cni.node_links() == set()


def _nothing_left(cni, pod):
    assert cni.leases() == {}, "the address was not given back"
    assert cni.endpoint_ids() == []
    assert not links.link_exists("eth0", netns=pod)


def test_add_failing_after_ipam_leaves_no_lease_and_no_device(cni, node):
    pod = node.pod()
    conf = cni.conf()
    # 1. the node-side device name is taken: the agent refuses after the lease was made
    host = config.host_ifname(config.endpoint_id("ctr-a", "eth0"))
    links.create_veth(links.VethSpec(name=host, peer_name="squat1"), netns=node.netns)
    rc, err = cni.run("ADD", conf, cid="ctr-a", pod=pod)
    assert rc == 1 and err["code"] == 999 and "EndpointExists" in err["msg"], err
    _nothing_left(cni, pod)
    assert cni.node_links() == {host, "squat1"}
    links.delete_link(host, netns=node.netns)
    # 2. a policy the policy plugin refuses (code 7: the configuration)
    rc, err = cni.run("ADD", cni.conf(policy={"egress": [{"action": "maybe", "cidr": "0.0.0.0/0"}]}), cid="ctr-a", pod=pod)
    assert rc == 1 and err["code"] == 7 and "maybe" in err["details"], err
    _nothing_left(cni, pod)
    # 3. the pod's namespace does not exist (code 4: CNI_NETNS; found before IPAM is asked)
    rc, err = cni.run("ADD", conf, cid="ctr-a", pod="nkt-no-such-pod")
    assert rc == 1 and err["code"] == 4 and "CNI_NETNS" in err["msg"], err
    _nothing_left(cni, pod)
    # 4. IPAM hands out an address another endpoint holds (code 7, the ranges overlap)
    with AgentClient(cni.socket) as c:
        c.add_endpoint(EndpointSpec(id="squatter", netns=node.pod(), addresses=["10.77.0.9/32"]))
    one = cni.conf(name="nkt-one", ipam={"type": "host-local", "dataDir": str(cni.ipam_dir),
                                         "ranges": [[{"subnet": SUBNET, "rangeStart": "10.77.0.9", "rangeEnd": "10.77.0.9"}]]})
    rc, err = cni.run("ADD", one, cid="ctr-a", pod=pod)
    assert rc == 1 and err["code"] == 7 and "AddressInUse" in err["msg"], err
    assert cni.leases("nkt-one") == {} and cni.endpoint_ids() == ["squatter"]
    assert cni.node_links() == {EndpointSpec(id="squatter", netns="x").node_ifname}
    assert not links.link_exists("eth0", netns=pod)
    # and a runtime's DEL after the failed ADD (the spec requires one) is a success
    assert cni.run("DEL", one, cid="ctr-a", pod=pod) == (0, {})


def test_an_exhausted_range_is_host_locals_error_and_harms_no_one(cni, node):
    pa, pb = node.pod(), node.pod()
    one = cni.conf(name="nkt-one", ipam={"type": "host-local", "dataDir": str(cni.ipam_dir),
                                         "ranges": [[{"subnet": SUBNET, "rangeStart": "10.77.0.9", "rangeEnd": "10.77.0.9"}]]})
    cni.ok("ADD", one, cid="ctr-a", pod=pa)
    rc, err = cni.run("ADD", one, cid="ctr-b", pod=pb)
    assert rc == 1 and err["msg"].startswith("IPAM plugin host-local:"), err
    # the DEL that followed host-local's failure released nothing of ctr-a's
    assert cni.leases("nkt-one") == {"10.77.0.9": "ctr-a"} and cni.endpoint_ids() == [config.endpoint_id("ctr-a", "eth0")]
    assert not links.link_exists("eth0", netns=pb)
    assert udp_probe(pa, node.netns, NODE_IP, count=2) == 2
    cni.ok("DEL", one, cid="ctr-b", pod=pb)
    cni.ok("DEL", one, cid="ctr-a", pod=pa)
    assert cni.leases("nkt-one") == {}


def test_add_twice_is_refused_and_keeps_the_first_attachment(cni, node):
    pod = node.pod()
    conf = cni.conf()
    doc = cni.ok("ADD", conf, cid="ctr-a", pod=pod)
    rc, err = cni.run("ADD", conf, cid="ctr-a", pod=pod)
    assert rc == 1 and err["code"] == 999 and "attached already" in err["msg"], err
    assert cni.leases() == {_pod_addr(doc): "ctr-a"}  # the first ADD's address stays leased
    assert udp_probe(pod, node.netns, NODE_IP, count=2) == 2
    cni.ok("DEL", conf, cid="ctr-a", pod=pod)


def test_no_agent(cni, node):
    pod = node.pod()
    conf = cni.conf("1.1.0")
    assert cni.run("STATUS", conf, cid="", pod=None) == (0, {})
    cni.stop()
    for cmd in ("ADD", "DEL"):
        rc, err = cni.run(cmd, conf, cid="ctr-a", pod=pod)
        assert rc == 1 and err["code"] == 11 and err["cniVersion"] == "1.1.0", err
    rc, err = cni.run("STATUS", conf, cid="", pod=None)
    assert rc == 1 and err["code"] == 50, err
    assert cni.leases() == {} and not links.link_exists("eth0", netns=pod)
    cni.start()  # a new agent: the runtime's retry goes through
    cni.ok("ADD", conf, cid="ctr-a", pod=pod)
    cni.ok("DEL", conf, cid="ctr-a", pod=pod)


def test_check_finds_what_changed(cni, node):
    pod = node.pod()
    conf = cni.conf()
    doc = cni.ok("ADD", conf, cid="ctr-a", pod=pod)
    # prevResult naming another address
    other = json.loads(json.dumps(doc))
    other["ips"][0]["address"] = "10.77.0.200/32"
    rc, err = cni.run("CHECK", dict(conf, prevResult=other), cid="ctr-a", pod=pod)
    assert rc == 1 and "10.77.0.200" in err["details"], err
    # the node-side device deleted behind nkframe's back (the pod's end goes with it)
    links.delete_link(doc["interfaces"][0]["name"], netns=node.netns)
    rc, err = cni.run("CHECK", dict(conf, prevResult=doc), cid="ctr-a", pod=pod)
    assert rc == 1 and err["code"] == 999 and "gone" in err["details"], err
    cni.ok("DEL", conf, cid="ctr-a", pod=pod)
    rc, err = cni.run("CHECK", dict(conf, prevResult=doc), cid="ctr-a", pod=pod)
    assert rc == 1 and "not attached" in err["msg"], err


def test_l2_mode_reports_the_macs_it_set(cni, node):
    pod = node.pod()
    doc = cni.ok("ADD", cni.conf(mode="l2"), cid="ctr-a", pod=pod)
    host, eth0 = doc["interfaces"]
    assert links.get_link(host["name"], netns=node.netns).address == host["mac"]
    assert links.get_link("eth0", netns=pod).address == eth0["mac"]
    assert udp_probe(pod, node.netns, NODE_IP, count=3) == 3
    cni.ok("DEL", cni.conf(mode="l2"), cid="ctr-a", pod=pod)


def test_policy_is_passed_to_the_endpoint(cni, node):
    pod = node.pod()
    conf = cni.conf(policy={"egress": [{"action": "deny", "cidr": f"{NODE_IP}/32", "proto": "udp", "ports": 9999}]})
    cni.ok("ADD", conf, cid="ctr-a", pod=pod)
    assert udp_probe(pod, node.netns, NODE_IP, port=9999, count=2, timeout=0.3) == 0
    assert udp_probe(pod, node.netns, NODE_IP, port=9998, count=2) == 2
    cni.ok("DEL", conf, cid="ctr-a", pod=pod)


def test_gc_removes_attachments_the_runtime_no_longer_has(cni, node):
    pa, pb, pc = node.pod(), node.pod(), node.pod()
    net, other = cni.conf("1.1.0"), cni.conf("1.1.0", name="nkt-other", ipam={"type": "host-local", "subnet": "10.78.0.0/24", "dataDir": str(cni.ipam_dir)})
    cni.ok("ADD", net, cid="ctr-a", pod=pa)
    cni.ok("ADD", net, cid="ctr-b", pod=pb)
    cni.ok("ADD", other, cid="ctr-c", pod=pc)
    gc = dict(net, **{"cni.dev/valid-attachments": [{"containerID": "ctr-a", "ifname": "eth0"}]})
    assert cni.run("GC", gc, cid="", pod=None) == (0, {})
    assert cni.endpoint_ids() == sorted([config.endpoint_id("ctr-a", "eth0"), config.endpoint_id("ctr-c", "eth0")])
    assert not links.link_exists("eth0", netns=pb)
    # host-local 1.1.1 predates GC, so ctr-b's lease waits for the runtime's DEL
    assert sorted(cni.leases().values()) == ["ctr-a", "ctr-b"]
    cni.ok("DEL", net, cid="ctr-b", pod=pb)
    assert sorted(cni.leases().values()) == ["ctr-a"]
    for cid, pod, conf in (("ctr-a", pa, net), ("ctr-c", pc, other)):
        cni.ok("DEL", conf, cid=cid, pod=pod)
    assert cni.endpoint_ids() == []


_PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "x"}],
         "ips": [{"address": "10.9.9.9/32", "interface": 3}]}
HOSTILE_CNI = [
    # (id, conf changes, raw stdin, extra environment, expected exit code) -- issue 16 item 5
    ("dns-nameservers-int", {"dns": {"nameservers": 5}}, None, {}, 7),
    ("dns-search-int", {"dns": {"search": 5}}, None, {}, 7),
    ("dns-domain-list", {"dns": {"domain": ["a"]}}, None, {}, 7),
    ("prev-ips-index-past-interfaces", {"prevResult": _PREV}, None, {}, 7),
    ("prev-ips-index-no-interfaces", {"prevResult": {**_PREV, "interfaces": []}}, None, {}, 7),
    ("ipam-is-nkframe", {"ipam": {"type": "nkframe"}}, None, {}, 7),
    ("deep-json", None, b"[" * 100_000 + b"]" * 100_000, {}, 6),
    ("deep-object", None, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {}, 6),
    ("empty-policy", {"policy": {}}, None, {}, 7),
    ("lowercase-cni-var", {}, None, {"CNI_foo": "bar"}, 0),
    ("forty-cni-vars", {}, None, {f"CNI_X{i}": "v" for i in range(40)}, 0),
    ("cni-args-20k", {}, None, {"CNI_ARGS": "IgnoreUnknown=1;K=" + "a" * 20_000}, 0),
    ("cni-args-70k", {}, None, {"CNI_ARGS": "IgnoreUnknown=1;K=" + "a" * 70_000}, 4),
]


@pytest.mark.parametrize("case", HOSTILE_CNI, ids=[c[0] for c in HOSTILE_CNI])
def test_hostile_cni_input_same_answer_from_both_executables(cni, node, case):
    """Each bad input gets its CNI error code before anything is created (no endpoint, no
    lease, no device), from nkframe-cni and from the shim alike (the cni_path fixture runs
    every test with each); the good ones pass through both."""
    _name, changes, stdin, env, want = case
    pod = node.pod()
    conf = cni.conf(**(changes or {}))
    links_before = cni.node_links()
    rc, doc = cni.run("ADD", conf, cid="ctr-h", pod=pod, stdin=stdin, env=env)
    assert (rc == 0) == (want == 0), (rc, doc)
    if want:
        assert doc.get("code") == want and doc.get("msg"), doc
        assert "Traceback" not in json.dumps(doc)
        assert cni.endpoint_ids() == [] and cni.leases() == {} and cni.node_links() == links_before
    else:
        assert cni.endpoint_ids() == [config.endpoint_id("ctr-h", "eth0")]
        cni.ok("DEL", conf, cid="ctr-h", pod=pod)
        assert cni.endpoint_ids() == [] and cni.leases() == {}
