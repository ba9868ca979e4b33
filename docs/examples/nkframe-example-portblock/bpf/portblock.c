// SPDX-License-Identifier: GPL-2.0
/* portblock: drop UDP datagrams a pod sends to blocked destination ports.
 *
 * Attached by nkframe on the endpoint's "from-pod" hook.  The same object works on every attach
 * mechanism because of the return values:
 *
 *   -1  hand the packet to the next program in the chain (TC_ACT_UNSPEC for tc, TCX_NEXT for
 *       tcx, NETKIT_NEXT for netkit: the three values are equal on purpose)
 *    2  drop it (TC_ACT_SHOT == TCX_DROP == NETKIT_DROP)
 *
 * skb->data starts at an Ethernet header on every endpoint device nkframe builds (veth, and
 * netkit in both modes: netkit devices are Ethernet devices, L3 mode only turns ARP off).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define PORTBLOCK_CONTINUE (-1)
#define PORTBLOCK_DROP 2

/* Blocked destination ports (host byte order) -> 1.  Filled from the endpoint's options by the
 * plugin's nkframe_endpoint_configure; pinned per endpoint. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, 64);
} portblock_ports SEC(".maps");

/* [0] datagrams dropped, [1] bytes dropped.  Per CPU, so counting needs no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} portblock_drops SEC(".maps");

static __always_inline void count_drop(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&portblock_drops, &key);

	if (v)
		*v += 1;
	key = 1;
	v = bpf_map_lookup_elem(&portblock_drops, &key);
	if (v)
		*v += skb->len;
}

SEC("tc")
int portblock(struct __sk_buff *skb)
{
	struct udphdr udp;
	__u32 l4_off;
	__u16 port;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return PORTBLOCK_CONTINUE;
		if (ip.protocol != IPPROTO_UDP)
			return PORTBLOCK_CONTINUE;
		/* A fragment after the first carries no UDP header: nothing to match. */
		if (ip.frag_off & bpf_htons(0x1fff))
			return PORTBLOCK_CONTINUE;
		l4_off = ETH_HLEN + ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return PORTBLOCK_CONTINUE;
		/* Only UDP right after the fixed header; extension headers are not walked, to keep
		 * the example short (nkframe's policy plugin shows how). */
		if (ip6.nexthdr != IPPROTO_UDP)
			return PORTBLOCK_CONTINUE;
		l4_off = ETH_HLEN + sizeof(ip6);
	} else {
		return PORTBLOCK_CONTINUE; /* ARP and anything else: not ours */
	}

	/* bpf_skb_load_bytes also reads headers that are not in the linear part of the skb. */
	if (bpf_skb_load_bytes(skb, l4_off, &udp, sizeof(udp)) < 0)
		return PORTBLOCK_CONTINUE;
	port = bpf_ntohs(udp.dest);
	if (!bpf_map_lookup_elem(&portblock_ports, &port))
		return PORTBLOCK_CONTINUE;
	count_drop(skb);
	return PORTBLOCK_DROP;
}

char LICENSE[] SEC("license") = "GPL";
