"""Finding and loading plugins.

Built-in behaviour (device creation, attach selection, pin layout) lives in
:mod:`nkframe.builtin`, registered first and answering last, so every plugin can override it.
Everything else, first-party datapaths included, comes from the ``nkframe.plugins`` entry-point
group.  ``NKFRAME_DISABLE_PLUGIN_AUTOLOAD=1`` turns entry-point loading off (tests and embedders
then register exactly what they want); ``NKFRAME_PLUGINS=a,b`` restricts autoload to an
allow-list of entry-point names.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from nkframe import hookspecs
from nkframe.errors import PluginError

ENTRY_POINT_GROUP = "nkframe.plugins"
DISABLE_AUTOLOAD_ENV = "NKFRAME_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "NKFRAME_PLUGINS"


log = logging.getLogger("nkframe.plugins")


def available() -> dict[str, str]:
    """Entry-point name -> 'module:attr' of every installed plugin."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def make_manager(
    plugins: Iterable[str] | None = None,
    *,
    autoload: bool | None = None,
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Build a plugin manager.

    :param plugins: entry-point names to load; ``None`` means every installed plugin (or the
        ``NKFRAME_PLUGINS`` allow-list).  An unknown name is an error listing what exists.
    :param autoload: load from entry points at all; default: unless
        ``NKFRAME_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param extra: plugin objects (modules or instances) registered directly.
    """
    from nkframe import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="nkframe.builtin")
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if plugins is None and os.environ.get(ALLOW_ENV):
        plugins = [p.strip() for p in os.environ[ALLOW_ENV].split(",") if p.strip()]
    if autoload or plugins is not None:
        eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        names = list(eps) if plugins is None else list(plugins)
        unknown = [n for n in names if n not in eps]
        if unknown:
            have = ", ".join(sorted(eps)) or "none installed"
            raise PluginError(f"unknown plugin(s) {', '.join(unknown)}; installed plugins: {have}")
        # Asked for by name, a plugin that fails is an error.  Autoloaded, it is skipped with a
        # warning (and listed by broken()): one broken third-party plugin must not stop `ls`,
        # `del` or `gc` of endpoints that never needed it.
        strict = plugins is not None
        for name in names:
            where = f"plugin {name!r} ({eps[name].value})"
            try:
                obj = eps[name].load()
            except Exception as e:  # noqa: BLE001 - report any import failure with its source
                _broken(pm, name, f"{where} failed to load: {type(e).__name__}: {e}", strict)
                continue
            if pm.is_registered(obj):
                continue
            try:
                pm.register(obj, name=name)
                pm.check_pending()
            except (pluggy.PluginValidationError, ValueError) as e:
                if pm.is_registered(obj):
                    pm.unregister(obj)
                _broken(pm, name, f"{where} is broken: {e}", strict)
    for obj in extra:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin implements a hook nkframe does not define: {e}") from e
    return pm


def _broken(pm: pluggy.PluginManager, name: str, why: str, strict: bool) -> None:
    if strict:
        raise PluginError(why)
    pm._nkframe_broken = {**getattr(pm, "_nkframe_broken", {}), name: why}  # noqa: SLF001 - our own attribute
    log.warning("%s; it is skipped (endpoints that need it cannot be added)", why)


def broken(pm: pluggy.PluginManager) -> dict[str, str]:
    """Autoloaded plugins that were skipped because they failed to load or register: name ->
    why."""
    return dict(getattr(pm, "_nkframe_broken", {}))


def loaded(pm: pluggy.PluginManager) -> list[str]:
    return [name for name, _ in pm.list_name_plugin()]
