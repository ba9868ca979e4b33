"""The binding's sidecar: KubeVirt's hook gRPC API on a Unix socket.

virt-launcher finds the socket under ``/var/run/kubevirt-hooks/<sidecar container>/``, asks
``Info`` which hook points and Callbacks versions it serves, then calls ``OnDefineDomain`` with the
domain XML and the VMI before it defines the domain in libvirt, and ``Shutdown`` when the VM stops.
This server answers Info and the Callbacks services v1alpha1, v1alpha2 and v1alpha3 on one socket:

* ``OnDefineDomain``: :func:`nkframe_kubevirt.binding.mutate`; a malformed domain or VMI is
  ``INVALID_ARGUMENT``, a missing or not-ready endpoint (or a MAC it would not deliver to)
  ``FAILED_PRECONDITION``, any other failure ``INTERNAL``; the server keeps serving;
* ``PreCloudInitIso``: the cloud-init data unchanged (``INVALID_ARGUMENT`` if it is not JSON);
* ``Shutdown``: answers, then stops the server and exits 0.

Run: ``python -m nkframe_kubevirt.sidecar [--socket PATH] [--binding NAME] [--nkframe CMD]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket as socketmod
import sys
import threading
from concurrent import futures

import grpc

from . import binding as bd
from . import domain as dom
from .protos import load

log = logging.getLogger("nkframe-kubevirt")

HOOKS_DIR = "/var/run/kubevirt-hooks"
DEFAULT_SOCKET = f"{HOOKS_DIR}/nkframe-afxdp.sock"
VERSIONS = ("v1alpha3", "v1alpha2", "v1alpha1")
HOOK_POINTS = ("OnDefineDomain", "Shutdown")


class Hooks:
    """The hook logic, shared by every Callbacks version."""

    def __init__(self, binding: str, source, map_path_prefixes=(), on_shutdown=None):
        self.binding = binding
        self.source = source
        self.map_path_prefixes = list(map_path_prefixes)
        self.on_shutdown = on_shutdown or (lambda: None)

    def on_define_domain(self, domain_xml: bytes, vmi: bytes, context) -> bytes:
        try:
            out = bd.mutate(domain_xml, vmi, binding=self.binding, source=self.source,
                            map_path_prefixes=self.map_path_prefixes)
        except (dom.DomainError, bd.InvalidVmi) as e:
            log.warning("OnDefineDomain refused: %s", e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except bd.EndpointError as e:
            log.warning("OnDefineDomain refused: %s", e)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except Exception as e:  # noqa: BLE001 - reported to virt-launcher, the server stays up
            log.exception("OnDefineDomain failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        log.info("OnDefineDomain: %d bytes in, %d bytes out", len(domain_xml), len(out))
        return out

    @staticmethod
    def check_json(raw: bytes, what: str, context) -> None:
        import json

        if raw:
            try:
                json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is not JSON: {e}")


def _servicers(hooks: Hooks, pb):
    class Info(pb.info_grpc.InfoServicer):
        def Info(self, request, context):
            return pb.info.InfoResult(
                name=hooks.binding,
                versions=list(VERSIONS),
                hookPoints=[pb.info.HookPoint(name=n, priority=0) for n in HOOK_POINTS])

    def define(mod):
        def OnDefineDomain(self, request, context):
            return mod.OnDefineDomainResult(
                domainXML=hooks.on_define_domain(request.domainXML, request.vmi, context))
        return OnDefineDomain

    def cloud_init(mod):
        def PreCloudInitIso(self, request, context):
            hooks.check_json(request.cloudInitData, "cloudInitData", context)
            hooks.check_json(request.cloudInitNoCloudSource, "cloudInitNoCloudSource", context)
            return mod.PreCloudInitIsoResult(cloudInitData=request.cloudInitData,
                                             cloudInitNoCloudSource=request.cloudInitNoCloudSource)
        return PreCloudInitIso

    def Shutdown(self, request, context):
        log.info("Shutdown")
        hooks.on_shutdown()
        return pb.v1alpha3.ShutdownResult()

    v1 = type("V1alpha1", (pb.v1alpha1_grpc.CallbacksServicer,), {"OnDefineDomain": define(pb.v1alpha1)})
    v2 = type("V1alpha2", (pb.v1alpha2_grpc.CallbacksServicer,),
              {"OnDefineDomain": define(pb.v1alpha2), "PreCloudInitIso": cloud_init(pb.v1alpha2)})
    v3 = type("V1alpha3", (pb.v1alpha3_grpc.CallbacksServicer,),
              {"OnDefineDomain": define(pb.v1alpha3), "PreCloudInitIso": cloud_init(pb.v1alpha3),
               "Shutdown": Shutdown})
    return Info(), v1(), v2(), v3()


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on (a sidecar that died); refuse a live one."""
    if not os.path.exists(path):
        return
    s = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        s.close()
    raise SystemExit(f"nkframe-kubevirt: {path} is in use by another server")


def serve(socket_path: str, hooks: Hooks) -> tuple[grpc.Server, threading.Event]:
    """Start the server on ``socket_path``; the event is set when Shutdown was called."""
    pb = load()
    done = threading.Event()
    prev = hooks.on_shutdown

    def on_shutdown():
        prev()
        done.set()

    hooks.on_shutdown = on_shutdown
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    info, v1, v2, v3 = _servicers(hooks, pb)
    pb.info_grpc.add_InfoServicer_to_server(info, server)
    pb.v1alpha1_grpc.add_CallbacksServicer_to_server(v1, server)
    pb.v1alpha2_grpc.add_CallbacksServicer_to_server(v2, server)
    pb.v1alpha3_grpc.add_CallbacksServicer_to_server(v3, server)
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), exist_ok=True)
    _clear_stale(socket_path)
    server.add_insecure_port(f"unix:{os.path.abspath(socket_path)}")
    server.start()
    return server, done


def _prefix_pair(value: str) -> tuple[str, str]:
    old, sep, new = value.partition("=")
    if not sep or not old.startswith("/") or not new.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r} is not /NODE/PATH=/POD/PATH")
    return old, new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nkframe-kubevirt-sidecar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default=os.environ.get("NKFRAME_KUBEVIRT_SOCKET", DEFAULT_SOCKET),
                    help="the Unix socket to serve on (default %(default)s)")
    ap.add_argument("--binding", default=os.environ.get("NETWORK_BINDING_PLUGIN_NAME", bd.DEFAULT_BINDING),
                    help="the binding name the VMI's interfaces use (default: $NETWORK_BINDING_PLUGIN_NAME, "
                         "which KubeVirt sets, else %(default)s)")
    ap.add_argument("--nkframe", default=os.environ.get("NKFRAME_KUBEVIRT_NKFRAME", "nkframe"),
                    help="the nkframe command, shell-quoted (default %(default)s)")
    ap.add_argument("--map-path-prefix", type=_prefix_pair, action="append", default=[],
                    metavar="NODE=POD", help="rewrite a map-path under NODE to the same path under "
                    "POD (where the launcher's compute container sees the pins)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s nkframe-kubevirt %(levelname)s %(message)s")
    hooks = Hooks(args.binding, bd.NkframeCli(shlex.split(args.nkframe)), args.map_path_prefix)
    server, done = serve(args.socket, hooks)
    log.info("serving binding %s (hook versions %s) on %s", args.binding, ", ".join(VERSIONS), args.socket)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=2).wait()
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
