"""The attach package's shape: one Backend protocol whose verbs have the same signature on the
netkit, TCX and TC backends, and everything mechanism-specific kept inside nkframe.attach."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from nkframe import attach
from nkframe.agent.protocol import endpoint_from_dict, endpoint_to_dict
from nkframe.attach import tc
from nkframe.attach.base import Backend
from nkframe.pins import Layout, parse_pin_name
from nkframe.types import AttachedProgram, DeviceKind, Endpoint, EndpointSpec, Mechanism

VERBS = ("attach", "update", "upsert", "detach", "query", "open_pinned", "pin_path")
BACKENDS = {m: attach.backend(m) for m in Mechanism}


def _protocol_signature(verb: str) -> inspect.Signature:
    sig = inspect.signature(getattr(Backend, verb))
    return sig.replace(parameters=list(sig.parameters.values())[1:])  # without self


@pytest.mark.parametrize("verb", VERBS)
def test_every_backend_has_the_protocol_signature(verb):
    want = _protocol_signature(verb)
    got = {m.value: inspect.signature(getattr(b, verb)) for m, b in BACKENDS.items()}
    assert all(sig == want for sig in got.values()), f"{verb}: protocol {want}, backends {got}"


def test_every_backend_names_its_mechanism_directions_and_pins():
    for m, b in BACKENDS.items():
        assert b.mechanism is m
        assert b.directions and all(isinstance(d, str) for d in b.directions)
        assert b.pin_kind in ("link", "prog")
    assert BACKENDS[Mechanism.TC].pin_kind == "prog", "cls_bpf has no link: the pin holds the program"


def test_pin_paths(tmp_path):
    layout = Layout(tmp_path)
    for m in (Mechanism.NETKIT, Mechanism.TCX):
        p = BACKENDS[m].pin_path(layout, "endpoint", "ep", "from-pod", 2, "pol")
        assert p == layout.link_path("endpoint", "ep", "from-pod", 2, "pol")
    p = BACKENDS[Mechanism.TC].pin_path(layout, "endpoint", "ep", "to-pod", 1, "fwd")
    assert p == layout.tc_path("endpoint", "ep", "to-pod", 1, "fwd", tc.chain_priority(1))
    assert parse_pin_name(p) == (1, "fwd", tc.PRIO_BASE + 2 * tc.PRIO_STEP)


def test_tc_pin_path_beside_a_running_chain_keeps_order_and_misses_its_priorities(tmp_path):
    """An upgrade's new TC chain goes beside the old one: one offset for every position, none
    of the old priorities, each new filter between its old neighbours."""
    layout = Layout(tmp_path)
    b = BACKENDS[Mechanism.TC]

    def old(prios):
        return [AttachedProgram(name="x", hook="to-pod", mechanism=Mechanism.TC, prog_id=i + 1, tc_priority=p,
                                tc_handle=tc.HANDLE) for i, p in enumerate(prios)]

    chain = old([tc.chain_priority(i) for i in range(3)])
    new = [parse_pin_name(b.pin_path(layout, "endpoint", "ep", "to-pod", i, "x", beside=chain))[2] for i in range(4)]
    assert not set(new) & {p.tc_priority for p in chain}
    assert new == sorted(new) and len({n - tc.chain_priority(i) for i, n in enumerate(new)}) == 1
    assert all(tc.PRIO_BASE <= n <= tc.PRIO_MAX for n in new)
    again = old(new)  # the next upgrade goes beside those
    newer = [parse_pin_name(b.pin_path(layout, "endpoint", "ep", "to-pod", i, "x", beside=again))[2] for i in range(2)]
    assert not set(newer) & set(new)
    for lb in (BACKENDS[Mechanism.NETKIT], BACKENDS[Mechanism.TCX]):  # a link's name holds no place
        assert lb.pin_path(layout, "endpoint", "ep", "to-pod", 0, "x", beside=chain) == \
            lb.pin_path(layout, "endpoint", "ep", "to-pod", 0, "x")


def test_available_mechanisms_best_first():
    class Feats:
        def __init__(self, *on):
            self.on = set(on)

        def supported(self, name):
            return name in self.on

        def __getitem__(self, name):
            return type("F", (), {"reason": f"{name} is off"})()

    every = Feats("netkit", "tcx", "tc")
    assert attach.available(every, DeviceKind.NETKIT) == [Mechanism.NETKIT, Mechanism.TCX, Mechanism.TC]
    assert attach.available(every, DeviceKind.VETH) == [Mechanism.TCX, Mechanism.TC]
    assert attach.available(every, None) == [Mechanism.TCX, Mechanism.TC], "a node device never gets netkit links"
    assert attach.available(Feats("tc"), DeviceKind.NETKIT) == [Mechanism.TC]
    assert "netkit device" in attach.why_not(Mechanism.NETKIT, every, DeviceKind.VETH, "forced")
    assert attach.why_not(None, Feats()) == "tc is off"


def test_the_engine_names_no_mechanism():
    """Whatever differs between mechanisms lives in nkframe.attach: the engine's modules never
    name one (Mechanism.TC, .TCX, .NETKIT)."""
    engine_dir = Path(attach.__file__).parent.parent / "engine"
    found = []
    for f in sorted(engine_dir.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "Mechanism" and node.attr in {m.name for m in Mechanism}):
                found.append(f"{f.name}:{node.lineno} Mechanism.{node.attr}")
    assert found == []


def test_agent_json_carries_hook_and_direction_and_reads_older_and_newer_agents():
    prog = AttachedProgram(name="p", hook="from-pod", direction="peer", mechanism=Mechanism.NETKIT, prog_id=3,
                           link_id=4, pin="/x/00-p", ifindex=7)
    ep = Endpoint(spec=EndpointSpec(id="a", netns="ns"), device_kind=DeviceKind.NETKIT, node_ifindex=7,
                  mechanism={"from-pod": Mechanism.NETKIT}, programs=[prog])
    d = endpoint_to_dict(ep)
    assert (d["programs"][0]["hook"], d["programs"][0]["direction"]) == ("from-pod", "peer")
    assert endpoint_from_dict(d).programs == (prog,)
    older = {k: v for k, v in d["programs"][0].items() if k != "direction"}
    assert endpoint_from_dict({**d, "programs": [older]}).programs[0].direction == ""
    newer = {**d["programs"][0], "something_new": 1}
    assert endpoint_from_dict({**d, "programs": [newer]}).programs == (prog,)
