"""Plumbing shared by the rtnetlink modules: raw requests through a pyroute2 socket, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nkframe.errors import KernelError

if TYPE_CHECKING:  # pragma: no cover
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError


def request(ipr: "IPRoute", msg: Any, msg_type: int, msg_flags: int) -> list[Any]:
    """Send one prepared message on ``ipr`` and collect the replies (raises NetlinkError).

    pyroute2's high-level ``link('add', ...)`` rewrites its keyword arguments through kind-specific
    hacks; for device creation we build the message ourselves so the bytes on the wire are exactly
    the ones the unit tests check.  The synchronous ``IPRoute.nlm_request`` of 0.9.x is broken
    (it reads a status key only the async core has), so we drive the async core the way pyroute2's
    own methods do.
    """
    from pyroute2.netlink.nlsocket import NetlinkRequest

    core = ipr.asyncore

    async def run() -> list[Any]:
        req = NetlinkRequest(core, msg, msg_type=msg_type, msg_flags=msg_flags)
        await req.send()
        return [m async for m in req.response()]

    return ipr._run_with_cleanup(run)


def kernel_error(e: "NetlinkError", what: str) -> KernelError:
    """A KernelError for a NetlinkError, keeping the kernel's extack text when there is one."""
    import os

    text = str(e.args[1]) if len(e.args) > 1 and e.args[1] else ""
    if text and text != os.strerror(e.code):
        what = f"{what} (kernel says: {text})"
    return KernelError(e.code, what)


def extack(e: "NetlinkError") -> str:
    """The kernel's extended-ack message for a NetlinkError, or ''."""
    return str(e.args[1]) if len(e.args) > 1 and e.args[1] else ""


def where(netns: str | None) -> str:
    return f"netns {netns!r}" if netns is not None else "the current netns"
