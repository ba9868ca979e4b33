"""pytest plugin for the VM tiers, loaded with ``-p pytest_nkframe_vm`` (``tests/vm`` on the path).

In the vm-netkit tier the kernel has netkit by construction, so a ``netkit`` test that skips is
a broken test or a broken probe, not a kernel without the feature: with
``NKFRAME_REQUIRE_NETKIT=1`` such a skip is reported as a failure, with the skip's reason.
Expected failures (``xfail``) are left alone: pytest reports those as skips too.
"""

from __future__ import annotations

import os

import pytest


def _required() -> bool:
    return os.environ.get("NKFRAME_REQUIRE_NETKIT") == "1"


def pytest_report_header(config):
    if os.environ.get("NKFRAME_VM") == "1":
        rule = "netkit tests must run" if _required() else "netkit tests may skip"
        return (f"nkframe VM tier: kernel {os.uname().release} "
                f"(series {os.environ.get('NKFRAME_VM_SERIES', '?')}); {rule}")
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (_required() and report.skipped and item.get_closest_marker("netkit")):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"netkit test skipped in a tier whose kernel has netkit "
        f"(NKFRAME_REQUIRE_NETKIT=1, kernel {os.uname().release}): {reason}"
    )
    item.config.stash.setdefault(_FORCED, []).append(item.nodeid)


_FORCED = pytest.StashKey[list]()
_RAN = pytest.StashKey[dict]()


def pytest_collection_modifyitems(config, items):
    config.stash[_RAN] = {"netkit": sum(1 for i in items if i.get_closest_marker("netkit"))}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _required():
        return
    selected = config.stash.get(_RAN, {}).get("netkit", 0)
    forced = config.stash.get(_FORCED, [])
    terminalreporter.write_line(
        f"nkframe VM: {selected} netkit test(s) selected, {len(forced)} skipped and so failed"
    )
