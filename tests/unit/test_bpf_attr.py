"""Our hand-made bpf(2) attribute layouts against the kernel's include/uapi/linux/bpf.h.

The system header is 6.1's and lacks the tcx/netkit members, so these offsets are the only
thing standing between a typo and a kernel that silently reads the wrong field.  The numbers
below were read off the 6.6+ uAPI header (union bpf_attr link_create/query, struct
bpf_link_info), not computed from our own structs.
"""

from __future__ import annotations

import pytest

from nkframe import bpf
from nkframe._bpf import ffi


@pytest.mark.parametrize(
    "field, offset",
    [
        ("prog_fd", 0),
        ("target", 4),            # union { target_fd; target_ifindex; }
        ("attach_type", 8),
        ("flags", 12),
        ("relative", 16),         # tcx/netkit { union { relative_fd; relative_id; } ...
        ("expected_revision", 24),  # ... __u64 expected_revision; } (8-aligned)
    ],
)
def test_link_create_offsets(field, offset):
    assert ffi.offsetof("struct nk_link_create_attr", field) == offset


def test_link_create_size_covers_tcx_member():
    assert ffi.sizeof("struct nk_link_create_attr") == 32


@pytest.mark.parametrize(
    "field, offset",
    [
        ("target", 0),
        ("attach_type", 4),
        ("query_flags", 8),
        ("attach_flags", 12),
        ("prog_ids", 16),
        ("count", 24),            # union { prog_cnt; count; }, then 4 bytes of padding
        ("prog_attach_flags", 32),
        ("link_ids", 40),
        ("link_attach_flags", 48),
        ("revision", 56),
    ],
)
def test_prog_query_offsets(field, offset):
    assert ffi.offsetof("struct nk_prog_query_attr", field) == offset


def test_prog_query_sizes():
    assert ffi.sizeof("struct nk_prog_query_attr") == 64
    # The retry for pre-6.6 kernels passes everything up to prog_attach_flags and no further.
    assert bpf._QUERY_SIZE_V1 == ffi.offsetof("struct nk_prog_query_attr", "link_ids")


def test_link_info_offsets():
    t = "struct nk_link_info"
    assert ffi.offsetof(t, "type") == 0
    assert ffi.offsetof(t, "id") == 4
    assert ffi.offsetof(t, "prog_id") == 8
    assert ffi.offsetof(t, "u") == 16  # the union holds __u64s
    info = ffi.new(f"{t} *")
    base = int(ffi.cast("uintptr_t", info))
    assert int(ffi.cast("uintptr_t", ffi.addressof(info.u.tcx, "ifindex"))) - base == 16
    assert int(ffi.cast("uintptr_t", ffi.addressof(info.u.tcx, "attach_type"))) - base == 20
    assert int(ffi.cast("uintptr_t", ffi.addressof(info.u.xdp, "ifindex"))) - base == 16


def test_link_info_decode_from_raw_bytes():
    """Decode a bpf_link_info image laid out by hand as the kernel would write it."""
    import struct

    raw = struct.pack("<IIII II", bpf.BPF_LINK_TYPE_TCX, 7, 42, 0, 3, bpf.BPF_TCX_EGRESS)
    info = ffi.new("struct nk_link_info *")
    ffi.memmove(info, raw, len(raw))
    assert (info.type, info.id, info.prog_id) == (11, 7, 42)
    assert (info.u.tcx.ifindex, info.u.tcx.attach_type) == (3, 47)


@pytest.mark.parametrize(
    "name, value",
    [
        ("BPF_XDP", 37),
        ("BPF_TCX_INGRESS", 46),
        ("BPF_TCX_EGRESS", 47),
        ("BPF_NETKIT_PRIMARY", 54),
        ("BPF_NETKIT_PEER", 55),
        ("BPF_F_REPLACE", 1 << 2),
        ("BPF_F_BEFORE", 1 << 3),
        ("BPF_F_AFTER", 1 << 4),
        ("BPF_F_ID", 1 << 5),
        ("BPF_F_LINK", 1 << 13),
        ("BPF_LINK_TYPE_XDP", 6),
        ("BPF_LINK_TYPE_TCX", 11),
        ("BPF_LINK_TYPE_NETKIT", 13),
        ("BPF_PROG_TYPE_SCHED_CLS", 3),
        ("BPF_PROG_TYPE_XDP", 6),
        ("XDP_FLAGS_UPDATE_IF_NOEXIST", 1),
        ("XDP_FLAGS_SKB_MODE", 2),
        ("XDP_FLAGS_DRV_MODE", 4),
        ("XDP_FLAGS_REPLACE", 16),
        ("TC_INGRESS", 1),
        ("TC_EGRESS", 2),
        ("BPF_LINK_CREATE", 28),
        ("BPF_PROG_QUERY", 16),
    ],
)
def test_uapi_constants(name, value):
    assert getattr(bpf, name) == value


def test_constants_agree_with_installed_headers():
    """Where the installed headers know a number, ours must match it."""
    from nkframe._bpf import lib

    assert bpf.TC_INGRESS == lib.BPF_TC_INGRESS
    assert bpf.TC_EGRESS == lib.BPF_TC_EGRESS
