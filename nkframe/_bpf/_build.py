"""cffi builder for ``nkframe._bpf._lib`` (out-of-line API mode).

Declarations live as data in ``decl/*.h``, one file per C header.  API mode compiles a real C
extension against the installed headers, so a struct we misdeclare is a build error, not a
crash.  What the installed libraries offer is probed, not assumed:

* libbpf >= 1.1 is required (Debian bookworm).  Functions newer than 1.1 are listed in
  ``OPTIONAL``; each is compiled in only if a probe program using it builds and links, and
  ``lib.NK_HAVE_<name>`` tells the Python side which ones made it.
* libxdp (AF_XDP sockets) is optional: without it (or with NKFRAME_NO_LIBXDP=1 in the
  environment) ``lib.NK_HAVE_LIBXDP`` is 0 and :mod:`nkframe.xsk` raises NotSupported.  With
  it, ``nk_xsk_impl.h`` (C, declared in ``decl/nk_xsk.h``) adds the batch ring operations and
  the echo/forward loop :mod:`nkframe.xsk` runs on.

Run directly (``python nkframe/_bpf/_build.py``) to build in place for development.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
DECL = HERE / "decl"

# Functions newer than the libbpf 1.1 baseline: name -> cdef line.  None are needed by the
# core (links and queries go through our own bpf(2) attr layouts, see decl/nk_attr.h), but they
# are welcome when present.
OPTIONAL = {
    "libbpf_version_string": "const char *libbpf_version_string(void);",
    "bpf_map_lookup_batch": (
        "int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, "
        "void *values, __u32 *count, const struct bpf_map_batch_opts *opts);"
    ),
}

INCLUDES = """
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
"""

# C helpers.  nk_bpf returns -errno like libbpf so one translator handles both.  libbpf's print
# callback takes a va_list, which Python cannot consume: format it here and hand Python a string.
HELPERS = r"""
static long nk_bpf(int cmd, void *attr, unsigned int size)
{
    long ret = syscall(__NR_bpf, cmd, attr, size);
    return ret < 0 ? -errno : ret;
}

static void nk_log_cb(int level, const char *msg);

static int nk_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char small[512];
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    if (n < 0) {
        va_end(ap2);
        return 0;
    }
    if ((size_t)n < sizeof(small)) {
        nk_log_cb((int)level, small);
    } else {
        char *big = malloc((size_t)n + 1);
        if (big) {
            vsnprintf(big, (size_t)n + 1, fmt, ap2);
            nk_log_cb((int)level, big);
            free(big);
        }
    }
    va_end(ap2);
    return 0;
}

#if NK_HAVE_LIBXDP
static int nk_xdp_print(enum libxdp_print_level level, const char *fmt, va_list ap)
{
    return nk_print((enum libbpf_print_level)level, fmt, ap);
}
#endif

static void nk_install_print(void)
{
    libbpf_set_print(nk_print);
#if NK_HAVE_LIBXDP
    libxdp_set_print(nk_xdp_print);
#endif
}

/* AF_XDP doorbells: an empty sendto starts TX (always needed in copy mode), an empty recvfrom
 * wakes RX processing when the fill ring asks for it (XDP_USE_NEED_WAKEUP). */
static long nk_xsk_kick_tx(int fd)
{
    long ret = sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
    return ret < 0 ? -errno : ret;
}

