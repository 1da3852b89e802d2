"""Does a reward pick the images the oracle accepts? Measured on a generator's own samples.

ReNO and best-of-N can only buy prompt following if the reward ranks a generator's samples
the way the oracle would. A reward can read clean renders perfectly and still rank generated
images at random (the first shapes-clip did: within-prompt AUC about 0.5). So the number
that matters is measured on samples: for each prompt, ``samples`` images from different
seeds; the oracle's verdict and the reward for each; then

- ``mean_hit``: the oracle score of one random sample (the plain pipeline);
- ``reward_pick``: the oracle score of the sample the reward ranks first (best-of-N);
- ``oracle_pick``: the score if the oracle itself picked (the ceiling for best-of-N);
- ``auc``: over pairs of one accepted and one rejected sample *of the same prompt*, how
  often the reward prefers the accepted one (0.5 = no better than chance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .t2i_eval import summarise, to_uint8
from .t2i_prompts import T2IPrompt, score_image


def within_prompt_auc(rewards: np.ndarray, hits: np.ndarray) -> tuple[float, int]:
    """(P, N) rewards and oracle verdicts -> (P(reward(hit) > reward(miss)) over same-prompt pairs, pair count).

    Ties count one half, as in the Mann-Whitney statistic; NaN when no prompt has both kinds.
    """
    rewards, hits = np.asarray(rewards, float), np.asarray(hits, bool)
    if rewards.shape != hits.shape or rewards.ndim != 2:
        raise ValueError(f"rewards and hits must both be (prompts, samples), got {rewards.shape} and {hits.shape}")
    wins, pairs = 0.0, 0
    for r, h in zip(rewards, hits):
        diff = r[h][:, None] - r[~h][None, :]
        wins += float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
        pairs += diff.size
    return (wins / pairs if pairs else float("nan")), pairs


def alignment_summary(prompts: Sequence[T2IPrompt], rewards: np.ndarray, hits: np.ndarray) -> dict[str, Any]:
    """The four numbers of the module docstring, per category where it makes sense."""
    rewards, hits = np.asarray(rewards, float), np.asarray(hits, bool)
    n = hits.shape[1]
    picked = hits[np.arange(len(prompts)), rewards.argmax(1)]
    auc, pairs = within_prompt_auc(rewards, hits)
    return {
        "samples_per_prompt": n,
        "mean_hit": summarise([p for p in prompts for _ in range(n)], hits.reshape(-1)),
        "reward_pick": summarise(prompts, picked),
        "oracle_pick": summarise(prompts, hits.any(1)),
        "auc": auc,
        "pairs": pairs,
    }


@torch.no_grad()
def reward_alignment(pipe: Callable[..., Any], reward: Callable[[torch.Tensor, list[str]], torch.Tensor],
                     prompts: Sequence[T2IPrompt], *, samples: int = 8, seed: int = 1000,
                     call: dict[str, Any] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Generate ``samples`` images per prompt (seeds ``seed``..), score each by oracle and reward, summarise."""
    call = dict(call or {})
    rewards = np.zeros((len(prompts), samples))
    hits = np.zeros((len(prompts), samples), bool)
    jobs = [(i, s) for s in range(samples) for i in range(len(prompts))]
    for start in tqdm(range(0, len(jobs), batch_size), desc="reward alignment", leave=False):
        chunk = jobs[start : start + batch_size]
        texts = [prompts[i].text for i, _ in chunk]
        generators = [torch.Generator().manual_seed(seed + s) for _, s in chunk]
        images = pipe(texts, generator=generators, output_type="pt", **call).images.float()
        scores = reward(images, texts).float().cpu().numpy()
        for (i, s), r, img in zip(chunk, scores, to_uint8(images)):
            rewards[i, s], hits[i, s] = r, score_image(prompts[i], img)
    return alignment_summary(prompts, rewards, hits)
