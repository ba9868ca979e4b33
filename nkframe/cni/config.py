"""What a runtime hands the plugin: the ``CNI_*`` environment and the network configuration on
stdin, both validated before anything changes; and the names derived from them (endpoint id,
node-side device, L2 MACs).

Values are named tuples rather than attrs classes: the plugin runs once per pod and operation,
and ``collections`` is loaded by the interpreter already while attrs costs ~30 ms to import.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections import namedtuple
from collections.abc import Mapping

from nkframe import inputs
from nkframe.cni import SUPPORTED_VERSIONS, result
from nkframe.cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    UNSUPPORTED_FIELD,
    CniError,
)

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
# The environment each command needs (CNI spec, section 2); CNI_COMMAND itself is always needed.
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}

# The spec's rule for container ids and network names.  Its characters are a subset of those an
# nkframe endpoint id allows (nkframe.types.validate_endpoint_id), which endpoint_id() relies on.
_CNI_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PLUGIN_TYPE_RE = re.compile(r"^[^/\\\0]+$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

IFNAME_MAX = 15  # bytes; the kernel's IFNAMSIZ (16) counts the NUL
HOST_PREFIX_MAX = 7  # leaves at least 8 hex digits (32 bits) of hash in a node-side name
DEFAULT_HOST_PREFIX = "nk"

# The L3/L2 datapath's gateways when spec.options["datapath"] names none (nkframe_fwd.datapath
# DEFAULT_GW4/DEFAULT_GW6; a unit test keeps the two equal).  Reported in ADD results.
DEFAULT_GATEWAY4 = "169.254.1.1"
DEFAULT_GATEWAY6 = "fe80::1"

MODES = ("l3", "l2")
ATTACH = ("auto", "netkit", "tcx", "tc")
DEVICES = ("auto", "netkit", "veth")

# Keys the spec defines for a plugin's request configuration; anything else must be ours.
_SPEC_KEYS = frozenset({
    "cniVersion", "cniVersions", "name", "type", "ipam", "dns", "args", "runtimeConfig",
    "prevResult", "capabilities", "ipMasq", "disableCheck", "disableGC",
})
OUR_KEYS = frozenset({"agentSocket", "mode", "attach", "device", "mtu", "policy", "options", "hostIfnamePrefix"})
VALID_ATTACHMENTS = "cni.dev/valid-attachments"


# ----------------------------------------------------------------------------------------------
# names


def check_ifname(name: str, what: str) -> str | None:
    """Why ``name`` is not a Linux interface name (the kernel's dev_valid_name), or None."""
    try:
        raw = name.encode()
    except UnicodeEncodeError:  # undecodable bytes in the environment arrive as surrogates
        return f"{what} {name!r} is not valid UTF-8"
    if not raw:
        return f"{what} is empty"
    if len(raw) > IFNAME_MAX:
        return f"{what} {name!r} is {len(raw)} bytes; Linux allows at most {IFNAME_MAX}"
    if name in (".", ".."):
        return f"{what} {name!r} is reserved"
    for c in name:
        if c in "/:\0" or c.isspace():
            return f"{what} {name!r} contains {c!r}; '/', ':' and whitespace are not allowed"
    return None


def endpoint_id(container_id: str, ifname: str) -> str:
    """The nkframe endpoint id of the attachment ``(container_id, ifname)``.

    Container ids are often 64 hex digits and endpoint ids hold 63 characters, so the id is the
    container id's first 46 characters, '-', then 16 hex digits of a hash of both values: always
    within the id rule, readable where the container id is short, and two attachments get the same
    id only on a 64-bit hash collision (the hash is always the last 16 characters).
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{container_id[:46]}-{digest[:16]}"


def host_ifname(endpoint_id: str, prefix: str = DEFAULT_HOST_PREFIX) -> str:
    """The node-side device of an endpoint: ``prefix`` then hex digits of a hash of its id, 15
    bytes in all (stable, so DEL and CHECK find the device the ADD made)."""
    return prefix + hashlib.sha256(endpoint_id.encode()).hexdigest()[: IFNAME_MAX - len(prefix.encode())]


def derived_mac(endpoint_id: str, side: str) -> str:
    """A stable locally administered unicast MAC for one side ("pod"/"node") of an L2 endpoint.
    The plugin sets both explicitly, so it can report them in the ADD result."""
    b = bytearray(hashlib.sha256(f"nkframe-cni/{side}/{endpoint_id}".encode()).digest()[:6])
    b[0] = (b[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


# ----------------------------------------------------------------------------------------------
# environment


#: The variables the CNI specification defines: all that either executable reads or forwards.
CNI_VARIABLES = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
#: The longest value of one of them (the same limit in the shim and the agent's protocol).
CNI_VALUE_MAX = 64 << 10


class CniEnv(namedtuple("CniEnv", "command container_id netns ifname args path")):
    """The ``CNI_*`` environment of one invocation.

    ``args`` is ``CNI_ARGS`` as a dict; ``path`` the directories of ``CNI_PATH``.  Values a
    command does not need may be empty strings.
    """

    __slots__ = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "CniEnv":
        # The shim forwards exactly these variables and refuses the same over-long values
        # (nkframe/cni/shim.c): both executables accept and refuse the same environments.
        for key in CNI_VARIABLES:
            if len(environ.get(key, "").encode(errors="surrogateescape")) > CNI_VALUE_MAX:
                raise CniError(INVALID_ENVIRONMENT, f"{key} is too long",
                               f"{key} is longer than {CNI_VALUE_MAX} bytes")
        command = environ.get("CNI_COMMAND", "")
        if not command:
            raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND is not set",
                           f"set CNI_COMMAND to one of {', '.join(COMMANDS)} (a runtime does this)")
        if command not in COMMANDS:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not supported",
                           f"CNI_COMMAND must be one of {', '.join(COMMANDS)}")
        missing = [k for k in REQUIRED_ENV[command] if not environ.get(k)]
        if missing:
            raise CniError(INVALID_ENVIRONMENT, f"{', '.join(missing)} not set",
                           f"{command} needs {', '.join(REQUIRED_ENV[command])}; missing or empty: {', '.join(missing)}")
        cid = environ.get("CNI_CONTAINERID", "")
        if cid and not _CNI_NAME_RE.match(cid):
            raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is invalid",
                           f"CNI_CONTAINERID {cid!r} must start with a letter or digit followed by letters, digits, '_', '.' or '-'")
        ifname = environ.get("CNI_IFNAME", "")
        if ifname:
            why = check_ifname(ifname, "CNI_IFNAME")
            if why:
                raise CniError(INVALID_ENVIRONMENT, "CNI_IFNAME is invalid", why)
        netns = environ.get("CNI_NETNS", "")
        if netns and (not netns.startswith("/") or "\0" in netns):
            raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS is invalid",
                           f"CNI_NETNS {netns!r} must be an absolute path to a network namespace (e.g. /run/netns/<name>)")
        args = parse_cni_args(environ.get("CNI_ARGS", ""))
        path = tuple(d for d in environ.get("CNI_PATH", "").split(":") if d)
        return cls(command, cid, netns, ifname, args, path)


def parse_cni_args(value: str) -> dict[str, str]:
    """``CNI_ARGS`` ("K=V;K2=V2") as a dict.  Keys we don't know are kept and ignored."""
    out: dict[str, str] = {}
    for part in value.split(";"):
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, "CNI_ARGS is invalid",
                           f"CNI_ARGS item {part!r} is not KEY=VALUE (items are separated by ';')")
        out[key] = val
    return out


