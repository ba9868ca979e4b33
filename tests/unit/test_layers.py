"""The package's structure, checked against its imports (issue 12).

* every module of ``nkframe`` is in exactly one layer of docs/architecture.md's table, and
  imports nothing from a layer above its own;
* no module imports a private name of another module (``from x import _y``, ``x._y`` where
  ``x`` is an imported module), in ``nkframe/`` and ``plugins/``;
* every uAPI number is defined once, in ``nkframe/uapi.py``;
* nothing in ``nkframe`` imports a plugin;
* nothing in ``nkframe`` imports the checkout's tooling (``tools/``: the VM runner, the lease
  source, the kernel-object census) except ``demo --vm``'s guarded loader in ``nkframe/cli.py``.

Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()) + \
    sorted(p.name for p in (ROOT / "plugins").glob("*/*") if (p / "__init__.py").exists())


def _modules(top: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(top.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts = list(p.relative_to(top.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = p
    return out


def _imports(mod: str, path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the file."""
    out = []
    is_pkg = path.name == "__init__.py"
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name, None) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[: len(pkg) - (n.level - 1)]
                base = ".".join(pkg + ([n.module] if n.module else []))
            out += [(n.lineno, base, a.name) for a in n.names]
    return out


def _layers() -> list[set[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "`" in line and "modules (of" not in line]
    assert rows, "docs/architecture.md has no layer table"
    return [set(re.findall(r"`([\w.]+)`", row.split("|")[2])) for row in rows]


def _unit(mod: str) -> str:
    """nkframe.engine.core -> engine; nkframe -> __init__."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


NKFRAME = _modules(ROOT / "nkframe")
ALL = {**NKFRAME, **_modules(ROOT / "plugins")}


def test_every_module_is_in_one_layer():
    layers = _layers()
    seen: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for u in layer:
            assert u not in seen, f"{u} is in two layers of docs/architecture.md"
            seen[u] = i
    missing = sorted({_unit(m) for m in NKFRAME} - set(seen))
    assert not missing, f"modules in no layer of docs/architecture.md: {missing}"
    stale = sorted(set(seen) - {_unit(m) for m in NKFRAME})
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_no_import_goes_up_a_layer():
    rank = {u: i for i, layer in enumerate(_layers()) for u in layer}
    bad = []
    for mod, path in NKFRAME.items():
        me = _unit(mod)
        for line, target, name in _imports(mod, path):
            for t in (target, f"{target}.{name}" if name else None):
                if t and t.split(".")[0] == "nkframe" and t != "nkframe":
                    u = _unit(t)
                    if u in rank and rank[u] < rank[me]:
                        bad.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {t} from a layer above")
    assert not bad, "\n".join(bad)


def test_the_core_imports_no_plugin():
    bad = [f"{p.relative_to(ROOT)}:{line}: imports {t}" for mod, p in NKFRAME.items()
           for line, t, _ in _imports(mod, p) if t.split(".")[0].startswith("nkframe_")]
    assert not bad, "\n".join(bad)


#: The one place the package may import the checkout's tools/: a function that runs only for
#: ``nkframe demo --vm`` and refuses in one line when there is no checkout (test_wheel.py).
TOOLS_LOADER = ("nkframe.cli", "_checkout_vm_runner")


def _tools_imports(path: Path) -> list[tuple[int, str | None]]:
    """(line, enclosing function or None) of every import of ``tools`` in the file, import
    statements and ``importlib.import_module("tools...")`` / ``__import__`` calls alike."""
    out = []

    def is_tools(name: str) -> bool:
        return name == "tools" or name.startswith("tools.")

    def walk(node: ast.AST, func: str | None) -> None:
        for n in ast.iter_child_nodes(node):
            f = n.name if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(n, ast.Import) and any(is_tools(a.name) for a in n.names):
                out.append((n.lineno, func))
            elif isinstance(n, ast.ImportFrom) and not n.level and is_tools(n.module or ""):
                out.append((n.lineno, func))
            elif (isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant)
                  and isinstance(n.args[0].value, str) and is_tools(n.args[0].value)
                  and getattr(n.func, "attr", getattr(n.func, "id", "")) in ("import_module", "__import__")):
                out.append((n.lineno, func))
            walk(n, f)

    walk(ast.parse(path.read_text(), str(path)), None)
    return out


def test_the_package_does_not_import_the_tools():
    bad = [f"{path.relative_to(ROOT)}:{line}: imports tools" + (f" in {func}()" if func else " at import time")
           for mod, path in NKFRAME.items() for line, func in _tools_imports(path)
           if (mod, func) != TOOLS_LOADER]
    assert not bad, "the package imports the checkout's tools/ outside " + ".".join(TOOLS_LOADER) + ":\n" + "\n".join(bad)
    mod, func = TOOLS_LOADER
    assert any(f == func for _, f in _tools_imports(NKFRAME[mod])), f"{mod}.{func} no longer loads tools: update TOOLS_LOADER"


@pytest.mark.parametrize("snippet, caught", [
    ("from tools import vm\n", True),
    ("import tools.kobjects\n", True),
    ("def f():\n    from tools.vm import run\n", True),
    ("import importlib\ndef f():\n    return importlib.import_module('tools.vm')\n", True),
    ("def _checkout_vm_runner():\n    from tools import vm\n", False),
    ("from nkframe import tools_of_mine\n", False),
])
def test_the_tools_check_can_fail(tmp_path, monkeypatch, snippet, caught):
    """A planted import of tools is found unless it is inside the allowed loader (planted here as
    nkframe.cli, i.e. TOOLS_LOADER's module)."""
    p = tmp_path / "planted.py"
    p.write_text(snippet)
    monkeypatch.setitem(NKFRAME, "nkframe.cli", p)
    monkeypatch.setattr(Path, "relative_to", lambda self, other: self)
    if caught:
        with pytest.raises(AssertionError, match="planted"):
            test_the_package_does_not_import_the_tools()
    elif "_checkout_vm_runner" in snippet:
        test_the_package_does_not_import_the_tools()
    else:
        with pytest.raises(AssertionError, match="no longer loads tools"):
            test_the_package_does_not_import_the_tools()


def test_no_module_uses_another_modules_private_names():
    bad = []
    for mod, path in ALL.items():
        tree = ast.parse(path.read_text(), str(path))
        module_aliases = set()
        for line, target, name in _imports(mod, path):
            if name is None:
                continue
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: from {target} import {name}")
            if f"{target}.{name}" in ALL:
                module_aliases.add(name)
        for n in ast.walk(tree):
            if isinstance(n, ast.alias) and n.asname and n.name in ALL:
                module_aliases.add(n.asname)
            if isinstance(n, ast.ImportFrom):
                for a in n.names:
                    if a.asname and f"{n.module}.{a.name}" in ALL:
                        module_aliases.add(a.asname)
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in module_aliases
                    and n.attr.startswith("_") and not n.attr.startswith("__")):
                bad.append(f"{path.relative_to(ROOT)}:{n.lineno}: {n.value.id}.{n.attr}")
    assert not bad, "private names of other modules:\n" + "\n".join(sorted(set(bad)))


def test_uapi_numbers_are_defined_once():
    ns: dict = {}
    exec((ROOT / "nkframe" / "uapi.py").read_text(), ns)
    uapi = {k for k in ns if k.isupper()}
    bad = []
    for mod, path in ALL.items():
        if mod == "nkframe.uapi":
            continue
        for n in ast.parse(path.read_text()).body:
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    names = [t] if isinstance(t, ast.Name) else getattr(t, "elts", [])
                    bad += [f"{path.relative_to(ROOT)}:{n.lineno}: {x.id}" for x in names
                            if isinstance(x, ast.Name) and x.id in uapi]
    assert not bad, "uAPI numbers defined again outside nkframe/uapi.py:\n" + "\n".join(bad)


@pytest.mark.parametrize("snippet, caught", [
    ("from nkframe.engine import _x\n", True),
    ("from nkframe import pins\npins._by_hook\n", True),
    ("from nkframe import pins\npins.by_hook\n", False),
    ("class A:\n    def f(self):\n        return self._x\n", False),
])
def test_the_private_name_check_can_fail(tmp_path, monkeypatch, snippet, caught):
    """The checker itself: a planted violation is found, a clean module is not."""
    p = tmp_path / "planted.py"
    p.write_text(snippet)
    monkeypatch.setitem(ALL, "nkframe.planted", p)
    monkeypatch.setattr(Path, "relative_to", lambda self, other: self)
    if caught:
        with pytest.raises(AssertionError, match="planted"):
            test_no_module_uses_another_modules_private_names()
    else:
        test_no_module_uses_another_modules_private_names()


def test_test_module_names_are_unique():
    """pytest imports test modules by basename (no packages under tests/): two files of the same
    name in different tiers break collection of the whole run."""
    seen: dict[str, Path] = {}
    dup = []
    for p in sorted((ROOT / "tests").rglob("test_*.py")):
        if p.name in seen:
            dup.append(f"{seen[p.name].relative_to(ROOT)} and {p.relative_to(ROOT)}")
        seen[p.name] = p
    assert not dup, "test modules sharing a name: " + "; ".join(dup)


#: Where nkframe/netlink may import pyroute2: the builders of pyroute2's encoding of our
#: messages, which tests/unit/test_netlink_codec.py holds the codec's bytes to (the oracle), and
#: RawLink's cross-check parse.  Everything nkframe sends or reads goes through netlink/codec.py.
PYROUTE2_ORACLES = {
    ("nkframe.netlink.links", "new_link_message"),
    ("nkframe.netlink.links", "to_pyroute2"),
    ("nkframe.netlink.netkit", "_nla_classes"),
    ("nkframe.netlink.netkit", "register_link_kind"),
    ("nkframe.netlink.netkit", "encode_set_policy"),
}


def _pyroute2_imports(path: Path) -> list[tuple[int, str | None]]:
    """(line, enclosing function or None) of every import of pyroute2 in the file."""
    out = []

    def walk(node: ast.AST, func: str | None) -> None:
        for n in ast.iter_child_nodes(node):
            f = n.name if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                     else [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
            if any(x == "pyroute2" or x.startswith("pyroute2.") for x in names):
                out.append((n.lineno, func))
            walk(n, f)

    walk(ast.parse(path.read_text(), str(path)), None)
    return out


def test_netlink_uses_pyroute2_only_as_the_oracle():
    bad = [f"{path.relative_to(ROOT)}:{line}: imports pyroute2" + (f" in {func}()" if func else " at import time")
           for mod, path in NKFRAME.items() if mod.startswith("nkframe.netlink")
           for line, func in _pyroute2_imports(path) if (mod, func) not in PYROUTE2_ORACLES]
    assert not bad, "pyroute2 outside the oracle builders (use nkframe/netlink/codec.py):\n" + "\n".join(bad)
    used = {(mod, func) for mod, path in NKFRAME.items() for _l, func in _pyroute2_imports(path)}
    assert PYROUTE2_ORACLES <= used, f"stale PYROUTE2_ORACLES entries: {PYROUTE2_ORACLES - used}"
