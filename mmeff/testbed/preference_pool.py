"""Preference pairs for the shapes reward: the generator's own samples, judged by the OpenCV oracle.

HPSv2 and ImageReward are CLIP/BLIP models fine-tuned on *human* choices between generated
images of the same prompt; that is what makes them useful to ReNO: they rank a generator's
samples. In the shapes world the judge is the oracle. So the pool is ``samples`` images from
shapes-sd for each of a set of training prompts (a seed range of its own, and never a
prompt text of the benchmark's evaluation set), each with the oracle's verdict on its own prompt. A pair
is one accepted and one rejected image of the same prompt; a reward fine-tuned to prefer
the first (``preference_loss``) learns to rank samples as the judge does, which a reward
trained on clean renders alone does not (its within-prompt AUC on samples measured
0.47-0.62: :mod:`mmeff.testbed.reward_alignment`).

The pool also keeps the oracle's detections of every sample, so that each sample, accepted or
not, can be described truthfully (:func:`~.t2i_prompts.describe`) and used in a contrastive loss
against its prompt and its description (``described_loss``): at one step and guidance 1, 3% of
shapes-sd's samples are accepted, so pairs alone leave 97% of the pool unused.

Because the reward is then taught by the same judge that scores the benchmark, a gain
measured with it is partly a gain on the judge's own taste, as with a human-preference
reward evaluated by humans. The evaluation prompts are excluded from the pool and the
ranking check uses other seeds, so what it measures is generalisation to new prompts (of
the same grammar: "a blue star" is held out, "a red star" may be in the pool).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .oracle import Detection, detect
from .t2i_eval import to_uint8
from .t2i_prompts import CATEGORIES, describe, eval_prompts, parse_prompt, sample_prompt, satisfied

POOL_SEED = 40_000_000
#: no pool prompt is a prompt of the benchmarks' evaluation set, ``eval_prompts(8)``
EXCLUDED_EVAL_PER_CATEGORY = 8


@dataclass
class PreferencePool:
    """``images`` (N, H, W, 3) uint8; ``texts`` one prompt per prompt index; ``prompt`` (N,) index; ``hits`` (N,);
    ``detections``: what the oracle found in each image (None for a pool judged by verdicts alone)."""

    images: np.ndarray
    texts: list[str]
    prompt: np.ndarray
    hits: np.ndarray
    detections: list[tuple[Detection, ...]] | None = None

    def pair_prompts(self) -> np.ndarray:
        """Indices of the prompts that have at least one accepted and one rejected sample."""
        accepted = np.bincount(self.prompt[self.hits], minlength=len(self.texts))
        rejected = np.bincount(self.prompt[~self.hits], minlength=len(self.texts))
        return np.flatnonzero((accepted > 0) & (rejected > 0))

    def sample_pairs(self, n: int, rng: random.Random) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``n`` (prompt, accepted image, rejected image) triples, prompts drawn with replacement."""
        usable = self.pair_prompts()
        if len(usable) == 0:
            raise ValueError("the preference pool has no prompt with both an accepted and a rejected sample")
        texts, good, bad = [], [], []
        for _ in range(n):
            p = int(usable[rng.randrange(len(usable))])
            rows = np.flatnonzero(self.prompt == p)
            texts.append(self.texts[p])
            good.append(self.images[rng.choice(rows[self.hits[rows]].tolist())])
            bad.append(self.images[rng.choice(rows[~self.hits[rows]].tolist())])
        return texts, np.stack(good), np.stack(bad)

    def described_batch(self, prompts: int, per_prompt: int, rng: random.Random
                        ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``per_prompt`` samples of each of ``prompts`` random pool prompts, the texts, and which text each satisfies.

        The texts are every sample's own prompt and one true description of it (:func:`describe`,
        never an evaluation prompt's text, as the pool's prompts never are);
        ``positive[i, j]`` is the oracle's rule applied to sample i's detections and text j, so
        a text that happens to fit another sample of the batch counts as its positive too.
        Every sample, accepted or not, teaches something: a rejected sample is told apart from
        the prompt it missed and tied to what it does show.
        """
        if self.detections is None:
            raise ValueError("this pool holds no detections (built by an older version); delete it to rebuild")
        rows: list[int] = []
        for p in rng.sample(range(len(self.texts)), min(prompts, len(self.texts))):
            members = np.flatnonzero(self.prompt == p).tolist()
            rows += rng.sample(members, min(per_prompt, len(members)))
        texts: list[str] = []
        for r in rows:
            texts.append(self.texts[self.prompt[r]])
            true = describe(list(self.detections[r]), rng, excluded_texts())
            if true is not None:
                texts.append(true.text)
        texts = list(dict.fromkeys(texts))
        structured = [parse_prompt(t) for t in texts]
        positive = np.array([[satisfied(p, list(self.detections[r])) for p in structured] for r in rows], bool)
        return self.images[rows], texts, positive

    def save(self, path: Path) -> None:
        torch.save({"images": torch.from_numpy(self.images), "texts": self.texts,
                    "prompt": torch.from_numpy(self.prompt), "hits": torch.from_numpy(self.hits),
                    "detections": self.detections}, path)

    @classmethod
    def load(cls, path: Path) -> PreferencePool:
        d = torch.load(path, weights_only=False)
        return cls(d["images"].numpy(), d["texts"], d["prompt"].numpy(), d["hits"].numpy(), d.get("detections"))

    def summary(self) -> dict[str, Any]:
        return {"prompts": len(self.texts), "images": len(self.hits), "accepted": float(self.hits.mean()),
                "prompts_with_pairs": int(len(self.pair_prompts()))}


@cache
def excluded_texts() -> frozenset[str]:
    """The evaluation prompts' texts: no pool prompt and no description of a pool sample is one of them."""
    return frozenset(p.text for p in eval_prompts(EXCLUDED_EVAL_PER_CATEGORY))