# ----------------------------------------------------------------------------------------------
# network configuration


class NetConf(namedtuple("NetConf", "version name type ipam dns prev_result agent_socket mode attach device mtu options host_prefix runtime_config valid_attachments raw")):
    """A plugin's request configuration (what the runtime writes on stdin), validated.

    ``raw`` is the decoded document, handed to the IPAM plugin unchanged.  ``options`` is the
    endpoint's ``spec.options`` (``policy`` and ``options`` merged).  ``valid_attachments``
    (GC only) is a set of ``(containerID, ifname)``.
    """

    __slots__ = ()


def decode(data: bytes) -> dict:
    """The JSON object on stdin.  Raises CniError 6 (not JSON) or 7 (not an object)."""
    try:
        doc = inputs.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODING_FAILURE, "cannot decode the network configuration", f"stdin is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CniError(INVALID_CONFIG, "invalid network configuration",
                       f"the network configuration must be a JSON object, not {type(doc).__name__}")
    return doc


def check_version(doc: dict) -> str:
    """The configuration's ``cniVersion``, if this plugin speaks it; CniError 1 if not."""
    version = doc.get("cniVersion")
    if version in SUPPORTED_VERSIONS:
        return version
    have = f"is {version!r}" if version is not None else "has no cniVersion (which means 0.1.0)"
    raise CniError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                   f"the configuration {have}; nkframe supports {', '.join(SUPPORTED_VERSIONS)}")


