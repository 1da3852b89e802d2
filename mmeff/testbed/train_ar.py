"""Recipe for ``assets/models/shapes-ar``: ``mmeff testbed train ar`` (seeded, resumable, progress bars).

Stage ``vq``: the ``VQModel`` on rendered prompt scenes: MSE reconstruction + codebook loss +
``commitment`` x commitment loss, through a straight-through estimator. Every
``restart_every`` steps the codebook entries no batch picked since the last restart are
re-seeded from random encoder outputs of the current batch (at step 0 that is the whole
codebook: a data-dependent init); without this a VQ tokenizer collapses onto a few codes.
Stage ``ar``: the frozen VQ turns each batch into 8 x 8 codes, and the Llama learns
``[bos, caption..., <boi>, code_1, ..., code_64]`` rows (left-padded, positions counted from
the first real token, cross-entropy on the codes only), with ``caption_dropout`` of the
captions replaced by the null caption ``[bos, <boi>]`` so that classifier-free guidance
works. A checkpoint is written every ``checkpoint_every`` steps; rerunning resumes from it.

As in ``train_sd``, ``--device cuda`` trains the same recipe (random draws come from CPU
generators), ``workers`` > 0 renders batches in DataLoader processes, ``ema_decay`` > 0
exports an exponential moving average of the LM, and any field of ``ARRecipe`` can be
overridden from the command line (``--recipe ar_steps=6000``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import VQModel
from tqdm import tqdm
from transformers import LlamaForCausalLM

from ..ar.model import ARImageConfig, ARImageModel
from .ar_model import ShapesARSpec, assemble, build_lm, build_tokenizer, build_vq, model_config
from .batches import step_batches
from .staged import StagedTrainer, load_first_stage
from .train import plot_losses
from .train_sd import prompt_batch

logger = logging.getLogger(__name__)

HELDOUT_STEP = 10**6  # batch index of the held-out scenes (training steps stay far below it)
IGNORE = -100  # label of positions without loss


@dataclass(frozen=True)
class ARRecipe:
    seed: int = 0
    vq_steps: int = 1000
    vq_batch: int = 64
    vq_lr: float = 1e-3
    commitment: float = 0.25  # weight of ||z - sg(e)||^2; the codebook term ||sg(z) - e||^2 has weight 1
    restart_every: int = 100  # dead-code restarts (0: never)
    ar_steps: int = 5000
    ar_batch: int = 64
    ar_lr: float = 1e-3
    caption_dropout: float = 0.1
    checkpoint_every: int = 250
    ema_decay: float = 0.0  # 0: export the raw weights
    workers: int = 0  # DataLoader processes rendering batches (0: render in the training loop)
    heldout_batch: int = 256  # held-out scenes for the VQ's reconstruction MSE and codebook usage
    object_scale: float = 1.4  # size of the training scenes' objects (scene_for_prompt)
    vq: str = ""  # a trained VQModel folder (e.g. a shapes-ar export's vq/): skip stage vq and train the LM on it
    # a trained shapes-ar folder: its LM's weights start stage ar (a longer run spread over sessions, each
    # extending the last export); its vq/ is the tokenizer unless ``vq`` names another
    lm: str = ""


def load_vq(folder: str, spec: ShapesARSpec) -> VQModel:
    """A trained tokenizer, checked against the spec's codebook and grid before anything trains."""
    vq = load_first_stage(VQModel, folder)
    expected = build_vq(spec).config
    fields = ("num_vq_embeddings", "latent_channels", "block_out_channels", "sample_size")
    differing = {k: (vq.config[k], expected[k]) for k in fields if _as_tuple(vq.config[k]) != _as_tuple(expected[k])}
    if differing:
        raise ValueError(f"recipe vq={folder} does not match the spec (field: its value, the spec's): {differing}; "
                         "pass the spec it was trained with, e.g. --spec codebook_size=...")
    return vq


def load_lm_weights(lm: torch.nn.Module, folder: str) -> None:
    """Start from an exported shapes-ar's LM, refusing one of another shape with the differing field."""
    trained = LlamaForCausalLM.from_pretrained(Path(folder) / "lm")
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    differing = {k: (getattr(trained.config, k), getattr(lm.config, k)) for k in fields
                 if getattr(trained.config, k) != getattr(lm.config, k)}
    if differing:
        raise ValueError(f"recipe lm={folder} does not match the spec (field: its value, the spec's): {differing}; "
                         "pass the spec it was trained with, e.g. --spec codebook_size=...")
    lm.load_state_dict(trained.state_dict())


def _as_tuple(value: Any) -> Any:
    """Config lists read back from JSON compare equal to the spec's tuples."""
    return tuple(value) if isinstance(value, list) else value


