"""Attach mechanisms: one module each (netkit, tcx, tc) with the same verbs.

:func:`backend` returns the module-level backend for a mechanism.  Which mechanism an endpoint
gets per hook is the ``nkframe_attach_select`` hook's answer (the default, in
:mod:`nkframe.builtin`, prefers netkit, then TCX, then TC), asked by
:class:`nkframe.engine.Engine`.
"""

from __future__ import annotations

from nkframe.attach.base import Position, direction_for, hook_for
from nkframe.types import Mechanism

__all__ = ["Position", "backend", "direction_for", "hook_for"]


def backend(mechanism: Mechanism | str):
    m = Mechanism(mechanism)
    if m is Mechanism.NETKIT:
        from nkframe.attach.netkit import backend as b
    elif m is Mechanism.TCX:
        from nkframe.attach.tcx import backend as b
    else:
        from nkframe.attach.tc import backend as b
    return b
