"""Policy changes in the kernel: atomic flips, removal, read-back after a restart, bad input."""

import collections
import os
import threading
import time

import pytest

from nkframe.errors import InvalidSpec
from nkframe_policy import Direction, Policy, PolicyError, Rule, layout, verdict
from nkframe_policy import packet as pk
from nkframe_policy.maps import PolicyMaps
from nkframe_policy.strategies import bench_policy

pytestmark = pytest.mark.root

OUT, IN = Direction.EGRESS, Direction.INGRESS


@pytest.fixture
def pin_dir(bpffs_root):
    return os.path.join(bpffs_root, "maps")


@pytest.fixture
def policy_maps(pin_dir):
    pm = PolicyMaps(pin_dir)
    try:
        yield pm
    finally:
        pm.close()


def snapshot(pm):
    """Everything the policy keeps in the kernel, as comparable Python values."""
    return {name: pm.maps[name].dump() for name in (
        "nk_pol_gen", "nk_pol_head", "nk_pol_tab4", "nk_pol_tab6", "nk_pol_ent", "nk_pol_ruledef",
        "nk_pol_owner", "nk_pol_meta", "nk_pol_addrs")}


def head(pm, slot, generation):
    raw = pm.maps["nk_pol_head"].lookup(layout.SLOT_KEY.pack(layout.head_index(slot, generation)))
    return layout.unpack_head(raw)


def entries_by_slot(pm):
    """slot -> entries its active generation uses, read from the kernel (gen and head)."""
    out = collections.Counter()
    for slot in range(layout.MAX_ENDPOINTS):
        gen = layout.GEN.unpack(pm.maps["nk_pol_gen"].lookup(layout.SLOT_KEY.pack(slot)))[0]
        if gen:
            out[slot] = sum(t["count"] for t in head(pm, slot, gen).values())
    return out


def all_free(pm):
    return all(r.free == r.size for r in pm._pools.values())


POLICY_A = Policy(
    egress=[Rule.allow("10.1.0.0/16"), Rule.deny("10.1.2.0/24", "udp"),
            Rule.allow("fd00::/16", "tcp")],
    default_egress="deny",
)
POLICY_B = Policy(
    egress=[Rule.allow("10.0.0.0/8", "tcp"), Rule.allow("10.1.2.0/24"), Rule.deny("10.9.0.0/16"),
            Rule.allow("fd00:0:0:1::/64", "tcp")],
    default_egress="deny",
)
FLIP_PACKETS = [
    pk.build("192.0.2.1", "10.1.2.3", pk.IPPROTO_TCP),           # A allow, B allow
    pk.build("192.0.2.1", "10.1.9.9", pk.IPPROTO_TCP, dport=22),  # A allow, B allow
    pk.build("2001:db8::1", "fd00:0:0:1::5", pk.IPPROTO_TCP),     # A allow, B allow
    pk.build("192.0.2.1", "10.1.2.3", pk.IPPROTO_UDP),           # A deny, B allow
    pk.build("192.0.2.1", "10.1.9.9", pk.IPPROTO_UDP),           # A allow, B deny
    pk.build("192.0.2.1", "10.9.0.1", pk.IPPROTO_ICMP),          # A deny, B deny
]


