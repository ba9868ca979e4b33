"""Where the BPF objects built from ``bpf/*.c`` live.

setup.py compiles them into ``nkframe/_objs/`` (in place for an editable install, inside the wheel
otherwise).  Third-party plugins ship their own objects and pass absolute paths instead.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from nkframe.errors import NkframeError


def path(name: str) -> str:
    """Absolute path of the built object ``<name>.o``."""
    p = Path(str(files("nkframe"))) / "_objs" / f"{name}.o"
    if not p.is_file():
        raise NkframeError(
            f"BPF object {p} is missing: the package was installed without building bpf/ "
            "(run 'make setup', which needs clang)"
        )
    return str(p)
