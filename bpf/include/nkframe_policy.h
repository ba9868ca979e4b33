/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts of the L3/L4 policy, shared by bpf/policy.c and
 * plugins/nkframe_policy/layout.py (which packs the same bytes with struct; a unit test checks
 * the numbers below against it).
 *
 * Lookup path of one packet (slot = ENDPOINT_SLOT, set in .rodata before load):
 *   gen  = nk_pol_gen[slot]                          0 = no policy (drop), else 1 or 2
 *   ent  = nk_pol_lpm[{slot, gen, dir, family, address}]   longest prefix
 *   rule = first of ent->rules[0..count) matching proto/port (denies are stored first),
 *          else ent->default_action
 * Each LPM entry carries every rule whose CIDR contains the entry's prefix (flattened at compile
 * time) and the direction's default; a /0 entry per family and direction is always present, so
 * one lookup and a scan of at most NK_POLICY_MAX_RULES decide.
 */
#ifndef NKFRAME_POLICY_H
#define NKFRAME_POLICY_H

#include <linux/types.h>

#include "nkframe_common.h"

#define NK_POLICY_MAX_RULES 16          /* rules covering one prefix (flattened) */
#define NK_POLICY_LPM_ENTRIES 131072    /* prefixes, all endpoints, both generations */
#define NK_POLICY_RULE_SLOTS 65536      /* per-rule counters, all endpoints */
#define NK_POLICY_MAX_ENDPOINTS 1024    /* endpoint stats slots */
#define NK_POLICY_KEY_FIXED_BITS 96     /* slot + generation + direction/family/pad */
#define NK_POLICY_ENDPOINT_ID_LEN 64    /* nk_pol_owner: endpoint id string, NUL padded */
#define NK_POLICY_MAX_ADDRS 16384       /* nk_pol_addrs: endpoint addresses, all endpoints */

enum nk_policy_dir {
	NK_DIR_INGRESS = 0, /* to the endpoint: rules match the source address */
	NK_DIR_EGRESS = 1,  /* from the endpoint: rules match the destination address */
};

enum nk_policy_action {
	NK_ACT_ALLOW = 1,
	NK_ACT_DENY = 2,
};

/* nk_policy_rule.flags */
#define NK_RULE_OWN 0x01 /* the entry's prefix is this rule's own CIDR (for reading back) */

/* LPM trie key.  prefixlen counts bits after itself: NK_POLICY_KEY_FIXED_BITS + CIDR length. */
struct nk_policy_key {
	__u32 prefixlen;
	__u32 slot;        /* endpoint slot; host order (all 96 fixed bits match exactly) */
	__u32 generation;
	__u8 direction;
	__u8 family;       /* 4 or 6 */
	__u8 _pad[2];
	__u8 addr[16];     /* IPv4 uses the first 4 bytes */
};

struct nk_policy_rule {
	__u32 rule_id;  /* index into nk_policy_rule_stats */
	__u32 port_lo;  /* destination ports, host order; a rule without ports has */
	__u32 port_hi;  /*   0..NK_PORT_UNKNOWN so it also matches "ports unknown" */
	__u8 proto;     /* IP protocol number, 0 = any */
	__u8 action;    /* enum nk_policy_action */
	__u8 flags;
	__u8 _pad;
};

struct nk_policy_entry {
	__u8 count;
	__u8 default_action; /* enum nk_policy_action, of this entry's direction */
	__u8 _pad[6];
	struct nk_policy_rule rules[NK_POLICY_MAX_RULES];
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
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__type(key, struct nk_policy_key);
	__type(value, struct nk_policy_entry);
	__uint(max_entries, NK_POLICY_LPM_ENTRIES);
} nk_pol_lpm SEC(".maps");

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

