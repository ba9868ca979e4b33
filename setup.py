"""Build steps pyproject.toml cannot express: the cffi extension, the BPF objects and the CNI shim.

The cffi module is built out-of-line against the system's libbpf/libxdp headers.  BPF C under
``bpf/`` is compiled with clang into ``nkframe/_objs/`` (next to the sources for an editable
install, into the wheel otherwise); objects are never committed.  The CNI shim
(``nkframe/cni/shim.c``) is compiled with cc into ``nkframe/_bin/`` the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BPF_SRC = ROOT / "bpf"
MULTIARCH = "/usr/include/x86_64-linux-gnu"


def compile_bpf(out_dir: Path, *, tests: bool) -> None:
    """Every object the product loads; with ``tests`` also the test objects (``test_*.c``),
    which an editable install (a checkout) needs and a wheel does not ship."""
    clang = os.environ.get("CLANG", "clang")
    strip = shutil.which("llvm-strip") or shutil.which("llvm-strip-14")
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(BPF_SRC.glob("*.c")):
        if src.name.startswith("test_") and not tests:
            continue
        obj = out_dir / (src.stem + ".o")
        deps = [src, *BPF_SRC.glob("include/*.h")]
        if obj.exists() and all(obj.stat().st_mtime >= d.stat().st_mtime for d in deps):
            continue
        cmd = [
            clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
            "-D__TARGET_ARCH_x86", f"-I{BPF_SRC / 'include'}", f"-I{MULTIARCH}",
            "-c", str(src), "-o", str(obj),
        ]
        subprocess.run(cmd, check=True)
        if strip:
            # -g keeps BTF (needed for maps and CO-RE) but the DWARF is 60x the code.
            subprocess.run([strip, "-g", str(obj)], check=True)


SHIM_SRC = ROOT / "nkframe" / "cni" / "shim.c"


def compile_shim(out_dir: Path) -> None:
    """nkframe-cni-shim, the CNI plugin runtimes exec (docs/cni.md): a few KB of C instead of a
    Python interpreter per pod."""
    cc = os.environ.get("CC") or shutil.which("cc") or "clang"  # clang is a build dependency already (BPF)
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "nkframe-cni-shim"
    if exe.exists() and exe.stat().st_mtime >= SHIM_SRC.stat().st_mtime:
        return
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SHIM_SRC)], check=True)


class BuildExtWithBpf(build_ext):
    def run(self) -> None:
        base = ROOT if self.inplace else Path(self.build_lib)
        compile_bpf(base / "nkframe" / "_objs", tests=self.inplace)
        compile_shim(base / "nkframe" / "_bin")
        super().run()


setup(
    cffi_modules=["nkframe/_bpf/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithBpf},
)
