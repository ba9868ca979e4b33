"""nkframe's L3 datapath plugin (entry point ``l3``): routed pods on netkit L3 devices, or veth
pairs behaving the same way where the kernel has no netkit.

Acts on endpoints with ``mode: l3`` (the default) and a device pair.  What an endpoint gets:

* **Pod**: its addresses as host addresses (/32, /128; other prefixes are refused) and default
  routes ``via 169.254.1.1`` (on-link) and ``via fe80::1`` on its interface.  On netkit L3 the
  device is NOARP, so the gateway needs no resolution; on veth the pod has a permanent
  neighbour entry for it with the node-side MAC.  The pod never sends ARP or neighbour
  solicitations for the gateway either way.  The gateways can be changed with
  ``options={"datapath": {"gateway4": ..., "gateway6": ...}}``.
* **Node**: a host route per pod address through the node-side device (and on veth a permanent
  neighbour entry with the pod's MAC); IPv4 and IPv6 forwarding on in the node namespace.
* **Program** ``l3_fwd`` on ``FROM_POD`` at order 500 (policy runs first at 100): a FIB lookup in
  the node's namespace decides — another local pod: ``bpf_redirect`` to its node-side device
  (never ``bpf_redirect_peer``, which does nothing from netkit's xmit context); another device
  (the uplink): ``bpf_redirect_neigh`` with the FIB's next hop; a node address, an unreachable
  destination and everything not IP: handed to the node's stack ("continue").
* **Map entries** in the global ``nk_endpoints`` map: pod address -> node-side ifindex, MACs,
  flags.  Shared with the L2 plugin, so L3 and L2 pods on one node reach each other directly.
* **Uplink** (``Engine.setup_uplink``): ``dp_uplink`` on ingress sends packets for local pods
  straight into the pod with ``bpf_redirect_peer`` — or with ``bpf_redirect`` through the
  node-side device when some plugin attached ``TO_POD`` programs, so ingress policy is never
  bypassed.

Counters per endpoint (``nk_dp_stats``, see :class:`Stat`): :func:`endpoint_stats`,
:func:`uplink_stats`; the address table: :func:`endpoint_entries`.
"""

from __future__ import annotations

from nkframe.types import DeviceMode

from nkframe_fwd.datapath import (
    Options,
    derived_mac,
    endpoint_entries,
    endpoint_stats,
    uplink_stats,
)
from nkframe_fwd.hooks import ForwardingHooks
from nkframe_fwd.layout import EndpointEntry, Stat

__all__ = [
    "EndpointEntry",
    "Options",
    "Stat",
    "derived_mac",
    "endpoint_entries",
    "endpoint_stats",
    "uplink_stats",
]

PLUGIN = "l3"
PROGRAM = "l3_fwd"

HOOKS = ForwardingHooks(mode=DeviceMode.L3, plugin=PLUGIN, program=PROGRAM, obj="l3",
                        function="l3_from_pod")
HOOKS.export(globals())
