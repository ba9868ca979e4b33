"""nkframe's KubeVirt network binding: a hook sidecar that gives a VMI interface QEMU's
``-netdev af-xdp`` on an nkframe VM endpoint (see contrib/kubevirt/README.md)."""
