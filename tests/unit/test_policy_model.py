"""Policy validation and parsing: every rejection names the rule and says what to do."""

import ipaddress

import pytest

from nkframe.errors import InvalidSpec
from nkframe_policy import Action, Direction, Policy, PolicyError, PortRange, Proto, Rule


def test_rule_named_constructors_and_normalisation():
    r = Rule.allow("10.0.0.0/8", "TCP", "80-90")
    assert r.action is Action.ALLOW
    assert r.cidr == ipaddress.ip_network("10.0.0.0/8")
    assert r.proto is Proto.TCP
    assert r.ports == PortRange(80, 90)
    assert str(r) == "allow tcp 10.0.0.0/8 ports 80-90"
    assert Rule.deny("fd00::/64", "icmpv6").proto is Proto.ICMP
    assert Rule.deny("fd00::/64").proto is Proto.ANY


@pytest.mark.parametrize(
    "value, expected",
    [(80, (80, 80)), ("443", (443, 443)), ("1000-2000", (1000, 2000)), ([5, 6], (5, 6)),
     ({"from": 7, "to": 9}, (7, 9)), ({"from": 7}, (7, 7)), ("0-65535", (0, 65535))],
)
def test_port_range_forms(value, expected):
    assert PortRange.parse(value) == PortRange(*expected)


def test_upside_down_port_range():
    with pytest.raises(PolicyError, match=r"90-80 is upside down.*write 80-90"):
        PortRange.parse("90-80")
    with pytest.raises(InvalidSpec, match=r"egress\[1\]\.ports: port range 9-2 is upside down"):
        Policy.from_dict({"egress": [
            {"action": "allow", "cidr": "10.0.0.0/8"},
            {"action": "allow", "cidr": "10.0.0.0/8", "proto": "tcp", "ports": "9-2"},
        ]})


@pytest.mark.parametrize("bad", [65536, -1, "http", "1-2-3", True, 1.5, [1], "70000"])
def test_bad_ports(bad):
    with pytest.raises(PolicyError, match="port"):
        PortRange.parse(bad)


