#!/usr/bin/env python3
"""A small, fast-booting Linux guest for end-to-end tests of QEMU VMs.

The guest is one of Debian's kernels (:func:`tools.vm.ensure_kernel`, the 6.12 series by
default) and an initramfs built here in pure Python (a ``newc`` cpio, gzip-compressed):

* Debian's static busybox (``/bin/busybox``, package busybox-static) with a symlink per applet;
* the modules the guest's NIC needs and Debian builds as modules (``virtio_net`` with
  ``net_failover`` and ``failover``; ``virtio_pci`` is built in), in dependency order from
  ``modules.dep``, decompressed on the host (busybox ``insmod`` reads only plain ``.ko``):
  ``.ko.xz`` and ``.ko.gz`` with Python's own modules, ``.ko.zst`` with the ``zstd`` command
  (Debian package zstd);
* ``nk-udpecho``, a freestanding static UDP echo server compiled here from :data:`UDPECHO_C`
  with the host's C compiler (``cc``/``gcc``/``clang``): Debian's busybox has no ``udpsvd``
  and its ``nc`` has no ``-u``, so busybox alone cannot answer UDP;
* ``/init`` (:data:`INIT_SCRIPT`), which configures one NIC from ``nk.*`` kernel arguments
  (see :func:`kernel_cmdline`), starts the echo servers (TCP: busybox ``nc -ll -p PORT -e cat``,
  a persistent server forking ``cat`` per connection; UDP: ``nk-udpecho PORT``), optionally
  pings an address (``NKGUEST PING OK`` / ``NKGUEST PING FAIL``), prints
  ``NKGUEST READY <ifname> <mac>`` on the console (ttyS0) and stays alive.  Any setup failure
  prints ``NKGUEST ERROR <what>`` instead, and init stays alive then too.

The initramfs is cached under ``~/.cache/nkframe/guest`` (beside the kernel cache) by a hash of
everything that goes into it (kernel release and module files, busybox, the init script, the
helper's source), so it is rebuilt only when one of them changes.

Use from a test (``sys.path`` pointing at ``tools/``)::

    kernel = vm_guest.guest_kernel()                    # vm.ensure_kernel("6.12")
    initrd = vm_guest.build_initramfs(kernel)
    cmdline = vm_guest.kernel_cmdline(ip="198.51.100.2/24", gw="198.51.100.1", udpecho=(7,))
    argv = vm_guest.qemu_guest_argv("qemu-system-x86_64", kernel, initrd, cmdline, log,
                                    ["-netdev", "tap,...", "-device", "virtio-net-pci,..."])
    proc = subprocess.Popen(argv)
    line = vm_guest.wait_for(log, vm_guest.READY_RE, 60, proc=proc)

``python tools/vm_guest.py build [--series 6.12]`` builds (or finds) the initramfs and prints
the kernel's and the initramfs' paths.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import ipaddress
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

try:
    from tools import vm
except ImportError:  # run as a script (tools/ itself is sys.path[0]): the checkout's root holds tools
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tools import vm

from tools.vm import KernelImage

DEFAULT_SERIES = "6.12"
BUSYBOX = Path("/bin/busybox")
#: Modules the guest needs (with their dependencies); a built-in one is skipped.
GUEST_MODULES = ("virtio_pci", "virtio_net")
#: Bump to force a rebuild of every cached initramfs when the layout changes.
FORMAT = 1
READY = "NKGUEST READY"
#: The READY line: group 1 the interface's name, group 2 its MAC.
READY_RE = r"NKGUEST READY (\S+) ([0-9a-f:]{17})"
ERROR = "NKGUEST ERROR"
PING_OK = "NKGUEST PING OK"
PING_FAIL = "NKGUEST PING FAIL"
BASE_CMDLINE = ("console=ttyS0", "panic=-1", "quiet")

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class GuestError(RuntimeError):
    """The guest could not be built, or did not print what was waited for."""


#: The guest's /init.  Runs as PID 1 under busybox ash: it must never exit (the kernel would
#: panic), so every failure ends in ``fail``, which reports and then sleeps forever.
INIT_SCRIPT = r"""#!/bin/sh
# /init of the nkframe test guest (tools/vm_guest.py).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

