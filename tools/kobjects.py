"""Census of the kernel's BPF objects by id, to prove that nothing leaked.

The kernel numbers every program, map, link and BTF object with an id and hands them out in
order through ``BPF_{PROG,MAP,LINK,BTF}_GET_NEXT_ID``.  Ids are system-wide: a snapshot holds
everyone's objects, so callers compare two snapshots and look only at what is new *and ours*
(by name; see :meth:`Census.new_since`).

A freed object's id disappears after an RCU grace period or a workqueue pass, not at the moment
its last reference goes: compare with :func:`settle`, which polls until the count stops falling.
"""

from __future__ import annotations

import errno
import time
from typing import Callable, Iterable

import attrs

from nkframe.errors import KernelError

# enum bpf_cmd (include/uapi/linux/bpf.h)
BPF_PROG_GET_NEXT_ID = 11
BPF_MAP_GET_NEXT_ID = 12
BPF_BTF_GET_NEXT_ID = 23
BPF_LINK_GET_NEXT_ID = 31

_KINDS = {"prog": BPF_PROG_GET_NEXT_ID, "map": BPF_MAP_GET_NEXT_ID, "link": BPF_LINK_GET_NEXT_ID, "btf": BPF_BTF_GET_NEXT_ID}


def ids(kind: str) -> list[int]:
    """Every id of one kind (``prog``, ``map``, ``link``, ``btf``) alive now, ascending."""
    from nkframe._bpf import ffi, lib

    cmd = _KINDS[kind]
    # union bpf_attr's GET_NEXT_ID member: {start_id, next_id, open_flags}, all __u32.
    attr = ffi.new("uint32_t[3]")
    out: list[int] = []
    start = 0
    while True:
        attr[0], attr[1], attr[2] = start, 0, 0
        ret = lib.nk_bpf(cmd, attr, 12)
        if ret == -errno.ENOENT:  # no id above start_id
            return out
        if ret < 0:
            raise KernelError(-ret, f"list {kind} ids after {start}")
        start = attr[1]
        out.append(start)


def _name(kind: str, obj_id: int) -> str | None:
    """The object's name (a link: its program's name), None if it vanished meanwhile."""
    from nkframe import bpf

    try:
        if kind == "prog":
            with bpf.Program.from_id(obj_id) as p:
                return p.info().name
        if kind == "map":
            with bpf.Map.from_id(obj_id) as m:
                return m.name
        if kind == "link":
            with bpf.Link.from_id(obj_id) as link:
                prog_id = link.info().prog_id
            return _name("prog", prog_id) or ""
    except KernelError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return ""


@attrs.frozen
class Census:
    """The ids of every BPF program, map, link and BTF object at one moment."""

    prog: frozenset[int]
    map: frozenset[int]
    link: frozenset[int]
    btf: frozenset[int]

    @classmethod
    def take(cls) -> "Census":
        return cls(**{k: frozenset(ids(k)) for k in _KINDS})

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in _KINDS}

    def new_since(self, before: "Census", *, names: Iterable[str] | Callable[[str], bool] | None = None) -> dict[str, list[tuple[int, str]]]:
        """Objects alive now that were not in ``before``: kind -> [(id, name)].

        ``names`` keeps only objects whose name (for a link: its program's) is listed or passes
        the predicate; BTF objects have no name and are counted only when ``names`` is None.
        """
        if names is None:
            keep = lambda _n: True  # noqa: E731
        elif callable(names):
            keep = names
        else:
            allowed = frozenset(names)
            keep = allowed.__contains__
        out: dict[str, list[tuple[int, str]]] = {}
        for kind in _KINDS:
            if kind == "btf" and names is not None:
                continue
            fresh = []
            for obj_id in sorted(getattr(self, kind) - getattr(before, kind)):
                name = "" if kind == "btf" else _name(kind, obj_id)
                if name is not None and keep(name):
                    fresh.append((obj_id, name))
            if fresh:
                out[kind] = fresh
        return out


    def new_of_object(self, before: "Census", object_name: str) -> dict[str, list[tuple[int, str]]]:
        """New objects that came from one BPF object file, told apart from everyone else's by
        the file's name: libbpf names its internal maps ``<object name>.rodata`` (cut to 15
        bytes), every program of the file uses them, and a link runs a program.  So: those
        maps, the programs using them, the other maps those programs use, their links.

        Give each test its own copy of an object file (a unique file name) and concurrent
        users of the same program on the machine are not counted.
        """
        from nkframe import bpf

        tag = object_name[:8] + "."
        fresh_maps = {m: _name("map", m) for m in self.map - before.map}
        ours_maps = {m for m, n in fresh_maps.items() if n and n.startswith(tag)}
        progs: dict[int, str] = {}
        used: set[int] = set()
        for pid in self.prog - before.prog:
            try:
                with bpf.Program.from_id(pid) as p:
                    info = p.info()
            except KernelError:
                continue
            if ours_maps & set(info.map_ids):
                progs[pid] = info.name
                used |= set(info.map_ids)
        out: dict[str, list[tuple[int, str]]] = {}
        maps = sorted((m, fresh_maps[m] or "") for m in (ours_maps | (used & set(fresh_maps))) if fresh_maps.get(m) is not None)
        if maps:
            out["map"] = maps
        if progs:
            out["prog"] = sorted(progs.items())
        links = []
        for lid in self.link - before.link:
            try:
                with bpf.Link.from_id(lid) as link:
                    if link.info().prog_id in progs:
                        links.append((lid, progs[link.info().prog_id]))
            except KernelError:
                continue
        if links:
            out["link"] = sorted(links)
        return out


def settle(before: Census, *, names=None, object_name: str | None = None, timeout: float = 5.0) -> dict[str, list[tuple[int, str]]]:
    """Wait (up to ``timeout``) until no object of ours created since ``before`` is alive.

    "Ours" is by ``names`` (see :meth:`Census.new_since`) or by BPF object file
    (``object_name``, see :meth:`Census.new_of_object`).  Returns what is still alive at the
    end (empty when nothing leaked).
    """
    deadline = time.monotonic() + timeout
    while True:
        now = Census.take()
        left = now.new_of_object(before, object_name) if object_name else now.new_since(before, names=names)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
