"""What the L3 and L2 datapath plugins share: the forwarding code (options, MACs, routes, the
endpoint map, counters, the uplink program) in :mod:`.datapath`, and the layout of the BPF maps
it fills in :mod:`.layout`.

Not a plugin itself (it has no entry point and no hook implementations): ``nkframe_l3`` and
``nkframe_l2`` import it, and differ only in how the pod reaches its gateway.
"""
