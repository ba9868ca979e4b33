// SPDX-License-Identifier: GPL-2.0
/* The VM plugin's leased-queue steering (plugins/nkframe_vm/lease.py): XDP, native mode, on a
 * physical NIC in the node namespace some of whose RX queues are leased to VM endpoints' netkit
 * single devices (netdev queue-create, Linux 7.1+).  One program per NIC, shared by every VM
 * endpoint leasing one of its queues.
 *
 * A frame on physical queue P goes to the AF_XDP socket of the VM that leases P.  QEMU (libxdp's
 * xsk_socket__update_xskmap) puts the socket bound to netkit queue q at key q of its endpoint's
 * own XSKMAP (map-path), while this program sees the physical rx_queue_index, so per physical
 * queue it holds the endpoint's XSKMAP (vm_lease_xsks, an array of maps) and the key in it
 * (vm_lease_slots).  The kernel delivers a frame redirected from P into the socket bound to the
 * netkit queue leasing P.  Frames on queues no endpoint leases pass to the node's stack; a
 * leased queue with no socket in its slot (QEMU not running) drops and counts, as the veth
 * placement does (the node's stack never answers for a VM). */
#include "nkframe_vm.h"

#ifndef NK_VM_LEASE_QUEUES
#define NK_VM_LEASE_QUEUES 256 /* physical queues the tables cover */
#endif
#ifndef NK_VM_XSK_SLOTS
#define NK_VM_XSK_SLOTS 65 /* an endpoint's XSKMAP: netkit queue 0 + up to 64 leased ones */
#endif

struct vm_xsks_inner {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, NK_VM_XSK_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
};

/* physical queue -> the XSKMAP of the endpoint leasing it */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, NK_VM_LEASE_QUEUES);
	__type(key, __u32);
	__array(values, struct vm_xsks_inner);
} vm_lease_xsks SEC(".maps");

struct vm_lease_slot {
	__u32 key;         /* the netkit queue id: the socket's key in the endpoint's XSKMAP */
	__u8 mac[ETH_ALEN]; /* the VM's MAC: unicast frames get it as destination */
	__u8 pad[2];
};

/* physical queue -> where in that XSKMAP */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NK_VM_LEASE_QUEUES);
	__type(key, __u32);
	__type(value, struct vm_lease_slot);
} vm_lease_slots SEC(".maps");

/* per-CPU counters, slot P * VM_STAT_MAX + stat: an endpoint's are those of its queues */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NK_VM_LEASE_QUEUES * VM_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} vm_lease_stats SEC(".maps");

static __always_inline void count(__u32 queue, __u32 stat)
{
	__u32 slot = queue * VM_STAT_MAX + stat;
	__u64 *c = bpf_map_lookup_elem(&vm_lease_stats, &slot);

	if (c)
		*c += 1;
}

SEC("xdp")
int vm_lease(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 queue = ctx->rx_queue_index;
	struct vm_lease_slot *slot;
	void *xsks;
	long verdict;

	xsks = bpf_map_lookup_elem(&vm_lease_xsks, &queue);
	if (!xsks)
		return XDP_PASS; /* not a leased queue (or one out of the table's range) */
	slot = bpf_map_lookup_elem(&vm_lease_slots, &queue);
	if (!slot)
		return XDP_PASS;
	if ((void *)(eth + 1) > data_end) {
		count(queue, VM_STAT_RUNT);
		return XDP_DROP;
	}
	verdict = nk_vm_to_socket(eth, slot->mac, xsks, slot->key);
	count(queue, verdict == XDP_REDIRECT ? VM_STAT_TO_SOCKET : VM_STAT_NO_SOCKET);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
