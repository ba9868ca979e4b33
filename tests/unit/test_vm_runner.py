"""The VM runner's pure logic: kernel selection, command construction, JUnit reading."""

from __future__ import annotations

import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

from tools import vm
from tools.vm import KernelImage, TestCounts, VmError

# Shape of `apt-cache search --names-only '^linux-image-6\.12\.'` on bookworm (trimmed), with
# numbers chosen so string order and numeric order disagree.
APT_612 = """\
linux-image-6.12.9+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.9+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.117+deb12-rt-amd64-unsigned - Linux 6.12 for 64-bit PCs, PREEMPT_RT
linux-image-6.12.121+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.43+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.43+deb12-amd64-dbg - Debug symbols for linux-image-6.12.43+deb12-amd64
"""

APT_61 = """\
linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-56-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-100-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT
linux-image-6.1.0-47-amd64-unsigned - Linux 6.1 for 64-bit PCs
"""


def test_select_newest_612_plain_flavour():
    assert vm.select_package(vm.SERIES["6.12"], APT_612) == \
        "linux-image-6.12.117+deb12-amd64-unsigned"


def test_select_newest_61_by_abi_number():
    assert vm.select_package(vm.SERIES["6.1"], APT_61) == "linux-image-6.1.0-56-amd64-unsigned"


def test_series_do_not_match_each_other():
    assert vm.select_package(vm.SERIES["6.1"], APT_612) is None
    assert vm.select_package(vm.SERIES["6.12"], APT_61) is None
    assert vm.select_package(vm.SERIES["6.12"], "") is None


def test_release_of_package():
    assert vm.SERIES["6.12"].release_of("linux-image-6.12.117+deb12-amd64-unsigned") == \
        "6.12.117+deb12-amd64"
    assert vm.SERIES["6.1"].release_of("linux-image-6.1.0-56-amd64-unsigned") == "6.1.0-56-amd64"
    assert vm.SERIES["6.1"].release_of("linux-image-6.1.0-56-cloud-amd64-unsigned") is None


@pytest.mark.parametrize("given, series", [
    ("6.12", "6.12"), ("6.1", "6.1"),
    ("6.12.117+deb12-amd64", "6.12"), ("6.1.0-56-amd64", "6.1"),
])
def test_series_for(given, series):
    assert vm.series_for(given).name == series


def test_series_for_unknown_says_what_is_known():
    with pytest.raises(VmError, match="6.12, 6.1"):
        vm.series_for("5.10")


def _fake_tree(root: Path, release: str, complete: bool = True) -> Path:
    d = root / release
    (d / "boot").mkdir(parents=True)
    (d / "boot" / f"vmlinuz-{release}").write_bytes(b"not really a kernel")
    (d / "lib" / "modules" / release).mkdir(parents=True)
    if complete:
        (d / ".nkframe-complete").write_text(f"linux-image-{release}-unsigned\n")
    return d


def test_cached_kernels_newest_last_and_complete_only(tmp_path):
    _fake_tree(tmp_path, "6.12.9+deb12-amd64")
    _fake_tree(tmp_path, "6.12.117+deb12-amd64")
    _fake_tree(tmp_path, "6.12.200+deb12-amd64", complete=False)  # interrupted unpack
    _fake_tree(tmp_path, "6.1.0-56-amd64")
    found = vm.cached_kernels(vm.SERIES["6.12"], tmp_path)
    assert [k.release for k in found] == ["6.12.9+deb12-amd64", "6.12.117+deb12-amd64"]
    assert found[-1].package == "linux-image-6.12.117+deb12-amd64-unsigned"
    assert found[-1].modules_dir == tmp_path / "6.12.117+deb12-amd64/lib/modules/6.12.117+deb12-amd64"


