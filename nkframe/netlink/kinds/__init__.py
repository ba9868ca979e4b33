"""The IFLA_INFO_DATA of each link kind nkframe creates, one module per kind, declared for
:mod:`nkframe.netlink.codec` (found by :data:`nkframe.netlink.ifla.KINDS`)."""
