"""What hooks receive: the endpoint under construction and its undo log."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import attrs

from nkframe.types import DeviceKind, DeviceMode, EndpointSpec, Mechanism

if TYPE_CHECKING:  # pragma: no cover
    from nkframe.probe import Features

log = logging.getLogger(__name__)


class UndoLog:
    """Undo actions registered as changes are made; run newest first when a later step fails.

    An undo action that fails is logged and the rest still run: the aim is to leave as little
    behind as possible, and one stuck object must not strand the others.
    """

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self._actions.append((what, action))

    def __len__(self) -> int:
        return len(self._actions)

    def rollback(self) -> list[tuple[str, BaseException]]:
        failures = []
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except BaseException as e:  # noqa: BLE001 - keep undoing whatever happens
                log.warning("undo %s failed: %s", what, e)
                failures.append((what, e))
        return failures

    def commit(self) -> None:
        self._actions.clear()


@attrs.frozen
class DeviceInfo:
    """The device connecting a pod to the node, as created by ``nkframe_device_create``."""

    kind: DeviceKind
    mode: DeviceMode
    node_ifname: str
    node_ifindex: int
    pod_ifname: str | None  # the pod side; a netkit single device (node_ifname "", node_ifindex 0) is only this
    pod_ifindex: int
    reason: str  # why this kind, e.g. "netkit unsupported: CONFIG_NETKIT off"


@attrs.define
class EndpointContext:
    """An endpoint while it is being built or torn down."""

    spec: EndpointSpec
    node_netns: str | None
    bpffs_root: str
    features: "Features"
    undo: UndoLog = attrs.field(factory=UndoLog)
    device: DeviceInfo | None = None
    mechanisms: dict[str, Mechanism] = attrs.field(factory=dict)
    reasons: dict[str, str] = attrs.field(factory=dict)
    # Every map of the endpoint's loaded programs by name (a nkframe.bpf.Map).
    maps: dict[str, Any] = attrs.field(factory=dict)
    # The programs the engine attached for this endpoint (AttachedProgram: ``hook`` the Hook's
    # value, ``direction`` the mechanism's word), filled in before nkframe_endpoint_configure runs.
    programs: tuple = ()
    # Scratch space for plugins, keyed by plugin name.
    data: dict[str, Any] = attrs.field(factory=dict)
    uplink: "UplinkContext | None" = None


@attrs.define
class UplinkContext:
    """The node's uplink device (the physical NIC's stand-in)."""

    ifname: str
    ifindex: int
    node_netns: str | None
    bpffs_root: str
    features: "Features"
    maps: dict[str, Any] = attrs.field(factory=dict)
