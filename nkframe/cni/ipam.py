"""Delegation to the IPAM plugin a network configuration names (CNI spec, section 4).

The plugin is looked up in ``CNI_PATH`` and run with the environment and the configuration the
runtime gave us (``CNI_COMMAND`` set to the command we delegate); its stderr is ours, its stdout
is its result or its error.

One exception to "the same configuration": Debian 12 ships containernetworking-plugins 1.1.1,
whose IPAM plugins speak CNI up to 1.0.0.  When such a plugin answers a 1.1.0 configuration with
"incompatible CNI versions" (code 1), the call is repeated once with ``cniVersion`` 1.0.0: a
1.0.0 IPAM result holds nothing a 1.1.0 one would add.  STATUS and GC do not exist before 1.1.0,
so they are delegated only to IPAM plugins that list 1.1.0 in their VERSION answer.

ADD and DEL of ``host-local`` run in process, with host-local's own algorithm and files, when
:mod:`nkframe.cni.hostlocal` reads the configuration exactly as host-local does (the plugin must
still be in CNI_PATH); anything else is delegated as above.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from nkframe.cni import result
from nkframe.cni.errors import INCOMPATIBLE_VERSION, INTERNAL, INVALID_CONFIG, INVALID_ENVIRONMENT, TRY_AGAIN_LATER, CniError

TIMEOUT = 120.0  # seconds; host-local answers in milliseconds, dhcp waits for a server
FALLBACK = {"1.1.0": "1.0.0"}


def find(plugin: str, path: tuple[str, ...]) -> str:
    """The executable ``plugin`` in the first ``CNI_PATH`` directory that has it."""
    for d in path:
        exe = os.path.join(d, plugin)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    if not path:
        raise CniError(INVALID_ENVIRONMENT, "CNI_PATH is not set",
                       f"CNI_PATH must list the directories holding CNI plugins; the IPAM plugin {plugin!r} is looked up there")
    where = ":".join(path)
    raise CniError(INVALID_CONFIG, f"IPAM plugin {plugin!r} not found",
                   f"no executable {plugin!r} in CNI_PATH {where}; install it (e.g. Debian's containernetworking-plugins) or fix ipam.type")


class Ipam:
    """The IPAM plugin of one invocation.

    :param plugin: ``ipam.type``.
    :param path: the ``CNI_PATH`` directories.
    :param environ: the environment we were run with (passed on).
    :param conf: the decoded configuration.
    :param data: the configuration as we read it, passed on byte for byte.
    """

    def __init__(self, plugin: str, path: tuple[str, ...], environ: Mapping[str, str], conf: dict, data: bytes):
        self.plugin = plugin
        self.path = path
        self.environ = environ
        self.conf = conf
        self.data = data
        self._exe: str | None = None
        self._native: object = None

    @property
    def exe(self) -> str:
        """The plugin's executable (CniError 7 if CNI_PATH has none, 4 if CNI_PATH is empty)."""
        if self._exe is None:
            self._exe = find(self.plugin, self.path)
        return self._exe

    def _exec(self, command: str, data: bytes) -> tuple[int, bytes]:
        import subprocess

        exe = self.exe
        env = dict(self.environ)
        env["CNI_COMMAND"] = command
        try:
            p = subprocess.run([exe], input=data, stdout=subprocess.PIPE, env=env, timeout=TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise CniError(TRY_AGAIN_LATER, f"IPAM plugin {self.plugin} timed out",
                           f"{exe} {command} did not finish within {TIMEOUT:.0f} s") from None
        except OSError as e:
            raise CniError(INTERNAL, f"cannot run IPAM plugin {self.plugin}", f"{exe}: {e}") from None
        return p.returncode, p.stdout

    def native(self):
        """The in-process host-local for this invocation (:mod:`nkframe.cni.hostlocal`), or None
        when the plugin is to be exec'd."""
        if self._native is None:
            self._native = False
            if self.plugin == "host-local":
                from nkframe.cni import hostlocal

                self._native = hostlocal.load(self.conf, self.environ) or False
        return self._native or None

    def call(self, command: str) -> dict | None:
        """Run ``command``; the parsed stdout (ADD: the result; others: usually nothing).

        A failure is raised as the IPAM plugin's own CNI error, its message prefixed with the
        plugin's name.
        """
        native = self.native() if command in ("ADD", "DEL") else None
        if native is not None:
            self.exe  # still looked up: a missing plugin is the same configuration error
            return native.run(command)
        rc, out = self._exec(command, self.data)
        err = _error(rc, out)
        if err is not None and err.get("code") == INCOMPATIBLE_VERSION and self.conf.get("cniVersion") in FALLBACK:
            older = dict(self.conf, cniVersion=FALLBACK[self.conf["cniVersion"]])
            rc, out = self._exec(command, json.dumps(older).encode())
            err = _error(rc, out)
        if err is not None:
            code = err.get("code")
            code = code if isinstance(code, int) and not isinstance(code, bool) and code > 0 else INTERNAL
            raise CniError(code, f"IPAM plugin {self.plugin}: {err.get('msg') or 'failed'}",
                           f"{self.plugin} {command} exited {rc}: {err.get('details') or err.get('msg') or out.decode(errors='replace').strip()[:500]}")
        out = out.strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            raise CniError(INTERNAL, f"IPAM plugin {self.plugin} printed no valid result",
                           f"{self.plugin} {command}: {out[:200]!r}") from None

    def add(self) -> dict:
        """ADD: the normalised result (addresses, routes, dns)."""
        res = result.parse(self.call("ADD"), f"the result of IPAM plugin {self.plugin}", code=INTERNAL)
        if not res["ips"]:
            raise CniError(INTERNAL, f"IPAM plugin {self.plugin} assigned no address",
                           f"{self.plugin} ADD returned no ips; check the ipam section's ranges")
        return res

    def speaks(self, version: str) -> bool:
        """Whether the plugin's VERSION answer lists ``version``."""
        try:
            rc, out = self._exec("VERSION", json.dumps({"cniVersion": self.conf.get("cniVersion")}).encode())
            return rc == 0 and version in json.loads(out).get("supportedVersions", ())
        except (CniError, ValueError, AttributeError):
            return False


def _error(rc: int, out: bytes) -> dict | None:
    """The plugin's error document when it failed (a minimal one when it printed none)."""
    if rc == 0:
        return None
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {"code": INTERNAL, "msg": "failed", "details": out.decode(errors="replace").strip()[:500] or f"exit status {rc}"}
