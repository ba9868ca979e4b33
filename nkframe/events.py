"""Live drop events from the datapath: what ``nkframe events`` prints.

Programs report every packet they drop into a BPF ring buffer pinned at
``<root>/globals/maps/nk_events`` (``bpf/include/nkframe_events.h``: a 72-byte record with the
time, the endpoint's slot, where the program runs, the reason, the 5-tuple and the deciding
rule).  Today the policy programs report; any program including the header can.  At most
5,000 events per CPU per second are written, and none while the ring is full (nobody reads):
the programs count those in ``nk_ev_lost`` instead (:meth:`EventReader.lost`).

Reading the ring: the map is mmap()ed and read directly, the way the kernel documents it — a
read-write consumer page holding ``consumer_pos``, then read-only the producer page
(``producer_pos``) and the data area, mapped twice in a row so a record that wraps around the
end reads as one piece.  Each record starts with an 8-byte header: its length, with bit 31
"busy" (reserved, not yet submitted) and bit 30 "discarded".  We read ``producer_pos``, walk
the records up to it, stop at a busy one, and store the new ``consumer_pos``; ``poll()`` on the
map fd waits for more.  This needs no callback into Python from C (libbpf's
``ring_buffer__poll()`` would, through the shared cffi module), keeps the consumer a plain
loop that tests can drive, and reads records in batches.  It relies on x86-64's memory order
(loads are not reordered with loads, nor stores with earlier loads), the only architecture
nkframe builds its BPF objects for; a weakly ordered CPU would need the acquire/release
barriers libbpf's consumer has.

Endpoint names come from the policy plugin's slot table (``nk_pol_owner``, next to the ring).
"""

from __future__ import annotations

import datetime as _dt
import errno
import ipaddress
import json
import mmap
import os
import select
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import attrs

from nkframe.errors import InvalidSpec, KernelError

RING_MAP = "nk_events"
LOST_MAP = "nk_ev_lost"
OWNER_MAP = "nk_pol_owner"

# struct nk_event (nkframe_events.h)
EVENT = struct.Struct("=QIIIIHBBBBHHH16s16s4x")
NO_SLOT = NO_RULE = 0xFFFFFFFF
KIND_DROP = 1
REASONS = {1: "policy_deny", 2: "policy_default", 3: "malformed", 4: "no_route", 5: "no_policy"}
HOOKS = {0: "unknown", 1: "from-pod", 2: "to-pod", 3: "uplink"}
LOST = ("ring_full", "rate_limited")  # enum nk_event_lost
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

# uapi/linux/bpf.h
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
OWNER_LEN = 64

assert EVENT.size == 72


@attrs.frozen
class Event:
    """One dropped packet.  ``src``/``dst`` are ``None`` (and ports ``None``) when the program
    did not get that far into the packet (e.g. a truncated IP header)."""

    time: float  # wall clock, seconds since the epoch
    ts_ns: int  # CLOCK_MONOTONIC, as the program read it
    endpoint: str | None
    slot: int | None
    hook: str
    reason: str
    family: int
    proto: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    sport: int | None
    dport: int | None
    rule_id: int | None
    length: int
    ifindex: int

    @property
    def proto_name(self) -> str:
        return PROTOS.get(self.proto, str(self.proto))

    def to_dict(self) -> dict:
        return {
            "time": _dt.datetime.fromtimestamp(self.time, _dt.timezone.utc).isoformat(),
            "ts_ns": self.ts_ns,
            "endpoint": self.endpoint,
            "slot": self.slot,
            "hook": self.hook,
            "reason": self.reason,
            "family": self.family,
            "proto": self.proto_name,
            "src": None if self.src is None else str(self.src),
            "sport": self.sport,
            "dst": None if self.dst is None else str(self.dst),
            "dport": self.dport,
            "rule_id": self.rule_id,
            "len": self.length,
            "ifindex": self.ifindex,
        }

    def describe(self) -> str:
        """One line for people: time, endpoint, where, reason, 5-tuple."""
        when = _dt.datetime.fromtimestamp(self.time).strftime("%H:%M:%S.%f")
        who = self.endpoint or (f"slot {self.slot}" if self.slot is not None else "-")

        def ep(addr, port):
            if addr is None:
                return "?"
            text = f"[{addr}]" if addr.version == 6 and port is not None else str(addr)
            return f"{text}:{port}" if port is not None else text

        rule = f" rule {self.rule_id}" if self.rule_id is not None else ""
        return (f"{when} {who} {self.hook} {self.reason}{rule} {self.proto_name} "
                f"{ep(self.src, self.sport)} -> {ep(self.dst, self.dport)} len {self.length}")


