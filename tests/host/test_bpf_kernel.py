"""nkframe.bpf against the running kernel: objects, maps, pins, TCX links, TC, XDP.

Everything happens in network namespaces these tests create and on a private bpffs mount.
The fixtures here are private on purpose (they only need `ip netns` and setns): they switch the
*test thread* into the namespace, which is how the engine calls nkframe.bpf.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

import nkframe
from nkframe import bpf
from nkframe._bpf import lib
from nkframe.errors import InvalidSpec, KernelError, VerifierError

pytestmark = pytest.mark.root

OBJS = Path(nkframe.__file__).parent / "_objs"
PROG_O = OBJS / "test_prog.o"
BAD_O = OBJS / "test_bad.o"
TC_ACT_OK, TC_ACT_SHOT = 0, 2


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpf_fs():
    """A private bpffs for this module, unmounted at the end."""
    d = tempfile.mkdtemp(prefix="nkt-bpf-")
    bpf.mount_bpffs(d)
    try:
        yield Path(d)
    finally:
        bpf.unmount(d, lazy=True)
        os.rmdir(d)


@pytest.fixture
def pin_dir(bpf_fs):
    d = bpf_fs / uuid.uuid4().hex[:8]
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if lib.setns(fd, lib.CLONE_NEWNET) != 0:
            raise OSError(nkframe._bpf.ffi.errno, f"setns {path}")
    finally:
        os.close(fd)


class Veth:
    """A veth pair: `a` in the netns the test thread runs in, `b` in a second netns."""

    def __init__(self, ns_a: str, ns_b: str) -> None:
        self.ns_a, self.ns_b = ns_a, ns_b
        self.a, self.b = "nka", "nkb"
        self.ifindex = socket.if_nametoindex(self.a)

    def run_b(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.ns_b}", *cmd],
                              capture_output=True, text=True, timeout=30, check=check)

    def send_udp_from_b(self, count: int, port: int = 9, payload: bytes = b"nkframe") -> None:
        """Send UDP datagrams from b to a's address (a Python child in b's netns)."""
        code = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(int(sys.argv[1])):\n"
            "    s.sendto(bytes.fromhex(sys.argv[3]), ('198.51.100.1', int(sys.argv[2])))\n"
            "    time.sleep(0.05)\n"
        )
        self.run_b(sys.executable, "-c", code, str(count), str(port), payload.hex())


@pytest.fixture
def veth():
    """Two fresh netns joined by a veth; the test thread is switched into the first."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"nkt-bpfa-{tag}", f"nkt-bpfb-{tag}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    made = []
    try:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        ip = ["ip", "-n", ns_a]
        subprocess.run([*ip, "link", "add", "nka", "type", "veth", "peer", "name", "nkb",
                        "netns", ns_b], check=True)
        subprocess.run([*ip, "addr", "add", "198.51.100.1/24", "dev", "nka"], check=True)
        subprocess.run(["ip", "-n", ns_b, "addr", "add", "198.51.100.2/24", "dev", "nkb"],
                       check=True)
        for ns, dev in ((ns_a, "nka"), (ns_b, "nkb"), (ns_a, "lo"), (ns_b, "lo")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        _setns(f"/run/netns/{ns_a}")
        try:
            yield Veth(ns_a, ns_b)
        finally:
            if lib.setns(home, lib.CLONE_NEWNET) != 0:  # never leave the test thread behind
                raise RuntimeError("could not return the test thread to its netns")
    finally:
        os.close(home)
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def obj():
    with bpf.BpfObject.open(PROG_O) as o:
        o.load()
        yield o


# -- objects and programs ---------------------------------------------------------------------


@pytest.fixture
def tcx():
    """TCX links need Linux 6.6+ (the vm-legacy tier's 6.1 has none: TC covers it there)."""
    from nkframe import probe

    f = probe.features()
    if not f.supported("tcx"):
        pytest.skip(f"tcx unsupported here: {f['tcx'].reason}")


def test_load_gives_fds_and_info(obj):
    prog = obj.programs["tc_count"]
    info = prog.info()
    assert info.name == "tc_count"
    assert info.type == bpf.BPF_PROG_TYPE_SCHED_CLS
    assert len(info.tag) == 16 and int(info.tag, 16) >= 0
    assert info.id == prog.id > 0
    assert info.load_time > 0
    # tc_count uses the per-CPU array, the hash and .bss (and .rodata).
    map_ids = {m.id for m in (obj.maps["test_percpu"], obj.maps["test_hash"])}
    assert map_ids <= set(info.map_ids)
    minfo = obj.maps["test_hash"].info()
    assert (minfo.name, minfo.type, minfo.key_size, minfo.value_size, minfo.max_entries) == (
        "test_hash", bpf.BPF_MAP_TYPE_HASH, 4, 8, 64)


def test_test_run_retval_data_out_duration(obj):
    frame = bytes(range(64))
    res = obj.programs["tc_mark"].test_run(frame, repeat=10)
    assert res.retval == TC_ACT_OK
    assert res.data_out[0] == 0xAA and res.data_out[1:] == frame[1:]
    assert res.duration_ns >= 0
    # tc_mark counts every run in test_array[1]
    assert obj.maps["test_array"].lookup(_u32(1)) == _u64(10)


def test_test_run_short_packet_is_shot(obj):
    # Shorter than an Ethernet header: the kernel refuses (EINVAL) or the program drops it.
    try:
        res = obj.programs["tc_mark"].test_run(b"\x00" * 14)
    except KernelError as exc:
        assert exc.errno == errno.EINVAL
    else:
        assert res.retval == TC_ACT_OK


def test_set_global_changes_behaviour():
    with bpf.BpfObject.open(PROG_O) as o:
        o.set_global("cfg_verdict", struct.pack("<i", TC_ACT_SHOT))
        o.load()
        res = o.programs["tc_count"].test_run(b"\x00" * 64, repeat=5)
        assert res.retval == TC_ACT_SHOT
        # .bss after load is read back from the kernel
        assert o.get_global("seen_packets") == _u64(5)
        with pytest.raises(InvalidSpec):
            o.set_global("cfg_verdict", struct.pack("<i", 0))  # after load


def test_verifier_log_on_rejected_program():
    with bpf.BpfObject.open(BAD_O) as o:
        with pytest.raises(VerifierError) as ei:
            o.load()
    err = ei.value
    assert err.errno == errno.EACCES
    assert "bad_read" in err.log
    assert "invalid access to packet" in err.log
    assert str(BAD_O) in str(err)


def test_program_type_override_before_load():
    with bpf.BpfObject.open(PROG_O) as o:
        o.set_program_type("tc_next", bpf.BPF_PROG_TYPE_SCHED_ACT)
        o.set_expected_attach_type("tc_next", 0)
        o.load()
        assert o.programs["tc_next"].info().type == bpf.BPF_PROG_TYPE_SCHED_ACT


def test_dup_outlives_object():
    with bpf.BpfObject.open(PROG_O) as o:
        o.load()
        prog = o.programs["tc_mark"].dup()
        m = o.maps["test_array"].dup()
        view = o.programs["tc_mark"]
    with pytest.raises(KernelError):
        view.fd
    with prog, m:
        assert prog.test_run(b"\x00" * 64).retval == TC_ACT_OK
        assert m.lookup(_u32(1)) == _u64(1)
        assert (m.key_size, m.value_size, m.max_entries) == (4, 8, 8)
    with pytest.raises(KernelError) as ei:
        prog.fd
    assert ei.value.errno == errno.EBADF
    prog.close()  # a second close is a no-op


def test_standalone_fd_is_closed_exactly_once():
    with bpf.BpfObject.open(PROG_O) as o:
        o.load()
        prog = o.programs["tc_mark"].dup()
    fd = prog.fd
    prog.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    # A number reused by an unrelated file must survive the object's later finalisation.
    r, w = os.pipe()
    try:
        del prog
        os.fstat(r)
        os.fstat(w)
    finally:
        os.close(r)
        os.close(w)


# -- maps -------------------------------------------------------------------------------------

def test_hash_crud_and_iteration(obj):
    h = obj.maps["test_hash"]
    assert h.lookup(_u32(1)) is None
    h.update(_u32(1), _u64(100))
    h.update(_u32(2), _u64(200), bpf.BPF_NOEXIST)
    assert h.lookup(_u32(1)) == _u64(100)
    with pytest.raises(KernelError) as ei:
        h.update(_u32(1), _u64(1), bpf.BPF_NOEXIST)
    assert ei.value.errno == errno.EEXIST
    assert sorted(h.keys()) == [_u32(1), _u32(2)]
    assert dict(h.items()) == {_u32(1): _u64(100), _u32(2): _u64(200)}
    assert h.delete(_u32(1)) is True
    assert h.delete(_u32(1)) is False
    assert list(h) == [_u32(2)]
    with pytest.raises(InvalidSpec):
        h.lookup(b"\x01")
    with pytest.raises(InvalidSpec):
        h.update(_u32(3), b"\x00")


def test_array_iterates_every_slot(obj):
    a = obj.maps["test_array"]
    assert len(list(a.keys())) == 8
    a.update(_u32(7), _u64(7))
    assert dict(a.items())[_u32(7)] == _u64(7)
    with pytest.raises(KernelError) as ei:
        a.delete(_u32(0))  # array elements cannot be deleted
    assert ei.value.errno == errno.EINVAL


def test_percpu_lookup_and_update(obj):
    pc = obj.maps["test_percpu"]
    ncpus = lib.libbpf_num_possible_cpus()
    slot = 8  # value_size 4 rounded up to 8
    assert pc.value_buffer_size == slot * ncpus
    values = b"".join(struct.pack("<I4x", 10 + i) for i in range(ncpus))
    pc.update(_u32(0), values)
    assert pc.lookup(_u32(0)) == values
    assert pc.lookup_percpu(_u32(0)) == [struct.pack("<I", 10 + i) for i in range(ncpus)]
    with pytest.raises(InvalidSpec, match="per-CPU"):
        pc.update(_u32(0), _u32(1))
    # The program increments this CPU's slot.
    obj.programs["tc_count"].test_run(b"\x00" * 64, repeat=3)
    total = sum(struct.unpack("<I", v)[0] for v in pc.lookup_percpu(_u32(0)))
    assert total == sum(10 + i for i in range(ncpus)) + 3


def test_update_batch(obj):
    h = obj.maps["test_hash"]
    keys = [_u32(i) for i in range(20)]
    values = [_u64(i * i) for i in range(20)]
    h.update_batch(keys, values)
    assert dict(h.items()) == dict(zip(keys, values))
    with pytest.raises(InvalidSpec):
        h.update_batch(keys, values[:-1])
    pc = obj.maps["test_percpu"]
    ncpus = lib.libbpf_num_possible_cpus()
    pc.update_batch([_u32(1), _u32(2)], [b"\x01" * 8 * ncpus, b"\x02" * 8 * ncpus])
    # Each CPU's slot is the 4-byte value rounded up to 8; only the value round-trips (Linux
    # 7.3 reads the padding back as zeros, 6.x as written).
    got = pc.lookup(_u32(2))
    assert len(got) == 8 * ncpus
    assert [got[i * 8:i * 8 + 4] for i in range(ncpus)] == [b"\x02" * 4] * ncpus


def test_dump_matches_items(obj):
    h = obj.maps["test_hash"]
    want = {_u32(i): _u64(i + 1000) for i in range(50)}
    h.update_batch(list(want), list(want.values()))
    assert h.dump() == want
    assert h.dump(batch=7) == want  # several batches, resumed by token
    a = obj.maps["test_array"]
    a.update(_u32(3), _u64(33))
    assert a.dump() == dict(a.items())
    assert len(a.dump(batch=3)) == 8
    pc = obj.maps["test_percpu"]
    assert pc.dump() == dict(pc.items())
    with bpf.Map.create(bpf.BPF_MAP_TYPE_HASH, 4, 8, 4) as empty:
        assert empty.dump() == {}


def test_map_create_standalone():
    with bpf.Map.create(bpf.BPF_MAP_TYPE_ARRAY, 4, 100, 1, name="nk_spec_test") as m:
        assert m.info().name == "nk_spec_test"
        m.update(_u32(0), b"x" * 100)
        assert m.lookup(_u32(0)) == b"x" * 100


# -- pins -------------------------------------------------------------------------------------

def test_bpffs_detection(bpf_fs, tmp_path):
    assert bpf.is_bpffs(bpf_fs)
    assert not bpf.is_bpffs(tmp_path)


def test_pin_and_reopen_map_and_program(obj, pin_dir):
    h = obj.maps["test_hash"]
    h.update(_u32(5), _u64(55))
    h.pin(pin_dir / "hash")
    obj.programs["tc_mark"].pin(pin_dir / "mark")
    assert bpf.pin_type(pin_dir / "hash") == "map"
    assert bpf.pin_type(pin_dir / "mark") == "prog"
    assert bpf.pin_type(pin_dir / "missing") is None
    assert bpf.pin_type(pin_dir) is None
    with bpf.Map.from_pin(pin_dir / "hash") as m:
        assert m.name == "test_hash" and m.id == h.id
        assert m.lookup(_u32(5)) == _u64(55)
    with bpf.Program.from_pin(pin_dir / "mark") as p:
        assert p.name == "tc_mark" and p.id == obj.programs["tc_mark"].id
    with pytest.raises(InvalidSpec, match="not a prog"):
        bpf.Program.from_pin(pin_dir / "hash")
    with bpf.Program.from_id(obj.programs["tc_count"].id) as p:
        assert p.info().name == "tc_count"
    with bpf.Map.from_id(h.id) as m:
        assert m.max_entries == 64
    fd = bpf.obj_get(pin_dir / "hash")
    os.close(fd)
    with pytest.raises(KernelError) as ei:
        bpf.Map.from_pin(pin_dir / "missing")
    assert ei.value.errno == errno.ENOENT


def test_set_map_pin_path_shares_the_map(pin_dir):
    path = pin_dir / "shared_hash"
    with bpf.BpfObject.open(PROG_O) as first:
        first.set_map_pin_path("test_hash", path)
        first.load()
        assert bpf.pin_type(path) == "map"
        first.maps["test_hash"].update(_u32(9), _u64(99))
        first_id = first.maps["test_hash"].id
    with bpf.BpfObject.open(PROG_O) as second:
        second.set_map_pin_path("test_hash", path)
        second.load()
        assert second.maps["test_hash"].id == first_id
        assert second.maps["test_hash"].lookup(_u32(9)) == _u64(99)


def test_reuse_map_fd():
    with bpf.Map.create(bpf.BPF_MAP_TYPE_ARRAY, 4, 8, 8, name="test_array") as ext:
        with bpf.BpfObject.open(PROG_O) as o:
            o.reuse_map_fd("test_array", ext.fd)
            o.load()
            o.programs["tc_mark"].test_run(b"\x00" * 64, repeat=4)
            assert o.maps["test_array"].id == ext.id
        assert ext.lookup(_u32(1)) == _u64(4)


CHILD = textwrap.dedent("""
    import sys
    from nkframe import bpf
    pins, ifindex = sys.argv[1], int(sys.argv[2])
    obj = bpf.BpfObject.open(sys.argv[3])
    obj.load()
    obj.maps["test_hash"].update((7).to_bytes(4, "little"), (77).to_bytes(8, "little"))
    obj.maps["test_hash"].pin(pins + "/hash")
    obj.programs["tc_count"].pin(pins + "/prog")
    link = bpf.Link.create(obj.programs["tc_count"].fd, ifindex, bpf.BPF_TCX_INGRESS)
    link.pin(pins + "/link")
    print(obj.programs["tc_count"].id, link.info().id)
""")


def test_pins_survive_the_process_that_made_them(tcx, veth, pin_dir):
    # The child inherits this thread's network namespace.
    res = subprocess.run([sys.executable, "-c", CHILD, str(pin_dir), str(veth.ifindex),
                          str(PROG_O)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    prog_id, link_id = (int(x) for x in res.stdout.split())
    with bpf.Map.from_pin(pin_dir / "hash") as m:
        assert m.lookup(_u32(7)) == _u64(77)
    with bpf.Program.from_pin(pin_dir / "prog") as p:
        assert p.id == prog_id
    q = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS)
    assert q.prog_ids == (prog_id,) and q.link_ids == (link_id,)
    with bpf.Link.from_pin(pin_dir / "link") as link:
        info = link.info()
        assert (info.id, info.prog_id, info.ifindex) == (link_id, prog_id, veth.ifindex)
    # Removing the last pin of a link (no fd open) detaches it -- asynchronously: the
    # kernel drops a pinned link's last reference from a workqueue.
    bpf.Link.unpin(pin_dir / "link")
    assert _eventually(lambda: bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS).prog_ids == ())


def _eventually(cond, timeout: float = 5.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


# -- TCX links ---------------------------------------------------------------------------------

def test_tcx_link_create_query_info(tcx, veth, obj):
    prog = obj.programs["tc_count"]
    empty = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS)
    assert empty.prog_ids == () and empty.link_ids == ()
    with bpf.Link.create(prog.fd, veth.ifindex, bpf.BPF_TCX_INGRESS) as link:
        info = link.info()
        assert info.type == bpf.BPF_LINK_TYPE_TCX
        assert info.prog_id == prog.id
        assert (info.ifindex, info.attach_type) == (veth.ifindex, bpf.BPF_TCX_INGRESS)
        q = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS)
        assert q.prog_ids == (prog.id,)
        assert q.link_ids == (info.id,)
        assert q.revision > empty.revision
        assert bpf.prog_query(veth.ifindex, bpf.BPF_TCX_EGRESS).prog_ids == ()
    # Closing the only fd of an unpinned link detaches it.
    assert bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS).prog_ids == ()


