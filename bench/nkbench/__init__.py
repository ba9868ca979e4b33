"""nkframe's benchmark harness (``make bench`` runs ``bench/run.py``).

Every figure is measured beside its baseline in the same run and reported as one JSON object:
``{"name", "value", "unit", "baseline_name", "baseline_value", "ratio", "n", "spread"}``.
``value`` is the median over ``n`` repeated runs, ``spread`` the range (max - min) of those
runs in the same unit, ``ratio`` is ``value / baseline_value``.

Sections: :mod:`.control` (endpoint add/remove, 1,000 endpoints, agent memory and restart),
:mod:`.perpacket` (BPF_PROG_TEST_RUN ns per packet), :mod:`.throughput` (iperf3),
:mod:`.afxdp` (AF_XDP from Python), :mod:`.vmtier` (netkit vs veth inside the netkit VM).
Everything runs in network namespaces and a private bpffs mount the harness makes and removes.
"""
