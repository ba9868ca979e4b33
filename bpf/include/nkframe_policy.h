/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts of the L3/L4 policy, shared by bpf/policy.c and
 * plugins/nkframe_policy/layout.py (which packs the same bytes with struct; a unit test checks
 * the numbers below against it).
 *
 * Lookup path of one packet (slot = ENDPOINT_SLOT, set in .rodata before load):
 *   gen   = nk_pol_gen[slot]                     0 = no policy (drop), else 1 or 2
 *   table = nk_pol_head[slot * 2 + gen - 1].t[direction][family]
 *   id    = nk_policy_find(table, address)       longest prefix, else table->fallback
 *   ent   = nk_pol_ent[id]
 *   rule  = first of nk_pol_ruledef[ent->rules[0..count)] matching proto/port (denies are
 *           stored first), else ent->default_action
 * Each entry carries every rule whose CIDR contains the entry's prefix (flattened at compile
 * time) and the direction's default, so one match and a scan of at most NK_POLICY_MAX_RULES
 * decide.  nk_policy_find() probes the table's prefix lengths, longest first, in a hash table
 * of buckets (plugins/nkframe_policy/tables.py builds them and explains the layout); every map
 * on the path is an array, whose lookups the verifier inlines.
 *
 * A generation's head, buckets and entries are written before nk_pol_gen points at it and are
 * never changed while it is active: a change writes the other generation and flips.
 */
#ifndef NKFRAME_POLICY_H
#define NKFRAME_POLICY_H

#include <linux/types.h>

#include "nkframe_common.h"
#include "nkframe_events.h"

#define NK_POLICY_MAX_RULES 16          /* rules covering one prefix (flattened) */
#define NK_POLICY_ENTRIES 131072        /* entries (prefixes), all endpoints, both generations */
#define NK_POLICY_TAB4_BUCKETS 131072   /* IPv4 hash buckets, all tables */
#define NK_POLICY_TAB6_BUCKETS 65536    /* IPv6 hash buckets, all tables */
#define NK_POLICY_BUCKET_SLOTS 4        /* keys per bucket */
#define NK_POLICY_MAX_LENS 16           /* prefix lengths probed per table */
#define NK_POLICY_RULE_SLOTS 65536      /* rules (definitions and counters), all endpoints */
#define NK_POLICY_MAX_ENDPOINTS 1024    /* endpoint slots */
#define NK_POLICY_ENDPOINT_ID_LEN 64    /* nk_pol_owner: endpoint id string, NUL padded */
#define NK_POLICY_MAX_ADDRS 16384       /* nk_pol_addrs: endpoint addresses, all endpoints */
#define NK_POLICY_HASH_K1 0x9E3779B97F4A7C15ULL
#define NK_POLICY_HASH_K2 0xBF58476D1CE4E5B9ULL
#define NK_POLICY_ENTRY_BITS 24         /* slot meta: prefix length << 24 | entry id */

enum nk_policy_dir {
	NK_DIR_INGRESS = 0, /* to the endpoint: rules match the source address */
	NK_DIR_EGRESS = 1,  /* from the endpoint: rules match the destination address */
};

enum nk_policy_action {
	NK_ACT_ALLOW = 1,
	NK_ACT_DENY = 2,
};

/* One table: the prefixes of one (generation, direction, family) of one endpoint. */
struct nk_policy_table {
	__u32 base;     /* first bucket in nk_pol_tab4 / nk_pol_tab6 */
	__u32 mask;     /* buckets - 1 (a power of two) */
	__u32 fallback; /* entry id for addresses no prefix covers (the catch-all's entry) */
	__u32 first;    /* the table's entries are ids first .. first + count - 1 */
	__u32 count;    /*   (user space reads them back from there) */
	__u8 nlens;
	__u8 lens[NK_POLICY_MAX_LENS]; /* prefix lengths probed, longest first */
	__u8 _pad[3];
};

/* nk_pol_head: one per (slot, generation), index slot * 2 + generation - 1. */
struct nk_policy_head {
	struct nk_policy_table t[2][2]; /* [enum nk_policy_dir][0: IPv4, 1: IPv6] */
};

/* Hash table slots: an empty slot has meta 0 (no prefix length is 0: the catch-all is the
 * fallback).  A bucket fills its slots in order. */
