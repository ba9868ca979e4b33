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
