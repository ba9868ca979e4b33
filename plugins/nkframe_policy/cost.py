"""Per-packet cost of the policy programs, measured with PROG_TEST_RUN (informative figures;
the bench harness calls :func:`measure` and prints JSON, tests never assert on time).

``python -m nkframe_policy.cost <bpffs dir>`` (root) prints the figures for 10 / 1,000 / 10,000
rules per direction against the empty baseline program of the same object.
"""

from __future__ import annotations

import json
import random
import sys

from . import packet as pk
from .maps import PolicyMaps
from .model import Direction
from .reference import verdict
from .strategies import bench_policy

SIZES = (10, 1_000, 10_000)


def _packets(policy, rnd: random.Random) -> dict[str, bytes]:
    rule = rnd.choice([r for r in policy.egress if r.version == 4])
    rule6 = rnd.choice([r for r in policy.egress if r.version == 6])
    return {
        "v4_rule_cidr": pk.build("192.0.2.1", str(rule.cidr.network_address), pk.IPPROTO_TCP,
                                 dport=443),
        "v6_rule_cidr": pk.build("2001:db8::1", str(rule6.cidr.network_address),
                                 pk.IPPROTO_TCP, dport=443),
        "v4_no_rule": pk.build("192.0.2.1", "203.0.113.9", pk.IPPROTO_UDP, dport=53),
    }


def _ns(prog, raw: bytes, repeat: int, rounds: int) -> int:
    # The kernel averages over ``repeat``; the minimum over a few rounds drops scheduler noise.
    return min(prog.test_run(raw, repeat=repeat).duration_ns for _ in range(rounds))


def measure(pin_dir: str, sizes=SIZES, repeat: int = 200_000, rounds: int = 5,
            seed: int = 7) -> dict:
    """ns per run (kernel average over ``repeat``, best of ``rounds``) for the baseline and each
    policy size, with packets that hit a rule CIDR (v4, v6) and one that hits no rule."""
    out: dict = {"repeat": repeat, "rounds": rounds, "baseline_ns": None, "policies": []}
    rnd = random.Random(seed)
    with PolicyMaps(pin_dir) as pm:
        base = pm.load_baseline()
        try:
            probe = pk.build("192.0.2.1", "10.0.0.1", pk.IPPROTO_TCP)
            out["baseline_ns"] = _ns(base, probe, repeat, rounds)
        finally:
            base.close()
        for n in sizes:
            policy = bench_policy(n, seed=seed)
            endpoint = f"cost-{n}"
            compiled = pm.apply(endpoint, policy)
            egress, ingress = pm.load_programs(endpoint)
            try:
                row = {"rules_per_direction": n, "lpm_entries": len(compiled.entries)}
                for name, raw in _packets(policy, rnd).items():
                    assert egress.test_run(raw).retval == verdict(
                        policy, Direction.EGRESS, raw).tc_retval
                    ns = _ns(egress, raw, repeat, rounds)
                    row[f"{name}_ns"] = ns
                    row[f"{name}_over_baseline_ns"] = ns - out["baseline_ns"]
                out["policies"].append(row)
            finally:
                egress.close()
                ingress.close()
                pm.remove(endpoint)
    return out


if __name__ == "__main__":  # pragma: no cover - a tool
    print(json.dumps(measure(sys.argv[1]), indent=2))
