"""``mmeff testbed train vlm``: the two-stage recipe for the bundled shapes LLaVA.

Stage A teaches the vision tower to see (every 8x8 patch labelled with the object kind
covering it); stage B trains projector + decoder on a caption and 12 questions per image
(loss on answers only), each packed as an *isolated turn* that sees the image but no other
turn, as a lone question does at evaluation; the tower is frozen for the first 15% and then
fine-tuned at a lower rate. Seeded, resumable from ``<run>/ckpt.pt``, with a progress bar
and a loss-curve plot. See ``shared/notes/testbed-training.md`` for the probes behind it.
``--arch qwen2_vl`` runs the same stages on the shapes Qwen2-VL (:mod:`mmeff.testbed.train_qwen`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from .data import (
    BACKGROUND_CLASS,
    KINDS,
    SequenceBuilder,
    build_isolated,
    collate,
    collate_isolated,
    images_tensor,
    patch_labels,
    scene_batch,
    training_turns,
)
from .model import ShapesLlavaSpec, build_model, build_processor
from .questions import EVAL_SEED_OFFSET
from .world import SHAPES, sample_scene

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    vision_steps: int = 2800
    vision_batch: int = 32
    vision_lr: float = 1e-3
    chat_steps: int = 2800
    chat_batch: int = 16
    chat_lr: float = 8e-4
    tower_lr: float = 2e-4
    frozen_fraction: float = 0.15
    questions_per_image: int = 12
    hard_negatives: float = 0.75
    colour_negatives: float = 0.35  # share of existence negatives with a present colour, absent shape
    isolated_turns: bool = True  # each question sees only the image, never earlier turns
    checkpoint_every: int = 250


def parse_overrides(recipe_cls: type, pairs: list[str], option: str = "--recipe") -> dict[str, Any]:
    """``["unet_steps=12000", "lr=1e-3"]`` -> typed fields of the recipe dataclass; unknown names raise."""
    def flag(value: str) -> bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"a boolean recipe field takes true or false, got {value!r}")
        return value.lower() in ("true", "1")

    casts = {"int": int, "float": float, "str": str, "bool": flag, int: int, float: float, str: str, bool: flag}

    def optional(cast: Callable[[str], Any]) -> Callable[[str], Any]:
        return lambda value: None if value.lower() == "none" else cast(value)

    def ints(value: str) -> tuple[int, ...]:
        return tuple(int(v) for v in value.split(","))

    def cast_of(annotation: Any) -> Callable[[str], Any]:
        name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if name.endswith(" | None"):  # an optional field also takes "none"
            return optional(casts[name.removesuffix(" | None")])
        if name == "tuple[int, ...]":  # channels: 32,64,64
            return ints
        return casts[annotation]

    types = {f.name: cast_of(f.type) for f in dataclasses.fields(recipe_cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise ValueError(f"{option} takes name=value with a name among {sorted(types)}; got {pair!r}")
        out[key] = types[key](value)
    return out


def lr_factor(step: int, total: int, warmup: float = 0.05) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


class Trainer:
    def __init__(self, run_dir: Path, recipe: Recipe, spec: ShapesLlavaSpec, device: str | torch.device = "cpu"
                 ) -> None:
        """``device``: where the model trains (scenes are drawn and rendered on the CPU either way)."""
        self.run_dir, self.recipe, self.spec = run_dir, recipe, spec
        self.device = torch.device(device)
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(recipe.seed)
        self._build()
        self.model.to(self.device)
        self.head.to(self.device)
        self.stage, self.step, self.losses = "vision", 0, {"vision": [], "chat": []}
        self.seconds, self._mark = 0.0, time.time()  # training wall time, summed over resumed runs
        # CPU time too: on a shared machine the wall time also counts other people's jobs
        self.cpu_seconds, self._cpu_mark = 0.0, time.process_time()
        self.metrics: dict[str, dict[str, float]] = {}
        self.optimizer = self._vision_optimizer()
        self.ckpt = run_dir / "ckpt.pt"
        if self.ckpt.is_file():
            self._load()

    def _build(self) -> None:
        """Processor, model, the tower stage A trains (frozen early in stage B) and its per-patch head."""
        spec = self.spec
        self.processor = build_processor(spec)
        self.model = build_model(spec, self.processor, seed=self.recipe.seed)
        self.tower = self.model.model.vision_tower
        self.head = nn.Linear(spec.vision_hidden, len(KINDS) + 1)
        self.builder = SequenceBuilder(self.processor.tokenizer, self.model.config.image_token_id, spec.image_tokens)

    # -- optimisers ------------------------------------------------------------------------
    def _vision_optimizer(self):
        params = list(self.tower.parameters()) + list(self.head.parameters())
        return torch.optim.AdamW(params, lr=self.recipe.vision_lr, weight_decay=0.01)

    def _chat_optimizer(self):
        tower = set(id(p) for p in self.tower.parameters())
        rest = [p for p in self.model.parameters() if id(p) not in tower]
        return torch.optim.AdamW(
            [{"params": rest, "lr": self.recipe.chat_lr, "name": "rest"},
             {"params": list(self.tower.parameters()), "lr": self.recipe.tower_lr, "name": "tower"}],
            weight_decay=0.01,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def _save(self) -> None:
        now = time.time()
        self.seconds, self._mark = self.seconds + now - self._mark, now
        cpu = time.process_time()
        self.cpu_seconds, self._cpu_mark = self.cpu_seconds + cpu - self._cpu_mark, cpu
        state = {"stage": self.stage, "step": self.step, "losses": self.losses, "model": self.model.state_dict(),
                 "head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "recipe": asdict(self.recipe), "metrics": self.metrics, "seconds": self.seconds,
                 "cpu_seconds": self.cpu_seconds}
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.ckpt)

    def _load(self) -> None:
        state = torch.load(self.ckpt, weights_only=False, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.stage, self.step, self.losses = state["stage"], state["step"], state["losses"]
        self.metrics, self.seconds = state.get("metrics", {}), state.get("seconds", 0.0)
        self.cpu_seconds = state.get("cpu_seconds", 0.0)
        self.optimizer = self._vision_optimizer() if self.stage == "vision" else self._chat_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        logger.info(f"resumed {self.stage} stage at step {self.step}")

    # -- stages ----------------------------------------------------------------------------
    def train_vision(self) -> None:
        r = self.recipe
        self.tower.train()
        bar = tqdm(range(self.step, r.vision_steps), desc="stage A: vision tower", initial=self.step,
                   total=r.vision_steps)
        for step in bar:
            loss = self.vision_loss(step)
            self._update(loss, step, r.vision_steps, "vision")
            bar.set_postfix(loss=f"{loss.item():.3f}")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._save()
        self.stage, self.step = "chat", 0
        self.metrics["vision_patch_accuracy"] = self.patch_accuracy()
        logger.info(f"stage A held-out object-patch accuracy: {self.metrics['vision_patch_accuracy']}")
        self.optimizer = self._chat_optimizer()
        self._save()
        shutil.copy(self.ckpt, self.run_dir / "vision_stage.pt")  # restart stage B from here when tuning it

    def train_chat(self) -> None:
        r = self.recipe
        self.model.train()
        unfreeze_at = int(r.chat_steps * r.frozen_fraction)
        rng = random.Random(r.seed)
        bar = tqdm(range(self.step, r.chat_steps), desc="stage B: projector + decoder", initial=self.step,
                   total=r.chat_steps)
        for step in bar:
            rng.seed(r.seed * 7919 + step)
            frozen = step < unfreeze_at
            self.tower.requires_grad_(not frozen)
            loss = self.chat_loss(step, rng)
            self._update(loss, step, r.chat_steps, "chat", tower_on=not frozen)
            bar.set_postfix(loss=f"{loss.item():.3f}", tower="frozen" if frozen else "tuned")
            self.step = step + 1
            if self.step % r.checkpoint_every == 0:
                self._save()
        self.stage = "done"
        self._save()

    # -- per-architecture batches ------------------------------------------------------------
    def vision_loss(self, step: int) -> torch.Tensor:
        """Stage A: cross-entropy of the head on every patch's (colour, shape) class."""
        r = self.recipe
        scenes = scene_batch(step, r.vision_batch, self.spec.image_size, base_seed=r.seed * 1_000_003)
        pixels = images_tensor(scenes, self.processor).to(self.device)
        labels = torch.stack([torch.from_numpy(patch_labels(s, self.spec.patch_size)).flatten() for s in scenes])
        labels = labels.to(self.device)
        hidden = self.tower(pixel_values=pixels).last_hidden_state[:, 1:]
        return nn.functional.cross_entropy(self.head(hidden).flatten(0, 1), labels.flatten())

    def chat_loss(self, step: int, rng: random.Random) -> torch.Tensor:
        """Stage B: the LM loss on answers, a caption and questions per image."""
        r = self.recipe
        scenes = scene_batch(step, r.chat_batch, self.spec.image_size, base_seed=5_000_000 + r.seed)
        turns = [training_turns(s, rng, r.questions_per_image, r.hard_negatives, r.colour_negatives) for s in scenes]
        pad = self.processor.tokenizer.pad_token_id
        if r.isolated_turns:
            batch = collate_isolated([build_isolated(self.builder, t) for t in turns], pad)
        else:
            batch = collate([self.builder.build(t) for t in turns], pad)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(pixel_values=images_tensor(scenes, self.processor).to(self.device), **batch).loss

    def patch_accuracy(self) -> dict[str, float]:
        return vision_patch_accuracy(self.tower, self.head, self.processor, self.spec)  # on the tower's device

    def _update(self, loss: torch.Tensor, step: int, total: int, stage: str, tower_on: bool = True) -> None:
        factor = lr_factor(step, total)
        for group in self.optimizer.param_groups:
            base = self.recipe.vision_lr if stage == "vision" else (
                self.recipe.tower_lr if group.get("name") == "tower" else self.recipe.chat_lr)
            group["lr"] = base * factor * (1.0 if tower_on or group.get("name") != "tower" else 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.losses[stage].append(loss.item())

    def export(self, out_dir: Path) -> None:
        self.model.eval()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.processor.save_pretrained(out_dir)
        plot_losses(self.losses, out_dir / "training_loss.png")
        info = {"recipe": asdict(self.recipe), "spec": asdict(self.spec), "metrics": self.metrics,
                "training_minutes": round(self.seconds / 60, 1),
                "training_cpu_minutes": round(self.cpu_seconds / 60, 1),
                "final_loss": {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in self.losses.items()}}
        (out_dir / "training.json").write_text(json.dumps(info, indent=2))


@torch.no_grad()
def vision_patch_accuracy(tower: nn.Module, head: nn.Module, processor, spec: ShapesLlavaSpec,
                          n_scenes: int = 128) -> dict[str, float]:
    """Stage A's held-out per-patch accuracy on object patches: kind, colour alone, shape alone."""
    was_training = tower.training
    tower.eval()
    scenes = [sample_scene(EVAL_SEED_OFFSET + 500_000 + i, image_size=spec.image_size) for i in range(n_scenes)]
    device = next(tower.parameters()).device
    pred = head(tower(pixel_values=images_tensor(scenes, processor).to(device)).last_hidden_state[:, 1:]).argmax(-1)
    pred = pred.cpu()
    labels = torch.stack([torch.from_numpy(patch_labels(s, spec.patch_size)).flatten() for s in scenes])
    tower.train(was_training)
    obj = labels != BACKGROUND_CLASS
    pred, labels = pred[obj], labels[obj]
    n_shapes = len(SHAPES)  # KINDS is colour-major
    return {
        "kind": (pred == labels).float().mean().item(),
        "color": (pred // n_shapes == labels // n_shapes).float().mean().item(),
        "shape": ((pred % n_shapes == labels % n_shapes) & (pred != BACKGROUND_CLASS)).float().mean().item(),
    }


def plot_losses(losses: dict[str, list[float]], path: Path, titles: dict[str, str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = titles or {"vision": "stage A (vision)", "chat": "stage B (chat)"}
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3), squeeze=False)
    axes = axes[0]
    for ax, (stage, values) in zip(axes, losses.items()):
        if values:
            k = max(1, len(values) // 100)
            smooth = [sum(values[i : i + k]) / len(values[i : i + k]) for i in range(0, len(values), k)]
            ax.plot(range(0, len(values), k), smooth)
        ax.set_title(titles.get(stage, stage))
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


VLM_ARCHS = ("llava", "qwen2_vl")


def recipe_class(arch: str = "llava") -> type[Recipe]:
    """The recipe dataclass of ``arch`` (``--recipe`` overrides parse against it)."""
    if arch == "qwen2_vl":
        from .train_qwen import QwenRecipe

        return QwenRecipe
    if arch != "llava":
        raise ValueError(f"unknown VLM architecture {arch!r}; choose from {VLM_ARCHS}")
    return Recipe


def spec_class(arch: str = "llava") -> type:
    """The model-shape dataclass of ``arch`` (``--spec`` overrides parse against it)."""
    if arch == "qwen2_vl":
        from .qwen_model import ShapesQwen2VLSpec

        return ShapesQwen2VLSpec
    return ShapesLlavaSpec


def train_vlm(out_dir: Path, run_dir: Path, recipe: Recipe | None = None, spec: Any = None,
              arch: str = "llava", device: str = "cpu") -> Path:
    """Train (or resume) the shapes VLM of ``arch``: ``llava`` (shapes-llava) or ``qwen2_vl`` (shapes-qwen2vl)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    recipe = recipe or recipe_class(arch)()
    if arch == "qwen2_vl":
        from .qwen_model import ShapesQwen2VLSpec
        from .train_qwen import QwenTrainer

        trainer: Trainer = QwenTrainer(run_dir, recipe, spec or ShapesQwen2VLSpec(), device=device)
    else:
        trainer = Trainer(run_dir, recipe, spec or ShapesLlavaSpec(), device=device)
    logger.info(f"training {arch} on {trainer.device}, {torch.get_num_threads()} torch thread(s); run dir {run_dir}")
    start = time.time()
    if trainer.stage == "vision":
        trainer.train_vision()
    if trainer.stage == "chat":
        trainer.train_chat()
    trainer.export(out_dir)
    logger.info(f"trained in {(time.time() - start) / 60:.1f} min this run; saved to {out_dir}")
    return out_dir
