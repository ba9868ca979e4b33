"""Real-traffic helpers for tests (ours and plugin authors').

Sockets are created inside a network namespace with :func:`nkframe.netns.enter` and stay bound to
it, so one process can talk between namespaces without external tools (no ping, no nc).
"""

from __future__ import annotations

import ipaddress
import select
import socket
import time

from nkframe import netns


def _family(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def _sock(ns: str | None, family: int, kind: int) -> socket.socket:
    with netns.enter(ns):
        return socket.socket(family, kind)


def udp_probe(src_ns: str | None, dst_ns: str | None, dst_ip: str, port: int = 9999, *, count: int = 3, timeout: float = 1.0, src_ip: str | None = None) -> int:
    """Send ``count`` UDP datagrams from ``src_ns`` to ``dst_ip:port`` served in ``dst_ns``.

    Returns how many arrived.  Each datagram carries a sequence number, so duplicates don't count.
    """
    fam = _family(dst_ip)
    rx = _sock(dst_ns, fam, socket.SOCK_DGRAM)
    tx = _sock(src_ns, fam, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind((dst_ip, port))
        if src_ip:
            tx.bind((src_ip, 0))
        seen: set[int] = set()
        for seq in range(count):
            try:
                tx.sendto(seq.to_bytes(4, "big") + b"nkframe", (dst_ip, port))
            except OSError:
                pass  # e.g. ENETUNREACH: the datagram did not go, so it is not delivered
            deadline = time.monotonic() + (timeout if seq == count - 1 else timeout / 4)
            while time.monotonic() < deadline:
                r, _, _ = select.select([rx], [], [], max(0.0, deadline - time.monotonic()))
                if not r:
                    break
                data, _ = rx.recvfrom(2048)
                seen.add(int.from_bytes(data[:4], "big"))
                if seq in seen:
                    break
        return len(seen)
    finally:
        rx.close()
        tx.close()


def tcp_connect(src_ns: str | None, dst_ns: str | None, dst_ip: str, port: int, *, timeout: float = 1.5) -> bool:
    """Open a TCP connection across namespaces and exchange a few bytes; True if it worked."""
    fam = _family(dst_ip)
    srv = _sock(dst_ns, fam, socket.SOCK_STREAM)
    cli = _sock(src_ns, fam, socket.SOCK_STREAM)
    try:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((dst_ip, port))
        srv.listen(1)
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        try:
            cli.connect((dst_ip, port))
            conn, _ = srv.accept()
        except OSError:
            return False
        with conn:
            conn.settimeout(timeout)
            cli.sendall(b"ping")
            try:
                return conn.recv(4) == b"ping"
            except OSError:
                return False
    finally:
        cli.close()
        srv.close()
