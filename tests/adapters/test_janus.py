"""mmeff.adapters.janus on a tiny random JanusForConditionalGeneration + JanusProcessor built offline.

The reference is Janus's own ``generate(generation_mode="image")``: our plain loop must draw the
same image tokens from the same seed, because it feeds the same rows (prompt + unconditional
copy), gets the same code logits, guides them the same way and consumes the RNG identically.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import mmeff
from mmeff.adapters.janus import JanusAdapter
from mmeff.errors import ConfigError, InputError
from mmeff.registry import find_adapter
from mmeff.testing.janus import tiny_janus

PROMPT = "a red dog under the sky"
LONG = "two blue circle left of a green star and a yellow square"


@pytest.fixture(scope="module")
def janus() -> tuple:
    return tiny_janus()


@pytest.fixture(scope="module")
def pipe(janus):
    return mmeff.wrap(*janus)


def _inputs(processor, prompts: list[str]) -> dict:
    """What a Janus user passes to ``generate``: chat template, then the processor in image mode."""
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                           add_generation_prompt=True) for p in prompts]
    return processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")


class _HeadLogits:
    """Records every output of ``generation_head`` (both loops call it once per drawn token), as (rows, K)."""

    def __init__(self, model) -> None:
        self.calls: list[torch.Tensor] = []
        self.handle = model.model.generation_head.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        self.calls.append(output.detach().reshape(-1, output.shape[-1]).clone())

    def __enter__(self) -> _HeadLogits:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _reference(model, processor, prompts: list[str], **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with _HeadLogits(model) as rec:
        torch.manual_seed(0)
        codes = model.generate(**_inputs(processor, prompts), generation_mode="image", **kwargs)
    return codes, rec.calls


def _ours(pipe, prompts: list[str], **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with _HeadLogits(pipe.model) as rec:
        pipe.generate_images(prompts, seed=0, output_type="pt", **kwargs)
    return pipe.last_codes, rec.calls


def _assert_logits_close(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref)
    for step, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, step=step: f"image token {step}: {m}")


# -- parity with Janus's generate ---------------------------------------------------------
@pytest.mark.parametrize(
    ("ours_kwargs", "ref_kwargs"),
    [
        ({"guidance_scale": 2.0}, {"guidance_scale": 2.0, "do_sample": True}),
        ({"guidance_scale": 2.0, "temperature": 0}, {"guidance_scale": 2.0, "do_sample": False}),
        ({}, {"do_sample": True}),  # both sides fall back to Janus's default guidance of 5
    ],
    ids=["sampled-cfg2", "greedy-cfg2", "sampled-default-cfg"],
)
def test_same_tokens_as_janus_generate(janus, pipe, ours_kwargs, ref_kwargs) -> None:
    model, processor = janus
    ref_codes, ref_logits = _reference(model, processor, [PROMPT], **ref_kwargs)
    codes, logits = _ours(pipe, [PROMPT], **ours_kwargs)
    _assert_logits_close(logits, ref_logits)
    assert codes.shape == ref_codes.shape == (1, 16)
    assert torch.equal(codes.cpu(), ref_codes.cpu())


def test_sampling_depends_on_the_model(janus, pipe) -> None:
    """Guards the parity test: with flat logits any two loops sharing a seed would agree."""
    codes_2, _ = _ours(pipe, [PROMPT], guidance_scale=2.0)
    codes_2 = codes_2.clone()
    greedy, _ = _ours(pipe, [PROMPT], guidance_scale=2.0, temperature=0)
    other_prompt, _ = _ours(pipe, [LONG], guidance_scale=2.0, temperature=0)
    assert not torch.equal(greedy, other_prompt)
    assert len(set(codes_2[0].tolist())) > 1


def test_prefix_rows_are_generates_rows(janus, pipe) -> None:
    """Conditional rows = the processor's ids; unconditional rows = pads except BOS and <begin_of_image>."""
    model, processor = janus
    enc = _inputs(processor, [PROMPT, LONG])
    ids, mask = pipe.adapter.prompt_ids([PROMPT, LONG], unconditional=True)
    assert torch.equal(ids[:2], enc["input_ids"]) and torch.equal(mask, torch.cat([enc["attention_mask"]] * 2))
    gen = model.generation_config
    bos, pad, boi = gen.bos_token_id, gen.pad_token_id, gen.generation_kwargs["boi_token_id"]
    expected = enc["input_ids"].clone()
    expected[(expected != bos) & (expected != boi)] = pad
    assert torch.equal(ids[2:], expected)
    assert (ids[:, -1] == boi).all()  # the first image token is predicted right after <begin_of_image>
    cond_only, _ = pipe.adapter.prompt_ids([PROMPT], unconditional=False)
    assert cond_only.shape[0] == 1