def _addr(family: int, raw: bytes):
    if family == 4:
        return ipaddress.IPv4Address(raw[:4])
    if family == 6:
        return ipaddress.IPv6Address(raw)
    return None


def decode(raw: bytes, *, wall_offset_ns: int = 0,
           resolve: Callable[[int], str | None] = lambda slot: None) -> Event:
    """An :class:`Event` from one record's bytes; ``wall_offset_ns`` turns the monotonic
    timestamp into wall-clock time, ``resolve`` a slot into an endpoint id."""
    (ts, ifindex, slot, rule_id, length, _kind, reason, hook, family, proto, sport, dport, _pad,
     src, dst) = EVENT.unpack_from(raw)
    has_ports = family in (4, 6) and proto in (6, 17)
    # A parse that stopped early leaves the addresses zero: only a filled header names them.
    filled = family in (4, 6) and any(src + dst)
    slot_ = None if slot == NO_SLOT else slot
    return Event(
        time=(ts + wall_offset_ns) / 1e9,
        ts_ns=ts,
        endpoint=None if slot_ is None else resolve(slot_),
        slot=slot_,
        hook=HOOKS.get(hook, str(hook)),
        reason=REASONS.get(reason, str(reason)),
        family=family,
        proto=proto,
        src=_addr(family, src) if filled else None,
        dst=_addr(family, dst) if filled else None,
        sport=sport if has_ports and (sport or dport) else None,
        dport=dport if has_ports and (sport or dport) else None,
        rule_id=None if rule_id == NO_RULE else rule_id,
        length=length,
        ifindex=ifindex,
    )


class Ring:
    """The consumer side of a BPF ring buffer map (see the module doc for the protocol).

    One consumer per ring: two readers would each see part of the records."""

    def __init__(self, map_fd: int, data_size: int):
        if data_size <= 0 or data_size & (data_size - 1):
            raise InvalidSpec(f"ring buffer size {data_size} is not a power of two")
        page = mmap.PAGESIZE
        self._fd = os.dup(map_fd)
        try:
            self._consumer = mmap.mmap(self._fd, page, flags=mmap.MAP_SHARED,
                                       prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._producer = mmap.mmap(self._fd, page + 2 * data_size, flags=mmap.MAP_SHARED,
                                       prot=mmap.PROT_READ, offset=page)
        except OSError as e:
            os.close(self._fd)
            raise KernelError(e.errno or errno.EINVAL, f"mmap ring buffer (fd {map_fd})") from None
        self._data = memoryview(self._producer)[page:]
        self._mask = data_size - 1
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._data.release()
        self._producer.close()
        self._consumer.close()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _producer_pos(self) -> int:
        return struct.unpack_from("=Q", self._producer, 0)[0]

    def _consumer_pos(self) -> int:
        return struct.unpack_from("=Q", self._consumer, 0)[0]

    def pending(self) -> int:
        """Bytes submitted or reserved and not yet consumed."""
        return self._producer_pos() - self._consumer_pos()

    def read(self, limit: int | None = None) -> list[bytes]:
        """Every record submitted so far (at most ``limit``), in order; consumes them."""
        out: list[bytes] = []
        cons = self._consumer_pos()
        while limit is None or len(out) < limit:
            prod = self._producer_pos()
            if cons >= prod:
                break
            off = cons & self._mask
            (header,) = struct.unpack_from("=I", self._data, off)
            if header & BPF_RINGBUF_BUSY_BIT:
                break  # reserved, not submitted yet: later records wait behind it
            length = header & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)
            if not header & BPF_RINGBUF_DISCARD_BIT:
                start = off + BPF_RINGBUF_HDR_SZ
                out.append(bytes(self._data[start:start + length]))
            cons += (length + BPF_RINGBUF_HDR_SZ + 7) & ~7
            struct.pack_into("=Q", self._consumer, 0, cons)
        return out

    def wait(self, timeout: float | None) -> bool:
        """Block until the ring has data or ``timeout`` seconds passed (None: forever)."""
        if self.pending():
            return True
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return bool(self._poll.poll(ms))