struct nk_policy_slot4 {
	__u32 addr; /* network order, masked to the length */
	__u32 meta; /* prefix length << NK_POLICY_ENTRY_BITS | entry id */
};

struct nk_policy_bucket4 {
	struct nk_policy_slot4 s[NK_POLICY_BUCKET_SLOTS];
};

struct nk_policy_slot6 {
	__u32 addr[4];
	__u32 meta;
};

struct nk_policy_bucket6 {
	struct nk_policy_slot6 s[NK_POLICY_BUCKET_SLOTS];
};

/* nk_pol_ruledef: what a rule matches, by rule id (an id belongs to one rule of one endpoint's
 * direction as long as it is in use, so this never changes under a live generation). */
struct nk_policy_rule {
	__u32 port_lo;  /* destination ports, host order; a rule without ports has */
	__u32 port_hi;  /*   0..NK_PORT_UNKNOWN so it also matches "ports unknown" */
	__u8 proto;     /* IP protocol number, 0 = any */
	__u8 action;    /* enum nk_policy_action */
	__u8 family;    /* the rule's CIDR (read back by user space; the programs skip it) */
	__u8 prefixlen;
	__u8 addr[16];
};

struct nk_policy_entry {
	__u8 count;
	__u8 default_action; /* enum nk_policy_action, of this entry's direction */
	__u16 _pad;
	__u16 rules[NK_POLICY_MAX_RULES]; /* rule ids: denies first, then allows */
};

/* nk_pol_owner: which endpoint holds a slot (user space bookkeeping; the programs never read
 * it).  An empty id means the slot is free. */
struct nk_policy_owner {
	char endpoint_id[NK_POLICY_ENDPOINT_ID_LEN];
};

enum nk_policy_stat {
	NK_PSTAT_ALLOW_RULE = 0,
	NK_PSTAT_ALLOW_DEFAULT = 1,
	NK_PSTAT_DENY_RULE = 2,
	NK_PSTAT_DENY_DEFAULT = 3,
	NK_PSTAT_MALFORMED = 4,
	NK_PSTAT_NON_IP = 5,
	NK_PSTAT_MAX = 6,
};

struct nk_policy_stats {
	struct nk_counter dir[2][NK_PSTAT_MAX];
};

/* nk_pol_addrs key: one endpoint address (the uplink program finds the endpoint a packet goes
 * to by its destination).  IPv4 uses addr[0], the rest stays zero. */
struct nk_policy_addr_key {
	__u32 family;  /* 4 or 6 */
	__u32 addr[4]; /* network order */
};

/* ---- maps (shared by every program of the object, pinned in the engine's global map dir) ---- */

/* Active generation per slot: 0 = no policy, else 1 or 2 (double buffer).  An array, so the
 * program reads it with one aligned 4-byte load; user space flips between 1 and 2, values that
 * differ in one byte only, so even a byte-wise copy in the kernel cannot show a mix. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, NK_POLICY_MAX_ENDPOINTS);
} nk_pol_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_head);
	__uint(max_entries, NK_POLICY_MAX_ENDPOINTS * 2);
} nk_pol_head SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_bucket4);
	__uint(max_entries, NK_POLICY_TAB4_BUCKETS);
} nk_pol_tab4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_bucket6);
	__uint(max_entries, NK_POLICY_TAB6_BUCKETS);
} nk_pol_tab6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_entry);
	__uint(max_entries, NK_POLICY_ENTRIES);
} nk_pol_ent SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_rule);
	__uint(max_entries, NK_POLICY_RULE_SLOTS);
} nk_pol_ruledef SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_counter);
	__uint(max_entries, NK_POLICY_RULE_SLOTS);
} nk_pol_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_stats);
	__uint(max_entries, NK_POLICY_MAX_ENDPOINTS);
} nk_pol_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_counter);
	__uint(max_entries, NK_DROP_MAX);
} nk_pol_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_policy_owner);
	__uint(max_entries, NK_POLICY_MAX_ENDPOINTS);
} nk_pol_owner SEC(".maps");

/* Change counter, bumped by every policy change (user space only): another process holding a
 * cached view of the maps sees it moved and reads them again. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} nk_pol_meta SEC(".maps");

/* Endpoint address -> slot, for the uplink program. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nk_policy_addr_key);
	__type(value, __u32);
	__uint(max_entries, NK_POLICY_MAX_ADDRS);
} nk_pol_addrs SEC(".maps");

/* ---- the judgement, shared by the endpoint programs and the uplink program ---- */

