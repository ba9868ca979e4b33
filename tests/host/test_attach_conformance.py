"""One conformance test, run against every attach mechanism.

Each mechanism (netkit native, TCX, legacy TC) must: attach in order with anchors, run a chain
where "continue" (-1) hands the packet on, update a program in place (refusing a stale expected
program), pin, reopen from the pin, survive the creating process's exit, list, and detach.
The netkit variant needs a netkit kernel and runs in the vm-netkit tier.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import textwrap

import attrs
import pytest

from nkframe import attach, bpf, netns, objects, probe
from nkframe.attach import Position, open_pinned
from nkframe.engine import list_attached
from nkframe.errors import KernelError
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import Hook, Mechanism

pytestmark = pytest.mark.root

MECHANISMS = [
    pytest.param(Mechanism.TCX, id="tcx"),
    pytest.param(Mechanism.TC, id="tc"),
    pytest.param(Mechanism.NETKIT, id="netkit", marks=pytest.mark.netkit),
]


@attrs.define
class Pair:
    """A node-side device (programs attach here) and its pod end in another netns."""

    mech: Mechanism
    node_ns: str
    pod_ns: str
    ifname: str
    ifindex: int
    backend: object
    direction: str  # the mechanism's word for packets the pod sends

    def ping(self, count: int = 1) -> bool:
        """UDP from the pod to the node side; True if any datagram arrived."""
        return udp_probe(self.pod_ns, self.node_ns, "10.99.0.1", count=count, timeout=1.0) > 0

    def query(self) -> list[int]:
        with netns.enter(self.node_ns):
            return [p.prog_id for p in self.backend.query(self.ifindex, self.direction)]


@pytest.fixture(params=MECHANISMS)
def pair(request, make_netns):
    mech: Mechanism = request.param
    feats = probe.features()
    if not feats.supported(mech.value):
        pytest.skip(f"{mech} unsupported here: {feats[mech.value].reason}")
    node_ns, pod_ns = make_netns("node"), make_netns("pod")
    if mech is Mechanism.NETKIT:
        from nkframe.netlink import netkit

        netkit.create_netkit(netkit.NetkitSpec(name="nk0", peer_name="eth0", peer_netns=pod_ns), netns=node_ns)
        ifname = "nk0"
    else:
        links.create_veth(links.VethSpec(name="ve0", peer_name="eth0", peer_netns=pod_ns), netns=node_ns)
        ifname = "ve0"
    links.add_address(ifname, "10.99.0.1/24", netns=node_ns)
    links.add_address("eth0", "10.99.0.2/24", netns=pod_ns)
    for ns, dev in ((node_ns, ifname), (pod_ns, "eth0"), (node_ns, "lo"), (pod_ns, "lo")):
        links.set_up(dev, netns=ns)
    ifindex = links.get_link(ifname, netns=node_ns).ifindex
    yield Pair(mech, node_ns, pod_ns, ifname, ifindex, attach.backend(mech), attach.direction_for(mech, Hook.FROM_POD))


class Counters:
    """Loads bpf/count.c instances sharing one `counts` map (pinned in the test's bpffs dir)."""

    def __init__(self, pin_dir: str):
        self.map_pin = os.path.join(pin_dir, "counts")
        self._objs = []

    def load(self, slot: int, verdict: int = -1):
        obj = bpf.BpfObject.open(objects.path("count"))
        obj.set_global("SLOT", struct.pack("<I", slot))
        obj.set_global("VERDICT", struct.pack("<i", verdict))
        obj.set_map_pin_path("counts", self.map_pin)
        obj.load()
        self._objs.append(obj)
        return obj.programs["count"]

    def value(self, slot: int) -> int:
        with bpf.Map.from_pin(self.map_pin) as m:
            return sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", slot)))

    def close(self):
        for o in self._objs:
            o.close()


@pytest.fixture
def counters(bpffs_root):
    c = Counters(bpffs_root)
    yield c
    c.close()


def _attach(pair: Pair, prog, position=Position.tail(), pin=None):
    with netns.enter(pair.node_ns):
        return pair.backend.attach(pair.ifindex, pair.direction, prog, position=position, pin=pin)


def _detach_all(pair: Pair, atts):
    with netns.enter(pair.node_ns):
        for a in atts:
            pair.backend.detach(a)


def test_attach_anchors_and_query_order(pair, counters, bpffs_root):
    progs = [counters.load(i) for i in range(4)]
    a = _attach(pair, progs[0], pin=f"{bpffs_root}/a")
    b = _attach(pair, progs[1], pin=f"{bpffs_root}/b")
    c = _attach(pair, progs[2], Position.head(), pin=f"{bpffs_root}/c")
    d = _attach(pair, progs[3], Position.before(prog_id=b.prog_id), pin=f"{bpffs_root}/d")
    try:
        assert pair.query() == [c.prog_id, a.prog_id, d.prog_id, b.prog_id]
        # Anchoring on a link id works where links exist.
        if pair.mech is not Mechanism.TC:
            e_prog = counters.load(4)
            e = _attach(pair, e_prog, Position.after(link_id=a.link_id), pin=f"{bpffs_root}/e")
            assert pair.query() == [c.prog_id, a.prog_id, e.prog_id, d.prog_id, b.prog_id]
            _detach_all(pair, [e])
    finally:
        _detach_all(pair, [a, b, c, d])
    assert pair.query() == []


def test_chain_continues_and_drops(pair, counters, bpffs_root):
    first = _attach(pair, counters.load(0), pin=f"{bpffs_root}/first")
    assert pair.ping(2)
    n0 = counters.value(0)
    assert n0 >= 2, "the counter saw the pod's packets"
    dropper = _attach(pair, counters.load(1, verdict=2), pin=f"{bpffs_root}/drop")  # TC_ACT_SHOT
    assert not pair.ping(1), "a program returning drop after a 'continue' one drops"
    assert counters.value(0) > n0 and counters.value(1) >= 1, "continue handed the packet on"
    _detach_all(pair, [dropper])
    assert pair.ping(1)
    head_dropper = _attach(pair, counters.load(2, verdict=2), Position.head(), pin=f"{bpffs_root}/hd")
    before = counters.value(0)
    assert not pair.ping(1)
    assert counters.value(0) == before, "a drop at the head stops the chain"
    _detach_all(pair, [head_dropper, first])


def test_update_in_place(pair, counters, bpffs_root):
    old_prog, new_prog, other = counters.load(0), counters.load(1), counters.load(2)
    att = _attach(pair, old_prog, pin=f"{bpffs_root}/u")
    with netns.enter(pair.node_ns):
        with pytest.raises(KernelError) as err:
            pair.backend.update(att, new_prog, expected_prog_id=other.id)
        assert err.value.errno == errno.EPERM
        upd = pair.backend.update(att, new_prog, expected_prog_id=old_prog.id)
    assert upd.prog_id == new_prog.id
    assert pair.query() == [new_prog.id], "replaced in place, not appended"
    assert pair.ping(1)
    assert counters.value(1) >= 1 and counters.value(0) == 0
    _detach_all(pair, [upd])


SURVIVOR = textwrap.dedent(
    """
    import struct, sys
    from nkframe import attach, bpf, netns, objects
    from nkframe.types import Mechanism
    mech, node_ns, ifindex, direction, pin, map_pin = sys.argv[1:]
    obj = bpf.BpfObject.open(objects.path("count"))
    obj.set_global("SLOT", struct.pack("<I", 7))
    obj.set_map_pin_path("counts", map_pin)
    obj.load()
    with netns.enter(node_ns):
        att = attach.backend(Mechanism(mech)).attach(int(ifindex), direction, obj.programs["count"], pin=pin)
    print(att.prog_id)
    """
)


def test_pin_survives_process_exit_and_reopens(pair, counters, bpffs_root):
    pin = os.path.join(bpffs_root, "links", "survivor")
    if pair.mech is Mechanism.TC:
        pin = os.path.join(bpffs_root, "links", "00-survivor-p49280")
    out = subprocess.run(
        [sys.executable, "-c", SURVIVOR, pair.mech.value, pair.node_ns, str(pair.ifindex), pair.direction, pin, counters.map_pin],
        capture_output=True, text=True, check=True,
    )
    prog_id = int(out.stdout.strip())
    assert pair.query() == [prog_id], "still attached after the process that made it exited"
    assert pair.ping(1)
    assert counters.value(7) >= 1, "and still running"
    with netns.enter(pair.node_ns):
        # A TC pin names neither device nor direction: the hook (or the direction) and the
        # device's ifindex say where its filter is; a link's info says it all.
        reopened = open_pinned(pin, hook=Hook.FROM_POD.value, ifindex=pair.ifindex)
        assert reopened.mechanism is pair.mech, "the backend is picked from the pin and the kernel's link info"
        assert (reopened.prog_id, reopened.hook, reopened.direction) == (prog_id, "from-pod", pair.direction)
        assert reopened.tc_priority == _tc_prio_of(pair, prog_id)
        pair.backend.detach(reopened)
    assert pair.query() == []
    assert not os.path.exists(pin)


def _tc_prio_of(pair: Pair, prog_id: int) -> int:
    with netns.enter(pair.node_ns):
        return next(p.tc_priority for p in pair.backend.query(pair.ifindex, pair.direction) if p.prog_id == prog_id)


def test_upsert_attaches_then_updates_what_is_pinned(pair, counters, bpffs_root):
    """One signature on every mechanism: upsert attaches where nothing is pinned and swaps the
    program of what is pinned otherwise; the value carries nkframe's hook and the mechanism's
    direction; a TC filter takes its priority from the pin's name."""
    first, second = counters.load(0), counters.load(1)
    pin = f"{bpffs_root}/up/00-up-p49408"
    with netns.enter(pair.node_ns):
        a, new = pair.backend.upsert(pair.ifindex, pair.direction, first, pin=pin, name="up", hook="from-pod")
        assert new and (a.hook, a.direction, a.name, a.pin) == ("from-pod", pair.direction, "up", pin)
        b, new = pair.backend.upsert(pair.ifindex, pair.direction, second, pin=pin, name="up", hook="from-pod")
    assert not new, "the second upsert updates"
    assert attrs.evolve(b, prog_id=first.id) == a, "same attachment, hook, direction and pin; another program"
    assert pair.query() == [second.id], "swapped in place, not attached again"
    assert pair.ping(1) and counters.value(1) >= 1
    if pair.mech is Mechanism.TC:
        assert a.tc_priority == 49408 == _tc_prio_of(pair, second.id)
    with netns.enter(pair.node_ns):
        reopened = open_pinned(pin, hook="from-pod", ifindex=pair.ifindex)
    assert (reopened.hook, reopened.direction, reopened.prog_id) == ("from-pod", pair.direction, second.id)
    _detach_all(pair, [b])
    assert pair.query() == [] and not os.path.exists(pin)


def test_list_attached_shows_every_mechanism(pair, counters, bpffs_root):
    att = _attach(pair, counters.load(0), pin=f"{bpffs_root}/l")
    found = list_attached(pair.ifindex, netns_name=pair.node_ns, netkit=pair.mech is Mechanism.NETKIT)
    mine = [p for p in found if p.prog_id == att.prog_id]
    assert len(mine) == 1
    assert mine[0].mechanism is pair.mech and mine[0].direction == pair.direction and mine[0].hook == ""
    assert mine[0].name == "count"
    _detach_all(pair, [att])
    found = list_attached(pair.ifindex, netns_name=pair.node_ns, netkit=pair.mech is Mechanism.NETKIT)
    assert att.prog_id not in [p.prog_id for p in found]


def test_open_pinned_refuses_what_is_not_an_attachment(counters, bpffs_root):
    """attach.open_pinned picks the backend from what is pinned: a map, or nothing, is an
    InvalidSpec naming the path, never a wrong AttachedProgram."""
    from nkframe.errors import InvalidSpec

    counters.load(0)  # pins the counters map
    with pytest.raises(InvalidSpec, match="not a pinned link or program \\(map\\)"):
        open_pinned(counters.map_pin)
    with pytest.raises(InvalidSpec, match="nothing pinned"):
        open_pinned(f"{bpffs_root}/nope")
