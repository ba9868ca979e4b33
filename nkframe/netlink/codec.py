"""One declarative netlink codec: a message is a fixed header (struct fields) plus an attribute
map, both encoded to and decoded from bytes by the same declaration.

The idea is pyroute2's (``fields`` + ``nla_map``), without its machinery: a map is a list of
``(name, type number, kind)``; a kind turns one value into an attribute payload and back.  Names
are the uAPI's (``IFLA_MTU``), numbers come from :mod:`nkframe.uapi`.  rtnetlink (links, the
link kinds in :mod:`nkframe.netlink.kinds`) and generic netlink (:mod:`nkframe.netlink.netdev`)
describe their messages here; pyroute2 is the test oracle that our bytes equal its encoding.

Values:

* an attribute map encodes a mapping ``{name: value}`` (or ``(name, value)`` pairs) **in the
  order given**, skipping ``None`` (not sent); it decodes to a dict in the order received, an
  attribute the map does not know kept under its type number as raw bytes;
* a :class:`Message` (header + attributes) takes and gives one dict: the header's field names
  (lower case) next to the attribute names (upper case); header fields left out are 0.

Decoding is as lenient as the kernel's parser: a truncated tail ends the walk, the last of two
equal attributes wins, a payload too short for its kind decodes to None.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from nkframe.uapi import NLA_F_NESTED, NLA_TYPE_MASK

__all__ = [
    "U8", "U16", "U32", "S32", "U64", "UINT", "STRING", "BYTES", "MAC", "IP", "FLAG",
    "Scalar", "Nested", "Array", "Switch", "Header", "AttrMap", "Message",
    "nla", "iter_attrs", "CodecError",
]


class CodecError(ValueError):
    """A value that cannot be encoded as its declaration says (unknown name, out of range)."""


# --------------------------------------------------------------------------------------------
# the wire format


_NLA = struct.Struct("=HH")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # by length % 4


def nla(atype: int, payload: bytes) -> bytes:
    """struct nlattr (u16 len, u16 type) + payload, padded to 4 bytes."""
    n = 4 + len(payload)
    return _NLA.pack(n, atype) + payload + _PAD[n & 3]


def iter_attrs(buf: bytes | memoryview, off: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) of each attribute in ``buf[off:]``; a truncated tail ends
    the walk."""
    end = len(buf)
    while off + 4 <= end:
        length, atype = struct.unpack_from("=HH", buf, off)
        if length < 4 or off + length > end:
            return
        yield atype & NLA_TYPE_MASK, bytes(buf[off + 4 : off + length])
        off += (length + 3) & ~3


# --------------------------------------------------------------------------------------------
# kinds: one value <-> one attribute payload


class Kind:
    """How one attribute's payload is encoded; ``flags`` are OR-ed into its type."""

    flags = 0

    def encode(self, value: Any) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, payload: bytes) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class Scalar(Kind):
    """A fixed-width integer in host byte order (``fmt`` a struct code: B, H, I, i, Q)."""

    def __init__(self, fmt: str):
        self.st = struct.Struct("=" + fmt)
        self.fmt = fmt

    def encode(self, value: Any) -> bytes:
        try:
            return self.st.pack(value)
        except struct.error as e:
            raise CodecError(f"{value!r} does not fit a {self.fmt!r} attribute: {e}") from None

    def decode(self, payload: bytes) -> int | None:
        return self.st.unpack_from(payload)[0] if len(payload) >= self.st.size else None

    def __repr__(self) -> str:
        return f"Scalar({self.fmt!r})"


class _Uint(Kind):
    """NLA_UINT: u32 when the value fits, else u64; decodes either width."""

    def encode(self, value: Any) -> bytes:
        v = int(value)
        if not 0 <= v < 1 << 64:
            raise CodecError(f"{value!r} is not an unsigned 64-bit value")
        return struct.pack("=I", v) if v < 1 << 32 else struct.pack("=Q", v)

    def decode(self, payload: bytes) -> int | None:
        if len(payload) >= 8:
            return struct.unpack_from("=Q", payload)[0]
        return struct.unpack_from("=I", payload)[0] if len(payload) >= 4 else None


