"""Link-based attachment shared by netkit and TCX.

netkit (BPF_NETKIT_PRIMARY/PEER, 6.7+) and TCX (BPF_TCX_INGRESS/EGRESS, 6.6+) use the same
multi-program API in the kernel (``bpf_mprog``): ``BPF_LINK_CREATE`` with an anchor given by
``BPF_F_BEFORE``/``BPF_F_AFTER`` plus a relative program or link (``BPF_F_LINK``/``BPF_F_ID``),
an ``expected_revision`` to refuse a chain that changed meanwhile, ``BPF_LINK_UPDATE`` to swap a
program atomically, and ``BPF_PROG_QUERY`` listing programs and link ids in run order.  With no
anchor flag the kernel appends.  So one class serves both, with their attach-type numbers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

import attrs

from nkframe import bpf
from nkframe.attach.base import BaseBackend, Position
from nkframe.errors import InvalidSpec, KernelError, NotSupported
from nkframe.types import AttachedProgram, Mechanism


class LinkBackend(BaseBackend):
    """One link-based mechanism: its attach types by direction."""

    pin_kind = "link"

    def __init__(self, mechanism: Mechanism, attach_types: dict[str, int], feature: str):
        self.mechanism = mechanism
        self.attach_types = attach_types
        self.directions = tuple(attach_types)
        self.feature = feature

    def _type(self, direction: str) -> int:
        try:
            return self.attach_types[direction]
        except KeyError:
            raise InvalidSpec(
                f"{self.mechanism} has no direction {direction!r} (use one of {', '.join(self.directions)})"
            ) from None

    @staticmethod
    def _anchor(position: Position) -> tuple[int, int, int]:
        """(flags, relative_fd, relative_id) for a position."""
        if position.where == "tail":
            return 0, 0, 0  # the kernel appends when no anchor is given
        if position.where == "head":
            return bpf.BPF_F_BEFORE, 0, 0  # before with no relative object: the very first
        flag = bpf.BPF_F_BEFORE if position.where == "before" else bpf.BPF_F_AFTER
        if position.link_id:
            return flag | bpf.BPF_F_LINK | bpf.BPF_F_ID, 0, position.link_id
        return flag | bpf.BPF_F_ID, 0, position.prog_id

    def pin_path(self, layout, scope: str, owner: str, hook: str, position: int, name: str, *,
                 beside: Iterable[AttachedProgram] = ()) -> Path:
        """``<owner>/links/<hook>/<NN>-<name>``; ``beside`` (a chain running meanwhile) does
        not matter: a link's place in the chain is not in its name."""
        return layout.link_path(scope, owner, hook, position, name)

    def _attach(self, ifindex: int, direction: str, prog, *, position: Position, pin: str, name: str) -> AttachedProgram:
        attach_type = self._type(direction)
        flags, rel_fd, rel_id = self._anchor(position)
        try:
            link = bpf.Link.create(prog.fd, ifindex, attach_type, flags=flags, relative_fd=rel_fd, relative_id=rel_id)
        except KernelError as e:
            if e.errno == errno.EINVAL and not _known_attach_type(attach_type):
                raise NotSupported(
                    self.feature, f"the kernel does not know {self.mechanism} {direction} links"
                ) from e
            raise KernelError(e.errno, f"attach {name} as {self.mechanism} {direction} on ifindex {ifindex}") from e
        try:
            info = link.info()
            if pin:
                link.pin(pin)
        except BaseException:
            link.detach()
            link.close()
            raise
        link.close()  # the pin (or nothing, for callers that detach right away) keeps it alive
        return self._attached(info, name=name, direction=direction, pin=pin, ifindex=ifindex)

    def _attached(self, info, *, name: str, direction: str, pin: str, ifindex: int, hook: str = "") -> AttachedProgram:
        return AttachedProgram(name=name, hook=hook, direction=direction, mechanism=self.mechanism,
                               prog_id=info.prog_id, link_id=info.id, pin=pin, ifindex=ifindex)

    def attach_unpinned(self, ifindex: int, direction: str, prog, *, position: Position = Position.tail()):
        """Attach and return the open :class:`nkframe.bpf.Link` (caller owns it; closing the
        last fd without a pin detaches)."""
        flags, rel_fd, rel_id = self._anchor(position)
        return bpf.Link.create(prog.fd, ifindex, self._type(direction), flags=flags, relative_fd=rel_fd, relative_id=rel_id)

    def update(self, attached: AttachedProgram, new_prog, *, expected_prog_id: int | None = None) -> AttachedProgram:
        link = self._open(attached)
        try:
            old = None
            if expected_prog_id is not None:
                old = bpf.Program.from_id(expected_prog_id)
            try:
                link.update(new_prog.fd, old_prog_fd=old.fd if old else None)
            except KernelError as e:
                if e.errno == errno.EPERM and old is not None:
                    raise KernelError(
                        e.errno,
                        f"update {attached.name}: the link no longer runs program {expected_prog_id} "
                        "(changed by someone else); reconcile and retry",
                    ) from e
                raise
            finally:
                if old is not None:
                    old.close()
            info = link.info()
        finally:
            link.close()
        return attrs.evolve(attached, prog_id=info.prog_id, link_id=info.id)

    def _detach(self, attached: AttachedProgram) -> None:
        """Detach explicitly (works while other fds or pins still hold the link)."""
        try:
            link = self._open(attached)
        except KernelError as e:
            if e.errno == errno.ENOENT:
                return  # already gone
            raise
        try:
            try:
                link.detach()
            except KernelError as e:
                if e.errno not in (errno.ENOLINK, errno.ENOENT):
                    raise
        finally:
            link.close()

    def query(self, ifindex: int, direction: str) -> list[AttachedProgram]:
        res = bpf.prog_query(ifindex, self._type(direction))
        return [
            AttachedProgram(name=prog_name(prog_id), hook="", direction=direction, mechanism=self.mechanism,
                            prog_id=prog_id, link_id=link_id, ifindex=ifindex)
            for prog_id, link_id in zip(res.prog_ids, res.link_ids or (0,) * len(res.prog_ids))
        ]

    def revision(self, ifindex: int, direction: str) -> int:
        return bpf.prog_query(ifindex, self._type(direction)).revision

    def open_pinned(self, path: str, *, direction: str = "", ifindex: int = 0, name: str = "", hook: str = "") -> AttachedProgram:
        """The link pinned at ``path``; its direction and device come from the kernel's link
        info (``direction``, or ``hook``'s, is the fallback for a link the kernel no longer
        names one for; ``ifindex`` is ignored: a detached link reports ifindex 0, and callers
        rely on that)."""
        link = bpf.Link.from_pin(path)
        try:
            info = link.info()
        finally:
            link.close()
        direction = next((d for d, t in self.attach_types.items() if t == info.attach_type),
                         self._direction(direction, hook))
        return self._attached(info, name=name or prog_name(info.prog_id), direction=direction, pin=path,
                              ifindex=info.ifindex, hook=hook)

    def _open(self, attached: AttachedProgram):
        if attached.pin and os.path.exists(attached.pin):
            return bpf.Link.from_pin(attached.pin)
        if attached.link_id:
            return bpf.Link.from_id(attached.link_id)
        raise KernelError(errno.ENOENT, f"{attached.name}: no pin and no link id to open")


def prog_name(prog_id: int) -> str:
    try:
        p = bpf.Program.from_id(prog_id)
    except KernelError:
        return ""
    try:
        return p.info().name
    finally:
        p.close()


def _known_attach_type(attach_type: int) -> bool:
    from nkframe import probe

    if attach_type in (bpf.BPF_TCX_INGRESS, bpf.BPF_TCX_EGRESS):
        return probe.features().supported("tcx")
    return probe.features().supported("netkit")
