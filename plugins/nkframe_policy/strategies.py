"""Random policies and packets for tests and benchmarks.

Addresses come from a small universe (10.0.0.0/22 plus a few outsiders, fd00::/118) so random
CIDRs nest and overlap often, and packets are biased towards rule CIDRs and port-range edges so
most of them exercise a rule rather than the default.  :func:`policies` is a hypothesis strategy
(imported lazily: hypothesis is a test dependency); the rest only need :mod:`random`.
"""

from __future__ import annotations

import ipaddress
import random

from . import packet as pk
from .compile import compile_policy
from .model import Action, Policy, PolicyError, Proto, Rule

V4_UNIVERSE = ipaddress.IPv4Network("10.0.0.0/22")
V6_UNIVERSE = ipaddress.IPv6Network("fd00::/118")
OUTSIDERS = ("192.0.2.1", "198.51.100.7", "2001:db8::1", "2001:db8:ffff::9")
PORT_POOL = (0, 1, 22, 53, 79, 80, 81, 443, 1000, 1024, 8080, 65534, 65535)
OTHER_PROTOS = (47, 50, 132)  # GRE, ESP, SCTP: never a port rule


def random_address(rnd: random.Random, version: int) -> str:
    if rnd.random() < 0.05:
        return rnd.choice([a for a in OUTSIDERS if ipaddress.ip_address(a).version == version])
    net = V4_UNIVERSE if version == 4 else V6_UNIVERSE
    return str(net.network_address + rnd.randrange(net.num_addresses))


def random_cidr(rnd: random.Random, version: int):
    addr = ipaddress.ip_address(random_address(rnd, version))
    bits = addr.max_prefixlen
    if rnd.random() < 0.05:
        plen = 0
    else:
        # Mostly inside the universe's range of lengths, some /32 (/128) hosts.
        low = bits - 10
        plen = rnd.choice([bits, rnd.randint(low, bits), rnd.randint(low, bits),
                           rnd.randint(low - 8, bits)])
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False)


def random_rule(rnd: random.Random) -> Rule:
    version = 4 if rnd.random() < 0.6 else 6
    proto = rnd.choice([Proto.ANY, Proto.TCP, Proto.TCP, Proto.UDP, Proto.ICMP])
    ports = None
    if proto.has_ports and rnd.random() < 0.75:
        lo = rnd.choice(PORT_POOL + (rnd.randrange(65536),))
        hi = min(65535, lo + rnd.choice([0, 0, 1, 10, 100, 1000, 65535]))
        ports = (lo, hi)
    action = Action.DENY if rnd.random() < 0.4 else Action.ALLOW
    return Rule(action, random_cidr(rnd, version), proto, ports)


def build_policy(
    rnd: random.Random, n_rules: int, *, max_attempts: int | None = None
) -> Policy:
    """A valid, compilable policy with up to ``n_rules`` rules per direction.

    Rules that would conflict or overflow an entry are skipped (checked incrementally, so use
    :func:`bench_policy` for thousands of rules)."""
    rules: dict[str, list[Rule]] = {"ingress": [], "egress": []}
    for direction in rules:
        attempts = max_attempts or n_rules * 3
        while len(rules[direction]) < n_rules and attempts:
            attempts -= 1
            candidate = rules[direction] + [random_rule(rnd)]
            try:
                compile_policy(Policy(**{direction: candidate}))
            except PolicyError:
                continue
            rules[direction] = candidate
    return Policy(
        ingress=rules["ingress"],
        egress=rules["egress"],
        default_ingress=rnd.choice(list(Action)),
        default_egress=rnd.choice(list(Action)),
    )


