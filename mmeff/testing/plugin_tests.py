"""A reusable pytest mixin: the behaviour every VLM plugin must show.

Subclass it in a test module and set the class attributes::

    class TestMyPlugin(VLMPluginTesterMixin):
        plugin_name = "my_plugin"
        neutral_options = {"alpha": 0.0}       # must reproduce the plain model exactly
        active_options = {"alpha": 1.0}        # must change something visible
        bad_options = [{"alpha": -1}]          # each must raise ConfigError

and implement :meth:`assert_effect` for the plugin's visible effect.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import mmeff
from mmeff.errors import ConfigError, UnsupportedModelError

from .factories import tiny_llava, tiny_llava_next
from .gemma3 import tiny_gemma3
from .internvl import tiny_internvl
from .onevision import tiny_llava_onevision
from .qwen import tiny_qwen2_vl

FACTORIES = {
    "llava-sdpa": lambda: tiny_llava(layers=8, attn_implementation="sdpa"),
    "llava-eager": lambda: tiny_llava(layers=8, attn_implementation="eager"),
    "llava_next-sdpa": lambda: tiny_llava_next(layers=8, attn_implementation="sdpa"),
    "qwen2_vl-sdpa": lambda: tiny_qwen2_vl(layers=8, attn_implementation="sdpa"),
    "qwen2_vl-eager": lambda: tiny_qwen2_vl(layers=8, attn_implementation="eager"),
    "qwen2_5_vl-sdpa": lambda: tiny_qwen2_vl(variant="qwen2_5_vl", layers=8, attn_implementation="sdpa"),
    "qwen3_vl-sdpa": lambda: tiny_qwen2_vl(variant="qwen3_vl", layers=8, attn_implementation="sdpa"),
    "internvl-sdpa": lambda: tiny_internvl(layers=8, attn_implementation="sdpa"),
    "internvl-eager": lambda: tiny_internvl(layers=8, attn_implementation="eager"),
    "llava_onevision-sdpa": lambda: tiny_llava_onevision(layers=8, attn_implementation="sdpa"),
    "llava_onevision-eager": lambda: tiny_llava_onevision(layers=8, attn_implementation="eager"),
    "gemma3-sdpa": lambda: tiny_gemma3(layers=8, attn_implementation="sdpa"),
    "gemma3-eager": lambda: tiny_gemma3(layers=8, attn_implementation="eager"),
}
#: factories whose mixin runs are marked ``slow`` (``pytest -m slow``), should one grow too costly for ``make
#: test``; none now (the whole suite takes about 2.5 minutes on 2 idle cores)
EXTENDED: tuple[str, ...] = ()
#: what ``@pytest.mark.parametrize("factory", FACTORY_PARAMS)`` runs on
FACTORY_PARAMS = [pytest.param(f, marks=pytest.mark.slow) if f in EXTENDED else f for f in FACTORIES]
#: the adapter each factory's model gets (a plugin's tests run on the factories its registry entry supports)
FACTORY_ADAPTERS = {name: name.split("-")[0].replace("qwen2_5_vl", "qwen2_vl") for name in FACTORIES}


def supported_factories(plugin_name: str) -> tuple[str, ...]:
    from .. import registry

    return tuple(f for f, adapter in FACTORY_ADAPTERS.items() if registry.supported(plugin_name, adapter))
PROMPTS = ["is there a red circle in the image?", "how many?"]


def sample_images(seed: int = 0) -> list[np.ndarray]:
    """A square and a wide image, so LLaVA-NeXT rows get different image-token counts."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), rng.integers(0, 255, (16, 40, 3), dtype=np.uint8)]


def forward_modules(model: torch.nn.Module) -> dict[str, Any]:
    """Every module's instance-level ``forward`` (absent = the class method)."""
    return {name: m.__dict__.get("forward") for name, m in model.named_modules()}


