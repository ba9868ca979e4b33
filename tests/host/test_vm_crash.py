"""A guest kernel that dies is reported plainly, with the results of the tests that finished.

Boots Debian's 6.12 kernel (cached by the VM tiers) once, runs tests/vm/guest_crash_case.py in
it: one test passes, the next crashes the guest kernel with sysrq 'c'.  The tier must fail, say
that the kernel died, which test was running and on which release, show the panic's first
lines, and still count the test that passed before.
"""

from __future__ import annotations

import os

import pytest

from tools import vm

pytestmark = [pytest.mark.root, pytest.mark.vm,
              pytest.mark.skipif(os.environ.get("NKFRAME_VM") == "1",
                                 reason="boots a VM: runs on the host, not nested in a VM tier")]


def test_a_guest_kernel_crash_is_reported_with_the_results_before_it(tmp_path):
    logged: list[str] = []
    r = vm.run_pytest("6.12", ["tests/vm/guest_crash_case.py"], results=tmp_path,
                      timeout=600, echo=None, name="crash-check", log=logged.append)
    assert not r.ok
    assert r.release.startswith("6.12.")
    assert r.problem is not None
    assert f"the guest kernel {r.release} died" in r.problem, r.problem
    assert "while running tests/vm/guest_crash_case.py::test_crashes_the_guest_kernel" in r.problem
    assert "sysrq" in r.problem.lower() or "panic" in r.problem.lower() or "oops" in r.problem.lower()
    # The passing test's result survived the crash; the tier counts itself as one failure.
    assert r.counts.passed == 1, r.counts
    assert r.counts.bad >= 1
    text = "\n".join(logged)
    assert "GUEST KERNEL CRASH" in text and r.release in text
    assert "Kernel panic" in text or "sysrq" in text.lower()