hang() { while :; do sleep 3600; done; }
fail() { echo "NKGUEST ERROR $*"; hang; }

MAC= IP= IP6= GW= GWMAC= UDPECHO= TCPECHO= PING=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nk.mac=*) MAC=${arg#nk.mac=} ;;
    nk.ip=*) IP=${arg#nk.ip=} ;;
    nk.ip6=*) IP6=${arg#nk.ip6=} ;;
    nk.gw=*) GW=${arg#nk.gw=} ;;
    nk.gwmac=*) GWMAC=${arg#nk.gwmac=} ;;
    nk.udpecho=*) UDPECHO=$(echo "${arg#nk.udpecho=}" | tr , ' ') ;;
    nk.tcpecho=*) TCPECHO=$(echo "${arg#nk.tcpecho=}" | tr , ' ') ;;
    nk.ping=*) PING=${arg#nk.ping=} ;;
  esac
done
MAC=$(echo "$MAC" | tr A-F a-f)

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || fail "insmod $mod"
done < /etc/nk-modules

# The NIC: the one with nk.mac's address, else the first device backed by hardware (lo and
# the kernel's tunnel devices have no /sys/class/net/X/device).  virtio_net probes while it
# is loaded; the loop only covers a slow probe.
IF=
i=0
while :; do
  for d in /sys/class/net/*; do
    [ -e "$d/device" ] || continue
    if [ -z "$MAC" ] || [ "$(cat "$d/address")" = "$MAC" ]; then IF=${d##*/}; break; fi
  done
  [ -n "$IF" ] && break
  i=$((i + 1))
  [ $i -lt 50 ] || fail "no NIC${MAC:+ with MAC $MAC}"
  usleep 100000
done
ADDR=$(cat "/sys/class/net/$IF/address")

ip link set lo up || fail "ip link set lo up"
[ -z "$IP6" ] || echo 0 > "/proc/sys/net/ipv6/conf/$IF/accept_dad" || fail "accept_dad $IF"
ip link set "$IF" up || fail "ip link set $IF up"
[ -z "$IP" ] || ip addr add "$IP" dev "$IF" || fail "ip addr add $IP dev $IF"
[ -z "$IP6" ] || ip -6 addr add "$IP6" dev "$IF" || fail "ip -6 addr add $IP6 dev $IF"
if [ -n "$GW" ]; then
  ip route add "$GW" dev "$IF" || fail "ip route add $GW dev $IF"
  ip route add default via "$GW" dev "$IF" || fail "ip route add default via $GW dev $IF"
fi
if [ -n "$GWMAC" ]; then
  [ -n "$GW" ] || fail "nk.gwmac without nk.gw"
  # busybox ip has no 'neigh add'; arp -s makes a permanent entry (ATF_PERM).
  arp -i "$IF" -s "$GW" "$GWMAC" || fail "arp -s $GW $GWMAC"
fi

for p in $UDPECHO; do nk-udpecho "$p" & done
for p in $TCPECHO; do nc -ll -p "$p" -e cat & done
listening() {  # listening u|t PORT: wait until a socket is bound to PORT
  n=0
  while [ $n -lt 50 ]; do
    netstat -ln$1 | grep -q ":$2 " && return 0
    n=$((n + 1))
    usleep 100000
  done
  return 1
}
for p in $UDPECHO; do listening u "$p" || fail "udp echo server on port $p"; done
for p in $TCPECHO; do listening t "$p" || fail "tcp echo server on port $p"; done

if [ -n "$PING" ]; then
  # -A: the next echo request as soon as a reply is in (1 s apart only without replies)
  if ping -c 3 -A -W 2 "$PING"; then echo "NKGUEST PING OK"; else echo "NKGUEST PING FAIL"; fi
fi

echo "NKGUEST READY $IF $ADDR"
hang
"""

#: ``nk-udpecho PORT``: the guest's UDP echo server.  No libc: raw x86-64 system calls and its
#: own ``_start``, so it links statically with nothing but the compiler.
UDPECHO_C = r"""
/* nk-udpecho PORT: send every UDP datagram that arrives on PORT back to its sender, unchanged.
 * One IPv6 socket with IPV6_V6ONLY off serves IPv4 senders too (as mapped addresses); without
 * IPv6 in the kernel, a plain IPv4 socket. */
