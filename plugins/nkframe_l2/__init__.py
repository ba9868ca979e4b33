"""nkframe's L2 datapath plugin (entry point ``l2``): pods on netkit L2 devices or veth pairs,
with MAC addresses on both ends and a gateway they resolve like any router.

Acts on endpoints with ``mode: l2`` and a device pair.  Everything the L3 plugin does (routes,
host addresses, the FIB-driven forwarding program, the shared ``nk_endpoints`` map, the uplink
program; see :mod:`nkframe_l3`), plus:

* **MACs set explicitly on both ends**: ``spec.mac`` (pod) and ``spec.host_mac`` (node side), or
  when absent, locally administered addresses derived from the endpoint id
  (:func:`nkframe_l3.derived_mac`), so an endpoint keeps its MACs across re-creation.
* **The gateway is answered in BPF**: the pod's default routes point at ``169.254.1.1`` (on-link)
  and ``fe80::1``; ARP requests and IPv6 neighbour solicitations for those addresses are
  answered by the program ``l2_fwd`` itself with the node-side MAC and sent straight back to the
  pod.  Nothing in the node owns the gateway addresses.
* **L2 headers rewritten on redirect**: a packet for a local pod leaves with that pod's MAC as
  destination and its node-side MAC as source, so the receiving device sees it as addressed to
  itself (a netkit L2 peer or veth drops frames for other MACs as PACKET_OTHERHOST).
"""

from __future__ import annotations

from nkframe.context import EndpointContext, UplinkContext
from nkframe.hookspecs import hookimpl
from nkframe.types import DeviceMode, EndpointSpec

from nkframe_fwd import datapath, layout

PLUGIN = "l2"
PROGRAM = "l2_fwd"


def _mine(spec: EndpointSpec) -> bool:
    return datapath.applies(spec, DeviceMode.L2)


@hookimpl
def nkframe_endpoint_validate(spec: EndpointSpec) -> None:
    if _mine(spec):
        datapath.validate(spec)
        datapath.l2_macs(spec)


@hookimpl
def nkframe_programs_collect(ctx: EndpointContext):
    if not _mine(ctx.spec) or ctx.device is None or ctx.device.pod_ifname is None:
        return None
    opts = datapath.Options.from_spec(ctx.spec)
    _pod_mac, node_mac = datapath.l2_macs(ctx.spec)
    extra = {
        "NODE_MAC": layout.mac_bytes(node_mac),
        "GW4": opts.gateway4.packed,  # network order, as the program compares it
        "GW6": opts.gateway6.packed,
    }
    return [datapath.endpoint_program(ctx, name=PROGRAM, obj="l2", program="l2_from_pod", plugin=PLUGIN, extra_globals=extra)]


@hookimpl(wrapper=True)
def nkframe_uplink_programs(ctx: UplinkContext):
    results = yield
    return datapath.add_uplink_program(results)


@hookimpl
def nkframe_endpoint_configure(ctx: EndpointContext) -> None:
    if _mine(ctx.spec) and ctx.device is not None and ctx.device.pod_ifname is not None:
        datapath.configure(ctx, l2=True)


@hookimpl
def nkframe_endpoint_unconfigure(ctx: EndpointContext) -> None:
    if _mine(ctx.spec):
        datapath.unconfigure(ctx)


@hookimpl
def nkframe_datapath_program(mode: str):
    """This plugin forwards L2 endpoints with :data:`PROGRAM`."""
    return PROGRAM if mode == "l2" else None


@hookimpl
def nkframe_node_reset(node_netns, bpffs_root: str) -> None:
    """The shared datapath switched forwarding on for L2 endpoints too: put it back (a second
    call, from the L3 plugin, finds nothing left to do)."""
    datapath.restore_forwarding(node_netns, bpffs_root)
