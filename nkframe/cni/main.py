"""``nkframe-cni``: the executable a container runtime runs (``CNI_COMMAND`` and friends in the
environment, the network configuration on stdin, the result or an error on stdout).

Exit status 0 on success; 1 with a CNI error object on stdout on failure.  Log lines go to
stderr, which runtimes keep in their logs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from nkframe import inputs
from nkframe.cni import LATEST, SUPPORTED_VERSIONS
from nkframe.cni.errors import DECODING_FAILURE, INTERNAL, IO_FAILURE, CniError


def default_socket(environ: Mapping[str, str]) -> str:
    """The agent's socket when the configuration names none: as for the CLI,
    ``$NKFRAME_AGENT_SOCKET`` or the agent's default."""
    from nkframe.agent import DEFAULT_SOCKET

    return environ.get("NKFRAME_AGENT_SOCKET") or DEFAULT_SOCKET


def run(environ: Mapping[str, str], data: bytes, *, backend=None, socket: str | None = None) -> dict | None:
    """One invocation: the document to print on success (None: print nothing).  Raises
    :class:`CniError`.

    ``backend`` and ``socket`` (the agent's socket when the configuration names none) are for
    the agent running the plugin in process (:class:`nkframe.cni.commands.Invocation`)."""
    if environ.get("CNI_COMMAND") == "VERSION":
        return version(data)
    # Everything else needs the agent client, the IPAM runner and the parsers; VERSION (which
    # runtimes call to probe) stays at the bare minimum.
    from nkframe.cni import commands, config

    doc = config.decode(data)
    env = config.CniEnv.from_environ(environ)
    conf = config.parse(doc, env.command, socket or default_socket(environ))
    return commands.RUN[env.command](commands.Invocation(env, conf, environ, data, backend))


def execute(environ: Mapping[str, str], data: bytes, *, backend=None, socket: str | None = None) -> tuple[int, str]:
    """One invocation as the runtime sees it: (exit status, stdout).  Never raises for a CNI
    error; an unexpected exception is logged (with its traceback) and becomes error 999."""
    try:
        out = run(environ, data, backend=backend, socket=socket)
    except CniError as e:
        return 1, _line(e.to_dict(_error_version(data)))
    except Exception as e:  # noqa: BLE001 - the runtime gets a CNI error, the log the traceback
        import traceback

        traceback.print_exc(file=sys.stderr)
        return 1, _line(CniError(INTERNAL, "nkframe-cni failed unexpectedly", f"{type(e).__name__}: {e}").to_dict(_error_version(data)))
    return 0, (_line(out) if out is not None else "")


def _line(doc: dict) -> str:
    return json.dumps(doc) + "\n"


def version(data: bytes) -> dict:
    """VERSION: the versions we speak, in the version the caller asked in (it is a probe: any
    version string is answered)."""
    v = None
    if data.strip():
        try:
            doc = inputs.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise CniError(DECODING_FAILURE, "cannot decode the VERSION request", f"stdin is not JSON: {e}") from None
        v = doc.get("cniVersion") if isinstance(doc, dict) else None
    return {"cniVersion": v if isinstance(v, str) and v else LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _error_version(data: bytes) -> str:
    """An error is written in the configuration's version when we speak it, else the latest."""
    try:
        doc = inputs.loads(data)
    except (ValueError, UnicodeDecodeError):
        return LATEST
    v = doc.get("cniVersion") if isinstance(doc, dict) else None
    return v if v in SUPPORTED_VERSIONS else LATEST


def main(argv: list[str] | None = None) -> int:
    try:
        data = sys.stdin.buffer.read()
    except OSError as e:
        err = CniError(IO_FAILURE, "cannot read the network configuration", f"reading stdin failed: {e}")
        rc, out = 1, _line(err.to_dict(LATEST))
    else:
        rc, out = execute(os.environ, data)
    if out:
        try:
            sys.stdout.write(out)
            sys.stdout.flush()
        except OSError:
            pass  # the runtime went away; the exit status still tells
    return rc


if __name__ == "__main__":
    sys.exit(main())