/* Count a drop by reason and report it to ``nkframe events`` (nkframe_events.h). */
static __always_inline int nk_policy_drop(struct __sk_buff *skb, __u32 reason, __u32 hook,
					  __u32 slot, __u32 rule_id, const struct nk_pkt *pkt)
{
	struct nk_counter *c = bpf_map_lookup_elem(&nk_pol_drops, &reason);

	if (c)
		nk_count(c, skb->len);
	nk_event_drop(skb, hook, reason, slot, rule_id, pkt);
	return NK_SHOT;
}

static __always_inline void nk_policy_stat(struct nk_policy_stats *st, __u32 dir, __u32 which,
					   __u32 len)
{
	if (st && dir < 2 && which < NK_PSTAT_MAX)
		nk_count(&st->dir[dir][which], len);
}

/* nk_parse(), and once more after pulling the headers into the linear area when they reach
 * into paged data. */
static __always_inline int nk_policy_parse(struct __sk_buff *skb, __u32 l3_off, struct nk_pkt *pkt)
{
	int res = nk_parse(skb, l3_off, pkt);

	if (res == NK_PARSE_SHORT) {
		__u32 len = skb->len < NK_PULL_LEN ? skb->len : NK_PULL_LEN;

		bpf_skb_pull_data(skb, len);
		res = nk_parse(skb, l3_off, pkt);
		if (res == NK_PARSE_SHORT)
			res = NK_PARSE_MALFORMED;
	}
	return res;
}

/* The mask of the first ``bits`` bits of a network-order word, as loaded (0 <= bits <= 32). */
static __always_inline __u32 nk_policy_mask32(__u32 bits)
{
	if (bits >= 32)
		return 0xffffffff;
	if (bits == 0)
		return 0;
	return bpf_htonl(0xffffffffU << (32 - bits));
}

static __always_inline __u32 nk_policy_bits(__u32 len, __u32 word)
{
	return len > word * 32 ? len - word * 32 : 0;
}

/* The hash of tables.py's key_hash(): multiply-xor over the masked address words. */
static __always_inline __u64 nk_policy_mix(__u64 h, __u32 w)
{
	return (h ^ w) * NK_POLICY_HASH_K2;
}

static __always_inline __u64 nk_policy_final(__u64 h)
{
	return h ^ (h >> 31);
}

#define NK_POLICY_META(len, id) (((__u32)(len) << NK_POLICY_ENTRY_BITS) | (id))
#define NK_POLICY_ID(meta) ((meta) & ((1U << NK_POLICY_ENTRY_BITS) - 1))

/* The entry of the longest prefix of table t containing the IPv4 address, else t->fallback. */
static __always_inline __u32 nk_policy_find4(const struct nk_policy_table *t, __u32 addr)
{
	__u32 n = t->nlens, base = t->base, mask = t->mask;
	int i, b, j;

	for (i = 0; i < NK_POLICY_MAX_LENS; i++) {
		if (i >= n)
			break;
		__u32 len = t->lens[i];
		__u32 w = addr & nk_policy_mask32(len);
		__u32 meta = NK_POLICY_META(len, 0);
		__u64 h = nk_policy_final(nk_policy_mix((__u64)len * NK_POLICY_HASH_K1, w));
		__u32 idx = base + ((__u32)h & mask);

		for (b = 0; b < 2; b++) {
			struct nk_policy_bucket4 *bk = bpf_map_lookup_elem(&nk_pol_tab4, &idx);
			if (!bk)
				break;
#pragma unroll
			for (j = 0; j < NK_POLICY_BUCKET_SLOTS; j++) {
				__u32 m = bk->s[j].meta;
				if (bk->s[j].addr == w && (m & ~((1U << NK_POLICY_ENTRY_BITS) - 1)) == meta)
					return NK_POLICY_ID(m);
			}
			/* A key is in its secondary bucket only if its primary is full. */
			if (!bk->s[NK_POLICY_BUCKET_SLOTS - 1].meta)
				break;
			idx = base + ((__u32)(h >> 32) & mask);
		}
	}
	return t->fallback;
}

