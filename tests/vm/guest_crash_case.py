"""A test file the VM runner's crash test (tests/host/test_vm_crash.py) runs in a guest: one test
that passes, then one that makes the guest kernel crash on purpose (sysrq 'c').

Its name does not match test_*.py, so no tier collects it; only a run that names it does.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.root


def test_passes_before_the_crash():
    assert os.uname().sysname == "Linux"


def test_crashes_the_guest_kernel():
    if os.environ.get("NKFRAME_VM") != "1":
        pytest.fail("this crashes the kernel it runs on: only the VM runner may run it")
    with open("/proc/sys/kernel/sysrq", "w") as f:
        f.write("1")
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c")