def test_tcx_program_sees_real_traffic(tcx, veth, obj):
    with bpf.Link.create(obj.programs["tc_count"].fd, veth.ifindex, bpf.BPF_TCX_INGRESS):
        veth.send_udp_from_b(3)
    seen = struct.unpack("<Q", obj.get_global("seen_packets"))[0]
    assert seen >= 3  # 3 datagrams, plus ARP


def test_tcx_anchors_order(tcx, veth, obj):
    count, nxt, mark = (obj.programs[n] for n in ("tc_count", "tc_next", "tc_mark"))
    with bpf.Link.create(count.fd, veth.ifindex, bpf.BPF_TCX_INGRESS) as l_count, \
         bpf.Link.create(nxt.fd, veth.ifindex, bpf.BPF_TCX_INGRESS,
                         flags=bpf.BPF_F_BEFORE, relative_fd=count.fd) as l_next, \
         bpf.Link.create(mark.fd, veth.ifindex, bpf.BPF_TCX_INGRESS,
                         flags=bpf.BPF_F_AFTER | bpf.BPF_F_LINK,
                         relative_id=l_next.info().id) as l_mark:
        q = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS)
        assert q.prog_ids == (nxt.id, mark.id, count.id)
        assert q.link_ids == (l_next.info().id, l_mark.info().id, l_count.info().id)
        # The same program twice on one hook is refused...
        with pytest.raises(KernelError) as ei:
            bpf.Link.create(nxt.fd, veth.ifindex, bpf.BPF_TCX_INGRESS)
        assert ei.value.errno == errno.EEXIST
        # ...another instance of it is fine; with no anchor flags it goes to the tail.
        with bpf.BpfObject.open(PROG_O) as other:
            other.load()
            tail = other.programs["tc_next"]
            with bpf.Link.create(tail.fd, veth.ifindex, bpf.BPF_TCX_INGRESS):
                q = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS)
                assert q.prog_ids == (nxt.id, mark.id, count.id, tail.id)