#define SYS_write 1
#define SYS_socket 41
#define SYS_sendto 44
#define SYS_recvfrom 45
#define SYS_bind 49
#define SYS_setsockopt 54
#define SYS_exit 60

static long sc(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static void say(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    sc(SYS_write, 2, (long)s, n, 0, 0, 0);
}

static unsigned char buf[65536];
static unsigned char peer[128];
static unsigned char addr[28]; /* sockaddr_in6 (28 bytes) or sockaddr_in (16), zero in .bss */

static int run(long *sp)
{
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    unsigned long port = 0;
    long fd, alen;
    int off = 0;

    if (argc != 2 || !argv[1][0]) {
        say("usage: nk-udpecho PORT\n");
        return 2;
    }
    for (char *p = argv[1]; *p; p++) {
        if (*p < '0' || *p > '9' || (port = port * 10 + (unsigned long)(*p - '0')) > 65535) {
            say("nk-udpecho: bad port\n");
            return 2;
        }
    }
    fd = sc(SYS_socket, 10 /* AF_INET6 */, 2 /* SOCK_DGRAM */, 0, 0, 0, 0);
    if (fd >= 0) {
        sc(SYS_setsockopt, fd, 41 /* IPPROTO_IPV6 */, 26 /* IPV6_V6ONLY */, (long)&off, 4, 0);
        addr[0] = 10;
        alen = 28;
    } else {
        fd = sc(SYS_socket, 2 /* AF_INET */, 2, 0, 0, 0, 0);
        if (fd < 0) {
            say("nk-udpecho: socket failed\n");
            return 1;
        }
        addr[0] = 2;
        alen = 16;
    }
    addr[2] = (unsigned char)(port >> 8);
    addr[3] = (unsigned char)(port & 0xff);
    if (sc(SYS_bind, fd, (long)addr, alen, 0, 0, 0) < 0) {
        say("nk-udpecho: bind failed\n");
        return 1;
    }
    for (;;) {
        unsigned int plen = sizeof peer;
        long n = sc(SYS_recvfrom, fd, (long)buf, sizeof buf, 0, (long)peer, (long)&plen);
        if (n == -4 /* EINTR */)
            continue;
        if (n < 0) {
            say("nk-udpecho: recvfrom failed\n");
            return 1;
        }
        sc(SYS_sendto, fd, (long)buf, n, 0, (long)peer, plen);
    }
}

__attribute__((noreturn, used)) void nk_start(long *sp)
{
    sc(SYS_exit, run(sp), 0, 0, 0, 0, 0);
    for (;;)
        ;
}

__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call nk_start\n"
        "  hlt\n");
