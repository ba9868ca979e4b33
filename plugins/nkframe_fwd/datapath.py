"""What the L3 and L2 plugins share: options, MACs, routes, the endpoint map, counters.

The two plugins differ only in how the pod reaches its gateway (see their module docs); the
forwarding, the node's routes and the uplink program are the same code.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import struct
from typing import Any, Mapping

import attrs

from nkframe import objects
from nkframe.context import EndpointContext
from nkframe.errors import EndpointExists, InvalidSpec
from nkframe.types import DeviceHook, DeviceKind, DeviceMode, EndpointSpec, Hook, ProgramSpec

from . import layout
from .layout import ENDPOINTS_MAP, STATS_MAP, EndpointEntry, Stat

log = logging.getLogger(__name__)

OPTIONS_KEY = "datapath"
DEFAULT_GW4 = ipaddress.IPv4Address("169.254.1.1")
DEFAULT_GW6 = ipaddress.IPv6Address("fe80::1")
FORWARD_ORDER = 500  # after policy (100)
UPLINK_PROGRAM = "dp_uplink"


# --------------------------------------------------------------------------------------------
# options


@attrs.frozen
class Options:
    """``spec.options["datapath"]``: the gateway addresses the pod routes through.

    Nothing in the node owns them: on veth (L3) the pod has a permanent neighbour entry for
    them, in L2 mode the BPF program answers ARP/neighbour solicitations for them, on netkit L3
    there is no neighbour resolution at all.
    """

    gateway4: ipaddress.IPv4Address = DEFAULT_GW4
    gateway6: ipaddress.IPv6Address = DEFAULT_GW6

    @classmethod
    def from_spec(cls, spec: EndpointSpec) -> "Options":
        raw = spec.options.get(OPTIONS_KEY) or {}
        if not isinstance(raw, Mapping):
            raise InvalidSpec(f"option {OPTIONS_KEY!r} must be a mapping like {{'gateway4': '169.254.1.1'}}")
        unknown = sorted(set(raw) - {"gateway4", "gateway6"})
        if unknown:
            raise InvalidSpec(f"option {OPTIONS_KEY!r}: unknown key(s) {', '.join(unknown)} (known: gateway4, gateway6)")
        gw4 = _addr(raw.get("gateway4", DEFAULT_GW4), 4, "gateway4")
        gw6 = _addr(raw.get("gateway6", DEFAULT_GW6), 6, "gateway6")
        if gw4.is_multicast or gw4.is_unspecified or gw4 == ipaddress.IPv4Address("255.255.255.255"):
            raise InvalidSpec(f"{OPTIONS_KEY}.gateway4 {gw4} must be a unicast address")
        if gw6.is_multicast or gw6.is_unspecified:
            raise InvalidSpec(f"{OPTIONS_KEY}.gateway6 {gw6} must be a unicast address")
        mine = {a.ip for a in spec.addresses}
        for gw in (gw4, gw6):
            if gw in mine:
                raise InvalidSpec(f"gateway {gw} is also an address of endpoint {spec.id}; pick another gateway")
        return cls(gw4, gw6)


def _addr(value: Any, version: int, what: str):
    try:
        a = ipaddress.ip_address(str(value))
    except ValueError:
        raise InvalidSpec(f"{OPTIONS_KEY}.{what} {value!r} is not an IP address") from None
    if a.version != version:
        raise InvalidSpec(f"{OPTIONS_KEY}.{what} {value} must be an IPv{version} address")
    return a


def validate(spec: EndpointSpec) -> None:
    """Checks both datapaths make: host addresses, gateways."""
    for a in spec.addresses:
        if a.network.prefixlen != a.max_prefixlen:
            raise InvalidSpec(
                f"endpoint {spec.id}: address {a} — the L3/L2 datapath gives pods host addresses "
                f"(/{a.max_prefixlen}) and routes everything via the node; use {a.ip}/{a.max_prefixlen}"
            )
    Options.from_spec(spec)


def applies(spec: EndpointSpec, mode: DeviceMode) -> bool:
    """This datapath handles the endpoint: its mode, and a device pair (not a single device)."""
    return spec.mode is mode and spec.device != DeviceKind.NETKIT_SINGLE.value


# --------------------------------------------------------------------------------------------
# MAC addresses


def derived_mac(endpoint_id: str, side: str) -> str:
    """A stable locally administered unicast MAC for one side ("pod"/"node") of an endpoint."""
    h = bytearray(hashlib.sha256(f"nkframe/{side}/{endpoint_id}".encode()).digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02  # unicast, locally administered
    return layout.mac_str(bytes(h))


def l2_macs(spec: EndpointSpec) -> tuple[str, str]:
    """(pod MAC, node-side MAC) of an L2 endpoint: the spec's, else derived from its id."""
    pod = spec.mac or derived_mac(spec.id, "pod")
    node = spec.host_mac or derived_mac(spec.id, "node")
    if pod == node:
        raise InvalidSpec(f"endpoint {spec.id}: pod and node-side MAC are both {pod}; they must differ")
    return pod, node