def test_ensure_kernel_offline_uses_cache(tmp_path):
    _fake_tree(tmp_path, "6.1.0-47-amd64")
    _fake_tree(tmp_path, "6.1.0-56-amd64")
    k = vm.ensure_kernel("6.1", cache=tmp_path, offline=True, log=lambda m: None)
    assert k.release == "6.1.0-56-amd64"
    assert k.root == tmp_path / "6.1.0-56-amd64"


def test_ensure_kernel_offline_without_cache_is_a_clear_error(tmp_path):
    with pytest.raises(VmError, match="apt-get update"):
        vm.ensure_kernel("6.12", cache=tmp_path, offline=True, log=lambda m: None)


def test_kernel_image_from_incomplete_tree(tmp_path):
    (tmp_path / "boot").mkdir()
    with pytest.raises(VmError, match="lib/modules/6.1.0-56-amd64"):
        KernelImage.from_tree(tmp_path, "6.1.0-56-amd64")


def _kernel(tmp_path) -> KernelImage:
    return KernelImage.from_tree(_fake_tree(tmp_path, "6.12.117+deb12-amd64"),
                                 "6.12.117+deb12-amd64")


def test_vng_command(tmp_path):
    k = _kernel(tmp_path)
    argv = vm.build_vng_command(k, script=Path("/r/guest-run.sh"), rwdirs=[Path("/r")],
                                memory="1G", cpus=1, vng="/v/vng")
    assert argv[:3] == ["/v/vng", "--run", str(k.vmlinuz)]
    assert "--disable-kvm" in argv
    assert argv[argv.index("--memory") + 1] == "1G"
    assert argv[argv.index("--cpus") + 1] == "1"
    assert argv[argv.index("--rwdir") + 1] == "/r"
    assert "-v" in argv  # without it the guest's output never reaches the console
    assert argv[-2:] == ["--exec", "/bin/sh /r/guest-run.sh"]
    assert "--force-9p" in argv
    assert not any(a.startswith("--qemu-opts") for a in argv)
    kvm = vm.build_vng_command(k, script=Path("/s"), rwdirs=[], kvm=True, disk=Path("/i.img"))
    assert "--disable-kvm" not in kvm and "--disable-microvm" in kvm
    (opts,) = [a for a in kvm if a.startswith("--qemu-opts=")]  # one word: "-drive" is no option
    assert "file=/i.img," in opts and "readonly=on" in opts
    assert f"serial={vm.FAST_IMAGE_SERIAL}" in opts
    extra = vm.build_vng_command(k, script=Path("/s"), rwdirs=[], qemu_opts=["-cpu qemu64"],
                                 append=["mitigations=off"])
    assert "--qemu-opts=-cpu qemu64" in extra and "--append=mitigations=off" in extra
    single = vm.build_vng_command(k, script=Path("/s"), rwdirs=[], tcg_thread="single")
    assert "--qemu-opts=-accel tcg,thread=single" in single
    assert not any("thread=" in a for a in vm.build_vng_command(k, script=Path("/s"), rwdirs=[],
                                                                 kvm=True, tcg_thread="single"))


def _debugfs_ls(image: Path, path: str) -> set[str]:
    r = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(image)],
                       capture_output=True, text=True, check=True)
    # -p: /inode/mode/uid/gid/name/size/
    return {f.split("/")[5] for f in r.stdout.splitlines() if f.count("/") >= 6} - {".", ".."}


def test_fast_image_holds_the_paths(tmp_path):
    stdlib = tmp_path / "py" / "lib" / "python3.11"
    for d in ("json", "site-packages/big", "test", "config-3.11-x86_64-linux-gnu"):
        (stdlib / d).mkdir(parents=True)
    (stdlib / "os.py").write_text("# os")
    (stdlib / "json" / "__init__.py").write_text("# json")
    exe = tmp_path / "py" / "python3.11"
    exe.write_bytes(b"\x7fELF")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(exe)
    img = vm.build_fast_image([tmp_path / "venv", stdlib, exe, tmp_path / "missing"],
                              tmp_path / "out" / "f.img", stdlib=stdlib)
    assert img.mounts == (("0", str(tmp_path / "venv")), ("1", str(stdlib)), ("2", str(exe)))
    assert _debugfs_ls(img.path, "/1") == {"json", "os.py"}  # no site-packages, test, config
    assert _debugfs_ls(img.path, "/0/bin") == {"python"}
    assert "2" in _debugfs_ls(img.path, "/")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "f.img"]  # staging gone


