"""Per-packet cost of the policy programs, measured with PROG_TEST_RUN (informative figures;
the bench harness calls :func:`measure` and prints JSON, tests never assert on time).

``python -m nkframe_policy.cost <bpffs dir>`` (root) prints the figures for 10 / 1,000 / 10,000
rules per direction against the empty baseline program of the same object.

For each size and IP version: ``hit_host`` (an allow rule on the destination's /32 or /128
decides), ``hit_prefix`` (an allow rule on a shorter prefix decides: the lookup probes the
longer lengths first), ``miss`` (no rule covers it: every length is probed, then the default,
allow) and ``deny`` (a deny rule decides: the packet is dropped, counted and reported as an
event).  Figures are averaged over up to ``per_kind`` rules; every packet's verdict is checked
against the reference first, so a figure is the path its name says.
"""

from __future__ import annotations

import json
import random
import sys

from . import packet as pk
from .maps import PolicyMaps
from .model import Action, Direction
from .reference import verdict
from .strategies import bench_policy

SIZES = (10, 1_000, 10_000)
KINDS = ("hit_host", "hit_prefix", "miss", "deny")
SRC = {4: "192.0.2.1", 6: "2001:db8::1"}
MISS = {4: "203.0.113.9", 6: "2001:db8:ffff::9"}  # outside every bench_policy rule


def _ns(prog, raw: bytes, repeat: int, rounds: int) -> float:
    # The kernel averages over ``repeat``; the minimum over a few rounds drops scheduler noise.
    return min(prog.test_run(raw, repeat=repeat).duration_ns for _ in range(rounds))


def _packets(policy, version: int, kind: str, rnd: random.Random, per_kind: int) -> list[bytes]:
    """Packets of one kind: hits are decided by an allow rule (the common path: dropped
    packets also pay for the drop event); ``deny`` ones by a deny rule."""
    if kind == "miss":
        return [pk.build(SRC[version], MISS[version], pk.IPPROTO_TCP, dport=443)]
    host = 32 if version == 4 else 128
    rules = [r for r in policy.egress if r.version == version]
    if kind != "deny":
        rules = [r for r in rules if (r.cidr.prefixlen == host) == (kind == "hit_host")]
    rnd.shuffle(rules)
    want = Action.DENY if kind == "deny" else Action.ALLOW
    out = []
    for r in rules:
        dport = r.ports.lo if r.ports is not None else 443
        raw = pk.build(SRC[version], str(r.cidr.network_address), pk.IPPROTO_TCP, dport=dport)
        v = verdict(policy, Direction.EGRESS, raw)
        if v.reason == "rule" and v.action is want:
            out.append(raw)
            if len(out) == per_kind:
                break
    return out


def measure(pin_dir: str, sizes=SIZES, repeat: int = 100_000, rounds: int = 5,
            seed: int = 7, per_kind: int = 12, object_file: str | None = None) -> dict:
    """ns per run (kernel average over ``repeat``, best of ``rounds``) of ``policy_egress`` for
    the baseline and each policy size; ``*_over_baseline_ns`` is the policy's own cost."""
    out: dict = {"repeat": repeat, "rounds": rounds, "baseline_ns": None, "policies": []}
    rnd = random.Random(seed)
    with PolicyMaps(pin_dir, object_file=object_file) as pm:
        base = pm.load_baseline()
        try:
            probe = pk.build(SRC[4], "10.0.0.1", pk.IPPROTO_TCP)
            out["baseline_ns"] = _ns(base, probe, repeat, rounds)
        finally:
            base.close()
        for n in sizes:
            policy = bench_policy(n, seed=seed)
            endpoint = f"cost-{n}"
            compiled = pm.apply(endpoint, policy)
            egress, ingress = pm.load_programs(endpoint)
            try:
                row: dict = {"rules_per_direction": n, "entries": len(compiled.entries)}
                for version in (4, 6):
                    for kind in KINDS:
                        raws = _packets(policy, version, kind, rnd, per_kind)
                        if not raws:
                            continue
                        for raw in raws:
                            want = verdict(policy, Direction.EGRESS, raw)
                            assert egress.test_run(raw).retval == want.tc_retval
                        ns = sum(_ns(egress, raw, repeat, rounds) for raw in raws) / len(raws)
                        name = f"v{version}_{kind}"
                        row[f"{name}_ns"] = round(ns, 1)
                        row[f"{name}_over_baseline_ns"] = round(ns - out["baseline_ns"], 1)
                out["policies"].append(row)
            finally:
                egress.close()
                ingress.close()
                pm.remove(endpoint)
    return out


def table(result: dict) -> str:
    """The figures as a small text table: ns over the baseline."""
    kinds = [f"v{v}_{k}" for v in (4, 6) for k in KINDS]
    lines = [f"baseline {result['baseline_ns']} ns; ns over baseline:",
             "rules   " + " ".join(f"{k:>14}" for k in kinds)]
    for row in result["policies"]:
        cells = [row.get(f"{k}_over_baseline_ns") for k in kinds]
        lines.append(f"{row['rules_per_direction']:>6}  " + " ".join(
            f"{'-' if c is None else c:>14}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a tool
    res = measure(sys.argv[1], object_file=sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps(res, indent=2))
    print(table(res), file=sys.stderr)
