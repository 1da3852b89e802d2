"""A MAR-style text-to-image generator over continuous tokens, built from standard parts.

There is no such model in transformers or diffusers, so this is the smallest one the
``continuous_ar`` adapter understands: a diffusers ``AutoencoderKL`` whose latents (times its
scaling factor) are the tokens, one per latent pixel in raster order; a transformers
``LlamaModel`` over ``[bos, caption..., <boi>]`` followed by the tokens (entering through the
head's ``token_in``), with the null caption ``[bos, <boi>]`` as the unconditional row; and a
per-token ``DiffusionHead`` conditioned on the backbone's hidden state, sampled with a
diffusers ``DDPMScheduler``'s noise schedule respaced to a number of steps chosen per call.
On disk::

    folder/continuous_ar.json   grid, token size, <boi> id, image size, where the VAE is
    folder/backbone/            LlamaModel + tokenizer
    folder/head/                DiffusionHead
    folder/scheduler/           DDPMScheduler config
    folder/<vae>/               AutoencoderKL (a relative path: target and draft share one)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError

CONFIG_NAME = "continuous_ar.json"


@dataclass(frozen=True)
class ContinuousARConfig:
    grid: tuple[int, int]
    token_dim: int
    boi_token_id: int
    image_size: int
    vae: str = "vae"  # folder of the AutoencoderKL, relative to the model folder
    null_caption: bool = True

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class ContinuousARModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, vae: nn.Module, scheduler: Any, tokenizer: Any,
                 config: ContinuousARConfig) -> None:
        super().__init__()
        self.backbone, self.head, self.vae = backbone, head, vae
        self.scheduler, self.tokenizer, self.config = scheduler, tokenizer, config
        if head.config.cond_dim != backbone.config.hidden_size or head.config.token_dim != config.token_dim:
            raise ValueError(f"head (cond {head.config.cond_dim}, token {head.config.token_dim}) does not fit the "
                             f"backbone width {backbone.config.hidden_size} / token size {config.token_dim}")

    @staticmethod
    def is_folder(path: str | Path) -> bool:
        return (Path(path) / CONFIG_NAME).is_file()

    @classmethod
    def from_pretrained(cls, path: str | Path, **backbone_kwargs: Any) -> ContinuousARModel:
        from diffusers import AutoencoderKL, DDPMScheduler
        from transformers import AutoModel, AutoTokenizer

        from .head import DiffusionHead

        path = Path(path)
        raw = json.loads((path / CONFIG_NAME).read_text())
        config = ContinuousARConfig(**{**raw, "grid": tuple(raw["grid"])})
        backbone = AutoModel.from_pretrained(path / "backbone", **backbone_kwargs).eval()
        model = cls(backbone, DiffusionHead.from_pretrained(path / "head").eval(),
                    AutoencoderKL.from_pretrained((path / config.vae).resolve()).eval(),
                    DDPMScheduler.from_pretrained(path / "scheduler"), AutoTokenizer.from_pretrained(path / "backbone"),
                    config)
        model.folder = path
        return model

    def save_pretrained(self, path: str | Path, vae_dir: str | Path | None = None) -> None:
        """Writes everything; the VAE goes to ``config.vae`` unless it already lives there (shared)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path / "backbone", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "backbone")
        self.head.save_pretrained(path / "head", safe_serialization=True)
        head_config = json.loads((path / "head" / "config.json").read_text())
        if head_config.pop("_name_or_path", None) is not None:  # a loaded head's folder on this machine
            (path / "head" / "config.json").write_text(json.dumps(head_config, indent=2, sort_keys=True) + "\n")
        self.scheduler.save_pretrained(path / "scheduler")
        target = (path / self.config.vae).resolve()
        if not (target / "config.json").is_file():
            self.vae.save_pretrained(target, safe_serialization=True)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def vae_fingerprint(self) -> str:
        """Identifies the tokenizer: a draft must read and write the same tokens as its target."""
        digest = hashlib.sha1(json.dumps(dict(self.vae.config), sort_keys=True, default=str).encode())
        for tensor in self.vae.state_dict().values():
            digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
        return digest.hexdigest()

    def prompt_ids(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[bos, caption..., <boi>]`` rows, then the null captions if asked."""
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise InputError("prompts must be a non-empty list of non-empty strings")
        rows = [self.tokenizer(p).input_ids + [self.config.boi_token_id] for p in prompts]
        if unconditional:
            rows += [self.tokenizer("").input_ids + [self.config.boi_token_id] for _ in prompts]
        width, pad = max(len(r) for r in rows), self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, N, token_dim) tokens in raster order (scaled latent means)."""
        latents = self.vae.encode(images.to(self.vae.device)).latent_dist.mean * self.vae.config.scaling_factor
        return latents.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, token_dim) -> (B, 3, H, W) images in [0, 1]."""
        rows, cols = self.config.grid
        if tokens.ndim != 3 or tokens.shape[1:] != (rows * cols, self.config.token_dim):
            raise InputError(f"expected (batch, {rows * cols}, {self.config.token_dim}) tokens, "
                             f"got {tuple(tokens.shape)}")
        latents = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols) / self.vae.config.scaling_factor
        return (self.vae.decode(latents.to(self.vae.device)).sample.float().clamp(-1, 1) + 1) / 2