def test_flip_is_atomic_for_packets_in_flight(policy_maps):
    """Workers run packets without pause while the policy flips between A and B: every verdict
    is A's or B's (packets both allow must never be dropped, e.g. by a missing entry), and
    right after apply() returns every verdict is the new policy's."""
    expect = {
        name: [verdict(p, OUT, raw).tc_retval for raw in FLIP_PACKETS]
        for name, p in (("A", POLICY_A), ("B", POLICY_B))
    }
    assert expect["A"][:3] == expect["B"][:3] == [-1, -1, -1]
    assert expect["A"][3:5] != expect["B"][3:5]
    allowed = [{a, b} for a, b in zip(expect["A"], expect["B"])]

    egress, ingress = policy_maps.load_programs("flip")
    policy_maps.apply("flip", POLICY_A)
    no_policy_before = policy_maps.drops()["no_policy"].packets
    stop = threading.Event()
    bad: list = []
    runs = collections.Counter()

    def worker(n):
        prog = egress.dup()
        try:
            while not stop.is_set():
                for i, raw in enumerate(FLIP_PACKETS):
                    got = prog.test_run(raw).retval
                    runs[n] += 1
                    if got not in allowed[i]:
                        bad.append((i, got))
        finally:
            prog.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    try:
        current = "A"
        for _ in range(40):
            current = "B" if current == "A" else "A"
            policy_maps.apply("flip", POLICY_A if current == "A" else POLICY_B)
            got = [egress.test_run(raw).retval for raw in FLIP_PACKETS]
            assert got == expect[current], f"after apply({current})"
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join()
        egress.close()
        ingress.close()
    assert not bad, f"{len(bad)} verdicts were neither A's nor B's, e.g. {bad[:5]}"
    assert sum(runs.values()) > 2000, runs
    assert policy_maps.drops()["no_policy"].packets == no_policy_before
    # Only the active generation holds regions; the other generation's head is cleared.
    entries = len(policy_maps.apply("flip", POLICY_A).entries)
    slot, gen = policy_maps.slot("flip"), policy_maps.generation("flip")
    assert entries_by_slot(policy_maps) == {slot: entries}
    assert policy_maps._pools["ent"].free == layout.ENTRIES - entries
    assert all(t["nbuckets"] == 1 and t["count"] == 0 for t in head(policy_maps, slot, 3 - gen).values())


def test_remove_leaves_nothing_of_the_endpoint(policy_maps):
    egress, ingress = policy_maps.load_programs("gone")
    try:
        policy_maps.apply("gone", POLICY_A)
        policy_maps.apply("stays", POLICY_B)
        slot = policy_maps.slot("gone")
        other = policy_maps.slot("stays")
        assert entries_by_slot(policy_maps)[slot] > 0
        stays_entries = entries_by_slot(policy_maps)[other]
        raw = FLIP_PACKETS[0]
        assert egress.test_run(raw).retval == -1

        policy_maps.remove("gone")
        policy_maps.remove("gone")  # idempotent
        assert slot not in entries_by_slot(policy_maps)
        assert entries_by_slot(policy_maps)[other] == stays_entries
        assert head(policy_maps, slot, 1) == head(policy_maps, slot, 2)  # both cleared
        key = layout.SLOT_KEY.pack(slot)
        assert layout.GEN.unpack(policy_maps.maps["nk_pol_gen"].lookup(key))[0] == 0
        assert layout.unpack_owner(policy_maps.maps["nk_pol_owner"].lookup(key)) == ""
        assert "gone" not in policy_maps.endpoints()
        assert policy_maps.policy("stays") == POLICY_B
        # Programs still attached after removal fail closed for IP, pass the rest.
        assert egress.test_run(raw).retval == 2
        assert egress.test_run(pk.arp()).retval == -1
        # A new endpoint does not get the freed slot back right away.
        assert policy_maps.reserve("next") not in (slot, other)
    finally:
        egress.close()
        ingress.close()


def test_state_is_read_back_after_a_restart(pin_dir):
    policy = Policy(
        ingress=[Rule.allow("10.0.0.0/8", "tcp", "80-90"), Rule.deny("fd00::/64", "icmp")],
        egress=[Rule.deny("192.168.0.0/16", "udp", 53), Rule.allow("0.0.0.0/0")],
        default_ingress="deny",
    )
    with PolicyMaps(pin_dir) as first:
        compiled = first.apply("pod", policy)
        egress, ingress = first.load_programs("pod")
        for _ in range(3):
            assert ingress.test_run(pk.build("10.2.3.4", "10.0.0.9", 6, dport=85)).retval == -1
        egress.close()
        ingress.close()
        slot = first.slot("pod")
    with PolicyMaps(pin_dir) as second:
        assert second.endpoints() == {"pod": slot}
        assert second.policy("pod") == policy
        assert second.counters("pod").rule(IN, 0).packets == 3
        # A changed policy keeps the ids (and counters) of the rules it keeps.
        changed = Policy(ingress=[Rule.allow("10.0.0.0/8", "tcp", "80-90"), Rule.allow("10.1.0.0/16")],
                         egress=policy.egress, default_ingress="deny")
        recompiled = second.apply("pod", changed)
        assert recompiled.rule_ids[(IN, 0)] == compiled.rule_ids[(IN, 0)]
        assert recompiled.rule_ids[(OUT, 1)] == compiled.rule_ids[(OUT, 1)]
        assert recompiled.rule_ids[(IN, 1)] not in compiled.rule_ids.values()
        counters = second.counters("pod")
        assert counters.rule(IN, 0).packets == 3
        assert counters.rule(IN, 1).packets == 0


