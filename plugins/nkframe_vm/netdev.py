"""What QEMU needs to put a VM on a VM endpoint: ``-netdev af-xdp`` and ``-device`` arguments,
and the network settings the guest should use (``nkframe vm-netdev``)."""

from __future__ import annotations

import attrs

from nkframe.errors import InvalidSpec, NkframeError
from nkframe.qemu import AF_XDP_SINCE, AfXdpNetdev, QemuInfo, check_af_xdp
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


def vm_steering(ep: Endpoint, bpffs_root: str) -> tuple[steer.VmOptions, steer.VmSteering]:
    """The endpoint's VM options and steering, or :class:`InvalidSpec` for an endpoint that is
    not a VM endpoint or whose steering is not in place (QEMU would start and receive
    nothing)."""
    spec = ep.spec
    opts = steer.VmOptions.from_spec(spec)
    if opts is None:
        raise InvalidSpec(f"endpoint {spec.id} is not a VM endpoint (it has no 'vm' option; add "
                          "one with: nkframe endpoint add ... --option 'vm={\"queues\": 1}')")
    st = steer.read_steering(bpffs_root, spec)
    if not st.attached:
        raise InvalidSpec(f"endpoint {spec.id}: its VM steering is not in place ({st.problem}); "
                          "nkframe reconcile or re-adding the endpoint rebuilds it")
    return opts, st


#: How QEMU gets its sockets (``launch`` in the document): ``map-path``, QEMU makes them and
#: puts them into the pinned XSKMAP (QEMU 10.1+); ``sock-fds``, nkframe makes them, puts them
#: there and starts QEMU with them (``nkframe vm-run``; any af-xdp QEMU, 8.2+).
LAUNCH_MAP_PATH, LAUNCH_SOCK_FDS = "map-path", "sock-fds"


def sock_fds_only(qemu: QemuInfo | None) -> bool:
    """A QEMU with the af-xdp netdev but without map-path (8.2 to 10.0): sock-fds only."""
    return qemu is not None and qemu.af_xdp and qemu.version >= AF_XDP_SINCE and \
        not qemu.map_path


def vm_run_command(endpoint_id: str, qemu_path: str, netdev_id: str) -> list[str]:
    """The ``nkframe vm-run`` command that starts this QEMU through sock-fds (QEMU's own
    arguments follow the ``--``)."""
    cmd = ["nkframe", "vm-run", endpoint_id, "--qemu", qemu_path]
    if netdev_id != "nk0":
        cmd += ["--id", netdev_id]
    return cmd + ["--"]


def describe(ep: Endpoint, bpffs_root: str, *, netdev_id: str = "nk0",
             qemu: QemuInfo | None = None, node_netns: str | None = None) -> dict:
    """The arguments and settings for ``ep`` as one document (``vm-netdev --json``).

    Raises :class:`InvalidSpec` for an endpoint that is not a VM endpoint or whose steering is
    not in place (QEMU would start and receive nothing), :class:`NotSupported` when ``qemu``
    cannot run af-xdp at all.  A ``qemu`` with af-xdp but no map-path gets a document whose
    ``launch`` is ``sock-fds``: no ``argv`` (the fds exist only once ``nkframe vm-run`` makes
    them) and ``vm_run``, the command that starts it.
    """
    spec = ep.spec
    opts, st = vm_steering(ep, bpffs_root)
    nd = AfXdpNetdev(spec.ifname, id=netdev_id, mode="native", force_copy=True, queues=opts.queues,
                     start_queue=st.start_queue, inhibit=True, map_path=st.xskmap).validate()
    launch = LAUNCH_MAP_PATH
    if sock_fds_only(qemu):
        launch = LAUNCH_SOCK_FDS
        nd = attrs.evolve(nd, map_path=None, sock_fds=(0,) * opts.queues).validate()
    if qemu is not None:
        check_af_xdp(qemu, nd)
    mac = steer.vm_mac(spec)
    name, sentence = steer.placement(ep.device_kind, opts.queues, st.start_queue)
    netdev = {"type": "af-xdp", "id": nd.id, "ifname": nd.ifname, "mode": nd.mode,
              "force-copy": "on", "queues": nd.queues, "start-queue": nd.start_queue,
              "inhibit": "on"}
    if launch == LAUNCH_MAP_PATH:
        netdev["map-path"] = nd.map_path
        reason = ("QEMU creates the sockets and puts them into the pinned XSKMAP (map-path, "
                  "QEMU 10.1+); it needs CAP_NET_RAW, and CAP_BPF to open the pin where "
                  "unprivileged BPF is off")
    else:
        netdev["sock-fds"] = None
        reason = (f"{qemu.describe()} has af-xdp but no map-path (QEMU 10.1+): nkframe creates "
                  "the sockets, puts them into the XSKMAP and starts QEMU with them (sock-fds): "
                  "start it with nkframe vm-run")
    doc = {
        "endpoint": spec.id,
        "netns": spec.netns,
        "placement": name,
        "placement_reason": sentence,
        "launch": launch,
        "launch_reason": reason,
        "netdev": netdev,
        "device": {"driver": "virtio-net-pci", "netdev": nd.id, "mac": mac},
        "argv": nd.argv(mac) if launch == LAUNCH_MAP_PATH else None,
        "vm_run": (vm_run_command(spec.id, qemu.path, netdev_id)
                   if launch == LAUNCH_SOCK_FDS else None),
        "guest": {"mac": mac, "addresses": [str(a) for a in spec.addresses]},
        "qemu": None,
    }
    doc["guest"].update(_gateways(ep, node_netns))
    if qemu is not None:
        doc["qemu"] = {"path": qemu.path, "version": ".".join(map(str, qemu.version)),
                       "af_xdp": qemu.af_xdp, "map_path": qemu.map_path}
    return doc
