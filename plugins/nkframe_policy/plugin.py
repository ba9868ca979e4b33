"""The policy plugin's hook implementations (entry point ``policy``).

An endpoint gets policy programs only when its spec carries ``options["policy"]`` (a mapping in
the :class:`~nkframe_policy.model.Policy` format).  ``policy_egress`` runs on packets the pod
sends (``from-pod``), ``policy_ingress`` on packets to it (``to-pod``); both are ordered at 100,
before forwarding (500).  Their maps are shared by every endpoint and pinned in the engine's
``<root>/globals/maps``.

The uplink gets ``policy_uplink`` (ingress, order 100, before the datapath's delivery at 500):
packets from outside the node to an endpoint's address are judged by that endpoint's ingress
policy there, because the datapath may hand them to the pod with ``bpf_redirect_peer()``, which
skips the to-pod hook.  The endpoint's addresses are entered in ``nk_pol_addrs`` on configure.
When the datapath delivers through the node-side device instead (the L3 plugin does while any
to-pod program is attached), ``policy_ingress`` judges such a packet a second time: same
verdict, counted twice.
"""

from __future__ import annotations

import threading
from pathlib import Path

from nkframe import hookimpl, pins
from nkframe.context import EndpointContext, UplinkContext
from nkframe.errors import InvalidSpec
from nkframe.types import EndpointSpec, Metric

from .model import Policy

OPTION = "policy"
ORDER = 100

_lock = threading.Lock()
_maps: dict[str, object] = {}


def _global_maps(bpffs_root: str) -> str:
    """The engine's directory of global maps (``<root>/globals/maps``), from its layout."""
    return str(pins.Layout(bpffs_root).map_path("global", "", "x").parent)


def policy_maps(bpffs_root: str):
    """One :class:`PolicyMaps` per bpffs root per process (opening one loads the object)."""
    from .maps import PolicyMaps

    pin_dir = _global_maps(bpffs_root)
    with _lock:
        pm = _maps.get(pin_dir)
        if pm is None or not Path(pin_dir).is_dir():
            pm = _maps[pin_dir] = PolicyMaps(pin_dir)
        return pm


def forget(bpffs_root: str) -> None:
    """Drop the cached maps of a root (its bpffs is going away)."""
    pin_dir = _global_maps(bpffs_root)
    with _lock:
        pm = _maps.pop(pin_dir, None)
    if pm is not None:
        pm.close()


def _policy(spec: EndpointSpec) -> Policy | None:
    raw = spec.options.get(OPTION)
    return None if raw is None else Policy.from_dict(raw)


def _l3_offset(ctx: EndpointContext) -> int:
    # Every device nkframe makes hands its programs an Ethernet header, netkit in L3 mode
    # included: netkit devices are ether_setup() devices (L3 mode only makes them NOARP with an
    # all-zero address, so the neighbour layer writes zero MACs), and netkit_xmit() runs the
    # programs before eth_type_trans() pulls the header.  Offset 0 is for devices without a
    # link-layer header (tun, wireguard), which nkframe does not create.
    return 14


@hookimpl
def nkframe_endpoint_validate(spec: EndpointSpec) -> None:
    policy = _policy(spec)  # raises PolicyError (an InvalidSpec) naming the bad field
    if policy is not None and spec.single:
        raise InvalidSpec(
            f"endpoint {spec.id}: a policy needs BPF programs on the endpoint's device, and a netkit "
            "single device (a VM endpoint) runs none; a VM's traffic is to be policed on the uplink's "
            "XDP path (not built yet): add the endpoint without the policy option")


@hookimpl
def nkframe_programs_collect(ctx: EndpointContext):
    if _policy(ctx.spec) is None:
        return None
    pm = policy_maps(ctx.bpffs_root)
    specs = pm.program_specs(ctx.spec.id, _l3_offset(ctx), order=ORDER)
    ctx.undo.push(f"release policy slot of {ctx.spec.id}", lambda: pm.remove(ctx.spec.id))
    return specs


@hookimpl
def nkframe_uplink_programs(ctx: UplinkContext):
    return [policy_maps(ctx.bpffs_root).uplink_program_spec(order=ORDER)]


