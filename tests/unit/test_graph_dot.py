"""nkframe.graph without root: the DOT text for a hand-built node status, its stability, quoting,
and rendering through Graphviz when it is installed."""

from __future__ import annotations

import html
import re
import shutil

import pytest
import requires
from click.testing import CliRunner

from nkframe import graph
from nkframe.errors import InvalidSpec, NotSupported
from nkframe.status import DeviceEnd, DeviceStatus, EndpointStatus, LinkCounters, NodeStatus, ProgramStatus
from nkframe.types import Mechanism


def _prog(name, hook, mech=Mechanism.TCX, pos=1, pid=10, **kw):
    return ProgramStatus(name=name, hook=hook, mechanism=mech, position=pos, prog_id=pid, link_id=pid + 100, **kw)


def _end(name, ns, ifindex, kind="netkit"):
    return DeviceEnd(name=name, netns=ns, ifindex=ifindex, kind=kind, up=True, counters=LinkCounters(rx_packets=5, tx_dropped=2))


def _status(order=1) -> NodeStatus:
    a = EndpointStatus(
        id="pod-a", netns="ns-a", device_kind="netkit", mode="l3", addresses=("10.0.1.10/32", "fd00::10/128"),
        node_ifname="nkaaaa", pod_ifname="eth0", attach={"from-pod": "netkit", "to-pod": "netkit"},
        programs=(
            _prog("policy_egress", "from-pod", Mechanism.NETKIT, 1, 11),
            _prog("l3_fwd", "from-pod", Mechanism.NETKIT, 2, 12, run_cnt=7, run_time_ns=700),
            _prog("policy_ingress", "to-pod", Mechanism.NETKIT, 1, 13),
            _prog("intruder", "to-pod", Mechanism.TCX, 1, 99, nkframe=False),
        ),
        node=_end("nkaaaa", "node", 5), pod=_end("eth0", "ns-a", 2),
    )
    b = EndpointStatus(
        id="pod-b", netns='/proc/1/ns/"net"', device_kind="veth", mode="l3", addresses=(),
        node_ifname="nkbbbb", pod_ifname="eth0", attach={"from-pod": "tc"},
        programs=(_prog("count_out", "from-pod", Mechanism.TC, 1, 21, attached=True),),
        node=None, pod=None, problems=("node-side device nkbbbb is missing",),
    )
    up = DeviceStatus(name="up0", device=_end("up0", "node", 2, "veth"), programs=(_prog("uplink_in", "ingress", Mechanism.TCX, 1, 31),))
    eps = (a, b) if order == 1 else (b, a)
    return NodeStatus(node_netns="node", bpffs_root="/sys/fs/bpf/nkframe", bpf_stats=True, endpoints=eps, devices=(up,))


def _edges(dot: str) -> list[str]:
    return [l.strip().rstrip(";") for l in dot.splitlines() if "->" in l]


def test_dot_draws_each_chain_between_node_and_pod_in_run_order():
    dot = graph.to_dot(_status())
    assert dot.startswith("digraph nkframe {") and dot.endswith("}\n")
    edges = _edges(dot)
    # to-pod flows node -> chain -> pod; from-pod is declared the same way and drawn backwards.
    assert '"dev:pod-a" -> "chain:pod-a:to-pod" -> "pod:pod-a"' in edges
    assert '"dev:pod-a" -> "chain:pod-a:from-pod" -> "pod:pod-a" [dir=back]' in edges
    assert '"network" -> "chain:dev:up0:ingress" -> "ndev:up0"' in edges
    # Programs appear in the order they run, with ids, run counts, and foreign ones marked.
    chain = next(l for l in dot.splitlines() if l.strip().startswith('"chain:pod-a:from-pod"'))
    assert chain.index("policy_egress") < chain.index("l3_fwd")
    assert "#11" in chain and "7 runs" in chain and "from-pod · netkit" in chain
    to_pod = next(l for l in dot.splitlines() if l.strip().startswith('"chain:pod-a:to-pod"'))
    assert "intruder" in to_pod and "foreign" in to_pod
    # Devices carry kind, ifindex and counters; a missing one says so; addresses on the pod.
    assert "netkit · ifindex 5" in dot and "10.0.1.10/32" in dot and "fd00::10/128" in dot
    assert "<I>missing</I>" in dot
    # A hook with no programs is still drawn, so the picture shows the gap.
    assert '"chain:pod-b:to-pod"' in dot and "no programs" in dot


def test_dot_is_stable_and_quotes_what_it_must():
    one, two = graph.to_dot(_status(1)), graph.to_dot(_status(2))
    assert one == two, "input order must not change the output"
    # The netns path with quotes is escaped inside a quoted id/label, never left raw.
    assert 'netns /proc/1/ns/\\"net\\"' in one
    # HTML-like labels escape markup characters coming from names.
    st = _status()
    odd = EndpointStatus(id="pod-c", netns="ns-c", device_kind="veth", mode="l3", addresses=(), node_ifname="nkc",
                         pod_ifname="eth0", programs=(_prog("a<b>&c", "from-pod"),))
    import attrs

    dot = graph.to_dot(attrs.evolve(st, endpoints=st.endpoints + (odd,)))
    assert "a&lt;b&gt;&amp;c" in dot and "a<b>&c" not in dot


def test_format_from_suffix_or_flag():
    assert graph.format_for("x.svg", None) == "svg"
    assert graph.format_for("x.PNG", None) == "png"
    assert graph.format_for("x.gv", None) == "dot"
    assert graph.format_for("-", None) == "dot"
    assert graph.format_for("x.svg", "png") == "png"
    with pytest.raises(InvalidSpec, match="pdf"):
        graph.format_for("x.pdf", None)
    assert graph.render("digraph {}", "dot") == b"digraph {}"


def test_missing_graphviz_is_not_supported_with_a_way_out(monkeypatch):
    # A machine without Graphviz cannot be produced on demand: hide 'dot' from PATH lookup.
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    with pytest.raises(NotSupported) as err:
        graph.render(graph.to_dot(_status()), "svg")
    assert err.value.feature == "graphviz"
    assert "apt-get install graphviz" in err.value.reason and "--format dot" in err.value.reason


@pytest.fixture
def needs_dot():
    requires.tool("dot", "graphviz")


@pytest.mark.usefixtures("needs_dot")
def test_graphviz_accepts_the_dot_and_renders_svg_and_png():
    dot = graph.to_dot(_status())
    svg = html.unescape(graph.render(dot, "svg").decode())  # Graphviz writes '-' as &#45;
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for text in ("policy_egress", "l3_fwd", "nkaaaa", "up0", "network", "pod pod-a"):
        assert text in svg, text
    png = graph.render(dot, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # Graphviz warnings (bad HTML labels, unknown attributes) go to stderr: there must be none.
    import subprocess

    res = subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=dot.encode(), capture_output=True)
    assert res.returncode == 0 and res.stderr == b"", res.stderr.decode()


@pytest.mark.usefixtures("needs_dot")
def test_broken_dot_is_an_error_with_graphviz_message():
    from nkframe.errors import NkframeError

    with pytest.raises(NkframeError, match=r"dot -Tsvg exited \d+: .*syntax error"):
        graph.render("digraph { a -> }", "svg")


def test_cli_graph_refuses_an_unknown_suffix():
    r = CliRunner().invoke(__import__("nkframe.cli", fromlist=["cli"]).cli, ["graph", "-o", "node.pdf"])
    assert r.exit_code == 2
    assert re.search(r"graph format 'pdf'", r.output)
