/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The forwarding datapath shared by bpf/l3.c and bpf/l2.c: map layouts, counters and the
 * routing step.  plugins/nkframe_l3/layout.py packs the same bytes with struct (a unit test
 * checks the sizes and numbers below against it).
 *
 * Every packet these programs see carries an Ethernet header at skb->data: veth and tc/tcx
 * obviously, and netkit in both modes too — netkit devices are ether_setup() devices; L3 mode
 * only makes them NOARP with an all-zero address, so the neighbour layer writes a header of
 * zero MACs, and netkit_xmit() pulls ETH_HLEN before it hands the skb on.
 *
 * Where a packet goes (pod egress, after policy):
 *   FIB lookup in the node's namespace (input device = the endpoint's node-side device)
 *     -> a local endpoint's device  : rewrite MACs from nk_endpoints, bpf_redirect() to the
 *                                     endpoint's node-side device (its TO_POD chain runs)
 *     -> any other device          : bpf_redirect_neigh() with the FIB's next hop
 *     -> local / unreachable / ... : hand the packet to the node's stack (NK_CONTINUE)
 * Uplink ingress: destination is a local endpoint -> bpf_redirect_peer() into the pod, or
 * bpf_redirect() via the node-side device when the endpoint has TO_POD programs that must see
 * the packet (redirect_peer would skip them).
 */
#ifndef NKFRAME_DP_H
#define NKFRAME_DP_H

#include "nkframe_common.h"

#define NK_AF_INET 2
#define NK_AF_INET6 10
#define NK_ETH_P_ARP 0x0806

/* BPF_FIB_LKUP_RET_* (uapi bpf.h, stable since 4.18/5.x) */
#define NK_FIB_SUCCESS 0
#define NK_FIB_NO_NEIGH 7

#define NK_DP_MAX_ENDPOINT_ADDRS 16384

/* nk_endpoints key: one pod address.  IPv4 uses addr[0], the rest stays zero. */
struct nk_ep_key {
	__u32 family; /* 4 or 6 */
	__u32 addr[4]; /* network order */
};

/* nk_endpoint_info.flags */
#define NK_EP_F_TO_POD_CHAIN 0x1 /* TO_POD programs attached: never bypass them with redirect_peer */
#define NK_EP_F_L2 0x2           /* the endpoint runs the L2 datapath (informational) */

struct nk_ep_info {
	__u32 ifindex; /* node-side device (netkit primary / veth host end) */
	__u32 flags;
	__u32 owner;   /* crc32 of the endpoint id: removal deletes only its own entries */
	__u8 pod_mac[6];  /* all zero for netkit L3 */
	__u8 node_mac[6]; /* all zero for netkit L3 */
};

/* Counter slots of nk_dp_stats (per device, see below). */
enum nk_dp_stat {
	NK_DP_SEEN = 0,       /* every packet counted in one of the slots below (each counts once) */
	NK_DP_LOCAL = 1,      /* redirected to a local endpoint's node-side device */
	NK_DP_NEIGH = 2,      /* redirect_neigh() via the FIB's egress device */
	NK_DP_PEER = 3,       /* uplink: redirect_peer() into a pod */
	NK_DP_UPLINK_VIA_DEV = 4, /* uplink: redirect() via the node-side device (TO_POD chain) */
	NK_DP_STACK = 5,      /* handed to the node's stack (local, unreachable, no FIB result) */
	NK_DP_ARP_REPLY = 6,  /* L2: gateway ARP request answered */
	NK_DP_ND_REPLY = 7,   /* L2: gateway neighbour solicitation answered */
	NK_DP_NON_IP = 8,     /* neither IPv4 nor IPv6 (nor answered): handed on */
	NK_DP_TTL = 9,        /* TTL/hop limit would expire: the stack sends the ICMP error */
	NK_DP_MALFORMED = 10, /* bad IP header: left to the stack, which drops it */
	NK_DP_REDIRECT_ERR = 11, /* a redirect helper refused (device gone): dropped */
	NK_DP_NOT_MINE = 12,  /* uplink: not for a local endpoint, handed on */
	NK_DP_STAT_MAX = 16,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nk_ep_key);
	__type(value, struct nk_ep_info);
	__uint(max_entries, NK_DP_MAX_ENDPOINT_ADDRS);
} nk_endpoints SEC(".maps");

