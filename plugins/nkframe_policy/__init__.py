"""nkframe's L3/L4 policy plugin: allow/deny rules per endpoint, ingress and egress, IPv4/IPv6.

The contract
============

A :class:`Policy` belongs to one endpoint and has, per direction, a list of rules and a default
action (``allow`` or ``deny``):

* **ingress** rules judge packets going *to* the endpoint and match the packet's **source**
  address; **egress** rules judge packets the endpoint *sends* and match the **destination**.
* A rule has an action (``allow``/``deny``), a CIDR (IPv4 or IPv6), a protocol (``tcp``, ``udp``,
  ``icmp`` — ICMP for IPv4, ICMPv6 for IPv6 — or ``any``) and, for tcp/udp only, a destination
  port range ``lo..hi`` (absent = all ports).
* **Verdict**: among the rules whose CIDR contains the address and whose protocol and port match,
  any deny wins; otherwise any allow allows; otherwise the default applies.  The rule reported
  (and counted) is the first matching deny in policy order, else the first matching allow.
* **Non-IP** packets (ARP, 802.1Q-tagged frames, …) are passed on untouched ("continue").
* **Malformed** packets are dropped with reason ``malformed``: an IP header shorter than its
  minimum or than its IHL, a version nibble that contradicts the Ethernet type, an IPv6 chain
  with more than 8 extension headers or a truncated one, or an L4 header shorter than TCP 20,
  UDP 8, ICMP 8 / ICMPv6 4 bytes (only checked when ports are known, see next point).
* **Fragments**: a fragment after the first (IPv4 offset != 0, or an IPv6 fragment header with
  offset != 0) has no L4 header, so its ports are *unknown*; its protocol is the one the IP
  header (or the fragment header) names.  With unknown ports only rules with proto ``any`` or
  with the right protocol and *no port range* match.  The first fragment is parsed like any
  packet (a first fragment too short for its L4 header is malformed).  Packets of protocols
  other than TCP/UDP also have unknown ports.
* IPv6 extension headers stepped over: hop-by-hop (0), routing (43), destination options (60),
  AH (51) and fragment (44).  ESP (50) and anything else ends the chain and is the protocol.
* An endpoint created without a policy has no policy programs and passes everything.  The
  policy *programs* fail closed: one whose endpoint's slot holds no compiled policy drops IP
  packets with reason ``no_policy``.  docs/policy.md is the user's statement of this contract.
* The policy is stateless: replies are judged like any other packet.

Allowed packets return -1 ("continue": TC_ACT_UNSPEC / TCX_NEXT / NETKIT_NEXT) so the next
program in the chain runs; denied and malformed ones return TC_ACT_SHOT (2).

Where it is enforced: ``policy_egress`` on what the endpoint sends, ``policy_ingress`` on what
the node-side device delivers to it, and ``policy_uplink`` on the node's uplink for packets
from outside the node (the datapath may deliver those with ``bpf_redirect_peer()``, past the
node-side device).  The uplink program finds the endpoint by the packet's destination address
(an IPv4 header of at least 20 bytes with version 4, or a 40-byte IPv6 header with version 6)
and judges exactly as that endpoint's ``policy_ingress`` would; a packet to no endpoint with a
policy slot, and every non-IP frame, continues untouched there.

Every drop is also reported to ``nkframe events`` (``bpf/include/nkframe_events.h``,
:mod:`nkframe.events`): endpoint, hook, reason, 5-tuple and the deciding rule.

Rejected input (:class:`PolicyError`, an :class:`nkframe.errors.InvalidSpec`, raised before
anything in the kernel changes): malformed CIDRs or host bits set, ports on non-tcp/udp rules,
upside-down or out-of-range port ranges, duplicate rules, rules on the *same* CIDR whose protocol
and ports overlap with different actions, more than 16 rules covering one prefix, and policies
that do not fit the maps.

How it runs
===========

See :mod:`.compile` (flattening into entries: the rules covering each prefix), :mod:`.tables`
(per endpoint, direction and IP version a hash table probed one prefix length at a time,
longest first: a few array lookups per packet instead of an LPM trie walk), :mod:`.maps`
(generation double-buffering, regions, counters) and ``bpf/include/nkframe_policy.h`` (layouts
and limits).  :mod:`.reference` is the same semantics written directly, used by the tests to
check every BPF verdict; :mod:`.cost` measures the per-packet cost.
"""

from __future__ import annotations

from .compile import CompiledPolicy, Entry, EntryRule, compile_policy
from .model import Action, Direction, Policy, PolicyError, PortRange, Proto, Rule
from .reference import Verdict, decide, parse, verdict

__all__ = [
    "Action",
    "CompiledPolicy",
    "Direction",
    "Entry",
    "EntryRule",
    "Policy",
    "PolicyError",
    "PolicyMaps",
    "PortRange",
    "Proto",
    "Rule",
    "Verdict",
    "compile_policy",
    "decide",
    "parse",
    "verdict",
]


def __getattr__(name: str):
    # The map layer needs the libbpf bindings; importing it lazily keeps the model, compiler and
    # reference evaluator usable (and unit-testable) without them.
    if name in ("PolicyMaps", "PolicyCounters"):
        from . import maps

        return getattr(maps, name)
    raise AttributeError(name)
