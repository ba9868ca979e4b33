"""The hook contract for plugin authors.

A plugin is a module (or object) with functions decorated by :data:`nkframe.hookimpl` whose names
match the specs below.  Hooks are always called with keyword arguments, so an implementation may
accept only the arguments it needs.  Plugins are found through the ``nkframe.plugins`` entry-point
group; first-party plugins load the same way.

Flavours:

* *choice* hooks (``firstresult``) return a value to decide, or ``None`` for "not mine, ask the
  next plugin".  nkframe's built-in plugin answers last (``trylast``), so any plugin can override.
* *contribution* hooks return a value (or list) that is collected from every plugin.
* *event* hooks return nothing.

Order of one ``Engine.add_endpoint``::

    nkframe_endpoint_validate      (all)     reject a spec before anything changes
    nkframe_device_create          (choice)  make the device pair, return DeviceInfo
    nkframe_attach_select          (choice)  mechanism per hook point, with a reason
    nkframe_programs_collect       (all)     ProgramSpecs per hook point
    nkframe_pin_path               (choice)  where a map or link is pinned
      ... the engine loads and attaches programs, pins links ...
    nkframe_endpoint_configure     (all)     addresses, routes, map contents
    nkframe_endpoint_added         (all)     observers

Removal calls ``nkframe_endpoint_unconfigure`` then ``nkframe_endpoint_removed``.  Every change a
hook makes to the kernel must be registered on ``ctx.undo`` so a later failure rolls it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from nkframe.context import DeviceInfo, EndpointContext, UplinkContext
    from nkframe.types import Endpoint, EndpointReport, EndpointSpec, Mechanism, Metric, ProgramSpec

PROJECT = "nkframe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@hookspec
def nkframe_endpoint_validate(spec: "EndpointSpec") -> None:
    """Check a spec before anything is changed in the kernel.

    :param spec: the endpoint the user asked for.  Plugins validate the keys they own in
        ``spec.options`` and raise :class:`nkframe.errors.InvalidSpec` with a message that says
        what is wrong and how to fix it.  Return value is ignored.
    """


# --------------------------------------------------------------------------------------------
# Devices and attach mechanisms (choices)
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def nkframe_device_create(ctx: "EndpointContext") -> "DeviceInfo | None":
    """Create the device that connects the pod to the node.

    :param ctx: the endpoint being built: ``ctx.spec``, ``ctx.node_netns``, ``ctx.features``
        (probe results), ``ctx.undo`` (register the deletion of what you create).
    :returns: a :class:`nkframe.context.DeviceInfo` describing the device (kind, node-side
        ifindex, why this kind was chosen), or ``None`` to let the next plugin decide.  The
        built-in plugin creates a netkit pair where the kernel has netkit and the spec allows
        it, else a veth pair.  The pod side must not pass traffic until programs are attached
        (netkit peer policy drop, or the veth left down); the engine opens it at the end.
    """


@hookspec(firstresult=True)
def nkframe_attach_select(
    ctx: "EndpointContext", hook: str, candidates: "list[Mechanism]"
) -> "tuple[Mechanism, str] | None":
    """Choose the attach mechanism for one hook point of an endpoint.

    :param ctx: the endpoint being built (``ctx.device`` is set by now).
    :param hook: the hook point, a :class:`nkframe.types.Hook` value.
    :param candidates: mechanisms this kernel supports for this device, best first.
    :returns: ``(mechanism, reason)`` or ``None`` for "no opinion".  A choice not in
        ``candidates`` is an error.  Configuration that forces a mechanism
        (``spec.attach``/``Engine(attach=...)``) is applied before this hook and never
        falls back silently.
    """


@hookspec(firstresult=True)
def nkframe_pin_path(root: str, scope: str, owner: str, kind: str, name: str) -> "str | None":
    """Decide where a BPF object is pinned in bpffs.

    :param root: the engine's bpffs root, e.g. ``/sys/fs/bpf/nkframe``.
    :param scope: ``"endpoint"``, ``"device"`` or ``"global"``.
    :param owner: the endpoint id or device name (``""`` for global).
    :param kind: ``"map"`` or ``"link"``.
    :param name: the map or program name.
    :returns: an absolute path under ``root``, or ``None`` for the default layout
        (see :mod:`nkframe.pins`).  Paths outside ``root`` are refused.
    """


@hookspec(firstresult=True)
def nkframe_datapath_program(mode: str) -> "str | None":
    """Say which program forwards packets of endpoints in ``mode`` (a datapath plugin's claim).

    An endpoint whose mode no loaded plugin claims gets a device but no forwarding: the agent
    refuses to add it (naming the mode), and ``nkframe status --check`` reports an endpoint
    whose claimed program is not attached.

    :param mode: the endpoint's mode, ``"l3"`` or ``"l2"``.
    :returns: the ``ProgramSpec.name`` of the forwarding program this plugin contributes for
        that mode, or ``None`` ("not mine").
    """


# --------------------------------------------------------------------------------------------
# Contributions
# --------------------------------------------------------------------------------------------


@hookspec
def nkframe_programs_collect(ctx: "EndpointContext") -> "list[ProgramSpec] | None":
    """Contribute programs to an endpoint's hook points.

    :param ctx: the endpoint being built; ``ctx.mechanisms`` tells the chosen mechanism per hook
        and ``ctx.device`` the device kind and mode, so a program can be picked to match.
    :returns: a list of :class:`nkframe.types.ProgramSpec` (or ``None``).  The engine orders
        every contribution per hook by ``before``/``after`` then ``order``.
    """


@hookspec
def nkframe_uplink_programs(ctx: "UplinkContext") -> "list[ProgramSpec] | None":
    """Contribute programs to the node's uplink device (e.g. TCX ingress redirecting to pods).

    :param ctx: the uplink: ``ctx.ifname``, ``ctx.ifindex``, ``ctx.node_netns``.
    :returns: a list of :class:`nkframe.types.ProgramSpec` with ``DeviceHook`` hook points.
    """


@hookspec
def nkframe_endpoint_configure(ctx: "EndpointContext") -> None:
    """Configure an endpoint after its programs are attached.

    Set addresses and routes, fill maps (``ctx.maps[name]`` holds every map of the endpoint's
    loaded programs).  Register the undo of every change on ``ctx.undo``.
    """


@hookspec
def nkframe_endpoint_unconfigure(ctx: "EndpointContext") -> None:
    """Remove what ``nkframe_endpoint_configure`` put outside the endpoint's own pins.

    :param ctx: the endpoint being removed.  On removal its device is already deleted (the
        engine deletes it first, so no packet of the pod runs without its programs and none
        can recreate what this hook removes); ``ctx.device`` is ``None``.

    Called on removal and garbage collection, also when the device or netns is already gone:
    tolerate missing objects.  Entries in shared (global) maps are the usual case.
    """


@hookspec
def nkframe_endpoint_counters(endpoint: "Endpoint", bpffs_root: str, node_netns: "str | None") -> "dict[str, int] | None":
    """Report a plugin's counters for one endpoint (``nkframe status``).

    :param endpoint: the endpoint as read back from bpffs and the kernel.
    :param bpffs_root: the engine's bpffs root, to open the plugin's pinned maps.
    :param node_netns: the node's network namespace (``None``: the caller's).
    :returns: counter name -> value (packets, drops by reason...), or ``None`` when the plugin
        has nothing for this endpoint.  Each implementation is called on its own: its numbers
        are shown under its plugin name, and one that raises costs a problem line only.
    """


@hookspec
def nkframe_endpoint_report(endpoint: "Endpoint", bpffs_root: str, node_netns: "str | None") -> "EndpointReport | None":
    """Report what a plugin built for one endpoint outside the program chain, and whether it is
    still whole (``nkframe status``, ``status --check``, ``nkframe reconcile``).

    For state the engine cannot judge by itself: a program the plugin attached on its own, a
    placement the plugin chose.  Read only; repair is for the plugin's own commands or a new add.

    :param endpoint: the endpoint as read back from bpffs and the kernel.
    :param bpffs_root: the engine's bpffs root, to open the plugin's pins.
    :param node_netns: the node's network namespace (``None``: the caller's).
    :returns: an :class:`nkframe.types.EndpointReport` (``facts`` shown under the plugin's name,
        ``problems`` joined to the endpoint's), or ``None`` when the endpoint is not the
        plugin's.  Each implementation is called on its own; one that raises costs a problem
        line only.  Reconcile calls it for every endpoint: keep it to a few pin reads.
    """


@hookspec
def nkframe_metrics(bpffs_root: str, node_netns: "str | None") -> "list[Metric] | None":
    """Report a plugin's metrics for the agent's Prometheus endpoint (``agent run --metrics``).

    Called from the scraping thread each time a scraper asks, alongside requests that add and
    remove endpoints, so: read what is there (aggregate counters), take no lock an add holds for
    long, and keep the cost independent of how large a configuration is (rules, routes);
    per-endpoint series are fine, their number is bounded by the node's pods.

    :param bpffs_root: the engine's bpffs root, to open the plugin's pinned maps.  Don't create
        maps that are not there: report nothing instead.
    :param node_netns: the node's network namespace (``None``: the caller's).
    :returns: :class:`nkframe.types.Metric` families (names without the ``nkframe_`` prefix,
        which the agent adds), or ``None``.  Each implementation is called on its own; one that
        raises is logged and counted in ``nkframe_scrape_errors_total{source=PLUGIN}``, the
        rest of the scrape goes on.
    """


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@hookspec
def nkframe_node_reset(node_netns: "str | None", bpffs_root: str) -> None:
    """Undo what the plugin changed on the node outside bpffs (``nkframe node reset``).

    Called after every endpoint and uplink program is gone and before the bpffs root is removed:
    restore node settings the plugin changed (sysctls it switched on), drop caches of the
    root's maps.  Must not fail when there is nothing to undo.

    :param node_netns: the node's network namespace (``None``: the caller's).
    :param bpffs_root: the engine's bpffs root, still holding the plugin's global pins.
    """


@hookspec
def nkframe_cli_commands() -> "list":
    """Commands the plugin adds to the ``nkframe`` command line.

    Return a list of :mod:`click` commands or groups; each becomes ``nkframe <name>``.  They run
    with the root options in ``ctx.obj`` (use :func:`nkframe.cli.engine_for` for an
    :class:`~nkframe.engine.Engine` built from them, :func:`nkframe.cli.print_json` for
    ``--json``), and their :class:`~nkframe.errors.NkframeError` exceptions become the usual
    one-line error and exit code.  A name nkframe already has is not replaced (a warning says
    so).  Called when the command line starts; keep it cheap (import click, define commands).
    """


@hookspec
def nkframe_endpoint_added(endpoint: "Endpoint") -> None:
    """An endpoint is complete and passing traffic.  Observers only.

    :param endpoint: the :class:`nkframe.types.Endpoint` as built.
    """


@hookspec
def nkframe_endpoint_removed(endpoint_id: str) -> None:
    """An endpoint and everything built for it is gone.  Observers only.

    :param endpoint_id: the id of the endpoint that was removed (or garbage-collected).
    """
