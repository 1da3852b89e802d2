"""mmeff.pipeline: wrap/load, generate, input validation and the plugin lifecycle on tiny LLaVA models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

import mmeff
from mmeff import hooks as mh
from mmeff import registry
from mmeff.errors import ConfigError, InputError, UnsupportedModelError
from mmeff.pipeline import GenerationOutput, MMPipeline
from mmeff.plugin import Plugin, PluginConfig
from mmeff.plugins.pyramid_drop import PyramidDropConfig
from mmeff.testing import tiny_llava, tiny_llava_next

MAX_NEW = 4


def _image(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def llava_pipe() -> MMPipeline:
    model, processor = tiny_llava()
    return mmeff.wrap(model, processor)


@pytest.fixture
def llava_next_pipe() -> MMPipeline:
    model, processor = tiny_llava_next()
    return mmeff.wrap(model, processor)


def _assert_untouched(pipe: MMPipeline) -> None:
    """No instance forward and no mmeff hook registry anywhere in the model."""
    model = pipe.model
    assert "forward" not in model.__dict__
    for layer in pipe.adapter.layers:
        assert "forward" not in layer.__dict__
    for name, module in model.named_modules():
        assert "forward" not in module.__dict__, name
        assert mh._ATTR not in module.__dict__, name
    assert list(mh.iter_hooks(model)) == []


def _run(pipe: MMPipeline, images=None, prompts=("what color is the circle ?",)) -> GenerationOutput:
    images = [_image(seed=i) for i in range(len(prompts))] if images is None else images
    return pipe.generate(images, list(prompts), max_new_tokens=MAX_NEW, return_ids=True)


# -- wrap / adapters --------------------------------------------------------------------------
def test_wrap_picks_llava_adapter(llava_pipe):
    assert llava_pipe.adapter.key == "llava"
    assert llava_pipe.adapter.family == "vlm"
    assert llava_pipe.model is llava_pipe.obj
    assert llava_pipe.adapter.num_layers == 4
    assert "llava" in repr(llava_pipe)


def test_wrap_picks_llava_next_adapter(llava_next_pipe):
    assert llava_next_pipe.adapter.key == "llava_next"
    assert llava_next_pipe.adapter.family == "vlm"


def test_wrap_unknown_object_raises():
    with pytest.raises(UnsupportedModelError, match="llava"):
        mmeff.wrap(torch.nn.Linear(2, 2))


# -- generate ---------------------------------------------------------------------------------
def test_generate_single_prompt_returns_str(llava_pipe):
    out = llava_pipe.generate(_image(), "what color is the circle ?", max_new_tokens=MAX_NEW)
    assert isinstance(out, str)
    stats = llava_pipe.last_stats
    assert stats["batch_size"] == 1
    assert 1 <= stats["new_tokens"] <= MAX_NEW
    assert stats["wall_time_s"] > 0
    assert stats["prompt_tokens"] > llava_pipe.adapter.tokens_per_image


def test_generate_list_of_prompts_returns_list(llava_pipe):
    prompts = ["what color is the circle ?", "is there a dog ?"]
    out = llava_pipe.generate([_image(seed=0), _image(seed=1)], prompts, max_new_tokens=MAX_NEW)
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(t, str) for t in out)
    assert llava_pipe.last_stats["batch_size"] == 2
    # a one-element list is still a list
    one = llava_pipe.generate([_image()], ["is there a dog ?"], max_new_tokens=MAX_NEW)
    assert isinstance(one, list) and len(one) == 1


def test_generate_batch_matches_single_rows(llava_pipe):
    """Left padding: each row of a batch answers like the same prompt alone."""
    prompts = ["what color is the circle ?", "is there a dog ?"]
    images = [_image(seed=0), _image(seed=1)]
    batch = llava_pipe.generate(images, prompts, max_new_tokens=MAX_NEW)
    singles = [llava_pipe.generate(im, p, max_new_tokens=MAX_NEW) for im, p in zip(images, prompts)]
    assert batch == singles


def test_return_ids_gives_sequences_that_decode_to_texts(llava_pipe):
    out = _run(llava_pipe, prompts=["what color is the circle ?", "is there a dog ?"])
    assert isinstance(out, GenerationOutput)
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    stats = llava_pipe.last_stats
    prompt_len = stats["prompt_tokens"]
    assert out.sequences.shape == (2, prompt_len + stats["new_tokens"])
    assert torch.equal(out.sequences[:, prompt_len:], out.new_tokens)
    assert stats["new_tokens"] == out.new_tokens.shape[1]
    decoded = llava_pipe.processor.batch_decode(out.sequences[:, prompt_len:], skip_special_tokens=True)
    assert [t.strip() for t in decoded] == out.texts
    # the same call without return_ids returns exactly those texts
    texts = llava_pipe.generate(
        [_image(seed=0), _image(seed=1)], ["what color is the circle ?", "is there a dog ?"], max_new_tokens=MAX_NEW
    )
    assert texts == out.texts


def test_generate_llava_next_mixed_aspect_ratios(llava_next_pipe):
    images = [_image(16, 40, seed=0), _image(40, 16, seed=1), _image(16, 16, seed=2)]
    out = llava_next_pipe.generate(images, ["what color", "is there a dog ?", "how many"], max_new_tokens=MAX_NEW)
    assert isinstance(out, list) and len(out) == 3
    assert all(isinstance(t, str) for t in out)
    assert llava_next_pipe.last_stats["batch_size"] == 3


def test_accepted_image_types_build_inputs(llava_pipe):
    adapter = llava_pipe.adapter
    rgb = _image()
    images = [
        rgb,
        Image.fromarray(rgb),
        rgb.astype(np.float32) / 255.0,  # floats in [0, 1]
        torch.from_numpy(rgb).permute(2, 0, 1),  # CHW tensor
        rgb[..., 0],  # grayscale HxW
        np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1),  # RGBA
    ]
    inputs = adapter.build_inputs(images, ["is there a dog ?"] * len(images))
    assert inputs["pixel_values"].shape[0] == len(images)
    adapter.check_token_counts(inputs["input_ids"], inputs)


# -- input errors -----------------------------------------------------------------------------
def test_image_prompt_count_mismatch(llava_pipe):
    with pytest.raises(InputError, match="2 images for 1 prompts"):
        llava_pipe.generate([_image(), _image()], ["is there a dog ?"], max_new_tokens=MAX_NEW)
    with pytest.raises(InputError, match="1 images for 2 prompts"):
        llava_pipe.generate(_image(), ["is there a dog ?", "what color"], max_new_tokens=MAX_NEW)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_or_whitespace_prompt(llava_pipe, prompt):
    with pytest.raises(InputError, match="prompt 0 is empty"):
        llava_pipe.generate(_image(), prompt, max_new_tokens=MAX_NEW)


def test_empty_prompt_in_batch_names_its_index(llava_pipe):
    with pytest.raises(InputError, match="prompt 1 is empty"):
        llava_pipe.generate([_image(), _image()], ["is there a dog ?", " "], max_new_tokens=MAX_NEW)


def test_no_prompts(llava_pipe):
    with pytest.raises(InputError, match="no prompts"):
        llava_pipe.generate([], [], max_new_tokens=MAX_NEW)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ("cat.png", "image 0 is a str"),
        (None, "no image or video given"),
        (np.zeros((2, 16, 16, 3), np.uint8), r"image 0 has shape \(2, 16, 16, 3\)"),
        (np.zeros((16, 16, 5), np.uint8), "expected HxWx3"),
        (np.zeros((0, 16, 3), np.uint8), "expected HxWx3"),
    ],
)
def test_bad_image(llava_pipe, image, match):
    with pytest.raises(InputError, match=match):
        llava_pipe.generate(image, "is there a dog ?", max_new_tokens=MAX_NEW)


def test_bad_image_in_batch_names_its_index(llava_pipe):
    with pytest.raises(InputError, match="image 1 is a str"):
        llava_pipe.generate([_image(), "x"], ["is there a dog ?", "what color"], max_new_tokens=MAX_NEW)


@pytest.mark.parametrize("n", [0, -1])
def test_max_new_tokens_must_be_positive(llava_pipe, n):
    with pytest.raises(InputError, match="max_new_tokens must be an int >= 1"):
        llava_pipe.generate(_image(), "is there a dog ?", max_new_tokens=n)


def test_input_errors_are_value_errors():
    assert issubclass(InputError, ValueError) and issubclass(InputError, mmeff.MMEffError)
    assert issubclass(ConfigError, ValueError) and issubclass(UnsupportedModelError, ValueError)


def test_llava_wrong_image_token_count(llava_pipe):
    adapter = llava_pipe.adapter
    inputs = adapter.build_inputs([_image()], ["is there a dog ?"])
    ids = inputs["input_ids"].clone()
    adapter.check_token_counts(ids, inputs)  # consistent as built

    image_positions = (ids == adapter.image_token_id).nonzero()
    assert len(image_positions) == adapter.tokens_per_image == 16
    fewer = ids.clone()
    fewer[tuple(image_positions[0])] = 3  # <unk>
    with pytest.raises(InputError, match="need 16 image tokens .* hold 15"):
        adapter.check_token_counts(fewer, inputs)

    two_images = {**inputs, "pixel_values": inputs["pixel_values"].repeat(2, 1, 1, 1)}
    with pytest.raises(InputError, match="2 image"):
        adapter.check_token_counts(ids, two_images)

    no_pixels = {k: v for k, v in inputs.items() if k != "pixel_values"}
    with pytest.raises(InputError, match="no pixel_values"):
        adapter.check_token_counts(ids, no_pixels)


def test_llava_next_wrong_image_count(llava_next_pipe):
    adapter = llava_next_pipe.adapter
    inputs = adapter.build_inputs([_image(16, 40)], ["is there a dog ?"])
    ids = inputs["input_ids"]
    adapter.check_token_counts(ids, inputs)
    two = {**inputs, "pixel_values": inputs["pixel_values"].repeat(2, 1, 1, 1, 1)}
    with pytest.raises(InputError, match="2 image"):
        adapter.check_token_counts(ids, two)
    no_sizes = {k: v for k, v in inputs.items() if k != "image_sizes"}
    with pytest.raises(InputError, match="image_sizes"):
        adapter.check_token_counts(ids, no_sizes)


# -- plugin lifecycle -------------------------------------------------------------------------
def test_unknown_plugin_lists_available(llava_pipe):
    with pytest.raises(KeyError) as info:
        llava_pipe.add_plugin("no_such_plugin")
    assert "no_such_plugin" in str(info.value)
    for name in mmeff.list_plugins():
        assert name in str(info.value)
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


@pytest.mark.parametrize("ratio", [1.5, 0, -0.5, "half", True])
def test_bad_ratio_is_config_error_and_attaches_nothing(llava_pipe, ratio):
    with pytest.raises(ConfigError, match=r"ratio must be a number in \(0, 1\]"):
        llava_pipe.add_plugin("pyramid_drop", ratio=ratio)
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


def test_unknown_option_names_allowed_options(llava_pipe):
    with pytest.raises(ConfigError) as info:
        llava_pipe.add_plugin("pyramid_drop", bogus=1)
    message = str(info.value)
    assert "bogus" in message and "allowed" in message
    assert "ratio" in message and "layers" in message
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


def test_out_of_range_layers_attach_nothing(llava_pipe):
    with pytest.raises(ConfigError, match="out of range"):
        llava_pipe.add_plugin("pyramid_drop", layers=(2, 7))
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


def test_config_object_and_keywords_together_rejected(llava_pipe):
    with pytest.raises(ConfigError, match="not both"):
        llava_pipe.add_plugin(PyramidDropConfig(ratio=0.5), ratio=0.25)
    with pytest.raises(TypeError):
        llava_pipe.add_plugin(42)
    _assert_untouched(llava_pipe)


def _stats_without_time(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "wall_time_s"}


def test_add_by_config_object_equals_add_by_name():
    prompts = ["what color is the circle ?", "is there a dog ?"]
    by_name, by_config = mmeff.wrap(*tiny_llava()), mmeff.wrap(*tiny_llava())

    p1 = by_name.add_plugin("pyramid_drop", ratio=0.5, layers=(1, 3))
    p2 = by_config.add_plugin(PyramidDropConfig(ratio=0.5, layers=(1, 3)))
    assert type(p1) is type(p2) and p1.config == p2.config
    assert list(by_name.plugins) == list(by_config.plugins) == ["pyramid_drop"]
    assert sorted(n for _, n, _ in mh.iter_hooks(by_name.model)) == sorted(
        n for _, n, _ in mh.iter_hooks(by_config.model)
    )

    out1, out2 = _run(by_name, prompts=prompts), _run(by_config, prompts=prompts)
    assert torch.equal(out1.sequences, out2.sequences)
    assert _stats_without_time(by_name.last_stats) == _stats_without_time(by_config.last_stats)
    assert by_name.last_stats["pyramid_drop"]["image_tokens_per_layer"] == [16.0, 8.0, 8.0, 4.0]


def test_unregistered_config_class_rejected(llava_pipe):
    @dataclass
    class Orphan(PluginConfig):
        x: int = 1

    with pytest.raises(KeyError, match="Orphan"):
        llava_pipe.add_plugin(Orphan())


def test_readding_same_name_replaces(llava_pipe):
    llava_pipe.add_plugin("pyramid_drop", ratio=0.5)
    hooks_once = sorted(n for _, n, _ in mh.iter_hooks(llava_pipe.model))
    second = llava_pipe.add_plugin("pyramid_drop", ratio=0.25)
    assert list(llava_pipe.plugins) == ["pyramid_drop"]
    assert llava_pipe.plugins["pyramid_drop"] is second
    assert second.config.ratio == 0.25
    assert sorted(n for _, n, _ in mh.iter_hooks(llava_pipe.model)) == hooks_once  # not doubled
    _run(llava_pipe)
    assert llava_pipe.last_stats["pyramid_drop"]["ratio"] == 0.25
    assert llava_pipe.last_stats["pyramid_drop"]["final_image_tokens"] < 16


def test_failed_readd_keeps_the_existing_plugin(llava_pipe):
    first = llava_pipe.add_plugin("pyramid_drop", ratio=0.5)
    with pytest.raises(ConfigError):
        llava_pipe.add_plugin("pyramid_drop", ratio=2.0)
    with pytest.raises(ConfigError):
        llava_pipe.add_plugin("pyramid_drop", layers=(9,))
    assert llava_pipe.plugins["pyramid_drop"] is first
    _run(llava_pipe)
    assert llava_pipe.last_stats["pyramid_drop"]["retained_fraction"] < 1


def test_remove_plugin(llava_pipe):
    base = _run(llava_pipe)
    llava_pipe.add_plugin("pyramid_drop", ratio=0.25)
    llava_pipe.remove_plugin("pyramid_drop")
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)
    after = _run(llava_pipe)
    assert torch.equal(after.sequences, base.sequences)
    assert "pyramid_drop" not in llava_pipe.last_stats


def test_remove_missing_plugin_raises_key_error(llava_pipe):
    with pytest.raises(KeyError, match="pyramid_drop"):
        llava_pipe.remove_plugin("pyramid_drop")
    llava_pipe.add_plugin("pyramid_drop")
    with pytest.raises(KeyError, match=r"attached: \['pyramid_drop'\]"):
        llava_pipe.remove_plugin("vcd")
    llava_pipe.remove_all_plugins()
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


def test_plugins_property_is_a_copy(llava_pipe):
    llava_pipe.add_plugin("pyramid_drop")
    llava_pipe.plugins.clear()
    assert list(llava_pipe.plugins) == ["pyramid_drop"]


def test_plugins_disabled_gives_baseline_and_restores(llava_pipe):
    prompts = ["what color is the circle ?", "is there a dog ?"]
    baseline = _run(llava_pipe, prompts=prompts)
    plugin = llava_pipe.add_plugin("pyramid_drop", ratio=0.25, layers=(1,))
    hooks_attached = sorted(n for _, n, _ in mh.iter_hooks(llava_pipe.model))
    _run(llava_pipe, prompts=prompts)
    assert llava_pipe.last_stats["pyramid_drop"]["final_image_tokens"] == 4.0

    with llava_pipe.plugins_disabled() as same:
        assert same is llava_pipe
        _assert_untouched(llava_pipe)
        inside = _run(llava_pipe, prompts=prompts)
        assert torch.equal(inside.sequences, baseline.sequences)
        assert inside.texts == baseline.texts
        assert not llava_pipe.last_stats.get("pyramid_drop")

    assert llava_pipe.plugins["pyramid_drop"] is plugin
    assert sorted(n for _, n, _ in mh.iter_hooks(llava_pipe.model)) == hooks_attached
    _run(llava_pipe, prompts=prompts)
    stats = llava_pipe.last_stats["pyramid_drop"]
    assert stats["final_image_tokens"] == 4.0 and stats["retained_fraction"] < 1


def test_plugins_disabled_restores_after_an_exception(llava_pipe):
    llava_pipe.add_plugin("pyramid_drop", ratio=0.5)
    with pytest.raises(RuntimeError, match="boom"), llava_pipe.plugins_disabled():
        raise RuntimeError("boom")
    assert list(llava_pipe.plugins) == ["pyramid_drop"]
    assert any(True for _ in mh.iter_hooks(llava_pipe.model, "token_drop/"))  # the shared drop engine is back
    _run(llava_pipe)
    assert llava_pipe.last_stats["pyramid_drop"]["retained_fraction"] < 1


def test_remove_plugin_inside_plugins_disabled(llava_pipe):
    llava_pipe.add_plugin("pyramid_drop", ratio=0.5)
    with llava_pipe.plugins_disabled():
        llava_pipe.remove_plugin("pyramid_drop")
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


# -- unsupported adapter ----------------------------------------------------------------------
@dataclass
class _T2IOnlyConfig(PluginConfig):
    strength: float = 1.0


class _T2IOnlyPlugin(Plugin):
    name = "tmp_t2i_only"
    config_cls = _T2IOnlyConfig
    supports = ("diffusers_t2i",)

    def attach(self, ctx):
        raise AssertionError("must not be attached to a VLM")


@pytest.fixture
def t2i_only_plugin():
    registry.list_plugins()
    registry.register_plugin(_T2IOnlyPlugin)
    try:
        yield _T2IOnlyPlugin
    finally:
        registry._PLUGINS.pop(_T2IOnlyPlugin.name, None)


def test_plugin_not_supporting_adapter_raises(llava_pipe, t2i_only_plugin):
    with pytest.raises(UnsupportedModelError) as info:
        llava_pipe.add_plugin("tmp_t2i_only")
    message = str(info.value)
    assert "tmp_t2i_only" in message and "'llava'" in message and "LlavaForConditionalGeneration" in message
    with pytest.raises(UnsupportedModelError):
        llava_pipe.add_plugin(_T2IOnlyConfig())
    assert llava_pipe.plugins == {}
    _assert_untouched(llava_pipe)


def test_unsupported_message_names_supported_adapters(llava_pipe, t2i_only_plugin):
    with pytest.raises(UnsupportedModelError, match="diffusers_t2i"):
        llava_pipe.add_plugin("tmp_t2i_only")


def test_t2i_only_plugin_fixture_cleaned_up():
    assert "tmp_t2i_only" not in mmeff.list_plugins()


# -- load -------------------------------------------------------------------------------------
def test_load_from_folder_passes_attn_and_dtype(tmp_path):
    model, processor = tiny_llava()  # built with sdpa
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    pipe = mmeff.load(tmp_path, attn_implementation="eager", torch_dtype=torch.float32)
    assert pipe.adapter.key == "llava"
    assert pipe.adapter.attn_implementation == "eager"
    assert next(pipe.model.parameters()).dtype == torch.float32
    assert not pipe.model.training
    for name, p in model.state_dict().items():
        assert torch.equal(p, pipe.model.state_dict()[name]), name

    reference = mmeff.wrap(*tiny_llava(attn_implementation="eager"))
    out, ref = _run(pipe), _run(reference)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.texts == ref.texts

    pipe.add_plugin("pyramid_drop", ratio=0.5)
    _run(pipe)
    assert pipe.last_stats["pyramid_drop"]["retained_fraction"] < 1


def test_load_str_path_default_attention(tmp_path):
    model, processor = tiny_llava(attn_implementation="eager")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    pipe = mmeff.load(str(tmp_path), torch_dtype=torch.bfloat16)
    assert pipe.adapter.key == "llava"
    assert next(pipe.model.parameters()).dtype == torch.bfloat16
    assert isinstance(pipe.generate(_image(), "is there a dog ?", max_new_tokens=2), str)
