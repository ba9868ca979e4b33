// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The L3 datapath: pods on a netkit L3 device (or a veth pair behaving the same way) with host
 * addresses and a default route via the node.  See bpf/include/nkframe_dp.h for where each
 * packet goes and plugins/nkframe_l3 for the user-space half.
 *
 * One object, two programs:
 *   l3_from_pod    endpoint hook FROM_POD (netkit peer / tcx or tc ingress of the host end),
 *                  order 500: after policy (100), it routes the packet
 *   dp_uplink_in   the node's uplink, ingress: packets for local pods go straight in
 */
#include "nkframe_dp.h"

/* skb->ifindex is the endpoint's node-side device: the host end of a veth (tcx/tc ingress
 * there), or the netkit primary (netkit_xmit sets skb->dev to the peer of the transmitting pod
 * device before running the BPF_NETKIT_PEER programs).  Nothing per endpoint is compiled in,
 * so every endpoint shares one loaded copy. */
SEC("tc")
int l3_from_pod(struct __sk_buff *skb)
{
	return nk_from_pod(skb, nk_skb_ifindex(skb));
}

SEC("tc")
int dp_uplink_in(struct __sk_buff *skb)
{
	return nk_uplink_in(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
