"""Reconcile (and gc): compare bpffs with the kernel, clean up endpoints whose namespace or
device vanished or whose add/remove a crash interrupted, settle interrupted cut-overs; and
``reset_node``, which takes everything away."""

from __future__ import annotations

import logging
import os

import attrs

from nkframe import netns, pins
from nkframe.errors import EndpointNotFound, NkframeError
from nkframe.engine.reports import plugin_reports

log = logging.getLogger(__name__)


@attrs.frozen
class ReconcileReport:
    """What :meth:`Engine.reconcile` found and did."""

    healthy: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # endpoints whose netns or device vanished: cleaned up
    problems: tuple[str, ...] = ()  # what was wrong, and what reconcile did about it


class ReconcileMixin:
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
                elif spec.single:
                    if self._single_device(spec) is None:
                        gone = f"its netkit single device {spec.ifname} in the pod is gone"
                elif spec.node_ifname not in devices:
                    gone = f"device {spec.node_ifname} is gone"
                if gone is None and not self.layout.ready_marker(eid).exists():
                    gone = "its add or remove was interrupted"
                if gone and spec.single and spec.leases:
                    gone += f" (the kernel returned its leased queues {', '.join(map(str, spec.leases))} with the device)"
                if gone:
                    self._teardown(spec)
                    self.hook.nkframe_endpoint_removed(endpoint_id=eid)
                    removed.append(eid)
                    problems.append(f"{eid}: {gone}; cleaned up")
                    continue
                if spec.single:
                    ep = self.get_endpoint(eid)
                    lost = [str(x) for x in ep.unheld_leases]
                    if lost:
                        problems.append(f"{eid}: lease(s) {', '.join(lost)} no longer held by {spec.ifname} "
                                        "(the physical device went away?); remove and add the endpoint again")
                else:
                    for note in self._settle_staged(eid, devices[spec.node_ifname]):
                        problems.append(f"{eid}: {note}")
                    ep = self.get_endpoint(eid, _links=devices)
                    dead = [p for p in ep.programs if p.ifindex == 0]  # the device is there: a link it lost
                    if dead:
                        problems.append(f"{eid}: {len(dead)} link(s) detached from their device")
                # What plugins built beside the chain (the VM plugin's steering): reported, not
                # rebuilt here -- the plugin's report says how to repair it.
                found: list[str] = []
                plugin_reports(self, ep, found)
                problems.extend(f"{eid}: {p}" for p in found)
                healthy.append(eid)
        return ReconcileReport(healthy=tuple(healthy), removed=tuple(removed), problems=tuple(problems))

    gc = reconcile

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
