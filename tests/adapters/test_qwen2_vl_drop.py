"""Token dropping on Qwen2-VL / Qwen2.5-VL: the M-RoPE "keep" convention, videos, several images, bad input.

On M-RoPE models every stage keeps the survivors' ORIGINAL ``(t, h, w)`` position ids and decoding
continues with the model's own ``rope_deltas`` (as the released Qwen ports of FastV/DART/VScan do).
The equivalence tests below state that as an *ideal*: a drop before decoder layer 0 must be exactly
the unmodified model run on the kept tokens alone, at their original positions, with no padding.
Any other convention (compacting the ids, re-deriving positions from the shorter cache, shifting the
decode positions by the number of dropped tokens) changes the rotary phases and fails them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmeff
from mmeff.errors import InputError
from mmeff.plugins.pyramid_drop.ops import stage_keep_counts
from mmeff.testing import tiny_llava, tiny_qwen2_vl
from mmeff.testing.plugin_tests import PROMPTS, cache_lengths, sample_images
from mmeff.testing.qwen import merged_embeddings, original_positions
from mmeff.token_drop.engine import DropEngine

QWEN_FACTORIES = {
    "qwen2_vl-sdpa": dict(variant="qwen2_vl", attn_implementation="sdpa"),
    "qwen2_vl-eager": dict(variant="qwen2_vl", attn_implementation="eager"),
    "qwen2_5_vl-sdpa": dict(variant="qwen2_5_vl", attn_implementation="sdpa"),
}
ATOL = 1e-5
DECODE_STEPS = 4


def make_pipe(factory: str = "qwen2_vl-sdpa") -> mmeff.MMPipeline:
    model, processor = tiny_qwen2_vl(layers=8, **QWEN_FACTORIES[factory])
    return mmeff.wrap(model, processor)


def frames(n: int = 4, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(n)]


def pad_id(pipe: mmeff.MMPipeline) -> int:
    return pipe.processor.tokenizer.pad_token_id


# -- the reference: the unmodified model on the kept tokens only ----------------------------
def kept_indices(pipe: mmeff.MMPipeline, inputs: dict) -> list[torch.Tensor]:
    """Per row, the non-pad original tokens that survived the last stage (read right after the plugin's call)."""
    layout = DropEngine.existing(pipe.adapter).state.layouts[-1]
    rows = []
    for b in range(inputs["input_ids"].shape[0]):
        idx = layout.idx[b][layout.valid[b]]
        rows.append(idx[inputs["attention_mask"][b, idx].bool()])
    return rows


def check_kept_set(pipe: mmeff.MMPipeline, inputs: dict, kept: list[torch.Tensor], budget: float) -> None:
    """The drop really happened: every text token stays, and ``round(n * budget)`` image tokens of n."""
    image = inputs["input_ids"] == pipe.adapter.image_token_id
    for b, idx in enumerate(kept):
        text = (~image[b] & inputs["attention_mask"][b].bool()).nonzero().squeeze(-1)
        n_image = int(image[b].sum())
        assert set(text.tolist()) <= set(idx.tolist())
        assert int(image[b, idx].sum()) == max(1, round(n_image * budget)) < n_image
        assert torch.equal(idx, idx.sort().values)


@pytest.fixture(scope="module", params=list(QWEN_FACTORIES))
def dropped(request):
    """A pipe with random_drop before layer 0, a left-padded 2-row batch (9 and 10 image tokens), the
    plugin's prefill logits and greedy generation, the kept indices and the reference's ingredients."""
    pipe = make_pipe(request.param)
    model = pipe.model
    budget = 0.5
    pipe.add_plugin("random_drop", layer=0, budget=budget, seed=1)
    inputs = pipe.to_model(pipe.adapter.build_inputs(sample_images(), PROMPTS))
    pipe.adapter.check_token_counts(inputs["input_ids"], inputs)
    image = inputs["input_ids"] == pipe.adapter.image_token_id
    assert image.sum(-1).tolist() == [9, 10]
    assert not inputs["attention_mask"].bool().all(), "the batch must be left padded"

    pipe.reset_state()
    with torch.no_grad():
        prefill_logits = model(**inputs).logits[:, -1].float()
    kept = kept_indices(pipe, inputs)
    check_kept_set(pipe, inputs, kept, budget)

    pipe.reset_state()
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=DECODE_STEPS + 1, do_sample=False, pad_token_id=pad_id(pipe),
                             output_logits=True, return_dict_in_generate=True)
    for b, idx in enumerate(kept_indices(pipe, inputs)):
        assert torch.equal(idx, kept[b]), "generate kept another subset than the forward"

    with pipe.plugins_disabled(), torch.no_grad():
        embeds = merged_embeddings(model, inputs)
        positions, deltas = original_positions(model, inputs)
    return dict(pipe=pipe, inputs=inputs, prefill_logits=prefill_logits, gen=gen, kept=kept, embeds=embeds,
                positions=positions, deltas=deltas)


