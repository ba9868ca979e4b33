"""The policy's pinned maps, atomic policy changes, counters, and per-endpoint programs.

Maps (all pinned in one bpffs directory, shared by every endpoint; layouts in
``bpf/include/nkframe_policy.h``):

``nk_pol_gen``     slot -> active generation (0 none, 1 or 2)
``nk_pol_head``    (slot, generation) -> where its four tables are (direction x IP version)
``nk_pol_tab4``    IPv4 hash buckets of every table (regions, one per table)
``nk_pol_tab6``    IPv6 hash buckets, likewise
``nk_pol_ent``     entries (rules covering one prefix, and the default), in regions
``nk_pol_ruledef`` rule id -> what the rule matches (and its CIDR, for reading back)
``nk_pol_rules``  per-CPU per-rule counters, indexed by rule id
``nk_pol_stats``  per-CPU per-endpoint counters by direction and outcome
``nk_pol_drops``  per-CPU drop counters by reason, all endpoints
``nk_pol_owner``  slot -> endpoint id (user space bookkeeping: bpffs is the source of truth)
``nk_pol_meta``   change counter, so several processes can share the maps
``nk_pol_addrs``  endpoint address -> slot, for the uplink program (``policy_uplink``)
``nk_events``     ring buffer of drop events (``bpf/include/nkframe_events.h``,
                  :mod:`nkframe.events`), with ``nk_ev_lost`` and ``nk_ev_rate`` (per-CPU budget)

Endpoint identity: each endpoint holds a *slot* (0..1023).  Its programs are loaded with the
slot in ``.rodata`` (``ENDPOINT_SLOT``, set before load), so the per-packet lookups are array
lookups and never depend on ``skb->ifindex`` (a netkit peer's ifindex repeats across pods).
Slots are handed out round-robin so a freed slot is reused as late as possible.

Atomic change (double buffer): the new policy is written as generation 1 or 2 — whichever is
not active — into free regions of the bucket and entry arrays, with its head; then
``nk_pol_gen[slot]`` is switched with one map update, then we wait until no program can still be
running with the old generation (an update of a map-in-map makes the kernel run
``synchronize_rcu()`` for exactly this purpose), and only then are the old generation's regions
free for reuse.  A packet reads the generation once, so it is judged by the whole old or the
whole new policy; nothing a live generation points at is ever written.  Everything that can be
checked (validation, flattening, table building, room in the arrays) is checked before the
first write; a failed write leaves the old generation active and its regions free again.

Regions are handed out first-fit by :class:`Regions`; which ones are in use is rebuilt from the
active generations' heads when another process changed the maps, or after a restart.

Rule ids (counter slots) belong to a (endpoint, direction, rule): a rule kept across a policy
change keeps its id and so its counters; a new rule gets a free id whose counters are zeroed
first.

Limits: 1024 endpoints, 65,536 rules (all endpoints together), 131,072 entries (prefixes; all
endpoints, counting both generations while a change is in flight), 131,072 IPv4 and 65,536 IPv6
hash buckets of 4 keys (a table is sized at most half full), 16 rules covering one prefix, 16
prefix lengths probed per table (more are expanded, see :mod:`.tables`).  Preallocated: 4 MiB of
IPv4 and 5 MiB of IPv6 buckets, 4.5 MiB of entries, 1.8 MiB of rule definitions; per-CPU counter
memory 16 B x 65,536 rules + 192 B x 1024 endpoints per possible CPU.
One writer at a time: changes take an exclusive ``flock`` on the pin directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import struct
import threading
from pathlib import Path
from typing import Iterator, Mapping

import attrs

from nkframe import bpf
from nkframe.errors import EndpointExists, InvalidSpec, KernelError

from . import layout
from .compile import (CompiledPolicy, Image, compile_policy, policy_from_rules, rule_definition,
                      rule_from_definition)
from .model import Action, Direction, Policy, PolicyError, Rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAP_NAMES = (
    "nk_pol_gen", "nk_pol_head", "nk_pol_tab4", "nk_pol_tab6", "nk_pol_ent", "nk_pol_ruledef",
    "nk_pol_rules", "nk_pol_stats", "nk_pol_drops", "nk_pol_owner", "nk_pol_meta",
    "nk_pol_addrs", "nk_events", "nk_ev_lost", "nk_ev_rate",
)
PROGRAMS = ("policy_egress", "policy_ingress")
UPLINK_PROGRAM = "policy_uplink"
BASELINE = "policy_baseline"
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
L3_OFFSETS = (0, 14)

_DIRS = (Direction.INGRESS, Direction.EGRESS)
_DIR_NUM = {Direction.INGRESS: layout.DIR_INGRESS, Direction.EGRESS: layout.DIR_EGRESS}


def object_path() -> str:
    """The built ``policy.o`` (``nkframe/_objs``)."""
    from importlib.resources import files

    path = Path(str(files("nkframe"))) / "_objs" / "policy.o"
    if not path.is_file():
        raise KernelError(
            errno.ENOENT,
            f"BPF object {path} is missing; build it with 'make setup' (needs clang)",
        )
    return str(path)


@attrs.frozen
class Counter:
    packets: int = 0
    bytes: int = 0

    def __add__(self, other: "Counter") -> "Counter":
        return Counter(self.packets + other.packets, self.bytes + other.bytes)


@attrs.frozen
class RuleCounter:
    direction: Direction
    index: int  # position in policy.rules(direction)
    rule: Rule
    rule_id: int
    packets: int
    bytes: int


@attrs.frozen
class PolicyCounters:
    """Counters of one endpoint, summed over CPUs.

    ``stats[direction][name]`` with names ``allow_rule``, ``allow_default``, ``deny_rule``,
    ``deny_default``, ``malformed``, ``non_ip``.  Counters of the ``tc`` layer count skbs (a GSO
    packet is one)."""

    endpoint_id: str
    rules: tuple[RuleCounter, ...]
    stats: Mapping[Direction, Mapping[str, Counter]]

    def rule(self, direction: Direction, index: int) -> RuleCounter:
        for r in self.rules:
            if r.direction is direction and r.index == index:
                return r
        raise KeyError(f"{direction}[{index}]")

    @property
    def drops(self) -> dict[str, Counter]:
        """This endpoint's drops by reason (both directions)."""
        out = {}
        for reason, stat in (("policy_deny", "deny_rule"), ("policy_default", "deny_default"),
                             ("malformed", "malformed")):
            out[reason] = sum((self.stats[d][stat] for d in _DIRS), Counter())
        return out