class EventReader:
    """Drop events from the ring pinned in ``maps_dir`` (``<root>/globals/maps``).

    Open it before causing the drops you want to see: records written earlier are in the ring
    too (until read), so :meth:`skip_backlog` drops those first if only new ones matter."""

    def __init__(self, maps_dir: str | os.PathLike):
        from nkframe import bpf

        self.maps_dir = Path(maps_dir)
        path = self.maps_dir / RING_MAP
        if not path.exists():
            raise KernelError(
                errno.ENOENT,
                f"no event ring at {path}: nothing under this bpffs root has loaded programs "
                f"that report drops yet (check --bpffs-root)",
            )
        with bpf.Map.from_pin(path) as m:
            self._ring = Ring(m.fd, m.max_entries)
        self._owners = None
        owner_path = self.maps_dir / OWNER_MAP
        if owner_path.exists():
            self._owners = bpf.Map.from_pin(owner_path)

    def close(self) -> None:
        self._ring.close()
        if self._owners is not None:
            self._owners.close()
            self._owners = None

    def __enter__(self) -> "EventReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resolver(self) -> Callable[[int], str | None]:
        cache: dict[int, str | None] = {}

        def resolve(slot: int) -> str | None:
            if slot not in cache:
                raw = None
                if self._owners is not None and slot < self._owners.max_entries:
                    raw = self._owners.lookup(struct.pack("=I", slot))
                name = bytes(raw or b"").rstrip(b"\0").decode(errors="replace")
                cache[slot] = name or None
            return cache[slot]

        return resolve

    def skip_backlog(self) -> int:
        """Consume what is in the ring already; returns how many records that was."""
        n = 0
        while batch := self._ring.read():
            n += len(batch)
        return n

    def read(self, timeout: float | None = 0.0) -> list[Event]:
        """The events written so far, waiting up to ``timeout`` seconds for the first."""
        if not self._ring.pending():
            self._ring.wait(timeout)
        records = self._ring.read()
        if not records:
            return []
        offset = time.time_ns() - time.monotonic_ns()
        resolve = self._resolver()
        return [decode(r, wall_offset_ns=offset, resolve=resolve) for r in records]

    def lost(self) -> dict[str, int]:
        """Events the programs could not write, summed over CPUs: ``ring_full`` (nobody read
        in time) and ``rate_limited`` (more than the per-CPU budget per second)."""
        return lost_counts(self.maps_dir) or {name: 0 for name in LOST}


def lost_counts(maps_dir: str | os.PathLike) -> dict[str, int] | None:
    """:meth:`EventReader.lost` without opening the ring (the agent's metrics read it at each
    scrape); ``None`` when no program under this root reports events (no ``nk_ev_lost``)."""
    from nkframe import bpf

    path = Path(maps_dir) / LOST_MAP
    if not path.exists():
        return None
    with bpf.Map.from_pin(path) as m:
        return {name: sum(struct.unpack_from("=Q", v)[0]
                          for v in m.lookup_percpu(struct.pack("=I", i)) or ())
                for i, name in enumerate(LOST)}


def matches(event: Event, *, endpoint: str | None = None, reasons=()) -> bool:
    if endpoint is not None and event.endpoint != endpoint:
        return False
    return not reasons or event.reason in reasons


def follow(reader: EventReader, *, endpoint: str | None = None, reasons=(),
           count: int | None = None, timeout: float | None = None,
           tick: float = 0.5) -> Iterator[Event]:
    """Events as they come, filtered; stops after ``count`` of them or ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    while count is None or seen < count:
        wait = tick if deadline is None else min(tick, deadline - time.monotonic())
        if wait < 0:
            return
        for ev in reader.read(timeout=wait):
            if matches(ev, endpoint=endpoint, reasons=reasons):
                yield ev
                seen += 1
                if count is not None and seen >= count:
                    return


def run(maps_dir: str | os.PathLike, *, endpoint: str | None = None, reasons=(),
        as_json: bool = False, count: int | None = None, timeout: float | None = None,
        echo: Callable[[str], None] = print) -> int:
    """``nkframe events``: print events until ``count`` or ``timeout`` (or Ctrl-C).  Returns
    the exit code: 1 when ``count`` was given and the timeout came first, else 0."""
    if count is not None and count < 1:
        raise InvalidSpec(f"--count must be at least 1, not {count}")
    if timeout is not None and timeout < 0:
        raise InvalidSpec(f"--timeout must not be negative, not {timeout}")
    unknown = [r for r in reasons if r not in REASONS.values()]
    if unknown:
        raise InvalidSpec(f"unknown reason(s) {', '.join(unknown)}; known: "
                          f"{', '.join(REASONS.values())}")
    seen = 0
    with EventReader(maps_dir) as reader:
        try:
            for ev in follow(reader, endpoint=endpoint, reasons=tuple(reasons), count=count,
                             timeout=timeout):
                echo(json.dumps(ev.to_dict()) if as_json else ev.describe())
                seen += 1
        except KeyboardInterrupt:
            return 0
    return 1 if count is not None and seen < count else 0
