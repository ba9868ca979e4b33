"""Named network namespaces on the real kernel: create, enter, open sockets inside, delete."""

from __future__ import annotations

import os
import secrets
import threading

import pytest

from nkframe import netns
from nkframe.errors import KernelError, NetnsNotFound

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def _name() -> str:
    return f"nkt-{secrets.token_hex(4)}"


@pytest.fixture
def make_netns():
    made: list[str] = []

    def make() -> str:
        name = _name()
        netns.create(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            netns.delete(name)


def _current() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_create_exists_delete():
    name = _name()
    assert not netns.exists(name)
    try:
        path = netns.create(name)
        assert path == f"/run/netns/{name}"
        assert netns.exists(name)
        assert name in netns.list_names()
        # The file is an nsfs mount: a netns inode, not a plain file.
        assert os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
        with pytest.raises(KernelError) as ei:
            netns.create(name)
        assert ei.value.errno == 17  # EEXIST
    finally:
        netns.delete(name)
    assert not netns.exists(name)
    assert not os.path.lexists(f"/run/netns/{name}")
    netns.delete(name)  # idempotent


def test_create_leaves_the_caller_where_it_was():
    before = _current()
    name = _name()
    try:
        netns.create(name)
        assert _current() == before
    finally:
        netns.delete(name)


def test_run_dir_is_a_shared_mount(make_netns):
    make_netns()
    with open("/proc/self/mountinfo") as f:
        lines = [ln.split() for ln in f]
    run_netns = [ln for ln in lines if ln[4] == netns.NETNS_RUN_DIR]
    assert run_netns, "/run/netns is not a mount point"
    assert any(opt.startswith("shared:") for opt in run_netns[-1][6:]), run_netns[-1]


def test_enter_switches_and_restores(make_netns):
    name = make_netns()
    before = _current()
    with netns.enter(name):
        inside = _current()
        assert inside != before
        assert os.listdir("/sys/class/net")  # /sys was not remounted: still the host's view
    assert _current() == before
    with netns.enter(f"/run/netns/{name}"):  # a path works as well
        assert _current() == inside


def test_enter_restores_on_exception(make_netns):
    name = make_netns()
    before = _current()
    with pytest.raises(RuntimeError):
        with netns.enter(name):
            raise RuntimeError("boom")
    assert _current() == before


def test_enter_none_stays_put():
    before = _current()
    with netns.enter(None):
        assert _current() == before


def test_enter_only_moves_the_calling_thread(make_netns):
    name = make_netns()
    main_before = _current()
    inside_seen: list[str] = []
    in_ns, checked = threading.Event(), threading.Event()

    def other():
        with netns.enter(name):
            inside_seen.append(_current())
            in_ns.set()
            checked.wait(5)

    t = threading.Thread(target=other)
    t.start()
    assert in_ns.wait(5)
    main_during = _current()
    checked.set()
    t.join()
    assert main_during == main_before
    assert inside_seen and inside_seen[0] != main_before


def test_enter_missing_raises(make_netns):
    missing = _name()
    with pytest.raises(NetnsNotFound, match=missing):
        with netns.enter(missing):
            pass
    assert not os.path.lexists(f"/run/netns/{missing}")


def test_ipr_missing_creates_nothing():
    missing = _name()
    before = sorted(os.listdir(netns.NETNS_RUN_DIR)) if os.path.isdir(netns.NETNS_RUN_DIR) else []
    with pytest.raises(NetnsNotFound) as ei:
        with netns.ipr(missing):
            pass
    assert ei.value.netns == missing
    after = sorted(os.listdir(netns.NETNS_RUN_DIR)) if os.path.isdir(netns.NETNS_RUN_DIR) else []
    assert before == after


def test_ipr_socket_stays_in_its_netns(make_netns):
    name = make_netns()
    with netns.ipr(name) as ipr:
        # Outside any `enter`, the socket still sees only the new namespace's devices.
        names = [m.get_attr("IFLA_IFNAME") for m in ipr.get_links()]
    assert names == ["lo"]


def test_stale_file_is_not_a_netns_and_delete_cleans_it():
    name = _name()
    path = f"/run/netns/{name}"
    os.makedirs(netns.NETNS_RUN_DIR, exist_ok=True)
    open(path, "w").close()  # what a crash between "create file" and "bind mount" leaves
    try:
        assert not netns.exists(name)
        with pytest.raises(NetnsNotFound):
            with netns.enter(name):
                pass
        with pytest.raises(KernelError, match="stale"):
            netns.create(name)
    finally:
        netns.delete(name)
    assert not os.path.lexists(path)


def test_netns_id_is_stable(make_netns):
    a, b = make_netns(), make_netns()
    with netns.ipr(a) as ipr:
        first = netns.netns_id(ipr, b)
        assert first >= 0
        assert netns.netns_id(ipr, b) == first
    with pytest.raises(NetnsNotFound):
        with netns.ipr(a) as ipr:
            netns.netns_id(ipr, _name())
