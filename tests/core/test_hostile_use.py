"""What a user can do to a wrapped model must never corrupt it (issue 29, "Using the model"): copies,
nested disabling, two pipelines, switching attention, non-finite and mistyped options."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mmeff
from mmeff.errors import ConfigError, InputError
from mmeff.testing import tiny_llava
from mmeff.testing.plugin_tests import PROMPTS, forward_modules, sample_images


@pytest.fixture
def pipe() -> mmeff.MMPipeline:
    return mmeff.wrap(*tiny_llava(layers=4))


def _hooked(pipe: mmeff.MMPipeline) -> set[str]:
    return {name for name, fn in forward_modules(pipe.model).items() if fn is not None}


def _tokens(pipe: mmeff.MMPipeline) -> torch.Tensor:
    return pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True).new_tokens


def test_deepcopy_of_a_hooked_model_is_refused_and_the_plain_copy_works(pipe):
    pipe.add_plugin("pyramid_drop")
    with pytest.raises(TypeError, match="deepcopy"):
        copy.deepcopy(pipe.model)
    pipe.remove_all_plugins()
    clone = copy.deepcopy(pipe.model)
    assert forward_modules(clone) == forward_modules(pipe.model)
    assert torch.equal(_tokens(mmeff.wrap(clone, pipe.processor)), _tokens(pipe))


@pytest.mark.parametrize("plugin, added", [("visionzip", "vcd"), ("pyramid_drop", "vcd"), ("vcd", "random_drop")])
def test_nested_plugins_disabled_restores_once_and_defers_new_plugins(pipe, plugin, added):
    plain = _tokens(pipe)
    pipe.add_plugin(plugin)
    active = _tokens(pipe)
    hooked = _hooked(pipe)
    with pipe.plugins_disabled():
        with pipe.plugins_disabled():
            assert torch.equal(_tokens(pipe), plain)
        assert torch.equal(_tokens(pipe), plain), "the inner block must not re-enable plugins"
        pipe.add_plugin(added)
        assert torch.equal(_tokens(pipe), plain), "a plugin added inside the block is not active there"
        assert added not in pipe.last_stats
    assert set(pipe.plugins) == {plugin, added}
    _tokens(pipe)
    assert pipe.last_stats.get(added), "the added plugin is active after the block"
    pipe.remove_plugin(added)
    assert _hooked(pipe) == hooked
    assert torch.equal(_tokens(pipe), active)
    pipe.remove_all_plugins()
    assert all(fn is None for fn in forward_modules(pipe.model).values())
    assert torch.equal(_tokens(pipe), plain)


def test_a_plugin_removed_inside_the_block_stays_removed(pipe):
    pipe.add_plugin("fastv")
    with pipe.plugins_disabled():
        pipe.remove_plugin("fastv")
    assert not pipe.plugins
    assert all(fn is None for fn in forward_modules(pipe.model).values())


def test_a_second_pipeline_on_a_hooked_model_names_the_first(pipe):
    pipe.add_plugin("fastv")
    with pytest.raises(ConfigError, match=r"another MMPipeline with plugins \['fastv'\]"):
        mmeff.wrap(pipe.model, pipe.processor)
    pipe.remove_all_plugins()
    second = mmeff.wrap(pipe.model, pipe.processor)  # fine once the first holds no plugins
    second.add_plugin("random_drop")
    with pytest.raises(ConfigError, match="another MMPipeline"):
        pipe.add_plugin("fastv")
    assert not pipe.plugins


def test_switching_to_an_unsupported_attention_after_add_plugin_is_refused_at_the_call(pipe):
    pipe.add_plugin("pyramid_drop")
    pipe.model.set_attn_implementation("flex_attention")
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    with pytest.raises(ConfigError, match="flex_attention"):
        with torch.no_grad():
            pipe.model(**inputs)
    pipe.model.set_attn_implementation("sdpa")
    assert len(_tokens(pipe)) == 2


@pytest.mark.parametrize("plugin, options", [
    ("vcd", {"alpha": float("nan")}), ("vcd", {"beta": float("inf")}), ("m3id", {"lam": float("nan")}),
    ("icd", {"alpha": float("-inf")}),
])
def test_non_finite_options_are_refused(pipe, plugin, options):
    with pytest.raises(ConfigError, match="must be finite"):
        pipe.add_plugin(plugin, **options)
    assert not pipe.plugins


def test_mistyped_options_and_inputs_get_clear_errors(pipe):
    with pytest.raises(ConfigError, match="list of decoder-layer indices"):
        pipe.add_plugin("pyramid_drop", layers=5)
    plugin = pipe.add_plugin("pyramid_drop", ratio=np.float32(0.5), layers=[np.int64(1), 2])
    assert type(plugin.config.ratio) is float and plugin.config.layers == (1, 2)
    for bad in (2.5, "3", True, 0):
        with pytest.raises(InputError, match="max_new_tokens must be an int"):
            pipe.generate(sample_images(), PROMPTS, max_new_tokens=bad)
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=np.int64(2))) == 2
    with pytest.raises(InputError, match="prompts must be str"):
        pipe.generate(sample_images(), [b"is there a cat?", "how many?"], max_new_tokens=2)


@pytest.mark.parametrize("with_positions", [False, True])
def test_direct_model_calls_decode_where_a_full_forward_would(pipe, with_positions):
    """``model(...)`` on a left-padded batch, prefill then one cached step, with or without position ids:
    the step's logits equal a full no-cache forward over the extended sequence (without ids both count
    the pads, as transformers' cache positions do)."""
    from transformers import DynamicCache

    model = pipe.model
    pipe.add_plugin("random_drop", budget=0.5, layer=2)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert not mask.bool().all()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        pipe.reset_state()
        cache = DynamicCache()
        first = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"], cache=cache,
                      **({"position_ids": pos} if with_positions else {}))
        token = first.logits[:, -1].argmax(-1, keepdim=True)
        longer = torch.cat([mask, torch.ones_like(token)], 1)
        step = model(input_ids=token, attention_mask=longer, cache=cache,
                     **({"position_ids": pos[:, -1:] + 1} if with_positions else {})).logits[:, -1]
        pipe.reset_state()
        full = model(input_ids=torch.cat([ids, token], 1), attention_mask=longer, pixel_values=inputs["pixel_values"],
                     **({"position_ids": torch.cat([pos, pos[:, -1:] + 1], 1)} if with_positions else {}))
    torch.testing.assert_close(step, full.logits[:, -1], atol=1e-5, rtol=0)


