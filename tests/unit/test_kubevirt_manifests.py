"""contrib/kubevirt/manifests: Kubernetes kinds against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), KubeVirt and NetworkAttachmentDefinition kinds
against contrib/kubevirt/schemas (closed JSON schemas of exactly the fields used), the NAD's CNI
configuration through nkframe's own CNI parser, and the pieces that must agree with each other.
Each schema is also shown to refuse a misspelled and a misplaced field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "kubevirt"
REPO = CONTRIB.parents[1]
MANIFESTS = sorted((CONTRIB / "manifests").glob("*.yaml"))
K8S_VERSION = "1.34.0"  # MutatingAdmissionPolicy v1beta1 appears in 1.34
OURS = {("kubevirt.io/v1", "KubeVirt"), ("kubevirt.io/v1", "VirtualMachine"),
        ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")}


def docs() -> list[tuple[str, dict]]:
    out = []
    for f in MANIFESTS:
        for d in yaml.safe_load_all(f.read_text()):
            if d is not None:
                out.append((f.name, d))
    return out


def by_kind(kind: str) -> dict:
    [d] = [d for _, d in docs() if d["kind"] == kind]
    return d


def our_schema(doc: dict) -> dict:
    name = f"{doc['apiVersion'].split('/')[0]}-{doc['apiVersion'].split('/')[1]}-{doc['kind']}.json"
    return json.loads((CONTRIB / "schemas" / name).read_text())


def validate(doc: dict) -> None:
    if (doc["apiVersion"], doc["kind"]) in OURS:
        schema = our_schema(doc)
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_manifest_validates():
    seen = set()
    for name, d in docs():
        validate(d)
        seen.add(d["kind"])
    assert {"Namespace", "DaemonSet", "NetworkAttachmentDefinition", "KubeVirt", "VirtualMachine",
            "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"} <= seen


def _set(doc: dict, path: list, value) -> dict:
    d = copy.deepcopy(doc)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


def _rename(doc: dict, path: list, new: str) -> dict:
    d = copy.deepcopy(doc)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[new] = cur.pop(path[-1])
    return d


BINDING = ["spec", "configuration", "network", "binding", "nkframe-afxdp"]


@pytest.mark.parametrize("kind,mutate", [
    ("KubeVirt", lambda d: _rename(d, BINDING + ["sidecarImage"], "sidecarImg")),
    ("KubeVirt", lambda d: _rename(d, ["spec", "configuration", "network"], "networks")),
    # misplaced: the binding map directly under configuration
    ("KubeVirt", lambda d: _set(d, ["spec", "configuration"], {"binding": d["spec"]["configuration"]["network"]["binding"]})),
    ("KubeVirt", lambda d: _set(d, BINDING + ["domainAttachmentType"], "macvtap")),
    ("KubeVirt", lambda d: _set(d, BINDING + ["migration"], {"methd": "link-refresh"})),
    ("VirtualMachine", lambda d: _rename(d, ["spec", "template", "spec", "networks"], "network")),
    ("VirtualMachine", lambda d: _set(d, ["spec", "template", "spec", "domain", "devices", "interfaces"],
                                      [{"name": "afxdp", "bindng": {"name": "nkframe-afxdp"}}])),
    # misplaced: binding on the network instead of the interface
    ("VirtualMachine", lambda d: _set(d, ["spec", "template", "spec", "networks"],
                                      [{"name": "afxdp", "binding": {"name": "nkframe-afxdp"},
                                        "multus": {"networkName": "nkframe-vm"}}])),
    ("NetworkAttachmentDefinition", lambda d: _rename(d, ["spec", "config"], "conifg")),
    ("NetworkAttachmentDefinition", lambda d: _set(d, ["config"], d["spec"]["config"])),
    ("DaemonSet", lambda d: _rename(d, ["spec", "template", "spec", "hostNetwork"], "hostNetwrok")),
    ("DaemonSet", lambda d: _set(d, ["spec", "hostNetwork"], True)),
    ("MutatingAdmissionPolicy", lambda d: _rename(d, ["spec", "matchConstraints"], "matchConstraint")),
])
def test_a_wrong_field_fails(kind, mutate):
    bad = mutate(by_kind(kind))
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(bad)


def test_nad_config_is_a_vm_endpoint_for_nkframes_cni():
    """The configuration parses with nkframe's CNI parser and carries options.vm through to the
    endpoint's spec options (docs/cni.md: 'options' are spec.options)."""
    from nkframe.cni import config as cniconf
    from nkframe.types import EndpointSpec
    from nkframe_vm.steer import VmOptions

    nad = by_kind("NetworkAttachmentDefinition")
    doc = json.loads(nad["spec"]["config"])
    assert doc["name"] == nad["metadata"]["name"] and doc["type"] == "nkframe"
    conf = cniconf.parse(doc, "ADD", "/run/nkframe/agent.sock")
    assert conf.options["vm"] == {"queues": 1}
    assert conf.ipam["type"] == "host-local"
    spec = EndpointSpec(id="x", netns="/run/netns/x", addresses=[], options=dict(conf.options))
    assert VmOptions.from_spec(spec) == VmOptions(queues=1)


def test_names_agree():
    import sys

    sys.path.insert(0, str(CONTRIB))
    from nkframe_kubevirt import binding, sidecar

    kv, vm, nad = by_kind("KubeVirt"), by_kind("VirtualMachine"), by_kind("NetworkAttachmentDefinition")
    [name] = kv["spec"]["configuration"]["network"]["binding"]
    assert name == binding.DEFAULT_BINDING
    tmpl = vm["spec"]["template"]["spec"]
    [iface] = tmpl["domain"]["devices"]["interfaces"]
    assert iface["binding"]["name"] == name
    [net] = [n for n in tmpl["networks"] if n["name"] == iface["name"]]
    assert net["multus"] == {"networkName": nad["metadata"]["name"], "default": True}
    image = kv["spec"]["configuration"]["network"]["binding"][name]["sidecarImage"]
    ds = by_kind("DaemonSet")
    assert {c["image"] for c in ds["spec"]["template"]["spec"]["containers"] + ds["spec"]["template"]["spec"]["initContainers"]} == {image}
    mp = by_kind("MutatingAdmissionPolicy")
    assert f"'{name}'" in mp["spec"]["matchConditions"][0]["expression"]
    assert sidecar.DEFAULT_SOCKET.startswith("/var/run/kubevirt-hooks/")


def test_containerfile_copies_what_exists():
    text = (CONTRIB / "Containerfile").read_text()
    for line in text.splitlines():
        m = re.match(r"COPY (?!--from)(.+) (\S+)$", line.strip())
        if m:
            for src in m.group(1).split():
                assert (REPO / src).exists(), f"Containerfile copies {src}, which is not in the repository"
    assert "nkframe_kubevirt.sidecar" in text and "nkframe_kubevirt.protos" in text
