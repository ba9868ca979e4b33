// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The L2 datapath: pods on a netkit L2 device or a veth pair, with MAC addresses on both ends
 * and a gateway address that nothing in the node owns.  The pod resolves the gateway like any
 * router (ARP, IPv6 neighbour discovery); this program answers those requests itself with the
 * node-side MAC, then routes IP exactly like the L3 datapath (bpf/include/nkframe_dp.h).
 *
 *   l2_from_pod    endpoint hook FROM_POD, order 500 (after policy)
 */
#include "nkframe_dp.h"

/* The node-side device's MAC: the answer to "who has the gateway". */
const volatile __u8 NODE_MAC[6] = {};
/* Gateway addresses the pod routes through (network order); all-zero = not answered. */
const volatile __u32 GW4 = 0;
const volatile __u32 GW6[4] = {};

#define NK_ARPHRD_ETHER 1
#define NK_ARPOP_REQUEST 1
#define NK_ARPOP_REPLY 2

struct nk_arp {
	__u16 htype;
	__u16 ptype;
	__u8 hlen;
	__u8 plen;
	__u16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

#define NK_ND_NS 135
#define NK_ND_NA 136
#define NK_ND_OPT_TLLA 2
#define NK_NA_LEN 32 /* ICMPv6 header 4 + flags 4 + target 16 + target link-layer option 8 */
#define NK_NA_FRAME (NK_ETH_HLEN + 40 + NK_NA_LEN)

static __always_inline void node_mac(__u8 *out)
{
	/* Byte by byte: NODE_MAC is volatile, __builtin_memcpy would drop the qualifier. */
	out[0] = NODE_MAC[0];
	out[1] = NODE_MAC[1];
	out[2] = NODE_MAC[2];
	out[3] = NODE_MAC[3];
	out[4] = NODE_MAC[4];
	out[5] = NODE_MAC[5];
}

/* "Who has GW4?" from the pod -> "GW4 is at NODE_MAC", sent back out of the node-side device
 * (which delivers to the pod). */
static __always_inline int arp_reply(struct __sk_buff *skb, __u32 node_ifindex)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct nk_eth *eth = data;
	struct nk_arp *arp = data + NK_ETH_HLEN;
	__u8 mac[6];
	__u32 gw = GW4, tpa, spa;

	if (NK_NEED(arp, sizeof(*arp), end))
		return -1;
	if (arp->htype != bpf_htons(NK_ARPHRD_ETHER) || arp->ptype != bpf_htons(NK_ETH_P_IP) ||
	    arp->hlen != 6 || arp->plen != 4 || arp->op != bpf_htons(NK_ARPOP_REQUEST))
		return -1;
	__builtin_memcpy(&tpa, arp->tpa, 4);
	__builtin_memcpy(&spa, arp->spa, 4);
	/* spa 0.0.0.0 is an address-conflict probe (RFC 5227): not a question for a router. */
	if (!gw || tpa != gw || !spa)
		return -1;

	node_mac(mac);
	arp->op = bpf_htons(NK_ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, 6);
	__builtin_memcpy(arp->tpa, &spa, 4);
	__builtin_memcpy(arp->sha, mac, 6);
	__builtin_memcpy(arp->spa, &gw, 4);
	__builtin_memcpy(eth->dst, arp->tha, 6);
	__builtin_memcpy(eth->src, mac, 6);
	return nk_redirect_result(skb, bpf_redirect(node_ifindex, 0), NK_DP_ARP_REPLY);
}

struct nk_na_sum {
	/* IPv6 pseudo header (RFC 8200 8.1) followed by the ICMPv6 message */
	__u32 src[4];
	__u32 dst[4];
	__u32 len;
	__u32 nexthdr;
	__u8 icmp[NK_NA_LEN];
};

