"""The hook API's Python modules, generated from ``contrib/kubevirt/proto/*.proto`` by
grpcio-tools when first needed (nothing generated is committed).

The output goes to ``$NKFRAME_KUBEVIRT_PROTO_CACHE`` or ``~/.cache/nkframe/kubevirt-protos``, in a
directory named by a hash of the .proto files and the grpcio-tools version, so a changed file or
tool makes a fresh one.  The sidecar image generates them at build time
(``python -m nkframe_kubevirt.protos``) and points the variable at the result.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PROTO_DIR = Path(os.environ.get("NKFRAME_KUBEVIRT_PROTO_DIR", PROTO_DIR))
#: The .proto files, and the module stems protoc makes of them.
FILES = ("hooks_info", "hooks_v1alpha1", "hooks_v1alpha2", "hooks_v1alpha3")


def cache_root() -> Path:
    env = os.environ.get("NKFRAME_KUBEVIRT_PROTO_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nkframe" / "kubevirt-protos"


def _digest() -> str:
    import grpc_tools

    h = hashlib.sha256()
    h.update(getattr(grpc_tools, "__version__", "").encode())
    try:
        from importlib.metadata import version

        h.update(version("grpcio-tools").encode())
    except Exception:  # pragma: no cover - metadata missing
        pass
    for stem in FILES:
        h.update(stem.encode() + b"\0" + (PROTO_DIR / f"{stem}.proto").read_bytes())
    return h.hexdigest()[:16]


def generate(out: Path | None = None) -> Path:
    """Generate (or find) the modules; return their directory."""
    from grpc_tools import protoc

    out = Path(out) if out is not None else cache_root() / _digest()
    if all((out / f"{s}_pb2.py").is_file() and (out / f"{s}_pb2_grpc.py").is_file() for s in FILES):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=out.parent))
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
            *(str(PROTO_DIR / f"{s}.proto") for s in FILES)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {PROTO_DIR}: {' '.join(args)}")
    try:
        os.replace(tmp, out)
    except OSError:  # another process made it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


_loaded: SimpleNamespace | None = None


def load() -> SimpleNamespace:
    """The generated modules: ``info``, ``info_grpc``, ``v1alpha1``, ``v1alpha1_grpc``, ..."""
    global _loaded
    if _loaded is None:
        d = str(generate())
        if d not in sys.path:
            sys.path.insert(0, d)
        mods = {}
        for stem in FILES:
            short = stem.removeprefix("hooks_")
            mods[short] = importlib.import_module(f"{stem}_pb2")
            mods[f"{short}_grpc"] = importlib.import_module(f"{stem}_pb2_grpc")
        _loaded = SimpleNamespace(**mods)
    return _loaded


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(generate(target))
