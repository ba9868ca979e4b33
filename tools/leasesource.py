"""A lease source for the vm-next tier: ``netdevsim.ko`` built for the exact guest kernel.

Queue leasing (Linux 7.1) needs a physical device whose driver has queue management ops;
``netdevsim`` is the software device that has them, and Debian does not build it.  This module
builds it out of tree from Debian's own ``linux-source-X.Y`` of the guest kernel, against that
kernel's ``linux-headers-<release>``, and caches the module outside the clone:

    ~/.cache/nkframe/lease-source/<release>/netdevsim.ko   (debug info stripped, BTF kept)
    ~/.cache/nkframe/lease-source/<release>/stamp.json     (source version, build time, sizes)

Nothing is rebuilt while the release stays the same.

Debian's 7.x kbuild tools (fixdep, modpost, objtool) are linked against trixie's glibc, which
bookworm lacks, and the kernel was built with gcc-14.  So the build runs in a private, throwaway
trixie chroot made with ``mmdebstrap`` (the system's apt sources are never changed; the chroot
takes the archive URI and keyring the system uses) holding gcc-14, make and the headers, inside a
private mount namespace (objtool reads /proc).  Only ``drivers/net/netdevsim/`` is taken from the
source tarball, streamed out of the .deb.  The chroot and the download are removed afterwards.

:func:`ensure_netdevsim` returns a :class:`LeaseSource`; :func:`guest_setup` is the shell
snippet the guest runs to load it (dependencies first, from ``modinfo -F depends``, then
``insmod``), printing which lease source ran.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from nkframe.errors import NkframeError

Log = Callable[[str], None]

#: Kernel series whose tier gets a lease source (6.12 and 6.1 have no queue leasing).
LEASE_SERIES = frozenset({"7"})
#: The guest's environment names these; tests read them to say why there is no lease source.
ENV_SOURCE = "NKFRAME_LEASE_SOURCE"
ENV_WHY = "NKFRAME_LEASE_SOURCE_WHY"
MODULE = "netdevsim.ko"
STAMP = "stamp.json"
#: Debian release numbers in kernel releases (``+deb13``) -> the suite the chroot is made from.
DEBIAN_SUITES = {"13": "trixie", "14": "forky"}


class LeaseSourceError(NkframeError):
    """netdevsim could not be built for the guest kernel; the message says which step failed."""


@attrs.frozen
class LeaseSource:
    """A built ``netdevsim.ko`` for one kernel release."""

    release: str
    module: Path
    source_package: str
    source_version: str
    build_seconds: float = 0.0
    cached: bool = True

    def describe(self) -> str:
        return f"netdevsim (built from {self.source_package} {self.source_version})"


def cache_dir(kernel_cache: Path) -> Path:
    """``~/.cache/nkframe/lease-source`` beside the kernel cache."""
    return kernel_cache.parent / "lease-source"


def source_package(release: str) -> str:
    """``7.3.4+deb13-amd64`` -> ``linux-source-7.3``."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise LeaseSourceError(f"cannot tell the kernel version of release {release!r}")
    return f"linux-source-{m.group(1)}.{m.group(2)}"


def upstream_version(release: str) -> str:
    """``7.3.4+deb13-amd64`` -> ``7.3.4``."""
    return re.split(r"[+-]", release, maxsplit=1)[0]


def parse_madison(text: str, package: str) -> list[tuple[str, str]]:
    """(version, suite) pairs from ``apt-cache madison`` output."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[0] == package and parts[2].endswith("Packages"):
            suite = parts[2].split()[1].split("/")[0]
            out.append((parts[1], suite))
    return out


def pick_source(release: str, madison: list[tuple[str, str]]) -> tuple[str, str]:
    """The (version, suite) of the source package matching the release's upstream version."""
    want = upstream_version(release)
    for version, suite in madison:
        if re.match(re.escape(want) + r"(-|$)", version):
            return version, suite
    seen = ", ".join(v for v, _ in madison) or "none"
    raise LeaseSourceError(
        f"no {source_package(release)} of version {want} in the apt lists (seen: {seen}): the "
        f"archive has moved on from kernel {release}; pin the kernel "
        f"(NKFRAME_KERNEL_7) to a release whose source is still there, or let it float")