def test_guest_script_binds_fast_paths(tmp_path):
    script = vm.guest_script("true", status_path=tmp_path / "s", cwd=tmp_path,
                             fast_mounts=[("0", "/work/main/.venv"), ("1", "/a b/lib")])
    assert "mount --bind /run/nkframe-fast/0 /work/main/.venv" in script
    assert "mount --bind /run/nkframe-fast/1 '/a b/lib'" in script
    assert vm.FAST_IMAGE_SERIAL in script
    assert "nkframe-fast" not in vm.guest_script("true", status_path=tmp_path / "s", cwd=tmp_path)


def test_guest_script_records_status_even_after_exit(tmp_path):
    """The wrapper runs as plain sh here: the same text the guest runs, minus the guest setup."""
    status = tmp_path / "exit-status"
    script = vm.guest_script("echo \"$GREETING\"; exit 7", status_path=status, cwd=tmp_path,
                             env={"GREETING": "hello 'vm'"}, prepare=False)
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert "hello 'vm'" in r.stdout
    assert status.read_text().strip() == "7"


def test_guest_script_quotes_argv(tmp_path):
    script = vm.guest_script(["printf", "%s|", "a b", "$HOME"], status_path=tmp_path / "s",
                             cwd=tmp_path)
    assert shlex.join(["printf", "%s|", "a b", "$HOME"]) in script
    assert "modprobe" in script and "veth" in script
    assert "mount -t bpf bpf /sys/fs/bpf" in script


def test_pytest_command_defaults_and_paths(tmp_path):
    venv = Path("/repo/.venv")
    argv = vm.pytest_command(venv, Path("/res/junit.xml"), ["-k", "smoke"], cwd=tmp_path)
    assert argv[:3] == ["/repo/.venv/bin/python", "-m", "pytest"]
    assert argv[argv.index("-m", 3) + 1] == "root"
    assert "--junitxml=/res/junit.xml" in argv
    assert argv[-4:] == ["tests", "--ignore=tests/unit", "-k", "smoke"]
    assert "-p" in argv and vm.PLUGIN in argv
    (tmp_path / "t.py").write_text("")
    argv = vm.pytest_command(venv, Path("/res/junit.xml"), ["t.py::test_x"], cwd=tmp_path)
    assert "tests" not in argv and argv[-1] == "t.py::test_x"
    assert "--ignore=tests/unit" not in argv


