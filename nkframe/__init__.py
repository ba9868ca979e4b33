"""nkframe: BPF dataplanes on the Linux netkit device.

The embedding API::

    from nkframe import Engine, EndpointSpec
    with Engine(node_netns="node1", bpffs_root="/sys/fs/bpf/nkframe") as engine:
        ep = engine.add_endpoint(EndpointSpec(id="pod-a", netns="pod-a", addresses=["10.0.1.5/32"]))

Plugin authors import :data:`hookimpl` (and the value types) from here.
"""

import importlib

__version__ = "0.1.0"

# name -> module.  Resolved on first use (PEP 562), so ``import nkframe.cni`` (a CNI plugin a
# runtime execs per pod) or ``nkframe.errors`` does not pay for pluggy, attrs and the value
# types; ``from nkframe import Engine, hookimpl`` works as before.
_EXPORTS = {
    "EndpointExists": "nkframe.errors",
    "EndpointNotFound": "nkframe.errors",
    "InvalidSpec": "nkframe.errors",
    "KernelError": "nkframe.errors",
    "NetnsNotFound": "nkframe.errors",
    "NkframeError": "nkframe.errors",
    "NotBpffs": "nkframe.errors",
    "NotSupported": "nkframe.errors",
    "PluginError": "nkframe.errors",
    "VerifierError": "nkframe.errors",
    "hookimpl": "nkframe.hookspecs",
    "AttachMode": "nkframe.types",
    "DeviceHook": "nkframe.types",
    "DeviceKind": "nkframe.types",
    "DeviceMode": "nkframe.types",
    "Endpoint": "nkframe.types",
    "EndpointReport": "nkframe.types",
    "EndpointSpec": "nkframe.types",
    "Hook": "nkframe.types",
    "Mechanism": "nkframe.types",
    "ProgramSpec": "nkframe.types",
    "Engine": "nkframe.engine",  # pulls in the cffi bindings
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nkframe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
