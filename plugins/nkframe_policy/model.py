"""Policy value types and their parsing from dicts and YAML.

A :class:`Policy` is what a user writes for one endpoint; it is validated completely when it is
built, so everything after this module (compiler, map writer) can assume a well-formed policy.
See the package docstring for the verdict semantics.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any, Iterable, Mapping, Sequence

import attrs

from nkframe.errors import InvalidSpec

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58


class PolicyError(InvalidSpec):
    """A policy document or value that cannot be accepted.

    ``path`` locates the offending item (``("egress", 3, "ports")``); ``line`` is the 1-based line
    in the YAML text when the policy came from :meth:`Policy.from_yaml`.
    """

    def __init__(self, message: str, path: Sequence[str | int] = (), line: int | None = None):
        self.message = message
        self.path = tuple(path)
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        where = format_path(self.path)
        prefix = ""
        if self.line is not None:
            prefix = f"line {self.line}: "
        if where:
            prefix += f"{where}: "
        return prefix + self.message

    def at(self, line: int | None) -> "PolicyError":
        return PolicyError(self.message, self.path, line)


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"

    def __str__(self) -> str:
        return self.value


class Direction(enum.Enum):
    """INGRESS: packets going to the endpoint (rules match the source address).
    EGRESS: packets the endpoint sends (rules match the destination address)."""

    INGRESS = "ingress"
    EGRESS = "egress"

    def __str__(self) -> str:
        return self.value


class Proto(enum.Enum):
    ANY = "any"
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"  # ICMP for IPv4, ICMPv6 for IPv6

    def __str__(self) -> str:
        return self.value

    @property
    def has_ports(self) -> bool:
        return self in (Proto.TCP, Proto.UDP)

    def number(self, version: int) -> int:
        """The IP protocol number this matches for an IP ``version`` (4 or 6); 0 for ANY."""
        if self is Proto.ICMP:
            return IPPROTO_ICMP if version == 4 else IPPROTO_ICMPV6
        return {Proto.ANY: 0, Proto.TCP: IPPROTO_TCP, Proto.UDP: IPPROTO_UDP}[self]


def _enum_value(cls: type[enum.Enum], value: Any, what: str, path: Sequence[str | int]):
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(m.value for m in cls)
    raise PolicyError(f"{what} must be one of {choices}, not {value!r}", path)


def parse_action(value: Any, path: Sequence[str | int] = ("action",)) -> Action:
    return _enum_value(Action, value, "action", path)


def parse_proto(value: Any, path: Sequence[str | int] = ("proto",)) -> Proto:
    if value is None:
        return Proto.ANY
    if isinstance(value, str) and value.strip().lower() == "icmpv6":
        return Proto.ICMP
    return _enum_value(Proto, value, "proto", path)


def parse_cidr(value: Any, path: Sequence[str | int] = ("cidr",)) -> IPNetwork:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if not isinstance(value, str):
        raise PolicyError(f"cidr must be a string such as '10.0.0.0/8', not {value!r}", path)
    text = value.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise PolicyError(
                f"{value!r} is not an IPv4 or IPv6 CIDR ({exc}); write e.g. '10.0.0.0/8' or "
                f"'fd00::/64'",
                path,
            ) from None
        raise PolicyError(
            f"{value!r} has host bits set; did you mean {str(loose)!r}?", path
        ) from None


def _check_port(value: Any, path: Sequence[str | int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PolicyError(f"port must be a number 0..65535, not {value!r}", path)
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise PolicyError(f"port must be a number 0..65535, not {value!r}", path)
        value = int(text)
    if not 0 <= value <= 65535:
        raise PolicyError(f"port {value} is out of range 0..65535", path)
    return value


def _valid_port(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise PolicyError(f"port must be a number 0..65535, not {value!r}", ("ports",))


@attrs.frozen(order=True)
class PortRange:
    """Destination ports ``lo..hi``, both included."""

    lo: int = attrs.field(validator=_valid_port)
    hi: int = attrs.field(validator=_valid_port)

    def __attrs_post_init__(self) -> None:
        if self.lo > self.hi:
            raise PolicyError(
                f"port range {self.lo}-{self.hi} is upside down (first port above the last); "
                f"write {self.hi}-{self.lo}",
                ("ports",),
            )

    @classmethod
    def single(cls, port: int) -> "PortRange":
        return cls(port, port)

    @classmethod
    def parse(cls, value: Any, path: Sequence[str | int] = ("ports",)) -> "PortRange":
        """Accept ``80``, ``"80"``, ``"80-90"``, ``[80, 90]`` or ``{"from": 80, "to": 90}``."""
        if isinstance(value, PortRange):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"from", "to"}
            if unknown or "from" not in value:
                raise PolicyError(
                    f"a port range mapping needs 'from' (and optionally 'to'), got {dict(value)!r}",
                    path,
                )
            lo = _check_port(value["from"], path)
            hi = _check_port(value.get("to", value["from"]), path)
        elif isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise PolicyError(f"a port range list needs [first, last], got {value!r}", path)
            lo, hi = (_check_port(v, path) for v in value)
        elif isinstance(value, str) and "-" in value:
            first, _, last = value.partition("-")
            lo, hi = _check_port(first, path), _check_port(last, path)
        else:
            lo = hi = _check_port(value, path)
        try:
            return cls(lo, hi)
        except PolicyError as exc:
            raise PolicyError(exc.message, path) from None

    def contains(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def overlaps(self, other: "PortRange") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


ALL_PORTS = PortRange(0, 65535)


def _rule_cidr(value: Any) -> IPNetwork:
    return parse_cidr(value)


@attrs.frozen
class Rule:
    """One allow/deny rule.

    ``cidr`` is matched against the source address for ingress and the destination address for
    egress.  ``ports`` (destination ports) only exist for TCP and UDP; ``None`` means all ports.
    """

    action: Action = attrs.field(converter=lambda v: parse_action(v))
    cidr: IPNetwork = attrs.field(converter=_rule_cidr)
    proto: Proto = attrs.field(default=Proto.ANY, converter=lambda v: parse_proto(v))
    ports: PortRange | None = attrs.field(
        default=None, converter=lambda v: None if v is None else PortRange.parse(v)
    )

    def __attrs_post_init__(self) -> None:
        if self.ports is not None and not self.proto.has_ports:
            raise PolicyError(
                f"ports only apply to tcp and udp, not to proto {self.proto}; "
                f"remove 'ports' or set proto to tcp or udp",
                ("ports",),
            )

    @classmethod
    def allow(cls, cidr: Any, proto: Any = "any", ports: Any = None) -> "Rule":
        return cls(Action.ALLOW, cidr, proto, ports)

    @classmethod
    def deny(cls, cidr: Any, proto: Any = "any", ports: Any = None) -> "Rule":
        return cls(Action.DENY, cidr, proto, ports)

    @classmethod
    def from_dict(cls, d: Any, path: Sequence[str | int] = ()) -> "Rule":
        path = tuple(path)
        if not isinstance(d, Mapping):
            raise PolicyError(f"a rule must be a mapping with action and cidr, not {d!r}", path)
        unknown = set(d) - {"action", "cidr", "proto", "ports"}
        if unknown:
            raise PolicyError(
                f"unknown rule field(s) {', '.join(sorted(map(str, unknown)))}; "
                f"a rule has action, cidr, proto, ports",
                path + (sorted(map(str, unknown))[0],),
            )
        for required in ("action", "cidr"):
            if required not in d:
                raise PolicyError(f"rule has no {required!r}", path)
        action = parse_action(d["action"], path + ("action",))
        cidr = parse_cidr(d["cidr"], path + ("cidr",))
        proto = parse_proto(d.get("proto"), path + ("proto",))
        ports = None
        if d.get("ports") is not None:
            ports = PortRange.parse(d["ports"], path + ("ports",))
        try:
            return cls(action, cidr, proto, ports)
        except PolicyError as exc:
            raise PolicyError(exc.message, path + exc.path) from None

    @property
    def version(self) -> int:
        return self.cidr.version

    @property
    def effective_ports(self) -> PortRange:
        return self.ports if self.ports is not None else ALL_PORTS

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": self.action.value, "cidr": str(self.cidr)}
        if self.proto is not Proto.ANY:
            d["proto"] = self.proto.value
        if self.ports is not None:
            d["ports"] = str(self.ports)
        return d

    def __str__(self) -> str:
        text = f"{self.action} {self.proto} {self.cidr}"
        if self.ports is not None:
            text += f" ports {self.ports}"
        return text


def _rules(value: Iterable[Any]) -> tuple[Rule, ...]:
    return tuple(r if isinstance(r, Rule) else Rule.from_dict(r) for r in value)


def _check_conflicts(direction: Direction, rules: Sequence[Rule]) -> None:
    """Reject duplicates and same-CIDR rules whose matches overlap with different actions.

    Such a pair is almost certainly a mistake: deny always wins, so the allow rule is dead in the
    overlap.  Rules on different (nested) CIDRs are the normal way to carve exceptions and are
    fine.  Sweep per CIDR and protocol so a large policy stays O(n log n).
    """
    seen: dict[Rule, int] = {}
    by_cidr: dict[IPNetwork, list[int]] = {}
    for i, rule in enumerate(rules):
        if rule in seen:
            raise PolicyError(
                f"duplicate rule ({rule}); it repeats {direction}[{seen[rule]}] — remove one",
                (direction.value, i),
            )
        seen[rule] = i
        by_cidr.setdefault(rule.cidr, []).append(i)
    for indices in by_cidr.values():
        if len(indices) < 2:
            continue
        # ANY overlaps everything; ICMP has no ports, so it behaves like one full range.
        anys = [i for i in indices if rules[i].proto is Proto.ANY]
        for proto in (Proto.TCP, Proto.UDP, Proto.ICMP):
            group = anys + [i for i in indices if rules[i].proto is proto]
            if len(group) < 2:
                continue
            group.sort(key=lambda i: (rules[i].effective_ports.lo, i))
            reach: dict[Action, tuple[int, int]] = {}  # action -> (max hi so far, rule index)
            for i in group:
                rule = rules[i]
                ports = rule.effective_ports
                other = Action.DENY if rule.action is Action.ALLOW else Action.ALLOW
                if other in reach and reach[other][0] >= ports.lo:
                    j = reach[other][1]
                    first, second = sorted((i, j))
                    raise PolicyError(
                        f"rule ({rules[second]}) conflicts with {direction}[{first}] "
                        f"({rules[first]}): same CIDR, overlapping protocol and ports, different "
                        f"actions (deny would always win) — split the port ranges or remove one",
                        (direction.value, second),
                    )
                best = reach.get(rule.action)
                if best is None or ports.hi > best[0]:
                    reach[rule.action] = (ports.hi, i)


@attrs.frozen
class Policy:
    """The L3/L4 policy of one endpoint: rules and a default action per direction."""

    ingress: tuple[Rule, ...] = attrs.field(default=(), converter=_rules)
    egress: tuple[Rule, ...] = attrs.field(default=(), converter=_rules)
    default_ingress: Action = attrs.field(default=Action.ALLOW, converter=lambda v: parse_action(v))
    default_egress: Action = attrs.field(default=Action.ALLOW, converter=lambda v: parse_action(v))

    def __attrs_post_init__(self) -> None:
        _check_conflicts(Direction.INGRESS, self.ingress)
        _check_conflicts(Direction.EGRESS, self.egress)

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def default(self, direction: Direction) -> Action:
        return self.default_ingress if direction is Direction.INGRESS else self.default_egress

    @classmethod
    def allow_all(cls) -> "Policy":
        return cls()

    @classmethod
    def from_dict(cls, d: Any) -> "Policy":
        fields = ("ingress", "egress", "default_ingress", "default_egress")
        if d is None or (isinstance(d, Mapping) and not d):
            # An empty file, a comment-only file or `null` once replaced a deny policy with
            # allow/allow: a policy must say what it means.
            raise PolicyError(
                "the policy is empty; a policy must set at least one of "
                f"{', '.join(fields)} (to allow everything, write 'default_ingress: allow' and "
                "'default_egress: allow'; to take an endpoint's policy away, use "
                "'nkframe policy remove')"
            )
        if not isinstance(d, Mapping):
            raise PolicyError(f"a policy must be a mapping, not {type(d).__name__}")
        unknown = set(d) - set(fields)
        if unknown:
            name = sorted(map(str, unknown))[0]
            raise PolicyError(
                f"unknown policy field {name!r}; a policy has {', '.join(fields)}", (name,)
            )
        rules: dict[str, tuple[Rule, ...]] = {}
        for direction in ("ingress", "egress"):
            raw = d.get(direction) or []
            if not isinstance(raw, (list, tuple)):
                raise PolicyError(f"{direction} must be a list of rules", (direction,))
            rules[direction] = tuple(
                Rule.from_dict(r, (direction, i)) for i, r in enumerate(raw)
            )
        defaults = {
            name: parse_action(d.get(name, "allow"), (name,))
            for name in ("default_ingress", "default_egress")
        }
        return cls(rules["ingress"], rules["egress"], **defaults)

    @classmethod
    def from_yaml(cls, text: str) -> "Policy":
        """Parse a YAML document; errors name the line of the offending item."""
        from ._yaml import load_with_lines

        data, lines = load_with_lines(text)
        try:
            return cls.from_dict(data)
        except PolicyError as exc:
            raise exc.at(_line_for(lines, exc.path)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "default_ingress": self.default_ingress.value,
            "default_egress": self.default_egress.value,
            "ingress": [r.to_dict() for r in self.ingress],
            "egress": [r.to_dict() for r in self.egress],
        }


def _line_for(lines: Mapping[tuple, int], path: Sequence[str | int]) -> int | None:
    path = tuple(path)
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]