def test_two_instances_see_each_others_changes(pin_dir):
    with PolicyMaps(pin_dir) as one, PolicyMaps(pin_dir) as two:
        one.apply("a", POLICY_A)
        two.apply("b", POLICY_B)
        assert set(one.endpoints()) == {"a", "b"}
        one.apply("b", POLICY_A)
        assert two.policy("b") == POLICY_A
        assert one.slot("a") != one.slot("b")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"egress": [{"action": "allow", "cidr": "10.0.0.0/8", "proto": "tcp", "ports": "90-80"}]},
         "upside down"),
        ({"egress": [{"action": "allow", "cidr": "10.0.0.0/8"},
                     {"action": "deny", "cidr": "10.0.0.0/8"}]}, "conflicts"),
        ({"egress": [{"action": "allow", "cidr": "10.0.0.1/8"}]}, "host bits"),
        ({"egress": [{"action": "allow", "cidr": f"10.0.0.0/{8 + i}"} for i in range(17)]},
         "too many rules cover"),
    ],
)
def test_bad_input_changes_nothing(policy_maps, bad, message):
    policy_maps.apply("pod", POLICY_A)
    before = snapshot(policy_maps)
    with pytest.raises(PolicyError, match=message):
        policy_maps.apply("pod", bad)
    with pytest.raises(PolicyError, match=message):
        policy_maps.apply("new-pod", bad)
    assert snapshot(policy_maps) == before
    assert "new-pod" not in policy_maps.endpoints()
    assert policy_maps.policy("pod") == POLICY_A


def test_bad_program_settings(policy_maps):
    with pytest.raises(InvalidSpec, match="l3_offset 2"):
        policy_maps.load_programs("pod", l3_offset=2)
    with pytest.raises(InvalidSpec, match="at most 63 bytes"):
        policy_maps.apply("x" * 64, POLICY_A)


def test_too_many_rules_for_the_map(policy_maps):
    big = bench_policy(32_500)  # 65,000 rule ids of 65,536
    policy_maps.apply("big", big)
    before = snapshot(policy_maps)
    small = bench_policy(300, seed=2)
    with pytest.raises(PolicyError, match=r"too many rules for the map: the policy adds 600 rules "
                                          r"but only 536 of 65536 rule slots are free"):
        policy_maps.apply("small", small)
    assert snapshot(policy_maps) == before
    # Spot-check the big policy in the kernel.
    egress, ingress = policy_maps.load_programs("big")
    try:
        for rule in big.egress[:200]:
            src = "192.0.2.1" if rule.version == 4 else "2001:db8::1"
            raw = pk.build(src, str(rule.cidr.network_address), pk.IPPROTO_TCP, dport=443)
            assert egress.test_run(raw).retval == verdict(big, OUT, raw).tc_retval
    finally:
        egress.close()
        ingress.close()
    policy_maps.remove("big")
    assert not entries_by_slot(policy_maps) and all_free(policy_maps)


