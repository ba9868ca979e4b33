"""``nkframe agent ...``: run the agent, ask it how it is.  Registered by :mod:`nkframe.cli`."""

from __future__ import annotations

import json
import logging

import click


def _metrics_address(ctx, param, value):
    if value is None:
        return None
    from nkframe import errors
    from nkframe.agent.metrics import parse_address

    try:
        return parse_address(value)
    except errors.InvalidSpec as e:
        raise click.BadParameter(str(e)) from None


@click.group()
def agent() -> None:
    """Run the nkframe agent (one per node) or ask a running one."""


@agent.command("run")
@click.option("--socket", "socket_path", default=None, help="Unix socket to serve (default: $NKFRAME_AGENT_SOCKET or /run/nkframe/agent.sock).")
@click.option("--plugin", "plugins", multiple=True, help="Load only these installed plugins (entry-point names; repeatable). Default: $NKFRAME_PLUGINS or every installed one.")
@click.option("--netns-root", "netns_roots", multiple=True, help="Directory pod namespaces given as paths may live under (repeatable; default /run/netns and /var/run/netns).")
@click.option("--no-proc-netns", is_flag=True, help="Refuse /proc/<pid>/ns/net pod namespaces.")
@click.option("--uplink", default=None, help="Attach the plugins' uplink programs to this node device at start.")
@click.option("--metrics", "metrics", default=None, callback=_metrics_address, metavar="ADDR",
              help="Serve Prometheus metrics over HTTP on ADDR: PORT (on 127.0.0.1), IPV4:PORT or [IPV6]:PORT. Off by default.")
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
@click.pass_context
def agent_run(ctx, socket_path, plugins, netns_roots, no_proc_netns, uplink, metrics, verbose) -> None:
    """Serve this node's Engine on a root-only Unix socket until SIGTERM/SIGINT.

    On start the agent reconciles from bpffs: endpoints a crashed agent left half-built are
    finished off, those whose namespace or device vanished are cleaned up.
    """
    from nkframe.agent import client, server
    from nkframe.engine import Engine

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="nkframe-agent[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("nkframe.agent").setLevel(logging.INFO)
    o = ctx.obj
    path = socket_path or o.get("agent_socket") or client.default_socket()
    eng = Engine(o["node_netns"], o["bpffs_root"], attach=o["attach"], plugins=list(plugins) or None, uplink=uplink)
    ag = server.Agent(
        eng,
        path,
        netns_roots=netns_roots or server.DEFAULT_NETNS_ROOTS,
        allow_proc_netns=not no_proc_netns,
        metrics=metrics,
    )
    # The locks first: a second agent for this node (on this socket or another) must be refused
    # before it touches the node; it once replaced the uplink programs and then gave up.
    ag.acquire()
    try:
        ag.serve_metrics()  # an address that cannot be bound stops us before the node is touched
        if uplink:
            eng.setup_uplink()
    except BaseException:
        ag.release()
        raise
    raise SystemExit(server.run(ag))


@agent.command("status")
@click.option("--socket", "socket_path", default=None, help="The agent's socket.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agent_status(ctx, socket_path, as_json) -> None:
    """Ask the agent who it is and what it serves (exit 4 if none answers)."""
    from nkframe.agent.client import AgentClient

    o = ctx.obj
    with AgentClient(socket_path or o.get("agent_socket")) as c:
        info = c.ping()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"agent pid {info['pid']} (nkframe {info['version']}, protocol {info['protocol']}) on {info['socket']}\n"
        f"node netns {info['node_netns'] or '(its own)'}, bpffs {info['bpffs_root']}, "
        f"{info['endpoints']} endpoint(s), up {info['uptime']:.0f} s, "
        f"start-up reconcile {1000 * info['startup'].get('reconcile_seconds', 0):.1f} ms"
        + (f"\nmetrics on {info['metrics']}" if info.get("metrics") else "")
    )


@agent.command("upgrade")
@click.argument("endpoint_ids", nargs=-1)
@click.option("--socket", "socket_path", default=None, help="The agent's socket.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agent_upgrade(ctx, endpoint_ids, socket_path, as_json) -> None:
    """Ask the agent to reload every endpoint's (or ENDPOINT_IDS') programs from its plugins and
    replace them in place, without a gap; maps carry over."""
    from nkframe.agent import protocol
    from nkframe.agent.client import AgentClient

    o = ctx.obj
    with AgentClient(socket_path or o.get("agent_socket"), node_netns=o["node_netns"], bpffs_root=o["bpffs_root"]) as c:
        eps = c.upgrade(list(endpoint_ids) or None)
    if as_json:
        click.echo(json.dumps([protocol.endpoint_to_dict(e) for e in eps], indent=2))
        return
    for e in eps:
        click.echo(f"endpoint {e.id}: " + ", ".join(f"{p.name}#{p.prog_id}" for p in e.programs))
