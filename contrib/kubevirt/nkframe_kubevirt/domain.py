"""Rewriting virt-launcher's libvirt domain XML as text.

libvirt has no interface type for QEMU's ``-netdev af-xdp``, so a VM interface bound to nkframe
becomes QEMU arguments under ``<qemu:commandline>``.  The document is edited in place: the
placeholder ``<interface>`` of the network (the one whose ``<alias name="ua-NAME"/>`` names the
VMI interface, as virt-launcher writes it for a binding with ``domainAttachmentType: tap``) is cut
out with its line, ``<qemu:arg value="..."/>`` elements are added (to an existing
``<qemu:commandline>`` or a new one before ``</domain>``) and the ``qemu`` namespace is declared
on ``<domain>`` if it is not.  Every other byte stays as it was: nothing is parsed and
re-serialized.

Offsets come from expat (``CurrentByteIndex``), so the input must be well-formed XML in UTF-8 (what
virt-launcher sends); anything else is a :class:`DomainError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.parsers import expat

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
USER_ALIAS_PREFIX = "ua-"  # virt-launcher's alias prefix for devices named after VMI devices


class DomainError(ValueError):
    """The domain XML cannot be rewritten (malformed, or not a libvirt domain)."""


@dataclass
class Element:
    name: str
    attrs: dict[str, str]
    start: int  # offset of '<'
    start_end: int = 0  # offset just past the start tag's '>'
    end: int = 0  # offset just past the element ('</x>' or '/>')
    depth: int = 0
    children: list["Element"] = field(default_factory=list)
    parent: "Element | None" = None

    def child(self, name: str) -> "Element | None":
        return next((c for c in self.children if c.name == name), None)

    @property
    def empty_tag(self) -> bool:
        return self.start_end == self.end


def _tag_end(data: bytes, i: int) -> int:
    """Offset just past the tag starting at ``data[i] == '<'`` (quotes respected)."""
    q = None
    n = len(data)
    j = i + 1
    while j < n:
        c = data[j]
        if q is not None:
            if c == q:
                q = None
        elif c in (0x22, 0x27):  # " '
            q = c
        elif c == 0x3E:  # >
            return j + 1
        j += 1
    raise DomainError("unterminated tag")


def parse(data: bytes) -> Element:
    """The element tree of ``data`` with byte offsets (no namespace processing)."""
    if not isinstance(data, (bytes, bytearray)):
        raise DomainError("the domain XML must be bytes")
    if not data.strip():
        raise DomainError("the domain XML is empty")
    p = expat.ParserCreate("UTF-8")
    p.ordered_attributes = False
    stack: list[Element] = []
    root: list[Element] = []

    def start(name, attrs):
        i = p.CurrentByteIndex
        el = Element(name, dict(attrs), i, _tag_end(data, i), depth=len(stack))
        if stack:
            el.parent = stack[-1]
            stack[-1].children.append(el)
        else:
            root.append(el)
        stack.append(el)

    def end(name):
        el = stack.pop()
        i = p.CurrentByteIndex
        if i == el.start_end and data[i - 2:i] == b"/>":  # <x/>: expat reports the end past it
            el.end = el.start_end
        elif data.startswith(b"</", i):
            el.end = _tag_end(data, i)
        else:  # pragma: no cover - expat always reports one of the two
            raise DomainError(f"cannot find the end of <{name}>")

    p.StartElementHandler = start
    p.EndElementHandler = end
    try:
        p.Parse(bytes(data), True)
    except expat.ExpatError as e:
        raise DomainError(f"the domain XML is not well-formed: {e}") from None
    if not root or root[0].name != "domain":
        raise DomainError(f"the root element is <{root[0].name if root else '?'}>, not <domain>")
    return root[0]


def _attr(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;").replace("\r", "&#13;"))


def _line_start(data: bytes, i: int) -> int:
    """``i`` moved back over the indentation and the line end before it, if the element is the
    only thing on its line so far (so cutting it removes its line)."""
    j = i
    while j > 0 and data[j - 1] in b" \t":
        j -= 1
    if j > 0 and data[j - 1] == 0x0A:
        j -= 1
        if j > 0 and data[j - 1] == 0x0D:
            j -= 1
        return j
    return i


def _indent_of(data: bytes, el: Element) -> str:
    """The white space before ``el`` on its line ('' if something else precedes it)."""
    j = el.start
    while j > 0 and data[j - 1] in b" \t":
        j -= 1
    if j == 0 or data[j - 1] == 0x0A:
        return data[j:el.start].decode()
    return ""


def qemu_prefix(root: Element) -> str | None:
    """The prefix the domain binds to libvirt's QEMU namespace, if any."""
    for k, v in root.attrs.items():
        if k.startswith("xmlns:") and v == QEMU_NS:
            return k.split(":", 1)[1]
    return None


@dataclass
class Placeholder:
    """A domain ``<interface>`` that stands for a VMI interface."""

    element: Element
    mac: str | None
    pci: dict[str, str] | None