def test_tcx_expected_revision(tcx, veth, obj):
    count, mark = obj.programs["tc_count"], obj.programs["tc_mark"]
    rev = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS).revision
    with bpf.Link.create(count.fd, veth.ifindex, bpf.BPF_TCX_INGRESS, expected_revision=rev):
        with pytest.raises(KernelError) as ei:
            bpf.Link.create(mark.fd, veth.ifindex, bpf.BPF_TCX_INGRESS, expected_revision=rev)
        assert ei.value.errno == errno.ESTALE
        assert "tcx ingress" in str(ei.value) and str(veth.ifindex) in str(ei.value)


def test_tcx_update_with_expected_old(tcx, veth, obj):
    count, mark, nxt = (obj.programs[n] for n in ("tc_count", "tc_mark", "tc_next"))
    with bpf.Link.create(count.fd, veth.ifindex, bpf.BPF_TCX_INGRESS) as link:
        with pytest.raises(KernelError) as ei:
            link.update(mark.fd, old_prog_fd=nxt.fd)  # nxt is not what runs there
        assert ei.value.errno == errno.EPERM
        assert link.info().prog_id == count.id
        link.update(mark.fd, old_prog_fd=count.fd)
        assert link.info().prog_id == mark.id
        link.update(nxt.fd)  # unconditional
        q = bpf.prog_query(veth.ifindex, bpf.BPF_TCX_INGRESS)
        assert q.prog_ids == (nxt.id,) and q.link_ids == (link.info().id,)


