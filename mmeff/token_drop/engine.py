"""Drop vision tokens between decoder layers, in prefill and in every decode step.

One engine per wrapped model is shared by every token-reduction plugin on it, so methods
compose: a vision-side method (VisionZip, ToMe) contributes a stage before decoder layer 0,
a decoder-side method (PyramidDrop, FastV) stages at deeper layers, and a KV-cache policy
(MustDrop) may rewrite the cache after prefill. Each plugin supplies only a
:class:`Selector` that, at a stage boundary, says which image tokens to keep.

The engine records the image-token mask at the model's top-level forward, and before each
decoder layer it swaps in the hidden states, rotary cos/sin, position ids and attention
mask of the current *layout* (which tokens are still present). Hooks touch only stable
boundaries: the top-level forward's keyword arguments and each decoder layer's inputs
(``hidden_states``, ``attention_mask``, ``position_embeddings``, ``position_ids``). Each
layer's ``DynamicCache`` entry simply ends up shorter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from transformers import DynamicCache

from .. import hooks as _hooks
from ..adapters.vlm import SUPPORTED_ATTENTION, VLMAdapter
from ..errors import ConfigError, InputError
from ..hooks import ModelHook
from .ops import compact_positions, gather_tokens, image_blocks, layout_mask, left_pad_indices, slots_of

PositionMode = Literal["compact", "keep"]
NAMESPACE = "token_drop"
_ATTR = "_mmeff_drop_engine"


@dataclass
class Layout:
    """Which original tokens are present from some layer on (rows left padded)."""

    idx: torch.Tensor  # (B, L_s) indices into the full-forward sequence
    valid: torch.Tensor  # (B, L_s) False for re-padding slots
    key_valid: torch.Tensor  # (B, L_s) valid and not padding in the user's attention mask
    image: torch.Tensor  # (B, L_s) slot holds an image token
    positions: torch.Tensor | None  # (A, B, L_s) position ids (A = 1, or 3 for M-RoPE); set at the decoder's input
    shift: torch.Tensor  # (B,) decode positions move back by this much
    original: bool = False
    cos_sin: Any = None  # (cos, sin), or a table per layer type (Gemma 3's local and global rotary)
    masks: dict[int | None, Any] = field(default_factory=dict)  # prefill mask per sliding window (None: full)

    @property
    def image_counts(self) -> torch.Tensor:
        return (self.image & self.valid).sum(-1)


@dataclass
class SelectionInput:
    """What a selector sees at a stage boundary (before decoder layer ``layer_idx``)."""

    layer_idx: int
    stage: int  # 1-based index among the stages of the selector's owner
    hidden: torch.Tensor  # (B, L_cur, D) input of layer ``layer_idx``
    layout: Layout
    query_slot: torch.Tensor  # (B,) slot of each row's last (non-pad) prompt token in the current layout
    cos_sin: Any  # rotary cos/sin of the current layout (or a table per layer type: ``adapter.for_layer``)
    original_image_counts: torch.Tensor  # (B,) image tokens per row before the owner's first stage
    prev_input: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None  # layer_idx - 1's input


class Selector(Protocol):
    def __call__(self, inp: SelectionInput) -> torch.Tensor:
        """Return a (B, L_cur) bool mask of image slots to keep."""


@dataclass(frozen=True)
class Stage:
    """One drop point: before decoder layer ``boundary``, ``selector`` picks the image tokens to keep."""

    owner: str
    boundary: int
    selector: Selector
    local: int
    position_mode: PositionMode
    priority: int = 1  # stages at the same boundary run in priority order (vision side first)


@dataclass
class DropState:
    """Per-call state, shared by the engine's hooks and reset at every pipeline call."""

    prompt_ids: torch.Tensor | None = None
    mode: Literal["off", "full", "decode"] = "off"
    full_len: int = 0
    query_index: torch.Tensor | None = None  # (B,) last non-pad prompt token, full-forward coordinates
    layouts: list[Layout | None] = field(default_factory=list)
    prev_inputs: dict[int, tuple] = field(default_factory=dict)
    evicted: dict[int, Layout] = field(default_factory=dict)  # layer -> layout its cache was cut down to
    step_positions: torch.Tensor | None = None  # (A, B, q) positions of the tokens fed this decode step
    fallback_positions: torch.Tensor | None = None  # (B, q) what the decoder derives when given none
    step_tail: torch.Tensor | None = None  # (B, K0 - full_len) validity of keys added since prefill
    step: int = 0
    decoded: int = 0  # tokens fed since prefill
    decode_cache: dict[Any, tuple] = field(default_factory=dict)
    forward_calls: int = 0
    exempt_rows: torch.Tensor | None = None  # (B,) rows that keep every image token at decoder-side stages
    deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # (visual mask, per-layer features), Qwen3-VL
    blocks: torch.Tensor | None = None  # (B, full_len) image block ids (Gemma 3's bidirectional image attention)


