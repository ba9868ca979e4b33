"""`nkframe node reset` (Engine.reset_node, the nkframe_node_reset hook) takes a node down completely: endpoints, uplink programs, the global maps
the plugins keep after the last endpoint, the bpffs root, and the forwarding sysctls put back as
they were (issue 12: nothing removed the L3 plugin's global maps; issue 16: forwarding was
switched on and never put back)."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import nkframe_l3
from nkframe.cli import cli
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.types import EndpointSpec
from nkframe_policy import plugin as policy_plugin

pytestmark = pytest.mark.root

FWD = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def _fwd(ns):
    return {k: links.sysctl(k, netns=ns) for k in FWD}


def test_node_reset_leaves_nothing_and_restores_the_sysctls(node, bpffs, tmp_path):
    root = os.path.join(bpffs, "reset-root")
    links.sysctls({k: 0 for k in FWD}, netns=node.netns)
    assert _fwd(node.netns) == {k: "0" for k in FWD}
    devices_before = {link.name for link in links.list_links(node.netns)}
    eng = Engine(node.netns, root, plugin_objects=[nkframe_l3, policy_plugin], autoload=False, uplink=node.uplink)
    eng.setup_uplink()
    eng.add_endpoint(EndpointSpec(id="a", netns=node.pod(), addresses=["10.55.0.1/32"]))
    eng.add_endpoint(EndpointSpec(id="b", netns=node.pod(), addresses=["10.55.0.2/32"],
                                  options={"policy": {"default_ingress": "deny"}}))
    eng.remove_endpoint("a")
    # What the issue saw: after the last endpoint, global maps and sysctls stay.
    eng.remove_endpoint("b")
    assert os.path.exists(f"{root}/globals/maps/nk_endpoints")
    assert _fwd(node.netns) == {k: "1" for k in FWD}
    eng.add_endpoint(EndpointSpec(id="c", netns=node.pod(), addresses=["10.55.0.3/32"]))
    assert eng.attached(node.uplink)

    res = CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", root, "--no-agent", "node", "reset", "--json"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads(res.output) == {"endpoints": ["c"], "devices": [node.uplink], "root_removed": True}
    assert not os.path.exists(root), "the bpffs root is gone"
    assert {link.name for link in links.list_links(node.netns)} == devices_before
    assert _fwd(node.netns) == {k: "0" for k in FWD}, "forwarding put back as it was"
    # Every program on the uplink, whatever the mechanism, as the kernel lists them.
    assert Engine(node.netns, os.path.join(bpffs, "reset-probe"), plugin_objects=[], autoload=False).attached(node.uplink) == []
    # A second reset has nothing to do.
    res = CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", root, "--no-agent", "node", "reset"])
    assert res.exit_code == 0 and "nothing to reset" in res.output, res.output
