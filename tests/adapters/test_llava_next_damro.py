"""DAMRO on LLaVA-NeXT, as its release does it (``pack_image_features_damro`` in coder-gx/DAMRO): per image,
the k patches of the *base crop* with the most single-head CLS attention at the feature layer, their
projected features in descending order, then one ``image_newline``; the tiles are left out."""

from __future__ import annotations

import math

import torch

import mmeff
from mmeff.contrastive.decode import Branch, ContrastiveDecoder
from mmeff.testing import tiny_llava_next
from mmeff.testing.plugin_tests import PROMPTS, sample_images

K = 3


def _release_negative_embeds(model, inputs, row: int, crop: int) -> torch.Tensor:
    """The release's negative prompt for ``row``: its text around [base crop's top-k features, newline]."""
    cfg = model.config
    tower = model.model.vision_tower
    idx = cfg.vision_feature_layer  # the release hooks q/k of encoder.layers[vision_feature_layer]
    pixels = torch.cat([p[: n] for p, n in zip(inputs["pixel_values"], _crops(model, inputs))])
    hidden = tower(pixels, output_hidden_states=True).hidden_states
    layers = getattr(tower, "vision_model", tower).encoder.layers
    layer = layers[idx]
    x = layer.layer_norm1(hidden[len(layers) + idx])  # the input of encoder.layers[idx]
    q, k = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
    c = hidden[idx].shape[-1]
    cls = ((q @ k.transpose(-2, -1)) * c**-0.5).softmax(-1)[:, 0, 1:]
    top = cls[crop].topk(K).indices  # sorted=True: descending
    selected = hidden[idx][crop, 1:][top]
    outliers = model.model.multi_modal_projector(selected[None])[0]
    image = torch.cat([outliers, model.model.image_newline[None]])
    embeds = model.get_input_embeddings()(inputs["input_ids"][row])
    is_image = inputs["input_ids"][row] == cfg.image_token_id
    valid = inputs["attention_mask"][row].bool()
    start, end = int(is_image.nonzero()[0]), int(is_image.nonzero()[-1]) + 1
    before = embeds[:start][valid[:start]]
    return torch.cat([before, image.to(embeds.dtype), embeds[end:]])[None], top


def _crops(model, inputs) -> list[int]:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    cfg = model.config
    return [image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                      patch_size=cfg.vision_config.image_size) for s in inputs["image_sizes"]]


def test_negative_row_is_the_releases_base_crop_outliers_and_a_newline():
    model, processor = tiny_llava_next(layers=4)
    pipe = mmeff.wrap(model, processor)
    plugin = pipe.add_plugin("damro", k=K)
    images = sample_images()
    inputs = pipe.adapter.build_inputs(images, PROMPTS)
    crops = _crops(model, inputs)
    assert min(crops) > 1, "the test wants tiled images"
    with torch.no_grad():
        neg = plugin.negative(pipe, inputs, images, PROMPTS)
        image = neg.input_ids == pipe.adapter.image_token_id
        assert (image & neg.attention_mask.bool()).sum(-1).tolist() == [K + 1, K + 1]
        decoder = ContrastiveDecoder(model, lambda lp, ln, step: lp)
        decoder.run(Branch.from_inputs(inputs), neg, max_new_tokens=1, eos_token_id=None, pad_token_id=0)
        first_crop = [0, crops[0]]
        for row in range(2):
            embeds, top = _release_negative_embeds(model, inputs, row, first_crop[row])
            assert plugin._extra["outliers_by_attention"][row] == top.tolist()
            want = model(inputs_embeds=embeds).logits[0, -1].float()
            torch.testing.assert_close(decoder.last_prefill[2 + row], want, atol=1e-4, rtol=1e-4)
    assert math.isfinite(float(decoder.last_prefill.sum()))