/* Counters per device, keyed by ifindex: the node-side device of each endpoint (one map for
 * the node, shared by every endpoint's program) or the uplink (its own instance).  The
 * forwarding programs are the same for every endpoint (they learn the endpoint from
 * skb->ifindex, see nk_from_pod), so one loaded copy serves the whole node; a device's slot
 * is made by the first packet it counts and removed with the endpoint. */
#define NK_DP_MAX_DEVICES 16384

struct nk_dp_counters {
	struct nk_counter c[NK_DP_STAT_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct nk_dp_counters);
	__uint(max_entries, NK_DP_MAX_DEVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} nk_dp_stats SEC(".maps");

/* A zeroed value to create a device's slot with (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nk_dp_counters);
	__uint(max_entries, 1);
} nk_dp_zero SEC(".maps");

/* skb->ifindex as one ctx load.  Left to itself clang keeps &skb->ifindex in a register
 * across calls and loads through it later, which the verifier refuses ("dereference of
 * modified ctx ptr"). */
static __always_inline __u32 nk_skb_ifindex(struct __sk_buff *skb)
{
	__u32 v;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(v) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, ifindex)));
	return v;
}

static __always_inline void nk_dp_count(struct __sk_buff *skb, __u32 which)
{
	__u32 dev = nk_skb_ifindex(skb), zero = 0;
	struct nk_dp_counters *c = bpf_map_lookup_elem(&nk_dp_stats, &dev);

	if (!c) {
		struct nk_dp_counters *z = bpf_map_lookup_elem(&nk_dp_zero, &zero);

		if (!z)
			return;
		bpf_map_update_elem(&nk_dp_stats, &dev, z, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&nk_dp_stats, &dev);
		if (!c)
			return;
	}
	/* One lookup per packet: the packet's outcome and "seen" together. */
	nk_count(&c->c[NK_DP_SEEN], skb->len);
	nk_count(&c->c[which & (NK_DP_STAT_MAX - 1)], skb->len);
}

/* Minimal views of the headers we touch (no dependency on kernel struct layouts). */
struct nk_eth {
	__u8 dst[6];
	__u8 src[6];
	__u16 proto;
};

