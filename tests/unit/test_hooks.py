"""The hook contract: documented, tested, loadable the way third parties load."""

import inspect
import pathlib

import pytest

from nkframe import hookspecs

TESTS = pathlib.Path(__file__).resolve().parents[1]


def _hooks():
    return {n: f for n, f in vars(hookspecs).items() if n.startswith("nkframe_") and callable(f)}


def test_there_are_hooks():
    assert {"nkframe_device_create", "nkframe_attach_select", "nkframe_pin_path", "nkframe_programs_collect",
            "nkframe_endpoint_configure", "nkframe_endpoint_added"} <= set(_hooks())


@pytest.mark.parametrize("name", sorted(_hooks()))
def test_hook_is_documented(name):
    fn = _hooks()[name]
    doc = inspect.getdoc(fn) or ""
    assert len(doc) > 40, f"{name} has no real docstring"
    for param in inspect.signature(fn).parameters:
        assert param in doc, f"{name}: parameter {param!r} is not described in the docstring"


@pytest.mark.parametrize("name", sorted(_hooks()))
def test_hook_has_a_test(name):
    """Some test other than this file must exercise each hook by name."""
    this = pathlib.Path(__file__).resolve()
    found = [p for p in TESTS.rglob("test_*.py") if p.resolve() != this and name in p.read_text()]
    assert found, f"no test mentions {name}"


def test_choice_hooks_are_firstresult():
    for name in ("nkframe_device_create", "nkframe_attach_select", "nkframe_pin_path"):
        opts = getattr(_hooks()[name], hookspecs.PROJECT + "_spec")
        assert opts["firstresult"], name
