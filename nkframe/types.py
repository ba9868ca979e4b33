"""Public value types.

Everything here is a frozen attrs class: long-lived values, validated on construction, changed
with :func:`attrs.evolve`.  Serialisation lives elsewhere (``to_dict``/``from_dict`` helpers are
plain functions at the bottom so the classes stay data).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from typing import Any, Mapping

import attrs

from nkframe.errors import InvalidSpec

IFNAMSIZ = 16  # the kernel's buffer, NUL included: names hold at most 15 bytes


class DeviceKind(enum.StrEnum):
    """What sits between the node and a pod."""

    NETKIT = "netkit"  # a netkit pair: primary in the node, peer in the pod
    VETH = "veth"  # the fallback where the kernel has no netkit
    NETKIT_SINGLE = "netkit-single"  # one netkit device, no peer (VM / AF_XDP use, Linux 7.1)


class Mechanism(enum.StrEnum):
    """How a program is attached to a device."""

    NETKIT = "netkit"  # BPF_NETKIT_PRIMARY / BPF_NETKIT_PEER links
    TCX = "tcx"  # BPF_TCX_INGRESS / BPF_TCX_EGRESS links (6.6+)
    TC = "tc"  # clsact qdisc + cls_bpf direct-action filters (any kernel)


class AttachMode(enum.StrEnum):
    """What the configuration asks for: a mechanism, or ``auto`` to let nkframe pick."""

    AUTO = "auto"
    NETKIT = "netkit"
    TCX = "tcx"
    TC = "tc"


class DeviceMode(enum.StrEnum):
    L3 = "l3"
    L2 = "l2"


class Hook(enum.StrEnum):
    """Where on an endpoint a program runs, named from the pod's point of view.

    All programs are attached on the node side (netkit primary or host veth end), so a pod can
    never detach them.  ``FROM_POD`` runs on packets the pod transmits; ``TO_POD`` on packets
    going to the pod.
    """

    FROM_POD = "from-pod"
    TO_POD = "to-pod"


class DeviceHook(enum.StrEnum):
    """Where on a node device (the uplink) a program runs."""

    INGRESS = "ingress"
    EGRESS = "egress"


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_ifname(name: str, what: str = "interface name") -> str:
    """Check a Linux interface name as the kernel does (dev_valid_name): 1..15 bytes, not '.'
    or '..', no '/', ':', NUL or whitespace."""
    if not isinstance(name, str) or not name:
        raise InvalidSpec(f"{what} must be a non-empty string")
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        raise InvalidSpec(
            f"{what} {name!r} is {len(raw)} bytes; Linux allows at most {IFNAMSIZ - 1}"
        )
    if name in (".", ".."):
        raise InvalidSpec(f"{what} {name!r} is reserved")
    bad = [c for c in name if c in "/:\0" or c.isspace()]
    if bad:
        raise InvalidSpec(f"{what} {name!r} contains {bad[0]!r}; '/', ':' and whitespace are not allowed")
    return name


def validate_endpoint_id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidSpec(
            f"endpoint id {value!r} must be 1-63 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def parse_interface(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """'10.0.1.5/32' -> IPv4Interface; a bare address gets a host prefix (/32 or /128)."""
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return value
    try:
        return ipaddress.ip_interface(str(value).strip())
    except ValueError:
        raise InvalidSpec(f"{value!r} is not an IP address or CIDR (e.g. 10.0.1.5/32)") from None


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        return ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as e:
        raise InvalidSpec(f"{value!r} is not a valid CIDR ({e})") from None


def _options(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"options must be a mapping of option name to value, not {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise InvalidSpec(f"option names must be strings, not {bad[0]!r}")
    return dict(value)


def reserved_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` can never be a pod's address, or ``None``."""
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the limited broadcast address"
    if ip.is_link_local:
        return "a link-local address (169.254.0.0/16 and fe80::/10 are the datapath's gateways and neighbour discovery's)"
    if ip.version == 4 and ip in ipaddress.IPv4Network("240.0.0.0/4"):
        return "a reserved (class E) address"
    return None