"""

_CC_FLAGS = ("-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-builtin",
             "-fno-stack-protector", "-fno-pie", "-no-pie", "-fno-asynchronous-unwind-tables",
             "-Wall", "-Werror", "-s", "-Wl,--build-id=none")


# --------------------------------------------------------------------------------------------
# Kernel and modules
# --------------------------------------------------------------------------------------------


def guest_kernel(series: str = DEFAULT_SERIES, **kw) -> KernelImage:
    """The newest Debian kernel of ``series`` (downloaded once; see :func:`tools.vm.ensure_kernel`)."""
    return vm.ensure_kernel(series, **kw)


def cache_dir() -> Path:
    """Where built initramfs images live: ``guest/`` beside the kernel cache."""
    return vm.cache_root().parent / "guest"


def module_name(path: str) -> str:
    """``kernel/drivers/net/virtio_net.ko.xz`` -> ``virtio_net`` (dashes as underscores)."""
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_load_order(modules_dir: Path, wanted: Iterable[str] = GUEST_MODULES) -> list[str]:
    """Paths (relative to ``modules_dir``, as in ``modules.dep``) of the modules to load for
    ``wanted``, each after the modules it depends on; built-in modules are left out."""
    builtin_file = modules_dir / "modules.builtin"
    dep_file = modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise GuestError(f"{dep_file} is missing (depmod never ran for this kernel?)")
    builtin = ({module_name(p) for p in builtin_file.read_text().split()}
               if builtin_file.is_file() else set())
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in dep_file.read_text().splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[module_name(path.strip())] = (path.strip(), rest.split())

    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise GuestError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in deps:
            raise GuestError(f"module {name} is neither built into {modules_dir.name} nor in "
                             f"its modules.dep")
        path, needs = deps[name]
        for d in needs:
            visit(module_name(d), chain + (name,))
        done.add(name)
        order.append(path)

    for w in wanted:
        visit(w, ())
    return order


def read_module(path: Path) -> bytes:
    """A module file's plain ELF contents (``.ko``, ``.ko.xz``, ``.ko.gz`` or ``.ko.zst``)."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        zstd = shutil.which("zstd")
        if zstd is None:
            raise GuestError(f"{name} is zstd-compressed and the zstd command is missing "
                             f"(Debian package zstd)")
        r = subprocess.run([zstd, "-dcq", str(path)], capture_output=True)
        if r.returncode != 0:
            raise GuestError(f"zstd -d {path} failed: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout
    raise GuestError(f"{path}: not a kernel module file name")


# --------------------------------------------------------------------------------------------
# The initramfs
# --------------------------------------------------------------------------------------------


class Cpio:
    """A ``newc`` cpio archive (what the kernel unpacks as an initramfs), built in memory."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", *, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0), ino: int | None = None) -> None:
        namez = name.encode() + b"\0"
        if ino is None:
            ino, self._ino = self._ino, self._ino + 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0)
        head = b"070701" + "".join(f"{v:08x}" for v in fields).encode() + namez
        self._out.write(head + b"\0" * (-len(head) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, ino=0)
        data = self._out.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _find_cc() -> str:
    for cc in ("cc", "gcc", "clang"):
        path = shutil.which(cc)
        if path:
            return path
    raise GuestError("no C compiler (cc, gcc or clang) to build the guest's nk-udpecho")


def build_udpecho(workdir: Path) -> bytes:
    """Compile :data:`UDPECHO_C` into a static executable and return its bytes."""
    src = workdir / "nk-udpecho.c"
    out = workdir / "nk-udpecho"
    src.write_text(UDPECHO_C)
    cc = _find_cc()
    r = subprocess.run([cc, *_CC_FLAGS, "-o", str(out), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        raise GuestError(f"building nk-udpecho with {cc} failed:\n{(r.stderr or r.stdout).strip()}")
    return out.read_bytes()


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    r = subprocess.run([str(busybox), "--list"], capture_output=True, text=True)
    if r.returncode != 0:
        raise GuestError(f"{busybox} --list failed: {r.stderr.strip()}")
    return sorted(a for a in r.stdout.split() if a and a != "busybox" and "/" not in a)


def _input_hash(kernel: KernelImage, modules: Sequence[str], busybox: bytes) -> str:
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        h.update(f"{label}:{len(data)}:".encode())
        h.update(data)

    part("format", str(FORMAT).encode())
    part("release", kernel.release.encode())
    part("init", INIT_SCRIPT.encode())
    part("udpecho", UDPECHO_C.encode())
    part("cc", " ".join(_CC_FLAGS).encode())
    part("busybox", busybox)
    for rel in modules:
        part("module " + rel, (kernel.modules_dir / rel).read_bytes())
    return h.hexdigest()


def build_initramfs(kernel: KernelImage, out_dir: Path | None = None, *,
                    busybox: Path = BUSYBOX, modules: Iterable[str] = GUEST_MODULES) -> Path:
    """The guest's initramfs for ``kernel`` (a gzip'd newc cpio), built once per content.

    The file is ``<out_dir>/nkguest-<release>-<hash>.cpio.gz`` (``out_dir`` defaults to
    :func:`cache_dir`); the hash covers everything that goes into it, so a changed kernel,
    busybox or script makes a new one (older ones of the same release are removed).
    """
    out_dir = Path(out_dir) if out_dir is not None else cache_dir()
    if not busybox.is_file():
        raise GuestError(f"{busybox} is missing (Debian package busybox-static)")
    load = module_load_order(kernel.modules_dir, modules)
    bb = busybox.read_bytes()
    digest = _input_hash(kernel, load, bb)[:16]
    prefix = f"nkguest-{kernel.release}-"
    target = out_dir / f"{prefix}{digest}.cpio.gz"
    if target.is_file():
        return target

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".nkguest-", dir=out_dir) as tmp:
        tmpdir = Path(tmp)
        cpio = Cpio()
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "run"):
            cpio.dir(d)
        cpio.dir("root", 0o700)
        cpio.chardev("dev/console", 5, 1)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", bb, 0o755)
        for applet in busybox_applets(busybox):
            cpio.symlink(f"bin/{applet}", "busybox")
        cpio.file("bin/nk-udpecho", build_udpecho(tmpdir), 0o755)
        names = []
        for rel in load:
            name = module_name(rel) + ".ko"
            cpio.file(f"lib/modules/{name}", read_module(kernel.modules_dir / rel))
            names.append(name)
        cpio.file("etc/nk-modules", "".join(n + "\n" for n in names).encode())
        cpio.file("init", INIT_SCRIPT.encode(), 0o755)
        part = tmpdir / "initramfs.cpio.gz"
        part.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
        os.replace(part, target)
    for old in out_dir.glob(f"{prefix}*.cpio.gz"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------------------------
# Booting
# --------------------------------------------------------------------------------------------


def _ports(ports: Iterable[int], what: str) -> list[int]:
    out = []
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise ValueError(f"{what}: {p!r} is not a port number (1-65535)")
        out.append(p)
    return out


def _mac(value: str, what: str) -> str:
    if not _MAC_RE.fullmatch(value):
        raise ValueError(f"{what}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return value.lower()


def kernel_cmdline(*, mac: str | None = None, ip: str | None = None, ip6: str | None = None,
                   gw: str | None = None, gwmac: str | None = None, udpecho: Iterable[int] = (),
                   tcpecho: Iterable[int] = (), ping: str | None = None,
                   extra: Sequence[str] = ()) -> str:
    """The guest's kernel command line: console on ttyS0, ``panic=-1 quiet`` and the ``nk.*``
    settings /init reads.  ``ip``/``ip6`` are ``ADDR/PLEN``; ``gw`` is an IPv4 address reached
    on-link, ``gwmac`` its MAC (a permanent neighbour entry: the guest never ARPs for it);
    ``ping`` an IPv4 or IPv6 address.  Raises :class:`ValueError` on a malformed value."""
    args = list(BASE_CMDLINE)
    if mac is not None:
        args.append(f"nk.mac={_mac(mac, 'mac')}")
    if ip is not None:
        iface = ipaddress.ip_interface(ip)
        if iface.version != 4 or "/" not in ip:
            raise ValueError(f"ip: {ip!r} is not an IPv4 ADDR/PLEN")
        args.append(f"nk.ip={iface.with_prefixlen}")
    if ip6 is not None:
        iface = ipaddress.ip_interface(ip6)
        if iface.version != 6 or "/" not in ip6:
            raise ValueError(f"ip6: {ip6!r} is not an IPv6 ADDR/PLEN")
        args.append(f"nk.ip6={iface.with_prefixlen}")
    if gw is not None:
        if ipaddress.ip_address(gw).version != 4:
            raise ValueError(f"gw: {gw!r} is not an IPv4 address")
        args.append(f"nk.gw={gw}")
    if gwmac is not None:
        if gw is None:
            raise ValueError("gwmac needs gw")
        args.append(f"nk.gwmac={_mac(gwmac, 'gwmac')}")
    udp = _ports(udpecho, "udpecho")
    if udp:
        args.append("nk.udpecho=" + ",".join(map(str, udp)))
    tcp = _ports(tcpecho, "tcpecho")
    if tcp:
        args.append("nk.tcpecho=" + ",".join(map(str, tcp)))
    if ping is not None:
        args.append(f"nk.ping={ipaddress.ip_address(ping)}")
    for e in extra:
        if not e or any(c.isspace() for c in e):
            raise ValueError(f"extra kernel argument {e!r} is empty or has white space")
        args.append(e)
    return " ".join(args)


def qemu_guest_argv(qemu: str, kernel: KernelImage, initrd: Path, cmdline: str,
                    serial_log: Path, netdev_args: Sequence[str] = (), *,
                    memory_mb: int = 256) -> list[str]:
    """A QEMU command line booting the guest under TCG, its console (ttyS0) written to
    ``serial_log``; ``netdev_args`` (``-netdev ... -device virtio-net-pci,...``) are appended
    as given.  ``-no-reboot`` with the guest's ``panic=-1``: a kernel panic ends QEMU."""
    return [
        qemu,
        "-machine", "q35,accel=tcg",
        "-cpu", "max",
        "-m", str(memory_mb),
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        "-append", cmdline,
        *netdev_args,
    ]


