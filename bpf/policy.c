// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* L3/L4 allow/deny policy per endpoint, ingress and egress, IPv4 and IPv6.
 *
 * The semantics are written down in plugins/nkframe_policy/__init__.py and implemented a second
 * time, directly, by plugins/nkframe_policy/reference.py; tests compare the two packet by packet.
 * Map layouts: bpf/include/nkframe_policy.h.
 *
 * Allowed packets return NK_CONTINUE so the next program in the chain (forwarding) runs; denied
 * and malformed ones are dropped and counted.
 */
#include "nkframe_common.h"
#include "nkframe_policy.h"

/* Set by the loader before load (one program instance per endpoint).  A slot, not an ifindex:
 * a netkit peer program sees the peer's ifindex, which repeats across pod namespaces. */
const volatile __u32 ENDPOINT_SLOT = 0;
/* Where the IP header starts: 14 behind an Ethernet header (tc/tcx on veth, netkit L2), 0 for
 * netkit in L3 mode, where the skb carries no link-layer header. */
const volatile __u32 L3_OFFSET = NK_ETH_HLEN;

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

static __always_inline int drop(struct __sk_buff *skb, __u32 reason)
{
	struct nk_counter *c = bpf_map_lookup_elem(&nk_pol_drops, &reason);

	if (c)
		nk_count(c, skb->len);
	return NK_SHOT;
}

static __always_inline void stat(struct nk_policy_stats *st, __u32 dir, __u32 which, __u32 len)
{
	if (st && dir < 2 && which < NK_PSTAT_MAX)
		nk_count(&st->dir[dir][which], len);
}

static __always_inline int policy(struct __sk_buff *skb, __u32 dir)
{
	__u32 slot = ENDPOINT_SLOT;
	struct nk_pkt pkt = {};
	int res;

	res = nk_parse(skb, L3_OFFSET, &pkt);
	if (res == NK_PARSE_SHORT) {
		/* Headers reach into paged data: make them linear once and parse again. */
		__u32 len = skb->len < NK_PULL_LEN ? skb->len : NK_PULL_LEN;

		bpf_skb_pull_data(skb, len);
		res = nk_parse(skb, L3_OFFSET, &pkt);
		if (res == NK_PARSE_SHORT)
			res = NK_PARSE_MALFORMED;
	}

	__u32 *genp = bpf_map_lookup_elem(&nk_pol_gen, &slot);
	__u32 gen = genp ? *(volatile __u32 *)genp : 0;
	struct nk_policy_stats *st = bpf_map_lookup_elem(&nk_pol_stats, &slot);

	if (res == NK_PARSE_NON_IP) {
		stat(st, dir, NK_PSTAT_NON_IP, skb->len);
		return NK_CONTINUE;
	}
	if (gen == 0)
		return drop(skb, NK_DROP_NO_POLICY);
	if (res != NK_PARSE_IP) {
		stat(st, dir, NK_PSTAT_MALFORMED, skb->len);
		return drop(skb, NK_DROP_MALFORMED);
	}

	struct nk_policy_key key = {
		.prefixlen = NK_POLICY_KEY_FIXED_BITS + (pkt.family == 4 ? 32 : 128),
		.slot = slot,
		.generation = gen,
		.direction = dir,
		.family = pkt.family,
	};
	if (dir == NK_DIR_INGRESS)
		__builtin_memcpy(key.addr, pkt.src, 16);
	else
		__builtin_memcpy(key.addr, pkt.dst, 16);

	struct nk_policy_entry *ent = bpf_map_lookup_elem(&nk_pol_lpm, &key);
	if (!ent)
		/* Every generation has /0 entries, so a miss means user space broke the protocol
		 * (or the generation is being torn down): fail closed. */
		return drop(skb, NK_DROP_NO_POLICY);

	__u32 count = ent->count;
	int i;
	/* A bounded loop (5.3+ verifiers walk it; 6.1 is the oldest kernel we run on). */
	for (i = 0; i < NK_POLICY_MAX_RULES; i++) {
		if (i >= count)
			break;
		struct nk_policy_rule *r = &ent->rules[i];
		if (r->proto && r->proto != pkt.proto)
			continue;
		if (pkt.dport < r->port_lo || pkt.dport > r->port_hi)
			continue;
		/* Denies are stored before allows, so the first match decides. */
		__u32 id = r->rule_id;
		struct nk_counter *c = bpf_map_lookup_elem(&nk_pol_rules, &id);
		if (c)
			nk_count(c, skb->len);
		if (r->action == NK_ACT_DENY) {
			stat(st, dir, NK_PSTAT_DENY_RULE, skb->len);
			return drop(skb, NK_DROP_POLICY_DENY);
		}
		stat(st, dir, NK_PSTAT_ALLOW_RULE, skb->len);
		return NK_CONTINUE;
	}
	if (ent->default_action == NK_ACT_ALLOW) {
		stat(st, dir, NK_PSTAT_ALLOW_DEFAULT, skb->len);
		return NK_CONTINUE;
	}
	stat(st, dir, NK_PSTAT_DENY_DEFAULT, skb->len);
	return drop(skb, NK_DROP_POLICY_DEFAULT);
}

/* Packets the endpoint sends: egress rules, matched on the destination address. */
SEC("tc")
int policy_egress(struct __sk_buff *skb)
{
	return policy(skb, NK_DIR_EGRESS);
}

/* Packets to the endpoint: ingress rules, matched on the source address. */
SEC("tc")
int policy_ingress(struct __sk_buff *skb)
{
	return policy(skb, NK_DIR_INGRESS);
}

/* An empty program with the same section, the baseline for per-packet cost figures. */
SEC("tc")
int policy_baseline(struct __sk_buff *skb)
{
	return NK_CONTINUE;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