def reference_prefill(d: dict, b: int):
    """The unmodified model on row ``b``'s kept tokens: embeddings and ORIGINAL 3-D ids gathered, no padding."""
    pipe, idx = d["pipe"], d["kept"][b]
    embeds = d["embeds"][b, idx][None]
    positions = d["positions"][:, b, idx][:, None]
    with pipe.plugins_disabled(), torch.no_grad():
        return pipe.model(inputs_embeds=embeds, position_ids=positions,
                          attention_mask=torch.ones(1, idx.numel(), dtype=torch.long), use_cache=True)


def test_prefill_equals_unmodified_model_on_kept_tokens(dropped):
    d = dropped
    for b in range(len(d["kept"])):
        ref = reference_prefill(d, b).logits[0, -1].float()
        torch.testing.assert_close(d["prefill_logits"][b], ref, atol=ATOL, rtol=0)
        # and generate's own first step is the same prefill
        torch.testing.assert_close(d["gen"].logits[0][b].float(), ref, atol=ATOL, rtol=0)


def test_reference_would_catch_other_position_conventions(dropped):
    """Sanity of the test itself: on the same kept tokens, other position conventions move the logits by
    far more than ATOL. Prefill at compacted ids (0..n-1); the first decode step at the shorter cache's
    length, or at the keep position moved back by the number of dropped tokens."""
    d = dropped
    pipe, inputs, b = d["pipe"], d["inputs"], 0
    idx = d["kept"][b]
    compact = torch.arange(idx.numel())[None, None].expand(3, 1, -1)
    with pipe.plugins_disabled(), torch.no_grad():
        other = pipe.model(inputs_embeds=d["embeds"][b, idx][None], position_ids=compact).logits[0, -1].float()
    assert (other - d["prefill_logits"][b]).abs().max() > 20 * ATOL

    prompt_len = inputs["input_ids"].shape[1]
    token = d["gen"].sequences[b, prompt_len].view(1, 1)
    n_prompt = int(inputs["attention_mask"][b].sum())
    keep_position = n_prompt + int(d["deltas"][b])
    for wrong in (idx.numel(), keep_position - (n_prompt - idx.numel())):
        assert wrong != keep_position
        cache = reference_prefill(d, b).cache
        position = torch.full((3, 1, 1), wrong, dtype=torch.long)
        with pipe.plugins_disabled(), torch.no_grad():
            out = pipe.model(input_ids=token, position_ids=position, cache=cache, use_cache=True)
        assert (out.logits[0, -1].float() - d["gen"].logits[1][b].float()).abs().max() > 20 * ATOL, wrong


def test_decode_equals_unmodified_model_on_kept_tokens(dropped):
    """Decode steps with the KV cache against a cached reference.

    The reference prefills row ``b``'s kept tokens alone (as above), then feeds each token the plugin
    generated with an explicit (3, 1, 1) position: the token's text position in the FULL, unpadded
    prompt plus the row's rope_delta, i.e. ``n_prompt + j + delta = max(original ids) + 1 + j``, which is
    what Qwen's generate uses on the full prompt. A cached reference is exact here because the
    reference's cache holds exactly the kept tokens; a ``use_cache=False`` reference would need the
    same explicit positions re-fed for the whole sequence and shows nothing more.
    """
    d = dropped
    pipe, gen, inputs = d["pipe"], d["gen"], d["inputs"]
    prompt_len = inputs["input_ids"].shape[1]
    new = gen.sequences[:, prompt_len:]
    assert len(gen.logits) == new.shape[1] == DECODE_STEPS + 1
    embed = pipe.model.get_input_embeddings()
    for b in range(new.shape[0]):
        ref = reference_prefill(d, b)
        cache = ref.cache
        n_prompt = int(inputs["attention_mask"][b].sum())
        delta = int(d["deltas"][b])
        assert n_prompt + delta == int(d["positions"][:, b].max()) + 1
        n_cached = d["kept"][b].numel()
        for j in range(DECODE_STEPS):
            token = new[b, j].view(1, 1)
            position = torch.full((3, 1, 1), n_prompt + j + delta, dtype=torch.long)
            with pipe.plugins_disabled(), torch.no_grad():
                out = pipe.model(inputs_embeds=embed(token), position_ids=position, cache=cache, use_cache=True,
                                 attention_mask=torch.ones(1, n_cached + j + 1, dtype=torch.long))
            cache = out.cache
            torch.testing.assert_close(gen.logits[j + 1][b].float(), out.logits[0, -1].float(), atol=ATOL, rtol=0,
                                       msg=lambda m, b=b, j=j: f"row {b}, decode step {j + 1}: {m}")


