"""Boot a Debian kernel in QEMU with virtme-ng and run a command inside it.

The host kernel has no netkit, so netkit code is tested (and demonstrated) in a VM running one of
Debian's own kernel packages: ``6.12`` (bookworm's ``+deb12`` backport, CONFIG_NETKIT=y) or ``6.1``
(bookworm's stock kernel: no netkit, no TCX, the TC fallback for real).

* :func:`ensure_kernel` fetches the newest package of a series with ``apt-get download`` and
  unpacks it with ``dpkg-deb -x`` into a cache outside the clone (``~/.cache/nkframe/kernels``),
  so later runs and fresh clones reuse it.  Nothing is installed on the host.
* :func:`run` boots it with ``vng`` (QEMU in TCG mode: nested KVM fails on our machines) and runs a
  command.  The guest sees the host's root filesystem over 9p, so ``.venv`` works inside.  vng's
  own exit code says nothing about the command (it was 255 on success), so a generated wrapper
  script writes the command's exit status into a file in a directory shared read-write with the
  guest; no status file means the command did not finish, which is never a success.
* :func:`run_pytest` runs the root test tier in the guest and reads pytest's JUnit XML.
* :func:`lease_setup` gives a 7.x guest its lease source: ``netdevsim.ko`` built once per kernel
  release (:mod:`tools.leasesource`) and loaded before the command ("lease source: ..." says
  which ran, or why none did).

``python -m tools.vm test --kernel 6.12 -- <pytest args>`` and
``python -m tools.vm exec --kernel 6.12 -- CMD`` are the command-line front ends
(``python -m tools.vm kernel --kernel 6.1`` only fetches and prints the paths).

Environment:
  NKFRAME_KERNEL_CACHE   where unpacked kernels live (default ~/.cache/nkframe/kernels)
  NKFRAME_VM_TIMEOUT     a test tier's boot time limit in seconds (default 1800)
  NKFRAME_VM_SELECT      "kernel" (default; "next" on 7.x): the kernel-dependent tests; "all": the root suite
  NKFRAME_VM_FAST_IMAGE  0: read everything over 9p (no disk image; much slower)
  NKFRAME_VM_KVM         1: use KVM (not available on our machines: nested KVM fails)
  NKFRAME_VM_QEMU_OPTS   extra QEMU arguments, e.g. "-cpu qemu64"
  NKFRAME_VM_APPEND      extra guest kernel arguments, e.g. "mitigations=off"
  NKFRAME_KERNEL_6_12    pin a series to one release, e.g. 6.12.117+deb12-amd64 (likewise
  NKFRAME_KERNEL_6_1     for every series); by default each tier takes the newest Debian offers
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from tools import leasesource
from nkframe.errors import NkframeError

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Modules the guest loads before the command runs.  Debian builds the 9p/virtio pieces as
#: modules too, but virtme-ng puts those into its initramfs itself.  Everything else the tests
#: touch that is not built in: veth pairs, the clsact qdisc (sch_ingress) and cls_bpf for the TC
#: path, dummy devices for uplinks.  A missing one is reported, not fatal: the 6.1 kernel lacks
#: some features on purpose and the tests say what they need.
GUEST_MODULES = ("veth", "sch_ingress", "cls_bpf", "act_bpf", "dummy", "tun")

#: One boot's time limit (NKFRAME_VM_TIMEOUT overrides it for the test tiers).  The VM tiers'
#: selection took 13-14 min each on this 2-core machine while other jobs kept it loaded (load
#: 6-10); alone it should take a third of that.  The limit is there to stop a hung guest, not to
#: fail a slow one: CI's own limit is 90 min.  vm-next grew to ~17 min alone with the lease and
#: VM endpoint tests (2026-12-03), so the limit is 30 min.
DEFAULT_TIMEOUT = 1800.0
#: QEMU's TCG threading for the guests.  With "multi" (MTTCG, QEMU's default for an x86 guest
#: on an x86 host) Debian's 6.12.118 guest once died in the vm-netkit tier with
#: "Oops: int3 ... RIP: __dev_queue_xmit+0x197" under traffic while programs were attached and
#: detached: an int3 the kernel's own int3 handler did not claim.  The kernel patches static
#: branches (the TCX/netkit egress keys in __dev_queue_xmit flip on the first attachment and
#: off after the last) with text_poke_bp(): int3 first, IPIs to serialise every CPU, then the
#: new bytes, then the int3 is removed; a CPU that executes the int3 after the patch has
#: finished finds no patch in progress and oopses.  On hardware the IPIs make that impossible;
#: with MTTCG another vCPU can run a translation of the page that still holds the int3.  With
#: "single" one host thread runs every vCPU in turn, so no vCPU executes while another writes
#: kernel text.  docs/compat.md has the measured cost.  NKFRAME_VM_TCG_THREAD=multi restores
#: QEMU's default (to reproduce).
TCG_THREAD = "single"
#: What a boot, the module loads and the fast-path image mount may take before pytest starts.
BOOT_ALLOWANCE = 150.0


class VmError(NkframeError):
    """The VM runner could not do its job: no kernel package, no vng, the guest never finished."""


# --------------------------------------------------------------------------------------------
# Kernel packages
# --------------------------------------------------------------------------------------------


@attrs.frozen
class KernelSeries:
    """A family of Debian kernel packages we know how to boot, e.g. every bookworm 6.12."""

    name: str
    #: Matches the name of the series' kernel package (the first of :attr:`packages`); group
    #: ``release`` is the kernel release (``uname -r``).
    package_re: re.Pattern[str] = attrs.field(converter=re.compile)
    description: str = ""
    #: What to download for a release: the kernel package first, then any other (Debian's 7.x
    #: packaging splits the image and its modules).
    packages: tuple[str, ...] = ("linux-image-{release}-unsigned",)
    #: Suites of the system's Debian archive to read through a private apt configuration (its own
    #: lists and cache under the kernel cache; the system's sources are never changed).  Empty:
    #: the system's own apt lists.
    suites: tuple[str, ...] = ()

    def release_of(self, package: str) -> str | None:
        m = self.package_re.fullmatch(package.strip())
        return m.group("release") if m else None

    def matches_release(self, release: str) -> bool:
        return self.release_of(self.packages[0].format(release=release)) == release

    def package_names(self, release: str) -> list[str]:
        return [p.format(release=release) for p in self.packages]


SERIES: dict[str, KernelSeries] = {
    s.name: s
    for s in (
        KernelSeries(
            "6.12",
            r"linux-image-(?P<release>6\.12\.\d+\+deb12-amd64)-unsigned",
            "Debian bookworm's 6.12 kernel: netkit (=y), TCX, XDP sockets",
        ),
        KernelSeries(
            "6.1",
            r"linux-image-(?P<release>6\.1\.0-\d+-amd64)-unsigned",
            "Debian bookworm's 6.1 kernel: no netkit, no TCX (TC fallback)",
        ),
        KernelSeries(
            "7",
            r"linux-binary-(?P<release>7\.\d+\.\d+\+deb\d+-amd64)",
            "Debian's newest 7.x kernel (trixie-backports, sid): netkit single mode, queue leasing",
            packages=("linux-binary-{release}", "linux-modules-{release}"),
            suites=("trixie-backports", "sid"),
        ),
    )
}


def series_for(version: str) -> KernelSeries:
    """The series named ``version`` ("6.12", "6.1") or the one a full release belongs to."""
    if version in SERIES:
        return SERIES[version]
    for s in SERIES.values():
        if s.matches_release(version):
            return s
    raise VmError(
        f"unknown kernel {version!r}: use one of {', '.join(SERIES)} "
        f"or a full release such as 6.12.117+deb12-amd64"
    )


def pin_variable(series: KernelSeries) -> str:
    """The environment variable that pins a series to one release: ``NKFRAME_KERNEL_6_12``.

    Debian's archive replaces a series' package within days (6.12.117 by 6.12.118), so the tiers
    float to the newest by default; a developer reproducing a failure pins the release it ran on
    (printed by every tier).  A pinned release must be in the cache or still in apt's lists.
    """
    return "NKFRAME_KERNEL_" + re.sub(r"\W", "_", series.name)


def release_key(release: str) -> tuple[int, ...]:
    """Sort key for releases of one series: the numbers in order (6.12.9 < 6.12.117)."""
    return tuple(int(n) for n in re.findall(r"\d+", release))


def select_package(series: KernelSeries, apt_search_output: str) -> str | None:
    """The newest package of ``series`` in ``apt-cache search --names-only`` output.

    Lines look like ``linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs``;
    cloud and rt flavours do not match the series pattern.  ``apt-cache search`` lists only
    packages that have a record in the lists, so each name is downloadable.
    """
    best: tuple[tuple[int, ...], str] | None = None
    for line in apt_search_output.splitlines():
        name = line.split(" - ", 1)[0].strip()
        release = series.release_of(name)
        if release is None:
            continue
        key = (release_key(release), name)
        if best is None or key > best:
            best = key
    return best[1] if best else None


@attrs.frozen
class KernelImage:
    """An unpacked kernel package: what ``vng --run`` boots and where its modules are."""

    release: str
    vmlinuz: Path
    modules_dir: Path
    package: str = ""

    @property
    def root(self) -> Path:
        """The unpacked package tree (``boot/``, ``lib/modules/``)."""
        return self.vmlinuz.parent.parent

    @property
    def series(self) -> KernelSeries:
        return series_for(self.release)

    @classmethod
    def from_tree(cls, root: Path, release: str, package: str = "") -> KernelImage:
        """The kernel unpacked under ``root``; raises :class:`VmError` if a part is missing."""
        vmlinuz = root / "boot" / f"vmlinuz-{release}"
        moddir = _modules_dir(root, release)
        if not vmlinuz.is_file() and moddir is not None and (moddir / "vmlinuz").is_file():
            vmlinuz = moddir / "vmlinuz"  # Debian's 7.x packaging
        if not vmlinuz.is_file() or moddir is None:
            raise VmError(
                f"{root} does not hold an unpacked kernel {release} (boot/vmlinuz-{release} and "
                f"lib/modules/{release} expected); remove the directory and run again"
            )
        return cls(release=release, vmlinuz=vmlinuz, modules_dir=moddir, package=package)


def _modules_dir(root: Path, release: str) -> Path | None:
    for sub in ("lib/modules", "usr/lib/modules"):
        d = root / sub / release
        if d.is_dir():
            return d
    return None


def cache_root() -> Path:
    """Where unpacked kernels live: ``$NKFRAME_KERNEL_CACHE`` or ``~/.cache/nkframe/kernels``."""
    env = os.environ.get("NKFRAME_KERNEL_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "nkframe" / "kernels"


_COMPLETE = ".nkframe-complete"


def cached_kernels(series: KernelSeries, cache: Path | None = None) -> list[KernelImage]:
    """Completely unpacked kernels of ``series`` in the cache, oldest first."""
    cache = cache or cache_root()
    found = []
    if cache.is_dir():
        for d in cache.iterdir():
            if (d / _COMPLETE).is_file() and series.matches_release(d.name):
                package = (d / _COMPLETE).read_text().strip()
                try:
                    found.append(KernelImage.from_tree(d, d.name, package))
                except VmError:
                    continue
    return sorted(found, key=lambda k: release_key(k.release))


Log = Callable[[str], None]


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _system_archive() -> tuple[str, str]:
    """(URI, keyring) of the system's Debian archive, read from its deb822 sources; the defaults
    when there are none."""
    uri, keyring = "http://deb.debian.org/debian", "/usr/share/keyrings/debian-archive-keyring.gpg"
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        try:
            text = f.read_text()
        except OSError:
            continue
        for stanza in text.split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith("#"))
            uris = fields.get("URIs", "").split()
            if uris and not uris[0].rstrip("/").endswith("-security"):
                return uris[0], fields.get("Signed-By", keyring).strip() or keyring
    return uri, keyring


def apt_options(series: KernelSeries, cache: Path | None = None) -> list[str]:
    """apt options selecting the series' private configuration (own sources list, lists and
    cache dirs beside the kernel cache), or none for a series the system's lists serve."""
    if not series.suites:
        return []
    base = (cache or cache_root()).parent / "apt" / series.name
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    uri, keyring = _system_archive()
    sources = base / "sources.list"
    text = "".join(f"deb [signed-by={keyring}] {uri} {suite} main\n" for suite in series.suites)
    if not sources.is_file() or sources.read_text() != text:
        sources.write_text(text)
    return ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=/nonexistent",
            "-o", f"Dir::State::Lists={base / 'lists'}", "-o", f"Dir::Cache={base / 'cache'}",
            "-o", "APT::Get::List-Cleanup=0"]


