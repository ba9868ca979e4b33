// SPDX-License-Identifier: GPL-2.0
/* The VM plugin's TO_POD program: it hands every packet on, and is there for where it puts
 * the packet's path.  With a TO_POD program on an endpoint, the uplink forwards to it through
 * the node-side device (bpf_redirect) instead of straight into the pod (bpf_redirect_peer), so
 * the packet is transmitted by the node-side device, whose checksum offload the plugin turns
 * off: the kernel completes every checksum and segments every GSO packet before the frame
 * reaches the VM's AF_XDP socket, which has no way to say "checksum not filled in" to QEMU. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NK_CONTINUE (-1) /* TC_ACT_UNSPEC == TCX_NEXT == NETKIT_NEXT */

SEC("tc")
int vm_to_pod(struct __sk_buff *skb)
{
	return NK_CONTINUE;
}

char LICENSE[] SEC("license") = "GPL";