@hookimpl
def nkframe_endpoint_configure(ctx: EndpointContext) -> None:
    policy = _policy(ctx.spec)
    if policy is None:
        return
    pm = policy_maps(ctx.bpffs_root)
    pm.apply(ctx.spec.id, policy)
    # Rolled back with the slot (programs_collect registered pm.remove, which drops these too).
    pm.set_addresses(ctx.spec.id, [a.ip for a in ctx.spec.addresses])


@hookimpl
def nkframe_endpoint_unconfigure(ctx: EndpointContext) -> None:
    if ctx.spec.options.get(OPTION) is None:
        return
    policy_maps(ctx.bpffs_root).remove(ctx.spec.id)


def apply(bpffs_root: str, endpoint_id: str, policy: Policy | dict, addresses=None) -> None:
    """Replace an endpoint's policy in place (atomic from the packet's view).

    ``addresses`` (the endpoint's IPs or interfaces) enter ``nk_pol_addrs`` too, so the uplink
    program judges packets from outside the node by this policy.  Callers giving a policy to
    an endpoint that had none must pass them: without them the uplink let every packet from
    outside through (the L3 datapath delivers those with bpf_redirect_peer(), which skips the
    to-pod hook) while the endpoint's own programs judged only pod and node traffic.
    """
    pm = policy_maps(bpffs_root)
    pm.apply(endpoint_id, policy)
    if addresses is not None:
        pm.set_addresses(endpoint_id, addresses)


def counters(bpffs_root: str, endpoint_id: str):
    return policy_maps(bpffs_root).counters(endpoint_id)


@hookimpl
def nkframe_endpoint_counters(endpoint, bpffs_root: str):
    """Drops by reason and packets per rule that moved, for ``nkframe status``."""
    if endpoint.spec.options.get(OPTION) is None:
        return None
    c = counters(bpffs_root, endpoint.id)
    out = {f"drop_{reason}": cnt.packets for reason, cnt in c.drops.items()}
    out.update({f"rule_{r.direction.value}[{r.index}]": r.packets for r in c.rules if r.packets})
    return out


@hookimpl
def nkframe_metrics(bpffs_root: str):
    """Verdicts and drops per endpoint, and the node's drops by reason, for the agent's
    Prometheus endpoint.  Aggregate counters only (``nk_pol_stats``, ``nk_pol_drops``): one
    lookup per endpoint holding a policy slot, none per rule.  Nothing before the policy maps
    exist (they are not created for a scrape)."""
    from .maps import PolicyCounters

    if not (Path(_global_maps(bpffs_root)) / "nk_pol_stats").exists():
        return None
    pm = policy_maps(bpffs_root)
    verdicts, drops = [], []
    for endpoint_id, stats in pm.endpoint_stats().items():
        for direction, by_outcome in stats.items():
            verdicts += [((endpoint_id, direction.value, outcome), c.packets) for outcome, c in by_outcome.items()]
        drops += [((endpoint_id, reason), c.packets)
                  for reason, c in PolicyCounters(endpoint_id, (), stats).drops.items()]
    node = [((reason,), c.packets) for reason, c in pm.drops().items()]
    return [
        Metric("policy_verdicts", "counter",
               "Packets the policy programs judged, by endpoint, direction and outcome (allow_rule, allow_default, "
               "deny_rule, deny_default, malformed, non_ip); TC counts a GSO packet once",
               ("endpoint", "direction", "verdict"), verdicts),
        Metric("policy_drops", "counter",
               "Packets an endpoint's policy dropped, by reason (policy_deny: a deny rule, policy_default: the "
               "default, malformed), both directions",
               ("endpoint", "reason"), drops),
        Metric("policy_node_drops", "counter",
               "Packets the policy programs dropped on this node by reason, every endpoint and the uplink "
               "together (no_policy: the endpoint's slot holds no policy, so it fails closed)",
               ("reason",), node),
    ]


@hookimpl
def nkframe_node_reset(node_netns, bpffs_root: str) -> None:
    """The root's maps go with it: drop this process's handles on them."""
    forget(bpffs_root)


@hookimpl
def nkframe_cli_commands():
    """``nkframe policy apply|remove``."""
    from .cli import policy

    return [policy]