def _apt_search(series: KernelSeries, cache: Path | None = None) -> str:
    # A regex on names keeps the answer small; the series pattern then picks exact flavours.
    prefix = series.package_re.pattern.split("(?P<release>")[0]
    pattern = "^" + prefix + re.escape(series.name) + r"\."
    try:
        out = subprocess.run(
            ["apt-cache", *apt_options(series, cache), "search", "--names-only", pattern],
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError as e:
        raise VmError("apt-cache is missing: the VM runner needs Debian's apt") from e
    return out.stdout


def _apt_update(log: Log, series: KernelSeries, cache: Path | None = None) -> None:
    opts = apt_options(series, cache)
    which = f"a private apt configuration for {', '.join(series.suites)}" if opts else "the system's apt"
    log(f"nkframe-vm: apt lists know no matching kernel; running apt-get update ({which})")
    r = subprocess.run(["apt-get", *opts, "update", "-qq"], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"nkframe-vm: apt-get update failed (exit {r.returncode}): {r.stderr.strip()}")


def ensure_kernel(
    version: str = "6.12",
    *,
    cache: Path | None = None,
    log: Log = _stderr_log,
    offline: bool = False,
) -> KernelImage:
    """Return the newest kernel of a series, downloading and unpacking it once.

    ``version`` is a series ("6.12", "6.1") or a full release ("6.12.117+deb12-amd64").  The
    newest package apt knows is used; if apt knows none (no lists, no network) the newest cached
    one is.  ``offline=True`` never asks apt.  Idempotent and safe against a parallel call (a lock
    file in the cache).
    """
    series = series_for(version)
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    exact = None if version in SERIES else version
    pinned = os.environ.get(pin_variable(series), "").strip()
    if exact is None and pinned:
        if not series.matches_release(pinned):
            raise VmError(f"{pin_variable(series)}={pinned!r} is not a release of the "
                          f"{series.name} series (e.g. {series.description or series.name})")
        log(f"nkframe-vm: {series.name} pinned to {pinned} by {pin_variable(series)}")
        exact = pinned

    if exact is not None:
        package = series.package_names(exact)[0]
    else:
        package = None
        if not offline:
            package = select_package(series, _apt_search(series, cache))
            if package is None and os.geteuid() == 0:
                _apt_update(log, series, cache)
                package = select_package(series, _apt_search(series, cache))
        if package is None:
            cached = cached_kernels(series, cache)
            if cached:
                log(f"nkframe-vm: apt offers no {series.name} kernel; using cached "
                    f"{cached[-1].release}")
                return cached[-1]
            raise VmError(
                f"no Debian package matches {series.package_re.pattern!r} and none is cached in "
                f"{cache}: run 'apt-get update' (the bookworm and bookworm-security lists are "
                f"needed) and try again"
            )
    release = series.release_of(package)
    assert release is not None

    target = cache / release
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE).is_file():
            return KernelImage.from_tree(target, release, package)
        if offline:
            raise VmError(f"kernel {release} is not cached in {cache} and offline mode is on")
        _download_and_unpack(series.package_names(release), release, target, log, apt_options(series, cache))
    return KernelImage.from_tree(target, release, package)


