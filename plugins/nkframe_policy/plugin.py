"""The policy plugin's hook implementations (entry point ``policy``).

An endpoint gets policy programs only when its spec carries ``options["policy"]`` (a mapping in
the :class:`~nkframe_policy.model.Policy` format).  ``policy_egress`` runs on packets the pod
sends (``from-pod``), ``policy_ingress`` on packets to it (``to-pod``); both are ordered at 100,
before forwarding (500).  Their maps are shared by every endpoint and pinned in the engine's
``<root>/globals/maps``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from nkframe import hookimpl
from nkframe.context import EndpointContext
from nkframe.types import DeviceKind, DeviceMode, EndpointSpec

from .model import Policy

OPTION = "policy"
ORDER = 100

_lock = threading.Lock()
_maps: dict[str, object] = {}


def policy_maps(bpffs_root: str):
    """One :class:`PolicyMaps` per bpffs root per process (opening one loads the object)."""
    from .maps import PolicyMaps

    pin_dir = str(Path(bpffs_root) / "globals" / "maps")
    with _lock:
        pm = _maps.get(pin_dir)
        if pm is None or not Path(pin_dir).is_dir():
            pm = _maps[pin_dir] = PolicyMaps(pin_dir)
        return pm


def forget(bpffs_root: str) -> None:
    """Drop the cached maps of a root (its bpffs is going away)."""
    pin_dir = str(Path(bpffs_root) / "globals" / "maps")
    with _lock:
        pm = _maps.pop(pin_dir, None)
    if pm is not None:
        pm.close()


def _policy(spec: EndpointSpec) -> Policy | None:
    raw = spec.options.get(OPTION)
    return None if raw is None else Policy.from_dict(raw)


def _l3_offset(ctx: EndpointContext) -> int:
    # netkit in L3 mode hands programs packets that start at the IP header.
    dev = ctx.device
    if dev is not None and dev.kind is DeviceKind.NETKIT and dev.mode is DeviceMode.L3:
        return 0
    return 14


@hookimpl
def nkframe_endpoint_validate(spec: EndpointSpec) -> None:
    _policy(spec)  # raises PolicyError (an InvalidSpec) naming the bad field


@hookimpl
def nkframe_programs_collect(ctx: EndpointContext):
    if _policy(ctx.spec) is None:
        return None
    pm = policy_maps(ctx.bpffs_root)
    specs = pm.program_specs(ctx.spec.id, _l3_offset(ctx), order=ORDER)
    ctx.undo.push(f"release policy slot of {ctx.spec.id}", lambda: pm.remove(ctx.spec.id))
    return specs


@hookimpl
def nkframe_endpoint_configure(ctx: EndpointContext) -> None:
    policy = _policy(ctx.spec)
    if policy is None:
        return
    policy_maps(ctx.bpffs_root).apply(ctx.spec.id, policy)


@hookimpl
def nkframe_endpoint_unconfigure(ctx: EndpointContext) -> None:
    if ctx.spec.options.get(OPTION) is None:
        return
    policy_maps(ctx.bpffs_root).remove(ctx.spec.id)


def apply(bpffs_root: str, endpoint_id: str, policy: Policy | dict) -> None:
    """Replace an endpoint's policy in place (atomic from the packet's view)."""
    policy_maps(bpffs_root).apply(endpoint_id, policy)


def counters(bpffs_root: str, endpoint_id: str):
    return policy_maps(bpffs_root).counters(endpoint_id)