struct nk_ip4 {
	__u8 vihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag;
	__u8 ttl;
	__u8 proto;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

struct nk_ip6 {
	__u32 vtcfl; /* version, traffic class, flow label (network order) */
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

#define NK_IP4_OFF NK_ETH_HLEN
#define NK_L4_OFF6 (NK_ETH_HLEN + 40)

/* Make Ethernet + the fixed IP header linear (they are for locally generated traffic; a
 * forwarded GRO packet may not be).  Returns 0 when they are readable. */
static __always_inline int nk_dp_linear(struct __sk_buff *skb, __u32 need)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (data + need <= end)
		return 0;
	if (skb->len < need)
		return -1;
	if (bpf_skb_pull_data(skb, need))
		return -1;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	return data + need <= end ? 0 : -1;
}

static __always_inline void nk_set_macs(struct nk_eth *eth, const __u8 *dst, const __u8 *src)
{
	__builtin_memcpy(eth->dst, dst, 6);
	__builtin_memcpy(eth->src, src, 6);
}

/* The kernel's ip_decrease_ttl(): the TTL is the high byte of a 16-bit word, so the
 * checksum changes by +0x0100 (one's complement, end-around carry). */
static __always_inline void nk_ip4_dec_ttl(struct nk_ip4 *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

static __always_inline struct nk_ep_info *nk_ep_lookup4(__u32 daddr)
{
	struct nk_ep_key key = {.family = 4, .addr = {daddr, 0, 0, 0}};

	return bpf_map_lookup_elem(&nk_endpoints, &key);
}

static __always_inline struct nk_ep_info *nk_ep_lookup6(const __u32 *daddr)
{
	struct nk_ep_key key = {.family = 6};

	__builtin_memcpy(key.addr, daddr, 16);
	return bpf_map_lookup_elem(&nk_endpoints, &key);
}

static __always_inline int nk_redirect_result(struct __sk_buff *skb, long rc, __u32 stat)
{
	/* TC_ACT_REDIRECT (7) on success; the helpers return TC_ACT_SHOT on a bad ifindex/flags */
	if (rc == 7) {
		nk_dp_count(skb, stat);
		return 7;
	}
	nk_dp_count(skb, NK_DP_REDIRECT_ERR);
	return NK_SHOT;
}

/* Local endpoint: its MACs, one hop less, out of its node-side device. */
static __always_inline int nk_to_endpoint(struct __sk_buff *skb, struct nk_ep_info *ep)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct nk_eth *eth = data;

	if (NK_NEED(data, NK_ETH_HLEN, end))
		return NK_CONTINUE;
	nk_set_macs(eth, ep->pod_mac, ep->node_mac);
	return nk_redirect_result(skb, bpf_redirect(ep->ifindex, 0), NK_DP_LOCAL);
}

/* The length the FIB's MTU check must see (bpf_fib_lookup's tot_len).
 *
 * A GSO skb is a train of segments of gso_size payload each; it is never sent whole.  Passing
 * the train's length would make every GSO skb "too big", and passing 0 lets the helper fall
 * back to is_skb_forwardable(), which waves every GSO skb through whatever the egress MTU —
 * the segments would then leave the uplink larger than its MTU.  So for GSO the length is one
 * segment: IP header + L4 header + gso_size.  For other L4 protocols (tunnels) we do not know
 * the segment's headers: the train's length sends the skb to the stack, which segments right.
 * The kernel's check runs before its neighbour lookup, so it holds for NO_NEIGH results too.
 * l3_len: the IP header length; l4_off: its offset from skb->data. */
static __always_inline __u32 nk_mtu_len(struct __sk_buff *skb, __u32 pkt_len, __u8 proto, __u32 l3_len, __u32 l4_off)
{
	__u32 gso = skb->gso_size;
	void *data, *end;
	__u8 *l4;

	if (!gso)
		return pkt_len;
	if (proto == 17) /* UDP (UDP_SEGMENT) */
		return l3_len + 8 + gso;
	if (proto != NK_IPPROTO_TCP)
		return pkt_len;
	if (l4_off > NK_ETH_HLEN + 60 || nk_dp_linear(skb, l4_off + 20))
		return pkt_len;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	l4 = data + l4_off;
	if (NK_NEED(l4, 20, end))
		return pkt_len;
	return l3_len + (__u32)(l4[12] >> 4) * 4 + gso;
}

/* IPv4 forwarding from a pod.  node_ifindex: the endpoint's node-side device, the FIB's
 * input interface (so ip rules with iif and its forwarding setting apply as for the stack). */
static __always_inline int nk_forward4(struct __sk_buff *skb, __u32 node_ifindex)
{
	void *data, *end;
	struct nk_ip4 *ip;
	struct bpf_fib_lookup fib = {};
	long rc;

	if (nk_dp_linear(skb, NK_ETH_HLEN + 20)) {
		nk_dp_count(skb, NK_DP_MALFORMED);
		return NK_CONTINUE;
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + NK_IP4_OFF;
	if (NK_NEED(ip, 20, end))
		return NK_CONTINUE;
	if ((ip->vihl >> 4) != 4 || (ip->vihl & 0xf) < 5) {
		nk_dp_count(skb, NK_DP_MALFORMED);
		return NK_CONTINUE;
	}
	/* Multicast, broadcast and limited broadcast stay with the node's stack. */
	__u8 first = ((__u8 *)&ip->daddr)[0];
	if (first >= 224 || ip->daddr == 0xffffffff) {
		nk_dp_count(skb, NK_DP_STACK);
		return NK_CONTINUE;
	}

	fib.family = NK_AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->proto;
	fib.ifindex = node_ifindex;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	__u32 daddr = ip->daddr;
	__u32 ihl = (__u32)(ip->vihl & 0xf) * 4;
	__u32 len = bpf_ntohs(ip->tot_len);
	/* BIG TCP (> 64 KiB GSO) writes tot_len 0: use the skb's own length then. */
	if (!len)
		len = skb->len - NK_ETH_HLEN;
	len = nk_mtu_len(skb, len, ip->proto, ihl, NK_IP4_OFF + ihl);
	fib.tot_len = len > 0xffff ? 0xffff : len;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != NK_FIB_SUCCESS && rc != NK_FIB_NO_NEIGH) {
		/* Local address, forwarding off, unreachable, prohibited, needs fragmenting...:
		 * the stack does what the FIB says and sends the ICMP errors. */
		nk_dp_count(skb, NK_DP_STACK);
		return NK_CONTINUE;
	}
	if (fib.ifindex == node_ifindex) {
		/* Back where it came from: let the stack deal with the odd route. */
		nk_dp_count(skb, NK_DP_STACK);
		return NK_CONTINUE;
	}
	/* bpf_fib_lookup() wrote nothing to the packet, but re-derive the pointers anyway: the
	 * verifier forgets packet bounds across helper calls that may change the skb. */
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + NK_IP4_OFF;
	if (NK_NEED(ip, 20, end))
		return NK_CONTINUE;
	if (ip->ttl <= 1) {
		nk_dp_count(skb, NK_DP_TTL);
		return NK_CONTINUE;
	}
	nk_ip4_dec_ttl(ip);

	struct nk_ep_info *ep = nk_ep_lookup4(daddr);
	if (ep && ep->ifindex == fib.ifindex)
		return nk_to_endpoint(skb, ep);

	struct bpf_redir_neigh nh = {};
	if (fib.family == NK_AF_INET) {
		nh.nh_family = NK_AF_INET;
		nh.ipv4_nh = fib.ipv4_dst; /* the gateway, or the destination on a connected route */
	} else {
		/* An IPv4 route with an IPv6 next hop (RFC 5549) */
		nh.nh_family = NK_AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	}
	return nk_redirect_result(skb, bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0), NK_DP_NEIGH);
}

