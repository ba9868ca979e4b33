"""Legacy TC attachment: a clsact qdisc and cls_bpf filters in direct-action mode.

For kernels without TCX (before 6.6).  cls_bpf has no link object, so a filter outlives the
process that made it by itself; we pin the program (path name carries the priority) so bpffs
still says what is ours.  Our filters use one handle, :data:`HANDLE`, and priorities in
:data:`PRIO_BASE`..:data:`PRIO_MAX`; a slot holding anything else is never touched.

In direct-action mode a program returning TC_ACT_UNSPEC (-1) hands the packet to the filter with
the next priority, the same "continue" as TCX_NEXT and NETKIT_NEXT, so chains compose.
Lower priority numbers run first.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

import attrs

from nkframe import bpf
from nkframe.attach.base import BaseBackend, Position
from nkframe.attach.links import prog_name
from nkframe.errors import InvalidSpec, KernelError, NkframeError
from nkframe.pins import parse_pin_name
from nkframe.types import AttachedProgram, Mechanism

HANDLE = 0x4E4B  # "NK"
PRIO_BASE = 0xC000
PRIO_MAX = 0xC3FF
PRIO_STEP = 16  # room to insert before/after without renumbering

_POINTS = {"ingress": bpf.TC_INGRESS, "egress": bpf.TC_EGRESS}


def _point(direction: str) -> int:
    try:
        return _POINTS[direction]
    except KeyError:
        raise InvalidSpec(f"tc has no direction {direction!r} (use ingress or egress)") from None


def is_ours(handle: int, priority: int) -> bool:
    return handle == HANDLE and PRIO_BASE <= priority <= PRIO_MAX


def chain_priority(position: int) -> int:
    """The priority of the filter at ``position`` of a chain nkframe attaches in one go."""
    return PRIO_BASE + PRIO_STEP * (position + 1)


class TcBackend(BaseBackend):
    mechanism = Mechanism.TC
    directions = ("ingress", "egress")
    pin_kind = "prog"

    def pin_path(self, layout, scope: str, owner: str, hook: str, position: int, name: str, *,
                 beside: Iterable[AttachedProgram] = ()) -> Path:
        """``<owner>/tc/<hook>/<NN>-<name>-p<prio>``: the name carries the filter's priority,
        which :meth:`attach` takes from it.  ``beside``, a chain that runs meanwhile (an
        upgrade's old one), keeps its priorities: the new filter goes between them, at
        ``position``'s priority plus an offset within :data:`PRIO_STEP`, so the chain keeps its
        order; the offset is the first one free for every position of ``beside``'s hook."""
        taken = {p.tc_priority for p in beside}
        # PRIO_STEP leaves room for these offsets without crossing into the next position.
        for offset in (0, PRIO_STEP // 2, PRIO_STEP // 4, 3 * PRIO_STEP // 4):
            if not taken & {chain_priority(i) + offset for i in range(max(len(taken), position + 1))}:
                return layout.tc_path(scope, owner, hook, position, name, chain_priority(position) + offset)
        raise NkframeError(f"{scope} {owner}: no free tc priorities for the new {hook} chain; "
                           "remove and re-add the endpoint")

    def _ours(self, ifindex: int, direction: str) -> list[tuple[int, int, int, str]]:
        return sorted(
            (f for f in bpf.tc_list(ifindex, _point(direction)) if is_ours(f[0], f[1])),
            key=lambda f: f[1],
        )

    def priority_for(self, ifindex: int, direction: str, position: Position) -> int:
        ours = self._ours(ifindex, direction)
        prios = [f[1] for f in ours]
        if position.where == "tail":
            prio = (max(prios) + PRIO_STEP) if prios else PRIO_BASE + PRIO_STEP * 8
        elif position.where == "head":
            prio = (min(prios) - PRIO_STEP) if prios else PRIO_BASE + PRIO_STEP * 8
        else:
            if position.link_id:
                raise InvalidSpec("tc filters have no links: anchor on a program id")
            idx = next((i for i, f in enumerate(ours) if f[2] == position.prog_id), None)
            if idx is None:
                raise InvalidSpec(f"program {position.prog_id} is not one of our tc filters here")
            here = ours[idx][1]
            if position.where == "before":
                prev = ours[idx - 1][1] if idx > 0 else here - 2 * PRIO_STEP
                prio = (prev + here) // 2
            else:
                nxt = ours[idx + 1][1] if idx + 1 < len(ours) else here + 2 * PRIO_STEP
                prio = (here + nxt) // 2
            if prio in prios:
                raise InvalidSpec("no free tc priority between neighbours; re-attach the chain")
        if not PRIO_BASE <= prio <= PRIO_MAX:
            raise InvalidSpec(f"tc priority {prio:#x} outside nkframe's range; too many programs")
        return prio

    def _attach(self, ifindex: int, direction: str, prog, *, position: Position, pin: str, name: str) -> AttachedProgram:
        """A filter at the priority ``pin``'s name carries (:meth:`pin_path`), or the one
        ``position`` gives when nothing is pinned."""
        point = _point(direction)
        try:
            bpf.tc_hook_create(ifindex, point)
        except KernelError as e:
            raise KernelError(e.errno, f"create clsact qdisc on ifindex {ifindex}") from e
        prio = _pinned_priority(pin) or self.priority_for(ifindex, direction, position)
        if bpf.tc_query(ifindex, point, handle=HANDLE, priority=prio) is not None:
            raise KernelError(errno.EEXIST, f"tc {direction} filter {HANDLE:#x}/{prio:#x} on ifindex {ifindex} is taken")
        prog_id = bpf.tc_attach(ifindex, point, prog.fd, handle=HANDLE, priority=prio)
        if pin:
            try:
                prog.pin(pin)
            except BaseException:
                bpf.tc_detach(ifindex, point, handle=HANDLE, priority=prio)
                raise
        return _filter(name, direction, prog_id, prio, HANDLE, ifindex, pin=pin)

    def update(self, attached: AttachedProgram, new_prog, *, expected_prog_id: int | None = None) -> AttachedProgram:
        point = _point(attached.direction)
        current = bpf.tc_query(attached.ifindex, point, handle=attached.tc_handle, priority=attached.tc_priority)
        if current is None:
            raise KernelError(errno.ENOENT, f"update {attached.name}: its tc filter is gone")
        if expected_prog_id is not None and current != expected_prog_id:
            raise KernelError(
                errno.EPERM,
                f"update {attached.name}: the filter runs program {current}, not {expected_prog_id}",
            )
        # cls_bpf swaps the program of an existing filter under RCU: packets see old or new.
        prog_id = bpf.tc_attach(
            attached.ifindex, point, new_prog.fd, handle=attached.tc_handle, priority=attached.tc_priority, replace=True
        )
        if attached.pin:
            tmp = attached.pin + "_new"  # bpffs refuses "." in names
            new_prog.pin(tmp)
            os.replace(tmp, attached.pin)
        return attrs.evolve(attached, prog_id=prog_id)

    def _detach(self, attached: AttachedProgram) -> None:
        if not is_ours(attached.tc_handle, attached.tc_priority):
            raise InvalidSpec(f"refusing to delete tc filter {attached.tc_handle:#x}/{attached.tc_priority:#x}: not nkframe's")
        try:
            bpf.tc_detach(attached.ifindex, _point(attached.direction), handle=attached.tc_handle, priority=attached.tc_priority)
        except KernelError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                raise

    def query(self, ifindex: int, direction: str) -> list[AttachedProgram]:
        # cls_bpf reports "<name>:[<id>]" (the filter's label); use the program's name
        return [_filter(prog_name(prog_id) or name, direction, prog_id, prio, handle, ifindex)
                for handle, prio, prog_id, name in sorted(bpf.tc_list(ifindex, _point(direction)), key=lambda f: f[1])]

    def open_pinned(self, path: str, *, direction: str = "", ifindex: int = 0, name: str = "", hook: str = "") -> AttachedProgram:
        """The program pinned at ``path``.  cls_bpf has no link object: the pin holds the
        program, its name the priority; ``direction`` (or ``hook``'s) and ``ifindex`` say where
        the filter is."""
        direction = self._direction(direction, hook)
        if direction not in self.directions:
            raise InvalidSpec(f"{path}: a tc pin needs the direction ({'/'.join(self.directions)}); "
                              "ifindex 0 means the device is gone")
        _pos, pname, prio = parse_pin_name(Path(path))
        prog = bpf.Program.from_pin(path)
        try:
            prog_id = prog.id
        finally:
            prog.close()
        return attrs.evolve(_filter(name or pname, direction, prog_id, prio, HANDLE, ifindex, pin=path), hook=hook)


def _pinned_priority(pin: str) -> int:
    """The priority a pin's name carries (``<NN>-<name>-p<prio>``), 0 when it carries none."""
    try:
        return parse_pin_name(Path(pin))[2] if pin else 0
    except ValueError:
        return 0


def _filter(name: str, direction: str, prog_id: int, prio: int, handle: int, ifindex: int, *, pin: str = "") -> AttachedProgram:
    return AttachedProgram(name=name, hook="", direction=direction, mechanism=Mechanism.TC, prog_id=prog_id,
                           pin=pin, tc_priority=prio, tc_handle=handle, ifindex=ifindex)


backend = TcBackend()
