"""Recipe that distils shapes-sd into a one-to-four-step model: ``mmeff testbed train sd-lcm``.

An undistilled diffusion model's one-step image is the blurry mean of every image the prompt
allows, so the bundled shapes-sd drew blobs at 1-4 steps although it follows prompts better with
many. ReNO and the token-merging plugins are meant for one-step models (SD-Turbo), so the testbed
needs one. This is latent consistency distillation (LCM, arXiv 2310.04378, as diffusers'
``train_lcm_distill_sd_wds.py`` does it): the student starts as a copy of the teacher UNet and
learns to map a point ``x_t`` of the teacher's *guided* probability-flow ODE to the same
endpoint as its EMA copy maps the point one DDIM step (``1000 / solver_steps`` timesteps)
further along that ODE. Guidance is baked in at ``guidance_scale`` (no w-embedding, so sampling
runs at guidance 1, one UNet call per step); the exported pipeline carries diffusers'
``LCMScheduler`` over the same 50-step grid.

The text encoder, VAE and tokenizer are the teacher's, frozen and exported unchanged. A
checkpoint (student, EMA target, optimiser, step) every ``checkpoint_every`` steps: rerunning
resumes.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from tqdm import tqdm

from .batches import step_batches
from .sd_model import BETAS
from .train import lr_factor, plot_losses
from .train_sd import prompt_batch

logger = logging.getLogger(__name__)

SIGMA_DATA = 0.5  # LCM's boundary-condition constant (diffusers' LCMScheduler)


@dataclass(frozen=True)
class LCMRecipe:
    seed: int = 0
    teacher: str = "assets/models/shapes-sd"
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-4
    guidance_scale: float = 3.0  # the teacher's classifier-free guidance, baked into the student
    solver_steps: int = 50  # the teacher's DDIM grid: LCM's original_inference_steps
    target_ema: float = 0.95  # the EMA copy that gives the targets (LCM's ema_decay)
    huber_c: float = 1e-3  # pseudo-Huber loss constant (LCM's loss_type="huber")
    timestep_scaling: float = 10.0  # of the boundary condition, as in LCMScheduler
    checkpoint_every: int = 250
    workers: int = 0  # DataLoader processes rendering batches
    object_scale: float = 1.0  # size of the scenes' objects: match the teacher's (its training.json recipe)


# -- the consistency step's tensor maths (checked against diffusers' schedulers in the tests) -----------
def solver_grid(num_train_timesteps: int, solver_steps: int) -> torch.Tensor:
    """The teacher's DDIM timesteps, ascending: 19, 39, ..., 999 for 1000 / 50 (LCMScheduler's origin grid)."""
    ratio = num_train_timesteps // solver_steps
    return torch.arange(1, solver_steps + 1) * ratio - 1


def boundary_scalings(t: torch.Tensor, timestep_scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_skip, c_out`` of the consistency function ``c_skip * x_t + c_out * x0`` (1, 0 at t = 0)."""
    scaled = t.double() * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip.float(), c_out.float()


