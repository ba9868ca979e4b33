"""Attach mechanisms: one module each (netkit, tcx, tc) with the same verbs (:class:`Backend`).

:func:`backend` returns the module-level backend for a mechanism, :func:`open_pinned` the
attachment pinned at a path with the backend picked from the pin, :func:`available` which
mechanisms a kernel offers for a device, :func:`query_all` every program on a device.  Which
mechanism an endpoint gets per hook is the ``nkframe_attach_select`` hook's answer (the default,
in :mod:`nkframe.builtin`, prefers netkit, then TCX, then TC), asked by
:class:`nkframe.engine.Engine`; all that is mechanism-specific stays in this package.
"""

from __future__ import annotations

import errno

from nkframe.attach.base import Backend, Position, direction_for, hook_for
from nkframe.errors import KernelError, NotSupported
from nkframe.types import AttachedProgram, DeviceKind, Mechanism

__all__ = ["Backend", "Position", "available", "backend", "direction_for", "hook_for", "open_pinned",
           "query_all", "why_not"]


def backend(mechanism: Mechanism | str) -> Backend:
    m = Mechanism(mechanism)
    if m is Mechanism.NETKIT:
        from nkframe.attach.netkit import backend as b
    elif m is Mechanism.TCX:
        from nkframe.attach.tcx import backend as b
    else:
        from nkframe.attach.tc import backend as b
    return b


def open_pinned(path: str, *, direction: str = "", ifindex: int = 0, name: str = "", hook: str = ""):
    """Whatever nkframe pinned at ``path``, as an AttachedProgram of the right mechanism: a link
    pin is a netkit or TCX link (the kernel's link info says which), a program pin a TC filter's
    program (``direction``, or the one ``hook`` maps to, and ``ifindex`` then say where the
    filter is).  ``hook``, the engine's hook point, is kept in the returned value."""
    from nkframe import bpf, uapi
    from nkframe.errors import InvalidSpec

    kind = bpf.pin_type(path)
    if kind == "prog":
        return backend(Mechanism.TC).open_pinned(path, direction=direction, ifindex=ifindex, name=name, hook=hook)
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
    return backend(mechs[link_type]).open_pinned(path, direction=direction, ifindex=ifindex, name=name, hook=hook)


def available(features, device_kind: DeviceKind | None = None) -> list[Mechanism]:
    """The mechanisms ``features`` (a :class:`nkframe.probe.Features`) support for a device of
    ``device_kind`` (``None``: a node device, never netkit's), best first: netkit links need a
    netkit device, TCX and TC take any."""
    out = []
    if device_kind is DeviceKind.NETKIT and features.supported("netkit"):
        out.append(Mechanism.NETKIT)
    out += [m for m in (Mechanism.TCX, Mechanism.TC) if features.supported(m.value)]
    return out


def why_not(mechanism: Mechanism | None, features, device_kind: DeviceKind | None = None, device_reason: str = "") -> str:
    """Why ``mechanism`` is not available for the device (``None``: why none is, which is
    the reason the last resort, TC, is not)."""
    mech = Mechanism(mechanism) if mechanism is not None else Mechanism.TC
    if mech is Mechanism.NETKIT and device_kind is not None and device_kind is not DeviceKind.NETKIT:
        return f"netkit links need a netkit device, this endpoint has {device_kind} ({device_reason})"
    return features[mech.value].reason


def query_all(ifindex: int, *, netkit: bool) -> list[AttachedProgram]:
    """Every program on ``ifindex`` in the caller's namespace, by every mechanism (netkit's only
    when ``netkit``: the device is a netkit primary), each mechanism in the kernel's run order.
    A mechanism the kernel or the device lacks shows nothing."""
    out: list[AttachedProgram] = []
    mechs = [Mechanism.NETKIT] if netkit else []
    for mech in mechs + [Mechanism.TCX, Mechanism.TC]:
        b = backend(mech)
        for direction in b.directions:
            try:
                out.extend(b.query(ifindex, direction))
            except NotSupported:
                continue
            except KernelError as e:
                if e.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
                    continue
                raise
    return out
