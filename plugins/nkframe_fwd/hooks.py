"""The hook implementations the L3 and L2 plugins share, as one class: each plugin is one
:class:`ForwardingHooks` (its mode, its program, what the program is given) whose hooks the
plugin's module exposes with :meth:`ForwardingHooks.export`, so the plugin still registers as a
module (entry point ``nkframe_l3``, ``plugin_objects=[nkframe_l3]``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nkframe.context import EndpointContext, UplinkContext
from nkframe.hookspecs import hookimpl
from nkframe.types import DeviceMode, EndpointSpec

from . import datapath


class ForwardingHooks:
    """Validate, contribute the forwarding program, configure/unconfigure, claim the mode,
    wrap the uplink programs, and put forwarding back on node reset, for endpoints of ``mode``.

    :param program: the forwarding program's ``ProgramSpec.name`` (what ``status --check``
        looks for), loaded from object ``obj``'s function ``function``.
    :param program_globals: per-endpoint ``.rodata`` for the program (``None``: none, and the
        program is loaded once per node).
    :param validate: more checks of a spec of this mode, after the shared ones.
    """

    def __init__(self, *, mode: DeviceMode, plugin: str, program: str, obj: str, function: str,
                 program_globals: Callable[[EndpointContext], Mapping[str, bytes]] | None = None,
                 validate: Callable[[EndpointSpec], Any] | None = None) -> None:
        self.mode, self.plugin, self.program = mode, plugin, program
        self.obj, self.function = obj, function
        self.program_globals, self.validate_more = program_globals, validate

    def export(self, namespace: dict) -> None:
        """Put every hook implementation into a module's namespace (``globals()``)."""
        for name in dir(self):
            if name.startswith("nkframe_"):
                namespace[name] = getattr(self, name)

    def mine(self, spec: EndpointSpec) -> bool:
        return datapath.applies(spec, self.mode)

    def _has_pod_side(self, ctx: EndpointContext) -> bool:
        return self.mine(ctx.spec) and ctx.device is not None and ctx.device.pod_ifname is not None

    @hookimpl
    def nkframe_endpoint_validate(self, spec: EndpointSpec) -> None:
        if self.mine(spec):
            datapath.validate(spec)
            if self.validate_more is not None:
                self.validate_more(spec)

    @hookimpl
    def nkframe_programs_collect(self, ctx: EndpointContext):
        if not self._has_pod_side(ctx):
            return None
        extra = self.program_globals(ctx) if self.program_globals is not None else None
        return [datapath.endpoint_program(ctx, name=self.program, obj=self.obj,
                                          program=self.function, plugin=self.plugin,
                                          extra_globals=extra)]

    @hookimpl(wrapper=True)
    def nkframe_uplink_programs(self, ctx: UplinkContext):
        results = yield
        return datapath.add_uplink_program(results)

    @hookimpl
    def nkframe_endpoint_configure(self, ctx: EndpointContext) -> None:
        if self._has_pod_side(ctx):
            datapath.configure(ctx, l2=self.mode is DeviceMode.L2)

    @hookimpl
    def nkframe_endpoint_unconfigure(self, ctx: EndpointContext) -> None:
        if self.mine(ctx.spec):
            datapath.unconfigure(ctx)

    @hookimpl
    def nkframe_datapath_program(self, mode: str):
        """This plugin forwards endpoints of its mode with its program."""
        return self.program if mode == self.mode.value else None

    @hookimpl
    def nkframe_node_reset(self, node_netns, bpffs_root: str) -> None:
        """Put the node's forwarding sysctls back as they were before the first endpoint (the
        second datapath plugin's call finds nothing left to do)."""
        datapath.restore_forwarding(node_netns, bpffs_root)
