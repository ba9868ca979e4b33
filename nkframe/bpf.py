"""BPF objects, programs, maps and links from Python, over libbpf (cffi, API mode).

Everything here acts in the network namespace of the calling thread: ifindexes, TC/XDP netlink
requests and BPF_PROG_QUERY all resolve there.  Nothing opens a socket or touches the kernel at
import time.

Ownership: every file descriptor and every libbpf object has exactly one Python owner.
:class:`BpfObject` owns a ``struct bpf_object``; the :class:`Program` and :class:`Map` objects
it hands out are *views* that stop working when it is closed -- call ``dup()`` on one to get a
standalone object owning its own fd.  Standalone objects close their fd once, on ``close()``,
on leaving a ``with`` block, or when garbage-collected.

Attachment APIs newer than libbpf 1.1 (tcx, netkit, link anchors, query revisions) are driven
through our own ``union bpf_attr`` layouts (``nkframe/_bpf/decl/nk_attr.h``) so they work with
whatever libbpf the distribution ships, as long as the kernel supports them.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import types
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import attrs

from nkframe._bpf import capture_log, check, ffi, lib
from nkframe.errors import InvalidSpec, KernelError, NkframeError, VerifierError
from nkframe.uapi import (  # noqa: F401 - re-exported names
    BPF_ANY,
    BPF_EXIST,
    BPF_FS_MAGIC,
    BPF_F_AFTER,
    BPF_F_BEFORE,
    BPF_F_ID,
    BPF_F_LINK,
    BPF_F_REPLACE,
    BPF_LINK_CREATE,
    BPF_LINK_TYPE_NETKIT,
    BPF_LINK_TYPE_TCX,
    BPF_LINK_TYPE_XDP,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_LRU_PERCPU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    BPF_MAP_TYPE_PERCPU_HASH,
    BPF_MAP_TYPE_PROG_ARRAY,
    BPF_MAP_TYPE_XSKMAP,
    BPF_NETKIT_PEER,
    BPF_NETKIT_PRIMARY,
    BPF_NOEXIST,
    BPF_PROG_QUERY,
    BPF_PROG_TYPE_SCHED_ACT,
    BPF_PROG_TYPE_SCHED_CLS,
    BPF_PROG_TYPE_XDP,
    BPF_TCX_EGRESS,
    BPF_TCX_INGRESS,
    BPF_XDP,
    ENOTSUPP,
    TC_EGRESS,
    TC_INGRESS,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_HW_MODE,
    XDP_FLAGS_REPLACE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
)

__all__ = [
    "BpfObject", "Program", "Map", "Link",
    "ProgInfo", "MapInfo", "LinkInfo", "QueryResult", "TestRunResult",
    "libbpf_version", "libxdp_version",
    "prog_query", "obj_get", "pin_type", "is_bpffs", "mount_bpffs", "unmount",
    "xdp_attach", "xdp_detach", "xdp_query",
    "tc_hook_create", "tc_hook_destroy", "tc_attach", "tc_detach", "tc_query", "tc_list",
]

# The uAPI numbers live in nkframe.uapi (imported above, so bpf.BPF_* keeps working).

_PERCPU_MAP_TYPES = frozenset({
    BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_LRU_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
})

# tc parent handles of the clsact qdisc's two hooks (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_*))
_TC_PARENT = {TC_INGRESS: 0xFFFFFFF2, TC_EGRESS: 0xFFFFFFF3}


ATTACH_TYPE_NAMES = {
    BPF_XDP: "xdp",
    BPF_TCX_INGRESS: "tcx ingress",
    BPF_TCX_EGRESS: "tcx egress",
    BPF_NETKIT_PRIMARY: "netkit primary",
    BPF_NETKIT_PEER: "netkit peer",
}


def _attach_name(attach_type: int) -> str:
    return ATTACH_TYPE_NAMES.get(attach_type, f"attach type {attach_type}")


# ---------------------------------------------------------------------------------------------
# versions
# ---------------------------------------------------------------------------------------------

def _loaded_library_version(stem: str) -> str | None:
    """Full version of a shared library mapped into this process, from its file name."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                base = os.path.basename(path)
                if base.startswith(f"{stem}.so."):
                    parts = base[len(stem) + 4:].split(".")
                    if len(parts) >= 3 and all(p.isdigit() for p in parts):
                        return ".".join(parts)
    except OSError:
        pass
    return None


def libbpf_version() -> str:
    """The libbpf in use, e.g. ``"1.1.2"`` (major.minor if the patch level cannot be found)."""
    full = _loaded_library_version("libbpf")
    if full:
        return full
    if lib.NK_HAVE_libbpf_version_string:
        return ffi.string(lib.libbpf_version_string()).decode().lstrip("v")
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


def libxdp_version() -> str | None:
    """The libxdp nkframe was built against (``"1.3.1"``), or None without AF_XDP support.

    libxdp has no version call and Debian ships 1.3.1 as ``libxdp.so.1.3.0``, so this is the
    pkg-config version recorded at build time.
    """
    if not lib.NK_HAVE_LIBXDP:
        return None
    return ffi.string(lib.NK_LIBXDP_BUILD_VERSION).decode() or None


# ---------------------------------------------------------------------------------------------
# value types
# ---------------------------------------------------------------------------------------------

@attrs.frozen
class ProgInfo:
    id: int
    name: str
    type: int
    tag: str
    map_ids: tuple[int, ...] = ()
    load_time: int = 0  # ns since boot


@attrs.frozen
class MapInfo:
    id: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@attrs.frozen
class LinkInfo:
    id: int
    type: int
    prog_id: int
    ifindex: int = 0       # 0 when the link is not bound to a device
    attach_type: int = 0   # 0 when the link type does not report one


@attrs.frozen
class QueryResult:
    """BPF_PROG_QUERY on a device hook, in run order.

    ``link_ids[i]`` belongs to ``prog_ids[i]``; 0 means that program was attached without a
    link.  ``revision`` (6.6+) changes on every attach/detach; 0 on kernels without it.
    """

    revision: int
    prog_ids: tuple[int, ...]
    link_ids: tuple[int, ...]


