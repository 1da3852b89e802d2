"""Recipe for ``assets/models/shapes-clip``: an open_clip model trained contrastively on prompt scenes.

The folder is an open_clip ``local-dir`` model (``open_clip_config.json`` + safetensors +
an HF tokenizer), so ``open_clip.create_model_and_transforms("local-dir:assets/models/shapes-clip")``
and ``open_clip.get_tokenizer(...)`` load it. It is the testbed's reward model for ReNO.

Why hard negatives: with in-batch negatives alone, a caption is almost always told apart
by a wrong shape or colour somewhere in the batch, never by a wrong count, a swapped
colour binding or a flipped relation, which is exactly what prompt following needs. So
every image also brings a corrupted copy of its caption (one such edit) into the text
batch, and captions equal to the image's own count as positives (multi-positive InfoNCE).

Optionally (``init=`` a trained folder, ``sd=`` a generator, ``pool_prompts=``) the reward is
then fine-tuned on the generator's own samples, each with what the oracle found in it
(:mod:`.preference_pool`): HPSv2-style pairs of an accepted and a rejected sample of a prompt
(``preference_weight``), and/or every sample against its own prompt and a true description of
it (``described_weight``; the pairs use the few accepted samples only, this uses them all).
The export measures how the reward ranks new samples (:mod:`.reward_alignment`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .assets import MODELS
from .batches import step_batches
from .preference_pool import PreferencePool, build_pool, described_loss, preference_loss, soft_nce
from .render import render
from .sd_model import images_to_tensor
from .t2i_prompts import RELATIONS, T2I_IMAGE_SIZE, T2I_WORDS, Group, T2IPrompt, sample_prompt, scene_for_prompt
from .train import lr_factor, plot_losses
from .world import COLORS, SHAPES

logger = logging.getLogger(__name__)

TRAIN_SEED = 30_000_000
CONTEXT_LENGTH = 16
#: pixel statistics of rendered prompt scenes are close to OpenAI CLIP's; keeping its constants
#: means a reward adapter treats this model like any other open_clip model
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipRecipe:
    seed: int = 0
    steps: int = 1500
    batch: int = 96
    lr: float = 1e-3
    checkpoint_every: int = 250
    workers: int = 0  # DataLoader processes rendering batches (0: render in the training loop)
    vae: str = ""  # AutoencoderKL folder (relative: to the repo), e.g. assets/models/shapes-sd/vae; "" = clean only
    degraded_fraction: float = 0.5  # share of each batch seen through the autoencoder
    latent_noise: float = 1.0  # largest noise std added to the latents, in units of their std
    init: str = ""  # open_clip folder to fine-tune from (e.g. assets/models/shapes-clip); "" = from scratch
    sd: str = ""  # shapes-sd pipeline folder: the generator whose samples make the preference pool
    pool_prompts: int = 0  # preference fine-tuning on sd's judged samples, up to this many prompts a category (0: off)
    pool_samples: int = 8  # samples per pool prompt
    pool_steps: int = 1  # the call the pool and the export's ranking check use (bench reno's: 1 step, no guidance)
    pool_guidance: float = 1.0
    pairs: int = 32  # preference pairs per training step
    preference_weight: float = 1.0  # 0: no pair loss
    described_weight: float = 0.0  # contrastive loss on pool samples against their prompts and true descriptions
    described_prompts: int = 16  # pool prompts per step for it
    described_per_prompt: int = 8  # samples of each
    alignment_per_category: int = 8  # export: prompts per category for the ``sd`` sample-ranking check
    object_scale: float = 1.0  # size of the rendered objects: the generator's (train sd --recipe object_scale)


def model_cfg(vocab_size: int, eos_id: int, pad_id: int) -> dict:
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": T2I_IMAGE_SIZE, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32,
                       "mlp_ratio": 2.0},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, "width": 64, "heads": 4, "layers": 3,
                     "mlp_ratio": 2.0, "hf_tokenizer_name": "shapes-clip", "pool_type": "eos", "eos_id": eos_id,
                     "pad_id": pad_id},
    }


def corrupt(prompt: T2IPrompt, rng: random.Random) -> T2IPrompt:
    """One edit that makes the caption false for the image: colour, shape, count, binding or relation."""
    groups = list(prompt.groups)
    edits = ["shape"]
    if any(g.color for g in groups):
        edits.append("color")
    if prompt.category == "counting":
        edits += ["count", "count"]
    if prompt.category == "color_attr":
        edits += ["swap", "swap"]
    if prompt.relation:
        edits += ["relation", "relation"]
    edit = rng.choice(edits)
    i = rng.randrange(len(groups))
    g = groups[i]
    if edit == "shape":
        taken = {x.shape for x in groups}
        groups[i] = dataclasses.replace(g, shape=rng.choice([s for s in SHAPES if s not in taken]))
    elif edit == "color":
        i = next(k for k, x in enumerate(groups) if x.color)
        taken = {x.color for x in groups}
        groups[i] = dataclasses.replace(groups[i], color=rng.choice([c for c in COLORS if c not in taken]))
    elif edit == "count":
        groups[0] = dataclasses.replace(groups[0], count=rng.choice([n for n in (1, 2, 3) if n != g.count]))
    elif edit == "swap":
        a, b = groups
        groups = [Group(a.shape, b.color), Group(b.shape, a.color)]
    else:
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return T2IPrompt(prompt.category, prompt.groups, opposite[prompt.relation] if rng.random() < 0.7
                         else rng.choice([r for r in RELATIONS if r != prompt.relation]))
    return T2IPrompt(prompt.category, tuple(groups), prompt.relation)


def clip_batch(step: int, batch: int, seed: int,
               object_scale: float = 1.0) -> tuple[list[str], list[str], torch.Tensor]:
    rng = random.Random(TRAIN_SEED + seed * 1_000_003 + step)
    prompts = [sample_prompt(rng) for _ in range(batch)]
    scenes = [scene_for_prompt(p, rng.randrange(1 << 30), object_scale=object_scale) for p in prompts]
    negatives = [corrupt(p, rng).text for p in prompts]
    return [p.text for p in prompts], negatives, images_to_tensor([render(s) for s in scenes])


def build(seed: int = 0, init: Path | None = None):
    """A fresh model, or (``init``) one with the weights of an exported shapes-clip folder."""
    from ..rewards.clip import _open_clip

    open_clip = _open_clip()
    from safetensors.torch import load_file

    from ..testing.diffusion import clip_tokenizer

    tokenizer = clip_tokenizer(T2I_WORDS, model_max_length=CONTEXT_LENGTH)
    torch.manual_seed(seed)
    cfg = model_cfg(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = open_clip.CLIP(**cfg)
    if init is not None:
        saved = json.loads((init / "open_clip_config.json").read_text())["model_cfg"]
        if saved != cfg:
            raise ValueError(f"init={init}: its model config differs from this recipe's; it cannot be fine-tuned here")
        model.load_state_dict(load_file(init / "open_clip_model.safetensors"))
    return model, tokenizer, cfg


def repo_path(path: str) -> Path:
    """Recipe paths are relative to the repository (where ``assets/`` is), whatever the working directory."""
    return Path(path) if Path(path).is_absolute() else MODELS.parents[1] / path


def save_clip(model: torch.nn.Module, tokenizer, cfg: dict, out_dir: Path) -> Path:
    """An open_clip ``local-dir`` folder: config with preprocessing, safetensors weights, HF tokenizer."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "open_clip_model.safetensors")
    tokenizer.save_pretrained(out_dir)
    config = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                                                   "resize_mode": "shortest"}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out_dir