def _addresses(values: Any) -> tuple:
    if isinstance(values, (str, ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise InvalidSpec(f"addresses must be a list of addresses such as ['10.0.1.5/32'], not {type(values).__name__}")
    out = tuple(parse_interface(v) for v in values)
    seen = set()
    for a in out:
        if a.ip in seen:
            raise InvalidSpec(f"address {a.ip} is listed twice")
        why = reserved_reason(a.ip)
        if why:
            raise InvalidSpec(f"address {a.ip} is {why}; a pod cannot have it")
        seen.add(a.ip)
    return out


_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def _mac(value: str | None) -> str | None:
    if value is None:
        return None
    v = str(value).lower()
    if not _MAC_RE.match(v):
        raise InvalidSpec(f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(v[:2], 16) & 1:
        raise InvalidSpec(f"{value!r} is a multicast MAC address; a device needs a unicast one")
    return v


def _enum(cls):
    def convert(value):
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidSpec(f"{value!r} is not a valid {cls.__name__} (choose one of: {choices})") from None

    return convert


@attrs.frozen
class LeaseSpec:
    """A physical RX queue of a node device (the uplink NIC) to lease to a VM endpoint's netkit
    single device (netdev ``queue-create``, Linux 7.1).  Traffic the NIC steers to that queue
    is then received on the single device's matching queue inside the pod, where an AF_XDP
    socket (QEMU's af-xdp backend) can bind it."""

    uplink: str = attrs.field(validator=lambda _i, _a, v: validate_ifname(v, "lease uplink name"))
    queue: int = attrs.field()

    @queue.validator
    def _check_queue(self, _a, value):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise InvalidSpec(f"lease queue {value!r} must be an RX queue number 0..65535")

    def __str__(self) -> str:
        return f"{self.uplink}:{self.queue}"


def _lease(value: Any) -> LeaseSpec:
    """A LeaseSpec from itself, ``{"uplink": "eth1", "queue": 3}`` or ``"eth1:3"``."""
    if isinstance(value, LeaseSpec):
        return value
    if isinstance(value, str):
        dev, sep, q = value.rpartition(":")
        if not sep or not q.isdigit():
            raise InvalidSpec(f"lease {value!r} must be DEVICE:QUEUE (e.g. eth1:3)")
        return LeaseSpec(dev, int(q))
    if isinstance(value, Mapping):
        unknown = set(value) - {"uplink", "queue"}
        if unknown or not {"uplink", "queue"} <= set(value):
            raise InvalidSpec(f"lease {dict(value)!r} must have exactly the keys 'uplink' and 'queue'")
        return LeaseSpec(value["uplink"], value["queue"])
    raise InvalidSpec(f"lease {value!r} must be DEVICE:QUEUE or {{'uplink': ..., 'queue': ...}}")


#: A single device's RX queues beyond its leases: its own queue 0 (netkit keeps one).
MAX_LEASES = 64


def _leases(values: Any) -> tuple:
    if isinstance(values, (str, LeaseSpec)) or isinstance(values, Mapping):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise InvalidSpec(f"leases must be a list such as ['eth1:3'], not {type(values).__name__}")
    out = tuple(_lease(v) for v in values)
    if len(out) > MAX_LEASES:
        raise InvalidSpec(f"{len(out)} leases asked for; an endpoint takes at most {MAX_LEASES}")
    if len(set(out)) != len(out):
        dup = next(x for x in out if out.count(x) > 1)
        raise InvalidSpec(f"lease {dup} is listed twice")
    devices = sorted({x.uplink for x in out})
    if len(devices) > 1:
        # netkit refuses it (7.3: EOPNOTSUPP "Leasing queues from different devices not supported").
        raise InvalidSpec(f"leases name {', '.join(devices)}: a netkit single device takes queues of one "
                          "physical device only")
    return out


def default_host_ifname(endpoint_id: str) -> str:
    """A stable node-side name: 'nk' + 10 hex digits of a hash of the id (12 bytes, < 15)."""
    return "nk" + hashlib.sha256(endpoint_id.encode()).hexdigest()[:10]


@attrs.frozen
class EndpointSpec:
    """What a user asks for: one pod (or VM) attached to the node.

    ``netns`` names an existing network namespace (``/run/netns/<name>``) or is an absolute
    path to a namespace file (what CNI passes); nkframe never creates it.
    """

    id: str = attrs.field(validator=lambda _i, _a, v: validate_endpoint_id(v))
    netns: str = attrs.field()
    addresses: tuple = attrs.field(factory=tuple, converter=_addresses)
    ifname: str = attrs.field(default="eth0", validator=lambda _i, _a, v: validate_ifname(v, "pod interface name"))
    host_ifname: str | None = attrs.field(default=None)
    mode: DeviceMode = attrs.field(default=DeviceMode.L3, converter=_enum(DeviceMode))
    device: str = attrs.field(default="auto")
    attach: AttachMode = attrs.field(default=AttachMode.AUTO, converter=_enum(AttachMode))
    mtu: int | None = attrs.field(default=None)
    mac: str | None = attrs.field(default=None, converter=_mac)
    host_mac: str | None = attrs.field(default=None, converter=_mac)
    # Free-form per-plugin settings, e.g. {"policy": {...}}; plugins validate their own keys.
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=lambda v: _options(v))
    # Physical RX queues leased to a netkit single device (device="netkit-single" only).
    leases: tuple = attrs.field(factory=tuple, converter=_leases)

    @netns.validator
    def _check_netns(self, _a, value):
        if not isinstance(value, str) or not value:
            raise InvalidSpec("netns must name a network namespace or be a path to one")
        if not value.startswith("/") and ("/" in value or value in (".", "..")):
            raise InvalidSpec(f"netns name {value!r} may not contain '/'; pass an absolute path instead")

    @host_ifname.validator
    def _check_host_ifname(self, _a, value):
        if value is not None:
            validate_ifname(value, "node-side interface name")

    @device.validator
    def _check_device(self, _a, value):
        allowed = {"auto"} | {k.value for k in DeviceKind}
        if value not in allowed:
            raise InvalidSpec(f"device {value!r} is not one of: {', '.join(sorted(allowed))}")

    @mtu.validator
    def _check_mtu(self, _a, value):
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSpec(f"mtu must be an integer 68..65535, not {value!r}")
        if not 68 <= value <= 65535:
            raise InvalidSpec(f"mtu {value} is outside 68..65535")

    @mac.validator
    def _check_mac_mode(self, _a, value):
        if value is not None and self.mode is DeviceMode.L3:
            raise InvalidSpec("MAC addresses only apply in L2 mode (netkit L3 devices have none)")

    def __attrs_post_init__(self):
        if self.device != DeviceKind.NETKIT_SINGLE.value:
            if self.leases:
                raise InvalidSpec(
                    f"leases need device {DeviceKind.NETKIT_SINGLE.value!r} (a VM endpoint); "
                    f"this endpoint asks for device {self.device!r}")
            return
        # What a single device cannot have, refused before the kernel is asked.
        if self.host_mac is not None:
            raise InvalidSpec("a netkit single device has no node side: host_mac does not apply "
                              "(set mac for the device in the pod)")
        if self.attach is not AttachMode.AUTO:
            raise InvalidSpec(
                f"attach {self.attach.value!r}: a netkit single device runs no BPF programs (Linux "
                "refuses them); a VM endpoint's traffic is steered and policed on the uplink")
        if self.options.get("netkit_policy", "pass") != "pass":
            raise InvalidSpec("a netkit single device only has the pass policy; a VM endpoint's "
                              "traffic is policed on the uplink, not by the device")

    @property
    def node_ifname(self) -> str:
        """The node-side device's name; for a netkit single device, the name it is created
        under in the node namespace before it moves into the pod."""
        return self.host_ifname or default_host_ifname(self.id)

    @property
    def single(self) -> bool:
        """A netkit single device (a VM endpoint): one device, in the pod, no node side."""
        return self.device == DeviceKind.NETKIT_SINGLE.value


@attrs.frozen
class ProgramSpec:
    """One BPF program a plugin contributes to a hook point.

    ``order`` places it in the chain (lower runs first; first-party: policy 100, forwarding
    500); ``before``/``after`` name other programs and win over ``order``.  The program returns
    -1 ("continue") to hand the packet on, so chains compose on every mechanism.
    """

    name: str = attrs.field()
    object: str = attrs.field()  # path to a BPF ELF object
    program: str = attrs.field()  # the function name inside the object
    hook: Hook | DeviceHook = attrs.field()
    order: int = 500
    before: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    after: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    # .rodata globals set before load, name -> bytes (e.g. endpoint id as <I).
    globals: Mapping[str, bytes] = attrs.field(factory=dict, converter=dict)
    # map name -> pin scope: "global" (shared by every endpoint) or "endpoint".
    maps: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    plugin: str = ""
    # One loaded copy per node, attached by every endpoint that asks for the same (object,
    # globals): no per-endpoint load and verification.  Only for programs with nothing per
    # endpoint in them (no endpoint-scoped maps; globals the same for every endpoint).
    shared: bool = False

    @name.validator
    def _check_name(self, _a, value):
        if not re.match(r"^[a-z][a-z0-9_]{0,30}$", value or ""):
            raise InvalidSpec(f"program name {value!r}: use 1-31 of a-z, 0-9, '_' starting with a letter")

    @maps.validator
    def _check_maps(self, _a, value):
        for k, scope in value.items():
            if scope not in ("global", "endpoint"):
                raise InvalidSpec(f"map {k!r}: pin scope {scope!r} is not 'global' or 'endpoint'")

    def __attrs_post_init__(self):
        if self.shared:
            own = sorted(k for k, scope in self.maps.items() if scope == "endpoint")
            if own:
                raise InvalidSpec(
                    f"program {self.name}: a shared program cannot use endpoint-scoped maps "
                    f"({', '.join(own)}); make them 'global' or drop shared=True"
                )


@attrs.frozen
class AttachedProgram:
    """A program attached to a device, as read back from the kernel and bpffs.

    ``hook`` is the engine's hook point the program serves (a :class:`Hook` value for an
    endpoint, a :class:`DeviceHook` value for a node device), ``""`` when nkframe did not attach
    it (a program the kernel lists that is not among nkframe's pins).  ``direction`` is the
    mechanism's own word for where it runs (netkit ``primary``/``peer``, TCX and TC
    ``ingress``/``egress``): one hook maps to one direction per mechanism
    (:func:`nkframe.attach.direction_for`).  ``ifindex`` 0: not on a device (a link whose
    device went away, or a TC pin whose device is gone).
    """

    name: str
    hook: str
    mechanism: Mechanism
    prog_id: int
    link_id: int = 0  # 0 for TC (no link object)
    pin: str = ""
    tc_priority: int = 0
    tc_handle: int = 0
    ifindex: int = 0
    direction: str = ""


@attrs.frozen
class LeaseInfo:
    """A lease as the kernel reports it: the single device's queue and the physical queue."""

    queue: int  # the RX queue on the endpoint's single device
    uplink_ifindex: int  # the physical device, as seen from the node namespace
    uplink_queue: int
    uplink: str = ""  # its name, when the physical device is in the node namespace


@attrs.frozen
class Endpoint:
    """An endpoint as nkframe holds it: the spec plus what was built for it."""

    spec: EndpointSpec
    device_kind: DeviceKind
    node_ifindex: int
    mechanism: Mapping[str, Mechanism] = attrs.field(converter=dict)  # hook -> mechanism
    reasons: Mapping[str, str] = attrs.field(factory=dict, converter=dict)  # why those choices
    programs: tuple[AttachedProgram, ...] = attrs.field(default=(), converter=tuple)
    leases: tuple[LeaseInfo, ...] = attrs.field(default=(), converter=tuple)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def unheld_leases(self) -> list[LeaseSpec]:
        """The spec's leases the kernel does not report as held by this endpoint's device."""
        held = {(x.uplink, x.uplink_queue) for x in self.leases}
        return [x for x in self.spec.leases if (x.uplink, x.queue) not in held]


METRIC_KINDS = ("counter", "gauge")
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _metric_name(_inst, _attr, value: str) -> None:
    if not _METRIC_NAME.match(value) or value.startswith("nkframe_") or value.endswith("_total"):
        raise InvalidSpec(
            f"metric name {value!r}: use lower-case letters, digits and '_', without the "
            f"'nkframe_' prefix and (for counters) without '_total': nkframe adds both")


def _metric_samples(inst, _attr, value) -> None:
    for sample in value:
        if len(sample) != 2 or len(sample[0]) != len(inst.labels):
            raise InvalidSpec(f"metric {inst.name}: a sample is ((label values...), value) with "
                              f"one value per label {list(inst.labels)}, not {sample!r}")


@attrs.frozen
class Metric:
    """One metric family a plugin reports to the agent's Prometheus endpoint
    (``nkframe_metrics`` hook), read when a scraper asks.

    ``name`` without the ``nkframe_`` prefix (and, for a counter, without ``_total``): the agent
    adds them.  ``samples`` are ``((label values...), value)``, one value per name in
    ``labels``.  Label values must come from a bounded set (endpoint ids, reasons, directions):
    every distinct value is a time series kept by whoever scrapes.
    """

    name: str = attrs.field(validator=_metric_name)
    kind: str = attrs.field(validator=attrs.validators.in_(METRIC_KINDS))
    help: str
    labels: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    samples: tuple = attrs.field(default=(), converter=lambda s: tuple((tuple(str(x) for x in k), float(v)) for k, v in s),
                                 validator=_metric_samples)


@attrs.frozen
class EndpointReport:
    """What a plugin knows about one endpoint beyond counters (``nkframe_endpoint_report`` hook):
    ``facts`` are shown by ``nkframe status`` under the plugin's name (``details`` in
    ``--json``), ``problems`` join the endpoint's problems, so ``status --check`` fails on them
    and ``nkframe reconcile`` lists them.  A problem says what is wrong and what to do about it.
    """

    facts: Mapping[str, str] = attrs.field(factory=dict, converter=lambda d: {str(k): str(v) for k, v in dict(d).items()})
    problems: tuple[str, ...] = attrs.field(default=(), converter=lambda p: tuple(str(x) for x in p))