static __always_inline __u16 na_checksum(struct nk_na_sum *s)
{
	__u16 *w = (__u16 *)s;
	__u32 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < (int)(sizeof(*s) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

/* A neighbour solicitation for GW6 -> a solicited neighbour advertisement from GW6 with the
 * node-side MAC, sent back to the soliciting address.  The reply is rebuilt whole (the NS may
 * carry other options, or none), so the frame is resized to exactly the advertisement. */
static __always_inline int nd_reply(struct __sk_buff *skb, __u32 node_ifindex)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct nk_eth *eth = data;
	struct nk_ip6 *ip = data + NK_ETH_HLEN;
	__u8 *icmp = data + NK_L4_OFF6;
	__u32 gw[4] = {GW6[0], GW6[1], GW6[2], GW6[3]};
	__u32 target[4], solicitor[4];
	__u8 pod_mac[6], mac[6];

	if (!(gw[0] | gw[1] | gw[2] | gw[3]))
		return -1;
	if (NK_NEED(icmp, 24, end))
		return -1;
	/* RFC 4861 7.1.1: hop limit 255 (never forwarded), code 0, no extension headers here */
	if (ip->nexthdr != NK_IPPROTO_ICMPV6 || ip->hop_limit != 255 || icmp[0] != NK_ND_NS ||
	    icmp[1] != 0 || bpf_ntohs(ip->payload_len) < 24)
		return -1;
	__builtin_memcpy(target, icmp + 8, 16);
	if (target[0] != gw[0] || target[1] != gw[1] || target[2] != gw[2] || target[3] != gw[3])
		return -1;
	__builtin_memcpy(solicitor, ip->saddr, 16);
	/* From :: it is duplicate address detection for the gateway address: stay silent. */
	if (!(solicitor[0] | solicitor[1] | solicitor[2] | solicitor[3]))
		return -1;
	__builtin_memcpy(pod_mac, eth->src, 6);
	node_mac(mac);

	if (skb->len != NK_NA_FRAME && bpf_skb_change_tail(skb, NK_NA_FRAME, 0))
		return -1;
	if (nk_dp_linear(skb, NK_NA_FRAME))
		return -1;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (NK_NEED(data, NK_NA_FRAME, end))
		return -1;
	eth = data;
	ip = data + NK_ETH_HLEN;
	icmp = data + NK_L4_OFF6;

	struct nk_na_sum s = {};
	__builtin_memcpy(s.src, gw, 16);
	__builtin_memcpy(s.dst, solicitor, 16);
	s.len = bpf_htonl(NK_NA_LEN);
	s.nexthdr = bpf_htonl(NK_IPPROTO_ICMPV6);
	s.icmp[0] = NK_ND_NA;
	s.icmp[4] = 0xe0; /* Router | Solicited | Override */
	__builtin_memcpy(&s.icmp[8], gw, 16);
	s.icmp[24] = NK_ND_OPT_TLLA;
	s.icmp[25] = 1; /* option length in units of 8 bytes */
	__builtin_memcpy(&s.icmp[26], mac, 6);
	__u16 csum = na_checksum(&s);
	__builtin_memcpy(&s.icmp[2], &csum, 2);

	__builtin_memcpy(eth->dst, pod_mac, 6);
	__builtin_memcpy(eth->src, mac, 6);
	ip->vtcfl = bpf_htonl(0x60000000);
	ip->payload_len = bpf_htons(NK_NA_LEN);
	ip->nexthdr = NK_IPPROTO_ICMPV6;
	ip->hop_limit = 255;
	__builtin_memcpy(ip->saddr, gw, 16);
	__builtin_memcpy(ip->daddr, solicitor, 16);
	__builtin_memcpy(icmp, s.icmp, NK_NA_LEN);
	return nk_redirect_result(skb, bpf_redirect(node_ifindex, 0), NK_DP_ND_REPLY);
}

SEC("tc")
int l2_from_pod(struct __sk_buff *skb)
{
	__u32 node_ifindex = nk_skb_ifindex(skb); /* the node-side device, as in l3_from_pod */
	__u16 proto = nk_ethertype(skb);
	int ret;

	if (proto == NK_ETH_P_ARP) {
		if (nk_dp_linear(skb, NK_ETH_HLEN + sizeof(struct nk_arp)) == 0) {
			ret = arp_reply(skb, node_ifindex);
			if (ret != -1)
				return ret;
		}
		nk_dp_count(skb, NK_DP_NON_IP);
		return NK_CONTINUE;
	}
	if (proto == NK_ETH_P_IPV6 && nk_dp_linear(skb, NK_L4_OFF6 + 24) == 0) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct nk_ip6 *ip = data + NK_ETH_HLEN;

		if (!NK_NEED(ip, 40, end) && ip->nexthdr == NK_IPPROTO_ICMPV6) {
			__u8 *icmp = data + NK_L4_OFF6;
			if (!NK_NEED(icmp, 1, end) && icmp[0] == NK_ND_NS) {
				ret = nd_reply(skb, node_ifindex);
				if (ret != -1)
					return ret;
			}
		}
	}
	return nk_from_pod(skb, node_ifindex);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
