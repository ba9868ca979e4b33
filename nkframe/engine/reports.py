"""Plugins' answers about one endpoint (``nkframe_endpoint_counters``,
``nkframe_endpoint_report``), each implementation called on its own: for ``nkframe status``
and for reconcile, which lists the problems plugins report."""

from __future__ import annotations

from typing import Any

from nkframe.types import Endpoint, EndpointReport

COUNTERS_HOOK = "nkframe_endpoint_counters"
REPORT_HOOK = "nkframe_endpoint_report"


def per_plugin(engine, hook: str, ep: Endpoint, problems: list[str], what: str) -> dict[str, Any]:
    """Call every implementation of the per-endpoint ``hook`` one at a time: plugin name ->
    its answer (``None`` answers left out).  Each is called on its own so its answer is
    attributed to its plugin and a failing one costs a problem line (``what`` unreadable),
    not the whole status."""
    caller = getattr(engine.pm.hook, hook, None)
    if caller is None or getattr(caller, "spec", None) is None:
        return {}
    kwargs = {"endpoint": ep, "bpffs_root": str(engine.layout.root), "node_netns": engine.node_netns}
    out: dict[str, Any] = {}
    for impl in caller.get_hookimpls():
        try:
            res = impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as e:  # noqa: BLE001 - one plugin's failure must not hide the rest
            problems.append(f"plugin {impl.plugin_name}: {what} unreadable ({e})")
            continue
        if res is not None:
            out[impl.plugin_name] = res
    return out


def plugin_counters(engine, ep: Endpoint, problems: list[str]) -> dict[str, dict[str, int]]:
    """``nkframe_endpoint_counters`` of every plugin, by plugin."""
    return {name: {str(k): int(v) for k, v in dict(res).items()}
            for name, res in per_plugin(engine, COUNTERS_HOOK, ep, problems, "counters").items() if res}


def plugin_reports(engine, ep: Endpoint, problems: list[str]) -> dict[str, dict[str, str]]:
    """``nkframe_endpoint_report`` of every plugin: plugin -> facts; each plugin's problems are
    appended to ``problems`` as ``plugin NAME: ...``."""
    facts: dict[str, dict[str, str]] = {}
    for name, rep in per_plugin(engine, REPORT_HOOK, ep, problems, "report").items():
        if not isinstance(rep, EndpointReport):
            problems.append(f"plugin {name}: report unreadable (an EndpointReport expected, not {type(rep).__name__})")
            continue
        if rep.facts:
            facts[name] = dict(rep.facts)
        problems.extend(f"plugin {name}: {p}" for p in rep.problems)
    return facts
