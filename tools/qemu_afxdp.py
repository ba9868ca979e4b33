#!/usr/bin/env python3
"""Build (once) and find a ``qemu-system-x86_64`` that has the ``af-xdp`` netdev.

None of Debian's QEMU builds links libxdp, so ``-netdev af-xdp`` is missing from every packaged
QEMU this project can install.  This tool builds one from Debian's own source packages (sid's
deb-src, read through a private apt configuration; the system's sources are never changed):

* ``libbpf`` and ``xdp-tools`` (for libxdp >= 1.4, which QEMU's af-xdp backend needs) into a
  private prefix inside the build's cache directory, never into the system;
* ``qemu`` with ``--enable-af-xdp``, only the ``x86_64-softmmu`` target and the few devices a
  small TCG guest uses (q35/pc, virtio-net/blk/rng/serial), no docs, GUI, audio or tools.  The
  binary finds the private libbpf/libxdp through its rpath and Debian's firmware (seabios, ipxe)
  through ``--firmwarepath``, so it runs as is.

Result: ``$NKFRAME_QEMU_CACHE`` (default ``~/.cache/nkframe/qemu``) ``/<qemu>+xdp<xdp-tools>+bpf<libbpf>/
bin/qemu-system-x86_64`` (Debian versions without epoch) with a ``.nkframe-complete`` stamp.
A build is redone only when one of the three source versions changes; the system's QEMU is
never touched.  Cold, on 2 cores (2026-12-03): 9m52s for ``make qemu-afxdp`` (QEMU's own
ninja part 8.5 min), a 26.9 MB stripped binary, 36 MB kept (binary plus the private
libbpf/libxdp prefix); 143 MB of build tree and ~450 MB of unpacked sources while it builds,
removed afterwards.

Usage: ``python tools/qemu_afxdp.py build`` (build if needed, print the binary's path),
``python tools/qemu_afxdp.py path`` (print the newest complete build's path, never build or
touch the network; exit 1 when there is none).
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: The QEMU release that first accepts ``map-path`` (and so ``inhibit=on`` with a pinned XSKMAP).
MIN_QEMU = "10.1"
#: QEMU's af-xdp backend needs libxdp >= 1.4 (bookworm has 1.3.1).
MIN_XDP_TOOLS = "1.4"
#: meson from PyPI: QEMU 10.x wants >= 1.5 (bookworm has 1.0).
MESON_REQ = "meson>=1.5,<2"
#: Where Debian's firmware for x86 guests lives (seabios, ipxe-qemu, qemu-system-data).
FIRMWARE_PATH = "/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"
#: Lists older than this are refreshed by ``build`` (a new sid upload then means a rebuild).
LISTS_MAX_AGE = 24 * 3600
#: Devices beyond what the machine types select themselves: what a small TCG test guest uses.
#: The devices file (configs/devices/x86_64-softmmu/nkframe.mak, written into the unpacked
#: source): QEMU's x86 defaults minus the optional devices configs/devices/i386-softmmu/
#: default.mak names as safe to drop, sound cards and virtio display/sound/crypto/input.
#: (--without-default-devices, or dropping PCI_DEVICES, does not link in 10.2.2: ACPI_X86 selects
#: ACPI_CXL while CXL stays off, and CXL in turn wants PCIe ports and bridges.)
DEVICES_MAK = """\
# nkframe test QEMU: q35/pc machines and virtio devices; no sound, virtio display or input.
CONFIG_AMD_IOMMU=n
CONFIG_APPLESMC=n
CONFIG_HYPERV=n
CONFIG_ISA_DEBUG=n
CONFIG_ISA_IPMI_BT=n
CONFIG_ISA_IPMI_KCS=n
CONFIG_PCI_IPMI_KCS=n
CONFIG_PCI_IPMI_BT=n
CONFIG_IPMI_SSIF=n
CONFIG_PVPANIC_ISA=n
CONFIG_QXL=n
CONFIG_SEV=n
CONFIG_TDX=n
CONFIG_SGX=n
CONFIG_TEST_DEVICES=n
CONFIG_TPM_CRB=n
CONFIG_TPM_TIS_ISA=n
CONFIG_VTD=n
CONFIG_ISAPC=n
CONFIG_MICROVM=n
CONFIG_NITRO_ENCLAVE=n
CONFIG_SB16=n
CONFIG_ADLIB=n
CONFIG_GUS=n
CONFIG_CS4231A=n
CONFIG_VIRTIO_GPU=n
CONFIG_VIRTIO_VGA=n
CONFIG_VIRTIO_SND=n
CONFIG_VIRTIO_CRYPTO=n
CONFIG_VIRTIO_INPUT=n
CONFIG_Q35=y
CONFIG_I440FX=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_RNG=y
CONFIG_VIRTIO_SERIAL=y
"""
STAMP = ".nkframe-complete"
BINARY = "bin/qemu-system-x86_64"

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The QEMU build could not be done; the message says which step and why."""


