"""``nkframe vm-netdev``: the VM plugin's command, added through ``nkframe_cli_commands``."""

from __future__ import annotations

import shlex

import click

from nkframe.cli import engine_for, print_json


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
    click.echo(f"# placement {doc['placement']}: {doc['placement_reason']}", err=True)
    click.echo(shlex.join(doc["argv"]))
