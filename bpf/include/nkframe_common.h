/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Helpers shared by nkframe's BPF programs: return values, drop reasons, counters and the
 * L3/L4 packet parser.
 *
 * Every nkframe program composes with the others through one convention: NK_CONTINUE (-1) hands
 * the packet to the next program.  -1 is TC_ACT_UNSPEC for tc/cls_bpf, TCX_NEXT for tcx and
 * NETKIT_NEXT for netkit, so the same object works on every attach mechanism.
 */
#ifndef NKFRAME_COMMON_H
#define NKFRAME_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NK_CONTINUE (-1) /* TC_ACT_UNSPEC / TCX_NEXT / NETKIT_NEXT */
#define NK_SHOT 2        /* TC_ACT_SHOT / TCX_DROP / NETKIT_DROP */

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Why a packet was dropped.  Values are stable: user space indexes counter arrays with them. */
enum nk_drop_reason {
	NK_DROP_NONE = 0,
	NK_DROP_POLICY_DENY = 1,    /* a deny rule matched */
	NK_DROP_POLICY_DEFAULT = 2, /* no rule matched and the default is deny */
	NK_DROP_MALFORMED = 3,      /* truncated or inconsistent IP / L4 header */
	NK_DROP_NO_ROUTE = 4,       /* the L3 datapath found no route */
	NK_DROP_NO_POLICY = 5,      /* the endpoint has no policy configured (fail closed) */
	NK_DROP_MAX = 8,
};

struct nk_counter {
	__u64 packets;
	__u64 bytes;
};

static __always_inline void nk_count(struct nk_counter *c, __u32 len)
{
	/* Only ever used on per-CPU storage: tc programs run with migration disabled, so a plain
	 * read-modify-write cannot race with another CPU. */
	c->packets += 1;
	c->bytes += len;
}

#define NK_ETH_HLEN 14
#define NK_ETH_P_IP 0x0800
#define NK_ETH_P_IPV6 0x86DD

#define NK_IPPROTO_HOPOPTS 0
#define NK_IPPROTO_ICMP 1
#define NK_IPPROTO_TCP 6
#define NK_IPPROTO_UDP 17
#define NK_IPPROTO_ROUTING 43
#define NK_IPPROTO_FRAGMENT 44
#define NK_IPPROTO_AH 51
#define NK_IPPROTO_ICMPV6 58
#define NK_IPPROTO_DSTOPTS 60

/* Extension headers we step over before giving up with "malformed".  Real traffic carries at
 * most two or three; the bound keeps the loop small for the 6.1 verifier. */
#define NK_IPV6_MAX_EXT 8

/* "Ports unknown": not TCP/UDP, or a fragment after the first.  Outside 0..65535 on purpose so
 * only rules whose port range is "all" (0..NK_PORT_UNKNOWN) match it. */
#define NK_PORT_UNKNOWN 0x10000

enum nk_parse_result {
	NK_PARSE_IP = 0,
	NK_PARSE_NON_IP = 1,
	NK_PARSE_MALFORMED = 2,
	NK_PARSE_SHORT = 3, /* headers run past the linear data but the skb has more: pull, retry */
};

struct nk_pkt {
	__u8 family;  /* 4 or 6 */
	__u8 proto;   /* upper-layer protocol (after IPv6 extension headers) */
	__u8 later_fragment;
	__u8 _pad;
	__u32 dport;  /* host order, or NK_PORT_UNKNOWN */
	__u32 src[4]; /* network order; IPv4 uses src[0] */
	__u32 dst[4];
	__u32 sport;  /* host order, or NK_PORT_UNKNOWN (like dport) */
};

/* Header bytes we need at most: Ethernet + IPv6 + 8 extension headers is unbounded in theory;
 * pulling this much into the linear area covers every packet we can parse in practice. */
#define NK_PULL_LEN 256

#define NK_NEED(ptr, n, end) ((void *)(ptr) + (n) > (end))

/* Parse an IPv4/IPv6 packet whose network header starts at data + l3_off (14 after an Ethernet
 * header, as on veth and netkit in both modes; 0 on devices without a link-layer header).  With
 * an Ethernet header its type decides the family; without, the IP version nibble does
 * (PROG_TEST_RUN cannot set skb->protocol).  See plugins/nkframe_policy/reference.py for the same rules in Python. */
