"""What a test needs from the machine that `make setup` installs, in one place.

A test that needs a binary, a file or a Python package that `make setup` provides calls
:func:`tool` / :func:`module` instead of skipping by hand.  Outside CI a missing piece skips the
test with the Debian (or PyPI) package to install.  Under CI (``CI=true``) it **fails**: CI runs
on a machine that `make setup` prepared, so a missing piece there is a missing install step, and
a skip would hide it (that is how a missing containernetworking-plugins once went unnoticed).
Kernel features are not requirements of this kind: a test that needs a kernel feature skips with
the probe's reason wherever the kernel lacks it.
"""

from __future__ import annotations

import importlib
import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str, package: str) -> None:
    """Skip (or, under CI, fail) because ``what`` is missing; ``package`` provides it."""
    msg = f"{what} is missing: package {package} (make setup installs it)"
    if in_ci():
        pytest.fail(f"CI=true: {msg}", pytrace=False)
    pytest.skip(msg)


def tool(name_or_path: str, package: str) -> str:
    """The path of an executable (a name looked up on PATH, or an absolute path)."""
    if os.path.isabs(name_or_path):
        if os.access(name_or_path, os.X_OK):
            return name_or_path
    else:
        found = shutil.which(name_or_path)
        if found:
            return found
    missing(name_or_path, package)
    raise AssertionError("unreachable")


def module(name: str, package: str):
    """An importable Python module (installed into the venv by make setup)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name}", package)
        raise AssertionError("unreachable")
