"""ToDo: the release's downsampling rule on the same tensors, keys/values only, and the plugin contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmeff
from mmeff.errors import ConfigError, UnsupportedModelError
from mmeff.hooks import iter_hooks
from mmeff.plugins.todo.ops import downsample_tokens
from mmeff.plugins.tome_sd.ops import destination_mask, grid_merge
from mmeff.testing import tiny_flux, tiny_pixart, tiny_sd

SHAPES_SD = Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes-sd"


def images(pipe, steps=3, **kw):
    return pipe(["a red circle"], num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="pt", **kw).images


def shapes_sd():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_SD)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def release_up_or_downsample(item, cur_w, cur_h, new_w, new_h, method):
    """ImprovedTokenMerge/merge.py's ``up_or_downsample``, transcribed."""
    b = item.shape[0]
    item = item.reshape(b, cur_h, cur_w, -1).permute(0, 3, 1, 2)
    df = cur_h // new_h
    if method == "max_pool":
        item = F.max_pool2d(item, kernel_size=df, stride=df, padding=0)
    elif method == "avg_pool":
        item = F.avg_pool2d(item, kernel_size=df, stride=df, padding=0)
    else:
        item = F.interpolate(item, size=(new_h, new_w), mode=method)
    return item.permute(0, 2, 3, 1).reshape(b, new_h * new_w, -1)


@pytest.mark.parametrize("method", ["nearest-exact", "nearest", "bilinear", "avg_pool", "max_pool"])
def test_downsampling_equals_the_release_rule(method):
    x = torch.randn(2, 8 * 12, 5)
    assert torch.equal(downsample_tokens(x, 8, 12, 2, method), release_up_or_downsample(x, 12, 8, 6, 4, method))


class Capture:
    """Record attn1's token input and output, and what its key projection was fed, on every call."""

    def __init__(self, attn):
        self.calls, self.sources = [], []
        attn.register_forward_hook(
            lambda m, args, kwargs, out: self.calls.append((args[0] if args else kwargs["hidden_states"], out)),
            with_kwargs=True)
        attn.to_k.register_forward_hook(lambda m, args, out: self.sources.append(args[0]))


def test_keys_and_values_come_from_the_downsampled_tokens_and_queries_stay_whole():
    pipe = shapes_sd()
    wrapped = mmeff.wrap(pipe)
    wrapped.add_plugin("todo", use_rand=False)
    attn = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    capture = Capture(attn)
    images(wrapped, steps=5)  # timesteps 999 ... 199: the last step is below the 0.2 switch
    plugin = wrapped.plugins["todo"]
    (x, out), source = capture.calls[0], capture.sources[0]  # first step: t/1000 > 0.2 (downsample)
    (x_late, out_late), source_late = capture.calls[-1], capture.sources[-1]  # last: t/1000 <= 0.2 (similarity)
    assert source.shape[1] == x.shape[1] // 4 == 16
    assert torch.equal(source, downsample_tokens(x, 8, 8, 2, "nearest-exact"))
    with torch.no_grad():
        assert torch.allclose(out, attn.processor(attn, x, encoder_hidden_states=source), atol=1e-6)
        merged = grid_merge(x_late, destination_mask(8, 8, 2, 2), 32).merge(x_late)
        assert torch.allclose(source_late, merged, atol=1e-6)
    assert out.shape == x.shape and out_late.shape == x_late.shape, "queries keep every token: nothing to unmerge"
    assert plugin.stats()["kv_tokens_after"][0] == 32 and plugin.stats()["timestep"] / 1000 <= 0.2


def test_neutral_settings_are_the_plain_pipeline_and_detach_is_bit_identical():
    pipe = shapes_sd()
    plain = images(pipe)
    wrapped = mmeff.wrap(pipe)
    wrapped.add_plugin("todo", downsample_factor=1, secondary_merge_method="none")
    assert torch.equal(images(wrapped), plain)
    wrapped.remove_plugin("todo")
    wrapped.add_plugin("todo")
    assert not torch.equal(images(wrapped), plain)
    wrapped.remove_plugin("todo")
    assert torch.equal(images(wrapped), plain)
    assert not list(iter_hooks(pipe.unet))


@pytest.mark.parametrize("options, message", [
    ({"downsample_factor": 0}, "downsample_factor must be an int >= 1"),
    ({"downsample_method": "cubic"}, "downsample_method must be one of"),
    ({"secondary_merge_method": "tome"}, "secondary_merge_method must be one of"),
    ({"timestep_threshold_switch": 1.5}, "timestep_threshold_switch must be a number in \\[0, 1\\)"),
])
def test_bad_options_fail_clearly_and_leave_the_pipeline_untouched(options, message):
    pipe = tiny_sd()
    wrapped = mmeff.wrap(pipe)
    with pytest.raises(ConfigError, match=message):
        wrapped.add_plugin("todo", **options)
    assert not wrapped.plugins and not list(iter_hooks(pipe.unet))


def test_pixart_self_attention_is_downsampled():
    pipe = tiny_pixart()
    pipe.set_progress_bar_config(disable=True)
    kw = {"use_resolution_binning": False}
    plain = images(pipe, **kw)
    wrapped = mmeff.wrap(pipe)
    wrapped.add_plugin("todo", timestep_threshold_switch=0.0)
    capture = Capture(pipe.transformer.transformer_blocks[0].attn1)
    reduced = images(wrapped, **kw)
    assert [s.shape[1] for s in capture.sources] == [4, 4, 16]  # timesteps 666, 333, then 0: the release stops at 0
    assert capture.calls[0][0].shape[1] == 16
    assert not torch.equal(reduced, plain)


def test_flux_is_refused_with_the_reason():
    with pytest.raises(UnsupportedModelError, match="jointly"):
        mmeff.wrap(tiny_flux()).add_plugin("todo")


def test_batch_rows_equal_solo_runs():
    wrapped = mmeff.wrap(shapes_sd())
    wrapped.add_plugin("todo", use_rand=False)
    prompts = ["a red circle", "a green star"]
    batch = wrapped(prompts, num_inference_steps=5, generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                    output_type="pt").images
    for i, prompt in enumerate(prompts):
        solo = wrapped([prompt], num_inference_steps=5, generator=torch.Generator().manual_seed(i),
                       output_type="pt").images
        assert torch.allclose(batch[i], solo[0], atol=1e-5)