static __always_inline int nk_policy_drop(struct __sk_buff *skb, __u32 reason)
{
	struct nk_counter *c = bpf_map_lookup_elem(&nk_pol_drops, &reason);

	if (c)
		nk_count(c, skb->len);
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

/* The verdict of endpoint ``slot``'s policy in direction ``dir`` for a parsed packet (``res`` is
 * what nk_policy_parse() returned): NK_CONTINUE or NK_SHOT, counted. */
static __always_inline int nk_policy_decide(struct __sk_buff *skb, __u32 slot, __u32 dir,
					    const struct nk_pkt *pkt, int res)
{
	__u32 *genp = bpf_map_lookup_elem(&nk_pol_gen, &slot);
	__u32 gen = genp ? *(volatile __u32 *)genp : 0;
	struct nk_policy_stats *st = bpf_map_lookup_elem(&nk_pol_stats, &slot);

	if (res == NK_PARSE_NON_IP) {
		nk_policy_stat(st, dir, NK_PSTAT_NON_IP, skb->len);
		return NK_CONTINUE;
	}
	if (gen == 0)
		return nk_policy_drop(skb, NK_DROP_NO_POLICY);
	if (res != NK_PARSE_IP) {
		nk_policy_stat(st, dir, NK_PSTAT_MALFORMED, skb->len);
		return nk_policy_drop(skb, NK_DROP_MALFORMED);
	}

	struct nk_policy_key key = {
		.prefixlen = NK_POLICY_KEY_FIXED_BITS + (pkt->family == 4 ? 32 : 128),
		.slot = slot,
		.generation = gen,
		.direction = dir,
		.family = pkt->family,
	};
	if (dir == NK_DIR_INGRESS)
		__builtin_memcpy(key.addr, pkt->src, 16);
	else
		__builtin_memcpy(key.addr, pkt->dst, 16);

	struct nk_policy_entry *ent = bpf_map_lookup_elem(&nk_pol_lpm, &key);
	if (!ent)
		/* Every generation has /0 entries, so a miss means user space broke the protocol
		 * (or the generation is being torn down): fail closed. */
		return nk_policy_drop(skb, NK_DROP_NO_POLICY);

	__u32 count = ent->count;
	int i;
	/* A bounded loop (5.3+ verifiers walk it; 6.1 is the oldest kernel we run on). */
	for (i = 0; i < NK_POLICY_MAX_RULES; i++) {
		if (i >= count)
			break;
		struct nk_policy_rule *r = &ent->rules[i];
		if (r->proto && r->proto != pkt->proto)
			continue;
		if (pkt->dport < r->port_lo || pkt->dport > r->port_hi)
			continue;
		/* Denies are stored before allows, so the first match decides. */
		__u32 id = r->rule_id;
		struct nk_counter *c = bpf_map_lookup_elem(&nk_pol_rules, &id);
		if (c)
			nk_count(c, skb->len);
		if (r->action == NK_ACT_DENY) {
			nk_policy_stat(st, dir, NK_PSTAT_DENY_RULE, skb->len);
			return nk_policy_drop(skb, NK_DROP_POLICY_DENY);
		}
		nk_policy_stat(st, dir, NK_PSTAT_ALLOW_RULE, skb->len);
		return NK_CONTINUE;
	}
	if (ent->default_action == NK_ACT_ALLOW) {
		nk_policy_stat(st, dir, NK_PSTAT_ALLOW_DEFAULT, skb->len);
		return NK_CONTINUE;
	}
	nk_policy_stat(st, dir, NK_PSTAT_DENY_DEFAULT, skb->len);
	return nk_policy_drop(skb, NK_DROP_POLICY_DEFAULT);
}

/* An endpoint's program: its own slot, set in .rodata before load. */
static __always_inline int nk_policy_judge(struct __sk_buff *skb, __u32 slot, __u32 dir,
					   __u32 l3_off)
{
	struct nk_pkt pkt = {};
	int res = nk_policy_parse(skb, l3_off, &pkt);

	return nk_policy_decide(skb, slot, dir, &pkt, res);
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
	return nk_policy_decide(skb, *slot, NK_DIR_INGRESS, &pkt, res);
}

#endif /* NKFRAME_POLICY_H */
