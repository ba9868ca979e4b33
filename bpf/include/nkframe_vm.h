// SPDX-License-Identifier: GPL-2.0
/* What the VM plugin's two steering programs share (plugins/nkframe_vm): bpf/vm_steer.c (native
 * XDP on the pod side of a veth) and bpf/vm_lease.c (native XDP on a physical NIC whose queues
 * are leased to netkit single devices).  Both hand every frame of a VM's queue to the AF_XDP
 * socket in that queue's XSKMAP slot, and count by the same stats (plugins/nkframe_vm/steer.py
 * STATS names them in this order). */
#ifndef NKFRAME_VM_H
#define NKFRAME_VM_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

enum vm_stat {
	VM_STAT_TO_SOCKET = 0, /* handed to the socket of the frame's queue */
	VM_STAT_NO_SOCKET = 1, /* dropped: no socket in that queue's slot (QEMU not running) */
	VM_STAT_RUNT = 2,      /* dropped: shorter than an Ethernet header */
	VM_STAT_MAX,
};

/* Give a unicast frame the VM's MAC as destination and redirect it to the socket at ``key`` of
 * ``xsks``; XDP_DROP when that slot is empty, so the node's stack never answers for a VM.
 *
 * The MAC: in L3 mode the node forwards with the MAC of whatever device the frame came from,
 * and a virtio NIC that is not promiscuous drops frames for other MACs.  It is read element by
 * element through a volatile pointer: from .rodata, a memcpy cast to plain const would fold to
 * the zeros the object was compiled with. */
static __always_inline long nk_vm_to_socket(struct ethhdr *eth, const volatile __u8 *mac,
					    void *xsks, __u32 key)
{
	if (!(eth->h_dest[0] & 1)) {
		eth->h_dest[0] = mac[0];
		eth->h_dest[1] = mac[1];
		eth->h_dest[2] = mac[2];
		eth->h_dest[3] = mac[3];
		eth->h_dest[4] = mac[4];
		eth->h_dest[5] = mac[5];
	}
	return bpf_redirect_map(xsks, key, XDP_DROP);
}

#endif /* NKFRAME_VM_H */