def _lines(serial_log: Path) -> list[str]:
    """The log's complete lines (a line still being written is left out)."""
    try:
        text = Path(serial_log).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line.rstrip("\r") for line in text.split("\n")[:-1]]


def log_tail(serial_log: Path, lines: int = 40) -> str:
    try:
        text = Path(serial_log).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return f"({serial_log} does not exist)"
    return "\n".join(text.replace("\r", "").splitlines()[-lines:]) or f"({serial_log} is empty)"


def udp_echo(netns_name: str, dst: str, port: int, payloads: Sequence[bytes], *, sport: int = 0,
             timeout: float = 3.0) -> list[bytes]:
    """Send each payload from network namespace ``netns_name`` to ``dst:port`` (IPv4 UDP) and
    return those that came back unchanged, in order; each waits ``timeout`` seconds for its own
    echo (late echoes of earlier payloads are skipped)."""
    import socket

    from nkframe import netns

    with netns.enter(netns_name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", sport))
        s.settimeout(timeout)
        got = []
        for p in payloads:
            s.sendto(p, (dst, port))
            try:
                while True:
                    data, _ = s.recvfrom(65536)
                    if data == p:
                        got.append(data)
                        break
            except socket.timeout:
                pass
        return got
    finally:
        s.close()


def wait_for(serial_log: Path, pattern: str | re.Pattern[str], timeout: float, *,
             proc: subprocess.Popen | None = None,
             fail_pattern: str | re.Pattern[str] | None = r"NKGUEST ERROR|Kernel panic") -> str:
    """Wait until a complete line of ``serial_log`` matches ``pattern`` (``re.search``) and
    return it (without the line end).

    Raises :class:`GuestError`, with the log's tail, after ``timeout`` seconds, as soon as a line
    matches ``fail_pattern`` (the guest's own error report or a panic; ``None``: never), or
    when ``proc`` (the QEMU process, optional) has exited.
    """
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    frx = re.compile(fail_pattern) if isinstance(fail_pattern, str) else fail_pattern
    deadline = time.monotonic() + timeout
    while True:
        exited = proc.poll() if proc is not None else None
        for line in _lines(serial_log):
            if rx.search(line):
                return line
            if frx is not None and frx.search(line):
                raise GuestError(f"the guest reported {line.strip()!r} while waiting for "
                                 f"{rx.pattern!r}; last lines of {serial_log}:\n"
                                 f"{log_tail(serial_log)}")
        if exited is not None:
            raise GuestError(f"QEMU exited ({exited}) before a line matched {rx.pattern!r}; "
                             f"last lines of {serial_log}:\n{log_tail(serial_log)}")
        if time.monotonic() >= deadline:
            raise GuestError(f"no line matched {rx.pattern!r} within {timeout:.0f} s; last lines "
                             f"of {serial_log}:\n{log_tail(serial_log)}")
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or find) the initramfs; print vmlinuz and initrd")
    b.add_argument("--series", default=DEFAULT_SERIES, help="kernel series (default %(default)s)")
    b.add_argument("--out", type=Path, default=None, help=f"output directory (default {cache_dir()})")
    args = ap.parse_args(argv)
    try:
        kernel = guest_kernel(args.series)
        initrd = build_initramfs(kernel, args.out)
    except (GuestError, vm.VmError) as e:
        print(f"vm_guest: {e}", file=sys.stderr)
        return 1
    print(kernel.vmlinuz)
    print(initrd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
