"""nkframe: BPF dataplanes on the Linux netkit device.

The embedding API::

    from nkframe import Engine, EndpointSpec
    with Engine(node_netns="node1", bpffs_root="/sys/fs/bpf/nkframe") as engine:
        ep = engine.add_endpoint(EndpointSpec(id="pod-a", netns="pod-a", addresses=["10.0.1.5/32"]))

Plugin authors import :data:`hookimpl` (and the value types) from here.
"""

from nkframe.errors import (
    EndpointExists,
    EndpointNotFound,
    InvalidSpec,
    KernelError,
    NetnsNotFound,
    NkframeError,
    NotBpffs,
    NotSupported,
    PluginError,
    VerifierError,
)
from nkframe.hookspecs import hookimpl
from nkframe.types import (
    AttachMode,
    DeviceHook,
    DeviceKind,
    DeviceMode,
    Endpoint,
    EndpointSpec,
    Hook,
    Mechanism,
    ProgramSpec,
)

__version__ = "0.1.0"

__all__ = [
    "AttachMode", "DeviceHook", "DeviceKind", "DeviceMode", "Endpoint", "EndpointExists",
    "EndpointNotFound", "EndpointSpec", "Engine", "Hook", "InvalidSpec", "KernelError",
    "Mechanism", "NetnsNotFound", "NkframeError", "NotBpffs", "NotSupported", "PluginError",
    "ProgramSpec", "VerifierError", "hookimpl",
]


def __getattr__(name):
    # The engine pulls in the cffi bindings; keep `import nkframe` cheap for plugin authors.
    if name == "Engine":
        from nkframe.engine import Engine

        return Engine
    raise AttributeError(name)
