"""DAMRO on SigLIP towers (LLaVA-OneVision, Gemma 3), which have no CLS token. DAMRO has no release for
them; mmeff ranks by the attention each patch *receives* in the layer that gives the features (heads
averaged, query rows summed: VisionZip's signal for CLS-free towers). Each test rebuilds the negative
prompt from the tower's eager ``output_attentions`` and compares the prefill logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

import mmeff
from mmeff.contrastive.decode import Branch, ContrastiveDecoder
from mmeff.errors import ConfigError
from mmeff.testing import tiny_gemma3, tiny_llava_onevision
from mmeff.testing.plugin_tests import forward_modules

K = 3
PROMPTS = ["is there a red circle in the image ?", "how many ?"]


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def received(attentions: torch.Tensor) -> torch.Tensor:
    """(crops, patches) from one layer's eager attention probabilities (crops, heads, L, L)."""
    return attentions.mean(1).sum(-2)


def prefill_of_negative(pipe, plugin, inputs, images) -> torch.Tensor:
    neg = plugin.negative(pipe, inputs, images, PROMPTS)
    decoder = ContrastiveDecoder(pipe.model, lambda lp, ln, step: lp)
    decoder.run(Branch.from_inputs(inputs), neg, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
    return decoder.last_prefill[len(PROMPTS):]


# -- LLaVA-OneVision: the base tile's outliers, then the run's image_newline (as DAMRO's NeXT release) --
def test_onevision_negative_is_the_base_tiles_received_attention_outliers_and_a_newline() -> None:
    model, processor = tiny_llava_onevision(attn_implementation="eager")
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("damro", k=K)
    images = [image(24, 40), image(40, 24, 1)]
    inputs = pipe.adapter.build_inputs(images, PROMPTS)
    cfg, tower = model.config, model.model.vision_tower
    n_layers = len(pipe.adapter.vision_layers)
    produced = cfg.vision_feature_layer % (n_layers + 1)
    crops = [int(c) for c in (inputs["pixel_values"].abs().flatten(2).sum(-1) > 0).sum(-1)]
    assert min(crops) > 1, "the test wants tiled images"
    with torch.no_grad():
        got = prefill_of_negative(pipe, plugin, inputs, images)
        pixels = torch.cat([p[:n] for p, n in zip(inputs["pixel_values"], crops)])
        out = tower(pixels, output_attentions=True, output_hidden_states=True)
        scores = received(out.attentions[produced - 1])
        base = [0, crops[0]]
        for row in range(2):
            top = scores[base[row]].topk(K).indices  # descending
            assert plugin._extra["outliers_by_attention"][row] == top.tolist()
            outliers = model.model.multi_modal_projector(out.hidden_states[produced][base[row]][top][None])[0]
            run = torch.cat([outliers, model.model.image_newline[None]])
            ids = inputs["input_ids"][row]
            embeds = model.get_input_embeddings()(ids)
            is_image = ids == cfg.image_token_id
            valid = inputs["attention_mask"][row].bool()
            start, end = int(is_image.nonzero()[0]), int(is_image.nonzero()[-1]) + 1
            prompt = torch.cat([embeds[:start][valid[:start]], run, embeds[end:]])[None]
            want = model(inputs_embeds=prompt).logits[0, -1].float()
            torch.testing.assert_close(got[row], want, atol=1e-4, rtol=1e-4)


def test_onevision_k_larger_than_a_tile_is_refused_and_the_model_untouched() -> None:
    pipe = mmeff.wrap(*tiny_llava_onevision())
    before = forward_modules(pipe.model)
    with pytest.raises(ConfigError, match=r"1\.\.\d+"):
        pipe.add_plugin("damro", k=10_000)
    assert forward_modules(pipe.model) == before and not pipe.plugins


# -- Gemma 3: each image's soft tokens ranked by their pooled patches, the prompt cut to k per image ----
def test_gemma3_negative_is_the_prompt_cut_to_each_images_received_attention_outliers() -> None:
    """The tiny model's sliding window (20) is shorter than the prompts: hiding tokens behind the mask
    would not equal the shorter prompt there, so the negative prompt is cut for real."""
    model, processor = tiny_gemma3(attn_implementation="eager")
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("damro", k=K)
    images = [image(24, 40), [image(32, 32, 1), image(16, 16, 2)]]
    inputs = pipe.adapter.build_inputs(images, PROMPTS)
    token = model.config.image_token_id
    with torch.no_grad():
        got = prefill_of_negative(pipe, plugin, inputs, images)
        out = model.model.vision_tower(inputs["pixel_values"], output_attentions=True)
        scores = received(out.attentions[-1])
        side = int(scores.shape[1] ** 0.5)
        tokens = model.config.mm_tokens_per_image
        pooled = F.avg_pool2d(scores.view(-1, 1, side, side), side // int(tokens**0.5)).flatten(1)
        top = pooled.topk(K, dim=-1).indices  # (images, K), descending
        assert plugin._extra["outliers_by_attention"] == top.tolist()
        features = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        kept = torch.stack([features[i][top[i]] for i in range(len(top))])
        image_at = 0
        for row in range(2):
            ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            short, run = [], 0
            for t in ids:
                run = run + 1 if t == token else 0
                if t != token or run <= K:
                    short.append(t)
            short_ids = torch.tensor([short])
            n_images = sum(1 for a, b in zip([0, *short], short) if b == token and a != token)
            rows = kept[image_at : image_at + n_images]
            image_at += n_images
            want = model(input_ids=short_ids, token_type_ids=(short_ids == token).long(),
                         mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=rows)}).logits[0, -1]
            torch.testing.assert_close(got[row], want.float(), atol=1e-4, rtol=1e-4)


def test_gemma3_damro_generates_batch_rows_as_solo_runs_and_detaches() -> None:
    pipe = mmeff.wrap(*tiny_gemma3())
    images = [image(24, 40), image(32, 32, 1)]
    plain = pipe.generate(images, PROMPTS, max_new_tokens=4, return_ids=True).new_tokens
    pipe.add_plugin("damro", k=K, alpha=1.0)
    batch = pipe.generate(images, PROMPTS, max_new_tokens=4, return_ids=True).new_tokens
    for row in range(2):
        solo = pipe.generate(images[row : row + 1], PROMPTS[row : row + 1], max_new_tokens=4,
                             return_ids=True).new_tokens
        assert torch.equal(solo[0], batch[row][: solo.shape[1]])
    pipe.remove_plugin("damro")
    assert torch.equal(pipe.generate(images, PROMPTS, max_new_tokens=4, return_ids=True).new_tokens, plain)