class ClipTrainer:
    def __init__(self, run_dir: Path, recipe: ClipRecipe, device: str | torch.device = "cpu") -> None:
        self.run_dir, self.recipe, self.device = run_dir, recipe, torch.device(device)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = run_dir / "checkpoint.pt"
        if recipe.pool_prompts and not recipe.sd:
            raise ValueError("pool_prompts needs sd=<a shapes-sd folder>: the pool is that generator's samples")
        if recipe.pool_prompts and (recipe.pool_samples < 2 or recipe.pairs < 1):
            raise ValueError(f"need pool_samples >= 2 and pairs >= 1, got {recipe.pool_samples} and {recipe.pairs}")
        if recipe.described_weight and not recipe.pool_prompts:
            raise ValueError("described_weight needs pool_prompts > 0: it trains on the pool's samples")
        if recipe.described_weight and min(recipe.described_prompts, recipe.described_per_prompt) < 1:
            raise ValueError(f"need described_prompts and described_per_prompt >= 1, got "
                             f"{recipe.described_prompts} and {recipe.described_per_prompt}")
        self.model, self.tokenizer, self.cfg = build(recipe.seed, repo_path(recipe.init) if recipe.init else None)
        self.model.to(self.device)
        self.vae = None
        if recipe.vae:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(repo_path(recipe.vae)).to(self.device).eval().requires_grad_(False)
        self.sd = None
        if recipe.sd:
            from diffusers import StableDiffusionPipeline

            self.sd = StableDiffusionPipeline.from_pretrained(repo_path(recipe.sd)).to(self.device)
            self.sd.set_progress_bar_config(disable=True)
        self.pool = self.load_or_build_pool() if recipe.pool_prompts else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=recipe.lr, weight_decay=0.05)
        self.step, self.seconds, self.losses = 0, 0.0, {"clip": [], "preference": [], "described": []}
        if self.ckpt.exists():
            state = torch.load(self.ckpt, weights_only=False, map_location=self.device)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.seconds, self.losses = state["step"], state["seconds"], state["losses"]
            self.losses.setdefault("preference", [])
            self.losses.setdefault("described", [])
            logger.info(f"resumed at step {self.step}")

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                              return_tensors="pt").input_ids.to(self.device)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device) + 1) / 2
        mean, std = (torch.tensor(c, device=self.device)[:, None, None] for c in (MEAN, STD))
        return (x - mean) / std

    @torch.no_grad()
    def degrade(self, images: torch.Tensor, seed: int, fraction: float | None = None) -> torch.Tensor:
        """The first ``fraction`` of the batch through the autoencoder, latents noised at random strength."""
        fraction = self.recipe.degraded_fraction if fraction is None else fraction
        k = int(round(len(images) * fraction))
        if self.vae is None or k == 0:
            return images
        g = torch.Generator().manual_seed(seed)
        images = images.to(self.device)
        posterior = self.vae.encode(images[:k]).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(self.device)
        strength = torch.rand(k, 1, 1, 1, generator=g).to(self.device) * self.recipe.latent_noise * z.std()
        z = z + strength * torch.randn(z.shape, generator=g).to(self.device)
        return torch.cat([self.vae.decode(z).sample.clamp(-1, 1), images[k:]])

    @property
    def pool_call(self) -> dict[str, float]:
        """The shapes-sd call that makes the pool and the export's ranking check."""
        return {"num_inference_steps": self.recipe.pool_steps, "guidance_scale": self.recipe.pool_guidance}

    def load_or_build_pool(self) -> PreferencePool:
        """The judged samples, generated once per run directory (a resumed run reuses them)."""
        r = self.recipe
        path = self.run_dir / "preference_pool.pt"
        if path.exists():
            return PreferencePool.load(path)
        pool = build_pool(self.sd, r.pool_prompts, r.pool_samples, self.pool_call, seed=r.seed)
        pool.save(path)
        logger.info("preference pool: %s", json.dumps(pool.summary()))
        return pool

    def preference(self, step: int) -> torch.Tensor:
        """HPSv2-style pair loss on ``pairs`` (accepted, rejected) samples of the same pool prompt."""
        rng = random.Random(TRAIN_SEED + self.recipe.seed * 1_000_003 + step + 1)
        texts, good, bad = self.pool.sample_pairs(self.recipe.pairs, rng)
        images = self.normalise(images_to_tensor(list(good) + list(bad)))
        emb = self.model.encode_image(images)
        return preference_loss(self.model.logit_scale.exp(), emb[: len(texts)], emb[len(texts):],
                               self.model.encode_text(self.tokens(texts)))

    def described(self, step: int) -> torch.Tensor:
        """Pool samples against their own prompts and true descriptions, positives by the oracle's rule."""
        r = self.recipe
        rng = random.Random(TRAIN_SEED + r.seed * 1_000_003 + step + 2)
        images, texts, positive = self.pool.described_batch(r.described_prompts, r.described_per_prompt, rng)
        return described_loss(self.model.logit_scale.exp(), self.model.encode_image(self.normalise(
            images_to_tensor(list(images)))), self.model.encode_text(self.tokens(texts)),
            torch.from_numpy(positive).to(self.device))

    def loss(self, texts: list[str], negatives: list[str], images: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.model.encode_image(self.normalise(images)), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokens(texts + negatives)), dim=-1)
        logits = self.model.logit_scale.exp() * img @ txt.T  # (B, 2B)
        all_texts = texts + negatives
        positive = torch.tensor([[t == u for u in all_texts] for t in texts], device=self.device)
        i2t = soft_nce(logits, positive)
        t2i = soft_nce(logits[:, : len(texts)].T, positive[:, : len(texts)].T)  # text -> image, captions only
        return (i2t + t2i) / 2

    def train(self) -> None:
        r = self.recipe
        self.model.train()
        bar = tqdm(range(self.step, r.steps), desc="shapes-clip", initial=self.step, total=r.steps)
        start = time.time()
        batches = step_batches(clip_batch, self.step, r.steps, r.batch, r.seed, r.object_scale, workers=r.workers)
        for step, (texts, negatives, images) in zip(bar, batches):
            contrastive = self.loss(texts, negatives, self.degrade(images, TRAIN_SEED + step))
            loss = contrastive
            if self.pool is not None and r.preference_weight:
                pref = self.preference(step)
                self.losses["preference"].append(pref.item())
                loss = loss + r.preference_weight * pref
            if self.pool is not None and r.described_weight:
                described = self.described(step)
                self.losses["described"].append(described.item())
                loss = loss + r.described_weight * described
            for group in self.optimizer.param_groups:
                group["lr"] = r.lr * lr_factor(step, r.steps, warmup=0.1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, 4.6052)  # 100, as CLIP caps it
            self.losses["clip"].append(contrastive.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0 or self.step == r.steps:
                self.seconds += time.time() - start
                start = time.time()
                torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "step": self.step, "seconds": self.seconds, "losses": self.losses}, self.ckpt)

    @torch.no_grad()
    def pick_accuracy(self, n: int = 256, degraded: bool = False) -> dict[str, float]:
        """Held-out: how often the true caption outscores its corrupted copy, per category."""
        self.model.eval()
        texts, negatives, images = clip_batch(10**7, n, self.recipe.seed + 99, self.recipe.object_scale)
        if degraded:
            images = self.degrade(images, 10**7, fraction=1.0)
        img = F.normalize(self.model.encode_image(self.normalise(images)), dim=-1)
        pos = (img * F.normalize(self.model.encode_text(self.tokens(texts)), dim=-1)).sum(-1)
        neg = (img * F.normalize(self.model.encode_text(self.tokens(negatives)), dim=-1)).sum(-1)
        rng = random.Random(TRAIN_SEED + (self.recipe.seed + 99) * 1_000_003 + 10**7)
        cats = [sample_prompt(rng).category for _ in range(n)]
        out: dict[str, list[bool]] = {}
        for c, win in zip(cats, (pos > neg).cpu().tolist()):
            out.setdefault(c, []).append(win)
        scores = {c: sum(v) / len(v) for c, v in sorted(out.items())}
        scores["overall"] = float((pos > neg).float().mean())
        return scores

    def export(self, out_dir: Path) -> None:
        save_clip(self.model.to("cpu"), self.tokenizer, self.cfg, out_dir)
        self.model.to(self.device)
        plot_losses({k: v for k, v in self.losses.items() if v}, out_dir / "training_loss.png",
                    titles={"clip": "contrastive loss", "preference": "preference pair loss",
                            "described": "contrastive loss on described samples"})
        info = {"recipe": asdict(self.recipe), "device": self.device.type,
                "training_minutes": round(self.seconds / 60, 1),
                "final_loss": _tail_mean(self.losses["clip"]),
                "caption_vs_corrupted_accuracy": self.pick_accuracy()}
        if self.vae is not None:
            info["caption_vs_corrupted_accuracy_through_vae"] = self.pick_accuracy(degraded=True)
        if self.pool is not None:
            info["preference_pool"] = self.pool.summary()
            for name in ("preference", "described"):
                if self.losses[name]:
                    info[f"final_{name}_loss"] = _tail_mean(self.losses[name])
        if self.sd is not None:
            info["generated_alignment"] = self.generated_alignment(out_dir)
        (out_dir / "training.json").write_text(json.dumps(info, indent=2))
        logger.info(json.dumps({k: v for k, v in info.items() if k.startswith(("caption_vs", "generated"))}))

    def generated_alignment(self, out_dir: Path) -> dict:
        """How the exported reward ranks ``sd``'s own samples of the evaluation prompts (the pool's call)."""
        from ..rewards import load_reward
        from .reward_alignment import reward_alignment
        from .t2i_prompts import eval_prompts

        reward = load_reward("shapes_clip", str(out_dir), device=self.device)
        prompts = eval_prompts(self.recipe.alignment_per_category)
        return reward_alignment(self.sd, reward, prompts, call=self.pool_call)


def _tail_mean(losses: list[float], n: int = 50) -> float:
    return sum(losses[-n:]) / max(1, len(losses[-n:]))


def train_clip(out_dir: Path, run_dir: Path, recipe: ClipRecipe | None = None, device: str = "cpu") -> Path:
    trainer = ClipTrainer(run_dir, recipe or ClipRecipe(), device=device)
    trainer.train()
    trainer.export(out_dir)
    logger.info(f"trained in {trainer.seconds / 60:.1f} min; saved to {out_dir}")
    return out_dir
