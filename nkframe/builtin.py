"""nkframe's own hook implementations: the defaults, registered first and answering last.

* device: a netkit pair where the kernel has netkit, else a veth pair; the pod side passes no
  traffic until the engine opens it (netkit policy drop on both ends, veth left down).
* attach: the first candidate the kernel supports (netkit native on a netkit device, TCX, TC).
* configure: the pod side's addresses and loopback.
"""

from __future__ import annotations

from nkframe import netns
from nkframe.context import DeviceInfo, EndpointContext
from nkframe.errors import InvalidSpec
from nkframe.hookspecs import hookimpl
from nkframe.types import DeviceKind, DeviceMode, Mechanism


def choose_device(ctx: EndpointContext) -> tuple[DeviceKind, str]:
    spec, feats = ctx.spec, ctx.features
    if spec.device == DeviceKind.NETKIT_SINGLE.value:
        feats.require("netkit_single")
        return DeviceKind.NETKIT_SINGLE, "netkit single device requested"
    if spec.device == DeviceKind.NETKIT.value:
        feats.require("netkit")
        return DeviceKind.NETKIT, "netkit requested"
    if spec.device == DeviceKind.VETH.value:
        return DeviceKind.VETH, "veth requested"
    if feats.supported("netkit"):
        return DeviceKind.NETKIT, "netkit supported by the kernel"
    return DeviceKind.VETH, f"netkit unsupported: {feats['netkit'].reason}"


@hookimpl(trylast=True)
def nkframe_device_create(ctx: EndpointContext) -> DeviceInfo:
    kind, reason = choose_device(ctx)
    if kind is DeviceKind.NETKIT_SINGLE:
        return create_single(ctx, reason)
    return create_pair(ctx, kind, reason)


def create_pair(ctx: EndpointContext, kind: DeviceKind, reason: str, *,
                pod_queues: int | None = None) -> DeviceInfo:
    """A netkit or veth pair for ``ctx.spec``, closed until the engine opens it.

    :param pod_queues: RX and TX queue count of the pod side (default: the kernel's, which for
        veth is one per possible CPU).  A plugin whose pod-side sockets bind to queues (the VM
        plugin's AF_XDP) asks for exactly the queues it serves.
    """
    from nkframe.netlink import links, netkit

    spec = ctx.spec
    node_if, pod_if = spec.node_ifname, spec.ifname
    if kind is DeviceKind.NETKIT:
        nk = netkit.NetkitSpec(
            name=node_if,
            peer_name=pod_if,
            peer_netns=spec.netns,
            mode=netkit.NetkitMode.L2 if spec.mode is DeviceMode.L2 else netkit.NetkitMode.L3,
            # Closed until the programs are in place: no packet passes an unpoliced device.
            policy=netkit.NetkitPolicy.DROP,
            peer_policy=netkit.NetkitPolicy.DROP,
            mtu=spec.mtu,
            peer_mtu=spec.mtu,
            address=spec.host_mac if spec.mode is DeviceMode.L2 else None,
            peer_address=spec.mac if spec.mode is DeviceMode.L2 else None,
            peer_num_rx_queues=pod_queues,
            peer_num_tx_queues=pod_queues,
        )
        pair = netkit.create_netkit(nk, netns=ctx.node_netns)
    else:
        pair = links.create_veth(
            links.VethSpec(
                name=node_if,
                peer_name=pod_if,
                peer_netns=spec.netns,
                mtu=spec.mtu,
                address=spec.host_mac,
                peer_address=spec.mac,
                peer_num_rx_queues=pod_queues,
                peer_num_tx_queues=pod_queues,
            ),
            netns=ctx.node_netns,
        )
    ctx.undo.push(f"delete {kind} {node_if}", lambda: links.delete_link(node_if, netns=ctx.node_netns, missing_ok=True))
    return DeviceInfo(
        kind=kind,
        mode=spec.mode,
        node_ifname=node_if,
        node_ifindex=pair.ifindex,
        pod_ifname=pod_if,
        pod_ifindex=pair.peer_ifindex,
        reason=reason,
    )


