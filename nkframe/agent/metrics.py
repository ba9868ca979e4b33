"""The agent's Prometheus metrics (``nkframe agent run --metrics ADDR``), with prometheus-client.

Two kinds of figures:

* **what the agent did**, counted as it happens in this process: latency histograms of adds,
  removes and reconciles, failures by operation and error type.  They start at zero with each
  agent process (Prometheus' ``rate()``/``increase()`` handle the reset).
* **what the node is**, read when a scraper asks (:class:`NodeCollector`): endpoints by device
  and mechanism, their programs and maps, the probe's feature set, events lost, and what plugins
  report through ``nkframe_metrics`` (the policy plugin: verdicts and drops per endpoint).  Like
  everything else in the agent these come from bpffs and the kernel, so a restarted agent
  reports the same node.

A scrape takes neither the Engine's lock nor the agent's admission lock: it reads pins and the
kernel the way ``endpoint.list`` does, so adds and removes go on while a scrape runs.

Label values come from bounded sets: device kinds, mechanisms, hooks, nkframe's error types,
operations, feature names, and endpoint ids (one per pod on the node).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import threading
import time
from typing import Iterator

import attrs

from nkframe import errors
from nkframe.types import DeviceKind, Mechanism, Metric

log = logging.getLogger("nkframe.agent")

PREFIX = "nkframe_"
DEFAULT_HOST = "127.0.0.1"
#: Operations whose failures are counted (``nkframe_operation_failures_total{operation}``),
#: by the protocol method that performs them.  ``gc`` is a reconcile.
OPERATIONS = {
    "endpoint.add": "add",
    "endpoint.del": "remove",
    "endpoint.switch": "switch",
    "upgrade": "upgrade",
    "reconcile": "reconcile",
    "gc": "reconcile",
}
#: Operations with a latency histogram: name of the histogram (without the prefix).
HISTOGRAMS = {
    "add": ("endpoint_add_seconds", "Time to add an endpoint, from the request's dispatch to its answer (successful adds)"),
    "remove": ("endpoint_remove_seconds", "Time to remove an endpoint, from the request's dispatch to its answer (successful removes)"),
    "reconcile": ("reconcile_seconds", "Time of a reconcile: the agent's start-up reconcile and reconcile/gc requests (successful ones)"),
}
# Adds take tens of milliseconds, a reconcile over a thousand endpoints seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# ----------------------------------------------------------------------------------------------
# the address to listen on
# ----------------------------------------------------------------------------------------------


@attrs.frozen
class Address:
    """Where the metrics are served: an IP literal and a TCP port (0: the kernel picks one)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}/metrics"

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host.split("%", 1)[0]).is_loopback


_PORT = re.compile(r"^[0-9]{1,5}$")


def parse_address(text: str) -> Address:
    """``PORT`` (on 127.0.0.1), ``IPV4:PORT`` or ``[IPV6]:PORT``.  Raises InvalidSpec saying
    what to write instead.  Host names are refused: the address is what the socket binds."""
    example = "e.g. 9464, 127.0.0.1:9464, [::1]:9464, or 0.0.0.0:9464 for every interface"
    s = text.strip() if isinstance(text, str) else ""
    if not s:
        raise errors.InvalidSpec(f"metrics address is empty; give a port or an address and port ({example})")
    if _PORT.match(s):
        return Address(DEFAULT_HOST, _port(s, text, example))
    if "/" in s:
        raise errors.InvalidSpec(f"metrics address {text!r}: give the address to listen on, not a URL or path "
                                 f"(the metrics are served on every path; {example})")
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep:
            raise errors.InvalidSpec(f"metrics address {text!r}: an IPv6 address goes in brackets followed by ':PORT' ({example})")
        version = 6
    else:
        host, sep, port = s.rpartition(":")
        if not sep or not host:
            raise errors.InvalidSpec(f"metrics address {text!r} is not PORT, IPV4:PORT or [IPV6]:PORT ({example})")
        if ":" in host:
            raise errors.InvalidSpec(f"metrics address {text!r}: write an IPv6 address in brackets, [ADDRESS]:PORT ({example})")
        version = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise errors.InvalidSpec(f"metrics address {text!r}: {host!r} is not an IP{'v6' if version == 6 else 'v4'} address "
                                 f"(host names are not resolved; {example})") from None
    if ip.version != version:
        raise errors.InvalidSpec(f"metrics address {text!r}: {host!r} is not an IP{'v6' if version == 6 else 'v4'} address ({example})")
    return Address(str(ip), _port(port, text, example))


def _port(s: str, text: str, example: str) -> int:
    if not _PORT.match(s) or int(s) > 65535:
        raise errors.InvalidSpec(f"metrics address {text!r}: port {s!r} is not a number from 0 to 65535 ({example})")
    return int(s)