class _String(Kind):
    """NUL-terminated text (NLA_NUL_STRING / NLA_STRING as the kernel sends it)."""

    def encode(self, value: Any) -> bytes:
        return str(value).encode() + b"\0"

    def decode(self, payload: bytes) -> str:
        return payload.split(b"\0", 1)[0].decode(errors="replace")


class _Bytes(Kind):
    def encode(self, value: Any) -> bytes:
        return bytes(value)

    def decode(self, payload: bytes) -> bytes:
        return payload


class _Mac(Kind):
    """A link-layer address in colon form ('02:00:00:00:00:01'); empty decodes to None."""

    def encode(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        try:
            return bytes(int(x, 16) for x in str(value).split(":"))
        except ValueError:
            raise CodecError(f"{value!r} is not a link-layer address") from None

    def decode(self, payload: bytes) -> str | None:
        return ":".join(f"{b:02x}" for b in payload) if payload else None


class _Ip(Kind):
    """An IPv4 or IPv6 address, packed (4 or 16 bytes); decodes to an ipaddress object."""

    def encode(self, value: Any) -> bytes:
        try:
            return value.packed
        except AttributeError:
            pass
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        try:
            return ipaddress.ip_address(value).packed
        except ValueError:
            raise CodecError(f"{value!r} is not an IP address") from None

    def decode(self, payload: bytes) -> Any:
        return ipaddress.ip_address(payload) if len(payload) in (4, 16) else None


class _Flag(Kind):
    """NLA_FLAG: present (True) or not sent; no payload."""

    def encode(self, value: Any) -> bytes:
        return b""

    def decode(self, payload: bytes) -> bool:
        return True


U8, U16, U32, S32, U64 = Scalar("B"), Scalar("H"), Scalar("I"), Scalar("i"), Scalar("Q")
UINT = _Uint()
STRING = _String()
BYTES = _Bytes()
MAC = _Mac()
IP = _Ip()
FLAG = _Flag()


class Nested(Kind):
    """Attributes nested in one attribute: an :class:`AttrMap` or a :class:`Message` (a header
    before the attributes, as VETH_INFO_PEER's ifinfomsg).  ``nested=True`` sets NLA_F_NESTED
    on it, which generic netlink families validate strictly; rtnetlink's older nests go
    without, as iproute2 and pyroute2 send them.  ``inner`` may be a callable returning the map,
    for maps that nest each other."""

    def __init__(self, inner: "AttrMap | Message | Callable[[], AttrMap | Message]", *, nested: bool = False):
        self._inner = inner
        self.flags = NLA_F_NESTED if nested else 0

    @property
    def inner(self) -> "AttrMap | Message":
        inner = self._inner
        return inner if isinstance(inner, (AttrMap, Message)) else inner()

    def encode(self, value: Any) -> bytes:
        return self.inner.encode(value)

    def decode(self, payload: bytes) -> dict:
        return self.inner.decode(payload)


class Array(Kind):
    """A nest whose attributes are the elements of a list, their types the indices (1-based
    on encode); decodes to the list in the order received."""

    def __init__(self, element: Kind, *, nested: bool = False):
        self.element = element
        self.flags = NLA_F_NESTED if nested else 0

    def encode(self, value: Any) -> bytes:
        return b"".join(nla((i + 1) | self.element.flags, self.element.encode(v)) for i, v in enumerate(value))

    def decode(self, payload: bytes) -> list:
        return [self.element.decode(p) for _i, p in iter_attrs(payload)]


class Switch(Kind):
    """A payload whose kind depends on a sibling attribute's value (IFLA_INFO_DATA on
    IFLA_INFO_KIND).  ``kinds(value)`` returns the kind for a selector value, or None (then the
    payload is raw bytes); the selector must come first in the message."""

    def __init__(self, selector: str, kinds: Callable[[Any], Kind | None]):
        self.selector = selector
        self.kinds = kinds

    def pick(self, siblings: Mapping[str, Any]) -> Kind:
        kind = self.kinds(siblings.get(self.selector))
        return kind if kind is not None else BYTES

    def encode(self, value: Any) -> bytes:  # pragma: no cover - AttrMap calls pick() first
        raise CodecError(f"a Switch on {self.selector} is encoded through its attribute map")

    def decode(self, payload: bytes) -> Any:  # pragma: no cover - as encode
        raise CodecError(f"a Switch on {self.selector} is decoded through its attribute map")


# --------------------------------------------------------------------------------------------
# headers, attribute maps, messages


class Header:
    """A fixed C struct: a struct format (``x`` for padding) and the names of its fields."""

    def __init__(self, fmt: str, names: Iterable[str]):
        self.st = struct.Struct("=" + fmt)
        self.names = tuple(names)
        assert len(self.st.unpack(bytes(self.st.size))) == len(self.names), (fmt, self.names)

    @property
    def size(self) -> int:
        return self.st.size

    def encode(self, value: Mapping[str, Any] | None = None) -> bytes:
        if not value:
            return bytes(self.st.size)
        try:
            return self.st.pack(*[value.get(n, 0) for n in self.names])
        except struct.error as e:
            raise CodecError(f"header {dict(value)!r}: {e}") from None

    def decode(self, payload: bytes) -> dict[str, int]:
        return dict(zip(self.names, self.st.unpack_from(payload)))


class AttrMap:
    """A set of attributes: ``(name, type number, kind)`` each."""

    def __init__(self, name: str, attrs: Iterable[tuple[str, int, Kind]]):
        self.name = name
        self.by_name: dict[str, tuple[int, Kind]] = {}
        self.by_type: dict[int, tuple[str, Kind]] = {}
        for aname, atype, kind in attrs:
            assert aname not in self.by_name and atype not in self.by_type, (name, aname, atype)
            self.by_name[aname] = (atype, kind)
            self.by_type[atype] = (aname, kind)
        # name -> (type with the kind's flags, kind): what encode looks up
        self._wire = {n: (t | k.flags, k) for n, (t, k) in self.by_name.items()}

    def __repr__(self) -> str:
        return f"AttrMap({self.name!r})"

    def type_of(self, name: str) -> int:
        return self.by_name[name][0]

    def value(self, raw: Mapping[int, bytes], name: str) -> Any:
        """One attribute of an undecoded ``{type: payload}`` map (nlsock.attr_map), decoded;
        None when absent.  For readers that need a few attributes of a long reply."""
        atype, kind = self.by_name[name]
        p = raw.get(atype)
        return None if p is None or isinstance(kind, Switch) else kind.decode(p)

    def encode(self, value: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> bytes:
        if not value:
            return b""
        if isinstance(value, list):
            items = value
        elif isinstance(value, dict):
            items = list(value.items())
        else:
            items = list(value.items() if isinstance(value, Mapping) else value)
        wire = self._wire
        out = []
        for name, v in items:
            if v is None:
                continue
            try:
                atype, kind = wire[name]
            except KeyError:
                raise CodecError(f"{self.name} has no attribute {name!r}") from None
            if kind.__class__ is Switch:
                kind = kind.pick(dict(items))
                atype |= kind.flags
            out.append(nla(atype, kind.encode(v)))
        return b"".join(out)

    def decode(self, payload: bytes | memoryview, off: int = 0) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        later = []
        for atype, p in iter_attrs(payload, off):
            known = self.by_type.get(atype)
            if known is None:
                out[atype] = p
                continue
            name, kind = known
            if isinstance(kind, Switch):
                out[name] = None  # keeps the received order
                later.append((name, kind, p))
                continue
            out[name] = kind.decode(p)
        for name, kind, p in later:
            out[name] = kind.pick(out).decode(p)
        return out


class Message:
    """A header followed by attributes: an rtnetlink message body (ifinfomsg + IFLA_*), or a
    nest that starts with a struct (VETH_INFO_PEER, IFLA_NETKIT_PEER_INFO)."""

    def __init__(self, header: Header, attrs: AttrMap):
        self.header = header
        self.attrs = attrs
        self._hnames = frozenset(header.names)

    def encode(self, value: Mapping[str, Any] | None = None, **fields: Any) -> bytes:
        """``value`` holds header fields and attributes (in order); ``fields`` more header
        fields."""
        hnames = self._hnames
        hdr = fields
        attrs_ = []
        if value:
            for k, v in value.items():
                if k in hnames:
                    hdr.setdefault(k, v)
                else:
                    attrs_.append((k, v))
        return self.header.encode(hdr) + self.attrs.encode(attrs_)

    def decode(self, payload: bytes | memoryview) -> dict[Any, Any]:
        out: dict[Any, Any] = self.header.decode(payload)
        out.update(self.attrs.decode(payload, self.header.size))
        return out
