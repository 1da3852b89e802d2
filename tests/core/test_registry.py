"""mmeff.registry: name-keyed plugin/adapter registries, fnmatch filters and the support matrix."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch.nn as nn

import mmeff
from mmeff import registry
from mmeff.adapters.base import Adapter
from mmeff.errors import UnsupportedModelError
from mmeff.plugin import Plugin, PluginConfig


@dataclass
class _Config(PluginConfig):
    strength: float = 1.0


def _plugin_class(name, supports=("llava",)) -> type[Plugin]:
    return type(
        "TmpPlugin",
        (Plugin,),
        {"name": name, "config_cls": _Config, "supports": supports, "attach": lambda self, ctx: None},
    )


def _adapter_class(key) -> type[Adapter]:
    return type("TmpAdapter", (Adapter,), {"key": key, "family": "vlm", "matches": classmethod(lambda c, o: False)})


@pytest.fixture(autouse=True)
def _restore_registries():
    """Any registration a test makes is undone, so other tests see the bundled registry only."""
    registry.list_plugins()  # load the bundled plugins and adapters first
    plugins, adapters = dict(registry._PLUGINS), dict(registry._ADAPTERS)
    try:
        yield
    finally:
        registry._PLUGINS.clear()
        registry._PLUGINS.update(plugins)
        registry._ADAPTERS.clear()
        registry._ADAPTERS.update(adapters)


def test_list_plugins_with_filters():
    everything = mmeff.list_plugins()
    assert "pyramid_drop" in everything
    assert everything == sorted(everything)
    assert mmeff.list_plugins("pyramid*") == ["pyramid_drop"]
    assert mmeff.list_plugins("*drop") == [p for p in everything if p.endswith("drop")]
    assert mmeff.list_plugins("no_such_plugin*") == []
    assert mmeff.list_plugins("*") == everything


def test_list_adapters_with_filters():
    everything = mmeff.list_adapters()
    assert {"llava", "llava_next"} <= set(everything)
    assert everything == sorted(everything)
    assert mmeff.list_adapters("llava*") == ["llava", "llava_next", "llava_onevision"]
    assert mmeff.list_adapters("llava") == ["llava"]
    assert mmeff.list_adapters("*next") == ["llava_next"]
    assert mmeff.list_adapters("zzz*") == []


def test_register_and_list_a_new_plugin():
    cls = _plugin_class("tmp_registry_plugin")
    assert mmeff.register_plugin(cls) is cls
    assert "tmp_registry_plugin" in mmeff.list_plugins()
    assert mmeff.list_plugins("tmp_*") == ["tmp_registry_plugin"]
    assert registry.get_plugin("tmp_registry_plugin") is cls


def test_cleanup_fixture_removed_the_plugin_again():
    assert "tmp_registry_plugin" not in mmeff.list_plugins()


def test_duplicate_plugin_name_raises():
    before = registry.get_plugin("pyramid_drop")
    with pytest.raises(ValueError, match="pyramid_drop.*already registered"):
        mmeff.register_plugin(_plugin_class("pyramid_drop"))
    assert registry.get_plugin("pyramid_drop") is before


def test_duplicate_adapter_key_raises():
    before = registry.get_adapter("llava")
    with pytest.raises(ValueError, match="llava.*already registered"):
        mmeff.register_adapter(_adapter_class("llava"))
    assert registry.get_adapter("llava") is before


@pytest.mark.parametrize("bad", ["PyramidDrop", "Pyramid_drop", "pyramid-drop", "1plugin", "", "pyramid drop", "_x"])
def test_non_lowercase_or_malformed_plugin_name_raises(bad):
    with pytest.raises(ValueError, match="lowercase"):
        mmeff.register_plugin(_plugin_class(bad))
    assert bad not in registry._PLUGINS


@pytest.mark.parametrize("bad", ["LLaVA", "Llava_next", "llava-next"])
def test_non_lowercase_adapter_key_raises(bad):
    with pytest.raises(ValueError, match="lowercase"):
        mmeff.register_adapter(_adapter_class(bad))
    assert bad not in registry._ADAPTERS


def test_register_adapter_and_lookup():
    cls = _adapter_class("tmp_registry_adapter")
    assert mmeff.register_adapter(cls) is cls
    assert mmeff.list_adapters("tmp_*") == ["tmp_registry_adapter"]
    assert registry.get_adapter("tmp_registry_adapter") is cls


def test_get_unknown_plugin_lists_available():
    with pytest.raises(KeyError) as info:
        registry.get_plugin("definitely_not_a_plugin")
    message = str(info.value)
    assert "definitely_not_a_plugin" in message
    for name in mmeff.list_plugins():
        assert name in message


def test_get_unknown_plugin_suggests_close_names():
    with pytest.raises(KeyError, match="Did you mean.*pyramid_drop"):
        registry.get_plugin("pyramid")


def test_get_unknown_adapter_lists_available():
    with pytest.raises(KeyError) as info:
        registry.get_adapter("qwen_nope")
    for key in mmeff.list_adapters():
        assert key in str(info.value)


def test_find_adapter_rejects_unknown_objects():
    with pytest.raises(UnsupportedModelError, match="Linear") as info:
        registry.find_adapter(nn.Linear(2, 2))
    for key in mmeff.list_adapters():
        assert key in str(info.value)


def test_supported_and_support_matrix_agree():
    matrix = mmeff.support_matrix()
    assert sorted(matrix) == mmeff.list_plugins()
    for plugin, row in matrix.items():
        assert sorted(row) == mmeff.list_adapters()
        for adapter, ok in row.items():
            assert ok is mmeff.supported(plugin, adapter)
        assert registry.supported_adapters(plugin) == [a for a, ok in row.items() if ok]
    assert matrix["pyramid_drop"]["llava"] and matrix["pyramid_drop"]["llava_next"]


def test_supports_uses_fnmatch_patterns():
    mmeff.register_plugin(_plugin_class("tmp_glob_plugin", supports=("llava*",)))
    mmeff.register_plugin(_plugin_class("tmp_none_plugin", supports=("nomatch_*",)))
    assert mmeff.supported("tmp_glob_plugin", "llava")
    assert mmeff.supported("tmp_glob_plugin", "llava_next")
    assert not mmeff.supported("tmp_glob_plugin", "qwen2_vl")
    assert registry.supported_adapters("tmp_none_plugin") == []
    matrix = mmeff.support_matrix()
    assert matrix["tmp_glob_plugin"]["llava_next"] is True
    assert not any(matrix["tmp_none_plugin"].values())


def test_support_matrix_markdown_has_every_plugin_and_adapter():
    mmeff.register_plugin(_plugin_class("tmp_md_plugin", supports=("llava_next",)))
    table = registry.support_matrix_markdown()
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["plugin", *mmeff.list_adapters()]
    assert lines[1].startswith("|---|")
    rows = {}
    table_lines = [line for line in lines[2:] if line.startswith("|")]
    for line in table_lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    assert sorted(rows) == mmeff.list_plugins()
    reasons = [line for line in lines[2:] if line.startswith("- ✗")]
    for plugin in mmeff.list_plugins():
        for adapter in mmeff.list_adapters():
            assert (rows[plugin][adapter] == "✓") is mmeff.supported(plugin, adapter)
            refusal = registry.refusal(plugin, adapter)
            assert (rows[plugin][adapter] == "✗") is (refusal is not None and not mmeff.supported(plugin, adapter))
            if rows[plugin][adapter] == "✗":
                assert f"- ✗ `{plugin}` on `{adapter}`: {refusal}" in reasons
    assert rows["tmp_md_plugin"]["llava_next"] == "✓" and rows["tmp_md_plugin"]["llava"] == ""


def test_refused_plugin_error_gives_the_reason():
    from mmeff.testing import tiny_qwen2_vl

    pipe = mmeff.wrap(*tiny_qwen2_vl())
    with pytest.raises(UnsupportedModelError, match="patch merger") as info:
        pipe.add_plugin("tome")
    assert "llava" in str(info.value)  # and names where it does run
    assert not any("_mmeff_hooks" in m.__dict__ for m in pipe.model.modules())
