"""The endpoint lifecycle: add, remove, list, reconcile.

An :class:`Engine` is bound to a node network namespace (``None`` = the caller's) and a bpffs
root.  It keeps no state of its own: every query reads bpffs and the kernel, so a restarted
process sees exactly what a crashed one left (see :mod:`nkframe.pins` for the layout).

``add_endpoint`` is transactional: each step registers its undo, and a failure at any step rolls
back every earlier one, so a failed add leaves no device, pin, map or link behind.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import threading
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import attrs
import pluggy

from nkframe import attach as attach_mod
from nkframe import builtin, faults, netns, pins, plugins, progcache, specstore
from nkframe.context import DeviceInfo, EndpointContext, UndoLog, UplinkContext
from nkframe.errors import (
    EndpointExists,
    EndpointNotFound,
    InvalidSpec,
    KernelError,
    NkframeError,
    NotSupported,
    PluginError,
    VerifierError,
)
from nkframe.types import (
    AttachedProgram,
    AttachMode,
    DeviceHook,
    DeviceKind,
    Endpoint,
    EndpointSpec,
    Hook,
    Mechanism,
    ProgramSpec,
)

log = logging.getLogger(__name__)

BPF_LINK_TYPE_TCX = 11
BPF_LINK_TYPE_NETKIT = 13
_TC_HANDLE = 0x4E4B  # nkframe.attach.tc.HANDLE, without importing the bindings at import time


@attrs.frozen
class ReconcileReport:
    """What :meth:`Engine.reconcile` found and did."""

    healthy: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # endpoints whose netns or device vanished: cleaned up
    repaired: tuple[str, ...] = ()  # endpoints with programs re-attached
    problems: tuple[str, ...] = ()


class Engine:
    """Endpoint lifecycle for one node.

    :param node_netns: the node's network namespace by name (``/run/netns/<name>``) or ``None``
        for the caller's own.
    :param bpffs_root: where pins live; mounted at ``/sys/fs/bpf`` if nothing is there.
    :param attach: force a mechanism for every endpoint (``auto`` lets nkframe choose).  Forcing
        one the kernel lacks is an error, never a silent fallback.
    :param plugins: entry-point names to load (``None``: all installed, see :mod:`nkframe.plugins`).
    :param plugin_objects: plugin objects registered directly (tests, embedders).
    :param uplink: the node's uplink device; plugins attach device programs to it on
        :meth:`setup_uplink`.
    """

    def __init__(
        self,
        node_netns: str | None = None,
        bpffs_root: str = pins.DEFAULT_ROOT,
        *,
        attach: AttachMode | str = AttachMode.AUTO,
        plugins: Iterable[str] | None = None,
        plugin_objects: Iterable[object] = (),
        autoload: bool | None = None,
        uplink: str | None = None,
        features=None,
    ):
        try:
            self.attach_mode = AttachMode(str(attach).lower())
        except ValueError:
            raise InvalidSpec(
                f"attach mode {attach!r} is not one of: {', '.join(m.value for m in AttachMode)}"
            ) from None
        if node_netns is not None:
            builtin.check_netns(node_netns, "node network namespace")
        self.node_netns = node_netns
        self.layout = pins.Layout(bpffs_root)
        pins.ensure_root(bpffs_root)
        self.pm: pluggy.PluginManager = _make_pm(plugins, plugin_objects, autoload)
        self._features = features
        self.uplink = uplink
        self._lock = threading.RLock()
        # Loaded objects of shared programs (ProgramSpec.shared), reused by every add.
        self._shared: collections.OrderedDict[tuple, progcache.SharedObject] = collections.OrderedDict()

    # -- context management
    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cached copies of shared programs (attached ones stay: pins hold them)."""
        with self._lock:
            while self._shared:
                self._shared.popitem(last=False)[1].release()

    @property
    def hook(self):
        return self.pm.hook

    @property
    def features(self):
        if self._features is None:
            from nkframe import probe

            self._features = probe.features()
        return self._features

    # ------------------------------------------------------------------------------------------
    # add
    # ------------------------------------------------------------------------------------------

    def add_endpoint(self, spec: EndpointSpec) -> Endpoint:
        """Build an endpoint: device, programs attached and pinned, configuration.  All or nothing."""
        if not isinstance(spec, EndpointSpec):
            raise InvalidSpec(f"add_endpoint takes an EndpointSpec, not {type(spec).__name__}")
        from nkframe.netlink import links

        with self._lock, links.batch():
            self.hook.nkframe_endpoint_validate(spec=spec)
            builtin.check_netns(spec.netns, "pod network namespace")
            self._check_owned_by_node(spec)
            ep_dir = self.layout.endpoint_dir(spec.id)
            if ep_dir.exists():
                raise EndpointExists(f"endpoint {spec.id!r} already exists (remove it first)")
            self._check_name_free(spec)
            ctx = EndpointContext(
                spec=spec,
                node_netns=self.node_netns,
                bpffs_root=str(self.layout.root),
                features=self.features,
            )
            loaded: list = []
            try:
                ep_dir.mkdir(parents=True, mode=0o700)
                ctx.undo.push(f"remove pins of {spec.id}", lambda: pins.remove_tree(ep_dir))
                faults.point("add.after_pin_dir")
                specstore.store(self.layout.spec_path(spec.id), spec)
                faults.point("add.after_spec")
                ctx.device = self._create_device(ctx)
                faults.point("add.after_device")
                self._select_mechanisms(ctx)
                chains = self._collect(ctx)
                loaded = self._load(ctx, chains)
                faults.point("add.after_load")
                attached = self._attach_chains(ctx, chains, loaded)
                ctx.programs = attached
                faults.point("add.after_attach")
                self.hook.nkframe_endpoint_configure(ctx=ctx)
                faults.point("add.after_configure")
                builtin.open_device(ctx)
                faults.point("add.after_open")
                # The commit point: only an endpoint with this marker is complete.  A crash
                # before it leaves an endpoint reconcile() finishes off (the caller never
                # heard "done").
                self.layout.ready_marker(spec.id).mkdir()
            except BaseException as e:
                failures = ctx.undo.rollback()
                if failures:
                    log.error("rollback of %s left %d problem(s): %s", spec.id, len(failures), failures)
                if isinstance(e, Exception) and not isinstance(e, NkframeError):
                    # A plugin's bug (a plain exception out of a hook): one error that names the
                    # plugin and says the add was undone; the traceback goes to the log.
                    log.debug("add %s failed in a plugin", spec.id, exc_info=True)
                    raise PluginError(f"{self._blame(e)} failed while adding endpoint {spec.id} "
                                      f"({type(e).__name__}: {e}); the add was undone"
                                      + (f" except: {'; '.join(failures)}" if failures else "")) from e
                raise
            finally:
                _close_all(loaded)
                _close_all(ctx.maps.values())
            ctx.undo.commit()
            endpoint = Endpoint(
                spec=spec,
                device_kind=ctx.device.kind,
                node_ifindex=ctx.device.node_ifindex,
                mechanism=ctx.mechanisms,
                reasons={"device": ctx.device.reason, **ctx.reasons},
                programs=attached,
            )
            self.hook.nkframe_endpoint_added(endpoint=endpoint)
            return endpoint

    def _blame(self, exc: BaseException) -> str:
        """"plugin NAME (hook HOOK)" for the deepest traceback frame that is a registered
        plugin's code, or "nkframe" when none is."""
        import inspect
        import traceback

        files: dict[str, str] = {}
        for name, plugin in self.pm.list_name_plugin():
            if name.isdigit():  # registered without a name: pluggy names it by id()
                name = getattr(plugin, "__name__", None) or type(plugin).__qualname__
            try:
                f = inspect.getfile(plugin if inspect.ismodule(plugin) else type(plugin))
            except TypeError:
                continue
            files[os.path.dirname(f) if f.endswith("__init__.py") else f] = name
        plugin = hook = None
        for frame in traceback.extract_tb(exc.__traceback__):
            for path, name in files.items():
                if frame.filename == path or frame.filename.startswith(path + os.sep):
                    plugin = plugin or name
                    if frame.name.startswith("nkframe_"):
                        plugin, hook = name, frame.name
        if plugin is None:
            return "nkframe"
        return f"plugin {plugin!r}" + (f" (hook {hook})" if hook else "")

    def _check_owned_by_node(self, spec: EndpointSpec) -> None:
        """Refuse what belongs to the node: its own namespace as a pod's, an address the node
        has (its uplink's included: a pod holding it took the node's traffic), or the network
        or broadcast address of a subnet the node is on.  One check for the agent and for the
        CLI without one."""
        from nkframe.netlink import links

        pod_ns = spec.netns if spec.netns.startswith("/") else netns.netns_path(spec.netns)
        node_ns = (self.node_netns if (self.node_netns or "").startswith("/")
                   else netns.netns_path(self.node_netns) if self.node_netns else "/proc/thread-self/ns/net")
        try:
            a, b = os.stat(pod_ns), os.stat(node_ns)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                raise InvalidSpec(f"pod netns {spec.netns} is the node's own network namespace; a pod needs a namespace of its own")
        except OSError:
            pass  # check_netns has said what is missing
        if not spec.addresses:
            return
        mine = links.node_addresses(self.node_netns)
        for want in spec.addresses:
            for have in mine:
                if want.ip == have.ip:
                    raise InvalidSpec(f"address {want.ip} belongs to the node ({have}); a pod cannot take it")
                net = have.network
                if (want.ip.version == net.version and net.prefixlen < net.max_prefixlen - 1
                        and want.ip in (net.network_address, net.broadcast_address if net.version == 4 else None)):
                    raise InvalidSpec(f"address {want.ip} is the {'network' if want.ip == net.network_address else 'broadcast'} "
                                      f"address of the node's subnet {net}; a pod cannot have it")

    def _check_name_free(self, spec: EndpointSpec) -> None:
        from nkframe.netlink import links

        if links.link_exists(spec.node_ifname, netns=self.node_netns):
            raise EndpointExists(
                f"device {spec.node_ifname} already exists in the node namespace "
                f"({self.node_netns or 'current'}); pick another host_ifname or remove it"
            )

    def _create_device(self, ctx: EndpointContext) -> DeviceInfo:
        dev = self.hook.nkframe_device_create(ctx=ctx)
        if not isinstance(dev, DeviceInfo):
            raise PluginError(f"nkframe_device_create returned {dev!r}, not a DeviceInfo")
        return dev

    def candidates(self, device: DeviceInfo | None) -> list[Mechanism]:
        """Mechanisms this kernel supports for a device, best first."""
        out = []
        if device is not None and device.kind is DeviceKind.NETKIT and self.features.supported("netkit"):
            out.append(Mechanism.NETKIT)
        if self.features.supported("tcx"):
            out.append(Mechanism.TCX)
        if self.features.supported("tc"):
            out.append(Mechanism.TC)
        return out

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
                raise NotSupported("attach", f"no attach mechanism available for {hook} ({self._why_not(Mechanism.TC, ctx.device)})")
            mech, why = choice
            mech = Mechanism(mech)
            if mech not in cands:
                raise PluginError(f"nkframe_attach_select chose {mech}, which is not available here: {self._why_not(mech, ctx.device)}")
            ctx.mechanisms[hook.value] = mech
            ctx.reasons[hook.value] = why

    def _why_not(self, mech: Mechanism, device: DeviceInfo | None) -> str:
        if mech is Mechanism.NETKIT:
            if device is not None and device.kind is not DeviceKind.NETKIT:
                return f"netkit links need a netkit device, this endpoint has {device.kind} ({device.reason})"
            return self.features["netkit"].reason
        return self.features[mech.value].reason

    # -- programs

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
                groups[_group_key(s)].append(s)
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

    def _attach_chains(self, ctx: EndpointContext, chains, loaded, *, pin_prefix: str = "") -> tuple[AttachedProgram, ...]:
        prog_of = programs_by_spec(chains, loaded)
        out: list[AttachedProgram] = []
        with netns.enter(self.node_netns):
            for hook, chain in chains.items():
                mech = ctx.mechanisms[hook]
                backend = attach_mod.backend(mech)
                direction = attach_mod.direction_for(mech, hook)
                for pos, s in enumerate(chain):
                    prog = prog_of(s)
                    if mech is Mechanism.TC:
                        prio = _tc_prio(pos)
                        pin = self.layout.tc_path("endpoint", ctx.spec.id, hook, pos, s.name, prio)
                        # TC -> TC never stages (nothing to switch), so priorities can't clash.
                        pin = _staged(pin, pin_prefix)
                        att = backend.attach(ctx.device.node_ifindex, direction, prog, pin=str(pin), name=s.name, priority=prio)
                    else:
                        default = _staged(self.layout.link_path("endpoint", ctx.spec.id, hook, pos, s.name), pin_prefix)
                        pin = self._pin_path("endpoint", ctx.spec.id, "link", s.name, default) if not pin_prefix else str(default)
                        att = backend.attach(ctx.device.node_ifindex, direction, prog, pin=pin, name=s.name)
                    ctx.undo.push(f"detach {s.name}", _detacher(backend, att, self.node_netns))
                    out.append(attrs.evolve(att, hook=hook))
        return tuple(out)

    # ------------------------------------------------------------------------------------------
    # switching mechanism (e.g. TC -> TCX after a kernel upgrade)
    # ------------------------------------------------------------------------------------------

    def switch_mechanism(self, endpoint_id: str, attach: AttachMode | str = AttachMode.AUTO) -> Endpoint:
        """Re-attach an endpoint's programs with another mechanism, never leaving a gap.

        The new chain is loaded and attached (and pinned) *before* the old one is detached, so
        every packet meets one chain or the other; for a moment both run, which the programs
        tolerate (each one hands on with "continue", and the first redirect wins).  Maps pinned
        for the endpoint are reused, so counters and state carry over.  A failure before the
        old chain is removed detaches the new one and leaves the old chain as it was.
        """
        from nkframe.netlink import links

        mode = AttachMode(str(attach).lower())
        with self._lock:
            old = self.get_endpoint(endpoint_id)
            st = links.get_link(old.spec.node_ifname, netns=self.node_netns)
            kind = DeviceKind.NETKIT if st.kind == "netkit" else DeviceKind.VETH
            ctx = EndpointContext(spec=attrs.evolve(old.spec, attach=mode), node_netns=self.node_netns, bpffs_root=str(self.layout.root), features=self.features)
            ctx.device = DeviceInfo(kind=kind, mode=old.spec.mode, node_ifname=old.spec.node_ifname, node_ifindex=st.ifindex, pod_ifname=old.spec.ifname, pod_ifindex=0, reason="existing device")
            self._select_mechanisms(ctx)
            if all(ctx.mechanisms.get(p.hook) is p.mechanism for p in old.programs) and old.programs:
                return old
            staging = f"switch-{uuid.uuid4().hex[:8]}"
            chains = self._collect(ctx)
            loaded = []
            try:
                loaded = self._load(ctx, chains)
                self._attach_chains(ctx, chains, loaded, pin_prefix=staging)
            except BaseException:
                ctx.undo.rollback()
                raise
            finally:
                _close_all(loaded)
                _close_all(ctx.maps.values())
            # The new chain runs: now take the old one away, then move the new pins into place.
            with netns.enter(self.node_netns):
                for att in old.programs:
                    backend = attach_mod.backend(att.mechanism)
                    backend.detach(attrs.evolve(att, hook=attach_mod.direction_for(att.mechanism, att.hook)))
            ep_dir = self.layout.endpoint_dir(endpoint_id)
            for sub in ("links", "tc"):
                pins.remove_tree(ep_dir / sub)
                if (ep_dir / staging / sub).exists():
                    os.rename(ep_dir / staging / sub, ep_dir / sub)
            pins.remove_tree(ep_dir / staging)
            ctx.undo.commit()
            specstore.replace(self.layout.spec_path(endpoint_id), ctx.spec)
            return self.get_endpoint(endpoint_id)

    # ------------------------------------------------------------------------------------------
    # uplink (node device programs)
    # ------------------------------------------------------------------------------------------

    def setup_uplink(self, ifname: str | None = None) -> list[AttachedProgram]:
        """Attach the plugins' uplink programs (idempotent: existing pins are replaced in place)."""
        from nkframe import bpf
        from nkframe.netlink import links

        ifname = ifname or self.uplink
        if not ifname:
            raise InvalidSpec("no uplink device given")
        with self._lock:
            st = links.get_link(ifname, netns=self.node_netns)
            uctx = UplinkContext(ifname=ifname, ifindex=st.ifindex, node_netns=self.node_netns, bpffs_root=str(self.layout.root), features=self.features)
            specs = [s for c in self.hook.nkframe_uplink_programs(ctx=uctx) for s in (c or ())]
            by_hook: dict[str, list[ProgramSpec]] = defaultdict(list)
            for s in specs:
                by_hook[DeviceHook(s.hook).value].append(s)
            mech = Mechanism.TCX if self.features.supported("tcx") else Mechanism.TC
            if self.attach_mode in (AttachMode.TC, AttachMode.TCX):
                mech = Mechanism(self.attach_mode.value)
            out = []
            undo = UndoLog()
            try:
                for hook, chain in by_hook.items():
                    chain = order_chain(chain)
                    backend = attach_mod.backend(mech)
                    direction = attach_mod.direction_for(mech, hook)
                    for pos, s in enumerate(chain):
                        obj = bpf.BpfObject.open(s.object)
                        try:
                            for name, value in s.globals.items():
                                obj.set_global(name, value)
                            for map_name, scope in s.maps.items():
                                owner = "" if scope == "global" else ifname
                                path = self.layout.map_path("global" if scope == "global" else "device", owner, map_name)
                                os.makedirs(path.parent, exist_ok=True)
                                obj.set_map_pin_path(map_name, str(path))
                            obj.load()
                            prog = obj.programs[s.program]
                            out.append(self._upsert_device_prog(backend, mech, ifname, st.ifindex, hook, direction, pos, s, prog, undo))
                        finally:
                            obj.close()
            except BaseException:
                undo.rollback()
                raise
            return out

    def _upsert_device_prog(self, backend, mech, ifname, ifindex, hook, direction, pos, s, prog, undo) -> AttachedProgram:
        if mech is Mechanism.TC:
            prio = _tc_prio(pos)
            path = self.layout.tc_path("device", ifname, hook, pos, s.name, prio)
            with netns.enter(self.node_netns):
                if path.exists():
                    old = backend.open_pinned(str(path), hook=direction, ifindex=ifindex)
                    return attrs.evolve(backend.update(old, prog), hook=hook)
                att = backend.attach(ifindex, direction, prog, pin=str(path), name=s.name, priority=prio)
        else:
            path = self.layout.link_path("device", ifname, hook, pos, s.name)
            with netns.enter(self.node_netns):
                if path.exists():
                    old = backend.open_pinned(str(path), name=s.name)
                    return attrs.evolve(backend.update(old, prog), hook=hook)
                att = backend.attach(ifindex, direction, prog, pin=str(path), name=s.name)
        undo.push(f"detach {s.name} from {ifname}", _detacher(backend, att, self.node_netns))
        return attrs.evolve(att, hook=hook)

    def teardown_uplink(self, ifname: str | None = None) -> None:
        ifname = ifname or self.uplink
        if not ifname:
            return
        with self._lock:
            self._detach_pinned("device", ifname, missing_ok=True)
            pins.remove_tree(self.layout.device_dir(ifname))

    # ------------------------------------------------------------------------------------------
    # read back
    # ------------------------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint, read from bpffs and the kernel."""
        from nkframe.netlink import links

        out = []
        devices = {st.name: st for st in links.list_links(netns=self.node_netns)}
        for eid in self.layout.endpoint_ids():
            try:
                out.append(self.get_endpoint(eid, _links=devices))
            except NkframeError as e:
                log.warning("endpoint %s unreadable: %s", eid, e)
        return out

    def get_endpoint(self, endpoint_id: str, *, _links: dict | None = None) -> Endpoint:
        from nkframe.netlink import links

        spec = self._spec(endpoint_id)
        if _links is not None:  # a dump the caller already has (reconcile, endpoints)
            st = _links.get(spec.node_ifname)
        else:
            st = links.get_link(spec.node_ifname, netns=self.node_netns) if links.link_exists(spec.node_ifname, netns=self.node_netns) else None
        kind = DeviceKind.VETH
        if st is not None and st.kind == "netkit":
            kind = DeviceKind.NETKIT
        progs = self._read_programs("endpoint", endpoint_id, st.ifindex if st else 0)
        mech = {p.hook: p.mechanism for p in progs}
        return Endpoint(spec=spec, device_kind=kind, node_ifindex=st.ifindex if st else 0, mechanism=mech, programs=progs)

    def _spec(self, endpoint_id: str) -> EndpointSpec:
        path = self.layout.spec_path(endpoint_id)
        if not path.exists():
            raise EndpointNotFound(f"no endpoint {endpoint_id!r} under {self.layout.root}")
        return specstore.load(path)

    def _read_programs(self, scope: str, owner: str, ifindex: int, *, base: Path | None = None) -> tuple[AttachedProgram, ...]:
        """Programs pinned for ``owner`` (or under ``base``: a staging directory)."""
        from nkframe import bpf

        out = []
        by_hook = self.layout.links(scope, owner) if base is None else pins._by_hook(base / "links")
        for hook, paths in by_hook.items():
            for p in paths:
                try:
                    link = bpf.Link.from_pin(str(p))
                except KernelError:
                    continue
                try:
                    info = link.info()
                finally:
                    link.close()
                mech = Mechanism.NETKIT if info.type == BPF_LINK_TYPE_NETKIT else Mechanism.TCX
                _pos, name, _ = pins.parse_pin_name(p)
                out.append(AttachedProgram(name=name, hook=hook, mechanism=mech, prog_id=info.prog_id, link_id=info.id, pin=str(p), ifindex=info.ifindex))
        by_hook = self.layout.tc_pins(scope, owner) if base is None else pins._by_hook(base / "tc")
        for hook, paths in by_hook.items():
            for p in paths:
                _pos, name, prio = pins.parse_pin_name(p)
                try:
                    prog = bpf.Program.from_pin(str(p))
                except KernelError:
                    continue
                try:
                    pid = prog.id
                finally:
                    prog.close()
                out.append(AttachedProgram(name=name, hook=hook, mechanism=Mechanism.TC, prog_id=pid, pin=str(p), tc_priority=prio, tc_handle=_TC_HANDLE, ifindex=ifindex))
        return tuple(out)

    # ------------------------------------------------------------------------------------------
    # remove
    # ------------------------------------------------------------------------------------------

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Remove an endpoint and everything built for it.  Works when parts are already gone."""
        from nkframe.netlink import links

        with self._lock, links.batch():
            ep_dir = self.layout.endpoint_dir(endpoint_id)
            if not ep_dir.exists():
                raise EndpointNotFound(f"no endpoint {endpoint_id!r} under {self.layout.root}")
            try:
                spec = self._spec(endpoint_id)
            except NkframeError as e:
                log.warning("endpoint %s: spec unreadable (%s); removing its pins only", endpoint_id, e)
                pins.remove_tree(ep_dir)
                return
            self._teardown(spec)
            self.hook.nkframe_endpoint_removed(endpoint_id=endpoint_id)

    def _teardown(self, spec: EndpointSpec) -> None:
        from nkframe.netlink import links

        ctx = EndpointContext(spec=spec, node_netns=self.node_netns, bpffs_root=str(self.layout.root), features=self.features)
        # Un-commit first: a crash from here on leaves an endpoint reconcile() removes.
        try:
            self.layout.ready_marker(spec.id).rmdir()
        except FileNotFoundError:
            pass
        # The device goes first and takes its programs with it, so the pod never sends a packet
        # without its programs (policy) while the endpoint is taken apart: detaching first left
        # a window of ~20 ms (the device deletion) in which a veth pod's traffic reached the
        # node unfiltered.  Unconfigure comes after it: state it removes (map entries,
        # counters) can no longer be recreated by the pod's last packets.  The links left
        # pinned are defunct; detaching them only unpins them.
        links.delete_link(spec.node_ifname, netns=self.node_netns, missing_ok=True)
        faults.point("remove.after_device")
        try:
            self.hook.nkframe_endpoint_unconfigure(ctx=ctx)
        except NkframeError as e:
            log.warning("unconfigure %s: %s", spec.id, e)
        faults.point("remove.after_unconfigure")
        self._detach_pinned("endpoint", spec.id, missing_ok=True)
        faults.point("remove.after_detach")
        pins.remove_tree(self.layout.endpoint_dir(spec.id))

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
                backend = attach_mod.backend(att.mechanism)
                direction = attach_mod.direction_for(att.mechanism, att.hook)
                try:
                    backend.detach(attrs.evolve(att, hook=direction))
                except (KernelError, InvalidSpec) as e:
                    if att.mechanism is Mechanism.TC and not ifindex:
                        continue  # the device is gone, and its filters with it
                    if not missing_ok:
                        raise
                    log.warning("detach %s: %s", att.name, e)

    # ------------------------------------------------------------------------------------------
    # reconcile
    # ------------------------------------------------------------------------------------------

    def reset_node(self) -> dict:
        """Take everything nkframe built on this node away (``nkframe node reset``).

        Every endpoint is removed (devices, programs, map entries, pins), every device's
        programs (the uplink's) are detached, the plugins undo what they changed outside bpffs
        (``nkframe_node_reset``: the L3 plugin puts the forwarding sysctls back), and the bpffs
        root goes with its global maps.  Safe to repeat; a root that does not exist is a no-op.
        Returns what was removed.
        """
        removed: list[str] = []
        devices: list[str] = []
        with self._lock:
            # An Engine makes its root when it starts: an empty one is nothing to reset.
            if not self.layout.root.exists() or not any(self.layout.root.iterdir()):
                pins.remove_tree(self.layout.root)
                return {"endpoints": removed, "devices": devices, "root_removed": False}
            for eid in self.layout.endpoint_ids():
                try:
                    self.remove_endpoint(eid)
                except EndpointNotFound:
                    continue
                removed.append(eid)
            dev_root = self.layout.root / "devices"
            for dev in sorted(os.listdir(dev_root)) if dev_root.is_dir() else ():
                self._detach_pinned("device", dev, missing_ok=True)
                pins.remove_tree(self.layout.device_dir(dev))
                devices.append(dev)
            self.hook.nkframe_node_reset(node_netns=self.node_netns, bpffs_root=str(self.layout.root))
            pins.remove_tree(self.layout.root)
        return {"endpoints": removed, "devices": devices, "root_removed": True}

    def datapath_program(self, mode: str) -> str | None:
        """The forwarding program a loaded plugin claims for endpoints in ``mode``
        (``nkframe_datapath_program``), or ``None`` when no loaded plugin forwards that mode."""
        return self.hook.nkframe_datapath_program(mode=str(mode))

    def reconcile(self) -> ReconcileReport:
        """Compare bpffs with the kernel; clean endpoints whose netns or device vanished."""
        from nkframe.netlink import links

        healthy, removed, problems = [], [], []
        with self._lock:
            # One link dump for all endpoints: a netlink session per endpoint was most of the
            # cost of a reconcile (~16 ms each).
            devices = {st.name: st for st in links.list_links(netns=self.node_netns)}
            for eid in self.layout.endpoint_ids():
                try:
                    spec = self._spec(eid)
                except NkframeError as e:
                    problems.append(f"{eid}: unreadable spec ({e}); pins removed")
                    pins.remove_tree(self.layout.endpoint_dir(eid))
                    removed.append(eid)
                    continue
                gone = None
                if not spec.netns.startswith("/") and not netns.exists(spec.netns):
                    gone = f"netns {spec.netns} is gone"
                elif spec.netns.startswith("/") and not os.path.exists(spec.netns):
                    gone = f"netns {spec.netns} is gone"
                elif spec.node_ifname not in devices:
                    gone = f"device {spec.node_ifname} is gone"
                if gone is None and not self.layout.ready_marker(eid).exists():
                    gone = "its add or remove was interrupted"
                if gone:
                    self._teardown(spec)
                    self.hook.nkframe_endpoint_removed(endpoint_id=eid)
                    removed.append(eid)
                    problems.append(f"{eid}: {gone}; cleaned up")
                    continue
                for note in self._settle_switch(eid, devices[spec.node_ifname]):
                    problems.append(f"{eid}: {note}")
                ep = self.get_endpoint(eid, _links=devices)
                dead = [p for p in ep.programs if p.mechanism is not Mechanism.TC and p.ifindex == 0]
                if dead:
                    problems.append(f"{eid}: {len(dead)} link(s) detached from their device")
                healthy.append(eid)
        return ReconcileReport(tuple(healthy), tuple(removed), (), tuple(problems))

    gc = reconcile

    def _settle_switch(self, eid: str, device) -> list[str]:
        """Undo or finish a :meth:`switch_mechanism` that a crash interrupted.

        A switch (1) attaches the new chain pinned under ``<ep>/switch-*/``, (2) detaches the
        old chain (each detach unlinks its pin), (3) moves the staged ``links``/``tc`` into
        place.  While the old chain is whole -- each hook with staged programs still has its
        old pins from position 0, and every old program runs -- the crash came during (1) and
        the staged chain may be partial: detach it.  Otherwise (2) had begun, so (1) was
        complete: finish (2) and (3).  The spec keeps its old ``attach``.
        """
        ep_dir = self.layout.endpoint_dir(eid)
        staged = [d for d in ep_dir.iterdir() if d.name.startswith(_SWITCH_STAGING) and d.is_dir()]
        if not staged:
            return []
        # A TC pin holds a program, not the filter: ask the device which filters still run.
        tc_running = {
            (p.hook, p.tc_priority, p.prog_id)
            for p in list_attached(device.ifindex, netns_name=self.node_netns, netkit=False)
            if p.mechanism is Mechanism.TC
        }

        def running(p: AttachedProgram) -> bool:
            if p.mechanism is Mechanism.TC:
                return (attach_mod.direction_for(p.mechanism, p.hook), p.tc_priority, p.prog_id) in tc_running
            return p.ifindex != 0  # link info reports ifindex 0 once a link is detached

        def whole(old, hooks) -> bool:
            for hook in hooks:
                positions = sorted(pins.parse_pin_name(Path(p.pin))[0] for p in old if p.hook == hook)
                if not positions or positions != list(range(len(positions))):
                    return False
            return all(running(p) for p in old)

        # Two crashes without a reconcile between leave two stagings; only the later switch
        # (the larger program ids: the kernel hands them out in increasing order) can have
        # got past (1).
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
                notes.append(f"detached {len(new)} program(s) staged by an interrupted switch of mechanism; the old chain stays")
            else:
                # Nothing moves into place before every old program is detached, so old pins
                # can remain only on hooks whose staged programs have not moved yet.
                self._detach_staged([p for p in old if p.hook in hooks], running)
                for sub in ("links", "tc"):
                    if (d / sub).exists():
                        pins.remove_tree(ep_dir / sub)
                        os.rename(d / sub, ep_dir / sub)
                notes.append(f"finished a switch of mechanism interrupted after its {len(new)} new program(s) ran")
            pins.remove_tree(d)
            for sub in ("links", "tc"):  # the old mechanism's hook dirs, emptied by (2)
                if (ep_dir / sub).is_dir() and not any(f.is_file() for f in (ep_dir / sub).rglob("*")):
                    pins.remove_tree(ep_dir / sub)
        return notes

    def _detach_staged(self, progs, running) -> None:
        with netns.enter(self.node_netns):
            for p in progs:
                direction = attach_mod.direction_for(p.mechanism, p.hook)
                if p.mechanism is Mechanism.TC and not running(p):
                    # The filter at that priority is gone or runs another program: leave it.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p.pin)
                    continue
                attach_mod.backend(p.mechanism).detach(attrs.evolve(p, hook=direction))

    # ------------------------------------------------------------------------------------------

    def program_names(self) -> dict[int, str]:
        """Program id -> the name nkframe gave it (its ProgramSpec's), for every program this
        root pinned: endpoints' and node devices'.  The kernel keeps only the first 15 bytes
        of a program's function name (BPF_OBJ_NAME_LEN), which is not the spec's name."""
        from nkframe.netlink import links

        out: dict[int, str] = {}
        for ep in self.endpoints():
            out.update((p.prog_id, p.name) for p in ep.programs)
        dev_root = self.layout.root / "devices"
        for dev in sorted(os.listdir(dev_root)) if dev_root.is_dir() else ():
            try:
                ifindex = links.get_link(dev, netns=self.node_netns).ifindex
            except KernelError:
                continue
            out.update((p.prog_id, p.name) for p in self._read_programs("device", dev, ifindex))
        return out

    def attached(self, ifname: str) -> list[AttachedProgram]:
        """Every program attached to a device in the node netns, by any mechanism."""
        from nkframe.netlink import links

        st = links.get_link(ifname, netns=self.node_netns)
        return list_attached(st.ifindex, netns_name=self.node_netns, netkit=st.kind == "netkit")

    # ------------------------------------------------------------------------------------------
    # upgrade (issue 6; the work lives in nkframe/engine_upgrade.py, owned with nkframe/agent)
    # ------------------------------------------------------------------------------------------

    def upgrade(self, endpoint_ids: Iterable[str] | None = None) -> list[Endpoint]:
        """Replace endpoints' programs with what the plugins give now, in place, without a gap;
        maps carry over.  See :mod:`nkframe.engine_upgrade`."""
        from nkframe import engine_upgrade

        return engine_upgrade.upgrade(self, endpoint_ids)


def list_attached(ifindex: int, *, netns_name: str | None, netkit: bool) -> list[AttachedProgram]:
    out: list[AttachedProgram] = []
    with netns.enter(netns_name):
        mechs = [Mechanism.NETKIT] if netkit else []
        mechs += [Mechanism.TCX, Mechanism.TC]
        for mech in mechs:
            backend = attach_mod.backend(mech)
            for direction in backend.directions:
                try:
                    out.extend(backend.query(ifindex, direction))
                except (KernelError, NotSupported) as e:
                    if e.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP) if isinstance(e, KernelError) else True:
                        continue
                    raise
    return out


# ----------------------------------------------------------------------------------------------


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


# Staging directories of switch_mechanism (f"switch-{...}"); reconcile settles crashed ones.
_SWITCH_STAGING = "switch-"


def _staged(path: Path, prefix: str) -> Path:
    """<ep>/links/<hook>/<pin> -> <ep>/<prefix>/links/<hook>/<pin> while a new chain is staged."""
    if not prefix:
        return path
    return path.parents[2] / prefix / path.parents[1].name / path.parent.name / path.name


def _tc_prio(pos: int) -> int:
    from nkframe.attach import tc

    return tc.PRIO_BASE + tc.PRIO_STEP * (pos + 1)


def _group_key(s: ProgramSpec) -> tuple:
    """Specs sharing an object file *and* globals share one load; different globals (say, an
    endpoint id or a counter slot) need their own."""
    return (s.object, tuple(sorted(s.globals.items())))


def programs_by_spec(chains: dict[str, list[ProgramSpec]], loaded: list):
    """ProgramSpec -> its loaded program.  :meth:`Engine._load` opens one object per
    :func:`_group_key`, in first-seen order over the chains; walk them in the same order."""
    keys: dict[tuple, int] = {}
    for chain in chains.values():
        for s in chain:
            keys.setdefault(_group_key(s), len(keys))
    if len(keys) != len(loaded):
        raise PluginError(f"loaded {len(loaded)} objects for {len(keys)} (object, globals) groups")

    def prog_of(s: ProgramSpec):
        obj = loaded[keys[_group_key(s)]]
        try:
            return obj.programs[s.program]
        except KeyError:
            raise PluginError(f"program {s.name}: no function {s.program!r} in {s.object}") from None

    return prog_of


def _detacher(backend, att: AttachedProgram, node_netns: str | None):
    def undo():
        with netns.enter(node_netns):
            backend.detach(att)

    return undo


def _close_all(objs) -> None:
    for o in objs:
        try:
            o.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _make_pm(names, objects, autoload):
    return plugins.make_manager(names, autoload=autoload, extra=objects)
