"""Policy -> LPM entries (the flattening), pure Python.

For a packet address, the longest prefix P among a direction's rule CIDRs that contains it is
what the LPM trie returns; the rules whose CIDR contains the address are exactly the rules whose
CIDR contains P (all of them are prefixes of the address, hence nested).  So each entry P carries
the rules of every CIDR containing P, its own included, plus the direction's default.  A /0 entry
per IP version and direction is always added so every lookup finds the default through the same
path.  Within an entry, denies come first (then allows), each group in policy order: the BPF
program stops at the first match and that is the rule the reference evaluator reports.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping

import attrs

from . import layout
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

    def packed(self, version: int) -> tuple[int, int, int, int, int, int]:
        rule = self.rule
        if rule.ports is None:
            lo, hi = 0, layout.PORT_UNKNOWN
        else:
            lo, hi = rule.ports.lo, rule.ports.hi
        flags = layout.RULE_OWN if self.own else 0
        return (self.rule_id, lo, hi, rule.proto.number(version), _ACTION[rule.action], flags)


@attrs.frozen
class Entry:
    direction: Direction
    prefix: IPNetwork
    default: Action
    rules: tuple[EntryRule, ...]

    @property
    def version(self) -> int:
        return self.prefix.version

    def key(self, slot: int, generation: int) -> bytes:
        return layout.pack_key(
            slot,
            generation,
            _DIR[self.direction],
            self.version,
            self.prefix.network_address.packed,
            self.prefix.prefixlen,
        )

    def value(self) -> bytes:
        return layout.pack_entry(
            _ACTION[self.default], [r.packed(self.version) for r in self.rules]
        )


@attrs.frozen
class CompiledPolicy:
    """The map entries of one policy for one endpoint slot and generation.

    ``rule_ids`` maps ``(direction, index in policy.rules(direction))`` to the counter slot."""

    policy: Policy
    slot: int
    generation: int
    entries: tuple[Entry, ...]
    rule_ids: Mapping[tuple[Direction, int], int]

    def items(self) -> list[tuple[bytes, bytes]]:
        """(key, value) bytes for nk_pol_lpm."""
        return [(e.key(self.slot, self.generation), e.value()) for e in self.entries]

    def lookup(self, direction: Direction, addr) -> Entry:
        """What the LPM trie returns for ``addr`` (an emulation, for tests and tools)."""
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
            _, lo, hi, rproto, _, _ = r.packed(entry.version)
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


def decode_entries(items: Iterable[tuple[bytes, bytes]]) -> dict[tuple[int, int], list]:
    """Group raw (key, value) pairs by (slot, generation): the read-back used after a restart.

    -> {(slot, generation): [(direction, network, default, rules)]}, rules as unpacked tuples.
    """
    out: dict[tuple[int, int], list] = {}
    for key, value in items:
        slot, gen, direction, _version, net = layout.unpack_key(key)
        default, rules = layout.unpack_entry(value)
        out.setdefault((slot, gen), []).append((direction, net, default, rules))
    return out


def policy_from_entries(entries: list) -> tuple[Policy, dict[tuple[Direction, Rule], int]]:
    """Rebuild a Policy (rules ordered by id) and its rule ids from one generation's entries."""
    dirs = {layout.DIR_INGRESS: Direction.INGRESS, layout.DIR_EGRESS: Direction.EGRESS}
    acts = {layout.ACT_ALLOW: Action.ALLOW, layout.ACT_DENY: Action.DENY}
    found: dict[tuple[Direction, int], Rule] = {}
    defaults = {Direction.INGRESS: Action.ALLOW, Direction.EGRESS: Action.ALLOW}
    for direction_num, net, default, rules in entries:
        direction = dirs[direction_num]
        defaults[direction] = acts[default]
        for rule_id, lo, hi, proto, action, flags in rules:
            if not flags & layout.RULE_OWN:
                continue
            p = _proto_from_number(proto, net.version)
            ports = None if (lo, hi) == (0, layout.PORT_UNKNOWN) else (lo, hi)
            found[(direction, rule_id)] = Rule(acts[action], net, p, ports)
    ordered = sorted(found.items(), key=lambda kv: kv[0][1])
    policy = Policy(
        ingress=[r for (d, _), r in ordered if d is Direction.INGRESS],
        egress=[r for (d, _), r in ordered if d is Direction.EGRESS],
        default_ingress=defaults[Direction.INGRESS],
        default_egress=defaults[Direction.EGRESS],
    )
    ids = {(d, r): rid for (d, rid), r in found.items()}
    return policy, ids


def _proto_from_number(number: int, version: int) -> Proto:
    for proto in Proto:
        if proto.number(version) == number:
            return proto
    raise ValueError(f"protocol number {number} is not one a policy rule can hold")
