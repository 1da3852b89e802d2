"""ImageReward v1.0: BLIP ViT-L image tokens, a BERT that reads the prompt while cross-attending to them,
and a 5-linear head on the [CLS] output, normalised with the release's score statistics.

Built from transformers' BLIP classes: ``BlipVisionModel`` is BLIP's ViT (fused qkv, pre-norm,
final LayerNorm on all tokens) and ``BlipTextModel`` is BLIP's ``med`` BERT with a cross-attention
block in every layer (``is_decoder=True`` in the config builds it; the forward runs bidirectionally).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel, PreTrainedTokenizerBase

from .base import Reward
from .heads import score_mlp
from .imagereward_keys import released_to_modules
from .registry import register_reward
from .weights import loading, resolve_file


def release_configs() -> tuple[BlipVisionConfig, BlipTextConfig]:
    """BLIP ViT-L/16 at 224 px (BLIP's ``create_vit('large')``); BLIP's ``med_config.json``, encoder width 1024."""
    vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6)
    text = BlipTextConfig(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
                          num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512, hidden_act="gelu",
                          layer_norm_eps=1e-12, is_decoder=True, pad_token_id=0)
    return vision, text


def tiny_configs(tokenizer: PreTrainedTokenizerBase) -> tuple[BlipVisionConfig, BlipTextConfig]:
    """Different vision and text widths, so a cross-attention built with the wrong width fails loudly.

    ``initializer_range`` is raised from BLIP's 1e-10 (weights are always loaded there), else the
    random vision tower is constant and the image gradient vanishes.
    """
    vision = BlipVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6,
                              initializer_range=0.02)
    text = BlipTextConfig(vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=48, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40, hidden_act="gelu",
                          layer_norm_eps=1e-12, is_decoder=True, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                          sep_token_id=tokenizer.sep_token_id)
    return vision, text


@register_reward
class ImageReward(Reward):
    """``(mlp(text_encoder(prompt | image)[CLS]) - 0.1672) / 1.0333``: ImageReward's normalised score."""

    name = "imagereward"
    offset = 2.0
    default_weight = 1.0
    REPO, FILE, TOKENIZER = "THUDM/ImageReward", "ImageReward.pt", "bert-base-uncased"
    SCORE_MEAN, SCORE_STD = 0.16717362830052426, 1.0333394966054072
    MAX_LENGTH = 35

    def __init__(self, vision: BlipVisionModel, text: BlipTextModel, head: nn.Sequential,
                 tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.vision, self.text, self.head, self.tokenizer = vision, text, head, tokenizer
        self.image_size = int(vision.config.image_size)
        self.freeze()

    @classmethod
    def build(cls, vision: BlipVisionConfig, text: BlipTextConfig, tokenizer: PreTrainedTokenizerBase) -> ImageReward:
        return cls(BlipVisionModel(vision), BlipTextModel(text, add_pooling_layer=False), score_mlp(text.hidden_size),
                   tokenizer)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check(images, prompts)
        image_tokens = self.vision(pixel_values=self.pixels(images)).last_hidden_state
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.MAX_LENGTH,
                                return_tensors="pt").to(self.device)
        # every image token is attended to, so no encoder mask (an all-ones mask is the same)
        out = self.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                        encoder_hidden_states=image_tokens).last_hidden_state
        score = self.head(out[:, 0]).squeeze(-1)
        return ((score - self.SCORE_MEAN) / self.SCORE_STD).float()

    def load_released(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in the released ``ImageReward.pt`` layout (every module key must be there)."""
        self.load_state_dict(released_to_modules(state), strict=True)

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None, tokenizer: str = TOKENIZER) -> ImageReward:
        """``path``: the hub repo (default ``THUDM/ImageReward``), a folder with ``ImageReward.pt``, or the file.

        BLIP adds ``[DEC]``/``[ENC]`` to bert-base-uncased (ids 30522/30523); prompts never contain them,
        so the plain ``tokenizer`` gives the same ids.
        """
        from transformers import BertTokenizer

        file = resolve_file(cls.name, path or cls.REPO, cls.FILE)
        with loading(cls.name, tokenizer):
            tok = BertTokenizer.from_pretrained(tokenizer)
        with loading(cls.name, str(file)):
            state = torch.load(file, map_location="cpu", weights_only=True)
            reward = cls.build(*release_configs(), tok)
            reward.load_released(state.get("state_dict", state))
        return reward._placed(device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0) -> ImageReward:
        from ..testing.rewards import bert_tokenizer

        tok = bert_tokenizer()
        torch.manual_seed(seed)
        return cls.build(*tiny_configs(tok), tok)
