"""``nkframe graph`` on a real node: the picture names what the kernel really has attached."""

from __future__ import annotations

import html
import shutil
import struct
from types import SimpleNamespace

import pytest
import requires
from click.testing import CliRunner

from nkframe import hookimpl, objects
from nkframe.cli import cli
from nkframe.engine import Engine
from nkframe.types import EndpointSpec, Hook, ProgramSpec

pytestmark = pytest.mark.root


class Chain:
    """Two programs on from-pod (so order is visible), one on to-pod, one on the uplink."""

    @hookimpl
    def nkframe_programs_collect(self, ctx):
        obj = objects.path("count")
        return [
            ProgramSpec(name="first_out", object=obj, program="count", hook=Hook.FROM_POD, order=10, globals={"SLOT": struct.pack("<I", 0)}, maps={"counts": "endpoint"}),
            # Another object: the same function twice on one hook is one program to the kernel.
            ProgramSpec(name="second_out", object=objects.path("probe"), program="probe_tc", hook=Hook.FROM_POD, order=20),
            ProgramSpec(name="only_in", object=obj, program="count", hook=Hook.TO_POD, globals={"SLOT": struct.pack("<I", 1)}, maps={"counts": "endpoint"}),
        ]

    @hookimpl
    def nkframe_uplink_programs(self, ctx):
        return [ProgramSpec(name="up_in", object=objects.path("count"), program="count", hook="ingress", maps={"counts": "global"})]


@pytest.fixture
def engine(node, bpffs_root):
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Chain()], autoload=False, uplink=node.uplink)
    eng.setup_uplink()
    eng.add_endpoint(EndpointSpec(id="pod-g", netns=node.pod("g"), addresses=["10.95.0.10/32"]))
    try:
        yield eng
    finally:
        eng.remove_endpoint("pod-g")
        eng.teardown_uplink()


def _cli(node, bpffs_root, *args):
    """The CLI in-process (a fresh interpreter costs many seconds per start in the VM tiers)."""
    r = CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", bpffs_root, *args],
                           env={"NKFRAME_DISABLE_PLUGIN_AUTOLOAD": "1"})
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout_bytes, stderr=r.stderr_bytes, exception=r.exception)


def test_graph_dot_names_the_real_chain(engine, node, bpffs_root):
    ep = engine.get_endpoint("pod-g")
    res = _cli(node, bpffs_root, "graph")
    assert res.returncode == 0, (res.stderr.decode(), res.exception)
    dot = res.stdout.decode()
    assert dot.startswith("digraph nkframe {") and dot.endswith("}\n")
    line = next(l for l in dot.splitlines() if l.strip().startswith('"chain:pod-g:from-pod"'))
    assert line.index("first_out") < line.index("second_out"), "programs listed in run order"
    for p in ep.programs:
        assert f"#{p.prog_id}" in dot
    assert ep.spec.node_ifname in dot and node.uplink in dot and "up_in" in dot
    assert f"netns {node.netns}" in dot


def test_graph_svg_and_png_files(engine, node, bpffs_root, tmp_path):
    requires.tool("dot", "graphviz")
    svg_path, png_path = tmp_path / "node.svg", tmp_path / "node.png"
    for path in (svg_path, png_path):
        res = _cli(node, bpffs_root, "graph", "-o", str(path))
        assert res.returncode == 0, (res.stderr.decode(), res.exception)
        assert f"wrote {path}" in res.stderr.decode()
    svg = html.unescape(svg_path.read_text())
    for text in ("first_out", "second_out", "only_in", "up_in", "pod-g", engine.get_endpoint("pod-g").spec.node_ifname):
        assert text in svg, text
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
