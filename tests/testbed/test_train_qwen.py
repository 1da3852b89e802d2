"""The shapes Qwen2-VL recipe: two sizes give two token counts, training sequences match inference, and a
tiny run trains, resumes and exports a folder ``mmeff.load`` opens as the qwen2_vl adapter."""

import json

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

import mmeff
from mmeff.testbed.data import Turn, collate_isolated
from mmeff.testbed.qwen_data import mrope_positions
from mmeff.testbed.qwen_model import ShapesQwen2VLSpec
from mmeff.testbed.render import render
from mmeff.testbed.train import parse_overrides, train_vlm
from mmeff.testbed.train_qwen import QwenRecipe, QwenTrainer
from mmeff.testbed.world import sample_scene

SPEC = ShapesQwen2VLSpec(vision_layers=1, text_layers=1)  # the layout of the bundled model, fewer layers
TINY = QwenRecipe(vision_steps=3, vision_batch=2, chat_steps=4, chat_batch=2, checkpoint_every=2,
                  accuracy_scenes=4)
QUESTION = Turn("is there a red circle in the image?", "yes")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return QwenTrainer(tmp_path_factory.mktemp("run"), TINY, SPEC)


@pytest.mark.parametrize("size,tokens", [(96, 144), (64, 64)])
def test_isolated_turns_match_the_inference_prompt(trainer, size, tokens):
    pipe = mmeff.wrap(trainer.model.eval(), trainer.processor)
    inputs = pipe.adapter.build_inputs([render(sample_scene(3, image_size=size))], [QUESTION.question])
    assert int((inputs["input_ids"] == trainer.model.config.image_token_id).sum()) == tokens == SPEC.image_tokens(size)
    ids, labels, flat, segments = trainer.qwen_builder.build_isolated([Turn("describe the image.", "red circle"),
                                                                       QUESTION], tokens)
    prefix = segments.count(0)
    first = segments.count(1)
    prompt, answer = trainer.qwen_builder.turn(QUESTION)
    assert ids[:prefix] + ids[prefix + first:] == inputs["input_ids"][0].tolist() + answer  # turn 2 as if alone
    assert labels[-len(answer):] == answer and set(labels[prefix + first:-len(answer)]) == {-100}
    batch = collate_isolated([(ids, labels, flat, segments)], 0)
    positions = mrope_positions(trainer.model, batch["input_ids"], batch["position_ids"], [prefix],
                                inputs["image_grid_thw"], trainer.model.config.image_token_id)
    expected, _ = trainer.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                     image_grid_thw=inputs["image_grid_thw"])
    second = torch.cat([positions[:, :, :prefix], positions[:, :, prefix + first:prefix + first + len(prompt)]], -1)
    assert torch.equal(second, expected)


def test_batches_mix_both_sizes_deterministically(trainer):
    sizes = [trainer.size_at(step, "chat") for step in range(40)]
    assert set(sizes) == {96, 64} and sizes == [trainer.size_at(step, "chat") for step in range(40)]


def test_stage_a_can_draw_its_own_share_of_small_scenes(tmp_path):
    """``vision_small_fraction`` sets stage A's sizes alone; stage B keeps ``small_fraction``."""
    small = QwenTrainer(tmp_path, QwenRecipe(vision_small_fraction=1.0), SPEC)
    assert {small.size_at(step, "vision") for step in range(40)} == {64}
    assert {small.size_at(step, "chat") for step in range(40)} == {96, 64}
    default = QwenTrainer(tmp_path, QwenRecipe(), SPEC)
    explicit = QwenTrainer(tmp_path, QwenRecipe(vision_small_fraction=QwenRecipe().small_fraction), SPEC)
    assert [default.size_at(s, "vision") for s in range(40)] == [explicit.size_at(s, "vision") for s in range(40)]
    assert {default.size_at(step, "vision") for step in range(40)} == {96, 64}


def test_optional_recipe_fields_parse_from_the_command_line():
    parsed = parse_overrides(QwenRecipe, ["vision_small_fraction=0.75", "chat_steps=5"])
    assert parsed == {"vision_small_fraction": 0.75, "chat_steps": 5}
    assert parse_overrides(QwenRecipe, ["vision_small_fraction=none"]) == {"vision_small_fraction": None}
    with pytest.raises(ValueError, match="could not convert"):
        parse_overrides(QwenRecipe, ["vision_small_fraction=most"])


def test_recipe_trains_resumes_and_exports(tmp_path):
    run, out = tmp_path / "run", tmp_path / "model"
    trainer = QwenTrainer(run, TINY, SPEC)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_vision()
    assert trainer.stage == "chat" and len(trainer.losses["vision"]) == 3
    assert set(trainer.metrics["vision_patch_accuracy"]) == {"kind", "color", "shape", "kind_64px"}

    resumed = QwenTrainer(run, TINY, SPEC)  # picks up the checkpoint written at the stage switch
    assert resumed.stage == "chat" and resumed.step == 0 and resumed.losses["vision"] == trainer.losses["vision"]
    train_vlm(out, run, TINY, SPEC, arch="qwen2_vl")
    after = Qwen2VLForConditionalGeneration.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after), "training changed the weights"
    info = json.loads((out / "training.json").read_text())
    assert info["recipe"]["chat_steps"] == 4 and info["spec"]["small_size"] == 64
    assert torch.load(run / "ckpt.pt", weights_only=False)["stage"] == "done"

    pipe = mmeff.load(out)
    assert pipe.adapter.key == "qwen2_vl"
    answers = pipe.generate([render(sample_scene(7, image_size=64))], [QUESTION.question], max_new_tokens=2)
    assert len(answers) == 1 and isinstance(answers[0], str)
