"""Recipe for ``assets/models/shapes-mar`` and its draft ``shapes-mar-small``: ``mmeff testbed train mar``.

No autoencoder is trained: both models read and write the latents of the bundled
``shapes-sd/vae`` (frozen; ``vae=DIR`` in the recipe picks another one), so a draft and its
target share one tokenizer, as continuous speculative decoding requires. Stage ``target``,
then stage ``draft``, each on the same stream of batches with its own optimiser: a batch of
rendered prompt scenes is encoded to (B, 64, 4) tokens (scaled latent means, raster order),
``caption_dropout`` of the captions become the null caption ``[bos, <boi>]`` (so guidance
works), and the row ``[bos, caption..., <boi>, token_0, ..., token_62]`` (left-padded,
positions counted from the first real token, as ``DecodeSession`` counts them) goes through
the ``LlamaModel``. The hidden state at ``<boi>`` conditions token 0 and the one at token
``i`` conditions token ``i + 1``; the diffusion head learns DDPM's epsilon objective on every
token, with ``diffusion_batch_mul`` independent (t, noise) draws per token and step (MAR's
``diffusion_batch_mul``). Backbone and head train jointly (AdamW, warm-up + cosine, clip 1.0).

As in ``train_ar``: a checkpoint every ``checkpoint_every`` steps (rerunning resumes),
``--device cuda`` trains the same recipe (random draws come from CPU generators),
``workers`` > 0 renders batches in DataLoader processes, ``ema_decay`` > 0 exports an
exponential moving average of each model, and ``--recipe name=value`` overrides a field.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from tqdm import tqdm
from transformers import LlamaModel, PreTrainedTokenizerFast

from ..car.head import DiffusionHead
from ..car.model import ContinuousARModel
from .ar_model import boi_token_id
from .assets import SHAPES_SD
from .batches import step_batches
from .mar_model import ShapesMARSpec, assemble, build_backbone, build_head, build_scheduler, build_tokenizer, check_vae
from .staged import StagedTrainer, load_trained_weights
from .train import plot_losses
from .train_sd import prompt_batch

logger = logging.getLogger(__name__)

BUNDLED_VAE = SHAPES_SD / "vae"


@dataclass(frozen=True)
class MARRecipe:
    seed: int = 0
    target_steps: int = 3500  # ~0.50 s/step at batch 32 on 2 CPU cores: ~29 min
    draft_steps: int = 3500  # ~0.16 s/step: ~9 min
    batch: int = 32
    lr: float = 1e-3
    caption_dropout: float = 0.1
    diffusion_batch_mul: int = 4  # independent (t, noise) draws per token and step, as MAR's
    checkpoint_every: int = 250
    workers: int = 0  # DataLoader processes rendering batches (0: render in the training loop)
    ema_decay: float = 0.0  # 0: export the raw weights
    vae: str = ""  # the shared AutoencoderKL's folder ("": the bundled assets/models/shapes-sd/vae)
    object_scale: float = 1.0  # size of the training scenes' objects (scene_for_prompt)
    # a trained shapes-mar folder: its backbone and head start stage target (a longer run spread over sessions,
    # each extending the last export, as train_ar's ``lm``); the draft stage starts fresh as always
    target: str = ""


def vae_folder(recipe: MARRecipe) -> Path:
    return Path(recipe.vae).resolve() if recipe.vae else BUNDLED_VAE


def load_target_weights(model: ContinuousARModel, folder: str) -> None:
    """Start from an exported shapes-mar's backbone and head (a trainer that refuses one is not built); the
    export's VAE and scheduler are not read: the trainer has its own."""
    trained = {"backbone": LlamaModel.from_pretrained(Path(folder) / "backbone"),
               "head": DiffusionHead.from_pretrained(Path(folder) / "head")}
    for part, module in trained.items():
        load_trained_weights(getattr(model, part), module, f"target={folder} ({part})")


def draft_folder(out_dir: Path) -> Path:
    """The draft is exported beside the target: ``shapes-mar`` -> ``shapes-mar-small``."""
    return out_dir.parent / f"{out_dir.name}-small"


