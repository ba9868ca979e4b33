// SPDX-License-Identifier: GPL-2.0
/* A program the verifier must reject: it reads packet data without a bounds check. Kept apart
 * from test_prog.c so that object still loads. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int bad_read(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;

	return *(volatile __u32 *)(data + 64);
}

char LICENSE[] SEC("license") = "GPL";
