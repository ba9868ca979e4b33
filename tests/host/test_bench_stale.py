"""The bench harness after a SIGKILL: what its Scope made carries its pid, and the next run's
``remove_stale`` takes it down -- the namespace, a process left inside it, the private bpffs
mount and the temporary directories -- while a live run's things stay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nkframe import netns, pins

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from nkbench.topo import Scope, remove_stale  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.environ.get("NKFRAME_VM") == "1", reason="the bench harness belongs to the host tier")]

CHILD = f"""
import os, signal, subprocess, sys
sys.path.insert(0, {str(BENCH)!r})
from nkbench.topo import Scope, in_netns
s = Scope()
ns = s.netns("node")
bpffs = s.bpffs()
tmp = s.tmpdir("nkbench-ipam-")
p = s.popen(in_netns(ns, "sleep", "300"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(ns, bpffs, tmp, p.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no Scope.close(): what a killed run leaves
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def test_a_killed_runs_leftovers_are_removed_and_a_live_runs_kept():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=120)
    assert child.returncode == -9, err[-2000:]
    ns, bpffs, tmp, sleeper = out.split()
    sleeper = int(sleeper)
    live = Scope()
    try:
        assert ns.startswith(f"nkb-{child.pid}-") and f"-{child.pid}-" in os.path.basename(bpffs) and f"-{child.pid}-" in os.path.basename(tmp)
        assert netns.exists(ns) and pins.is_bpffs(bpffs) and os.path.isdir(tmp) and _alive(sleeper)
        mine = (live.netns("node"), live.bpffs(), live.tmpdir("nkbench-ipam-"))

        removed = remove_stale()

        assert f"netns {ns}" in removed and f"mount {bpffs}" in removed and f"dir {tmp}" in removed, removed
        assert not os.path.lexists(netns.netns_path(ns)) and not os.path.exists(bpffs) and not os.path.exists(tmp)
        deadline = time.monotonic() + 5
        while _alive(sleeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(sleeper), "the process left inside the namespace still runs"
        assert netns.exists(mine[0]) and pins.is_bpffs(mine[1]) and os.path.isdir(mine[2]), "a live run's things were removed"
        assert not any(f"-{os.getpid()}-" in r for r in removed)
    finally:
        live.close()
        # Whatever the test left, by hand.
        if _alive(sleeper):
            os.kill(sleeper, 9)
        netns.delete(ns)
        if pins.is_bpffs(bpffs):
            pins.umount(bpffs)
        for d in (bpffs, tmp):
            shutil.rmtree(d, ignore_errors=True)
