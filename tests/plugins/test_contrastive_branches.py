"""Each negative branch is built as its method specifies, and the family composes with token reduction."""

from __future__ import annotations

import math

import pytest
import torch

import mmeff
from mmeff.contrastive.decode import Branch, ContrastiveDecoder
from mmeff.contrastive.ops import ddpm_alpha_bar
from mmeff.errors import ConfigError, InputError
from mmeff.plugins.lqcd import leading_form
from mmeff.testing import tiny_llava
from mmeff.testing.plugin_tests import PROMPTS, sample_images
from mmeff.token_drop.engine import DropEngine


@pytest.fixture
def pipe():
    return mmeff.wrap(*tiny_llava(layers=4))


def negative_of(pipe, name, **options):
    plugin = pipe.add_plugin(name, **options)
    images = sample_images()
    inputs = pipe.adapter.build_inputs(images, PROMPTS)
    return inputs, plugin.negative(pipe, inputs, images, PROMPTS)


def test_vcd_negative_is_the_ddpm_noised_image(pipe):
    inputs, neg = negative_of(pipe, "vcd", noise_step=500, noise_seed=3)
    x, noised = inputs["pixel_values"], neg.vision["pixel_values"]
    abar = ddpm_alpha_bar(500)
    eps = (noised - math.sqrt(abar) * x) / math.sqrt(1 - abar)
    assert eps.std().item() == pytest.approx(1.0, abs=0.15) and abs(eps.mean().item()) < 0.15
    torch.testing.assert_close(eps[0], eps[1], atol=1e-4, rtol=0)  # one seeded pattern, batch-independent
    assert torch.equal(neg.input_ids, inputs["input_ids"])
    pipe.remove_plugin("vcd")
    _, fresh = negative_of(pipe, "vcd", noise_seed=None)
    eps_fresh = (fresh.vision["pixel_values"] - math.sqrt(abar) * x) / math.sqrt(1 - abar)
    assert not torch.allclose(eps_fresh[0], eps_fresh[1])


def _single_head_cls_attention(pipe, pixels):
    adapter = pipe.adapter
    idx = adapter.feature_layer_index()
    hidden = adapter.vision_tower(pixels, output_hidden_states=True).hidden_states[idx]
    layer = adapter.vision_layers[idx]
    x = layer.layer_norm1(hidden)
    q, k = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
    return ((q[:, :1] @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])).softmax(-1)[:, 0, 1:]


def test_damro_negative_keeps_exactly_the_k_outliers(pipe):
    with torch.no_grad():
        inputs, neg = negative_of(pipe, "damro", k=5)
        attn = _single_head_cls_attention(pipe, inputs["pixel_values"])
    image = neg.input_ids == pipe.adapter.image_token_id
    visible = image & neg.attention_mask.bool()
    assert visible.sum(-1).tolist() == [5, 5]
    for row in range(2):
        kept = visible[row][image[row]].nonzero().flatten()
        assert set(kept.tolist()) == set(attn[row].topk(5).indices.tolist())
    assert pipe.plugins["damro"]._extra["outliers_by_attention"] == attn.topk(5).indices.tolist()
    assert not neg.same_images and "mm_encoder_outputs" in neg.vision  # the outliers' features, reordered


