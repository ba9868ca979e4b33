// A packet counter that hands every packet on: the smallest useful program in a chain.
// Used by the attach conformance tests and as the example in the plugin author's guide.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NK_CONTINUE (-1) /* TC_ACT_UNSPEC == TCX_NEXT == NETKIT_NEXT */

// Which slot of `counts` this instance increments; set before load.
const volatile __u32 SLOT = 0;
// What to return: NK_CONTINUE normally; 2 (TC_ACT_SHOT) makes it a dropper for tests.
const volatile __s32 VERDICT = NK_CONTINUE;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tc")
int count(struct __sk_buff *skb)
{
	__u32 slot = SLOT;
	__u64 *c = bpf_map_lookup_elem(&counts, &slot);

	if (c)
		*c += 1;
	return VERDICT;
}

char LICENSE[] SEC("license") = "GPL";
