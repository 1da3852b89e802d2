"""Training examples for the shapes LLaVA: per-patch labels (vision stage) and chat sequences."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .questions import attribute_questions, caption, counting_questions, existence_question, spatial_questions
from .render import object_map, render
from .world import COLORS, SHAPES, SceneSpec, sample_scene

KINDS = [(c, s) for c in COLORS for s in SHAPES]
BACKGROUND_CLASS = len(KINDS)


def patch_labels(scene: SceneSpec, patch: int, min_cover: float = 0.25) -> np.ndarray:
    """(grid, grid) class per patch: the object kind covering the most of it (>= min_cover), else background."""
    ids = object_map(scene)
    grid = scene.image_size // patch
    blocks = ids[: grid * patch, : grid * patch].reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid, grid, patch * patch)
    labels = np.full((grid, grid), BACKGROUND_CLASS, np.int64)
    for i, obj in enumerate(scene.objects):
        cover = (blocks == i).mean(-1)
        better = (cover >= min_cover) & (cover > _best_cover(blocks, labels, scene))
        labels[better] = KINDS.index(obj.kind)
    return labels


def _best_cover(blocks: np.ndarray, labels: np.ndarray, scene: SceneSpec) -> np.ndarray:
    cover = np.zeros(labels.shape)
    for i, obj in enumerate(scene.objects):
        mine = labels == KINDS.index(obj.kind)
        cover[mine] = (blocks == i).mean(-1)[mine]
    return cover


@dataclass
class Turn:
    question: str
    answer: str


def training_turns(scene: SceneSpec, rng: random.Random, n_questions: int = 8,
                   hard_negatives: float = 0.75, colour_negatives: float = 0.0) -> list[Turn]:
    """A caption plus a mix of existence (half negatives), attribute, counting and spatial
    questions, in random order.

    A ``hard_negatives`` share of the negatives asks about an absent kind that shares its
    colour or its shape with a present object: with uniform negatives the model learns to
    answer from colour alone (a probe answered "yes" to 90% of colour-sharing negatives).
    ``colour_negatives`` of the negatives (drawn first) share their colour with a present
    object but not their shape: the one case a colour-only answer gets wrong.
    Absent usual partners get no special treatment, as in instruction data nobody curated
    against co-occurrence, so the scenes' partner prior is left for the model to pick up
    (POPE's adversarial split probes it).
    """
    kinds = scene.kinds()
    absent = [k for k in KINDS if k not in kinds]
    colors, shapes = {c for c, _ in kinds}, {s for _, s in kinds}
    sharing = [k for k in absent if k[0] in colors or k[1] in shapes]
    turns = [Turn("describe the image.", caption(scene))]
    pool: list[Turn] = []
    for _ in range(max(2, n_questions // 2)):
        if rng.random() < 0.5:
            pool.append(Turn(existence_question(rng.choice(sorted(kinds))), "yes"))
        else:
            same_colour = [k for k in absent if k[0] in colors and k[1] not in shapes]
            if same_colour and colour_negatives and rng.random() < colour_negatives:
                neg = rng.choice(same_colour)
            else:
                neg = rng.choice(sharing) if sharing and rng.random() < hard_negatives else rng.choice(absent)
            pool.append(Turn(existence_question(neg), "no"))
    extra = attribute_questions(scene) + counting_questions(scene) + spatial_questions(scene, rng)
    rng.shuffle(extra)
    pool += [Turn(q.text, q.answer) for q in extra[: n_questions - len(pool)]]
    turns += pool
    rng.shuffle(turns)
    return turns


class SequenceBuilder:
    """Token ids + labels (answers only) in exactly the layout the chat template gives at inference."""

    def __init__(self, tokenizer, image_token_id: int, image_tokens: int) -> None:
        self.tok = tokenizer
        self.image_token_id = image_token_id
        self.image_tokens = image_tokens

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def build(self, turns: list[Turn]) -> tuple[list[int], list[int]]:
        ids, labels = [self.tok.bos_token_id], [-100]
        for i, turn in enumerate(turns):
            prompt = self._ids("USER:")
            if i == 0:
                prompt += [self.image_token_id] * self.image_tokens
            prompt += self._ids(f"{turn.question} ASSISTANT:")
            answer = self._ids(turn.answer) + [self.tok.eos_token_id]
            ids += prompt + answer
            labels += [-100] * len(prompt) + answer
        return ids, labels


def build_isolated(builder: SequenceBuilder, turns: list[Turn]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Every turn packed right after the image, as a lone question is at evaluation.

    Returns ids, labels, position ids and segments (0: the shared ``<s> USER: <image>``
    prefix, i: turn i). Each turn's positions restart where the image ends, and
    :func:`collate_isolated`'s mask lets a turn see only the prefix and itself, so no answer
    can be read off an earlier turn while one image still serves every question.
    """
    tok = builder.tok
    ids = [tok.bos_token_id, *builder._ids("USER:"), *[builder.image_token_id] * builder.image_tokens]
    start = len(ids)
    labels, positions, segments = [-100] * start, list(range(start)), [0] * start
    for i, turn in enumerate(turns, start=1):
        prompt = builder._ids(f"{turn.question} ASSISTANT:")
        answer = builder._ids(turn.answer) + [tok.eos_token_id]
        ids += prompt + answer
        labels += [-100] * len(prompt) + answer
        positions += range(start, start + len(prompt) + len(answer))
        segments += [i] * (len(prompt) + len(answer))
    return ids, labels, positions, segments


def collate_isolated(batch: list[tuple[list[int], list[int], list[int], list[int]]], pad_id: int
                     ) -> dict[str, torch.Tensor]:
    """Right padding plus a (B, 1, L, L) boolean mask: causal, within a turn or onto the prefix."""
    width = max(len(ids) for ids, *_ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    segments = torch.full((len(batch), width), -1)
    for row, (ids, lab, pos, seg) in enumerate(batch):
        n = len(ids)
        input_ids[row, :n], labels[row, :n] = torch.tensor(ids), torch.tensor(lab)
        positions[row, :n], segments[row, :n] = torch.tensor(pos), torch.tensor(seg)
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal & (k >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no empty softmax)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "attention_mask": mask[:, None]}


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right padding for training (no generation here)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def scene_batch(step: int, batch_size: int, image_size: int, base_seed: int = 0) -> list[SceneSpec]:
    """Training scenes: seeds below the evaluation offset, a fresh set every step."""
    start = base_seed + step * batch_size
    return [sample_scene(start + i, image_size=image_size) for i in range(batch_size)]


def images_tensor(scenes: list[SceneSpec], processor) -> torch.Tensor:
    return processor.image_processor([render(s) for s in scenes], return_tensors="pt")["pixel_values"]
