"""Shared pieces of the agent, restart, upgrade, crash, soak and open-window tests (no tests here).

* :class:`Counting` — a test plugin: count.c on both hooks of every endpoint, slots by version,
  so an upgrade to ``version=2`` loads new programs that count into other slots of the same
  pinned map (old counts stay: the map carried over).
* :func:`wire` — kernel routing between pods of one node: a gateway address on the node's
  loopback, a host route per pod, ``default via gw dev eth0 onlink`` in each pod.
* :class:`Flow` — a steady UDP stream with sequence numbers, for counting losses.
* :class:`AgentProcess` — an agent in a child process (this file run as a script), so a test
  can SIGKILL it.

Run as a script it is that child: ``python agent_support.py agent NODE BPFFS SOCKET VERSION``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GW = "10.77.0.1"

import pytest

from nkframe import hookimpl, objects
from nkframe.types import Hook, ProgramSpec


class Counting:
    """count.c on from-pod (slot 2v-2) and to-pod (slot 2v-1); every program hands on (-1).

    ``verdict`` for the from-pod program: -1 continue, 2 drop (a deny-everything policy).
    """

    def __init__(self, version: int = 1, verdict: int = -1, obj: str | None = None):
        self.version = version
        self.verdict = verdict
        # A private copy of count.o (see the count_obj fixture) makes our kernel objects
        # countable apart from other tests' on the same machine.
        self.obj = obj or os.environ.get(OBJ_ENV) or objects.path("count")

    @property
    def slots(self) -> tuple[int, int]:
        return 2 * self.version - 2, 2 * self.version - 1

    @hookimpl
    def nkframe_programs_collect(self, ctx):
        obj = self.obj
        out_slot, in_slot = self.slots
        return [
            ProgramSpec(name="count_out", object=obj, program="count", hook=Hook.FROM_POD, globals={"SLOT": struct.pack("<I", out_slot), "VERDICT": struct.pack("<i", self.verdict)}, maps={"counts": "endpoint"}, plugin="counting"),
            ProgramSpec(name="count_in", object=obj, program="count", hook=Hook.TO_POD, globals={"SLOT": struct.pack("<I", in_slot), "VERDICT": struct.pack("<i", self.verdict)}, maps={"counts": "endpoint"}, plugin="counting"),
        ]


OBJ_ENV = "NKT_COUNT_OBJ"


@pytest.fixture
def count_obj(tmp_path, monkeypatch):
    """A copy of count.o under a unique name for this test (children inherit it through the
    environment); its name tells our BPF objects apart: kobjects.settle(object_name=...)."""
    import shutil
    import uuid

    name = "k" + uuid.uuid4().hex[:6]
    path = tmp_path / f"{name}.o"
    shutil.copyfile(objects.path("count"), path)
    monkeypatch.setenv(OBJ_ENV, str(path))
    return name


def counts(bpffs_root: str, eid: str, slot: int) -> int:
    from nkframe import bpf

    with bpf.Map.from_pin(f"{bpffs_root}/endpoints/{eid}/maps/counts") as m:
        return sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", slot)))


def version_count(bpffs_root: str, eid: str, version: int) -> int:
    """Packets counted by the programs of one Counting version, both hooks together."""
    return sum(counts(bpffs_root, eid, 2 * version - 2 + k) for k in (0, 1))


def wire(node_netns: str, pod_netns: str, spec) -> None:
    """Route between the node and one pod (call after the endpoint is added)."""
    from nkframe.netlink import links

    if not any(a.startswith(GW + "/") for a in _addrs(node_netns)):
        links.add_address("lo", f"{GW}/32", netns=node_netns)
        links.sysctl("net.ipv4.ip_forward", 1, netns=node_netns)
        links.sysctl("net.ipv4.conf.all.rp_filter", 0, netns=node_netns)
    for a in spec.addresses:
        links.add_host_route(str(a.ip), spec.node_ifname, netns=node_netns)
    links.add_route(f"{GW}/32", dev=spec.ifname, netns=pod_netns, replace=True)
    links.add_route("default", via=GW, dev=spec.ifname, onlink=True, netns=pod_netns, replace=True)


def _addrs(ns: str) -> list[str]:
    from nkframe.netlink import links

    return [str(a) for a in links.list_addresses("lo", netns=ns)]


# Parameters for tests that run on every mechanism: "auto" (netkit where the kernel has it, else
# TCX), "tc", and "netkit" forced -- marked, so the vm-netkit tier runs it and the host skips it.
NETKIT = pytest.param("netkit", marks=pytest.mark.netkit, id="netkit")


def need(attach: str) -> None:
    """Skip a forced-netkit case on a kernel without netkit (the VM tier turns that into a failure)."""
    from nkframe import probe

    if attach == "netkit" and not probe.features().supported("netkit"):
        pytest.skip(f"netkit unsupported here: {probe.features()['netkit'].reason}")


def udp_socket_drops(ns: str) -> int:
    """UDP datagrams the kernel dropped in ``ns`` because a receiving socket's buffer was full
    (Udp RcvbufErrors of the namespace's SNMP counters)."""
    from nkframe import netns

    with netns.enter(ns):
        with open("/proc/thread-self/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")])