def chroot_suites(release: str, source_suite: str) -> tuple[str, list[str]]:
    """The chroot's base suite and every suite its sources list needs."""
    if source_suite.endswith("-backports"):
        base = source_suite[: -len("-backports")]
        return base, [base, source_suite]
    if source_suite in ("sid", "unstable", "experimental"):
        return "sid", ["sid"] + ([source_suite] if source_suite == "experimental" else [])
    m = re.search(r"\+deb(\d+)", release)
    base = DEBIAN_SUITES.get(m.group(1), source_suite) if m else source_suite
    return base, sorted({base, source_suite})


def read_stamp(directory: Path, release: str) -> LeaseSource | None:
    """The cached module of ``release``, or None when there is none (or it is incomplete)."""
    try:
        data = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return None
    module = directory / MODULE
    if data.get("release") != release or not module.is_file():
        return None
    return LeaseSource(release, module, data.get("source_package", "?"),
                       data.get("source_version", "?"), float(data.get("build_seconds", 0)))


def _run(argv: list[str], what: str, *, cwd: Path | None = None, shell: bool = False,
         timeout: float = 1800) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv if not shell else argv[0], shell=shell, cwd=cwd,
                           capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LeaseSourceError(f"{what}: {e.filename} is missing (run 'make setup')") from None
    except subprocess.TimeoutExpired:
        raise LeaseSourceError(f"{what}: no answer after {timeout:.0f} s") from None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])
        raise LeaseSourceError(f"{what} failed (exit {r.returncode}):\n{tail}")
    return r


