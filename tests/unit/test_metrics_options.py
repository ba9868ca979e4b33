"""The agent's Prometheus metrics without a kernel: the --metrics address, the operation
histograms and failure counters, and what the node collector makes of an Engine's answers and
of plugins' nkframe_metrics (the host tier scrapes a real agent: tests/host/test_agent_metrics.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nkframe import errors, hookimpl, pins
from nkframe.agent import protocol
from nkframe.agent.metrics import Address, AgentMetrics, parse_address
from nkframe.cli import cli
from nkframe.plugins import make_manager
from nkframe.probe import Feature, Features
from nkframe.types import AttachedProgram, DeviceKind, Endpoint, EndpointSpec, Mechanism, Metric


@pytest.mark.parametrize("text, host, port", [
    ("9464", "127.0.0.1", 9464),
    (" 9464 ", "127.0.0.1", 9464),
    ("0", "127.0.0.1", 0),
    ("127.0.0.1:9464", "127.0.0.1", 9464),
    ("0.0.0.0:65535", "0.0.0.0", 65535),
    ("10.1.2.3:80", "10.1.2.3", 80),
    ("[::1]:9464", "::1", 9464),
    ("[::]:9464", "::", 9464),
    ("[2001:DB8::1]:1", "2001:db8::1", 1),
])
def test_good_addresses(text, host, port):
    a = parse_address(text)
    assert (a.host, a.port) == (host, port)
    assert parse_address(str(a)) == a  # str() gives back something parse_address takes


def test_address_forms_and_loopback():
    assert str(parse_address("[::1]:9")) == "[::1]:9" and parse_address("[::1]:9").url == "http://[::1]:9/metrics"
    assert parse_address("9464").url == "http://127.0.0.1:9464/metrics"
    assert parse_address("9").loopback and parse_address("[::1]:9").loopback and parse_address("127.9.9.9:9").loopback
    assert not parse_address("0.0.0.0:9").loopback and not parse_address("[::]:9").loopback


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("   ", "empty"),
    (":9464", "is not PORT"),
    ("127.0.0.1", "is not PORT"),
    ("127.0.0.1:", "port ''"),
    ("127.0.0.1:70000", "0 to 65535"),
    ("127.0.0.1:-1", "port '-1'"),
    ("127.0.0.1:0x10", "port '0x10'"),
    ("123456", "is not PORT"),
    ("localhost:9464", "host names are not resolved"),
    ("::1:9464", "in brackets"),
    ("[::1]", "in brackets"),
    ("[::1]9464", "in brackets"),
    ("[127.0.0.1]:9464", "not an IPv6"),
    ("[nope]:9464", "not an IPv6"),
    ("300.1.1.1:9", "not an IPv4"),
    ("http://127.0.0.1:9464", "not a URL"),
    ("127.0.0.1:9464/metrics", "not a URL"),
])
def test_bad_addresses_say_what_to_write(text, words):
    with pytest.raises(errors.InvalidSpec) as e:
        parse_address(text)
    assert words in str(e.value)
    assert "127.0.0.1:9464" in str(e.value)  # every message shows the forms that work


def test_a_bad_address_is_one_line_and_exit_2():
    r = CliRunner().invoke(cli, ["agent", "run", "--metrics", "localhost:9464", "--socket", "/nonexistent/agent.sock"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nkframe: error:") and "--metrics" in lines[0], r.stderr


def test_metric_values_are_checked():
    m = Metric("x_drops", "counter", "h", ("endpoint",), [(("a",), 3)])
    assert m.samples == ((("a",), 3.0),)
    for name in ("nkframe_x", "x_total", "X", "1x", "x-y", ""):
        with pytest.raises(errors.InvalidSpec):
            Metric(name, "gauge", "h")
    with pytest.raises(ValueError):
        Metric("x", "histogram", "h")
    with pytest.raises(errors.InvalidSpec, match="one value per label"):
        Metric("x", "gauge", "h", ("a", "b"), [(("only-one",), 1)])


# ----------------------------------------------------------------------------------------------
# the registry, with a stand-in Engine
# ----------------------------------------------------------------------------------------------


class FakeEngine:
    """What the collector asks an Engine: endpoints(), layout, features, pm, node_netns."""

    def __init__(self, root, endpoints=(), plugins=()):
        self.layout = pins.Layout(root)
        self._eps = list(endpoints)
        self.node_netns = "node-x"
        self.pm = make_manager([], autoload=False, extra=plugins)
        self.features = Features("6.18.0", "1.5.0", None, {
            "netkit": Feature(True, "netkit supported"), "tcx": Feature(False, "kernel older than 6.6")})
        for e in self._eps:
            (self.layout.endpoint_dir(e.id) / "ready").mkdir(parents=True)
            maps = self.layout.map_path("endpoint", e.id, "x").parent
            maps.mkdir()
            (maps / "counts").write_text("")

    def endpoints(self):
        return list(self._eps)


def _ep(eid: str, kind: DeviceKind, mechs: dict[str, Mechanism]) -> Endpoint:
    progs = [AttachedProgram(name=f"p-{hook}", hook=hook, mechanism=m, prog_id=i + 1) for i, (hook, m) in enumerate(mechs.items())]
    return Endpoint(spec=EndpointSpec(id=eid, netns="pod"), device_kind=kind, node_ifindex=3, mechanism=mechs, programs=progs)


def _scrape(m: AgentMetrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(m.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples, name, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class Reporting:
    @hookimpl
    def nkframe_metrics(self, bpffs_root):
        return [Metric("test_drops", "counter", "drops of a test plugin", ("endpoint", "reason"),
                       [(("pod-a", "x"), 7)]),
                Metric("endpoints", "gauge", "a name the agent has already")]


class Broken:
    @hookimpl
    def nkframe_metrics(self, bpffs_root, node_netns):
        raise RuntimeError("map gone")


def test_operations_are_timed_and_failures_counted_by_error_type(tmp_path):
    m = AgentMetrics(FakeEngine(tmp_path), Address("127.0.0.1", 0))
    for _ in range(3):
        with m.operation("add"):
            pass
    with m.operation("remove"):
        pass
    for exc in (errors.EndpointExists("x"), protocol.AddressInUse("y"), errors.EndpointExists("z"), ValueError("a bug")):
        with pytest.raises(type(exc)):
            with m.operation("add"):
                raise exc
    with pytest.raises(errors.EndpointNotFound):
        with m.operation("switch"):
            raise errors.EndpointNotFound("gone")
    s = _scrape(m)
    assert _value(s, "nkframe_endpoint_add_seconds_count") == 3  # successful adds only
    assert _value(s, "nkframe_endpoint_remove_seconds_count") == 1
    assert _value(s, "nkframe_reconcile_seconds_count") == 0
    assert _value(s, "nkframe_operation_failures_total", operation="add", error="EndpointExists") == 2
    assert _value(s, "nkframe_operation_failures_total", operation="add", error="AddressInUse") == 1
    # Not an nkframe error: the agent answers NkframeError ("internal error"), so that's the label.
    assert _value(s, "nkframe_operation_failures_total", operation="add", error="NkframeError") == 1
    assert _value(s, "nkframe_operation_failures_total", operation="switch", error="EndpointNotFound") == 1
    errs = {dict(k[1])["error"] for k in s if k[0] == "nkframe_operation_failures_total"}
    assert errs <= set(protocol.ERROR_TYPES)


def test_the_collector_reads_the_node_and_the_plugins(tmp_path):
    eps = [
        _ep("pod-a", DeviceKind.NETKIT, {"from-pod": Mechanism.NETKIT, "to-pod": Mechanism.NETKIT}),
        _ep("pod-b", DeviceKind.NETKIT, {"from-pod": Mechanism.NETKIT, "to-pod": Mechanism.NETKIT}),
        _ep("pod-c", DeviceKind.VETH, {"from-pod": Mechanism.TCX, "to-pod": Mechanism.TC}),
        _ep("pod-d", DeviceKind.VETH, {}),
    ]
    eng = FakeEngine(tmp_path, eps, plugins=[Reporting(), Broken()])
    # One being added right now (no ready marker), not returned by endpoints() yet.
    eng.layout.endpoint_dir("pod-new").mkdir(parents=True)
    (eng.layout.globals_dir() / "maps").mkdir(parents=True)
    for name in ("m1", "m2"):
        (eng.layout.globals_dir() / "maps" / name).write_text("")
    m = AgentMetrics(eng, Address("127.0.0.1", 0))
    s = _scrape(m)
    assert _value(s, "nkframe_endpoints", device="netkit", mechanism="netkit") == 2
    assert _value(s, "nkframe_endpoints", device="veth", mechanism="tc+tcx") == 1
    assert _value(s, "nkframe_endpoints", device="veth", mechanism="none") == 1
    assert _value(s, "nkframe_endpoints", device="veth", mechanism="tcx") == 0  # every pair, 0 when none
    assert sum(v for (n, _), v in s.items() if n == "nkframe_endpoints") == 4
    assert _value(s, "nkframe_endpoints_incomplete") == 1
    assert _value(s, "nkframe_endpoint_programs", endpoint="pod-a") == 2
    assert _value(s, "nkframe_endpoint_programs", endpoint="pod-d") == 0
    assert _value(s, "nkframe_endpoint_maps", endpoint="pod-c") == 1
    assert _value(s, "nkframe_programs", hook="from-pod", mechanism="netkit") == 2
    assert _value(s, "nkframe_programs", hook="to-pod", mechanism="tc") == 1
    assert _value(s, "nkframe_global_maps") == 2
    assert _value(s, "nkframe_kernel_feature", feature="netkit", supported="true") == 1
    assert _value(s, "nkframe_kernel_feature", feature="tcx", supported="false") == 1
    assert _value(s, "nkframe_agent_info", version=_value_label(s, "nkframe_agent_info", "version"),
                  kernel="6.18.0", libbpf="1.5.0", libxdp="") == 1
    # No event ring under this root: no events metric rather than a made-up zero.
    assert not any(n.startswith("nkframe_events_lost") for n, _ in s)
    # A plugin's metric, prefixed; its clash with the agent's own name is left out and counted,
    # and so is the plugin that raised: the rest of the scrape is there.
    assert _value(s, "nkframe_test_drops_total", endpoint="pod-a", reason="x") == 7
    assert _value(s, "nkframe_scrape_errors_total", source="Reporting") == 1
    assert _value(s, "nkframe_scrape_errors_total", source="Broken") == 1
    assert _value(s, "nkframe_endpoints", device="netkit", mechanism="netkit") == 2  # not the plugin's
    assert _value(s, "nkframe_process_resident_memory_bytes") > 0
    # Every name is nkframe's.
    assert all(n.startswith("nkframe_") for n, _ in s)


def _value_label(samples, name, label):
    for n, labels in samples:
        if n == name:
            return dict(labels)[label]
    return None
