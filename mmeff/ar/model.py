"""A LlamaGen-style text-to-image generator built only from standard classes.

A ``LlamaForCausalLM`` (any ``AutoModelForCausalLM``) whose vocabulary is the text tokens
followed by the VQ codebook, and a diffusers ``VQModel`` that turns a grid of codes into
pixels. The sequence is ``[bos, caption..., <boi>, code_1, ..., code_N]`` (codes shifted
by ``code_offset``), in raster order; the unconditional row for classifier-free guidance is
the null caption ``[bos, <boi>]``. On disk::

    folder/ar_image.json   grid, codebook size, code offset, <boi> id, image size
    folder/lm/             save_pretrained of the causal LM and its tokenizer
    folder/vq/             save_pretrained of the VQModel
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError

CONFIG_NAME = "ar_image.json"


@dataclass(frozen=True)
class ARImageConfig:
    grid: tuple[int, int]  # rows x columns of codes
    codebook_size: int
    code_offset: int  # LM id of code 0
    boi_token_id: int  # closes the caption; the first code is predicted after it
    image_size: int
    null_caption: bool = True  # trained with caption dropout, so [bos, <boi>] is a usable unconditional row

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class ARImageModel(nn.Module):
    """Causal LM + VQ decoder, loadable with ``from_pretrained`` like any checkpoint folder."""

    def __init__(self, lm: nn.Module, vq: nn.Module, tokenizer: Any, config: ARImageConfig) -> None:
        super().__init__()
        self.lm, self.vq, self.tokenizer, self.config = lm, vq, tokenizer, config
        vocab = lm.get_input_embeddings().num_embeddings
        if config.code_offset + config.codebook_size > vocab:
            raise ValueError(f"codes {config.code_offset}..{config.code_offset + config.codebook_size} "
                             f"exceed the LM vocabulary ({vocab})")

    @staticmethod
    def is_folder(path: str | Path) -> bool:
        return (Path(path) / CONFIG_NAME).is_file()

    @classmethod
    def from_pretrained(cls, path: str | Path, **lm_kwargs: Any) -> ARImageModel:
        from diffusers import VQModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        raw = json.loads((path / CONFIG_NAME).read_text())
        config = ARImageConfig(**{**raw, "grid": tuple(raw["grid"])})
        lm = AutoModelForCausalLM.from_pretrained(path / "lm", **lm_kwargs).eval()
        vq = VQModel.from_pretrained(path / "vq").eval()
        return cls(lm, vq, AutoTokenizer.from_pretrained(path / "lm"), config)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(path / "lm", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "lm")
        self.vq.save_pretrained(path / "vq", safe_serialization=True)
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def prompt_ids(self, prompts: list[str], unconditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[bos, caption..., <boi>]`` rows (captions first, then null captions if asked)."""
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise InputError("prompts must be a non-empty list of non-empty strings")
        rows = [self.tokenizer(p).input_ids + [self.config.boi_token_id] for p in prompts]
        if unconditional:
            null = self.tokenizer("").input_ids + [self.config.boi_token_id]
            rows += [list(null) for _ in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) code indices -> (B, 3, H, W) images in [0, 1]."""
        rows, cols = self.config.grid
        if codes.ndim != 2 or codes.shape[1] != rows * cols:
            raise InputError(f"expected (batch, {rows * cols}) codes, got {tuple(codes.shape)}")
        channels = self.vq.config.vq_embed_dim or self.vq.config.latent_channels
        z = self.vq.quantize.get_codebook_entry(codes.to(self.vq.device), (codes.shape[0], rows, cols, channels))
        return (self.vq.decode(z, force_not_quantize=True).sample.float().clamp(-1, 1) + 1) / 2
