"""Every verdict docs/policy.md documents, through the compiled BPF programs (PROG_TEST_RUN):
what the page says is what the datapath does, not only what the reference evaluator says."""

from __future__ import annotations

import os

import policy_docs
import pytest

from nkframe_policy import Direction
from nkframe_policy.maps import PolicyMaps

pytestmark = pytest.mark.root


@pytest.fixture
def progs(bpffs_root):
    pm = PolicyMaps(os.path.join(bpffs_root, "maps"))
    try:
        egress, ingress = pm.load_programs("docs", 14)
        yield pm, {Direction.EGRESS: egress, Direction.INGRESS: ingress}
    finally:
        pm.close()


def test_documented_verdicts_hold_in_bpf(progs):
    pm, by_dir = progs
    pols = policy_docs.policies()
    checked = 0
    for name, pol in pols.items():
        pm.apply("docs", pol)
        for row_name, direction, spec, want in policy_docs.rows():
            if row_name != name:
                continue
            raw = policy_docs.build(spec).ljust(14, b"\0")
            got = by_dir[direction].test_run(raw).retval
            assert got == (-1 if want == "allow" else 2), f"{name}: {direction.value} {spec}: docs say {want}, BPF returned {got}"
            checked += 1
    assert checked == len(policy_docs.rows())