def find_placeholder(root: Element, iface_name: str) -> Placeholder | None:
    devices = root.child("devices")
    if devices is None:
        return None
    want = USER_ALIAS_PREFIX + iface_name
    for el in devices.children:
        if el.name != "interface":
            continue
        alias = el.child("alias")
        if alias is None or alias.attrs.get("name") != want:
            continue
        mac_el = el.child("mac")
        addr = el.child("address")
        pci = dict(addr.attrs) if addr is not None and addr.attrs.get("type") == "pci" else None
        return Placeholder(el, mac_el.attrs.get("address") if mac_el is not None else None, pci)
    return None


_PCI_RE = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def parse_pci_address(value: str) -> dict[str, str]:
    """KubeVirt's ``pciAddress`` (``0000:81:01.0``) as libvirt address attributes."""
    m = _PCI_RE.match(value or "")
    if not m:
        raise DomainError(f"pciAddress {value!r} is not DDDD:BB:SS.F")
    d, b, s, f = m.groups()
    return {"type": "pci", "domain": f"0x{d.lower()}", "bus": f"0x{b.lower()}",
            "slot": f"0x{s.lower()}", "function": f"0x{f}"}


def machine_of(root: Element) -> str:
    os_el = root.child("os")
    t = os_el.child("type") if os_el is not None else None
    return (t.attrs.get("machine", "") if t is not None else "") or ""


def qemu_bus_addr(pci: dict[str, str], machine: str) -> list[str]:
    """``bus=...,addr=...`` properties for ``-device`` at a libvirt PCI address.

    libvirt names PCI controller *index* N ``pci.N`` in QEMU, except the root bus (index 0):
    ``pcie.0`` on q35, ``pci.0`` on i440fx.  A bus number is its controller's index as libvirt
    assigns them (KubeVirt's addresses follow that), and QEMU has only PCI domain 0.
    """
    def num(key: str, default: str = "0x0") -> int:
        raw = pci.get(key, default)
        try:
            return int(raw, 0)
        except ValueError:
            raise DomainError(f"PCI address {key}={raw!r} is not a number") from None

    dom, bus, slot, fn = num("domain"), num("bus"), num("slot"), num("function")
    if dom != 0:
        raise DomainError(f"PCI domain {dom:#06x}: QEMU has only domain 0")
    if not 0 <= slot <= 0x1F or not 0 <= fn <= 7 or not 0 <= bus <= 0xFF:
        raise DomainError(f"PCI address bus={bus:#x} slot={slot:#x} function={fn}: out of range")
    if bus == 0:
        busname = "pcie.0" if "q35" in machine else "pci.0"
    else:
        busname = f"pci.{bus}"
    return [f"bus={busname}", f"addr={slot:#04x}.{fn}"]


@dataclass
class Edit:
    start: int
    end: int
    text: bytes


def rewrite(data: bytes, remove: list[Element], args: list[str]) -> bytes:
    """``data`` with the ``remove`` elements cut out (each with its line) and ``args`` added as
    ``<qemu:arg>`` elements; no other byte changes."""
    root = parse(data)
    edits: list[Edit] = []
    for el in remove:
        edits.append(Edit(_line_start(data, el.start), el.end, b""))
    if args:
        prefix = qemu_prefix(root)
        if prefix is None:
            prefix = "qemu"
            if "xmlns:qemu" in root.attrs:
                raise DomainError("the prefix 'qemu' is bound to another namespace "
                                  f"({root.attrs['xmlns:qemu']!r}), not {QEMU_NS}")
            close = root.start_end - (2 if data[root.start_end - 2:root.start_end] == b"/>" else 1)
            edits.append(Edit(close, close, f' xmlns:qemu="{QEMU_NS}"'.encode()))
        child_indent = next((_indent_of(data, c) for c in root.children if _indent_of(data, c)), "")
        step = child_indent if child_indent else ""
        nl = "\n" if (child_indent or b"\n" in data[root.start:root.end]) else ""
        cmd = root.child(f"{prefix}:commandline")
        if cmd is not None and not cmd.empty_tag:
            inner = next((_indent_of(data, c) for c in cmd.children if _indent_of(data, c)),
                         _indent_of(data, cmd) + step)
            at = _line_start(data, cmd.end - len(f"</{prefix}:commandline>"))
            text = "".join(f"{nl}{inner}<{prefix}:arg value=\"{_attr(a)}\"/>" for a in args)
            edits.append(Edit(at, at, text.encode()))
        else:
            indent = _indent_of(data, cmd) if cmd is not None else child_indent
            text = (f"{nl}{indent}<{prefix}:commandline>"
                    + "".join(f"{nl}{indent}{step}<{prefix}:arg value=\"{_attr(a)}\"/>" for a in args)
                    + f"{nl}{indent}</{prefix}:commandline>")
            if cmd is not None:  # <qemu:commandline/>: replace it, keeping its line
                edits.append(Edit(_line_start(data, cmd.start), cmd.end, text.encode()))
            else:
                at = _line_start(data, root.end - len(b"</domain>")) if not root.empty_tag else None
                if at is None:
                    raise DomainError("<domain/> is empty")
                edits.append(Edit(at, at, text.encode()))
    out = bytes(data)
    for e in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        out = out[:e.start] + e.text + out[e.end:]
    return out