class Regions:
    """First-fit allocation of index ranges in one array map (user space bookkeeping)."""

    def __init__(self, size: int):
        self.size = size
        self._free: list[list[int]] = [[0, size]]  # [start, length], sorted, coalesced

    @property
    def free(self) -> int:
        return sum(length for _, length in self._free)

    def alloc(self, n: int) -> int | None:
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                if length == n:
                    del self._free[i]
                else:
                    self._free[i] = [start + n, length - n]
                return start
        return None

    def release(self, start: int, n: int) -> None:
        if n == 0:
            return
        i = 0
        while i < len(self._free) and self._free[i][0] < start:
            i += 1
        self._free.insert(i, [start, n])
        # Coalesce with the next, then with the previous range.
        if i + 1 < len(self._free) and start + n == self._free[i + 1][0]:
            self._free[i][1] += self._free.pop(i + 1)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == start:
            self._free[i - 1][1] += self._free.pop(i)[1]

    def take(self, start: int, n: int) -> bool:
        """Mark a known range used (rebuilding from the kernel); False if it is not free."""
        if n == 0:
            return True
        for i, (s, length) in enumerate(self._free):
            if s <= start and start + n <= s + length:
                pieces = [[s, start - s], [start + n, s + length - start - n]]
                self._free[i:i + 1] = [p for p in pieces if p[1]]
                return True
        return False


# A generation's regions: (pool name, start, length) with pools "ent", "tab4", "tab6".
_Region = tuple[str, int, int]


@attrs.define
class _Endpoint:
    endpoint_id: str
    slot: int
    generation: int = 0
    policy: Policy | None = None
    rule_ids: dict[tuple[Direction, Rule], int] = attrs.field(factory=dict)
    regions: list[_Region] = attrs.field(factory=list)  # of the active generation
    addresses: set[IPAddress] = attrs.field(factory=set)  # in nk_pol_addrs


def _sum_percpu(values: list[bytes], offset: int = 0) -> Counter:
    packets = bytes_ = 0
    for v in values:
        p, b = layout.COUNTER.unpack_from(v, offset)
        packets += p
        bytes_ += b
    return Counter(packets, bytes_)


def _stats(per_cpu: list[bytes]) -> dict[Direction, dict[str, Counter]]:
    """One endpoint's ``nk_pol_stats`` value (per CPU) by direction and outcome."""
    out = {}
    for d in _DIRS:
        base = _DIR_NUM[d] * len(layout.STAT_NAMES)
        out[d] = {name: _sum_percpu(per_cpu, (base + j) * layout.COUNTER.size) for j, name in enumerate(layout.STAT_NAMES)}
    return out


