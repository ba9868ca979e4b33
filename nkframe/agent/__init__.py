"""The nkframe agent: a long-running owner of one node's Engine behind a Unix socket.

* :mod:`nkframe.agent.server` — :class:`Agent` (start, serve, stop) and :func:`run`.
* :mod:`nkframe.agent.protocol` — JSON lines: requests, responses, error codes, value encoding.
* :mod:`nkframe.agent.client` — :class:`AgentClient`, with the Engine's verbs.

The reference for the wire protocol is ``docs/agent.md``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SOCKET"]

DEFAULT_SOCKET = "/run/nkframe/agent.sock"
