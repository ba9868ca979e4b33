"""The ``nkframe`` command.

Exit codes: 0 success; 1 a check failed (demo mismatch, probe feature missing with
``--require``, ``status --check`` found a problem); 2 bad input (usage, invalid spec, unknown
plugin); 3 not supported by this kernel (or, for ``graph`` SVG/PNG, Graphviz is not installed);
4 a kernel or system call failed; 5 not found (endpoint, netns).

Tables go to a terminal; ``--json`` prints one JSON document for scripts, stable across runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from nkframe import errors

EXIT_FAILED, EXIT_INPUT, EXIT_UNSUPPORTED, EXIT_KERNEL, EXIT_NOTFOUND = 1, 2, 3, 4, 5


def _exit_code(e: BaseException) -> int:
    if isinstance(e, (errors.EndpointNotFound, errors.NetnsNotFound)):
        return EXIT_NOTFOUND
    if isinstance(e, (errors.InvalidSpec, errors.PluginError, errors.EndpointExists, errors.NotBpffs)):
        return EXIT_INPUT
    if isinstance(e, errors.NotSupported):
        return EXIT_UNSUPPORTED
    return EXIT_KERNEL


class _Group(click.Group):
    """Turns nkframe errors into one clear line and a documented exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's usage errors (missing option, bad value, unknown option or command) as one
        ``nkframe: error: ...`` line with exit code 2, as for every other bad input, instead of
        click's Usage/Try/Error block."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name or "nkframe", complete_var, False, **extra)
        except click.exceptions.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "nkframe"
            click.echo(f"nkframe: error: {e.format_message()} (see '{where} --help')", err=True)
            sys.exit(EXIT_INPUT)
        except click.ClickException as e:
            click.echo(f"nkframe: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code if e.exit_code else EXIT_INPUT)
        except click.exceptions.Abort:
            click.echo("nkframe: aborted", err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(rv if isinstance(rv, int) else 0)

    # -- commands plugins add (nkframe_cli_commands), on the root group only

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        if ctx.parent is not None:
            return own
        return sorted(set(own) | set(_plugin_commands()))

    def get_command(self, ctx: click.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is None and ctx.parent is None:
            cmd = _plugin_commands().get(name)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.NkframeError as e:
            if (ctx.obj or {}).get("verbose"):
                import traceback

                traceback.print_exception(e)
            click.echo(f"nkframe: error: {e}", err=True)
            ctx.exit(_exit_code(e))
        except PermissionError as e:
            click.echo(f"nkframe: error: {e} (nkframe needs root: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)", err=True)
            ctx.exit(EXIT_KERNEL)


_PLUGIN_COMMANDS: dict | None = None


def _plugin_commands() -> dict:
    """name -> command, from every loaded plugin's ``nkframe_cli_commands`` (once per process).
    Plugins are chosen as for an Engine (entry points, NKFRAME_PLUGINS, autoload switch); a
    broken one is skipped with a warning by the loader, and a plugin list naming an unknown
    plugin adds no commands here (the command that builds an Engine reports it)."""
    global _PLUGIN_COMMANDS
    if _PLUGIN_COMMANDS is None:
        from nkframe import plugins

        found: dict = {}
        try:
            pm = plugins.make_manager(None)
        except errors.PluginError:
            pm = None
        for contribution in (pm.hook.nkframe_cli_commands() if pm is not None else ()):
            for cmd in contribution or ():
                if not isinstance(cmd, click.Command) or not cmd.name:
                    click.echo(f"nkframe: warning: a plugin's nkframe_cli_commands returned {cmd!r}, not a named click command; ignored", err=True)
                elif cmd.name in cli.commands or cmd.name in found:
                    click.echo(f"nkframe: warning: a plugin's command {cmd.name!r} clashes with an existing one; ignored", err=True)
                else:
                    found[cmd.name] = cmd
        _PLUGIN_COMMANDS = found
    return _PLUGIN_COMMANDS


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A table: rich's on a terminal; aligned plain text, whole and uncut, when stdout is a pipe
    or a file (docs/cli.md promises it: rich cut piped tables to 80 columns and lost names)."""
    if not sys.stdout.isatty():
        from nkframe.status import plain

        click.echo(plain(title, columns, rows))
        return
    from rich.table import Table

    t = Table(title=title or None)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    _console().print(t)


def _console():
    from rich.console import Console

    return Console()


def print_json(doc: Any) -> None:
    """One JSON document on standard output, as every ``--json`` option prints it."""
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--netns", "node_netns", envvar="NKFRAME_NODE_NETNS", default=None, help="Node network namespace (default: the current one).")
@click.option("--bpffs-root", envvar="NKFRAME_BPFFS_ROOT", default="/sys/fs/bpf/nkframe", show_default=True, help="Where nkframe pins maps and links.")
@click.option("--attach", "attach_mode", envvar="NKFRAME_ATTACH", default="auto", type=click.Choice(["auto", "netkit", "tcx", "tc"]), show_default=True, help="Force an attach mechanism.")
@click.option("--agent-socket", envvar="NKFRAME_AGENT_SOCKET", default=None, help="The agent's socket (default /run/nkframe/agent.sock); endpoint add/del/ls and gc go through a running agent.")
@click.option("--no-agent", is_flag=True, envvar="NKFRAME_NO_AGENT", help="Act on bpffs and the kernel directly even when an agent runs.")
@click.option("-v", "--verbose", is_flag=True, envvar="NKFRAME_VERBOSE", help="On an error, print its traceback too (and debug logs).")
@click.version_option(package_name="nkframe")
@click.pass_context
def cli(ctx: click.Context, node_netns: str | None, bpffs_root: str, attach_mode: str, agent_socket: str | None, no_agent: bool,
        verbose: bool) -> None:
    """nkframe: BPF dataplanes on the Linux netkit device."""
    ctx.obj = {"node_netns": node_netns, "bpffs_root": bpffs_root, "attach": attach_mode, "agent_socket": agent_socket, "no_agent": no_agent,
               "verbose": verbose}
    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="nkframe %(levelname)s %(name)s: %(message)s")


def engine_for(ctx: click.Context):
    """An :class:`~nkframe.engine.Engine` for the root options (``--netns``, ``--bpffs-root``,
    ``--attach``): what plugin commands use to act on the node."""
    from nkframe.engine import Engine

    o = ctx.obj
    return Engine(o["node_netns"], o["bpffs_root"], attach=o["attach"])


def _api(ctx: click.Context):
    """The running agent (nkframe.agent.client.AgentClient, same verbs) if one answers on the
    socket and --no-agent is not given; else an Engine."""
    o = ctx.obj
    if not o.get("no_agent"):
        from nkframe.agent import client

        c = client.connect(o.get("agent_socket"), node_netns=o["node_netns"], bpffs_root=o["bpffs_root"], attach=o["attach"],
                           warn=lambda m: click.echo(f"nkframe: {m}", err=True))
        if c is not None:
            return c
    return engine_for(ctx)


# ----------------------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--require", multiple=True, help="Exit 1 unless this feature is supported (repeatable).")
@click.option("--uplink", "uplinks", multiple=True, metavar="DEV",
              help="Also say whether node device DEV can lend RX queues to VM endpoints (a trial lease "
                   "from a scratch namespace; repeatable).")
@click.pass_context
def probe(ctx, as_json: bool, require: tuple[str, ...], uplinks: tuple[str, ...]) -> None:
    """Show what this kernel supports, found by trying each feature."""
    from nkframe import probe as probe_mod
    from nkframe.types import validate_ifname

    for dev in uplinks:
        validate_ifname(dev, "--uplink")
    feats = probe_mod.features()
    unknown = [r for r in require if r not in feats.items]
    if unknown:
        raise errors.InvalidSpec(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(probe_mod.FEATURES)}")
    sources = {dev: probe_mod.lease_source(dev, ctx.obj["node_netns"]) for dev in uplinks}
    if as_json:
        doc = feats.to_dict()
        if uplinks:
            doc["lease_sources"] = {d: {"supported": f.supported, "reason": f.reason} for d, f in sources.items()}
        print_json(doc)
    else:
        _table(f"kernel {feats.kernel} · libbpf {feats.libbpf} · libxdp {feats.libxdp or 'missing'}",
               ["feature", "supported", "reason"],
               [[name, "yes" if feats[name].supported else "no", feats[name].reason] for name in feats]
               + [[f"lease_source {d}", "yes" if f.supported else "no", f.reason] for d, f in sources.items()])
    missing = [r for r in require if not feats.supported(r)]
    if missing or not all(f.supported for f in sources.values()):
        raise SystemExit(EXIT_FAILED)


# ----------------------------------------------------------------------------------------------


@cli.group()
def endpoint() -> None:
    """Add, remove and list endpoints."""


@endpoint.command("add")
@click.argument("endpoint_id")
@click.option("--pod-netns", required=True, help="The pod's network namespace (name or path).")
@click.option("--address", "addresses", multiple=True, help="Pod address, e.g. 10.0.1.5/32 (repeatable).")
@click.option("--ifname", default="eth0", show_default=True, help="Interface name inside the pod.")
@click.option("--host-ifname", default=None, help="Node-side interface name (default: derived from the id).")
@click.option("--mode", type=click.Choice(["l3", "l2"]), default="l3", show_default=True)
@click.option("--device", type=click.Choice(["auto", "netkit", "veth", "netkit-single"]), default="auto", show_default=True,
              help="netkit-single: a VM endpoint, one netkit device in the pod (Linux 7.1+), no programs.")
@click.option("--lease", "leases", multiple=True, metavar="UPLINK:QUEUE",
              help="Lease this RX queue of a node device to the endpoint's netkit single device (repeatable; "
                   "--device netkit-single, Linux 7.1+, a NIC driver with queue management ops).")
@click.option("--mac", default=None, help="Pod MAC address (L2 only).")
@click.option("--mtu", type=int, default=None)
@click.option("--option", "option_args", multiple=True, metavar="KEY=JSON",
              help="A spec option for plugins, its value as JSON, e.g. --option 'portblock={\"port\": 22}' "
                   "or --option policy=@p.json (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def endpoint_add(ctx, endpoint_id, pod_netns, addresses, ifname, host_ifname, mode, device, leases, mac, mtu,
                 option_args, as_json) -> None:
    """Create endpoint ENDPOINT_ID in an existing pod namespace."""
    from nkframe.types import EndpointSpec

    spec = EndpointSpec(
        id=endpoint_id, netns=pod_netns, addresses=addresses, ifname=ifname, host_ifname=host_ifname,
        mode=mode, device=device, mac=mac, mtu=mtu, options=_options(option_args), leases=list(leases),
    )
    ep = _api(ctx).add_endpoint(spec)
    if as_json:
        print_json(endpoint_doc(ep))
    elif ep.spec.single:
        click.echo(f"endpoint {ep.id}: {ep.device_kind} {ep.spec.ifname} in {ep.spec.netns} (ifindex {ep.node_ifindex})"
                   + "".join(f", queue {x.queue} <- {x.uplink}:{x.uplink_queue}" for x in ep.leases))
    else:
        click.echo(f"endpoint {ep.id}: {ep.device_kind} {ep.spec.node_ifname} (ifindex {ep.node_ifindex}), "
                   + ", ".join(f"{h}: {m}" for h, m in ep.mechanism.items()))


def _options(args) -> dict:
    """``KEY=JSON`` (or ``KEY=@FILE`` holding JSON) pairs as a spec's options."""
    from nkframe import inputs

    out: dict = {}
    for arg in args:
        key, eq, raw = arg.partition("=")
        if not eq or not key:
            raise errors.InvalidSpec(f"--option {arg!r}: write KEY=JSON, e.g. --option 'portblock={{\"port\": 22}}'")
        if key in out:
            raise errors.InvalidSpec(f"--option {key} is given twice")
        if raw.startswith("@"):
            try:
                raw = open(raw[1:], encoding="utf-8").read()
            except (OSError, UnicodeDecodeError) as e:
                raise errors.InvalidSpec(f"--option {key}: cannot read {raw[1:]}: {e}") from None
        try:
            out[key] = inputs.loads(raw)
        except ValueError as e:
            raise errors.InvalidSpec(f"--option {key}: the value is not JSON ({e}); quote strings: {key}='\"text\"'") from None
    return out


@endpoint.command("del")
@click.argument("endpoint_id")
@click.pass_context
def endpoint_del(ctx, endpoint_id) -> None:
    """Remove endpoint ENDPOINT_ID and everything built for it."""
    _api(ctx).remove_endpoint(endpoint_id)
    click.echo(f"endpoint {endpoint_id} removed")


@endpoint.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def endpoint_ls(ctx, as_json) -> None:
    """List endpoints (read from bpffs and the kernel)."""
    eps = _api(ctx).endpoints()
    if as_json:
        print_json([endpoint_doc(e) for e in eps])
        return
    _table("endpoints", ["id", "netns", "device", "mode", "addresses", "attach", "programs"], [
        [e.id, e.spec.netns, f"{e.device_kind} {e.spec.ifname if e.spec.single else e.spec.node_ifname}", e.spec.mode.value,
         " ".join(str(a) for a in e.spec.addresses),
         " ".join(f"{h}:{m}" for h, m in sorted(e.mechanism.items()))
         or " ".join(f"q{x.queue}<-{x.uplink}:{x.uplink_queue}" for x in e.leases),
         " ".join(f"{p.name}#{p.prog_id}" for p in e.programs)]
        for e in eps
    ])


def endpoint_doc(e) -> dict:
    return {
        "id": e.id,
        "netns": e.spec.netns,
        "device_kind": str(e.device_kind),
        # A netkit single device has no node side: its device is pod_ifname in netns.
        "node_ifname": "" if e.spec.single else e.spec.node_ifname,
        "node_ifindex": 0 if e.spec.single else e.node_ifindex,
        "pod_ifname": e.spec.ifname,
        "leases": [{"queue": x.queue, "uplink": x.uplink, "uplink_ifindex": x.uplink_ifindex,
                    "uplink_queue": x.uplink_queue} for x in e.leases],
        "mode": e.spec.mode.value,
        "addresses": [str(a) for a in e.spec.addresses],
        "attach": {h: str(m) for h, m in e.mechanism.items()},
        "reasons": dict(e.reasons),
        "programs": [
            {"name": p.name, "hook": p.hook, "direction": p.direction, "mechanism": str(p.mechanism),
             "prog_id": p.prog_id, "link_id": p.link_id}
            for p in e.programs
        ],
    }


# ----------------------------------------------------------------------------------------------


@cli.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def attached(ctx, device, as_json) -> None:
    """Every BPF program attached to DEVICE by netkit, TCX or TC (ip/tc/bpftool can't show all)."""
    from nkframe.engine import list_attached
    from nkframe.netlink import links

    o = ctx.obj
    st = links.get_link(device, netns=o["node_netns"])
    progs = list_attached(st.ifindex, netns_name=o["node_netns"], netkit=st.kind == "netkit")
    # The kernel's name is the program function's, cut to 15 bytes; nkframe's is the spec's
    # (what status, graph and the pins say).  "-": not attached by nkframe under this root.
    ours = engine_for(ctx).program_names()
    if as_json:
        print_json([
            {"mechanism": str(p.mechanism), "direction": p.direction, "prog_id": p.prog_id, "name": p.name,
             "nkframe_name": ours.get(p.prog_id),
             "link_id": p.link_id, "tc_handle": p.tc_handle, "tc_priority": p.tc_priority}
            for p in progs
        ])
        return
    order: dict[tuple, int] = {}
    rows = []
    for p in progs:
        k = (p.mechanism, p.direction)
        order[k] = order.get(k, 0) + 1
        where = str(p.link_id) if p.link_id else (f"{p.tc_handle:#x}:{p.tc_priority:#x}" if p.tc_handle else "-")
        rows.append([str(p.mechanism), p.direction, str(order[k]), str(p.prog_id), ours.get(p.prog_id, "-"), p.name, where])
    _table(f"{device} (ifindex {st.ifindex}, {st.kind or 'device'})",
           ["mechanism", "direction", "order", "prog id", "nkframe name", "kernel name", "link id / tc handle:prio"], rows)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reconcile(ctx, as_json) -> None:
    """Compare bpffs with the kernel and clean up endpoints whose netns or device vanished."""
    rep = _api(ctx).reconcile()
    doc = {"healthy": list(rep.healthy), "removed": list(rep.removed), "problems": list(rep.problems)}
    if as_json:
        print_json(doc)
    else:
        click.echo(f"{len(rep.healthy)} healthy, {len(rep.removed)} removed")
        for p in rep.problems:
            click.echo(f"  {p}")


cli.add_command(reconcile, name="gc")

from nkframe.agent.cli import agent as _agent_group  # noqa: E402 - registered next to its peers

cli.add_command(_agent_group)


# ----------------------------------------------------------------------------------------------


@cli.command()
@click.argument("endpoint_ids", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--check", is_flag=True, help="Exit 1 if anything looks wrong (missing device, detached or foreign program).")
@click.pass_context
def status(ctx, endpoint_ids, as_json, check) -> None:
    """Endpoints (or only ENDPOINT_IDS) with devices, attach mechanisms, program chains and counters."""
    from nkframe import status as status_mod

    st = status_mod.gather(engine_for(ctx), endpoint_ids or None)
    if as_json:
        print_json(status_mod.to_dict(st))
    else:
        text = status_mod.render(st, _console())
        if text is not None:
            click.echo(text)
    if check and st.problems:
        raise SystemExit(EXIT_FAILED)


@cli.command()
@click.option("-o", "--output", default="-", show_default=True, help="Write to this file ('-': standard output).")
@click.option("--format", "fmt", type=click.Choice(["dot", "svg", "png"]), default=None,
              help="Output format (default: from the file's suffix, else dot). svg/png need Graphviz's dot.")
@click.pass_context
def graph(ctx, output, fmt) -> None:
    """Draw the node: endpoints, devices, mechanisms, program chains and the uplink."""
    from nkframe import graph as graph_mod
    from nkframe import status as status_mod

    fmt = graph_mod.format_for(output, fmt)
    if fmt == "png" and output == "-" and sys.stdout.isatty():
        raise errors.InvalidSpec("refusing to write PNG to a terminal; pass -o FILE.png or pipe it")
    data = graph_mod.render(graph_mod.to_dot(status_mod.gather(engine_for(ctx))), fmt)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        with open(output, "wb") as f:
            f.write(data)
        click.echo(f"wrote {output} ({fmt}, {len(data)} bytes)", err=True)


@cli.group()
def node() -> None:
    """The node as a whole."""


@node.command("reset")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@click.pass_context
def node_reset(ctx, as_json) -> None:
    """Take everything nkframe built on the node away: every endpoint, the uplink programs, the
    global maps and the whole bpffs root, and put back the node settings nkframe changed (the
    forwarding sysctls).  Refused while an agent serves the node: stop it first."""
    o = ctx.obj
    if not o.get("no_agent"):
        from nkframe.agent import client

        c = client.connect(o.get("agent_socket"), node_netns=o["node_netns"], bpffs_root=o["bpffs_root"],
                           attach=o["attach"], warn=lambda m: None)
        if c is not None:
            c.close()
            click.echo("nkframe: error: an agent serves this node: stop it first (it would go on using "
                       "what a reset removes), or pass --no-agent if it is gone for good", err=True)
            raise SystemExit(EXIT_FAILED)
    done = engine_for(ctx).reset_node()
    if as_json:
        print_json(done)
    elif not done["root_removed"]:
        click.echo(f"nothing to reset: {o['bpffs_root']} does not exist")
    else:
        click.echo(f"removed {len(done['endpoints'])} endpoint(s), the programs of {len(done['devices'])} "
                   f"device(s) and {o['bpffs_root']}; node settings restored")


@cli.command()
@click.option("--endpoint", "endpoint_id", default=None, help="Only events of this endpoint.")
@click.option("--reason", "reasons", multiple=True,
              type=click.Choice(["policy_deny", "policy_default", "malformed", "no_route", "no_policy"]),
              help="Only events with this drop reason (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", type=int, default=None, help="Exit after N events (exit 1 if --timeout comes first).")
@click.option("--timeout", type=float, default=None, help="Exit after S seconds.")
@click.pass_context
def events(ctx, endpoint_id, reasons, as_json, count, timeout) -> None:
    """Stream drop events as they happen: time, endpoint, hook, reason, 5-tuple."""
    from nkframe import events as events_mod
    from nkframe import pins

    maps_dir = pins.Layout(ctx.obj["bpffs_root"]).map_path("global", "", events_mod.RING_MAP).parent

    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    raise SystemExit(events_mod.run(maps_dir, endpoint=endpoint_id, reasons=reasons, as_json=as_json,
                                    count=count, timeout=timeout, echo=echo))


def _checkout_vm_runner():
    """The checkout's VM runner (``tools/vm.py``) for ``demo --vm``.

    The runner is test tooling of the repository, not part of the package: it boots the guest
    with the checkout's venv and files over 9p.  This is the one place the package reaches into
    ``tools/``, and only when the command runs.  From an installed package (no checkout around
    it) it is refused in one line that says what is needed.
    """
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not ((root / "tools" / "vm.py").is_file() and (root / "tests" / "vm").is_dir()):
        raise errors.NotSupported(
            "demo --vm", "it needs a checkout of the nkframe repository (make setup there, then "
            ".venv/bin/nkframe demo --vm): the VM runner, tools/vm.py, is not part of the installed package")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tools import vm  # the guarded import of the checkout's tooling (tests/unit/test_layers.py)

    if Path(vm.__file__).resolve().parent.parent != root:
        raise errors.NotSupported("demo --vm", f"the module 'tools' found is {vm.__file__}, not this "
                                  f"checkout's ({root / 'tools'})")
    return vm


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the last line of output).")
@click.option("--keep", is_flag=True, help="Leave the namespaces and pins in place for a look around.")
@click.option("--vm", "in_vm", is_flag=True, help="Run inside the netkit kernel VM (Debian 6.12) instead; needs a checkout of the repository (tools/vm.py).")
@click.option("--kernel", default="6.12", show_default=True, help="With --vm: which kernel to boot.")
@click.option("--nodes", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Build this many nodes (2-8), a pod on each, routed over a shared bridge, and prove pod-to-pod traffic across them.")
@click.pass_context
def demo(ctx, as_json, keep, in_vm, kernel, nodes) -> None:
    """Build a node with three pods in namespaces and prove the datapath with real traffic."""
    if nodes > 1:
        if in_vm or keep:
            raise errors.InvalidSpec("--nodes does not combine with --vm or --keep")
        from nkframe import demo_cluster

        raise SystemExit(demo_cluster.run(nodes, attach=ctx.obj["attach"], as_json=as_json))
    if in_vm:
        import shutil
        from pathlib import Path

        vm = _checkout_vm_runner()
        # Say everything that is missing at once, before a kernel is downloaded.
        needs = []
        try:
            vm.find_vng()
        except vm.VmError:
            needs.append("virtme-ng (make setup)")
        if not shutil.which("qemu-system-x86_64"):
            needs.append("QEMU (apt-get install qemu-system-x86)")
        if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            needs.append("Debian's apt-get and dpkg-deb (the guest kernel is Debian's package)")
        if needs:
            raise errors.NotSupported("demo --vm", "it needs " + "; ".join(needs))
        k = vm.ensure_kernel(kernel)
        exe = Path(sys.executable).parent / "nkframe"
        cmd = [str(exe), "demo"] + (["--json"] if as_json else [])
        res = vm.run(k, cmd, rwdir=vm.REPO_ROOT / "results" / "demo-vm", echo=click.echo)
        if res.exit_code is None:
            raise errors.NkframeError(f"the demo VM produced no result: {res.describe()}")
        raise SystemExit(res.exit_code)
    from nkframe import demo as demo_mod

    raise SystemExit(demo_mod.run(keep=keep, attach=ctx.obj["attach"], as_json=as_json))


def main() -> None:
    cli(prog_name="nkframe")


if __name__ == "__main__":
    main()
