"""The wheel is the product (issue 18): built from this checkout, installed into a fresh venv
outside it, it runs the probe, the demo, an agent serving its own CNI shim, and a third-party
plugin installed from its own directory.  It ships no test objects.

One wheel and one venv for the module (building takes a minute); every command runs from a
directory outside the checkout, so nothing can come from the source tree by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from nkframe.netlink import links

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "nkframe-example-portblock"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    # A copy without build products: what a fresh clone builds (the checkout's in-place objects,
    # test ones included, must not leak into the wheel).
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "results", "__pycache__", "*.o", "*.so", "_lib.c", "nkframe-cni-shim"))
    dist = work / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    wheels = list(dist.glob("nkframe-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheels[0])],
                       capture_output=True, text=True, timeout=900, cwd=work)
    assert r.returncode == 0, f"pip install of the wheel failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    try:
        yield wheels[0], venv, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(venv: Path, cwd: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NKFRAME_", "PYTHON"))}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


def test_the_wheel_holds_the_runtime_and_nothing_of_the_tests(wheel_venv):
    whl, _, _ = wheel_venv
    names = set(zipfile.ZipFile(whl).namelist())
    for must in ("nkframe/_objs/l3.o", "nkframe/_objs/l2.o", "nkframe/_objs/policy.o", "nkframe/_objs/probe.o",
                 "nkframe/_bin/nkframe-cni-shim", "nkframe_l3/__init__.py", "nkframe_l2/__init__.py",
                 "nkframe_fwd/datapath.py", "nkframe_policy/plugin.py"):
        assert must in names, f"{must} missing from {whl.name}"
    assert any(n.startswith("nkframe/_bpf/_lib") and n.endswith(".so") for n in names), "the cffi module"
    leaked = sorted(n for n in names if Path(n).name.startswith("test_") or n.startswith("tests/"))
    assert not leaked, f"test files in the wheel: {leaked}"
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(whl).read(ep).decode()
    assert "[nkframe.plugins]" in text and "policy = nkframe_policy.plugin" in text


def test_probe_and_demo_run_from_the_installed_wheel(wheel_venv):
    _, venv, work = wheel_venv
    r = _run(venv, work, "python", "-c", "import nkframe, sys; print(nkframe.__file__)")
    assert r.returncode == 0 and str(venv) in r.stdout and str(REPO) not in r.stdout, r.stdout + r.stderr
    r = _run(venv, work, "nkframe", "probe", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["features"]["bpffs"]["supported"] in (True, False)
    r = _run(venv, work, "nkframe", "demo", "--json", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["passed"] is True


def test_the_wheel_ships_no_test_tooling(wheel_venv):
    """The VM runner, the lease source build and the kernel-object census are the checkout's
    tools/ (issue 12): none of them, nor a top-level 'tools', is in the wheel or importable from it."""
    whl, venv, work = wheel_venv
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = sorted(n for n in names if n.startswith("tools/")
                     or n in ("nkframe/vm.py", "nkframe/leasesource.py", "nkframe/agent/kobjects.py"))
    assert not shipped, f"tooling in the wheel: {shipped}"
    r = _run(venv, work, "python", "-c", "import importlib.util as u; print([m for m in ('tools', 'nkframe.vm', "
             "'nkframe.leasesource', 'nkframe.agent.kobjects') if u.find_spec(m)])")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_demo_vm_from_the_wheel_says_it_needs_a_checkout(wheel_venv):
    """The VM runner is the checkout's tools/vm.py: from the installed wheel ``demo --vm`` says
    so in one ``nkframe: error:`` line (exit 3, not a traceback), before any kernel is downloaded."""
    _, venv, work = wheel_venv
    r = _run(venv, work, "nkframe", "demo", "--vm", env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 3, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nkframe: error: ") and "checkout of the nkframe repository" in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_an_agent_from_the_wheel_serves_its_own_cni_shim(wheel_venv, node, bpffs_root, tmp_path):
    _, venv, work = wheel_venv
    shim = next(venv.glob("lib/python3*/site-packages/nkframe/_bin/nkframe-cni-shim"))
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen([str(venv / "bin" / "nkframe"), "--netns", node.netns, "--bpffs-root", bpffs_root,
                              "agent", "run", "--socket", sock, "--plugin", "l3", "--plugin", "policy"],
                             cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert agent.poll() is None, agent.stdout.read()
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.1)
        pod = node.pod()
        cni_bin = tmp_path / "cni-bin"
        cni_bin.mkdir()
        (cni_bin / "host-local").symlink_to("/usr/lib/cni/host-local")
        (cni_bin / "nkframe").symlink_to(shim)
        conf = json.dumps({"cniVersion": "1.0.0", "name": "wheelnet", "type": "nkframe", "agentSocket": sock,
                           "ipam": {"type": "host-local", "subnet": "10.76.0.0/24", "dataDir": str(tmp_path / "ipam")}})
        env = {"CNI_CONTAINERID": "wheel-1", "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0",
               "CNI_PATH": str(cni_bin), "PATH": "/usr/bin:/bin"}
        r = subprocess.run([str(cni_bin / "nkframe")], input=conf, text=True, capture_output=True,
                           env={**env, "CNI_COMMAND": "ADD"}, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout)
        assert result["ips"][0]["address"].startswith("10.76.0.")
        assert links.link_exists("eth0", netns=pod)
        r = subprocess.run([str(cni_bin / "nkframe")], input=conf, text=True, capture_output=True,
                           env={**env, "CNI_COMMAND": "DEL"}, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not links.link_exists("eth0", netns=pod)
    finally:
        agent.terminate()
        agent.wait(30)


def test_a_third_party_plugin_installs_beside_the_wheel(wheel_venv, tmp_path):
    """The plugin author's guide's example, pip-installed from its own directory into the
    wheel's venv, is found through the entry point group like the first-party plugins."""
    _, venv, work = wheel_venv
    src = tmp_path / "example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.o", "__pycache__"))
    r = _run(venv, work, "pip", "install", "--quiet", str(src), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = _run(venv, work, "python", "-c",
             "from nkframe import plugins; print(sorted(plugins.available()))")
    assert r.returncode == 0, r.stderr
    assert "portblock" in r.stdout and "policy" in r.stdout, r.stdout
