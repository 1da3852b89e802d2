"""Continuous speculative decoding (Wang et al., 2024): a smaller draft of the same family proposes
``draft_len`` tokens, one target forward verifies them with the density ratio along aligned
denoising trajectories. The loop is ``mmeff.car.speculative.SpeculativeDecoder``; this plugin
loads and checks the draft (same family, same grid and token size, the same VAE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mmeff.car.loop import ContinuousSession, ContinuousStats, HeadSettings
from mmeff.car.speculative import RESAMPLE_MODES, SpeculativeDecoder
from mmeff.errors import ConfigError
from mmeff.plugin import Plugin, PluginConfig, PluginContext
from mmeff.registry import register_plugin


@dataclass
class ContinuousSpecConfig(PluginConfig):
    """``draft``: a folder (or a loaded ``ContinuousARModel``) of the draft; ``draft_len``: tokens per
    verification (8 as released); ``prefill_ratio``: share of tokens the target draws alone first
    (0.15); ``inner_temperature``: std inflation of the last-step densities in the acceptance ratio (42 as
    released); ``max_tries``: acceptance-rejection tries when resampling a rejected token (100);
    ``resample``: how a rejected token is resampled, ``"last_step"`` (as released) or ``"head"``.

    As released (``spec_decode/spec_decode_runner.py`` of MarkXCloud/CSpD): the acceptance ratio is the
    target's over the draft's normalised last-step Gaussian density at the draft token (both stds times
    ``inner_temperature``) times the product, over the earlier head steps and the token's c dimensions, of
    sigma_target / sigma_draft; a rejected token is resampled from ``max(0, p - q / that product)`` with
    ``p``, ``q`` the two heads' last-step Gaussians at their own stds, proposals drawn from ``p``; the head
    adds no noise at its last step and does not clip its x0 prediction (MAR's ``clip_denoised=False``).

    Known differences from the released code:

    - ``resample="head"`` (mmeff's earlier rule, kept as an option): proposals are target-head samples
      from fresh noise and one is kept with probability ``max(0, 1 - 1/r)``, ``r`` the acceptance ratio
      with the draft head run along the proposal's trajectory: a sample of the residual of the two heads'
      token distributions rather than of their last-step Gaussians, at two head runs per proposal.
    - The drafts after a rejected one are discarded (they were conditioned on it); the release resamples
      every rejected token of a round and keeps the accepted ones after it.
    - A resampling that gives up after ``max_tries`` keeps its last proposal (a sample of ``p``); the
      release leaves a zero vector.
    - The head's variance is "fixed small" and the same in every dimension (MAR learns it per
      dimension), so the products over the c dimensions are c-th powers of one std ratio.
    - The scheduler's ``clip_sample`` is ignored by default, as the release never clips;
      ``mmeff.car.sampler.sample_head(..., honour_clip_sample=True)`` applies it as
      ``DDPMScheduler.step`` does.
    """

    draft: Any = field(default=None, metadata={
        "help": "required: folder (or loaded ContinuousARModel) of a smaller model of the same family, grid and VAE"})
    draft_len: int = field(default=8, metadata={
        "help": "tokens the draft proposes per verification, >= 1 (8 as released)"})
    prefill_ratio: float = field(default=0.15, metadata={
        "help": "share of tokens in [0, 1] the target draws alone before drafting starts (0.15 as released)"})
    inner_temperature: float = field(default=42.0, metadata={
        "help": "> 0: std inflation of both heads' last-step densities in the acceptance ratio (42 as released)"})
    max_tries: int = field(default=100, metadata={
        "help": "acceptance-rejection tries when resampling a rejected token, >= 1 (then the last proposal is kept)"})
    resample: str = field(default="last_step", metadata={
        "help": "how a rejected token is resampled: \"last_step\" (as released) or \"head\" (mmeff's earlier rule)"})

    def validate(self) -> None:
        if self.draft is None:
            raise ConfigError("continuous_spec needs draft=<folder of a smaller model of the same family>")
        if isinstance(self.draft_len, bool) or not isinstance(self.draft_len, int) or self.draft_len < 1:
            raise ConfigError(f"draft_len must be an integer >= 1, got {self.draft_len!r}")
        if not 0 <= self.prefill_ratio <= 1:
            raise ConfigError(f"prefill_ratio must be in [0, 1], got {self.prefill_ratio!r}")
        if not self.inner_temperature > 0:
            raise ConfigError(f"inner_temperature must be > 0, got {self.inner_temperature!r}")
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 1:
            raise ConfigError(f"max_tries must be an integer >= 1, got {self.max_tries!r}")
        if self.resample not in RESAMPLE_MODES:
            raise ConfigError(f"resample must be one of {list(RESAMPLE_MODES)}, got {self.resample!r}")


def same_noise_schedule(a: Any, b: Any) -> bool:
    """Aligned trajectories need the same respaced timesteps and the same ``alphas_cumprod`` in both heads."""
    keys = ("timestep_spacing", "steps_offset", "prediction_type")
    return all(a.config.get(k) == b.config.get(k) for k in keys) and \
        a.alphas_cumprod.shape == b.alphas_cumprod.shape and torch.equal(a.alphas_cumprod, b.alphas_cumprod)


@register_plugin
class ContinuousSpecPlugin(Plugin):
    name = "continuous_spec"
    config_cls = ContinuousSpecConfig
    supports = ("continuous_ar",)
    owns = ("image_decode_loop",)
    description = "continuous speculative decoding: a small draft proposes tokens, the target verifies in one pass"
    config: ContinuousSpecConfig

    def check(self, ctx: PluginContext) -> None:
        """Load the draft now and refuse one that cannot stand in for the target's tokens."""
        import mmeff
        from mmeff.car.model import ContinuousARModel

        draft = self.config.draft
        if not isinstance(draft, ContinuousARModel):
            if not ContinuousARModel.is_folder(draft):
                raise ConfigError(f"draft {draft!r} is not a continuous_ar model folder (no continuous_ar.json); "
                                  "the draft must be a smaller model of the same family")
            draft = ContinuousARModel.from_pretrained(draft)
        target = ctx.adapter.obj
        if (draft.config.grid, draft.config.token_dim) != (target.config.grid, target.config.token_dim):
            raise ConfigError(f"draft tokens {draft.config.grid} x {draft.config.token_dim} differ from the "
                              f"target's {target.config.grid} x {target.config.token_dim}")
        if draft.vae_fingerprint() != target.vae_fingerprint():
            raise ConfigError("the draft uses another VAE than the target: its tokens mean something else")
        if not same_noise_schedule(draft.scheduler, target.scheduler):
            raise ConfigError("the draft's head scheduler differs from the target's (betas, timestep spacing or "
                              "prediction type): their denoising trajectories cannot be aligned")
        if draft.config.null_caption != target.config.null_caption:
            raise ConfigError("draft and target must both (or neither) have a null-caption path for guidance")
        self._draft = mmeff.wrap(draft.to(target.device)).adapter

    def attach(self, ctx: PluginContext) -> None:
        self._stats: dict[str, Any] = {}

    def detach(self, ctx: PluginContext) -> None:
        ctx.remove_hooks()

    def decode(self, session: ContinuousSession, settings: HeadSettings, generator: torch.Generator | None,
               stats: ContinuousStats) -> torch.Tensor:
        c = self.config
        decoder = SpeculativeDecoder(self._draft, c.draft_len, c.prefill_ratio, c.inner_temperature, c.max_tries,
                                     c.resample)
        return decoder.decode(session, settings, generator, stats)

    def stats(self) -> dict[str, Any]:
        return {"draft_len": self.config.draft_len, "prefill_ratio": self.config.prefill_ratio,
                "resample": self.config.resample}
