"""What QEMU needs to put a VM on a VM endpoint: ``-netdev af-xdp`` and ``-device`` arguments,
and the network settings the guest should use (``nkframe vm-netdev``)."""

from __future__ import annotations

from nkframe.errors import InvalidSpec, NkframeError
from nkframe.qemu import AfXdpNetdev, QemuInfo, check_af_xdp
from nkframe.types import Endpoint

from . import steer


def _gateways(ep: Endpoint, node_netns: str | None) -> dict:
    """The pod's gateways (the datapath plugins' ``datapath`` option) and the MAC the guest
    should hold for them: the node-side device's where it has one."""
    from nkframe.netlink import links
    from nkframe_fwd.datapath import Options

    opts = Options.from_spec(ep.spec)
    v4 = any(a.version == 4 for a in ep.spec.addresses)
    v6 = any(a.version == 6 for a in ep.spec.addresses)
    try:
        mac = links.get_link(ep.spec.node_ifname, netns=node_netns).address
    except NkframeError:  # no node side to read: no hint
        mac = None
    return {"gateway4": str(opts.gateway4) if v4 else None,
            "gateway6": str(opts.gateway6) if v6 else None,
            "gateway_mac": mac}


def describe(ep: Endpoint, bpffs_root: str, *, netdev_id: str = "nk0",
             qemu: QemuInfo | None = None, node_netns: str | None = None) -> dict:
    """The arguments and settings for ``ep`` as one document (``vm-netdev --json``).

    Raises :class:`InvalidSpec` for an endpoint that is not a VM endpoint or whose steering is
    not in place (QEMU would start and receive nothing), :class:`NotSupported` when ``qemu``
    cannot run these arguments.
    """
    spec = ep.spec
    opts = steer.VmOptions.from_spec(spec)
    if opts is None:
        raise InvalidSpec(f"endpoint {spec.id} is not a VM endpoint (it has no 'vm' option; add "
                          "one with: nkframe endpoint add ... --option 'vm={\"queues\": 1}')")
    st = steer.read_steering(bpffs_root, spec)
    if not st.attached:
        raise InvalidSpec(f"endpoint {spec.id}: its VM steering is not in place ({st.problem}); "
                          "nkframe reconcile or re-adding the endpoint rebuilds it")
    nd = AfXdpNetdev(spec.ifname, id=netdev_id, mode="native", force_copy=True, queues=opts.queues,
                     start_queue=0, inhibit=True, map_path=st.xskmap).validate()
    if qemu is not None:
        check_af_xdp(qemu, nd)
    mac = steer.vm_mac(spec)
    name, sentence = steer.placement(ep.device_kind, opts.queues)
    doc = {
        "endpoint": spec.id,
        "netns": spec.netns,
        "placement": name,
        "placement_reason": sentence,
        "netdev": {"type": "af-xdp", "id": nd.id, "ifname": nd.ifname, "mode": nd.mode,
                   "force-copy": "on", "queues": nd.queues, "start-queue": nd.start_queue,
                   "inhibit": "on", "map-path": nd.map_path},
        "device": {"driver": "virtio-net-pci", "netdev": nd.id, "mac": mac},
        "argv": nd.argv(mac),
        "guest": {"mac": mac, "addresses": [str(a) for a in spec.addresses]},
        "qemu": None,
    }
    doc["guest"].update(_gateways(ep, node_netns))
    if qemu is not None:
        doc["qemu"] = {"path": qemu.path, "version": ".".join(map(str, qemu.version)),
                       "af_xdp": qemu.af_xdp, "map_path": qemu.map_path}
    return doc

