"""A hook client for trying and troubleshooting the sidecar: the calls virt-launcher makes.

    python -m nkframe_kubevirt.client --socket S info
    python -m nkframe_kubevirt.client --socket S define --domain D.xml --vmi VMI.json [--version v1alpha3] > out.xml
    python -m nkframe_kubevirt.client --socket S shutdown

``info`` prints the Info answer as JSON, ``define`` the domain the sidecar returned.  A gRPC error
is printed as ``CODE: details`` on standard error, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from .protos import load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nkframe-kubevirt-client", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    d = sub.add_parser("define")
    d.add_argument("--domain", type=Path, required=True)
    d.add_argument("--vmi", type=Path, required=True)
    d.add_argument("--version", choices=["v1alpha1", "v1alpha2", "v1alpha3"], default="v1alpha3")
    sub.add_parser("shutdown")
    args = ap.parse_args(argv)
    pb = load()
    with grpc.insecure_channel(f"unix:{args.socket}") as ch:
        try:
            if args.cmd == "info":
                r = pb.info_grpc.InfoStub(ch).Info(pb.info.InfoParams(), timeout=args.timeout)
                print(json.dumps({"name": r.name, "versions": list(r.versions),
                                  "hookPoints": [{"name": h.name, "priority": h.priority} for h in r.hookPoints]}))
            elif args.cmd == "define":
                mod, stubs = getattr(pb, args.version), getattr(pb, f"{args.version}_grpc")
                r = stubs.CallbacksStub(ch).OnDefineDomain(
                    mod.OnDefineDomainParams(domainXML=args.domain.read_bytes(), vmi=args.vmi.read_bytes()),
                    timeout=args.timeout)
                sys.stdout.buffer.write(r.domainXML)
            else:
                pb.v1alpha3_grpc.CallbacksStub(ch).Shutdown(pb.v1alpha3.ShutdownParams(), timeout=args.timeout)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
