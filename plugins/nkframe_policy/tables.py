"""The lookup tables of one policy generation, pure Python: which prefix lengths are probed, the
prefix expansion that keeps their number bounded, the hash, and the bucket placement.

Why not an LPM trie: the kernel's trie walks one node per bit that distinguishes the stored
prefixes, about log2(n) pointer hops; with 10,000 rules that alone cost ~70 ns per packet here.
A hash probe is a handful of instructions on an array the verifier inlines, so the programs look
up one table per (endpoint, generation, direction, IP version):

* the table holds the flattened prefixes (see :mod:`.compile`) except the catch-all, whose entry
  is the table's ``fallback``;
* the program probes the table's prefix lengths, longest first: mask the address to the length,
  hash (address words, length), look in the key's primary bucket and, only if that bucket is
  full, in its secondary one.  The first hit is the longest matching prefix, so its entry carries
  every rule that covers the packet's address; no hit means the fallback;
* a table probes at most :data:`MAX_LENS` lengths.  A policy with more distinct lengths in one
  direction and version is expanded (controlled prefix expansion): each prefix is replaced by the
  blocks of the next longer probed length that it covers, longer prefixes winning, choosing the
  probed lengths that add the fewest keys.

A bucket holds :data:`BUCKET_SLOTS` keys, filled in order; a key goes to its primary bucket, or
to its secondary when the primary is full (possibly after moving one occupant to its own other
bucket, which leaves the primary full).  So "the primary has a free slot" proves "the key is not
in the secondary", and a miss usually costs one bucket.  Tables are sized to at most half full;
a placement that fails doubles the table.

``bpf/include/nkframe_policy.h`` (``nk_policy_find()``) is the same algorithm in C; the hash
constants and layouts below must match it (``tests/unit/test_policy_tables.py`` checks).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Iterable, Mapping

import attrs

MAX_LENS = 16  # NK_POLICY_MAX_LENS: prefix lengths probed per table
BUCKET_SLOTS = 4  # NK_POLICY_BUCKET_SLOTS
HASH_K1 = 0x9E3779B97F4A7C15  # NK_POLICY_HASH_K1
HASH_K2 = 0xBF58476D1CE4E5B9  # NK_POLICY_HASH_K2
_M64 = (1 << 64) - 1
MAX_LOAD = 0.5  # keys per slot when a table is sized


def address_words(packed: bytes) -> tuple[int, ...]:
    """The address as the program loads it: 32-bit words in the machine's byte order."""
    return struct.unpack(f"={len(packed) // 4}I", packed)


def key_hash(packed: bytes, plen: int) -> int:
    """64-bit hash of a (masked address, prefix length) key: the low half picks the primary
    bucket, the high half the secondary (``nk_policy_hash()``)."""
    h = (plen * HASH_K1) & _M64
    for w in address_words(packed):
        h = ((h ^ w) * HASH_K2) & _M64
    return h ^ (h >> 31)


def buckets_of(packed: bytes, plen: int, nbuckets: int) -> tuple[int, int]:
    h = key_hash(packed, plen)
    return h & 0xFFFFFFFF & (nbuckets - 1), (h >> 32) & (nbuckets - 1)


def mask(packed: bytes, plen: int) -> bytes:
    bits = len(packed) * 8
    value = int.from_bytes(packed, "big") & (((1 << plen) - 1) << (bits - plen) if plen else 0)
    return value.to_bytes(len(packed), "big")


# ---------------------------------------------------------------------------------------------
# which lengths are probed


def choose_lengths(counts: Mapping[int, int], max_lens: int = MAX_LENS) -> tuple[int, ...]:
    """The prefix lengths to probe, longest first, for prefixes with these lengths (length ->
    number of prefixes; lengths >= 1).  Every length when there are at most ``max_lens``;
    otherwise the ``max_lens`` (or fewer) lengths that minimise the keys after expansion (each
    prefix counts as 2^(probed length - its length) keys, an upper bound).  The longest length
    is always probed: nothing is longer to expand it to."""
    lengths = sorted(counts)
    if len(lengths) <= max_lens:
        return tuple(reversed(lengths))
    m = len(lengths)
    # cost[i][j]: lengths i..j expanded to lengths[j].
    cost = [[0] * m for _ in range(m)]
    for j in range(m):
        acc = 0
        for i in range(j, -1, -1):
            acc += counts[lengths[i]] << (lengths[j] - lengths[i])
            cost[i][j] = acc
    inf = None
    # best[k][j]: (cost, previous chosen index) covering lengths 0..j with k probed lengths, the
    # last of them lengths[j].
    best: list[list] = [[inf] * m for _ in range(max_lens + 1)]
    for j in range(m):
        best[1][j] = (cost[0][j], -1)
    for k in range(2, max_lens + 1):
        for j in range(k - 1, m):
            options = [(best[k - 1][i][0] + cost[i + 1][j], i) for i in range(k - 2, j)
                       if best[k - 1][i] is not inf]
            if options:
                best[k][j] = min(options)
    k = min((k for k in range(1, max_lens + 1) if best[k][m - 1] is not inf),
            key=lambda k: (best[k][m - 1][0], k))
    chosen = []
    j = m - 1
    while k >= 1 and j >= 0:
        chosen.append(lengths[j])
        j = best[k][j][1]
        k -= 1
    return tuple(chosen)  # built from the longest down


