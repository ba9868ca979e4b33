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

#endif /* NKFRAME_POLICY_H */