# --------------------------------------------------------------------------------------------
# programs


def endpoint_program(ctx: EndpointContext, *, name: str, obj: str, program: str, plugin: str,
                     extra_globals: Mapping[str, bytes] | None = None) -> ProgramSpec:
    # No per-endpoint globals and only node-wide maps (the L3 case): the spec is the same for
    # every endpoint, so the engine loads it once per node and every endpoint attaches that copy.
    glob = dict(extra_globals or {})
    return ProgramSpec(
        name=name,
        object=objects.path(obj),
        program=program,
        hook=Hook.FROM_POD,
        order=FORWARD_ORDER,
        globals=glob,
        maps={ENDPOINTS_MAP: "global", STATS_MAP: "global"},
        plugin=plugin,
        shared=not glob,
    )


def uplink_program() -> ProgramSpec:
    """The uplink ingress program; one per node whichever datapath plugins are loaded."""
    return ProgramSpec(
        name=UPLINK_PROGRAM,
        object=objects.path("l3"),
        program="dp_uplink_in",
        hook=DeviceHook.INGRESS,
        order=FORWARD_ORDER,
        # "endpoint" scope on a device program means "this device": devices/<ifname>/maps/.
        maps={ENDPOINTS_MAP: "global", STATS_MAP: "endpoint"},
        plugin="datapath",
    )


def add_uplink_program(results: list) -> list:
    """For a ``wrapper=True`` implementation of ``nkframe_uplink_programs``: add the uplink
    program unless another datapath plugin (L3 or L2, both wrap this hook) already did."""
    results = list(results or [])
    for contribution in results:
        for s in contribution or ():
            if isinstance(s, ProgramSpec) and s.name == UPLINK_PROGRAM:
                return results
    results.append([uplink_program()])
    return results


# --------------------------------------------------------------------------------------------
# configure / unconfigure


FORWARDING_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
#: Where the values in force before the first endpoint are kept (``<root>/globals/<name>``).
SAVED_SYSCTLS = "l3_sysctls_before"


def _saved_sysctls_path(bpffs_root: str):
    from nkframe import pins

    return pins.Layout(bpffs_root).globals_dir() / SAVED_SYSCTLS


def enable_forwarding(node_netns: str | None, bpffs_root: str | None = None) -> None:
    """The node routes for its pods: bpf_fib_lookup() refuses to answer (FWD_DISABLED) on an
    input device without forwarding, and the stack forwards what the programs hand it.

    Only in the node namespace the engine serves.  Node-wide and shared by every endpoint, so it
    is not undone on removal; the values in force before nkframe first switched them are kept
    in bpffs (``bpffs_root``), and ``nkframe node reset`` puts them back
    (:func:`restore_forwarding`).  /proc/sys/net belongs to the namespace of the thread that
    opens it: links.sysctl switches only the netns.
    """
    from nkframe import specstore
    from nkframe.netlink import links

    if bpffs_root is not None:
        saved = _saved_sysctls_path(bpffs_root)
        if not saved.exists():
            before = {k: links.sysctl(k, netns=node_netns) for k in FORWARDING_SYSCTLS}
            specstore.store_doc(saved, before)
    links.sysctls({k: 1 for k in FORWARDING_SYSCTLS}, netns=node_netns)


def restore_forwarding(node_netns: str | None, bpffs_root: str) -> dict | None:
    """Put back the forwarding sysctls as they were before nkframe switched them on; the
    values restored, or ``None`` when nothing was recorded (nkframe changed nothing)."""
    from nkframe import specstore
    from nkframe.netlink import links

    saved = specstore.load_doc(_saved_sysctls_path(bpffs_root))
    if not saved:
        return None
    links.sysctls({k: v for k, v in saved.items() if k in FORWARDING_SYSCTLS}, netns=node_netns)
    _saved_sysctls_path(bpffs_root).unlink()
    return saved


def _has_to_pod_programs(ctx: EndpointContext) -> bool:
    """Did any plugin attach TO_POD programs?  Then the uplink must not bypass them."""
    return any(p.hook == Hook.TO_POD.value for p in ctx.programs)


