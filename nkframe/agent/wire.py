"""The agent's transport for clients: one Unix-socket connection, one JSON line out, one back.

Shared by :class:`nkframe.agent.client.AgentClient` and the CNI plugin's minimal client
(:mod:`nkframe.cni.agent`), which must not import the Engine's modules.  So this module imports
only the standard library, and reports failures as :class:`WireError` with a ``kind`` each
caller turns into its own error type and wording.
"""

from __future__ import annotations

import socket
import time

# WireError.kind
MISSING = "missing"  # no socket file
STALE = "stale"  # a socket nobody listens on (an agent that was killed)
DENIED = "denied"  # the socket is not ours to use
CONNECT = "connect"  # any other connect failure
BUSY = "busy"  # the listen queue stayed full for BUSY_WAIT seconds
#: How long a connect waits for a full listen queue to drain before giving up.
BUSY_WAIT = 10.0
TIMEOUT = "timeout"  # no answer in time
LOST = "lost"  # the connection broke while sending or receiving
CLOSED = "closed"  # the agent closed the connection without an answer


class WireError(Exception):
    def __init__(self, kind: str, detail: str = "", error: OSError | None = None):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail
        self.error = error  # the OSError behind CONNECT / LOST


class Connection:
    """A connected socket to ``path``; requests one after another (callers serialise)."""

    def __init__(self, path: str, timeout: float):
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._connect(path, min(timeout, BUSY_WAIT) if timeout else BUSY_WAIT)
        except FileNotFoundError:
            self._sock.close()
            raise WireError(MISSING) from None
        except ConnectionRefusedError:
            self._sock.close()
            raise WireError(STALE) from None
        except PermissionError:
            self._sock.close()
            raise WireError(DENIED) from None
        except OSError as e:
            self._sock.close()
            raise WireError(CONNECT, str(e), e) from None
        self._rfile = self._sock.makefile("rb")

    def _connect(self, path: str, wait: float) -> None:
        # A Unix socket whose listen backlog is full refuses a connect with EAGAIN at once (the
        # socket has a timeout, so it is non-blocking underneath): under a burst of clients
        # that is "busy", not "no agent".  Retry with a growing pause for up to ``wait`` s.
        deadline = time.monotonic() + wait
        pause = 0.002
        while True:
            try:
                self._sock.connect(path)
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise WireError(BUSY, f"the agent at {path} stayed busy (its listen queue full) for {wait:.0f} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    def roundtrip(self, line: bytes, max_answer: int) -> bytes:
        """Send one request line; the answer line (raises WireError TIMEOUT, LOST or CLOSED)."""
        try:
            self._sock.sendall(line)
            raw = self._rfile.readline(max_answer)
        except TimeoutError:
            raise WireError(TIMEOUT) from None
        except OSError as e:
            raise WireError(LOST, str(e), e) from None
        if not raw:
            raise WireError(CLOSED)
        return raw

    def close(self) -> None:
        try:
            self._rfile.close()
        finally:
            self._sock.close()