# ----------------------------------------------------------------------------------------------
# what the agent did
# ----------------------------------------------------------------------------------------------


def error_type(exc: BaseException) -> str:
    """The error type a client is told (``error.type`` on the wire): one of nkframe's error
    classes, ``NkframeError`` for anything else (an internal error).  A bounded set."""
    from nkframe.agent import protocol

    return protocol.error_doc(exc)["type"]


class AgentMetrics:
    """The agent's registry: operation histograms and failure counters, the node collector, the
    process' own figures (``nkframe_process_*``), and the HTTP server that serves them."""

    def __init__(self, engine, address: Address):
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.engine = engine
        self.address = address
        self.registry = CollectorRegistry(auto_describe=True)
        self._histograms = {
            op: Histogram(PREFIX + name, doc, buckets=BUCKETS, registry=self.registry)
            for op, (name, doc) in HISTOGRAMS.items()
        }
        self._failures = Counter(
            PREFIX + "operation_failures", "Operations that failed, by operation and nkframe error type",
            ("operation", "error"), registry=self.registry)
        self.collector = NodeCollector(engine)
        self.registry.register(self.collector)
        ProcessCollector(namespace="nkframe", registry=self.registry)
        self._httpd = None
        self._thread: threading.Thread | None = None
        self.bound: Address | None = None

    @contextlib.contextmanager
    def operation(self, op: str) -> Iterator[None]:
        """Time ``op`` (a value of :data:`OPERATIONS`); count it as a failure if it raises."""
        t0 = time.monotonic()
        try:
            yield
        except Exception as e:
            self._failures.labels(op, error_type(e)).inc()
            raise
        hist = self._histograms.get(op)
        if hist is not None:
            hist.observe(time.monotonic() - t0)

    # -- serving -------------------------------------------------------------------------------

    def serve(self) -> Address:
        """Bind and serve in a daemon thread; the address actually bound (port 0 picks one).
        A bind that fails raises KernelError naming the address."""
        from prometheus_client import start_http_server

        if self._httpd is not None:
            return self.bound
        try:
            self._httpd, self._thread = start_http_server(self.address.port, self.address.host, registry=self.registry)
        except OSError as e:
            if e.errno:  # KernelError names the errno: "...: EADDRINUSE (Address already in use)"
                raise errors.KernelError(e.errno, f"cannot serve metrics on {self.address} (pick another address "
                                         f"with --metrics)") from None
            raise errors.NkframeError(f"cannot serve metrics on {self.address}: {e}") from None
        self.bound = Address(self.address.host, int(self._httpd.server_address[1]))
        log.info("metrics on %s", self.bound.url)
        if not self.bound.loopback:
            log.warning("metrics served on %s, not a loopback address: anyone who can reach it reads endpoint ids "
                        "and counters (there is no authentication)", self.bound)
        return self.bound

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


# ----------------------------------------------------------------------------------------------
# what the node is (read at scrape time)
# ----------------------------------------------------------------------------------------------


