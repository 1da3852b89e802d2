"""Plugin specs and stack files: one syntax for command lines, JSON, ``save_plugins`` / ``load(plugins=)``."""

from __future__ import annotations

import json

import pytest
import torch

import mmeff
from mmeff import registry
from mmeff.errors import ConfigError
from mmeff.plugin_spec import as_stack, check_stack, load_plugin_stack, parse_plugin_spec, stack_document
from mmeff.testing import tiny_llava
from mmeff.testing.plugin_tests import PROMPTS, forward_modules, sample_images


def test_spec_forms() -> None:
    assert parse_plugin_spec("pyramid_drop") == ("pyramid_drop", {})
    assert parse_plugin_spec("vcd:alpha=1.0,beta=0.1") == ("vcd", {"alpha": 1.0, "beta": 0.1})
    assert parse_plugin_spec("pyramid_drop:layers=(2, 4),ratio=0.5") == ("pyramid_drop", {"layers": (2, 4),
                                                                                          "ratio": 0.5})
    assert parse_plugin_spec("fastv:budget=64") == ("fastv", {"budget": 64})
    assert parse_plugin_spec("fastv:budget=1/9") == ("fastv", {"budget": "1/9"})
    assert parse_plugin_spec("vcd:negative_drop=false") == ("vcd", {"negative_drop": False})
    assert parse_plugin_spec('vcd:{"alpha": 2}') == ("vcd", {"alpha": 2})
    assert parse_plugin_spec('{"name": "vcd", "alpha": 2}') == ("vcd", {"alpha": 2})
    for bad, message in [("vcd:alpha", "key=value"), (":alpha=1", "starts with the plugin's name"),
                         ('{"alpha": 2}', '"name"'), ("vcd:{oops", "not valid JSON"), ("[1]", "name")]:
        with pytest.raises(ConfigError, match=message):
            parse_plugin_spec(bad)


def test_misspelt_names_and_options_get_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'fastv'"):
        check_stack([parse_plugin_spec("fastvv")])
    with pytest.raises(KeyError):  # still a KeyError for registry lookups
        registry.get_plugin("fastvv")
    with pytest.raises(ConfigError, match="Did you mean 'budget'.*allowed: \\['budget', 'k', 'ratio'\\]"):
        check_stack([parse_plugin_spec("fastv:budgt=64")])
    with pytest.raises(ConfigError, match="more than once"):
        check_stack([("vcd", {}), ("vcd", {"alpha": 2.0})])


def test_fraction_budgets_are_accepted() -> None:
    cfg = registry.get_plugin("fastv").config_cls.from_kwargs(budget="1/9")
    assert cfg._budget == pytest.approx(1 / 9)
    with pytest.raises(ConfigError, match="fraction"):
        registry.get_plugin("fastv").config_cls.from_kwargs(budget="9/1")


def test_every_default_config_survives_a_stack_file(tmp_path) -> None:
    """Each plugin's defaults written as JSON and read back give the same config."""
    required = {"random_drop": {"budget": 0.5}, "continuous_spec": {"draft": "assets/models/shapes-mar-small"}}
    stack = []
    for name in registry.list_plugins():
        config = registry.get_plugin(name).config_cls.from_kwargs(**required.get(name, {}))
        stack.append((name, config.to_dict()))
    path = tmp_path / "all.json"
    path.write_text(json.dumps(stack_document(stack)))
    for (name, options), (back_name, back) in zip(stack, load_plugin_stack(path)):
        cls = registry.get_plugin(name).config_cls
        assert back_name == name and cls.from_kwargs(**back).to_dict() == cls.from_kwargs(**options).to_dict()


def test_save_plugins_then_load_with_plugins_gives_the_same_answers(tmp_path) -> None:
    model, processor = tiny_llava(layers=4)
    pipe = mmeff.wrap(model, processor)
    pipe.add_plugin("pyramid_drop", ratio=0.25, layers=(1, 2))
    pipe.add_plugin("vcd", alpha=0.5)
    want = pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True).new_tokens
    path = pipe.save_plugins(tmp_path / "stack.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "mmeff-plugin-stack" and doc["version"] == 1
    assert [p["name"] for p in doc["plugins"]] == ["pyramid_drop", "vcd"]
    pipe.remove_all_plugins()

    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    loaded = mmeff.load(tmp_path / "model", plugins=path)
    assert list(loaded.plugins) == ["pyramid_drop", "vcd"]
    assert loaded.plugins["pyramid_drop"].config.ratio == 0.25
    got = loaded.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True).new_tokens
    assert torch.equal(got, want)


def test_bad_stack_files_fail_before_the_model_loads(tmp_path) -> None:
    missing_model = tmp_path / "no-such-model"
    cases = {
        "not json": ("{", "invalid JSON"),
        "other format": (json.dumps({"plugins": []}), "format"),
        "future version": (json.dumps({"format": "mmeff-plugin-stack", "version": 9, "plugins": []}), "version 9"),
        "bad entries": (json.dumps({"format": "mmeff-plugin-stack", "version": 1, "plugins": [1]}), "list of"),
        "unknown plugin": (json.dumps(stack_document([("pyramid_dorp", {})])), "Did you mean 'pyramid_drop'"),
        "bad value": (json.dumps(stack_document([("pyramid_drop", {"ratio": 2.0})])), "ratio"),
    }
    for label, (text, message) in cases.items():
        path = tmp_path / f"{label}.json"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            mmeff.load(missing_model, plugins=path)  # a load error would be OSError: the stack is checked first
    with pytest.raises(ConfigError, match="no plugin stack file"):
        as_stack(tmp_path / "absent.json")


def test_add_plugins_attaches_all_or_nothing() -> None:
    pipe = mmeff.wrap(*tiny_llava(layers=4))
    before = forward_modules(pipe.model)
    with pytest.raises(ConfigError, match="both take over"):  # the second conflicts with the first
        pipe.add_plugins(["pyramid_drop", "fastv:budget=64"])
    assert not pipe.plugins and forward_modules(pipe.model) == before
    assert [p.name for p in pipe.add_plugins(["pyramid_drop", "vcd"])] == ["pyramid_drop", "vcd"]


def test_save_refuses_options_json_cannot_hold(tmp_path) -> None:
    pipe = mmeff.wrap(*tiny_llava(layers=4))
    plugin = pipe.add_plugin("vcd")
    plugin.config.alpha = object()  # what code can set but a file cannot hold
    with pytest.raises(ConfigError, match="vcd.alpha"):
        pipe.save_plugins(tmp_path / "x.json")
