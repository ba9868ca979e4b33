#!/usr/bin/env python3
"""Agent figures: restart time and reconcile time for N endpoints.  Needs root.

Prints one JSON object per line: ``{"name", "value", "unit", ...}``.  Everything lives in network
namespaces and a private bpffs mount this script makes and removes.

    sudo .venv/bin/python bench/agent_restart.py [--sizes 10,100] [--repeat 5]

* ``add_seconds``        one endpoint add (mean over N)
* ``reconcile_seconds``  Engine.reconcile() over N healthy endpoints, fresh Engine each time
* ``list_seconds``       Engine.endpoints() over N endpoints
* ``agent_restart_seconds``  SIGKILL an agent, start another: from exec to the first answered ping
  (interpreter start, imports, reconcile, bind); ``agent_reconcile_seconds`` is the reconcile
  part as the agent measured it
* ``remove_seconds``     one endpoint remove (mean over N)

Each endpoint carries two programs (count.c on both hooks), like a small real datapath.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid


def _plugin():
    from nkframe import hookimpl, objects
    from nkframe.types import Hook, ProgramSpec

    class Counting:
        @hookimpl
        def nkframe_programs_collect(self, ctx):
            obj = objects.path("count")
            return [
                ProgramSpec(name="count_out", object=obj, program="count", hook=Hook.FROM_POD, globals={"SLOT": struct.pack("<I", 0)}, maps={"counts": "endpoint"}),
                ProgramSpec(name="count_in", object=obj, program="count", hook=Hook.TO_POD, globals={"SLOT": struct.pack("<I", 1)}, maps={"counts": "endpoint"}),
            ]

    return Counting()


def _serve(node: str, root: str, sock: str) -> int:
    from nkframe.agent import server
    from nkframe.engine import Engine

    eng = Engine(node, root, plugin_objects=[_plugin()], autoload=False)
    return server.run(server.Agent(eng, sock))


def emit(name: str, value: float, unit: str, **extra) -> None:
    print(json.dumps({"name": name, "value": round(value, 6), "unit": unit, **extra}), flush=True)


def _agent_restart(node: str, root: str, sock: str, n: int, repeat: int) -> None:
    from nkframe.agent.client import AgentClient
    from nkframe.agent.protocol import AgentUnavailable

    env = dict(os.environ, NKFRAME_DISABLE_PLUGIN_AUTOLOAD="1")
    times, reconciles = [], []
    proc = None
    try:
        for _ in range(repeat + 1):  # the first start warms the page cache; not counted
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, __file__, "--serve", node, root, sock], env=env)
            while True:
                try:
                    with AgentClient(sock, timeout=10) as c:
                        info = c.ping()
                    if info["pid"] == proc.pid:
                        break
                except (AgentUnavailable, OSError):
                    pass
                if proc.poll() is not None:
                    raise SystemExit(f"agent exited {proc.returncode}")
                time.sleep(0.002)
            times.append(time.monotonic() - t0)
            reconciles.append(info["startup"]["reconcile_seconds"])
            assert len(info["startup"]["reconcile"]["healthy"]) == n
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    emit("agent_restart_seconds", statistics.median(times[1:]), "s", endpoints=n, repeat=repeat, min=round(min(times[1:]), 6), max=round(max(times[1:]), 6))
    emit("agent_reconcile_seconds", statistics.median(reconciles[1:]), "s", endpoints=n, repeat=repeat)


def run(sizes: list[int], repeat: int) -> None:
    from nkframe import netns, pins
    from nkframe.engine import Engine
    from nkframe.types import EndpointSpec

    tag = uuid.uuid4().hex[:6]
    bpffs = tempfile.mkdtemp(prefix="nkb-bpffs-")
    sockdir = tempfile.mkdtemp(prefix="nkb-run-")
    pins.mount_bpffs(bpffs)
    made: list[str] = []
    try:
        for n in sizes:
            node = f"nkb-node-{tag}-{n}"
            netns.create(node)
            made.append(node)
            root = os.path.join(bpffs, f"n{n}")
            eng = Engine(node, root, plugin_objects=[_plugin()], autoload=False)
            pods = []
            t0 = time.monotonic()
            for i in range(n):
                pod = f"nkb-p{tag}-{n}-{i}"
                netns.create(pod)
                made.append(pod)
                pods.append(pod)
            t0 = time.monotonic()
            for i, pod in enumerate(pods):
                eng.add_endpoint(EndpointSpec(id=f"b{i}", netns=pod, addresses=[f"10.{90 + i // 250}.{i % 250}.1/32"]))
            emit("add_seconds", (time.monotonic() - t0) / n, "s", endpoints=n)

            rec = []
            for _ in range(repeat):
                fresh = Engine(node, root, plugin_objects=[_plugin()], autoload=False)
                t0 = time.monotonic()
                rep = fresh.reconcile()
                rec.append(time.monotonic() - t0)
                assert len(rep.healthy) == n and not rep.removed
            emit("reconcile_seconds", statistics.median(rec), "s", endpoints=n, repeat=repeat, per_endpoint_ms=round(1000 * statistics.median(rec) / n, 3))
            t0 = time.monotonic()
            assert len(eng.endpoints()) == n
            emit("list_seconds", time.monotonic() - t0, "s", endpoints=n)

            _agent_restart(node, root, os.path.join(sockdir, f"a{n}.sock"), n, repeat)

            t0 = time.monotonic()
            for i in range(n):
                eng.remove_endpoint(f"b{i}")
            emit("remove_seconds", (time.monotonic() - t0) / n, "s", endpoints=n)
    finally:
        for name in reversed(made):
            netns.delete(name)
        pins.umount(bpffs)
        os.rmdir(bpffs)
        import shutil

        shutil.rmtree(sockdir, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        sys.exit(_serve(*sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100", help="endpoint counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_restart.py needs root (network namespaces, BPF, bpffs)")
    run([int(x) for x in a.sizes.split(",")], a.repeat)


if __name__ == "__main__":
    main()
