"""``mmeff testbed train vlm --arch qwen2_vl``: the shapes LLaVA's two-stage recipe on the shapes Qwen2-VL.

Stage A trains the Qwen vision tower *through its merger* with a per-token head: one (colour,
shape) label per merged 2x2 block of patches (8x8 pixels). Stage B trains merger (Qwen's
projector) + decoder on the same caption and question turns, in Qwen's chat layout with M-RoPE
positions; the ViT blocks are frozen for the first ``frozen_fraction`` of it, then tuned at
``tower_lr``. Each batch is drawn at ``image_size`` or, with probability ``small_fraction``, at
``small_size``, so the model learns both image-token counts (dynamic resolution).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn

from .data import BACKGROUND_CLASS, KINDS, collate_isolated, scene_batch, training_turns
from .questions import EVAL_SEED_OFFSET
from .qwen_data import QwenSequenceBuilder, merged_labels, mrope_positions
from .qwen_model import ShapesQwen2VLSpec, build_qwen_model, build_qwen_processor
from .render import render
from .train import Recipe, Trainer
from .world import SHAPES, SceneSpec, sample_scene


@dataclass(frozen=True)
class QwenRecipe(Recipe):
    """The bundled shapes-qwen2vl's recipe (POPE random 0.907; 120 CPU-minutes)."""

    vision_steps: int = 2500
    vision_batch: int = 32
    chat_steps: int = 2500
    chat_batch: int = 16
    frozen_fraction: float = 0.4  # yes/no is learnt once the tower is tuned, from a tower that sees
    small_fraction: float = 0.5  # share of batches drawn at the spec's small_size
    # stage A's own share (None: small_fraction). Small scenes cost 3.5x less per batch on the CPU and
    # the tower's 2-D RoPE carries what it learns there to the large size
    vision_small_fraction: float | None = None
    accuracy_scenes: int = 96  # held-out scenes per size for stage A's patch accuracy
    checkpoint_every: int = 100


class QwenTrainer(Trainer):
    spec: ShapesQwen2VLSpec
    recipe: QwenRecipe

    def _build(self) -> None:
        if not self.recipe.isolated_turns:
            raise ValueError("the Qwen2-VL recipe packs isolated turns only (isolated_turns=True)")
        self.processor = build_qwen_processor(self.spec)
        self.model = build_qwen_model(self.spec, self.processor, seed=self.recipe.seed)
        self.visual = self.model.model.visual
        self.tower = nn.ModuleList([self.visual.patch_embed, self.visual.blocks])  # the ViT; the merger projects
        self.head = nn.Linear(self.spec.text_hidden, len(KINDS) + 1)
        self.qwen_builder = QwenSequenceBuilder(self.processor.tokenizer)

    def _vision_optimizer(self):
        params = list(self.visual.parameters()) + list(self.head.parameters())
        return torch.optim.AdamW(params, lr=self.recipe.vision_lr, weight_decay=0.01)

    def size_at(self, step: int, stage: str) -> int:
        """The image size of one batch: a pure function of (seed, stage, step), so resuming redraws it."""
        r = self.recipe
        share = r.small_fraction if stage != "vision" or r.vision_small_fraction is None else r.vision_small_fraction
        draw = random.Random(f"{r.seed}/{stage}/{step}").random()
        return self.spec.small_size if draw < share else self.spec.image_size

    def _pixels(self, scenes: list[SceneSpec]) -> dict[str, torch.Tensor]:
        pixels = self.processor.image_processor([render(s) for s in scenes], return_tensors="pt")
        return {k: v.to(self.device) for k, v in pixels.items()}

    def _tokens(self, scenes: list[SceneSpec]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One feature per merged block for every scene (concatenated), and the processor's outputs."""
        pixels = self._pixels(scenes)
        return self.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output, pixels

    def vision_loss(self, step: int) -> torch.Tensor:
        r = self.recipe
        scenes = scene_batch(step, r.vision_batch, self.size_at(step, "vision"), base_seed=r.seed * 1_000_003)
        features, _ = self._tokens(scenes)
        labels = merged_labels(scenes, self.spec.token_pixels).to(self.device)
        return nn.functional.cross_entropy(self.head(features), labels)

    def chat_loss(self, step: int, rng: random.Random) -> torch.Tensor:
        r = self.recipe
        scenes = scene_batch(step, r.chat_batch, self.size_at(step, "chat"), base_seed=5_000_000 + r.seed)
        turns = [training_turns(s, rng, r.questions_per_image, r.hard_negatives, r.colour_negatives) for s in scenes]
        pixels = self._pixels(scenes)
        grid = pixels["image_grid_thw"]
        counts = (grid.prod(-1) // self.spec.merge_size**2).tolist()
        rows = [self.qwen_builder.build_isolated(t, n) for t, n in zip(turns, counts)]
        batch = {k: v.to(self.device) for k, v in collate_isolated(rows, self.processor.tokenizer.pad_token_id).items()}
        batch["position_ids"] = mrope_positions(self.model, batch["input_ids"], batch["position_ids"],
                                                [row[3].count(0) for row in rows], grid,
                                                self.model.config.image_token_id)
        return self.model(pixel_values=pixels["pixel_values"], image_grid_thw=grid, **batch).loss

    @torch.no_grad()
    def patch_accuracy(self) -> dict[str, float]:
        """Held-out accuracy on object tokens at both sizes: kind, colour alone, shape alone (main size)."""
        was_training = self.visual.training
        self.visual.eval()
        out: dict[str, float] = {}
        for size, suffix in ((self.spec.image_size, ""), (self.spec.small_size, f"_{self.spec.small_size}px")):
            seeds = range(EVAL_SEED_OFFSET + 500_000, EVAL_SEED_OFFSET + 500_000 + self.recipe.accuracy_scenes)
            scenes = [sample_scene(seed, image_size=size) for seed in seeds]
            pred = self.head(self._tokens(scenes)[0]).argmax(-1).cpu()
            labels = merged_labels(scenes, self.spec.token_pixels)
            obj = labels != BACKGROUND_CLASS
            pred, labels = pred[obj], labels[obj]
            n_shapes = len(SHAPES)  # KINDS is colour-major
            out["kind" + suffix] = (pred == labels).float().mean().item()
            if not suffix:
                out["color"] = (pred // n_shapes == labels // n_shapes).float().mean().item()
                shape = (pred % n_shapes == labels % n_shapes) & (pred != BACKGROUND_CLASS)
                out["shape"] = shape.float().mean().item()
        self.visual.train(was_training)
        return out
