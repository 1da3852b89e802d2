"""The bundled shapes Qwen2-VL loads like a hub checkpoint, stays small, and gives two token counts at two sizes."""

import pytest
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

import mmeff
from mmeff.testbed.assets import MODELS
from mmeff.testbed.render import render
from mmeff.testbed.world import ObjectSpec, SceneSpec

BUNDLED = MODELS / "shapes-qwen2vl"
pytestmark = pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="no bundled shapes-qwen2vl yet")


def scene(size: int) -> SceneSpec:
    objects = (ObjectSpec("circle", "red", 0.3, 0.3, 0.13, 0), ObjectSpec("square", "blue", 0.7, 0.68, 0.13, 10))
    return SceneSpec(objects, "plain", seed=1, image_size=size)


def test_bundled_qwen2vl_is_small_and_loads_with_plain_transformers():
    assert sum(f.stat().st_size for f in BUNDLED.glob("*.safetensors")) <= 10 * 2**20
    model = Qwen2VLForConditionalGeneration.from_pretrained(BUNDLED)
    processor = AutoProcessor.from_pretrained(BUNDLED)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


@pytest.mark.parametrize("size,tokens", [(96, 144), (64, 64)])
def test_bundled_qwen2vl_answers_at_both_sizes(size, tokens):
    pipe = mmeff.load(BUNDLED)
    assert pipe.adapter.key == "qwen2_vl"
    image = render(scene(size))
    inputs = pipe.adapter.build_inputs([image], ["is there a red circle in the image?"])
    assert int((inputs["input_ids"] == pipe.model.config.image_token_id).sum()) == tokens
    questions = ["is there a red circle in the image?", "is there a blue square in the image?",
                 "is there a yellow star in the image?", "is there a green triangle in the image?"]
    answers = pipe.generate([image] * len(questions), questions, max_new_tokens=2)
    assert [a.split()[0] for a in answers] == ["yes", "yes", "no", "no"]


def test_the_default_recipe_and_spec_are_the_bundled_models():
    """``mmeff testbed train vlm --arch qwen2_vl`` with no overrides retrains the bundled model."""
    import json
    from dataclasses import asdict

    from mmeff.testbed.qwen_model import ShapesQwen2VLSpec
    from mmeff.testbed.train_qwen import QwenRecipe

    info = json.loads((BUNDLED / "training.json").read_text())
    defaults = asdict(QwenRecipe())
    assert defaults.pop("vision_small_fraction") is None  # added after the bundled run: None keeps its sizes
    assert info["recipe"] == defaults
    assert info["spec"] == json.loads(json.dumps(asdict(ShapesQwen2VLSpec())))
