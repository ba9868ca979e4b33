"""Random input at the agent socket and the CLI (hypothesis, bounded time): every request gets
exactly one JSON answer, every invocation ends with a documented exit code, no traceback is
printed or logged, and nothing is left behind (issue 17)."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nkframe.agent import protocol
from nkframe.cli import cli
from nkframe.engine import Engine
from agent_support import served

pytestmark = pytest.mark.root

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
spec_keys = ["id", "netns", "addresses", "mode", "mtu", "ifname", "host_ifname", "mac", "options", "attach", "device"]
specs = st.dictionaries(st.sampled_from(spec_keys), json_values | st.text(max_size=30), max_size=6)
methods = st.sampled_from(sorted(protocol.METHODS)) | st.text(max_size=12) | json_values
requests = st.fixed_dictionaries(
    {"method": methods},
    optional={"id": json_values, "v": st.integers(0, 3) | json_values,
              "params": st.fixed_dictionaries({}, optional={"spec": specs | json_values, "id": json_values,
                                                            "ids": json_values, "attach": json_values}) | json_values,
              "target": json_values},
)


@pytest.fixture
def agent(node, bpffs_root, tmp_path):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    eng = Engine(node.netns, bpffs_root, plugin_objects=[], autoload=False)
    with served(eng, str(d / "agent.sock")) as ag:
        yield ag


def test_random_requests_each_get_one_answer(agent, caplog):
    caplog.set_level(logging.INFO, logger="nkframe.agent")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(agent.socket_path)
        f = s.makefile("rb")

        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(req=requests | json_values)
        def check(req):
            s.sendall(json.dumps(req).encode() + b"\n")
            line = f.readline()
            assert line, f"the agent closed the connection on {req!r}"
            a = json.loads(line)
            assert isinstance(a.get("ok"), bool), a
            if not a["ok"]:
                assert isinstance(a["error"]["code"], int) and a["error"]["message"], a

        check()
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    # Random specs never name an existing pod netns, so nothing was built.
    assert agent.engine.layout.endpoint_ids() == []


words = st.sampled_from(["endpoint", "add", "del", "ls", "status", "attached", "gc", "policy", "apply", "remove",
                         "--json", "--pod-netns", "--address", "--mtu", "--mode", "--ifname", "--option", "-f",
                         "--check", "l2", "l3", "10.0.0.1/32", "::1/128", "abc", "-1", "99999", "/", "-", "x" * 20,
                         "", "--attach", "tc", "nosuch", "--help"])
argvs = st.lists(words | st.text(max_size=10), max_size=7)


def test_random_cli_argv_ends_with_a_documented_exit_code(node, bpffs_root):
    base = ["--netns", node.netns, "--bpffs-root", bpffs_root, "--no-agent"]

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(argv=argvs)
    def check(argv):
        r = CliRunner().invoke(cli, base + argv, input="")
        assert r.exit_code in (0, 1, 2, 3, 4, 5), (argv, r.exit_code, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (argv, repr(r.exception))
        assert "Traceback" not in r.output, (argv, r.output)

    check()
    leftovers = [e for e in os.listdir(os.path.join(bpffs_root, "endpoints"))] if os.path.isdir(os.path.join(bpffs_root, "endpoints")) else []
    assert leftovers == []