# -- video ----------------------------------------------------------------------------------
def test_video_tokens_reduced_per_stage_and_rows_match_solo_runs():
    pipe = make_pipe("qwen2_vl-sdpa")
    pipe.add_plugin("pyramid_drop")
    boundaries = [s.boundary for s in DropEngine.existing(pipe.adapter).stages]
    assert boundaries == [2, 4, 6]
    clip, image = frames(), sample_images()[0]
    images, videos, prompts = [None, image], [clip, None], ["describe the video", PROMPTS[0]]
    inputs = pipe.to_model(pipe.adapter.build_inputs(images, prompts, videos=videos))
    ids = inputs["input_ids"]
    video_counts = (ids == pipe.adapter.video_token_id).sum(-1)
    image_counts = (ids == pipe.adapter.image_token_id).sum(-1)
    assert video_counts.tolist() == [18, 0] and image_counts.tolist() == [0, 9]
    vision = video_counts + image_counts

    lengths = cache_lengths(pipe, inputs)
    engine = DropEngine.existing(pipe.adapter)
    final = engine.state.layouts[-1]
    survivors = ids.gather(1, final.idx)[final.image & final.valid].tolist()
    assert survivors.count(pipe.adapter.video_token_id) == int(stage_keep_counts(vision, 0.5, 3)[0]) == 2

    batched = pipe.generate(images, prompts, videos=videos, max_new_tokens=5, return_ids=True).new_tokens
    stats = pipe.last_stats["pyramid_drop"]
    assert stats["image_tokens_before"] == [18.0, 9.0]
    stage_of = [sum(b <= layer for b in boundaries) for layer in range(8)]
    expected = [stage_keep_counts(vision, 0.5, s).tolist() for s in stage_of]  # (layers, B)
    assert expected[0] == [18, 9] and expected[-1] == [2, 1]
    assert stats["image_tokens_per_layer_by_row"] == [list(r) for r in zip(*expected)]
    # each layer's cache holds the rows' non-vision tokens (pads included) plus the survivors, re-left-padded
    full = ids.shape[1]
    assert lengths == [max(full - int(vision[b]) + e[b] for b in range(2)) for e in expected]
    non_pad = inputs["attention_mask"].sum(-1)
    assert stats["kv_cache_tokens_per_layer"] == [
        float(sum(int(non_pad[b]) - int(vision[b]) + e[b] for b in range(2))) / 2 for e in expected
    ]

    for row in range(2):
        solo = pipe.generate([images[row]], [prompts[row]], videos=[videos[row]], max_new_tokens=5,
                             return_ids=True).new_tokens[0]
        n = solo.shape[0]
        assert torch.equal(solo, batched[row, :n]), f"row {row} differs when batched"
        assert (batched[row, n:] == pad_id(pipe)).all()


# -- several images in one prompt ------------------------------------------------------------
def test_several_images_in_one_prompt_under_fastv():
    pipe = make_pipe("qwen2_vl-sdpa")
    pipe.add_plugin("fastv")
    img_a, img_b = sample_images()
    img_c = sample_images(seed=1)[0]
    solo_counts = [int((pipe.adapter.build_inputs([im], ["x"])["input_ids"] == pipe.adapter.image_token_id).sum())
                   for im in (img_a, img_b, img_c)]
    assert solo_counts == [9, 10, 9]
    images, prompts = [[img_a, img_b], img_c], PROMPTS
    inputs = pipe.adapter.build_inputs(images, prompts)
    assert inputs["image_grid_thw"].shape[0] == 3
    batched = pipe.generate(images, prompts, max_new_tokens=5, return_ids=True).new_tokens
    stats = pipe.last_stats["fastv"]
    assert stats["image_tokens_before"] == [19.0, 9.0]
    assert stats["image_tokens_per_layer_by_row"][0][-1] == round(19 * 0.5)
    assert stats["image_tokens_per_layer_by_row"][1][-1] == max(1, round(9 * 0.5))
    for row in range(2):
        solo = pipe.generate([images[row]], [prompts[row]], max_new_tokens=5, return_ids=True).new_tokens[0]
        n = solo.shape[0]
        assert torch.equal(solo, batched[row, :n]), f"row {row} differs when batched"


# -- bad input -------------------------------------------------------------------------------
def test_image_tokens_and_grid_mismatch_raise_input_error():
    pipe = make_pipe("qwen2_vl-sdpa")
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    pipe.adapter.check_token_counts(inputs["input_ids"], inputs)  # consistent: no error
    grid = inputs["image_grid_thw"].clone()
    grid[0] = torch.tensor([1, 8, 8])  # 16 tokens claimed, 9 placeholders present
    with pytest.raises(InputError, match="image"):
        pipe.adapter.check_token_counts(inputs["input_ids"], {**inputs, "image_grid_thw": grid})
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == pipe.adapter.image_token_id).nonzero()[0])
    ids[0, first] = pipe.processor.tokenizer.convert_tokens_to_ids("<unk>")
    with pytest.raises(InputError, match="need 19 image tokens .* hold 18"):
        pipe.adapter.check_token_counts(ids, inputs)
    no_pixels = {k: v for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
    with pytest.raises(InputError, match="no pixel_values"):
        pipe.adapter.check_token_counts(inputs["input_ids"], no_pixels)


def test_llava_refuses_video():
    model, processor = tiny_llava()
    pipe = mmeff.wrap(model, processor)
    with pytest.raises(InputError, match="takes no video"):
        pipe.generate([sample_images()[0]], [PROMPTS[0]], videos=[frames()], max_new_tokens=2)
