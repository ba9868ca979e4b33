"""The agent's wire protocol: JSON lines over a Unix stream socket.

One request per line, one response line per request, in order, on one connection; a client may
send many requests on a connection (and open several connections to work in parallel)::

    -> {"v": 1, "id": 7, "method": "endpoint.del", "params": {"id": "pod-a"}}
    <- {"v": 1, "id": 7, "ok": true, "result": {"id": "pod-a"}}
    <- {"v": 1, "id": 7, "ok": false, "error": {"type": "EndpointNotFound", "code": 5, "message": "..."}}

``id`` is the client's (an int or a string, echoed back).  An optional ``target`` object names
the node the client means (``{"node_netns": ..., "bpffs_root": ...}``); the agent refuses a
request for a node it does not serve.  ``docs/agent.md`` is the reference for every method.

Error ``code`` mirrors the CLI's exit codes (see :mod:`nkframe.cli`): 1 a check failed,
2 bad input or refused, 3 not supported by the kernel, 4 a kernel or system call failed,
5 not found.  ``type`` is the nkframe error class; clients raise the same class again.

Everything a request carries is validated here before the Engine sees it, with the same rules
as CLI input (an endpoint goes through :func:`nkframe.specstore.from_dict`).
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from nkframe import errors, inputs, specstore
from nkframe.engine import ReconcileReport
from nkframe.types import AttachedProgram, AttachMode, DeviceKind, Endpoint, LeaseInfo, Mechanism, validate_endpoint_id

VERSION = 1
MAX_LINE = 1 << 20  # one request or response line, newline included

EXIT_FAILED, EXIT_INPUT, EXIT_UNSUPPORTED, EXIT_KERNEL, EXIT_NOTFOUND = 1, 2, 3, 4, 5


class ProtocolError(errors.InvalidSpec):
    """A request the agent cannot parse or that breaks the protocol (unknown method, bad field)."""


class Refused(errors.InvalidSpec):
    """A well-formed request the agent will not serve: another node, a path outside the allowed
    roots, a caller that is not allowed to use the socket."""


class AgentUnavailable(errors.NkframeError):
    """No agent answers on the socket, or the connection broke before the answer came.

    An operation in flight when the agent died is either finished or undone by the next
    agent's reconcile (the ready marker decides); ask again (``endpoint.get``) to know which.
    """


class AddressInUse(errors.EndpointExists):
    """Another endpoint already holds one of the requested addresses."""


# type name -> (class, exit code).  Order matters for code lookup: most specific first.
_ERRORS: list[tuple[type[BaseException], int]] = [
    (Refused, EXIT_INPUT),
    (ProtocolError, EXIT_INPUT),
    (AddressInUse, EXIT_INPUT),
    (AgentUnavailable, EXIT_KERNEL),
    (errors.EndpointNotFound, EXIT_NOTFOUND),
    (errors.NetnsNotFound, EXIT_NOTFOUND),
    (errors.EndpointExists, EXIT_INPUT),
    (errors.InvalidSpec, EXIT_INPUT),
    (errors.PluginError, EXIT_INPUT),
    (errors.NotBpffs, EXIT_INPUT),
    (errors.NotSupported, EXIT_UNSUPPORTED),
    (errors.VerifierError, EXIT_KERNEL),
    (errors.KernelError, EXIT_KERNEL),
    (errors.NkframeError, EXIT_KERNEL),
]
ERROR_TYPES = {cls.__name__: cls for cls, _ in _ERRORS}


def code_for(exc: BaseException) -> int:
    for cls, code in _ERRORS:
        if isinstance(exc, cls):
            return code
    return EXIT_KERNEL


# ----------------------------------------------------------------------------------------------
# requests
# ----------------------------------------------------------------------------------------------


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise ProtocolError(f"{what} must be a non-empty string")
    return v


def _endpoint_id(v: Any, what: str = "id") -> str:
    return validate_endpoint_id(_str(v, what))


def _spec(v: Any, what: str = "spec"):
    return specstore.from_dict(v)


def _ids(v: Any, what: str = "ids"):
    if v is None:
        return None
    if not isinstance(v, list):
        raise ProtocolError(f"{what} must be a list of endpoint ids or null")
    return [_endpoint_id(x, what) for x in v]


def _attach(v: Any, what: str = "attach") -> str:
    try:
        return AttachMode(str(v).lower()).value
    except ValueError:
        raise ProtocolError(f"{what} {v!r} is not one of: {', '.join(m.value for m in AttachMode)}") from None


# cni.exec: what a CNI runtime handed the exec'd shim (nkframe/cni/shim.c), run by the agent.
# The shim writes bytes it cannot decode as lone surrogates U+DC80..U+DCFF (Python's
# "surrogateescape"), so the original bytes come back exactly, as os.environ would see them.
CNI_ENV_KEY_MAX = 64
CNI_ENV_VALUE_MAX = 64 << 10  # nkframe.cni.config.CNI_VALUE_MAX
CNI_ENV_MAX_KEYS = 32
CNI_STDIN_MAX = MAX_LINE
_CNI_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _raw_bytes(v: str, what: str) -> bytes:
    try:
        return v.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} holds a lone surrogate other than an escaped byte (U+DC80..U+DCFF)") from None


def _cni_env(v: Any, what: str = "env") -> dict[str, str]:
    """Only ``CNI_*`` variables (``CNI_PATH`` among them): nothing else of the caller's
    environment reaches the IPAM plugins the agent runs for it."""
    if not isinstance(v, dict):
        raise ProtocolError(f"{what} must be an object of CNI_* environment variables")
    if len(v) > CNI_ENV_MAX_KEYS:
        raise ProtocolError(f"{what} has {len(v)} variables; at most {CNI_ENV_MAX_KEYS}")
    out = {}
    for key, val in v.items():
        if not (key.startswith("CNI_") and len(key) > 4 and len(key) <= CNI_ENV_KEY_MAX and set(key) <= _CNI_KEY_CHARS):
            raise ProtocolError(f"{what}: {key[:CNI_ENV_KEY_MAX]!r} is not a CNI_* variable (only CNI_ followed by A-Z, 0-9, _ is passed)")
        if not isinstance(val, str):
            raise ProtocolError(f"{what}: {key} must be a string")
        raw = _raw_bytes(val, f"{what}: {key}")
        if len(raw) > CNI_ENV_VALUE_MAX or b"\0" in raw:
            raise ProtocolError(f"{what}: {key} is longer than {CNI_ENV_VALUE_MAX} bytes or holds a NUL byte")
        # Back to the str os.environ would hold for these bytes (undecodable ones as surrogates).
        out[key] = raw.decode("utf-8", "surrogateescape")
    return out


def _cni_stdin(v: Any, what: str = "stdin") -> bytes:
    if not isinstance(v, str):
        raise ProtocolError(f"{what} must be a string (the network configuration)")
    raw = _raw_bytes(v, what)
    if len(raw) > CNI_STDIN_MAX:
        raise ProtocolError(f"{what} is longer than {CNI_STDIN_MAX} bytes")
    return raw


# method -> {param: (validator, required)}
METHODS: dict[str, dict[str, tuple[Any, bool]]] = {
    "ping": {},
    "endpoint.add": {"spec": (_spec, True)},
    "endpoint.del": {"id": (_endpoint_id, True)},
    "endpoint.get": {"id": (_endpoint_id, True)},
    "endpoint.list": {},
    "endpoint.switch": {"id": (_endpoint_id, True), "attach": (_attach, True)},
    "upgrade": {"ids": (_ids, False)},
    "reconcile": {},
    "gc": {},
    "cni.exec": {"env": (_cni_env, True), "stdin": (_cni_stdin, True)},
}

_TARGET_KEYS = {"node_netns", "bpffs_root"}


@attrs.frozen
class Request:
    method: str
    params: dict
    id: Any = None
    target: dict = attrs.field(factory=dict)


def _json_id(v: Any) -> Any:
    if v is None or isinstance(v, (int, str)) and not isinstance(v, bool):
        if isinstance(v, str) and len(v) > 128:
            raise ProtocolError("request id longer than 128 characters")
        return v
    raise ProtocolError("request id must be an integer, a string or absent")


def parse_request(line: bytes | str) -> Request:
    """Decode and validate one request line.  Raises :class:`ProtocolError` (or the
    :class:`~nkframe.errors.InvalidSpec` a bad endpoint gives)."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    try:
        doc = inputs.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"request is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("a request is a JSON object")
    unknown = set(doc) - {"v", "id", "method", "params", "target"}
    if unknown:
        raise ProtocolError(f"unknown request field(s): {', '.join(sorted(unknown))}")
    if doc.get("v", VERSION) != VERSION:
        raise ProtocolError(f"protocol version {doc.get('v')!r} not supported; this agent speaks {VERSION}")
    rid = _json_id(doc.get("id"))
    method = doc.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise ProtocolError(f"unknown method {str(method)[:64]!r}; known: {', '.join(sorted(METHODS))}")
    raw = doc.get("params", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProtocolError("params must be a JSON object")
    try:
        params = validate_params(method, raw)
    except errors.NkframeError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as e:
        # A parameter of the wrong JSON type that a check did not foresee (e.g. "mtu": "abc",
        # "options": "x"): the caller's mistake, answered as one, never a dropped connection.
        raise ProtocolError(f"{method}: malformed parameters ({type(e).__name__}: {e})") from None
    target = doc.get("target") or {}
    if not isinstance(target, dict) or set(target) - _TARGET_KEYS:
        raise ProtocolError(f"target must be an object with at most {', '.join(sorted(_TARGET_KEYS))}")
    for k, v in target.items():
        if v is not None and (not isinstance(v, str) or not v or "\0" in v):
            raise ProtocolError(f"target {k} must be a string or null")
    return Request(method=method, params=params, id=rid, target={k: v for k, v in target.items() if v is not None})


def validate_params(method: str, raw: dict) -> dict:
    """The validated parameters of ``method`` (a key of :data:`METHODS`) from their JSON form."""
    shape = METHODS[method]
    extra = set(raw) - set(shape)
    if extra:
        raise ProtocolError(f"{method}: unknown parameter(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(shape)) or 'none'}")
    params = {}
    for key, (check, required) in shape.items():
        if key not in raw:
            if required:
                raise ProtocolError(f"{method}: parameter {key!r} is required")
            continue
        params[key] = check(raw[key], key)
    return params


def encode_request(method: str, params: dict | None = None, *, id: Any = None, target: dict | None = None) -> bytes:
    doc: dict[str, Any] = {"v": VERSION, "id": id, "method": method, "params": params or {}}
    if target:
        doc["target"] = {k: v for k, v in target.items() if v is not None}
    return _line(doc)


# ----------------------------------------------------------------------------------------------
# responses
# ----------------------------------------------------------------------------------------------


def _line(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode() + b"\n"


def ok(rid: Any, result: Any) -> bytes:
    return _line({"v": VERSION, "id": rid, "ok": True, "result": result})


def error_doc(exc: BaseException) -> dict:
    doc: dict[str, Any] = {"type": type(exc).__name__ if type(exc).__name__ in ERROR_TYPES else _known_base(exc), "code": code_for(exc), "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno:
        doc["errno"] = exc.errno
    if isinstance(exc, errors.KernelError):
        doc["what"] = exc.what  # the message without the errno text, to rebuild it exactly
    if isinstance(exc, errors.NotSupported):
        doc["feature"], doc["reason"] = exc.feature, exc.reason
    if isinstance(exc, errors.NetnsNotFound):
        doc["netns"] = exc.netns
    if isinstance(exc, errors.VerifierError):
        doc["log"] = exc.log
    return doc


def _known_base(exc: BaseException) -> str:
    for cls, _ in _ERRORS:
        if isinstance(exc, cls):
            return cls.__name__
    return "NkframeError"


def fail(rid: Any, exc: BaseException) -> bytes:
    return _line({"v": VERSION, "id": rid, "ok": False, "error": error_doc(exc)})


def error_from_doc(doc: dict) -> BaseException:
    """Rebuild the error a response carries as the nkframe error class it names."""
    t = doc.get("type", "NkframeError")
    msg = str(doc.get("message", "agent error"))
    cls = ERROR_TYPES.get(t, errors.NkframeError)
    if cls is errors.NotSupported:
        return errors.NotSupported(doc.get("feature", "?"), doc.get("reason", msg))
    if cls is errors.NetnsNotFound:
        return errors.NetnsNotFound(doc.get("netns", "?"))
    if cls is errors.VerifierError:
        return errors.VerifierError(doc.get("errno", 22), doc.get("what", msg), doc.get("log", ""))
    if issubclass(cls, errors.KernelError):
        if "what" in doc:
            return cls(doc.get("errno", 5), doc["what"])
        e = cls(doc.get("errno", 5), msg)
        e.strerror = msg  # no "what": keep the message as sent, without a second errno text
        return e
    return cls(msg)


# ----------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------


def endpoint_to_dict(e: Endpoint) -> dict:
    return {
        "spec": specstore.to_dict(e.spec),
        "device_kind": e.device_kind.value,
        "node_ifindex": e.node_ifindex,
        "mechanism": {h: m.value for h, m in e.mechanism.items()},
        "reasons": dict(e.reasons),
        "programs": [
            {**attrs.asdict(p), "mechanism": p.mechanism.value} for p in e.programs
        ],
        "leases": [attrs.asdict(x) for x in e.leases],
    }


def endpoint_from_dict(d: dict) -> Endpoint:
    return Endpoint(
        spec=specstore.from_dict(d["spec"]),
        device_kind=DeviceKind(d["device_kind"]),
        node_ifindex=int(d["node_ifindex"]),
        mechanism={h: Mechanism(m) for h, m in d["mechanism"].items()},
        reasons=d.get("reasons", {}),
        programs=[_attached_program(p) for p in d.get("programs", ())],
        leases=[LeaseInfo(**x) for x in d.get("leases", ())],
    )


def _attached_program(p: dict) -> AttachedProgram:
    """An AttachedProgram from its JSON; keys this version does not know (a newer agent's) are
    left out, and ``direction`` is "" from an agent older than it."""
    known = {f.name for f in attrs.fields(AttachedProgram)}
    return AttachedProgram(**{k: v for k, v in p.items() if k in known and k != "mechanism"},
                           mechanism=Mechanism(p["mechanism"]))


def report_to_dict(r: ReconcileReport) -> dict:
    return {"healthy": list(r.healthy), "removed": list(r.removed), "problems": list(r.problems)}


def report_from_dict(d: dict) -> ReconcileReport:
    return ReconcileReport(
        healthy=tuple(d.get("healthy", ())),
        removed=tuple(d.get("removed", ())),
        problems=tuple(d.get("problems", ())),
    )