def test_tcx_detach_leaves_defunct_link(tcx, veth, obj):
    with bpf.Link.create(obj.programs["tc_count"].fd, veth.ifindex, bpf.BPF_TCX_EGRESS) as link:
        link.detach()
        assert bpf.prog_query(veth.ifindex, bpf.BPF_TCX_EGRESS).prog_ids == ()
        info = link.info()
        assert info.ifindex == 0  # the kernel forgets the device of a detached tcx link


def test_link_pin_from_id_and_errors(tcx, veth, obj, pin_dir):
    prog = obj.programs["tc_count"]
    link = bpf.Link.create(prog.fd, veth.ifindex, bpf.BPF_TCX_INGRESS)
    link.pin(pin_dir / "l")
    link_id = link.info().id
    link.close()
    link.close()
    assert bpf.pin_type(pin_dir / "l") == "link"
    with bpf.Link.from_id(link_id) as again:
        assert again.info().prog_id == prog.id
    with pytest.raises(InvalidSpec, match="not a map"):
        bpf.Map.from_pin(pin_dir / "l")
    bpf.Link.unpin(pin_dir / "l")
    with pytest.raises(KernelError):
        bpf.Link.unpin(pin_dir / "l")
    with pytest.raises(KernelError) as ei:
        bpf.Link.create(prog.fd, 999_999, bpf.BPF_TCX_INGRESS)
    assert ei.value.errno == errno.ENODEV  # the kernel knows tcx: the device is what's missing