static __always_inline __u32 nk_policy_find6(const struct nk_policy_table *t, const __u32 *addr)
{
	__u32 n = t->nlens, base = t->base, mask = t->mask;
	int i, b, j;

	for (i = 0; i < NK_POLICY_MAX_LENS; i++) {
		if (i >= n)
			break;
		__u32 len = t->lens[i];
		__u32 w0 = addr[0] & nk_policy_mask32(len);
		__u32 w1 = addr[1] & nk_policy_mask32(nk_policy_bits(len, 1));
		__u32 w2 = addr[2] & nk_policy_mask32(nk_policy_bits(len, 2));
		__u32 w3 = addr[3] & nk_policy_mask32(nk_policy_bits(len, 3));
		__u32 meta = NK_POLICY_META(len, 0);
		__u64 h = (__u64)len * NK_POLICY_HASH_K1;
		h = nk_policy_mix(h, w0);
		h = nk_policy_mix(h, w1);
		h = nk_policy_mix(h, w2);
		h = nk_policy_final(nk_policy_mix(h, w3));
		__u32 idx = base + ((__u32)h & mask);

		for (b = 0; b < 2; b++) {
			struct nk_policy_bucket6 *bk = bpf_map_lookup_elem(&nk_pol_tab6, &idx);
			if (!bk)
				break;
#pragma unroll
			for (j = 0; j < NK_POLICY_BUCKET_SLOTS; j++) {
				struct nk_policy_slot6 *sl = &bk->s[j];
				__u32 m = sl->meta;
				if (sl->addr[0] == w0 && sl->addr[1] == w1 && sl->addr[2] == w2 &&
				    sl->addr[3] == w3 && (m & ~((1U << NK_POLICY_ENTRY_BITS) - 1)) == meta)
					return NK_POLICY_ID(m);
			}
			if (!bk->s[NK_POLICY_BUCKET_SLOTS - 1].meta)
				break;
			idx = base + ((__u32)(h >> 32) & mask);
		}
	}
	return t->fallback;
}

/* The verdict of endpoint ``slot``'s policy in direction ``dir`` for a parsed packet (``res`` is
 * what nk_policy_parse() returned): NK_CONTINUE or NK_SHOT, counted; drops are reported as
 * events from ``hook`` (enum nk_event_hook). */
static __always_inline int nk_policy_decide(struct __sk_buff *skb, __u32 slot, __u32 dir,
					    __u32 hook, const struct nk_pkt *pkt, int res)
{
	__u32 *genp = bpf_map_lookup_elem(&nk_pol_gen, &slot);
	__u32 gen = genp ? *(volatile __u32 *)genp : 0;
	struct nk_policy_stats *st = bpf_map_lookup_elem(&nk_pol_stats, &slot);

	if (res == NK_PARSE_NON_IP) {
		nk_policy_stat(st, dir, NK_PSTAT_NON_IP, skb->len);
		return NK_CONTINUE;
	}
	if (gen == 0)
		return nk_policy_drop(skb, NK_DROP_NO_POLICY, hook, slot, NK_EVENT_NO_RULE, pkt);
	if (res != NK_PARSE_IP) {
		nk_policy_stat(st, dir, NK_PSTAT_MALFORMED, skb->len);
		return nk_policy_drop(skb, NK_DROP_MALFORMED, hook, slot, NK_EVENT_NO_RULE, pkt);
	}

	__u32 hk = slot * 2 + gen - 1;
	struct nk_policy_head *head = bpf_map_lookup_elem(&nk_pol_head, &hk);
	if (!head || dir > 1)
		return nk_policy_drop(skb, NK_DROP_NO_POLICY, hook, slot, NK_EVENT_NO_RULE, pkt);
	const __u32 *addr = dir == NK_DIR_INGRESS ? pkt->src : pkt->dst;
	__u32 id = pkt->family == 4 ? nk_policy_find4(&head->t[dir][0], addr[0])
				    : nk_policy_find6(&head->t[dir][1], addr);
	struct nk_policy_entry *ent = bpf_map_lookup_elem(&nk_pol_ent, &id);
	if (!ent)
		/* Every table has a fallback entry, so a miss means user space broke the protocol:
		 * fail closed. */
		return nk_policy_drop(skb, NK_DROP_NO_POLICY, hook, slot, NK_EVENT_NO_RULE, pkt);

	__u32 count = ent->count;
	int i;
	/* A bounded loop (5.3+ verifiers walk it; 6.1 is the oldest kernel we run on). */
	for (i = 0; i < NK_POLICY_MAX_RULES; i++) {
		if (i >= count)
			break;
		__u32 rid = ent->rules[i];
		struct nk_policy_rule *r = bpf_map_lookup_elem(&nk_pol_ruledef, &rid);
		if (!r)
			break;
		if (r->proto && r->proto != pkt->proto)
			continue;
		if (pkt->dport < r->port_lo || pkt->dport > r->port_hi)
			continue;
		/* Denies are stored before allows, so the first match decides. */
		struct nk_counter *c = bpf_map_lookup_elem(&nk_pol_rules, &rid);
		if (c)
			nk_count(c, skb->len);
		if (r->action == NK_ACT_DENY) {
			nk_policy_stat(st, dir, NK_PSTAT_DENY_RULE, skb->len);
			return nk_policy_drop(skb, NK_DROP_POLICY_DENY, hook, slot, rid, pkt);
		}
		nk_policy_stat(st, dir, NK_PSTAT_ALLOW_RULE, skb->len);
		return NK_CONTINUE;
	}
	if (ent->default_action == NK_ACT_ALLOW) {
		nk_policy_stat(st, dir, NK_PSTAT_ALLOW_DEFAULT, skb->len);
		return NK_CONTINUE;
	}
	nk_policy_stat(st, dir, NK_PSTAT_DENY_DEFAULT, skb->len);
	return nk_policy_drop(skb, NK_DROP_POLICY_DEFAULT, hook, slot, NK_EVENT_NO_RULE, pkt);
}

