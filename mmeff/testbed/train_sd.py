"""Recipe for ``assets/models/shapes-sd``: ``mmeff testbed train sd`` (seeded, resumable, progress bars).

Stage ``vae``: the KL autoencoder on rendered prompt scenes (MSE + a small KL term); its
latent scaling factor is then measured (1 / std of the latents) as SD's 0.18215 was.
Stage ``unet``: the text encoder and UNet together, from scratch, on the v-prediction
objective over DDPM's 1000 training timesteps, with 10% empty captions so that
classifier-free guidance works (``--recipe unet=DIR`` starts both from an exported shapes-sd
instead, on its autoencoder, so a run longer than a session extends the last export). A
checkpoint is written every ``checkpoint_every`` steps; rerunning the command resumes from it.

An exponential moving average of the UNet and text-encoder weights (``ema_decay``, diffusers'
``EMAModel``) is what gets exported. The defaults are the bundled model's recipe: 7,000 UNet
steps on scenes with 1.4x larger objects, Min-SNR-5 loss weighting (the bundled model reused the
previous bundle's autoencoder: ``--recipe vae=assets/models/shapes-sd/vae``). The same recipe runs
on a GPU (``--device cuda``), batches then rendered by DataLoader workers. Any field of
``SDRecipe`` can be overridden from the command line (``--recipe unet_steps=12000``).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from tqdm import tqdm
from transformers import CLIPTextModel

from .batches import step_batches
from .render import render
from .sd_model import (
    ShapesSDSpec,
    assemble,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    images_to_tensor,
    training_scheduler,
)
from .staged import StagedTrainer, load_first_stage, load_trained_weights
from .t2i_prompts import sample_prompt, scene_for_prompt
from .train import plot_losses

logger = logging.getLogger(__name__)

TRAIN_SEED = 20_000_000


@dataclass(frozen=True)
class SDRecipe:
    seed: int = 0
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 7000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    checkpoint_every: int = 250
    ema_decay: float = 0.999  # 0: export the raw weights
    workers: int = 0  # DataLoader processes rendering batches (0: render in the training loop)
    vae: str = ""  # a trained AutoencoderKL folder: skip stage vae and train the UNet on its latents
    object_scale: float = 1.4  # size of the training scenes' objects (scene_for_prompt)
    snr_gamma: float = 5.0  # Min-SNR-gamma loss weighting (arXiv 2303.09556; 0: plain MSE)
    # a trained shapes-sd folder: its UNet and text encoder start stage unet (a longer run spread over sessions,
    # each extending the last export, as train_ar's ``lm``); its vae/ is the autoencoder unless ``vae`` names another
    unet: str = ""


def prompt_batch(step: int, batch: int, seed: int, object_scale: float = 1.0) -> tuple[list[str], torch.Tensor]:
    """Captions and their rendered scenes in [-1, 1], a pure function of (step, seed)."""
    rng = random.Random(TRAIN_SEED + seed * 1_000_003 + step)
    prompts = [sample_prompt(rng) for _ in range(batch)]
    scenes = [scene_for_prompt(p, rng.randrange(1 << 30), object_scale=object_scale) for p in prompts]
    return [p.text for p in prompts], images_to_tensor([render(s) for s in scenes])


class SDTrainer(StagedTrainer):
    stages = ("vae", "unet")

    def __init__(self, run_dir: Path, recipe: SDRecipe, spec: ShapesSDSpec | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(run_dir, recipe, device)
        self.spec = spec = spec or ShapesSDSpec()
        self.tokenizer = build_tokenizer(spec)
        self.text_encoder = build_text_encoder(spec, self.tokenizer).to(self.device)
        vae_dir = recipe.vae or (str(Path(recipe.unet) / "vae") if recipe.unet else "")
        self.vae = (load_first_stage(AutoencoderKL, vae_dir) if vae_dir else build_vae(spec)).to(self.device)
        self.unet = build_unet(spec).to(self.device)
        if recipe.unet and not self.ckpt.exists():  # a resumed run's checkpoint holds the weights already
            load_trained_weights(self.unet, UNet2DConditionModel.from_pretrained(Path(recipe.unet) / "unet"),
                                 f"unet={recipe.unet} (unet)")
            load_trained_weights(self.text_encoder, CLIPTextModel.from_pretrained(Path(recipe.unet) / "text_encoder"),
                                 f"unet={recipe.unet} (text_encoder)")
        self.noise_scheduler = training_scheduler(spec)
        self._start()
        if vae_dir and self.stage == "vae":  # a trained autoencoder (and its scaling factor): straight to the UNet
            self.vae.eval()
            self._enter_second_stage()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def ema_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.unet.parameters(), *self.text_encoder.parameters()]

    def _batches(self, start: int, stop: int, batch: int, seed: int):
        return step_batches(prompt_batch, start, stop, batch, seed, self.recipe.object_scale,
                            workers=self.recipe.workers)

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.stage == "vae":
            return torch.optim.AdamW(self.vae.parameters(), lr=self.recipe.vae_lr, weight_decay=0.0)
        return torch.optim.AdamW(self.ema_parameters(), lr=self.recipe.unet_lr, weight_decay=1e-2)

    def extra_state(self) -> dict[str, Any]:
        return {"scaling_factor": self.vae.config.scaling_factor}

    def load_extra(self, state: dict[str, Any]) -> None:
        self.vae.register_to_config(scaling_factor=state["scaling_factor"])

    def train_vae(self) -> None:
        r = self.recipe
        self.vae.train()
        bar = tqdm(range(self.step, r.vae_steps), desc="stage vae", initial=self.step, total=r.vae_steps)
        for step, (_, images) in zip(bar, self._batches(self.step, r.vae_steps, r.vae_batch, r.seed)):
            images = images.to(self.device)
            posterior = self.vae.encode(images).latent_dist
            recon = self.vae.decode(posterior.sample()).sample
            rec = F.mse_loss(recon, images)
            loss = rec + r.kl_weight * posterior.kl().mean()
            self._update(loss, step, r.vae_steps, r.vae_lr, "vae")
            bar.set_postfix(mse=f"{rec.item():.4f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._save()
        self.vae.eval()
        self.vae.register_to_config(scaling_factor=self._measure_scaling())
        self._enter_second_stage()
        self._save()

    @torch.no_grad()
    def _measure_scaling(self) -> float:
        _, images = prompt_batch(10**6, 256, self.recipe.seed)
        latents = self.vae.encode(images.to(self.device)).latent_dist.sample()
        return float(1.0 / latents.std())

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.spec.max_prompt_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids).last_hidden_state

    def train_unet(self) -> None:
        r = self.recipe
        self.unet.train()
        self.text_encoder.train()
        sched = self.noise_scheduler
        bar = tqdm(range(self.step, r.unet_steps), desc="stage unet", initial=self.step, total=r.unet_steps)
        for step, (texts, images) in zip(bar, self._batches(self.step, r.unet_steps, r.unet_batch, r.seed + 1)):
            g = torch.Generator().manual_seed(r.seed * 7919 + step)
            texts = ["" if torch.rand((), generator=g) < r.caption_dropout else t for t in texts]
            with torch.no_grad():
                posterior = self.vae.encode(images.to(self.device)).latent_dist
                # the draws come from the CPU generator, so a run is the same on any device
                eps = torch.randn(posterior.mean.shape, generator=g).to(self.device)
                latents = (posterior.mean + posterior.std * eps) * self.vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g).to(self.device)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(texts),), generator=g).to(self.device)
            noisy = sched.add_noise(latents, noise, t)
            target = sched.get_velocity(latents, noise, t) if self.spec.prediction_type == "v_prediction" else noise
            pred = self.unet(noisy, t, self.encode_text(texts)).sample
            loss = self._weighted_mse(pred, target, t)
            self._update(loss, step, r.unet_steps, r.unet_lr, "unet")
            bar.set_postfix(loss=f"{loss.item():.4f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._save()
        self.stage = "done"
        self._save()

    def _weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Plain MSE, or Min-SNR-gamma's: min(SNR, gamma) / (SNR + 1) for v-prediction, / SNR for epsilon."""
        gamma = self.recipe.snr_gamma
        if gamma <= 0:
            return F.mse_loss(pred, target)
        snr = compute_snr(self.noise_scheduler, t)
        weight = snr.clamp(max=gamma) / (snr + 1 if self.spec.prediction_type == "v_prediction" else snr)
        per_row = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (per_row * weight).mean()

    def pipeline(self):
        """The pipeline with the exported weights: the EMA ones when the recipe keeps an average."""
        self._averaged()
        return assemble(self.spec, self.tokenizer, self.text_encoder, self.vae, self.unet)

    def export(self, out_dir: Path, metrics: dict | None = None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline().to("cpu").save_pretrained(out_dir, safe_serialization=True)
        plot_losses(self.losses, out_dir / "training_loss.png", titles={"vae": "autoencoder", "unet": "UNet + text"})
        info = {"recipe": asdict(self.recipe), "spec": asdict(self.spec), "device": self.device.type,
                "scaling_factor": self.vae.config.scaling_factor, "training_minutes": round(self.seconds / 60, 1),
                "final_loss": self.final_losses(),
                "metrics": metrics or {}}
        (out_dir / "training.json").write_text(json.dumps(info, indent=2))


def train_sd(out_dir: Path, run_dir: Path, recipe: SDRecipe | None = None, spec: ShapesSDSpec | None = None,
             eval_prompts_per_category: int = 8, device: str = "cpu") -> Path:
    trainer = SDTrainer(run_dir, recipe or SDRecipe(), spec or ShapesSDSpec(), device=device)
    if trainer.stage == "vae":
        trainer._timed(trainer.train_vae)
    if trainer.stage == "unet":
        trainer._timed(trainer.train_unet)
    from .t2i_eval import oracle_scores

    metrics = {}
    if eval_prompts_per_category > 0:  # 0: no oracle check (tests, or a run scored separately)
        pipe = trainer.pipeline()
        metrics = {f"oracle_{n}_steps": oracle_scores(pipe, num_inference_steps=n,
                                                       per_category=eval_prompts_per_category)["overall"]
                   for n in (1, 2, 4)}
        metrics["oracle_4_steps_guidance_3"] = oracle_scores(pipe, num_inference_steps=4, guidance_scale=3.0,
                                                             per_category=eval_prompts_per_category)["overall"]
    trainer.export(out_dir, metrics)
    logger.info(f"trained in {trainer.seconds / 60:.1f} min; {metrics}; saved to {out_dir}")
    return out_dir