def x0_and_eps(output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean-sample and noise estimates a UNet output implies at noise level ``alpha_bar`` (per row)."""
    a = alpha_bar.view(-1, *([1] * (sample.dim() - 1)))
    sa, sb = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "v_prediction":
        return sa * sample - sb * output, sa * output + sb * sample
    if prediction_type == "epsilon":
        return (sample - sb * output) / sa, output
    raise ValueError(f"prediction_type must be 'v_prediction' or 'epsilon', got {prediction_type!r}")


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta 0) to the level ``alpha_bar_prev``: where the probability-flow ODE goes."""
    a = alpha_bar_prev.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (((a.float() - b.float()) ** 2).flatten(1).sum(-1) + c**2).sqrt().sub(c).mean()


def lcm_scheduler(prediction_type: str, solver_steps: int, timestep_scaling: float) -> LCMScheduler:
    return LCMScheduler(**BETAS, prediction_type=prediction_type, original_inference_steps=solver_steps,
                        timestep_scaling=timestep_scaling, clip_sample=False, set_alpha_to_one=False)


class LCMDistiller:
    def __init__(self, run_dir: Path, recipe: LCMRecipe, device: str | torch.device = "cpu") -> None:
        self.run_dir, self.recipe, self.device = run_dir, recipe, torch.device(device)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = run_dir / "checkpoint.pt"
        teacher = StableDiffusionPipeline.from_pretrained(recipe.teacher)
        self.pipe = teacher
        for module in (teacher.vae, teacher.text_encoder, teacher.unet):
            module.to(self.device).eval().requires_grad_(False)
        self.teacher = teacher.unet
        self.prediction_type = teacher.scheduler.config.prediction_type
        self.student = copy.deepcopy(self.teacher).train().requires_grad_(True)
        self.target = copy.deepcopy(self.teacher)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=recipe.lr, weight_decay=0.0)
        self.alpha_bar = teacher.scheduler.alphas_cumprod.float().to(self.device)  # the grid sampling uses
        self.grid = solver_grid(BETAS["num_train_timesteps"], recipe.solver_steps).to(self.device)
        self.skip = BETAS["num_train_timesteps"] // recipe.solver_steps
        self.null_text = self.encode_text([""])  # the frozen encoder's empty caption, the same every step
        self.step, self.seconds, self.losses = 0, 0.0, []
        if self.ckpt.exists():
            state = torch.load(self.ckpt, weights_only=False, map_location=self.device)
            self.student.load_state_dict(state["student"])
            self.target.load_state_dict(state["target"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.seconds, self.losses = state["step"], state["seconds"], state["losses"]
            logger.info(f"resumed at step {self.step}")

    def _save(self) -> None:
        state = {"student": self.student.state_dict(), "target": self.target.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "seconds": self.seconds,
                 "losses": self.losses}
        torch.save(state, self.ckpt.with_suffix(".tmp"))
        self.ckpt.with_suffix(".tmp").replace(self.ckpt)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        return self.pipe.text_encoder(ids)[0]

    def loss(self, step: int, texts: list[str], images: torch.Tensor) -> torch.Tensor:
        r, n = self.recipe, len(texts)
        g = torch.Generator().manual_seed(r.seed * 7919 + step)
        with torch.no_grad():
            posterior = self.pipe.vae.encode(images.to(self.device)).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=g).to(self.device)
            latents = (posterior.mean + posterior.std * eps) * self.pipe.vae.config.scaling_factor
            cond, uncond = self.encode_text(texts), self.null_text.expand(n, -1, -1)
        index = torch.randint(0, r.solver_steps, (n,), generator=g).to(self.device)
        t = self.grid[index]
        t_prev = (t - self.skip).clamp(min=0)
        noise = torch.randn(latents.shape, generator=g).to(self.device)
        a_t = self.alpha_bar[t].view(-1, 1, 1, 1)
        x_t = a_t.sqrt() * latents + (1 - a_t).sqrt() * noise

        c_skip, c_out = (s.view(-1, 1, 1, 1) for s in boundary_scalings(t, r.timestep_scaling))
        x0_student, _ = x0_and_eps(self.student(x_t, t, cond).sample, x_t, self.alpha_bar[t], self.prediction_type)
        prediction = c_skip * x_t + c_out * x0_student
        with torch.no_grad():
            both = self.teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond])).sample
            x0, eps_hat = x0_and_eps(both, torch.cat([x_t, x_t]), self.alpha_bar[torch.cat([t, t])],
                                     self.prediction_type)
            (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps_hat.chunk(2)
            w = r.guidance_scale
            x_prev = ddim_step(x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u), self.alpha_bar[t_prev])
            x0_target, _ = x0_and_eps(self.target(x_prev, t_prev, cond).sample, x_prev, self.alpha_bar[t_prev],
                                      self.prediction_type)
            s_prev, o_prev = (s.view(-1, 1, 1, 1) for s in boundary_scalings(t_prev, r.timestep_scaling))
            target = s_prev * x_prev + o_prev * x0_target
        return pseudo_huber(prediction, target, r.huber_c)

    def train(self) -> None:
        r = self.recipe
        batches = step_batches(prompt_batch, self.step, r.steps, r.batch, r.seed + 2, r.object_scale, workers=r.workers)
        bar = tqdm(range(self.step, r.steps), desc="consistency distillation", initial=self.step, total=r.steps)
        for step, (texts, images) in zip(bar, batches):
            start = time.time()
            loss = self.loss(step, texts, images)
            for group in self.optimizer.param_groups:
                group["lr"] = r.lr * lr_factor(step, r.steps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
            self.optimizer.step()
            with torch.no_grad():
                for p_t, p_s in zip(self.target.parameters(), self.student.parameters()):
                    p_t.lerp_(p_s, 1 - r.target_ema)
            self.losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            self.step = step + 1
            self.seconds += time.time() - start
            if self.step % r.checkpoint_every == 0 or self.step == r.steps:
                self._save()

    def pipeline(self) -> StableDiffusionPipeline:
        """The teacher's pipeline with the student UNet and an LCM scheduler over the same grid."""
        r = self.recipe
        pipe = StableDiffusionPipeline(
            vae=self.pipe.vae, text_encoder=self.pipe.text_encoder, tokenizer=self.pipe.tokenizer,
            unet=copy.deepcopy(self.student).eval().requires_grad_(False),
            scheduler=lcm_scheduler(self.prediction_type, r.solver_steps, r.timestep_scaling),
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def export(self, out_dir: Path, metrics: dict[str, Any]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline().to("cpu").save_pretrained(out_dir, safe_serialization=True)
        plot_losses({"consistency": self.losses}, out_dir / "training_loss.png")
        info = {"recipe": asdict(self.recipe), "device": self.device.type, "teacher": self.recipe.teacher,
                "training_minutes": round(self.seconds / 60, 1), "metrics": metrics}
        (out_dir / "training.json").write_text(json.dumps(info, indent=2))


def distill_sd(out_dir: Path, run_dir: Path, recipe: LCMRecipe | None = None, device: str = "cpu",
               eval_prompts_per_category: int = 8) -> Path:
    """Distil (resuming where a run stopped), score the student with the oracle at 1, 2 and 4 steps, export."""
    from .t2i_eval import oracle_scores

    distiller = LCMDistiller(run_dir, recipe or LCMRecipe(), device)
    distiller.train()
    pipe = distiller.pipeline()
    metrics = {f"oracle_{n}_steps": oracle_scores(pipe, num_inference_steps=n, per_category=eval_prompts_per_category)
               for n in (1, 2, 4)} if eval_prompts_per_category else {}
    distiller.export(out_dir, metrics)
    logger.info(f"distilled in {distiller.seconds / 60:.1f} min; {metrics}; saved to {out_dir}")
    return out_dir
