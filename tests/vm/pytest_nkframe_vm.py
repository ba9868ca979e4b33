"""pytest plugin for the VM tiers, loaded with ``-p pytest_nkframe_vm`` (``tests/vm`` on the path).

In the vm-netkit tier the kernel has netkit by construction, so a ``netkit`` test that skips is
a broken test or a broken probe, not a kernel without the feature: with
``NKFRAME_REQUIRE_NETKIT=1`` such a skip is reported as a failure, with the skip's reason.
Expected failures (``xfail``) are left alone: pytest reports those as skips too.  Likewise in
the vm-next tier (Linux 7.x) with ``NKFRAME_REQUIRE_NEXT=1``: a ``next_kernel`` test (netkit
single mode, queue leasing) that skips there fails.

With ``NKFRAME_VM_SELECT=kernel`` (what ``tools/vm.py`` sets unless told otherwise) only the
kernel-dependent tests run: every ``netkit`` test, and those listed in ``kernel-tests.txt``
beside this file.  The rest are deselected (pytest reports the number).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SELECTION_FILE = Path(__file__).with_name("kernel-tests.txt")


def load_selection(path: Path = SELECTION_FILE) -> list[str]:
    """Node id prefixes from the selection file (comments and blank lines ignored)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def selected(nodeid: str, is_netkit: bool, prefixes: list[str]) -> bool:
    """Whether a test belongs to the VM tiers' kernel-dependent selection.

    A prefix is a directory (``tests/vm/``), a file (``tests/host/test_probe.py``) or a test
    (``file::test``, which covers its parametrized cases too).
    """
    if is_netkit:
        return True
    for p in prefixes:
        if p.endswith(".py"):
            if nodeid.startswith(p + "::"):
                return True
        elif "::" in p:
            if nodeid == p or nodeid.startswith((p + "::", p + "[")):
                return True
        elif nodeid.startswith(p.rstrip("/") + "/"):
            return True
    return False


def _required() -> bool:
    return os.environ.get("NKFRAME_REQUIRE_NETKIT") == "1"


def _required_markers() -> set[str]:
    """Markers whose tests must not skip in this tier."""
    out = set()
    if _required():
        out.add("netkit")
    if os.environ.get("NKFRAME_REQUIRE_NEXT") == "1":
        out.add("next_kernel")
    return out


def _kernel_marked(item) -> bool:
    return bool(item.get_closest_marker("netkit") or item.get_closest_marker("next_kernel"))


def pytest_report_header(config):
    if os.environ.get("NKFRAME_VM") == "1":
        rule = "netkit tests must run" if _required() else "netkit tests may skip"
        scope = ("kernel-dependent tests only (netkit-marked + tests/vm/kernel-tests.txt; "
                 "NKFRAME_VM_SELECT=all for everything)"
                 if os.environ.get("NKFRAME_VM_SELECT") == "kernel" else
                 "netkit- and next_kernel-marked + tests/vm/next-tests.txt"
                 if os.environ.get("NKFRAME_VM_SELECT") == "next" else "all selected tests")
        return (f"nkframe VM tier: kernel {os.uname().release} "
                f"(series {os.environ.get('NKFRAME_VM_SERIES', '?')}); {rule}; {scope}")
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    must = [m for m in sorted(_required_markers()) if item.get_closest_marker(m)]
    if not (must and report.skipped):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    what = ("netkit test skipped in a tier whose kernel has netkit (NKFRAME_REQUIRE_NETKIT=1"
            if must[0] == "netkit" else
            "next_kernel test skipped in the tier whose kernel has single mode and leasing (NKFRAME_REQUIRE_NEXT=1")
    report.longrepr = f"{what}, kernel {os.uname().release}): {reason}"
    item.config.stash.setdefault(_FORCED, []).append(item.nodeid)


_FORCED = pytest.StashKey[list]()
_RAN = pytest.StashKey[dict]()


#: NKFRAME_VM_SELECT -> the selection file: vm-netkit and vm-legacy run the kernel-dependent
#: tests; vm-next (7.x) the netkit and next_kernel tests plus what is new in those kernels.
SELECTIONS = {"kernel": SELECTION_FILE, "next": SELECTION_FILE.with_name("next-tests.txt")}


def pytest_collection_modifyitems(config, items):
    which = os.environ.get("NKFRAME_VM_SELECT")
    if which in SELECTIONS:
        prefixes = load_selection(SELECTIONS[which])
        keep, drop = [], []
        for item in items:
            (keep if selected(item.nodeid, _kernel_marked(item), prefixes)
             else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    config.stash[_RAN] = {"netkit": sum(1 for i in items if i.get_closest_marker("netkit"))}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _required():
        return
    selected = config.stash.get(_RAN, {}).get("netkit", 0)
    forced = config.stash.get(_FORCED, [])
    terminalreporter.write_line(
        f"nkframe VM: {selected} netkit test(s) selected, {len(forced)} skipped and so failed"
    )


# --------------------------------------------------------------------------------------------
# Results streamed out as each test finishes
# --------------------------------------------------------------------------------------------
# pytest writes its JUnit XML only when the session ends; a guest kernel that dies half-way
# (an oops in interrupt context panics the guest) would take every result with it.  With
# NKFRAME_VM_PROGRESS set, each test's start and outcome are appended to that file (JSON lines,
# fsync'd, on the directory shared with the host), so the runner can report what finished and
# which test was running when the guest died.

_PROGRESS = pytest.StashKey[object]()


def _progress_write(config, record: dict) -> None:
    out = config.stash.get(_PROGRESS, None)
    if out is None:
        return
    import json

    out.write(json.dumps(record) + "\n")
    out.flush()
    os.fsync(out.fileno())


#: pytest_runtest_logreport gets no config argument: the session's, kept here.
_CONFIG: list = []


def pytest_configure(config):
    _CONFIG[:] = [config]
    path = os.environ.get("NKFRAME_VM_PROGRESS")
    if path:
        config.stash[_PROGRESS] = open(path, "a", buffering=1)


def pytest_unconfigure(config):
    out = config.stash.get(_PROGRESS, None)
    if out is not None:
        out.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    _progress_write(item.config, {"event": "start", "nodeid": item.nodeid})


def pytest_runtest_logreport(report):
    config = _CONFIG[0] if _CONFIG else None
    if config is None:
        return
    # One outcome per test: the call phase, or a setup/teardown phase that did not pass.
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome
        if report.skipped and hasattr(report, "wasxfail"):
            outcome = "skipped"
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
        _progress_write(config, {"event": "result", "nodeid": report.nodeid, "when": report.when,
                                 "outcome": outcome, "reason": reason})