def test_program_specs_for_the_engine(policy_maps):
    from nkframe.types import Hook

    specs = policy_maps.program_specs("pod", l3_offset=0)
    slot = policy_maps.slot("pod")
    assert [(s.program, s.hook) for s in specs] == [("policy_egress", Hook.FROM_POD),
                                                    ("policy_ingress", Hook.TO_POD)]
    for s in specs:
        assert s.globals == {"ENDPOINT_SLOT": slot.to_bytes(4, "little"),
                             "L3_OFFSET": bytes(4)}
        assert set(s.maps.values()) == {"global"} and "nk_pol_ent" in s.maps
        assert os.path.isfile(s.object)


def test_map_layouts_match_the_object(policy_maps):
    """The key and value sizes the kernel holds are the ones layout.py packs."""
    sizes = {
        "nk_pol_head": layout.HEAD_SIZE,
        "nk_pol_tab4": layout.SLOT4.size * layout.BUCKET_SLOTS,
        "nk_pol_tab6": layout.SLOT6.size * layout.BUCKET_SLOTS,
        "nk_pol_ent": layout.ENTRY.size,
        "nk_pol_ruledef": layout.RULE.size,
        "nk_pol_gen": layout.GEN.size,
        "nk_pol_owner": layout.ENDPOINT_ID_LEN,
    }
    for name, size in sizes.items():
        assert policy_maps.maps[name].value_size == size, name
    assert policy_maps.maps["nk_pol_addrs"].key_size == layout.ADDR_KEY.size
    assert policy_maps.maps["nk_pol_ent"].max_entries == layout.ENTRIES
    assert policy_maps.maps["nk_pol_tab4"].max_entries == layout.TAB4_BUCKETS
    assert policy_maps.maps["nk_pol_tab6"].max_entries == layout.TAB6_BUCKETS
    assert policy_maps.maps["nk_pol_head"].max_entries == 2 * layout.MAX_ENDPOINTS


def test_regions_are_reused_and_read_back(pin_dir):
    """Many changes on several endpoints leave exactly the active generations' regions in use;
    a second process rebuilds the same bookkeeping from the heads; removal frees everything."""
    import random

    from nkframe_policy.strategies import build_policy

    rnd = random.Random(11)
    with PolicyMaps(pin_dir) as pm:
        current = {}
        for i in range(40):
            eid = f"ep{i % 3}"
            current[eid] = build_policy(rnd, rnd.randrange(0, 30))
            pm.apply(eid, current[eid])
        in_use = {k: r.size - r.free for k, r in pm._pools.items()}
        assert in_use["ent"] == sum(entries_by_slot(pm).values())
        with PolicyMaps(pin_dir) as other:
            assert {k: r.size - r.free for k, r in other._pools.items()} == in_use
            assert {e: other.policy(e) for e in current} == current
        for eid in current:
            pm.remove(eid)
        assert all_free(pm)


def test_more_prefix_lengths_than_a_table_probes(policy_maps):
    """A direction with more distinct prefix lengths than a table probes is expanded; the
    verdicts stay the reference's."""
    import ipaddress
    import random

    rnd = random.Random(3)
    rules = []
    for plen in range(8, 33):  # 25 distinct lengths
        for _ in range(3):
            addr = ipaddress.IPv4Address(0x0A000000 + rnd.randrange(1 << 24))
            cidr = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
            if all(r.cidr != cidr for r in rules):
                rules.append(Rule(rnd.choice(["allow", "deny"]), cidr, "tcp", rnd.choice([None, 443])))
    policy = Policy(egress=rules, default_egress="deny")
    policy_maps.apply("wide", policy)
    slot, gen = policy_maps.slot("wide"), policy_maps.generation("wide")
    assert len(head(policy_maps, slot, gen)[(layout.DIR_EGRESS, 4)]["lengths"]) == layout.MAX_LENS
    egress, ingress = policy_maps.load_programs("wide")
    try:
        for r in rules:
            for _ in range(4):
                dst = r.cidr.network_address + rnd.randrange(r.cidr.num_addresses)
                raw = pk.build("192.0.2.1", str(dst), pk.IPPROTO_TCP, dport=rnd.choice([443, 80]))
                assert egress.test_run(raw).retval == verdict(policy, OUT, raw).tc_retval, (r, dst)
    finally:
        egress.close()
        ingress.close()
