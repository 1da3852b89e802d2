"""mmeff.testing.qwen: the tiny Qwen2-VL / Qwen2.5-VL factories build, process, and generate offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmeff.testing import tiny_qwen2_vl

VARIANTS = ["qwen2_vl", "qwen2_5_vl"]
QUESTION = "what color is the cat?"


@pytest.fixture(scope="module", params=VARIANTS)
def qwen(request) -> tuple:
    return tiny_qwen2_vl(variant=request.param)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _prompt(processor, kind: str = "image") -> str:
    conv = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


def _batch(processor) -> dict:
    text = _prompt(processor)
    return processor(images=[_image(24, 24), _image(16, 40, 1)], text=[text, text], return_tensors="pt",
                     padding=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_builds_with_tied_token_ids(variant: str) -> None:
    model, processor = tiny_qwen2_vl(variant=variant)
    tok, cfg = processor.tokenizer, model.config
    assert type(model).__name__ == {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                                    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[variant]
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>") == processor.video_token_id
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.text_config.vocab_size == len(tok)
    assert not model.training


def test_bad_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        tiny_qwen2_vl(variant="qwen9_vl")


def test_chat_template_and_tokenizer(qwen) -> None:
    _, processor = qwen
    conv = [
        {"role": "system", "content": [{"type": "text", "text": "describe"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "and this?"}]},
    ]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\ndescribe<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what color is the cat?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>and this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not processor.apply_chat_template(conv[:2]).endswith("assistant\n")
    tokens = processor.tokenizer.tokenize(text)
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        assert special in tokens
    assert "<unk>" not in processor.tokenizer.convert_ids_to_tokens(processor.tokenizer(text)["input_ids"])


def test_image_token_counts_follow_image_size(qwen) -> None:
    model, processor = qwen
    batch = _batch(processor)
    counts = (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist()
    assert counts == (batch["image_grid_thw"].prod(-1) // 4).tolist() == [9, 10]
    assert batch["attention_mask"][:, 0].tolist() in ([0, 1], [1, 0])  # left padding on the shorter row
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert "mm_token_type_ids" in batch
    square = processor(images=[_image(32, 32)], text=[_prompt(processor)], return_tensors="pt")
    assert square["image_grid_thw"].tolist() == [[1, 8, 8]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_batch_of_two_sizes(attn: str) -> None:
    for variant in VARIANTS:
        model, processor = tiny_qwen2_vl(variant=variant, attn_implementation=attn)
        batch = _batch(processor)
        out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert out.shape == (2, batch["input_ids"].shape[1] + 4)
        assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])


def test_video_prompt_generates(qwen) -> None:
    model, processor = qwen
    frames = [_image(24, 24, seed) for seed in range(4)]
    batch = processor(videos=[frames], text=[_prompt(processor, "video")], return_tensors="pt")
    assert batch["video_grid_thw"].tolist() == [[2, 6, 6]]
    assert (batch["input_ids"] == model.config.video_token_id).sum().item() == 18
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4


def test_system_instruction_becomes_a_system_turn() -> None:
    """Templates that never spell "system" (Qwen's renders any role) still get a real system turn (ICD's
    instruction), found by rendering one; LLaVA-1.5's template has none, so the text goes in front."""
    import mmeff
    from mmeff.testing import tiny_llava

    qwen = mmeff.wrap(*tiny_qwen2_vl()).adapter
    assert "system" not in qwen.processor.chat_template
    text = qwen.chat_prompt("how many ?", system="answer with one word")
    assert text.startswith("<|im_start|>system\nanswer with one word<|im_end|>\n<|im_start|>user\n")
    llava = mmeff.wrap(*tiny_llava()).adapter
    assert llava.chat_prompt("how many ?", system="answer with one word").startswith("answer with one word USER:")