def _bad(msg: str) -> CniError:
    return CniError(INVALID_CONFIG, "invalid network configuration", msg)


def _obj(doc: dict, key: str) -> dict | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad(f"{key!r} must be a JSON object, not {type(v).__name__}")
    return v


def _choice(doc: dict, key: str, choices: tuple[str, ...], default: str) -> str:
    v = doc.get(key, default)
    if v not in choices:
        raise _bad(f"{key!r} is {v!r}; use one of: {', '.join(choices)}")
    return v


def _bool(doc: dict, key: str) -> bool:
    v = doc.get(key, False)
    if not isinstance(v, bool):
        raise _bad(f"{key!r} must be true or false, not {v!r}")
    return v


def parse(doc: dict, command: str, default_socket: str) -> NetConf:
    """Validate a decoded request configuration for ``command`` (anything but VERSION).

    Order of checks: version (1), unknown keys (2), then every value (7).  Nothing here touches
    the system.
    """
    version = check_version(doc)
    unknown = [k for k in doc if k not in _SPEC_KEYS and k not in OUR_KEYS and not k.startswith("cni.dev/")]
    if unknown:
        k = sorted(unknown)[0]
        raise CniError(UNSUPPORTED_FIELD, f"unsupported field {k!r}",
                       f"the network configuration has {k}={json.dumps(doc[k])}, which nkframe does not know; "
                       f"its own keys are {', '.join(sorted(OUR_KEYS))} (see docs/cni.md)")
    if _bool(doc, "ipMasq"):
        raise CniError(UNSUPPORTED_FIELD, "unsupported field 'ipMasq'",
                       "ipMasq=true: nkframe routes pod addresses unchanged and does not masquerade; "
                       "set up NAT on the node's uplink yourself and drop ipMasq")
    _bool(doc, "disableCheck")
    _bool(doc, "disableGC")

    name = doc.get("name")
    if not isinstance(name, str) or not _CNI_NAME_RE.match(name):
        raise _bad(f"'name' is {name!r}; a network name starts with a letter or digit followed by letters, digits, '_', '.' or '-'")
    ptype = doc.get("type")
    if not isinstance(ptype, str) or not _PLUGIN_TYPE_RE.match(ptype):
        raise _bad(f"'type' is {ptype!r}; it must name the plugin's executable (no '/')")

    ipam = _obj(doc, "ipam")
    if ipam is not None:
        it = ipam.get("type")
        if not isinstance(it, str) or not _PLUGIN_TYPE_RE.match(it):
            raise _bad(f"'ipam.type' is {it!r}; it must name an IPAM plugin's executable in CNI_PATH (e.g. host-local)")
        if it in (ptype, "nkframe", "nkframe-cni", "nkframe-cni-shim"):
            # The plugin would exec itself as its own IPAM, which execs itself again...: a
            # configuration once made the agent fork 100+ nested plugins in half a second.
            raise _bad(f"'ipam.type' is {it!r}, nkframe itself; it must name an IPAM plugin (e.g. host-local)")
    elif command == "ADD":
        raise _bad("'ipam' is missing; nkframe takes pod addresses from an IPAM plugin, e.g. "
                   '"ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}')
    dns = _obj(doc, "dns") or {}
    # Checked here, before anything exists: a bad 'dns' once failed the ADD after the endpoint
    # and the lease were made.
    result.parse_dns(dns, "dns", code=INVALID_CONFIG)
    for key in ("args", "runtimeConfig", "capabilities"):
        _obj(doc, key)
    runtime_config = doc.get("runtimeConfig") or {}
    cv = doc.get("cniVersions")
    if cv is not None and not (isinstance(cv, list) and all(isinstance(x, str) for x in cv)):
        raise _bad("'cniVersions' must be a list of version strings")

    prev = doc.get("prevResult")
    prev_result = None
    if prev is not None:
        prev_result = result.parse(prev, "prevResult", code=INVALID_CONFIG)

    sock = doc.get("agentSocket", default_socket)
    if not isinstance(sock, str) or not sock.startswith("/") or "\0" in sock:
        raise _bad(f"'agentSocket' is {sock!r}; it must be the absolute path of the agent's socket")
    mode = _choice(doc, "mode", MODES, "l3")
    attach = _choice(doc, "attach", ATTACH, "auto")
    device = _choice(doc, "device", DEVICES, "auto")
    mtu = doc.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535):
        raise _bad(f"'mtu' is {mtu!r}; it must be an integer in 68..65535")

    options = dict(_obj(doc, "options") or {})
    if "cni" in options:
        raise _bad("'options.cni' is reserved: the plugin records the attachment there")
    policy = doc.get("policy")
    if policy is not None:
        if "policy" in options:
            raise _bad("'policy' is given twice (as 'policy' and as 'options.policy'); keep one")
        if not isinstance(policy, dict):
            raise _bad(f"'policy' must be a JSON object (see docs/policy), not {type(policy).__name__}")
        options["policy"] = policy

    prefix = doc.get("hostIfnamePrefix", DEFAULT_HOST_PREFIX)
    if not isinstance(prefix, str) or not 1 <= len(prefix.encode()) <= HOST_PREFIX_MAX or check_ifname(prefix, "hostIfnamePrefix"):
        raise _bad(f"'hostIfnamePrefix' is {prefix!r}; use 1-{HOST_PREFIX_MAX} bytes valid in an interface name (e.g. \"nk\")")

    valid = None
    if command == "GC":
        valid = _valid_attachments(doc.get(VALID_ATTACHMENTS))

    return NetConf(version, name, ptype, ipam, dns, prev_result, sock, mode, attach, device, mtu,
                   options, prefix, runtime_config, valid, doc)


