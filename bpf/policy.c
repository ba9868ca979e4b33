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
/* Where the IP header starts: 14 behind an Ethernet header (veth, and netkit in both modes:
 * its L3 mode writes a header of zero MACs), 0 on devices without a link-layer header. */
const volatile __u32 L3_OFFSET = NK_ETH_HLEN;

/* Packets the endpoint sends: egress rules, matched on the destination address. */
SEC("tc")
int policy_egress(struct __sk_buff *skb)
{
	return nk_policy_judge(skb, ENDPOINT_SLOT, NK_DIR_EGRESS, L3_OFFSET);
}

/* Packets to the endpoint: ingress rules, matched on the source address. */
SEC("tc")
int policy_ingress(struct __sk_buff *skb)
{
	return nk_policy_judge(skb, ENDPOINT_SLOT, NK_DIR_INGRESS, L3_OFFSET);
}

/* The node's uplink, ingress: packets for local endpoints are judged by the destination
 * endpoint's ingress policy before the datapath delivers them (see nk_policy_uplink()). */
SEC("tc")
int policy_uplink(struct __sk_buff *skb)
{
	return nk_policy_uplink(skb);
}
/* An empty program with the same section, the baseline for per-packet cost figures. */
SEC("tc")
int policy_baseline(struct __sk_buff *skb)
{
	return NK_CONTINUE;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