def _download_and_unpack(packages: list[str], release: str, target: Path, log: Log,
                         apt_opts: Sequence[str] = ()) -> None:
    t0 = time.monotonic()
    package = packages[0]
    log(f"nkframe-vm: fetching {' and '.join(packages)} into {target}")
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        tmpdir = Path(tmp)
        # apt-get download drops privileges to _apt for the transfer; the directory must be
        # writable by that user or apt warns and falls back to root.
        os.chmod(tmpdir, 0o755)
        dl = tmpdir / "dl"
        dl.mkdir()
        os.chmod(dl, 0o777)
        r = subprocess.run(["apt-get", *apt_opts, "download", "-q", *packages], cwd=dl,
                           capture_output=True, text=True)
        debs = list(dl.glob("*.deb"))
        if r.returncode != 0 or len(debs) != len(packages):
            raise VmError(
                f"apt-get download {' '.join(packages)} failed (exit {r.returncode}): "
                f"{(r.stderr or r.stdout).strip()[-500:]}; check the apt sources and network"
            )
        tree = tmpdir / "tree"
        for deb in debs:
            r = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise VmError(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()}")
            deb.unlink()
        moddir = _modules_dir(tree, release)
        if moddir is None:
            raise VmError(f"{package} holds no lib/modules/{release}: not a kernel image package")
        # Debian generates modules.dep in the package's postinst, which we do not run; the
        # guest's modprobe needs it.
        r = subprocess.run(["depmod", "-a", "-b", str(moddir.parent.parent.parent), release],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise VmError(f"depmod for {release} failed: {r.stderr.strip()}")
        (tree / _COMPLETE).write_text(package + "\n")
        if target.exists():  # a half-unpacked leftover from an interrupted run
            shutil.rmtree(target)
        tree.rename(target)
    log(f"nkframe-vm: {package} unpacked in {time.monotonic() - t0:.0f} s")


def lease_setup(kernel: KernelImage, log: Log = _stderr_log, *,
                cache: Path | None = None) -> tuple[str, str]:
    """The guest's lease-source lines for ``kernel`` and a one-line description of them.

    Only a series with queue leasing (7.x) gets one: ``netdevsim.ko`` built for the exact
    release (see :mod:`tools.leasesource`), loaded in the guest before the command.  A failed
    build is reported here and in the guest ("lease source: none (why)"), and the lease tests
    then fail in vm-next (``next_kernel`` skips fail there): never a silent skip.
    """
    series = kernel.series
    if series.name not in leasesource.LEASE_SERIES:
        return "", ""
    try:
        src = leasesource.ensure_netdevsim(kernel.release, cache or cache_root(),
                                           apt_options(series, cache),
                                           archive=_system_archive(), log=log)
    except (leasesource.LeaseSourceError, OSError) as e:
        why = f"building netdevsim.ko for {kernel.release} failed: {e}"
        log(f"nkframe-vm: LEASE SOURCE BUILD FAILED: {e}")
        log("nkframe-vm: the lease tests will fail in this tier (they need netdevsim)")
        return leasesource.guest_setup(None, why.replace("\n", " | ")), f"none ({why.splitlines()[0]})"
    return leasesource.guest_setup(src), src.describe()


# --------------------------------------------------------------------------------------------
# Booting
# --------------------------------------------------------------------------------------------

STATUS_FILE = "exit-status"
CONSOLE_LOG = "console.log"
DMESG_FILE = "dmesg.txt"
#: JSON lines the guest's pytest plugin appends as each test starts and ends (see
#: tests/vm/pytest_nkframe_vm.py): what survives a guest that dies before pytest writes JUnit.
PROGRESS_FILE = "progress.jsonl"
GUEST_SCRIPT = "guest-run.sh"
BEGIN_MARK = "nkframe-vm: begin"
END_MARK = "nkframe-vm: end"


@attrs.frozen
class VmResult:
    """What one boot produced.

    ``exit_code`` is the guest command's exit status as the wrapper recorded it, or ``None`` when
    there is no record (the guest did not boot, crashed, or timed out): that is never a success.
    """

    exit_code: int | None
    console_log: Path
    wall_time: float
    timed_out: bool = False
    vng_exit: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        if self.exit_code is not None:
            return f"guest command exited {self.exit_code}"
        if self.timed_out:
            return (f"no exit status: the VM was killed after {self.wall_time:.0f} s "
                    f"(timeout); see {self.console_log}")
        return (f"no exit status: the guest command never finished (vng exited "
                f"{self.vng_exit}); see {self.console_log}")


# The guest reads the host's files over 9p, one round trip per lookup, open and read; under
# TCG on a busy 2-core host a round trip costs milliseconds, so starting Python and importing
# pytest took ~40 s.  The paths Python reads most (the interpreter, its stdlib, the venv, the
# repo) are copied into an ext4 image instead, attached read-only as a virtio disk and
# bind-mounted over the same paths in the guest: block reads with readahead and a page cache.
# The image is built right before each boot (hard links, then mke2fs -d: a few seconds), so it
# is never stale; NKFRAME_VM_FAST_IMAGE=0 turns it off.

FAST_IMAGE_SERIAL = "nkframe-fast"
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo",
                "ensurepip", "lib2to3", "__phello__"}
