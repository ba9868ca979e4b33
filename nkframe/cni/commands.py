"""The CNI commands, each a function of the validated invocation.

Every command connects to the agent before it changes anything, so an absent agent is a clean
"try again later" (code 11).  ADD takes an address from the IPAM plugin and gives it back if
anything after that fails; DEL is idempotent (a missing endpoint is success) and releases the
address after the endpoint is gone, never before, so the address is not handed out again while a
device still holds it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping

from nkframe.cni import config, result
from nkframe.cni.agent import Agent, AgentFailure, AgentUnavailable, cni_error
from nkframe.cni.config import CniEnv, NetConf
from nkframe.cni.errors import INTERNAL, INVALID_CONFIG, INVALID_ENVIRONMENT, NOT_AVAILABLE, CniError
from nkframe.cni.ipam import Ipam

RECORD_KEY = "cni"  # spec.options[RECORD_KEY]: which attachment an endpoint is (GC reads it)


class Invocation:
    """One run of the plugin: the environment, the configuration, and what is passed on.

    ``backend`` is how the commands reach the endpoints: a callable taking the agent's socket
    path (the configuration's ``agentSocket``) and returning a connection with ``call(method,
    **params)`` that answers like the agent, raising :class:`AgentFailure` or
    :class:`AgentUnavailable`, and usable as a context manager.  The default is the socket
    client (:class:`nkframe.cni.agent.Agent`, the exec'd ``nkframe-cni``); the agent itself
    passes one that calls its Engine in process (``cni.exec``, :mod:`nkframe.agent.cni`).
    """

    def __init__(self, env: CniEnv, conf: NetConf, environ: Mapping[str, str], data: bytes, backend=None):
        self.env = env
        self.conf = conf
        self.environ = environ
        self.data = data
        self.backend = backend or Agent

    @property
    def endpoint_id(self) -> str:
        return config.endpoint_id(self.env.container_id, self.env.ifname)

    def agent(self) -> Agent:
        return self.backend(self.conf.agent_socket)

    def ipam(self) -> Ipam | None:
        if self.conf.ipam is None:
            return None
        return Ipam(self.conf.ipam["type"], self.env.path, self.environ, self.conf.raw, self.data)


# ----------------------------------------------------------------------------------------------
# ADD


def add(inv: Invocation) -> dict:
    env, conf = inv.env, inv.conf
    eid = inv.endpoint_id
    hname = config.host_ifname(eid, conf.host_prefix)
    pod_mac = config.pod_mac(conf, eid)
    host_mac = config.derived_mac(eid, "node") if conf.mode == "l2" else None
    _netns_exists(env)
    with inv.agent() as agent:
        # An attachment that exists already is refused before the IPAM plugin is asked: its
        # answer for the same container could be the address the endpoint holds, and the
        # rollback below would then release that address under a live endpoint.
        try:
            agent.call("endpoint.get", id=eid)
        except AgentFailure as e:
            if e.type != "EndpointNotFound":
                raise cni_error(e, f"read endpoint {eid}") from None
        else:
            raise CniError(INTERNAL, f"{env.ifname} of container {env.container_id} is attached already",
                           f"endpoint {eid} exists; a runtime must DEL an attachment before it adds it again")
        ipam = inv.ipam()
        ipam.exe  # a missing plugin is a configuration error, with nothing to give back
        try:
            # The spec: a delegated plugin that fails on ADD gets a DEL before we return.
            leased = ipam.add()
            spec = {
                "id": eid,
                "netns": env.netns,
                "addresses": config.host_prefix_addresses(leased["ips"]),
                "ifname": env.ifname,
                "host_ifname": hname,
                "mode": conf.mode,
                "device": conf.device,
                "attach": conf.attach,
                "options": {**conf.options, RECORD_KEY: _record(inv)},
            }
            if conf.mtu is not None:
                spec["mtu"] = conf.mtu
            if conf.mode == "l2":
                spec["mac"], spec["host_mac"] = pod_mac, host_mac
            try:
                added = agent.call("endpoint.add", spec=spec)
                ep = added["endpoint"]
            except AgentFailure as e:
                raise cni_error(e, f"add endpoint {eid}") from None
        except BaseException:
            # The agent's add is all or nothing; the address is the one thing left to give back.
            # (Interrupted while the agent was adding, the endpoint may still complete; the DEL
            # a runtime must send after a failed ADD removes it.)
            _release(ipam)
            raise
    # Every interface gets the MAC the kernel gave it unless we chose one (L2): runtimes refuse
    # a result interface without one ("invalid MAC address" from podman).
    macs = added.get("macs") or {}
    return result.encode(add_result(inv, ep["spec"], leased, pod_mac or macs.get("pod"),
                                    host_mac or macs.get("node")), conf.version)


def _netns_exists(env: CniEnv) -> None:
    # Checked here rather than left to the agent so that a wrong CNI_NETNS is the runtime's
    # error (4) and costs no IPAM round trip.
    if not os.path.exists(env.netns):
        raise CniError(INVALID_ENVIRONMENT, "CNI_NETNS does not exist",
                       f"CNI_NETNS {env.netns} does not exist; the runtime must create the pod's network namespace before ADD")


def _record(inv: Invocation) -> dict:
    """What the endpoint remembers of its attachment (GC matches on it; operators read it)."""
    rec = {"network": inv.conf.name, "containerID": inv.env.container_id, "ifname": inv.env.ifname}
    for key, name in (("K8S_POD_NAMESPACE", "podNamespace"), ("K8S_POD_NAME", "podName")):
        if inv.env.args.get(key):
            rec[name] = inv.env.args[key]
    return rec


def _release(ipam: Ipam) -> None:
    try:
        ipam.call("DEL")
    except CniError as e:
        print(f"nkframe-cni: giving back the address failed: {e}", file=sys.stderr)


def add_result(inv: Invocation, spec: dict, leased: dict, pod_mac: str | None, host_mac: str | None) -> dict:
    """The normalised ADD result: ``prevResult`` (if chained) plus our two interfaces, the pod's
    addresses (host prefixes, as configured), its default routes via the datapath's gateway, and
    DNS from the configuration or else from the IPAM plugin."""
    env, conf = inv.env, inv.conf
    res = result.empty()
    if conf.prev_result:
        for k in ("interfaces", "ips", "routes"):
            res[k] = list(conf.prev_result[k])
        res["dns"] = dict(conf.prev_result["dns"])
    host = {"name": spec.get("host_ifname") or config.host_ifname(spec["id"], conf.host_prefix)}
    pod = {"name": spec["ifname"], "sandbox": env.netns}
    for itf, mac in ((host, host_mac), (pod, pod_mac)):
        if mac:
            itf["mac"] = mac
        if conf.mtu is not None:
            itf["mtu"] = conf.mtu
    res["interfaces"] += [host, pod]
    pod_index = len(res["interfaces"]) - 1
    gw4, gw6 = config.gateways(conf.options)
    families = []
    for a in spec["addresses"]:
        v = ipaddress.ip_interface(a).version
        res["ips"].append({"address": a, "gateway": gw4 if v == 4 else gw6, "interface": pod_index})
        if v not in families:
            families.append(v)
    for v in families:
        res["routes"].append({"dst": "0.0.0.0/0", "gw": gw4} if v == 4 else {"dst": "::/0", "gw": gw6})
    dns = result.parse_dns(conf.dns, "dns", code=INVALID_CONFIG) or leased["dns"]
    if dns:
        res["dns"] = dns
    return res


# ----------------------------------------------------------------------------------------------
# DEL, CHECK


def delete(inv: Invocation) -> None:
    eid = inv.endpoint_id
    with inv.agent() as agent:
        try:
            agent.call("endpoint.del", id=eid)
        except AgentFailure as e:
            if e.type != "EndpointNotFound":  # DEL must succeed when there is nothing to remove
                raise cni_error(e, f"remove endpoint {eid}") from None
    ipam = inv.ipam()
    if ipam is not None:
        ipam.call("DEL")


def check(inv: Invocation) -> None:
    env, conf = inv.env, inv.conf
    prev = conf.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult", "the runtime must pass the result of the ADD as prevResult")
    idx = result.pod_interface(prev, env.ifname, env.netns)
    if idx is None:
        raise CniError(INTERNAL, f"prevResult has no interface {env.ifname} in {env.netns}",
                       "CHECK compares the attachment with the ADD's result, and that result does not list this pod interface")
    want = {ipaddress.ip_interface(ip["address"]).ip for ip in prev["ips"] if ip.get("interface") == idx}
    eid = inv.endpoint_id
    with inv.agent() as agent:
        try:
            ep = agent.call("endpoint.get", id=eid)["endpoint"]
        except AgentFailure as e:
            if e.type == "EndpointNotFound":
                raise CniError(INTERNAL, f"{env.ifname} of container {env.container_id} is not attached",
                               f"nkframe has no endpoint {eid}; the pod has no network through nkframe") from None
            raise cni_error(e, f"read endpoint {eid}") from None
    problems = compare(ep, prev, env, want)
    if problems:
        raise CniError(INTERNAL, "the attachment is not as the ADD left it", f"endpoint {eid}: " + "; ".join(problems))
    ipam = inv.ipam()
    if ipam is not None:
        ipam.call("CHECK")


def compare(ep: dict, prev: dict, env: CniEnv, want: set) -> list[str]:
    """What differs between the agent's endpoint and what ``prevResult`` says the ADD made."""
    spec = ep["spec"]
    problems = []
    if spec["netns"] != env.netns:
        problems.append(f"it is in {spec['netns']}, not CNI_NETNS {env.netns}")
    if spec["ifname"] != env.ifname:
        problems.append(f"its pod interface is {spec['ifname']}, not {env.ifname}")
    have = {ipaddress.ip_interface(a).ip for a in spec["addresses"]}
    if have != want:
        problems.append(f"it holds {sorted(map(str, have)) or 'no address'}, prevResult lists {sorted(map(str, want)) or 'none'}")
    host = spec.get("host_ifname")
    if host and not any(i["name"] == host and not i.get("sandbox") for i in prev["interfaces"]):
        problems.append(f"prevResult does not list its node-side device {host}")
    # A device pair dies as a whole (deleting either end, or the pod's namespace, deletes both),
    # so the node-side device standing for the pair is enough.
    if not ep.get("node_ifindex"):
        problems.append(f"its node-side device {host or spec['id']} is gone")
    progs = ep.get("programs") or []
    if not progs:
        problems.append("no program is attached")
    for p in progs:
        if p.get("ifindex") and ep.get("node_ifindex") and p["ifindex"] != ep["node_ifindex"]:
            problems.append(f"program {p['name']} runs on ifindex {p['ifindex']}, not on the endpoint's device ({ep['node_ifindex']})")
    return problems


# ----------------------------------------------------------------------------------------------
# STATUS, GC (VERSION is answered in nkframe.cni.main, before anything else is imported)


def status(inv: Invocation) -> None:
    try:
        with inv.agent() as agent:
            agent.call("ping")
    except AgentUnavailable as e:
        raise CniError(NOT_AVAILABLE, "the nkframe agent is not available", e.details) from None
    ipam = inv.ipam()
    if ipam is not None and ipam.speaks("1.1.0"):
        ipam.call("STATUS")


def gc(inv: Invocation) -> None:
    """Remove this network's endpoints whose attachment is not in ``cni.dev/valid-attachments``,
    then pass GC on to the IPAM plugin.  Goes on past failures and reports them all."""
    conf = inv.conf
    problems = []
    with inv.agent() as agent:
        for ep in agent.call("endpoint.list")["endpoints"]:
            spec = ep["spec"]
            rec = (spec.get("options") or {}).get(RECORD_KEY)
            if not isinstance(rec, dict) or rec.get("network") != conf.name:
                continue  # not ours, or another network's
            if (rec.get("containerID"), rec.get("ifname")) in conf.valid_attachments:
                continue
            try:
                agent.call("endpoint.del", id=spec["id"])
            except AgentFailure as e:
                if e.type != "EndpointNotFound":
                    problems.append(f"remove endpoint {spec['id']}: {e.message}")
    ipam = inv.ipam()
    if ipam is not None and ipam.speaks("1.1.0"):
        try:
            ipam.call("GC")
        except CniError as e:
            problems.append(str(e))
    if problems:
        raise CniError(INTERNAL, "GC left stale resources", "; ".join(problems))


RUN = {"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc}
