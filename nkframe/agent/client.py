"""A client for the agent with the Engine's verbs, so front ends use either interchangeably.

    with AgentClient("/run/nkframe/agent.sock") as c:
        ep = c.add_endpoint(EndpointSpec(id="pod-a", netns="pod-a", addresses=["10.0.1.5/32"]))

Errors come back as the nkframe error the agent raised (``EndpointNotFound``, ``InvalidSpec``...),
so ``except`` clauses and the CLI's exit codes work the same with and without an agent.  One
client holds one connection and sends one request at a time (a lock serialises threads); open
one client per thread to work in parallel.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import sys
import threading
from typing import Any, Iterable

import attrs

from nkframe.agent import DEFAULT_SOCKET, protocol, wire
from nkframe.agent.protocol import AgentUnavailable
from nkframe.engine import ReconcileReport
from nkframe.types import AttachMode, Endpoint, EndpointSpec

SOCKET_ENV = "NKFRAME_AGENT_SOCKET"


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class AgentClient:
    """A connection to the agent.

    :param socket_path: the agent's socket.
    :param node_netns: / :param bpffs_root: the node the caller means; sent with every request
        so an agent serving another node refuses instead of acting on the wrong one.
    :param attach: a mechanism to force on endpoints added through this client (``auto``: the
        agent's choice), as the CLI's ``--attach`` does without an agent.
    :param timeout: seconds to wait for one answer (adds and upgrades can take a while).
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        node_netns: str | None = None,
        bpffs_root: str | None = None,
        attach: AttachMode | str = AttachMode.AUTO,
        timeout: float = 120.0,
    ):
        self.socket_path = socket_path or default_socket()
        self.target = {"node_netns": node_netns, "bpffs_root": bpffs_root}
        self.attach = AttachMode(str(attach).lower())
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        try:
            self._conn = wire.Connection(self.socket_path, timeout)
        except wire.WireError as e:
            path = self.socket_path
            if e.kind == wire.MISSING:
                raise AgentUnavailable(f"no agent socket at {path} (start one: nkframe agent run)") from None
            if e.kind == wire.STALE:
                raise AgentUnavailable(f"no agent listens on {path} (a stale socket of a stopped agent; start one: nkframe agent run)") from None
            if e.kind == wire.BUSY:
                raise AgentUnavailable(e.detail) from None
            if e.kind == wire.DENIED:
                raise PermissionError(errno.EACCES, f"cannot connect to the agent at {path}: permission denied (the socket is root-only)") from None
            raise e.error from None  # anything else is not "no agent": the caller sees it as it is

    # -- plumbing
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Send one request and return its result; an error answer is raised as its nkframe type."""
        with self._lock:
            rid = next(self._ids)
            line = protocol.encode_request(method, params, id=rid, target=self.target)
            try:
                raw = self._conn.roundtrip(line, protocol.MAX_LINE * 64)
            except wire.WireError as e:
                if e.kind == wire.TIMEOUT:
                    raise AgentUnavailable(f"the agent at {self.socket_path} did not answer {method} in time") from None
                broke = f"lost the connection to the agent at {self.socket_path} during {method} ({e.detail})" if e.kind == wire.LOST else f"the agent at {self.socket_path} closed the connection during {method}"
                raise AgentUnavailable(f"{broke}; if it was an add or remove, check the endpoint again once an agent runs") from None
        doc = json.loads(raw)
        if doc.get("ok"):
            if doc.get("id") != rid:
                raise AgentUnavailable(f"the agent answered request {doc.get('id')!r}, not {rid}")
            return doc.get("result")
        raise protocol.error_from_doc(doc.get("error") or {})

    # -- the Engine's verbs
    def ping(self) -> dict:
        return self.call("ping")

    def add_endpoint(self, spec: EndpointSpec) -> Endpoint:
        if self.attach is not AttachMode.AUTO and spec.attach is AttachMode.AUTO:
            spec = attrs.evolve(spec, attach=self.attach)
        from nkframe import specstore

        return protocol.endpoint_from_dict(self.call("endpoint.add", spec=specstore.to_dict(spec))["endpoint"])

    def remove_endpoint(self, endpoint_id: str) -> None:
        self.call("endpoint.del", id=endpoint_id)

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return protocol.endpoint_from_dict(self.call("endpoint.get", id=endpoint_id)["endpoint"])

    def endpoints(self) -> list[Endpoint]:
        return [protocol.endpoint_from_dict(d) for d in self.call("endpoint.list")["endpoints"]]

    def switch_mechanism(self, endpoint_id: str, attach: AttachMode | str = AttachMode.AUTO) -> Endpoint:
        return protocol.endpoint_from_dict(self.call("endpoint.switch", id=endpoint_id, attach=str(AttachMode(str(attach).lower())))["endpoint"])

    def upgrade(self, endpoint_ids: Iterable[str] | None = None) -> list[Endpoint]:
        ids = None if endpoint_ids is None else list(endpoint_ids)
        return [protocol.endpoint_from_dict(d) for d in self.call("upgrade", ids=ids)["endpoints"]]

    def reconcile(self) -> ReconcileReport:
        return protocol.report_from_dict(self.call("reconcile"))

    def gc(self) -> ReconcileReport:
        return protocol.report_from_dict(self.call("gc"))


def connect(socket_path: str | None = None, *, warn=None, **kw) -> AgentClient | None:
    """A client if an agent listens on ``socket_path``, else None (no socket, or a stale one
    left by an agent that was killed: then ``warn`` is called with a sentence)."""
    path = socket_path or default_socket()
    if not os.path.exists(path):
        return None
    try:
        return AgentClient(path, **kw)
    except AgentUnavailable as e:
        (warn or (lambda m: print(f"nkframe: {m}", file=sys.stderr)))(f"{e}; working without the agent")
        return None