# -- registry, loading, errors ------------------------------------------------------------
def test_wrap_picks_the_janus_adapter(janus, pipe) -> None:
    model, _ = janus
    assert find_adapter(model) is JanusAdapter
    assert isinstance(pipe.adapter, JanusAdapter)
    facts = pipe.adapter.describe()
    assert facts["adapter"] == "janus" and facts["grid"] == (4, 4) and facts["codebook_size"] == 16
    assert pipe.adapter.default_guidance == 5.0
    assert pipe.adapter.code_vectors().shape == (16, model.config.vq_config.embed_dim)


def test_load_routes_a_janus_folder(janus, pipe, tmp_path) -> None:
    model, processor = janus
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = mmeff.load(tmp_path)
    assert isinstance(loaded.adapter, JanusAdapter)
    assert type(loaded.processor).__name__ == "JanusProcessor"
    loaded.generate_images([PROMPT], seed=0, output_type="pt")
    pipe.generate_images([PROMPT], seed=0, output_type="pt")
    assert torch.equal(loaded.last_codes, pipe.last_codes)


def test_missing_processor_is_a_clear_error(janus) -> None:
    model, _ = janus
    bare = mmeff.wrap(model)
    assert isinstance(bare.adapter, JanusAdapter)
    with pytest.raises(InputError, match="JanusProcessor"):
        bare.generate_images([PROMPT], seed=0)


@pytest.fixture
def mismatched_tokens(janus) -> Iterator:
    model, _ = janus
    vision = model.config.vision_config
    kept = vision.num_image_tokens
    vision.num_image_tokens = kept + 1
    try:
        yield model
    finally:
        vision.num_image_tokens = kept


def test_token_count_must_fill_the_vq_grid(mismatched_tokens, janus) -> None:
    adapter = JanusAdapter(mismatched_tokens, janus[1])
    with pytest.raises(ConfigError, match=r"num_patches\*\*2"):
        _ = adapter.grid


# -- decoding -----------------------------------------------------------------------------
def test_decode_codes_shape_and_range(janus, pipe) -> None:
    model, _ = janus
    codes = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(1))
    images = pipe.adapter.decode_codes(codes)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        raw = model.decode_image_tokens(codes).permute(0, 3, 1, 2)
    torch.testing.assert_close(images, (raw.clamp(-1, 1) + 1) / 2)
    with pytest.raises(InputError, match="16"):
        pipe.adapter.decode_codes(codes[:, :15])
    out = pipe.generate_images([PROMPT], seed=0, output_type="pt")
    assert out.shape == (1, 3, 8, 8)
    pil = pipe.generate_images([PROMPT], seed=0)
    assert pil[0].size == (8, 8)


# -- batching -----------------------------------------------------------------------------
@pytest.mark.parametrize("guidance_scale", [5.0, None], ids=["cfg5", "no-cfg"])
def test_batch_rows_equal_single_prompts(pipe, guidance_scale) -> None:
    """Left padding + padding-aware position ids: a row does not depend on its batch mates."""
    codes, logits = _ours(pipe, [PROMPT, LONG], guidance_scale=guidance_scale, temperature=0)
    rows = 2 if guidance_scale is None else 4
    for i, prompt in enumerate([PROMPT, LONG]):
        single, single_logits = _ours(pipe, [prompt], guidance_scale=guidance_scale, temperature=0)
        assert torch.equal(codes[i], single[0])
        pick = [i] if guidance_scale is None else [i, i + 2]  # the row's conditional and unconditional halves
        assert all(step.shape[0] == rows for step in logits)
        _assert_logits_close([step[pick] for step in logits], single_logits)