def _log(msg: str) -> None:
    print(f"qemu-afxdp: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    env = os.environ.get("NKFRAME_QEMU_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "nkframe" / "qemu"


# --- versions ---------------------------------------------------------------------------------

def _compare(a: str, b: str) -> int:
    """dpkg's version ordering (epochs, ~, +ds ...), as -1/0/1."""
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0
    return -1 if lt else 1


def newest_first(versions: Sequence[str]) -> list[str]:
    return sorted(set(versions), key=functools.cmp_to_key(_compare), reverse=True)


def upstream(version: str) -> str:
    """``1:10.2.2+ds-1`` -> ``10.2.2``."""
    v = version.split(":", 1)[-1]
    v = v.rsplit("-", 1)[0] if "-" in v else v
    return v.split("+", 1)[0].split("~", 1)[0]


def at_least(version: str, minimum: str) -> bool:
    return _compare(upstream(version), minimum) >= 0


def no_epoch(version: str) -> str:
    return version.split(":", 1)[-1]


def build_name(qemu: str, xdp: str, bpf: str) -> str:
    return f"{no_epoch(qemu)}+xdp{no_epoch(xdp)}+bpf{no_epoch(bpf)}"


# --- private apt configuration ----------------------------------------------------------------

def _system_archive() -> tuple[str, str]:
    """(URI, keyring) of the system's Debian archive: tools/vm.py's reader when importable (the
    tool also runs without the package installed), else the same deb822 reading here."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tools.vm import _system_archive as read  # noqa: PLC0415 - optional reuse
        return read()
    except Exception:  # noqa: BLE001 - any failure falls back to reading the file ourselves
        pass
    uri, keyring = "http://deb.debian.org/debian", "/usr/share/keyrings/debian-archive-keyring.gpg"
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith("#"))
            uris = fields.get("URIs", "").split()
            if uris and not uris[0].rstrip("/").endswith("-security"):
                return uris[0], fields.get("Signed-By", keyring).strip() or keyring
    return uri, keyring


def apt_options(cache: Path) -> list[str]:
    """Options for apt-get/apt-cache that read only sid's deb-src through private lists."""
    base = cache.parent / "apt" / "qemu-src"
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    uri, keyring = _system_archive()
    sources = base / "sources.list"
    text = f"deb-src [signed-by={keyring}] {uri} sid main\n"
    if not sources.is_file() or sources.read_text() != text:
        sources.write_text(text)
    return ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=/nonexistent",
            "-o", f"Dir::State::Lists={base / 'lists'}", "-o", f"Dir::Cache={base / 'cache'}",
            "-o", "APT::Get::List-Cleanup=0", "-o", "APT::Sandbox::User=root"]


def _lists_dir(opts: Sequence[str]) -> Path:
    return Path(next(o.split("=", 1)[1] for o in opts if o.startswith("Dir::State::Lists=")))


def refresh_lists(opts: Sequence[str], log: Log, *, force: bool = False) -> None:
    lists = _lists_dir(opts)
    sources = list(lists.glob("*_Sources*"))
    age = time.time() - max((p.stat().st_mtime for p in sources), default=0)
    if sources and age < LISTS_MAX_AGE and not force:
        return
    log("apt-get update (private configuration: sid deb-src)")
    r = subprocess.run(["apt-get", *opts, "update", "-qq"], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"apt-get update failed (exit {r.returncode}): {r.stderr.strip()[-400:]}")


def source_versions(opts: Sequence[str], package: str) -> list[str]:
    r = subprocess.run(["apt-cache", *opts, "showsrc", "--only-source", package],
                       capture_output=True, text=True, check=False)
    found = [line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
             if line.startswith("Version:")]
    return newest_first(found)


