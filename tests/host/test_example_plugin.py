"""The plugin author's guide's example (docs/examples/nkframe-example-portblock) installs as its
own distribution, is found through its entry point, loads, and changes real traffic.

The package is built and installed with pip into a temporary target directory (never into the
project's venv), and used from subprocesses that put that directory on PYTHONPATH: entry points
are found from the installed ``.dist-info``, exactly as for a user's ``pip install``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nkframe import probe, status
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe

pytestmark = pytest.mark.root

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "nkframe-example-portblock"
NODE_IP = "10.96.0.1"
BLOCKED, OPEN = 7101, 7102


def _offline_build_backend() -> bool:
    """Can this interpreter's setuptools build a wheel without fetching anything?  (setuptools
    70.1+ has bdist_wheel built in; older ones need the 'wheel' package.)"""
    probe = "import setuptools, sys; v = tuple(int(x) for x in setuptools.__version__.split('.')[:2])\n" \
            "try:\n import wheel\nexcept ImportError:\n sys.exit(0 if v >= (70, 1) else 1)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install a copy of the example into a private target directory; yield that directory."""
    work = tmp_path_factory.mktemp("example-plugin")
    src = work / "src"
    # A copy: pip builds in the source tree, and the repository must stay clean.
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.o", "__pycache__"))
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    if _offline_build_backend():
        cmd.append("--no-build-isolation")  # fast, and works without a package index (VM tiers)
    res = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"pip install of the example failed:\n{res.stdout}\n{res.stderr}"
    try:
        yield target
    finally:
        shutil.rmtree(work, ignore_errors=True)


_ADD = textwrap.dedent(
    """
    import json, sys
    from nkframe import plugins
    from nkframe.engine import Engine
    from nkframe.errors import NkframeError
    from nkframe.types import EndpointSpec

    args = json.loads(sys.argv[1])
    eng = Engine(args["node"], args["root"])  # plugins from entry points, NKFRAME_PLUGINS allow-list
    out = {"available": plugins.available(), "loaded": plugins.loaded(eng.pm)}
    try:
        ep = eng.add_endpoint(EndpointSpec(id=args["id"], netns=args["pod"], addresses=[args["ip"]], options=args["options"]))
        out["programs"] = [[p.hook, p.name] for p in ep.programs]
    except NkframeError as e:
        out["error"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
    """
)


