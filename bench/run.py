#!/usr/bin/env python3
"""``make bench``: every figure beside its baseline, measured in the same run.

Prints one JSON object per figure on stdout as it is measured, progress and a summary table on
stderr, and writes ``bench/results/<date-time>.jsonl``, ``<date-time>.png`` and
``docs/benchmarks.md``.  ``--quick`` runs every section at tiny sizes (the smoke test uses it;
its figures mean nothing).  Needs root: it makes network namespaces and a private bpffs mount,
and removes them again; what an earlier run killed before its cleanup left is removed first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nkbench import report  # noqa: E402
from nkbench.core import Recorder  # noqa: E402
from nkbench.topo import Scope, remove_stale  # noqa: E402

SECTIONS = ("perpacket", "control", "throughput", "afxdp", "vm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, not the machine")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--results", type=Path, default=HERE / "results", help="where <date-time>.jsonl and .png go")
    p.add_argument("--docs", type=Path, default=None, help="the Markdown report (default docs/benchmarks.md; with --quick: next to the results)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="first wait up to this long for the 1-minute load average to fall below half the CPUs")
    p.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                   help="before each section, wait up to this long for the load the previous one left "
                        "to fall below half the CPUs (default 120; 0 with --quick)")
    p.add_argument("--vm-inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench needs root (network namespaces, BPF, bpffs)", file=sys.stderr)
        return 2
    if args.vm_inner:
        from nkbench import vmtier

        return vmtier.inner(quick=args.quick)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = set(sections) - set(SECTIONS)
    if bad:
        p.error(f"unknown section(s): {', '.join(sorted(bad))}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.results.mkdir(parents=True, exist_ok=True)
    jsonl = args.results / f"{stamp}.jsonl"
    png = args.results / f"{stamp}.png"
    docs = args.docs or (args.results / f"{stamp}.md" if args.quick else HERE.parent / "docs" / "benchmarks.md")
    out = open(jsonl, "w")

    def emit(line: str) -> None:
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    rec = Recorder(emit=emit)
    remove_stale(log=rec.log)
    quiet = wait_quiet(args.wait_quiet, rec) if args.wait_quiet else None
    machine = dict(report.machine_info(), load_start=report._load())
    load1 = os.getloadavg()[0]
    if load1 > (os.cpu_count() or 1) / 2:
        rec.skip("quiet machine", f"the 1-minute load average was {load1:.1f} on {os.cpu_count()} CPUs when the run started"
                 + (f" (after waiting {quiet:.0f} s for it to fall)" if quiet else "") + ": other work shares the CPUs, figures are noisier than their spread suggests")
    started = time.time()
    settle = args.settle if args.settle is not None else (0 if args.quick else 120)
    try:
        first = True
        for name in SECTIONS:
            if name not in sections:
                continue
            if not first and settle:
                # The 1,000-endpoint test leaves the load average near 2 on two CPUs, and a
                # throughput section measured right after it moved by 15%.
                waited = settle_load(settle)
                if waited >= 1:
                    rec.log(f"waited {waited:.0f} s for the load to settle before {name}")
            first = False
            run_section(name, rec, quick=args.quick)
    finally:
        out.close()
    rec.log("writing the report")
    report.write_all(rec, machine=machine, started=started, jsonl=jsonl, png=png, docs=docs, quick=args.quick)
    print(report.table(rec), file=sys.stderr)
    print(f"\nresults: {jsonl}\nplot:    {png}\nreport:  {docs}", file=sys.stderr)
    return 0


def wait_quiet(limit: float, rec: Recorder) -> float:
    """Wait (up to ``limit`` s) for the load average to fall below half the CPUs; seconds waited."""
    t0 = time.monotonic()
    cpus = os.cpu_count() or 1
    while os.getloadavg()[0] > cpus / 2 and time.monotonic() - t0 < limit:
        rec.log(f"waiting for a quiet machine: load {os.getloadavg()[0]:.1f} on {cpus} CPUs")
        time.sleep(30)
    return time.monotonic() - t0


def settle_load(limit: float) -> float:
    """Wait (up to ``limit`` s, polling every 5 s) for the load average to fall below half the
    CPUs; seconds waited."""
    t0 = time.monotonic()
    cpus = os.cpu_count() or 1
    while os.getloadavg()[0] > cpus / 2 and time.monotonic() - t0 < limit:
        time.sleep(5)
    return time.monotonic() - t0


def run_section(name: str, rec: Recorder, *, quick: bool) -> None:
    """One section inside its own Scope: whatever it made is gone when it returns or fails.
    A failing section is reported and the others still run."""
    import importlib
    import traceback

    mod = importlib.import_module(f"nkbench.{name if name != 'vm' else 'vmtier'}")
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    rec.section_load[name] = load
    rec.log(f"section {name}: 1-minute load average {load:.2f}")
    with Scope(log=rec.log) as scope:
        try:
            mod.run(rec, scope, quick=quick)
        except Exception as e:  # noqa: BLE001 - a broken section must not hide the others
            rec.skip(f"section {name}", f"failed: {type(e).__name__}: {e}")
            traceback.print_exc()
    rec.log(f"section {name} done in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