static __always_inline int nk_forward6(struct __sk_buff *skb, __u32 node_ifindex)
{
	void *data, *end;
	struct nk_ip6 *ip;
	struct bpf_fib_lookup fib = {};
	__u32 daddr[4];
	long rc;

	if (nk_dp_linear(skb, NK_ETH_HLEN + 40)) {
		nk_dp_count(skb, NK_DP_MALFORMED);
		return NK_CONTINUE;
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + NK_IP4_OFF;
	if (NK_NEED(ip, 40, end))
		return NK_CONTINUE;
	if ((((__u8 *)ip)[0] >> 4) != 6) {
		nk_dp_count(skb, NK_DP_MALFORMED);
		return NK_CONTINUE;
	}
	/* Multicast (ff00::/8) and link-local (fe80::/10) destinations are the node's business:
	 * neighbour discovery, MLD, router solicitations, pings to the gateway. */
	__u8 b0 = ((__u8 *)ip->daddr)[0], b1 = ((__u8 *)ip->daddr)[1];
	if (b0 == 0xff || (b0 == 0xfe && (b1 & 0xc0) == 0x80)) {
		nk_dp_count(skb, NK_DP_STACK);
		return NK_CONTINUE;
	}

	fib.family = NK_AF_INET6;
	fib.flowinfo = ip->vtcfl & bpf_htonl(0x0FFFFFFF);
	fib.l4_protocol = ip->nexthdr;
	fib.ifindex = node_ifindex;
	__builtin_memcpy(fib.ipv6_src, ip->saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, ip->daddr, 16);
	__builtin_memcpy(daddr, ip->daddr, 16);
	/* payload_len 0 is a jumbogram / BIG TCP: the skb's length tells */
	__u32 len = ip->payload_len ? 40 + (__u32)bpf_ntohs(ip->payload_len) : skb->len - NK_ETH_HLEN;
	len = nk_mtu_len(skb, len, ip->nexthdr, 40, NK_L4_OFF6);
	fib.tot_len = len > 0xffff ? 0xffff : len;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != NK_FIB_SUCCESS && rc != NK_FIB_NO_NEIGH) {
		nk_dp_count(skb, NK_DP_STACK);
		return NK_CONTINUE;
	}
	if (fib.ifindex == node_ifindex) {
		nk_dp_count(skb, NK_DP_STACK);
		return NK_CONTINUE;
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + NK_IP4_OFF;
	if (NK_NEED(ip, 40, end))
		return NK_CONTINUE;
	if (ip->hop_limit <= 1) {
		nk_dp_count(skb, NK_DP_TTL);
		return NK_CONTINUE;
	}
	ip->hop_limit--; /* no header checksum in IPv6 */

	struct nk_ep_info *ep = nk_ep_lookup6(daddr);
	if (ep && ep->ifindex == fib.ifindex)
		return nk_to_endpoint(skb, ep);

	struct bpf_redir_neigh nh = {.nh_family = NK_AF_INET6};
	__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
	return nk_redirect_result(skb, bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0), NK_DP_NEIGH);
}