class Flow:
    """UDP datagrams with sequence numbers from ``src_ns`` to ``dst_ip:port`` (received in
    ``dst_ns``) at ``rate`` per second, until :meth:`stop`.  Losses are sequence gaps.

    A gap is either the datapath's or our own receiver's: a Python thread that falls behind
    (a slow VM under load) lets its socket buffer overflow.  The kernel counts those drops
    (RcvbufErrors), so :meth:`stop` reports both and ``lost_in_path`` is what the datapath lost.
    The sender keeps its rate: after a stall it resumes at pace instead of bursting.
    """

    def __init__(self, src_ns: str, dst_ns: str, dst_ip: str, port: int, *, rate: int = 2000):
        from nkframe import netns

        with netns.enter(dst_ns):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with netns.enter(src_ns):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # SO_RCVBUFFORCE (asm-generic/socket.h 33): beyond net.core.rmem_max, root may
            self.rx.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
        except OSError:
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.rx.bind((dst_ip, port))
        self.dst_ns = dst_ns
        self.drops_before = udp_socket_drops(dst_ns)
        self.dst = (dst_ip, port)
        self.rate = rate
        self.sent = 0
        self.send_errors = 0
        self.stalls = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._rx_stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True), threading.Thread(target=self._recv, daemon=True)]

    def start(self) -> "Flow":
        for t in self._threads:
            t.start()
        return self

    def _send(self) -> None:
        t0 = time.monotonic()
        base = 0
        while not self._stop.is_set():
            due = t0 + (self.sent - base) / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(min(due - now, 0.01))
                continue
            if now - due > 0.02:  # stalled (scheduler, GIL): go on at pace, don't burst
                self.stalls += 1
                t0, base = now, self.sent
            try:
                self.tx.sendto(struct.pack("!Q", self.sent) + b"nkframe-flow", self.dst)
            except OSError:
                self.send_errors += 1
            self.sent += 1

    def _recv(self) -> None:
        while not self._rx_stop.is_set():
            r, _, _ = select.select([self.rx], [], [], 0.05)
            if not r:
                continue
            while True:
                try:
                    data = self.rx.recv(64, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                (seq,) = struct.unpack_from("!Q", data)
                self.seen.add(seq)

    def stop(self, drain: float = 0.5) -> dict:
        self._stop.set()
        self._threads[0].join()
        time.sleep(drain)
        self._rx_stop.set()
        self._threads[1].join()
        self.rx.close()
        self.tx.close()
        missing = sorted(set(range(self.sent)) - self.seen)
        socket_drops = udp_socket_drops(self.dst_ns) - self.drops_before
        return {
            "sent": self.sent,
            "received": len(self.seen),
            "lost": len(missing),
            "socket_drops": socket_drops,
            "lost_in_path": len(missing) - socket_drops,
            "first_lost": missing[:10],
            "send_errors": self.send_errors,
            "sender_stalls": self.stalls,
        }


def assert_no_loss(results: list[dict], *, min_sent: int = 500) -> None:
    """Zero datagrams lost by the datapath.  On the host no socket drops happen either; in a
    slow VM our Python receiver may overflow its own buffer, which the kernel counts apart."""
    for r in results:
        assert r["sent"] >= min_sent and r["send_errors"] == 0, r
        assert r["lost_in_path"] == 0, f"the datapath lost {r['lost_in_path']} of {r['sent']} datagrams (first gaps {r['first_lost']}): {r}"
        if not os.environ.get("NKFRAME_VM"):
            assert r["lost"] == 0, f"lost {r['lost']} of {r['sent']} datagrams, first {r['first_lost']}: {r}"


@contextlib.contextmanager
def served(engine, socket_path: str):
    """An agent for ``engine`` in this process (a thread serves the socket); on exit it stops,
    and endpoints a failed test left are removed."""
    from nkframe.agent.server import Agent

    ag = Agent(engine, socket_path)
    ag.start()
    t = threading.Thread(target=ag.serve_forever, daemon=True)
    t.start()
    try:
        yield ag
    finally:
        ag.stop()
        t.join(10)
        for eid in engine.layout.endpoint_ids():
            try:
                engine.remove_endpoint(eid)
            except Exception:  # noqa: BLE001 - best effort cleanup after a failed test
                pass


class AgentProcess:
    """An agent serving ``node_netns``/``bpffs_root`` with the Counting plugin (``version``)."""

    def __init__(self, node_netns: str, bpffs_root: str, socket_path: str, *, version: int = 1, env: dict | None = None):
        self.args = [sys.executable, os.path.join(HERE, "agent_support.py"), "agent", node_netns, bpffs_root, socket_path, str(version)]
        self.socket_path = socket_path
        self.env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1", **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.ready_after = 0.0

    def start(self, timeout: float = 300.0) -> "AgentProcess":
        # Generous: under TCG in the VM tiers an interpreter start with these imports takes
        # 30-60 s; on the host about half a second.
        from nkframe.agent.client import AgentClient
        from nkframe.agent.protocol import AgentUnavailable

        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.args, env=self.env, stderr=subprocess.PIPE, text=True)
        self.started_at = t0
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
                self.proc.stderr.close()
                raise RuntimeError(f"agent exited {self.proc.returncode}: {err}")
            try:
                with AgentClient(self.socket_path, timeout=5) as c:
                    info = c.ping()
                if info["pid"] == self.proc.pid:
                    break
            except (AgentUnavailable, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise RuntimeError("agent did not come up in time")
            time.sleep(0.01)
        self.ready_after = time.monotonic() - t0
        return self

    def client(self, **kw):
        from nkframe.agent.client import AgentClient

        return AgentClient(self.socket_path, **kw)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def terminate(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(120)
        return self.proc.returncode if self.proc else 0

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def _agent_main(node_netns: str, bpffs_root: str, socket_path: str, version: str) -> int:
    import logging

    from nkframe.agent import server
    from nkframe.engine import Engine

    logging.basicConfig(level=logging.WARNING, format="test-agent[%(process)d] %(levelname)s %(message)s")
    eng = Engine(node_netns, bpffs_root, plugin_objects=[Counting(int(version))], autoload=False)
    return server.run(server.Agent(eng, socket_path))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "agent":
        sys.exit(_agent_main(*sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} agent NODE_NETNS BPFFS_ROOT SOCKET VERSION")
