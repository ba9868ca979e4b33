"""The libbpf error translator, versions, and what works without privileges (ELF parsing)."""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

import nkframe
from nkframe import bpf
from nkframe._bpf import check, ffi, lib
from nkframe.errors import InvalidSpec, KernelError, VerifierError

OBJS = Path(nkframe.__file__).parent / "_objs"


def test_negative_int_is_minus_errno():
    with pytest.raises(KernelError) as ei:
        check(-errno.ENOENT, "open pinned map /sys/fs/bpf/x")
    assert ei.value.errno == errno.ENOENT
    assert "open pinned map /sys/fs/bpf/x" in str(ei.value)
    assert "ENOENT" in str(ei.value)


def test_non_negative_int_passes_through():
    assert check(0, "x") == 0
    assert check(17, "x") == 17


def test_null_pointer_reads_errno():
    ffi.errno = errno.EPERM
    with pytest.raises(KernelError) as ei:
        check(ffi.NULL, "open object")
    assert ei.value.errno == errno.EPERM


def test_non_null_pointer_passes_through():
    p = ffi.new("int *")
    assert check(p, "x") is p


def test_kernel_error_is_an_oserror():
    with pytest.raises(OSError):
        check(-errno.EBUSY, "x")


def test_verifier_error_shows_log_tail():
    e = VerifierError(errno.EACCES, "load x.o", "line1\ninvalid access to packet\n")
    assert "invalid access to packet" in str(e)
    assert e.errno == errno.EACCES


def test_libbpf_version():
    v = bpf.libbpf_version()
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", v)
    major, minor = (int(x) for x in v.split(".")[:2])
    assert (major, minor) == (lib.libbpf_major_version(), lib.libbpf_minor_version())
    assert (major, minor) >= (1, 1)


def test_libxdp_version():
    v = bpf.libxdp_version()
    if lib.NK_HAVE_LIBXDP:
        assert v and re.fullmatch(r"\d+\.\d+(\.\d+)?", v)
    else:
        assert v is None


def test_open_missing_object():
    with pytest.raises(KernelError) as ei:
        bpf.BpfObject.open("/nonexistent/x.o")
    assert ei.value.errno == errno.ENOENT
    assert "/nonexistent/x.o" in str(ei.value)


def test_open_parses_programs_and_maps_without_kernel():
    with bpf.BpfObject.open(OBJS / "test_prog.o") as obj:
        assert set(obj.programs) == {"tc_count", "tc_mark", "tc_next", "xdp_pass"}
        assert set(obj.maps) == {"test_hash", "test_array", "test_percpu"}
        assert obj.programs["tc_count"].type == bpf.BPF_PROG_TYPE_SCHED_CLS
        assert obj.programs["xdp_pass"].type == bpf.BPF_PROG_TYPE_XDP
        h = obj.maps["test_hash"]
        assert (h.type, h.key_size, h.value_size, h.max_entries) == (1, 4, 8, 64)
        assert obj.maps["test_percpu"].is_percpu
        with pytest.raises(KernelError) as ei:
            obj.programs["tc_count"].fd  # not loaded
        assert ei.value.errno == errno.EBADF


def test_globals_before_load():
    with bpf.BpfObject.open(OBJS / "test_prog.o") as obj:
        assert obj.get_global("cfg_verdict") == struct.pack("<i", 0)
        obj.set_global("cfg_verdict", struct.pack("<i", 2))
        assert obj.get_global("cfg_verdict") == struct.pack("<i", 2)
        with pytest.raises(InvalidSpec):
            obj.set_global("cfg_verdict", b"\x01")  # wrong size
        with pytest.raises(InvalidSpec):
            obj.set_global("no_such_global", b"\x00" * 4)


def test_unknown_names_are_invalid_spec():
    with bpf.BpfObject.open(OBJS / "test_prog.o") as obj:
        with pytest.raises(InvalidSpec, match="no map 'nope'"):
            obj.set_map_pin_path("nope", "/sys/fs/bpf/x")
        with pytest.raises(InvalidSpec, match="no program 'nope'"):
            obj.set_program_type("nope", bpf.BPF_PROG_TYPE_XDP)


def test_views_die_with_their_object():
    obj = bpf.BpfObject.open(OBJS / "test_prog.o")
    m = obj.maps["test_hash"]
    obj.close()
    obj.close()  # idempotent
    with pytest.raises(KernelError) as ei:
        m.key_size
    assert ei.value.errno == errno.EBADF


def test_test_run_rejects_bad_repeat():
    with bpf.BpfObject.open(OBJS / "test_prog.o") as obj:
        with pytest.raises(InvalidSpec):
            obj.programs["tc_count"].test_run(b"\x00" * 64, repeat=0)


def test_is_bpffs_on_plain_dirs(tmp_path):
    assert bpf.is_bpffs(tmp_path) is False
    assert bpf.is_bpffs(tmp_path / "missing") is False


def test_link_create_rejects_two_anchors():
    with pytest.raises(InvalidSpec):
        bpf.Link.create(0, 1, bpf.BPF_TCX_INGRESS, relative_fd=3, relative_id=4)


def test_open_with_object_name():
    with bpf.BpfObject.open(OBJS / "test_prog.o", name="custom") as obj:
        # libbpf names the data-section maps after the object
        assert obj.internal_maps and all(n.startswith("custom.") for n in obj.internal_maps)
