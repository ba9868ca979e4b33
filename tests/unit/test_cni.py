"""The CNI plugin without root: environment and configuration validation, derived names, result
encoding per spec version, error objects, the agent wire format, and what the executable imports.

The host tests (tests/host/test_cni_runtime.py) run the same executable against a real agent and
a real IPAM plugin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nkframe.agent import protocol
from nkframe.cni import SUPPORTED_VERSIONS, config, result
from nkframe.cni.agent import Agent, AgentFailure, AgentUnavailable, cni_error
from nkframe.cni.commands import Invocation, add_result
from nkframe.cni.errors import CniError
from nkframe.errors import InvalidSpec
from nkframe.types import validate_endpoint_id, validate_ifname

EXE = Path(sys.executable).parent / "nkframe-cni"
NETNS = "/run/netns/pod1"


def env(command="ADD", **kw):
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def conf(**kw):
    d = {"cniVersion": "1.0.0", "name": "podnet", "type": "nkframe", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


def parse(doc, command="ADD"):
    return config.parse(doc, command, "/run/nkframe/agent.sock")


def code_of(fn, *a, **kw) -> CniError:
    with pytest.raises(CniError) as ei:
        fn(*a, **kw)
    return ei.value


# ----------------------------------------------------------------------------------------------
# environment


def test_environment_is_parsed():
    e = config.CniEnv.from_environ(env(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=prod"))
    assert e.command == "ADD" and e.container_id == "c0ffee" and e.netns == NETNS and e.ifname == "eth0"
    assert e.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web-0", "K8S_POD_NAMESPACE": "prod"}
    assert e.path == ("/opt/cni/bin", "/usr/lib/cni")


@pytest.mark.parametrize("environ,names", [
    ({}, "CNI_COMMAND"),
    (env("FROB"), "FROB"),
    (env(CNI_CONTAINERID=None), "CNI_CONTAINERID"),
    (env(CNI_NETNS=""), "CNI_NETNS"),
    (env("CHECK", CNI_IFNAME=None), "CNI_IFNAME"),
    (env("DEL", CNI_CONTAINERID=None, CNI_IFNAME=None), "CNI_CONTAINERID, CNI_IFNAME"),
    (env(CNI_CONTAINERID="-leading-dash"), "CNI_CONTAINERID"),
    (env(CNI_CONTAINERID="has/slash"), "CNI_CONTAINERID"),
    (env(CNI_IFNAME="eth0123456789abc"), "16 bytes"),  # one byte over the kernel's limit
    (env(CNI_IFNAME="éééééééé"), "16 bytes"),  # 8 characters, 16 bytes
    (env(CNI_IFNAME="eth 0"), "CNI_IFNAME"),
    (env(CNI_IFNAME="a:b"), "CNI_IFNAME"),
    (env(CNI_NETNS="run/netns/x"), "CNI_NETNS"),
    (env(CNI_ARGS="K8S_POD_NAME"), "CNI_ARGS"),
    (env(CNI_ARGS="=x"), "CNI_ARGS"),
])
def test_bad_environment_is_error_4_naming_the_variable(environ, names):
    e = code_of(config.CniEnv.from_environ, environ)
    assert e.code == 4
    assert names in f"{e.msg} {e.details}"


def test_del_needs_no_netns_and_version_status_gc_need_nothing():
    assert config.CniEnv.from_environ(env("DEL", CNI_NETNS=None)).netns == ""
    for cmd in ("VERSION", "STATUS", "GC"):
        assert config.CniEnv.from_environ({"CNI_COMMAND": cmd}).command == cmd


def test_undecodable_ifname_is_refused():
    # os.environ hands undecodable bytes over as surrogates
    assert code_of(config.CniEnv.from_environ, env(CNI_IFNAME="eth\udcff")).code == 4


def test_ifname_of_exactly_15_bytes_is_fine():
    assert config.CniEnv.from_environ(env(CNI_IFNAME="eth0123456789ab")).ifname == "eth0123456789ab"


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_ifname_check_agrees_with_nkframe_types(name):
    try:
        validate_ifname(name)
        ok = True
    except InvalidSpec:
        ok = False
    assert (config.check_ifname(name, "x") is None) == ok


# ----------------------------------------------------------------------------------------------
# derived names

CONTAINER_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}\Z")
IFNAMES = st.text(st.characters(blacklist_characters="/:\0", blacklist_categories=("Zs", "Cc", "Cs")), min_size=1, max_size=15).filter(
    lambda n: len(n.encode()) <= 15 and n not in (".", "..") and not any(c.isspace() for c in n))


@given(CONTAINER_IDS, IFNAMES)
def test_endpoint_ids_follow_nkframes_id_rule(cid, ifname):
    eid = config.endpoint_id(cid, ifname)
    assert validate_endpoint_id(eid) == eid
    assert eid.startswith(cid[:46])
    host = config.host_ifname(eid)
    assert validate_ifname(host) == host and len(host.encode()) == 15 and host.startswith("nk")


def test_endpoint_ids_are_unambiguous_and_stable():
    assert config.endpoint_id("a-b", "c") != config.endpoint_id("a", "b-c")
    assert config.endpoint_id("ctr", "eth0") != config.endpoint_id("ctr", "eth1")
    long = "f" * 64
    assert config.endpoint_id(long, "eth0") != config.endpoint_id(long + "0", "eth0")
    assert config.endpoint_id("ctr", "eth0") == config.endpoint_id("ctr", "eth0")
    assert len(config.endpoint_id(long, "eth0")) == 63


def test_host_ifname_prefix_and_l2_macs():
    assert config.host_ifname("x", "pod").startswith("pod") and len(config.host_ifname("x", "pod")) == 15
    pod, node = config.derived_mac("x", "pod"), config.derived_mac("x", "node")
    assert pod != node
    for mac in (pod, node):
        first = int(mac[:2], 16)
        assert first & 1 == 0 and first & 2 == 2  # unicast, locally administered


def test_default_gateways_are_the_datapaths():
    nkframe_l3 = pytest.importorskip("nkframe_fwd.datapath")
    assert config.gateways({}) == (str(nkframe_l3.DEFAULT_GW4), str(nkframe_l3.DEFAULT_GW6))
    assert config.gateways({"datapath": {"gateway4": "10.0.0.1"}}) == ("10.0.0.1", str(nkframe_l3.DEFAULT_GW6))


# ----------------------------------------------------------------------------------------------
# network configuration


def test_defaults():
    c = parse(conf())
    assert (c.version, c.name, c.type, c.mode, c.attach, c.device, c.mtu) == ("1.0.0", "podnet", "nkframe", "l3", "auto", "auto", None)
    assert c.agent_socket == "/run/nkframe/agent.sock" and c.host_prefix == "nk" and c.options == {}
    assert c.ipam["type"] == "host-local" and c.prev_result is None and c.dns == {}


def test_our_keys():
    c = parse(conf(agentSocket="/run/nk/a.sock", mode="l2", attach="tc", device="veth", mtu=1400,
                   policy={"default": "allow"}, options={"datapath": {"gateway4": "10.0.0.1"}}, hostIfnamePrefix="pod"))
    assert (c.agent_socket, c.mode, c.attach, c.device, c.mtu, c.host_prefix) == ("/run/nk/a.sock", "l2", "tc", "veth", 1400, "pod")
    assert c.options == {"policy": {"default": "allow"}, "datapath": {"gateway4": "10.0.0.1"}}


def test_spec_keys_runtime_keys_and_cni_dev_keys_are_accepted():
    parse(conf(cniVersions=["0.4.0", "1.0.0"], dns={"nameservers": ["10.0.0.53"]}, args={"cni": {"labels": []}},
               runtimeConfig={"portMappings": []}, capabilities={"portMappings": True}, ipMasq=False,
               disableCheck=True, disableGC=False, **{"cni.dev/attachment": "x"}))


@pytest.mark.parametrize("doc,code,words", [
    (conf(cniVersion=None), 1, "no cniVersion"),
    (conf(cniVersion="0.3.1"), 1, "0.3.1"),
    (conf(cniVersion="2.0.0"), 1, "2.0.0"),
    (conf(colour="red"), 2, 'colour="red"'),
    (conf(ipMasq=True), 2, "ipMasq"),
    (conf(name=None), 7, "'name'"),
    (conf(name="-net"), 7, "'name'"),
    (conf(type="../nkframe"), 7, "'type'"),
    (conf(ipam=None), 7, "'ipam' is missing"),
    (conf(ipam={"subnet": "10.0.0.0/8"}), 7, "ipam.type"),
    (conf(ipam={"type": "/bin/sh"}), 7, "ipam.type"),
    (conf(ipam="host-local"), 7, "'ipam'"),
    (conf(mode="l4"), 7, "'mode'"),
    (conf(attach="xdp"), 7, "'attach'"),
    (conf(device="tap"), 7, "'device'"),
    (conf(mtu=67), 7, "'mtu'"),
    (conf(mtu=True), 7, "'mtu'"),
    (conf(mtu="1500"), 7, "'mtu'"),
    (conf(policy=["allow"]), 7, "'policy'"),
    (conf(policy={}, options={"policy": {}}), 7, "twice"),
    (conf(options={"cni": {}}), 7, "reserved"),
    (conf(options=[1]), 7, "'options'"),
    (conf(hostIfnamePrefix="toolongx"), 7, "hostIfnamePrefix"),
    (conf(hostIfnamePrefix="a/b"), 7, "hostIfnamePrefix"),
    (conf(agentSocket="agent.sock"), 7, "agentSocket"),
    (conf(disableCheck="yes"), 7, "disableCheck"),
    (conf(dns=["8.8.8.8"]), 7, "'dns'"),
    (conf(prevResult={"ips": [{"address": "10.0.0.300/24"}]}), 7, "prevResult"),
    (conf(prevResult=[]), 7, "prevResult"),
])
def test_bad_configuration(doc, code, words):
    e = code_of(parse, doc)
    assert e.code == code, e
    assert words in f"{e.msg} {e.details}"


def test_del_check_gc_status_need_no_ipam():
    for cmd in ("DEL", "CHECK", "GC", "STATUS"):
        assert parse(conf(ipam=None), cmd).ipam is None


def test_gc_valid_attachments():
    c = parse(conf(**{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]}), "GC")
    assert c.valid_attachments == {("a", "eth0"), ("b", "net1")}
    assert parse(conf(), "GC").valid_attachments == frozenset()
    assert code_of(parse, conf(**{"cni.dev/valid-attachments": [{"containerID": "a"}]}), "GC").code == 7


def test_decode():
    assert code_of(config.decode, b"{not json").code == 6
    assert code_of(config.decode, b"\xff\xfe").code == 6
    assert code_of(config.decode, b"[1]").code == 7
    assert config.decode(b'{"a": 1}') == {"a": 1}


def test_runtime_mac_only_in_l2():
    eid = "x"
    assert config.pod_mac(parse(conf()), eid) is None
    assert config.pod_mac(parse(conf(mode="l2")), eid) == config.derived_mac(eid, "pod")
    assert config.pod_mac(parse(conf(mode="l2", runtimeConfig={"mac": "0A:00:00:00:00:01"})), eid) == "0a:00:00:00:00:01"
    assert code_of(config.pod_mac, parse(conf(runtimeConfig={"mac": "0a:00:00:00:00:01"})), eid).code == 7
    assert code_of(config.pod_mac, parse(conf(mode="l2", runtimeConfig={"mac": "01:00:00:00:00:01"})), eid).code == 7


# ----------------------------------------------------------------------------------------------
# results

RESULT = {
    "interfaces": [{"name": "nk0123456789abc", "mtu": 1400}, {"name": "eth0", "sandbox": NETNS, "mtu": 1400}],
    "ips": [{"address": "10.22.0.5/32", "gateway": "169.254.1.1", "interface": 1},
            {"address": "fd00:22::5/128", "gateway": "fe80::1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1", "priority": 100}],
    "dns": {"nameservers": ["10.22.0.1"], "search": ["svc.local"]},
}

EXPECTED = {
    "0.4.0": '{"cniVersion": "0.4.0", '
             '"interfaces": [{"name": "nk0123456789abc"}, {"name": "eth0", "sandbox": "/run/netns/pod1"}], '
             '"ips": [{"version": "4", "address": "10.22.0.5/32", "gateway": "169.254.1.1", "interface": 1}, '
             '{"version": "6", "address": "fd00:22::5/128", "gateway": "fe80::1", "interface": 1}], '
             '"routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}], '
             '"dns": {"nameservers": ["10.22.0.1"], "search": ["svc.local"]}}',
    "1.0.0": '{"cniVersion": "1.0.0", '
             '"interfaces": [{"name": "nk0123456789abc"}, {"name": "eth0", "sandbox": "/run/netns/pod1"}], '
             '"ips": [{"address": "10.22.0.5/32", "gateway": "169.254.1.1", "interface": 1}, '
             '{"address": "fd00:22::5/128", "gateway": "fe80::1", "interface": 1}], '
             '"routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}], '
             '"dns": {"nameservers": ["10.22.0.1"], "search": ["svc.local"]}}',
    "1.1.0": '{"cniVersion": "1.1.0", '
             '"interfaces": [{"name": "nk0123456789abc", "mtu": 1400}, {"name": "eth0", "mtu": 1400, "sandbox": "/run/netns/pod1"}], '
             '"ips": [{"address": "10.22.0.5/32", "gateway": "169.254.1.1", "interface": 1}, '
             '{"address": "fd00:22::5/128", "gateway": "fe80::1", "interface": 1}], '
             '"routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1", "priority": 100}], '
             '"dns": {"nameservers": ["10.22.0.1"], "search": ["svc.local"]}}',
}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_encoding_per_version(version):
    assert json.dumps(result.encode(RESULT, version)) == EXPECTED[version]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_results_read_back_in_every_version(version):
    doc = json.loads(EXPECTED[version])
    back = result.parse(doc, "prevResult", code=7)
    assert result.encode(back, version) == doc
    assert all("version" not in ip for ip in back["ips"])


def test_ipam_result_and_errors_in_results():
    # host-local's shape: no interfaces, no interface index, the range's prefix
    r = result.parse({"cniVersion": "1.0.0", "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}, "ipam", code=999)
    assert r["ips"] == [{"address": "10.22.0.5/16", "gateway": "10.22.0.1"}] and r["routes"] == [{"dst": "0.0.0.0/0"}]
    assert config.host_prefix_addresses(r["ips"]) == ["10.22.0.5/32"]
    assert config.host_prefix_addresses([{"address": "fd00::5/64"}]) == ["fd00::5/128"]
    for bad in ({"ips": [{"address": "10.0.0.1/24", "gateway": "fe80::1"}]},
                {"ips": [{"address": "10.0.0.1/24", "interface": 2}], "interfaces": [{"name": "a"}]},
                {"ips": [{"address": "10.0.0.1/24", "interface": -1}]},
                {"routes": [{"dst": "default"}]},
                {"interfaces": [{"mac": "x"}]},
                {"dns": {"nameservers": "10.0.0.1"}}):
        assert code_of(result.parse, bad, "prevResult", code=7).code == 7, bad


def _inv(doc, **e):
    environ = env(**e)
    return Invocation(config.CniEnv.from_environ(environ), parse(doc), environ, json.dumps(doc).encode())


def test_add_result_with_and_without_a_previous_plugin():
    leased = result.parse({"ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1"}], "dns": {"nameservers": ["10.22.0.1"]}}, "ipam", code=999)
    spec = {"id": "e", "ifname": "eth0", "host_ifname": "nkaaaaaaaaaaaaa", "addresses": ["10.22.0.5/32"]}
    r = add_result(_inv(conf()), spec, leased, None, None)
    assert result.encode(r, "1.0.0") == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "nkaaaaaaaaaaaaa"}, {"name": "eth0", "sandbox": NETNS}],
        "ips": [{"address": "10.22.0.5/32", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {"nameservers": ["10.22.0.1"]},
    }
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "lo", "sandbox": NETNS}],
            "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}], "dns": {"domain": "prev"}}
    r = add_result(_inv(conf(cniVersion="0.4.0", prevResult=prev, dns={"search": ["a"]})), spec, leased, "0a:00:00:00:00:01", None)
    doc = result.encode(r, "0.4.0")
    assert [i["name"] for i in doc["interfaces"]] == ["lo", "nkaaaaaaaaaaaaa", "eth0"]
    assert doc["interfaces"][2]["mac"] == "0a:00:00:00:00:01"
    assert doc["ips"] == [{"version": "4", "address": "127.0.0.1/8", "interface": 0},
                          {"version": "4", "address": "10.22.0.5/32", "gateway": "169.254.1.1", "interface": 2}]
    assert doc["dns"] == {"search": ["a"]}  # the configuration's DNS wins over IPAM's and prevResult's


# ----------------------------------------------------------------------------------------------
# the agent's wire format and error mapping


def _one_shot_server(path, answer: bytes, seen: list):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as f:
            seen.append(f.readline())
            conn.sendall(answer)
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_requests_are_what_the_agent_parses(tmp_path):
    # A stand-in socket records the line; the agent's own parser must accept it as sent.  The
    # host tests talk to a real agent.
    seen: list[bytes] = []
    path = str(tmp_path / "s")
    t = _one_shot_server(path, b'{"v": 1, "id": 1, "ok": false, "error": {"type": "EndpointNotFound", "code": 5, "message": "no endpoint x"}}\n', seen)
    spec = {"id": "ctr-0123456789abcdef", "netns": NETNS, "addresses": ["10.22.0.5/32"], "ifname": "eth0", "host_ifname": "nk0123456789abc",
            "mode": "l3", "device": "auto", "attach": "auto", "mtu": 1400, "options": {"cni": {"network": "n"}}}
    with Agent(path) as a:
        with pytest.raises(AgentFailure) as ei:
            a.call("endpoint.add", spec=spec)
    t.join(5)
    req = protocol.parse_request(seen[0])
    assert req.method == "endpoint.add" and req.params["spec"].id == spec["id"] and req.params["spec"].mtu == 1400
    assert ei.value.type == "EndpointNotFound" and ei.value.message == "no endpoint x"


def test_unreachable_agent_is_try_again_later(tmp_path):
    e = code_of(Agent, str(tmp_path / "none.sock"))
    assert isinstance(e, AgentUnavailable) and e.code == 11
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))  # bound, never listening: a dead agent's socket
    try:
        assert code_of(Agent, str(tmp_path / "stale.sock")).code == 11
    finally:
        stale.close()


@pytest.mark.parametrize("typ,code", [("InvalidSpec", 7), ("ProtocolError", 7), ("NotSupported", 7), ("AddressInUse", 7),
                                      ("Refused", 4), ("NetnsNotFound", 4), ("EndpointExists", 999), ("KernelError", 999),
                                      ("VerifierError", 999), ("SomethingNew", 999)])
def test_agent_errors_become_cni_codes(typ, code):
    e = cni_error(AgentFailure({"type": typ, "message": "boom"}), "add endpoint x")
    assert e.code == code and typ in e.msg and "add endpoint x: boom" in e.details


# ----------------------------------------------------------------------------------------------
# the executable


def run(environ, stdin: bytes | str, cwd=None):
    data = stdin.encode() if isinstance(stdin, str) else stdin
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    p = subprocess.run([str(EXE)], input=data, env={**base, **environ}, capture_output=True, timeout=60, cwd=cwd)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_version_command():
    rc, out, _ = run({"CNI_COMMAND": "VERSION"}, '{"cniVersion": "1.0.0"}')
    assert rc == 0 and json.loads(out) == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    rc, out, _ = run({"CNI_COMMAND": "VERSION"}, "")
    assert rc == 0 and json.loads(out)["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("environ,stdin,code,version", [
    ({}, json.dumps(conf()), 4, "1.0.0"),
    (env(), "{oops", 6, "1.1.0"),
    (env(), json.dumps(conf(cniVersion="0.2.0")), 1, "1.1.0"),
    (env(CNI_IFNAME="a-very-long-ifname"), json.dumps(conf(cniVersion="0.4.0")), 4, "0.4.0"),
    (env(), json.dumps(conf(mtu=10)), 7, "1.0.0"),
    (env(), json.dumps(conf(frob=1)), 2, "1.0.0"),
])
def test_errors_are_cni_error_objects_on_stdout(environ, stdin, code, version):
    rc, out, _ = run(environ, stdin)
    assert rc == 1
    doc = json.loads(out)
    assert set(doc) == {"cniVersion", "code", "msg", "details"}
    assert doc["code"] == code and doc["cniVersion"] == version and doc["msg"] and doc["details"]


def test_no_agent_means_try_again_and_ipam_is_never_asked(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "ipam-ran"
    fake = bindir / "host-local"  # records that it ran; the real one runs in the host tests
    fake.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{\"ips\": [{{\"address\": \"10.0.0.2/24\"}}]}}'\n")
    fake.chmod(0o755)
    pod = "/proc/self/ns/net"  # exists: the plugin checks CNI_NETNS before it asks anyone
    prev = {"interfaces": [{"name": "eth0", "sandbox": pod}], "ips": [{"address": "10.0.0.2/32", "interface": 0}]}
    doc = conf(agentSocket=str(tmp_path / "agent.sock"), prevResult=prev)
    for cmd in ("ADD", "DEL", "CHECK"):
        rc, out, _ = run(env(cmd, CNI_PATH=str(bindir), CNI_NETNS=pod), json.dumps(doc))
        assert rc == 1 and json.loads(out)["code"] == 11, out
    assert not marker.exists()
    rc, out, _ = run({"CNI_COMMAND": "STATUS", "CNI_PATH": str(bindir)}, json.dumps(dict(doc, cniVersion="1.1.0")))
    assert rc == 1 and json.loads(out)["code"] == 50


def test_the_plugin_imports_no_engine_cffi_or_pyroute2():
    probe = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import nkframe\n"
        "pkg = set(sys.modules)\n"
        "import nkframe.cni.main, nkframe.cni.commands\n"
        "print(json.dumps({'all': sorted(sys.modules), 'ours': sorted(set(sys.modules) - pkg)}))\n"
    )
    mods = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    heavy = ("pyroute2", "cffi", "_cffi_backend", "nkframe.engine", "nkframe.bpf", "nkframe._bpf", "nkframe.agent.client",
             "nkframe.agent.protocol", "nkframe.specstore", "subprocess")
    assert not [m for m in mods["all"] if m.split(".")[0] in heavy or m in heavy or any(m.startswith(h + ".") for h in heavy)]
    # Beyond what `import nkframe` itself loads (pluggy, attrs: see docs/cni.md), the plugin adds
    # no third-party module.
    assert not [m for m in mods["ours"] if not m.startswith("nkframe") and m.split(".")[0] in ("pluggy", "attr", "attrs", "click", "rich", "yaml")]


def test_an_ipam_failure_on_add_gets_a_del_and_its_own_code(tmp_path):
    # An IPAM plugin failing on demand (host-local only does when its range is exhausted, see the
    # host tests) and a stand-in agent socket that answers the one request the plugin sends
    # before IPAM: "no such endpoint".
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    fake = bindir / "flaky-ipam"
    fake.write_text(f"""#!/bin/sh
