// SPDX-License-Identifier: GPL-2.0
/* The VM plugin's steering program (plugins/nkframe_vm): XDP, native mode, on the pod side of
 * a VM endpoint's veth.  The device is the VM's wire: every frame that reaches it goes to the
 * AF_XDP socket QEMU bound to the queue it arrived on, through the endpoint's pinned XSKMAP
 * (QEMU's -netdev af-xdp map-path).  Nothing reaches the pod's own stack; with no socket in the
 * slot (QEMU not running) the frame is dropped and counted, so the pod's stack never answers
 * for the VM.
 *
 * Policy is not judged here: frames only reach this device through the node side of the
 * endpoint, where the policy plugin's programs run (ingress before the device, egress as the
 * VM's frames leave it), as for every pod.
 *
 * Unicast frames get the VM's MAC as destination: in L3 mode the node forwards with the MAC of
 * whatever device it came from (bpf_redirect_peer keeps the uplink's header), and a virtio NIC
 * that is not promiscuous drops frames for other MACs. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#ifndef NK_VM_MAX_QUEUES
#define NK_VM_MAX_QUEUES 64
#endif

/* The VM's MAC (the pod-side device's), set before load. */
const volatile __u8 vm_mac[ETH_ALEN] = {};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, NK_VM_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} vm_xsks SEC(".maps");

enum vm_stat {
	VM_STAT_TO_SOCKET = 0, /* handed to the socket of the frame's queue */
	VM_STAT_NO_SOCKET = 1, /* dropped: no socket in that queue's slot */
	VM_STAT_RUNT = 2,      /* dropped: shorter than an Ethernet header */
	VM_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VM_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} vm_stats SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&vm_stats, &slot);

	if (c)
		*c += 1;
}

SEC("xdp")
int vm_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 queue = ctx->rx_queue_index;
	long verdict;

	if ((void *)(eth + 1) > data_end) {
		count(VM_STAT_RUNT);
		return XDP_DROP;
	}
	if (!(eth->h_dest[0] & 1)) {
		/* Element by element: each read of the volatile array is a load from .rodata (a
		 * memcpy from it cast to plain const would fold to the zeros it was compiled with). */
		eth->h_dest[0] = vm_mac[0];
		eth->h_dest[1] = vm_mac[1];
		eth->h_dest[2] = vm_mac[2];
		eth->h_dest[3] = vm_mac[3];
		eth->h_dest[4] = vm_mac[4];
		eth->h_dest[5] = vm_mac[5];
	}
	verdict = bpf_redirect_map(&vm_xsks, queue, XDP_DROP);
	count(verdict == XDP_REDIRECT ? VM_STAT_TO_SOCKET : VM_STAT_NO_SOCKET);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
