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

from nkframe.context import EndpointContext
from nkframe.types import DeviceMode

from nkframe_fwd import datapath, layout
from nkframe_fwd.hooks import ForwardingHooks

PLUGIN = "l2"
PROGRAM = "l2_fwd"


def _program_globals(ctx: EndpointContext) -> dict[str, bytes]:
    """What l2_fwd needs per endpoint: the node-side MAC it answers the gateway with, and the
    gateway addresses."""
    opts = datapath.Options.from_spec(ctx.spec)
    _pod_mac, node_mac = datapath.l2_macs(ctx.spec)
    extra = {
        "NODE_MAC": layout.mac_bytes(node_mac),
        "GW4": opts.gateway4.packed,  # network order, as the program compares it
        "GW6": opts.gateway6.packed,
    }
    return extra


HOOKS = ForwardingHooks(mode=DeviceMode.L2, plugin=PLUGIN, program=PROGRAM, obj="l2",
                        function="l2_from_pod", program_globals=_program_globals,
                        validate=datapath.l2_macs)
HOOKS.export(globals())
