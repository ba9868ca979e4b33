"""Loading plugins: entry points, the autoload switch, contract violations."""

import types

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


class _FakeEntryPoint:
    """Stands in for an installed plugin's entry point: a broken third-party plugin cannot be
    installed on demand in a unit test (the host tier's example-plugin tests install real ones)."""

    def __init__(self, name, obj, group="nkframe.plugins"):
        self.name, self.value, self.group, self._obj = name, f"fake_{name}", group, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


class _WrongArgName:
    from nkframe import hookimpl as _impl

    @_impl
    def nkframe_endpoint_validate(self, spek):  # pluggy refuses: the hook's argument is "spec"
        pass


def _fake_eps(monkeypatch, eps):
    from nkframe import plugins as plugins_mod

    monkeypatch.setattr(plugins_mod, "entry_points", lambda group: [e for e in eps if e.group == group])


def test_a_broken_autoloaded_plugin_is_skipped_not_fatal(monkeypatch, caplog):
    """Issue 12: a plugin whose hookimpl has a wrong argument name made every command, even
    `endpoint ls`, die with a pluggy traceback.  Autoloaded, it is skipped with a warning."""
    from nkframe import plugins as plugins_mod

    good = types.SimpleNamespace()
    _fake_eps(monkeypatch, [_FakeEntryPoint("bad", _WrongArgName()), _FakeEntryPoint("gone", ImportError("no module x")),
                            _FakeEntryPoint("ok", good)])
    monkeypatch.delenv("NKFRAME_PLUGINS", raising=False)
    monkeypatch.delenv("NKFRAME_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pm = plugins_mod.make_manager(None)
    assert set(plugins_mod.broken(pm)) == {"bad", "gone"}
    assert "spek" in plugins_mod.broken(pm)["bad"] and "no module x" in plugins_mod.broken(pm)["gone"]
    assert "ok" in plugins_mod.loaded(pm) and "bad" not in plugins_mod.loaded(pm)
    assert "skipped" in caplog.text
    # Asked for by name, the same plugin is an error that names it.
    with pytest.raises(PluginError, match="plugin 'bad' .*is broken"):
        plugins_mod.make_manager(["bad"])
