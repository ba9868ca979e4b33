"""nkframe.cni.hostlocal against Debian's host-local itself: the same invocations on two data
directories, one served in process and one by the exec'd plugin, must leave the same files and
give the same results and errors; leases made by either are released by the other; and every
configuration the module does not read exactly as host-local is left to the plugin."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from nkframe.cni import hostlocal
from nkframe.cni.errors import CniError
from nkframe.cni.ipam import Ipam

HOST_LOCAL = "/usr/lib/cni/host-local"


def _need():
    if not os.access(HOST_LOCAL, os.X_OK):
        pytest.skip("host-local is not installed (apt-get install containernetworking-plugins)")


def _env(cid: str, ifname: str = "eth0", **kw) -> dict:
    e = {"CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/proc/self/ns/net", "CNI_PATH": os.path.dirname(HOST_LOCAL)}
    e.update(kw)
    return e


def _exec(command: str, conf: dict, env: dict):
    p = subprocess.run([HOST_LOCAL], input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND=command),
                       capture_output=True, timeout=60)
    doc = json.loads(p.stdout) if p.stdout.strip() else None
    if p.returncode:
        return "error", doc["msg"]
    return "ok", doc


def _native(command: str, conf: dict, env: dict):
    h = hostlocal.load(conf, env)
    assert h is not None, conf
    try:
        return "ok", h.run(command)
    except CniError as e:
        assert e.code == 999 and e.msg.startswith("IPAM plugin host-local: ")
        return "error", e.msg[len("IPAM plugin host-local: "):]


def _state(d) -> dict:
    out = {}
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = (open(p, "rb").read(), oct(os.stat(p).st_mode & 0o777))
    return out


def _conf(data_dir, ipam: dict, name: str = "net1", version: str = "1.0.0") -> dict:
    return {"cniVersion": version, "name": name, "type": "nkframe", "ipam": dict({"type": "host-local", "dataDir": str(data_dir)}, **ipam)}


SCENARIOS = {
    "subnet": {"subnet": "10.30.0.0/24", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.30.0.1"}]},
    # the gateway inside the range is skipped; four addresses, then exhausted; wrap-around
    "small": {"ranges": [[{"subnet": "10.31.0.0/24", "rangeStart": "10.31.0.10", "rangeEnd": "10.31.0.14", "gateway": "10.31.0.12"}]]},
    # two ranges in one set: the walk crosses from one to the next and wraps to the first
    "two-ranges": {"ranges": [[{"subnet": "10.32.0.0/24", "rangeStart": "10.32.0.250", "rangeEnd": "10.32.0.252"},
                               {"subnet": "10.33.0.0/30"}]]},
    # dual stack: one address per set
    "dual": {"ranges": [[{"subnet": "10.34.0.0/24"}], [{"subnet": "fd00:34::/120", "rangeStart": "fd00:34::fe"}]]},
    "legacy+ranges": {"subnet": "10.35.0.0/29", "ranges": [[{"subnet": "fd00:35::/125"}]]},
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_same_files_results_and_errors_as_host_local(tmp_path, name):
    _need()
    a, b = tmp_path / "exec", tmp_path / "native"
    ca, cb = _conf(a, SCENARIOS[name]), _conf(b, SCENARIOS[name])
    steps = [("ADD", f"ctr-{i}") for i in range(7)] + [("DEL", "ctr-2"), ("DEL", "ctr-4"), ("ADD", "ctr-2")]
    steps += [("ADD", "ctr-2"), ("ADD", f"ctr-{9}"), ("DEL", "ctr-0"), ("ADD", "ctr-10"), ("DEL", "ctr-none")]
    steps += [("ADD", "ctr-11", "net1"), ("DEL", "ctr-11", "net1")]
    for step in steps:
        cmd, cid = step[:2]
        env = _env(cid, *step[2:])
        want, got = _exec(cmd, ca, env), _native(cmd, cb, env)
        assert got == want, (step, got, want)
        assert _state(b) == _state(a), step


def test_leases_are_one_pool_with_the_plugin(tmp_path):
    """Leased in process, released by the plugin, and the other way round; the round-robin
    continues across both."""
    _need()
    conf = _conf(tmp_path, {"subnet": "10.36.0.0/24"})
    assert _native("ADD", conf, _env("a"))[1]["ips"][0]["address"] == "10.36.0.2/24"
    assert _exec("ADD", conf, _env("b"))[1]["ips"][0]["address"] == "10.36.0.3/24"
    assert _exec("ADD", conf, _env("a"))[0] == "error"  # duplicate, seen by the plugin
    assert _native("ADD", conf, _env("b"))[0] == "error"  # and by us
    assert _exec("DEL", conf, _env("a")) == ("ok", None)
    assert _native("DEL", conf, _env("b")) == ("ok", None)
    assert _native("ADD", conf, _env("c"))[1]["ips"][0]["address"] == "10.36.0.4/24"
    assert sorted(os.listdir(tmp_path / "net1")) == ["10.36.0.4", "last_reserved_ip.0", "lock"]


def test_files_of_old_host_local_versions_are_released(tmp_path):
    """Files holding the container id alone (host-local before interface names) go on DEL."""
    conf = _conf(tmp_path, {"subnet": "10.37.0.0/24"})
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.37.0.7").write_text("old-ctr\n")
    (d / "10.37.0.8").write_text("other")
    assert _native("ADD", conf, _env("old-ctr"))[0] == "error"  # it holds an address already
    assert _native("DEL", conf, _env("old-ctr")) == ("ok", None)
    assert sorted(os.listdir(d)) == ["10.37.0.8", "lock"]


@pytest.mark.parametrize("ipam,env", [
    ({"subnet": "10.38.0.0/24", "resolvConf": "/etc/resolv.conf"}, {}),
    ({"subnet": "10.38.0.0/24"}, {"CNI_ARGS": "IP=10.38.0.9"}),
    ({"subnet": "10.38.0.0/24"}, {"CNI_ARGS": "K8S_POD_NAME=x"}),  # host-local refuses unknown args
    ({"subnet": "10.38.0.0/24"}, {"CNI_ARGS": "IgnoreUnknown=maybe;K8S_POD_NAME=x"}),
    ({"subnet": "10.38.0.1/24"}, {}),  # host bits set
    ({"subnet": "10.38.0.0/31"}, {}),  # too small
    ({"subnet": "::ffff:10.38.0.0/120"}, {}),  # IPv4-mapped
    ({"subnet": "fe80::/64%eth0"}, {}),
    ({"subnet": "10.38.0.0/24", "rangeStart": "10.39.0.1"}, {}),  # outside the subnet
    ({"subnet": "10.38.0.0/24", "rangeStart": "10.38.0.9", "rangeEnd": "10.38.0.8"}, {}),
    ({"subnet": "10.38.0.0/24", "gateway": "fd00::1"}, {}),
    ({"ranges": [[{"subnet": "10.38.0.0/24"}, {"subnet": "fd00::/64"}]]}, {}),  # mixed families
    ({"ranges": [[{"subnet": "10.38.0.0/24"}], [{"subnet": "10.38.0.0/25"}]]}, {}),  # overlap
    ({"ranges": [[]]}, {}),
    ({}, {}),  # no range at all
    ({"rangeStart": "10.38.0.5", "ranges": [[{"subnet": "10.38.0.0/24"}]]}, {}),
    ({"subnet": "10.38.0.0/24", "Subnet": "10.40.0.0/24"}, {}),  # Go reads keys case-insensitively
    ({"subnet": "10.38.0.0/24", "dataDir": "relative/dir"}, {}),
    ({"subnet": "10.38.0.0/24", "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}]}, {}),
    ({"subnet": "10.38.0.0/24", "routes": [{"dst": "nonsense"}]}, {}),
])
def test_anything_else_is_left_to_the_plugin(tmp_path, ipam, env):
    conf = _conf(tmp_path, ipam)
    if "dataDir" in ipam:
        conf["ipam"]["dataDir"] = ipam["dataDir"]
    assert hostlocal.load(conf, _env("ctr", **env)) is None


@pytest.mark.parametrize("extra", [{"runtimeConfig": {"ips": ["10.38.0.9/24"]}}, {"runtimeConfig": {"ipRanges": [[{"subnet": "10.1.0.0/24"}]]}},
                                   {"args": {"cni": {"ips": ["10.38.0.9"]}}}])
def test_requested_addresses_are_left_to_the_plugin(tmp_path, extra):
    conf = dict(_conf(tmp_path, {"subnet": "10.38.0.0/24"}), **extra)
    assert hostlocal.load(conf, _env("ctr")) is None


def test_kubernetes_args_and_other_keys_stay_in_process(tmp_path):
    conf = dict(_conf(tmp_path, {"subnet": "10.38.0.0/24"}), args={"cni": {"labels": []}}, runtimeConfig={"portMappings": []})
    env = _env("ctr", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=ctr")
    assert hostlocal.load(conf, env) is not None


def test_ipam_runs_host_local_in_process_only_when_the_plugin_is_there(tmp_path):
    """Ipam: ADD and DEL of host-local in process (no process is started), CHECK still exec'd;
    a CNI_PATH without host-local is the same configuration error as before."""
    _need()
    conf = _conf(tmp_path, {"subnet": "10.39.0.0/24"})
    data = json.dumps(conf).encode()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "ran"
    (bindir / "host-local").write_text(f"#!/bin/sh\ntouch {marker}\nexec {HOST_LOCAL}\n")
    (bindir / "host-local").chmod(0o755)
    env = dict(_env("ctr"), CNI_PATH=str(bindir))
    ipam = Ipam("host-local", (str(bindir),), env, conf, data)
    assert ipam.add()["ips"] == [{"address": "10.39.0.2/24", "gateway": "10.39.0.1"}]
    assert not marker.exists()
    ipam.call("CHECK")
    assert marker.exists()
    marker.unlink()
    ipam.call("DEL")
    assert not marker.exists() and sorted(os.listdir(tmp_path / "net1")) == ["last_reserved_ip.0", "lock"]
    with pytest.raises(CniError) as e:
        Ipam("host-local", (str(tmp_path / "empty"),), env, conf, data).add()
    assert e.value.code == 7 and "not found" in e.value.msg
