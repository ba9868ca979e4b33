"""Program chains: choosing a mechanism per hook, collecting and ordering the plugins'
programs, loading them (shared programs once per engine), attaching and pinning them, and
reading pinned chains back.

:class:`ChainsMixin` holds the engine's side of it (it needs the engine's hooks, layout and
shared-program cache); the functions below are plain helpers used by every engine module.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from nkframe import attach as attach_mod
from nkframe import netns, pins, progcache
from nkframe.context import DeviceInfo, EndpointContext
from nkframe.errors import InvalidSpec, KernelError, NkframeError, NotSupported, PluginError, VerifierError
from nkframe.types import AttachedProgram, AttachMode, Hook, Mechanism, ProgramSpec

log = logging.getLogger(__name__)


class ChainsMixin:
    """Mechanism selection, chain collection, loading, attaching and reading back."""

    def candidates(self, device: DeviceInfo | None) -> list[Mechanism]:
        """Mechanisms this kernel supports for a device, best first."""
        return attach_mod.available(self.features, device.kind if device is not None else None)

    def _select_mechanisms(self, ctx: EndpointContext) -> None:
        forced = ctx.spec.attach if ctx.spec.attach is not AttachMode.AUTO else self.attach_mode
        cands = self.candidates(ctx.device)
        for hook in Hook:
            if forced is not AttachMode.AUTO:
                mech = Mechanism(forced.value)
                if mech not in cands:
                    raise NotSupported(mech.value, self._why_not(mech, ctx.device))
                ctx.mechanisms[hook.value] = mech
                ctx.reasons[hook.value] = f"{mech} forced by configuration"
                continue
            choice = self.hook.nkframe_attach_select(ctx=ctx, hook=hook.value, candidates=list(cands))
            if choice is None:
                raise NotSupported("attach", f"no attach mechanism available for {hook} ({self._why_not(None, ctx.device)})")
            mech, why = choice
            mech = Mechanism(mech)
            if mech not in cands:
                raise PluginError(f"nkframe_attach_select chose {mech}, which is not available here: {self._why_not(mech, ctx.device)}")
            ctx.mechanisms[hook.value] = mech
            ctx.reasons[hook.value] = why

    def _why_not(self, mech: Mechanism | None, device: DeviceInfo | None) -> str:
        return attach_mod.why_not(mech, self.features, device.kind if device is not None else None,
                                  device.reason if device is not None else "")

    def _collect(self, ctx: EndpointContext) -> dict[str, list[ProgramSpec]]:
        specs: list[ProgramSpec] = []
        for contribution in self.hook.nkframe_programs_collect(ctx=ctx):
            for s in contribution or ():
                if not isinstance(s, ProgramSpec):
                    raise PluginError(f"nkframe_programs_collect returned {s!r}, not a ProgramSpec")
                specs.append(s)
        by_hook: dict[str, list[ProgramSpec]] = defaultdict(list)
        for s in specs:
            if not isinstance(s.hook, Hook):
                raise PluginError(f"program {s.name}: endpoint programs need a Hook, not {s.hook!r}")
            by_hook[s.hook.value].append(s)
        return {h: order_chain(v) for h, v in by_hook.items()}

    def _pin_path(self, scope: str, owner: str, kind: str, name: str, default: Path) -> str:
        chosen = self.hook.nkframe_pin_path(root=str(self.layout.root), scope=scope, owner=owner, kind=kind, name=name)
        return str(self.layout.check_inside(chosen)) if chosen else str(default)

    def _load(self, ctx: EndpointContext, chains: dict[str, list[ProgramSpec]], *, fresh: set | None = None) -> list:
        """Open and load each distinct (object, globals) once; pinned maps are reused.

        Groups whose specs are all ``shared`` come from the engine's cache (loaded by the first
        add that needed them).  ``fresh`` (an upgrade) is the set of shared groups this upgrade
        has already reloaded: a group not in it is loaded again from disk, replaces the cached
        copy and joins the set, so every endpoint of one upgrade shares the one new copy
        (each endpoint once got a copy of its own).
        """
        from nkframe import bpf

        groups: dict[tuple, list[ProgramSpec]] = defaultdict(list)
        for chain in chains.values():
            for s in chain:
                groups[group_key(s)].append(s)
        loaded = []
        for (obj_path, globs), members in groups.items():
            map_paths = self._map_paths(ctx, members)
            shared = all(s.shared for s in members)
            key = (obj_path, progcache.file_id(obj_path), globs, tuple(sorted(map_paths.items()))) if shared else None
            if shared and (fresh is None or key in fresh) and key in self._shared:
                self._shared.move_to_end(key)
                obj = self._shared[key]
            else:
                obj = bpf.BpfObject.open(obj_path)
                try:
                    for name, value in globs:
                        obj.set_global(name, value)
                    for map_name, path in map_paths.items():
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        obj.set_map_pin_path(map_name, path)
                    obj.load()
                except VerifierError as e:
                    obj.close()
                    who = ", ".join(sorted({f"plugin {s.plugin!r}" if s.plugin else "an unnamed plugin" for s in members}))
                    progs = ", ".join(s.name for s in members)
                    raise VerifierError(e.errno, f"program {progs} of {who} ({os.path.basename(obj_path)})", e.log) from None
                except BaseException:
                    obj.close()
                    raise
                if shared:
                    obj = self._cache_shared(key, obj)
                    if fresh is not None:
                        fresh.add(key)
            loaded.append(obj)
            for name, m in obj.maps.items():
                ctx.maps.setdefault(name, m.dup())
        return loaded

    def _map_paths(self, ctx: EndpointContext, members: list[ProgramSpec]) -> dict[str, str]:
        map_scopes: dict[str, str] = {}
        for s in members:
            map_scopes.update(s.maps)
        out = {}
        for map_name, scope in map_scopes.items():
            owner = "" if scope == "global" else ctx.spec.id
            default = self.layout.map_path(scope, owner, map_name)
            out[map_name] = self._pin_path(scope, owner, "map", map_name, default)
        return out

    def _cache_shared(self, key: tuple, obj) -> "progcache.SharedObject":
        old = self._shared.pop(key, None)
        if old is not None:
            old.release()
        held = self._shared[key] = progcache.SharedObject(obj)
        while len(self._shared) > progcache.CACHE_SIZE:
            self._shared.popitem(last=False)[1].release()
        return held

    def _attach_chains(self, ctx: EndpointContext, chains, loaded, *, pin_prefix: str = "",
                       beside: tuple[AttachedProgram, ...] = ()) -> tuple[AttachedProgram, ...]:
        """Attach and pin every chain; ``beside``: the programs that keep running meanwhile (a
        switch's old chains), whose places the new ones must not take."""
        prog_of = programs_by_spec(chains, loaded)
        out: list[AttachedProgram] = []
        with netns.enter(self.node_netns):
            for hook, chain in chains.items():
                backend = attach_mod.backend(ctx.mechanisms[hook])
                direction = attach_mod.direction_for(backend.mechanism, hook)
                running = [p for p in beside if p.hook == hook and p.mechanism is backend.mechanism]
                for pos, s in enumerate(chain):
                    pin = staged(backend.pin_path(self.layout, "endpoint", ctx.spec.id, hook, pos, s.name, beside=running), pin_prefix)
                    if backend.pin_kind == "link" and not pin_prefix:
                        pin = self._pin_path("endpoint", ctx.spec.id, "link", s.name, pin)
                    att = backend.attach(ctx.device.node_ifindex, direction, prog_of(s), pin=str(pin), name=s.name, hook=hook)
                    ctx.undo.push(f"detach {s.name}", detacher(backend, att, self.node_netns))
                    out.append(att)
        return tuple(out)

    def _read_programs(self, scope: str, owner: str, ifindex: int, *, base: Path | None = None) -> tuple[AttachedProgram, ...]:
        """Programs pinned for ``owner`` (or under ``base``: a staging directory), with the
        engine's hook names; ``ifindex`` is the device's (a TC pin does not know it, a link
        reports its own)."""
        if base is None:
            by_hook = [self.layout.links(scope, owner), self.layout.tc_pins(scope, owner)]
        else:
            by_hook = [pins.by_hook(base / "links"), pins.by_hook(base / "tc")]
        out = []
        for hook, paths in ((h, ps) for d in by_hook for h, ps in d.items()):
            for p in paths:
                try:
                    out.append(attach_mod.open_pinned(str(p), name=pins.parse_pin_name(p)[1], hook=hook, ifindex=ifindex))
                except (KernelError, InvalidSpec):
                    continue  # unpinned meanwhile, or not ours
        return tuple(out)

    def _detach_pinned(self, scope: str, owner: str, *, missing_ok: bool) -> None:
        from nkframe.netlink import links

        ifindex = 0
        if scope == "endpoint":
            try:
                spec = self._spec(owner)
                if links.link_exists(spec.node_ifname, netns=self.node_netns):
                    ifindex = links.get_link(spec.node_ifname, netns=self.node_netns).ifindex
            except NkframeError:
                pass
        else:
            if links.link_exists(owner, netns=self.node_netns):
                ifindex = links.get_link(owner, netns=self.node_netns).ifindex
        with netns.enter(self.node_netns):
            for att in self._read_programs(scope, owner, ifindex):
                try:
                    attach_mod.backend(att.mechanism).detach(att)
                except (KernelError, InvalidSpec) as e:
                    if not missing_ok:
                        raise
                    if att.ifindex:  # ifindex 0: the device is gone, and its programs with it
                        log.warning("detach %s: %s", att.name, e)


def list_attached(ifindex: int, *, netns_name: str | None, netkit: bool) -> list[AttachedProgram]:
    """Every program on ``ifindex`` in ``netns_name`` by every mechanism (:func:`nkframe.attach.query_all`)."""
    with netns.enter(netns_name):
        return attach_mod.query_all(ifindex, netkit=netkit)


def order_chain(specs: list[ProgramSpec]) -> list[ProgramSpec]:
    """Order programs of one hook: ``before``/``after`` constraints first, then ``order``.

    Constraints naming programs that are not contributed are ignored (that plugin is not loaded).
    A cycle is a plugin error.
    """
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PluginError(f"two programs share the name(s) {', '.join(sorted(dup))} on one hook")
    by_name = {s.name: s for s in specs}
    succ: dict[str, set[str]] = {n: set() for n in by_name}
    for s in specs:
        for b in s.before:
            if b in by_name:
                succ[s.name].add(b)
        for a in s.after:
            if a in by_name:
                succ[a].add(s.name)
    # A program placed relative to another moves to that program's order ("audit before
    # policy" runs next to policy, not wherever audit's own order would put it).
    eff = {n: s.order for n, s in by_name.items()}
    for _ in range(len(specs)):
        changed = False
        for s in specs:
            for b in s.before:
                if b in eff and eff[s.name] > eff[b]:
                    eff[s.name], changed = eff[b], True
            for a in s.after:
                if a in eff and eff[s.name] < eff[a]:
                    eff[s.name], changed = eff[a], True
        if not changed:
            break
    indeg = {n: 0 for n in by_name}
    for n, targets in succ.items():
        for t in targets:
            indeg[t] += 1
    ready = [n for n, d in indeg.items() if d == 0]
    out = []
    while ready:
        ready.sort(key=lambda n: (eff[n], by_name[n].order, by_name[n].plugin, n))
        n = ready.pop(0)
        out.append(by_name[n])
        for t in succ[n]:
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    if len(out) != len(specs):
        stuck = sorted(set(by_name) - {s.name for s in out})
        raise PluginError(f"programs {', '.join(stuck)} have before/after constraints that form a cycle")
    return out


def staged(path: Path, prefix: str) -> Path:
    """<ep>/links/<hook>/<pin> -> <ep>/<prefix>/links/<hook>/<pin> while a new chain is staged."""
    if not prefix:
        return path
    return path.parents[2] / prefix / path.parents[1].name / path.parent.name / path.name


def group_key(s: ProgramSpec) -> tuple:
    """Specs sharing an object file *and* globals share one load; different globals (say, an
    endpoint id or a counter slot) need their own."""
    return (s.object, tuple(sorted(s.globals.items())))


def programs_by_spec(chains: dict[str, list[ProgramSpec]], loaded: list):
    """ProgramSpec -> its loaded program.  :meth:`Engine._load` opens one object per
    :func:`group_key`, in first-seen order over the chains; walk them in the same order."""
    keys: dict[tuple, int] = {}
    for chain in chains.values():
        for s in chain:
            keys.setdefault(group_key(s), len(keys))
    if len(keys) != len(loaded):
        raise PluginError(f"loaded {len(loaded)} objects for {len(keys)} (object, globals) groups")

    def prog_of(s: ProgramSpec):
        obj = loaded[keys[group_key(s)]]
        try:
            return obj.programs[s.program]
        except KeyError:
            raise PluginError(f"program {s.name}: no function {s.program!r} in {s.object}") from None

    return prog_of


def detacher(backend, att: AttachedProgram, node_netns: str | None):
    def undo():
        with netns.enter(node_netns):
            backend.detach(att)

    return undo


def close_all(objs) -> None:
    for o in objs:
        try:
            o.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

