"""PickScore: a CLIP-H/14 fine-tuned on Pick-a-Pic preferences, run through transformers' ``CLIPModel``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from . import ops
from .base import Reward
from .registry import register_reward
from .weights import loading


def embedding(out: torch.Tensor | object) -> torch.Tensor:
    """transformers 5.x ``get_*_features`` return ``BaseModelOutputWithPooling`` (projected in ``.pooler_output``);
    4.x returned the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register_reward
class PickScoreReward(Reward):
    """``logit_scale.exp() · cos`` (about 100·cos), as ReNO scores it."""

    name = "pickscore"
    offset = 30.0
    default_weight = 0.05
    DEFAULT = "yuvalkirstain/PickScore_v1"
    PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    MAX_LENGTH = 77

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, max_length: int = MAX_LENGTH,
                 mean: tuple[float, ...] = ops.OPENAI_MEAN, std: tuple[float, ...] = ops.OPENAI_STD) -> None:
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.image_size = int(model.config.vision_config.image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.freeze()

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check(images, prompts)
        img = F.normalize(embedding(self.model.get_image_features(pixel_values=self.pixels(images))), dim=-1)
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        with torch.no_grad():
            txt = embedding(self.model.get_text_features(input_ids=tokens.input_ids,
                                                         attention_mask=tokens.attention_mask))
            txt = F.normalize(txt, dim=-1)
        return (self.model.logit_scale.exp() * (img * txt).sum(-1)).float()

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None,
             processor: str = PROCESSOR) -> PickScoreReward:
        """``path``: the PickScore hub id or a local folder; ``processor``: where tokenizer and pixel stats live."""
        from transformers import AutoTokenizer, CLIPImageProcessor

        source = path or cls.DEFAULT
        with loading(cls.name, source):
            model = CLIPModel.from_pretrained(source)
        with loading(cls.name, processor):
            tokenizer = AutoTokenizer.from_pretrained(processor)
            pixels = CLIPImageProcessor.from_pretrained(processor)
        max_length = min(cls.MAX_LENGTH, model.config.text_config.max_position_embeddings)  # 77 on PickScore
        return cls(model, tokenizer, max_length, pixels.image_mean, pixels.image_std)._placed(device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0) -> PickScoreReward:
        from ..testing.diffusion import clip_tokenizer

        tok = clip_tokenizer()
        text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": tok.model_max_length,
                "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "image_size": 32, "patch_size": 8}
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        return cls(model, tok, tok.model_max_length)
