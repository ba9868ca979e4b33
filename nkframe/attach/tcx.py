"""TCX attachment (Linux 6.6+): BPF_TCX_INGRESS / BPF_TCX_EGRESS links on any device.

TCX runs before any clsact/cls_bpf filter on the same hook, so a program moved from TC to TCX
keeps its place in front of filters the user installed by hand.
"""

from nkframe import bpf
from nkframe.attach.links import LinkBackend
from nkframe.types import Mechanism

backend = LinkBackend(
    Mechanism.TCX,
    {"ingress": bpf.BPF_TCX_INGRESS, "egress": bpf.BPF_TCX_EGRESS},
    feature="tcx",
)
