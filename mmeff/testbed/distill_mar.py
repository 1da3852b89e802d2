"""Recipe that distils the draft on the target: ``mmeff testbed train mar-draft``.

Continuous speculative decoding accepts a draft token when the target head, run from the
same starting and per-step noise, lands close to where the draft head landed. A draft
trained on the data learns its *own* approximation of the scenes and drifts from the
target's along the trajectory (13% acceptance for the bundled one), so this recipe
fine-tunes the draft to predict what the target predicts: for the same (noisy token,
timestep, prefix), the draft's epsilon is pulled onto the frozen target's, for the
conditional, the null-caption and the guided combination (the one sampling uses).

Prefixes are where acceptance is decided, and at decode time they are the *target's*
samples (accepted tokens follow the target), not training scenes: a pool of target samples
(plain decoding, the bench's guidance and head steps) is generated once, and
``on_policy`` of every batch's rows come from it; the rest are prompt scenes, as in
training. Noisy tokens are the forward process applied to those tokens, the marginal the
head's trajectory passes through.

``objective="trajectory"`` trains on the quantity acceptance is decided by instead: for
``trajectory_tokens`` positions per batch, both heads sample the token from the same start and
per-step noise (guided, ``pool_head_steps`` steps), and the squared distance of the two tokens is
back-propagated through the draft's sampling steps (``"both"`` adds the epsilon loss).

A checkpoint (draft, optimiser, step, the pool) every ``checkpoint_every`` steps:
rerunning resumes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..car.loop import ContinuousSession, ContinuousStats, HeadSettings, plain_decode
from ..car.model import ContinuousARModel
from ..car.sampler import draw_noise, head_trajectory
from .assets import SHAPES_MAR, SHAPES_MAR_SMALL
from .t2i_prompts import sample_prompt
from .train import lr_factor, plot_losses
from .train_mar import backbone_hidden, token_conditions, training_rows
from .train_sd import TRAIN_SEED, prompt_batch

logger = logging.getLogger(__name__)

BUNDLED_TARGET = SHAPES_MAR
BUNDLED_DRAFT = SHAPES_MAR_SMALL


@dataclass(frozen=True)
class DistillRecipe:
    seed: int = 0
    steps: int = 1500
    batch: int = 32  # scenes per step; each goes through both models with its caption and the null one
    lr: float = 5e-4
    diffusion_batch_mul: int = 4  # (t, noise) draws per token and step
    guidance_scale: float = 3.0  # the guided epsilon matched too, at the scale sampling uses
    on_policy: float = 0.75  # fraction of each batch drawn from the pool of target samples
    pool: int = 1024  # target samples generated once (batches of 64; ~5 s each on 2 CPU cores)
    pool_head_steps: int = 50
    checkpoint_every: int = 250
    target: str = ""  # "" = the bundled assets/models/shapes-mar
    draft: str = ""  # the draft to start from; "" = the bundled assets/models/shapes-mar-small
    keep_layers: str = ""  # e.g. "0,1": start instead from the target's decoder layers 0 and 1 and a copy of its head
    # "epsilon": the heads' predictions on forward-noised tokens; "trajectory": the tokens the two heads sample
    # from the same noise (what acceptance compares), through the draft's pool_head_steps guided steps; "both": sum
    objective: str = "epsilon"
    trajectory_tokens: int = 256  # tokens per step (of batch x grid) the trajectory objective samples

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.trajectory_tokens < 1:
            raise ValueError(f"trajectory_tokens must be >= 1, got {self.trajectory_tokens!r}")


OBJECTIVES = ("epsilon", "trajectory", "both")


def _folder(value: str, default: Path) -> Path:
    return Path(value).resolve() if value else default


def truncated_copy(target: ContinuousARModel, keep: list[int]) -> ContinuousARModel:
    """A draft made of the target: its embeddings, decoder layers ``keep`` (in order), final norm and head.

    Layer skipping as a draft start (as self-speculative decoding does): the copy's hidden state
    is already near the target's, and the head is the target's, so distillation starts close.
    """
    from transformers import LlamaModel

    n = len(target.backbone.layers)
    if not keep or any(not 0 <= k < n for k in keep) or len(set(keep)) != len(keep) or len(keep) >= n:
        raise ValueError(f"keep_layers must name fewer than {n} distinct layers among 0..{n - 1}, got {keep}")
    config = copy.deepcopy(target.backbone.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[k] for k in keep]
    backbone = LlamaModel(config)
    rename = {f"layers.{k}.": f"layers.{i}." for i, k in enumerate(keep)}
    state = {}
    for key, value in target.backbone.state_dict().items():
        if key.startswith("layers."):
            prefix = ".".join(key.split(".")[:2]) + "."
            if prefix not in rename:
                continue
            key = rename[prefix] + key[len(prefix):]
        state[key] = value
    backbone.load_state_dict(state)
    return ContinuousARModel(backbone.eval(), copy.deepcopy(target.head), target.vae, target.scheduler,
                             target.tokenizer, target.config)


def target_pool(target: ContinuousARModel, adapter, recipe: DistillRecipe) -> tuple[list[str], torch.Tensor]:
    """``recipe.pool`` prompts (a seed range of their own) and the target's tokens for them, (P, N, c)."""
    texts: list[str] = []
    chunks = []
    g = torch.Generator(device=target.device).manual_seed(recipe.seed + 104729)
    settings = HeadSettings(recipe.guidance_scale, 1.0, lambda s: recipe.pool_head_steps)
    for k in tqdm(range(0, recipe.pool, 64), desc="target samples"):
        rng = random.Random(TRAIN_SEED + recipe.seed * 1_000_003 + 10_000 + k // 64)  # prompts only: no renders
        prompts = [sample_prompt(rng).text for _ in range(min(64, recipe.pool - k))]
        session = ContinuousSession(adapter, list(prompts), recipe.guidance_scale)
        chunks.append(plain_decode(session, settings, g, ContinuousStats()).cpu())
        texts += list(prompts)
    return texts, torch.cat(chunks)


def distill_loss(target: ContinuousARModel, draft: ContinuousARModel, texts: list[str], tokens: torch.Tensor,
                 generator: torch.Generator, mul: int, guidance_scale: float) -> torch.Tensor:
    """Draft-vs-target epsilon MSE on the same noisy tokens: conditional + null caption + guided."""
    b, n, _ = tokens.shape
    both = list(texts) + [""] * b
    tokens2 = torch.cat([tokens, tokens])
    x0 = tokens2.reshape(-1, tokens.shape[-1]).repeat(mul, 1)
    t = torch.randint(0, target.scheduler.config.num_train_timesteps, (x0.shape[0] // 2,), generator=generator)
    eps = torch.randn((x0.shape[0] // 2, x0.shape[1]), generator=generator)
    # the conditional and null rows of a scene share their (t, noise): the guided combination is then defined
    t = t.view(mul, b * n).repeat(1, 2).flatten().to(x0.device)
    eps = eps.view(mul, b * n, -1).repeat(1, 2, 1).flatten(0, 1).to(x0.device, x0.dtype)
    x_t = target.scheduler.add_noise(x0, eps, t)

    def predict(model: ContinuousARModel) -> torch.Tensor:
        rows = {k: v.to(model.device) for k, v in training_rows(model.tokenizer, model.config.boi_token_id, both,
                                                                   n).items()}
        z = token_conditions(backbone_hidden(model.backbone, model.head, rows, tokens2),
                             rows["input_ids"].shape[1], n)
        out = model.head(x_t, t, z.reshape(-1, z.shape[-1]).repeat(mul, 1)).float()
        return out.view(mul, 2, b * n, -1)

    with torch.no_grad():
        want = predict(target)
    got = predict(draft)
    guided = lambda e: e[:, 1] + guidance_scale * (e[:, 0] - e[:, 1])  # noqa: E731
    return F.mse_loss(got, want) + F.mse_loss(guided(got), guided(want)) / guidance_scale**2


def trajectory_loss(target: ContinuousARModel, draft: ContinuousARModel, texts: list[str], tokens: torch.Tensor,
                    generator: torch.Generator, n_tokens: int, guidance_scale: float, steps: int) -> torch.Tensor:
    """Squared distance between the tokens the draft's and the target's heads sample from the same start
    and per-step noise (guided, ``steps`` steps), for ``n_tokens`` positions of the batch, each with its
    prefix of ``tokens``: the quantity continuous speculative decoding's acceptance ratio falls with."""
    b, n, c = tokens.shape
    both = list(texts) + [""] * b
    tokens2 = torch.cat([tokens, tokens])
    pick = torch.randperm(b * n, generator=generator)[:n_tokens]
    start, per_step = draw_noise(len(pick), c, steps, generator, torch.device("cpu"))

    def conditions(model: ContinuousARModel) -> torch.Tensor:
        rows = {k: v.to(model.device) for k, v in training_rows(model.tokenizer, model.config.boi_token_id, both,
                                                                   n).items()}
        z = token_conditions(backbone_hidden(model.backbone, model.head, rows, tokens2),
                             rows["input_ids"].shape[1], n).reshape(2, b * n, -1)
        rows_picked = pick.to(z.device)
        return torch.cat([z[0, rows_picked], z[1, rows_picked]])  # conditional rows, then null-caption rows

    def sample(model: ContinuousARModel) -> torch.Tensor:
        z = conditions(model)
        return head_trajectory(model.head, model.scheduler, z, steps, guidance_scale, start.to(z.device),
                               per_step.to(z.device)).sample

    with torch.no_grad():
        want = sample(target)
    return F.mse_loss(sample(draft), want)


class DraftDistiller:
    def __init__(self, run_dir: Path, recipe: DistillRecipe, device: str = "cpu") -> None:
        from ..adapters.continuous_ar import ContinuousARAdapter

        self.recipe, self.device = recipe, torch.device(device)
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = run_dir / "checkpoint.pt"
        self.target_dir, self.draft_dir = _folder(recipe.target, BUNDLED_TARGET), _folder(recipe.draft, BUNDLED_DRAFT)
        self.target = ContinuousARModel.from_pretrained(self.target_dir).to(self.device).requires_grad_(False)
        if recipe.keep_layers:
            keep = [int(k) for k in recipe.keep_layers.split(",")]
            self.draft = truncated_copy(self.target, keep).to(self.device)
            self.draft_dir = self.target_dir
        else:
            self.draft = ContinuousARModel.from_pretrained(self.draft_dir).to(self.device)
        if self.target.vae_fingerprint() != self.draft.vae_fingerprint():
            raise ValueError(f"{self.draft_dir} and {self.target_dir} read different VAEs: a draft must share "
                             "its target's tokens")
        self.adapter = ContinuousARAdapter(self.target)
        self.draft.backbone.requires_grad_(True)
        self.draft.head.requires_grad_(True)
        self.params = [*self.draft.backbone.parameters(), *self.draft.head.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=recipe.lr, weight_decay=1e-2)
        self.step, self.seconds, self.losses = 0, 0.0, []
        self.pool: tuple[list[str], torch.Tensor] | None = None
        if self.ckpt.exists():
            state = torch.load(self.ckpt, weights_only=False, map_location=self.device)
            self.draft.backbone.load_state_dict(state["backbone"])
            self.draft.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.seconds, self.losses, self.pool = (state["step"], state["seconds"], state["losses"],
                                                               state["pool"])
            logger.info(f"resumed at step {self.step}")

    def _save(self) -> None:
        state = {"backbone": self.draft.backbone.state_dict(), "head": self.draft.head.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "seconds": self.seconds,
                 "losses": self.losses, "pool": self.pool}
        torch.save(state, self.ckpt.with_suffix(".tmp"))
        self.ckpt.with_suffix(".tmp").replace(self.ckpt)

    def batch(self, step: int) -> tuple[list[str], torch.Tensor]:
        """``on_policy`` of the rows from the pool (drawn by the step's seed), the rest rendered scenes."""
        r = self.recipe
        k = round(r.on_policy * r.batch)
        g = torch.Generator().manual_seed(r.seed * 7919 + step)
        texts, pool_tokens = self.pool
        pick = torch.randint(0, len(texts), (k,), generator=g)
        out_texts, out_tokens = [texts[i] for i in pick], [pool_tokens[pick].to(self.device)]
        if k < r.batch:
            scene_texts, images = prompt_batch(step, r.batch - k, r.seed)
            out_texts += list(scene_texts)
            out_tokens.append(self.target.encode_images(images.to(self.device)))
        return out_texts, torch.cat(out_tokens)

    def loss(self, texts: list[str], tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        r = self.recipe
        loss = torch.zeros((), device=self.device)
        if r.objective in ("epsilon", "both"):
            loss = loss + distill_loss(self.target, self.draft, texts, tokens, generator, r.diffusion_batch_mul,
                                       r.guidance_scale)
        if r.objective in ("trajectory", "both"):
            loss = loss + trajectory_loss(self.target, self.draft, texts, tokens, generator, r.trajectory_tokens,
                                          r.guidance_scale, r.pool_head_steps)
        return loss

    def train(self) -> None:
        r = self.recipe
        start = time.time()
        if self.pool is None:
            self.pool = target_pool(self.target, self.adapter, r)
            self._save()
        self.draft.backbone.train()
        self.draft.head.train()
        bar = tqdm(range(self.step, r.steps), desc="distil draft", initial=self.step, total=r.steps)
        for step in bar:
            texts, tokens = self.batch(step)
            g = torch.Generator().manual_seed(r.seed * 104723 + step)
            loss = self.loss(texts, tokens, g)
            for group in self.optimizer.param_groups:
                group["lr"] = r.lr * lr_factor(step, r.steps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0 or self.step == r.steps:
                self.seconds += time.time() - start
                start = time.time()
                self._save()
        self.seconds += time.time() - start
        self.draft.backbone.eval()
        self.draft.head.eval()

    def export(self, out_dir: Path, metrics: dict | None = None) -> Path:
        """The distilled draft, its config still pointing at the shared VAE (relative to ``out_dir``)."""
        vae = (self.draft_dir / self.draft.config.vae).resolve()
        model = self.draft.to("cpu")
        model.config = replace(model.config, vae=os.path.relpath(vae, out_dir.resolve()))
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        plot_losses({"distil": self.losses}, out_dir / "distill_loss.png",
                    titles={"distil": f"draft vs target ({self.recipe.objective} objective, MSE)"})
        previous = out_dir / "training.json"
        info = json.loads(previous.read_text()) if previous.is_file() else {}
        info["distillation"] = {"recipe": asdict(self.recipe), "target": os.path.relpath(self.target_dir, out_dir),
                                "started_from": os.path.relpath(self.draft_dir, out_dir),
                                "minutes": round(self.seconds / 60, 1), "device": self.device.type,
                                "final_loss": sum(self.losses[-50:]) / max(1, len(self.losses[-50:])),
                                "metrics": metrics or {}}
        previous.write_text(json.dumps(info, indent=2))
        return out_dir


def distill_draft(out_dir: Path, run_dir: Path, recipe: DistillRecipe | None = None, device: str = "cpu") -> Path:
    """Distil (resuming where a run stopped) and export the draft to ``out_dir``."""
    distiller = DraftDistiller(run_dir, recipe or DistillRecipe(), device)
    distiller.train()
    folder = distiller.export(out_dir)
    logger.info(f"distilled in {distiller.seconds / 60:.1f} min; saved to {folder}")
    return folder