def configure(ctx: EndpointContext, *, l2: bool) -> None:
    from nkframe.netlink import links

    spec, dev = ctx.spec, ctx.device
    node_ns, pod_ns = ctx.node_netns, spec.netns
    opts = Options.from_spec(spec)
    # Before anything changes: a node route or map entry of another endpoint must not be
    # replaced (and then deleted by our rollback).
    _check_addresses_free(ctx.maps[ENDPOINTS_MAP], spec)
    enable_forwarding(node_ns, ctx.bpffs_root)

    if l2:
        pod_mac, node_mac = l2_macs(spec)
        # Set both ends explicitly (the devices were made with the spec's MACs or random ones).
        # No undo needed: the devices themselves are deleted on rollback.
        if (links.get_link(dev.node_ifname, netns=node_ns).address or "").lower() != node_mac:
            links.set_address(dev.node_ifname, node_mac, netns=node_ns)
        if (links.get_link(dev.pod_ifname, netns=pod_ns).address or "").lower() != pod_mac:
            links.set_address(dev.pod_ifname, pod_mac, netns=pod_ns)
    else:
        # netkit L3 devices have no address (all zero); veth ends keep their kernel-chosen ones.
        node_mac = links.get_link(dev.node_ifname, netns=node_ns).address or layout.ZERO_MAC
        pod_mac = links.get_link(dev.pod_ifname, netns=pod_ns).address or layout.ZERO_MAC
    noarp = dev.kind is DeviceKind.NETKIT and not l2

    # IPv6 addresses without duplicate address detection: the pod's /128 is unique by
    # construction, and a tentative address cannot be used for a second or two after link-up.
    v4 = [a for a in spec.addresses if a.version == 4]
    v6 = [a for a in spec.addresses if a.version == 6]
    for a in v6:
        links.del_address(dev.pod_ifname, str(a), netns=pod_ns, missing_ok=True)
        links.add_address(dev.pod_ifname, str(a), netns=pod_ns, nodad=True, exist_ok=True)

    # Routes need devices that are up (IPv4 refuses a next hop on a down device).  The programs
    # are attached already, so every packet from here on takes the datapath.
    links.set_up(dev.node_ifname, netns=node_ns)
    links.set_up(dev.pod_ifname, netns=pod_ns)

    # Pod: default routes via the gateway, on-link (no address of the pod covers it).
    for addrs, gw, dst in ((v4, opts.gateway4, "default"), (v6, opts.gateway6, "default6")):
        if not addrs:
            continue
        if not noarp and not l2:
            # veth in L3 mode: the pod never asks for the gateway's MAC.
            links.add_neighbour(dev.pod_ifname, str(gw), node_mac, netns=pod_ns)
        # A link-local IPv6 gateway is on-link by definition; anything else needs the flag.
        onlink = not (gw.version == 6 and gw.is_link_local)
        links.add_route(dst, via=str(gw), dev=dev.pod_ifname, onlink=onlink, netns=pod_ns, replace=True)

    # Node: a host route per pod address through the node-side device, and (ARP-capable
    # devices) a permanent neighbour, so the node never has to ask the pod either.
    for a in spec.addresses:
        ip = str(a.ip)
        links.add_host_route(ip, dev.node_ifname, netns=node_ns)
        ctx.undo.push(f"delete route {ip}", _route_deleter(ip, dev.node_ifname, node_ns))
        if not noarp:
            links.add_neighbour(dev.node_ifname, ip, pod_mac, netns=node_ns)

    flags = (layout.F_L2 if l2 else 0) | (layout.F_TO_POD_CHAIN if _has_to_pod_programs(ctx) else 0)
    entry = EndpointEntry(
        ifindex=dev.node_ifindex,
        flags=flags,
        owner=layout.owner_tag(spec.id),
        pod_mac=pod_mac,
        node_mac=node_mac,
    )
    m = ctx.maps[ENDPOINTS_MAP]
    for a in spec.addresses:
        key = layout.endpoint_key(a.ip)
        m.update(key, entry.pack())
        ctx.undo.push(f"forget {a.ip}", _entry_deleter(m, key, entry.owner))


def _check_addresses_free(m, spec: EndpointSpec) -> None:
    owner = layout.owner_tag(spec.id)
    for a in spec.addresses:
        old = m.lookup(layout.endpoint_key(a.ip))
        if old is None:
            continue
        prev = EndpointEntry.unpack(old)
        if prev.owner != owner:
            raise EndpointExists(
                f"address {a.ip} already belongs to another endpoint (node-side ifindex "
                f"{prev.ifindex}); remove that endpoint first or pick another address"
            )


