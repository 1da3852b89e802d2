"""Drop vision tokens between decoder layers, in prefill and in every decode step.

The engine owns what every in-LLM token-drop method shares: it records the image-token
mask at the model's top-level forward, and before each decoder layer it swaps in the
hidden states, rotary cos/sin, position ids and attention mask of the current *layout*
(which tokens are still present). A method only supplies a :class:`Selector` that, at a
stage boundary, says which image tokens to keep.

Hooks touch only stable boundaries: the top-level forward's keyword arguments and each
decoder layer's inputs (``hidden_states``, ``attention_mask``, ``position_embeddings``,
``position_ids``). Each layer's ``DynamicCache`` entry simply ends up shorter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache

from ..adapters.vlm import SUPPORTED_ATTENTION, VLMAdapter
from ..errors import ConfigError, InputError
from ..hooks import ModelHook
from ..plugin import PluginContext
from .ops import causal_mask, compact_positions, gather_tokens, left_pad_indices

PositionMode = Literal["compact", "keep"]


@dataclass
class Layout:
    """Which original tokens are present from some layer on (rows left padded)."""

    idx: torch.Tensor  # (B, L_s) indices into the full-forward sequence
    valid: torch.Tensor  # (B, L_s) False for re-padding slots
    key_valid: torch.Tensor  # (B, L_s) valid and not padding in the user's attention mask
    image: torch.Tensor  # (B, L_s) slot holds an image token
    positions: torch.Tensor  # (B, L_s) position ids from this layout on
    shift: torch.Tensor  # (B,) decode positions move back by this much
    original: bool = False
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
    mask: Any = None
    mask_built: bool = False

    @property
    def image_counts(self) -> torch.Tensor:
        return (self.image & self.valid).sum(-1)


@dataclass
class SelectionInput:
    """What a selector sees at a stage boundary (before decoder layer ``layer_idx``)."""

    layer_idx: int
    stage: int
    hidden: torch.Tensor  # (B, L_cur, D) input of layer ``layer_idx``
    layout: Layout
    query_slot: torch.Tensor  # (B,) slot of each row's last (non-pad) prompt token in the current layout
    cos_sin: tuple[torch.Tensor, torch.Tensor]  # rotary tables of the current layout
    original_image_counts: torch.Tensor  # (B,) image tokens per row before any drop


class Selector(Protocol):
    def __call__(self, inp: SelectionInput) -> torch.Tensor:
        """Return a (B, L_cur) bool mask of image slots to keep."""


@dataclass
class DropState:
    """Per-call state, shared by the engine's hooks and reset at every pipeline call."""

    prompt_ids: torch.Tensor | None = None
    mode: Literal["off", "full", "decode"] = "off"
    full_len: int = 0
    query_index: torch.Tensor | None = None  # (B,) last non-pad prompt token, full-forward coordinates
    layouts: list[Layout] = field(default_factory=list)
    step_positions: torch.Tensor | None = None
    step_tail: torch.Tensor | None = None  # (B, K0 - full_len) validity of keys added since prefill
    step: int = 0
    decode_cache: dict[int, tuple] = field(default_factory=dict)
    forward_calls: int = 0


