"""Endpoint specs kept in bpffs, so bpffs alone tells a restarted process what exists.

bpffs holds only BPF objects, so a spec is stored as JSON inside a one-entry array map pinned at
``<root>/endpoints/<id>/spec``.  The value is fixed-size (:data:`VALUE_SIZE`): a 4-byte length
then the UTF-8 JSON.  Kept in the kernel, it is as durable as the pins next to it and goes away
with them.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from nkframe.errors import InvalidSpec, NkframeError
from nkframe.types import EndpointSpec
from nkframe.uapi import (
    BPF_MAP_TYPE_ARRAY,
)

VALUE_SIZE = 4096
SCHEMA = 1


def to_dict(spec: EndpointSpec) -> dict:
    return {
        "id": spec.id,
        "netns": spec.netns,
        "addresses": [str(a) for a in spec.addresses],
        "ifname": spec.ifname,
        "host_ifname": spec.host_ifname,
        "mode": spec.mode.value,
        "device": spec.device,
        "attach": spec.attach.value,
        "mtu": spec.mtu,
        "mac": spec.mac,
        "host_mac": spec.host_mac,
        "options": dict(spec.options),
        "leases": [str(x) for x in spec.leases],
    }


KEYS = frozenset(to_dict(EndpointSpec(id="x", netns="x")))


def from_dict(d: dict) -> EndpointSpec:
    if not isinstance(d, dict):
        raise InvalidSpec(f"an endpoint must be an object, not {type(d).__name__}")
    unknown = set(d) - KEYS
    if unknown:
        raise InvalidSpec(f"unknown endpoint field(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")
    for key in ("id", "netns"):
        if key not in d:
            raise InvalidSpec(f"endpoint field {key!r} is required")
    try:
        return EndpointSpec(**{k: v for k, v in d.items() if v is not None or k in ("mtu",)})
    except TypeError as e:
        raise InvalidSpec(f"bad endpoint: {e}") from None


def encode(spec: EndpointSpec) -> bytes:
    raw = json.dumps({"schema": SCHEMA, "spec": to_dict(spec)}, separators=(",", ":")).encode()
    if len(raw) > VALUE_SIZE - 4:
        raise InvalidSpec(f"endpoint {spec.id}: spec is {len(raw)} bytes as JSON; at most {VALUE_SIZE - 4} fit")
    return struct.pack("<I", len(raw)) + raw.ljust(VALUE_SIZE - 4, b"\0")


def decode(value: bytes) -> EndpointSpec:
    (n,) = struct.unpack_from("<I", value)
    if not 0 < n <= len(value) - 4:
        raise NkframeError("stored endpoint spec is empty or corrupt")
    doc = json.loads(value[4 : 4 + n])
    if doc.get("schema") != SCHEMA:
        raise NkframeError(f"stored endpoint spec has schema {doc.get('schema')}, this nkframe reads {SCHEMA}")
    return from_dict(doc["spec"])


def store(path: Path, spec: EndpointSpec) -> None:
    from nkframe import bpf

    m = bpf.Map.create(BPF_MAP_TYPE_ARRAY, 4, VALUE_SIZE, 1, name="nk_spec")
    try:
        m.update(struct.pack("<I", 0), encode(spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        m.pin(str(path))
    finally:
        m.close()


def replace(path: Path, spec: EndpointSpec) -> None:
    """Swap the stored spec atomically (pin the new map aside, then rename over the old pin)."""
    tmp = path.with_name(path.name + "_new")
    store(tmp, spec)
    os.replace(tmp, path)


def _read_slot(path: Path) -> bytes | None:
    """The value of the one-entry map pinned at ``path``."""
    from nkframe import bpf

    m = bpf.Map.from_pin(str(path))
    try:
        return m.lookup(struct.pack("<I", 0))
    finally:
        m.close()


def load(path: Path) -> EndpointSpec:
    value = _read_slot(path)
    if value is None:
        raise NkframeError(f"{path}: no spec stored")
    return decode(value)


# --------------------------------------------------------------------------------------------
# Small JSON documents other than specs (node-wide state a plugin must find again, e.g. the
# sysctl values it changed), stored the same way: bpffs stays the only state.


def store_doc(path: Path, doc: dict) -> None:
    """Pin ``doc`` (JSON, at most :data:`VALUE_SIZE` - 4 bytes) at ``path``, replacing any."""
    from nkframe import bpf

    raw = json.dumps(doc, separators=(",", ":")).encode()
    if len(raw) > VALUE_SIZE - 4:
        raise InvalidSpec(f"{path}: document is {len(raw)} bytes as JSON; at most {VALUE_SIZE - 4} fit")
    m = bpf.Map.create(BPF_MAP_TYPE_ARRAY, 4, VALUE_SIZE, 1, name="nk_doc")
    tmp = path.with_name(path.name + "_new")
    try:
        m.update(struct.pack("<I", 0), struct.pack("<I", len(raw)) + raw.ljust(VALUE_SIZE - 4, b"\0"))
        path.parent.mkdir(parents=True, exist_ok=True)
        m.pin(str(tmp))
    finally:
        m.close()
    os.replace(tmp, path)


def load_doc(path: Path) -> dict | None:
    """The document pinned at ``path``, or ``None`` if there is none."""
    if not path.exists():
        return None
    value = _read_slot(path)
    if value is None:
        return None
    (n,) = struct.unpack_from("<I", value)
    if not 0 < n <= len(value) - 4:
        raise NkframeError(f"{path}: stored document is empty or corrupt")
    return json.loads(value[4 : 4 + n])