@pytest.mark.parametrize(
    "cidr, message",
    [("10.0.0.1/8", "host bits set; did you mean '10.0.0.0/8'"),
     ("10.0.0.0/33", "not an IPv4 or IPv6 CIDR"),
     ("fd00::1/64", "did you mean 'fd00::/64'"),
     ("banana", "not an IPv4 or IPv6 CIDR"),
     (42, "cidr must be a string")],
)
def test_bad_cidr(cidr, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict({"ingress": [{"action": "deny", "cidr": cidr}]})


def test_single_address_cidr():
    assert Rule.allow("10.1.2.3").cidr.prefixlen == 32
    assert Rule.allow("fd00::1").cidr.prefixlen == 128


@pytest.mark.parametrize("proto", ["icmp", "any", None])
def test_ports_only_for_tcp_udp(proto):
    d = {"action": "allow", "cidr": "10.0.0.0/8", "ports": 80}
    if proto:
        d["proto"] = proto
    with pytest.raises(PolicyError, match=r"ingress\[0\]\.ports: ports only apply to tcp and udp"):
        Policy.from_dict({"ingress": [d]})


def test_bad_action_and_proto_and_fields():
    with pytest.raises(PolicyError, match=r"ingress\[0\]\.action: action must be one of allow, deny"):
        Policy.from_dict({"ingress": [{"action": "permit", "cidr": "10.0.0.0/8"}]})
    with pytest.raises(PolicyError, match=r"proto must be one of any, tcp, udp, icmp, not 'sctp'"):
        Policy.from_dict({"ingress": [{"action": "allow", "cidr": "10.0.0.0/8", "proto": "sctp"}]})
    with pytest.raises(PolicyError, match=r"unknown rule field\(s\) port"):
        Policy.from_dict({"ingress": [{"action": "allow", "cidr": "10.0.0.0/8", "port": 1}]})
    with pytest.raises(PolicyError, match="rule has no 'cidr'"):
        Policy.from_dict({"ingress": [{"action": "allow"}]})
    with pytest.raises(PolicyError, match="unknown policy field 'ingres'"):
        Policy.from_dict({"ingres": []})
    with pytest.raises(PolicyError, match="default_egress: action must be one of"):
        Policy.from_dict({"default_egress": "drop"})
    with pytest.raises(PolicyError, match="egress must be a list"):
        Policy.from_dict({"egress": {"action": "allow"}})


def test_duplicate_rules_rejected():
    with pytest.raises(PolicyError, match=r"egress\[2\]: duplicate rule .* repeats egress\[0\]"):
        Policy(egress=[Rule.allow("10.0.0.0/8", "tcp", 80), Rule.deny("10.0.0.0/8", "udp"),
                       Rule.allow("10.0.0.0/8", "tcp", "80")])


@pytest.mark.parametrize(
    "a, b",
    [
        (Rule.allow("10.0.0.0/8", "tcp", "80-90"), Rule.deny("10.0.0.0/8", "tcp", "85-100")),
        (Rule.allow("10.0.0.0/8", "tcp"), Rule.deny("10.0.0.0/8", "tcp", 22)),
        (Rule.deny("10.0.0.0/8"), Rule.allow("10.0.0.0/8", "udp", 53)),
        (Rule.deny("10.0.0.0/8", "icmp"), Rule.allow("10.0.0.0/8")),
        (Rule.allow("10.0.0.0/8"), Rule.deny("10.0.0.0/8")),
        (Rule.allow("fd00::/8", "udp", "1-100"), Rule.deny("fd00::/8", "udp", "100-200")),
    ],
)
def test_conflicting_rules_rejected(a, b):
    with pytest.raises(PolicyError, match=r"ingress\[1\]: rule .* conflicts with ingress\[0\]"):
        Policy(ingress=[a, b])


@pytest.mark.parametrize(
    "a, b",
    [
        # Different protocols, disjoint ports, nested CIDRs, or same action: all fine.
        (Rule.allow("10.0.0.0/8", "tcp", "80-90"), Rule.deny("10.0.0.0/8", "udp", "80-90")),
        (Rule.allow("10.0.0.0/8", "tcp", "80-90"), Rule.deny("10.0.0.0/8", "tcp", "91-100")),
        (Rule.allow("10.0.0.0/8"), Rule.deny("10.1.0.0/16")),
        (Rule.allow("10.0.0.0/8", "tcp"), Rule.allow("10.0.0.0/8", "tcp", 22)),
        (Rule.deny("10.0.0.0/8", "icmp"), Rule.allow("10.0.0.0/8", "tcp")),
        (Rule.allow("0.0.0.0/0"), Rule.deny("::/0")),
    ],
)
def test_non_conflicting_rules_accepted(a, b):
    Policy(ingress=[a, b])
    # The same pair in different directions never conflicts.
    Policy(ingress=[a], egress=[b])


def test_conflict_sweep_finds_far_apart_rules():
    rules = [Rule.allow("10.0.0.0/8", "tcp", p) for p in range(1000, 1100)]
    rules.append(Rule.deny("10.0.0.0/8", "tcp", "500-1000"))
    with pytest.raises(PolicyError, match=r"ingress\[100\]"):
        Policy(ingress=rules)


def test_defaults_and_round_trip():
    p = Policy.from_dict({
        "default_ingress": "deny",
        "ingress": [{"action": "allow", "cidr": "10.0.0.0/8", "proto": "tcp", "ports": "80-81"}],
        "egress": [{"action": "deny", "cidr": "fd00::/16", "proto": "icmp"}],
    })
    assert p.default(Direction.INGRESS) is Action.DENY
    assert p.default(Direction.EGRESS) is Action.ALLOW
    assert Policy.from_dict(p.to_dict()) == p
    # An explicit allow-all is a policy; an empty one is refused (see below).
    assert Policy.from_dict({"default_ingress": "allow", "default_egress": "allow"}) == Policy.allow_all()


YAML_OK = """\
default_ingress: deny
default_egress: allow
ingress:
  - action: allow
    cidr: 10.0.0.0/8
    proto: tcp
    ports: 80-443
  - {action: allow, cidr: "fd00::/64", proto: icmp}
egress:
  - action: deny
    cidr: 192.168.0.0/16
"""


def test_from_yaml():
    p = Policy.from_yaml(YAML_OK)
    assert p.ingress[0] == Rule.allow("10.0.0.0/8", "tcp", "80-443")
    assert p.ingress[1] == Rule.allow("fd00::/64", "icmp")
    assert p.egress == (Rule.deny("192.168.0.0/16"),)
    assert p.default_ingress is Action.DENY


@pytest.mark.parametrize(
    "text, line, message",
    [
        (YAML_OK.replace("ports: 80-443", "ports: 443-80"), 7, r"ingress\[0\]\.ports: .*upside down"),
        (YAML_OK.replace("192.168.0.0/16", "192.168.0.1/16"), 11, r"egress\[0\]\.cidr: .*host bits"),
        (YAML_OK.replace("proto: icmp}", "proto: icmp, ports: 5}"), 8, r"ingress\[1\]\.ports"),
        (YAML_OK.replace("default_egress", "default_egres"), 2, "unknown policy field"),
        (YAML_OK.replace("    proto: tcp\n", "    proto: tcp\n    prot: udp\n"), 7, "unknown rule field"),
        (YAML_OK + "  - action: deny\n    cidr: 192.168.0.0/16\n", 12, r"egress\[1\]: duplicate"),
        ("ingress: [\n  {action: allow\n", 3, "not valid YAML"),
        ("a: 1\na: 2\n", 2, "appears twice"),
    ],
)
def test_yaml_errors_name_the_line(text, line, message):
    with pytest.raises(PolicyError, match=message) as info:
        Policy.from_yaml(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null", "~", "{}", "---\n...\n"])
def test_an_empty_policy_document_is_refused(text):
    with pytest.raises(PolicyError, match="the policy is empty.*default_ingress: allow"):
        Policy.from_yaml(text)
    with pytest.raises(PolicyError, match="the policy is empty"):
        Policy.from_dict(None)


@pytest.mark.parametrize("text,match", [
    ("[" * 5000 + "]" * 5000, "nests"),
    ("ingress:\n" + "  " + "[" * 40 + "]" * 40 + "\n", "nests more than"),
    # An alias bomb: 9 levels of 10 aliases each expand to 10**9 items.
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)),
     "expands to more than"),
])
def test_hostile_yaml_is_one_error(text, match):
    with pytest.raises(PolicyError, match=match):
        Policy.from_yaml(text)
