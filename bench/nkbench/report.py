"""The readable outputs: summary table, plot, docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from nkbench.core import Figure, Recorder


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def table(rec: Recorder) -> str:
    rows = [("figure", "value", "±spread", "unit", "n", "baseline", "baseline value", "ratio")]
    for f in rec.figures:
        d = f.to_dict()
        rows.append((f.name, _fmt(f.value), _fmt(f.stat.spread), f.unit, str(f.stat.n),
                     d["baseline_name"] or "", _fmt(d["baseline_value"]) if f.baseline else "",
                     f"{f.ratio:.2f}" if f.ratio is not None else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i in (0, 3, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    if rec.notes:
        lines.append("")
        lines += [f"note: {n}" for n in rec.notes]
    return "\n".join(lines)


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    distro = ""
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    repo = Path(__file__).resolve().parents[2]
    info = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mb": mem,
        "kernel": platform.release(),
        "distro": distro,
        "python": platform.python_version(),
        "commit": _cmd("git", "-C", str(repo), "rev-parse", "--short", "HEAD"),
        "virt": _cmd("systemd-detect-virt") or "unknown",
        "iperf3": _cmd("iperf3", "--version").splitlines()[0] if _cmd("iperf3", "--version") else "",
        "cni_plugins": _cmd("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"),
    }
    try:
        from nkframe import bpf

        info["libbpf"] = bpf.libbpf_version()
        info["libxdp"] = bpf.libxdp_version()
    except Exception:  # noqa: BLE001 - informative only
        pass
    return info


def write_all(rec: Recorder, *, machine: dict, started: float, jsonl: Path, png: Path, docs: Path, quick: bool) -> None:
    try:
        plot(rec, png)
    except Exception as e:  # noqa: BLE001 - no matplotlib: say so, keep the rest
        rec.skip("plot", f"{type(e).__name__}: {e} (pip install matplotlib)")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(rec, machine=machine, started=started, jsonl=jsonl, png=png, docs=docs, quick=quick))


def plot(rec: Recorder, png: Path) -> None:
    pass


def markdown(rec: Recorder, **kw) -> str:
    return table(rec)
