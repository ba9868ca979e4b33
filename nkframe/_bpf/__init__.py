"""Raw libbpf/libxdp layer: ``ffi``, ``lib``, the one error translator and libbpf's log.

Private to :mod:`nkframe.bpf` and :mod:`nkframe.xsk`; nothing else imports from here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from nkframe.errors import KernelError

try:
    from nkframe._bpf._lib import ffi, lib
except ImportError as exc:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "nkframe's libbpf bindings are not built: run 'make setup' (or "
        "'pip install -e .') with libbpf-dev installed"
    ) from exc

__all__ = ["ffi", "lib", "check", "capture_log", "HAVE_LIBXDP"]

HAVE_LIBXDP = bool(lib.NK_HAVE_LIBXDP)

log = logging.getLogger("nkframe.libbpf")


def check(result, what: str):
    """The error translator for every libbpf and bpf(2) call.

    libbpf 1.x is in strict mode: an int result below zero is ``-errno``; a pointer result of
    NULL means the error is in ``errno``.  Returns ``result`` unchanged on success.
    """
    if isinstance(result, ffi.CData):
        if result == ffi.NULL:
            raise KernelError(ffi.errno or 22, what)  # EINVAL if libbpf forgot to set errno
        return result
    if result < 0:
        raise KernelError(-result, what)
    return result


# libbpf logs through one process-wide print callback.  Messages go to the "nkframe.libbpf"
# logger; a thread that wants them (to put into an error, e.g. why an object failed to load)
# opens capture_log() around its calls.
_capture = threading.local()
_level_map = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


@ffi.def_extern()
def nk_log_cb(level: int, msg) -> None:
    text = ffi.string(msg).decode("utf-8", "replace")
    sink = getattr(_capture, "lines", None)
    if sink is not None:
        sink.append(text)
    # libbpf's WARN lines during a failed load are expected noise the caller turns into an
    # exception; keep them at DEBUG while captured.
    log.log(logging.DEBUG if sink is not None else _level_map.get(level, logging.DEBUG),
            "%s", text.rstrip())


@contextlib.contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect libbpf's messages emitted by this thread inside the block."""
    previous = getattr(_capture, "lines", None)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = previous


lib.nk_install_print()