def expansion_size(counts: Mapping[int, int], lengths: Iterable[int]) -> int:
    """Keys after expanding to ``lengths`` (the same upper bound :func:`choose_lengths` uses)."""
    probed = sorted(lengths)
    total = 0
    for plen, n in counts.items():
        target = next(s for s in probed if s >= plen)
        total += n << (target - plen)
    return total


def expand(prefixes: Mapping[ipaddress.IPv4Network | ipaddress.IPv6Network, int],
           lengths: Iterable[int]) -> dict[tuple[bytes, int], int]:
    """Table keys ``(masked address bytes, probed length) -> entry`` for ``prefixes`` (prefix ->
    entry), each expanded to the next probed length at or above its own; where the blocks of
    several prefixes meet, the longer prefix wins (it is the longest match there)."""
    probed = sorted(lengths)
    groups: dict[int, list] = {s: [] for s in probed}
    for net, entry in prefixes.items():
        target = next(s for s in probed if s >= net.prefixlen)
        groups[target].append((net, entry))
    out: dict[tuple[bytes, int], int] = {}
    for s, members in groups.items():
        members.sort(key=lambda ne: ne[0].prefixlen)
        for net, entry in members:
            bits = net.max_prefixlen
            start = int(net.network_address)
            step = 1 << (bits - s)
            size = bits // 8
            for i in range(1 << (s - net.prefixlen)):
                out[((start + i * step).to_bytes(size, "big"), s)] = entry
    return out


# ---------------------------------------------------------------------------------------------
# placement


class PlacementError(Exception):
    """The keys do not fit ``max_buckets`` buckets."""


@attrs.frozen
class Table:
    """One table: ``buckets[i]`` lists up to BUCKET_SLOTS ``(address bytes, length, entry)``."""

    version: int
    lengths: tuple[int, ...]  # probed, longest first
    fallback: int  # entry for addresses no key covers
    buckets: tuple[tuple[tuple[bytes, int, int], ...], ...]

    @property
    def nbuckets(self) -> int:
        return len(self.buckets)

    def lookup(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        """The entry the program finds for ``addr`` (same probes, same early stop)."""
        packed = addr.packed
        for plen in self.lengths:
            key = mask(packed, plen)
            first, second = buckets_of(key, plen, self.nbuckets)
            for b in (first, second):
                for a, length, entry in self.buckets[b]:
                    if a == key and length == plen:
                        return entry
                if len(self.buckets[b]) < BUCKET_SLOTS:
                    break
        return self.fallback


def place(keys: Mapping[tuple[bytes, int], int], version: int, lengths: tuple[int, ...],
          fallback: int, *, max_buckets: int) -> Table:
    """Put ``keys`` into the smallest power-of-two number of buckets (at least half the slots
    free) where every key finds room, doubling on failure up to ``max_buckets``."""
    n = max(1, -(-len(keys) * 1 // int(BUCKET_SLOTS * MAX_LOAD)))
    nbuckets = 1
    while nbuckets < n:
        nbuckets *= 2
    items = sorted(keys.items())  # deterministic
    while nbuckets <= max_buckets:
        buckets = _try_place(items, nbuckets)
        if buckets is not None:
            return Table(version, lengths, fallback, tuple(tuple(b) for b in buckets))
        nbuckets *= 2
    raise PlacementError(f"{len(keys)} keys do not fit {max_buckets} buckets")


def _try_place(items, nbuckets: int) -> list[list] | None:
    buckets: list[list] = [[] for _ in range(nbuckets)]
    for (packed, plen), entry in items:
        first, second = buckets_of(packed, plen, nbuckets)
        slot = (packed, plen, entry)
        if len(buckets[first]) < BUCKET_SLOTS:
            buckets[first].append(slot)
            continue
        if len(buckets[second]) < BUCKET_SLOTS:
            buckets[second].append(slot)
            continue
        if not (_make_room(buckets, first, nbuckets) or _make_room(buckets, second, nbuckets)):
            return None
        target = first if len(buckets[first]) < BUCKET_SLOTS else second
        buckets[target].append(slot)
    return buckets


def _make_room(buckets: list[list], b: int, nbuckets: int) -> bool:
    """Move one occupant of full bucket ``b`` to its other bucket if that has room.  ``b`` is
    refilled by the caller at once, so it stays full (the early-stop rule holds)."""
    for i, (packed, plen, entry) in enumerate(buckets[b]):
        first, second = buckets_of(packed, plen, nbuckets)
        other = second if b == first else first
        if other != b and len(buckets[other]) < BUCKET_SLOTS:
            # Keep slot order: the occupant leaves, later slots shift down, the bucket's last
            # slot is free for the new key.
            del buckets[b][i]
            buckets[other].append((packed, plen, entry))
            return True
    return False


def build(prefixes: Mapping[ipaddress.IPv4Network | ipaddress.IPv6Network, int], version: int,
          fallback: int, *, max_buckets: int, max_lens: int = MAX_LENS) -> Table:
    """The table of one direction and IP version: ``prefixes`` (not the catch-all) -> entry."""
    counts: dict[int, int] = {}
    for net in prefixes:
        counts[net.prefixlen] = counts.get(net.prefixlen, 0) + 1
    lengths = choose_lengths(counts, max_lens) if counts else ()
    if counts and expansion_size(counts, lengths) > max_buckets * BUCKET_SLOTS:
        raise PlacementError(
            f"{len(prefixes)} prefixes with {len(counts)} distinct lengths expand to "
            f"{expansion_size(counts, lengths)} keys (at most {max_lens} lengths are probed)")
    return place(expand(prefixes, lengths), version, lengths, fallback, max_buckets=max_buckets)