_REPO_SKIP = {".git", "results", ".venv", "build", "dist", ".hypothesis", ".pytest_cache"}


@attrs.frozen
class FastImage:
    """An ext4 image with copies of host paths; ``mounts`` pairs a directory in it with the
    guest path it is bind-mounted over."""

    path: Path
    mounts: tuple[tuple[str, str], ...]
    files: int = 0
    bytes: int = 0


def python_paths(venv: Path) -> list[Path]:
    """What the venv's interpreter reads at start-up: the venv, the base stdlib (without its
    site-packages: our venvs do not include system packages), the executable, libpython."""
    code = (
        "import json, os, sys, sysconfig\n"
        "v = sysconfig.get_config_var\n"
        "lib = os.path.join(v('LIBDIR') or '', v('INSTSONAME') or '')\n"
        "print(json.dumps({'stdlib': sysconfig.get_path('stdlib'),\n"
        "                  'exe': os.path.realpath(sys.executable),\n"
        "                  'lib': os.path.realpath(lib) if v('Py_ENABLE_SHARED') else ''}))\n"
    )
    import json

    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise VmError(f"cannot ask {py} where its files are: {r.stderr.strip()[-300:]}")
    info = json.loads(r.stdout)
    paths = [venv.resolve(), Path(info["stdlib"]), Path(info["exe"])]
    if info["lib"] and Path(info["lib"]).is_file():
        paths.append(Path(info["lib"]))
    return paths


def repo_paths(repo: Path = REPO_ROOT) -> list[Path]:
    """The repo's top-level entries, less VCS data, results (shared read-write with the guest)
    and the venv (an entry of its own)."""
    return sorted(p for p in repo.iterdir()
                  if p.name not in _REPO_SKIP and not p.name.endswith(".egg-info"))


def _skip_for(root: Path, stdlib: Path | None):
    def ignore(directory: str, names: list[str]) -> set[str]:
        if stdlib is not None and Path(directory) == stdlib:
            return {n for n in names if n in _STDLIB_SKIP or n.startswith("config-")}
        return set()
    return ignore


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # staging costs nothing on the same filesystem
    except OSError:
        shutil.copy2(src, dst)


def build_fast_image(paths: Sequence[Path], image: Path, *, stdlib: Path | None = None) -> FastImage:
    """Copy ``paths`` (directories or files) into a new ext4 image at ``image``."""
    image.parent.mkdir(parents=True, exist_ok=True)
    mounts = []
    files = size = 0
    with tempfile.TemporaryDirectory(prefix=".stage-", dir=image.parent) as tmp:
        stage = Path(tmp)
        for i, src in enumerate(paths):
            dst = stage / str(i)
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy,
                                ignore=_skip_for(src, stdlib))
            elif src.is_file():
                _link_or_copy(str(src), str(dst))
            else:
                continue
            mounts.append((str(i), str(src)))
        for dirpath, dirnames, filenames in os.walk(stage):
            files += len(filenames) + len(dirnames)
            for f in filenames:
                try:
                    size += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        # Room for block rounding and metadata: 4 KiB a file on top of the bytes, plus slack.
        blocks_kib = (size + files * 4096) * 5 // 4 // 1024 + 32 * 1024
        image.unlink(missing_ok=True)
        r = subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-N", str(files + 1024),
             "-L", "nkframe-fast", "-d", str(stage), str(image), f"{blocks_kib}k"],
            capture_output=True, text=True)
        if r.returncode != 0:
            image.unlink(missing_ok=True)
            raise VmError(f"mke2fs -d for the guest's fast-path image failed: {r.stderr.strip()}")
    return FastImage(image, tuple(mounts), files, size)


def default_fast_image(image: Path, log: Log, keep_visible: Sequence[Path] = ()) -> FastImage | None:
    """The image for the project's venv and repo, or None (disabled, or no venv).

    A path holding one of ``keep_visible`` (the read-write shares) is left out: a bind mount
    over it would hide the share.
    """
    if os.environ.get("NKFRAME_VM_FAST_IMAGE", "1") == "0":
        return None
    venv = REPO_ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        return None
    t0 = time.monotonic()
    py = python_paths(venv)
    paths = [p for p in [*py, *repo_paths()]
             if not any(k == p or p in k.parents for k in keep_visible)]
    img = build_fast_image(paths, image, stdlib=py[1])
    log(f"nkframe-vm: fast-path image: {img.files} files, {img.bytes >> 20} MiB, built in "
        f"{time.monotonic() - t0:.1f} s")
    return img


def find_vng() -> str:
    """The vng next to our interpreter (the project's .venv), else the one on PATH."""
    here = Path(sys.executable).parent / "vng"
    if here.is_file():
        return str(here)
    found = shutil.which("vng")
    if found:
        return found
    raise VmError("vng (virtme-ng) is not installed: run 'make setup' (the 'test' extra) "
                  "or 'pip install virtme-ng'")