def test_damro_negative_row_is_the_prompt_with_only_k_image_tokens(pipe):
    """The masked row gives the logits of a genuinely shorter prompt: the k outliers' features in the
    release's order (descending CLS attention), compact positions."""
    model = pipe.model
    with torch.no_grad():
        inputs, neg = negative_of(pipe, "damro", k=3)
        attn = _single_head_cls_attention(pipe, inputs["pixel_values"])
        pos = Branch.from_inputs(inputs)
        decoder = ContrastiveDecoder(model, lambda lp, ln, step: lp)
        decoder.run(pos, neg, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
        features = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        text = inputs["input_ids"] != pipe.adapter.image_token_id
        for row in range(2):
            order = attn[row].topk(3).indices  # descending attention: the release's input order
            keep = neg.attention_mask[row].bool()
            start = int((~text[row]).nonzero()[0])
            before, after = embeds[row, :start][keep[:start]], embeds[row, start:][keep[start:] & text[row, start:]]
            prompt = torch.cat([before, features[row][order].to(embeds.dtype), after])[None]
            solo = model(inputs_embeds=prompt).logits[0, -1]
            torch.testing.assert_close(decoder.last_prefill[2 + row], solo.float(), atol=1e-4, rtol=1e-4)


def test_damro_k_larger_than_the_image_tokens_is_refused(pipe):
    with pytest.raises(ConfigError, match="16 image tokens"):
        pipe.add_plugin("damro", k=17)
    assert not pipe.plugins


def test_icd_negative_prepends_the_disturbance_instruction(pipe):
    _, neg = negative_of(pipe, "icd", instruction="describe what objects")
    text = pipe.processor.tokenizer.decode(neg.input_ids[0], skip_special_tokens=False)
    assert "describe what objects USER" in text and "is there a red circle in the image" in text
    assert neg.same_images


def test_lqcd_leading_forms():
    assert leading_form("Is there a red circle in the image?") == "there is a red circle in the image , right?"
    assert leading_form("are there two stars?") == "there are two stars , right?"
    assert leading_form("is the star red?", tag="yes?") == "is the star red , yes?"
    # open questions have no leading form; a leading question is not made more leading (issue 29)
    assert leading_form("what color is the star?") is None
    assert leading_form("What is there in the image?") is None
    assert leading_form("there is a star , right?") is None
    assert leading_form("Is there a star, right?") is None


def test_lqcd_passes_open_questions_through_as_plain_decoding(pipe):
    prompts = ["is there a red circle in the image?", "what color is the circle?"]
    plugin = pipe.add_plugin("lqcd")
    images = sample_images()
    inputs = pipe.adapter.build_inputs(images, prompts)
    neg = plugin.negative(pipe, inputs, images, prompts)
    assert plugin._extra["passed_through"] == [1]
    assert torch.equal(neg.input_ids[1][neg.attention_mask[1].bool()], inputs["input_ids"][1][
        inputs["attention_mask"][1].bool()])
    with pipe.plugins_disabled():
        plain = pipe.generate(images, prompts, max_new_tokens=4, return_ids=True).new_tokens
    pipe.remove_plugin("lqcd")
    pipe.add_plugin("lqcd", alpha=5.0, beta=1e-3)
    contrasted = pipe.generate(images, prompts, max_new_tokens=4, return_ids=True).new_tokens
    assert torch.equal(contrasted[1], plain[1])  # the open question: negative = positive, no contrast
    assert pipe.last_stats["lqcd"]["passed_through"] == [1]


def test_lqcd_uses_the_given_leading_queries(pipe):
    _, neg = negative_of(pipe, "lqcd", leading=["is there a cat?", "how many cats?"])
    texts = pipe.processor.tokenizer.batch_decode(neg.input_ids, skip_special_tokens=True)
    assert "cat" in texts[0] and "cats" in texts[1]
    pipe.remove_plugin("lqcd")
    pipe.add_plugin("lqcd", leading=["only one"])
    with pytest.raises(InputError, match="one per prompt"):
        pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)
    assert pipe.generate(sample_images()[:1], PROMPTS[:1], max_new_tokens=2) is not None  # not corrupted


def test_m3id_negative_has_no_image(pipe):
    _, neg = negative_of(pipe, "m3id")
    assert not (neg.input_ids == pipe.adapter.image_token_id).any() and not neg.vision


def test_m3id_t_starts_at_one_at_the_first_answer_token_and_contrasts_every_step(pipe):
    """The reimplementations: w_t = exp(lam t) - 1 with t = 1 at the first answer token, whatever the
    prompt's length, and no confidence gate; counting the prompt is the option."""
    negative_of(pipe, "m3id")
    plugin = pipe.plugins["m3id"]
    assert plugin.config.threshold == 1.0 and not plugin.config.count_prompt
    lp = torch.tensor([[8.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # row 0 is sure (p > 0.99): no gate either way
    ln = torch.tensor([[0.0, 8.0, 0.0], [1.0, 0.0, 0.0]])
    w1 = math.exp(0.02) - 1
    torch.testing.assert_close(plugin.combine(lp, ln, 0), lp + w1 * (lp - ln))
    pipe.remove_plugin("m3id")
    negative_of(pipe, "m3id", count_prompt=True)
    counted = pipe.plugins["m3id"]._offset
    assert (counted > 4).all() and counted[0] != counted[1]  # the two prompts differ in length


def test_negative_rows_get_the_same_token_drop():
    pipe = mmeff.wrap(*tiny_llava(layers=8))
    pipe.add_plugin("fastv", k=2, ratio=0.5)
    plain = pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True).new_tokens
    pipe.add_plugin("vcd", alpha=0.0)
    assert torch.equal(pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True).new_tokens, plain)
    final = DropEngine.shared(pipe.adapter).state.layouts[-1]
    assert final.image_counts.tolist() == [8, 8, 8, 8]  # 2 positive + 2 negative rows, 16 -> 8 image tokens each
    pipe.remove_plugin("vcd")
    pipe.add_plugin("vcd", alpha=0.0, negative_drop=False)
    assert torch.equal(pipe.generate(sample_images(), PROMPTS, max_new_tokens=4, return_ids=True).new_tokens, plain)
    final = DropEngine.shared(pipe.adapter).state.layouts[-1]
    assert final.image_counts.tolist() == [8, 8, 16, 16]  # the negative rows keep every image token
    pipe.remove_plugin("vcd")
    pipe.add_plugin("vcd", separate=True)
    with pytest.raises(ConfigError, match="separate"):
        pipe.generate(sample_images(), PROMPTS, max_new_tokens=2)


def test_two_decoding_plugins_are_refused(pipe):
    pipe.add_plugin("vcd")
    with pytest.raises(ConfigError, match="decode_loop"):
        pipe.add_plugin("icd")
    assert list(pipe.plugins) == ["vcd"]
