"""netkit native attachment: BPF_NETKIT_PRIMARY / BPF_NETKIT_PEER links on a netkit primary.

Only the primary manages programs, for both ends (the peer gets EACCES).  ``peer`` programs run
when the pod transmits, inside the peer's xmit; ``primary`` programs when the node sends towards
the pod.  In xmit context ``bpf_redirect_peer`` silently drops: redirect with ``bpf_redirect``.
"""

from nkframe import bpf
from nkframe.attach.links import LinkBackend
from nkframe.types import Mechanism

backend = LinkBackend(
    Mechanism.NETKIT,
    {"primary": bpf.BPF_NETKIT_PRIMARY, "peer": bpf.BPF_NETKIT_PEER},
    feature="netkit",
)
