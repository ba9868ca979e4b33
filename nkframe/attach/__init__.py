"""Attach mechanisms: one module each (netkit, tcx, tc) with the same verbs.

:func:`backend` returns the module-level backend for a mechanism.  Which mechanism an endpoint
gets per hook is the ``nkframe_attach_select`` hook's answer (the default, in
:mod:`nkframe.builtin`, prefers netkit, then TCX, then TC), asked by
:class:`nkframe.engine.Engine`.
"""

from __future__ import annotations

from nkframe.attach.base import Position, direction_for, hook_for
from nkframe.types import Mechanism

__all__ = ["Position", "backend", "direction_for", "hook_for", "open_pinned"]


def backend(mechanism: Mechanism | str):
    m = Mechanism(mechanism)
    if m is Mechanism.NETKIT:
        from nkframe.attach.netkit import backend as b
    elif m is Mechanism.TCX:
        from nkframe.attach.tcx import backend as b
    else:
        from nkframe.attach.tc import backend as b
    return b


def open_pinned(path: str, *, direction: str = "", ifindex: int = 0, name: str = ""):
    """Whatever nkframe pinned at ``path``, as an AttachedProgram of the right mechanism: a link
    pin is a netkit or TCX link (the kernel's link info says which), a program pin a TC filter's
    program (``direction`` and ``ifindex`` then say where the filter is)."""
    from nkframe import bpf, uapi
    from nkframe.errors import InvalidSpec

    kind = bpf.pin_type(path)
    if kind == "prog":
        return backend(Mechanism.TC).open_pinned(path, direction=direction, ifindex=ifindex, name=name)
    if kind != "link":
        raise InvalidSpec(f"{path}: not a pinned link or program ({kind or 'nothing pinned'})")
    link = bpf.Link.from_pin(path)
    try:
        link_type = link.info().type
    finally:
        link.close()
    mechs = {uapi.BPF_LINK_TYPE_NETKIT: Mechanism.NETKIT, uapi.BPF_LINK_TYPE_TCX: Mechanism.TCX}
    if link_type not in mechs:
        raise InvalidSpec(f"{path}: a link of type {link_type}, not one nkframe attaches (netkit, tcx)")
    return backend(mechs[link_type]).open_pinned(path, direction=direction, ifindex=ifindex, name=name)
