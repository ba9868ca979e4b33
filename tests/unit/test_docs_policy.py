"""docs/policy.md says what a policy means: every example there parses, and every row of its
tables is the reference evaluator's verdict.  (tests/host/test_policy_docs_bpf.py runs the same rows
through the BPF programs.)"""

from __future__ import annotations

import policy_docs
import pytest

from nkframe_policy import verdict


def test_the_page_has_examples_and_every_table_row_names_one():
    pols = policy_docs.policies()
    rows = policy_docs.rows()
    assert len(pols) >= 6 and len(rows) >= 25
    assert {r[0] for r in rows} == set(pols), "an example without rows, or rows of no example"


@pytest.mark.parametrize("name,direction,spec,want", policy_docs.rows(),
                         ids=lambda v: str(v).replace(" ", "_"))
def test_each_documented_verdict_is_the_reference_verdict(name, direction, spec, want):
    policy = policy_docs.policies()[name]
    got = verdict(policy, direction, policy_docs.build(spec))
    assert got.action.value == want, f"{name}: {direction.value} {spec}: docs say {want}, got {got}"


def test_the_parser_would_notice_a_wrong_row():
    # A row that contradicts the policy must fail the check above (guards the harness itself).
    policy = policy_docs.policies()["web"]
    from nkframe_policy import Direction
    got = verdict(policy, Direction.INGRESS, policy_docs.build("tcp 192.0.2.7:40000 -> 10.0.1.5:8081"))
    assert got.action.value == "deny"
