"""Policy -> entries (the flattening) -> one generation's image, pure Python.

For a packet address, the longest prefix P among a direction's rule CIDRs that contains it is
what the lookup finds; the rules whose CIDR contains the address are exactly the rules whose
CIDR contains P (all of them are prefixes of the address, hence nested).  So each entry P carries
the rules of every CIDR containing P, its own included, plus the direction's default.  A /0 entry
per IP version and direction is always added (it becomes the table's fallback) so every lookup
finds the default through the same path.  Within an entry, denies come first (then allows), each
group in policy order: the BPF program stops at the first match and that is the rule the
reference evaluator reports.

:class:`Image` lays the entries of a generation out as the kernel holds them: one table per
direction and IP version (see :mod:`.tables`), the entries in table order.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping

import attrs

from . import layout, tables
from .model import Action, Direction, IPNetwork, Policy, PolicyError, Proto, Rule

_ACTION = {Action.ALLOW: layout.ACT_ALLOW, Action.DENY: layout.ACT_DENY}
_DIR = {Direction.INGRESS: layout.DIR_INGRESS, Direction.EGRESS: layout.DIR_EGRESS}
_CATCH_ALL = {4: ipaddress.IPv4Network("0.0.0.0/0"), 6: ipaddress.IPv6Network("::/0")}


@attrs.frozen
class EntryRule:
    """One rule as stored in an entry."""

    index: int  # position in policy.rules(direction)
    rule: Rule
    rule_id: int
    own: bool  # the entry's prefix is the rule's own CIDR

    def packed(self, version: int) -> tuple[int, int, int, int, int]:
        """(rule_id, port_lo, port_hi, proto number, action) as the program compares them."""
        rule = self.rule
        if rule.ports is None:
            lo, hi = 0, layout.PORT_UNKNOWN
        else:
            lo, hi = rule.ports.lo, rule.ports.hi
        return (self.rule_id, lo, hi, rule.proto.number(version), _ACTION[rule.action])


@attrs.frozen
class Entry:
    direction: Direction
    prefix: IPNetwork
    default: Action
    rules: tuple[EntryRule, ...]

    @property
    def version(self) -> int:
        return self.prefix.version

    def rule_ids(self) -> list[int]:
        """Rule ids in scan order (denies first)."""
        return [r.rule_id for r in self.rules]

    def value(self) -> bytes:
        """The packed ``struct nk_policy_entry``."""
        return layout.pack_entry(_ACTION[self.default], self.rule_ids())


@attrs.frozen
class CompiledPolicy:
    """The map entries of one policy for one endpoint slot and generation.

    ``rule_ids`` maps ``(direction, index in policy.rules(direction))`` to the counter slot."""

    policy: Policy
    slot: int
    generation: int
    entries: tuple[Entry, ...]
    rule_ids: Mapping[tuple[Direction, int], int]

    def lookup(self, direction: Direction, addr) -> Entry:
        """The entry of the longest prefix containing ``addr`` (a direct emulation, for tests
        and tools)."""
        addr = ipaddress.ip_address(addr)
        best = None
        for e in self.entries:
            if e.direction is direction and e.version == addr.version and addr in e.prefix:
                if best is None or e.prefix.prefixlen > best.prefix.prefixlen:
                    best = e
        assert best is not None, "every generation has /0 entries"
        return best

    def decide(self, direction: Direction, addr, proto: int, dport: int | None) -> tuple[Action, int | None]:
        """The BPF program's scan over the looked-up entry: (action, rule index or None)."""
        entry = self.lookup(direction, addr)
        port = layout.PORT_UNKNOWN if dport is None else dport
        for r in entry.rules:
            _, lo, hi, rproto, _ = r.packed(entry.version)
            if rproto and rproto != proto:
                continue
            if lo <= port <= hi:
                return r.rule.action, r.index
        return entry.default, None


def default_rule_ids(policy: Policy) -> dict[tuple[Direction, Rule], int]:
    """Sequential ids, ingress first: what ``compile_policy`` uses without an allocator."""
    ids: dict[tuple[Direction, Rule], int] = {}
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for rule in policy.rules(direction):
            ids[(direction, rule)] = len(ids)
    return ids


def compile_policy(
    policy: Policy,
    slot: int = 0,
    generation: int = 1,
    rule_ids: Mapping[tuple[Direction, Rule], int] | None = None,
) -> CompiledPolicy:
    """Flatten ``policy`` into LPM entries for endpoint ``slot`` and ``generation``.

    ``rule_ids`` gives each (direction, rule) its counter slot (see :class:`PolicyMaps`, which
    keeps a rule's id across policy changes so its counters carry on).  Raises
    :class:`PolicyError` when more than 16 rules cover one prefix.
    """
    if rule_ids is None:
        rule_ids = default_rule_ids(policy)
    entries: list[Entry] = []
    ids: dict[tuple[Direction, int], int] = {}
    for direction in (Direction.INGRESS, Direction.EGRESS):
        rules = policy.rules(direction)
        for i, rule in enumerate(rules):
            ids[(direction, i)] = rule_ids[(direction, rule)]
        for version in (4, 6):
            entries.extend(
                _flatten(direction, version, rules, policy.default(direction), ids)
            )
    return CompiledPolicy(policy, slot, generation, tuple(entries), ids)


