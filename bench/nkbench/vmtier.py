"""netkit vs veth inside the netkit VM tier (Debian's 6.12 kernel under QEMU, TCG).

The host kernel has no netkit, so this section boots the VM runner (the checkout's :mod:`tools.vm`) and runs
``bench/run.py --vm-inner`` in the guest: two nkframe nodes side by side, one with netkit pairs
and netkit links, one with veth pairs and TCX, pod -> pod and pod -> outside with iperf3.  The
guest's CPUs are emulated in software, which distorts absolute speed (and not evenly: the more
instructions a path runs the more it loses), so these figures are **informative only**: the
ratio says something, the Gbit/s say little.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nkbench.core import Recorder, Stat
from nkbench.topo import Scope

HERE = Path(__file__).resolve().parent
OUT_ENV = "NKBENCH_VM_OUT"


def run(rec: Recorder, scope: Scope, *, quick: bool = False) -> None:
    sys.path.insert(0, str(HERE.parent.parent))  # the checkout's root: tools/ is not in the package
    from tools import vm

    rec.section = "vm"
    try:
        kernel = vm.ensure_kernel("6.12", offline=True)
    except Exception:  # noqa: BLE001 - not cached: ask apt once
        try:
            kernel = vm.ensure_kernel("6.12")
        except Exception as e:  # noqa: BLE001
            rec.skip("vm.*", f"no netkit kernel for the VM tier: {e}")
            return
    rwdir = Path(scope.tmpdir("nkbench-vm-"))
    out = rwdir / "vm.jsonl"
    argv = [sys.executable, str(HERE.parent / "run.py"), "--vm-inner"] + (["--quick"] if quick else [])
    rec.log(f"VM tier: booting {kernel.release} (TCG) for netkit vs veth")
    res = vm.run(kernel, argv, rwdir=rwdir, env={OUT_ENV: str(out)}, timeout=900,
                 echo=lambda line: rec.log(f"  vm| {line.rstrip()}"), log=lambda m: rec.log(f"  {m}"))
    if not out.exists():
        rec.skip("vm.*", f"the guest wrote no figures ({res.describe()})")
        return
    for line in out.read_text().splitlines():
        d = json.loads(line)
        if "skip" in d:
            rec.skip(d["skip"], d["why"])
            continue
        base = rec.get(d["baseline_name"]) if d["baseline_name"] else None
        rec.add(d["name"], Stat(d["value"], d["spread"], d["n"]), d["unit"], baseline=base, better="higher",
                note="informative: software-emulated CPU")
    if not res.ok:
        rec.skip("vm (partial)", res.describe())


def inner(quick: bool = False) -> int:
    """In the guest: build both nodes, measure, write JSON lines to $NKBENCH_VM_OUT."""
    import platform

    from nkbench import throughput

    path = os.environ.get(OUT_ENV)
    f = open(path, "w") if path else sys.stdout

    def emit(line: str) -> None:
        f.write(line + "\n")
        f.flush()

    rec = Recorder(emit=emit)
    rec.skip = lambda what, why: emit(json.dumps({"skip": what, "why": why}))  # type: ignore[method-assign]
    from nkframe import probe

    feats = probe.features()
    if not feats.supported("netkit"):
        rec.skip("vm.*", f"guest kernel {platform.release()} has no netkit: {feats['netkit'].reason}")
        return 0
    sizes = throughput.Sizes(rounds=1 if quick else 3, duration=1 if quick else 2, streams=(1,),
                             configs=(), directions=("pod-pod",) if quick else ("pod-pod", "pod-out"))
    with Scope(log=rec.log) as scope:
        topos = [throughput.build_nkframe(scope, "auto", device="netkit", name="netkit"),
                 throughput.build_nkframe(scope, "tcx", device="veth", name="veth")]
        for t in topos:
            rec.log(f"{t.name}: {t.ends.pop('_what', '?')}")
        stats = throughput.measure(rec, scope, topos, sizes, prefix="vm.tput")
    rel = platform.release().split("-")[0]
    for d in sizes.directions:
        base = rec.add(f"vm.tput.{d}.p1.veth", stats[f"vm.tput.{d}.p1.veth"], "Gbit/s", better="higher")
        rec.add(f"vm.tput.{d}.p1.netkit", stats[f"vm.tput.{d}.p1.netkit"], "Gbit/s", baseline=base, better="higher")
    rec.log(f"guest kernel {rel}: done")
    return 0
