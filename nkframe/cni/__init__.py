"""nkframe's CNI plugin: container runtimes attach pods to an nkframe node through it.

The executable ``nkframe-cni`` (:func:`nkframe.cni.main.main`) implements the CNI protocol
(versions :data:`SUPPORTED_VERSIONS`) as a thin client of the node's agent: it parses what the
runtime passes (environment and network configuration), delegates addresses to the IPAM plugin the
configuration names, and asks the agent over its Unix socket to add, remove or read the endpoint.

* :mod:`nkframe.cni.errors` — :class:`~nkframe.cni.errors.CniError` and the spec's error codes.
* :mod:`nkframe.cni.config` — the runtime's environment, the network configuration, the
  endpoint id and device names derived from them.
* :mod:`nkframe.cni.result` — CNI results: parsing (IPAM output, ``prevResult``) and encoding
  per spec version.
* :mod:`nkframe.cni.agent` — a minimal JSON-lines client of the agent.
* :mod:`nkframe.cni.ipam` — running the delegated IPAM plugin.
* :mod:`nkframe.cni.commands` — ADD, DEL, CHECK, STATUS, GC, VERSION.

A runtime execs the plugin once per pod and operation, so start-up time counts: nothing on this
path imports the Engine, cffi, pyroute2 or attrs.  ``docs/cni.md`` is the user's reference.
"""

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
