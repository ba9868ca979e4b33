"""A minimal client of the nkframe agent for the CNI plugin.

It speaks the agent's wire protocol (JSON lines over its Unix socket, ``docs/agent.md``) through
the shared transport :mod:`nkframe.agent.wire` and ``json`` only: :class:`nkframe.agent.client.AgentClient` decodes answers into
Engine value types and imports the Engine's modules for it, which would cost the plugin, exec'd
once per pod and operation, more than the request itself.  Endpoints stay plain dicts here.

Errors: :class:`AgentUnavailable` when no agent answers (a CNI "try again later"),
:class:`AgentFailure` when the agent answered with an error (``type`` is the nkframe error class
name, e.g. ``EndpointNotFound``); :func:`cni_error` turns the latter into a CNI error.
"""

from __future__ import annotations

import json

from nkframe.agent import wire
from nkframe.cni.errors import INTERNAL, INVALID_CONFIG, INVALID_ENVIRONMENT, TRY_AGAIN_LATER, CniError

PROTOCOL = 1
MAX_ANSWER = 64 << 20  # an endpoint.list of thousands of endpoints


class AgentUnavailable(CniError):
    """No agent listens on the socket, or the connection broke before the answer."""

    def __init__(self, details: str):
        super().__init__(TRY_AGAIN_LATER, "the nkframe agent is not available", details)


class AgentFailure(Exception):
    """The agent refused or failed a request; ``doc`` is its error object."""

    def __init__(self, doc: dict):
        self.type = str(doc.get("type", "NkframeError"))
        self.message = str(doc.get("message", "agent error"))
        self.doc = doc
        super().__init__(f"{self.type}: {self.message}")


class Agent:
    """One connection to the agent at ``path``; requests one after another."""

    def __init__(self, path: str, timeout: float = 120.0):
        self.path = path
        self._id = 0
        try:
            self._conn = wire.Connection(path, timeout)
        except wire.WireError as e:
            if e.kind == wire.MISSING:
                raise AgentUnavailable(f"no agent socket at {path}; start the agent (nkframe agent run) or set agentSocket") from None
            if e.kind == wire.STALE:
                raise AgentUnavailable(f"no agent listens on {path} (the socket of a stopped agent); start it: nkframe agent run") from None
            if e.kind == wire.DENIED:
                raise CniError(INTERNAL, "permission denied on the nkframe agent's socket",
                               f"cannot connect to {path}: the agent serves root only; run the runtime's CNI calls as root") from None
            raise AgentUnavailable(f"cannot connect to the agent at {path}: {e.detail}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, **params):
        """Send one request; its result, or :class:`AgentFailure` with the agent's error."""
        self._id += 1
        line = json.dumps({"v": PROTOCOL, "id": self._id, "method": method, "params": params}, separators=(",", ":")).encode() + b"\n"
        try:
            raw = self._conn.roundtrip(line, MAX_ANSWER)
        except wire.WireError as e:
            if e.kind == wire.TIMEOUT:
                raise AgentUnavailable(f"the agent at {self.path} did not answer {method} in time") from None
            if e.kind == wire.LOST:
                raise AgentUnavailable(f"lost the connection to the agent at {self.path} during {method} ({e.detail})") from None
            raise AgentUnavailable(f"the agent at {self.path} closed the connection during {method}") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise CniError(INTERNAL, "the nkframe agent sent an invalid answer", f"{method}: {raw[:200]!r}") from None
        if doc.get("ok"):
            return doc.get("result")
        raise AgentFailure(doc.get("error") or {})


# What the agent's error types mean to a runtime.  Endpoint ids, names and addresses are the
# plugin's to get right, so the agent's input errors are configuration errors; a refused or
# missing pod namespace is the runtime's CNI_NETNS.
_CODES = {
    "InvalidSpec": (INVALID_CONFIG, "the nkframe agent refused the configuration"),
    "ProtocolError": (INVALID_CONFIG, "the nkframe agent refused the request"),
    "PluginError": (INVALID_CONFIG, "an nkframe plugin refused the configuration"),
    "NotSupported": (INVALID_CONFIG, "the kernel lacks what the configuration asks for"),
    "AddressInUse": (INVALID_CONFIG, "the IPAM plugin handed out an address another endpoint holds"),
    "Refused": (INVALID_ENVIRONMENT, "the nkframe agent refused CNI_NETNS"),
    "NetnsNotFound": (INVALID_ENVIRONMENT, "CNI_NETNS does not exist"),
}


def cni_error(e: AgentFailure, action: str) -> CniError:
    """The CNI error for the agent's answer ``e`` to ``action`` (e.g. "add endpoint x")."""
    code, msg = _CODES.get(e.type, (INTERNAL, f"nkframe could not {action.split(' ', 1)[0]} the endpoint"))
    details = f"{action}: {e.message}"
    if e.type == "NotSupported":
        details += " (use attach/device \"auto\" to let nkframe pick what the kernel has)"
    if e.type == "AddressInUse":
        details += " (do two networks' IPAM ranges overlap?)"
    return CniError(code, f"{msg} ({e.type})", details)