class DropEngine:
    """Attach with :meth:`attach`; ``boundaries[s]`` is the first layer of stage ``s + 1``."""

    def __init__(self, selector: Selector, boundaries: tuple[int, ...], position_mode: PositionMode = "compact"):
        self.selector = selector
        self.boundaries = tuple(boundaries)
        self.position_mode = position_mode
        self.state = DropState()
        self.adapter: VLMAdapter | None = None

    # -- wiring --------------------------------------------------------------------------
    @staticmethod
    def check(adapter: VLMAdapter, boundaries: tuple[int, ...], plugin: str) -> None:
        if adapter.attn_implementation not in SUPPORTED_ATTENTION:
            raise ConfigError(
                f"{plugin} supports attn_implementation in {SUPPORTED_ATTENTION}; the model uses "
                f"{adapter.attn_implementation!r} (load with attn_implementation='sdpa')"
            )
        bad = [b for b in boundaries if not 1 <= b < adapter.num_layers]
        if bad:
            raise ConfigError(
                f"{plugin} layers {bad} are out of range for a {adapter.num_layers}-layer decoder; "
                f"allowed: 1..{adapter.num_layers - 1}"
            )

    def attach(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        assert isinstance(adapter, VLMAdapter)
        self.adapter = adapter
        stage_of = {}
        for layer_idx in range(self.boundaries[0], adapter.num_layers):
            stage_of[layer_idx] = sum(b <= layer_idx for b in self.boundaries)
        ctx.add_hook(adapter.model, "capture", _CaptureHook(self))
        ctx.add_hook(adapter.language_model, "restore", _RestoreHook(self))
        for layer_idx, stage in stage_of.items():
            boundary = layer_idx in self.boundaries
            ctx.add_hook(adapter.layers[layer_idx], f"layer{layer_idx}", _LayerHook(self, layer_idx, stage, boundary))

    def reset(self) -> None:
        self.state = DropState()

    # -- top-level forward ---------------------------------------------------------------
    def on_model_forward(self, args: tuple, kwargs: dict) -> None:
        st = self.state
        st.forward_calls += 1
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise InputError("token dropping needs input_ids to find the image tokens (inputs_embeds alone hide them)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ConfigError(
                f"token dropping leaves decoder layers with different cache lengths, which needs a DynamicCache; "
                f"got {type(cache).__name__} (do not use cache_implementation='static')"
            )
        past = cache.get_seq_length() if cache is not None else 0
        mask2d = kwargs.get("attention_mask")
        if mask2d is not None and mask2d.ndim != 2:
            raise InputError("token dropping needs a 2D attention_mask (batch, length); got a precomputed 4D mask")
        batch, q_len = input_ids.shape
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = (torch.arange(q_len, device=input_ids.device) + past).expand(batch, -1)
        if past == 0:
            self._start_full(input_ids, mask2d, positions)
        elif st.layouts:
            st.mode = "decode"
            st.step += 1
            st.step_positions = positions
            if mask2d is not None:
                st.step_tail = mask2d[:, st.full_len :].bool()
            else:
                st.step_tail = torch.ones(batch, past + q_len - st.full_len, dtype=torch.bool, device=input_ids.device)
        else:
            st.mode = "off"  # the cache was filled before this plugin was attached

    def _start_full(self, input_ids: torch.Tensor, mask2d: torch.Tensor | None, positions: torch.Tensor) -> None:
        st = self.state
        prompt = st.prompt_ids
        continuing = (
            prompt is not None
            and prompt.shape[0] == input_ids.shape[0]
            and input_ids.shape[1] > prompt.shape[1]
            and torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        )
        if not continuing:
            st.prompt_ids = input_ids.clone()
        prompt_len = st.prompt_ids.shape[1]  # generate(use_cache=False) ranks with the same prompt token
        image = self.adapter.image_token_mask(input_ids)
        valid = torch.ones_like(image)
        key_valid = mask2d.bool() if mask2d is not None else valid
        # last non-pad prompt token per row (left padding: prompt_len - 1; right padding: earlier)
        arange = torch.arange(prompt_len, device=input_ids.device)
        query_index = torch.where(key_valid[:, :prompt_len], arange, -1).amax(-1).clamp(min=0)
        original = Layout(
            idx=torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids),
            valid=valid,
            key_valid=key_valid,
            image=image,
            positions=positions,
            shift=torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device),
            original=True,
        )
        st.mode = "full"
        st.full_len = input_ids.shape[1]
        st.query_index = query_index
        st.layouts = [original] + [None] * len(self.boundaries)  # type: ignore[list-item]
        st.decode_cache = {}

    # -- before each decoder layer -------------------------------------------------------
    def on_layer(self, layer_idx: int, stage: int, boundary: bool, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        st = self.state
        if st.mode == "off":
            return args, kwargs
        hidden = args[0] if args else kwargs["hidden_states"]
        if st.mode == "full" and boundary:
            hidden = self._build_stage(layer_idx, stage, hidden, kwargs)
        layout = st.layouts[stage]
        if layout.original:
            return args, kwargs
        if st.mode == "full":
            cos_sin, mask, positions = layout.cos_sin, self._prefill_mask(layout, hidden), layout.positions
        else:
            cos_sin, mask, positions = self._decode_inputs(stage, layout, hidden)
        kwargs = dict(kwargs, attention_mask=mask, position_embeddings=cos_sin, position_ids=positions)
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _build_stage(self, layer_idx: int, stage: int, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        st = self.state
        cur: Layout = st.layouts[stage - 1]
        cos_sin = kwargs["position_embeddings"] if cur.original else cur.cos_sin
        # the query token is never dropped: find its slot in the current layout
        query_slot = ((cur.idx == st.query_index[:, None]) & cur.valid).long().argmax(-1)
        keep_image = self.selector(
            SelectionInput(
                layer_idx=layer_idx,
                stage=stage,
                hidden=hidden,
                layout=cur,
                query_slot=query_slot,
                cos_sin=cos_sin,
                original_image_counts=st.layouts[0].image_counts,
            )
        )
        keep = cur.valid & (~cur.image | keep_image)
        if torch.equal(keep, cur.valid):
            st.layouts[stage] = cur
            return hidden
        slot_idx, valid = left_pad_indices(keep)
        idx = cur.idx.gather(1, slot_idx)
        slot_idx = slot_idx.to(hidden.device)
        first = st.layouts[0]
        key_valid = first.key_valid.gather(1, idx) & valid
        if self.position_mode == "compact":
            positions, shift = compact_positions(first.positions, idx, valid, first.key_valid)
        else:
            positions = torch.where(valid, first.positions.gather(1, idx), torch.zeros_like(idx))
            shift = torch.zeros_like(first.shift)
        layout = Layout(
            idx=idx,
            valid=valid,
            key_valid=key_valid,
            image=first.image.gather(1, idx) & valid,
            positions=positions,
            shift=shift,
        )
        layout.cos_sin = self.adapter.rotary(hidden, positions.to(hidden.device))
        st.layouts[stage] = layout
        return gather_tokens(hidden, slot_idx)

    def _mask_style(self) -> bool:
        return self.adapter.attn_implementation == "sdpa"

    def _prefill_mask(self, layout: Layout, hidden: torch.Tensor) -> Any:
        if not layout.mask_built:
            if self._mask_style() and bool(layout.key_valid.all()):
                layout.mask = None  # sdpa's is_causal path, as transformers does without padding
            else:
                layout.mask = causal_mask(
                    layout.key_valid.to(hidden.device), layout.idx.shape[1], as_bool=self._mask_style(),
                    dtype=hidden.dtype,
                )
            layout.mask_built = True
        return layout.mask

    def _decode_inputs(self, stage: int, layout: Layout, hidden: torch.Tensor):
        st = self.state
        cached = st.decode_cache.get(stage)
        if cached is not None and cached[0] == st.step:
            return cached[1], cached[2], cached[3]
        positions = (st.step_positions - layout.shift[:, None]).to(hidden.device)
        cos_sin = self.adapter.rotary(hidden, positions)
        q_len = hidden.shape[1]
        key_valid = torch.cat([layout.key_valid, st.step_tail], dim=1).to(hidden.device)
        if self._mask_style() and q_len == 1 and bool(key_valid.all()):
            mask = None
        else:
            mask = causal_mask(key_valid, q_len, as_bool=self._mask_style(), dtype=hidden.dtype)
        st.decode_cache[stage] = (st.step, cos_sin, mask, positions)
        return cos_sin, mask, positions

    def restore_layout(self, hidden: torch.Tensor) -> torch.Tensor:
        """Put the last layer's outputs back at their original positions (dropped ones are zero).

        So logits line up with ``input_ids`` whatever the padding side, and ``logits_to_keep``
        still picks the last token.
        """
        st = self.state
        if st.mode != "full" or st.layouts[-1].original:
            return hidden
        final = st.layouts[-1]
        batch, _, dim = hidden.shape
        target = torch.where(final.valid, final.idx, st.full_len).to(hidden.device)
        restored = hidden.new_zeros(batch, st.full_len + 1, dim)
        restored.scatter_(1, target[..., None].expand(-1, -1, dim), hidden)
        return restored[:, : st.full_len]

    # -- reporting -----------------------------------------------------------------------
    def layer_layouts(self, num_layers: int) -> list[Layout] | None:
        """The layout each decoder layer saw in the last full forward (None before any call)."""
        layouts = self.state.layouts
        if not layouts or any(lay is None for lay in layouts):
            return None
        return [layouts[sum(b <= i for b in self.boundaries)] for i in range(num_layers)]


class _CaptureHook(ModelHook):
    stateful = True

    def __init__(self, engine: DropEngine) -> None:
        self.engine = engine

    def pre_forward(self, module, args, kwargs):
        self.engine.on_model_forward(args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        # layers called outside a captured forward (e.g. the bare language model) pass through
        self.engine.state.mode = "off"
        return output

    def reset_state(self, module) -> None:
        self.engine.reset()


class _RestoreHook(ModelHook):
    def __init__(self, engine: DropEngine) -> None:
        self.engine = engine

    def post_forward(self, module, output):
        output.last_hidden_state = self.engine.restore_layout(output.last_hidden_state)
        return output


class _LayerHook(ModelHook):
    def __init__(self, engine: DropEngine, layer_idx: int, stage: int, boundary: bool) -> None:
        self.engine, self.layer_idx, self.stage, self.boundary = engine, layer_idx, stage, boundary

    def pre_forward(self, module, args, kwargs):
        return self.engine.on_layer(self.layer_idx, self.stage, self.boundary, args, kwargs)