echo "$CNI_COMMAND" >> {calls}
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion": "1.0.0", "code": 11, "msg": "lease server busy", "details": "try later"}}'; exit 1
fi
""")
    fake.chmod(0o755)
    seen: list[bytes] = []
    sock = str(tmp_path / "agent.sock")
    t = _one_shot_server(sock, b'{"v": 1, "id": 1, "ok": false, "error": {"type": "EndpointNotFound", "code": 5, "message": "none"}}\n', seen)
    doc = conf(agentSocket=sock, ipam={"type": "flaky-ipam"})
    rc, out, _ = run(env(CNI_PATH=str(bindir), CNI_NETNS="/proc/self/ns/net"), json.dumps(doc))
    t.join(5)
    err = json.loads(out)
    assert rc == 1 and err["code"] == 11 and "flaky-ipam" in err["msg"] and "lease server busy" in err["msg"], err
    assert calls.read_text().split() == ["ADD", "DEL"]
    assert protocol.parse_request(seen[0]).method == "endpoint.get"


def test_ipam_plugin_lookup(tmp_path):
    sock = str(tmp_path / "agent.sock")
    for path, code in (("", 4), (str(tmp_path), 7)):
        seen: list[bytes] = []
        t = _one_shot_server(sock, b'{"v": 1, "id": 1, "ok": false, "error": {"type": "EndpointNotFound", "code": 5, "message": "none"}}\n', seen)
        rc, out, _ = run(env(CNI_PATH=path, CNI_NETNS="/proc/self/ns/net"), json.dumps(conf(agentSocket=sock)))
        t.join(5)
        os.unlink(sock)
        assert rc == 1 and json.loads(out)["code"] == code, out
