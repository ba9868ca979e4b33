"""CLI input handling that needs no root: clear errors and documented exit codes."""

import pytest
from click.testing import CliRunner

from nkframe.cli import cli


def test_bad_interface_name_is_exit_2_with_a_clear_message():
    r = CliRunner().invoke(cli, ["endpoint", "add", "pod-a", "--pod-netns", "x", "--ifname", "a-very-long-ifname"])
    assert r.exit_code == 2
    assert "at most 15" in r.output


def test_bad_cidr_is_exit_2():
    r = CliRunner().invoke(cli, ["endpoint", "add", "pod-a", "--pod-netns", "x", "--address", "10.0.0.999/32"])
    assert r.exit_code == 2
    assert "not an IP address or CIDR" in r.output


def test_unknown_attach_mode_is_a_usage_error():
    r = CliRunner().invoke(cli, ["--attach", "xdp", "endpoint", "ls"])
    assert r.exit_code == 2
    assert "xdp" in r.output


@pytest.mark.parametrize("argv,words", [
    (["endpoint", "add", "x"], "Missing option '--pod-netns'"),
    (["endpoint", "add", "x", "--pod-netns", "p", "--mtu", "abc"], "'abc' is not a valid integer"),
    (["endpoint", "add", "x", "--pod-netns", "p", "--mode", "l4"], "'l4' is not one of"),
    (["--bogus"], "No such option '--bogus'"),
    (["endpoint", "ls", "--nope"], "No such option '--nope'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["policy", "apply", "x", "-f", "/"], "is a directory"),
    (["--attach", "fast", "endpoint", "ls"], "'fast' is not one of"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, words):
    """docs/cli.md: bad input is one `nkframe: error:` line and exit code 2 (issue 17: click's
    three-line Usage/Try/Error block)."""
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nkframe: error: "), r.stderr
    assert words in lines[0]
    assert "Usage:" not in r.output


# -- plugin commands (nkframe_cli_commands, issue 12 item 4)

import click  # noqa: E402

from nkframe import cli as cli_mod  # noqa: E402
from nkframe import hookimpl, plugins  # noqa: E402


class _CommandPlugin:
    @hookimpl
    def nkframe_cli_commands(self):
        @click.command("hello")
        @click.argument("who")
        @click.pass_context
        def hello(ctx, who):
            """Say hello (a plugin's command)."""
            click.echo(f"hello {who} from {ctx.obj['bpffs_root']}")

        @click.command("probe")
        def clash():
            """Tries to take a built-in name."""
            click.echo("the plugin's probe ran")

        return [hello, clash, "not a command"]


@pytest.fixture
def with_plugin(monkeypatch):
    real = plugins.make_manager
    monkeypatch.setattr(plugins, "make_manager", lambda names=None, **kw: real(names, **{**kw, "extra": [_CommandPlugin()]}))
    monkeypatch.setattr(cli_mod, "_PLUGIN_COMMANDS", None)
    yield
    cli_mod._PLUGIN_COMMANDS = None


def test_a_plugin_adds_a_command_that_sees_the_root_options(with_plugin):
    r = CliRunner().invoke(cli, ["--bpffs-root", "/tmp/x", "hello", "world"])
    assert r.exit_code == 0, r.output
    assert "hello world from /tmp/x" in r.output
    helped = CliRunner().invoke(cli, ["--help"])
    assert "hello" in helped.output and "Say hello" in helped.output


def test_a_plugin_cannot_take_a_builtin_name_and_bad_returns_are_ignored(with_plugin):
    r = CliRunner().invoke(cli, ["probe", "--help"])
    assert "the plugin's probe ran" not in r.output
    assert "Show what this kernel supports" in r.output
    out = CliRunner().invoke(cli, ["--help"]).output
    assert "clashes with an existing one" in out and "not a named click command" in out


def test_policy_commands_come_from_the_policy_plugin(monkeypatch):
    """``nkframe policy`` is the policy plugin's (through the hook): gone when plugins are off."""
    monkeypatch.setattr(cli_mod, "_PLUGIN_COMMANDS", None)
    assert "policy" in CliRunner().invoke(cli, ["--help"]).output
    monkeypatch.setattr(cli_mod, "_PLUGIN_COMMANDS", None)
    monkeypatch.setenv("NKFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    r = CliRunner().invoke(cli, ["policy", "apply", "x", "-f", "y"])
    assert r.exit_code == 2 and "No such command 'policy'" in r.output
    monkeypatch.setattr(cli_mod, "_PLUGIN_COMMANDS", None)
