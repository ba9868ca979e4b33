"""Named network namespaces, the way iproute2 keeps them, without ever creating one by accident.

A named netns is an nsfs bind mount at ``/run/netns/<name>``: the mount keeps the namespace alive
after the thread that made it has moved on, and ``ip netns`` sees ours as we see its.

Only the *network* namespace is ever switched.  ``ip netns exec`` also unshares the mount
namespace and remounts ``/sys``, which hides the bpffs mounts nkframe depends on; ``setns`` with
``CLONE_NEWNET`` on the calling thread changes nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from typing import TYPE_CHECKING, Iterator

from nkframe.errors import InvalidSpec, KernelError, NetnsNotFound

if TYPE_CHECKING:  # pragma: no cover
    from pyroute2 import IPRoute

NETNS_RUN_DIR = "/run/netns"

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
NAME_MAX = 255

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise KernelError(ctypes.get_errno(), what)


def _setns(fd: int, what: str) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), what)


def validate_name(name: str) -> str:
    """Check a netns name the way it will be used: as one file name under /run/netns."""
    if not isinstance(name, str) or not name:
        raise InvalidSpec("network namespace name must be a non-empty string")
    if name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidSpec(
            f"network namespace name {name!r} is not a plain file name "
            "(no '/', NUL, '.' or '..')"
        )
    if len(name.encode()) > NAME_MAX:
        raise InvalidSpec(
            f"network namespace name is {len(name.encode())} bytes; at most {NAME_MAX} allowed"
        )
    return name


def netns_path(name: str) -> str:
    """``/run/netns/<name>`` for a valid name."""
    return os.path.join(NETNS_RUN_DIR, validate_name(name))


def _nsfs_dev() -> int:
    # Every namespace file lives on the one internal nsfs; our own netns file tells us its st_dev.
    return os.stat("/proc/thread-self/ns/net").st_dev


def is_netns_file(path: str) -> bool:
    try:
        return os.stat(path).st_dev == _nsfs_dev()
    except FileNotFoundError:
        return False


def exists(name: str) -> bool:
    """True if ``/run/netns/<name>`` is a live namespace (a stale empty file does not count)."""
    return is_netns_file(netns_path(name))


def list_names() -> list[str]:
    """Names of the live namespaces under /run/netns, sorted."""
    try:
        entries = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if is_netns_file(os.path.join(NETNS_RUN_DIR, n)))


def _resolve(name_or_path: str) -> tuple[str, str]:
    """(label for messages, path) for a name under /run/netns or an explicit path."""
    if "/" in name_or_path:
        return name_or_path, name_or_path
    return name_or_path, netns_path(name_or_path)


def _open(name_or_path: str) -> int:
    label, path = _resolve(name_or_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(label) from None
    if os.fstat(fd).st_dev != _nsfs_dev():
        os.close(fd)
        # A leftover file from a crash between "create the mount point" and "bind-mount it".
        raise NetnsNotFound(label)
    return fd


def open_fd(name_or_path: str) -> int:
    """An O_CLOEXEC fd on the namespace (for IFLA_NET_NS_FD, NETNSA_FD...); the caller closes it."""
    return _open(name_or_path)


def _make_run_dir_shared() -> None:
    """Make /run/netns a shared mount point, as iproute2 does.

    With a shared /run/netns, a namespace bind-mounted later is seen by processes in other mount
    namespaces that were cloned after the first ``ip netns add`` (containers, ``unshare -m``).  If
    the directory is not a mount point yet, MS_SHARED fails with EINVAL: bind it onto itself first.
    """
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    run_dir = NETNS_RUN_DIR.encode()
    if _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EINVAL:
        raise KernelError(err, f"make {NETNS_RUN_DIR} a shared mount")
    _check(
        _libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None),
        f"bind-mount {NETNS_RUN_DIR} onto itself",
    )
    _check(
        _libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None),
        f"make {NETNS_RUN_DIR} a shared mount",
    )


def create(name: str) -> str:
    """Create the named network namespace, like ``ip netns add``; returns its path.

    Raises :class:`KernelError` with EEXIST if the name is taken.  A new namespace only holds a
    ``lo`` that is down.
    """
    path = netns_path(name)
    _make_run_dir_shared()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    except FileExistsError:
        hint = "delete it first" if is_netns_file(path) else "a stale file; delete() removes it"
        raise KernelError(errno.EEXIST, f"create network namespace {name!r} ({hint})") from None
    os.close(fd)

    # unshare(CLONE_NEWNET) moves only the calling thread, so a short-lived thread does it and the
    # caller's own namespace is never touched.  The bind mount holds the new namespace once the
    # thread has gone.
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            _check(_libc.unshare(CLONE_NEWNET), f"unshare a network namespace for {name!r}")
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(
                _libc.mount(src, path.encode(), b"none", MS_BIND, None),
                f"bind-mount the new network namespace onto {path}",
            )
        except BaseException as exc:  # carried back to the caller's thread
            failure.append(exc)

    t = threading.Thread(target=worker, name=f"netns-create-{name}", daemon=True)
    t.start()
    t.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failure[0]
    return path


def delete(name: str) -> None:
    """Remove the named namespace, like ``ip netns delete``; a missing one is fine.

    The namespace itself lives on while a process, socket or mount still holds it; its devices
    (and a netkit/veth pair with an end inside) go away when the last reference does.
    """
    path = netns_path(name)
    if not os.path.lexists(path):
        return
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (a stale file); ENOENT: raced with another delete.
        if err not in (errno.EINVAL, errno.ENOENT):
            raise KernelError(err, f"unmount network namespace {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def enter(name_or_path: str | None) -> Iterator[None]:
    """Switch the calling thread into a network namespace for the ``with`` block.

    ``None`` stays where we are.  A name is looked up under /run/netns; anything with a '/' is a
    path (``/proc/<pid>/ns/net``, a CNI_NETNS path).  The original namespace is restored on exit,
    also when the block raises.  Raises :class:`NetnsNotFound` if there is no such namespace.
    """
    if name_or_path is None:
        yield
        return
    target = _open(name_or_path)
    try:
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns(target, f"enter network namespace {name_or_path!r}")
        try:
            yield
        finally:
            # If this fails the thread is stranded in the wrong namespace: nothing sane can go
            # on, so the error propagates (it never happens for a namespace we could open).
            _setns(orig, "return to the original network namespace")
    finally:
        os.close(target)
        os.close(orig)


@contextlib.contextmanager
def ipr(netns: str | None = None) -> Iterator["IPRoute"]:
    """A pyroute2 ``IPRoute`` talking to ``netns`` (None: the caller's namespace).

    A netlink socket belongs to the namespace it was created in, for its whole life.  So we create
    the socket inside :func:`enter` and leave again at once.  pyroute2's own ``IPRoute(netns=...)``
    is avoided on purpose: it forks a helper process to make the socket and, with its default
    flags, *creates* a missing namespace — a typo would silently give an empty new one.

    The IPRoute is bound to the calling thread (pyroute2 keeps sockets per thread), so use it in
    the thread that opened it.
    """
    from pyroute2 import IPRoute  # deferred: importing pyroute2 costs ~100 ms

    if netns is not None and not is_netns_file(_resolve(netns)[1]):
        raise NetnsNotFound(netns)
    with enter(netns):
        sock = IPRoute(ext_ack=True, strict_check=True)
    try:
        yield sock
    finally:
        sock.close()


def netns_id(ipr: "IPRoute", target: str) -> int:
    """The id ``ipr``'s namespace uses for ``target`` (assigned now if it had none).

    Netlink attributes that point at "another namespace" from inside one (IFLA_LINK_NETNSID,
    the queue-lease netns-id) use these per-namespace ids, not paths or fds.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    def query(fd: int) -> int | None:
        reply = ipr.get_netnsid(fd=fd)
        nsid = reply.get("nsid") if reply else None
        # The kernel answers NETNSA_NSID_NOT_ASSIGNED (-1, u32 on the wire) for "no id yet".
        return None if nsid is None or nsid in (-1, 0xFFFFFFFF) else int(nsid)

    fd = _open(target)
    try:
        try:
            nsid = query(fd)
            if nsid is None:
                try:
                    ipr.set_netnsid(fd=fd)  # no nsid: the kernel picks the next free one
                except NetlinkError as e:
                    # EEXIST: someone assigned one between our two requests; read it back.
                    if e.code != errno.EEXIST:
                        raise
                nsid = query(fd)
        except NetlinkError as e:
            raise KernelError(e.code, f"get the netns id of {target!r}") from None
        if nsid is None:
            raise KernelError(errno.ENOENT, f"get the netns id of {target!r}")
        return nsid
    finally:
        os.close(fd)
