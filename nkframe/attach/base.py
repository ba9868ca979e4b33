"""What every attach mechanism shares: positions, the attachment value, the verbs.

The three mechanisms (``netkit``, ``tcx``, ``tc``) have the same verbs:

* ``attach(ifindex, direction, prog, *, position, pin) -> AttachedProgram``
* ``update(attached, new_prog, *, expected_prog_id)`` — replace the program in place, refusing
  if someone else changed it meanwhile
* ``detach(attached)``
* ``query(ifindex, direction) -> list[AttachedProgram]`` — in the order the kernel runs them
* ``open_pinned(path, ...) -> AttachedProgram`` — rebuild from bpffs

``direction`` is the mechanism's own word: netkit ``primary``/``peer``, tcx and tc
``ingress``/``egress``.  :func:`direction_for` maps the engine's hook points onto them.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from nkframe.errors import InvalidSpec
from nkframe.types import AttachedProgram, DeviceHook, Hook, Mechanism


@attrs.frozen
class Position:
    """Where a new program goes in a chain.

    Built with :meth:`head`, :meth:`tail`, :meth:`before` or :meth:`after`; ``before``/``after``
    take a program id or a link id (``link=True``).  TC expresses the same thing through filter
    priorities, which the tc module derives from the position.
    """

    where: str = "tail"  # head | tail | before | after
    prog_id: int = 0
    link_id: int = 0

    @classmethod
    def head(cls) -> "Position":
        return cls("head")

    @classmethod
    def tail(cls) -> "Position":
        return cls("tail")

    @classmethod
    def before(cls, *, prog_id: int = 0, link_id: int = 0) -> "Position":
        _one_of(prog_id, link_id)
        return cls("before", prog_id, link_id)

    @classmethod
    def after(cls, *, prog_id: int = 0, link_id: int = 0) -> "Position":
        _one_of(prog_id, link_id)
        return cls("after", prog_id, link_id)


def _one_of(prog_id: int, link_id: int) -> None:
    if bool(prog_id) == bool(link_id):
        raise InvalidSpec("a position is relative to exactly one of prog_id or link_id")


class Backend(Protocol):
    mechanism: Mechanism
    directions: tuple[str, ...]

    def attach(self, ifindex: int, direction: str, prog, *, position: Position = ..., pin: str | None = None, name: str = "") -> AttachedProgram: ...

    def update(self, attached: AttachedProgram, new_prog, *, expected_prog_id: int | None = None) -> AttachedProgram: ...

    def detach(self, attached: AttachedProgram) -> None: ...

    def query(self, ifindex: int, direction: str) -> list[AttachedProgram]: ...

    def open_pinned(self, path: str, *, direction: str = "", ifindex: int = 0, name: str = "") -> AttachedProgram: ...


_HOOK_DIRECTIONS = {
    # All endpoint programs sit on the node-side device.  A packet the pod sends arrives there
    # (veth: ingress of the host end); netkit runs it as the *peer* program, inside the peer's
    # xmit.  A packet towards the pod leaves the node-side device (egress / netkit primary).
    Mechanism.NETKIT: {Hook.FROM_POD: "peer", Hook.TO_POD: "primary"},
    Mechanism.TCX: {
        Hook.FROM_POD: "ingress",
        Hook.TO_POD: "egress",
        DeviceHook.INGRESS: "ingress",
        DeviceHook.EGRESS: "egress",
    },
    Mechanism.TC: {
        Hook.FROM_POD: "ingress",
        Hook.TO_POD: "egress",
        DeviceHook.INGRESS: "ingress",
        DeviceHook.EGRESS: "egress",
    },
}


def direction_for(mechanism: Mechanism, hook: Hook | DeviceHook | str) -> str:
    """The mechanism's direction word for an engine hook point."""
    table = _HOOK_DIRECTIONS[Mechanism(mechanism)]
    for k, v in table.items():
        if k.value == str(hook):
            return v
    raise InvalidSpec(f"hook {hook!r} cannot be served by {mechanism}")


def hook_for(mechanism: Mechanism, direction: str, *, device: bool = False) -> str:
    """Inverse of :func:`direction_for` (endpoint hooks unless ``device``)."""
    for k, v in _HOOK_DIRECTIONS[Mechanism(mechanism)].items():
        if v == direction and isinstance(k, DeviceHook) == device:
            return k.value
    raise InvalidSpec(f"{mechanism} direction {direction!r} has no hook point")
