"""What the guest tests share (no tests here): the node agent as a child process (start it,
SIGKILL it, start it again, stop it), ``nk`` (the ``nkframe`` command line against it), their
marks, and ``vm_guest`` from tools/ (the guest kernel, initramfs and QEMU argv)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))
import vm_guest  # noqa: E402, F401  (tools/vm_guest.py, re-exported for the guest tests)

PLUGINS = "l3,policy,vm"

#: The guest tests' marks: root, and not in the VM tiers.
GUEST_MARKS = [pytest.mark.root,
               pytest.mark.skipif(os.environ.get("NKFRAME_VM") == "1",
                                  reason="boots a guest under TCG, which nested in a VM tier "
                                         "(no KVM) printed nothing in 240 s (vm-next, 2026-12-07); "
                                         "the host tier runs it")]


def nk_env(node, root: str, sock: str, plugins: str = PLUGINS) -> dict:
    """The environment that points ``nkframe`` at this node, bpffs root and agent socket."""
    return dict(os.environ, NKFRAME_PLUGINS=plugins, NKFRAME_NODE_NETNS=node.netns,
                NKFRAME_BPFFS_ROOT=root, NKFRAME_AGENT_SOCKET=sock)


def nk(node, root: str, sock: str, *args: str, check: bool = True,
       timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", *args], capture_output=True,
                       text=True, env=nk_env(node, root, sock), timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"nkframe {' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return r


class NodeAgent:
    """``nkframe agent run`` with the plugins of :data:`PLUGINS` and the node's uplink."""

    def __init__(self, node, root: str, sock: str, log: Path, plugins: str = PLUGINS):
        self.node, self.root, self.sock, self.log, self.plugins = node, root, sock, log, plugins
        self.proc: subprocess.Popen | None = None

    def start(self) -> NodeAgent:
        """Start it and wait until it answers (60 s)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nkframe.cli", "--netns", self.node.netns, "--bpffs-root",
             self.root, "agent", "run", "--socket", self.sock,
             *(a for p in self.plugins.split(",") for a in ("--plugin", p)),
             "--uplink", self.node.uplink],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "a"),
            env=dict(os.environ, NKFRAME_PLUGINS=self.plugins), start_new_session=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            if os.path.exists(self.sock) and nk(self.node, self.root, self.sock, "endpoint", "ls",
                                                check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise AssertionError(f"the agent did not answer: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def check_guest_traffic(node, qemu: subprocess.Popen, vm4: str, echo_port: int, t0: float) -> None:
    """The guest at ``vm4`` answers pings and UDP echoes on ``echo_port`` from the outside netns.

    The first packets of each kind are slow under TCG (the guest's code paths are translated on
    first use, more so while the machine is busy): wait until the guest answers at all, then
    judge with generous timeouts."""
    end = time.monotonic() + 90
    while node.run(node.outside, "ping", "-c", "1", "-W", "2", vm4, check=False,
                   timeout=30).returncode != 0:
        assert time.monotonic() < end, "the guest never answered a ping"
        assert qemu.poll() is None, qemu.communicate()
    print(f"guest answers after {time.monotonic() - t0:.1f} s")
    # ping through the uplink, the node, the pod side and QEMU's socket
    r = node.run(node.outside, "ping", "-c", "5", "-i", "0.3", "-W", "5", vm4, check=False,
                 timeout=60)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    # UDP echo (the guest's echo server, not the pod's stack: it has none)
    payloads = [f"echo {i}".encode() for i in range(5)]
    assert vm_guest.udp_echo(node.outside, vm4, echo_port, payloads, timeout=10) == payloads