def _dir_mb(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total >> 20


def ensure_netdevsim(release: str, kernel_cache: Path, apt_opts: list[str], *,
                     archive: tuple[str, str], log: Log) -> LeaseSource:
    """``netdevsim.ko`` for ``release``: from the cache, or built now (raises
    :class:`LeaseSourceError` with the failing step)."""
    base = cache_dir(kernel_cache)
    target = base / release
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = read_stamp(target, release)
        if found is not None:
            return found
        return _build(release, target, apt_opts, archive, log)


def _build(release: str, target: Path, apt_opts: list[str], archive: tuple[str, str],
           log: Log) -> LeaseSource:
    t0 = time.monotonic()
    for tool in ("mmdebstrap", "unshare", "chroot", "dpkg-deb", "apt-get"):
        if shutil.which(tool) is None:
            raise LeaseSourceError(f"{tool} is missing: run 'make setup' (it installs mmdebstrap)")
    package = source_package(release)
    madison = _run(["apt-cache", *apt_opts, "madison", package], f"apt-cache madison {package}")
    version, suite = pick_source(release, parse_madison(madison.stdout, package))
    base_suite, suites = chroot_suites(release, suite)
    log(f"nkframe-vm: building the lease source netdevsim.ko for {release} from {package} "
        f"{version} ({suite}) in a private {base_suite} chroot (once per kernel release)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        dl = work / "dl"
        dl.mkdir()
        os.chmod(dl, 0o777)  # apt-get download runs the transfer as _apt
        _run(["apt-get", *apt_opts, "download", "-q", f"{package}={version}"],
             f"apt-get download {package}={version}", cwd=dl)
        debs = list(dl.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise LeaseSourceError(f"apt-get download {package} left {len(debs)} .deb files")
        t_dl = time.monotonic()
        # Only drivers/net/netdevsim/ of the tarball, streamed: the 165 MB .tar.xz is never
        # written out (xz decompression of the whole stream still takes ~20 s).
        src = work / "src"
        src.mkdir()
        tarball = f"./usr/src/{package}.tar.xz"
        _run([f"dpkg-deb --fsys-tarfile {shlex.quote(str(debs[0]))} | tar -xO {shlex.quote(tarball)}"
              f" | tar -xJ -C {shlex.quote(str(src))} --wildcards '*/drivers/net/netdevsim/*'"],
             f"extracting drivers/net/netdevsim from {debs[0].name}", shell=True)
        nsim = next(src.glob("*/drivers/net/netdevsim"), None)
        if nsim is None or not (nsim / "Makefile").is_file():
            raise LeaseSourceError(f"{debs[0].name} holds no drivers/net/netdevsim/Makefile")
        debs[0].unlink()
        t_src = time.monotonic()

        uri, keyring = archive
        root = work / "root"
        headers = f"linux-headers-{release}"
        _run(["mmdebstrap", "--variant=apt", "--quiet", "--skip=cleanup/apt/lists",
              f"--include=gcc-14,make,libc6-dev,{headers}", base_suite, str(root),
              *[f"deb [signed-by={keyring}] {uri} {s} main" for s in suites]],
             f"mmdebstrap {base_suite} with {headers}", timeout=1800)
        t_chroot = time.monotonic()
        chroot_mb = _dir_mb(root)

        shutil.copytree(nsim, root / "build" / "netdevsim")
        jobs = max(1, os.cpu_count() or 1)
        inner = (f"make -s -C /usr/src/{headers} M=/build/netdevsim CONFIG_NETDEVSIM=m "
                 f"modules -j{jobs} && strip --strip-debug /build/netdevsim/netdevsim.ko")
        # A private mount namespace: /proc inside the chroot (objtool reads it) vanishes with it.
        script = (f"mount -t proc proc {shlex.quote(str(root / 'proc'))} && "
                  f"chroot {shlex.quote(str(root))} sh -c {shlex.quote(inner)}")
        _run(["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script],
             f"building netdevsim.ko against {headers}")
        built = root / "build" / "netdevsim" / MODULE
        vermagic = _run(["modinfo", "-F", "vermagic", str(built)], "modinfo netdevsim.ko").stdout
        if vermagic.split()[:1] != [release]:
            raise LeaseSourceError(f"the built netdevsim.ko is for {vermagic.strip()!r}, not {release}")
        t_build = time.monotonic()

        staged = work / "out"
        staged.mkdir()
        shutil.copy2(built, staged / MODULE)
        seconds = time.monotonic() - t0
        stamp = {
            "release": release, "source_package": package, "source_version": version,
            "source_suite": suite, "chroot_suite": base_suite, "build_seconds": round(seconds, 1),
            "seconds": {"download": round(t_dl - t0, 1), "extract": round(t_src - t_dl, 1),
                        "chroot": round(t_chroot - t_src, 1), "build": round(t_build - t_chroot, 1)},
            "chroot_mb": chroot_mb, "module_bytes": (staged / MODULE).stat().st_size,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staged / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    log(f"nkframe-vm: netdevsim.ko for {release} built in {seconds:.0f} s "
        f"(download {stamp['seconds']['download']} s, extract {stamp['seconds']['extract']} s, "
        f"chroot {stamp['seconds']['chroot']} s / {chroot_mb} MB, build "
        f"{stamp['seconds']['build']} s; module {stamp['module_bytes'] >> 10} KiB); "
        f"cached in {target}")
    return LeaseSource(release, target / MODULE, package, version, seconds, cached=False)


def guest_setup(source: LeaseSource | None, why: str = "") -> str:
    """Shell lines for the guest: load the lease source and say which one ran.

    The module is unsigned; Debian's 7.x kernels have CONFIG_MODULE_SIG=y without _FORCE, so it
    loads and taints the kernel (E, O), which is fine for a test guest.
    """
    if source is None:
        msg = f"lease source: none ({why or 'no lease source for this kernel'})"
        return (f"echo {shlex.quote(msg)}\nexport {ENV_SOURCE}=none {ENV_WHY}={shlex.quote(why)}\n")
    ko = shlex.quote(str(source.module))
    ok = shlex.quote(f"lease source: {source.describe()}")
    return f"""# The lease source: netdevsim built for this kernel (see tools/leasesource.py).
nk_lease_why=
for dep in $(modinfo -F depends {ko} 2>/dev/null | tr ',' ' '); do
    modprobe -q "$dep" || nk_lease_why="modprobe $dep (a dependency of netdevsim) failed"
done
if [ -z "$nk_lease_why" ] && ! [ -d /sys/bus/netdevsim ]; then
    nk_lease_err=$(insmod {ko} 2>&1) || nk_lease_why="insmod {ko} failed: $nk_lease_err"
fi
if [ -z "$nk_lease_why" ] && [ -d /sys/bus/netdevsim ]; then
    echo {ok} "(taint $(cat /proc/sys/kernel/tainted))"
    export {ENV_SOURCE}=netdevsim {ENV_WHY}=
else
    nk_lease_why=${{nk_lease_why:-"/sys/bus/netdevsim is missing after insmod"}}
    echo "lease source: none ($nk_lease_why)"
    export {ENV_SOURCE}=none {ENV_WHY}="$nk_lease_why"
fi
"""
