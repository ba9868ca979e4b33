"""What the binding does to a domain: the VMI's interfaces bound to it, the QEMU arguments of
their nkframe VM endpoints (``nkframe vm-netdev --json``), and the rewritten domain XML.

Everything is looked up and checked before the domain is touched: an interface whose endpoint is
missing or not ready, a MAC the endpoint's steering would not deliver to, or a malformed VMI is
an error, never a domain with some interfaces done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import domain as dom

DEFAULT_BINDING = "nkframe-afxdp"
#: KubeVirt's name for a secondary network's pod interface: "pod" + 11 hex digits of sha256(name).
HASHED_PREFIX, HASHED_LEN = "pod", 11
PRIMARY_POD_IFNAME = "eth0"
NETNS_RUN_DIR = "/run/netns"


class InvalidVmi(ValueError):
    """The VMI JSON is malformed or asks for something the binding cannot do."""


class EndpointError(RuntimeError):
    """The interface's nkframe VM endpoint is missing, not ready, or does not fit the VMI."""


@dataclass(frozen=True)
class BoundInterface:
    name: str  # the VMI interface (= network) name
    pod_ifname: str  # the pod device nkframe's CNI made for it
    mac: str | None
    pci_address: str | None
    index: int  # among the interfaces of this binding, in VMI order


def hashed_ifname(network_name: str) -> str:
    return HASHED_PREFIX + hashlib.sha256(network_name.encode()).hexdigest()[:HASHED_LEN]


