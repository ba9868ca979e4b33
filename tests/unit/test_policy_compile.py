"""Flattening into entries, a generation's image, limits, byte layouts (checked against the C
header)."""

import ipaddress
import re
from pathlib import Path

import pytest

from nkframe_policy import Direction, Policy, PolicyError, Rule, compile_policy, layout, tables
from nkframe_policy.compile import (Image, policy_from_rules, rule_definition,
                                    rule_from_definition)
from nkframe_policy.strategies import bench_policy

IN, OUT = Direction.INGRESS, Direction.EGRESS
HEADER = Path(__file__).resolve().parents[2] / "bpf" / "include" / "nkframe_policy.h"
COMMON = Path(__file__).resolve().parents[2] / "bpf" / "include" / "nkframe_common.h"


def by_prefix(compiled, direction):
    return {str(e.prefix): e for e in compiled.entries if e.direction is direction}


def test_empty_policy_has_only_catch_alls_with_defaults():
    c = compile_policy(Policy(default_ingress="deny"))
    assert sorted((e.direction.value, str(e.prefix), e.default.value, e.rules) for e in c.entries) == [
        ("egress", "0.0.0.0/0", "allow", ()), ("egress", "::/0", "allow", ()),
        ("ingress", "0.0.0.0/0", "deny", ()), ("ingress", "::/0", "deny", ()),
    ]


def test_nested_prefixes_carry_their_ancestors_rules():
    policy = Policy(egress=[
        Rule.allow("10.0.0.0/8", "tcp", 80),     # 0
        Rule.deny("10.1.0.0/16"),                # 1
        Rule.allow("10.1.2.0/24", "udp"),        # 2
        Rule.deny("10.1.2.0/24", "tcp", 22),     # 3
        Rule.allow("10.2.0.0/16"),               # 4
        Rule.deny("0.0.0.0/0", "icmp"),          # 5
        Rule.allow("fd00::/8"),                  # 6
    ])
    c = compile_policy(policy)
    e = by_prefix(c, OUT)
    assert set(e) == {"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16",
                      "::/0", "fd00::/8"}
    idx = lambda p: [r.index for r in e[p].rules]
    own = lambda p: [r.index for r in e[p].rules if r.own]
    # Denies first, each group in policy order.
    assert idx("0.0.0.0/0") == [5]
    assert idx("10.0.0.0/8") == [5, 0]
    assert idx("10.1.0.0/16") == [1, 5, 0]
    assert idx("10.1.2.0/24") == [1, 3, 5, 0, 2]
    assert own("10.1.2.0/24") == [3, 2]
    assert idx("10.2.0.0/16") == [5, 0, 4]
    assert idx("::/0") == [] and idx("fd00::/8") == [6]
    assert not any(by_prefix(c, IN)[p].rules for p in ("0.0.0.0/0", "::/0"))
    assert c.lookup(OUT, "10.1.2.3").prefix == ipaddress.ip_network("10.1.2.0/24")
    assert c.lookup(OUT, "10.3.0.1").prefix == ipaddress.ip_network("10.0.0.0/8")
    assert c.lookup(OUT, "11.0.0.1").prefix == ipaddress.ip_network("0.0.0.0/0")


def test_siblings_do_not_leak_into_each_other():
    policy = Policy(ingress=[Rule.deny("10.0.0.0/25"), Rule.allow("10.0.0.128/25"),
                             Rule.allow("10.0.0.0/24", "udp")])
    e = by_prefix(compile_policy(policy), IN)
    assert [r.index for r in e["10.0.0.0/25"].rules] == [0, 2]
    assert [r.index for r in e["10.0.0.128/25"].rules] == [1, 2]


def test_too_many_rules_covering_one_prefix():
    rules = [Rule.allow(f"10.0.0.0/{8 + i}") for i in range(16)]
    compile_policy(Policy(egress=rules))  # 16 fit
    rules.append(Rule.deny("10.0.0.0/30"))
    with pytest.raises(PolicyError, match=r"egress\[16\]: too many rules cover 10\.0\.0\.0/30 in "
                                           r"egress \(17, max 16"):
        compile_policy(Policy(egress=rules))
    # Many rules side by side are fine: only nesting stacks up.
    compile_policy(Policy(egress=[Rule.allow(f"10.0.{i}.0/24") for i in range(256)]))


def test_entry_and_rule_bytes():
    policy = Policy(ingress=[Rule.deny("10.1.0.0/16", "tcp", "80-90"), Rule.allow("fd00::/64", "icmp")])
    c = compile_policy(policy, slot=7, generation=2, rule_ids={(IN, policy.ingress[0]): 41,
                                                               (IN, policy.ingress[1]): 42})
    e = by_prefix(c, IN)
    default, ids = layout.unpack_entry(e["10.1.0.0/16"].value())
    assert (default, ids) == (layout.ACT_ALLOW, [41])
    assert layout.unpack_entry(e["fd00::/64"].value())[1] == [42]
    assert layout.unpack_entry(e["::/0"].value()) == (layout.ACT_ALLOW, [])
    raw = rule_definition(policy.ingress[0])
    assert len(raw) == layout.RULE.size == 28
    assert layout.unpack_rule(raw) == (6, layout.ACT_DENY, 80, 90, ipaddress.ip_network("10.1.0.0/16"))
    assert layout.unpack_rule(rule_definition(policy.ingress[1]))[:4] == (58, layout.ACT_ALLOW, 0, layout.PORT_UNKNOWN)
    assert c.rule_ids == {(IN, 0): 41, (IN, 1): 42}


