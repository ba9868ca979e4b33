"""What the L3 and L2 datapath plugins share: the forwarding code (options, MACs, routes, the
endpoint map, counters, the uplink program) in :mod:`.datapath`, the layout of the BPF maps
it fills in :mod:`.layout`, and their hook implementations in :mod:`.hooks`.

Not a plugin itself (no entry point): ``nkframe_l3`` and ``nkframe_l2`` each make one
:class:`~.hooks.ForwardingHooks`, and differ only in how the pod reaches its gateway.
"""