class PolicyMaps:
    """The policy maps pinned under ``pin_dir`` (created and pinned on first use, reused after).

    ``pin_dir`` is the engine's global map directory (``<root>/globals/maps``) so programs the
    engine loads from :meth:`program_specs`-style globals share these maps.
    """

    def __init__(self, pin_dir: str | os.PathLike, *, object_file: str | None = None):
        self.pin_dir = Path(pin_dir)
        self.object_file = object_file or object_path()
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._maps: dict[str, bpf.Map] = {}
        self._rcu_outer: bpf.Map | None = None
        self._rcu_inner: bpf.Map | None = None
        self._eps: dict[str, _Endpoint] = {}
        self._rule_ids_used: set[int] = set()
        self._pools = self._new_pools()
        self._stale_addrs: list[bytes] = []
        self._seen_change = -1
        self._next_slot = 0
        self._next_rule = 0
        self._touched = False  # did the current change write to the kernel yet?
        self._dir_fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with self._flock():
                self._open_maps()
                self._sync()
        except BaseException:
            self.close()
            raise

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        for m in (self._rcu_outer, self._rcu_inner):
            if m is not None:
                m.close()
        self._rcu_outer = self._rcu_inner = None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> "PolicyMaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def maps(self) -> Mapping[str, bpf.Map]:
        """The pinned maps by name (read them, do not change them behind our back)."""
        return dict(self._maps)

    def pin_path(self, name: str) -> Path:
        return self.pin_dir / name

    def _open_maps(self) -> None:
        # Loading the object with pin paths set makes libbpf reuse compatible pinned maps and
        # create + pin missing ones; no program is loaded for this.
        with bpf.BpfObject.open(self.object_file) as obj:
            for name in MAP_NAMES:
                obj.set_map_pin_path(name, self.pin_path(name))
            for prog in obj.programs:
                obj.set_autoload(prog, False)
            obj.load()
            for name in MAP_NAMES:
                self._maps[name] = obj.maps[name].dup()

    @staticmethod
    def _new_pools() -> dict[str, Regions]:
        return {"ent": Regions(layout.ENTRIES), "tab4": Regions(layout.TAB4_BUCKETS),
                "tab6": Regions(layout.TAB6_BUCKETS)}

    # -- cross-process consistency -------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._dir_fd, fcntl.LOCK_UN)

    def _change_count(self) -> int:
        raw = self._maps["nk_pol_meta"].lookup(bytes(4))
        return struct.unpack("=Q", raw)[0]

    @contextlib.contextmanager
    def _mutating(self) -> Iterator[None]:
        with self._flock():
            if self._change_count() != self._seen_change:
                self._sync()
            self._touched = False
            try:
                yield
            finally:
                # Bumped after any write, failed changes included (the kernel state moved);
                # rejected input leaves even the counter alone.
                if self._touched:
                    count = self._change_count() + 1
                    self._maps["nk_pol_meta"].update(bytes(4), struct.pack("=Q", count))
                    self._seen_change = count

    def _refresh(self) -> None:
        with self._lock:
            if self._change_count() != self._seen_change:
                with self._flock():
                    self._sync()

    def _sync(self) -> None:
        """Rebuild the in-memory view from the maps (after start, or another writer)."""
        owner = self._maps["nk_pol_owner"]
        gen = self._maps["nk_pol_gen"]
        eps: dict[str, _Endpoint] = {}
        by_slot: dict[int, _Endpoint] = {}
        for slot in range(layout.MAX_ENDPOINTS):
            key = layout.SLOT_KEY.pack(slot)
            endpoint_id = layout.unpack_owner(owner.lookup(key))
            if endpoint_id:
                g = layout.GEN.unpack(gen.lookup(key))[0]
                ep = _Endpoint(endpoint_id, slot, g)
                eps[endpoint_id] = by_slot[slot] = ep
        pools = self._new_pools()
        used: set[int] = set()
        live = [ep for ep in by_slot.values() if ep.generation]
        heads = self._fetch("nk_pol_head", [layout.head_index(ep.slot, ep.generation) for ep in live])
        tabs = {ep.slot: layout.unpack_head(heads[layout.head_index(ep.slot, ep.generation)])
                for ep in live}
        entries = self._fetch("nk_pol_ent", [i for t in tabs.values() for tab in t.values()
                                             for i in range(tab["first"], tab["first"] + tab["count"])])
        entries = {i: layout.unpack_entry(raw) for i, raw in entries.items()}
        ruledefs = self._fetch("nk_pol_ruledef", sorted({rid for _, ids in entries.values()
                                                         for rid in ids}))
        for ep in live:
            self._read_generation(ep, tabs[ep.slot], entries, ruledefs, pools)
            used.update(ep.rule_ids.values())
        stale_addrs: list[bytes] = []
        for key, value in self._maps["nk_pol_addrs"].items():
            ep = by_slot.get(layout.SLOT_KEY.unpack(value)[0])
            if ep is not None:
                ep.addresses.add(layout.unpack_addr(key))
            else:
                stale_addrs.append(key)
        self._eps = eps
        self._rule_ids_used = used
        self._pools = pools
        self._stale_addrs = stale_addrs
        if by_slot:
            self._next_slot = (max(by_slot) + 1) % layout.MAX_ENDPOINTS
        if used:
            self._next_rule = (max(used) + 1) % layout.RULE_SLOTS
        self._seen_change = self._change_count()

    def _fetch(self, name: str, indices: list[int]) -> dict[int, bytes]:
        """Values of an array map at ``indices``: one lookup each for a few, the whole map in
        batches for many (a batch dump is far fewer system calls)."""
        m = self._maps[name]
        if len(indices) > 2048:
            wanted = set(indices)
            return {i: v for k, v in m.dump().items()
                    if (i := layout.SLOT_KEY.unpack(k)[0]) in wanted}
        return {i: m.lookup(layout.SLOT_KEY.pack(i)) for i in indices}

    def _read_generation(self, ep: _Endpoint, heads: dict, entries: dict[int, tuple[int, list[int]]],
                         ruledefs: dict[int, bytes], pools: dict[str, Regions]) -> None:
        """The active generation of ``ep`` (its tables' ``heads``): its regions (taken from
        ``pools``), policy and rule ids, from its entries and rule definitions."""
        acts = {layout.ACT_ALLOW: Action.ALLOW, layout.ACT_DENY: Action.DENY}
        dirs = {layout.DIR_INGRESS: Direction.INGRESS, layout.DIR_EGRESS: Direction.EGRESS}
        rules: dict[Direction, dict[int, Rule]] = {Direction.INGRESS: {}, Direction.EGRESS: {}}
        defaults: dict[Direction, Action] = {}
        regions: list[_Region] = []
        firsts = []
        for (d, v), t in heads.items():
            regions.append(("tab4" if v == 4 else "tab6", t["base"], t["nbuckets"]))
            firsts.append((t["first"], t["count"]))
            direction = dirs[d]
            defaults[direction] = acts.get(entries[t["fallback"]][0], Action.DENY)
            for i in range(t["first"], t["first"] + t["count"]):
                for rid in entries[i][1]:
                    if rid not in rules[direction]:
                        rules[direction][rid] = rule_from_definition(ruledefs[rid])
        # The entries region goes first (the order _allocate hands them out in).
        regions.insert(0, ("ent", min(f for f, _ in firsts), sum(c for _, c in firsts)))
        for pool, base, n in regions:
            if not pools[pool].take(base, n):
                raise KernelError(
                    errno.EUCLEAN,
                    f"policy maps in {self.pin_dir}: endpoint {ep.endpoint_id!r} (slot {ep.slot}, "
                    f"generation {ep.generation}) uses {pool} {base}..{base + n - 1}, which "
                    f"another endpoint uses too; remove the pins and re-apply the policies",
                )
        ep.regions = regions
        ep.policy, ep.rule_ids = policy_from_rules(rules, defaults)

    def _drop_stale(self) -> None:
        # Addresses of slots nobody owns (a crash between release and cleanup).
        self._touched = self._touched or bool(self._stale_addrs)
        while self._stale_addrs:
            self._maps["nk_pol_addrs"].delete(self._stale_addrs.pop())

    def _wait_for_programs(self) -> None:
        """Return once no BPF program that could have read the old generation still runs.

        Updating an element of a map-in-map makes the kernel call synchronize_rcu() before
        returning (so user space knows every program now sees the new value); tc programs run
        inside RCU read sections, so this waits for every packet in flight."""
        if self._rcu_outer is None:
            self._rcu_inner = bpf.Map.create(bpf.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="nk_pol_rcu_i")
            self._rcu_outer = bpf.Map.create(
                BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, 4, 1, name="nk_pol_rcu",
                inner_map_fd=self._rcu_inner.fd,
            )
        self._rcu_outer.update(bytes(4), struct.pack("=I", self._rcu_inner.fd))

    # -- allocation ------------------------------------------------------------------------
    def _free_slot(self) -> int:
        taken = {ep.slot for ep in self._eps.values()}
        for i in range(layout.MAX_ENDPOINTS):
            slot = (self._next_slot + i) % layout.MAX_ENDPOINTS
            if slot not in taken:
                return slot
        raise PolicyError(
            f"no policy slot left: all {layout.MAX_ENDPOINTS} endpoint slots are in use; "
            f"remove endpoints first"
        )

    def _pick_rule_ids(self, n: int) -> list[int]:
        free = layout.RULE_SLOTS - len(self._rule_ids_used)
        if n > free:
            raise PolicyError(
                f"too many rules for the map: the policy adds {n} rules but only {free} of "
                f"{layout.RULE_SLOTS} rule slots are free (all endpoints share them)"
            )
        out = []
        i = self._next_rule
        while len(out) < n:
            if i not in self._rule_ids_used:
                out.append(i)
            i = (i + 1) % layout.RULE_SLOTS
        return out

    def _reserve(self, endpoint_id: str, slot: int) -> _Endpoint:
        self._touched = True
        key = layout.SLOT_KEY.pack(slot)
        self._maps["nk_pol_gen"].update(key, layout.GEN.pack(0))
        stats = self._maps["nk_pol_stats"]
        stats.update(key, bytes(stats.value_buffer_size))
        self._maps["nk_pol_owner"].update(key, layout.pack_owner(endpoint_id))
        ep = _Endpoint(endpoint_id, slot)
        self._eps[endpoint_id] = ep
        self._next_slot = (slot + 1) % layout.MAX_ENDPOINTS
        return ep

    # -- queries ---------------------------------------------------------------------------
    def endpoints(self) -> dict[str, int]:
        """endpoint id -> slot, for every endpoint holding a slot."""
        self._refresh()
        return {e: ep.slot for e, ep in self._eps.items()}

    def slot(self, endpoint_id: str) -> int | None:
        self._refresh()
        ep = self._eps.get(endpoint_id)
        return None if ep is None else ep.slot

    def generation(self, endpoint_id: str) -> int:
        self._refresh()
        ep = self._eps.get(endpoint_id)
        return 0 if ep is None else ep.generation

    def policy(self, endpoint_id: str) -> Policy | None:
        """The active policy as read back from the kernel (rules in rule-id order)."""
        self._refresh()
        ep = self._eps.get(endpoint_id)
        return None if ep is None else ep.policy

    def rule_id(self, endpoint_id: str, direction: Direction, rule: Rule) -> int:
        self._refresh()
        return self._eps[endpoint_id].rule_ids[(direction, rule)]

    # -- changes ---------------------------------------------------------------------------
    def reserve(self, endpoint_id: str) -> int:
        """Give ``endpoint_id`` a slot (idempotent).  Its packets are dropped (``no_policy``)
        until :meth:`apply`."""
        _check_endpoint_id(endpoint_id)
        with self._mutating():
            ep = self._eps.get(endpoint_id)
            if ep is None:
                ep = self._reserve(endpoint_id, self._free_slot())
            return ep.slot

    def apply(self, endpoint_id: str, policy: Policy | Mapping) -> CompiledPolicy:
        """Make ``policy`` the endpoint's policy, atomically for packets (see module doc)."""
        _check_endpoint_id(endpoint_id)
        if not isinstance(policy, Policy):
            policy = Policy.from_dict(policy)
        with self._mutating():
            ep = self._eps.get(endpoint_id)
            slot = ep.slot if ep is not None else self._free_slot()
            old_ids = ep.rule_ids if ep is not None else {}
            wanted = [(d, r) for d in _DIRS for r in policy.rules(d)]
            missing = [k for k in wanted if k not in old_ids]
            ids = {k: old_ids[k] for k in wanted if k in old_ids}
            fresh = self._pick_rule_ids(len(missing))
            ids.update(zip(missing, fresh))
            old_gen = ep.generation if ep is not None else 0
            new_gen = 2 if old_gen == 1 else 1
            compiled = compile_policy(policy, slot, new_gen, ids)
            image = Image.build(compiled, max_buckets={4: layout.TAB4_BUCKETS,
                                                       6: layout.TAB6_BUCKETS})
            regions = self._allocate(endpoint_id, image)
            # ---- nothing in the kernel has changed up to here ----
            created = ep is None
            try:
                self._touched = True
                self._drop_stale()
                if created:
                    ep = self._reserve(endpoint_id, slot)
                counters, ruledef = self._maps["nk_pol_rules"], self._maps["nk_pol_ruledef"]
                zero = bytes(counters.value_buffer_size)
                for (_, rule), rule_id in zip(missing, fresh):
                    key = layout.SLOT_KEY.pack(rule_id)
                    counters.update(key, zero)
                    ruledef.update(key, rule_definition(rule))
                self._write_image(slot, new_gen, image, regions)
            except BaseException:
                self._free(regions)
                if created and ep is not None and endpoint_id in self._eps:
                    self._release(ep)
                raise
            self._rule_ids_used.update(fresh)
            if fresh:
                self._next_rule = (fresh[-1] + 1) % layout.RULE_SLOTS
            # The flip: 4 bytes whose values (0, 1, 2) differ in the low byte only, so a packet
            # sees the old or the new generation even if the kernel copies byte-wise.
            self._maps["nk_pol_gen"].update(layout.SLOT_KEY.pack(slot), layout.GEN.pack(new_gen))
            ep.generation = new_gen
            old_regions, ep.regions = ep.regions, regions
            ep.policy = policy
            ep.rule_ids = ids
            self._wait_for_programs()
            self._free(old_regions)
            if old_gen:
                self._clear_head(slot, old_gen)
            self._rule_ids_used.difference_update(set(old_ids.values()) - set(ids.values()))
            return compiled

    def _allocate(self, endpoint_id: str, image: Image) -> list[_Region]:
        """Regions for a new generation, or PolicyError (and nothing taken) when one does not
        fit: entries in one run, one bucket run per table."""
        wanted = [("ent", len(image.entries))]
        for d in _DIRS:
            for v in (4, 6):
                wanted.append(("tab4" if v == 4 else "tab6", image.tables[(d, v)].nbuckets))
        regions: list[_Region] = []
        for pool, n in wanted:
            start = self._pools[pool].alloc(n)
            if start is None:
                self._free(regions)
                what = {"ent": "entries (prefixes)", "tab4": "IPv4 hash buckets",
                        "tab6": "IPv6 hash buckets"}[pool]
                raise PolicyError(
                    f"too many rules for the map: endpoint {endpoint_id!r} needs {n} {what} in "
                    f"one run, {self._pools[pool].free} of {self._pools[pool].size} are free "
                    f"(the old and new policy coexist during a change)"
                )
            regions.append((pool, start, n))
        return regions

    def _free(self, regions: list[_Region]) -> None:
        for pool, start, n in regions:
            self._pools[pool].release(start, n)

    def _write_image(self, slot: int, generation: int, image: Image, regions: list[_Region]) -> None:
        """Entries, buckets and head of a generation nothing reads yet."""
        ent_base = regions[0][1]
        bases = iter(r[1] for r in regions[1:])
        ent_map = self._maps["nk_pol_ent"]
        ent_map.update_batch([layout.SLOT_KEY.pack(ent_base + i) for i in range(len(image.entries))],
                             [e.value() for e in image.entries])
        packed_tables = {}
        for d in _DIRS:
            for v in (4, 6):
                table = image.tables[(d, v)]
                base = next(bases)
                m = self._maps["nk_pol_tab4" if v == 4 else "nk_pol_tab6"]
                # Every bucket of the region, empty ones too: the region may hold an old table.
                m.update_batch([layout.SLOT_KEY.pack(base + i) for i in range(table.nbuckets)],
                               [layout.pack_bucket(v, b, ent_base) for b in table.buckets])
                first, count = image.spans[(d, v)]
                packed_tables[(_DIR_NUM[d], v)] = layout.pack_table(
                    base, table.nbuckets, ent_base + table.fallback, ent_base + first, count,
                    table.lengths)
        self._maps["nk_pol_head"].update(
            layout.SLOT_KEY.pack(layout.head_index(slot, generation)),
            layout.pack_head(packed_tables))

    def _clear_head(self, slot: int, generation: int) -> None:
        self._maps["nk_pol_head"].update(
            layout.SLOT_KEY.pack(layout.head_index(slot, generation)), bytes(layout.HEAD_SIZE))

    def remove(self, endpoint_id: str) -> None:
        """Drop the endpoint's policy, entries, rule ids and slot (idempotent).

        Call it after the endpoint's programs are detached: until then they fail closed."""
        with self._mutating():
            self._drop_stale()
            ep = self._eps.get(endpoint_id)
            if ep is None:
                return
            self._touched = True
            # The uplink must stop sending this endpoint's packets to its slot before the slot
            # can be handed to another endpoint.
            self._drop_addresses(ep, ep.addresses)
            key = layout.SLOT_KEY.pack(ep.slot)
            self._maps["nk_pol_gen"].update(key, layout.GEN.pack(0))
            self._wait_for_programs()
            self._free(ep.regions)
            if ep.generation:
                self._clear_head(ep.slot, ep.generation)
            ep.regions = []
            self._rule_ids_used.difference_update(ep.rule_ids.values())
            self._release(ep)

    def set_addresses(self, endpoint_id: str, addresses) -> None:
        """Make ``addresses`` (IPs, or interfaces such as ``10.0.1.5/32``) the endpoint's in
        ``nk_pol_addrs``, so the uplink program judges packets to them by its ingress policy.

        Replaces the previous set.  An address of another endpoint is refused
        (:class:`EndpointExists`) before anything changes."""
        wanted = {_ip(a) for a in addresses}
        with self._mutating():
            ep = self._eps.get(endpoint_id)
            if ep is None:
                raise KeyError(f"endpoint {endpoint_id!r} has no policy slot (apply a policy first)")
            for other in self._eps.values():
                taken = wanted & other.addresses if other is not ep else set()
                if taken:
                    raise EndpointExists(
                        f"address {sorted(taken, key=str)[0]} already belongs to endpoint "
                        f"{other.endpoint_id!r} in the policy's address map; remove that "
                        f"endpoint first or pick another address"
                    )
            if wanted == ep.addresses:
                return
            self._touched = True
            m = self._maps["nk_pol_addrs"]
            value = layout.SLOT_KEY.pack(ep.slot)
            for a in sorted(wanted - ep.addresses, key=str):
                m.update(layout.pack_addr(a), value)
                ep.addresses.add(a)
            self._drop_addresses(ep, ep.addresses - wanted)

    def addresses(self, endpoint_id: str) -> set[IPAddress]:
        self._refresh()
        ep = self._eps.get(endpoint_id)
        return set() if ep is None else set(ep.addresses)

    def _drop_addresses(self, ep: _Endpoint, gone) -> None:
        m = self._maps["nk_pol_addrs"]
        for a in sorted(gone, key=str):
            m.delete(layout.pack_addr(a))
            ep.addresses.discard(a)

    def _release(self, ep: _Endpoint) -> None:
        key = layout.SLOT_KEY.pack(ep.slot)
        self._maps["nk_pol_owner"].update(key, bytes(layout.ENDPOINT_ID_LEN))
        del self._eps[ep.endpoint_id]

    # -- counters --------------------------------------------------------------------------
    def counters(self, endpoint_id: str) -> PolicyCounters:
        self._refresh()
        ep = self._eps.get(endpoint_id)
        if ep is None:
            raise KeyError(f"endpoint {endpoint_id!r} has no policy slot")
        rule_map = self._maps["nk_pol_rules"]
        rules = []
        if ep.policy is not None:
            for d in _DIRS:
                for i, rule in enumerate(ep.policy.rules(d)):
                    rule_id = ep.rule_ids[(d, rule)]
                    c = _sum_percpu(rule_map.lookup_percpu(layout.SLOT_KEY.pack(rule_id)))
                    rules.append(RuleCounter(d, i, rule, rule_id, c.packets, c.bytes))
        per_cpu = self._maps["nk_pol_stats"].lookup_percpu(layout.SLOT_KEY.pack(ep.slot))
        return PolicyCounters(endpoint_id, tuple(rules), _stats(per_cpu))

    def endpoint_stats(self) -> dict[str, dict[Direction, dict[str, Counter]]]:
        """Every endpoint's counters by direction and outcome (``PolicyCounters.stats``)
        without the per-rule ones: one lookup per endpoint whatever the size of its policy.
        The agent's metrics read this at each scrape, alongside adds.

        Slots come from this process's view when it is current; after another process changed
        the maps, from the owner map directly (syncing the view would read every rule)."""
        with self._lock:
            current = self._change_count() == self._seen_change
            slots = {e: ep.slot for e, ep in self._eps.items()} if current else None
        if slots is None:
            owner = self._maps["nk_pol_owner"]
            slots = {}
            for slot in range(layout.MAX_ENDPOINTS):
                endpoint_id = layout.unpack_owner(owner.lookup(layout.SLOT_KEY.pack(slot)))
                if endpoint_id:
                    slots[endpoint_id] = slot
        stats = self._maps["nk_pol_stats"]
        return {e: _stats(stats.lookup_percpu(layout.SLOT_KEY.pack(slot))) for e, slot in sorted(slots.items())}

    def drops(self) -> dict[str, Counter]:
        """Drops of every endpoint by reason, including ``no_policy``."""
        m = self._maps["nk_pol_drops"]
        return {
            name: _sum_percpu(m.lookup_percpu(layout.SLOT_KEY.pack(num)))
            for num, name in layout.DROP_REASONS.items()
        }

    # -- programs --------------------------------------------------------------------------
    def program_globals(self, endpoint_id: str, l3_offset: int = 14) -> dict[str, bytes]:
        """The ``.rodata`` values an endpoint's policy programs are loaded with (reserves a
        slot): hand them to the loader as ``ProgramSpec.globals``."""
        if l3_offset not in L3_OFFSETS:
            raise InvalidSpec(
                f"l3_offset {l3_offset}: use 14 (an Ethernet header: veth, netkit in either "
                f"mode) or 0 (devices without a link-layer header)"
            )
        slot = self.reserve(endpoint_id)
        return {"ENDPOINT_SLOT": struct.pack("=I", slot), "L3_OFFSET": struct.pack("=I", l3_offset)}

    def _load(self, programs: tuple[str, ...], globals_: Mapping[str, bytes]) -> list[bpf.Program]:
        with bpf.BpfObject.open(self.object_file) as obj:
            for name, value in globals_.items():
                obj.set_global(name, value)
            for name in MAP_NAMES:
                obj.set_map_pin_path(name, self.pin_path(name))
            for prog in obj.programs:
                obj.set_autoload(prog, prog in programs)
            obj.load()
            return [obj.programs[p].dup() for p in programs]

    def load_programs(
        self, endpoint_id: str, l3_offset: int = 14
    ) -> tuple[bpf.Program, bpf.Program]:
        """Load ``(policy_egress, policy_ingress)`` for one endpoint, sharing the pinned maps.

        The caller owns the returned programs (attach, then close)."""
        egress, ingress = self._load(PROGRAMS, self.program_globals(endpoint_id, l3_offset))
        return egress, ingress

    def program_specs(self, endpoint_id: str, l3_offset: int = 14, order: int = 100) -> list:
        """ProgramSpecs for the engine: policy_egress on packets the pod sends (FROM_POD),
        policy_ingress on packets to the pod (TO_POD), all maps shared ("global" scope, so
        the engine must pin them in this object's ``pin_dir``)."""
        from nkframe.types import Hook, ProgramSpec

        globals_ = self.program_globals(endpoint_id, l3_offset)
        maps = {name: "global" for name in MAP_NAMES}
        return [
            ProgramSpec(name=prog, object=self.object_file, program=prog, hook=hook,
                        order=order, globals=globals_, maps=maps, plugin="nkframe_policy")
            for prog, hook in (("policy_egress", Hook.FROM_POD), ("policy_ingress", Hook.TO_POD))
        ]

    def uplink_program_spec(self, order: int = 100):
        """The ProgramSpec of ``policy_uplink`` for the node's uplink (ingress): packets to a
        local endpoint are judged by that endpoint's ingress policy, before the datapath
        delivers them (possibly with bpf_redirect_peer(), which skips the endpoint's to-pod
        hook).  Its maps are the global ones, so one uplink program serves every endpoint."""
        from nkframe.types import DeviceHook, ProgramSpec

        return ProgramSpec(name=UPLINK_PROGRAM, object=self.object_file, program=UPLINK_PROGRAM,
                           hook=DeviceHook.INGRESS, order=order,
                           maps={name: "global" for name in MAP_NAMES}, plugin="nkframe_policy")

    def load_uplink(self) -> bpf.Program:
        """``policy_uplink`` loaded against these maps (for tests and tools; the caller owns it)."""
        return self._load((UPLINK_PROGRAM,), {})[0]

    def load_baseline(self) -> bpf.Program:
        """An empty tc program from the same object: the baseline for cost figures."""
        return self._load((BASELINE,), {})[0]


def _ip(value) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return value.ip
    try:
        return ipaddress.ip_interface(str(value)).ip
    except ValueError:
        raise InvalidSpec(f"{value!r} is not an IP address") from None


def _check_endpoint_id(endpoint_id: str) -> None:
    if not isinstance(endpoint_id, str) or not endpoint_id:
        raise InvalidSpec(f"endpoint id must be a non-empty string, not {endpoint_id!r}")
    if len(endpoint_id.encode()) >= layout.ENDPOINT_ID_LEN or "\0" in endpoint_id:
        raise InvalidSpec(
            f"endpoint id {endpoint_id!r} must be at most {layout.ENDPOINT_ID_LEN - 1} bytes "
            f"without NUL"
        )
