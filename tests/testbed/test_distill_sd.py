"""Consistency distillation of shapes-sd: the step's maths equals diffusers' schedulers on the same tensors, and a
tiny run distils, resumes and exports a pipeline that loads with ``from_pretrained`` and an LCM scheduler."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

import mmeff
from mmeff.testbed.distill_sd import (
    LCMDistiller,
    LCMRecipe,
    boundary_scalings,
    ddim_step,
    distill_sd,
    lcm_scheduler,
    solver_grid,
    x0_and_eps,
)
from mmeff.testbed.sd_model import (
    ShapesSDSpec,
    assemble,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    sampling_scheduler,
)


def test_solver_grid_and_boundary_scalings_are_the_lcm_schedulers():
    sched = lcm_scheduler("v_prediction", 50, 10.0)
    sched.set_timesteps(50)
    grid = solver_grid(1000, 50)
    assert grid.tolist() == sorted(sched.timesteps.tolist()) and grid[0] == 19 and grid[-1] == 999
    for t in (0, 19, 500, 999):
        c_skip, c_out = boundary_scalings(torch.tensor([t]), 10.0)
        expected = sched.get_scalings_for_boundary_condition_discrete(t)
        assert torch.allclose(torch.stack([c_skip, c_out]).flatten(), torch.tensor(expected, dtype=torch.float32))
    assert boundary_scalings(torch.tensor([0]), 10.0) == (torch.tensor([1.0]), torch.tensor([0.0]))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_x0_eps_and_the_ddim_step_are_ddims_on_the_same_tensors(prediction_type):
    """A 50-step trailing DDIM visits the solver grid; its step from t is the teacher's solver step to t - 20."""
    sched = DDIMScheduler.from_config(sampling_scheduler(ShapesSDSpec()).config, prediction_type=prediction_type)
    sched.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    alpha_bar = sched.alphas_cumprod
    for t in (999, 519, 19):
        ref = sched.step(output, t, sample, eta=0.0)
        x0, eps = x0_and_eps(output, sample, alpha_bar[[t, t]], prediction_type)
        assert torch.allclose(x0, ref.pred_original_sample, atol=1e-5)
        prev = alpha_bar[[max(t - 20, 0)] * 2]
        assert torch.allclose(ddim_step(x0, eps, prev), ref.prev_sample, atol=1e-5)
    with pytest.raises(ValueError, match="v_prediction"):
        x0_and_eps(output, sample, alpha_bar[[1, 1]], "sample")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random-weight shapes-sd with the bundled layout, saved like the bundled one."""
    spec = ShapesSDSpec()
    torch.manual_seed(0)
    tokenizer = build_tokenizer(spec)
    pipe = assemble(spec, tokenizer, build_text_encoder(spec, tokenizer), build_vae(spec), build_unet(spec))
    path = tmp_path_factory.mktemp("teacher")
    pipe.save_pretrained(path)
    return path


def test_the_untrained_student_is_the_teacher_and_a_step_moves_it(teacher, tmp_path):
    distiller = LCMDistiller(tmp_path, LCMRecipe(teacher=str(teacher), steps=1, batch=2))
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([999, 19]), distiller.encode_text(["a star", "two circles"])
    assert torch.equal(distiller.student(x, t, text).sample, distiller.teacher(x, t, text).sample)
    distiller.train()
    assert not torch.equal(distiller.student(x, t, text).sample, distiller.teacher(x, t, text).sample)
    assert torch.isfinite(torch.tensor(distiller.losses)).all()


def test_recipe_distils_resumes_and_exports_an_lcm_pipeline(teacher, tmp_path):
    recipe = LCMRecipe(teacher=str(teacher), steps=2, batch=4, checkpoint_every=1)
    out = distill_sd(tmp_path / "out", tmp_path / "run", recipe, eval_prompts_per_category=1)
    info = json.loads((out / "training.json").read_text())
    assert {"oracle_1_steps", "oracle_2_steps", "oracle_4_steps"} <= set(info["metrics"])
    assert info["recipe"]["guidance_scale"] == 3.0 and (out / "training_loss.png").is_file()

    pipe = StableDiffusionPipeline.from_pretrained(out)
    original = StableDiffusionPipeline.from_pretrained(teacher)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    for name in ("vae", "text_encoder"):  # exported unchanged
        mine, theirs = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert any(not torch.equal(v, original.unet.state_dict()[k]) for k, v in pipe.unet.state_dict().items())
    image = pipe("a red star", num_inference_steps=1, guidance_scale=1.0, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert mmeff.load(out).adapter.key == "diffusers_t2i"

    resumed = LCMDistiller(tmp_path / "run", LCMRecipe(teacher=str(teacher), steps=3, batch=4))
    assert resumed.step == 2 and len(resumed.losses) == 2