class DropEngine:
    """The shared engine of one model: get it with :meth:`shared`, add stages per plugin."""

    def __init__(self, adapter: VLMAdapter) -> None:
        self.adapter = adapter
        self.stages: list[Stage] = []
        self.evict_owner: str | None = None
        self.state = DropState()
        self._installed = False

    @classmethod
    def shared(cls, adapter: VLMAdapter) -> DropEngine:
        engine = adapter.__dict__.get(_ATTR)
        if engine is None:
            engine = cls(adapter)
            adapter.__dict__[_ATTR] = engine
        return engine

    @classmethod
    def existing(cls, adapter: VLMAdapter) -> DropEngine | None:
        """The model's engine if a token-reduction plugin created one (never creates it)."""
        return adapter.__dict__.get(_ATTR)

    def exempt(self, rows: torch.Tensor) -> None:
        """For this call only, let ``rows`` (bool, per batch row) keep every image token at the
        decoder-side stages (a contrastive negative branch that should not be reduced)."""
        self.state.exempt_rows = rows

    # -- wiring --------------------------------------------------------------------------
    @staticmethod
    def check(adapter: VLMAdapter, boundaries: tuple[int, ...], plugin: str, *, lowest: int = 1) -> None:
        if adapter.attn_implementation not in SUPPORTED_ATTENTION:
            raise ConfigError(
                f"{plugin} supports attn_implementation in {SUPPORTED_ATTENTION}; the model uses "
                f"{adapter.attn_implementation!r} (load with attn_implementation='sdpa')"
            )
        for layer_idx in range(adapter.num_layers):
            adapter.check_full_attention(layer_idx)
        bad = [b for b in boundaries if not lowest <= b < adapter.num_layers]
        if bad:
            raise ConfigError(
                f"{plugin} layers {bad} are out of range for a {adapter.num_layers}-layer decoder; "
                f"allowed: {lowest}..{adapter.num_layers - 1}"
            )

    def add_stages(
        self, owner: str, boundaries: tuple[int, ...], selector: Selector, *,
        position_mode: PositionMode = "compact", priority: int = 1,
    ) -> None:
        self.remove_owner(owner)
        new = [Stage(owner, b, selector, i + 1, position_mode, priority) for i, b in enumerate(boundaries)]
        self.stages = sorted(self.stages + new, key=lambda s: (s.boundary, s.priority))
        self._install()

    def set_evict(self, owner: str) -> None:
        """After prefill, cut every dropping layer's KV cache down to the last layout (MustDrop's policy)."""
        self.evict_owner = owner
        self._install()

    def remove_owner(self, owner: str) -> None:
        self.stages = [s for s in self.stages if s.owner != owner]
        if self.evict_owner == owner:
            self.evict_owner = None
        if not self.stages and self.evict_owner is None:
            self._uninstall()
        self.reset()

    def _install(self) -> None:
        if self._installed:
            return
        adapter = self.adapter
        _hooks.add_hook(adapter.model, f"{NAMESPACE}/capture", _CaptureHook(self))
        _hooks.add_hook(adapter.language_model, f"{NAMESPACE}/restore", _RestoreHook(self))
        for layer_idx, layer in enumerate(adapter.layers):
            _hooks.add_hook(layer, f"{NAMESPACE}/layer{layer_idx}", _LayerHook(self, layer_idx))
        self._installed = True

    def _uninstall(self) -> None:
        if self._installed:
            _hooks.remove_all(self.adapter.model, f"{NAMESPACE}/")
            self._installed = False

    def reset(self) -> None:
        self.state = DropState()

    @property
    def boundaries(self) -> tuple[int, ...]:
        return tuple(s.boundary for s in self.stages)

    def layout_index(self, layer_idx: int) -> int:
        """Index into ``state.layouts`` of the layout decoder layer ``layer_idx`` sees."""
        return sum(s.boundary <= layer_idx for s in self.stages)

    # -- top-level forward ---------------------------------------------------------------
    def on_model_forward(self, args: tuple, kwargs: dict) -> None:
        st = self.state
        st.forward_calls += 1
        if self.adapter.attn_implementation not in SUPPORTED_ATTENTION:  # switched after add_plugin
            raise ConfigError(
                f"token dropping builds masks for attn_implementation in {SUPPORTED_ATTENTION}; the model now uses "
                f"{self.adapter.attn_implementation!r} (set_attn_implementation('sdpa') or remove the plugin)"
            )
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
        if past == 0:
            st.fallback_positions = torch.arange(q_len, device=input_ids.device).expand(batch, -1)
            self._start_full(input_ids, mask2d)
            st.blocks = self._blocks(kwargs.get("token_type_ids"), q_len) if self.adapter.bidirectional_images else None
        elif st.layouts:
            # layer 0's cache may be shorter than the prompt (a drop before layer 0), so count
            # decoded tokens ourselves rather than trusting positions derived from its length
            st.mode = "decode"
            st.step += 1
            before = st.decoded
            st.decoded += q_len
            if mask2d is not None:
                st.step_tail = mask2d[:, st.full_len :].bool()
            else:
                st.step_tail = torch.ones(batch, st.decoded, dtype=torch.bool, device=input_ids.device)
            # without position ids the decoder counts every cache slot, pads included (transformers'
            # cache_position), in prefill and decoding alike
            st.fallback_positions = (torch.arange(q_len, device=input_ids.device) + st.full_len + before).expand(
                batch, -1)
        else:
            st.mode = "off"  # the cache was filled before this plugin was attached

    def on_decoder_input(self, kwargs: dict) -> dict:
        """At the decoder's own forward: the position ids it will use (M-RoPE ids are only known here).

        Qwen3-VL's decoder adds *deepstack* vision features to the visual tokens' hidden states
        after its first layers, indexed by a full-length mask; the engine takes them over and adds
        them after those layers to the visual tokens still present (the same sums when nothing
        is dropped)."""
        st = self.state
        if st.mode == "off":
            return kwargs
        given = kwargs.get("position_ids")
        if given is None:
            given = st.fallback_positions
        positions = self.adapter.normalize_positions(given)
        if st.mode == "full":
            st.layouts[0].positions = positions
        else:
            st.step_positions = positions
        embeds = kwargs.get("deepstack_visual_embeds")
        if st.mode == "full" and embeds is not None:
            st.deepstack = (kwargs["visual_pos_masks"], list(embeds))
            kwargs = dict(kwargs, deepstack_visual_embeds=None, visual_pos_masks=None)
        return kwargs

    def after_layer(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """Add the deepstack features of ``layer_idx`` to the visual tokens of its current layout."""
        st = self.state
        if st.mode != "full" or st.deepstack is None or layer_idx >= len(st.deepstack[1]):
            return hidden
        visual, features = st.deepstack
        visual = visual.to(hidden.device)
        layout = st.layouts[self.layout_index(layer_idx)]
        row_of = (visual.flatten().long().cumsum(0) - 1).view_as(visual)  # feature row of each visual token
        idx = layout.idx.to(hidden.device)
        present = visual.gather(1, idx) & layout.valid.to(hidden.device)
        hidden = hidden.clone()
        hidden[present] = hidden[present] + features[layer_idx].to(hidden)[row_of.gather(1, idx)[present]]
        return hidden

    @staticmethod
    def _blocks(token_type_ids: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """Image blocks from the prefill's ``token_type_ids``, which transformers' Gemma 3 turns into
        bidirectional attention among each image's tokens (None: plain causal attention)."""
        if token_type_ids is None:
            return None
        blocks = image_blocks(token_type_ids)
        if blocks.shape[1] < length:  # generate(use_cache=False) passes the prompt's types only
            blocks = torch.nn.functional.pad(blocks, (0, length - blocks.shape[1]), value=-1)
        return blocks[:, :length] if bool((blocks >= 0).any()) else None

    def _start_full(self, input_ids: torch.Tensor, mask2d: torch.Tensor | None) -> None:
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
            positions=None,
            shift=torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device),
            original=True,
        )
        st.mode = "full"
        st.full_len = input_ids.shape[1]
        st.query_index = query_index
        st.layouts = [original] + [None] * len(self.stages)
        st.prev_inputs = {}
        st.evicted = {}
        st.decode_cache = {}
        st.deepstack = None

    def on_model_output(self, output: Any) -> None:
        st = self.state
        if st.mode == "full" and self.evict_owner is not None:
            cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
            if isinstance(cache, DynamicCache):
                self._evict_to_final(cache)
        st.mode = "off"  # layers called outside a captured forward (e.g. the bare language model) pass through

    def _evict_to_final(self, cache: DynamicCache) -> None:
        """Keep, in every layer after the first decoder-side drop, only the tokens that survive the last one."""
        st = self.state
        final = st.layouts[-1]
        first_decoder = next((s.boundary for s in self.stages if s.boundary > 0), None)
        if first_decoder is None or final is None:
            return
        for layer_idx in range(first_decoder, self.adapter.num_layers):
            layout = st.layouts[self.layout_index(layer_idx)]
            if layout is final:
                continue
            slots = slots_of(layout.idx, layout.valid, final.idx, final.valid, st.full_len)
            entry = cache.layers[layer_idx]
            if getattr(entry, "is_sliding", False):
                continue  # safeguard: a sliding-window layer keeps only its window; left as it is
            if entry.keys.shape[-2] != layout.idx.shape[1]:
                return  # the cache holds more than this prefill (continued prompt): leave it alone
            index = slots.to(entry.keys.device)[:, None, :, None]
            entry.keys = entry.keys.gather(2, index.expand(-1, entry.keys.shape[1], -1, entry.keys.shape[-1]))
            entry.values = entry.values.gather(2, index.expand(-1, entry.values.shape[1], -1, entry.values.shape[-1]))
            st.evicted[layer_idx] = Layout(
                idx=final.idx, valid=final.valid, key_valid=final.key_valid, image=final.image,
                positions=final.positions, shift=layout.shift,
            )

    # -- before each decoder layer -------------------------------------------------------
    def on_layer(self, layer_idx: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        st = self.state
        if st.mode == "off":
            return args, kwargs
        hidden = args[0] if args else kwargs["hidden_states"]
        if st.mode == "full":
            for s, stage in enumerate(self.stages, start=1):
                if stage.boundary == layer_idx:
                    hidden = self._build_stage(s, stage, hidden, kwargs)
        index = self.layout_index(layer_idx)
        layout = st.layouts[index]
        evicted = st.evicted.get(layer_idx) if st.mode == "decode" else None
        if layout.original and evicted is None:
            if st.mode == "full" and layer_idx + 1 in self.boundaries:
                st.prev_inputs[layer_idx + 1] = (hidden, kwargs["position_embeddings"])
            return args, kwargs
        window = self.adapter.attention_window(layer_idx)
        if st.mode == "full":
            cos_sin, mask, positions = layout.cos_sin, self._prefill_mask(layout, hidden, window), layout.positions
            if layer_idx + 1 in self.boundaries:
                st.prev_inputs[layer_idx + 1] = (hidden, cos_sin)
        else:
            key = (index, evicted is not None, window)
            cos_sin, mask, positions = self._decode_inputs(key, evicted or layout, hidden, window)
            mask = _visible_in_cache(mask, kwargs, layer_idx, hidden.shape[1])
        cos_sin = self.adapter.for_layer(cos_sin, layer_idx)
        text_positions = positions[0] if positions.shape[0] == 1 else None  # M-RoPE layers take no 1-D ids
        kwargs = dict(kwargs, attention_mask=mask, position_embeddings=cos_sin, position_ids=text_positions)
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _build_stage(self, s: int, stage: Stage, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        st = self.state
        cur: Layout = st.layouts[s - 1]
        cos_sin = kwargs["position_embeddings"] if cur.original else cur.cos_sin
        # the query token is never dropped: find its slot in the current layout
        query_slot = ((cur.idx == st.query_index[:, None]) & cur.valid).long().argmax(-1)
        first_of_owner = next(i for i, x in enumerate(self.stages) if x.owner == stage.owner)
        keep_image = stage.selector(
            SelectionInput(
                layer_idx=stage.boundary,
                stage=stage.local,
                hidden=hidden,
                layout=cur,
                query_slot=query_slot,
                cos_sin=cos_sin,
                original_image_counts=st.layouts[first_of_owner].image_counts,
                prev_input=st.prev_inputs.get(stage.boundary),
            )
        )
        exempt = st.exempt_rows
        if exempt is not None and stage.boundary > 0 and exempt.shape[0] == keep_image.shape[0]:
            # boundary 0 only removes vision-side zero rows; a mask from another call's batch is ignored
            keep_image = keep_image | exempt.to(keep_image.device)[:, None]
        keep = cur.valid & (~cur.image | keep_image)
        if torch.equal(keep, cur.valid):
            st.layouts[s] = cur
            return hidden
        slot_idx, valid = left_pad_indices(keep)
        idx = cur.idx.gather(1, slot_idx)
        if self.position_mode(stage) == "compact":
            positions, removed = compact_positions(cur.positions[0], slot_idx, valid, cur.key_valid)
            positions, shift = positions[None], cur.shift + removed
        else:
            gathered = cur.positions.gather(2, slot_idx[None].expand(cur.positions.shape[0], -1, -1))
            positions, shift = torch.where(valid, gathered, torch.zeros_like(gathered)), cur.shift
        layout = Layout(
            idx=idx,
            valid=valid,
            key_valid=cur.key_valid.gather(1, slot_idx) & valid,
            image=cur.image.gather(1, slot_idx) & valid,
            positions=positions,
            shift=shift,
        )
        layout.cos_sin = self.adapter.rotary(hidden, positions.to(hidden.device))
        st.layouts[s] = layout
        return gather_tokens(hidden, slot_idx.to(hidden.device))

    def position_mode(self, stage: Stage) -> PositionMode:
        """A stage's convention on this model: M-RoPE has no run of image positions to close
        (an h x w grid spans max(h, w) ids, not h * w), so every stage keeps the original ids there."""
        return stage.position_mode if self.adapter.position_axes == 1 else "keep"

    def _mask_style(self) -> bool:
        return self.adapter.attn_implementation == "sdpa"

    def _prefill_mask(self, layout: Layout, hidden: torch.Tensor, window: int | None) -> Any:
        if window not in layout.masks:
            blocks = None
            if self.state.blocks is not None:
                blocks = torch.where(layout.valid, self.state.blocks.gather(1, layout.idx), -1).to(hidden.device)
            if self._mask_style() and window is None and blocks is None and bool(layout.key_valid.all()):
                layout.masks[window] = None  # sdpa's is_causal path, as transformers does without padding
            else:
                idx = layout.idx.to(hidden.device)
                layout.masks[window] = layout_mask(
                    torch.where(layout.valid.to(hidden.device), idx, -1), idx, layout.key_valid.to(hidden.device),
                    window=window, q_block=blocks, k_block=blocks, as_bool=self._mask_style(), dtype=hidden.dtype,
                )
        return layout.masks[window]

    def _decode_inputs(self, key: Any, layout: Layout, hidden: torch.Tensor, window: int | None):
        st = self.state
        cached = st.decode_cache.get(key)
        if cached is not None and cached[0] == st.step:
            return cached[1], cached[2], cached[3]
        positions = (st.step_positions - layout.shift[None, :, None].to(st.step_positions.device)).to(hidden.device)
        cos_sin = self.adapter.rotary(hidden, positions)
        q_len = hidden.shape[1]
        key_valid = torch.cat([layout.key_valid, st.step_tail], dim=1).to(hidden.device)
        if self._mask_style() and q_len == 1 and window is None and bool(key_valid.all()):
            mask = None
        else:
            tail = st.full_len + torch.arange(st.step_tail.shape[1], device=hidden.device)
            k_index = torch.cat([layout.idx.to(hidden.device), tail.expand(key_valid.shape[0], -1)], dim=1)
            mask = layout_mask(k_index[:, -q_len:], k_index, key_valid, window=window, as_bool=self._mask_style(),
                               dtype=hidden.dtype)
        st.decode_cache[key] = (st.step, cos_sin, mask, positions)
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
    def layer_layouts(self) -> list[Layout] | None:
        """The layout each decoder layer saw in the last full forward (None before any call)."""
        layouts = self.state.layouts
        if not layouts or any(lay is None for lay in layouts):
            return None
        return [layouts[self.layout_index(i)] for i in range(self.adapter.num_layers)]

    def kv_layouts(self) -> list[Layout] | None:
        """The layout each layer's KV cache holds after prefill (differs from the above after eviction)."""
        layouts = self.layer_layouts()
        if layouts is None:
            return None
        return [self.state.evicted.get(i, lay) for i, lay in enumerate(layouts)]


def _visible_in_cache(mask: Any, kwargs: dict, layer_idx: int, q_len: int) -> Any:
    """A decode mask cut to the keys a sliding-window cache layer returns (its last ``window - 1``
    entries plus this step's), which are the last columns of the engine's full-history mask."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    entries = getattr(cache, "layers", None)
    if mask is None or entries is None or layer_idx >= len(entries):
        return mask
    entry = entries[layer_idx]
    if not getattr(entry, "is_sliding", False) or not entry.is_initialized:
        return mask
    visible = min(entry.keys.shape[-2], entry.sliding_window - 1) + q_len
    return mask[..., -visible:] if visible < mask.shape[-1] else mask


class _CaptureHook(ModelHook):
    stateful = True

    def __init__(self, engine: DropEngine) -> None:
        self.engine = engine

    def pre_forward(self, module, args, kwargs):
        self.engine.on_model_forward(args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        self.engine.on_model_output(output)
        return output

    def reset_state(self, module) -> None:
        self.engine.reset()


class _RestoreHook(ModelHook):
    def __init__(self, engine: DropEngine) -> None:
        self.engine = engine

    def pre_forward(self, module, args, kwargs):
        return args, self.engine.on_decoder_input(kwargs)

    def post_forward(self, module, output):
        output.last_hidden_state = self.engine.restore_layout(output.last_hidden_state)
        return output


class _LayerHook(ModelHook):
    def __init__(self, engine: DropEngine, layer_idx: int) -> None:
        self.engine, self.layer_idx = engine, layer_idx

    def pre_forward(self, module, args, kwargs):
        return self.engine.on_layer(self.layer_idx, args, kwargs)

    def post_forward(self, module, output):
        if isinstance(output, tuple):
            return (self.engine.after_layer(self.layer_idx, output[0]), *output[1:])
        return self.engine.after_layer(self.layer_idx, output)