def test_probe_command_tolerates_missing_probe(tmp_path):
    r = subprocess.run(["sh", "-c", vm.probe_command(tmp_path / "no-venv")],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert "probe unavailable" in r.stdout


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6">
<testcase classname="a" name="ok1" time="0.1"/>
<testcase classname="a" name="ok2" time="0.1"><system-out>x</system-out></testcase>
<testcase classname="a" name="bad"><failure message="assert 0">...</failure></testcase>
<testcase classname="a" name="err"><error message="fixture">...</error></testcase>
<testcase classname="a" name="skip"><skipped type="pytest.skip" message="no netkit"/></testcase>
<testcase classname="a" name="xfail"><skipped type="pytest.xfail" message="known"/></testcase>
</testsuite></testsuites>
"""


def test_parse_junit(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text(JUNIT)
    c = vm.parse_junit(p)
    assert c == TestCounts(passed=2, failed=1, skipped=2, errors=1)
    assert c.line() == "2 passed, 2 failed, 2 skipped"


def test_parse_junit_missing_or_truncated(tmp_path):
    with pytest.raises(VmError, match="not written"):
        vm.parse_junit(tmp_path / "nope.xml")
    (tmp_path / "cut.xml").write_text(JUNIT[:200])
    with pytest.raises(VmError, match="not valid XML"):
        vm.parse_junit(tmp_path / "cut.xml")


def test_tier_result_missing_results_is_a_failure(tmp_path):
    r = vm.tier_result("vm-netkit", tmp_path / "nope.xml", None, "VM timed out")
    assert not r.ok
    assert r.counts.bad == 1
    assert "VM timed out" in r.problem
    assert r.line() == "vm-netkit: 0 passed, 1 failed, 0 skipped"


def test_tier_result_nonzero_exit_without_failures(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text('<testsuites><testsuite><testcase name="a"/></testsuite></testsuites>')
    assert vm.tier_result("host", p, 0, "").ok
    r = vm.tier_result("host", p, 3, "pytest internal error")
    assert not r.ok and r.counts == TestCounts(passed=1, failed=1)
    r = vm.tier_result("host", p, None, "no exit status")  # results but no status file
    assert not r.ok


def test_tier_result_no_tests(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text('<testsuites><testsuite tests="0"/></testsuites>')
    r = vm.tier_result("unit", p, 5, "")
    assert not r.ok and r.problem == "no tests were collected"


def test_tier_result_failures_pass_through(tmp_path):
    p = tmp_path / "j.xml"
    p.write_text(JUNIT)
    r = vm.tier_result("host", p, 1, "")
    assert not r.ok and r.problem is None and r.counts.bad == 2


def test_counts_add():
    assert TestCounts(1, 2, 3, 4) + TestCounts(1, 1, 1, 1) == TestCounts(2, 3, 4, 5)


PLUGIN_TESTS = textwrap.dedent('''
    import pytest

    @pytest.mark.netkit
    def test_skips_in_body():
        pytest.skip("no netkit here")

    @pytest.mark.netkit
    @pytest.mark.skipif(True, reason="probe says no")
    def test_skips_at_setup():
        pass

    @pytest.mark.netkit
    @pytest.mark.xfail(reason="known bug", strict=True)
    def test_xfails():
        assert False

    @pytest.mark.netkit
    def test_runs():
        pass

    def test_plain_skip():
        pytest.skip("not netkit, may skip")
''')


@pytest.mark.parametrize("required", ["1", "0"])
def test_plugin_turns_netkit_skips_into_failures(tmp_path, required):
    """Run the plugin in a child pytest on a throw-away test file."""
    import os
    import sys

    (tmp_path / "test_p.py").write_text(PLUGIN_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    netkit: x\n")
    env = dict(os.environ, NKFRAME_REQUIRE_NETKIT=required,
               PYTHONPATH=str(vm.PLUGIN_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", vm.PLUGIN, "-p", "no:cacheprovider",
                        f"--junitxml={tmp_path / 'j.xml'}", str(tmp_path / "test_p.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    c = vm.parse_junit(tmp_path / "j.xml")
    if required == "1":
        assert r.returncode == 1, r.stdout
        # body skip -> failure; setup skip -> error; xfail stays a skip; plain skip stays.
        assert c == TestCounts(passed=1, failed=1, skipped=2, errors=1), r.stdout
        assert "netkit test skipped in a tier whose kernel has netkit" in r.stdout
        assert "probe says no" in r.stdout
    else:
        assert r.returncode == 0, r.stdout
        assert c == TestCounts(passed=1, skipped=4), r.stdout


def test_kernel_selection_prefixes():
    sys_path_plugin = str(vm.PLUGIN_DIR)
    import sys
    sys.path.insert(0, sys_path_plugin)
    try:
        import pytest_nkframe_vm as plugin
    finally:
        sys.path.remove(sys_path_plugin)
    prefixes = ["tests/vm/", "tests/host/test_probe.py", "tests/host/test_l3.py::test_ttl"]
    sel = plugin.selected
    assert sel("tests/vm/test_guest_smoke.py::test_x", False, prefixes)
    assert sel("tests/host/test_probe.py::test_a[b]", False, prefixes)
    assert not sel("tests/host/test_probe_more.py::test_a", False, prefixes)
    assert sel("tests/host/test_l3.py::test_ttl[v4]", False, prefixes)
    assert not sel("tests/host/test_l3.py::test_ttl_other", False, prefixes)
    assert not sel("tests/host/test_soak.py::test_soak", False, prefixes)
    assert sel("tests/host/test_soak.py::test_soak", True, prefixes)  # netkit always runs
    # The shipped list names files that exist (a renamed test file must not drop silently).
    for p in plugin.load_selection():
        assert (vm.REPO_ROOT / p.split("::")[0]).exists(), p


def test_run_tiers_rejects_unknown_tier():
    import os
    import sys

    script = vm.REPO_ROOT / "tests" / "run-tiers"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env=dict(os.environ, NKFRAME_TIERS="unit,vm-bogus"))
    assert r.returncode != 0
    assert "unknown tier(s) vm-bogus" in r.stderr
    assert "vm-netkit" in r.stderr  # says which tiers exist


# ------------------------------------------------------------------------------------------
# what a guest leaves behind when it dies (the real crash: tests/host/test_vm_crash.py)


def test_find_crash_returns_the_first_report_lines(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("boot\nok\n[  12.1] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n"
                   "[  12.1] RIP: 0010:__dev_queue_xmit+0x197/0xe30\nmore\n")
    lines = vm.find_crash(log, context=2)
    assert lines[0].endswith("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
    assert "__dev_queue_xmit" in lines[1] and len(lines) == 2
    log.write_text("boot\nall fine\n")
    assert vm.find_crash(log) == []
    assert vm.find_crash(tmp_path / "missing") == []


def test_parse_progress_counts_finished_tests_and_names_the_running_one(tmp_path):
    p = tmp_path / "progress.jsonl"
    p.write_text(
        '{"event": "start", "nodeid": "a"}\n'
        '{"event": "result", "nodeid": "a", "when": "call", "outcome": "passed"}\n'
        '{"event": "start", "nodeid": "b"}\n'
        '{"event": "result", "nodeid": "b", "when": "setup", "outcome": "skipped", "reason": "no x"}\n'
        '{"event": "start", "nodeid": "c"}\n'
        '{"event": "result", "nodeid": "c", "when": "call", "outcome": "passed"}\n'
        '{"event": "result", "nodeid": "c", "when": "teardown", "outcome": "failed"}\n'
        '{"event": "start", "nodeid": "d"}\n'
        '{"event": "resu')  # cut short by the crash
    prog = vm.parse_progress(p)
    assert prog.counts == vm.TestCounts(passed=1, failed=1, skipped=1)
    assert prog.running == "d"
    assert prog.skip_reasons == ("no x",)
    assert vm.parse_progress(tmp_path / "none") is None


def test_pin_variable_pins_a_series(tmp_path, monkeypatch):
    s = vm.series_for("6.12")
    assert vm.pin_variable(s) == "NKFRAME_KERNEL_6_12"
    assert vm.pin_variable(vm.series_for("6.1")) == "NKFRAME_KERNEL_6_1"
    monkeypatch.setenv("NKFRAME_KERNEL_6_12", "6.1.0-9-amd64")
    with pytest.raises(vm.VmError, match="not a release of the 6.12 series"):
        vm.ensure_kernel("6.12", cache=tmp_path, offline=True)
    monkeypatch.setenv("NKFRAME_KERNEL_6_12", "6.12.1+deb12-amd64")
    with pytest.raises(vm.VmError, match="6.12.1\\+deb12-amd64 is not cached"):
        vm.ensure_kernel("6.12", cache=tmp_path, offline=True)


# -- the vm-next tier (Debian's 7.x kernels, issue 13)


def test_series_7_matches_debians_split_packaging():
    s = vm.SERIES["7"]
    assert s.release_of("linux-binary-7.3.4+deb13-amd64") == "7.3.4+deb13-amd64"
    assert s.release_of("linux-binary-7.3.4+deb13-cloud-amd64") is None
    assert s.release_of("linux-image-7.3.4+deb13-amd64-dbg") is None
    assert s.package_names("7.3.4+deb13-amd64") == ["linux-binary-7.3.4+deb13-amd64", "linux-modules-7.3.4+deb13-amd64"]
    assert vm.series_for("7.2.13+deb13-amd64") is s
    out = ("linux-binary-7.2.13+deb13-amd64 - Linux 7.2.13 for 64-bit PCs (kernel image)\n"
           "linux-binary-7.3.4+deb13-amd64 - Linux 7.3.4 for 64-bit PCs (kernel image)\n"
           "linux-binary-7.3.4+deb13-rt-amd64 - Linux 7.3.4 for 64-bit PCs (kernel image)\n")
    assert vm.select_package(s, out) == "linux-binary-7.3.4+deb13-amd64"
    assert vm.tier_name(s) == "vm-next" and vm.pin_variable(s) == "NKFRAME_KERNEL_7"


def test_kernel_image_finds_vmlinuz_in_the_modules_dir(tmp_path):
    """7.x packages put vmlinuz in usr/lib/modules/<release>/, not boot/."""
    moddir = tmp_path / "usr" / "lib" / "modules" / "7.3.4+deb13-amd64"
    moddir.mkdir(parents=True)
    (moddir / "vmlinuz").write_bytes(b"k")
    k = vm.KernelImage.from_tree(tmp_path, "7.3.4+deb13-amd64")
    assert k.vmlinuz == moddir / "vmlinuz" and k.modules_dir == moddir


def test_private_apt_configuration_never_names_the_system_sources(tmp_path):
    opts = vm.apt_options(vm.SERIES["7"], tmp_path / "kernels")
    assert opts[0::2] == ["-o"] * (len(opts) // 2)
    assert "Dir::Etc::sourceparts=/nonexistent" in opts[1::2]
    sources = next(o.split("=", 1)[1] for o in opts if o.startswith("Dir::Etc::sourcelist="))
    assert sources.startswith(str(tmp_path)), "the sources list lives beside the kernel cache"
    text = open(sources).read()
    assert "trixie-backports main" in text and "sid main" in text and "signed-by=" in text
    assert all(str(tmp_path) in o for o in opts if o.startswith(("Dir::State::Lists=", "Dir::Cache=")))
    assert vm.apt_options(vm.SERIES["6.12"], tmp_path / "kernels") == [], "bookworm kernels: the system's lists"


def test_plugin_turns_next_kernel_skips_into_failures_in_vm_next(tmp_path):
    import os
    import sys

    (tmp_path / "test_n.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.next_kernel
        def test_lease():
            pytest.skip("no queue-create")

        def test_other():
            pytest.skip("may skip")
    '''))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    netkit: x\n    next_kernel: y\n")
    for required, failed in (("1", 1), ("0", 0)):
        env = dict(os.environ, NKFRAME_REQUIRE_NEXT=required, NKFRAME_REQUIRE_NETKIT="0",
                   PYTHONPATH=str(vm.PLUGIN_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", vm.PLUGIN, "-p", "no:cacheprovider",
                            f"--junitxml={tmp_path / 'j.xml'}", str(tmp_path / "test_n.py")],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
        c = vm.parse_junit(tmp_path / "j.xml")
        assert c.failed == failed and c.skipped == 2 - failed, r.stdout
        if failed:
            assert "next_kernel test skipped" in r.stdout
