"""nkframe's VM plugin (entry point ``vm``): a QEMU VM in a pod, on AF_XDP.

An endpoint with ``options={"vm": {...}}`` is a VM's wire: its pod-side device (a veth or
netkit peer, with exactly the queues the VM uses) carries an XDP program that hands every frame
to the AF_XDP socket QEMU bound to that queue, through an XSKMAP pinned for the endpoint.
QEMU loads no BPF program (``inhibit=on``) and the dataplane can be upgraded under a running
VM.  Two ways to get QEMU's sockets into the XSKMAP:

* QEMU 10.1+ puts them there itself: ``-netdev af-xdp,...,inhibit=on,map-path=<pin>``, which
  ``nkframe vm-netdev ENDPOINT`` prints (QEMU needs CAP_NET_RAW, and CAP_BPF to open the pin
  where unprivileged BPF is off);
* any af-xdp QEMU (8.2+, the only way for 8.2 to 10.0): ``nkframe vm-run ENDPOINT --qemu PATH
  -- ARGS`` makes the sockets, puts them there and executes QEMU with ``sock-fds=``
  (:mod:`.launch`; QEMU needs neither capability).

Everything else an endpoint gets comes from the datapath plugins as for a pod (``mode: l3``
or ``l2``): addresses, routes, forwarding, and policy, judged on the node side of the device
before a frame reaches the VM and as the VM's frames leave it.  See docs/vm.md.
"""

from .steer import VmOptions, VmSteering, placement, read_steering, vm_counters

__all__ = ["VmOptions", "VmSteering", "placement", "read_steering", "vm_counters"]
