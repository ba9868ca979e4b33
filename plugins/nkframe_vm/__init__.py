"""nkframe's VM plugin (entry point ``vm``): a QEMU VM in a pod, on AF_XDP.

An endpoint with ``options={"vm": {...}}`` is a VM's wire: its pod-side device (a veth or
netkit peer, with exactly the queues the VM uses) carries an XDP program that hands every frame
to the AF_XDP socket QEMU bound to that queue, through an XSKMAP pinned for the endpoint.
QEMU's ``-netdev af-xdp,...,inhibit=on,map-path=<pin>`` puts its sockets there itself, so it
loads no BPF program (it still needs CAP_NET_RAW, and CAP_BPF to open the pin where unprivileged
BPF is off), and the dataplane can be upgraded under a running VM.
``nkframe vm-netdev ENDPOINT`` prints those arguments.

Everything else an endpoint gets comes from the datapath plugins as for a pod (``mode: l3``
or ``l2``): addresses, routes, forwarding, and policy, judged on the node side of the device
before a frame reaches the VM and as the VM's frames leave it.  See docs/vm.md.
"""

from .steer import VmOptions, VmSteering, placement, read_steering, vm_counters

__all__ = ["VmOptions", "VmSteering", "placement", "read_steering", "vm_counters"]
