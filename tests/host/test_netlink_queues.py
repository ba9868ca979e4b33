"""The netdev generic netlink family on the running kernel.

The 6.18 host has the family but no queue-create (queue leasing is Linux 7.1): ops() must say so
and queue_create must raise NotSupported from the kernel's own refusal.  Queues are read back from
a veth made with a chosen number of queues.
"""

from __future__ import annotations

import os
import secrets

import pytest

from nkframe import netns, probe
from nkframe.errors import InvalidSpec, KernelError, NetnsNotFound, NotSupported
from nkframe.netlink import links, netdev
from nkframe.netlink.netdev import NetdevFamily, QueueType

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


@pytest.fixture
def ns():
    name = f"nkt-{secrets.token_hex(4)}"
    netns.create(name)
    try:
        try:
            with NetdevFamily(name) as fam:
                has_queue_get = "queue-get" in fam.ops()
        except NotSupported as e:
            pytest.skip(str(e))
        if not has_queue_get:
            pytest.skip("netdev queue-get needs Linux 6.8+")
        yield name
    finally:
        netns.delete(name)


@pytest.fixture
def veth(ns):
    links.create_veth(links.VethSpec("va", "vb", num_rx_queues=4, num_tx_queues=2), netns=ns)
    links.set_up("va", ns)
    links.set_up("vb", ns)
    return links.ifindex("va", ns)


def test_ops_lists_what_the_kernel_has(ns):
    with NetdevFamily(ns) as fam:
        ops = fam.ops()
        assert {"dev-get", "queue-get"} <= ops
        assert fam.family.id >= 0x10  # dynamically allocated ids start above GENL_ID_CTRL
        lease = fam.has_queue_lease()
        assert lease == ("queue-create" in ops)


def test_queue_get_and_dump(ns, veth):
    with NetdevFamily(ns) as fam:
        q = fam.queue_get(veth, 3, QueueType.RX)
        assert (q.ifindex, q.id, q.type, q.lease) == (veth, 3, QueueType.RX, None)
        assert fam.queue_get(veth, 1, "tx").type == QueueType.TX
        qs = fam.queues(veth)
        assert sorted((x.type, x.id) for x in qs) == [
            (QueueType.RX, 0), (QueueType.RX, 1), (QueueType.RX, 2), (QueueType.RX, 3),
            (QueueType.TX, 0), (QueueType.TX, 1),
        ]


def test_queue_get_errors(ns, veth):
    with NetdevFamily(ns) as fam:
        with pytest.raises(InvalidSpec, match="no such queue"):
            fam.queue_get(veth, 4, "rx")
        with pytest.raises(KernelError) as ei:
            fam.queue_get(veth + 1000, 0, "rx")
        assert ei.value.errno == 19  # ENODEV
        links.set_down("va", ns)
        with pytest.raises(KernelError, match="down"):
            fam.queue_get(veth, 0, "rx")


def test_queue_create_refused_on_kernels_without_leasing(ns, veth):
    with NetdevFamily(ns) as fam:
        if fam.has_queue_lease():
            pytest.skip("this kernel has queue-create; the refusal path cannot be seen here")
        # Sent for real: the kernel answers EOPNOTSUPP for an op it does not know.
        with pytest.raises(NotSupported) as ei:
            fam.queue_create(veth, lease_ifindex=1, lease_queue_id=0)
        assert ei.value.feature == "queue_lease"
        assert "7.1" in ei.value.reason


def test_netdev_family_in_a_missing_netns_creates_nothing():
    ghost = f"nkt-{secrets.token_hex(4)}"
    with pytest.raises(NetnsNotFound):
        NetdevFamily(ghost)
    assert not os.path.lexists(f"/run/netns/{ghost}")


def test_socket_is_bound_to_its_netns(ns, veth):
    """A dump from the family in `ns` lists only that namespace's devices."""
    with NetdevFamily(ns) as fam:
        seen = {q.ifindex for q in fam.queues()}
    here = {ls.ifindex for ls in links.list_links(ns)}
    assert veth in seen
    assert seen <= here


# --- Linux 7.1+: queue leasing for real (the vm-next tier) ------------------------------------


@pytest.fixture
def single(ns):
    """A netkit device in single mode with spare RX queues: what a lease goes to."""
    from nkframe.netlink.netkit import NetkitSpec, create_netkit

    if not probe.features().supported("netkit_single"):
        pytest.skip(f"no netkit single mode: {probe.features()['netkit_single'].reason}")
    create_netkit(NetkitSpec.single("nk-vm", num_rx_queues=4), netns=ns)
    links.set_up("nk-vm", ns)
    return links.ifindex("nk-vm", ns)


@pytest.mark.next_kernel
def test_a_lease_from_a_driver_without_queue_ops_is_not_supported(ns, veth, single):
    """Issue 13: veth (like virtio_net) has no queue management ops; the kernel refuses the
    lease (7.3: EINVAL with an extack), and we say NotSupported naming the driver, not a bare
    kernel error.  Nothing is leased afterwards."""
    with NetdevFamily(ns) as fam:
        if not fam.has_queue_lease():
            pytest.skip("the netdev family has no queue-create (queue leasing needs Linux 7.1+)")
        with pytest.raises(NotSupported) as ei:
            fam.queue_create(single, lease_ifindex=veth, lease_queue_id=0)
        assert ei.value.feature == "queue_lease"
        assert "lease device driver: veth" in ei.value.reason, ei.value.reason
        assert "queue management" in ei.value.reason
        assert all(q.lease is None for q in fam.queues(veth) + fam.queues(single))