def test_prog_query_unknown_attach_type(veth):
    with pytest.raises(KernelError) as ei:
        bpf.prog_query(veth.ifindex, 99)
    assert ei.value.errno == errno.EINVAL


# -- TC (clsact + cls_bpf) ---------------------------------------------------------------------

def test_tc_attach_query_list_detach(veth, obj):
    count, mark = obj.programs["tc_count"], obj.programs["tc_mark"]
    idx = veth.ifindex
    assert bpf.tc_query(idx, bpf.TC_INGRESS, handle=1, priority=10) is None  # no qdisc yet
    assert bpf.tc_list(idx, bpf.TC_INGRESS) == []
    bpf.tc_hook_create(idx, bpf.TC_INGRESS)
    bpf.tc_hook_create(idx, bpf.TC_EGRESS)  # same clsact qdisc: EEXIST is fine
    try:
        assert bpf.tc_attach(idx, bpf.TC_INGRESS, count.fd, handle=1, priority=10) == count.id
        assert bpf.tc_attach(idx, bpf.TC_INGRESS, mark.fd, handle=1, priority=20) == mark.id
        assert bpf.tc_attach(idx, bpf.TC_EGRESS, mark.fd, handle=2, priority=5) == mark.id
        with pytest.raises(KernelError) as ei:
            bpf.tc_attach(idx, bpf.TC_INGRESS, mark.fd, handle=1, priority=10)
        assert ei.value.errno == errno.EEXIST
        assert bpf.tc_attach(idx, bpf.TC_INGRESS, mark.fd, handle=1, priority=10,
                             replace=True) == mark.id
        assert bpf.tc_query(idx, bpf.TC_INGRESS, handle=1, priority=10) == mark.id
        assert bpf.tc_query(idx, bpf.TC_INGRESS, handle=7, priority=10) is None
        listed = bpf.tc_list(idx, bpf.TC_INGRESS)
        assert [(h, p, i) for h, p, i, _ in listed] == [(1, 10, mark.id), (1, 20, mark.id)]
        assert all(name.startswith("tc_mark") for *_, name in listed)
        assert [(h, p, i) for h, p, i, _ in bpf.tc_list(idx, bpf.TC_EGRESS)] == [(2, 5, mark.id)]
        # The filter runs on real traffic.
        veth.send_udp_from_b(2)
        assert struct.unpack("<Q", obj.maps["test_array"].lookup(_u32(1)))[0] >= 2
        bpf.tc_detach(idx, bpf.TC_INGRESS, handle=1, priority=10)
        assert [(h, p) for h, p, *_ in bpf.tc_list(idx, bpf.TC_INGRESS)] == [(1, 20)]
        with pytest.raises(KernelError) as ei:
            bpf.tc_detach(idx, bpf.TC_INGRESS, handle=1, priority=10)
        assert ei.value.errno == errno.ENOENT
    finally:
        bpf.tc_hook_destroy(idx, bpf.TC_INGRESS | bpf.TC_EGRESS)
    assert bpf.tc_list(idx, bpf.TC_INGRESS) == []
    bpf.tc_hook_destroy(idx, bpf.TC_INGRESS | bpf.TC_EGRESS)  # already gone: fine


