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
