"""The benchmark harness itself, so it does not rot: ``bench/run.py --quick`` at tiny sizes
writes well-formed JSON lines, the results file, the plot and the Markdown report, and leaves
no namespace or bpffs mount behind.  Never a timing assert: benchmarks are not tests.

The pure parts (statistics, the JSON shape, goal verdicts, the report writers) are checked
without root on synthetic figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requires

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

from nkbench import report  # noqa: E402
from nkbench.core import KEYS, Recorder, Stat, percentile  # noqa: E402

IN_VM = os.environ.get("NKFRAME_VM") == "1"


# ------------------------------------------------------------------------------------------
# without root


def test_stat_is_median_and_range_of_runs():
    s = Stat.of([3.0, 1.0, 10.0])
    assert (s.value, s.spread, s.n) == (3.0, 9.0, 3)
    assert Stat.of([2.0, 4.0]).value == 3.0
    with pytest.raises(ValueError):
        Stat.of([])


def test_percentile_interpolates_between_ranks():
    xs = list(range(1, 101))
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2], 0) == 1 and percentile([1, 2], 100) == 2


def _recorder():
    lines = []
    rec = Recorder(emit=lines.append, log=lambda m: None)
    return rec, lines


def test_every_line_has_exactly_the_issue_keys_and_a_ratio_against_its_baseline():
    rec, lines = _recorder()
    base = rec.add("ptp.add.p50", Stat.of([40.0, 42.0, 38.0]), "ms")
    rec.add("endpoint.add.p50.agent", Stat.of([10.0, 11.0, 9.0]), "ms", baseline=base)
    docs = [json.loads(x) for x in lines]
    assert [tuple(d) for d in docs] == [KEYS, KEYS]
    assert docs[0]["baseline_name"] is None and docs[0]["ratio"] is None
    assert docs[1]["baseline_name"] == "ptp.add.p50" and docs[1]["baseline_value"] == 40.0
    assert docs[1]["ratio"] == pytest.approx(0.25)
    assert docs[1]["n"] == 3 and docs[1]["spread"] == 2.0
    with pytest.raises(ValueError):
        rec.add("ptp.add.p50", Stat.of([1.0]), "ms")


def test_goal_verdicts_follow_the_figures():
    rec, _ = _recorder()
    base = rec.add("ptp.add.p50", Stat.of([40.0]), "ms")
    rec.add("endpoint.add.p50.agent", Stat.of([30.0]), "ms", baseline=base)
    e = rec.add("pkt.policy.r10000.v4-rule.empty", Stat.of([27.0]), "ns")
    rec.add("pkt.policy.r10000.v4-rule", Stat.of([80.0]), "ns", baseline=e)
    rec.add("agent.rss.n1000", Stat.of([150.0]), "MB")
    rows = {g: v for g, v, _d, _l in report.goal_rows(rec)}
    assert rows["Endpoint add p50 through the agent ≤ 0.5 × ptp's ADD p50"] == "**missed**"
    assert rows["Policy with 10,000 rules adds ≤ 60 ns per packet over the empty program"] == "**holds**"
    assert rows["Agent RSS ≤ 200 MB"] == "**holds**"
    assert rows["1,000 endpoints added in ≤ 60 s"] == "not measured"
    # Issue item 6: the shim's ADD and 16 concurrent ADDs against ptp's, in the same run.
    rec.add("endpoint.add.p50.cni", Stat.of([39.0]), "ms", baseline=base)
    c16 = rec.add("ptp.add.c16.p50", Stat.of([100.0]), "ms")
    rec.add("endpoint.add.c16.p50.agent", Stat.of([90.0]), "ms", baseline=c16)
    rec.add("endpoint.add.c16.p50.cni", Stat.of([120.0]), "ms", baseline=c16)
    rows = {g: v for g, v, _d, _l in report.goal_rows(rec)}
    assert rows["CNI ADD p50 through the shim ≤ 1.0 × ptp's ADD p50 (default attach: TCX here)"] == "**holds**"
    assert rows["16 concurrent ADDs: p50 ≤ 1.0 × ptp's"] == "**partly**"


def test_report_writers_on_synthetic_figures(tmp_path):
    rec, _ = _recorder()
    rec.section = "control"
    b = rec.add("ptp.add.p50", Stat.of([40.0, 41.0]), "ms")
    rec.add("endpoint.add.p50.engine", Stat.of([60.0, 70.0]), "ms", baseline=b)
    rec.section = "throughput"
    v = rec.add("tput.veth.p1", Stat.of([30.0]), "Gbit/s", better="higher")
    rec.add("tput.pod-out.p1.tcx", Stat.of([29.0]), "Gbit/s", baseline=v, better="higher")
    rec.skip("afxdp", "a reason")
    jsonl, png, docs = tmp_path / "r.jsonl", tmp_path / "r.png", tmp_path / "b.md"
    jsonl.write_text("")
    report.write_all(rec, machine={"kernel": "x"}, started=0.0, jsonl=jsonl, png=png, docs=docs, quick=False)
    text = docs.read_text()
    assert "`endpoint.add.p50.engine` | 65.0 ± 10.0 ms | 2 | `ptp.add.p50`" in text
    assert "afxdp: a reason" in text
    requires.module("matplotlib", "matplotlib (pip, the bench extra)")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "endpoint.add.p50.engine" in report.table(rec)


# ------------------------------------------------------------------------------------------
# the real harness, tiny sizes


def _left_by(pid: int) -> tuple[set[str], set[str]]:
    """Namespaces and bpffs mounts named after harness process ``pid`` (topo.Scope names all
    it makes ``nkb-<pid>-...`` / ``nkbench-bpffs-<pid>-...``): another bench running on the
    machine at the same time does not count."""
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    mounts = {line.split()[1] for line in open("/proc/self/mounts") if f"nkbench-bpffs-{pid}-" in line}
    return {n for n in netns if n.startswith(f"nkb-{pid}-")}, mounts


@pytest.mark.root
@pytest.mark.skipif(IN_VM, reason="the harness smoke run belongs to the host tier (minutes under TCG, and the VM tier has its own section)")
def test_quick_run_writes_every_output_and_cleans_up(tmp_path):
    docs = tmp_path / "benchmarks.md"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--sections", "perpacket,control,throughput,afxdp",
         "--results", str(tmp_path), "--docs", str(docs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert r.returncode == 0, r.stderr[-3000:]
    # A section that raised is reported and the run goes on; here it is a failure (the control
    # section once died in its last step after the attach API changed, and its first figures
    # were all there).
    failed = [x for x in r.stderr.splitlines() if "SKIPPED section" in x]
    assert not failed, failed
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert lines, r.stderr[-3000:]
    names = {d["name"] for d in lines}
    for d in lines:
        assert tuple(d) == KEYS
        assert isinstance(d["value"], (int, float)) and math.isfinite(d["value"]) and d["value"] >= 0
        assert isinstance(d["n"], int) and d["n"] >= 1
        if d["baseline_name"] is not None:
            # A measured row, or a goal where nothing else does the same job (reconcile).
            assert d["baseline_name"] in names or d["baseline_name"].startswith("goal.")
            assert d["ratio"] == pytest.approx(d["value"] / d["baseline_value"], rel=1e-3)
    # One figure of each section, beside its baseline: a section that failed is reported as a
    # note and leaves its figures out, which these catch.
    expect = {"ptp.add.p50": None, "endpoint.add.p50.engine": "ptp.add.p50", "endpoint.add.p50.agent": "ptp.add.p50",
              "pkt.l3.pod-out.v4": "pkt.l3.pod-out.v4.empty", "pkt.policy.r10.v4-rule": "pkt.policy.r10.v4-rule.empty",
              "tput.pod-out.p1.tcx": "tput.pod-out.p1.routing", "afxdp.rx.python": "afxdp.kernel"}
    by_name = {d["name"]: d for d in lines}
    for name, base in expect.items():
        assert name in by_name, f"{name} missing; stderr: {r.stderr[-3000:]}"
        assert by_name[name]["baseline_name"] == base
    results = sorted(tmp_path.glob("*.jsonl"))
    assert len(results) == 1
    assert [json.loads(x) for x in results[0].read_text().splitlines()] == lines
    text = docs.read_text()
    assert text.startswith("# Benchmarks") and "Quick run" in text
    assert "## Goals" in text and "`endpoint.add.p50.agent`" in text
    if report_has_matplotlib():
        png = results[0].with_suffix(".png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _left_by(proc.pid) == (set(), set()), "the harness left namespaces or bpffs mounts behind"


def report_has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
