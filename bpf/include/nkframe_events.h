/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Drop events: a compact record per dropped packet in a BPF ring buffer, for ``nkframe events``
 * (nkframe/events.py reads the same bytes).  Any nkframe program may report with
 * nk_event_drop(); the maps are pinned once per node (<root>/globals/maps/) and shared.
 *
 * Cost control: an event is only written on a drop, and at most NK_EVENTS_PER_CPU_PER_SEC per
 * CPU per second (a fixed one-second window per CPU on the coarse clock: a per-CPU array lookup
 * and a compare, no lock, so a flood of drops on many CPUs never serialises on the ring's
 * lock); beyond that, and when the ring is full because nobody reads it, the event is not
 * written and counted in nk_ev_lost instead.  The packet's verdict never depends on any of
 * this.  bpf_ktime_get_coarse_ns() needs Linux 5.11.
 */
#ifndef NKFRAME_EVENTS_H
#define NKFRAME_EVENTS_H

#include "nkframe_common.h"

#define NK_EVENTS_RING_SIZE (256 * 1024) /* bytes; a power of two multiple of the page size */
#define NK_EVENTS_PER_CPU_PER_SEC 5000
#define NK_EVENT_NO_SLOT 0xffffffff
#define NK_EVENT_NO_RULE 0xffffffff

enum nk_event_kind {
	NK_EVENT_DROP = 1,
};

/* Where the program that reported runs. */
enum nk_event_hook {
	NK_EVENT_HOOK_UNKNOWN = 0,
	NK_EVENT_HOOK_FROM_POD = 1, /* packets an endpoint sends */
	NK_EVENT_HOOK_TO_POD = 2,   /* packets to an endpoint, on its node-side device */
	NK_EVENT_HOOK_UPLINK = 3,   /* the node's uplink, ingress */
};

/* nk_ev_lost slots */
enum nk_event_lost {
	NK_EVENT_LOST_RING_FULL = 0,
	NK_EVENT_LOST_RATE = 1,
	NK_EVENT_LOST_MAX = 2,
};

struct nk_event {
	__u64 ts_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex; /* skb->ifindex where the program ran */
	__u32 slot;    /* policy endpoint slot, or NK_EVENT_NO_SLOT */
	__u32 rule_id; /* the deciding rule, or NK_EVENT_NO_RULE */
	__u32 len;     /* skb->len */
	__u16 kind;    /* enum nk_event_kind */
	__u8 reason;   /* enum nk_drop_reason */
	__u8 hook;     /* enum nk_event_hook */
	__u8 family;   /* 4 or 6; 0 when the packet was not parsed that far */
	__u8 proto;    /* IP protocol number (after IPv6 extension headers) */
	__u16 sport;   /* host order; 0 when unknown (not TCP/UDP, a later fragment) */
	__u16 dport;
	__u16 _pad;
	__u32 src[4];  /* network order; IPv4 uses src[0] */
	__u32 dst[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NK_EVENTS_RING_SIZE);
} nk_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, NK_EVENT_LOST_MAX);
} nk_ev_lost SEC(".maps");

struct nk_event_window {
	__u64 start_ns;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_event_window);
	__uint(max_entries, 1);
} nk_ev_rate SEC(".maps");

static __always_inline void nk_event_lost(__u32 why)
{
	__u64 *n = bpf_map_lookup_elem(&nk_ev_lost, &why);

	if (n)
		*n += 1; /* per-CPU: no other CPU writes this copy */
}

/* Report a dropped packet.  pkt may be partly filled (a malformed packet): what the parser got
 * to is reported, the rest stays zero. */
static __always_inline void nk_event_drop(struct __sk_buff *skb, __u32 hook, __u32 reason,
					  __u32 slot, __u32 rule_id, const struct nk_pkt *pkt)
{
	__u32 zero = 0;
	/* The window runs on the coarse clock (the tick's time, no clock-source read): a drop over
	 * budget costs two per-CPU lookups and a compare. */
	__u64 coarse = bpf_ktime_get_coarse_ns();
	struct nk_event_window *w = bpf_map_lookup_elem(&nk_ev_rate, &zero);

	if (!w)
		return;
	if (coarse - w->start_ns >= 1000000000ULL) {
		w->start_ns = coarse;
		w->count = 0;
	}
	if (w->count >= NK_EVENTS_PER_CPU_PER_SEC) {
		nk_event_lost(NK_EVENT_LOST_RATE);
		return;
	}
	w->count += 1;

	struct nk_event *e = bpf_ringbuf_reserve(&nk_events, sizeof(*e), 0);
	if (!e) {
		nk_event_lost(NK_EVENT_LOST_RING_FULL);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->slot = slot;
	e->rule_id = rule_id;
	e->len = skb->len;
	e->kind = NK_EVENT_DROP;
	e->reason = reason;
	e->hook = hook;
	e->family = pkt->family;
	e->proto = pkt->proto;
	e->sport = pkt->sport < 0x10000 ? pkt->sport : 0;
	e->dport = pkt->dport < 0x10000 ? pkt->dport : 0;
	e->_pad = 0;
	__builtin_memcpy(e->src, pkt->src, 16);
	__builtin_memcpy(e->dst, pkt->dst, 16);
	bpf_ringbuf_submit(e, 0);
}

#endif /* NKFRAME_EVENTS_H */