def download_source(opts: Sequence[str], package: str, version: str, dest: Path, log: Log) -> Path | None:
    """Fetch and unpack (patches applied) one source package; the tree, or None when the
    archive does not serve that version (lists can be ahead of the mirror)."""
    dest.mkdir(parents=True, exist_ok=True)
    tree = dest / f"{package}-{upstream_dir(version)}"
    if (tree / ".nkframe-unpacked").is_file():
        return tree
    log(f"apt-get source {package}={version}")
    r = subprocess.run(["apt-get", *opts, "source", "-q", "--download-only", f"{package}={version}"],
                       cwd=dest, capture_output=True, text=True)
    if r.returncode != 0:
        log(f"  not available: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        return None
    dsc = dest / f"{package}_{no_epoch(version)}.dsc"
    if tree.exists():
        shutil.rmtree(tree)
    _run(["dpkg-source", "--no-check", "-x", dsc.name, tree.name], cwd=dest, what=f"unpack {dsc.name}")
    (tree / ".nkframe-unpacked").write_text(version + "\n")
    return tree


def upstream_dir(version: str) -> str:
    """The directory dpkg-source unpacks into: the version without epoch and Debian revision."""
    v = no_epoch(version)
    return v.rsplit("-", 1)[0] if "-" in v else v


# --- building ---------------------------------------------------------------------------------

def _run(argv: Sequence[str], *, cwd: Path, what: str, env: dict[str, str] | None = None,
         log_file: Path | None = None) -> None:
    full_env = {**os.environ, **(env or {})}
    if log_file is None:
        r = subprocess.run(list(argv), cwd=cwd, env=full_env, capture_output=True, text=True)
        out = (r.stdout or "") + (r.stderr or "")
    else:
        with log_file.open("ab") as f:
            f.write(f"\n$ {' '.join(argv)}\n".encode())
            f.flush()
            r = subprocess.run(list(argv), cwd=cwd, env=full_env, stdout=f, stderr=subprocess.STDOUT)
        out = log_file.read_text(errors="replace")
    if r.returncode != 0:
        raise BuildError(f"{what} failed (exit {r.returncode}); last output:\n{out[-3000:]}")


def _nice(argv: Sequence[str]) -> list[str]:
    return ["nice", "-n", "10", *argv]


def _jobs() -> str:
    return os.environ.get("NKFRAME_BUILD_JOBS", str(min(2, os.cpu_count() or 1)))


def meson_venv(cache: Path, log: Log) -> Path:
    venv = cache / "tools-venv"
    py = venv / "bin" / "python3"
    if (venv / ".nkframe-ok").is_file() and py.exists():
        return py
    log(f"creating {venv} with {MESON_REQ} (PyPI)")
    if venv.exists():
        shutil.rmtree(venv)
    _run([sys.executable if sys.prefix == sys.base_prefix else "/usr/bin/python3", "-m", "venv", str(venv)],
         cwd=cache, what="python3 -m venv")
    _run([str(py), "-m", "pip", "install", "-q", MESON_REQ], cwd=cache, what=f"pip install {MESON_REQ}")
    (venv / ".nkframe-ok").write_text(MESON_REQ + "\n")
    return py


def build_libbpf(tree: Path, prefix: Path, logf: Path) -> None:
    _run(_nice(["make", "-C", "src", f"-j{_jobs()}", f"PREFIX={prefix}", f"LIBDIR={prefix}/lib",
                "install"]), cwd=tree, what="libbpf build", log_file=logf)


def build_libxdp(tree: Path, prefix: Path, logf: Path) -> None:
    env = {
        "PKG_CONFIG_PATH": f"{prefix}/lib/pkgconfig",
        "PREFIX": str(prefix), "LIBDIR": f"{prefix}/lib",
        "FORCE_SYSTEM_LIBBPF": "1", "PRODUCTION": "1",
        # libxdp finds the private libbpf by itself, without the caller's rpath.
        "LDFLAGS": f"-Wl,-rpath,{prefix}/lib",
    }
    _run(["./configure"], cwd=tree, what="xdp-tools configure", env=env, log_file=logf)
    _run(_nice(["make", "-C", "lib/libxdp", f"-j{_jobs()}"]), cwd=tree,
         what="libxdp build", env=env, log_file=logf)
    _run(["make", "-C", "lib/libxdp", "install"], cwd=tree, what="libxdp install", env=env,
         log_file=logf)


def qemu_configure_args(tree: Path, out: Path, xdp_prefix: Path, python: Path) -> list[str]:
    return [
        str(tree / "configure"), f"--prefix={out}", f"--python={python}",
        "--target-list=x86_64-softmmu",
        "--without-default-features",
        "--with-devices-x86_64=nkframe",
        "--enable-af-xdp", "--enable-bpf", "--enable-kvm", "--enable-tcg",
        "--disable-docs", "--disable-tools", "--disable-guest-agent", "--disable-install-blobs",
        "--disable-download", "--disable-werror", "--disable-debug-info",
        f"--firmwarepath={FIRMWARE_PATH}",
        f"--extra-ldflags=-Wl,-rpath,{xdp_prefix}/lib -L{xdp_prefix}/lib",
        f"--extra-cflags=-I{xdp_prefix}/include",
    ]


def build_qemu(tree: Path, out: Path, xdp_prefix: Path, python: Path, build_dir: Path,
               logf: Path) -> None:
    devices = tree / "configs" / "devices" / "x86_64-softmmu" / "nkframe.mak"
    if not devices.is_file() or devices.read_text() != DEVICES_MAK:
        devices.write_text(DEVICES_MAK)
    env = {"PKG_CONFIG_PATH": f"{xdp_prefix}/lib/pkgconfig",
           "PATH": f"{python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    args = qemu_configure_args(tree, out, xdp_prefix, python)
    configured = build_dir / ".nkframe-configure"
    # An interrupted build with the same configuration resumes (ninja redoes only what is
    # missing, meson re-reads the devices file itself); anything else starts afresh.
    if not (configured.is_file() and configured.read_text() == json.dumps(args)):
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        _run(args, cwd=build_dir, what="qemu configure", env=env, log_file=logf)
        configured.write_text(json.dumps(args))
    _run(_nice(["ninja", f"-j{_jobs()}", "qemu-system-x86_64"]), cwd=build_dir,
         what="qemu build", env=env, log_file=logf)
    # Only the binary: firmware comes from Debian's packages (--firmwarepath), no other file
    # of an install is used.
    (out / BINARY).parent.mkdir(parents=True, exist_ok=True)
    tmp = out / (BINARY + ".tmp")
    shutil.copy2(build_dir / "qemu-system-x86_64", tmp)
    strip = shutil.which("strip")
    if strip:
        _run([strip, str(tmp)], cwd=build_dir, what="strip")
    os.replace(tmp, out / BINARY)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def check_binary(binary: Path) -> str:
    """The binary's ``-version`` line, after checking it lists the af-xdp netdev."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    v = subprocess.run([str(binary), "-version"], capture_output=True, text=True, env=env, timeout=30)
    if v.returncode != 0:
        raise BuildError(f"{binary} -version failed: {v.stderr.strip()}")
    h = subprocess.run([str(binary), "-netdev", "help"], capture_output=True, text=True, env=env,
                       timeout=30)
    if h.returncode != 0:
        raise BuildError(f"{binary} -netdev help failed (exit {h.returncode}): "
                         f"{(h.stderr or h.stdout).strip()[-500:]}")
    if "af-xdp" not in h.stdout.split():
        raise BuildError(f"{binary} was built without the af-xdp netdev: {h.stdout.strip()}")
    return v.stdout.splitlines()[0]


# --- finding and ensuring ---------------------------------------------------------------------

def complete_builds(cache: Path | None = None) -> list[tuple[Path, dict]]:
    """Complete builds in the cache, newest QEMU first."""
    cache = cache or cache_root()
    found = []
    if cache.is_dir():
        for d in cache.iterdir():
            stamp = d / STAMP
            if stamp.is_file() and (d / BINARY).is_file():
                try:
                    found.append((d, json.loads(stamp.read_text())))
                except ValueError:
                    continue
    order = newest_first([info["qemu"] for _, info in found])
    return sorted(found, key=lambda f: order.index(f[1]["qemu"]))


def cached_binary(cache: Path | None = None) -> Path | None:
    builds = complete_builds(cache)
    return builds[0][0] / BINARY if builds else None


def ensure(log: Log = _log, *, cache: Path | None = None, refresh: bool = False) -> Path:
    """The af-xdp QEMU binary of the newest source versions sid serves, built if missing.

    Safe against a parallel call (a lock).  When apt cannot tell (no network) the newest cached
    build is used; with neither, :class:`BuildError`.
    """
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_locked(cache, log, refresh)


def _ensure_locked(cache: Path, log: Log, refresh: bool) -> Path:
    opts = apt_options(cache)
    refresh_lists(opts, log, force=refresh)
    qemus = [v for v in source_versions(opts, "qemu") if at_least(v, MIN_QEMU)]
    xdps = [v for v in source_versions(opts, "xdp-tools") if at_least(v, MIN_XDP_TOOLS)]
    bpfs = source_versions(opts, "libbpf")
    if not (qemus and xdps and bpfs):
        cached = cached_binary(cache)
        if cached:
            log(f"apt's sid deb-src lists offer no usable qemu/xdp-tools/libbpf; using cached {cached}")
            return cached
        raise BuildError(
            "sid's deb-src lists (private apt configuration under "
            f"{cache.parent / 'apt' / 'qemu-src'}) offer no qemu >= {MIN_QEMU}, xdp-tools >= "
            f"{MIN_XDP_TOOLS} and libbpf source, and nothing is cached: check the network")
    src = cache / "src"
    for qemu in qemus:
        done = [d / BINARY for d, info in complete_builds(cache)
                if (info["qemu"], info["xdp-tools"], info["libbpf"]) == (qemu, xdps[0], bpfs[0])]
        if done:
            return done[0]
        qemu_tree = download_source(opts, "qemu", qemu, src, log)
        if qemu_tree is None:
            continue
        bpf, bpf_tree = _first_available(opts, "libbpf", bpfs, src, log)
        xdp, xdp_tree = _first_available(opts, "xdp-tools", xdps, src, log)
        target = cache / build_name(qemu, xdp, bpf)
        if (target / STAMP).is_file() and (target / BINARY).is_file():
            return target / BINARY
        return _build(cache, target, qemu, xdp, bpf, qemu_tree, xdp_tree, bpf_tree, log)
    raise BuildError(f"the archive serves none of the qemu sources its lists name: {qemus}")


def _first_available(opts: Sequence[str], package: str, versions: Sequence[str], src: Path,
                     log: Log) -> tuple[str, Path]:
    """(version, unpacked tree) of the newest source the archive actually serves."""
    for v in versions:
        tree = download_source(opts, package, v, src, log)
        if tree is not None:
            return v, tree
    raise BuildError(f"the archive serves none of the {package} sources its lists name: {versions}")


def _build(cache: Path, target: Path, qemu: str, xdp: str, bpf: str, qemu_tree: Path,
           xdp_tree: Path, bpf_tree: Path, log: Log) -> Path:
    t0 = time.monotonic()
    target.mkdir(parents=True, exist_ok=True)
    logf = target / "build.log"
    prefix = target / "xdp"
    python = meson_venv(cache, log)
    if not (prefix / ".nkframe-ok").is_file():
        if prefix.exists():
            shutil.rmtree(prefix)
        log(f"building libbpf {bpf} into {prefix} (log: {logf})")
        build_libbpf(bpf_tree, prefix, logf)
        log(f"building libxdp from xdp-tools {xdp} into {prefix}")
        build_libxdp(xdp_tree, prefix, logf)
        (prefix / ".nkframe-ok").write_text(f"libbpf {bpf}\nxdp-tools {xdp}\n")
    log(f"building qemu {qemu} (x86_64-softmmu, af-xdp) into {target}: ~10 min on 2 cores")
    build_dir = cache / "build" / target.name
    build_qemu(qemu_tree, target, prefix, python, build_dir, logf)
    version_line = check_binary(target / BINARY)
    seconds = round(time.monotonic() - t0)
    info = {
        "qemu": qemu, "xdp-tools": xdp, "libbpf": bpf, "version": version_line,
        "build_seconds": seconds, "binary_bytes": (target / BINARY).stat().st_size,
        "install_bytes": _du(target), "build_tree_bytes": _du(build_dir),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    shutil.rmtree(build_dir, ignore_errors=True)
    (target / STAMP).write_text(json.dumps(info, indent=1) + "\n")
    # The unpacked sources (~450 MB) are needed again only for another version.
    shutil.rmtree(cache / "src", ignore_errors=True)
    log(f"built {target / BINARY} in {seconds} s: {version_line}")
    return target / BINARY


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qemu_afxdp.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build if needed; print the binary's path")
    b.add_argument("--refresh", action="store_true", help="refresh sid's deb-src lists first")
    sub.add_parser("path", help="print the newest cached build's path (no network, no build)")
    sub.add_parser("info", help="print the newest cached build's stamp (JSON)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            print(ensure(refresh=args.refresh))
            return 0
        builds = complete_builds()
        if not builds:
            print(f"no af-xdp QEMU in {cache_root()}: run 'make qemu-afxdp'", file=sys.stderr)
            return 1
        if args.cmd == "path":
            print(builds[0][0] / BINARY)
        else:
            print(json.dumps(builds[0][1], indent=1))
        return 0
    except BuildError as e:
        print(f"qemu-afxdp: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
