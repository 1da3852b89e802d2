"""``pipe.generate`` keywords reach ``model.generate`` as transformers users expect (issue 29): output
objects, several sequences per prompt, streamers, a ``generation_config``, the model's own defaults;
what contrastive decoding cannot do is refused by name."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GenerationConfig

import mmeff
from mmeff.errors import ConfigError
from mmeff.testing import tiny_llava
from mmeff.testing.plugin_tests import PROMPTS, sample_images


class Collect:
    """A minimal streamer: what generate puts, in order."""

    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.chunks.append(value)

    def end(self) -> None:
        self.ended = True


@pytest.fixture
def pipe() -> mmeff.MMPipeline:
    return mmeff.wrap(*tiny_llava(layers=2))


@pytest.mark.parametrize("plugin", [None, "vcd"])
def test_return_dict_in_generate_gives_texts_and_the_output_object(pipe, plugin):
    if plugin:
        pipe.add_plugin(plugin)
    plain = pipe.generate(sample_images(), PROMPTS, max_new_tokens=3, return_ids=True)
    out = pipe.generate(sample_images(), PROMPTS, max_new_tokens=3, return_ids=True, return_dict_in_generate=True)
    assert out.texts == plain.texts and torch.equal(out.sequences, plain.sequences)
    assert torch.equal(out.raw.sequences, out.sequences) and plain.raw is None


def test_num_return_sequences_keeps_every_sequence_grouped_by_prompt(pipe):
    torch.manual_seed(0)
    texts = pipe.generate(sample_images(), PROMPTS, max_new_tokens=3, do_sample=True, num_return_sequences=3)
    assert len(texts) == 2 and all(isinstance(t, list) and len(t) == 3 for t in texts)
    one = pipe.generate(sample_images()[0], PROMPTS[0], max_new_tokens=3, do_sample=True, num_return_sequences=2)
    assert isinstance(one, list) and len(one) == 2


def test_streamer_streams_under_a_contrastive_plugin(pipe):
    pipe.add_plugin("vcd")
    streamer = Collect()
    out = pipe.generate(sample_images()[:1], PROMPTS[:1], max_new_tokens=4, streamer=streamer, return_ids=True)
    assert len(streamer.chunks) >= 1 + out.new_tokens.shape[1] - 1 and streamer.ended  # prompt, then each token


@pytest.mark.parametrize("options", [{"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True},
                                     {"output_scores": True}])
def test_what_contrastive_decoding_cannot_do_is_refused(pipe, options):
    pipe.add_plugin("vcd")
    with pytest.raises(ConfigError, match=next(iter(options))):
        pipe.generate(sample_images(), PROMPTS, max_new_tokens=2, **options)
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2


def test_a_generation_config_is_used_without_warnings(pipe):
    config = GenerationConfig(do_sample=False, pad_token_id=pipe.model.generation_config.pad_token_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = pipe.generate(sample_images(), PROMPTS, max_new_tokens=3, generation_config=config)
    assert len(texts) == 2
    assert not [w for w in caught if "generation" in str(w.message).lower()], [str(w.message) for w in caught]


def test_the_models_own_generation_defaults_stand(pipe):
    greedy = pipe.generate(sample_images(), PROMPTS, max_new_tokens=6, return_ids=True).new_tokens
    pipe.model.generation_config.do_sample = True
    try:
        draws = []
        for seed in range(3):
            torch.manual_seed(seed)
            draws.append(pipe.generate(sample_images(), PROMPTS, max_new_tokens=6, return_ids=True).new_tokens)
        assert any(not torch.equal(d, greedy) for d in draws), "the model asks to sample: mmeff must not force greedy"
        assert torch.equal(pipe.generate(sample_images(), PROMPTS, max_new_tokens=6, do_sample=False,
                                         return_ids=True).new_tokens, greedy)
    finally:
        pipe.model.generation_config.do_sample = False


def test_beam_search_from_the_models_own_config_is_refused_under_a_contrastive_plugin(pipe):
    pipe.add_plugin("vcd")
    pipe.model.generation_config.num_beams = 2
    try:
        with pytest.raises(ConfigError, match="num_beams=2"):
            pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)
    finally:
        pipe.model.generation_config.num_beams = 1
    assert len(pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)) == 2
