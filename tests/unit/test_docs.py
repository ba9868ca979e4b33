"""The docs keep up with the code: every CLI command and option is in docs/cli.md, every hook in
docs/plugins.md, the example files shown in the guide are the example's files, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from nkframe import cli as cli_mod
from nkframe import hookspecs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
CLI_MD = DOCS / "cli.md"
PLUGINS_MD = DOCS / "plugins.md"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        path = prefix + (name,)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


COMMANDS = list(_commands(cli_mod.cli))


def _section(text: str, heading: str) -> str:
    """The text from a '### heading' line up to the next heading of level <= 3."""
    m = re.search(rf"^###\s+{re.escape(heading)}\s*$", text, re.M)
    if not m:
        return ""
    rest = text[m.end():]
    nxt = re.search(r"^#{1,3}\s", rest, re.M)
    return rest[: nxt.start()] if nxt else rest


def test_there_are_commands():
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_a_section_in_cli_md(path):
    text = CLI_MD.read_text()
    assert _section(text, f"nkframe {path}").strip(), f"docs/cli.md has no '### nkframe {path}' section"


@pytest.mark.parametrize("path,cmd", [(" ".join(p), c) for p, c in COMMANDS if not isinstance(c, click.Group)])
def test_every_option_of_a_command_is_documented_in_its_section(path, cmd):
    section = _section(CLI_MD.read_text(), f"nkframe {path}")
    if "The same command as" in section:  # an alias documents itself by pointing at the original
        return
    missing = [
        opt
        for param in cmd.params
        if isinstance(param, click.Option)
        for opt in param.opts
        if opt.startswith("--") and f"`{opt}" not in section and f"{opt} " not in section and f"{opt}]" not in section
    ]
    assert not missing, f"'nkframe {path}' options missing from docs/cli.md: {missing}"


def test_global_options_and_exit_codes_are_documented():
    text = CLI_MD.read_text()
    table = text.split("## Global options", 1)[1].split("\n## ", 1)[0]
    for param in cli_mod.cli.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in table, f"global option {opt} missing from docs/cli.md"
    codes = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in (0, cli_mod.EXIT_FAILED, cli_mod.EXIT_INPUT, cli_mod.EXIT_UNSUPPORTED, cli_mod.EXIT_KERNEL, cli_mod.EXIT_NOTFOUND):
        assert re.search(rf"^\|\s*{code}\s*\|", codes, re.M), f"exit code {code} is not in docs/cli.md's table"


HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("nkframe_") and callable(getattr(hookspecs, n)))


def test_there_are_hooks():
    assert len(HOOKS) >= 10


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_plugins_md(hook):
    section = _section(PLUGINS_MD.read_text(), hook)
    assert section.strip(), f"docs/plugins.md has no '### {hook}' section"
    # The section gives the signature the spec has: every argument is named.
    import inspect

    for arg in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert arg in section, f"docs/plugins.md '### {hook}' does not mention its argument {arg!r}"


_INCLUDE = re.compile(r"^<!-- example: (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)


def test_example_files_in_the_guide_are_the_real_files():
    text = PLUGINS_MD.read_text()
    blocks = list(_INCLUDE.finditer(text))
    assert blocks, "docs/plugins.md shows no example file"
    for m in blocks:
        path = EXAMPLES / m["path"]
        assert path.is_file(), f"docs/plugins.md shows {m['path']}, which is not under docs/examples/"
        assert m["body"] == path.read_text(), (
            f"docs/plugins.md's copy of {m['path']} differs from the file; paste the file again"
        )


def test_the_guide_shows_the_whole_example_plugin():
    shown = {m["path"] for m in _INCLUDE.finditer(PLUGINS_MD.read_text())}
    example = EXAMPLES / "nkframe-example-portblock"
    files = {
        str(p.relative_to(EXAMPLES))
        for p in example.rglob("*")
        if p.is_file() and p.suffix in (".py", ".toml", ".c", ".h") and "__pycache__" not in p.parts
    }
    assert files - shown == set(), f"example files the guide does not show: {sorted(files - shown)}"


def test_example_plugin_only_uses_hooks_that_exist():
    src = (EXAMPLES / "nkframe-example-portblock" / "nkframe_example_portblock" / "__init__.py").read_text()
    used = set(re.findall(r"@hookimpl[^\n]*\ndef (\w+)", src))
    assert used and used <= set(HOOKS), used - set(HOOKS)


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_resolve(doc):
    path = DOCS / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        assert (path.parent / target).exists(), f"{doc} links to {target}, which does not exist"
