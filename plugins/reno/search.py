"""The noise search itself: ReNO's gradient loop and the best-of-N control, on any T2I adapter.

Both evaluate ``iterations`` candidate noises with the same reward and keep each image's
best; they differ only in where the next candidate comes from (a Nesterov SGD step on the
reward, or a fresh Gaussian draw), which is what makes best-of-N the honest control.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from mmeff.adapters.t2i_base import T2IAdapter, T2IRequest, rewind, snapshot

from .config import RenoConfig
from .ops import chi_regulariser, clip_rows_, reward_loss

#: seeds the best-of-N candidates after the first (the first is the call's own noise)
RANDOM_SEARCH_SEED = 1_000_003


@dataclass
class SearchResult:
    noise: torch.Tensor  # best noise per image, in the pipeline's dtype: hand to __call__ as latents=
    generator_state: Any  # the call's generator(s) right after the initial noise was drawn
    best_iteration: list[int]
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per iteration
    seconds: float = 0.0

    @property
    def iterations(self) -> int:
        return len(self.history)


class RewardSet:
    """Named reward modules with their weights and offsets; scores images in one place."""

    def __init__(self, modules: dict[str, Any], weights: dict[str, float]) -> None:
        self.modules = {n: m for n, m in modules.items() if weights[n] > 0}
        self.weights = {n: weights[n] for n in self.modules}
        self.offsets = {n: float(m.offset) for n, m in self.modules.items()}

    def to(self, device: torch.device) -> RewardSet:
        for m in self.modules.values():
            m.to(device)
        return self

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Each reward sees the images in [0, 1]; rewards resample and cast them to their own dtype."""
        return {name: module(images, prompts) for name, module in self.modules.items()}

    def total(self, rewards: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted reward per image (what keep-best and ``reward_target`` compare)."""
        return sum(self.weights[n] * r.detach().float() for n, r in rewards.items())


def search_noise(adapter: T2IAdapter, req: T2IRequest, rewards: RewardSet, config: RenoConfig,
                 on_iteration: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> SearchResult:
    """Optimise (or sample) the initial noise of one call; returns the best noise per image.

    ``on_iteration(it, candidate_noise, images)`` sees every evaluated candidate (benchmarks
    score the intermediate images with the oracle; tests check the update rule).
    """
    start = time.perf_counter()
    noise0 = adapter.initial_noise(req)  # consumes the call's generator as __call__ would
    if req.generator is None and config.iterations > 0:
        # ReNO fixes the scheduler noise across iterations; without a generator, seed one from the global RNG
        req.generator = torch.Generator(device=adapter.device).manual_seed(
            int(torch.randint(0, 2**62, (), dtype=torch.int64)))
    state = snapshot(req.generator)
    result = SearchResult(noise0.detach().clone(), state, [0] * req.batch_size)
    if config.iterations == 0:
        return result
    embeds = adapter.encode(req)
    rewards.to(adapter.device)
    master = noise0.detach().float().clone().requires_grad_(config.search == "gradient")
    optimizer = torch.optim.SGD([master], lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    best = torch.full((req.batch_size,), float("inf"))
    seeds = _row_seeds(req)
    bar = tqdm(range(config.iterations), desc="reno", disable=not config.progress, leave=False)
    with adapter.differentiable(config.gradient_checkpointing):
        for it in bar:
            candidate = master if config.search == "gradient" or it == 0 else _fresh_noise(noise0, seeds, it)
            with _autocast(config.precision, adapter.device), \
                    contextlib.nullcontext() if config.search == "gradient" else torch.no_grad():
                images = adapter.render(candidate.to(noise0.dtype), embeds, req, rewind(req.generator, state),
                                        decode_chunk=config.decode_chunk)
                scores = rewards(images, req.prompts)
            if on_iteration is not None:
                on_iteration(it, candidate.detach().clone(), images.detach())
            loss = reward_loss(scores, rewards.weights, rewards.offsets)
            _keep_best(result, best, loss.detach().float().cpu(), candidate, it)
            total = rewards.total(scores)
            result.history.append(_record(it, scores, total, result.best_iteration))
            bar.set_postfix(reward=f"{total.mean().item():.3f}")
            if config.reward_target is not None and bool((total >= config.reward_target).all()):
                break
            if config.search != "gradient" or it == config.iterations - 1:
                continue  # the last evaluation is not followed by an update, as released
            objective = loss + config.reg_weight * chi_regulariser(master)
            optimizer.zero_grad(set_to_none=True)
            objective.sum().backward()  # per-image terms: images do not interact
            clip_rows_(master.grad, config.grad_clip)
            optimizer.step()
    result.seconds = time.perf_counter() - start
    return result


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "pipeline":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _row_seeds(req: T2IRequest) -> list[int]:
    """One seed per image for the best-of-N draws, from that image's own generator, so an image's
    candidates depend on its seed and not on its batch."""
    g = req.generator
    gens = g if isinstance(g, list) else [g] * req.batch_size
    return [_state_seed(x) * RANDOM_SEARCH_SEED + row * (not isinstance(g, list)) for row, x in enumerate(gens)]


def _state_seed(generator: torch.Generator) -> int:
    """A seed from the generator's *current* state, read without drawing from it: the same seed gives the
    same candidates, and a generator reused over calls (its state moved on) gives new ones, where its
    ``initial_seed()`` would repeat the same N - 1 candidates every call."""
    digest = hashlib.sha256(generator.get_state().cpu().numpy().tobytes()).digest()
    return int.from_bytes(digest[:7], "little")


def _fresh_noise(like: torch.Tensor, seeds: list[int], iteration: int) -> torch.Tensor:
    """Candidate ``iteration`` of best-of-N: N(0, I) per image (packed layouts are permutations of it)."""
    rows = [torch.randn(like.shape[1:], generator=torch.Generator().manual_seed((s + iteration) % 2**63))
            for s in seeds]
    return torch.stack(rows).to(like.device, torch.float32)


def _keep_best(result: SearchResult, best: torch.Tensor, loss: torch.Tensor, candidate: torch.Tensor, it: int) -> None:
    """Strictly lower reward loss replaces the stored noise (ties keep the earlier, so iteration 0 wins
    when nothing improves)."""
    better = loss < best
    if not bool(better.any()):
        return
    best[better] = loss[better]
    rows = better.nonzero().flatten().tolist()
    noise = candidate.detach().to(result.noise.dtype)
    for r in rows:
        result.noise[r] = noise[r]
        result.best_iteration[r] = it


def _record(it: int, scores: dict[str, torch.Tensor], total: torch.Tensor, best: list[int]) -> dict[str, Any]:
    return {
        "iteration": it,
        "best_iteration": list(best),  # the kept iterate per image after this evaluation
        "total": total.tolist(),
        **{name: value.detach().float().cpu().tolist() for name, value in scores.items()},
    }
