"""``cni.exec``: the agent runs the CNI plugin's commands for the exec'd shim.

A runtime execs a CNI plugin per pod and command; a Python plugin pays the interpreter's start-up
on every one.  ``nkframe-cni-shim`` (``nkframe/cni/shim.c``) only forwards what the runtime gave
it, the ``CNI_*`` environment and stdin, in one request, and prints what comes back; the commands
of :mod:`nkframe.cni` run here, in the long-running agent, against the Engine in process (through
the same validation, locks and address index as ``endpoint.*`` requests).  IPAM plugins are still
exec'd, from the agent, with the request's ``CNI_*`` variables and a fixed ``PATH``: nothing of
the agent's own environment reaches them.

The answer is ``{"exit": N, "stdout": <base64 of the bytes to print>}``, in that order (the shim
reads it with a few lines of C: see the format note in shim.c).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from nkframe import errors

# What the IPAM plugins the agent runs get as PATH (a runtime passes its own; ours is the
# agent's, which the request must not choose: only CNI_* variables come from the caller).
IPAM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _same_socket(a: str, b: str) -> bool:
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class InProcess:
    """The endpoint backend of :class:`nkframe.cni.commands.Invocation` inside the agent: each
    ``call`` is validated like a request on the socket and dispatched to the agent's Engine; the
    answer (or error) has the shape the socket would have given."""

    def __init__(self, agent):
        self.agent = agent

    def __call__(self, socket_path: str) -> "InProcess":
        from nkframe.cni.errors import INVALID_CONFIG, CniError

        # The shim connects to the configuration's agentSocket when it has one (else
        # NKFRAME_AGENT_SOCKET, else the default): a configuration naming another socket than
        # this one (another path to it, or a scan the shim got wrong) is not acted on.
        if not _same_socket(socket_path, self.agent.socket_path):
            raise CniError(INVALID_CONFIG, "agentSocket names another agent",
                           f"the configuration's agentSocket is {socket_path}, but nkframe-cni-shim reached the agent at "
                           f"{self.agent.socket_path}; name this agent's socket in agentSocket or drop it")
        return self

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def call(self, method: str, **params: Any) -> Any:
        from nkframe.agent import protocol
        from nkframe.cni.agent import AgentFailure

        try:
            req = protocol.Request(method=method, params=protocol.validate_params(method, params))
            result = self.agent.dispatch(req)
        except errors.NkframeError as e:
            raise AgentFailure(protocol.error_doc(e)) from None
        # The socket's answer is JSON: the commands see exactly the types they would get there.
        return json.loads(json.dumps(result, default=str))


def exec_cni(agent, env: dict[str, str], stdin: bytes) -> dict:
    """Run one CNI invocation (``env``: ``CNI_*`` variables, validated by the protocol) in the
    agent; the shim's answer."""
    from nkframe.cni.main import execute

    environ = {"PATH": IPAM_PATH, **env}
    rc, out = execute(environ, stdin, backend=InProcess(agent), socket=agent.socket_path)
    return {"exit": rc, "stdout": base64.b64encode(out.encode()).decode()}
