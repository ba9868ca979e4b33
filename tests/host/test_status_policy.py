"""``nkframe policy apply``: a YAML/JSON file becomes an endpoint's policy, visible in traffic, in
the stored spec and in ``nkframe status``; bad files are refused with line numbers and change
nothing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from nkframe import status
from nkframe_policy import Policy
from nkframe.cli import cli
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

NODE_IP = "10.94.0.1"
ALLOWED, OTHER = 7201, 7202

POLICY = f"""\
# pod may send UDP to the node on port {ALLOWED} only
default_egress: deny
egress:
  - action: allow
    cidr: {NODE_IP}/32
    proto: udp
    ports: {ALLOWED}
"""


def _cli(*args, node=None, bpffs_root=None, stdin=None):
    pre = ["--netns", node.netns, "--bpffs-root", bpffs_root] if node else []
    r = CliRunner().invoke(cli, [*pre, *args], input=stdin, env={"NKFRAME_PLUGINS": "policy", "NKFRAME_NO_AGENT": "1"})
    return SimpleNamespace(code=r.exit_code, out=r.stdout, err=r.stderr, exc=r.exception)


def test_bad_documents_are_refused_with_line_numbers(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("default_egress: deny\negress:\n  - action: allow\n    cidr: 10.0.0.0/33\n")
    r = _cli("policy", "apply", "pod-x", "-f", str(bad))
    assert r.code == 2
    assert f"{bad}: line 4: egress[0].cidr" in r.err
    js = tmp_path / "bad.json"
    js.write_text('{\n  "default_ingress": "deny",\n  "ingress": [\n    {"action": "allow", "cidr": "10.0.0.0/8", "proto": "icmp", "ports": 80}\n  ]\n}\n')
    r = _cli("policy", "apply", "pod-x", "-f", str(js))
    assert r.code == 2 and f"{js}: line 4:" in r.err and "ports" in r.err
    r = _cli("policy", "apply", "pod-x", "-f", str(tmp_path / "missing.yaml"))
    assert r.code == 2
    good = tmp_path / "good.yaml"
    good.write_text(POLICY)
    r = _cli("policy", "apply", "pod-x", "-f", str(good), "--dry-run", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["applied"] is False and doc["policy"]["default_egress"] == "deny"
    r = _cli("policy", "apply", "pod-x", "-f", "-", "--dry-run", stdin=POLICY)
    assert r.code == 0 and "<stdin>" in r.out and "is valid" in r.out


@pytest.fixture
def node_with_pods(node, bpffs_root):
    """Two pods: one created with an allow-all policy, one with none (no policy programs)."""
    eng = Engine(node.netns, bpffs_root, plugins=["policy"])
    links.add_address("lo", f"{NODE_IP}/32", netns=node.netns)
    pods = {}
    for i, (eid, options) in enumerate((("with", {"policy": {"default_ingress": "allow", "default_egress": "allow"}}), ("without", {}))):
        pod = node.pod(eid[:4])
        ip = f"10.94.0.{10 + i}"
        ep = eng.add_endpoint(EndpointSpec(id=eid, netns=pod, addresses=[f"{ip}/32"], options=options))
        links.add_route(f"{NODE_IP}/32", dev="eth0", netns=pod)
        links.add_host_route(ip, ep.spec.node_ifname, netns=node.netns)
        pods[eid] = pod
    try:
        yield eng, pods
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)


@pytest.mark.root
@pytest.mark.parametrize("eid", ["with", "without"])
def test_apply_changes_traffic_spec_and_status(node, bpffs_root, node_with_pods, tmp_path, eid):
    eng, pods = node_with_pods
    pod = pods[eid]
    assert udp_probe(pod, node.netns, NODE_IP, OTHER, count=2) == 2, "before: everything passes"
    before_programs = {p.name for p in eng.get_endpoint(eid).programs}
    assert ("policy_egress" in before_programs) == (eid == "with")

    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    r = _cli("policy", "apply", eid, "-f", str(f), node=node, bpffs_root=bpffs_root)
    assert r.code == 0, (r.err, r.exc)
    assert f"applied to endpoint {eid}" in r.out

    assert udp_probe(pod, node.netns, NODE_IP, ALLOWED, count=3) == 3
    assert udp_probe(pod, node.netns, NODE_IP, OTHER, count=3) == 0
    # Recorded in the stored spec: a restarted process (or upgrade) builds the same.
    stored = Engine(node.netns, bpffs_root, autoload=False).get_endpoint(eid).spec
    assert stored.options["policy"] == Policy.from_yaml(POLICY).to_dict()
    # status shows the policy programs in the chain, and the drops they counted.
    st = {e.id: e for e in status.gather(eng).endpoints}[eid]
    assert {"policy_egress", "policy_ingress"} <= {p.name for p in st.programs}
    assert st.problems == ()

    # A bad document afterwards changes nothing.
    bad = tmp_path / "bad.yaml"
    bad.write_text("egress:\n  - action: maybe\n    cidr: 0.0.0.0/0\n")
    r = _cli("policy", "apply", eid, "-f", str(bad), node=node, bpffs_root=bpffs_root)
    assert r.code == 2 and "line 2" in r.err
    assert udp_probe(pod, node.netns, NODE_IP, ALLOWED, count=2) == 2
    assert udp_probe(pod, node.netns, NODE_IP, OTHER, count=2) == 0


@pytest.mark.root
def test_apply_to_a_missing_endpoint_is_not_found(node, bpffs_root, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    r = _cli("policy", "apply", "nobody", "-f", str(f), node=node, bpffs_root=bpffs_root)
    assert r.code == 5 and "nobody" in r.err
