"""nkframe-example-portblock: drop UDP datagrams a pod sends to chosen destination ports.

Ask for it per endpoint::

    EndpointSpec(id="pod-a", netns="pod-a", options={"portblock": {"udp_ports": [53, 5353]}})

Endpoints without the option get no program at all.  The program (``bpf/portblock.c``) runs on
the endpoint's ``from-pod`` hook before nkframe's own programs (policy at order 100, forwarding
at 500) and hands every packet it does not drop on to them.  Drops are counted per endpoint in a
pinned map; ``nkframe status`` shows them under "portblock" as ``dropped_packets`` and
``dropped_bytes``.
"""

from __future__ import annotations

import struct
from importlib.resources import files
from typing import Any

from nkframe import hookimpl
from nkframe.errors import InvalidSpec, NkframeError
from nkframe.types import EndpointSpec, Hook, ProgramSpec

OPTION = "portblock"
PORTS_MAP = "portblock_ports"
DROPS_MAP = "portblock_drops"
MAX_PORTS = 64  # max_entries of portblock_ports in bpf/portblock.c


def object_path() -> str:
    """The BPF object built into this package by setup.py."""
    path = files(__package__) / "portblock.o"
    if not path.is_file():
        raise NkframeError(f"{path} is missing: this package was installed without building bpf/portblock.c (needs clang)")
    return str(path)


def blocked_ports(spec: EndpointSpec) -> tuple[int, ...]:
    """The endpoint's blocked UDP ports, sorted; ``()`` when it did not ask for any.

    :raises InvalidSpec: the option is malformed; the message says what to write instead.
    """
    raw: Any = spec.options.get(OPTION)
    if raw is None:
        return ()
    example = '{"portblock": {"udp_ports": [53]}}'
    if not isinstance(raw, dict) or set(raw) - {"udp_ports"}:
        raise InvalidSpec(f"endpoint {spec.id}: option {OPTION!r} must be a mapping with 'udp_ports', e.g. {example}")
    ports = raw.get("udp_ports", [])
    if not isinstance(ports, (list, tuple)):
        raise InvalidSpec(f"endpoint {spec.id}: {OPTION}.udp_ports must be a list of port numbers, e.g. {example}")
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise InvalidSpec(f"endpoint {spec.id}: {OPTION}.udp_ports: {p!r} is not a port number (1-65535)")
    unique = tuple(sorted(set(ports)))
    if len(unique) > MAX_PORTS:
        raise InvalidSpec(f"endpoint {spec.id}: {OPTION}.udp_ports lists {len(unique)} ports; at most {MAX_PORTS} fit the map")
    return unique


# ---------------------------------------------------------------------------------------------
# hook implementations: the names match nkframe.hookspecs, arguments are passed by keyword, so
# each function takes only the arguments it uses.
# ---------------------------------------------------------------------------------------------


@hookimpl
def nkframe_endpoint_validate(spec: EndpointSpec) -> None:
    """Refuse a bad option before anything is built."""
    blocked_ports(spec)


@hookimpl
def nkframe_programs_collect(ctx) -> list[ProgramSpec] | None:
    """One program on the from-pod hook, only for endpoints that block something."""
    if not blocked_ports(ctx.spec):
        return None
    return [
        ProgramSpec(
            name="portblock",
            object=object_path(),
            program="portblock",  # the function name in bpf/portblock.c
            hook=Hook.FROM_POD,
            order=50,  # before policy (100) and forwarding (500): forwarding may redirect and end the chain
            # Both maps belong to this endpoint alone: pinned under <root>/endpoints/<id>/maps/,
            # removed with the endpoint.
            maps={PORTS_MAP: "endpoint", DROPS_MAP: "endpoint"},
            plugin=OPTION,
        )
    ]


@hookimpl
def nkframe_endpoint_configure(ctx) -> None:
    """Fill the port map.  It is the endpoint's own pinned map, which a failed add or a removal
    deletes with the endpoint's directory, so there is nothing to put on ``ctx.undo``."""
    ports = blocked_ports(ctx.spec)
    if not ports:
        return
    m = ctx.maps[PORTS_MAP]
    for port in ports:
        m.update(struct.pack("=H", port), b"\x01")  # the program looks ports up in host order


@hookimpl
def nkframe_endpoint_counters(endpoint, bpffs_root: str) -> dict[str, int] | None:
    """What ``nkframe status`` shows under "portblock" for this endpoint."""
    if not blocked_ports(endpoint.spec):
        return None
    packets, nbytes = dropped(bpffs_root, endpoint.id)
    return {"dropped_packets": packets, "dropped_bytes": nbytes}


# ---------------------------------------------------------------------------------------------
# reading the counters back (status, tests, scripts)
# ---------------------------------------------------------------------------------------------


def dropped(bpffs_root: str, endpoint_id: str) -> tuple[int, int]:
    """``(datagrams, bytes)`` dropped so far for one endpoint, summed over CPUs."""
    from nkframe import bpf
    from nkframe.pins import Layout

    path = Layout(bpffs_root).map_path("endpoint", endpoint_id, DROPS_MAP)
    with bpf.Map.from_pin(path) as m:
        return tuple(  # type: ignore[return-value]
            sum(struct.unpack("=Q", v)[0] for v in m.lookup_percpu(struct.pack("=I", slot)))
            for slot in (0, 1)
        )