def _route_deleter(ip: str, dev: str, node_ns: str | None):
    def undo():
        from nkframe.netlink import links

        addr = ipaddress.ip_address(ip)
        links.del_route(f"{ip}/{addr.max_prefixlen}", dev=dev, netns=node_ns, missing_ok=True)

    return undo


def _entry_deleter(m, key: bytes, owner: int):
    def undo():
        raw = m.lookup(key)
        if raw is not None and EndpointEntry.unpack(raw).owner == owner:
            m.delete(key)

    return undo


def endpoints_map_path(bpffs_root: str) -> str:
    from nkframe import pins

    return str(pins.Layout(bpffs_root).map_path("global", "", ENDPOINTS_MAP))


def unconfigure(ctx: EndpointContext) -> None:
    """Forget the endpoint's addresses and its counter slot; whatever is already gone is fine.

    The engine deletes the device before this runs, and the node's host routes through it went
    with it, so there is no route to remove here.
    """
    from nkframe import bpf

    owner = layout.owner_tag(ctx.spec.id)
    path = endpoints_map_path(ctx.bpffs_root)
    ifindexes = set()
    if os.path.exists(path):
        with bpf.Map.from_pin(path) as m:
            for a in ctx.spec.addresses:
                key = layout.endpoint_key(a.ip)
                raw = m.lookup(key)
                if raw is None:
                    continue
                entry = EndpointEntry.unpack(raw)
                if entry.owner == owner:  # never another endpoint's entry for the address
                    ifindexes.add(entry.ifindex)
                    m.delete(key)
    stats = stats_map_path(ctx.bpffs_root)
    if ifindexes and os.path.exists(stats):
        # The device's counters go with it (a later device may get the same ifindex).
        with bpf.Map.from_pin(stats) as m:
            for idx in ifindexes:
                m.delete(struct.pack("<I", idx))


# --------------------------------------------------------------------------------------------
# reading back


def stats_map_path(bpffs_root: str) -> str:
    from nkframe import pins

    return str(pins.Layout(bpffs_root).map_path("global", "", STATS_MAP))


def _read_stats(path: str, ifindexes: set[int] | None) -> dict[str, tuple[int, int]]:
    """Counters summed over the given devices' slots (None: every slot in the map)."""
    from nkframe import bpf

    totals = {s.name.lower(): (0, 0) for s in Stat}
    if not os.path.exists(path):
        return totals
    with bpf.Map.from_pin(path) as m:
        keys = list(m.keys()) if ifindexes is None else [struct.pack("<I", i) for i in ifindexes]
        for key in keys:
            per_cpu = m.lookup_percpu(key)
            if per_cpu is None:
                continue
            for s in Stat:
                p, b = layout.sum_counters(per_cpu, s)
                tp, tb = totals[s.name.lower()]
                totals[s.name.lower()] = (tp + p, tb + b)
    return totals


def endpoint_ifindexes(bpffs_root: str, endpoint_id: str) -> set[int]:
    """The node-side ifindex of an endpoint, from its address entries (empty without any)."""
    owner = layout.owner_tag(endpoint_id)
    return {e.ifindex for e in endpoint_entries(bpffs_root).values() if e.owner == owner}


def endpoint_stats(bpffs_root: str, endpoint_id: str) -> dict[str, tuple[int, int]]:
    """Counter name -> (packets, bytes) of one endpoint's forwarding program (its node-side
    device's slot in the node's ``nk_dp_stats``; all zero for an endpoint with no address)."""
    return _read_stats(stats_map_path(bpffs_root), endpoint_ifindexes(bpffs_root, endpoint_id))


def uplink_stats(bpffs_root: str, ifname: str) -> dict[str, tuple[int, int]]:
    """Counter name -> (packets, bytes) of the uplink program on ``ifname``."""
    from nkframe import pins

    return _read_stats(str(pins.Layout(bpffs_root).map_path("device", ifname, STATS_MAP)), None)


def endpoint_entries(bpffs_root: str) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, EndpointEntry]:
    """Every address the datapath delivers locally, with where to."""
    from nkframe import bpf

    path = endpoints_map_path(bpffs_root)
    if not os.path.exists(path):
        return {}
    with bpf.Map.from_pin(path) as m:
        return {layout.parse_key(k): EndpointEntry.unpack(v) for k, v in m.items()}
