"""Plumbing shared by the rtnetlink modules: errors and where they happened."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nkframe.errors import KernelError

if TYPE_CHECKING:  # pragma: no cover
    from nkframe.netlink.nlsock import NetlinkError


def kernel_error(e: "NetlinkError", what: str) -> KernelError:
    """A KernelError for a NetlinkError, keeping the kernel's extack text when there is one."""
    import os

    text = extack(e)
    if text and text != os.strerror(e.code):
        what = f"{what} (kernel says: {text})"
    return KernelError(e.code, what)


def extack(e: "NetlinkError") -> str:
    """The kernel's extended-ack message for a NetlinkError, or ''."""
    own = getattr(e, "extack", None)  # nlsock.NetlinkError keeps it apart from strerror
    if own is not None:
        return own
    return str(e.args[1]) if len(e.args) > 1 and e.args[1] else ""


def where(netns: str | None) -> str:
    return f"netns {netns!r}" if netns is not None else "the current netns"