def guest_script(
    command: Sequence[str] | str,
    *,
    status_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    modules: Iterable[str] = GUEST_MODULES,
    prepare: bool = True,
    fast_mounts: Sequence[tuple[str, str]] = (),
) -> str:
    """The shell script the guest runs: prepare the guest, run ``command``, record its status.

    ``command`` is an argv list (quoted here) or a shell snippet run as is.  ``prepare=False``
    leaves out the guest preparation (mounts, modules), so the rest can run anywhere.
    """
    cmd = command if isinstance(command, str) else shlex.join(command)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()))
    mods = " ".join(shlex.quote(m) for m in modules)
    status = shlex.quote(str(status_path))
    dmesg = f"dmesg > {shlex.quote(str(status_path.with_name(DMESG_FILE)))} 2>/dev/null\n" \
        if prepare else ""
    fast = ""
    if fast_mounts:
        binds = "\n".join(
            f"    mount --bind /run/nkframe-fast/{src} {shlex.quote(dst)} "
            f"|| echo \"nkframe-vm: cannot bind the image's copy over {dst}\""
            for src, dst in fast_mounts)
        fast = f"""# Our read-only disk holds copies of what Python reads most; bind them over the 9p originals.
modprobe -q virtio_blk; modprobe -q ext4
dev=
for b in /sys/block/vd*; do
    [ "$(cat "$b/serial" 2>/dev/null)" = {FAST_IMAGE_SERIAL} ] && dev=/dev/${{b##*/}}
done
if [ -n "$dev" ] && mkdir -p /run/nkframe-fast && mount -o ro "$dev" /run/nkframe-fast; then
{binds}
else
    echo "nkframe-vm: fast-path image not mounted; everything is read over 9p (slow)"
fi
"""
    setup = f"""echo "nkframe-vm: guest kernel $(uname -r)"
# Kernel chatter (link up, ...) would interleave with the command's output on the one console:
# only errors and worse go there now; the whole log is saved next to the status file.
dmesg -n 4 2>/dev/null
# The guest's root is the host's, seen read-only with tmpfs overlays: bpffs and /run/netns are
# the guest's own.  ip-netns wants /run/netns writable; tests mount private bpffs too.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf \\
    || echo "nkframe-vm: cannot mount bpffs on /sys/fs/bpf"
mkdir -p /run/netns && mount -t tmpfs -o mode=0755 nkframe-netns /run/netns \\
    || echo "nkframe-vm: cannot mount a tmpfs on /run/netns"
for m in {mods}; do
    modprobe -q "$m" 2>/dev/null || echo "nkframe-vm: module $m not loaded (missing or built in)"
done
{fast}""" if prepare else ""
    return f"""#!/bin/sh
# Generated by tools/vm.py for one boot; runs as root inside the guest.
{setup}{exports}
cd {shlex.quote(str(cwd))} || exit 1
echo "{BEGIN_MARK} (guest uptime $(cut -d' ' -f1 /proc/uptime) s)"
# A subshell, so an 'exit' in the command still reaches the status record below.
(
{cmd}
)
rc=$?
{dmesg}echo "{END_MARK} rc=$rc (guest uptime $(cut -d' ' -f1 /proc/uptime) s)"
echo "$rc" > {status}.tmp && mv {status}.tmp {status}
sync
"""


def build_vng_command(
    kernel: KernelImage,
    *,
    script: Path,
    rwdirs: Sequence[Path],
    memory: str = "2G",
    cpus: int = 2,
    vng: str = "vng",
    kvm: bool = False,
    disk: Path | None = None,
    qemu_opts: Sequence[str] = (),
    append: Sequence[str] = (),
    tcg_thread: str | None = None,
) -> list[str]:
    """The vng argv for one boot of ``kernel`` running ``script``.

    vng finds the modules by walking up from the image to a directory holding ``lib/modules``
    (our unpacked package) and links them to ``/lib/modules/$(uname -r)`` in the guest, so the
    host's ``/lib/modules`` is not touched.  ``-v`` is what sends the guest's output to the
    console we log.  ``--force-9p``: vng would otherwise try virtiofsd first, and Debian's
    (QEMU's C one) does not take its options; each failed try cost 3 s.  ``disk`` is attached
    read-only as a virtio disk with serial ``nkframe-fast``.
    """
    argv = [vng, "--run", str(kernel.vmlinuz), "-v", "--memory", memory, "--cpus", str(cpus),
            "--name", "nkframe-vm", "--force-9p"]
    # vng picks the microvm machine (no PCI) only with KVM; our disk is a PCI device.
    argv.append("--disable-kvm" if not kvm else "--disable-microvm")
    if not kvm and tcg_thread:
        # See TCG_THREAD: one host thread runs every vCPU unless told otherwise.
        argv.append(f"--qemu-opts=-accel tcg,thread={tcg_thread}")
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    if disk is not None:
        # One word with '=': argparse would read a separate "-drive ..." as an option.
        argv.append(f"--qemu-opts=-drive file={disk},if=none,id=nkfast,format=raw,readonly=on "
                    f"-device virtio-blk-pci,drive=nkfast,serial={FAST_IMAGE_SERIAL}")
    argv += [f"--qemu-opts={o}" for o in qemu_opts]
    argv += [f"--append={a}" for a in append]
    argv += ["--exec", f"/bin/sh {shlex.quote(str(script))}"]
    return argv


