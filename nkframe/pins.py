"""The bpffs layout: bpffs is the source of truth a restarted process rebuilds its view from.

Layout under the root (default ``/sys/fs/bpf/nkframe``)::

    <root>/globals/maps/<map>                 maps shared by every endpoint (routes, policy...)
    <root>/endpoints/<id>/spec                the EndpointSpec as JSON inside a 1-entry array map
    <root>/endpoints/<id>/ready               empty directory: the endpoint is complete (commit point)
    <root>/endpoints/<id>/maps/<map>          maps private to one endpoint
    <root>/endpoints/<id>/links/<hook>/<NN>-<prog>
                                              netkit/TCX links (NN = position in the chain)
    <root>/endpoints/<id>/tc/<hook>/<NN>-<prog>-p<prio>
                                              TC programs (cls_bpf has no link: the program is
                                              pinned and the filter priority is in the name)
    <root>/devices/<dev>/links/...            programs on node devices (the uplink), same shape
    <root>/endpoints/<id>/plugins/<plugin>/   what a plugin owns for one endpoint
    <root>/plugins/<plugin>/devices/<dev>/    what a plugin owns for a node device, shared by
                                              endpoints (the VM plugin's leased-queue XDP)

bpffs refuses names with a '.', hence the dashes.  Deleting the last pin of a link detaches it, so removing ``links/`` is how an endpoint's programs
are taken away; a TC filter outlives its pin and is deleted explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from nkframe.errors import KernelError, NotBpffs
from nkframe.uapi import (
    BPF_FS_MAGIC,
)

DEFAULT_ROOT = "/sys/fs/bpf/nkframe"


class _Statfs(ctypes.Structure):
    # struct statfs on x86_64: only f_type (the first field) is read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def fs_type(path: str | os.PathLike) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise KernelError(err, f"statfs {path}")
    return buf.f_type & 0xFFFFFFFF


def is_bpffs(path: str | os.PathLike) -> bool:
    try:
        return fs_type(path) == BPF_FS_MAGIC
    except KernelError:
        return False


def mount_bpffs(path: str | os.PathLike) -> None:
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise KernelError(err, f"mount bpffs on {path}")


def umount(path: str | os.PathLike) -> None:
    if _libc.umount2(os.fsencode(path), 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        raise KernelError(err, f"umount {path}")


def ensure_root(root: str | os.PathLike, *, mount: bool = True) -> Path:
    """Make sure ``root`` is a directory on bpffs, mounting ``/sys/fs/bpf`` if nothing is there.

    A root that exists on another filesystem is an error: pins would silently not be pins.
    """
    root = Path(root)
    existing = _nearest_existing(root)
    if not is_bpffs(existing):
        std = Path("/sys/fs/bpf")
        # Mount only the standard location, and only when nothing is mounted there yet;
        # anywhere else the user decides.
        if mount and root.is_relative_to(std) and std.is_dir() and not is_bpffs(std):
            mount_bpffs(std)
            existing = _nearest_existing(root)
        if not is_bpffs(existing):
            raise NotBpffs(
                f"{root} is not on a BPF filesystem ({existing} has filesystem magic "
                f"{fs_type(existing):#x}); mount one first: mount -t bpf bpf {existing}"
            )
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    return root


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


class Layout:
    """Paths of the layout above for one root."""

    def __init__(self, root: str | os.PathLike = DEFAULT_ROOT):
        self.root = Path(root)

    # -- directories
    def endpoints_dir(self) -> Path:
        return self.root / "endpoints"

    def endpoint_dir(self, endpoint_id: str) -> Path:
        return self.root / "endpoints" / endpoint_id

    def device_dir(self, dev: str) -> Path:
        return self.root / "devices" / dev

    def globals_dir(self) -> Path:
        return self.root / "globals"

    # -- objects
    def spec_path(self, endpoint_id: str) -> Path:
        return self.endpoint_dir(endpoint_id) / "spec"

    def ready_marker(self, endpoint_id: str) -> Path:
        """An empty directory whose presence says the endpoint is complete."""
        return self.endpoint_dir(endpoint_id) / "ready"

    def plugin_dir(self, endpoint_id: str, plugin: str) -> Path:
        """Where a plugin pins what it owns for one endpoint outside the engine's chains (the VM
        plugin's XSKMAP and XDP link); removed with the endpoint, untouched by upgrades."""
        return self.endpoint_dir(endpoint_id) / "plugins" / plugin

    def node_plugin_dir(self, plugin: str, dev: str) -> Path:
        """Where a plugin pins what it owns for a node device and shares between endpoints (the
        VM plugin's XDP program on a NIC whose queues VM endpoints lease); the plugin removes it
        with the last endpoint using it.  Outside ``devices/``, which the uplink's teardown
        removes whole."""
        return self.root / "plugins" / plugin / "devices" / dev

    def map_path(self, scope: str, owner: str, name: str) -> Path:
        base = self._scope_dir(scope, owner)
        return base / "maps" / name

    def link_path(self, scope: str, owner: str, hook: str, position: int, prog: str) -> Path:
        return self._scope_dir(scope, owner) / "links" / hook / f"{position:02d}-{prog}"

    def tc_path(self, scope: str, owner: str, hook: str, position: int, prog: str, prio: int) -> Path:
        return self._scope_dir(scope, owner) / "tc" / hook / f"{position:02d}-{prog}-p{prio}"

    def _scope_dir(self, scope: str, owner: str) -> Path:
        if scope == "endpoint":
            return self.endpoint_dir(owner)
        if scope == "device":
            return self.device_dir(owner)
        if scope == "global":
            return self.globals_dir()
        raise ValueError(f"unknown pin scope {scope!r}")

    def check_inside(self, path: str | os.PathLike) -> Path:
        p = Path(os.path.normpath(path))
        if not p.is_relative_to(self.root):
            raise NotBpffs(f"pin path {path} is outside the bpffs root {self.root}")
        return p

    # -- reading back
    def endpoint_ids(self) -> list[str]:
        d = self.endpoints_dir()
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def links(self, scope: str, owner: str) -> dict[str, list[Path]]:
        """hook -> pinned link paths in chain order."""
        base = self._scope_dir(scope, owner) / "links"
        return by_hook(base)

    def tc_pins(self, scope: str, owner: str) -> dict[str, list[Path]]:
        return by_hook(self._scope_dir(scope, owner) / "tc")


def by_hook(base: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    if not base.is_dir():
        return out
    for hook_dir in sorted(base.iterdir()):
        out[hook_dir.name] = sorted(hook_dir.iterdir())
    return out


def parse_pin_name(path: Path) -> tuple[int, str, int]:
    """'03-policy_egress-p49200' -> (3, 'policy_egress', 49200); links have priority 0."""
    stem = path.name
    prio = 0
    head, sep, p = stem.rpartition("-p")
    if sep and p.isdigit() and "-" in head:
        stem, prio = head, int(p)
    pos, _, name = stem.partition("-")
    return int(pos), name, prio


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a bpffs directory tree (unlinking pins detaches links and frees unused maps)."""
    shutil.rmtree(path, ignore_errors=True)
