"""VDGD as released (Sreyan88/VDGD, ``experiments/eval/sampling/vdgd.py``): the description prompt carries
the question, the answer prompt is one turn around the description, and each answer token is drawn from
the softmax of the description scores of the top-p 0.5 / temperature 0.5 nucleus of the logits."""

from __future__ import annotations

import torch

import mmeff
from mmeff.contrastive.ops import nucleus
from mmeff.plugins.vdgd.config import RELEASED_DESCRIBE_PROMPT, VDGDConfig
from mmeff.testing import tiny_llava
from mmeff.testing.plugin_tests import PROMPTS, sample_images


def _release_top_p_and_temp_filtering(logit: torch.Tensor, top_p: float = 0.5, temperature: float = 0.5):
    """Transcribed from the release's ``top_p_and_temp_filtering``."""
    logits_processed = logit / temperature
    sorted_logits, sorted_indices = torch.sort(logits_processed, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - top_p)
    sorted_indices_to_remove[..., -1:] = 0
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return logits_processed.masked_fill(indices_to_remove, float("-inf"))


def test_nucleus_is_the_releases_candidate_set():
    g = torch.Generator().manual_seed(0)
    for scale in (0.5, 2.0, 8.0):
        logits = torch.randn(3, 50, generator=g) * scale
        want = _release_top_p_and_temp_filtering(logits) != float("-inf")
        assert torch.equal(nucleus(logits, 0.5, 0.5), want)
    assert nucleus(torch.tensor([[10.0, 0.0, 0.0]]), 0.5, 0.5).tolist() == [[True, False, False]]


def test_defaults_are_the_releases():
    c = VDGDConfig()
    assert (c.choice, c.top_p, c.temperature, c.prefix, c.description_tokens) == ("sample", 0.5, 0.5, "inline", 1024)
    assert c.describe_for("how many?").startswith("I have been given an image to complete the task described as: "
                                                  "how many?.\n\nTo help me complete the task")
    assert c.describe_prompt == RELEASED_DESCRIBE_PROMPT


def test_answer_tokens_are_drawn_from_the_nucleus_by_description_score():
    model, processor = tiny_llava(layers=4)
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("vdgd", describe_prompt="describe {question}", description_tokens=4)
    images = sample_images()
    first = []
    for seed in range(6):
        torch.manual_seed(seed)
        out = pipe.generate(images, PROMPTS, max_new_tokens=1, return_ids=True)
        first.append(out.new_tokens[:, 0])
    assert len({tuple(t.tolist()) for t in first}) > 1, "sampled, so the seed changes the answer"
    # the candidates and their weights: the nucleus of the answer prompt's logits, by description score
    answer = plugin.positive(pipe, pipe.to_model(pipe.adapter.build_inputs(images, PROMPTS)), images, PROMPTS)
    text = pipe.processor.tokenizer.batch_decode(answer["input_ids"])
    # one turn: "The input image is described as follows: <description> <question>" (the tiny vocabulary
    # knows "image is" and the questions' words only)
    assert all("image is" in t and q in t and t.count("USER") == 1 for t, q in zip(text, PROMPTS))
    with pipe.plugins_disabled(), torch.no_grad():
        logits = model(**answer).logits[:, -1]
    allowed = nucleus(logits, 0.5, 0.5)
    for tokens in first:
        assert allowed.gather(1, tokens[:, None]).all()
    stats = pipe.last_stats["vdgd"]
    assert stats["descriptions"] and stats["forwards"] == stats["answer_forwards"] + stats["description_forwards"]


def test_an_explicit_do_sample_false_takes_the_best_candidate():
    model, processor = tiny_llava(layers=4)
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("vdgd", describe_prompt="describe {question}", description_tokens=4)
    images = sample_images()
    out = pipe.generate(images, PROMPTS, max_new_tokens=1, return_ids=True, do_sample=False)
    answer = plugin.positive(pipe, pipe.to_model(pipe.adapter.build_inputs(images, PROMPTS)), images, PROMPTS)
    with pipe.plugins_disabled(), torch.no_grad():
        logits = model(**answer).logits[:, -1]
    best = plugin._scores.masked_fill(~nucleus(logits, 0.5, 0.5), float("-inf")).argmax(-1)
    assert torch.equal(out.new_tokens[:, 0], best)
