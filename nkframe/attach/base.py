"""What every attach mechanism shares: positions, the attachment value, the verbs.

The three mechanisms (``netkit``, ``tcx``, ``tc``) implement :class:`Backend`, with one
signature for each verb (``tests/unit/test_attach_protocol.py`` compares them):

* ``attach(ifindex, direction, prog, *, position, pin, name, hook) -> AttachedProgram``
* ``update(attached, new_prog, *, expected_prog_id)`` — replace the program in place, refusing
  if someone else changed it meanwhile
* ``upsert(ifindex, direction, prog, *, position, pin, name, hook) -> (AttachedProgram, new)``
  — update what is pinned at ``pin``, or attach when nothing is
* ``detach(attached)``
* ``query(ifindex, direction) -> list[AttachedProgram]`` — in the order the kernel runs them
* ``open_pinned(path, *, direction, ifindex, name, hook) -> AttachedProgram`` — rebuild from bpffs
* ``pin_path(layout, scope, owner, hook, position, name, *, beside)`` — where nkframe pins it

``direction`` is the mechanism's own word: netkit ``primary``/``peer``, tcx and tc
``ingress``/``egress``.  :func:`direction_for` maps the engine's hook points onto them; an
:class:`AttachedProgram` carries both (``hook`` is ``""`` for a program nkframe did not attach).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Protocol

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
    """The verbs of one attach mechanism; every backend has exactly these signatures."""

    mechanism: Mechanism
    directions: tuple[str, ...]
    pin_kind: str  # what a pin holds: "link" (netkit, TCX) or "prog" (TC: cls_bpf has no link)

    def pin_path(self, layout, scope: str, owner: str, hook: str, position: int, name: str, *, beside: Iterable[AttachedProgram] = ()) -> Path: ...

    def attach(self, ifindex: int, direction: str, prog, *, position: Position = Position.tail(), pin: str | None = None, name: str = "", hook: str = "") -> AttachedProgram: ...

    def update(self, attached: AttachedProgram, new_prog, *, expected_prog_id: int | None = None) -> AttachedProgram: ...

    def upsert(self, ifindex: int, direction: str, prog, *, position: Position = Position.tail(), pin: str, name: str = "", hook: str = "") -> tuple[AttachedProgram, bool]: ...

    def detach(self, attached: AttachedProgram) -> None: ...

    def query(self, ifindex: int, direction: str) -> list[AttachedProgram]: ...

    def open_pinned(self, path: str, *, direction: str = "", ifindex: int = 0, name: str = "", hook: str = "") -> AttachedProgram: ...


class BaseBackend:
    """The verbs written once for every mechanism; a backend supplies ``_attach`` (make the
    kernel object and pin it), ``update``, ``_detach`` (undo it in the kernel), ``query``,
    ``open_pinned`` and ``pin_path``."""

    mechanism: Mechanism
    directions: tuple[str, ...]
    pin_kind: str

    def attach(self, ifindex: int, direction: str, prog, *, position: Position = Position.tail(),
               pin: str | None = None, name: str = "", hook: str = "") -> AttachedProgram:
        """Attach ``prog`` on ``ifindex`` in ``direction`` at ``position`` and pin it at ``pin``
        (nothing pinned: the caller detaches it; a TC filter stays until detached).  ``hook``
        is the engine's hook point, kept in the returned value."""
        if pin:
            os.makedirs(os.path.dirname(pin), exist_ok=True)
        att = self._attach(ifindex, direction, prog, position=position, pin=pin or "", name=name or prog.name)
        return attrs.evolve(att, hook=hook)

    def upsert(self, ifindex: int, direction: str, prog, *, position: Position = Position.tail(),
               pin: str, name: str = "", hook: str = "") -> tuple[AttachedProgram, bool]:
        """Run ``prog`` in the attachment pinned at ``pin``, replacing its program in place, or
        attach anew when nothing is pinned there.  Returns the attachment and whether it is new
        (the caller's undo detaches a new one)."""
        if os.path.exists(pin):
            old = self.open_pinned(pin, direction=direction, ifindex=ifindex, name=name, hook=hook)
            return self.update(old, prog), False
        return self.attach(ifindex, direction, prog, position=position, pin=pin, name=name, hook=hook), True

    def detach(self, attached: AttachedProgram) -> None:
        """Take the program off its device (already gone is fine), then unpin it."""
        self._detach(attached)
        if attached.pin:
            try:
                os.unlink(attached.pin)
            except FileNotFoundError:
                pass

    def _direction(self, direction: str, hook: str) -> str:
        """``direction``, or the one ``hook`` maps to on this mechanism."""
        return direction or (direction_for(self.mechanism, hook) if hook else "")


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
