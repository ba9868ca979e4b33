"""nkframe.qemu: QEMU's af-xdp rules, checked without a QEMU (tests/host/test_qemu_afxdp.py runs
the built one)."""

from __future__ import annotations

import stat

import pytest
import requires

from nkframe.errors import InvalidSpec, NotSupported
from nkframe.qemu import (
    AfXdpNetdev,
    QemuInfo,
    check_af_xdp,
    inspect,
    parse_netdev_help,
    parse_version,
    split_options,
)

NETDEV_HELP_10_2 = """Available netdev backend types:
socket
stream
dgram
hubport
tap
user
vhost-user
vhost-vdpa
af-xdp
"""
NETDEV_HELP_DEBIAN = NETDEV_HELP_10_2.replace("af-xdp\n", "")


def info(version, help_text=NETDEV_HELP_10_2):
    return QemuInfo("/q", version, parse_netdev_help(help_text))


MAPPED = AfXdpNetdev("veth0", inhibit=True, map_path="/sys/fs/bpf/x/xsks")


def test_parse_version_and_help():
    assert parse_version("QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)\nCopyright") == (10, 2, 2)
    assert parse_version("QEMU emulator version 8.2.0\n") == (8, 2, 0)
    assert parse_version("QEMU emulator version 9.1 (x)") == (9, 1, 0)
    with pytest.raises(InvalidSpec):
        parse_version("something else 1.2.3")
    assert "af-xdp" in parse_netdev_help(NETDEV_HELP_10_2)
    assert "af-xdp" not in parse_netdev_help(NETDEV_HELP_DEBIAN)
    assert "Available netdev backend types:" not in parse_netdev_help(NETDEV_HELP_10_2)


def test_version_rules():
    check_af_xdp(info((10, 2, 2)), MAPPED)
    check_af_xdp(info((10, 1, 0)), MAPPED)
    check_af_xdp((10, 1, 0), MAPPED)
    plain = AfXdpNetdev("veth0", mode="skb", force_copy=True)
    check_af_xdp(info((8, 2, 0)), plain)
    with pytest.raises(NotSupported, match="map-path.*sock-fds"):
        check_af_xdp(info((10, 0, 2)), MAPPED)
    with pytest.raises(NotSupported, match="map-path"):
        check_af_xdp((9, 2, 0), MAPPED)
    fds = AfXdpNetdev("veth0", inhibit=True, sock_fds=(7,))
    check_af_xdp((8, 2, 0), fds)
    for old in ((8, 1, 3), (7, 2, 0)):
        with pytest.raises(NotSupported, match="predates the af-xdp netdev"):
            check_af_xdp(old, plain)


def test_a_qemu_without_the_backend_is_not_supported():
    with pytest.raises(NotSupported, match="without the af-xdp netdev") as e:
        check_af_xdp(info((10, 2, 2), NETDEV_HELP_DEBIAN), MAPPED)
    assert e.value.feature == "qemu af-xdp"


@pytest.mark.parametrize("kw, why", [
    (dict(inhibit=True), "inhibit=on needs map-path or sock-fds"),
    (dict(map_path="/p"), "need inhibit=on"),
    (dict(sock_fds=(3,)), "need inhibit=on"),
    (dict(inhibit=True, map_path="/p", sock_fds=(3,)), "exclude each other"),
    (dict(inhibit=True, sock_fds=(3, 4)), "2 fds for 1 queues"),
    (dict(inhibit=True, sock_fds=(3,), map_start_index=1), "map-start-index needs map-path"),
    (dict(inhibit=True, map_path="/p", map_start_index=-1), "cannot be negative"),
    (dict(mode="copy"), "force-copy=on"),
    (dict(mode="drv"), "not one of native, skb"),
    (dict(queues=0), "at least 1"),
    (dict(start_queue=-1), "cannot be negative"),
    (dict(ifname="a-name-far-too-long"), "not an interface name"),
    (dict(id="0bad"), "not a QEMU id"),
])
def test_bad_combinations_are_invalid(kw, why):
    args = {"ifname": "veth0", **kw}
    n = AfXdpNetdev(**args)
    with pytest.raises(InvalidSpec, match=why):
        n.validate()
    # checking against a capable QEMU reports the combination, not the QEMU
    with pytest.raises(InvalidSpec):
        check_af_xdp(info((10, 2, 2)), n)


