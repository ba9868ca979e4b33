"""`nkframe demo` end to end: the main job passes and leaves nothing behind."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def _mounts() -> str:
    with open("/proc/self/mounts") as f:
        return f.read()


@pytest.mark.parametrize("attach", ["auto", "tc"])
def test_demo_passes_and_cleans_up(attach):
    before_ns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    r = subprocess.run(
        [sys.executable, "-m", "nkframe.cli", "--attach", attach, "demo", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    mismatches = [c for c in doc.get("checks", []) if c["expected"] != c["observed"]]
    assert doc["passed"] and r.returncode == 0, (mismatches, r.stderr[-2000:])
    assert {c["expected"] for c in doc["checks"]} == {"delivered", "dropped"}, "both outcomes are exercised"
    assert doc["counters"]["pod-b"]["drops"], "the dropped checks moved a drop counter"
    if attach == "tc":
        assert {m for hooks in doc["attach"].values() for m in hooks.values()} == {"tc"}
    left = {n for n in os.listdir("/run/netns") if n.startswith("nkdemo-")} - before_ns
    assert not left, f"namespaces left behind: {left}"
    assert "nkdemo-bpffs" not in _mounts()


def test_demo_across_three_nodes_passes_and_cleans_up():
    """``nkframe demo --nodes 3`` (issue 18): pods on three routed nodes, policy on the last."""
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", "demo", "--nodes", "3", "--json"],
                       capture_output=True, text=True, timeout=600)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    mismatches = [c for c in doc.get("checks", []) if c["expected"] != c["observed"]]
    assert doc["passed"] and r.returncode == 0, (mismatches, r.stderr[-2000:])
    assert len(doc["checks"]) == 12 and {c["expected"] for c in doc["checks"]} == {"delivered", "dropped"}
    assert {c["src"].split("@")[1] for c in doc["checks"]} == {"node1", "node2", "node3"}
    left = [n for n in os.listdir("/run/netns") if n.startswith("nkd-")]
    assert not left, f"namespaces left behind: {left}"
    assert "nkd-bpffs" not in _mounts()
    bad = subprocess.run([sys.executable, "-m", "nkframe.cli", "demo", "--nodes", "9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nkframe: error:" in bad.stderr