def create_single(ctx: EndpointContext, reason: str) -> DeviceInfo:
    """A VM endpoint's netkit single device, with the spec's physical queues leased to it.

    It is made in the node namespace under the spec's node-side name, its queues are leased
    there (the physical device and the single device in one namespace: no netns id), and then it
    moves into the pod under the pod interface name in one request; leases stay with a device
    that changes namespace.  Every step is undone on failure: deleting the device returns its
    leased queues to the physical device.
    """
    from nkframe import faults
    from nkframe.netlink import links, netdev, netkit

    spec = ctx.spec
    if spec.leases:
        ctx.features.require("queue_lease")
    tmp = spec.node_ifname
    nk = netkit.NetkitSpec.single(
        name=tmp,
        mode=netkit.NetkitMode.L2 if spec.mode is DeviceMode.L2 else netkit.NetkitMode.L3,
        mtu=spec.mtu,
        address=spec.mac if spec.mode is DeviceMode.L2 else None,
        # Queue 0 is the device's own; each lease adds the next one (queue-create answers
        # with the device's real RX queue count before it).
        num_rx_queues=1 + len(spec.leases),
    )
    dev = netkit.create_netkit(nk, netns=ctx.node_netns)
    ctx.undo.push(f"delete netkit single {tmp}", lambda: links.delete_link(tmp, netns=ctx.node_netns, missing_ok=True))
    faults.point("add.after_single_create")
    if spec.leases:
        with netdev.NetdevFamily(ctx.node_netns) as fam:
            for lease in spec.leases:
                if not links.link_exists(lease.uplink, netns=ctx.node_netns):
                    raise InvalidSpec(f"lease {lease}: no device {lease.uplink} in the node namespace "
                                      f"({ctx.node_netns or 'current'})")
                up = links.ifindex(lease.uplink, ctx.node_netns)
                fam.queue_create(dev.ifindex, up, lease.queue)
                faults.point("add.after_lease")
    faults.point("add.before_move")
    ifindex = links.move_link(tmp, spec.netns, new_name=spec.ifname, netns=ctx.node_netns)
    ctx.undo.push(f"delete netkit single {spec.ifname} in the pod",
                  lambda: delete_single(spec.ifname, spec.netns))
    return DeviceInfo(
        kind=DeviceKind.NETKIT_SINGLE,
        mode=spec.mode,
        node_ifname="",
        node_ifindex=0,
        pod_ifname=spec.ifname,
        pod_ifindex=ifindex,
        reason=reason,
    )


def delete_single(ifname: str, pod_netns: str) -> bool:
    """Delete a VM endpoint's single device in its pod (its leases return to the physical
    device); a pod namespace that is gone took the device with it.  Only a netkit device is
    deleted: a name the pod reused for something else is left alone."""
    from nkframe.errors import NetnsNotFound
    from nkframe.netlink import links

    try:
        if not links.link_exists(ifname, netns=pod_netns):
            return False
        if links.get_link(ifname, netns=pod_netns).kind != "netkit":
            return False
        return links.delete_link(ifname, netns=pod_netns, missing_ok=True)
    except NetnsNotFound:
        return False


@hookimpl(trylast=True)
def nkframe_attach_select(ctx: EndpointContext, hook: str, candidates: list[Mechanism]):
    if not candidates:
        return None
    first = candidates[0]
    if first is Mechanism.NETKIT:
        why = "netkit device: native netkit links"
    elif first is Mechanism.TCX:
        why = "TCX links (kernel 6.6+)"
    else:
        why = f"tc clsact/cls_bpf: {ctx.features['tcx'].reason}"
    if ctx.device and ctx.device.kind is DeviceKind.VETH and first is not Mechanism.NETKIT:
        why = f"{ctx.device.kind} + {why}"
    return first, why


@hookimpl(tryfirst=True)
def nkframe_endpoint_configure(ctx: EndpointContext) -> None:
    """Pod side: loopback up, addresses on the pod interface (the device is opened later)."""
    from nkframe.netlink import links

    spec = ctx.spec
    if ctx.device is None or ctx.device.pod_ifname is None:
        return
    links.set_up("lo", netns=spec.netns)
    if ctx.device.kind is DeviceKind.NETKIT_SINGLE:
        return  # a VM endpoint's addresses are the guest's: nothing in the pod answers for them
    for addr in spec.addresses:
        # No DAD: the address is ours alone on a point-to-point link, and a tentative IPv6
        # address could not be used for the first second or two.
        links.add_address(ctx.device.pod_ifname, str(addr), netns=spec.netns, nodad=addr.version == 6)


def open_device(ctx: EndpointContext) -> None:
    """Let traffic through once programs and configuration are in place."""
    from nkframe.netlink import links, netkit

    dev = ctx.device
    assert dev is not None
    if dev.kind is DeviceKind.NETKIT_SINGLE:
        links.set_up(dev.pod_ifname, netns=ctx.spec.netns)
        return
    if dev.kind is DeviceKind.NETKIT:
        # With programs attached the policy only matters if they are all detached later; the
        # spec may keep it closed ("netkit_policy": "drop") to fail closed in that case.
        policy = netkit.NetkitPolicy.DROP if ctx.spec.options.get("netkit_policy") == "drop" else netkit.NetkitPolicy.PASS
        netkit.set_policy(dev.node_ifname, policy=policy, peer_policy=policy, netns=ctx.node_netns)
    links.set_up(dev.node_ifname, netns=ctx.node_netns)
    if dev.pod_ifname:
        links.set_up(dev.pod_ifname, netns=ctx.spec.netns)


def check_netns(name: str | None, what: str) -> None:
    if name is None:
        return
    if name.startswith("/"):
        import os

        from nkframe.errors import NetnsNotFound

        # The same error for a missing namespace by path as by name; a namespace file that
        # exists but cannot be read is said to be that, not to be missing.
        try:
            os.stat(name)
        except FileNotFoundError:
            raise NetnsNotFound(name) from None
        except PermissionError:
            raise InvalidSpec(f"{what} {name}: permission denied") from None
        if not os.access(name, os.R_OK):
            raise InvalidSpec(f"{what} {name}: permission denied (cannot open it)")
        return
    if not netns.exists(name):
        from nkframe.errors import NetnsNotFound

        raise NetnsNotFound(name)