static __always_inline int nk_parse(struct __sk_buff *skb, __u32 l3_off, struct nk_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 linear = end - data;
	__u8 *p;
	__u8 version;

#define NK_SHORT_OR(result) (skb->len > linear ? NK_PARSE_SHORT : (result))

	if (l3_off) {
		if (NK_NEED(data, NK_ETH_HLEN, end))
			return NK_SHORT_OR(NK_PARSE_NON_IP);
		__u16 ethertype = bpf_ntohs(*(__u16 *)(data + 12));
		if (ethertype == NK_ETH_P_IP)
			version = 4;
		else if (ethertype == NK_ETH_P_IPV6)
			version = 6;
		else
			return NK_PARSE_NON_IP;
		p = data + NK_ETH_HLEN;
	} else {
		p = data;
		if (NK_NEED(p, 1, end))
			return NK_SHORT_OR(NK_PARSE_NON_IP);
		version = p[0] >> 4;
		if (version != 4 && version != 6)
			return NK_PARSE_NON_IP;
	}

	__u8 proto;
	__u8 later = 0;
	pkt->family = version;
	if (version == 4) {
		if (NK_NEED(p, 20, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
		if ((p[0] >> 4) != 4)
			return NK_PARSE_MALFORMED;
		__u32 ihl = (p[0] & 0x0f) * 4;
		if (ihl < 20)
			return NK_PARSE_MALFORMED;
		proto = p[9];
		later = (bpf_ntohs(*(__u16 *)(p + 6)) & 0x1fff) != 0;
		pkt->src[0] = *(__u32 *)(p + 12);
		pkt->dst[0] = *(__u32 *)(p + 16);
		pkt->src[1] = pkt->src[2] = pkt->src[3] = 0;
		pkt->dst[1] = pkt->dst[2] = pkt->dst[3] = 0;
		if (NK_NEED(p, ihl, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
		p += ihl;
	} else {
		if (NK_NEED(p, 40, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
		if ((p[0] >> 4) != 6)
			return NK_PARSE_MALFORMED;
		proto = p[6];
		__builtin_memcpy(pkt->src, p + 8, 16);
		__builtin_memcpy(pkt->dst, p + 24, 16);
		p += 40;
		int i;
#pragma unroll
		for (i = 0; i < NK_IPV6_MAX_EXT; i++) {
			__u32 hlen;
			if (proto == NK_IPPROTO_HOPOPTS || proto == NK_IPPROTO_ROUTING ||
			    proto == NK_IPPROTO_DSTOPTS) {
				if (NK_NEED(p, 2, end))
					return NK_SHORT_OR(NK_PARSE_MALFORMED);
				hlen = ((__u32)p[1] + 1) * 8;
				proto = p[0];
			} else if (proto == NK_IPPROTO_AH) {
				if (NK_NEED(p, 2, end))
					return NK_SHORT_OR(NK_PARSE_MALFORMED);
				hlen = ((__u32)p[1] + 2) * 4;
				proto = p[0];
			} else if (proto == NK_IPPROTO_FRAGMENT) {
				if (NK_NEED(p, 8, end))
					return NK_SHORT_OR(NK_PARSE_MALFORMED);
				hlen = 8;
				proto = p[0];
				if (bpf_ntohs(*(__u16 *)(p + 2)) & 0xfff8) {
					later = 1;
					break;
				}
			} else {
				break;
			}
			/* hlen <= 2048; checking it here keeps the verifier's pointer range
			 * bounded (p stays a packet pointer with a known maximum offset). */
			if (NK_NEED(p, hlen, end))
				return NK_SHORT_OR(NK_PARSE_MALFORMED);
			p += hlen;
		}
		if (!later && (proto == NK_IPPROTO_HOPOPTS || proto == NK_IPPROTO_ROUTING ||
			       proto == NK_IPPROTO_DSTOPTS || proto == NK_IPPROTO_AH ||
			       proto == NK_IPPROTO_FRAGMENT))
			return NK_PARSE_MALFORMED;
	}

	pkt->proto = proto;
	pkt->later_fragment = later;
	pkt->dport = NK_PORT_UNKNOWN;
	pkt->sport = NK_PORT_UNKNOWN;
	if (later)
		return NK_PARSE_IP;
	if (proto == NK_IPPROTO_TCP) {
		if (NK_NEED(p, 20, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
		pkt->sport = bpf_ntohs(*(__u16 *)p);
		pkt->dport = bpf_ntohs(*(__u16 *)(p + 2));
	} else if (proto == NK_IPPROTO_UDP) {
		if (NK_NEED(p, 8, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
		pkt->sport = bpf_ntohs(*(__u16 *)p);
		pkt->dport = bpf_ntohs(*(__u16 *)(p + 2));
	} else if (proto == NK_IPPROTO_ICMP && version == 4) {
		if (NK_NEED(p, 8, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
	} else if (proto == NK_IPPROTO_ICMPV6 && version == 6) {
		if (NK_NEED(p, 4, end))
			return NK_SHORT_OR(NK_PARSE_MALFORMED);
	}
	return NK_PARSE_IP;
#undef NK_SHORT_OR
}

#endif /* NKFRAME_COMMON_H */
