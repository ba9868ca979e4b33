"""``nkframe vm-netdev`` and ``nkframe vm-run``: the VM plugin's commands, added through
``nkframe_cli_commands``."""

from __future__ import annotations

import shlex

import click

from nkframe.cli import engine_for, print_json
from nkframe.errors import NotSupported


@click.command("vm-netdev")
@click.argument("endpoint_id")
@click.option("--qemu", "qemu_path", metavar="PATH",
              help="Check the arguments against this qemu-system binary (its version and whether "
                   "it has the af-xdp netdev) and fail if it cannot run them.")
@click.option("--id", "netdev_id", default="nk0", show_default=True,
              help="The QEMU id of the netdev (the -device names it).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the arguments, placement and guest settings as one JSON document.")
@click.pass_context
def vm_netdev(ctx, endpoint_id, qemu_path, netdev_id, as_json) -> None:
    """Print the QEMU arguments that put a VM on VM endpoint ENDPOINT_ID.

    Plain output is the argument list, shell-quoted on one line, for QEMU started in the
    endpoint's network namespace; where the VM's sockets sit (the placement) goes to standard
    error.  --json adds the guest's settings (MAC, addresses, gateways) and, with --qemu, what
    that QEMU said about itself.
    """
    from nkframe import qemu as qemu_mod

    from . import netdev

    eng = engine_for(ctx)
    ep = eng.get_endpoint(endpoint_id)
    info = qemu_mod.inspect(qemu_path) if qemu_path else None
    doc = netdev.describe(ep, str(eng.layout.root), netdev_id=netdev_id, qemu=info,
                          node_netns=eng.node_netns)
    if as_json:
        print_json(doc)
        return
    if doc["argv"] is None:
        # This QEMU takes its sockets only through sock-fds: no arguments to print (nothing
        # for a QEMU to start with and receive nothing), the command that starts it instead.
        raise NotSupported("qemu af-xdp map-path",
                           f"{doc['launch_reason']}: {shlex.join(doc['vm_run'])} "
                           "<other QEMU arguments>")
    click.echo(f"# placement {doc['placement']}: {doc['placement_reason']}", err=True)
    click.echo(shlex.join(doc["argv"]))


@click.command("vm-run")
@click.argument("endpoint_id")
@click.option("--qemu", "qemu_path", metavar="PATH", required=True,
              help="The qemu-system binary to run (af-xdp netdev, QEMU 8.2 or newer).")
@click.option("--id", "netdev_id", default="nk0", show_default=True,
              help="The QEMU id of the netdev vm-run adds (and of its -device's netdev=).")
@click.option("--user", metavar="USER",
              help="Run QEMU as this user (name or uid; its primary group, no other groups), "
                   "keeping only CAP_IPC_LOCK (its sockets' locked memory).")
@click.argument("qemu_args", nargs=-1, type=click.UNPROCESSED, metavar="-- [QEMU ARGS]...")
@click.pass_context
def vm_run(ctx, endpoint_id, qemu_path, netdev_id, user, qemu_args) -> None:
    """Start QEMU on VM endpoint ENDPOINT_ID with sockets nkframe made (sock-fds).

    In the endpoint's pod network namespace, creates one AF_XDP socket per queue, puts each
    into the endpoint's pinned XSKMAP and executes QEMU PATH there (it replaces this process)
    with QEMU ARGS followed by -netdev af-xdp,...,inhibit=on,sock-fds=... and the virtio
    -device.  For QEMU 8.2 to 10.0 (af-xdp without map-path) and for a QEMU that should hold
    neither CAP_NET_RAW nor CAP_BPF (--user): this command needs both, QEMU neither.  Refuses,
    with nothing left behind, an endpoint that is not a VM endpoint or has no steering, a QEMU
    without af-xdp, arguments that already use the netdev id, and an endpoint a QEMU already
    runs on.
    """
    from nkframe import qemu as qemu_mod

    from . import launch

    eng = engine_for(ctx)
    ep = eng.get_endpoint(endpoint_id)
    info = qemu_mod.inspect(qemu_path)
    plan = launch.plan(ep, str(eng.layout.root), info, list(qemu_args), netdev_id=netdev_id,
                       user=user)
    close = getattr(eng, "close", None)
    if close is not None:
        close()
    launch.start(plan)
