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

from nkframe.cni import LATEST, SUPPORTED_VERSIONS
from nkframe.cni.errors import DECODING_FAILURE, INTERNAL, IO_FAILURE, CniError


def default_socket(environ: Mapping[str, str]) -> str:
    """The agent's socket when the configuration names none: as for the CLI,
    ``$NKFRAME_AGENT_SOCKET`` or the agent's default."""
    from nkframe.agent import DEFAULT_SOCKET

    return environ.get("NKFRAME_AGENT_SOCKET") or DEFAULT_SOCKET


def run(environ: Mapping[str, str], data: bytes) -> dict | None:
    """One invocation: the document to print on success (None: print nothing).  Raises
    :class:`CniError`."""
    if environ.get("CNI_COMMAND") == "VERSION":
        return version(data)
    # Everything else needs the agent client, the IPAM runner and the parsers; VERSION (which
    # runtimes call to probe) stays at the bare minimum.
    from nkframe.cni import commands, config

    doc = config.decode(data)
    env = config.CniEnv.from_environ(environ)
    conf = config.parse(doc, env.command, default_socket(environ))
    return commands.RUN[env.command](commands.Invocation(env, conf, environ, data))


def version(data: bytes) -> dict:
    """VERSION: the versions we speak, in the version the caller asked in (it is a probe: any
    version string is answered)."""
    v = None
    if data.strip():
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise CniError(DECODING_FAILURE, "cannot decode the VERSION request", f"stdin is not JSON: {e}") from None
        v = doc.get("cniVersion") if isinstance(doc, dict) else None
    return {"cniVersion": v if isinstance(v, str) and v else LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _error_version(data: bytes) -> str:
    """An error is written in the configuration's version when we speak it, else the latest."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return LATEST
    v = doc.get("cniVersion") if isinstance(doc, dict) else None
    return v if v in SUPPORTED_VERSIONS else LATEST


def main(argv: list[str] | None = None) -> int:
    data = b""
    try:
        try:
            data = sys.stdin.buffer.read()
        except OSError as e:
            raise CniError(IO_FAILURE, "cannot read the network configuration", f"reading stdin failed: {e}") from None
        out = run(os.environ, data)
    except CniError as e:
        _write(e.to_dict(_error_version(data)))
        return 1
    except Exception as e:  # noqa: BLE001 - the runtime gets a CNI error, the log the traceback
        import traceback

        traceback.print_exc(file=sys.stderr)
        _write(CniError(INTERNAL, "nkframe-cni failed unexpectedly", f"{type(e).__name__}: {e}").to_dict(_error_version(data)))
        return 1
    if out is not None:
        _write(out)
    return 0


def _write(doc: dict) -> None:
    try:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the runtime went away; the exit status still tells


if __name__ == "__main__":
    sys.exit(main())