def test_policy_read_back_from_rule_definitions():
    policy = Policy(
        ingress=[Rule.allow("10.0.0.0/8", "tcp", 80), Rule.deny("10.1.0.0/16", "udp"),
                 Rule.allow("fd00::/64", "icmp")],
        egress=[Rule.deny("0.0.0.0/0", "tcp", "1-1023"), Rule.allow("::/0")],
        default_ingress="deny",
    )
    c = compile_policy(policy, slot=3, generation=1)
    rules = {d: {} for d in (IN, OUT)}
    defaults = {}
    for e in c.entries:
        defaults[e.direction] = e.default
        for r in e.rules:
            rules[e.direction][r.rule_id] = rule_from_definition(rule_definition(r.rule))
    back, ids = policy_from_rules(rules, defaults)
    assert back == policy
    assert ids == {(IN, policy.ingress[0]): 0, (IN, policy.ingress[1]): 1,
                   (IN, policy.ingress[2]): 2, (OUT, policy.egress[0]): 3, (OUT, policy.egress[1]): 4}


def test_image_lays_out_one_table_per_direction_and_version():
    policy = Policy(ingress=[Rule.allow("10.0.0.0/8"), Rule.deny("10.1.0.0/16", "udp"),
                             Rule.allow("10.1.2.3/32")],
                    egress=[Rule.allow("fd00::/64")])
    img = Image.build(compile_policy(policy), max_buckets={4: 1024, 6: 1024})
    assert sum(n for _, n in img.spans.values()) == len(img.entries)
    t = img.tables[(IN, 4)]
    assert t.lengths == (32, 16, 8)
    assert str(img.entries[t.fallback].prefix) == "0.0.0.0/0"
    assert str(img.lookup(IN, "10.1.2.3").prefix) == "10.1.2.3/32"
    assert str(img.lookup(IN, "10.1.9.9").prefix) == "10.1.0.0/16"
    assert str(img.lookup(IN, "11.0.0.1").prefix) == "0.0.0.0/0"
    assert img.tables[(OUT, 4)].lengths == () and img.tables[(OUT, 6)].lengths == (64,)
    first, count = img.spans[(OUT, 6)]
    assert [str(e.prefix) for e in img.entries[first:first + count]] == ["::/0", "fd00::/64"]
    # A table that cannot be placed is a PolicyError naming the direction.
    many = Policy(egress=[Rule.allow(f"10.0.{i}.0/24") for i in range(64)])
    with pytest.raises(PolicyError, match=r"egress: too many rules for the map: the egress IPv4"):
        Image.build(compile_policy(many), max_buckets={4: 4, 6: 4})


def test_ten_thousand_rules_compile():
    policy = bench_policy(10_000)
    c = compile_policy(policy)
    assert len(policy.egress) == 10_000
    assert len(c.entries) >= 20_000
    assert max(len(e.rules) for e in c.entries) <= layout.MAX_RULES_PER_ENTRY


def _defines(path):
    return {m[0]: int(m[1], 0) for m in re.findall(
        r"#define (NK_\w+)\s+(0x[0-9a-fA-F]+|\d+)(?:ULL)?\b", path.read_text())}


def _enum(path, name):
    text = path.read_text()
    body = re.search(r"enum %s \{(.*?)\};" % name, text, re.S).group(1)
    return {k: int(v, 0) for k, v in re.findall(r"(NK_\w+) = (\w+)", body)}


def test_layout_matches_the_c_header():
    d = _defines(HEADER) | _defines(COMMON)
    assert d["NK_POLICY_MAX_RULES"] == layout.MAX_RULES_PER_ENTRY
    assert d["NK_POLICY_ENTRIES"] == layout.ENTRIES
    assert d["NK_POLICY_TAB4_BUCKETS"] == layout.TAB4_BUCKETS
    assert d["NK_POLICY_TAB6_BUCKETS"] == layout.TAB6_BUCKETS
    assert d["NK_POLICY_BUCKET_SLOTS"] == layout.BUCKET_SLOTS
    assert d["NK_POLICY_MAX_LENS"] == layout.MAX_LENS
    assert d["NK_POLICY_ENTRY_BITS"] == layout.ENTRY_BITS
    assert d["NK_POLICY_HASH_K1"] == tables.HASH_K1
    assert d["NK_POLICY_HASH_K2"] == tables.HASH_K2
    # The rule and entry ids fit their fields.
    assert layout.ENTRIES <= 1 << layout.ENTRY_BITS and layout.RULE_SLOTS <= 1 << 16
    assert d["NK_POLICY_RULE_SLOTS"] == layout.RULE_SLOTS
    assert d["NK_POLICY_MAX_ENDPOINTS"] == layout.MAX_ENDPOINTS
    assert d["NK_POLICY_ENDPOINT_ID_LEN"] == layout.ENDPOINT_ID_LEN
    assert d["NK_POLICY_MAX_ADDRS"] == layout.MAX_ADDRS
    assert d["NK_PORT_UNKNOWN"] == layout.PORT_UNKNOWN
    assert _enum(HEADER, "nk_policy_dir") == {"NK_DIR_INGRESS": 0, "NK_DIR_EGRESS": 1}
    assert _enum(HEADER, "nk_policy_action") == {"NK_ACT_ALLOW": layout.ACT_ALLOW,
                                                 "NK_ACT_DENY": layout.ACT_DENY}
    stats = _enum(HEADER, "nk_policy_stat")
    assert [k[len("NK_PSTAT_"):].lower() for k, v in sorted(stats.items(), key=lambda kv: kv[1])
            if k != "NK_PSTAT_MAX"] == list(layout.STAT_NAMES)
    drops = _enum(COMMON, "nk_drop_reason")
    assert {v: k[len("NK_DROP_"):].lower() for k, v in drops.items()
            if k not in ("NK_DROP_NONE", "NK_DROP_MAX")} == layout.DROP_REASONS
    assert drops["NK_DROP_MAX"] == layout.DROP_MAX
