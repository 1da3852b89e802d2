"""The training recipe runs, checkpoints, resumes and exports a loadable checkpoint (tiny settings)."""

import json

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmeff.testbed.model import ShapesLlavaSpec
from mmeff.testbed.train import Recipe, Trainer, train_vlm

TINY = Recipe(vision_steps=3, vision_batch=2, chat_steps=4, chat_batch=2, checkpoint_every=2)


def test_recipe_trains_resumes_and_exports(tmp_path):
    run, out = tmp_path / "run", tmp_path / "model"
    spec = ShapesLlavaSpec()
    trainer = Trainer(run, TINY, spec)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_vision()
    assert trainer.stage == "chat" and len(trainer.losses["vision"]) == 3
    assert set(trainer.metrics["vision_patch_accuracy"]) == {"kind", "color", "shape"}

    resumed = Trainer(run, TINY, spec)  # picks up the checkpoint written at the stage switch
    assert resumed.stage == "chat" and resumed.step == 0 and resumed.losses["vision"] == trainer.losses["vision"]
    train_vlm(out, run, TINY, spec)
    after = LlavaForConditionalGeneration.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after), "training changed the weights"
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == trainer.model.config.image_token_id
    info = json.loads((out / "training.json").read_text())
    assert info["recipe"]["chat_steps"] == 4 and info["training_minutes"] >= 0
    assert (out / "training_loss.png").is_file()
    assert torch.load(run / "ckpt.pt", weights_only=False)["stage"] == "done"
