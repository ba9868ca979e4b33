"""Named fault points for crash-consistency tests.

``point("add.after_device")`` does nothing unless the environment variable ``NKFRAME_FAULT``
names that point; then it acts as ``NKFRAME_FAULT_ACTION`` says: ``kill`` (default: SIGKILL the
process, as a crash would) or ``raise`` (an exception, to exercise rollback).  Tests set the
variables in a child process; production code never does, and an unset variable costs one dict
lookup.
"""

from __future__ import annotations

import os
import signal

ENV, ACTION_ENV = "NKFRAME_FAULT", "NKFRAME_FAULT_ACTION"

# Every point, in the order an add/remove passes them (tests iterate over these).
ADD_POINTS = (
    "add.after_pin_dir",
    "add.after_spec",
    "add.after_device",
    "add.after_load",
    "add.after_attach",
    "add.after_configure",
    "add.after_open",
)
# A VM endpoint's add (netkit single device) passes these instead of load/attach: the device
# made in the node namespace, each lease, just before the move into the pod, then the common ones.
SINGLE_ADD_POINTS = (
    "add.after_spec",
    "add.after_single_create",
    "add.after_lease",
    "add.before_move",
    "add.after_device",
    "add.after_open",
)
REMOVE_POINTS = (
    "remove.after_device",
    "remove.after_unconfigure",
    "remove.after_detach",
)


class InjectedFault(RuntimeError):
    pass


def point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    if os.environ.get(ACTION_ENV, "kill") == "raise":
        raise InjectedFault(f"injected fault at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
