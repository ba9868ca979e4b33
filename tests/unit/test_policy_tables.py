"""The lookup tables (tables.py): prefix expansion, hashing, placement and the lookup the BPF
program does, against a direct longest-prefix match."""

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nkframe_policy import tables


def longest_match(prefixes, addr):
    best = None
    for net, entry in prefixes.items():
        if addr in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, entry)
    return None if best is None else best[1]


def random_prefixes(rnd, version, n, lengths):
    bits = 32 if version == 4 else 128
    base = int(ipaddress.ip_address("10.0.0.0" if version == 4 else "fd00::"))
    out = {}
    for i in range(n):
        plen = rnd.choice(lengths)
        addr = base + rnd.randrange(1 << min(bits - 8, 20)) * (1 << max(0, bits - 8 - 20))
        net = ipaddress.ip_network((addr, plen), strict=False)
        out.setdefault(net, i + 1)
    return out


def probe_addresses(rnd, prefixes, version, k=200):
    nets = list(prefixes)
    out = []
    for _ in range(k):
        if nets and rnd.random() < 0.85:
            net = rnd.choice(nets)
            out.append(net.network_address + rnd.randrange(min(net.num_addresses, 1 << 62)))
        else:
            out.append(ipaddress.ip_address(rnd.getrandbits(32 if version == 4 else 128)))
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), version=st.sampled_from([4, 6]),
       n=st.integers(0, 300), spread=st.integers(1, 40), max_lens=st.sampled_from([1, 2, 4, 16]))
def test_lookup_is_the_longest_prefix_match(seed, version, n, spread, max_lens):
    rnd = random.Random(seed)
    bits = 32 if version == 4 else 128
    lengths = sorted({rnd.randint(max(1, bits - 8 - spread), bits) for _ in range(spread)})
    prefixes = random_prefixes(rnd, version, n, lengths)
    try:
        t = tables.build(prefixes, version, 0, max_buckets=1 << 14, max_lens=max_lens)
    except tables.PlacementError:
        assert max_lens < 16  # only expansion into too few lengths may not fit
        return
    assert len(t.lengths) <= max_lens and list(t.lengths) == sorted(t.lengths, reverse=True)
    for addr in probe_addresses(rnd, prefixes, version):
        want = longest_match(prefixes, addr)
        assert t.lookup(addr) == (0 if want is None else want), addr


def test_every_length_is_probed_when_they_fit():
    assert tables.choose_lengths({8: 1, 16: 3, 24: 9, 32: 30}) == (32, 24, 16, 8)


def test_expansion_picks_the_cheapest_lengths():
    # Two lengths allowed: with 32 and 9 the /8s double into /9s and the /31 into /32s; with 32
    # and 8 the lone /9 would become 2^23 /32s.
    counts = {8: 50, 9: 1, 31: 1, 32: 10}
    chosen = tables.choose_lengths(counts, 2)
    assert chosen == (32, 9)
    assert tables.expansion_size(counts, chosen) == 50 * 2 + 1 + 2 + 10
    # The longest length is always probed.
    assert tables.choose_lengths({1: 5, 128: 1}, 1) == (128,)


def test_expanded_blocks_let_longer_prefixes_win():
    p = {ipaddress.ip_network("10.0.0.0/22"): 1, ipaddress.ip_network("10.0.1.0/24"): 2}
    keys = tables.expand(p, [24])
    assert keys == {(bytes([10, 0, 0, 0]), 24): 1, (bytes([10, 0, 1, 0]), 24): 2,
                    (bytes([10, 0, 2, 0]), 24): 1, (bytes([10, 0, 3, 0]), 24): 1}


def test_a_full_primary_is_the_only_way_into_the_secondary():
    """The program stops after the primary bucket when it is not full; placement must never put
    a key in its secondary bucket while its primary has room."""
    rnd = random.Random(5)
    prefixes = random_prefixes(rnd, 4, 3000, [32])
    t = tables.build(prefixes, 4, 0, max_buckets=1 << 12)
    assert sum(len(b) for b in t.buckets) == len(prefixes)
    assert sum(len(b) for b in t.buckets) <= tables.BUCKET_SLOTS * t.nbuckets * tables.MAX_LOAD + 1
    for i, bucket in enumerate(t.buckets):
        assert len(bucket) <= tables.BUCKET_SLOTS
        for addr, plen, _ in bucket:
            first, second = tables.buckets_of(addr, plen, t.nbuckets)
            assert i in (first, second)
            if i != first:
                assert len(t.buckets[first]) == tables.BUCKET_SLOTS


def test_hash_matches_the_c_definition():
    # Worked by hand from the C: h = len*K1; h = (h ^ w) * K2 per word; h ^= h >> 31.
    k1, k2, m = tables.HASH_K1, tables.HASH_K2, (1 << 64) - 1
    w = int.from_bytes(bytes([10, 1, 2, 0]), "little")
    h = (((24 * k1) & m) ^ w) * k2 & m
    assert tables.key_hash(bytes([10, 1, 2, 0]), 24) == h ^ (h >> 31)
    assert tables.mask(bytes([10, 1, 2, 3]), 24) == bytes([10, 1, 2, 0])
    assert tables.mask(bytes(range(16)), 0) == bytes(16)


def test_placement_refuses_what_cannot_fit():
    prefixes = random_prefixes(random.Random(1), 4, 100, [32])
    with pytest.raises(tables.PlacementError):
        tables.build(prefixes, 4, 0, max_buckets=8)
    # Expansion that would exceed the table is refused before expanding.
    wide = {ipaddress.ip_network(f"10.{i}.0.0/16"): i + 1 for i in range(4)}
    wide[ipaddress.ip_network("10.0.0.1/32")] = 9
    with pytest.raises(tables.PlacementError, match="expand to"):
        tables.build(wide, 4, 0, max_buckets=1 << 10, max_lens=1)
