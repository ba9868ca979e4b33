"""Every kernel uAPI number nkframe uses, in one place.

Values come from the kernel's uAPI headers (``include/uapi/linux/bpf.h``, ``if_link.h``,
``netlink.h``, ``genetlink.h``, ``rtnetlink.h``, ``if_addr.h``, ``neighbour.h``, ``if.h``,
``magic.h``) and the netlink YAML specs.  The system headers here are 6.1's, so numbers newer
than that are spelled out rather than taken from the cffi module.  This module imports nothing:
any layer may use it.  A module that needs a number imports it from here; defining one again
elsewhere is a bug (``tests/unit/test_layers.py`` checks).
"""

# ---------------------------------------------------------------------------------------------
# bpf(2): linux/bpf.h
# ---------------------------------------------------------------------------------------------

# commands
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28

# attach types
BPF_XDP = 37
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_NETKIT_PRIMARY = 54
BPF_NETKIT_PEER = 55

# attach flags (mprog anchors, 6.6+)
BPF_F_REPLACE = 1 << 2
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_ID = 1 << 5
BPF_F_LINK = 1 << 13

# program types
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_SCHED_ACT = 4
BPF_PROG_TYPE_XDP = 6

# map types
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_XSKMAP = 17
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21

# link types
BPF_LINK_TYPE_XDP = 6
BPF_LINK_TYPE_TCX = 11
BPF_LINK_TYPE_NETKIT = 13

# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# XDP attach flags (linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

# legacy TC hook points (libbpf enum bpf_tc_attach_point)
TC_INGRESS = 1
TC_EGRESS = 2


ENOTSUPP = 524  # the kernel-internal "not supported" that bpf(2) leaks to user space

BPF_FS_MAGIC = 0xCAFE4A11  # linux/magic.h: statfs(2) f_type of a bpffs mount

# ---------------------------------------------------------------------------------------------
# netlink: linux/netlink.h, linux/genetlink.h
# ---------------------------------------------------------------------------------------------

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3

# ---------------------------------------------------------------------------------------------
# rtnetlink: linux/rtnetlink.h, if_addr.h, neighbour.h, if.h
# ---------------------------------------------------------------------------------------------

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_NODAD = 0x02
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1
RTN_LOCAL = 2
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
IFLA_INFO_KIND = 1
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEIGH = 18, 22, 26, 30
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_OPERSTATE = 1, 3, 4, 5, 16
IFLA_LINKINFO, IFLA_STATS64, IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 18, 23, 31, 32
IFLA_LINK_NETNSID, IFLA_GSO_MAX_SIZE, IFLA_GRO_MAX_SIZE = 37, 41, 58
IFLA_NET_NS_FD = 28
IFLA_INFO_DATA = 2
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

# link kinds' IFLA_INFO_DATA (linux/if_link.h, linux/veth.h)
VETH_INFO_PEER = 1
IFLA_NETKIT_PEER_INFO, IFLA_NETKIT_PRIMARY, IFLA_NETKIT_POLICY, IFLA_NETKIT_PEER_POLICY = 1, 2, 3, 4
IFLA_NETKIT_MODE, IFLA_NETKIT_SCRUB, IFLA_NETKIT_PEER_SCRUB = 5, 6, 7
IFLA_NETKIT_HEADROOM, IFLA_NETKIT_TAILROOM, IFLA_NETKIT_PAIRING = 8, 9, 10

# ---------------------------------------------------------------------------------------------
# generic netlink families: linux/genetlink.h (ctrl), linux/netdev.h (Documentation/netlink/
# specs/netdev.yaml; op ids count the spec's notifications too, hence the gaps)
# ---------------------------------------------------------------------------------------------

CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_VERSION = 1, 2, 3
CTRL_ATTR_OPS = 6
CTRL_ATTR_OP_ID, CTRL_ATTR_OP_FLAGS = 1, 2

NETDEV_FAMILY_VERSION = 1
NETDEV_CMD_DEV_GET = 1
NETDEV_CMD_QUEUE_GET = 10
NETDEV_CMD_QUEUE_CREATE = 16
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
NETDEV_A_QUEUE_ID, NETDEV_A_QUEUE_IFINDEX, NETDEV_A_QUEUE_TYPE, NETDEV_A_QUEUE_NAPI_ID = 1, 2, 3, 4
NETDEV_A_QUEUE_DMABUF, NETDEV_A_QUEUE_IO_URING, NETDEV_A_QUEUE_XSK, NETDEV_A_QUEUE_LEASE = 5, 6, 7, 8
NETDEV_A_LEASE_IFINDEX, NETDEV_A_LEASE_QUEUE, NETDEV_A_LEASE_NETNS_ID = 1, 2, 3

# ---------------------------------------------------------------------------------------------
# ethtool: linux/sockios.h, linux/ethtool.h
# ---------------------------------------------------------------------------------------------

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
ETHTOOL_GTXCSUM = 0x00000016
ETHTOOL_STXCSUM = 0x00000017

# ---------------------------------------------------------------------------------------------
# sockets: linux/socket.h
# ---------------------------------------------------------------------------------------------

AF_XDP = 44

# ---------------------------------------------------------------------------------------------
# capabilities and prctl(2): linux/capability.h, linux/prctl.h
# ---------------------------------------------------------------------------------------------

CAP_IPC_LOCK = 14
LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