def run(
    kernel: KernelImage,
    command: Sequence[str] | str,
    *,
    rwdir: Path,
    timeout: float = DEFAULT_TIMEOUT,
    memory: str = "2G",
    cpus: int = 2,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    extra_rwdirs: Sequence[Path] = (),
    echo: Callable[[str], None] | None = None,
    modules: Iterable[str] = GUEST_MODULES,
    fast_image: bool = True,
    log: Log = _stderr_log,
) -> VmResult:
    """Boot ``kernel`` and run ``command`` in it as root; one boot per call.

    ``rwdir`` is shared read-write with the guest at the same path: the wrapper script, the
    status file and the console log live there, and so should any result the command writes.
    Everything else on the host is visible read-only; writes elsewhere land in tmpfs overlays
    (/etc, /usr, /var, /tmp, /home, /opt, /srv) and vanish with the guest.  ``echo`` receives
    the guest command's output line by line as it arrives (the kernel's own messages only go to
    the console log).  ``fast_image`` copies the venv, the interpreter and the repo onto a disk
    image first (see :func:`build_fast_image`).  KVM is used only if ``NKFRAME_VM_KVM=1``.
    """
    rwdir = Path(rwdir).resolve()
    rwdir.mkdir(parents=True, exist_ok=True)
    status = rwdir / STATUS_FILE
    log_path = rwdir / CONSOLE_LOG
    script = rwdir / GUEST_SCRIPT
    status.unlink(missing_ok=True)
    status.with_name(STATUS_FILE + ".tmp").unlink(missing_ok=True)

    image = None
    image_path = cache_root().parent / "run" / f"fast-{os.getpid()}-{time.monotonic_ns()}.img"
    try:
        if fast_image:
            try:
                image = default_fast_image(image_path, log, [rwdir, *extra_rwdirs])
            except (VmError, OSError) as e:  # slower without it, still correct
                log(f"nkframe-vm: no fast-path image ({e}); the guest reads everything over 9p")
        script.write_text(guest_script(
            command, status_path=status, cwd=Path(cwd or REPO_ROOT), env=env, modules=modules,
            fast_mounts=image.mounts if image else ()))
        argv = build_vng_command(kernel, script=script, rwdirs=[rwdir, *extra_rwdirs],
                                 memory=memory, cpus=cpus, vng=find_vng(),
                                 kvm=os.environ.get("NKFRAME_VM_KVM") == "1",
                                 disk=image.path if image else None,
                                 qemu_opts=[o for o in [os.environ.get("NKFRAME_VM_QEMU_OPTS")] if o],
                                 append=shlex.split(os.environ.get("NKFRAME_VM_APPEND", "")),
                                 tcg_thread=os.environ.get("NKFRAME_VM_TCG_THREAD", TCG_THREAD))
        return _boot(argv, log_path=log_path, status=status, timeout=timeout, echo=echo,
                     cwd=Path(cwd or REPO_ROOT))
    finally:
        image_path.unlink(missing_ok=True)


def _boot(argv: list[str], *, log_path: Path, status: Path, timeout: float,
          echo: Callable[[str], None] | None, cwd: Path) -> VmResult:
    t0 = time.monotonic()
    timed_out = False
    with open(log_path, "w", errors="replace") as log:
        log.write("# " + shlex.join(argv) + "\n")
        log.flush()
        # vng starts virtme-run by name: the venv's bin must be on PATH even when the venv
        # is not activated.
        host_env = dict(os.environ)
        host_env["PATH"] = os.pathsep.join([str(Path(argv[0]).parent), host_env.get("PATH", "")])
        # A session of its own so a timeout can stop vng, QEMU and anything they started.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(cwd), env=host_env)
        deadline = t0 + timeout
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        streaming = False
        pending = b""
        while True:
            chunk = _read_some(proc.stdout, deadline)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    log.write(line + "\n")
                    if BEGIN_MARK in line:
                        streaming = True
                    elif END_MARK in line:
                        streaming = False
                    if echo and (streaming or line.startswith("nkframe-vm:")):
                        echo(line)
                log.flush()
            elif chunk is None:  # EOF
                break
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(proc)
                log.write(f"# nkframe-vm: killed after {timeout:.0f} s\n")
                break
        if pending:
            log.write(pending.decode(errors="replace") + "\n")
        vng_exit = proc.wait()
    wall = time.monotonic() - t0

    exit_code = None
    if status.is_file():
        try:
            exit_code = int(status.read_text().strip())
        except ValueError:
            exit_code = None
    return VmResult(exit_code=exit_code, console_log=log_path, wall_time=wall,
                    timed_out=timed_out, vng_exit=vng_exit)


def _read_some(stream, deadline: float) -> bytes | None:
    """Bytes available on a non-blocking pipe, b"" if none yet, None at EOF."""
    import select

    wait = max(0.0, min(1.0, deadline - time.monotonic()))
    ready, _, _ = select.select([stream], [], [], wait)
    if not ready:
        return b""
    data = os.read(stream.fileno(), 65536)
    return data if data else None


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------
# Test results
# --------------------------------------------------------------------------------------------


@attrs.frozen
class TestCounts:
    """Outcome counts of one pytest run, read from its JUnit XML."""

    __test__ = False  # not a pytest test class despite the name

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0

    def __add__(self, other: TestCounts) -> TestCounts:
        return TestCounts(self.passed + other.passed, self.failed + other.failed,
                          self.skipped + other.skipped, self.errors + other.errors)

    @property
    def bad(self) -> int:
        """Failures and errors together: what the summary line calls 'failed'."""
        return self.failed + self.errors

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped + self.errors

    def line(self) -> str:
        """``N passed, N failed, N skipped`` (errors count as failed)."""
        return f"{self.passed} passed, {self.bad} failed, {self.skipped} skipped"


def parse_junit(path: Path) -> TestCounts:
    """Count outcomes per test case in a pytest JUnit XML file.

    A case with a ``failure`` or ``error`` child failed (pytest reports a teardown error on an
    otherwise passed test that way too, and xpass-strict as a failure); one with ``skipped`` was
    skipped (xfail included); others passed.  Raises :class:`VmError` if the file is missing or
    unreadable: a run without results is not a pass.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as e:
        raise VmError(f"no test results: {path} was not written") from e
    except ET.ParseError as e:
        raise VmError(f"test results {path} are not valid XML ({e}): the run was cut short?") from e
    passed = failed = skipped = errors = 0
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if "error" in tags:
            errors += 1
        elif "failure" in tags:
            failed += 1
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return TestCounts(passed, failed, skipped, errors)


@attrs.frozen
class TierResult:
    """One tier's outcome: counts, and a reason when the tier itself broke."""

    name: str
    counts: TestCounts
    problem: str | None = None
    wall_time: float = 0.0
    #: The kernel release the tier ran on ("" for the host tiers' callers that don't say).
    release: str = ""
    #: The reason of every skipped test (one entry per test), for the tier summary.
    skips: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None and self.counts.bad == 0 and self.counts.total > 0

    def line(self) -> str:
        return f"{self.name}: {self.counts.line()}"


#: Console lines that mean the guest kernel itself failed (not a test).
_CRASH_RE = re.compile(r"(Oops: |Kernel panic - not syncing|BUG: |kernel BUG at|"
                       r"general protection fault|Unable to handle kernel)")


def find_crash(console_log: Path, context: int = 12) -> list[str]:
    """The first lines of the guest kernel's oops/panic in ``console_log``, or [] if none.

    The kernel prints its report on the console: from the first matching line, ``context``
    lines (the RIP and the start of the call trace) are what a reader needs first.
    """
    try:
        lines = console_log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        if _CRASH_RE.search(line):
            return [ln.rstrip() for ln in lines[i:i + context]]
    return []


@attrs.frozen
class Progress:
    """What the guest's pytest plugin streamed out before the guest stopped."""

    counts: TestCounts
    #: The test that had started and not finished (the one running when the guest died).
    running: str | None
    skip_reasons: tuple[str, ...] = ()


