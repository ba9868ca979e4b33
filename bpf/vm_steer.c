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
 * Unicast frames get the VM's MAC as destination (nk_vm_to_socket, bpf/include/nkframe_vm.h). */
#include "nkframe_vm.h"

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
	verdict = nk_vm_to_socket(eth, vm_mac, &vm_xsks, queue);
	count(verdict == XDP_REDIRECT ? VM_STAT_TO_SOCKET : VM_STAT_NO_SOCKET);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