def test_a_second_call_from_another_thread_is_refused_clearly(pipe):
    """Plugins keep per-call state on the model: one call at a time per pipeline, the other thread told why."""
    import threading

    pipe.add_plugin("pyramid_drop")
    started, release, errors = threading.Event(), threading.Event(), []

    def slow_hook(module, args):
        started.set()
        release.wait(10)

    handle = pipe.model.get_decoder().layers[0].register_forward_pre_hook(slow_hook)
    worker = threading.Thread(target=lambda: pipe.generate(sample_images(), PROMPTS, max_new_tokens=2))
    worker.start()
    try:
        assert started.wait(10)
        try:
            pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)
        except ConfigError as error:
            errors.append(str(error))
    finally:
        release.set()
        worker.join(20)
        handle.remove()
    assert errors and "already running a call" in errors[0]
    assert len(_tokens(pipe)) == 2  # the pipeline works again afterwards


def test_rewards_given_as_a_list_or_a_non_module_are_clear_errors():
    from mmeff.plugins.reno import RenoConfig

    with pytest.raises(ConfigError, match="rewards must be a dict"):
        RenoConfig(rewards=["clip", "aesthetic"])
    with pytest.raises(ConfigError, match="must be a torch module"):
        RenoConfig(rewards={"clip": 1.0}, reward_models={"clip": "openai/clip"})


def test_caller_position_ids_are_used_without_an_attention_mask(pipe):
    """Issue 29: ids given with ``attention_mask=None`` (one row, a gap of 3 in the middle: RoPE ignores a
    uniform shift) reach the decoder in prefill and in the cached step, which equals a full forward over
    the extended sequence."""
    from transformers import DynamicCache

    model = pipe.model
    pipe.add_plugin("random_drop", budget=0.5, layer=2)
    inputs = pipe.adapter.build_inputs(sample_images()[:1], PROMPTS[:1])
    ids = inputs["input_ids"]
    pos = torch.arange(ids.shape[1])[None]
    pos[:, ids.shape[1] // 2 :] += 3
    with torch.no_grad():
        pipe.reset_state()
        cache = DynamicCache()
        first = model(input_ids=ids, pixel_values=inputs["pixel_values"], position_ids=pos, cache=cache)
        token = first.logits[:, -1].argmax(-1, keepdim=True)
        step = model(input_ids=token, position_ids=pos[:, -1:] + 1, cache=cache).logits[:, -1]
        pipe.reset_state()
        full = model(input_ids=torch.cat([ids, token], 1), pixel_values=inputs["pixel_values"],
                     position_ids=torch.cat([pos, pos[:, -1:] + 1], 1)).logits[:, -1]
        pipe.reset_state()
        unshifted = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)
    assert not torch.allclose(first.logits[:, -1], unshifted, atol=1e-4)  # the given ids were used