@attrs.frozen
class TestRunResult:
    __test__ = False  # not a pytest class

    retval: int
    data_out: bytes
    duration_ns: int


# ---------------------------------------------------------------------------------------------
# fd ownership
# ---------------------------------------------------------------------------------------------

def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _FdOwner:
    """An fd that is closed exactly once: by close(), or by the finalizer at collection."""

    def _own_fd(self, fd: int, owned: bool) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close_fd, fd) if owned else None

    def _release_fd(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs at most once
        self._fd = -1

    def _require_fd(self, what: str) -> int:
        if self._fd < 0:
            raise KernelError(errno.EBADF, f"{what}: already closed")
        return self._fd


def _fd_kind(fd: int) -> str | None:
    """Which BPF object an fd refers to, from its anon inode name."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return {
        "anon_inode:bpf-prog": "prog",
        "anon_inode:bpf-map": "map",
        "anon_inode:bpf_link": "link",  # a link fresh from BPF_LINK_CREATE
        "anon_inode:bpf-link": "link",  # the same link reopened (BPF_OBJ_GET, GET_FD_BY_ID)
    }.get(target)


def _expect_kind(fd: int, kind: str, what: str, *, close: bool = True) -> None:
    got = _fd_kind(fd)
    if got != kind:
        if close:
            _close_fd(fd)
        raise InvalidSpec(f"{what}: is a BPF {got or 'non-BPF'} object, not a {kind}")


def _c_path(path: str | os.PathLike) -> bytes:
    return os.fsencode(path)


# ---------------------------------------------------------------------------------------------
# Program
# ---------------------------------------------------------------------------------------------

_PROG_TEST_DEFAULT_HEADROOM = 512


class Program(_FdOwner):
    """A BPF program: a view into a :class:`BpfObject`, or a standalone fd owner.

    Views exist from ``BpfObject.open()``; their fd is valid after ``load()`` and until the
    object is closed.  ``close()`` on a view does nothing (the object owns it).
    """

    def __init__(self, *, name: str, fd: int = -1, owned: bool = True,
                 _obj: BpfObject | None = None, _ptr=None) -> None:
        self.name = name
        self._obj = _obj
        self._ptr = _ptr
        self._own_fd(fd, owned and _obj is None)

    def __repr__(self) -> str:
        kind = "view" if self._obj is not None else "standalone"
        return f"<Program {self.name!r} {kind} fd={self._fd if self._obj is None else '...'}>"

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = True) -> Program:
        """Wrap a program fd; with ``owned`` the new object closes it."""
        _expect_kind(fd, "prog", f"program fd {fd}", close=owned)
        prog = cls(name="", fd=fd, owned=owned)
        prog.name = prog.info().name
        return prog

    @classmethod
    def from_id(cls, prog_id: int) -> Program:
        fd = check(lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")
        return cls.from_fd(fd)

    @classmethod
    def from_pin(cls, path: str | os.PathLike) -> Program:
        fd = check(lib.bpf_obj_get(_c_path(path)), f"open pinned program {os.fspath(path)}")
        _expect_kind(fd, "prog", f"pin {os.fspath(path)}")
        return cls.from_fd(fd)

    # -- properties ----------------------------------------------------------------------
    @property
    def fd(self) -> int:
        if self._obj is not None:
            self._obj._require_open(f"program {self.name}")
            fd = lib.bpf_program__fd(self._ptr)
            if fd < 0:
                raise KernelError(errno.EBADF, f"program {self.name}: not loaded "
                                  "(call BpfObject.load() first)")
            return fd
        return self._require_fd(f"program {self.name}")

    @property
    def type(self) -> int:
        if self._obj is not None:
            self._obj._require_open(f"program {self.name}")
            return lib.bpf_program__type(self._ptr)
        return self.info().type

    @property
    def id(self) -> int:
        return self.info().id

    def info(self) -> ProgInfo:
        fd = self.fd
        what = f"get info of program {self.name or fd}"
        info = ffi.new("struct bpf_prog_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct bpf_prog_info"))
        check(lib.bpf_obj_get_info_by_fd(fd, info, size), what)
        map_ids: tuple[int, ...] = ()
        if info.nr_map_ids:
            # Second call: hand the kernel an array for the map ids, nothing else.
            count = info.nr_map_ids
            ids = ffi.new("__u32[]", count)
            info2 = ffi.new("struct bpf_prog_info *")
            info2.nr_map_ids = count
            info2.map_ids = int(ffi.cast("uintptr_t", ids))
            size[0] = ffi.sizeof("struct bpf_prog_info")
            check(lib.bpf_obj_get_info_by_fd(fd, info2, size), what)
            map_ids = tuple(ids[i] for i in range(min(count, info2.nr_map_ids)))
        return ProgInfo(
            id=info.id,
            name=ffi.string(info.name).decode(),
            type=info.type,
            tag=bytes(info.tag).hex(),
            map_ids=map_ids,
            load_time=info.load_time,
        )

    # -- operations ----------------------------------------------------------------------
    def pin(self, path: str | os.PathLike) -> None:
        check(lib.bpf_obj_pin(self.fd, _c_path(path)),
              f"pin program {self.name} at {os.fspath(path)}")

    def dup(self) -> Program:
        """A standalone Program owning a new fd to the same kernel program."""
        return Program(name=self.name, fd=os.dup(self.fd), owned=True)

    def test_run(self, data: bytes, *, repeat: int = 1, ctx: bytes | None = None,
                 data_size_out: int | None = None) -> TestRunResult:
        """Run the program on ``data`` in the kernel (BPF_PROG_TEST_RUN).

        ``data_out`` is the packet after the program ran; its buffer is ``len(data) + 512``
        bytes unless ``data_size_out`` says otherwise.  ``duration_ns`` is the kernel's average
        per repetition.
        """
        if repeat < 1:
            raise InvalidSpec(f"test_run repeat must be >= 1, got {repeat}")
        out_size = data_size_out if data_size_out is not None else (
            len(data) + _PROG_TEST_DEFAULT_HEADROOM)
        data_in = ffi.from_buffer(data)
        data_out = ffi.new("char[]", max(out_size, 1))
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in = data_in
        opts.data_size_in = len(data)
        opts.data_out = data_out
        opts.data_size_out = out_size
        opts.repeat = repeat
        if ctx is not None:
            ctx_in = ffi.from_buffer(ctx)
            opts.ctx_in = ctx_in
            opts.ctx_size_in = len(ctx)
        check(lib.bpf_prog_test_run_opts(self.fd, opts), f"test run program {self.name}")
        n = min(opts.data_size_out, out_size)
        return TestRunResult(
            retval=int(ffi.cast("int32_t", opts.retval)),
            data_out=ffi.buffer(data_out, n)[:],
            duration_ns=opts.duration,
        )

    def close(self) -> None:
        if self._obj is None:
            self._release_fd()

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Map
# ---------------------------------------------------------------------------------------------

def _possible_cpus() -> int:
    n = lib.libbpf_num_possible_cpus()
    if n < 0:
        raise KernelError(-n, "count possible CPUs (/sys/devices/system/cpu/possible)")
    return n


class Map(_FdOwner):
    """A BPF map: a view into a :class:`BpfObject` or a standalone fd owner.

    Keys and values are ``bytes`` in the map's own layout (pack them with :mod:`struct`).  For
    per-CPU maps a value is the concatenation of one slot per possible CPU, each slot
    ``value_size`` rounded up to 8 bytes; :meth:`lookup_percpu` splits it.
    """

    def __init__(self, *, name: str, fd: int = -1, owned: bool = True,
                 _obj: BpfObject | None = None, _ptr=None, _info: MapInfo | None = None):
        self.name = name
        self._obj = _obj
        self._ptr = _ptr
        self._info = _info
        self._own_fd(fd, owned and _obj is None)

    def __repr__(self) -> str:
        return f"<Map {self.name!r} type={self.type} {self.key_size}->{self.value_size}>"

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = True) -> Map:
        _expect_kind(fd, "map", f"map fd {fd}", close=owned)
        m = cls(name="", fd=fd, owned=owned)
        m._info = m.info()
        m.name = m._info.name
        return m

    @classmethod
    def create(cls, map_type: int, key_size: int, value_size: int, max_entries: int, *,
               name: str = "", flags: int = 0, inner_map_fd: int = 0) -> Map:
        """Create a standalone map (BPF_MAP_CREATE); ``name`` is cut to 15 bytes by the kernel."""
        opts = ffi.new("struct bpf_map_create_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_create_opts")
        opts.map_flags = flags
        opts.inner_map_fd = inner_map_fd
        c_name = name.encode()[:15] if name else ffi.NULL
        fd = check(lib.bpf_map_create(map_type, c_name, key_size, value_size, max_entries, opts),
                   f"create map {name or '(unnamed)'} type {map_type} "
                   f"{key_size}->{value_size} x{max_entries}")
        return cls.from_fd(fd)

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        fd = check(lib.bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")
        return cls.from_fd(fd)

    @classmethod
    def from_pin(cls, path: str | os.PathLike) -> Map:
        fd = check(lib.bpf_obj_get(_c_path(path)), f"open pinned map {os.fspath(path)}")
        _expect_kind(fd, "map", f"pin {os.fspath(path)}")
        return cls.from_fd(fd)

    # -- properties ----------------------------------------------------------------------
    @property
    def fd(self) -> int:
        if self._obj is not None:
            self._obj._require_open(f"map {self.name}")
            fd = lib.bpf_map__fd(self._ptr)
            if fd < 0:
                raise KernelError(errno.EBADF, f"map {self.name}: not created "
                                  "(call BpfObject.load() first)")
            return fd
        return self._require_fd(f"map {self.name}")

    def _meta(self, field: str) -> int:
        if self._obj is not None:
            self._obj._require_open(f"map {self.name}")
            return getattr(lib, f"bpf_map__{field}")(self._ptr)
        return getattr(self._info, field)

    @property
    def type(self) -> int:
        return self._meta("type")

    @property
    def key_size(self) -> int:
        return self._meta("key_size")

    @property
    def value_size(self) -> int:
        return self._meta("value_size")

    @property
    def max_entries(self) -> int:
        return self._meta("max_entries")

    @property
    def id(self) -> int:
        return self.info().id

    @property
    def is_percpu(self) -> bool:
        return self.type in _PERCPU_MAP_TYPES

    @property
    def value_buffer_size(self) -> int:
        """Bytes a lookup returns: value_size, or one 8-aligned slot per CPU for per-CPU maps."""
        if self.is_percpu:
            return ((self.value_size + 7) & ~7) * _possible_cpus()
        return self.value_size

    def info(self) -> MapInfo:
        fd = self.fd
        info = ffi.new("struct bpf_map_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct bpf_map_info"))
        check(lib.bpf_obj_get_info_by_fd(fd, info, size), f"get info of map {self.name or fd}")
        return MapInfo(
            id=info.id, name=ffi.string(info.name).decode(), type=info.type,
            key_size=info.key_size, value_size=info.value_size,
            max_entries=info.max_entries, flags=info.map_flags,
        )

    # -- element access ------------------------------------------------------------------
    def _key(self, key: bytes) -> bytes:
        if len(key) != self.key_size:
            raise InvalidSpec(f"map {self.name}: key is {len(key)} bytes, the map's key_size "
                              f"is {self.key_size}")
        return key

    def _value(self, value: bytes) -> bytes:
        want = self.value_buffer_size
        if len(value) != want:
            extra = " (per-CPU map: one 8-byte aligned slot per possible CPU)" \
                if self.is_percpu else ""
            raise InvalidSpec(f"map {self.name}: value is {len(value)} bytes, expected "
                              f"{want}{extra}")
        return value

    def lookup(self, key: bytes) -> bytes | None:
        """The value under ``key``, or None if there is none.

        Per-CPU maps return all CPUs' slots concatenated; see :meth:`lookup_percpu`.
        """
        key = self._key(key)
        out = ffi.new("char[]", self.value_buffer_size)
        ret = lib.bpf_map_lookup_elem(self.fd, key, out)
        if ret == -errno.ENOENT:
            return None
        check(ret, f"lookup in map {self.name}")
        return ffi.buffer(out)[:]

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        """Per-CPU maps: one ``value_size`` bytes value per possible CPU, or None."""
        if not self.is_percpu:
            raise InvalidSpec(f"map {self.name} is not a per-CPU map")
        raw = self.lookup(key)
        if raw is None:
            return None
        slot = (self.value_size + 7) & ~7
        return [raw[i:i + self.value_size] for i in range(0, len(raw), slot)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        check(lib.bpf_map_update_elem(self.fd, self._key(key), self._value(value), flags),
              f"update map {self.name}")

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if it was absent."""
        ret = lib.bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -errno.ENOENT:
            return False
        check(ret, f"delete from map {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate the keys (BPF_MAP_GET_NEXT_KEY).

        Concurrent deletes can make a hash map restart from its first key: callers that
        delete while iterating should collect the keys first.
        """
        fd = self.fd
        size = self.key_size
        cur = ffi.NULL
        nxt = ffi.new("char[]", size)
        while True:
            ret = lib.bpf_map_get_next_key(fd, cur, nxt)
            if ret == -errno.ENOENT:
                return
            check(ret, f"iterate map {self.name}")
            key = ffi.buffer(nxt)[:]
            yield key
            cur = ffi.new("char[]", key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted since get_next_key
                yield key, value

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def dump(self, *, batch: int = 256) -> dict[bytes, bytes]:
        """Every element at once, with BPF_MAP_LOOKUP_BATCH where libbpf and the kernel have
        it (one syscall per ``batch`` elements), else by iterating keys."""
        if not lib.NK_HAVE_bpf_map_lookup_batch:
            return dict(self.items())
        fd, ksz, vsz = self.fd, self.key_size, self.value_buffer_size
        # The resume token is opaque: a bucket index (u32) for hash maps, a key for arrays.
        tok_size = max(ksz, 8)
        tokens = [ffi.new("char[]", tok_size), ffi.new("char[]", tok_size)]
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        count = ffi.new("__u32 *")
        out: dict[bytes, bytes] = {}
        first = True
        while True:
            keys = ffi.new("char[]", ksz * batch)
            values = ffi.new("char[]", vsz * batch)
            count[0] = batch
            ret = lib.bpf_map_lookup_batch(fd, ffi.NULL if first else tokens[0], tokens[1],
                                           keys, values, count, opts)
            if first and ret in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP):
                return dict(self.items())  # no batch ops for this kernel or map type
            if ret == -errno.ENOSPC and count[0] == 0:
                batch *= 2  # one hash bucket holds more than a batch
                continue
            if ret < 0 and ret != -errno.ENOENT:
                check(ret, f"batch lookup in map {self.name}")
            kb, vb = ffi.buffer(keys), ffi.buffer(values)
            for i in range(count[0]):
                out[kb[i * ksz:(i + 1) * ksz]] = vb[i * vsz:(i + 1) * vsz]
            if ret == -errno.ENOENT:  # the kernel's "that was the last batch"
                return out
            tokens.reverse()
            first = False

    def update_batch(self, keys: Sequence[bytes], values: Sequence[bytes],
                     flags: int = BPF_ANY) -> None:
        """Update many elements in one BPF_MAP_UPDATE_BATCH call.

        Kernels or map types without batch support (EINVAL before 5.6, ENOTSUPP/EOPNOTSUPP for
        some map types) fall back to one update per element; a genuine EINVAL then shows up on
        the first element.
        """
        if len(keys) != len(values):
            raise InvalidSpec(f"map {self.name}: {len(keys)} keys but {len(values)} values")
        if not keys:
            return
        kbuf = b"".join(self._key(k) for k in keys)
        vbuf = b"".join(self._value(v) for v in values)
        count = ffi.new("__u32 *", len(keys))
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        opts.elem_flags = flags
        ret = lib.bpf_map_update_batch(self.fd, kbuf, vbuf, count, opts)
        if ret in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP) and count[0] == 0:
            for k, v in zip(keys, values):
                self.update(k, v, flags)
            return
        check(ret, f"batch update of {len(keys)} elements in map {self.name} "
                   f"({count[0]} done)")

    # -- lifetime ------------------------------------------------------------------------
    def pin(self, path: str | os.PathLike) -> None:
        check(lib.bpf_obj_pin(self.fd, _c_path(path)),
              f"pin map {self.name} at {os.fspath(path)}")

    def dup(self) -> Map:
        info = self._info if self._obj is None else None
        m = Map(name=self.name, fd=os.dup(self.fd), owned=True, _info=info)
        if m._info is None:
            m._info = m.info()
        return m

    def close(self) -> None:
        if self._obj is None:
            self._release_fd()

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# BpfObject
# ---------------------------------------------------------------------------------------------

_VERIFIER_LOG_SIZE = 1 << 20
_DATA_SECTIONS = (".rodata", ".data", ".bss")


class BpfObject:
    """A BPF ELF object opened with libbpf: its programs and maps, loaded together."""

    def __init__(self, ptr, path: str) -> None:
        self._ptr = ptr
        self.path = path
        self._loaded = False
        progs: dict[str, Program] = {}
        p = lib.bpf_object__next_program(ptr, ffi.NULL)
        while p != ffi.NULL:
            name = ffi.string(lib.bpf_program__name(p)).decode()
            progs[name] = Program(name=name, _obj=self, _ptr=p)
            p = lib.bpf_object__next_program(ptr, p)
        maps: dict[str, Map] = {}
        internal: dict[str, Map] = {}
        m = lib.bpf_object__next_map(ptr, ffi.NULL)
        while m != ffi.NULL:
            name = ffi.string(lib.bpf_map__name(m)).decode()
            view = Map(name=name, _obj=self, _ptr=m)
            (internal if lib.bpf_map__is_internal(m) else maps)[name] = view
            m = lib.bpf_object__next_map(ptr, m)
        self.programs: Mapping[str, Program] = types.MappingProxyType(progs)
        self.maps: Mapping[str, Map] = types.MappingProxyType(maps)
        # .rodata/.data/.bss, named "<object prefix>.rodata" etc. by libbpf.
        self.internal_maps: Mapping[str, Map] = types.MappingProxyType(internal)

    @classmethod
    def open(cls, path: str | os.PathLike, *, name: str | None = None) -> BpfObject:
        """Open (parse) an ELF object; nothing reaches the kernel until :meth:`load`."""
        spath = os.fspath(path)
        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        c_name = ffi.new("char[]", name.encode()) if name else ffi.NULL
        opts.object_name = c_name
        with capture_log() as lines:
            ptr = lib.bpf_object__open_file(_c_path(spath), opts)
        if ptr == ffi.NULL:
            err = ffi.errno or errno.EINVAL
            detail = _last_warning(lines)
            raise KernelError(err, f"open BPF object {spath}" + (f" ({detail})" if detail else ""))
        return cls(ffi.gc(ptr, lib.bpf_object__close), spath)

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else ("loaded" if self._loaded else "opened")
        return f"<BpfObject {self.path} {state} programs={list(self.programs)}>"

    def _require_open(self, what: str) -> None:
        if self._ptr is None:
            raise KernelError(errno.EBADF, f"{what}: its BpfObject {self.path} is closed "
                              "(dup() programs and maps you keep past close())")

    def _require_unloaded(self, what: str) -> None:
        self._require_open(what)
        if self._loaded:
            raise InvalidSpec(f"{what}: only possible before BpfObject.load()")

    def _prog(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise InvalidSpec(f"{self.path} has no program {name!r} "
                              f"(it has: {', '.join(self.programs) or 'none'})") from None

    def _map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise InvalidSpec(f"{self.path} has no map {name!r} "
                              f"(it has: {', '.join(self.maps) or 'none'})") from None

    # -- configuration before load -------------------------------------------------------
    def set_map_pin_path(self, map_name: str, path: str | os.PathLike) -> None:
        """At load, reuse the map pinned at ``path`` if compatible, else create and pin it."""
        self._require_unloaded(f"set pin path of map {map_name}")
        check(lib.bpf_map__set_pin_path(self._map(map_name)._ptr, _c_path(path)),
              f"set pin path of map {map_name} to {os.fspath(path)}")

    def reuse_map_fd(self, map_name: str, fd: int) -> None:
        """Use an existing map (by fd; it is dup'ed) instead of creating ``map_name``."""
        self._require_unloaded(f"reuse fd for map {map_name}")
        check(lib.bpf_map__reuse_fd(self._map(map_name)._ptr, fd),
              f"reuse fd {fd} for map {map_name}")

    def set_max_entries(self, map_name: str, max_entries: int) -> None:
        self._require_unloaded(f"resize map {map_name}")
        check(lib.bpf_map__set_max_entries(self._map(map_name)._ptr, max_entries),
              f"set max_entries of map {map_name}")

    def set_program_type(self, prog_name: str, prog_type: int) -> None:
        self._require_unloaded(f"set type of program {prog_name}")
        check(lib.bpf_program__set_type(self._prog(prog_name)._ptr, prog_type),
              f"set type of program {prog_name}")

    def set_expected_attach_type(self, prog_name: str, attach_type: int) -> None:
        self._require_unloaded(f"set expected attach type of program {prog_name}")
        check(lib.bpf_program__set_expected_attach_type(self._prog(prog_name)._ptr, attach_type),
              f"set expected attach type of program {prog_name}")

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        """Leave a program out of :meth:`load` (it stays unloaded)."""
        self._require_unloaded(f"set autoload of program {prog_name}")
        check(lib.bpf_program__set_autoload(self._prog(prog_name)._ptr, autoload),
              f"set autoload of program {prog_name}")

    def _find_global(self, name: str):
        btf = lib.bpf_object__btf(self._ptr)
        if btf == ffi.NULL:
            raise InvalidSpec(f"{self.path} has no BTF: compile it with -g to set globals")
        for sec in _DATA_SECTIONS:
            sec_id = lib.btf__find_by_name_kind(btf, sec.encode(), lib.BTF_KIND_DATASEC)
            if sec_id < 0:
                continue
            t = lib.btf__type_by_id(btf, sec_id)
            infos = lib.btf_var_secinfos(t)
            for i in range(lib.btf_vlen(t)):
                var = lib.btf__type_by_id(btf, infos[i].type)
                if ffi.string(lib.btf__name_by_offset(btf, var.name_off)).decode() == name:
                    for m in self.internal_maps.values():
                        if m.name.endswith(sec):
                            return m, infos[i].offset, infos[i].size
        raise InvalidSpec(f"{self.path} has no global variable {name!r} in "
                          f"{'/'.join(_DATA_SECTIONS)}")

    def set_global(self, name: str, value: bytes) -> None:
        """Set a global variable (``const volatile`` config or plain global) before load."""
        self._require_unloaded(f"set global {name}")
        m, offset, size = self._find_global(name)
        if len(value) != size:
            raise InvalidSpec(f"global {name} in {self.path} is {size} bytes, got {len(value)}")
        psize = ffi.new("size_t *")
        data = lib.bpf_map__initial_value(m._ptr, psize)
        check(data, f"get initial value of {m.name}")
        # Before load this is libbpf's own copy of the section, which load() hands the kernel.
        ffi.memmove(ffi.cast("char *", data) + offset, value, size)

    def get_global(self, name: str) -> bytes:
        """Current bytes of a global: the initial value before load, the kernel's after."""
        self._require_open(f"get global {name}")
        m, offset, size = self._find_global(name)
        if self._loaded:
            # libbpf 1.1 does not remap its copy onto the kernel map outside skeletons: read
            # the section from the kernel (the map holds it as one value under key 0).
            value = m.lookup(bytes(4))
            if value is None:
                raise KernelError(errno.ENOENT, f"read {m.name}")
            return value[offset:offset + size]
        psize = ffi.new("size_t *")
        data = check(lib.bpf_map__initial_value(m._ptr, psize), f"read {m.name}")
        return ffi.buffer(ffi.cast("char *", data) + offset, size)[:]

    # -- load ----------------------------------------------------------------------------
    def load(self) -> None:
        """Create the maps and load every program into the kernel.

        On a verifier rejection raises :class:`VerifierError` carrying the verifier's log of
        the failing program(s); other failures raise :class:`KernelError` with libbpf's reason.
        """
        self._require_unloaded(f"load {self.path}")
        bufs = {}
        for name, prog in self.programs.items():
            buf = ffi.new("char[]", _VERIFIER_LOG_SIZE)
            # log_level stays 0: libbpf loads quietly and retries with level 1 into this buffer
            # only when the kernel rejects the program, so successful loads cost nothing.
            check(lib.bpf_program__set_log_buf(prog._ptr, buf, _VERIFIER_LOG_SIZE),
                  f"set log buffer of program {name}")
            bufs[name] = buf
        try:
            with capture_log() as lines:
                ret = lib.bpf_object__load(self._ptr)
            if ret < 0:
                logs = []
                for name, buf in bufs.items():
                    text = ffi.string(buf).decode("utf-8", "replace")
                    if text.strip():
                        logs.append(f"-- program {name} --\n{text}")
                if logs:
                    raise VerifierError(-ret, f"load {self.path}", "\n".join(logs))
                detail = _last_warning(lines)
                raise KernelError(-ret, f"load {self.path}" + (f" ({detail})" if detail else ""))
        finally:
            for prog in self.programs.values():
                lib.bpf_program__set_log_buf(prog._ptr, ffi.NULL, 0)
        self._loaded = True

    @property
    def loaded(self) -> bool:
        return self._loaded

    def close(self) -> None:
        """Free the libbpf object; its programs and maps close unless dup()'ed or pinned."""
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            ffi.release(ptr)  # runs bpf_object__close now, exactly once

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _last_warning(lines: list[str]) -> str:
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith("libbpf: -- BEGIN") and not text.startswith("-- END"):
            return text.removeprefix("libbpf: ")
    return ""


# ---------------------------------------------------------------------------------------------
# Link
# ---------------------------------------------------------------------------------------------

class Link(_FdOwner):
    """A BPF link: an attachment the kernel keeps while the fd or a bpffs pin holds it."""

    def __init__(self, fd: int, *, owned: bool = True) -> None:
        self._own_fd(fd, owned)

    def __repr__(self) -> str:
        return f"<Link fd={self._fd}>"

    @property
    def fd(self) -> int:
        return self._require_fd("link")

    @classmethod
    def create(cls, prog_fd: int, target: int, attach_type: int, *, flags: int = 0,
               relative_fd: int = 0, relative_id: int = 0,
               expected_revision: int = 0) -> Link:
        """BPF_LINK_CREATE with a numeric attach type; ``target`` is the ifindex for
        tcx/netkit/xdp (in the caller's network namespace).

        Anchors (tcx/netkit): ``flags`` takes BPF_F_BEFORE/BPF_F_AFTER, with ``relative_fd`` (a
        program fd, or a link fd with BPF_F_LINK) or ``relative_id`` (BPF_F_ID is added).
        ``expected_revision`` makes the attach fail with ESTALE if the hook changed since a
        query.  For xdp, ``flags`` are XDP_FLAGS_* (mode).
        """
        if relative_fd and relative_id:
            raise InvalidSpec("link create: give relative_fd or relative_id, not both")
        attr = ffi.new("struct nk_link_create_attr *")
        attr.prog_fd = prog_fd
        attr.target = target
        attr.attach_type = attach_type
        if relative_id:
            flags |= BPF_F_ID
            attr.relative = relative_id
        else:
            attr.relative = relative_fd
        attr.flags = flags
        attr.expected_revision = expected_revision
        fd = check(lib.nk_bpf(BPF_LINK_CREATE, attr, ffi.sizeof(attr[0])),
                   f"link create {_attach_name(attach_type)} on ifindex {target}")
        return cls(fd)

    @classmethod
    def from_fd(cls, fd: int, *, owned: bool = True) -> Link:
        _expect_kind(fd, "link", f"link fd {fd}", close=owned)
        return cls(fd, owned=owned)

    @classmethod
    def from_pin(cls, path: str | os.PathLike) -> Link:
        fd = check(lib.bpf_obj_get(_c_path(path)), f"open pinned link {os.fspath(path)}")
        _expect_kind(fd, "link", f"pin {os.fspath(path)}")
        return cls(fd)

    @classmethod
    def from_id(cls, link_id: int) -> Link:
        return cls(check(lib.bpf_link_get_fd_by_id(link_id), f"open link id {link_id}"))

    def pin(self, path: str | os.PathLike) -> None:
        check(lib.bpf_obj_pin(self.fd, _c_path(path)), f"pin link at {os.fspath(path)}")

    @staticmethod
    def unpin(path: str | os.PathLike) -> None:
        """Remove a pin; the link goes away when no fd or other pin holds it.

        When the pin was the last reference the kernel releases the link from a workqueue, so
        the detach is visible to BPF_PROG_QUERY shortly after this returns, not at once.
        Closing the last fd, by contrast, detaches synchronously.
        """
        try:
            os.unlink(path)
        except OSError as exc:
            raise KernelError(exc.errno or errno.EIO, f"unpin {os.fspath(path)}") from None

    def update(self, new_prog_fd: int, *, old_prog_fd: int | None = None) -> None:
        """Swap the program atomically; with ``old_prog_fd`` only if that one is attached
        (else EPERM)."""
        opts = ffi.new("struct bpf_link_update_opts *")
        opts.sz = ffi.sizeof("struct bpf_link_update_opts")
        if old_prog_fd is not None:
            opts.flags = BPF_F_REPLACE
            opts.old_prog_fd = old_prog_fd
        check(lib.bpf_link_update(self.fd, new_prog_fd, opts), f"update link {self._describe()}")

    def detach(self) -> None:
        """Detach now (BPF_LINK_DETACH, 5.9+); the fd stays open, the link defunct."""
        check(lib.bpf_link_detach(self.fd), f"detach link {self._describe()}")

    def info(self) -> LinkInfo:
        raw = ffi.new("struct nk_link_info *")
        size = ffi.new("__u32 *", ffi.sizeof("struct nk_link_info"))
        check(lib.bpf_obj_get_info_by_fd(self.fd, raw, size), "get link info")
        ifindex = attach_type = 0
        if raw.type in (BPF_LINK_TYPE_TCX, BPF_LINK_TYPE_NETKIT):
            ifindex, attach_type = raw.u.tcx.ifindex, raw.u.tcx.attach_type
        elif raw.type == BPF_LINK_TYPE_XDP:
            ifindex, attach_type = raw.u.xdp.ifindex, BPF_XDP
        return LinkInfo(id=raw.id, type=raw.type, prog_id=raw.prog_id,
                        ifindex=ifindex, attach_type=attach_type)

    @property
    def id(self) -> int:
        return self.info().id

    def _describe(self) -> str:
        try:
            info = self.info()
        except KernelError:
            return f"fd {self._fd}"
        return f"id {info.id}"

    def close(self) -> None:
        """Close our fd; the attachment ends unless a pin (or another fd) keeps it."""
        self._release_fd()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# queries, pins, bpffs
# ---------------------------------------------------------------------------------------------

_QUERY_SIZE_V1 = 40  # up to and including prog_attach_flags: what 5.x/6.1 kernels know


def prog_query(ifindex: int, attach_type: int) -> QueryResult:
    """Programs (and links) attached to a device hook, in run order (BPF_PROG_QUERY).

    Kernels before 6.6 reject the link_ids field: the query is retried without it, giving a
    revision of 0 and zero link ids.  An attach type the kernel does not know is EINVAL.
    """
    what = f"query {_attach_name(attach_type)} on ifindex {ifindex}"
    capacity = 16
    with_links = True
    while True:
        attr = ffi.new("struct nk_prog_query_attr *")
        prog_ids = ffi.new("__u32[]", capacity)
        link_ids = ffi.new("__u32[]", capacity)
        attr.target = ifindex
        attr.attach_type = attach_type
        attr.prog_ids = int(ffi.cast("uintptr_t", prog_ids))
        attr.count = capacity
        size = ffi.sizeof(attr[0])
        if with_links:
            attr.link_ids = int(ffi.cast("uintptr_t", link_ids))
        else:
            size = _QUERY_SIZE_V1
        ret = lib.nk_bpf(BPF_PROG_QUERY, attr, size)
        if ret == -errno.EINVAL and with_links:
            with_links = False
            continue
        if ret == -errno.ENOSPC:  # more attached than we had room for: count holds the total
            capacity = max(capacity * 2, attr.count)
            continue
        check(ret, what)
        n = attr.count
        return QueryResult(
            revision=attr.revision if with_links else 0,
            prog_ids=tuple(prog_ids[i] for i in range(n)),
            link_ids=tuple(link_ids[i] for i in range(n)) if with_links else (0,) * n,
        )


def obj_get(path: str | os.PathLike) -> int:
    """Open a bpffs pin; the caller owns the returned fd."""
    return check(lib.bpf_obj_get(_c_path(path)), f"open pin {os.fspath(path)}")


def pin_type(path: str | os.PathLike) -> Literal["prog", "map", "link"] | None:
    """What a bpffs pin holds, or None if nothing is pinned at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    fd = obj_get(path)
    try:
        return _fd_kind(fd)  # type: ignore[return-value]
    finally:
        os.close(fd)


def is_bpffs(path: str | os.PathLike) -> bool:
    """Is ``path`` on a BPF filesystem (statfs f_type BPF_FS_MAGIC)?"""
    buf = ffi.new("struct statfs *")
    if lib.statfs(_c_path(path), buf) != 0:
        err = ffi.errno
        if err == errno.ENOENT:
            return False
        raise KernelError(err, f"statfs {os.fspath(path)}")
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def mount_bpffs(path: str | os.PathLike) -> None:
    """``mount -t bpf bpf <path>`` (needs CAP_SYS_ADMIN)."""
    if lib.mount(b"bpf", _c_path(path), b"bpf", 0, ffi.NULL) != 0:
        raise KernelError(ffi.errno, f"mount bpffs at {os.fspath(path)}")


def unmount(path: str | os.PathLike, *, lazy: bool = False) -> None:
    """umount(2) a mount point, e.g. a bpffs from :func:`mount_bpffs`."""
    if lib.umount2(_c_path(path), lib.MNT_DETACH if lazy else 0) != 0:
        raise KernelError(ffi.errno, f"unmount {os.fspath(path)}")


def _call_logged(fn, *args) -> tuple[int, str]:
    """Call a libbpf netlink helper, keeping the kernel's extended ack text for the error."""
    with capture_log() as lines:
        ret = fn(*args)
    msg = ""
    for line in lines:
        if "Kernel error message:" in line:
            msg = line.split("Kernel error message:", 1)[1].strip()
    return ret, (f" [kernel: {msg}]" if msg else "")


# ---------------------------------------------------------------------------------------------
# XDP (netlink, via libbpf)
# ---------------------------------------------------------------------------------------------

def xdp_attach(ifindex: int, prog_fd: int, flags: int = 0) -> None:
    """Attach an XDP program without a link (XDP_FLAGS_SKB_MODE for generic mode)."""
    ret, ext = _call_logged(lib.bpf_xdp_attach, ifindex, prog_fd, flags, ffi.NULL)
    check(ret, f"attach xdp program to ifindex {ifindex}{ext}")


def xdp_detach(ifindex: int, flags: int = 0) -> None:
    ret, ext = _call_logged(lib.bpf_xdp_detach, ifindex, flags, ffi.NULL)
    check(ret, f"detach xdp from ifindex {ifindex}{ext}")


def xdp_query(ifindex: int, flags: int = 0) -> int:
    """Id of the XDP program on ``ifindex`` (in the mode ``flags`` select), 0 if none."""
    prog_id = ffi.new("__u32 *")
    ret, ext = _call_logged(lib.bpf_xdp_query_id, ifindex, flags, prog_id)
    check(ret, f"query xdp on ifindex {ifindex}{ext}")
    return prog_id[0]


# ---------------------------------------------------------------------------------------------
# legacy TC: clsact qdisc + cls_bpf in direct-action mode (libbpf bpf_tc_*)
# ---------------------------------------------------------------------------------------------

def _tc_hook(ifindex: int, attach_point: int):
    if attach_point not in _TC_PARENT:
        raise InvalidSpec(f"tc attach point must be TC_INGRESS or TC_EGRESS, got {attach_point}")
    hook = ffi.new("struct bpf_tc_hook *")
    hook.sz = ffi.sizeof("struct bpf_tc_hook")
    hook.ifindex = ifindex
    hook.attach_point = attach_point
    return hook


def _tc_opts(**fields):
    opts = ffi.new("struct bpf_tc_opts *")
    opts.sz = ffi.sizeof("struct bpf_tc_opts")
    for k, v in fields.items():
        setattr(opts, k, v)
    return opts


def _tc_name(attach_point: int) -> str:
    return {TC_INGRESS: "ingress", TC_EGRESS: "egress"}.get(attach_point, str(attach_point))


def tc_hook_create(ifindex: int, attach_point: int) -> None:
    """Make sure the clsact qdisc exists (one qdisc serves both hooks; EEXIST is fine)."""
    ret, ext = _call_logged(lib.bpf_tc_hook_create, _tc_hook(ifindex, attach_point))
    if ret == -errno.EEXIST:
        return
    check(ret, f"create clsact qdisc on ifindex {ifindex}{ext}")


def tc_hook_destroy(ifindex: int, attach_point: int) -> None:
    """Remove every filter on the hook.  Asking for both hooks at once
    (``TC_INGRESS | TC_EGRESS``) deletes the clsact qdisc itself."""
    hook = ffi.new("struct bpf_tc_hook *")
    hook.sz = ffi.sizeof("struct bpf_tc_hook")
    hook.ifindex = ifindex
    hook.attach_point = attach_point
    ret, ext = _call_logged(lib.bpf_tc_hook_destroy, hook)
    if ret in (-errno.ENOENT, -errno.EINVAL) and attach_point == (TC_INGRESS | TC_EGRESS):
        # No clsact qdisc: nothing to destroy.
        return
    check(ret, f"destroy tc {_tc_name(attach_point)} hook on ifindex {ifindex}{ext}")


def tc_attach(ifindex: int, attach_point: int, prog_fd: int, *, handle: int, priority: int,
              replace: bool = False) -> int:
    """Attach a cls_bpf filter (direct action); returns the attached program's id.

    Without ``replace`` an existing filter at (handle, priority) is EEXIST.
    """
    opts = _tc_opts(prog_fd=prog_fd, handle=handle, priority=priority,
                    flags=lib.BPF_TC_F_REPLACE if replace else 0)
    ret, ext = _call_logged(lib.bpf_tc_attach, _tc_hook(ifindex, attach_point), opts)
    check(ret, f"attach tc {_tc_name(attach_point)} filter handle {handle} prio {priority} "
               f"on ifindex {ifindex}{ext}")
    return opts.prog_id


def tc_detach(ifindex: int, attach_point: int, *, handle: int, priority: int) -> None:
    opts = _tc_opts(handle=handle, priority=priority)
    ret, ext = _call_logged(lib.bpf_tc_detach, _tc_hook(ifindex, attach_point), opts)
    check(ret, f"detach tc {_tc_name(attach_point)} filter handle {handle} prio {priority} "
               f"on ifindex {ifindex}{ext}")


def tc_query(ifindex: int, attach_point: int, *, handle: int, priority: int) -> int | None:
    """Program id of the filter at (handle, priority), None if there is no such filter."""
    opts = _tc_opts(handle=handle, priority=priority)
    ret, ext = _call_logged(lib.bpf_tc_query, _tc_hook(ifindex, attach_point), opts)
    if ret in (-errno.ENOENT, -errno.EINVAL):
        # EINVAL: no clsact qdisc on the device at all.
        return None
    check(ret, f"query tc {_tc_name(attach_point)} filter handle {handle} prio {priority} "
               f"on ifindex {ifindex}{ext}")
    return opts.prog_id


_TCA_BPF_ID = 11  # linux/pkt_cls.h; pyroute2 0.9 decodes attributes only up to TCA_BPF_FLAGS


def _unknown_nla_u32(nla, attr_type: int) -> int:
    """A u32 attribute pyroute2 has no name for: it keeps the raw bytes, so read them."""
    for slot in nla["attrs"]:
        if slot.name != "UNKNOWN":
            continue
        raw = slot.nla
        if raw["header"]["type"] & 0x3FFF == attr_type and raw.length >= 8:
            return struct.unpack_from("=I", raw.data, raw.offset + 4)[0]
    return 0


def tc_list(ifindex: int, attach_point: int) -> list[tuple[int, int, int, str]]:
    """Every cls_bpf filter on a hook as ``(handle, priority, prog_id, name)``.

    libbpf has no listing call, so this is an RTM_GETTFILTER dump through pyroute2 in the
    calling thread's network namespace.  Priority is the upper half of tcm_info.
    """
    if attach_point not in _TC_PARENT:
        raise InvalidSpec(f"tc attach point must be TC_INGRESS or TC_EGRESS, got {attach_point}")
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    out = []
    with IPRoute() as ipr:
        try:
            msgs = ipr.get_filters(index=ifindex, parent=_TC_PARENT[attach_point])
        except NetlinkError as exc:
            if exc.code == errno.EINVAL:  # no clsact qdisc
                return []
            raise KernelError(exc.code, f"list tc {_tc_name(attach_point)} filters on "
                              f"ifindex {ifindex}") from None
        for msg in msgs:
            if msg.get_attr("TCA_KIND") != "bpf":
                continue
            options = msg.get_attr("TCA_OPTIONS")
            if not options:  # the per-priority chain head carries no options
                continue
            prog_id = _unknown_nla_u32(options, _TCA_BPF_ID)
            name = options.get_attr("TCA_BPF_NAME") or ""
            out.append((msg["handle"], (msg["info"] >> 16) & 0xFFFF, prog_id, name))
    return out
