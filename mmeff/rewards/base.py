"""The reward interface ReNO optimises against: images in [0, 1] and prompts in, one score per image out."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from . import ops


class Reward(nn.Module):
    """A frozen, differentiable image-text score (higher is better).

    ReNO turns each reward into a loss ``offset - reward`` weighted by ``default_weight``
    (the constants of ReNO's released code). Subclasses build their modules, then call
    :meth:`freeze`: the reward's own weights never train, and dropout in the score heads
    would make the reward random, so a reward stays in eval mode whatever ``train()`` says.
    """

    name: ClassVar[str]
    offset: ClassVar[float]
    default_weight: ClassVar[float]

    #: preprocessing of this instance: square input side, per-channel mean and std
    image_size: int
    mean: tuple[float, ...] = ops.OPENAI_MEAN
    std: tuple[float, ...] = ops.OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Reward:
        """Always eval: see the class docstring."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> normalised model input, in the model's dtype and on its device (resampled in fp32+)."""
        wide = torch.float64 if images.dtype == torch.float64 else torch.float32
        x = images.to(device=self.device, dtype=wide)
        x = ops.preprocess(x, self.image_size, self.mean, self.std, self.interpolation, self.resize_mode)
        return x.to(self.dtype)

    def check(self, images: torch.Tensor, prompts: list[str]) -> None:
        if isinstance(prompts, str) or len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: need one prompt per image, got {images.shape[0]} images and "
                             f"{1 if isinstance(prompts, str) else len(prompts)} prompts")

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) float in [0, 1], one prompt per image -> rewards (B,), differentiable in images."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None) -> Reward:
        """The released checkpoint (hub id or local path; ``None`` = the default checkpoint)."""
        raise NotImplementedError

    @classmethod
    def tiny(cls, seed: int = 0) -> Reward:
        """A tiny random instance of the same architecture classes, built offline (for tests)."""
        raise NotImplementedError

    def _placed(self, device=None, dtype=None) -> Reward:
        """Move to ``device``/``dtype`` (either may be None) and return self, for ``load``."""
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)
        return self