def _valid_attachments(v: object) -> frozenset[tuple[str, str]]:
    if v is None:
        return frozenset()
    if not isinstance(v, list):
        raise _bad(f"{VALID_ATTACHMENTS!r} must be a list of {{containerID, ifname}} objects")
    out = set()
    for item in v:
        if not (isinstance(item, dict) and isinstance(item.get("containerID"), str) and isinstance(item.get("ifname"), str)):
            raise _bad(f"{VALID_ATTACHMENTS!r}: {json.dumps(item)} is not a {{containerID, ifname}} object")
        out.add((item["containerID"], item["ifname"]))
    return frozenset(out)


def gateways(options: Mapping[str, object]) -> tuple[str, str]:
    """(IPv4, IPv6) gateway the datapath gives the pod: ``options.datapath`` or the defaults."""
    dp = options.get("datapath") or {}
    if not isinstance(dp, Mapping):
        return DEFAULT_GATEWAY4, DEFAULT_GATEWAY6
    return str(dp.get("gateway4", DEFAULT_GATEWAY4)), str(dp.get("gateway6", DEFAULT_GATEWAY6))


def pod_mac(conf: NetConf, eid: str) -> str | None:
    """The pod-side MAC of an L2 endpoint: the runtime's (``runtimeConfig.mac``, the "mac"
    capability) or derived from the id.  L3 endpoints have none of their own choosing."""
    mac = conf.runtime_config.get("mac") if isinstance(conf.runtime_config, dict) else None
    if mac is not None:
        if conf.mode != "l2":
            raise _bad("runtimeConfig.mac is set but mode is l3; a MAC can only be chosen in L2 mode (\"mode\": \"l2\")")
        m = str(mac).lower()
        if not _MAC_RE.match(m) or int(m[:2], 16) & 1:
            raise _bad(f"runtimeConfig.mac {mac!r} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)")
        return m
    return derived_mac(eid, "pod") if conf.mode == "l2" else None


def host_prefix_addresses(ips: list[dict]) -> list[str]:
    """IPAM addresses as host prefixes (/32, /128): the datapath routes everything via the node,
    so the pod holds only its own address whatever prefix the IPAM range has."""
    out = []
    for ip in ips:
        a = ipaddress.ip_interface(ip["address"])
        out.append(f"{a.ip}/{a.max_prefixlen}")
    return out
