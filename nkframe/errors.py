"""Error types callers can catch.

Every error nkframe raises on purpose is a subclass of :class:`NkframeError`.  Messages say what
failed, on which object, and what the user can do about it.  Errors that come from a system call
also subclass :class:`OSError` so ``errno`` is available and ``except OSError`` still works.
"""

from __future__ import annotations

import errno as _errno
import os


class NkframeError(Exception):
    """Base of every error nkframe raises on purpose."""


class InvalidSpec(NkframeError, ValueError):
    """Input that cannot be accepted: a bad name, CIDR, mode, rule, JSON document..."""


class NotSupported(NkframeError):
    """The running kernel (or library) lacks a feature.

    ``feature`` names it as :mod:`nkframe.probe` does; ``reason`` tells the user what to change.
    """

    def __init__(self, feature: str, reason: str):
        super().__init__(f"{feature} is not supported: {reason}")
        self.feature = feature
        self.reason = reason


class NetnsNotFound(NkframeError, FileNotFoundError):
    """A network namespace that should exist does not (we never create one by accident)."""

    def __init__(self, netns: str):
        super().__init__(
            _errno.ENOENT,
            f"network namespace {netns!r} does not exist "
            f"(create it first, e.g. 'ip netns add {netns}')",
        )
        self.netns = netns


class NotBpffs(NkframeError):
    """A path that must be on a BPF filesystem is not."""


class PluginError(NkframeError):
    """A plugin could not be found, loaded, or broke the hook contract."""


class EndpointExists(NkframeError):
    """An endpoint with that id (or device name) is already present."""


class EndpointNotFound(NkframeError, KeyError):
    """No endpoint with that id."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence.
        return str(self.args[0]) if self.args else "endpoint not found"


class KernelError(NkframeError, OSError):
    """A system call or libbpf call failed.

    Built with ``KernelError(errno, "what we were doing")``; ``str()`` adds the errno's name and
    text so the user sees e.g. ``attach tcx ingress to eth0: EEXIST (File exists)``.
    """

    def __init__(self, err: int, what: str):
        err = abs(err)
        name = _errno.errorcode.get(err, f"errno {err}")
        super().__init__(err, f"{what}: {name} ({os.strerror(err)})")
        self.what = what

    def __str__(self) -> str:
        return self.strerror or ""


class VerifierError(KernelError):
    """The kernel verifier refused a program; ``log`` holds the verifier's own words."""

    def __init__(self, err: int, what: str, log: str):
        super().__init__(err, what)
        self.log = log
        # The kernel says EACCES (or EINVAL) for a program the verifier refused: say what it is.
        name = _errno.errorcode.get(abs(err), f"errno {abs(err)}")
        self.strerror = f"{what}: rejected by the verifier ({name})"

    def __str__(self) -> str:
        tail = "\n".join(self.log.rstrip().splitlines()[-40:])
        return f"{self.strerror}\nverifier log (last lines):\n{tail}" if tail else self.strerror or ""
