"""What only ``nkframe-cni-shim`` does (test_cni_runtime.py runs every command through both
executables): the real binary exec'd as a runtime does, against a real agent on a node namespace
with a private bpffs, for what happens between the shim and the agent: bytes passed exactly,
nothing of the caller's environment beyond CNI_*, errors the shim writes itself (no agent,
oversized stdin) and the agent's errors for a bad configuration."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requires
from test_cni_runtime import HOST_LOCAL, SHIM, Harness

from nkframe import netns
from nkframe.netlink import links

pytestmark = pytest.mark.root


@pytest.fixture
def shim(node, bpffs_root, tmp_path):
    requires.tool(HOST_LOCAL, "containernetworking-plugins")
    if not os.access(SHIM, os.X_OK):
        pytest.fail(f"{SHIM} is missing: make setup builds it")
    d = tmp_path / "cni-bin"
    d.mkdir()
    (d / "host-local").symlink_to(HOST_LOCAL)
    (d / "nkframe").symlink_to(SHIM)
    # An IPAM plugin that records the environment it was given, then is host-local.
    (d / "envdump").write_text(f'#!/bin/sh\nenv > "{tmp_path}/ipam-env"\nexec {HOST_LOCAL}\n')
    (d / "envdump").chmod(0o755)
    h = Harness(node, bpffs_root, tmp_path, str(d))
    try:
        yield h
    finally:
        h.stop()
        for eid in h.engine.layout.endpoint_ids():
            try:
                h.engine.remove_endpoint(eid)
            except Exception:  # noqa: BLE001
                pass


def raw(h: Harness, environ: dict, data: bytes) -> tuple[int, dict]:
    """Exec the shim with exactly ``environ`` (bytes allowed) and ``data`` on stdin."""
    p = subprocess.run([os.path.join(h.cni_path, "nkframe")], input=data, env=environ, capture_output=True, timeout=120)
    out = p.stdout.decode().strip()
    return p.returncode, (json.loads(out) if out else {})


def base_env(h: Harness, command: str = "ADD", **kw) -> dict:
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr-a", "CNI_IFNAME": "eth0", "CNI_PATH": h.cni_path,
         "NKFRAME_AGENT_SOCKET": h.socket}
    e.update(kw)
    return e


def test_version_is_answered_through_the_agent(shim):
    rc, doc = raw(shim, base_env(shim, "VERSION"), b'{"cniVersion": "0.4.0"}')
    assert (rc, doc) == (0, {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})


def test_malformed_stdin_is_the_agents_cni_error(shim, node):
    pod = node.pod()
    env = base_env(shim, CNI_NETNS=netns.netns_path(pod))
    rc, err = raw(shim, env, b'{"cniVersion": "1.0.0", "name": ')
    assert rc == 1 and err["code"] == 6 and "not JSON" in err["details"], err
    rc, err = raw(shim, env, b'{"cniVersion": "1.0.0", "name": "n\xff"}')  # not UTF-8
    assert rc == 1 and err["code"] == 6, err
    rc, err = raw(shim, env, b"[1, 2]")
    assert rc == 1 and err["code"] == 7, err
    rc, err = raw(shim, env, b'{"cniVersion": "0.3.1", "name": "n", "type": "nkframe"}')
    assert rc == 1 and err["code"] == 1 and err["cniVersion"] == "1.1.0", err
    assert shim.endpoint_ids() == [] and shim.leases() == {}


def test_undecodable_cni_ifname_is_error_4(shim, node):
    pod = node.pod()
    env = {k.encode(): v.encode() for k, v in base_env(shim, CNI_NETNS=netns.netns_path(pod)).items()}
    env[b"CNI_IFNAME"] = b"eth\xff"
    rc, err = raw(shim, env, json.dumps(shim.conf()).encode())
    assert rc == 1 and err["code"] == 4 and "CNI_IFNAME" in err["msg"], err
    # valid UTF-8 outside ASCII arrives as text (and is then refused as a CNI_CONTAINERID)
    env[b"CNI_IFNAME"] = b"eth0"
    env[b"CNI_CONTAINERID"] = "ctr-é".encode()
    rc, err = raw(shim, env, json.dumps(shim.conf()).encode())
    assert rc == 1 and err["code"] == 4 and "'ctr-é'" in err["details"], err
    assert shim.endpoint_ids() == [] and shim.leases() == {}


def test_the_ipam_plugin_gets_only_cni_variables(shim, node):
    pod = node.pod()
    conf = shim.conf(ipam={"type": "envdump", "subnet": "10.77.0.0/24", "dataDir": str(shim.ipam_dir)})
    env = base_env(shim, CNI_NETNS=netns.netns_path(pod), CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-0",
                   LD_LIBRARY_PATH="/nowhere", NKFRAME_SECRET="x", PATH="/attacker/bin")
    rc, doc = raw(shim, env, json.dumps(conf).encode())
    assert rc == 0, doc
    seen = dict(line.split("=", 1) for line in (shim.ipam_dir.parent / "ipam-env").read_text().splitlines() if "=" in line)
    ours = {k: v for k, v in seen.items() if k not in ("PWD", "SHLVL", "_")}  # the shell's own
    assert ours == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr-a", "CNI_IFNAME": "eth0", "CNI_PATH": shim.cni_path,
                    "CNI_NETNS": netns.netns_path(pod), "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-0",
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert links.link_exists("eth0", netns=pod)
    rc, _ = raw(shim, base_env(shim, "DEL", CNI_NETNS=netns.netns_path(pod)), json.dumps(conf).encode())
    assert rc == 0 and shim.endpoint_ids() == [] and shim.leases() == {}


def test_the_configurations_agent_socket_is_the_one_reached(shim, node, tmp_path):
    """agentSocket in the configuration wins over NKFRAME_AGENT_SOCKET (as in nkframe-cni):
    podman runs DEL from a cleanup process without the runtime's environment, so only the
    configuration reaches every command."""
    pod = node.pod()
    conf = shim.conf(agentSocket=str(tmp_path / "other.sock"))
    rc, err = raw(shim, base_env(shim, CNI_NETNS=netns.netns_path(pod)), json.dumps(conf).encode())
    assert rc == 1 and err["code"] == 11 and "other.sock" in err["details"], err
    assert shim.endpoint_ids() == [] and shim.leases() == {}
    # the agent's own socket named in the configuration, with no environment variable at all
    env = {k: v for k, v in base_env(shim, CNI_NETNS=netns.netns_path(pod)).items() if k != "NKFRAME_AGENT_SOCKET"}
    rc, doc = raw(shim, env, json.dumps(shim.conf(agentSocket=shim.socket)).encode())
    assert rc == 0, doc
    rc, _ = raw(shim, {**env, "CNI_COMMAND": "DEL"}, json.dumps(shim.conf(agentSocket=shim.socket)).encode())
    assert rc == 0 and shim.endpoint_ids() == [] and shim.leases() == {}
    rc, err = raw(shim, base_env(shim, CNI_NETNS=netns.netns_path(pod)), json.dumps(shim.conf(agentSocket="relative.sock")).encode())
    assert rc == 1 and err["code"] == 7 and "absolute path" in err["details"], err
    # without agentSocket the shim's socket is the one meant
    conf.pop("agentSocket")
    rc, doc = raw(shim, base_env(shim, CNI_NETNS=netns.netns_path(pod)), json.dumps(conf).encode())
    assert rc == 0, doc
    assert raw(shim, base_env(shim, "DEL", CNI_NETNS=netns.netns_path(pod)), json.dumps(conf).encode()) == (0, {})


def test_no_agent_is_try_again_later(shim, node, tmp_path):
    pod = node.pod()
    conf = json.dumps(shim.conf("0.4.0", prevResult={"cniVersion": "1.1.0"})).encode()
    shim.stop()
    for cmd in ("ADD", "DEL", "CHECK"):
        rc, err = raw(shim, base_env(shim, cmd, CNI_NETNS=netns.netns_path(pod)), conf)
        # the error speaks the configuration's version, not prevResult's
        assert rc == 1 and err["code"] == 11 and err["cniVersion"] == "0.4.0" and shim.socket in err["details"], err
    # VERSION needs no agent: answered by the shim itself, in the version asked for
    rc, doc = raw(shim, base_env(shim, "VERSION"), conf)
    assert (rc, doc) == (0, {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
    rc, err = raw(shim, base_env(shim, "STATUS"), conf)
    assert rc == 1 and err["code"] == 50, err
    # a socket file no agent listens on (a killed agent's)
    import socket as _socket

    stale = str(tmp_path / "stale.sock")
    s = _socket.socket(_socket.AF_UNIX)
    s.bind(stale)
    s.close()
    stale_conf = json.dumps(shim.conf("0.4.0", agentSocket=stale)).encode()
    rc, err = raw(shim, base_env(shim, NKFRAME_AGENT_SOCKET=stale, CNI_NETNS=netns.netns_path(pod)), stale_conf)
    assert rc == 1 and err["code"] == 11 and "stopped agent" in err["details"], err
    assert shim.leases() == {} and not links.link_exists("eth0", netns=pod)


def test_oversized_stdin_is_refused_by_the_shim(shim, node):
    pod = node.pod()
    env = base_env(shim, CNI_NETNS=netns.netns_path(pod))
    rc, err = raw(shim, env, b" " * ((1 << 20) + 1))
    assert rc == 1 and err["code"] == 5 and "more than" in err["details"], err
    # within 1 MiB of stdin, but not once escaped for the request line
    rc, err = raw(shim, env, b"\xff" * (200 << 10))
    assert rc == 1 and err["code"] == 5 and "request" in err["details"], err
    assert shim.endpoint_ids() == [] and shim.leases() == {}