static long nk_xsk_wake_rx(int fd)
{
    long ret = recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    return ret < 0 ? -errno : ret;
}
"""

HELPERS_CDEF = """
long nk_bpf(int cmd, void *attr, unsigned int size);
extern "Python" void nk_log_cb(int level, const char *msg);
void nk_install_print(void);
long nk_xsk_kick_tx(int fd);
long nk_xsk_wake_rx(int fd);
static const int NK_HAVE_LIBXDP;
static const char *const NK_LIBXDP_BUILD_VERSION;
"""


def _cc() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


def _probe(source: str, libs: list[str]) -> bool:
    """Does `source` compile and link against `libs` with the system compiler?"""
    with tempfile.TemporaryDirectory(prefix="nkframe-probe-") as tmp:
        src = Path(tmp, "probe.c")
        src.write_text(source)
        cmd = [_cc(), str(src), "-o", str(Path(tmp, "probe")), *(f"-l{lib}" for lib in libs)]
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0


def _libbpf_check() -> None:
    ok = _probe(
        "#include <bpf/libbpf.h>\n"
        "#if LIBBPF_MAJOR_VERSION < 1 || (LIBBPF_MAJOR_VERSION == 1 && LIBBPF_MINOR_VERSION < 1)\n"
        "#error libbpf too old\n#endif\n"
        "int main(void) { return (int)libbpf_major_version(); }\n",
        ["bpf"],
    )
    if not ok:
        raise SystemExit(
            "nkframe needs libbpf >= 1.1 headers and library (Debian: apt-get install libbpf-dev)"
        )


def _optional_symbols() -> dict[str, str]:
    found = {}
    for name, decl in OPTIONAL.items():
        src = f"{INCLUDES}\nint main(void) {{ return (int)(long)(void *)&{name}; }}\n"
        if _probe(src, ["bpf"]):
            found[name] = decl
    return found


def _libxdp_version() -> str | None:
    if os.environ.get("NKFRAME_NO_LIBXDP"):  # build as if libxdp were absent
        return None
    if not _probe(
        "#include <xdp/xsk.h>\nint main(void) { return xsk_socket__fd((void *)0); }\n",
        ["xdp", "bpf"],
    ):
        return None
    try:
        res = subprocess.run(
            ["pkg-config", "--modversion", "libxdp"], capture_output=True, text=True, timeout=30
        )
        return res.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _decl(name: str) -> str:
    return (DECL / name).read_text()


def _impl_structs(path: Path) -> str:
    """The ``struct nk_…`` definitions of a C file of ours, comments removed, for cdef.

    The batch helpers' structs are both compiled (in the C file) and declared to cffi; taking
    the declaration from the definition keeps the two from drifting apart.
    """
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    blocks = re.findall(r"^struct nk_\w+ \{.*?^\};", text, flags=re.S | re.M)
    if not blocks:
        raise RuntimeError(f"no struct nk_* definitions found in {path}")
    return "\n\n".join(blocks)


def make_ffibuilder() -> FFI:
    _libbpf_check()
    optional = _optional_symbols()
    xdp_version = _libxdp_version()

    builder = FFI()
    builder.cdef(_decl("libbpf.h"))
    builder.cdef(_decl("libc.h"))
    builder.cdef(_decl("nk_attr.h"))
    builder.cdef(HELPERS_CDEF)
    for decl in optional.values():
        builder.cdef(decl)
    builder.cdef(
        "\n".join(f"static const int NK_HAVE_{name};" for name in OPTIONAL)
    )
    if xdp_version is not None:
        builder.cdef(_decl("libxdp.h"))
        builder.cdef(_impl_structs(HERE / "nk_xsk_impl.h"))
        builder.cdef(_decl("nk_xsk.h"))

    defines = "".join(
        f"#define NK_HAVE_{name} {1 if name in optional else 0}\n" for name in OPTIONAL
    )
    source = INCLUDES + defines
    libraries = ["bpf"]
    if xdp_version is not None:
        source += "#include <xdp/libxdp.h>\n#include <xdp/xsk.h>\n#define NK_HAVE_LIBXDP 1\n"
        source += f'#define NK_LIBXDP_BUILD_VERSION "{xdp_version}"\n'
        libraries.insert(0, "xdp")
    else:
        source += '#define NK_HAVE_LIBXDP 0\n#define NK_LIBXDP_BUILD_VERSION ""\n'
    source += _decl("nk_attr.h") + HELPERS
    if xdp_version is not None:
        # The batch ring operations and the echo/forward loop behind nkframe.xsk.
        source += (HERE / "nk_xsk_impl.h").read_text()

    builder.set_source("nkframe._bpf._lib", source, libraries=libraries)
    return builder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    # In-place development build: nkframe/_bpf/_lib*.so next to this file.  Compiled in a
    # scratch directory so setuptools does not read the project's own configuration.
    with tempfile.TemporaryDirectory(prefix="nkframe-cffi-") as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=True))
        # Only one build may sit here: Python prefers the cpython-311 suffix over abi3, so a
        # stale copy of either would shadow the other.
        for old in HERE.glob("_lib.*.so"):
            old.unlink()
        shutil.copy2(built, HERE / built.name)
        print(f"built {HERE / built.name}")
