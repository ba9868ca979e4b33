"""The VM plugin's hook implementations (entry point ``vm``)."""

from __future__ import annotations

from nkframe import builtin
from nkframe.context import EndpointContext
from nkframe.errors import NotSupported
from nkframe.hookspecs import hookimpl
from nkframe.types import DeviceKind, Endpoint, EndpointSpec

from . import steer


@hookimpl
def nkframe_endpoint_validate(spec: EndpointSpec) -> None:
    steer.validate(spec)


@hookimpl
def nkframe_device_create(ctx: EndpointContext):
    """A VM endpoint gets a veth pair (:data:`steer.DEVICE_REASON` says why not netkit) with
    exactly the VM's queues on the pod side: an AF_XDP socket only sees the frames of the queue
    it is bound to, and a veth has one queue per CPU by default."""
    opts = steer.VmOptions.from_spec(ctx.spec)
    if opts is None:
        return None
    if ctx.spec.single:
        # The leased-queue placement: the builtin makes the single device and leases the
        # queues; without leasing say why a VM cannot be placed this way.
        for feature in ("queue_lease", "xdp_native", "af_xdp"):
            if not ctx.features.supported(feature):
                raise NotSupported(
                    "vm_endpoint", f"a VM endpoint on a netkit single device (placement "
                    f"{steer.PLACEMENT_LEASED}) needs {feature}: {ctx.features[feature].reason}; "
                    "use device auto or veth (placement pod-queue-copy)")
        return None
    ctx.features.require("vm_endpoint")
    return builtin.create_pair(ctx, DeviceKind.VETH,
                               f"{steer.DEVICE_REASON}; {opts.queues} pod-side queue(s)",
                               pod_queues=opts.queues)


@hookimpl
def nkframe_programs_collect(ctx: EndpointContext):
    """``vm_to_pod`` (bpf/vm_to_pod.c) on TO_POD: see :func:`steer.to_pod_program`."""
    if not steer.is_vm(ctx.spec) or ctx.device is None or ctx.device.pod_ifname is None \
            or ctx.spec.single:  # a single device runs no programs: nothing passes a node side
        return None
    return [steer.to_pod_program()]


@hookimpl(trylast=True)
def nkframe_endpoint_configure(ctx: EndpointContext) -> None:
    """Attach the steering last, once the datapath plugins have given the pod side its MAC."""
    if steer.is_vm(ctx.spec) and ctx.device is not None and ctx.device.pod_ifname is not None:
        steer.attach(ctx)


@hookimpl
def nkframe_endpoint_unconfigure(ctx: EndpointContext) -> None:
    if steer.is_vm(ctx.spec):
        from nkframe import pins

        from . import lease

        if ctx.spec.single:
            lease.release(ctx.bpffs_root, ctx.spec)
        pins.remove_tree(steer.pin_dir(ctx.bpffs_root, ctx.spec.id))


@hookimpl
def nkframe_endpoint_counters(endpoint: Endpoint, bpffs_root: str, node_netns):
    if not steer.is_vm(endpoint.spec):
        return None
    return steer.vm_counters(bpffs_root, endpoint.id, endpoint.spec)


@hookimpl
def nkframe_endpoint_report(endpoint: Endpoint, bpffs_root: str, node_netns):
    """Placement, XSKMAP and steering (:func:`steer.report`) in ``nkframe status``."""
    if not steer.is_vm(endpoint.spec):
        return None
    return steer.report(bpffs_root, endpoint)


@hookimpl
def nkframe_cli_commands():
    """``nkframe vm-netdev`` and ``nkframe vm-run``."""
    from .cli import vm_netdev, vm_run

    return [vm_netdev, vm_run]
