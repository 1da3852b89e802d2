"""The shapes-sd and shapes-clip recipes run end to end (a few steps), resume, and save loadable models."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from diffusers import StableDiffusionPipeline

import mmeff
from mmeff.testbed.sd_model import ShapesSDSpec
from mmeff.testbed.train_clip import ClipRecipe, ClipTrainer, train_clip
from mmeff.testbed.train_sd import SDRecipe, SDTrainer, train_sd


def test_sd_recipe_saves_a_loadable_pipeline_and_resumes(tmp_path):
    recipe = SDRecipe(vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4, checkpoint_every=1)
    out = train_sd(tmp_path / "out", tmp_path / "run", recipe, eval_prompts_per_category=1)
    info = json.loads((out / "training.json").read_text())
    assert {"oracle_1_steps", "oracle_2_steps", "oracle_4_steps"} <= set(info["metrics"])
    assert (out / "training_loss.png").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    image = pipe("a red star", num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert mmeff.load(out).adapter.key == "diffusers_t2i"
    longer = SDTrainer(tmp_path / "run", SDRecipe(vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4))
    assert (longer.stage, longer.step) == ("done", 2)  # picks up where the first run stopped
    assert longer.vae.config.scaling_factor == info["scaling_factor"]


def test_clip_recipe_saves_an_open_clip_local_dir_model(tmp_path):
    out = train_clip(tmp_path / "out", tmp_path / "run", ClipRecipe(steps=2, batch=8, checkpoint_every=1))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a red star", "two circles"]))
        image = model.encode_image(torch.zeros(1, 3, 32, 32))
    assert text.shape == (2, 64) and image.shape == (1, 64)
    info = json.loads((out / "training.json").read_text())
    assert 0 <= info["caption_vs_corrupted_accuracy"]["overall"] <= 1
    assert ClipTrainer(tmp_path / "run", ClipRecipe(steps=2, batch=8)).step == 2



def _write_pool(run_dir, texts=("a red star", "two circles"), per_prompt=4):
    """A synthetic judged pool: every other sample of each prompt accepted (and detected as such)."""
    import numpy as np

    from mmeff.testbed.oracle import Detection
    from mmeff.testbed.preference_pool import PreferencePool

    n = len(texts) * per_prompt
    rng = np.random.default_rng(0)
    found = {"a red star": (Detection("star", "red", 0.5, 0.5, 1),),
             "two circles": (Detection("circle", "red", 0.3, 0.5, 1), Detection("circle", "blue", 0.7, 0.5, 1))}
    miss = (Detection("square", "green", 0.5, 0.5, 1),)
    detections = [found[texts[i // per_prompt]] if i % 2 == 0 else miss for i in range(n)]
    pool = PreferencePool(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), list(texts),
                          np.repeat(np.arange(len(texts)), per_prompt), np.arange(n) % 2 == 0, detections)
    run_dir.mkdir(parents=True)
    pool.save(run_dir / "preference_pool.pt")
    return pool


def test_clip_recipe_fine_tunes_the_bundled_reward_on_preference_pairs(tmp_path):
    from safetensors.torch import load_file

    from mmeff.testbed.assets import SHAPES_CLIP, SHAPES_SD

    pool = _write_pool(tmp_path / "run")
    recipe = ClipRecipe(steps=2, batch=8, checkpoint_every=1, init=str(SHAPES_CLIP), sd=str(SHAPES_SD),
                        pool_prompts=2, pairs=4, alignment_per_category=1)
    trainer = ClipTrainer(tmp_path / "run", recipe)
    assert trainer.pool.summary() == pool.summary()  # the run directory's pool is reused, not regenerated
    bundled = load_file(SHAPES_CLIP / "open_clip_model.safetensors")
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in bundled.items())
    trainer.train()
    assert len(trainer.losses["preference"]) == 2 and len(trainer.losses["clip"]) == 2
    assert any(not torch.equal(trainer.model.state_dict()[k], v) for k, v in bundled.items())
    trainer.export(tmp_path / "out")
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert info["preference_pool"]["prompts_with_pairs"] == 2
    alignment = info["generated_alignment"]
    assert alignment["samples_per_prompt"] == 8
    assert {"mean_hit", "reward_pick", "oracle_pick", "auc", "pairs"} <= set(alignment)


def test_clip_recipe_trains_on_described_pool_samples_without_the_pair_loss(tmp_path):
    from mmeff.testbed.assets import SHAPES_CLIP, SHAPES_SD

    _write_pool(tmp_path / "run")
    recipe = ClipRecipe(steps=2, batch=8, init=str(SHAPES_CLIP), sd=str(SHAPES_SD), pool_prompts=2,
                        preference_weight=0.0, described_weight=1.0, described_prompts=2, described_per_prompt=3)
    trainer = ClipTrainer(tmp_path / "run", recipe)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    first = trainer.described(0).item()
    trainer.train()
    assert trainer.losses["preference"] == [] and len(trainer.losses["described"]) == 2
    assert trainer.losses["described"][0] == pytest.approx(first, rel=1e-5)
    assert any(not torch.equal(trainer.model.state_dict()[k], v) for k, v in before.items())


def test_clip_recipe_rejects_bad_options_before_training(tmp_path):
    import shutil

    import pytest

    from mmeff.testbed.assets import SHAPES_CLIP

    with pytest.raises(ValueError, match="needs sd="):
        ClipTrainer(tmp_path / "a", ClipRecipe(pool_prompts=10))
    with pytest.raises(ValueError, match="described_weight needs pool_prompts"):
        ClipTrainer(tmp_path / "d", ClipRecipe(described_weight=1.0))
    with pytest.raises(ValueError, match="described_prompts and described_per_prompt >= 1"):
        ClipTrainer(tmp_path / "e", ClipRecipe(pool_prompts=1, sd="assets/models/shapes-sd", described_weight=1.0,
                                               described_per_prompt=0))
    with pytest.raises(ValueError, match="pool_samples >= 2"):
        ClipTrainer(tmp_path / "b", ClipRecipe(pool_prompts=10, sd="assets/models/shapes-sd", pool_samples=1))
    other = tmp_path / "other-clip"
    shutil.copytree(SHAPES_CLIP, other)
    config = json.loads((other / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 32
    (other / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model config differs"):
        ClipTrainer(tmp_path / "c", ClipRecipe(init=str(other)))


def test_sd_recipe_reuses_a_trained_autoencoder_and_can_weight_the_loss_by_min_snr(tmp_path):
    first = SDTrainer(tmp_path / "first", SDRecipe(vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2))
    first.train_vae()
    first.vae.save_pretrained(tmp_path / "vae")
    reuse = SDTrainer(tmp_path / "run", SDRecipe(vae=str(tmp_path / "vae"), unet_steps=1, unet_batch=2, snr_gamma=5.0))
    assert (reuse.stage, reuse.step) == ("unet", 0)  # no autoencoder stage
    assert reuse.vae.config.scaling_factor == first.vae.config.scaling_factor
    assert all(torch.equal(v, first.vae.state_dict()[k]) for k, v in reuse.vae.state_dict().items())
    assert "_name_or_path" not in reuse.vae.config  # an export built on it names no path of this machine

    pred, target = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    alpha = reuse.noise_scheduler.alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    per_row = ((pred - target) ** 2).flatten(1).mean(1)
    expected = (per_row * torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)).mean()  # v-prediction's weight
    assert torch.allclose(reuse._weighted_mse(pred, target, t), expected)
    plain = SDTrainer(tmp_path / "plain", SDRecipe(vae=str(tmp_path / "vae"), snr_gamma=0.0))
    assert torch.equal(plain._weighted_mse(pred, target, t), torch.nn.functional.mse_loss(pred, target))


def test_sd_recipe_starts_the_unet_stage_from_an_exported_pipeline(tmp_path):
    """``unet=`` a shapes-sd export: its UNet and text encoder start stage unet on its autoencoder."""
    first = train_sd(tmp_path / "first", tmp_path / "first_run",
                     SDRecipe(vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2, ema_decay=0.0),
                     eval_prompts_per_category=0)
    exported = StableDiffusionPipeline.from_pretrained(first)
    warm = SDRecipe(unet=str(first), unet_steps=2, unet_batch=2, ema_decay=0.0)
    trainer = SDTrainer(tmp_path / "run", warm)
    assert (trainer.stage, trainer.step) == ("unet", 0)  # its autoencoder came trained
    for mine, theirs in ((trainer.unet, exported.unet), (trainer.text_encoder, exported.text_encoder),
                         (trainer.vae, exported.vae)):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    fresh = SDTrainer(tmp_path / "fresh", SDRecipe(vae=str(first / "vae"), unet_steps=2, unet_batch=2))
    assert not all(torch.equal(v, exported.unet.state_dict()[k]) for k, v in fresh.unet.state_dict().items())
    trainer._timed(trainer.train_unet)
    assert not all(torch.equal(v, exported.unet.state_dict()[k]) for k, v in trainer.unet.state_dict().items())
    with pytest.raises(ValueError, match=r"recipe unet=.*\(unet\) does not match the spec.*conv_in"):
        SDTrainer(tmp_path / "other", warm, ShapesSDSpec(unet_channels=(32, 64)))
    assert not (tmp_path / "other" / "checkpoint.pt").exists()


def test_clip_batches_render_at_the_generators_object_scale():
    """``object_scale`` reaches the rendered scenes (larger objects: more non-background pixels), not the captions."""
    from mmeff.testbed.train_clip import clip_batch

    texts, negatives, small = clip_batch(3, 8, 0)
    texts_large, negatives_large, large = clip_batch(3, 8, 0, 1.4)
    assert (texts, negatives) == (texts_large, negatives_large)
    background = small[:, :, :1, :1]  # the corner pixel is background in every scene

    def covered(images):
        return (images - background).abs().amax(1).gt(0.1).float().mean()

    assert covered(large) > 1.3 * covered(small)