def test_render_and_parse_round_trip():
    n = AfXdpNetdev("veth0", id="n0", mode="skb", force_copy=True, queues=2, start_queue=1,
                    inhibit=True, map_path="/sys/fs/bpf/a,b/xsks", map_start_index=1)
    text = n.netdev()
    assert text == ("af-xdp,id=n0,ifname=veth0,mode=skb,force-copy=on,queues=2,start-queue=1,"
                    "inhibit=on,map-path=/sys/fs/bpf/a,,b/xsks,map-start-index=1")
    assert AfXdpNetdev.parse(text) == n
    assert n.device("52:54:00:12:34:56") == \
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,mq=on,vectors=6"
    assert MAPPED.argv("52:54:00:AB:cd:01") == [
        "-netdev", "af-xdp,id=n0,ifname=veth0,queues=1,start-queue=0,inhibit=on,"
                   "map-path=/sys/fs/bpf/x/xsks",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:ab:cd:01"]
    fds = AfXdpNetdev.parse("af-xdp,ifname=v,queues=2,inhibit=on,sock-fds=5:6")
    assert fds.sock_fds == (5, 6) and fds.netdev().endswith("sock-fds=5:6")


@pytest.mark.parametrize("text, why", [
    ("tap,id=n0", "not an af-xdp netdev"),
    ("af-xdp,id=n0", "needs ifname"),
    ("af-xdp,ifname=v,bogus=1", "no option 'bogus'"),
    ("af-xdp,ifname=v,queues=x", "expected an integer"),
    ("af-xdp,ifname=v,inhibit=maybe", "expected on or off"),
    ("af-xdp,ifname=v,ifname=w", "given twice"),
    ("af-xdp,ifname=v,inhibit=on", "needs map-path or sock-fds"),
])
def test_parse_refuses(text, why):
    with pytest.raises(InvalidSpec, match=why):
        AfXdpNetdev.parse(text)


def test_device_refuses_a_bad_mac():
    for mac in ("52:54:00:12:34", "01:00:5e:00:00:01", "zz:54:00:12:34:56"):
        with pytest.raises(InvalidSpec):
            MAPPED.device(mac)


def test_split_options_escape():
    assert split_options("a=1,b,c=x,,y") == [("a", "1"), ("b", None), ("c", "x,y")]


def fake_qemu(tmp_path, version_line, help_text, *, fail=False):
    """A stand-in for a QEMU binary: a script answering -version and -netdev help."""
    p = tmp_path / "qemu-system-x86_64"
    body = "echo 'qemu: bad' >&2; exit 1" if fail else (
        f'if [ "$1" = -version ]; then printf "%s\\n" "{version_line}"; exit 0; fi\n'
        f"cat <<'EOF'\n{help_text}EOF\n")
    p.write_text(f"#!/bin/sh\n{body}\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_inspect_asks_the_binary(tmp_path):
    q = inspect(fake_qemu(tmp_path, "QEMU emulator version 10.2.2 (Debian 1:10.2.2+ds-1)",
                          NETDEV_HELP_10_2))
    assert q.version == (10, 2, 2) and q.af_xdp and q.map_path
    assert q.version_text.startswith("QEMU emulator version 10.2.2")
    d = inspect(fake_qemu(tmp_path, "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u18)",
                          NETDEV_HELP_DEBIAN))
    assert not d.af_xdp
    with pytest.raises(NotSupported):
        check_af_xdp(d, MAPPED)


def test_inspect_refuses_what_is_not_a_qemu(tmp_path):
    with pytest.raises(InvalidSpec, match="not an executable"):
        inspect(str(tmp_path / "missing"))
    with pytest.raises(InvalidSpec, match="exit 1"):
        inspect(fake_qemu(tmp_path, "", "", fail=True))
    with pytest.raises(InvalidSpec, match="not QEMU -version output"):
        inspect(fake_qemu(tmp_path, "hello", NETDEV_HELP_10_2))


def test_debians_qemu_has_no_af_xdp():
    """The system's QEMU (make setup installs it): the reason this project builds its own."""
    q = inspect(requires.tool("/usr/bin/qemu-system-x86_64", "qemu-system-x86"))
    assert q.version >= (7, 2, 0)
    assert not q.af_xdp
    with pytest.raises(NotSupported):
        check_af_xdp(q, MAPPED)
