// SPDX-License-Identifier: GPL-2.0
/* XDP programs for the AF_XDP benchmark (bench/nkbench/afxdp.py), built by the harness at run
 * time into a temporary directory.
 *
 *   xdp_count_drop  receiver, kernel only: count every frame, drop it
 *   xdp_count_xsk   receiver, to Python: count every frame, redirect it to the AF_XDP socket
 *                   of its queue (dropped when there is none)
 *   xdp_tx          sender: with BPF_PROG_TEST_RUN in live-frames mode, XDP_TX sends each
 *                   repetition's frame out of the ingress device (what xdp-trafficgen does)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} frames SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

static __always_inline void count(void)
{
	__u32 zero = 0;
	__u64 *c = bpf_map_lookup_elem(&frames, &zero);

	if (c)
		*c += 1;
}

SEC("xdp")
int xdp_count_drop(struct xdp_md *ctx)
{
	count();
	return XDP_DROP;
}

SEC("xdp")
int xdp_count_xsk(struct xdp_md *ctx)
{
	count();
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
}

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
