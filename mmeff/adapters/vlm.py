"""Shared adapter for LLaVA-style VLMs: vision tower -> projector -> decoder-only LM.

Modules are resolved through transformers' accessors (``get_decoder``) so the 5.x
layout (``model.model.language_model``) and older layouts both work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..errors import InputError, UnsupportedModelError
from .base import Adapter

SUPPORTED_ATTENTION = ("sdpa", "eager")

#: Decoder attention classes whose attention rows :func:`mmeff.token_drop.scoring.query_attention`
#: reproduces: each is checked against the unmodified model's eager ``output_attentions`` in
#: tests/core/test_attention_rows.py. Others are refused by attention-ranked methods.
SCORED_ATTENTION = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen2VLAttention",
                    "Qwen2_5_VLAttention", "Qwen3VLTextAttention", "Gemma3Attention")
#: of those, the classes whose forward applies ``attn_logit_softcapping`` (Gemma 3's config has the field but
#: its attention never passes it on); none yet, Gemma 2-style backbones would go here
SOFTCAPPED_ATTENTION: tuple[str, ...] = ()


@dataclass(frozen=True)
class QKParts:
    """What is needed to recompute one decoder layer's rotary queries and keys."""

    norm: nn.Module
    q_proj: nn.Linear
    k_proj: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int
    apply_rotary: Callable
    scaling: float | None = None  # the layer's softmax scale; None = head_dim ** -0.5
    q_norm: nn.Module | None = None  # per-head norms before the rotation (Qwen3, Gemma 3)
    k_norm: nn.Module | None = None
    softcap: float | None = None  # tanh cap on the logits (Gemma 2-style ``attn_logit_softcapping``)
    window: int | None = None  # sliding window: keys ``k > q - window`` in original token indices


