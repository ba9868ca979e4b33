"""The agent's protocol without root: parsing and validation, error round trips, value encoding,
the pod-netns path rules, and that every method is handled and documented."""

from __future__ import annotations

import json
import os
import re

import pytest

from nkframe import errors
from nkframe.agent import protocol
from nkframe.agent.protocol import ProtocolError, Refused
from nkframe.engine import ReconcileReport
from nkframe.types import AttachedProgram, DeviceKind, Endpoint, EndpointSpec, Mechanism

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "agent.md")
CNI_DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "cni.md")


def _req(**doc) -> bytes:
    return json.dumps(doc).encode() + b"\n"


def test_a_valid_add_request_becomes_an_endpoint_spec():
    spec = {"id": "pod-a", "netns": "pod-a", "addresses": ["10.0.0.5/32"], "mode": "l3"}
    r = protocol.parse_request(_req(v=1, id=3, method="endpoint.add", params={"spec": spec}, target={"node_netns": "n1"}))
    assert r.method == "endpoint.add" and r.id == 3
    assert r.params["spec"] == EndpointSpec(id="pod-a", netns="pod-a", addresses=["10.0.0.5/32"])
    assert r.target == {"node_netns": "n1"}


@pytest.mark.parametrize(
    "line, match",
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (_req(method="nope"), "unknown method"),
        (_req(method="ping", params=[]), "params must be"),
        (_req(method="ping", extra=1), "unknown request field"),
        (_req(method="ping", v=2), "protocol version"),
        (_req(method="ping", id=True), "request id"),
        (_req(method="ping", id={"a": 1}), "request id"),
        (_req(method="ping", id="x" * 200), "longer than 128"),
        (_req(method="endpoint.del"), "required"),
        (_req(method="endpoint.del", params={"id": "a", "force": 1}), "unknown parameter"),
        (_req(method="endpoint.del", params={"id": "../x"}), "endpoint id"),
        (_req(method="endpoint.del", params={"id": 5}), "non-empty string"),
        (_req(method="endpoint.switch", params={"id": "a", "attach": "xdp"}), "not one of"),
        (_req(method="upgrade", params={"ids": "a"}), "list of endpoint ids"),
        (_req(method="upgrade", params={"ids": ["ok", "/bad"]}), "endpoint id"),
        (_req(method="endpoint.add", params={"spec": {"id": "a"}}), "'netns' is required"),
        (_req(method="endpoint.add", params={"spec": {"id": "a", "netns": "p", "mtu": 9}}), "outside 68"),
        (_req(method="endpoint.add", params={"spec": {"id": "a", "netns": "a/b"}}), "may not contain '/'"),
        (_req(method="endpoint.add", params={"spec": "pod-a"}), "must be an object"),
        (_req(method="ping", target={"node_netns": 5}), "target node_netns"),
        (_req(method="ping", target={"where": "x"}), "target must be"),
        (b'{"method": "ping", "params": {"x": "' + b"a" * protocol.MAX_LINE + b'"}}', "longer than"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(line, match):
    with pytest.raises(errors.InvalidSpec, match=match) as e:
        protocol.parse_request(line)
    assert protocol.code_for(e.value) == protocol.EXIT_INPUT


def test_upgrade_ids_may_be_absent_or_null():
    assert "ids" not in protocol.parse_request(_req(method="upgrade")).params
    assert protocol.parse_request(_req(method="upgrade", params={"ids": None})).params == {"ids": None}


@pytest.mark.parametrize(
    "exc, code",
    [
        (errors.EndpointNotFound("no endpoint 'x' under /r"), 5),
        (errors.NetnsNotFound("gone"), 5),
        (errors.EndpointExists("dup"), 2),
        (protocol.AddressInUse("taken"), 2),
        (Refused("no"), 2),
        (ProtocolError("bad"), 2),
        (errors.InvalidSpec("bad"), 2),
        (errors.PluginError("bad plugin"), 2),
        (errors.NotSupported("netkit", "CONFIG_NETKIT is off"), 3),
        (errors.KernelError(17, "attach tcx"), 4),
        (errors.VerifierError(13, "load prog", "R1 invalid mem access"), 4),
        (errors.NkframeError("internal"), 4),
    ],
)
def test_errors_round_trip_with_type_code_and_details(exc, code):
    line = protocol.fail(9, exc)
    doc = json.loads(line)
    assert doc == {"v": 1, "id": 9, "ok": False, "error": doc["error"]}
    assert doc["error"]["code"] == code
    back = protocol.error_from_doc(doc["error"])
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    if isinstance(exc, errors.KernelError):
        assert back.errno == exc.errno
    if isinstance(exc, errors.NotSupported):
        assert (back.feature, back.reason) == (exc.feature, exc.reason)
    if isinstance(exc, errors.VerifierError):
        assert back.log == exc.log


def test_a_foreign_exception_is_sent_as_its_nkframe_base():
    class Mine(errors.EndpointExists):
        pass

    doc = protocol.error_doc(Mine("x"))
    assert doc["type"] == "EndpointExists" and doc["code"] == 2


def test_endpoints_and_reports_survive_the_wire():
    ep = Endpoint(
        spec=EndpointSpec(id="a", netns="/run/netns/a", addresses=["10.0.0.1/32", "fd00::1/128"], options={"policy": {"x": 1}}),
        device_kind=DeviceKind.NETKIT,
        node_ifindex=7,
        mechanism={"from-pod": Mechanism.NETKIT, "to-pod": Mechanism.TC},
        reasons={"device": "netkit supported"},
        programs=[
            AttachedProgram(name="p", hook="from-pod", mechanism=Mechanism.NETKIT, prog_id=3, link_id=4, pin="/x/00-p", ifindex=7),
            AttachedProgram(name="q", hook="to-pod", mechanism=Mechanism.TC, prog_id=5, pin="/x/00-q-p49168", tc_priority=49168, tc_handle=0x4E4B, ifindex=7),
        ],
    )
    wire = json.loads(json.dumps(protocol.endpoint_to_dict(ep)))
    assert protocol.endpoint_from_dict(wire) == ep
    rep = ReconcileReport(healthy=("a",), removed=("b",), problems=("b: netns gone",))
    assert protocol.report_from_dict(json.loads(json.dumps(protocol.report_to_dict(rep)))) == rep


# -- the server side without a kernel: a stand-in Engine records what it is asked.


class FakeEngine:
    """Records calls; the real Engine is exercised by tests/host/test_agent.py."""

    node_netns = None

    def __init__(self, tmp_path):
        from nkframe.pins import Layout

        self.layout = Layout(tmp_path)
        self.calls = []
        self.ep = Endpoint(spec=EndpointSpec(id="a", netns="a"), device_kind=DeviceKind.VETH, node_ifindex=1, mechanism={})

    def datapath_program(self, mode):
        return "fwd" if mode == "l3" else None  # this fake forwards L3 only

    def __getattr__(self, name):
        def record(*a, **kw):
            self.calls.append((name, a))
            if name in ("endpoints", "upgrade"):
                return [self.ep]
            if name in ("reconcile",):
                return ReconcileReport()
            return self.ep

        return record


def _agent(tmp_path, **kw):
    from nkframe.agent.server import Agent

    return Agent(FakeEngine(tmp_path), str(tmp_path / "s.sock"), **kw)


def test_every_method_has_a_handler(tmp_path):
    ag = _agent(tmp_path)
    samples = {
        "endpoint.add": {"spec": {"id": "a", "netns": "podns"}},
        "endpoint.del": {"id": "a"},
        "endpoint.get": {"id": "a"},
        "endpoint.switch": {"id": "a", "attach": "tcx"},
        "upgrade": {"ids": ["a"]},
        "cni.exec": {"env": {"CNI_COMMAND": "VERSION"}, "stdin": ""},
    }
    for method in protocol.METHODS:
        answer = json.loads(ag.handle_line(_req(id=1, method=method, params=samples.get(method, {}))))
        assert answer["ok"] is True, (method, answer)
    assert [c[0] for c in ag.engine.calls] == ["add_endpoint", "remove_endpoint", "get_endpoint", "endpoints", "switch_mechanism", "upgrade", "reconcile", "reconcile"]


def test_an_endpoint_whose_mode_no_plugin_forwards_is_refused(tmp_path):
    ag = _agent(tmp_path)
    answer = json.loads(ag.handle_line(_req(id=1, method="endpoint.add", params={
        "spec": {"id": "a", "netns": "podns", "mode": "l2", "mac": "02:00:00:00:00:01"}})))
    assert answer["ok"] is False
    assert answer["error"]["code"] == 2 and answer["error"]["type"] == "InvalidSpec"
    assert "forwards mode l2" in answer["error"]["message"] and "--plugin l2" in answer["error"]["message"]
    assert ag.engine.calls == []  # refused before the engine was asked


@pytest.mark.parametrize(
    "netns, why",
    [
        ("/tmp/ns", "outside the allowed roots"),
        ("/run/netns/a/b", "outside the allowed roots"),
        ("/run/netns/../../etc/passwd", "not normalised"),
        ("/run/netns//a", "not normalised"),
        ("/run/netns/a/", "not normalised"),
        ("/proc/self/ns/net", "outside the allowed roots"),
        ("/proc/12/ns/mnt", "outside the allowed roots"),
        ("/proc/0/ns/net", "outside the allowed roots"),
        ("/run/netnsX/a", "outside the allowed roots"),
    ],
)
def test_pod_netns_paths_outside_the_roots_are_refused(tmp_path, netns, why):
    with pytest.raises(Refused, match=why):
        _agent(tmp_path).check_pod_netns(netns)


@pytest.mark.parametrize("netns", ["podns", "/run/netns/podns", "/var/run/netns/cni-1234", "/proc/999999999/ns/net", "/proc/999999999/task/999999998/ns/net"])
def test_allowed_pod_netns_forms(tmp_path, netns):
    _agent(tmp_path).check_pod_netns(netns)  # none of them exists: the Engine reports that later


def test_netns_roots_and_proc_are_settings(tmp_path):
    ag = _agent(tmp_path, netns_roots=["/srv/ns"], allow_proc_netns=False)
    ag.check_pod_netns("/srv/ns/a")
    for bad in ("/run/netns/a", "/proc/4242/ns/net"):
        with pytest.raises(Refused):
            ag.check_pod_netns(bad)


def test_every_method_and_error_type_is_documented():
    with open(DOCS) as f:
        text = f.read()
    with open(CNI_DOCS) as f:
        cni_text = f.read()
    for method in protocol.METHODS:
        # The CNI shim's method is documented with the CNI plugin.
        doc, where = (cni_text, "docs/cni.md") if method.startswith("cni.") else (text, "docs/agent.md")
        assert re.search(rf"^\| `{re.escape(method)}` \|", doc, re.M), f"method {method} is missing from {where}"
    for name in protocol.ERROR_TYPES:
        assert f"`{name}`" in text, f"error type {name} is missing from docs/agent.md"


# ----------------------------------------------------------------------------------------------
# cni.exec (nkframe-cni-shim)


def _cni(env=None, stdin="{}", **params):
    p = {"env": {"CNI_COMMAND": "ADD"} if env is None else env, "stdin": stdin, **params}
    return protocol.parse_request(_req(v=1, id=1, method="cni.exec", params=p))


def test_cni_exec_carries_cni_variables_and_stdin_bytes():
    r = _cni({"CNI_COMMAND": "ADD", "CNI_PATH": "/opt/cni/bin", "CNI_IFNAME": "eth0"}, '{"a": "é"}')
    assert r.params["env"] == {"CNI_COMMAND": "ADD", "CNI_PATH": "/opt/cni/bin", "CNI_IFNAME": "eth0"}
    assert r.params["stdin"] == '{"a": "é"}'.encode()


def test_cni_exec_escaped_bytes_come_back_exactly():
    # The shim writes each byte >= 0x80 as \udcXX: valid UTF-8 becomes text again, the rest
    # stays as os.environ would hold it, and stdin is the original bytes.
    line = b'{"v":1,"id":1,"method":"cni.exec","params":{"env":{"CNI_IFNAME":"\\udcc3\\udca9\\udcff"},"stdin":"\\udcc3\\udca9\\udcff"}}\n'
    r = protocol.parse_request(line)
    assert r.params["env"]["CNI_IFNAME"] == "é\udcff"
    assert r.params["stdin"] == b"\xc3\xa9\xff"


@pytest.mark.parametrize(
    "env, why",
    [
        ({"PATH": "/bin"}, "not a CNI_* variable"),
        ({"LD_PRELOAD": "/tmp/x.so"}, "not a CNI_* variable"),
        ({"CNI_": "x"}, "not a CNI_* variable"),
        ({"cni_command": "ADD"}, "not a CNI_* variable"),
        ({"CNI_COMMAND=X": "ADD"}, "not a CNI_* variable"),
        ({"CNI_" + "A" * 61: "x"}, "not a CNI_* variable"),
        ({"CNI_COMMAND": 1}, "must be a string"),
        ({"CNI_ARGS": "a\0b"}, "NUL"),
        ({"CNI_ARGS": "x" * (protocol.CNI_ENV_VALUE_MAX + 1)}, "longer than"),
        ({"CNI_ARGS": "\ud800"}, "lone surrogate"),
        ({f"CNI_X{i}": "" for i in range(protocol.CNI_ENV_MAX_KEYS + 1)}, "at most"),
        (["CNI_COMMAND=ADD"], "must be an object"),
    ],
)
def test_cni_exec_env_is_only_bounded_cni_variables(env, why):
    with pytest.raises(ProtocolError, match=re.escape(why)):
        _cni(env)


def test_cni_exec_stdin_is_bounded_text_and_both_params_are_required():
    with pytest.raises(ProtocolError, match="must be a string"):
        _cni(stdin={"cniVersion": "1.0.0"})
    with pytest.raises(ProtocolError, match="longer than"):
        protocol.validate_params("cni.exec", {"env": {}, "stdin": "x" * (protocol.CNI_STDIN_MAX + 1)})
    with pytest.raises(ProtocolError, match="'stdin' is required"):
        protocol.parse_request(_req(method="cni.exec", params={"env": {}}))
    with pytest.raises(ProtocolError, match="'env' is required"):
        protocol.parse_request(_req(method="cni.exec", params={"stdin": ""}))
    with pytest.raises(ProtocolError, match="unknown parameter"):
        _cni(argv=["x"])


def test_cni_exec_is_served_to_root_only(tmp_path):
    # Peer uids come from SO_PEERCRED; a non-root uid the operator allowed may not have the
    # agent exec plugins from its own CNI_PATH.
    ag = _agent(tmp_path, allowed_uids=(0, 1000))
    line = _req(id=1, method="cni.exec", params={"env": {"CNI_COMMAND": "VERSION"}, "stdin": ""})
    answer = json.loads(ag.handle_line(line, peer_uid=1000))
    assert answer["ok"] is False and answer["error"]["type"] == "Refused" and "root only" in answer["error"]["message"]
    answer = json.loads(ag.handle_line(line, peer_uid=0))
    assert answer["ok"] is True and answer["result"]["exit"] == 0


def test_cni_exec_answer_has_the_shape_the_shim_reads(tmp_path):
    import base64

    ag = _agent(tmp_path)
    line = ag.handle_line(_req(id=1, method="cni.exec", params={"env": {"CNI_COMMAND": "VERSION"}, "stdin": '{"cniVersion": "1.0.0"}'}))
    head = b'{"v":1,"id":1,"ok":true,"result":{"exit":0,"stdout":"'
    assert line.startswith(head) and line.endswith(b'"}}\n'), line
    out = json.loads(base64.b64decode(line[len(head):-4]))
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    # a CNI error is an answer too: exit 1 and the error object on stdout
    res = json.loads(ag.handle_line(_req(id=1, method="cni.exec", params={"env": {"CNI_COMMAND": "ADD"}, "stdin": "not json"})))["result"]
    assert res["exit"] == 1 and json.loads(base64.b64decode(res["stdout"]))["code"] == 6
