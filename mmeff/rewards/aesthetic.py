"""LAION aesthetic predictor: a 5-linear head on the L2-normalised OpenAI CLIP ViT-L/14 image embedding.

The prompt is ignored. The head's weights (``sac+logos+ava1-l14-linearMSE.pth``) are not on
the hub under a fixed id, so ``load`` needs a local path to them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .base import Reward
from .heads import score_mlp
from .registry import register_reward
from .weights import loading, weights_error


@register_reward
class AestheticReward(Reward):
    """Predicted 1-10 aesthetic rating; ReNO ships it with weight 0 (off)."""

    name = "aesthetic"
    offset = 10.0
    default_weight = 0.0
    HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
    CLIP = "openai/clip-vit-large-patch14"

    def __init__(self, clip: CLIPVisionModelWithProjection, head: nn.Sequential) -> None:
        super().__init__()
        self.clip, self.head = clip, head
        self.image_size = int(clip.config.image_size)
        self.freeze()

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check(images, prompts)
        emb = F.normalize(self.clip(pixel_values=self.pixels(images)).image_embeds, dim=-1)
        return self.head(emb).squeeze(-1).float()

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None, clip: str = CLIP) -> AestheticReward:
        """``path``: the local head file (or a folder holding ``sac+logos+ava1-l14-linearMSE.pth``)."""
        if path is None:
            raise weights_error(cls.name, cls.HEAD_FILE, "pass the local path of the LAION aesthetic head")
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / cls.HEAD_FILE
        if not file.is_file():
            raise weights_error(cls.name, str(path), "no such file")
        with loading(cls.name, str(file)):
            state = torch.load(file, map_location="cpu", weights_only=True)
            state = {k.removeprefix("layers."): v for k, v in state.items()}
            head = score_mlp(state["0.weight"].shape[1])
            head.load_state_dict(state)
        with loading(cls.name, clip):
            model = CLIPVisionModelWithProjection.from_pretrained(clip)
        return cls(model, head)._placed(device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0) -> AestheticReward:
        torch.manual_seed(seed)
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=32, patch_size=8, projection_dim=16)
        return cls(CLIPVisionModelWithProjection(config), score_mlp(config.projection_dim))