/* Ethernet type of the packet, or 0 if there is no Ethernet header to read. */
static __always_inline __u16 nk_ethertype(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct nk_eth *eth = data;

	if (NK_NEED(data, NK_ETH_HLEN, end))
		return 0;
	return bpf_ntohs(eth->proto);
}

/* Pod egress after policy: forward IPv4/IPv6, hand everything else on. */
static __always_inline int nk_from_pod(struct __sk_buff *skb, __u32 node_ifindex)
{
	__u16 proto = nk_ethertype(skb);

	if (proto == NK_ETH_P_IP)
		return nk_forward4(skb, node_ifindex);
	if (proto == NK_ETH_P_IPV6)
		return nk_forward6(skb, node_ifindex);
	nk_dp_count(skb, NK_DP_NON_IP);
	return NK_CONTINUE;
}

/* Uplink ingress: packets for a local endpoint go straight into its namespace. */
static __always_inline int nk_uplink_in(struct __sk_buff *skb)
{
	__u16 proto = nk_ethertype(skb);
	struct nk_ep_info *ep = 0;
	void *data, *end;

	if (proto == NK_ETH_P_IP) {
		if (nk_dp_linear(skb, NK_ETH_HLEN + 20))
			goto not_mine;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		struct nk_ip4 *ip = data + NK_IP4_OFF;
		if (NK_NEED(ip, 20, end))
			goto not_mine;
		ep = nk_ep_lookup4(ip->daddr);
		if (!ep)
			goto not_mine;
		if (ip->ttl <= 1) {
			nk_dp_count(skb, NK_DP_TTL);
			return NK_CONTINUE;
		}
		nk_ip4_dec_ttl(ip);
	} else if (proto == NK_ETH_P_IPV6) {
		if (nk_dp_linear(skb, NK_ETH_HLEN + 40))
			goto not_mine;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		struct nk_ip6 *ip = data + NK_IP4_OFF;
		if (NK_NEED(ip, 40, end))
			goto not_mine;
		ep = nk_ep_lookup6(ip->daddr);
		if (!ep)
			goto not_mine;
		if (ip->hop_limit <= 1) {
			nk_dp_count(skb, NK_DP_TTL);
			return NK_CONTINUE;
		}
		ip->hop_limit--;
	} else {
		goto not_mine;
	}

	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (NK_NEED(data, NK_ETH_HLEN, end))
		return NK_CONTINUE;
	nk_set_macs((struct nk_eth *)data, ep->pod_mac, ep->node_mac);
	if (ep->flags & NK_EP_F_TO_POD_CHAIN)
		return nk_redirect_result(skb, bpf_redirect(ep->ifindex, 0), NK_DP_UPLINK_VIA_DEV);
	/* Straight into the pod's namespace: the skb re-enters the stack on the peer device
	 * without a second pass through the node's stack or the veth/netkit xmit path. */
	return nk_redirect_result(skb, bpf_redirect_peer(ep->ifindex, 0), NK_DP_PEER);

not_mine:
	nk_dp_count(skb, NK_DP_NOT_MINE);
	return NK_CONTINUE;
}

#endif /* NKFRAME_DP_H */