def pool_prompt_texts(per_category: int, seed: int) -> list[str]:
    """Up to ``per_category`` distinct training prompts per category, none of them an evaluation prompt.

    Balanced by category because the generator's samples pass the oracle mostly for the easy
    categories, and pairs need both verdicts: a pool of 600 prompts drawn from the training
    mix had 0.4% of its samples accepted and 23 prompts with both verdicts. Categories the grammar has few
    prompts for give what is left after the exclusion (``single_object``: none, all six are
    evaluation prompts; ``counting``: 4 of 12).
    """
    excluded = excluded_texts()
    rng = random.Random(POOL_SEED + seed)
    out: list[str] = []
    for category in CATEGORIES:
        seen: list[str] = []
        for _ in range(200 * per_category):
            if len(seen) == per_category:
                break
            text = sample_prompt(rng, category).text
            if text not in excluded and text not in seen:
                seen.append(text)
        out += seen
    return out


@torch.no_grad()
def build_pool(pipe: Any, per_category: int, samples: int, call: dict[str, Any], seed: int = 0,
               batch_size: int = 128) -> PreferencePool:
    """Generate ``samples`` images per pool prompt with ``pipe(**call)`` and judge each with the oracle."""
    texts = pool_prompt_texts(per_category, seed)
    structured = [parse_prompt(t) for t in texts]
    jobs = [(i, s) for i in range(len(texts)) for s in range(samples)]
    images, hits, detections = [], [], []
    for start in tqdm(range(0, len(jobs), batch_size), desc="preference pool", leave=False):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(POOL_SEED + seed * 1_000_003 + i * samples + s) for i, s in chunk]
        out = pipe([texts[i] for i, _ in chunk], generator=generators, output_type="pt", **call).images
        for (i, _), img in zip(chunk, to_uint8(out)):
            found = detect(img)
            images.append(img)
            detections.append(tuple(found))
            hits.append(satisfied(structured[i], found))
    prompt = np.array([i for i, _ in jobs])
    return PreferencePool(np.stack(images), texts, prompt, np.array(hits, bool), detections)


def soft_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE along rows: the mean over rows with a positive of -log p(positives), shared equally.

    Rows without any positive (an image the oracle found nothing in) carry no target and are left out."""
    has = positive.any(1)
    if not has.any():
        return logits.sum() * 0
    pos = positive[has].float()
    return -(F.log_softmax(logits[has], 1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()


def described_loss(scale: torch.Tensor, images: torch.Tensor, texts: torch.Tensor,
                   positive: torch.Tensor) -> torch.Tensor:
    """Both directions of ``soft_nce`` on (I, D) image and (T, D) text embeddings, positives (I, T) by the oracle.

    Text to image is the best-of-N question itself: which of these samples fits this prompt."""
    logits = scale * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    return (soft_nce(logits, positive) + soft_nce(logits.T, positive.T)) / 2


def preference_loss(scale: torch.Tensor, good: torch.Tensor, bad: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """HPSv2's pair loss: cross-entropy of choosing the accepted image, logits = scale * cosine to the prompt.

    ``good``, ``bad``, ``text``: (P, D) embeddings, not yet normalised; ``scale`` = CLIP's logit scale.
    """
    t = F.normalize(text, dim=-1)
    logits = scale * torch.stack([(F.normalize(good, dim=-1) * t).sum(-1), (F.normalize(bad, dim=-1) * t).sum(-1)], 1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