def parse_progress(path: Path) -> Progress | None:
    """Read :data:`PROGRESS_FILE`; one outcome per test, the worst of its phases."""
    import json

    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    outcome: dict[str, str] = {}
    reasons: dict[str, str] = {}
    started: list[str] = []
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a line cut short by the crash
        node = rec.get("nodeid", "?")
        if rec.get("event") == "start":
            started.append(node)
        elif rec.get("event") == "result":
            o = rec.get("outcome", "failed")
            o = "failed" if o not in rank else o
            if rank[o] >= rank.get(outcome.get(node, "passed"), 0) or node not in outcome:
                outcome[node] = o
            if o == "skipped" and rec.get("reason"):
                reasons[node] = rec["reason"]
    finished = set(outcome)
    running = next((n for n in reversed(started) if n not in finished), None)
    values = list(outcome.values())
    counts = TestCounts(values.count("passed"), values.count("failed"), values.count("skipped"))
    return Progress(counts, running, tuple(reasons.values()))


def skip_reasons(junit: Path) -> list[str]:
    """The reason of every skipped test case in a JUnit file (one entry per test)."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return []
    out = []
    for case in root.iter("testcase"):
        for child in case:
            if child.tag == "skipped":
                out.append((child.get("message") or "").strip() or "(no reason given)")
    return out


def tier_result(name: str, junit: Path, exit_code: int | None, what: str,
                wall_time: float = 0.0) -> TierResult:
    """Combine a runner's exit status with its JUnit file.

    Missing or broken results, pytest's exit 5 (no tests collected), any other non-zero exit
    with no failing test to show for it: each is a problem, and the tier counts one failure for
    it so the totals never read as clean.
    """
    try:
        counts = parse_junit(junit)
    except VmError as e:
        return TierResult(name, TestCounts(failed=1), f"{e} ({what})", wall_time)
    problem = None
    if exit_code is None:
        problem = what
    elif exit_code == 5 or counts.total == 0:
        problem = "no tests were collected"
    elif exit_code not in (0, 1) or (exit_code == 1 and counts.bad == 0):
        problem = f"pytest exited {exit_code}: {what}"
    if problem is not None and counts.bad == 0:
        counts = counts + TestCounts(failed=1)
    return TierResult(name, counts, problem, wall_time)


# --------------------------------------------------------------------------------------------
# The root test tier in a VM
# --------------------------------------------------------------------------------------------

PLUGIN_DIR = REPO_ROOT / "tests" / "vm"
PLUGIN = "pytest_nkframe_vm"


def names_paths(pytest_args: Sequence[str], cwd: Path = REPO_ROOT) -> bool:
    """Whether ``pytest_args`` name test paths (then they, not the default suite, are run)."""
    return any(not a.startswith("-") and (cwd / a.split("::")[0]).exists() for a in pytest_args)


def pytest_command(
    venv: Path,
    junit: Path,
    pytest_args: Sequence[str] = (),
    *,
    marker: str = "root",
    cwd: Path = REPO_ROOT,
) -> list[str]:
    """The guest's pytest argv: the root tier, our VM plugin, results to ``junit``.

    The suite's own paths are used unless ``pytest_args`` names paths of its own; later options
    win in pytest, so ``-m`` in ``pytest_args`` overrides the marker.  ``tests/unit`` holds no
    root tests by the tiers' rule, and collecting it (hypothesis strategies, every module
    imported) took over a minute under TCG, so the default leaves it out.
    """
    argv = [str(venv / "bin" / "python"), "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider",
            "-m", marker, f"--junitxml={junit}", "--durations=15"]
    if not names_paths(pytest_args, cwd):
        argv += ["tests", "--ignore=tests/unit"]
    return argv + list(pytest_args)


def probe_command(venv: Path, json_out: Path | None = None) -> str:
    """Print the guest kernel's features; tolerate an nkframe without the probe command.

    With ``json_out`` the same probe is also saved as JSON there (tools/compat_table.py builds
    docs/compat.md from each tier's file)."""
    nk = shlex.quote(str(venv / "bin" / "nkframe"))
    cmd = (f'echo "== nkframe probe ($(uname -r)) =="; '
           f'{nk} probe 2>&1 || echo "probe unavailable (exit $?)"')
    if json_out is not None:
        cmd += f"; {nk} probe --json > {shlex.quote(str(json_out))} 2>/dev/null || true"
    return cmd


#: The test tier each kernel series runs as, and whether netkit must work there (a skipped
#: ``netkit`` test then fails).
TIER_OF_SERIES = {"6.12": "vm-netkit", "6.1": "vm-legacy", "7": "vm-next"}
NETKIT_SERIES = frozenset({"6.12", "7"})


def tier_name(series: KernelSeries) -> str:
    return TIER_OF_SERIES.get(series.name, f"vm-{series.name}")


def run_pytest(
    version: str,
    pytest_args: Sequence[str] = (),
    *,
    results: Path | None = None,
    timeout: float | None = None,
    echo: Callable[[str], None] | None = print,
    name: str | None = None,
    log: Log = _stderr_log,
) -> TierResult:
    """Boot the kernel ``version`` once and run the root tests (``pytest -m root``) in it.

    On 6.12 ``NKFRAME_REQUIRE_NETKIT=1`` is set: our pytest plugin turns a skipped ``netkit``
    test into a failure there.  Unless ``pytest_args`` name paths, only the kernel-dependent
    tests run (``NKFRAME_VM_SELECT=kernel``; set it to ``all`` in the environment for the whole
    root suite).  pytest gets the boot's time budget less :data:`BOOT_ALLOWANCE` and is then
    interrupted (SIGINT), so a run that is too slow still leaves JUnit XML for the tests it
    finished.  JUnit XML and the console log go to ``results`` (``results/vm-<series>/``).
    """
    t0 = time.monotonic()
    try:
        kernel = ensure_kernel(version, log=log)
    except VmError as e:
        series = series_for(version)
        return TierResult(name or tier_name(series), TestCounts(failed=1), str(e),
                          time.monotonic() - t0)
    series = kernel.series
    name = name or tier_name(series)
    results = Path(results or REPO_ROOT / "results" / f"vm-{series.name}").resolve()
    results.mkdir(parents=True, exist_ok=True)
    junit = results / "junit.xml"
    junit.unlink(missing_ok=True)
    progress = results / PROGRESS_FILE
    progress.unlink(missing_ok=True)
    venv = REPO_ROOT / ".venv"
    env = {
        "NKFRAME_VM_PROGRESS": str(progress),
        "NKFRAME_VM": "1",
        "NKFRAME_VM_SERIES": series.name,
        "NKFRAME_VM_RELEASE": kernel.release,
        "NKFRAME_REQUIRE_NETKIT": "1" if series.name in NETKIT_SERIES else "0",
        "NKFRAME_REQUIRE_NEXT": "1" if series.name == "7" else "0",
        "NKFRAME_VM_SELECT": ("all" if names_paths(pytest_args)
                              else os.environ.get("NKFRAME_VM_SELECT", "next" if series.name == "7" else "kernel")),
        "PYTHONPATH": str(PLUGIN_DIR),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TERM": "dumb",
    }
    timeout = timeout or float(os.environ.get("NKFRAME_VM_TIMEOUT", DEFAULT_TIMEOUT))
    budget = max(60, int(timeout - BOOT_ALLOWANCE))
    # coreutils timeout: SIGINT makes pytest stop and still write its report; exit 124 then.
    lease_lines, lease_what = lease_setup(kernel, log)
    if lease_what:
        log(f"nkframe-vm: lease source for {kernel.release}: {lease_what}")
    cmd = (probe_command(venv, results / "probe.json") + "\n" + lease_lines
           + f"timeout -s INT -k 60 {budget} "
           + shlex.join(pytest_command(venv, junit, pytest_args)))
    log(f"nkframe-vm: booting {kernel.release} for the {name} tier "
        f"(time limit {timeout:.0f} s, pytest {budget} s)")
    try:
        res = run(kernel, cmd, rwdir=results, env=env, echo=echo, log=log, timeout=timeout)
    except VmError as e:
        return TierResult(name, TestCounts(failed=1), str(e), time.monotonic() - t0)
    log(f"nkframe-vm: {name} boot+tests took {res.wall_time:.0f} s ({res.describe()})")
    what = res.describe()
    if res.exit_code == 124:
        what = (f"pytest used up its {budget} s in the guest and was interrupted: the results "
                f"are partial (raise NKFRAME_VM_TIMEOUT, now {timeout:.0f} s)")
    wall = time.monotonic() - t0
    crash = find_crash(res.console_log)
    if res.exit_code is None or crash:
        return _died(name, kernel, res, junit, progress, crash, what, wall, log)
    r = tier_result(name, junit, res.exit_code, what, wall)
    return attrs.evolve(r, release=kernel.release, skips=tuple(skip_reasons(junit)))


def _died(name: str, kernel: KernelImage, res: VmResult, junit: Path, progress: Path,
          crash: list[str], what: str, wall: float, log: Log) -> TierResult:
    """The tier's result when the guest did not finish (or its kernel oopsed): say so plainly,
    and keep the results of every test that finished before."""
    prog = parse_progress(progress)
    try:
        counts, skips = parse_junit(junit), tuple(skip_reasons(junit))
    except VmError:
        counts = prog.counts if prog else TestCounts()
        skips = prog.skip_reasons if prog else ()
    running = prog.running if prog else None
    if crash:
        problem = (f"the guest kernel {kernel.release} died"
                   + (f" while running {running}" if running else "")
                   + f": {crash[0].strip()}")
        log(f"nkframe-vm: GUEST KERNEL CRASH in the {name} tier (kernel {kernel.release})"
            + (f", test running: {running}" if running else "") + ":")
        for line in crash:
            log("  | " + line)
        log(f"nkframe-vm: whole console log: {res.console_log}")
    else:
        problem = what + (f" (test running: {running})" if running else "")
        _show_tail(res.console_log, log)
    log(f"nkframe-vm: results of the tests that finished before: {counts.line()}")
    counts = counts + TestCounts(failed=1)  # the tier itself failed, whatever finished
    return TierResult(name, counts, problem, wall, release=kernel.release, skips=skips)


def _show_tail(path: Path, log: Log, n: int = 25) -> None:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return
    log(f"nkframe-vm: last {len(lines)} console lines ({path}):")
    for line in lines:
        log("  | " + line)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.vm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p_kernel = sub.add_parser("kernel", help="download/unpack a kernel and print where it is")
    p_kernel.add_argument("--kernel", default="6.12", help="series (6.12, 6.1, 7) or full release")

    p_test = sub.add_parser("test", help="run the root test tier in the VM")
    p_test.add_argument("--kernel", default="6.12")
    p_test.add_argument("--results", type=Path, default=None, help="junit + console log dir")
    p_test.add_argument("--timeout", type=float, default=None)
    p_test.add_argument("pytest_args", nargs=argparse.REMAINDER)

    p_exec = sub.add_parser("exec", help="run a command in the VM as root")
    p_exec.add_argument("--kernel", default="6.12")
    p_exec.add_argument("--rwdir", type=Path, default=None,
                        help="directory shared read-write (default results/vm-exec)")
    p_exec.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p_exec.add_argument("--memory", default="2G")
    p_exec.add_argument("--cpus", type=int, default=2)
    p_exec.add_argument("command", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    try:
        if args.cmd == "kernel":
            k = ensure_kernel(args.kernel)
            print(f"release {k.release}\nvmlinuz {k.vmlinuz}\nmodules {k.modules_dir}\n"
                  f"package {k.package}")
            return 0
        if args.cmd == "test":
            extra = _after_dashdash(args.pytest_args)
            res = run_pytest(args.kernel, extra, results=args.results, timeout=args.timeout)
            if res.problem:
                print(f"{res.name}: FAILED: {res.problem}")
            print(res.line())
            return 0 if res.ok else 1
        if args.cmd == "exec":
            command = _after_dashdash(args.command)
            if not command:
                parser.error("exec needs a command after --")
            k = ensure_kernel(args.kernel)
            rwdir = args.rwdir or REPO_ROOT / "results" / "vm-exec"
            lease_lines, _ = lease_setup(k)
            shell = shlex.join(command) if len(command) > 1 else command[0]
            res = run(k, lease_lines + shell if lease_lines else shell, rwdir=rwdir,
                      timeout=args.timeout, memory=args.memory, cpus=args.cpus,
                      echo=print)
            if res.exit_code is None:
                _show_tail(res.console_log, _stderr_log)
                print(f"nkframe-vm: {res.describe()}", file=sys.stderr)
                return 2
            return res.exit_code
    except VmError as e:
        print(f"nkframe-vm: error: {e}", file=sys.stderr)
        return 2
    return 2


def _after_dashdash(rest: Sequence[str]) -> list[str]:
    rest = list(rest)
    return rest[1:] if rest and rest[0] == "--" else rest


if __name__ == "__main__":
    sys.exit(main())
