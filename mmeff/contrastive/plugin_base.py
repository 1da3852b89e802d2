"""Base of every contrastive-decoding plugin: a method is its negative branch and its combination rule.

The plugin attaches no hooks. At each ``pipe.generate`` it builds the negative branch
from the call's inputs and hands ``model.generate`` the shared loop
(:func:`~mmeff.contrastive.decode.contrastive_generate`) as ``custom_generate``, so
transformers still prepares the logits processors (temperature, top-k, top-p) and the
stopping rules. Token-reduction plugins on the same model see the negative rows as
ordinary batch rows, so the negative branch gets the same drop; ``negative_drop=False``
exempts them from the decoder-side stages (vision-side reductions change the image
features both branches share, so they always apply).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapters.vlm import VLMAdapter
from ..errors import ConfigError, InputError
from ..plugin import Plugin, PluginConfig, PluginContext
from ..token_drop.engine import DropEngine
from .decode import Branch, DecodeResult, contrastive_generate
from .ops import contrast


@dataclass
class ContrastiveConfig(PluginConfig):
    """The settings every contrastive method shares."""

    alpha: float = field(default=1.0, metadata={"help": "contrast strength, >= 0 (0 = plain decoding)"})
    beta: float = field(default=0.1, metadata={"help": "plausibility cut-off in (0, 1]: keep p >= beta * max p"})
    separate: bool = field(default=False, metadata={"help": "one cache and forward per branch instead of one batch"})
    negative_drop: bool = field(default=True, metadata={
        "help": "decoder-side token reduction drops the negative rows' tokens too (False: they keep all)"})

    def validate(self) -> None:
        check_alpha(self.alpha, type(self).__name__)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 < self.beta <= 1:
            raise ConfigError(f"{type(self).__name__}.beta must be a number in (0, 1], got {self.beta!r}")
        for name in ("separate", "negative_drop"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{type(self).__name__}.{name} must be True or False, got {getattr(self, name)!r}")


def check_alpha(alpha: Any, owner: str, name: str = "alpha") -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
        raise ConfigError(f"{owner}.{name} must be a number >= 0, got {alpha!r}")


class ContrastivePlugin(Plugin):
    """Subclasses implement :meth:`negative` (and :meth:`combine` if not VCD's rule)."""

    supports = ("llava", "llava_next", "qwen2_vl", "qwen3_vl", "internvl", "llava_onevision", "gemma3")
    owns = ("decode_loop",)
    config: ContrastiveConfig

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__(config)
        self.adapter: VLMAdapter | None = None
        self._results: list[DecodeResult] = []
        self._extra: dict[str, Any] = {}

    def attach(self, ctx: PluginContext) -> None:
        assert isinstance(ctx.adapter, VLMAdapter)
        self.adapter = ctx.adapter

    # -- what a method supplies ---------------------------------------------------------
    def negative(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> Branch | None:
        """The negative branch for this call's (left-padded) positive inputs."""
        raise NotImplementedError

    def combine(self, logits_pos: torch.Tensor, logits_neg: torch.Tensor | None, step: int) -> torch.Tensor:
        return contrast(logits_pos, logits_neg, self.config.alpha)

    def plausibility_beta(self) -> float | None:
        """The plausibility cut the decode loop applies (None: the method picks its own candidates)."""
        return self.config.beta

    def positive(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str]) -> dict[str, Any]:
        """The positive branch's inputs (VDGD rewrites them); the call's inputs by default."""
        return inputs

    # -- wiring -------------------------------------------------------------------------
    def prepare_generate(self, pipe: Any, inputs: dict[str, Any], images: list[Any], prompts: list[str],
                         kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.config.separate:
            drops = [n for n, p in pipe.plugins.items() if p is not self and set(p.owned_stages()) - {"decode_loop"}]
            if drops:
                raise ConfigError(
                    f"{self.name}: separate=True runs the branches as two streams, but {drops} keep one per-call "
                    f"state for the whole batch; use the batched default (separate=False) with token reduction"
                )
        if inputs.get("pixel_values_videos") is not None:
            raise InputError(f"{self.name}: contrastive decoding on video inputs is not supported yet; pass images")
        if "custom_generate" in kwargs:
            raise ConfigError(f"{self.name} owns the decode loop; do not pass custom_generate as well")
        config = kwargs.get("generation_config")
        for option in ("num_beams", "num_return_sequences"):
            value = kwargs.get(option, getattr(config, option, 1) if config is not None else 1)
            if value not in (None, 1):
                raise ConfigError(f"{self.name}: {option}={value} is not supported under contrastive decoding (one "
                                  "greedy or sampled sequence per prompt); remove the plugin for beam search")
        for option in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if kwargs.get(option):
                raise ConfigError(f"{self.name}: {option}=True is not supported under contrastive decoding yet")
        if kwargs.get("streamer") is not None:  # transformers does not hand streamer to a custom_generate callable
            kwargs = {**kwargs, "cd_streamer": kwargs["streamer"]}
            del kwargs["streamer"]
        inputs = self.positive(pipe, inputs, images, prompts)
        negative = self.negative(pipe, inputs, images, prompts)
        if negative is not None:
            negative = negative.to(inputs["input_ids"].device)
            engine = DropEngine.existing(self.adapter)
            if engine is not None and not self.config.negative_drop:
                rows = inputs["input_ids"].shape[0]
                engine.exempt(torch.arange(2 * rows, device=inputs["input_ids"].device) >= rows)
        self._results = []
        return inputs, {
            **kwargs,
            "custom_generate": contrastive_generate,
            "cd_negative": negative,
            "cd_combine": self.combine,
            "cd_beta": self.plausibility_beta(),
            "cd_separate": self.config.separate,
            "cd_result": self._results,
            "cd_adapter": self.adapter,
            "cd_image_grid_thw": inputs.get("image_grid_thw"),
        }

    def reset(self) -> None:
        self._results = []
        self._extra = {}

    def stats(self) -> dict[str, Any]:
        if not self._results:
            return {}
        r = self._results[-1]
        return {
            "forwards": r.forwards,
            "streams": r.streams,
            "rows_per_step": r.rows,
            "prefill_s": r.prefill_s,
            "decode_s": r.decode_s,
            "per_token_s": r.per_token_s,
            **self._extra,
        }