class VLMAdapter(Adapter):
    family = "vlm"
    model_types: ClassVar[tuple[str, ...]] = ()
    #: rows of position ids the decoder's rotary embedding takes: 1, or 3 (t, h, w) for M-RoPE
    position_axes: ClassVar[int] = 1
    #: why vision-side methods (VisionZip, ToMe, MustDrop's merge) are not offered, where they are not
    vision_side_refusal: ClassVar[str | None] = None
    #: what vision-side methods rank by: the ViT's CLS attention ("cls"), or, for towers without a
    #: CLS whose tokens are merged patch blocks, the attention each patch receives ("received")
    vision_signal: ClassVar[str] = "cls"

    def __init__(self, obj: nn.Module, processor: Any = None) -> None:
        super().__init__(obj, processor)
        self.model = obj
        self.language_model = self._resolve_language_model(obj)
        self.layers: nn.ModuleList = self.language_model.layers
        self.rotary_emb: nn.Module = self.language_model.rotary_emb

    @classmethod
    def matches(cls, obj: Any) -> bool:
        config = getattr(obj, "config", None)
        return isinstance(obj, nn.Module) and getattr(config, "model_type", None) in cls.model_types

    @staticmethod
    def _resolve_language_model(model: nn.Module) -> nn.Module:
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        for candidate in (decoder, getattr(model, "language_model", None)):
            if candidate is not None and hasattr(candidate, "layers"):
                return candidate
            inner = getattr(candidate, "model", None)  # older layouts: language_model is a *ForCausalLM
            if inner is not None and hasattr(inner, "layers"):
                return inner
        raise UnsupportedModelError(f"cannot find the decoder layers of {type(model).__name__}")

    def hook_roots(self) -> list[nn.Module]:
        return [self.model]

    # -- facts ---------------------------------------------------------------------------
    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)

    @property
    def attn_implementation(self) -> str:
        return self.text_config._attn_implementation or "eager"

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == self.image_token_id

    def qk_parts(self, layer_idx: int) -> QKParts:
        """The pieces attention-ranked methods recompute rows with; raises for a decoder whose
        attention they have not been checked to reproduce."""
        layer = self.layers[layer_idx]
        attn = layer.self_attn
        cfg = self.text_config
        name = type(attn).__name__
        if name not in SCORED_ATTENTION:
            raise UnsupportedModelError(
                f"attention-ranked token reduction reproduces the attention of {list(SCORED_ATTENTION)}; decoder layer "
                f"{layer_idx} of {type(self.model).__name__} uses {name}, whose scores it has not been checked "
                "against; use a method that does not rank by attention (random_drop) or one of those backbones"
            )
        self.check_full_attention(layer_idx)
        rotary = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
        if rotary is None:
            raise UnsupportedModelError(f"{name} exposes no apply_rotary_pos_emb")
        return QKParts(
            norm=layer.input_layernorm,
            q_proj=attn.q_proj,
            k_proj=attn.k_proj,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
            head_dim=attn.head_dim,
            apply_rotary=rotary,
            scaling=getattr(attn, "scaling", None),
            q_norm=getattr(attn, "q_norm", None),
            k_norm=getattr(attn, "k_norm", None),
            softcap=getattr(attn, "attn_logit_softcapping", None) if name in SOFTCAPPED_ATTENTION else None,
            window=self.attention_window(layer_idx),
        )

    #: the engine reproduces this model's sliding-window layers (checked against the unmodified model)
    sliding_windows_reproduced: ClassVar[bool] = False
    #: the model lets an image's tokens attend to each other both ways when given ``token_type_ids`` (Gemma 3)
    bidirectional_images: ClassVar[bool] = False

    def layer_type(self, layer_idx: int) -> str:
        """``"full_attention"`` or ``"sliding_attention"`` (the decoder config's ``layer_types``)."""
        types = getattr(self.text_config, "layer_types", None)
        return types[layer_idx] if types else "full_attention"

    def attention_window(self, layer_idx: int) -> int | None:
        """The sliding window of decoder layer ``layer_idx`` (keys ``k > q - window``), None for full attention."""
        attn = self.layers[layer_idx].self_attn
        # Qwen2/Gemma-style layers carry their own window (None on full-attention layers); Mistral reads its config's
        if hasattr(attn, "sliding_window"):
            return attn.sliding_window
        return getattr(getattr(attn, "config", None), "sliding_window", None)

    def for_layer(self, value: Any, layer_idx: int) -> Any:
        """A per-layer-type table (rotary cos/sin of local and global layers) resolved for one layer."""
        return value[self.layer_type(layer_idx)] if isinstance(value, dict) else value

    def check_full_attention(self, layer_idx: int) -> None:
        """Raise for a sliding-window layer the engine has not been checked to reproduce."""
        window = self.attention_window(layer_idx)
        if window is not None and not self.sliding_windows_reproduced:
            raise UnsupportedModelError(
                f"decoder layer {layer_idx} of {type(self.model).__name__} uses sliding-window attention "
                f"(window {window}), which token reduction does not reproduce for this model yet"
            )

    def prefill_kwargs(self, input_ids: torch.Tensor) -> dict[str, Any]:
        """What the model's prefill needs beside ids and mask when mmeff drives it (Gemma 3: token types)."""
        return {}

    def check_attention_scoring(self, layers: Sequence[int]) -> None:
        """Raise at ``add_plugin`` if an attention-ranked method could not reproduce these layers' rows."""
        for layer_idx in layers:
            self.qk_parts(layer_idx)

    # -- vision tower --------------------------------------------------------------------
    def _part(self, name: str) -> nn.Module:
        for owner in (self.model, getattr(self.model, "model", None)):
            part = getattr(owner, name, None) if owner is not None else None
            if isinstance(part, nn.Module):
                return part
        raise UnsupportedModelError(f"{type(self.model).__name__} has no {name}")

    @property
    def vision_tower(self) -> nn.Module:
        return self._part("vision_tower")

    @property
    def projector(self) -> nn.Module:
        return self._part("multi_modal_projector")

    @property
    def vision_layers(self) -> nn.ModuleList:
        tower = self.vision_tower
        encoder = getattr(getattr(tower, "vision_model", tower), "encoder", None)
        if encoder is None or not hasattr(encoder, "layers"):
            raise UnsupportedModelError(f"cannot find the encoder layers of {type(tower).__name__}")
        return encoder.layers

    def feature_layer_index(self) -> int:
        """The vision layer whose output becomes the image features (LLaVA: the penultimate)."""
        cfg = self.model.config
        layer, strategy = cfg.vision_feature_layer, cfg.vision_feature_select_strategy
        n = len(self.vision_layers)
        if not isinstance(layer, int) or strategy != "default" or layer == 0 or not -n <= layer <= n:
            raise UnsupportedModelError(
                "vision-side token reduction needs one vision feature layer and the 'default' (CLS dropped) "
                f"strategy; this model has vision_feature_layer={layer!r}, strategy={strategy!r}"
            )
        return n + layer if layer < 0 else layer - 1

    @torch.no_grad()
    def received_scores(self, hidden_states: Sequence[torch.Tensor], feature_layer: int) -> torch.Tensor:
        """(crops, patches): the attention each patch receives (heads averaged, query rows summed, each
        crop on its own) in the vision layer whose output is ``hidden_states[feature_layer]``. The
        ranking signal for towers without a CLS token (VisionZip's Qwen2.5-VL release ranks by it)."""
        from ..token_drop.vision_ops import received_by_crop  # token_drop imports this module

        n = len(self.vision_layers)
        produced = feature_layer % (n + 1)
        if produced == 0:
            raise UnsupportedModelError("the vision features are the patch embeddings; no layer attends to rank by")
        layer = self.vision_layers[produced - 1]
        attn = layer.self_attn
        return received_by_crop(layer.layer_norm1(hidden_states[produced - 1]), attn.q_proj, attn.k_proj,
                                attn.num_heads, attn.scale)

    @property
    def patch_grid(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def normalize_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """The decoder's position ids as ``(position_axes, B, L)``."""
        if position_ids.ndim == 2:
            return position_ids[None].expand(self.position_axes, -1, -1)
        if position_ids.ndim == 3 and position_ids.shape[0] == self.position_axes + 1:
            return position_ids[1:]  # transformers' packed form: a text row in front of the M-RoPE rows
        if position_ids.ndim == 3 and position_ids.shape[0] == self.position_axes:
            return position_ids
        raise InputError(
            f"{type(self.model).__name__} takes position ids of shape (B, L) or ({self.position_axes}, B, L); "
            f"got {tuple(position_ids.shape)}"
        )

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for ``(position_axes, B, L)`` position ids, from the decoder's own rotary module."""
        ids = self.normalize_positions(position_ids)
        ids = ids[0] if self.position_axes == 1 else ids
        return self.rotary_emb(hidden, position_ids=ids)

    def branch_positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill position ids of rows whose mask may hide tokens (padding, or inside the prompt),
        counted over the unmasked tokens, and the (B, 1) offset every decode position adds."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions, torch.zeros_like(positions[:, :1])

    def step_positions(self, attention_mask: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Position ids of the token just appended to ``attention_mask`` (decode), in the decoder's form."""
        positions = attention_mask.long().sum(-1, keepdim=True) - 1 + offset
        return positions if self.position_axes == 1 else positions[None].expand(self.position_axes, -1, -1)

    def describe(self) -> dict[str, Any]:
        cfg = self.text_config
        return {
            "adapter": self.key,
            "model": type(self.model).__name__,
            "layers": self.num_layers,
            "hidden_size": cfg.hidden_size,
            "attention": self.attn_implementation,
        }

    # -- inputs --------------------------------------------------------------------------
    def check_token_counts(self, input_ids: torch.Tensor, model_inputs: dict[str, Any]) -> None:
        """Raise :class:`InputError` if image placeholders and images disagree (subclasses refine)."""
        n_tokens = int(self.image_token_mask(input_ids).sum())
        if model_inputs.get("pixel_values") is None and n_tokens:
            raise InputError(f"the prompt holds {n_tokens} image tokens but no pixel_values were given")

    def check_tokens_per_image(self, input_ids: torch.Tensor, model_inputs: dict[str, Any], per_image: int) -> None:
        """For models with a fixed token count per image (LLaVA-1.5, Gemma 3): placeholders = images x count."""
        pixel_values = model_inputs.get("pixel_values")
        if pixel_values is None:
            return
        n_tokens = int(self.image_token_mask(input_ids).sum())
        expected = pixel_values.shape[0] * per_image
        if n_tokens != expected:
            raise InputError(
                f"{pixel_values.shape[0]} image(s) need {expected} image tokens "
                f"({per_image} each) but input_ids hold {n_tokens}"
            )

    def build_inputs(
        self,
        images: Sequence[Any] | None,
        prompts: Sequence[str],
        *,
        videos: Sequence[Any] | None = None,
        system: str | None = None,
        history: Sequence[Sequence[tuple[str, str]]] | None = None,
        with_images: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Chat template + processor, left padded.

        ``images`` has one entry per prompt: an image, a list of images (several in one
        prompt) or None; ``videos`` likewise holds one list of frames (or None) per prompt,
        for models that take video. ``system`` puts an instruction before the conversation,
        ``history`` gives each row earlier (question, answer) turns (the visuals sit in the
        first one), and ``with_images=False`` builds the same prompts without any visual input.
        """
        if self.processor is None:
            raise InputError("generate() needs a processor: mmeff.wrap(model, processor)")
        if not prompts:
            raise InputError("no prompts given")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InputError(f"prompt {i} is a {type(p).__name__}; prompts must be str (decode bytes first)")
            if not p.strip():
                raise InputError(f"prompt {i} is empty; every prompt must contain text")
        per_image = visual_rows(images, len(prompts), "images", "an image, a list of images or None")
        per_video = visual_rows(videos, len(prompts), "videos", "a list of frames or None")
        if any(per_video) and not self.supports_video:
            raise InputError(f"{type(self.model).__name__} takes no video input; pass frames as images instead")
        if not any(per_image) and not any(per_video) and with_images:
            raise InputError("no image or video given; pass with_images=False for a text-only prompt")
        if history is not None and len(history) != len(prompts):
            raise InputError(f"got {len(history)} histories for {len(prompts)} prompts")
        counts = [(len(im), len(vi)) if with_images else (0, 0) for im, vi in zip(per_image, per_video)]
        texts = [self.chat_prompt(p, system=system, history=history[i] if history else (), images=counts[i][0],
                                  videos=counts[i][1]) for i, p in enumerate(prompts)]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            if not with_images:
                return dict(tokenizer(texts, return_tensors="pt", padding=True))
            pil_rows = [[to_pil(im, i if len(row) == 1 else f"{i}.{j}") for j, im in enumerate(row)]
                        for i, row in enumerate(per_image)]
            pil = pil_rows if self.images_per_prompt and any(pil_rows) else [im for row in pil_rows for im in row]
            clips = [[to_pil(f, f"of video {i}, frame {j}") for j, f in enumerate(clip)]
                     for i, row in enumerate(per_video) for clip in row]
            visual: dict[str, Any] = {"images": pil} if pil else {}
            if clips:
                visual["videos"] = clips
            inputs = self.processor(**visual, text=texts, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = old_side
        return dict(inputs)

    #: whether the processor and model take ``videos`` (lists of frames)
    supports_video: ClassVar[bool] = False
    #: whether the processor takes images as one list per prompt (Gemma 3's) rather than one flat list
    images_per_prompt: ClassVar[bool] = False

    def chat_prompt(self, prompt: str, *, system: str | None = None, history: Sequence[tuple[str, str]] = (),
                    images: int = 1, videos: int = 0) -> str:
        """The model's chat format for one user turn (after optional earlier turns), with
        ``images`` image and ``videos`` video placeholders in the first turn."""
        turns = [*history, (prompt, None)]
        conversation: list[dict[str, Any]] = []
        for i, (question, answer) in enumerate(turns):
            content: list[dict[str, str]] = []
            if i == 0:
                content = [{"type": "image"}] * images + [{"type": "video"}] * videos
            conversation.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
            if answer is not None:
                conversation.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        template = getattr(self.processor, "chat_template", None)
        if system and template and self._renders_system(system):
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
            system = None
        if template:
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        else:
            text = ""
            for i, (question, answer) in enumerate(turns):
                marker = "<image>\n" * images if i == 0 else ""
                text += f"USER: {marker}{question} ASSISTANT:" + ("" if answer is None else f" {answer}</s>")
        # templates without a system role: LLaVA-1.5's own format puts it in front of the first turn
        return f"{system} {text}" if system else text

    def _renders_system(self, system: str) -> bool:
        """Whether the chat template renders a system turn as one (not dropped, refused, or drawn as an
        assistant turn, as LLaVA-1.5's does): checked by rendering, since templates name roles in many ways."""
        def render(role: str) -> str:
            turn = [{"role": role, "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": [{"type": "text", "text": "?"}]}]
            return self.processor.apply_chat_template(turn)

        try:
            as_system = render("system")
            return system in as_system and as_system != render("assistant")
        except Exception:  # noqa: BLE001 -- a template that raises on a system turn has none
            return False

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        return self.processor.batch_decode(token_ids, skip_special_tokens=True)


def visual_rows(items: Sequence[Any] | None, n_prompts: int, name: str, allowed: str) -> list[list[Any]]:
    """One list of visual inputs per prompt from ``items`` (None: no visuals anywhere)."""
    if items is None:
        return [[] for _ in range(n_prompts)]
    if not isinstance(items, (list, tuple)):
        raise InputError(f"{name} must be a list with one entry per prompt ({allowed}); got {type(items).__name__}")
    if len(items) != n_prompts:
        raise InputError(f"got {len(items)} {name} for {n_prompts} prompts; give one entry per prompt ({allowed})")
    if name == "videos":
        rows = [[] if v is None else [list(v)] for v in items]
        for i, row in enumerate(rows):
            if row and not row[0]:
                raise InputError(f"video {i} has no frames")
        return rows
    return [[] if v is None else list(v) if isinstance(v, (list, tuple)) else [v] for v in items]


def to_pil(image: Any, index: int | str = 0) -> Image.Image:
    """Accept PIL images, HWC uint8/float arrays and CHW tensors; reject anything else clearly."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or min(image.shape[:2]) < 1:
            raise InputError(f"image {index} has shape {image.shape}; expected HxWx3 (or HxW) pixels")
        if image.dtype != np.uint8:
            scale = 255.0 if image.max() <= 1.0 else 1.0
            image = np.clip(image * scale, 0, 255).astype(np.uint8)
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, -1)
        return Image.fromarray(image[..., :3])
    raise InputError(f"image {index} is a {type(image).__name__}; expected a PIL image, numpy array or tensor")
