"""tools/compat_table.py: docs/compat.md is generated from the tiers' probe.json and junit.xml."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "compat_table.py"


def _tool():
    spec = importlib.util.spec_from_file_location("compat_table", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compat_table"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


ct = _tool()


def _probe(kernel, **feats):
    names = ("bpffs", "btf", "tc", "tcx", "netkit", "af_xdp")
    return {
        "kernel": kernel, "libbpf": "1.1.2", "libxdp": "1.3.1",
        "features": {n: {"supported": feats.get(n, (True, "ok"))[0], "reason": feats.get(n, (True, "ok"))[1]} for n in names},
    }


JUNIT = """<?xml version="1.0"?><testsuites><testsuite>
<testcase classname="a" name="t1"/><testcase classname="a" name="t2"/>
<testcase classname="a" name="t3"><skipped type="pytest.skip" message="needs netkit | none here">x</skipped></testcase>
<testcase classname="a" name="t4"><failure message="boom"/></testcase>
</testsuite></testsuites>"""


@pytest.fixture
def results(tmp_path):
    def tier(name, probe, junit=None):
        d = tmp_path / name
        d.mkdir()
        (d / "probe.json").write_text(json.dumps(probe))
        if junit:
            (d / "junit.xml").write_text(junit)

    no_netkit = (False, "the kernel has no netkit device (CONFIG_NETKIT is off)")
    tier("vm-legacy", _probe("6.1.0-56-amd64", netkit=no_netkit, tcx=(False, "BPF_LINK_CREATE does not know BPF_TCX_INGRESS")))
    tier("host", _probe("6.18.44", netkit=no_netkit), JUNIT)
    tier("vm-netkit", _probe("6.12.117"))
    (tmp_path / "unit").mkdir()  # a tier without a probe: not a kernel column
    (tmp_path / "unit" / "junit.xml").write_text(JUNIT)
    return tmp_path


def test_page_has_each_kernel_in_tier_order_with_what_an_endpoint_gets(results):
    text = ct.render(ct.load(results))
    assert text.startswith(ct.HEADER)
    kernels = text.split("## Kernels")[1].split("## Features")[0]
    rows = [l for l in kernels.splitlines() if l.startswith("| host |") or l.startswith("| vm-")]
    assert [r.split("|")[1].strip() for r in rows] == ["host", "vm-netkit", "vm-legacy"]
    host, netkit, legacy = rows
    assert "| veth | tcx | 2 / 1 / 1 |" in host
    assert "| netkit | netkit | no results |" in netkit
    assert "| veth | tc |" in legacy
    assert "unit" not in text.split("## Features")[1].splitlines()[2]


def test_feature_matrix_points_at_deduplicated_reasons(results):
    text = ct.render(ct.load(results))
    netkit_row = next(l for l in text.splitlines() if l.startswith("| `netkit` |"))
    # Notes are numbered in table order (tcx comes first) and shared by equal reasons.
    assert netkit_row == "| `netkit` | no [2](#why-not) | yes | no [2](#why-not) |"
    tcx_row = next(l for l in text.splitlines() if l.startswith("| `tcx` |"))
    assert tcx_row == "| `tcx` | yes | yes | no [1](#why-not) |"
    why = text.split("## Why not")[1]
    assert "2. the kernel has no netkit device (CONFIG_NETKIT is off)" in why
    assert "1. BPF_LINK_CREATE does not know BPF_TCX_INGRESS" in why
    # Skip reasons are listed, with '|' escaped so the table holds.
    assert "| host | 1 | needs netkit \\| none here |" in text


def test_output_is_stable_and_check_mode_detects_drift(results, tmp_path):
    out = tmp_path / "compat.md"
    run = lambda *a: subprocess.run([sys.executable, str(TOOL), "--results", str(results), "--out", str(out), *a], capture_output=True, text=True)
    assert run().returncode == 0
    first = out.read_text()
    assert run("--check").returncode == 0
    assert ct.render(ct.load(results)) == first
    (results / "host" / "probe.json").write_text(json.dumps(_probe("6.18.45")))
    r = run("--check")
    assert r.returncode == 1 and "out of date" in r.stderr


def test_scratch_namespace_names_in_reasons_do_not_make_the_page_change(tmp_path):
    pages = []
    for tag in ("12-ab12cd", "97-ff0011"):
        d = tmp_path / tag / "host"
        d.mkdir(parents=True)
        (d / "probe.json").write_text(json.dumps(_probe("6.12", netkit=(False, f"ignored headroom (create netkit in netns 'nkprobe-{tag}')"))))
        pages.append(ct.render(ct.load(tmp_path / tag)))
    assert pages[0] == pages[1]
    assert "netns 'nkprobe-*'" in pages[0]


def test_no_results_and_bad_input(tmp_path):
    assert "No tier has left a probe yet" in ct.render(ct.load(tmp_path / "missing"))
    d = tmp_path / "host"
    d.mkdir()
    (d / "probe.json").write_text("{not json")
    with pytest.raises(ct.CompatError, match="not JSON"):
        ct.load(tmp_path)
    (d / "probe.json").write_text(json.dumps({"features": {}}))
    with pytest.raises(ct.CompatError, match="nkframe probe --json"):
        ct.load(tmp_path)


def test_committed_page_is_generated():
    page = ROOT / "docs" / "compat.md"
    assert page.read_text().startswith(ct.HEADER), "docs/compat.md must come from tools/compat_table.py"
