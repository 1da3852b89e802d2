"""ReNO (Eyring et al., NeurIPS'24): optimise a one/few-step text-to-image model's initial noise
against differentiable rewards, then let the unchanged pipeline render the best noise.

The plugin touches no module: at each call it runs the noise search on the adapter's
differentiable path and passes the winner to ``__call__`` as ``latents=`` with the call's
generator rewound to where the pipeline would have left it, so the call keeps diffusers'
signature and return type and zero iterations reproduce the plain pipeline exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from mmeff.errors import ConfigError
from mmeff.memory import PeakMemory, peak_memory
from mmeff.plugin import Plugin, PluginContext
from mmeff.registry import register_plugin

from .config import RenoConfig
from .search import RewardSet, SearchResult, search_noise


@register_plugin
class RenoPlugin(Plugin):
    name = "reno"
    config_cls = RenoConfig
    supports = ("diffusers_t2i", "pixart", "flux")
    owns = ("initial_noise",)
    description = "ReNO: reward-based initial noise optimisation for one/few-step text-to-image models"
    config: RenoConfig

    def __init__(self, config: RenoConfig) -> None:
        super().__init__(config)
        self.rewards: RewardSet | None = None
        self._last: SearchResult | None = None
        self._memory: PeakMemory | None = None

    def check(self, ctx: PluginContext) -> None:
        """Load every reward now, so a missing checkpoint fails at add_plugin, not mid-call."""
        c = self.config
        modules = {}
        for name, weight in c.weights.items():
            if weight == 0:
                continue
            if name in c.reward_models:
                modules[name] = c.reward_models[name]
                continue
            from mmeff.rewards import load_reward

            try:
                modules[name] = load_reward(name, c.reward_paths.get(name))
            except KeyError as err:
                raise ConfigError(str(err.args[0])) from None
        self.rewards = RewardSet(modules, c.weights)

    def attach(self, ctx: PluginContext) -> None:
        pass  # nothing to hook: the plugin only decides the call's initial latents

    def reset(self) -> None:
        self._last, self._memory = None, None

    def pre_call(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        adapter = pipe.adapter
        req = adapter.parse_call((), kwargs)
        if req.generator is None and self.config.seed is not None:
            req.generator = torch.Generator(device=adapter.device).manual_seed(self.config.seed)
        assert self.rewards is not None
        with peak_memory(adapter.device) as memory:
            self._last = search_noise(adapter, req, self.rewards, self.config)
        self._memory = memory
        from mmeff.adapters.t2i_base import restore

        out = dict(kwargs)
        out["latents"] = self._last.noise
        if req.generator is not None:  # the caller's own generator(s), where the pipeline would have left them
            restore(req.generator, self._last.generator_state)
            out["generator"] = req.generator
        return out

    def stats(self) -> dict[str, Any]:
        r, memory = self._last, self._memory
        if r is None or memory is None:
            return {}
        totals = [h["total"] for h in r.history]
        per_reward = {n: [sum(h[n]) / len(h[n]) for h in r.history] for n in (self.rewards.modules if self.rewards
                                                                               else {})}
        best = [totals[it][i] for i, it in enumerate(r.best_iteration)] if totals else []
        return {
            "search": self.config.search,
            "weights": {n: w for n, w in self.config.weights.items() if w},  # the rewards in the objective
            "iterations": r.iterations,
            "reward": [sum(t) / len(t) for t in totals],  # mean total reward per iteration
            "rewards": per_reward,  # mean of each reward per iteration
            "reward_per_image": totals,
            "best_iteration": r.best_iteration,
            "best_reward": best,
            "initial_reward": totals[0] if totals else [],
            "seconds": r.seconds,
            "peak_memory_mb": memory.mb,  # the search's peak: CUDA allocations, or on the CPU the process RSS
            "peak_memory_added_mb": memory.added_mb,  # ... minus what was held when it started
            "peak_memory_kind": memory.kind,
        }