def _add(installed: Path, node, bpffs_root: str, eid: str, pod: str, ip: str, options: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(installed), NKFRAME_PLUGINS="portblock")
    env.pop("NKFRAME_DISABLE_PLUGIN_AUTOLOAD", None)
    args = {"node": node.netns, "root": bpffs_root, "id": eid, "pod": pod, "ip": f"{ip}/32", "options": options}
    res = subprocess.run([sys.executable, "-c", _ADD, json.dumps(args)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _route(node, pod: str, eid: str, ip: str, bpffs_root: str) -> None:
    ep = Engine(node.netns, bpffs_root, autoload=False).get_endpoint(eid)
    links.add_route(f"{NODE_IP}/32", dev="eth0", netns=pod)
    links.add_host_route(ip, ep.spec.node_ifname, netns=node.netns)


def test_example_plugin_installs_loads_and_blocks_udp(installed, node, bpffs_root):
    assert (installed / "nkframe_example_portblock" / "portblock.o").is_file(), "setup.py built the BPF object into the package"
    assert not (EXAMPLE / "build").exists() and not list(EXAMPLE.glob("*.egg-info")), "the example's source tree stays clean"
    links.add_address("lo", f"{NODE_IP}/32", netns=node.netns)
    eng = Engine(node.netns, bpffs_root, autoload=False)  # this process does not have the plugin at all
    blocked_pod, plain_pod = node.pod("pb"), node.pod("pl")
    try:
        got = _add(installed, node, bpffs_root, "blocked", blocked_pod, "10.96.0.10", {"portblock": {"udp_ports": [BLOCKED]}})
        assert "error" not in got, got
        assert got["available"]["portblock"] == "nkframe_example_portblock"
        assert "portblock" in got["loaded"]
        assert got["programs"] == [["from-pod", "portblock"]]
        _route(node, blocked_pod, "blocked", "10.96.0.10", bpffs_root)

        # An endpoint that does not ask for the plugin gets no program from it.
        got = _add(installed, node, bpffs_root, "plain", plain_pod, "10.96.0.11", {})
        assert got["programs"] == []
        _route(node, plain_pod, "plain", "10.96.0.11", bpffs_root)

        # Traffic: UDP to the blocked port is dropped, only from the endpoint that asked for it;
        # other UDP ports and TCP to the same port pass.
        assert udp_probe(blocked_pod, node.netns, NODE_IP, BLOCKED, count=4) == 0
        assert udp_probe(blocked_pod, node.netns, NODE_IP, OPEN, count=3) == 3
        assert tcp_connect(blocked_pod, node.netns, NODE_IP, BLOCKED)
        assert udp_probe(plain_pod, node.netns, NODE_IP, BLOCKED, count=3) == 3
        # The program counted what it dropped, and nkframe status reads it back generically.
        st = {e.id: e for e in status.gather(eng).endpoints}
        drops = st["blocked"].counters["maps"]
        assert drops["portblock_drops[0]"] == 4
        assert drops["portblock_drops[1]"] >= 4 * (20 + 8)
        assert [p.name for p in st["blocked"].programs] == ["portblock"]
        # The plugin's own counters, through the CLI of a process that finds it by entry point.
        env = dict(os.environ, PYTHONPATH=str(installed), NKFRAME_PLUGINS="portblock", NKFRAME_NO_AGENT="1")
        env.pop("NKFRAME_DISABLE_PLUGIN_AUTOLOAD", None)
        res = subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "--bpffs-root", bpffs_root,
                              "status", "--json", "blocked"], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stderr
        (doc,) = json.loads(res.stdout)["endpoints"]
        assert doc["counters"]["portblock"] == {"dropped_packets": 4, "dropped_bytes": drops["portblock_drops[1]"]}
        # On a netkit kernel this ran on a netkit pair (L3 mode): the program's fixed Ethernet
        # header offset holds there too.
        assert st["blocked"].device_kind == ("netkit" if probe.features().supported("netkit") else "veth")
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)


def test_example_plugin_refuses_a_bad_option_before_building_anything(installed, node, bpffs_root):
    pod = node.pod("pbx")
    got = _add(installed, node, bpffs_root, "bad", pod, "10.96.0.12", {"portblock": {"udp_ports": [0]}})
    assert got["error"][0] == "InvalidSpec"
    assert "not a port number" in got["error"][1]
    assert not os.path.exists(f"{bpffs_root}/endpoints/bad")
    assert [l.name for l in links.list_links(netns=pod)] == ["lo"]


def test_the_cli_turns_an_option_gated_plugin_on_with_option(installed, node, bpffs_root):
    """Issue 12: `nkframe endpoint add` had no way to pass spec.options, so the documented
    example plugin could not be turned on from the CLI.  `--option KEY=JSON` does it."""
    env = dict(os.environ, PYTHONPATH=str(installed), NKFRAME_PLUGINS="portblock", NKFRAME_NO_AGENT="1")
    env.pop("NKFRAME_DISABLE_PLUGIN_AUTOLOAD", None)
    base = [sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "--bpffs-root", bpffs_root]
    pod = node.pod("opt")
    res = subprocess.run([*base, "endpoint", "add", "opt", "--pod-netns", pod, "--address", "10.96.1.10/32",
                          "--option", f'portblock={{"udp_ports": [{BLOCKED}]}}', "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    try:
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert [p["name"] for p in doc["programs"]] == ["portblock"]
        bad = subprocess.run([*base, "endpoint", "add", "opt2", "--pod-netns", pod, "--option", "portblock={nope"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert bad.returncode == 2 and bad.stderr.startswith("nkframe: error: --option portblock: the value is not JSON"), bad.stderr
    finally:
        Engine(node.netns, bpffs_root, autoload=False).remove_endpoint("opt")
