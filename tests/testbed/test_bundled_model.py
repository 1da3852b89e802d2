"""The bundled shapes LLaVA loads like a hub checkpoint and answers easy questions correctly."""

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

import mmeff
from mmeff.demo import BUNDLED, demo_inputs

pytestmark = pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="no bundled shapes-llava yet")


def test_bundled_model_is_small_and_loads_with_plain_transformers():
    size = sum(f.stat().st_size for f in Path(BUNDLED).iterdir() if f.suffix == ".safetensors")
    assert size <= 25 * 2**20
    model = LlavaForConditionalGeneration.from_pretrained(BUNDLED)
    processor = AutoProcessor.from_pretrained(BUNDLED)
    image_tokens = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert image_tokens >= 144 and model.config.text_config.num_hidden_layers >= 6
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_bundled_model_answers_fixed_questions():
    pipe = mmeff.load(BUNDLED)
    images, _ = demo_inputs()
    questions = ["is there a red circle in the image?", "is there a blue square in the image?",
                 "is there a yellow star in the image?", "is there a yellow star in the image?",
                 "is there a orange cross in the image?", "how many objects are in the image?",
                 "how many objects are in the image?", "what color is the star?", "what color is the circle?"]
    answers = pipe.generate([images[0], images[0], images[1], images[0], images[0], images[0], images[1], images[1],
                             images[0]], questions, max_new_tokens=2)
    assert [a.split()[0] for a in answers] == ["yes", "yes", "yes", "no", "no", "two", "three", "yellow", "red"]
    with torch.no_grad():
        captions = pipe.generate(images, ["describe the image.", "describe the image."], max_new_tokens=24)
    assert captions[0] == "red circle, blue square"
    # every object named once, none invented (the order of the two left-most objects is close to a tie)
    assert sorted(captions[1].split(", ")) == ["green triangle", "purple hexagon", "yellow star"]