def bench_policy(n_rules: int, seed: int = 1) -> Policy:
    """``n_rules`` egress rules on distinct CIDRs (/16../32 inside 10.0.0.0/8 and fd00::/32,
    nesting at most a few deep) plus the same number of ingress rules: a large but realistic
    policy for cost figures."""
    rnd = random.Random(seed)
    out: dict[str, list[Rule]] = {}
    for direction in ("ingress", "egress"):
        seen = set()
        rules: list[Rule] = []
        while len(rules) < n_rules:
            version = 4 if rnd.random() < 0.7 else 6
            if version == 4:
                plen = rnd.choice([16, 24, 24, 28, 32, 32, 32])
                addr = ipaddress.IPv4Address(0x0A000000 + rnd.randrange(1 << 24))
            else:
                plen = rnd.choice([48, 64, 64, 96, 128, 128])
                addr = ipaddress.IPv6Address((0xFD00 << 112) + rnd.randrange(1 << 96))
            cidr = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
            if cidr in seen:
                continue
            seen.add(cidr)
            proto = rnd.choice([Proto.TCP, Proto.UDP, Proto.ANY])
            ports = rnd.choice([None, 443, "8000-8999"]) if proto.has_ports else None
            rules.append(Rule(rnd.choice(list(Action)), cidr, proto, ports))
        out[direction] = rules
    return Policy(ingress=out["ingress"], egress=out["egress"])


def _address_in(rnd: random.Random, net) -> str:
    return str(net.network_address + rnd.randrange(net.num_addresses))


def random_packet(rnd: random.Random, policy: Policy, *, l2: bool = True) -> bytes:
    """One packet, mostly IP, hitting the policy's CIDRs and port edges; some non-IP,
    fragments, IPv6 extension headers and truncated ones."""
    if l2 and rnd.random() < 0.02:
        return pk.arp()
    rules = policy.ingress + policy.egress
    version = 4 if rnd.random() < 0.55 else 6
    same_family = [r for r in rules if r.version == version]
    if same_family and rnd.random() < 0.8:
        rule = rnd.choice(same_family)
        # Either side may be the one the policy looks at (source for ingress, destination for
        # egress): place both near rule CIDRs.
        src = _address_in(rnd, rule.cidr)
        other = rnd.choice(same_family)
        dst = _address_in(rnd, other.cidr) if rnd.random() < 0.7 else random_address(rnd, version)
        if rnd.random() < 0.5:
            src, dst = dst, src
        ports = rule.ports or other.ports
        if rule.proto is not Proto.ANY and rnd.random() < 0.6:
            proto = rule.proto.number(version)
        else:
            proto = None
    else:
        src, dst = random_address(rnd, version), random_address(rnd, version)
        ports = proto = None
    proto = proto or rnd.choice(
        [pk.IPPROTO_TCP] * 4 + [pk.IPPROTO_UDP] * 3
        + [pk.IPPROTO_ICMP if version == 4 else pk.IPPROTO_ICMPV6] * 2
        + [pk.IPPROTO_ICMPV6 if version == 4 else pk.IPPROTO_ICMP, rnd.choice(OTHER_PROTOS)]
    )
    if ports is not None and rnd.random() < 0.8:
        dport = rnd.choice([ports.lo, ports.hi, max(0, ports.lo - 1), min(65535, ports.hi + 1),
                            rnd.randint(ports.lo, ports.hi)])
    else:
        dport = rnd.choice(PORT_POOL + (rnd.randrange(65536),))
    later = rnd.random() < 0.06
    first = not later and rnd.random() < 0.04
    ext: tuple[int, ...] = ()
    if version == 6 and rnd.random() < 0.1:
        ext = tuple(rnd.choice([pk.IPPROTO_HOPOPTS, pk.IPPROTO_ROUTING, pk.IPPROTO_DSTOPTS,
                                pk.IPPROTO_AH]) for _ in range(rnd.choice([1, 2, 3, 9])))
    truncate = None
    if rnd.random() < 0.05:
        truncate = rnd.randrange(1, 80)
    payload = bytes(rnd.randrange(0, 24))
    return pk.build(src, dst, proto, sport=rnd.randrange(65536), dport=dport, payload=payload,
                    l2=l2, later_fragment=later, first_fragment=first, ext=ext,
                    truncate=truncate)


def policies(max_rules: int = 12):
    """Hypothesis strategy: valid compilable policies with nested v4/v6 CIDRs and port ranges."""
    from hypothesis import strategies as st

    return st.builds(
        lambda seed, n: build_policy(random.Random(seed), n),
        st.integers(0, 2**32 - 1),
        st.integers(0, max_rules),
    )