class NodeCollector:
    """Figures read from bpffs and the kernel at each scrape (a prometheus-client collector)."""

    def __init__(self, engine):
        self.engine = engine
        self._errors: dict[str, int] = {}
        self._lock = threading.Lock()

    def describe(self):
        return []  # read at scrape time only: no collect() when the collector is registered

    def _failed(self, source: str, exc: BaseException) -> None:
        log.warning("metrics: %s unreadable: %s", source, exc)
        with self._lock:
            self._errors[source] = self._errors.get(source, 0) + 1

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        out = []
        for source, part in (("endpoints", self._endpoints), ("features", self._features), ("events", self._events)):
            try:
                out += part()
            except Exception as e:  # noqa: BLE001 - one unreadable part must not cost the scrape
                self._failed(source, e)
        names = {m.name for m in out}
        for plugin, metrics in self._plugins():
            for m in metrics:
                fam = _family(m)
                if fam.name in names:
                    self._failed(plugin, errors.PluginError(f"metric {fam.name} is reported twice; the second is left out"))
                    continue
                names.add(fam.name)
                out.append(fam)
        errs = CounterMetricFamily(PREFIX + "scrape_errors", "Parts of a scrape that could not be read, by source (see the agent's log)", labels=("source",))
        with self._lock:
            for source, n in sorted(self._errors.items()):
                errs.add_metric((source,), n)
        out.append(errs)
        return out

    # -- parts ---------------------------------------------------------------------------------

    def _endpoints(self) -> list:
        from prometheus_client.core import GaugeMetricFamily

        eng = self.engine
        layout = eng.layout
        # Complete endpoints only (the ready marker): one being added or taken apart right now,
        # or half-built by a crash, is counted apart.
        eps = [e for e in eng.endpoints() if layout.ready_marker(e.id).is_dir()]
        done = {e.id for e in eps}
        incomplete = sum(1 for eid in layout.endpoint_ids() if eid not in done and not layout.ready_marker(eid).is_dir())

        by_kind: dict[tuple[str, str], int] = {(d.value, m.value): 0 for d in DeviceKind for m in Mechanism}
        programs: dict[tuple[str, str], int] = {}
        g_eps = GaugeMetricFamily(PREFIX + "endpoints", "Complete endpoints by device kind and attach mechanism "
                                  "(mechanisms of its hooks joined with '+' when they differ, 'none' without programs)",
                                  labels=("device", "mechanism"))
        g_progs = GaugeMetricFamily(PREFIX + "endpoint_programs", "Programs attached for an endpoint", labels=("endpoint",))
        g_maps = GaugeMetricFamily(PREFIX + "endpoint_maps", "Maps pinned for an endpoint alone (shared maps are in nkframe_global_maps)", labels=("endpoint",))
        for ep in eps:
            mech = "+".join(sorted({str(m) for m in ep.mechanism.values()})) or "none"
            key = (str(ep.device_kind), mech)
            by_kind[key] = by_kind.get(key, 0) + 1
            for p in ep.programs:
                pk = (p.hook, str(p.mechanism))
                programs[pk] = programs.get(pk, 0) + 1
            g_progs.add_metric((ep.id,), len(ep.programs))
            g_maps.add_metric((ep.id,), _count_dir(layout.map_path("endpoint", ep.id, "x").parent))
        for key, n in sorted(by_kind.items()):
            g_eps.add_metric(key, n)
        g_all = GaugeMetricFamily(PREFIX + "programs", "Programs attached for endpoints, by hook and mechanism", labels=("hook", "mechanism"))
        for key, n in sorted(programs.items()):
            g_all.add_metric(key, n)
        g_inc = GaugeMetricFamily(PREFIX + "endpoints_incomplete", "Endpoints without the ready marker: being added or removed now, or left half-done by a crash (reconcile takes those apart)")
        g_inc.add_metric((), incomplete)
        g_glob = GaugeMetricFamily(PREFIX + "global_maps", "Maps pinned in the root's globals/maps, shared by endpoints")
        g_glob.add_metric((), _count_dir(layout.globals_dir() / "maps"))
        return [g_eps, g_inc, g_progs, g_maps, g_all, g_glob]

    def _features(self) -> list:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        f = self.engine.features
        g = GaugeMetricFamily(PREFIX + "kernel_feature", "What the kernel supports, as 'nkframe probe' found it (1 per feature; supported says which)",
                              labels=("feature", "supported"))
        for name in sorted(f):
            g.add_metric((name, "true" if f[name].supported else "false"), 1)
        info = InfoMetricFamily(PREFIX + "agent", "The agent's software and kernel",
                                value={"version": _version(), "kernel": f.kernel, "libbpf": f.libbpf, "libxdp": f.libxdp or ""})
        return [g, info]

    def _events(self) -> list:
        from prometheus_client.core import CounterMetricFamily

        from nkframe import events

        lost = events.lost_counts(self.engine.layout.globals_dir() / "maps")
        if lost is None:
            return []
        c = CounterMetricFamily(PREFIX + "events_lost", "Drop events the programs could not write to the event ring, by reason "
                                "(ring_full: nobody read in time; rate_limited: over the per-CPU budget)", labels=("reason",))
        for reason, n in lost.items():
            c.add_metric((reason,), n)
        return [c]

    def _plugins(self) -> Iterator[tuple[str, list[Metric]]]:
        caller = getattr(self.engine.pm.hook, "nkframe_metrics", None)
        if caller is None or getattr(caller, "spec", None) is None:
            return
        kwargs = {"bpffs_root": str(self.engine.layout.root), "node_netns": self.engine.node_netns}
        for impl in caller.get_hookimpls():
            name = impl.plugin_name
            if name.isdigit():  # registered without a name: pluggy names it by id()
                name = getattr(impl.plugin, "__name__", None) or type(impl.plugin).__qualname__
            try:
                res = impl.function(*[kwargs[a] for a in impl.argnames])
                metrics = [m for m in (res or ()) if _check_metric(m, name)]
            except Exception as e:  # noqa: BLE001 - one plugin's failure must not hide the rest
                self._failed(name, e)
                continue
            yield name, metrics


def _check_metric(m, plugin: str) -> bool:
    if not isinstance(m, Metric):
        raise errors.PluginError(f"plugin {plugin}: nkframe_metrics returned {type(m).__name__}, not nkframe.types.Metric")
    return True


def _family(m: Metric):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cls = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
    fam = cls(PREFIX + m.name, m.help, labels=m.labels)
    for labels, value in m.samples:
        fam.add_metric(labels, value)
    return fam


def _count_dir(path) -> int:
    try:
        return len(os.listdir(path))
    except FileNotFoundError:
        return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nkframe")
    except Exception:  # noqa: BLE001
        return "unknown"
