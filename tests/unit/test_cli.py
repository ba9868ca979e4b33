"""CLI input handling that needs no root: clear errors and documented exit codes."""

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