def quantize(vq: VQModel, z: torch.Tensor, commitment: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Straight-through quantized latents, VQ loss and (B, rows*cols) codes in raster order.

    diffusers' ``VectorQuantizer`` picks the codes (as at inference), but its own loss is the
    legacy one with the 0.25 on the wrong term and a fixed beta, so the loss is recomputed here.
    """
    _, _, (_, _, indices) = vq.quantize(z)
    b, c, h, w = z.shape
    e = vq.quantize.embedding(indices).view(b, h, w, c).permute(0, 3, 1, 2)
    loss = F.mse_loss(e, z.detach()) + commitment * F.mse_loss(z, e.detach())
    return z + (e - z).detach(), loss, indices.view(b, h * w)


@torch.no_grad()
def vq_codes(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> (B, rows*cols) code indices, the order ``ARImageModel.decode_codes`` reads."""
    z = vq.encode(images).latents
    _, _, (_, _, indices) = vq.quantize(z)
    return indices.view(z.shape[0], -1)


@torch.no_grad()
def restart_dead_codes(vq: VQModel, usage: torch.Tensor, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Re-seed the entries with ``usage == 0`` from random encoder outputs ``z``; returns their indices."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return dead
    vectors = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    n = vectors.shape[0]
    pick = torch.randperm(n, generator=generator)[: len(dead)] if n >= len(dead) \
        else torch.randint(n, (len(dead),), generator=generator)
    weight = vq.quantize.embedding.weight
    weight[dead.to(weight.device)] = vectors[pick.to(vectors.device)].to(weight.dtype)
    return dead


def training_rows(tokenizer, config: ARImageConfig, texts: list[str], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Left-padded ``[bos, caption..., <boi>, codes + offset]`` rows with labels on the codes only.

    ``""`` is the null caption (``[bos, <boi>]``). Position ids count from the first real
    token (``cumsum(mask) - 1``, 0 on padding), as generation from ``prompt_ids`` passes them,
    so a code's position does not depend on how much padding its batch needed.
    """
    prefixes = [ids + [config.boi_token_id] for ids in tokenizer(texts).input_ids]
    width, n = max(len(p) for p in prefixes), codes.shape[1]
    input_ids = torch.full((len(texts), width + n), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, prefix in enumerate(prefixes):
        input_ids[row, width - len(prefix) : width] = torch.tensor(prefix)
        mask[row, width - len(prefix) :] = 1
    input_ids[:, width:] = codes.cpu() + config.code_offset
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, width:] = input_ids[:, width:]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels}


class ARTrainer(StagedTrainer):
    stages = ("vq", "ar")

    def __init__(self, run_dir: Path, recipe: ARRecipe, spec: ShapesARSpec | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(run_dir, recipe, device)
        self.spec = spec = spec or ShapesARSpec()
        self.tokenizer = build_tokenizer()
        self.config = model_config(spec, self.tokenizer, null_caption=recipe.caption_dropout > 0)
        vq_folder = recipe.vq or (str(Path(recipe.lm) / "vq") if recipe.lm else "")
        self.vq = (load_vq(vq_folder, spec) if vq_folder else build_vq(spec)).to(self.device)
        self.lm = build_lm(spec, self.tokenizer)
        if recipe.lm and not self.ckpt.exists():  # a resumed run's checkpoint holds the LM already
            load_lm_weights(self.lm, recipe.lm)
        self.lm = self.lm.to(self.device)
        self.usage = torch.zeros(spec.codebook_size, dtype=torch.long)  # picks since the last restart
        self.restarted = 0  # codebook entries re-seeded after the initial one
        self._start()
        if vq_folder and self.stage == "vq":  # a trained tokenizer: straight to the LM
            self._freeze_vq()
            self._enter_second_stage()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vq": self.vq, "lm": self.lm}

    def ema_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.lm.parameters())

    def extra_state(self) -> dict[str, Any]:
        return {"usage": self.usage, "restarted": self.restarted}

    def load_extra(self, state: dict[str, Any]) -> None:
        self.usage, self.restarted = state["usage"].cpu(), state["restarted"]
        if self.stage != "vq":
            self._freeze_vq()

    def _batches(self, start: int, stop: int, batch: int, seed: int):
        return step_batches(prompt_batch, start, stop, batch, seed, self.recipe.object_scale,
                            workers=self.recipe.workers)

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.stage == "vq":
            return torch.optim.AdamW(self.vq.parameters(), lr=self.recipe.vq_lr, weight_decay=0.0)
        return torch.optim.AdamW(self.lm.parameters(), lr=self.recipe.ar_lr, weight_decay=1e-2)

    def _freeze_vq(self) -> None:
        self.vq.eval().requires_grad_(False)

    def _restart(self, z: torch.Tensor, step: int) -> None:
        """Dead-code restart, and fresh Adam moments for the re-seeded rows (their old ones are stale)."""
        g = torch.Generator().manual_seed(self.recipe.seed * 7919 + step)
        dead = restart_dead_codes(self.vq, self.usage, z, g)
        weight = self.vq.quantize.embedding.weight
        for moment in self.optimizer.state.get(weight, {}).values():
            if torch.is_tensor(moment) and moment.shape == weight.shape:
                moment[dead.to(moment.device)] = 0
        if step > 0:
            self.restarted += len(dead)
        self.usage.zero_()

    def train_vq(self) -> None:
        r = self.recipe
        self.vq.train()
        bar = tqdm(range(self.step, r.vq_steps), desc="stage vq", initial=self.step, total=r.vq_steps)
        for step, (_, images) in zip(bar, self._batches(self.step, r.vq_steps, r.vq_batch, r.seed)):
            images = images.to(self.device)
            z = self.vq.encode(images).latents
            if r.restart_every > 0 and step % r.restart_every == 0:
                self._restart(z, step)
            z_q, vq_loss, codes = quantize(self.vq, z, r.commitment)
            recon = self.vq.decode(z_q, force_not_quantize=True).sample
            rec = F.mse_loss(recon, images)
            self._update(rec + vq_loss, step, r.vq_steps, r.vq_lr, "vq")
            self.usage += torch.bincount(codes.flatten().cpu(), minlength=self.spec.codebook_size)
            bar.set_postfix(mse=f"{rec.item():.4f}", used=f"{int((self.usage > 0).sum())}/{self.spec.codebook_size}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._save()
        self._freeze_vq()
        logger.info(f"VQ on held-out scenes: {self.vq_report()}")
        self._enter_second_stage()
        self._save()

    @torch.no_grad()
    def vq_report(self) -> dict[str, float]:
        """Reconstruction MSE through the codes and codebook usage on held-out scenes."""
        _, images = prompt_batch(HELDOUT_STEP, self.recipe.heldout_batch, self.recipe.seed)
        images = images.to(self.device)
        was_training = self.vq.training
        self.vq.eval()
        z_q, _, codes = quantize(self.vq, self.vq.encode(images).latents, self.recipe.commitment)
        mse = F.mse_loss(self.vq.decode(z_q, force_not_quantize=True).sample, images).item()
        self.vq.train(was_training)
        p = torch.bincount(codes.flatten().cpu(), minlength=self.spec.codebook_size).float()
        p = p / p.sum()
        perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item()
        return {"reconstruction_mse": round(mse, 5), "codes_used": int((p > 0).sum()),
                "codebook_size": self.spec.codebook_size, "code_perplexity": round(perplexity, 1)}

    def rows(self, texts: list[str], images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The LM's batch for ``step``: captions dropped to the null caption, images to codes."""
        g = torch.Generator().manual_seed(self.recipe.seed * 7919 + step)
        drop = (torch.rand(len(texts), generator=g) < self.recipe.caption_dropout).tolist()
        texts = ["" if d else t for d, t in zip(drop, texts)]
        codes = vq_codes(self.vq, images.to(self.device))
        return {k: v.to(self.device) for k, v in training_rows(self.tokenizer, self.config, texts, codes).items()}

    def train_lm(self) -> None:
        r = self.recipe
        self._freeze_vq()
        self.lm.train()
        bar = tqdm(range(self.step, r.ar_steps), desc="stage ar", initial=self.step, total=r.ar_steps)
        for step, (texts, images) in zip(bar, self._batches(self.step, r.ar_steps, r.ar_batch, r.seed + 1)):
            loss = self.lm(**self.rows(texts, images, step)).loss
            self._update(loss, step, r.ar_steps, r.ar_lr, "ar")
            bar.set_postfix(loss=f"{loss.item():.3f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._save()
        self.stage = "done"
        self._save()

    def model(self) -> ARImageModel:
        """The model with the exported weights: the EMA ones when the recipe keeps an average."""
        self._averaged()
        return assemble(self.spec, self.tokenizer, self.lm, self.vq, self.config.null_caption)

    def export(self, out_dir: Path, metrics: dict | None = None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        codebook = self.vq_report()
        self.model().to("cpu").save_pretrained(out_dir)
        plot_losses(self.losses, out_dir / "training_loss.png", titles={"vq": "VQ tokenizer", "ar": "Llama on codes"})
        info = {"recipe": asdict(self.recipe), "spec": asdict(self.spec), "config": asdict(self.config),
                "device": self.device.type, "training_minutes": round(self.seconds / 60, 1),
                "final_loss": self.final_losses(),
                "codebook": codebook, "codes_restarted": self.restarted, "metrics": metrics or {}}
        (out_dir / "training.json").write_text(json.dumps(info, indent=2))


def train_ar(out_dir: Path, run_dir: Path, recipe: ARRecipe | None = None, spec: ShapesARSpec | None = None,
             device: str = "cpu", eval_prompts_per_category: int = 8) -> Path:
    """Both stages (resuming where a run stopped), oracle metrics (skipped at 0 prompts), export."""
    trainer = ARTrainer(run_dir, recipe or ARRecipe(), spec or ShapesARSpec(), device=device)
    if trainer.stage == "vq":
        trainer._timed(trainer.train_vq)
    if trainer.stage == "ar":
        trainer._timed(trainer.train_lm)
    metrics: dict = {}
    if eval_prompts_per_category > 0:
        from .ar_eval import ar_oracle_scores

        metrics = ar_oracle_scores(trainer.model(), per_category=eval_prompts_per_category)
    trainer.export(out_dir, metrics)
    logger.info(f"trained in {trainer.seconds / 60:.1f} min; {metrics}; saved to {out_dir}")
    return out_dir
