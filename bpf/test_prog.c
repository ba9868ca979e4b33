// SPDX-License-Identifier: GPL-2.0
/* Test object for nkframe's libbpf bindings: a few tc programs and one map of each common kind.
 * Used by tests/host/test_bpf_*.py; not part of any dataplane. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} test_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} test_array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} test_percpu SEC(".maps");

/* Set from Python with BpfObject.set_global before load. */
const volatile __s32 cfg_verdict = TC_ACT_OK;
/* Plain global in .bss: proves writable data sections are found too. */
__u64 seen_packets = 0;

/* Counts packets (per CPU and by length in the hash) and returns the configured verdict. */
SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	__u32 zero = 0, len = skb->len;
	__u32 *pc = bpf_map_lookup_elem(&test_percpu, &zero);
	if (pc)
		(*pc)++;
	__u64 one = 1, *h = bpf_map_lookup_elem(&test_hash, &len);
	if (h)
		__sync_fetch_and_add(h, 1);
	else
		bpf_map_update_elem(&test_hash, &len, &one, BPF_NOEXIST);
	__sync_fetch_and_add(&seen_packets, 1);
	return cfg_verdict;
}

/* Rewrites the first byte of the destination MAC to 0xaa; counts in test_array[1]. */
SEC("tc")
int tc_mark(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 key = 1;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	eth->h_dest[0] = 0xaa;
	__u64 *v = bpf_map_lookup_elem(&test_array, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	return TC_ACT_OK;
}

/* tcx "next": let the following program decide.  Counts in test_array[2]. */
SEC("tc")
int tc_next(struct __sk_buff *skb)
{
	__u32 key = 2;
	__u64 *v = bpf_map_lookup_elem(&test_array, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	return TC_ACT_UNSPEC;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
