"""Shared programs (``ProgramSpec.shared``): one loaded copy of the L3 forwarding program per
engine, attached by every endpoint, counting per endpoint through ``skb->ifindex``."""

from __future__ import annotations

import struct

import pytest

import nkframe_l3
from nkframe_fwd import datapath
from nkframe import bpf, objects
from nkframe.engine import Engine
from nkframe.errors import InvalidSpec
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec, Hook, ProgramSpec

pytestmark = pytest.mark.root


def _engine(node, root, **kw):
    return Engine(node.netns, root, plugin_objects=[nkframe_l3], autoload=False, uplink=node.uplink, **kw)


def _fwd(ep):
    [p] = [p for p in ep.programs if p.name == "l3_fwd"]
    return p


@pytest.mark.parametrize("attach", ["auto", "tc"])
def test_endpoints_share_one_program_and_count_apart(node, bpffs_root, attach):
    eng = _engine(node, bpffs_root, attach=attach)
    eng.setup_uplink()
    pods = [node.pod(), node.pod(), node.pod()]
    eps = [eng.add_endpoint(EndpointSpec(id=f"sh-{i}", netns=p, addresses=[f"10.221.0.{i + 1}/32"]))
           for i, p in enumerate(pods)]
    ids = {_fwd(ep).prog_id for ep in eps}
    assert len(ids) == 1, f"every endpoint attaches the same loaded copy, got program ids {ids}"

    # Traffic from the first pod only: its counters move, the others' stay at zero, although
    # all three run the same program (it keys the counters by skb->ifindex).
    assert udp_probe(pods[0], node.outside, "192.0.2.2", count=3) == 3
    stats = [nkframe_l3.endpoint_stats(bpffs_root, ep.id) for ep in eps]
    assert stats[0]["neigh"][0] >= 3
    # (the other pods send IPv6 DAD/MLD packets of their own, which the program sees and hands
    # to the stack: only what it forwarded is theirs alone)
    assert stats[1]["neigh"] == (0, 0) and stats[2]["neigh"] == (0, 0)

    # Removing one endpoint leaves the shared program working for the others and takes the
    # removed device's counter slot away.
    eng.remove_endpoint("sh-0")
    with bpf.Map.from_pin(datapath.stats_map_path(bpffs_root)) as m:
        assert m.lookup(struct.pack("<I", eps[0].node_ifindex)) is None
    assert udp_probe(pods[1], node.outside, "192.0.2.2", count=2) == 2
    assert nkframe_l3.endpoint_stats(bpffs_root, "sh-1")["neigh"][0] >= 2

    # An upgrade loads a fresh copy (what is on disk now); later adds attach that copy.
    before = _fwd(eng.get_endpoint("sh-1")).prog_id
    [up] = eng.upgrade(["sh-1"])
    assert _fwd(up).prog_id != before
    new = eng.add_endpoint(EndpointSpec(id="sh-9", netns=pods[0], addresses=["10.221.0.9/32"]))
    assert _fwd(new).prog_id == _fwd(up).prog_id
    assert udp_probe(pods[0], node.outside, "192.0.2.2", count=2) == 2
    for eid in ("sh-1", "sh-2", "sh-9"):
        eng.remove_endpoint(eid)
    eng.teardown_uplink()
    eng.close()


def test_a_new_engine_loads_its_own_copy(node, bpffs_root):
    """The cache belongs to the engine: a second engine (an agent restart) loads once for
    itself, and endpoints from before keep the program they were attached with."""
    a = _engine(node, bpffs_root)
    ep_a = a.add_endpoint(EndpointSpec(id="sh-a", netns=node.pod(), addresses=["10.221.1.1/32"]))
    a.close()
    b = _engine(node, bpffs_root)
    ep_b = b.add_endpoint(EndpointSpec(id="sh-b", netns=node.pod(), addresses=["10.221.1.2/32"]))
    ep_c = b.add_endpoint(EndpointSpec(id="sh-c", netns=node.pod(), addresses=["10.221.1.3/32"]))
    assert _fwd(ep_b).prog_id == _fwd(ep_c).prog_id != _fwd(ep_a).prog_id
    assert _fwd(b.get_endpoint("sh-a")).prog_id == _fwd(ep_a).prog_id
    for eid in ("sh-a", "sh-b", "sh-c"):
        b.remove_endpoint(eid)


def test_one_upgrade_of_many_endpoints_gives_them_one_new_copy(node, bpffs_root):
    """Issue 17: after `agent upgrade`, endpoints that shared one l3_fwd each had their own
    copy.  One upgrade of several endpoints loads the shared program once for all of them."""
    eng = _engine(node, bpffs_root)
    eps = [eng.add_endpoint(EndpointSpec(id=f"up-{i}", netns=node.pod(), addresses=[f"10.221.2.{i + 1}/32"]))
           for i in range(3)]
    old = {_fwd(ep).prog_id for ep in eps}
    assert len(old) == 1
    ups = eng.upgrade()  # every endpoint, as the agent's upgrade does
    new = {_fwd(ep).prog_id for ep in ups}
    assert len(new) == 1 and new != old, f"one new shared copy expected, got {new} (was {old})"
    later = eng.add_endpoint(EndpointSpec(id="up-9", netns=node.pod(), addresses=["10.221.2.9/32"]))
    assert {_fwd(later).prog_id} == new
    for eid in list(eng.layout.endpoint_ids()):
        eng.remove_endpoint(eid)
    eng.close()


def test_shared_program_with_endpoint_maps_is_refused():
    with pytest.raises(InvalidSpec, match="cannot use endpoint-scoped maps"):
        ProgramSpec(name="x", object=objects.path("count"), program="count", hook=Hook.FROM_POD,
                    maps={"counts": "endpoint"}, shared=True)
