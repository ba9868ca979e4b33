"""Event records without a kernel: decoding, formatting, filters, and the numbers shared with
bpf/include/nkframe_events.h."""

import ipaddress
import json
import re
import struct
from pathlib import Path

from nkframe import events

INCLUDE = Path(__file__).resolve().parents[2] / "bpf" / "include"


def _enum(path, name):
    body = re.search(r"enum %s \{(.*?)\};" % name, path.read_text(), re.S).group(1)
    return {k: int(v, 0) for k, v in re.findall(r"(NK_\w+) = (\w+)", body)}


def test_numbers_match_the_c_header():
    h = INCLUDE / "nkframe_events.h"
    hooks = _enum(h, "nk_event_hook")
    assert {v: k[len("NK_EVENT_HOOK_"):].lower().replace("_", "-") for k, v in hooks.items()} == events.HOOKS
    lost = _enum(h, "nk_event_lost")
    assert [k[len("NK_EVENT_LOST_"):].lower() for k, v in sorted(lost.items(), key=lambda kv: kv[1])
            if k != "NK_EVENT_LOST_MAX"] == ["ring_full", "rate"]
    assert len(events.LOST) == lost["NK_EVENT_LOST_MAX"]
    drops = _enum(INCLUDE / "nkframe_common.h", "nk_drop_reason")
    assert {v: k[len("NK_DROP_"):].lower() for k, v in drops.items()
            if k not in ("NK_DROP_NONE", "NK_DROP_MAX")} == events.REASONS
    assert _enum(h, "nk_event_kind") == {"NK_EVENT_DROP": events.KIND_DROP}
    # The C struct, field by field, in the order and sizes EVENT packs.
    body = re.search(r"struct nk_event \{(.*?)\};", h.read_text(), re.S).group(1)
    fields = re.findall(r"__(u\d+) (\w+)(\[\d+\])?;", body)
    sizes = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
    total = sum(sizes[t] * (int(n[1:-1]) if n else 1) for t, _, n in fields)
    assert total + 4 == events.EVENT.size  # the struct is padded to its 8-byte alignment


def record(**kw):
    v = dict(ts=5_000_000_000, ifindex=7, slot=3, rule=12, length=60, kind=1, reason=1, hook=1,
             family=4, proto=17, sport=5353, dport=53, src=bytes([10, 0, 0, 5]), dst=bytes([192, 0, 2, 9]))
    v.update(kw)
    return events.EVENT.pack(v["ts"], v["ifindex"], v["slot"], v["rule"], v["length"], v["kind"],
                             v["reason"], v["hook"], v["family"], v["proto"], v["sport"], v["dport"],
                             0, v["src"].ljust(16, b"\0"), v["dst"].ljust(16, b"\0"))


def test_decode_and_print():
    ev = events.decode(record(), wall_offset_ns=1_700_000_000_000_000_000,
                       resolve={3: "pod-a"}.get)
    assert (ev.endpoint, ev.hook, ev.reason, ev.proto_name, str(ev.src), ev.sport, str(ev.dst),
            ev.dport, ev.rule_id, ev.length) == ("pod-a", "from-pod", "policy_deny", "udp",
                                                 "10.0.0.5", 5353, "192.0.2.9", 53, 12, 60)
    assert ev.time == 1_700_000_005.0
    doc = json.loads(json.dumps(ev.to_dict()))
    assert doc["time"].startswith("2023-11-14T22:13:25") and doc["proto"] == "udp"
    assert "pod-a from-pod policy_deny rule 12 udp 10.0.0.5:5353 -> 192.0.2.9:53 len 60" in ev.describe()


def test_decode_unknowns():
    six = events.decode(record(family=6, proto=58, sport=0, dport=0, slot=events.NO_SLOT,
                               rule=events.NO_RULE, hook=3, reason=5,
                               src=ipaddress.ip_address("2001:db8::1").packed,
                               dst=ipaddress.ip_address("fd00::5").packed))
    assert (six.endpoint, six.slot, six.rule_id, six.sport, six.dport) == (None, None, None, None, None)
    assert (six.hook, six.reason, six.proto_name, str(six.dst)) == ("uplink", "no_policy", "icmpv6", "fd00::5")
    assert "2001:db8::1 -> fd00::5" in six.describe()
    # A parse that stopped before the addresses: no tuple.
    cut = events.decode(record(family=4, proto=0, sport=0, dport=0, src=bytes(4), dst=bytes(4), reason=3))
    assert (cut.src, cut.dst, cut.sport) == (None, None, None) and "? -> ?" in cut.describe()
    v6port = events.decode(record(family=6, proto=6, src=ipaddress.ip_address("fd00::1").packed,
                                  dst=ipaddress.ip_address("fd00::2").packed))
    assert "[fd00::1]:5353 -> [fd00::2]:53" in v6port.describe()


def test_filters():
    ev = events.decode(record(), resolve={3: "pod-a"}.get)
    assert events.matches(ev)
    assert events.matches(ev, endpoint="pod-a", reasons=("policy_deny", "malformed"))
    assert not events.matches(ev, endpoint="pod-b")
    assert not events.matches(ev, reasons=("policy_default",))


def test_record_header_bits():
    assert events.BPF_RINGBUF_BUSY_BIT == 1 << 31 and events.BPF_RINGBUF_DISCARD_BIT == 1 << 30
    assert struct.calcsize("=Q") == 8 and events.BPF_RINGBUF_HDR_SZ == 8
