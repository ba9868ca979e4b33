"""contrib/systemd/nkframe-agent.service: its ExecStartPre, ExecStart and ExecReload lines run as
systemd would run them (no systemd here: the lines themselves, with the unit's environment),
against a test node: the agent starts, serves, reloads (upgrade) and stops on SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "nkframe-agent.service"


def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _argv(line: str, env: dict[str, str]) -> list[str]:
    """systemd's command line: $VAR splits into words; the nkframe script is the venv's here."""
    words = []
    for w in shlex.split(line):
        if w.startswith("$") and w[1:] in env:
            words += env[w[1:]].split()
        else:
            words.append(w)
    if words[0].endswith("/nkframe"):
        words[0] = os.path.join(os.path.dirname(sys.executable), "nkframe")
    return words


def test_the_unit_names_what_the_docs_say():
    u = _unit()
    assert u["Restart"] == ["on-failure"] and u["RuntimeDirectoryMode"] == ["0700"]
    assert any("CAP_BPF" in c and "CAP_NET_ADMIN" in c and "CAP_SYS_ADMIN" in c for c in u["CapabilityBoundingSet"])
    assert u["ExecReload"][0].endswith("agent upgrade")
    assert "mount -t bpf" in u["ExecStartPre"][0]


def test_the_units_command_lines_start_reload_and_stop_an_agent(node, bpffs_root, tmp_path):
    u = _unit()
    env = dict(os.environ)
    for assignment in u["Environment"]:
        k, _, v = assignment.partition("=")
        env[k] = v
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)  # what RuntimeDirectory= makes
    # The node's settings, as /etc/default/nkframe-agent would hold them (and a test node).
    env.update(NKFRAME_BPFFS_ROOT=bpffs_root, NKFRAME_AGENT_SOCKET=str(rundir / "agent.sock"),
               NKFRAME_NODE_NETNS=node.netns, NKFRAME_AGENT_ARGS=f"--uplink {node.uplink}")
    pre = subprocess.run(_argv(u["ExecStartPre"][0], env), env=env, capture_output=True, text=True, timeout=60)
    assert pre.returncode == 0, pre.stderr
    agent = subprocess.Popen(_argv(u["ExecStart"][0], env), env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (rundir / "agent.sock").exists():
            assert agent.poll() is None, agent.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status = subprocess.run([_argv("/usr/local/bin/nkframe", env)[0], "agent", "status", "--json"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        reload = subprocess.run(_argv(u["ExecReload"][0], env), env=env, capture_output=True, text=True, timeout=120)
        assert reload.returncode == 0, reload.stderr
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
