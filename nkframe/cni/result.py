"""CNI results: read the ones others hand us (an IPAM plugin's output, ``prevResult``) into one
normalised form, and write ours in the shape of the configuration's spec version.

The normalised form is the 1.1.0 result as plain dicts::

    {"interfaces": [{"name", "mac"?, "mtu"?, "sandbox"?, "socketPath"?, "pciID"?}],
     "ips": [{"address", "gateway"?, "interface"?}],
     "routes": [{"dst", "gw"?, "mtu"?, "advmss"?, "priority"?, "table"?, "scope"?}],
     "dns": {"nameservers"?, "domain"?, "search"?, "options"?}}

What differs by version: 0.4.0 names each IP's family (``"version": "4"``) and, like 1.0.0,
knows neither interface ``mtu``/``socketPath``/``pciID`` nor the route attributes beyond
``dst``/``gw`` (both arrived in 1.1.0); 1.0.0 dropped the per-IP ``version``.
"""

from __future__ import annotations

import ipaddress

from nkframe.cni.errors import CniError

_IF_KEYS = {
    "0.4.0": ("name", "mac", "sandbox"),
    "1.0.0": ("name", "mac", "sandbox"),
    "1.1.0": ("name", "mac", "mtu", "sandbox", "socketPath", "pciID"),
}
_ROUTE_KEYS = {
    "0.4.0": ("dst", "gw"),
    "1.0.0": ("dst", "gw"),
    "1.1.0": ("dst", "gw", "mtu", "advmss", "priority", "table", "scope"),
}
_IP_KEYS = ("address", "gateway", "interface")
_DNS_KEYS = ("nameservers", "domain", "search", "options")
_UINT_KEYS = ("mtu", "advmss", "priority", "table", "scope", "interface")


def empty() -> dict:
    return {"interfaces": [], "ips": [], "routes": [], "dns": {}}


def _fail(code: int, what: str, msg: str) -> CniError:
    return CniError(code, f"invalid {what}", f"{what}: {msg}")


def _uint(v: object, code: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _fail(code, what, f"{v!r} is not an unsigned integer")
    return v


def _str(v: object, code: int, what: str) -> str:
    if not isinstance(v, str):
        raise _fail(code, what, f"{v!r} is not a string")
    return v


def parse(doc: object, what: str, *, code: int) -> dict:
    """Validate a result of any supported version and return its normalised form.

    ``what`` names it in messages ("prevResult", "the IPAM plugin's result"); ``code`` is the
    CNI error code a malformed one gets.
    """
    if not isinstance(doc, dict):
        raise _fail(code, what, "a result is a JSON object")
    out = empty()
    for i, itf in enumerate(doc.get("interfaces") or []):
        w = f"{what} interfaces[{i}]"
        if not isinstance(itf, dict):
            raise _fail(code, w, "not an object")
        entry = {"name": _str(itf.get("name"), code, f"{w}.name")}
        for k in _IF_KEYS["1.1.0"][1:]:
            if itf.get(k) not in (None, ""):
                entry[k] = _uint(itf[k], code, f"{w}.{k}") if k in _UINT_KEYS else _str(itf[k], code, f"{w}.{k}")
        out["interfaces"].append(entry)
    for i, ip in enumerate(doc.get("ips") or []):
        w = f"{what} ips[{i}]"
        if not isinstance(ip, dict):
            raise _fail(code, w, "not an object")
        try:
            addr = ipaddress.ip_interface(_str(ip.get("address"), code, f"{w}.address"))
            gw = ipaddress.ip_address(_str(ip["gateway"], code, f"{w}.gateway")) if ip.get("gateway") else None
        except ValueError as e:
            raise _fail(code, w, str(e)) from None
        if gw is not None and gw.version != addr.version:
            raise _fail(code, w, f"gateway {gw} and address {addr} are of different IP versions")
        entry = {"address": str(addr)}
        if gw is not None:
            entry["gateway"] = str(gw)
        if ip.get("interface") is not None:
            idx = _uint(ip["interface"], code, f"{w}.interface")
            if idx >= len(out["interfaces"]):
                raise _fail(code, w, f"interface {idx} is not an index into interfaces (it has {len(out['interfaces'])})")
            entry["interface"] = idx
        out["ips"].append(entry)
    for i, r in enumerate(doc.get("routes") or []):
        w = f"{what} routes[{i}]"
        if not isinstance(r, dict):
            raise _fail(code, w, "not an object")
        try:
            entry = {"dst": str(ipaddress.ip_network(_str(r.get("dst"), code, f"{w}.dst"), strict=False))}
            if r.get("gw"):
                entry["gw"] = str(ipaddress.ip_address(_str(r["gw"], code, f"{w}.gw")))
        except ValueError as e:
            raise _fail(code, w, str(e)) from None
        for k in _ROUTE_KEYS["1.1.0"][2:]:
            if r.get(k) is not None:
                entry[k] = _uint(r[k], code, f"{w}.{k}")
        out["routes"].append(entry)
    dns = doc.get("dns") or {}
    if not isinstance(dns, dict):
        raise _fail(code, f"{what} dns", "not an object")
    out["dns"] = parse_dns(dns, f"{what} dns", code=code)
    return out


def parse_dns(dns: dict, what: str, *, code: int) -> dict:
    out = {}
    for k in _DNS_KEYS:
        v = dns.get(k)
        if v in (None, "", []):
            continue
        if k == "domain":
            out[k] = _str(v, code, f"{what}.{k}")
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            out[k] = list(v)
        else:
            raise _fail(code, f"{what}.{k}", "must be a list of strings")
    return out


def encode(res: dict, version: str) -> dict:
    """The normalised result ``res`` as a document of spec ``version``."""
    if_keys, route_keys = _IF_KEYS[version], _ROUTE_KEYS[version]
    ips = []
    for ip in res["ips"]:
        e = {k: ip[k] for k in _IP_KEYS if k in ip}
        if version == "0.4.0":
            e = {"version": str(ipaddress.ip_interface(ip["address"]).version), **e}
        ips.append(e)
    return {
        "cniVersion": version,
        "interfaces": [{k: i[k] for k in if_keys if k in i} for i in res["interfaces"]],
        "ips": ips,
        "routes": [{k: r[k] for k in route_keys if k in r} for r in res["routes"]],
        "dns": {k: res["dns"][k] for k in _DNS_KEYS if k in res["dns"]},
    }


def pod_interface(res: dict, ifname: str, netns: str) -> int | None:
    """Index of the pod interface ``ifname`` in ``netns`` among ``res``'s interfaces."""
    for i, itf in enumerate(res["interfaces"]):
        if itf["name"] == ifname and itf.get("sandbox") == netns:
            return i
    return None