# -- XDP --------------------------------------------------------------------------------------

def test_xdp_generic_attach_query_detach(veth, obj):
    prog = obj.programs["xdp_pass"]
    assert bpf.xdp_query(veth.ifindex) == 0
    bpf.xdp_attach(veth.ifindex, prog.fd, bpf.XDP_FLAGS_SKB_MODE)
    try:
        assert bpf.xdp_query(veth.ifindex) == prog.id
        assert bpf.xdp_query(veth.ifindex, bpf.XDP_FLAGS_SKB_MODE) == prog.id
        with pytest.raises(KernelError) as ei:
            bpf.xdp_attach(veth.ifindex, prog.fd,
                           bpf.XDP_FLAGS_SKB_MODE | bpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
        assert ei.value.errno == errno.EBUSY
    finally:
        bpf.xdp_detach(veth.ifindex, bpf.XDP_FLAGS_SKB_MODE)
    assert bpf.xdp_query(veth.ifindex) == 0


def test_xdp_link(veth, obj):
    prog = obj.programs["xdp_pass"]
    with bpf.Link.create(prog.fd, veth.ifindex, bpf.BPF_XDP, flags=bpf.XDP_FLAGS_SKB_MODE) as l:
        info = l.info()
        assert info.type == bpf.BPF_LINK_TYPE_XDP
        assert (info.ifindex, info.attach_type, info.prog_id) == (veth.ifindex, bpf.BPF_XDP,
                                                                  prog.id)
        assert bpf.xdp_query(veth.ifindex) == prog.id
    assert bpf.xdp_query(veth.ifindex) == 0
