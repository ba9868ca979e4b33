"""The lease source's pure parts: which source package and chroot a kernel release needs, the
cache stamp, and the guest's loading lines (the build itself runs in the vm-next tier)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tools import leasesource as ls
from tools import vm

RELEASE = "7.3.4+deb13-amd64"
MADISON = """\
linux-source-7.3 | 7.3.4-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages
linux-source-7.3 | 7.3.2-1 | http://deb.debian.org/debian sid/main amd64 Packages
"""


def test_source_package_and_version():
    assert ls.source_package(RELEASE) == "linux-source-7.3"
    assert ls.upstream_version(RELEASE) == "7.3.4"
    assert ls.upstream_version("7.2.13+deb14-amd64") == "7.2.13"
    with pytest.raises(ls.LeaseSourceError):
        ls.source_package("weird")


def test_pick_source_matches_the_kernels_upstream_version():
    pairs = ls.parse_madison(MADISON, "linux-source-7.3")
    assert pairs == [("7.3.4-1~bpo13+1", "trixie-backports"), ("7.3.2-1", "sid")]
    assert ls.pick_source(RELEASE, pairs) == ("7.3.4-1~bpo13+1", "trixie-backports")
    assert ls.pick_source("7.3.2+deb14-amd64", pairs) == ("7.3.2-1", "sid")
    with pytest.raises(ls.LeaseSourceError, match="no linux-source-7.3 of version 7.3.40"):
        ls.pick_source("7.3.40+deb13-amd64", pairs)


def test_chroot_suites():
    assert ls.chroot_suites(RELEASE, "trixie-backports") == ("trixie", ["trixie", "trixie-backports"])
    assert ls.chroot_suites("7.3.2+deb14-amd64", "sid") == ("sid", ["sid"])


def test_stamp_is_per_release(tmp_path):
    assert ls.read_stamp(tmp_path, RELEASE) is None
    (tmp_path / ls.MODULE).write_bytes(b"\x7fELF")
    (tmp_path / ls.STAMP).write_text(json.dumps({
        "release": RELEASE, "source_package": "linux-source-7.3",
        "source_version": "7.3.4-1~bpo13+1", "build_seconds": 106}))
    got = ls.read_stamp(tmp_path, RELEASE)
    assert got is not None and got.module == tmp_path / ls.MODULE
    assert got.describe() == "netdevsim (built from linux-source-7.3 7.3.4-1~bpo13+1)"
    assert ls.read_stamp(tmp_path, "7.3.5+deb13-amd64") is None  # another kernel: rebuild


def _run_guest_lines(text: str, stubs=None) -> subprocess.CompletedProcess:
    """Run the lines with stand-ins for the module tools (nothing is loaded on this machine)."""
    env = dict(os.environ)
    if stubs is not None:
        stubs.mkdir(exist_ok=True)
        for tool, body in (("modinfo", "echo psample"), ("modprobe", "exit 0"),
                           ("insmod", "echo 'insmod: ERROR: could not load module' >&2; exit 1")):
            (stubs / tool).write_text(f"#!/bin/sh\n{body}\n")
            (stubs / tool).chmod(0o755)
        env["PATH"] = f"{stubs}:{env.get('PATH', '')}"
    script = text + 'echo "source=$NKFRAME_LEASE_SOURCE why=$NKFRAME_LEASE_SOURCE_WHY"\n'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)


def test_guest_lines_without_a_source_say_why():
    r = _run_guest_lines(ls.guest_setup(None, "building netdevsim.ko failed: no network"))
    assert "lease source: none (building netdevsim.ko failed: no network)" in r.stdout
    assert "source=none why=building netdevsim.ko failed: no network" in r.stdout


def test_guest_lines_report_a_failed_insmod(tmp_path):
    src = ls.LeaseSource(RELEASE, tmp_path / "missing.ko", "linux-source-7.3", "7.3.4-1")
    r = _run_guest_lines(ls.guest_setup(src), tmp_path / "bin")
    if "source=netdevsim" in r.stdout:
        pytest.skip("this machine has netdevsim loaded")
    assert "lease source: none (insmod " in r.stdout and "could not load module" in r.stdout, r.stdout
    assert "source=none why=insmod" in r.stdout, r.stdout


def test_only_the_7_series_gets_a_lease_source(tmp_path):
    for release in ("6.12.118+deb12-amd64", "6.1.0-57-amd64"):
        k = vm.KernelImage(release, tmp_path / "vmlinuz", tmp_path)
        assert vm.lease_setup(k, cache=tmp_path / "kernels") == ("", "")
    assert not (tmp_path / "lease-source").exists()


def test_a_missing_build_tool_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ls.LeaseSourceError, match="mmdebstrap is missing: run 'make setup'"):
        ls.ensure_netdevsim(RELEASE, tmp_path / "kernels", [], archive=("http://x", "/k"),
                            log=lambda m: None)
    assert not (tmp_path / "lease-source" / RELEASE).exists()  # nothing half-made is cached


def test_a_failed_build_reaches_the_guest_as_the_reason(tmp_path, monkeypatch):
    def fail(*a, **kw):
        raise ls.LeaseSourceError("mmdebstrap trixie with linux-headers-x failed (exit 1):\nE: no net")

    monkeypatch.setattr(ls, "ensure_netdevsim", fail)
    logged: list[str] = []
    k = vm.KernelImage(RELEASE, tmp_path / "vmlinuz", tmp_path)
    lines, what = vm.lease_setup(k, logged.append, cache=tmp_path / "kernels")
    assert what.startswith("none (building netdevsim.ko for 7.3.4+deb13-amd64 failed: mmdebstrap")
    assert any("LEASE SOURCE BUILD FAILED" in m for m in logged)
    r = _run_guest_lines(lines)
    assert "lease source: none (building netdevsim.ko" in r.stdout and "E: no net" in r.stdout
    assert "source=none" in r.stdout
