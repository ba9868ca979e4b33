"""The :class:`Engine`: one node's endpoints -- add, remove, read back, the uplink.

The engine keeps no state of its own: every query reads bpffs and the kernel, so a restarted
process sees exactly what a crashed one left (see :mod:`nkframe.pins` for the layout).
``add_endpoint`` is transactional: each step registers its undo, and a failure at any step rolls
back every earlier one, so a failed add leaves no device, pin, map or link behind.

Its other verbs live beside it, one concern per module, as mixins of this class:
:mod:`~nkframe.engine.chains` (mechanisms, loading, attaching), :mod:`~nkframe.engine.staging`
(switch and upgrade without a gap) and :mod:`~nkframe.engine.reconcile` (reconcile, gc, reset).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections import defaultdict
from typing import Iterable

import pluggy

from nkframe import attach as attach_mod
from nkframe import builtin, faults, netns, pins, progcache, specstore
from nkframe.context import DeviceInfo, EndpointContext, UndoLog, UplinkContext
from nkframe.engine.chains import ChainsMixin, close_all, detacher, list_attached, order_chain
from nkframe.engine.reconcile import ReconcileMixin
from nkframe.engine.staging import StagingMixin
from nkframe.plugins import make_manager
from nkframe.errors import (
    EndpointExists,
    EndpointNotFound,
    InvalidSpec,
    KernelError,
    NkframeError,
    NotSupported,
    PluginError,
)
from nkframe.types import (
    AttachedProgram,
    AttachMode,
    DeviceHook,
    DeviceKind,
    Endpoint,
    EndpointSpec,
    LeaseInfo,
    Mechanism,
    ProgramSpec,
)

log = logging.getLogger(__name__)


class Engine(ChainsMixin, StagingMixin, ReconcileMixin):
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
        self.pm: pluggy.PluginManager = make_manager(plugins, autoload=autoload, extra=plugin_objects)
        self._features = features
        self.uplink = uplink
        self._lock = threading.RLock()
        # Loaded objects of shared programs (ProgramSpec.shared), reused by every add.
        self._shared: collections.OrderedDict[tuple, progcache.SharedObject] = collections.OrderedDict()

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
                if spec.single:
                    # The kernel refuses programs on a single device: none are collected.
                    self._refuse_programs(ctx, self._collect(ctx))
                    chains = {}
                else:
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
                close_all(loaded)
                close_all(ctx.maps.values())
            ctx.undo.commit()
            endpoint = Endpoint(
                spec=spec,
                device_kind=ctx.device.kind,
                node_ifindex=ctx.device.node_ifindex or ctx.device.pod_ifindex,
                mechanism=ctx.mechanisms,
                reasons={"device": ctx.device.reason, **ctx.reasons},
                programs=attached,
                leases=self._read_leases(spec, ctx.device.pod_ifindex) if spec.single else (),
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
        # Only the families asked for, and the node's IPv6 link-local addresses (one per device
        # that is up: one per endpoint) only when a link-local address is asked for (types
        # refuses those): nothing else can equal one or be the network address of its fe80::/64.
        mine = links.node_addresses(self.node_netns, versions={a.version for a in spec.addresses},
                                    link_local=any(a.version == 6 and a.ip.is_link_local for a in spec.addresses))
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
        if spec.single and links.link_exists(spec.ifname, netns=spec.netns):
            raise EndpointExists(f"device {spec.ifname} already exists in pod netns {spec.netns}; "
                                 "pick another ifname or remove it")

    @staticmethod
    def _refuse_programs(ctx: EndpointContext, chains: dict[str, list[ProgramSpec]]) -> None:
        progs = [s for chain in chains.values() for s in chain]
        if progs:
            named = ", ".join(f"{s.name} ({s.plugin or 'a plugin'})" for s in progs)
            raise InvalidSpec(
                f"endpoint {ctx.spec.id}: a netkit single device runs no BPF programs (Linux refuses "
                f"to attach them), but plugins gave {named}; a VM endpoint's traffic is steered and "
                "policed on the uplink's path instead: drop the options that ask for them")

    def _read_leases(self, spec: EndpointSpec, ifindex: int) -> tuple[LeaseInfo, ...]:
        """The leases of a VM endpoint's single device, as the kernel reports them.  Linux 7.3
        reports a lease only from the physical side, so the node's leased queues are read and
        those held by the pod's device kept (the node names the pod's namespace by an id)."""
        from nkframe.netlink import links, netdev

        if not ifindex:
            return ()
        with netns.ipr(self.node_netns) as ipr:
            nsid = netns.netns_id(ipr, spec.netns)
        with netdev.NetdevFamily(self.node_netns) as fam:
            held = fam.leases_held_by(ifindex, nsid)
        names = {st.ifindex: st.name for st in links.list_links(netns=self.node_netns)}
        return tuple(
            LeaseInfo(queue=vq, uplink_ifindex=q.ifindex, uplink_queue=q.id, uplink=names.get(q.ifindex, ""))
            for vq, q in held
        )

    def _create_device(self, ctx: EndpointContext) -> DeviceInfo:
        dev = self.hook.nkframe_device_create(ctx=ctx)
        if not isinstance(dev, DeviceInfo):
            raise PluginError(f"nkframe_device_create returned {dev!r}, not a DeviceInfo")
        return dev

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
            if self.attach_mode in (AttachMode.TC, AttachMode.TCX):
                mech = Mechanism(self.attach_mode.value)
            else:  # the best a node device takes (netkit links only go on netkit devices)
                mech = next(iter(self.candidates(None)), None)
                if mech is None:
                    raise NotSupported("attach", f"no attach mechanism for {ifname}: {self._why_not(None, None)}")
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
                            path = backend.pin_path(self.layout, "device", ifname, hook, pos, s.name)
                            with netns.enter(self.node_netns):
                                # Replaced in place when pinned already (a second setup_uplink).
                                att, new = backend.upsert(st.ifindex, direction, prog, pin=str(path), name=s.name, hook=hook)
                            if new:
                                undo.push(f"detach {s.name} from {ifname}", detacher(backend, att, self.node_netns))
                            out.append(att)
                        finally:
                            obj.close()
            except BaseException:
                undo.rollback()
                raise
            return out

    def teardown_uplink(self, ifname: str | None = None) -> None:
        ifname = ifname or self.uplink
        if not ifname:
            return
        with self._lock:
            self._detach_pinned("device", ifname, missing_ok=True)
            pins.remove_tree(self.layout.device_dir(ifname))

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint, read from bpffs and the kernel."""
        from nkframe.netlink import links

        out = []
        devices = {st.name: st for st in links.list_links(netns=self.node_netns)}
        for eid in self.layout.endpoint_ids():
            try:
                out.append(self.get_endpoint(eid, _links=devices))
            except EndpointNotFound:
                # Being added (its directory comes before its spec) or removed while we read:
                # not there yet or any more, nothing to warn about.  Reads run alongside
                # changes in the agent (endpoint.list, metrics scrapes).
                continue
            except NkframeError as e:
                log.warning("endpoint %s unreadable: %s", eid, e)
        return out

    def get_endpoint(self, endpoint_id: str, *, _links: dict | None = None) -> Endpoint:
        from nkframe.netlink import links

        spec = self._spec(endpoint_id)
        if spec.single:
            return self._get_single(spec)
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

    def _single_device(self, spec: EndpointSpec):
        """A VM endpoint's single device in its pod (a LinkState), or None when it (or the pod's
        namespace) is gone."""
        from nkframe.netlink import links

        try:
            if links.link_exists(spec.ifname, netns=spec.netns):
                st = links.get_link(spec.ifname, netns=spec.netns)
                return st if st.kind == "netkit" else None
        except NkframeError:
            pass
        return None

    def _get_single(self, spec: EndpointSpec) -> Endpoint:
        st = self._single_device(spec)
        leases: tuple = ()
        if st is not None:
            try:
                leases = self._read_leases(spec, st.ifindex)
            except NkframeError as e:
                log.warning("endpoint %s: leases unreadable: %s", spec.id, e)
        return Endpoint(spec=spec, device_kind=DeviceKind.NETKIT_SINGLE, node_ifindex=st.ifindex if st else 0,
                        mechanism={}, programs=(), leases=leases)

    def _spec(self, endpoint_id: str) -> EndpointSpec:
        path = self.layout.spec_path(endpoint_id)
        if not path.exists():
            raise EndpointNotFound(f"no endpoint {endpoint_id!r} under {self.layout.root}")
        return specstore.load(path)

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
        if spec.single:  # in the pod (the node-side name only holds it during an add)
            builtin.delete_single(spec.ifname, spec.netns)
        faults.point("remove.after_device")
        try:
            self.hook.nkframe_endpoint_unconfigure(ctx=ctx)
        except NkframeError as e:
            log.warning("unconfigure %s: %s", spec.id, e)
        faults.point("remove.after_unconfigure")
        self._detach_pinned("endpoint", spec.id, missing_ok=True)
        faults.point("remove.after_detach")
        pins.remove_tree(self.layout.endpoint_dir(spec.id))

    def datapath_program(self, mode: str) -> str | None:
        """The forwarding program a loaded plugin claims for endpoints in ``mode``
        (``nkframe_datapath_program``), or ``None`` when no loaded plugin forwards that mode."""
        return self.hook.nkframe_datapath_program(mode=str(mode))

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
