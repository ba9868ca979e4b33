"""`nkframe probe` on the real kernel: every feature found by trying, every "no" explained."""

import json
import os
import platform
import subprocess
import sys

import pytest

from nkframe import probe

pytestmark = pytest.mark.root


def _probe_json():
    out = subprocess.run([sys.executable, "-m", "nkframe.cli", "probe", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_probe_json_shape_and_reasons():
    doc = _probe_json()
    assert doc["kernel"] == platform.release()
    assert doc["libbpf"].count(".") >= 1
    assert set(probe.FEATURES) <= set(doc["features"])
    for name, f in doc["features"].items():
        assert isinstance(f["supported"], bool)
        assert f["reason"], f"{name} has no reason"
    left = [n for n in os.listdir("/run/netns") if n.startswith("nkprobe-")] if os.path.isdir("/run/netns") else []
    assert left == [], "the probe's scratch namespaces are gone afterwards"


def test_probe_answers_match_the_kernel():
    """Cross-check each answer against an independent observation of this kernel."""
    f = probe.features()
    assert f.supported("tc")
    assert f.supported("btf") == os.path.exists("/sys/kernel/btf/vmlinux")
    release = tuple(int(x) for x in platform.release().split(".")[:2])
    assert f.supported("tcx") == (release >= (6, 6)), f["tcx"].reason
    # netkit: the kernel config (when readable) says whether the device type exists.
    if not f.supported("netkit"):
        assert "CONFIG_NETKIT" in f["netkit"].reason
        assert not f.supported("netkit_scrub") and "no netkit" in f["netkit_scrub"].reason
    elif os.environ.get("NKFRAME_REQUIRE_NETKIT"):
        assert f.supported("netkit")
    if not f.supported("queue_lease"):
        # Either the netdev family lacks queue-create (before 7.1) or there is no family (< 6.3).
        assert "7.1" in f["queue_lease"].reason or "6.3" in f["queue_lease"].reason


def test_require_flag_exit_code():
    f = probe.features()
    missing = next((n for n in probe.FEATURES if not f.supported(n)), None)
    if missing is None:
        pytest.skip("this kernel supports every feature")
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", "probe", "--require", missing], capture_output=True, text=True)
    assert r.returncode == 1
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", "probe", "--require", "no_such_feature"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown feature" in r.stderr


def test_uplink_lease_source_answers_with_a_reason(node):
    """--uplink on any kernel: a "no" names why (no leasing before 7.1, a veth driver, a missing
    device), and the node namespace is left as it was.  (tests/host/test_vm_endpoint.py checks
    the "yes" against netdevsim on 7.x.)"""
    from nkframe.netlink import links

    before = sorted(l.name for l in links.list_links(netns=node.netns))
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns, "probe", "--json",
                        "--uplink", node.uplink, "--uplink", "nope0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    src = json.loads(r.stdout)["lease_sources"]
    assert src["nope0"] == {"supported": False, "reason": f"no device nope0 in the node namespace ({node.netns})"}
    up = src[node.uplink]
    assert up["supported"] is False
    if probe.features().supported("queue_lease"):
        assert "veth" in up["reason"], up
    else:
        assert "Linux 7.1" in up["reason"], up
    assert sorted(l.name for l in links.list_links(netns=node.netns)) == before
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", "probe", "--uplink", "x" * 16], capture_output=True, text=True)
    assert r.returncode == 2 and "at most 15" in r.stderr