def training_rows(tokenizer: PreTrainedTokenizerFast, boi_id: int, texts: list[str],
                  n_tokens: int) -> dict[str, torch.Tensor]:
    """Left-padded ``[bos, caption..., <boi>]`` ids (B, width), and the mask / position ids of the full row.

    The full row is the prefix followed by tokens ``0 .. n_tokens - 2`` (the last token is only
    predicted, never fed), ``width + n_tokens - 1`` columns. ``""`` is the null caption. Position
    ids count from the first real token (``cumsum(mask) - 1``, 0 on padding), as ``DecodeSession``
    passes them, so a token's position does not depend on how much padding its batch needed.
    """
    prefixes = [ids + [boi_id] for ids in tokenizer(texts).input_ids]
    width = max(len(p) for p in prefixes)
    input_ids = torch.full((len(texts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(texts), width + n_tokens - 1, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        input_ids[row, width - len(prefix) :] = torch.tensor(prefix)
        mask[row, width - len(prefix) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}


def predicting_columns(width: int, n_tokens: int) -> torch.Tensor:
    """The column whose hidden state conditions token ``i``: the one before it (``<boi>`` for token 0)."""
    return torch.arange(width - 1, width - 1 + n_tokens)


def backbone_hidden(backbone: LlamaModel, head: DiffusionHead, rows: dict[str, torch.Tensor],
                    tokens: torch.Tensor) -> torch.Tensor:
    """Every column's hidden state (B, width + N - 1, d): text embeddings, then tokens 0 .. N-2 via ``token_in``."""
    text = backbone.get_input_embeddings()(rows["input_ids"])
    embeds = torch.cat([text, head.embed_tokens(tokens[:, :-1].to(text.dtype))], dim=1)
    return backbone(inputs_embeds=embeds, attention_mask=rows["attention_mask"],
                    position_ids=rows["position_ids"]).last_hidden_state


def token_conditions(hidden: torch.Tensor, width: int, n_tokens: int) -> torch.Tensor:
    """(B, N, d): row ``i`` is the hidden state that predicts token ``i``; caption columns are never read."""
    return hidden[:, predicting_columns(width, n_tokens).to(hidden.device)]


def diffusion_loss(head: DiffusionHead, scheduler: DDPMScheduler, tokens: torch.Tensor, z: torch.Tensor,
                   generator: torch.Generator, mul: int) -> torch.Tensor:
    """MAR's ``DiffLoss``: epsilon MSE with ``mul`` independent (t, noise) draws per token, t ~ U[0, T)."""
    x0 = tokens.reshape(-1, tokens.shape[-1]).repeat(mul, 1)
    cond = z.reshape(-1, z.shape[-1]).repeat(mul, 1)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)  # CPU draws: a run is the same on any device
    t, eps = t.to(x0.device), eps.to(x0.device, x0.dtype)
    x_t = scheduler.add_noise(x0, eps, t)
    return F.mse_loss(head(x_t, t, cond).float(), eps.float())


class MARTrainer(StagedTrainer):
    """Two stages trained the same way: ``target``, then ``draft``, each with its own optimiser (and EMA)."""

    stages = ("target", "draft")

    def __init__(self, run_dir: Path, recipe: MARRecipe, spec: ShapesMARSpec | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(run_dir, recipe, device)
        self.spec = spec = spec or ShapesMARSpec()
        self.vae_path = vae_folder(recipe)
        self.vae = AutoencoderKL.from_pretrained(self.vae_path).to(self.device).eval().requires_grad_(False)
        check_vae(spec, self.vae)
        self.tokenizer = build_tokenizer()
        self.scheduler = build_scheduler(spec)
        self.models: dict[str, ContinuousARModel] = {}
        for which in self.stages:
            backbone = build_backbone(spec, which, self.tokenizer).to(self.device)
            head = build_head(spec, which).to(self.device)
            self.models[which] = assemble(spec, self.tokenizer, backbone, head, self.vae, self.scheduler,
                                          null_caption=recipe.caption_dropout > 0)
        if recipe.target and not self.ckpt.exists():  # a resumed run's checkpoint holds the weights already
            load_target_weights(self.models["target"], recipe.target)
        self.stage_seconds = {which: 0.0 for which in self.stages}
        self._mark = time.time()
        self._start()

    # -- StagedTrainer -------------------------------------------------------------------
    @property
    def current(self) -> str:
        """The model being trained (the draft once everything is done)."""
        return self.stages[1] if self.stage == "done" else self.stage

    def modules(self) -> dict[str, torch.nn.Module]:
        return {f"{w}_{part}": getattr(m, part) for w, m in self.models.items() for part in ("backbone", "head")}

    def trainable(self, which: str) -> list[torch.nn.Parameter]:
        return [*self.models[which].backbone.parameters(), *self.models[which].head.parameters()]

    def ema_parameters(self) -> list[torch.nn.Parameter]:
        return self.trainable(self.current)

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trainable(self.current), lr=self.recipe.lr, weight_decay=1e-2)

    def extra_state(self) -> dict[str, Any]:
        return {"stage_seconds": self.stage_seconds}

    def load_extra(self, state: dict[str, Any]) -> None:
        self.stage_seconds = dict(state["stage_seconds"])
        self.ema = self._ema()  # built for the target before the stage was known; the checkpoint's is the stage's

    def _update(self, loss: torch.Tensor, step: int, total: int, base_lr: float, stage: str) -> None:
        super()._update(loss, step, total, base_lr, stage)
        if stage == self.stages[0] and self.ema is not None:  # StagedTrainer averages its second stage only
            self.ema.step(self.ema_parameters())

    # -- training ------------------------------------------------------------------------
    def _batches(self, start: int, stop: int):
        """The same stream for both models: batch ``step`` is ``prompt_batch(step, batch, seed, object_scale)``."""
        r = self.recipe
        return step_batches(prompt_batch, start, stop, r.batch, r.seed, r.object_scale, workers=r.workers)

    def _tick(self, which: str) -> None:
        """Charge the wall time since the last tick to ``which`` (kept in the checkpoint, so resumes add up)."""
        now = time.time()
        self.stage_seconds[which] += now - self._mark
        self.seconds += now - self._mark
        self._mark = now

    def loss(self, which: str, texts: list[str], images: torch.Tensor, step: int) -> torch.Tensor:
        """The diffusion loss of model ``which`` on batch ``step`` (caption dropout and noise seeded by the step)."""
        r, model = self.recipe, self.models[which]
        g = torch.Generator().manual_seed(r.seed * 7919 + step)
        drop = (torch.rand(len(texts), generator=g) < r.caption_dropout).tolist()
        texts = ["" if d else t for d, t in zip(drop, texts)]
        tokens = model.encode_images(images.to(self.device))
        n = tokens.shape[1]
        rows = training_rows(self.tokenizer, boi_token_id(self.tokenizer), texts, n)
        rows = {k: v.to(self.device) for k, v in rows.items()}
        hidden = backbone_hidden(model.backbone, model.head, rows, tokens)
        z = token_conditions(hidden, rows["input_ids"].shape[1], n)
        return diffusion_loss(model.head, self.scheduler, tokens, z, g, r.diffusion_batch_mul)

    def train_stage(self) -> None:
        """Train the model the stage names, from the checkpoint's step, then move to the next stage."""
        which, r = self.stage, self.recipe
        total = r.target_steps if which == "target" else r.draft_steps
        model = self.models[which]
        model.backbone.train()
        model.head.train()
        self._mark = time.time()
        bar = tqdm(range(self.step, total), desc=f"stage {which}", initial=self.step, total=total)
        for step, (texts, images) in zip(bar, self._batches(self.step, total)):
            loss = self.loss(which, texts, images, step)
            self._update(loss, step, total, r.lr, which)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._tick(which)
                self._save()
        self._tick(which)
        model.backbone.eval()
        model.head.eval()
        if which == self.stages[0]:
            if self.ema is not None:  # the target is final: keep its average as its weights
                self.ema.copy_to(self.ema_parameters())
            self._enter_second_stage()
            self.ema = self._ema()  # of the draft's parameters now
        else:
            self.stage = "done"
        self._save()

    def train(self) -> None:
        while self.stage != "done":
            self.train_stage()

    # -- export --------------------------------------------------------------------------
    def model(self, which: str) -> ContinuousARModel:
        """``which`` with the exported weights: the EMA ones when the recipe keeps an average."""
        self._averaged()
        return self.models[which]

    def export(self, out_dir: Path, metrics: dict | None = None) -> dict[str, Path]:
        """Target to ``out_dir``, draft to ``<out_dir>-small``; both configs point at the one VAE folder."""
        folders = {"target": out_dir, "draft": draft_folder(out_dir)}
        info = {"recipe": asdict(self.recipe), "spec": asdict(self.spec), "device": self.device.type,
                "training_minutes": {w: round(s / 60, 1) for w, s in self.stage_seconds.items()},
                "final_loss": self.final_losses(),
                "parameters": {w: sum(p.numel() for p in self.trainable(w)) for w in self.stages},
                "folders": {w: f.name for w, f in folders.items()}, "metrics": metrics or {}}
        for which, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            model = self.model(which).to("cpu")
            model.config = replace(model.config, vae=os.path.relpath(self.vae_path.resolve(), folder.resolve()))
            model.save_pretrained(folder)
            plot_losses(self.losses, folder / "training_loss.png",
                        titles={"target": "target (eps MSE)", "draft": "draft (eps MSE)"})
            (folder / "training.json").write_text(json.dumps({"model": which, **info,
                                                              "config": asdict(model.config)}, indent=2))
        return folders


def train_mar(out_dir: Path, run_dir: Path, recipe: MARRecipe | None = None, spec: ShapesMARSpec | None = None,
              device: str = "cpu", eval_prompts_per_category: int = 8) -> dict[str, Path]:
    """Target, then draft (resuming where a run stopped), oracle metrics of each (skipped at 0 prompts), export."""
    trainer = MARTrainer(run_dir, recipe or MARRecipe(), spec or ShapesMARSpec(), device=device)
    trainer.train()
    metrics: dict = {}
    if eval_prompts_per_category > 0:
        from .mar_eval import mar_oracle_scores

        start = time.time()
        metrics = {w: mar_oracle_scores(trainer.model(w), per_category=eval_prompts_per_category)
                   for w in trainer.stages}
        metrics["eval_minutes"] = round((time.time() - start) / 60, 1)
    folders = trainer.export(out_dir, metrics)
    minutes = {w: round(s / 60, 1) for w, s in trainer.stage_seconds.items()}
    logger.info(f"trained in {minutes} min; {metrics}; saved to {folders['target']} and {folders['draft']}")
    return folders
