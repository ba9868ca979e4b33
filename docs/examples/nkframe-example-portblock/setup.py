"""Builds the BPF object into the package: pyproject.toml cannot express a clang step.

``bpf/portblock.c`` is compiled to ``nkframe_example_portblock/portblock.o`` inside the build
directory (or next to the sources for an editable install), so the installed package carries
its object and finds it with importlib.resources.  Needs clang and the kernel UAPI and libbpf
headers (Debian: clang, linux-libc-dev, libbpf-dev).
"""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PACKAGE = "nkframe_example_portblock"
SOURCES = ["portblock"]


def compile_bpf(src: Path, obj: Path) -> None:
    clang = os.environ.get("CLANG", "clang")
    # <asm/types.h>, which the UAPI headers include, lives in the multiarch directory.
    multiarch = [f"-I{d}" for d in glob.glob("/usr/include/*-linux-gnu*") if os.path.isdir(f"{d}/asm")]
    obj.parent.mkdir(parents=True, exist_ok=True)
    # -g: libbpf needs the BTF it produces to understand the maps.
    subprocess.run([clang, "-O2", "-g", "-Wall", "-target", "bpf", *multiarch, "-c", str(src), "-o", str(obj)], check=True)


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        super().run()
        out = HERE / PACKAGE if getattr(self, "editable_mode", False) else Path(self.build_lib) / PACKAGE
        for name in SOURCES:
            compile_bpf(HERE / "bpf" / f"{name}.c", out / f"{name}.o")


setup(cmdclass={"build_py": BuildPyWithBpf})
