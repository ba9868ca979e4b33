"""The agent: one long-running process owning the :class:`~nkframe.engine.Engine` of one node.

It keeps no state of its own beyond a cache built from the stored specs: the address index
(:mod:`nkframe.agent.addresses`).  On start it takes the socket's lock file, reconciles the
Engine from bpffs (finishing off whatever a killed predecessor left half-done), builds the index
and then serves the protocol of :mod:`nkframe.agent.protocol` on a Unix socket.  Programs stay
attached through their pinned links whether an agent runs or not, so killing it (even with
SIGKILL) and starting another loses no packet; the new one rebuilds the same view from the pins.

Security: the socket is created mode 0600 in a directory that must belong to the agent's user
and be writable by nobody else; each connection's peer credentials (SO_PEERCRED) are checked
against ``allowed_uids`` (root only by default); every request is validated like CLI input; a
request naming another node, or a pod namespace outside the allowed roots or equal to the node's
own namespace, is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import socketserver
import stat
import struct
import threading
import time
from typing import Any, Iterable

from nkframe import errors, inputs, netns
from nkframe.agent import DEFAULT_SOCKET, protocol
from nkframe.agent.addresses import AddressIndex
from nkframe.agent.protocol import Refused, Request
from nkframe.types import DeviceMode

log = logging.getLogger("nkframe.agent")

# Where pod namespaces may live when given as a path: iproute2's and the container runtimes'
# directories.  /proc/<pid>/ns/net (what CNI passes for a process) is allowed separately.
DEFAULT_NETNS_ROOTS = ("/run/netns", "/var/run/netns")
#: Where the one-agent-per-node locks live (see Agent._take_node_lock).
NODE_LOCK_DIR = "/run/nkframe/nodes"
_PROC_NETNS = re.compile(r"^/proc/[1-9][0-9]*/(task/[1-9][0-9]*/)?ns/net$")


class AgentRunning(errors.NkframeError):
    """Another agent already serves this socket."""


def _ns_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _netns_file(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else netns.netns_path(name_or_path)


def check_socket_dir(path: str) -> None:
    """The directory holding the socket must be ours and writable by nobody else.

    A socket's own mode is only as good as its directory: someone who can write there can
    replace the socket with their own.  A missing directory is created mode 0700.
    """
    d = os.path.dirname(os.path.abspath(path)) or "/"
    if not os.path.isdir(d):
        os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid != os.geteuid():
        raise Refused(f"socket directory {d} belongs to uid {st.st_uid}, not to the agent's uid {os.geteuid()}; use a directory of your own (e.g. {os.path.dirname(DEFAULT_SOCKET)})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Refused(f"socket directory {d} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); use a directory only root can write, e.g. {os.path.dirname(DEFAULT_SOCKET)}")


class Agent:
    """Serve one Engine on a Unix socket.

    :param engine: the node's Engine (its node netns and bpffs root are the ones served).
    :param socket_path: where to listen; its directory must be root-only.
    :param netns_roots: directories a pod namespace given as a path may live under.
    :param allow_proc_netns: also accept ``/proc/<pid>/ns/net`` paths (what CNI passes).
    :param allowed_uids: peer uids allowed to talk to the agent (default: root only).
    :param metrics: serve Prometheus metrics there (:func:`nkframe.agent.metrics.parse_address`
        makes one from ``--metrics``); ``None``: no metrics, nothing is counted.
    """

    def __init__(
        self,
        engine,
        socket_path: str = DEFAULT_SOCKET,
        *,
        netns_roots: Iterable[str] = DEFAULT_NETNS_ROOTS,
        allow_proc_netns: bool = True,
        allowed_uids: Iterable[int] = (0,),
        metrics=None,
    ):
        self.engine = engine
        self.socket_path = os.path.abspath(socket_path)
        self.netns_roots = tuple(os.path.normpath(r) for r in netns_roots)
        self.allow_proc_netns = allow_proc_netns
        self.allowed_uids = frozenset(allowed_uids)
        self.started_at = 0.0
        self.startup: dict[str, Any] = {}
        self._server: _Server | None = None
        self._lock_fd = -1
        self._node_lock_fd = -1
        self._serving = False
        # Held for every request that can change which endpoints exist (add, del, reconcile),
        # so the address check, the change and the index update are one step among requests.
        self._admit = threading.Lock()
        self._index = AddressIndex(engine.layout)
        self._inflight = 0
        self._idle = threading.Condition()
        # The namespaces a pod may never be put in: the node's and the agent's own.
        self._own_ns = _ns_key("/proc/self/ns/net")
        self._node_ns = _ns_key(_netns_file(engine.node_netns)) if engine.node_netns else self._own_ns
        self.metrics = None
        if metrics is not None:
            from nkframe.agent.metrics import AgentMetrics

            self.metrics = AgentMetrics(engine, metrics)

    # ------------------------------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the agent's locks: its socket's, and the node's (node namespace + bpffs root),
        so a second agent for the same node is refused whichever socket it names.  Call it
        before anything on the node is touched (``agent run`` attaches the uplink programs only
        after it); :meth:`start` takes them if they are not held yet."""
        if self._lock_fd >= 0:
            return
        check_socket_dir(self.socket_path)
        self._take_lock()
        try:
            self._take_node_lock()
        except BaseException:
            self._release_lock()
            raise

    def release(self) -> None:
        """Drop the locks :meth:`acquire` took (an ``agent run`` that failed before serving)."""
        if self.metrics is not None:
            self.metrics.close()
        self._release_lock()

    def serve_metrics(self) -> None:
        """Start serving metrics (if the agent was given an address); :meth:`start` does it too.
        ``agent run`` calls it right after :meth:`acquire`, so an address that cannot be bound
        stops the agent before it touches the node."""
        if self.metrics is None:
            return
        # Probe once now, not in the first scrape (the feature set is one of the metrics).
        self.engine.features
        self.metrics.serve()

    def _operation(self, method: str):
        """Time and count one operation for the metrics (a no-op without them)."""
        from nkframe.agent.metrics import OPERATIONS

        op = OPERATIONS.get(method)
        if self.metrics is None or op is None:
            return contextlib.nullcontext()
        return self.metrics.operation(op)

    def start(self) -> None:
        """Lock, reconcile from the pins, bind the socket.  Returns when requests can be served."""
        t0 = time.monotonic()
        self.acquire()
        try:
            self.serve_metrics()
            t1 = time.monotonic()
            with self._admit, self._operation("reconcile"):
                report = self.engine.reconcile()
                t2 = time.monotonic()
                # Once, from what reconcile kept: from now on the agent's own requests keep it.
                indexed = self._index.rebuild()
            t3 = time.monotonic()
            self._bind()
        except BaseException:
            self.release()
            raise
        self.started_at = time.time()
        self.startup = {
            "reconcile": protocol.report_to_dict(report),
            "reconcile_seconds": round(t2 - t1, 6),
            "start_seconds": round(time.monotonic() - t0, 6),
        }
        log.info(
            "serving %s for node %s, bpffs %s: %d endpoint(s) healthy, %d cleaned up, reconcile %.1f ms, "
            "address index of %d endpoint(s) %.1f ms",
            self.socket_path, self.engine.node_netns or "(own netns)", self.engine.layout.root,
            len(report.healthy), len(report.removed), 1000 * (t2 - t1), indexed, 1000 * (t3 - t2),
        )
        for p in report.problems:
            log.warning("reconcile: %s", p)

    def _take_lock(self) -> None:
        self._lock_fd = _flock(self.socket_path + ".lock", f"{os.getpid()}",
                               lambda holder: f"another agent (pid {holder}) serves {self.socket_path}; stop it first")

    def _take_node_lock(self) -> None:
        """One agent per node: a lock named after the node's identity (its network namespace's
        inode and the bpffs root's real path), in NODE_LOCK_DIR."""
        import hashlib

        ns = self._node_ns
        root = os.path.realpath(str(self.engine.layout.root))
        ident = f"{ns[0]}:{ns[1]}:{root}" if ns else root
        os.makedirs(NODE_LOCK_DIR, mode=0o700, exist_ok=True)
        path = os.path.join(NODE_LOCK_DIR, "node-" + hashlib.sha256(ident.encode()).hexdigest()[:16] + ".lock")
        self._node_lock_fd = _flock(
            path, f"pid {os.getpid()} on {self.socket_path}",
            lambda holder: (f"another agent already serves this node (node netns {self.engine.node_netns or '(its own)'}, "
                            f"bpffs root {root}): {holder}; one agent per node: stop it first"))

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._node_lock_fd >= 0:
            os.close(self._node_lock_fd)
            self._node_lock_fd = -1

    def _bind(self) -> None:
        # We hold the lock, so a socket file left here is a dead agent's: replace it.
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                raise Refused(f"{self.socket_path} exists and is not a socket; remove it or pick another path")
            os.unlink(self.socket_path)
        old = os.umask(0o177)  # born 0600: no window in which others could connect
        try:
            self._server = _Server(self.socket_path, self)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)

    def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        self._serving = True
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._serving = False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), remove the socket."""
        srv, self._server = self._server, None
        if srv is None:
            return
        if self._serving:
            srv.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)
        srv.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.release()

    # ------------------------------------------------------------------------------------------
    # requests
    # ------------------------------------------------------------------------------------------

    def handle_line(self, line: bytes, peer_uid: int | None = None) -> bytes:
        """One request line in, one response line out.  Never raises.  ``peer_uid``: the
        caller's uid as the socket saw it (None: a caller in this process)."""
        rid = None
        with self._idle:
            self._inflight += 1
        t0 = time.monotonic()
        method = "?"
        try:
            try:
                req = protocol.parse_request(line)
            except errors.NkframeError as e:
                rid = _best_effort_id(line)
                log.info("request %r refused: %s", rid, e)
                return protocol.fail(rid, e)
            except Exception as e:  # noqa: BLE001 - bad input is answered, whatever broke on it
                rid = None
                log.info("request refused: %s: %s", type(e).__name__, e)
                return protocol.fail(rid, protocol.ProtocolError(f"malformed request ({type(e).__name__})"))
            rid, method = req.id, req.method
            try:
                self._check_target(req)
                if req.method == "cni.exec" and peer_uid not in (None, 0):
                    # It runs IPAM plugins from the caller's CNI_PATH as the agent's user.
                    raise Refused(f"cni.exec runs CNI plugins as root and is served to root only, not to uid {peer_uid}")
                result = self.dispatch(req)
            except errors.NkframeError as e:
                log.info("%s %r failed after %.1f ms: %s", method, rid, 1000 * (time.monotonic() - t0), e)
                return protocol.fail(rid, e)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the agent
                log.exception("%s %r: internal error", method, rid)
                return protocol.fail(rid, errors.NkframeError(f"internal error in the agent ({type(e).__name__}: {e}); see the agent's log"))
            log.info("%s %r done in %.1f ms", method, rid, 1000 * (time.monotonic() - t0))
            return protocol.ok(rid, result)
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _check_target(self, req: Request) -> None:
        root = req.target.get("bpffs_root")
        if root is not None and os.path.normpath(root) != os.path.normpath(str(self.engine.layout.root)):
            raise Refused(f"this agent serves bpffs root {self.engine.layout.root}, not {root}; talk to that node's agent or use --no-agent")
        node = req.target.get("node_netns")
        if node is not None:
            try:
                key = _ns_key(_netns_file(node))
            except errors.InvalidSpec:
                key = None
            if key is None or key != self._node_ns:
                raise Refused(f"this agent serves node namespace {self.engine.node_netns or '(its own)'}, not {node}; talk to that node's agent or use --no-agent")

    def check_pod_netns(self, value: str) -> None:
        """A pod namespace must be a name, a path under an allowed root, or /proc/<pid>/ns/net,
        and never the node's (or the agent's) own namespace."""
        if value.startswith("/"):
            norm = os.path.normpath(value)
            if norm != value or "//" in value:
                raise Refused(f"pod netns path {value!r} is not normalised (no '..', '.', '//' or trailing '/')")
            under = any(value.startswith(r + "/") and "/" not in value[len(r) + 1:] for r in self.netns_roots)
            if not under and not (self.allow_proc_netns and _PROC_NETNS.match(value)):
                roots = ", ".join(self.netns_roots) + (", /proc/<pid>/ns/net" if self.allow_proc_netns else "")
                raise Refused(f"pod netns path {value} is outside the allowed roots ({roots})")
            path = value
        else:
            path = netns.netns_path(value)
        key = _ns_key(path)
        if key is not None and key in (self._node_ns, self._own_ns):
            raise Refused(f"pod netns {value} is the node's own network namespace; a pod needs a namespace of its own")

    def dispatch(self, req: Request) -> Any:
        """Carry out one validated request (from the socket, or from ``cni.exec`` in-process)."""
        with self._operation(req.method):
            return self._dispatch(req)

    def _dispatch(self, req: Request) -> Any:
        eng, p = self.engine, req.params
        m = req.method
        if m == "ping":
            return {
                "protocol": protocol.VERSION,
                "version": _version(),
                "pid": os.getpid(),
                "node_netns": eng.node_netns,
                "bpffs_root": str(eng.layout.root),
                "socket": self.socket_path,
                "started_at": self.started_at,
                "uptime": round(time.time() - self.started_at, 3),
                "endpoints": len(eng.layout.endpoint_ids()),
                "startup": self.startup,
                "metrics": self.metrics.bound.url if self.metrics is not None and self.metrics.bound else None,
            }
        if m == "endpoint.add":
            spec = p["spec"]
            self.check_pod_netns(spec.netns)
            mode = spec.mode.value
            others = [m.value for m in DeviceMode if m.value != mode and eng.datapath_program(m.value)]
            if others and not spec.single and eng.datapath_program(mode) is None:
                # (A VM endpoint's single device has no programs: no datapath plugin needed.)
                # A device with no forwarding is never what the caller meant (CNI's "mode": "l2"
                # with an agent started without the L2 plugin gave pods no datapath at all).
                raise errors.InvalidSpec(
                    f"no plugin loaded in this agent forwards mode {mode} endpoints (only "
                    f"{', '.join(others)}), so the pod "
                    f"would get a device and no datapath; restart the agent with a datapath for "
                    f"{mode} (nkframe's own: 'nkframe agent run --plugin {mode} ...')")
            from nkframe.netlink import links

            with links.batch():  # the MACs are read on the add's sockets
                with self._admit:
                    self._check_addresses(spec)
                    ep = eng.add_endpoint(spec)
                    self._index.record(ep.spec)
                macs = _device_macs(eng, ep)
            return {"endpoint": protocol.endpoint_to_dict(ep), "macs": macs}
        if m == "endpoint.del":
            with self._admit:
                try:
                    eng.remove_endpoint(p["id"])
                finally:
                    # A remove that failed half-way may or may not have taken the directory.
                    self._index.forget(p["id"])
            return {"id": p["id"]}
        if m == "endpoint.get":
            return {"endpoint": protocol.endpoint_to_dict(eng.get_endpoint(p["id"]))}
        if m == "endpoint.list":
            return {"endpoints": [protocol.endpoint_to_dict(e) for e in eng.endpoints()]}
        if m == "endpoint.switch":
            return {"endpoint": protocol.endpoint_to_dict(eng.switch_mechanism(p["id"], p["attach"]))}
        if m == "upgrade":
            return {"endpoints": [protocol.endpoint_to_dict(e) for e in eng.upgrade(p.get("ids"))]}
        if m == "cni.exec":
            from nkframe.agent.cni import exec_cni

            return exec_cni(self, p["env"], p["stdin"])
        if m in ("reconcile", "gc"):
            with self._admit:
                report = eng.reconcile()
                self._index.sync()  # drops what it removed
            return protocol.report_to_dict(report)
        raise protocol.ProtocolError(f"method {m} has no handler")  # METHODS and this list differ: a bug

    def _check_addresses(self, spec) -> None:
        if not spec.addresses:
            return
        # Catch up first with changes made behind the agent's back (--no-agent, an embedded
        # Engine): one directory read, specs only of endpoints not seen yet.
        self._index.sync()
        self._index.check(spec)


