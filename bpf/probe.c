// Trivial programs the feature probes attach to throw-away devices.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return -1; /* continue */
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