/* An endpoint's program: its own slot, set in .rodata before load. */
static __always_inline int nk_policy_judge(struct __sk_buff *skb, __u32 slot, __u32 dir,
					   __u32 l3_off)
{
	struct nk_pkt pkt = {};
	int res = nk_policy_parse(skb, l3_off, &pkt);

	return nk_policy_decide(skb, slot, dir,
				dir == NK_DIR_EGRESS ? NK_EVENT_HOOK_FROM_POD : NK_EVENT_HOOK_TO_POD,
				&pkt, res);
}

/* The destination address of an Ethernet frame as the uplink program reads it to find the
 * endpoint: an IPv4 header of at least 20 bytes with version 4, or an IPv6 header of 40 bytes
 * with version 6, in the linear data.  Returns 0 and fills key, or -1 (no readable destination).
 * reference.destination() is the same rule in Python. */
static __always_inline int nk_policy_daddr(struct __sk_buff *skb, struct nk_policy_addr_key *key)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *p = data + NK_ETH_HLEN;

	if (NK_NEED(data, NK_ETH_HLEN, end))
		return -1;
	__u16 ethertype = bpf_ntohs(*(__u16 *)(data + 12));
	if (ethertype == NK_ETH_P_IP) {
		if (NK_NEED(p, 20, end) || (p[0] >> 4) != 4)
			return -1;
		key->family = 4;
		key->addr[0] = *(__u32 *)(p + 16);
		return 0;
	}
	if (ethertype == NK_ETH_P_IPV6) {
		if (NK_NEED(p, 40, end) || (p[0] >> 4) != 6)
			return -1;
		key->family = 6;
		__builtin_memcpy(key->addr, p + 24, 16);
		return 0;
	}
	return -1;
}

/* Uplink ingress: a packet for a local endpoint with a policy is judged by that endpoint's
 * ingress policy, exactly as its to-pod program would judge it (the L3 datapath may deliver
 * it with bpf_redirect_peer(), which skips the to-pod hook).  Everything else continues. */
static __always_inline int nk_policy_uplink(struct __sk_buff *skb)
{
	struct nk_policy_addr_key key = {};
	struct nk_pkt pkt = {};
	/* Parse first: it pulls headers that reach into paged data into the linear area. */
	int res = nk_policy_parse(skb, NK_ETH_HLEN, &pkt);

	if (res == NK_PARSE_NON_IP || nk_policy_daddr(skb, &key))
		return NK_CONTINUE;
	__u32 *slot = bpf_map_lookup_elem(&nk_pol_addrs, &key);
	if (!slot)
		return NK_CONTINUE;
	return nk_policy_decide(skb, *slot, NK_DIR_INGRESS, NK_EVENT_HOOK_UPLINK, &pkt, res);
}

#endif /* NKFRAME_POLICY_H */
