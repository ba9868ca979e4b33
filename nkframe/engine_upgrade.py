"""Upgrading endpoints' programs in place: new code, same maps, no gap.

:func:`upgrade` reloads every endpoint's programs from the ProgramSpecs the plugins give *now*
(a new plugin version, new globals) and replaces the running ones without a moment in which a
packet meets no program:

* netkit / TCX, same chain shape: ``BPF_LINK_UPDATE`` swaps each link's program atomically
  (``BPF_F_REPLACE`` with the old program, so a concurrent change is refused, not overwritten).
  The pinned link stays; nothing in bpffs changes but the program it points to.
* TC (cls_bpf has no link): an ordered replace.  Each new program is attached as a filter at a
  free priority next to the old one, *then* the old filter is deleted.  For a moment both run;
  programs hand on with "continue", so that is harmless.  The pin's name carries the priority,
  so bpffs ends up describing exactly the filters on the device.
* A chain whose shape changed (a program added, removed or renamed): the whole new chain is
  attached in front of the old one (links: anchored before the first old link, pinned in a
  staging directory; TC: a priority band the old chain does not use), then the old chain is
  removed and the staged pins move into place.

Maps are pinned, and the loader reuses pinned maps, so counters and tables carry over.  A new
version whose map definition is incompatible with the pinned map fails to load and changes
nothing.  Any failure before the old programs are removed undoes the new ones: the endpoint
keeps running the old version.  The mechanism never changes here (see
:meth:`nkframe.engine.Engine.switch_mechanism`), and ``nkframe_endpoint_configure`` is not
called again: configuration lives in the maps that carry over.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import attrs

from nkframe import attach as attach_mod
from nkframe import netns, pins
from nkframe.context import DeviceInfo, EndpointContext
from nkframe.errors import EndpointNotFound, KernelError, NkframeError
from nkframe.types import AttachedProgram, DeviceKind, Endpoint, Mechanism

log = logging.getLogger(__name__)

STAGING_PREFIX = "upgrade-"


def upgrade(engine, endpoint_ids: Iterable[str] | None = None) -> list[Endpoint]:
    """Upgrade the given endpoints (default: every complete one); returns them as they are now.

    Endpoints are done one after the other; a failure stops there and raises (the failing
    endpoint keeps its old programs, the ones before it keep their new ones).
    """
    with engine._lock:
        if endpoint_ids is None:
            ids = [e for e in engine.layout.endpoint_ids() if engine.layout.ready_marker(e).exists()]
        else:
            ids = list(endpoint_ids)
            for eid in ids:
                if not engine.layout.endpoint_dir(eid).exists():
                    raise EndpointNotFound(f"no endpoint {eid!r} under {engine.layout.root}")
                if not engine.layout.ready_marker(eid).exists():
                    raise NkframeError(f"endpoint {eid} is not complete (an add or remove was interrupted); run reconcile first")
        reloaded: set = set()  # shared programs reloaded by this upgrade: one new copy for all
        return [upgrade_endpoint(engine, eid, reloaded) for eid in ids]


def upgrade_endpoint(engine, endpoint_id: str, reloaded: set | None = None) -> Endpoint:
    from nkframe.engine import _close_all
    from nkframe.netlink import links

    ep_dir = engine.layout.endpoint_dir(endpoint_id)
    _drop_stale_staging(engine, ep_dir)
    old = engine.get_endpoint(endpoint_id)
    st = links.get_link(old.spec.node_ifname, netns=engine.node_netns)
    ctx = EndpointContext(spec=old.spec, node_netns=engine.node_netns, bpffs_root=str(engine.layout.root), features=engine.features)
    ctx.device = DeviceInfo(
        kind=DeviceKind.NETKIT if st.kind == "netkit" else DeviceKind.VETH,
        mode=old.spec.mode,
        node_ifname=old.spec.node_ifname,
        node_ifindex=st.ifindex,
        pod_ifname=old.spec.ifname,
        pod_ifindex=0,
        reason="existing device",
    )
    current: dict[str, list[AttachedProgram]] = defaultdict(list)
    for p in old.programs:
        current[p.hook].append(p)
    engine._select_mechanisms(ctx)  # for hooks that had no program yet
    for hook, progs in current.items():
        ctx.mechanisms[hook] = progs[0].mechanism  # an upgrade never changes the mechanism
    chains = engine._collect(ctx)
    staging = STAGING_PREFIX + uuid.uuid4().hex[:8]
    held: list = []  # old programs kept open so an in-place update can be undone
    finish: list = []  # phase 2: remove what the new chains replace
    loaded: list = []
    try:
        # An upgrade loads what is on disk now; shared programs once per upgrade.
        loaded = engine._load(ctx, chains, fresh=set() if reloaded is None else reloaded)
        prog_of = _programs_by_spec(chains, loaded)
        with netns.enter(engine.node_netns):
            for hook in sorted(set(chains) | set(current)):
                new_chain = chains.get(hook, [])
                old_chain = current.get(hook, [])
                mech = ctx.mechanisms[hook]
                backend = attach_mod.backend(mech)
                direction = attach_mod.direction_for(mech, hook)
                news = [prog_of(s) for s in new_chain]
                same_shape = [s.name for s in new_chain] == [p.name for p in old_chain]
                if mech is Mechanism.TC:
                    finish += _tc_replace(engine, ctx, backend, hook, direction, new_chain, news, old_chain, st.ifindex)
                elif same_shape:
                    for s, prog, o in zip(new_chain, news, old_chain):
                        _link_update(ctx, backend, o, direction, prog, held)
                else:
                    finish += _link_reshape(engine, ctx, backend, hook, direction, new_chain, news, old_chain, st.ifindex, staging)
        # Phase 2, the point of no return: every new program runs; take the old ones away.
        with netns.enter(engine.node_netns):
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
        _close_all(held)
        _close_all(loaded)
        _close_all(ctx.maps.values())
    ctx.undo.commit()
    return engine.get_endpoint(endpoint_id)


def _programs_by_spec(chains, loaded):
    """ProgramSpec -> its loaded program.  Engine._load opens one object per distinct (object,
    globals), in first-seen order over the chains; walk them in the same order, so two specs
    using the same function with different globals get their own program each."""
    from nkframe.errors import PluginError

    keys: dict[tuple, int] = {}
    for chain in chains.values():
        for s in chain:
            keys.setdefault((s.object, tuple(sorted(s.globals.items()))), len(keys))
    if len(keys) != len(loaded):
        raise PluginError(f"loaded {len(loaded)} objects for {len(keys)} (object, globals) groups")

    def prog_of(s):
        obj = loaded[keys[(s.object, tuple(sorted(s.globals.items())))]]
        try:
            return obj.programs[s.program]
        except KeyError:
            raise PluginError(f"program {s.name}: no function {s.program!r} in {s.object}") from None

    return prog_of


# ----------------------------------------------------------------------------------------------
# netkit / TCX
# ----------------------------------------------------------------------------------------------


def _link_update(ctx, backend, old: AttachedProgram, direction: str, prog, held: list) -> None:
    from nkframe import bpf

    att = attrs.evolve(old, hook=direction)
    # Keep the old program alive until commit: the link drops its reference on update, and
    # undoing means swapping it back in.
    old_prog = bpf.Program.from_id(old.prog_id)
    held.append(old_prog)
    backend.update(att, prog, expected_prog_id=old.prog_id)

    def undo() -> None:
        with netns.enter(ctx.node_netns):
            link = bpf.Link.from_pin(att.pin)
            try:
                link.update(old_prog.fd)
            finally:
                link.close()

    ctx.undo.push(f"restore program {old.prog_id} on {old.name}", undo)


def _link_reshape(engine, ctx, backend, hook, direction, new_chain, news, old_chain, ifindex, staging) -> list:
    from nkframe.attach.base import Position
    from nkframe.engine import _detacher

    ep_dir = engine.layout.endpoint_dir(ctx.spec.id)
    stage_dir = ep_dir / staging / "links" / hook
    # Insert each new program before the first old one: new0, new1, ..., old0, old1, ...
    anchor = Position.before(link_id=old_chain[0].link_id) if old_chain else Position.tail()
    for pos, (s, prog) in enumerate(zip(new_chain, news)):
        pin = stage_dir / f"{pos:02d}-{s.name}"
        att = backend.attach(ifindex, direction, prog, position=anchor, pin=str(pin), name=s.name)
        ctx.undo.push(f"detach new {s.name}", _detacher(backend, att, ctx.node_netns))

    def finish() -> None:
        for o in old_chain:
            backend.detach(attrs.evolve(o, hook=direction))
        final = ep_dir / "links" / hook
        pins.remove_tree(final)
        if stage_dir.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(stage_dir, final)

    return [finish]


def _drop_stale_staging(engine, ep_dir: Path) -> None:
    """A crash between attaching a staged chain and moving it into place leaves staged links
    running next to the old chain: detach them before starting over."""
    from nkframe import bpf

    if not ep_dir.is_dir():
        return
    for d in ep_dir.iterdir():
        if not d.name.startswith(STAGING_PREFIX):
            continue
        with netns.enter(engine.node_netns):
            for pin in sorted(p for p in d.rglob("*") if p.is_file()):
                try:
                    link = bpf.Link.from_pin(str(pin))
                except KernelError:
                    continue
                try:
                    link.detach()
                except KernelError as e:
                    log.warning("detach staged link %s: %s", pin, e)
                finally:
                    link.close()
        pins.remove_tree(d)
        log.warning("%s: removed a staged chain left by an interrupted upgrade", ep_dir.name)


# ----------------------------------------------------------------------------------------------
# TC
# ----------------------------------------------------------------------------------------------


def _tc_replace(engine, ctx, backend, hook, direction, new_chain, news, old_chain, ifindex) -> list:
    """Attach the new chain at priorities the old one does not use, ordered like the old one,
    and return the step removing the old filters."""
    from nkframe.attach import tc
    from nkframe.engine import _detacher, _tc_prio

    taken = {p.tc_priority for p in old_chain}
    # Priorities of position i are _tc_prio(i) + offset; PRIO_STEP leaves room for these
    # offsets without crossing into the next position, so the chain keeps its order.
    for offset in (0, tc.PRIO_STEP // 2, tc.PRIO_STEP // 4, 3 * tc.PRIO_STEP // 4):
        prios = [_tc_prio(i) + offset for i in range(len(new_chain))]
        if not taken & set(prios):
            break
    else:
        raise NkframeError(f"endpoint {ctx.spec.id}: no free tc priorities for the new {hook} chain; remove and re-add the endpoint")
    for pos, (s, prog, prio) in enumerate(zip(new_chain, news, prios)):
        pin = engine.layout.tc_path("endpoint", ctx.spec.id, hook, pos, s.name, prio)
        att = backend.attach(ifindex, direction, prog, pin=str(pin), name=s.name, priority=prio)
        ctx.undo.push(f"detach new {s.name}", _detacher(backend, att, ctx.node_netns))

    def finish() -> None:
        for o in old_chain:
            backend.detach(attrs.evolve(o, hook=direction, ifindex=ifindex))
        d = engine.layout.endpoint_dir(ctx.spec.id) / "tc" / hook
        if not new_chain and d.is_dir():
            pins.remove_tree(d)

    return [finish]