class VLMPluginTesterMixin:
    plugin_name: ClassVar[str]
    neutral_options: ClassVar[dict[str, Any]]
    active_options: ClassVar[dict[str, Any]]
    bad_options: ClassVar[list[dict[str, Any]]] = []
    #: the factories to run on; None = every factory whose adapter the plugin supports
    factories: ClassVar[tuple[str, ...] | None] = None
    max_new_tokens: ClassVar[int] = 6

    @classmethod
    def runs_on(cls) -> tuple[str, ...]:
        return cls.factories if cls.factories is not None else supported_factories(cls.plugin_name)

    # -- helpers -------------------------------------------------------------------------
    def make_pipe(self, factory: str) -> mmeff.MMPipeline:
        model, processor = FACTORIES[factory]()
        return mmeff.wrap(model, processor)

    def model_inputs(self, pipe: mmeff.MMPipeline, images=None, prompts=None) -> dict[str, Any]:
        return pipe.adapter.build_inputs(images or sample_images(), prompts or PROMPTS)

    def last_logits(self, pipe: mmeff.MMPipeline, inputs: dict[str, Any]) -> torch.Tensor:
        pipe.reset_state()
        with torch.no_grad():
            return pipe.model(**inputs).logits[:, -1].float()

    def generate(self, pipe: mmeff.MMPipeline, images=None, prompts=None, **kw) -> torch.Tensor:
        out = pipe.generate(
            images or sample_images(), prompts or PROMPTS, max_new_tokens=self.max_new_tokens, return_ids=True, **kw
        )
        return out.new_tokens

    def assert_effect(self, pipe: mmeff.MMPipeline, inputs: dict[str, Any]) -> None:
        raise NotImplementedError("plugin tests must show the plugin's visible effect")

    # -- the shared behaviour ------------------------------------------------------------
    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_neutral_settings_reproduce_baseline(self, factory):
        if factory not in self.runs_on():
            pytest.skip(f"{self.plugin_name} does not run on {factory}")
        pipe = self.make_pipe(factory)
        inputs = self.model_inputs(pipe)
        baseline = self.last_logits(pipe, inputs)
        pipe.add_plugin(self.plugin_name, **self.neutral_options)
        torch.testing.assert_close(self.last_logits(pipe, inputs), baseline, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_remove_restores_bit_identical_model(self, factory):
        if factory not in self.runs_on():
            pytest.skip(f"{self.plugin_name} does not run on {factory}")
        pipe = self.make_pipe(factory)
        inputs = self.model_inputs(pipe)
        forwards = forward_modules(pipe.model)
        baseline = self.last_logits(pipe, inputs)
        baseline_tokens = self.generate(pipe)
        pipe.add_plugin(self.plugin_name, **self.active_options)
        self.generate(pipe)
        pipe.remove_plugin(self.plugin_name)
        assert forward_modules(pipe.model) == forwards
        assert not any("_mmeff_hooks" in m.__dict__ for m in pipe.model.modules())
        assert torch.equal(self.last_logits(pipe, inputs), baseline)
        assert torch.equal(self.generate(pipe), baseline_tokens)

    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_effect_is_visible(self, factory):
        if factory not in self.runs_on():
            pytest.skip(f"{self.plugin_name} does not run on {factory}")
        pipe = self.make_pipe(factory)
        pipe.add_plugin(self.plugin_name, **self.active_options)
        self.assert_effect(pipe, self.model_inputs(pipe))

    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_batch_rows_match_single_runs(self, factory):
        if factory not in self.runs_on():
            pytest.skip(f"{self.plugin_name} does not run on {factory}")
        pipe = self.make_pipe(factory)
        pipe.add_plugin(self.plugin_name, **self.active_options)
        images = sample_images()
        batched = self.generate(pipe, images, PROMPTS)
        for row, (image, prompt) in enumerate(zip(images, PROMPTS)):
            single = self.generate(pipe, [image], [prompt])[0]
            # a single run stops at EOS; in the batch that row then only pads
            n = single.shape[0]
            assert torch.equal(single, batched[row, :n]), f"row {row} differs when batched"
            assert (batched[row, n:] == pipe.processor.tokenizer.pad_token_id).all()

    @pytest.mark.parametrize("factory", FACTORY_PARAMS)
    def test_consecutive_calls_are_identical(self, factory):
        if factory not in self.runs_on():
            pytest.skip(f"{self.plugin_name} does not run on {factory}")
        pipe = self.make_pipe(factory)
        pipe.add_plugin(self.plugin_name, **self.active_options)
        first = self.generate(pipe)
        stats = pipe.last_stats[self.plugin_name]
        other = self.generate(pipe, sample_images(seed=1), ["describe the image", "what color?"])
        assert other.shape[0] == 2
        assert torch.equal(self.generate(pipe), first)
        assert _untimed(pipe.last_stats[self.plugin_name]) == _untimed(stats)

    def test_plugins_disabled_gives_baseline(self):
        pipe = self.make_pipe(self.runs_on()[0])
        baseline = self.generate(pipe)
        pipe.add_plugin(self.plugin_name, **self.active_options)
        with pipe.plugins_disabled():
            assert torch.equal(self.generate(pipe), baseline)
        assert self.plugin_name in pipe.plugins

    def test_bad_options_raise_and_leave_model_unmodified(self):
        pipe = self.make_pipe(self.runs_on()[0])
        forwards = forward_modules(pipe.model)
        for options in self.bad_options:
            with pytest.raises(ConfigError) as info:
                pipe.add_plugin(self.plugin_name, **options)
            assert str(info.value), "the error must say what is allowed"
            assert forward_modules(pipe.model) == forwards
            assert not pipe.plugins

    def test_unknown_plugin_name_lists_available(self):
        pipe = self.make_pipe(self.runs_on()[0])
        with pytest.raises(KeyError, match=self.plugin_name):
            pipe.add_plugin(self.plugin_name + "_typo")

    def test_unsupported_model_names_supported_ones(self):
        from mmeff.testing.diffusion import tiny_sd

        pipe = mmeff.wrap(tiny_sd())
        with pytest.raises(UnsupportedModelError, match="supports"):
            pipe.add_plugin(self.plugin_name, **self.active_options)


def _untimed(stats: dict[str, Any]) -> dict[str, Any]:
    """Stats without wall-clock entries (keys ending in ``_s``), which differ run to run."""
    return {k: v for k, v in stats.items() if not k.endswith("_s")}


def cache_lengths(pipe: mmeff.MMPipeline, inputs: dict[str, Any]) -> list[int]:
    """Prefill once and return every decoder layer's KV-cache length (token reduction shows here)."""
    pipe.reset_state()
    with torch.no_grad():
        cache = pipe.model(**inputs, use_cache=True).cache
    return [cache.get_seq_length(i) for i in range(len(pipe.adapter.layers))]


def image_counts(pipe: mmeff.MMPipeline, inputs: dict[str, Any]) -> torch.Tensor:
    """Image placeholder tokens per row."""
    return (inputs["input_ids"] == pipe.adapter.image_token_id).sum(-1)


def layer_inputs_and_attentions(model: torch.nn.Module, layers, inputs: dict[str, Any]):
    """One eager forward of the unmodified ``model`` with ``output_attentions``, plus every decoder
    layer's input (hidden states, rotary cos/sin) captured on the way: what attention-row checks compare."""
    captured: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    def capture(idx):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[idx] = (hidden.detach().clone(), tuple(t.detach().clone() for t in kwargs["position_embeddings"]))
        return hook

    handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out, captured
