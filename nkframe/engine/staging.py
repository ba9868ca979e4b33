"""Replacing a running chain without a gap: switching mechanism and upgrading programs.

Both follow one algorithm, **stage, cut over, settle**:

1. *stage*: the new chain is loaded and attached next to the old one, pinned under
   ``<endpoint>/staging-<random>/`` (:data:`STAGING_PREFIX`), so every packet meets one chain or
   the other.  For a moment both run, which the programs tolerate (each hands on with
   "continue"; the first redirect wins).  A failure here detaches what was staged: the old
   chain runs as before.
2. *cut over*: the old chain is detached (each detach unlinks its pin).
3. *settle*: the staged ``links``/``tc`` directories move into place; the staging directory goes.

A crash can stop this anywhere.  :meth:`StagingMixin._settle_staged` (run by reconcile, and by
an upgrade before it starts) decides from what bpffs and the kernel show: while the old chain is
whole, the crash came during 1 and the staged chain may be partial, so it is detached; otherwise
2 had begun, so 1 was complete: 2 and 3 are finished.

Upgrades take shortcuts where the kernel offers an atomic swap, and then stage nothing:

* netkit / TCX with the same chain shape: ``BPF_LINK_UPDATE`` swaps each link's program
  (``BPF_F_REPLACE`` with the old program, so a concurrent change is refused, not overwritten);
  the pinned link stays.
* TC (cls_bpf has no link): each new program is attached as a filter at a free priority next to
  the old one, *then* the old filter is deleted.  The pin's name carries the priority, so bpffs
  ends up describing exactly the filters on the device.

Maps are pinned and the loader reuses pinned maps, so counters and tables carry over.  A new
version whose map definition is incompatible with the pinned map fails to load and changes
nothing.  An upgrade never changes the mechanism, and ``nkframe_endpoint_configure`` is not
called again: configuration lives in the maps that carry over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import attrs

from nkframe import attach as attach_mod
from nkframe import netns, pins, specstore
from nkframe.context import DeviceInfo, EndpointContext
from nkframe.engine.chains import close_all, detacher, list_attached, programs_by_spec, staged
from nkframe.errors import EndpointNotFound, InvalidSpec, NkframeError
from nkframe.types import AttachedProgram, AttachMode, DeviceKind, Endpoint

log = logging.getLogger(__name__)

STAGING_PREFIX = "staging-"
# Earlier versions staged switches and upgrades under their own prefixes; pins they left are
# settled the same way.
_ALL_STAGING_PREFIXES = (STAGING_PREFIX, "switch-", "upgrade-")


def is_staging_dir(path: Path) -> bool:
    return path.is_dir() and path.name.startswith(_ALL_STAGING_PREFIXES)


class StagingMixin:
    """switch_mechanism, upgrade, and settling what a crash left staged."""

    def _existing_context(self, spec) -> tuple[EndpointContext, object]:
        """An EndpointContext for an endpoint that exists, with its device as the kernel has it."""
        from nkframe.netlink import links

        st = links.get_link(spec.node_ifname, netns=self.node_netns)
        ctx = EndpointContext(spec=spec, node_netns=self.node_netns, bpffs_root=str(self.layout.root), features=self.features)
        ctx.device = DeviceInfo(
            kind=DeviceKind.NETKIT if st.kind == "netkit" else DeviceKind.VETH,
            mode=spec.mode,
            node_ifname=spec.node_ifname,
            node_ifindex=st.ifindex,
            pod_ifname=spec.ifname,
            pod_ifindex=0,
            reason="existing device",
        )
        return ctx, st

    # -- switching mechanism (e.g. TC -> TCX after a kernel upgrade)

    def switch_mechanism(self, endpoint_id: str, attach: AttachMode | str = AttachMode.AUTO) -> Endpoint:
        """Re-attach an endpoint's programs with another mechanism, never leaving a gap (stage,
        cut over, settle: see the module's docstring).  Maps pinned for the endpoint are reused,
        so counters and state carry over."""
        mode = AttachMode(str(attach).lower())
        with self._lock:
            old = self.get_endpoint(endpoint_id)
            if old.spec.single:
                raise InvalidSpec(f"endpoint {endpoint_id} is a netkit single device: it has no programs "
                                  "and no attach mechanism to switch")
            ctx, _st = self._existing_context(attrs.evolve(old.spec, attach=mode))
            self._select_mechanisms(ctx)
            if all(ctx.mechanisms.get(p.hook) is p.mechanism for p in old.programs) and old.programs:
                return old
            staging = STAGING_PREFIX + uuid.uuid4().hex[:8]
            chains = self._collect(ctx)
            loaded = []
            try:
                loaded = self._load(ctx, chains)
                self._attach_chains(ctx, chains, loaded, pin_prefix=staging, beside=old.programs)
            except BaseException:
                ctx.undo.rollback()
                pins.remove_tree(self.layout.endpoint_dir(endpoint_id) / staging)
                raise
            finally:
                close_all(loaded)
                close_all(ctx.maps.values())
            with netns.enter(self.node_netns):
                for att in old.programs:
                    attach_mod.backend(att.mechanism).detach(att)
            ep_dir = self.layout.endpoint_dir(endpoint_id)
            self._move_staged_into_place(ep_dir, staging, ("links", "tc"))
            pins.remove_tree(ep_dir / staging)
            ctx.undo.commit()
            specstore.replace(self.layout.spec_path(endpoint_id), ctx.spec)
            return self.get_endpoint(endpoint_id)

    @staticmethod
    def _move_staged_into_place(ep_dir: Path, staging: str, subdirs: Iterable[str]) -> None:
        """Settling: ``<ep>/<staging>/<sub>`` replaces ``<ep>/<sub>`` (``links``, ``tc`` or
        one hook's ``links/<hook>``).  The caller removes the staging directory when every
        part of it has moved."""
        for sub in subdirs:
            pins.remove_tree(ep_dir / sub)
            if (ep_dir / staging / sub).exists():
                (ep_dir / sub).parent.mkdir(parents=True, exist_ok=True)
                os.rename(ep_dir / staging / sub, ep_dir / sub)

    # -- upgrade

    def upgrade(self, endpoint_ids: Iterable[str] | None = None) -> list[Endpoint]:
        """Replace endpoints' programs with what the plugins give now, in place, without a gap;
        maps carry over.  Default: every complete endpoint.  Endpoints are done one after the
        other; a failure stops there and raises (the failing endpoint keeps its old programs,
        the ones before it keep their new ones)."""
        with self._lock:
            if endpoint_ids is None:
                ids = [e for e in self.layout.endpoint_ids() if self.layout.ready_marker(e).exists()
                       and not self._is_single(e)]
            else:
                ids = list(endpoint_ids)
                for eid in ids:
                    if not self.layout.endpoint_dir(eid).exists():
                        raise EndpointNotFound(f"no endpoint {eid!r} under {self.layout.root}")
                    if not self.layout.ready_marker(eid).exists():
                        raise NkframeError(f"endpoint {eid} is not complete (an add or remove was interrupted); run reconcile first")
            reloaded: set = set()  # shared programs reloaded by this upgrade: one new copy for all
            return [self._upgrade_endpoint(eid, reloaded) for eid in ids]

    def _is_single(self, endpoint_id: str) -> bool:
        try:
            return self._spec(endpoint_id).single
        except NkframeError:
            return False

    def _upgrade_endpoint(self, endpoint_id: str, reloaded: set) -> Endpoint:
        ep_dir = self.layout.endpoint_dir(endpoint_id)
        spec = self._spec(endpoint_id)
        if spec.single:  # no programs: nothing to upgrade
            return self.get_endpoint(endpoint_id)
        ctx, st = self._existing_context(spec)
        for note in self._settle_staged(endpoint_id, st):
            log.warning("%s: %s", endpoint_id, note)
        old = self.get_endpoint(endpoint_id)
        current: dict[str, list[AttachedProgram]] = defaultdict(list)
        for p in old.programs:
            current[p.hook].append(p)
        self._select_mechanisms(ctx)  # for hooks that had no program yet
        for hook, progs in current.items():
            ctx.mechanisms[hook] = progs[0].mechanism  # an upgrade never changes the mechanism
        chains = self._collect(ctx)
        staging = STAGING_PREFIX + uuid.uuid4().hex[:8]
        held: list = []  # old programs kept open so an in-place update can be undone
        finish: list = []  # the cut-over: remove what the new chains replace
        loaded: list = []
        try:
            # An upgrade loads what is on disk now; shared programs once per upgrade.
            loaded = self._load(ctx, chains, fresh=reloaded)
            prog_of = programs_by_spec(chains, loaded)
            with netns.enter(self.node_netns):
                for hook in sorted(set(chains) | set(current)):
                    new_chain = chains.get(hook, [])
                    old_chain = current.get(hook, [])
                    backend = attach_mod.backend(ctx.mechanisms[hook])
                    direction = attach_mod.direction_for(backend.mechanism, hook)
                    news = [prog_of(s) for s in new_chain]
                    # In place only where the pin holds a link: its program is swapped inside
                    # it and the pin stays true.  A TC pin holds the program itself and names
                    # the filter's priority, so a new filter goes beside the old one instead.
                    if backend.pin_kind == "link" and [s.name for s in new_chain] == [p.name for p in old_chain]:
                        for prog, o in zip(news, old_chain):
                            self._update_in_place(ctx, backend, o, prog, held)
                    else:
                        finish += self._stage_beside(ctx, backend, hook, direction, new_chain, news, old_chain, st.ifindex, staging)
            # The point of no return: every new program runs; take the old ones away.
            with netns.enter(self.node_netns):
                for step in finish:
                    step()
            pins.remove_tree(ep_dir / staging)
        except BaseException:
            failures = ctx.undo.rollback()
            if failures:
                log.error("rolling back the upgrade of %s left %d problem(s): %s", endpoint_id, len(failures), failures)
            pins.remove_tree(ep_dir / staging)
            raise
        finally:
            close_all(held)
            close_all(loaded)
            close_all(ctx.maps.values())
        ctx.undo.commit()
        return self.get_endpoint(endpoint_id)

    def _update_in_place(self, ctx, backend, old: AttachedProgram, prog, held: list) -> None:
        from nkframe import bpf

        # Keep the old program alive until commit: the link drops its reference on update, and
        # undoing means swapping it back in.
        old_prog = bpf.Program.from_id(old.prog_id)
        held.append(old_prog)
        new = backend.update(old, prog, expected_prog_id=old.prog_id)

        def undo() -> None:
            with netns.enter(ctx.node_netns):
                backend.update(new, old_prog)

        ctx.undo.push(f"restore program {old.prog_id} on {old.name}", undo)

    def _stage_beside(self, ctx, backend, hook, direction, new_chain, news, old_chain, ifindex, staging) -> list:
        """Stage a new chain beside the old one, which keeps running, and return the cut-over
        step.  Links go in front of it (new0, new1, ..., old0, old1, ...); TC filters at
        priorities the old chain does not use, in the same order (the backend's
        :meth:`~nkframe.attach.Backend.pin_path` picks them)."""
        from nkframe.attach.base import Position

        ep_dir = self.layout.endpoint_dir(ctx.spec.id)
        anchor = Position.tail()
        if old_chain:
            first = old_chain[0]
            anchor = Position.before(link_id=first.link_id) if first.link_id else Position.before(prog_id=first.prog_id)
        for pos, (s, prog) in enumerate(zip(new_chain, news)):
            pin = staged(backend.pin_path(self.layout, "endpoint", ctx.spec.id, hook, pos, s.name, beside=old_chain), staging)
            att = backend.attach(ifindex, direction, prog, position=anchor, pin=str(pin), name=s.name, hook=hook)
            ctx.undo.push(f"detach new {s.name}", detacher(backend, att, ctx.node_netns))

        def finish() -> None:
            for o in old_chain:
                attach_mod.backend(o.mechanism).detach(o)
            # The hook's pins, whichever kind the mechanism pins (an upgrade keeps it).
            self._move_staged_into_place(ep_dir, staging, [f"links/{hook}", f"tc/{hook}"])

        return [finish]

    # -- settling what a crash left staged

    def _settle_staged(self, eid: str, device) -> list[str]:
        """Undo or finish a cut-over (switch or upgrade) that a crash interrupted; returns a
        note per staging directory settled.  ``device`` is the endpoint's device as the kernel
        has it (anything with an ``ifindex``).

        While the old chain is whole -- each hook with staged programs still has its old pins
        from position 0, and every old program runs -- the crash came during staging and the
        staged chain may be partial: detach it.  Otherwise the cut-over had begun, so staging
        was complete: finish the cut-over and move the staged pins into place.  The spec keeps
        its old ``attach``.
        """
        ep_dir = self.layout.endpoint_dir(eid)
        staged = [d for d in ep_dir.iterdir() if is_staging_dir(d)]
        if not staged:
            return []
        # Ask the device what runs: a TC pin holds a program, not the filter, and a link pin
        # keeps a link the device no longer has.
        def key(p: AttachedProgram) -> tuple:
            return p.mechanism, p.direction, p.prog_id, p.link_id, p.tc_priority

        on_device = {key(p) for p in list_attached(device.ifindex, netns_name=self.node_netns,
                                                    netkit=getattr(device, "kind", "") == "netkit")}

        def running(p: AttachedProgram) -> bool:
            return key(p) in on_device

        def whole(old, hooks) -> bool:
            for hook in hooks:
                positions = sorted(pins.parse_pin_name(Path(p.pin))[0] for p in old if p.hook == hook)
                if not positions or positions != list(range(len(positions))):
                    return False
            return all(running(p) for p in old)

        # Two crashes without a reconcile between leave two stagings; only the later cut-over
        # (the larger program ids: the kernel hands them out in increasing order) can have
        # got past staging.
        chains = sorted(((d, self._read_programs("endpoint", eid, device.ifindex, base=d)) for d in staged),
                        key=lambda dn: min((p.prog_id for p in dn[1]), default=0))
        notes = []
        for n, (d, new) in enumerate(chains):
            old = self._read_programs("endpoint", eid, device.ifindex)
            hooks = {p.hook for p in new}
            if not new:
                pass  # nothing staged yet, or all of it moved into place already
            elif n < len(chains) - 1 or whole(old, hooks):
                self._detach_staged(new, running)
                notes.append(f"detached {len(new)} program(s) staged by an interrupted switch or upgrade; the old chain stays")
            else:
                # Nothing moves into place before every old program is detached, so old pins
                # can remain only on hooks whose staged programs have not moved yet.
                self._detach_staged([p for p in old if p.hook in hooks], running)
                for hook in sorted(hooks):
                    for sub in ("links", "tc"):
                        if (d / sub / hook).exists():
                            self._move_staged_into_place(ep_dir, d.name, [f"{sub}/{hook}"])
                notes.append(f"finished a cut-over interrupted after its {len(new)} new program(s) ran")
            pins.remove_tree(d)
            for sub in ("links", "tc"):  # the old mechanism's hook dirs, emptied by the cut-over
                if (ep_dir / sub).is_dir() and not any(f.is_file() for f in (ep_dir / sub).rglob("*")):
                    pins.remove_tree(ep_dir / sub)
        return notes

    def _detach_staged(self, progs, running) -> None:
        with netns.enter(self.node_netns):
            for p in progs:
                if not running(p):
                    # Not on the device: a link it no longer has, or a TC priority that is free
                    # or runs another program (leave that alone).  Only the pin goes.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p.pin)
                    continue
                attach_mod.backend(p.mechanism).detach(p)
