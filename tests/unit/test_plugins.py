"""Loading plugins: entry points, the autoload switch, contract violations."""

import pytest

from nkframe import hookimpl, plugins
from nkframe.errors import PluginError


def test_unknown_plugin_is_a_clear_error():
    with pytest.raises(PluginError, match="unknown plugin.*no-such-plugin.*installed plugins"):
        plugins.make_manager(["no-such-plugin"])


def test_autoload_switch(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    pm = plugins.make_manager()
    assert plugins.loaded(pm) == ["nkframe.builtin"]


def test_plugin_with_unknown_hook_is_refused(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")

    class Bad:
        @hookimpl
        def nkframe_not_a_hook(self):
            pass

    with pytest.raises(PluginError, match="does not define"):
        plugins.make_manager(extra=[Bad()])


def test_pin_path_hook_is_keyword_called_and_firstresult(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")

    class Custom:
        @hookimpl
        def nkframe_pin_path(self, root, scope, owner, kind, name):
            return f"{root}/custom/{scope}/{owner}/{kind}/{name}" if name == "mine" else None

    pm = plugins.make_manager(extra=[Custom()])
    assert pm.hook.nkframe_pin_path(root="/r", scope="global", owner="", kind="map", name="mine") == "/r/custom/global//map/mine"
    assert pm.hook.nkframe_pin_path(root="/r", scope="global", owner="", kind="map", name="other") is None