def _obj(v, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise InvalidVmi(f"{what} must be an object, not {type(v).__name__}")
    return dict(v)


def _list(v, what: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidVmi(f"{what} must be a list, not {type(v).__name__}")
    return v


def _str(v, what: str) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise InvalidVmi(f"{what} must be a string, not {type(v).__name__}")
    return v


def load_vmi(raw: bytes) -> dict:
    try:
        vmi = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidVmi(f"the VMI is not JSON: {e}") from None
    if not isinstance(vmi, dict):
        raise InvalidVmi(f"the VMI must be a JSON object, not {type(vmi).__name__}")
    return vmi


def bound_interfaces(vmi: dict, binding: str) -> list[BoundInterface]:
    """The VMI's interfaces with ``binding: {name: <binding>}``, with their pod device names
    (KubeVirt's naming: the primary network's ``eth0``, or its status' ``podInterfaceName``; a
    secondary Multus network's ``pod<hash>``)."""
    spec = _obj(vmi.get("spec"), "spec")
    devices = _obj(_obj(spec.get("domain"), "spec.domain").get("devices"), "spec.domain.devices")
    ifaces = _list(devices.get("interfaces"), "spec.domain.devices.interfaces")
    networks = {}
    for i, n in enumerate(_list(spec.get("networks"), "spec.networks")):
        n = _obj(n, f"spec.networks[{i}]")
        name = _str(n.get("name"), f"spec.networks[{i}].name")
        if name is None:
            raise InvalidVmi(f"spec.networks[{i}] has no name")
        networks[name] = n
    statuses = {}
    for i, s in enumerate(_list(_obj(vmi.get("status"), "status").get("interfaces"), "status.interfaces")):
        s = _obj(s, f"status.interfaces[{i}]")
        if isinstance(s.get("name"), str):
            statuses[s["name"]] = s
    out = []
    for i, iface in enumerate(ifaces):
        where = f"spec.domain.devices.interfaces[{i}]"
        iface = _obj(iface, where)
        b = _obj(iface.get("binding"), f"{where}.binding")
        if not b or b.get("name") != binding:
            continue
        name = _str(iface.get("name"), f"{where}.name")
        if name is None:
            raise InvalidVmi(f"{where} has no name")
        if iface.get("state") == "absent":
            continue
        model = _str(iface.get("model"), f"{where}.model")
        if model not in (None, "virtio"):
            raise InvalidVmi(f"interface {name!r}: model {model!r}; the {binding} binding gives the "
                             "guest a virtio-net-pci device only (model virtio or none)")
        net = networks.get(name)
        if net is None:
            raise InvalidVmi(f"interface {name!r} has no network of the same name in spec.networks")
        multus = _obj(net.get("multus"), f"network {name!r}.multus")
        if "pod" in net or multus.get("default") is True:
            pod_ifname = _str(statuses.get(name, {}).get("podInterfaceName"),
                              f"status.interfaces[{name}].podInterfaceName") or PRIMARY_POD_IFNAME
        elif multus:
            pod_ifname = hashed_ifname(name)
        else:
            raise InvalidVmi(f"network {name!r} is neither the pod network nor a Multus network")
        out.append(BoundInterface(name, pod_ifname, _str(iface.get("macAddress"), f"{where}.macAddress"),
                                  _str(iface.get("pciAddress"), f"{where}.pciAddress"), len(out)))
    return out


# ---------------------------------------------------------------------------------------------
# Where the endpoint's arguments come from: nkframe vm-netdev --json
# ---------------------------------------------------------------------------------------------


def _same_netns(netns: str) -> bool:
    path = netns if os.path.isabs(netns) else os.path.join(NETNS_RUN_DIR, netns)
    try:
        a, b = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class NkframeCli:
    """Runs the ``nkframe`` command (``cmd``, e.g. ``["nkframe"]`` or ``["nkframe",
    "--bpffs-root", "/x"]``; its environment variables NKFRAME_* apply too).

    The endpoint of a pod device is the VM endpoint whose pod-side name is that device and whose
    network namespace is this process' own (the sidecar runs in the launcher pod's).
    """

    def __init__(self, cmd: Sequence[str] = ("nkframe",), *, timeout: float = 30,
                 env: Mapping[str, str] | None = None,
                 same_netns: Callable[[str], bool] = _same_netns):
        self.cmd = list(cmd)
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self.same_netns = same_netns

    def _run(self, *args: str) -> str:
        argv = [*self.cmd, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                               env=self.env, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise EndpointError(f"cannot run {argv[0]!r} (nkframe is not installed in the sidecar "
                                "image, or --nkframe names the wrong command)") from None
        except subprocess.TimeoutExpired:
            raise EndpointError(f"{shlex.join(argv)} did not answer in {self.timeout:.0f} s") from None
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise EndpointError(f"{shlex.join(argv)} failed (exit {r.returncode}): "
                                f"{msg[-1] if msg else 'no message'}")
        return r.stdout

    def endpoint_for(self, pod_ifname: str) -> str:
        try:
            eps = json.loads(self._run("endpoint", "ls", "--json"))
        except ValueError as e:
            raise EndpointError(f"nkframe endpoint ls --json printed no JSON: {e}") from None
        found = [e.get("id") for e in eps if isinstance(e, dict) and e.get("pod_ifname") == pod_ifname
                 and isinstance(e.get("netns"), str) and self.same_netns(e["netns"])]
        if not found:
            raise EndpointError(f"no nkframe endpoint has pod device {pod_ifname} in this pod's "
                                "network namespace (did the network's NetworkAttachmentDefinition run "
                                "nkframe's CNI with options.vm for this pod?)")
        if len(found) > 1:  # pragma: no cover - one device name per netns
            raise EndpointError(f"several nkframe endpoints claim {pod_ifname} here: {found}")
        return found[0]

    def describe(self, pod_ifname: str, netdev_id: str) -> dict:
        ep = self.endpoint_for(pod_ifname)
        out = self._run("vm-netdev", ep, "--json", "--id", netdev_id)
        try:
            doc = json.loads(out)
        except ValueError as e:
            raise EndpointError(f"nkframe vm-netdev {ep} --json printed no JSON: {e}") from None
        if not isinstance(doc, dict):
            raise EndpointError(f"nkframe vm-netdev {ep} --json printed {type(doc).__name__}")
        return doc


# ---------------------------------------------------------------------------------------------
# The domain
# ---------------------------------------------------------------------------------------------


def _check_argv(doc: dict, iface: BoundInterface, netdev_id: str) -> tuple[str, str]:
    argv = doc.get("argv")
    ok = (isinstance(argv, list) and len(argv) == 4 and all(isinstance(a, str) for a in argv)
          and argv[0] == "-netdev" and argv[1].startswith("af-xdp,") and argv[2] == "-device"
          and argv[3].startswith("virtio-net-pci,"))
    if not ok:
        raise EndpointError(f"interface {iface.name!r}: nkframe vm-netdev printed arguments of "
                            f"an unexpected form: {argv!r}")
    props = dict(p.split("=", 1) for p in argv[1].split(",")[1:] if "=" in p)
    if props.get("ifname") != iface.pod_ifname:
        raise EndpointError(f"interface {iface.name!r}: the endpoint's device is "
                            f"{props.get('ifname')!r}, not {iface.pod_ifname!r}")
    if props.get("id") != netdev_id:
        raise EndpointError(f"interface {iface.name!r}: the netdev id is {props.get('id')!r}, "
                            f"not {netdev_id!r}")
    return argv[1], argv[3]


def _prop(arg: str, key: str) -> str | None:
    for p in arg.split(",")[1:]:
        k, _, v = p.partition("=")
        if k == key:
            return v
    return None


def rewrite_map_path(netdev: str, prefixes: Sequence[tuple[str, str]]) -> str:
    """``netdev`` with its ``map-path`` moved from one directory prefix to another (the node's
    bpffs path to where the launcher pod mounts it)."""
    mp = _prop(netdev, "map-path")
    if mp is None or not prefixes:
        return netdev
    for old, new in prefixes:
        old = old.rstrip("/")
        if mp == old or mp.startswith(old + "/"):
            return netdev.replace(f"map-path={mp}", f"map-path={new.rstrip('/')}{mp[len(old):]}")
    return netdev


def mutate(domain_xml: bytes, vmi_json: bytes, *, binding: str, source,
           map_path_prefixes: Sequence[tuple[str, str]] = ()) -> bytes:
    """The domain with this binding's interfaces as af-xdp netdevs (see the module doc)."""
    vmi = load_vmi(vmi_json)
    root = dom.parse(domain_xml)
    ifaces = bound_interfaces(vmi, binding)
    if not ifaces:
        return bytes(domain_xml)
    machine = dom.machine_of(root)
    existing = set()
    cmd = root.child(f"{dom.qemu_prefix(root) or 'qemu'}:commandline")
    for a in (cmd.children if cmd is not None else []):
        existing.add(a.attrs.get("value", ""))
    remove, args = [], []
    for iface in ifaces:
        netdev_id = f"nk{iface.index}"
        if any(_prop(v, "id") == netdev_id for v in existing if v.startswith("af-xdp,")):
            raise dom.DomainError(f"the domain's qemu:commandline has a netdev {netdev_id} already")
        ph = dom.find_placeholder(root, iface.name)
        doc = source.describe(iface.pod_ifname, netdev_id)
        netdev, device = _check_argv(doc, iface, netdev_id)
        ep_mac = (_prop(device, "mac") or "").lower()
        want_mac = iface.mac or (ph.mac if ph else None)
        if want_mac and want_mac.lower().replace("-", ":") != ep_mac:
            raise EndpointError(
                f"interface {iface.name!r} asks for MAC {want_mac}, but the endpoint "
                f"{doc.get('endpoint')} delivers to {ep_mac} (its steering rewrites every unicast "
                "frame to that MAC); give the interface no macAddress, or let the CNI give the pod "
                "device the VMI's MAC")
        if iface.pci_address:
            device += "," + ",".join(dom.qemu_bus_addr(dom.parse_pci_address(iface.pci_address), machine))
        elif ph is not None and ph.pci is not None:
            device += "," + ",".join(dom.qemu_bus_addr(ph.pci, machine))
        netdev = rewrite_map_path(netdev, map_path_prefixes)
        args += ["-netdev", netdev, "-device", device]
        if ph is not None:
            remove.append(ph.element)
    return dom.rewrite(bytes(domain_xml), remove, args)