def _flatten(
    direction: Direction,
    version: int,
    rules: tuple[Rule, ...],
    default: Action,
    ids: Mapping[tuple[Direction, int], int],
) -> Iterable[Entry]:
    own: dict[IPNetwork, list[int]] = {_CATCH_ALL[version]: []}
    for i, rule in enumerate(rules):
        if rule.version == version:
            own.setdefault(rule.cidr, []).append(i)
    # Sorted by (start, prefix length) a supernet comes right before its subnets, so a stack of
    # enclosing prefixes yields every prefix's covering rules in O(n * depth).
    nets = sorted(own, key=lambda n: (int(n.network_address), n.prefixlen))
    stack: list[tuple[int, int, list[int]]] = []  # (first, last address, covering rule indices)
    for net in nets:
        first, last = int(net.network_address), int(net.broadcast_address)
        while stack and not (stack[-1][0] <= first and last <= stack[-1][1]):
            stack.pop()
        covering = (stack[-1][2] if stack else []) + own[net]
        if len(covering) > layout.MAX_RULES_PER_ENTRY:
            shown = "; ".join(f"{direction}[{i}] {rules[i]}" for i in covering[:4])
            raise PolicyError(
                f"too many rules cover {net} in {direction} ({len(covering)}, max "
                f"{layout.MAX_RULES_PER_ENTRY}: a prefix carries every rule of every CIDR that "
                f"contains it): {shown}; … — merge rules or use fewer nested CIDRs",
                (direction.value, covering[-1]),
            )
        stack.append((first, last, covering))
        ordered = sorted(covering, key=lambda i: (rules[i].action is not Action.DENY, i))
        own_set = set(own[net])
        yield Entry(
            direction,
            net,
            default,
            tuple(EntryRule(i, rules[i], ids[(direction, i)], i in own_set) for i in ordered),
        )


def rule_definition(rule: Rule) -> bytes:
    """The packed ``struct nk_policy_rule`` of a rule (what it matches, and its CIDR)."""
    lo, hi = (0, layout.PORT_UNKNOWN) if rule.ports is None else (rule.ports.lo, rule.ports.hi)
    return layout.pack_rule(rule.proto.number(rule.version), _ACTION[rule.action], lo, hi,
                            rule.cidr)


def rule_from_definition(raw: bytes) -> Rule:
    proto, action, lo, hi, cidr = layout.unpack_rule(raw)
    acts = {layout.ACT_ALLOW: Action.ALLOW, layout.ACT_DENY: Action.DENY}
    ports = None if (lo, hi) == (0, layout.PORT_UNKNOWN) else (lo, hi)
    return Rule(acts[action], cidr, _proto_from_number(proto, cidr.version), ports)


@attrs.frozen
class Image:
    """A compiled policy as one generation holds it, before placement in the shared maps.

    ``entries`` are in table order; ``spans[(direction, version)]`` is the (first, count) of the
    table's entries in that list and ``tables[(direction, version)]`` its hash table, whose entry
    numbers (and ``fallback``) index ``entries``."""

    compiled: CompiledPolicy
    entries: tuple[Entry, ...]
    spans: Mapping[tuple[Direction, int], tuple[int, int]]
    tables: Mapping[tuple[Direction, int], tables.Table]

    @classmethod
    def build(cls, compiled: CompiledPolicy, *, max_buckets: Mapping[int, int]) -> "Image":
        """Lay out ``compiled``; ``max_buckets[version]`` bounds one table.  Raises
        :class:`PolicyError` when a table cannot be built within it."""
        entries: list[Entry] = []
        spans: dict[tuple[Direction, int], tuple[int, int]] = {}
        tabs: dict[tuple[Direction, int], tables.Table] = {}
        for direction in (Direction.INGRESS, Direction.EGRESS):
            for version in (4, 6):
                mine = [e for e in compiled.entries
                        if e.direction is direction and e.version == version]
                first = len(entries)
                entries.extend(mine)
                spans[(direction, version)] = (first, len(mine))
                prefixes = {e.prefix: first + i for i, e in enumerate(mine) if e.prefix.prefixlen}
                fallback = next(first + i for i, e in enumerate(mine) if not e.prefix.prefixlen)
                try:
                    tabs[(direction, version)] = tables.build(
                        prefixes, version, fallback, max_buckets=max_buckets[version])
                except tables.PlacementError as e:
                    raise PolicyError(
                        f"too many rules for the map: the {direction} IPv{version} prefixes do "
                        f"not fit the lookup table ({e}); use fewer rules or fewer distinct "
                        f"prefix lengths", (direction.value,)) from None
        return cls(compiled, tuple(entries), spans, tabs)

    def lookup(self, direction: Direction, addr) -> Entry:
        """The entry the program's table lookup finds for ``addr`` (an emulation)."""
        addr = ipaddress.ip_address(addr)
        return self.entries[self.tables[(direction, addr.version)].lookup(addr)]


def policy_from_rules(
    rules: Mapping[Direction, Mapping[int, Rule]], defaults: Mapping[Direction, Action]
) -> tuple[Policy, dict[tuple[Direction, Rule], int]]:
    """Rebuild a Policy (rules ordered by id) and its rule ids from what a generation references:
    ``rules[direction][rule_id]`` and the defaults."""
    policy = Policy(
        ingress=[r for _, r in sorted(rules.get(Direction.INGRESS, {}).items())],
        egress=[r for _, r in sorted(rules.get(Direction.EGRESS, {}).items())],
        default_ingress=defaults.get(Direction.INGRESS, Action.ALLOW),
        default_egress=defaults.get(Direction.EGRESS, Action.ALLOW),
    )
    ids = {(d, r): rid for d, by_id in rules.items() for rid, r in by_id.items()}
    return policy, ids


_PROTO_BY_NUMBER = {(p.number(v), v): p for p in Proto for v in (4, 6)}


def _proto_from_number(number: int, version: int) -> Proto:
    try:
        return _PROTO_BY_NUMBER[(number, version)]
    except KeyError:
        raise ValueError(f"protocol number {number} is not one a policy rule can hold") from None