def _flock(path: str, holder: str, refused) -> int:
    """An exclusive flock on ``path`` (not a pid file: the kernel drops it when the holder dies,
    SIGKILL included) with ``holder`` written in; AgentRunning(refused(their holder)) if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        theirs = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AgentRunning(refused(theirs)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}\n".encode(), 0)
    return fd


def _best_effort_id(line: bytes) -> Any:
    try:
        rid = inputs.loads(line).get("id")
    except Exception:  # noqa: BLE001 - only for echoing the id back
        return None
    return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nkframe")
    except Exception:  # noqa: BLE001
        return "unknown"


# ----------------------------------------------------------------------------------------------
# socket plumbing
# ----------------------------------------------------------------------------------------------

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end, as the kernel saw it at connect()."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


class _Handler(socketserver.StreamRequestHandler):
    rbufsize = 65536

    def handle(self) -> None:
        agent: Agent = self.server.agent  # type: ignore[attr-defined]
        pid, uid, _gid = peer_credentials(self.request)
        if uid not in agent.allowed_uids:
            log.warning("refused connection from pid %d uid %d", pid, uid)
            self._send(protocol.fail(None, Refused(f"uid {uid} may not use the nkframe agent (root only)")))
            return
        while True:
            try:
                line = self.rfile.readline(protocol.MAX_LINE + 1)
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if len(line) > protocol.MAX_LINE:
                self._send(protocol.fail(None, protocol.ProtocolError(f"request longer than {protocol.MAX_LINE} bytes; closing the connection")))
                return
            if not line.strip():
                continue
            if not self._send(agent.handle_line(line, uid)):
                return

    def _send(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except (BrokenPipeError, ConnectionError):
            return False


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # an idle client connection must not hold up shutdown
    block_on_close = False
    # Clients retry a full queue for a while (wire.BUSY_WAIT): 1,024 waiting connections cover
    # the documented concurrency (runtimes start pods by the dozen) with room to spare.
    request_queue_size = 1024

    def __init__(self, path: str, agent: Agent):
        self.agent = agent
        super().__init__(path, _Handler)


# ----------------------------------------------------------------------------------------------


def run(agent: Agent) -> int:
    """Start and serve until SIGTERM or SIGINT; then finish requests in flight and exit 0."""
    agent.start()
    stopping = threading.Event()

    def on_signal(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %d: stopping", signum)
        # shutdown() waits for serve_forever, which runs in this (the main) thread: ask from another.
        threading.Thread(target=agent._server.shutdown if agent._server else (lambda: None), daemon=True).start()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.serve_forever()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        agent.stop()
    return 0


def _device_macs(eng, ep) -> dict:
    """The hardware addresses of an endpoint's two ends as the kernel reports them.

    CNI results carry them: runtimes (podman's CNI backend among them) refuse an interface
    without a parseable ``mac``.  A netkit device in L3 mode reports 00:00:00:00:00:00 (it has
    no link-layer address of its own), which is what it is.  Best effort: an end that cannot be
    read (a device gone in the meantime) is left out."""
    from nkframe.netlink import links

    out = {}
    for key, name, ns in (("node", ep.spec.node_ifname, eng.node_netns), ("pod", ep.spec.ifname, ep.spec.netns)):
        try:
            mac = links.get_link(name, netns=ns).address
        except Exception:  # noqa: BLE001 - best effort, see above
            continue
        if mac:
            out[key] = mac
    return out
