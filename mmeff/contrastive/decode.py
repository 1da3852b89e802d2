"""The one decode loop behind every contrastive method.

The positive and negative branches run as rows of one batch (``[pos_0..pos_B-1,
neg_0..neg_B-1]``): one forward per step, each row with its own KV-cache rows, and the
token chosen from the combined scores is fed to both rows of a pair. ``separate=True``
instead gives each branch its own cache and forward, which saves prefill when the
negative prompt is much shorter than the positive one. Temperature / top-k / top-p (the
``logits_processor`` transformers prepares) apply to the combined scores, after the
contrast, as VCD does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import ConfigError, InputError
from .ops import mask_implausible

#: ``combine(l_pos, l_neg, step) -> scores``; ``l_neg`` is None for single-branch methods (VDGD)
Combiner = Callable[[torch.Tensor, "torch.Tensor | None", int], torch.Tensor]


@dataclass
class Branch:
    """One branch's prompt: left-padded ids and 2D mask, plus its images.

    A zero in ``attention_mask`` may also sit inside the prompt (DAMRO hides every image
    token but k): positions are counted over the unmasked tokens only, so such a row is the
    same computation as the shorter prompt without those tokens. ``same_images`` reuses the
    positive branch's image features (ICD, LQCD, DAMRO) instead of encoding them twice.
    ``position_mask`` (default: the attention mask) is what positions are counted over instead: on
    M-RoPE models a hidden image token keeps its place, so the survivors keep their (t, h, w) ids.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    vision: dict[str, Any] = field(default_factory=dict)  # pixel_values, image_sizes or mm_encoder_outputs
    same_images: bool = False
    position_mask: torch.Tensor | None = None

    @property
    def positions_over(self) -> torch.Tensor:
        return self.attention_mask if self.position_mask is None else self.position_mask

    @property
    def batch(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_inputs(cls, inputs: dict[str, Any], same_images: bool = False) -> Branch:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        vision = {} if same_images else {k: v for k, v in inputs.items() if k in VISION_KEYS and v is not None}
        if vision.get("mm_encoder_outputs") == {}:
            vision.pop("mm_encoder_outputs")
        return cls(ids, mask.long(), vision, same_images)

    def to(self, device: torch.device) -> Branch:
        vision = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.vision.items()}
        pmask = None if self.position_mask is None else self.position_mask.to(device)
        return Branch(self.input_ids.to(device), self.attention_mask.to(device), vision, self.same_images, pmask)


VISION_KEYS = ("pixel_values", "image_sizes", "image_grid_thw", "mm_encoder_outputs")


@dataclass
class ImageFeatures:
    """Per-image feature rows from the model's own encoder, plus what else its forward reads from
    the encoder output (Qwen3-VL: per-layer *deepstack* features), so rows of both branches stack."""

    pooled: list[torch.Tensor] = field(default_factory=list)
    deepstack: list[list[torch.Tensor]] | None = None  # per deepstack layer, per image
    output_cls: type = BaseModelOutputWithPooling
    stacked: bool = False  # the model returns (and takes back) one tensor of equal-sized rows (InternVL's tiles)

    def __len__(self) -> int:
        return len(self.pooled)

    def __add__(self, other: ImageFeatures) -> ImageFeatures:
        if not other.pooled:
            return self
        if not self.pooled:
            return other
        deep = None
        if self.deepstack is not None and other.deepstack is not None:
            deep = [a + b for a, b in zip(self.deepstack, other.deepstack)]
        return ImageFeatures(self.pooled + other.pooled, deep, self.output_cls, self.stacked)

    def model_kwargs(self) -> dict[str, Any]:
        if not self.pooled:
            return {}
        extra = {} if self.deepstack is None else {"deepstack_features": self.deepstack}
        pooled: Any = self.pooled
        if self.stacked:  # rows of unequal size (a DAMRO prompt cut to k tokens per image) go as one flat run
            same = len({p.shape for p in self.pooled}) == 1
            pooled = torch.stack(self.pooled) if same else torch.cat([p.flatten(0, -2) for p in self.pooled])
        return {"mm_encoder_outputs": {"image": self.output_cls(pooler_output=pooled, **extra)}}


def image_features(model: torch.nn.Module, vision: dict[str, Any]) -> ImageFeatures:
    """Per-image features through the model's own ``get_image_features`` (as ``generate`` does)."""
    encoded = vision.get("mm_encoder_outputs", {}).get("image")
    if encoded is None:
        if vision.get("pixel_values") is None:
            return ImageFeatures()
        encoder = model.base_model.get_image_features
        params = inspect.signature(encoder).parameters
        encoded = encoder(**{k: v for k, v in vision.items() if k in params}, return_dict=True)
    deep = getattr(encoded, "deepstack_features", None)
    return ImageFeatures(list(encoded.pooler_output), None if deep is None else [list(d) for d in deep],
                         type(encoded), isinstance(encoded.pooler_output, torch.Tensor))


def _left_pad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = t.new_full((t.shape[0], width - t.shape[1]), value)
    return torch.cat([pad, t], 1)


@dataclass
class DecodeResult:
    new_tokens: torch.Tensor  # (B, T), pad after a row's EOS
    decode_steps: int  # forwards after the prefill, per stream
    streams: int  # 1 when the branches share a batch, 2 with separate caches
    rows: int  # rows per step over all streams (2B for a batched pair)
    prefill_s: float
    decode_s: float

    @property
    def forwards(self) -> int:
        return (1 + self.decode_steps) * self.streams

    @property
    def per_token_s(self) -> float:
        return self.decode_s / max(1, self.decode_steps)


def _stack_rows(pos: Branch, neg: Branch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both branches' ids, masks and position masks as rows of one left-padded batch."""
    width = max(pos.input_ids.shape[1], neg.input_ids.shape[1])
    ids = torch.cat([_left_pad(pos.input_ids, width, pad_id), _left_pad(neg.input_ids, width, pad_id)])
    mask = torch.cat([_left_pad(pos.attention_mask, width, 0), _left_pad(neg.attention_mask, width, 0)])
    pmask = torch.cat([_left_pad(pos.positions_over, width, 0), _left_pad(neg.positions_over, width, 0)])
    return ids, mask, pmask


def _sync(t: torch.Tensor) -> None:
    """Wait for queued GPU work so wall-clock timings are real."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _grids(*branches: Branch) -> torch.Tensor | None:
    """The branches' ``image_grid_thw`` rows in batch order (dynamic-resolution models), or None."""
    grids = [b.vision.get("image_grid_thw") for b in branches]
    return torch.cat(grids) if grids and all(g is not None for g in grids) else None


class _Stream:
    """One forward stream (a batch of rows with its own cache); positions follow the adapter's rule."""

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                 features: ImageFeatures, positions: Any, grid: torch.Tensor | None = None,
                 position_mask: torch.Tensor | None = None) -> None:
        self.model, self.input_ids, self.mask, self.features = model, input_ids, mask, features
        self.positions, self.grid = positions, grid
        self.position_mask = mask if position_mask is None else position_mask
        self.rows = input_ids.shape[0]
        self.cache = DynamicCache()
        self.offset: torch.Tensor | None = None

    def prefill(self) -> torch.Tensor:
        positions, self.offset = self.positions.branch_positions(self.input_ids, self.position_mask, self.grid)
        extra = {**self.positions.prefill_kwargs(self.input_ids), **self.features.model_kwargs()}
        out = self.model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=positions,
                         cache=self.cache, use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
        self.position_mask = torch.cat([self.position_mask, self.position_mask.new_ones(self.mask.shape[0], 1)], 1)
        positions = self.positions.step_positions(self.position_mask, self.offset)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions,
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()


class ContrastiveDecoder:
    """Greedy or sampled decoding of ``combine(l_pos, l_neg, step)`` under the plausibility mask."""

    def __init__(self, model: torch.nn.Module, combine: Combiner, beta: float | None = 0.1, separate: bool = False,
                 positions: Any = None) -> None:
        """``positions``: the model's adapter (its ``branch_positions`` / ``step_positions`` rule);
        looked up in the adapter registry when not given."""
        if beta is not None and not 0 < beta <= 1:
            raise ConfigError(f"beta must be in (0, 1] (or None: no plausibility cut), got {beta}")
        self.model, self.combine, self.beta, self.separate = model, combine, beta, separate
        if positions is None:
            from ..registry import find_adapter

            positions = find_adapter(model)(model)
        self.positions = positions
        self.last_streams: list[_Stream] = []
        self.last_prefill: torch.Tensor | None = None  # (rows, V) last-position logits of the prefill

    @torch.no_grad()
    def run(
        self,
        pos: Branch,
        neg: Branch | None,
        *,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
        pad_token_id: int,
        do_sample: bool = False,
        logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        stopping_criteria: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        streamer: Any = None,
        generator: torch.Generator | None = None,
    ) -> DecodeResult:
        if neg is not None and neg.batch != pos.batch:
            raise InputError(f"the negative branch has {neg.batch} rows for {pos.batch} positive rows")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch = pos.batch
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []),
                           device=pos.input_ids.device)
        start = time.perf_counter()
        rule = self.positions
        pos_features = image_features(self.model, pos.vision)
        if neg is None:
            streams = [_Stream(self.model, pos.input_ids, pos.attention_mask, pos_features, rule, _grids(pos),
                               pos.position_mask)]
        else:
            neg_features = pos_features if neg.same_images else image_features(self.model, neg.vision)
            neg_grid = _grids(pos if neg.same_images else neg)
            if self.separate:
                streams = [_Stream(self.model, pos.input_ids, pos.attention_mask, pos_features, rule, _grids(pos),
                                   pos.position_mask),
                           _Stream(self.model, neg.input_ids, neg.attention_mask, neg_features, rule, neg_grid,
                                   neg.position_mask)]
            else:
                ids, mask, pmask = _stack_rows(pos, neg, pad_token_id)
                grids = [g for g in (_grids(pos), neg_grid) if g is not None]
                streams = [_Stream(self.model, ids, mask, pos_features + neg_features, rule,
                                   torch.cat(grids) if grids else None, pmask)]
        self.last_streams = streams

        logits = torch.cat([s.prefill() for s in streams])
        self.last_prefill = logits
        _sync(logits)
        prefill_s = time.perf_counter() - start
        steps = 0
        sequences = pos.input_ids
        done = torch.zeros(batch, dtype=torch.bool, device=sequences.device)
        tokens: list[torch.Tensor] = []
        start = time.perf_counter()
        for step in range(max_new_tokens):
            lp = logits[:batch]
            ln = logits[batch:] if neg is not None else None
            scores = mask_implausible(self.combine(lp, ln, step), lp, self.beta)
            if logits_processor is not None:
                processed = logits_processor(sequences, scores)
                # a processor that rules out the whole plausible set (e.g. min_new_tokens when only
                # EOS is plausible) falls back to the processed positive logits rather than token 0 / NaN
                empty = torch.isneginf(processed).all(-1, keepdim=True)
                scores = torch.where(empty, logits_processor(sequences, lp.clone()), processed) if bool(
                    empty.any()) else processed
            if do_sample:
                probs = scores.float().softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            tokens.append(nxt)
            sequences = torch.cat([sequences, nxt[:, None]], 1)
            if streamer is not None:
                streamer.put(nxt.cpu())
            done |= torch.isin(nxt, eos)
            if stopping_criteria is not None:
                done |= stopping_criteria(sequences, scores).to(done.device)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if neg is None:
                logits = streams[0].step(nxt)
            elif self.separate:
                logits = torch.cat([streams[0].step(nxt), streams[1].step(nxt)])
            else:
                logits = streams[0].step(torch.cat([nxt, nxt]))  # the same token to both branches
            steps += 1
        if streamer is not None:
            streamer.end()
        _sync(logits)
        decode_s = time.perf_counter() - start
        rows = sum(s.rows for s in streams)
        return DecodeResult(torch.stack(tokens, 1), steps, len(streams), rows, prefill_s, decode_s)


def contrastive_generate(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    streamer: Any = None,
    cd_negative: dict[str, Any] | Branch | None = None,
    cd_combine: Combiner | None = None,
    cd_alpha: float = 1.0,
    cd_beta: float | None = 0.1,
    cd_separate: bool = False,
    cd_result: list | None = None,
    cd_streamer: Any = None,
    cd_adapter: Any = None,
    cd_image_grid_thw: torch.Tensor | None = None,
    **model_kwargs: Any,
) -> torch.LongTensor:
    """``model.generate(**inputs, custom_generate=contrastive_generate, cd_negative=neg_inputs)``.

    ``cd_negative`` holds the negative branch's ``input_ids`` / ``attention_mask`` /
    ``pixel_values`` (left padded, one row per positive row); ``cd_combine`` defaults to
    VCD's ``(1 + alpha) l_pos - alpha l_neg``. transformers prepares the logits processors
    (temperature, top-k, top-p) and stopping criteria; they apply after the contrast.
    Returns prompt + new tokens, like ``generate``. Pass a list as ``cd_result`` to receive
    the :class:`DecodeResult` (timings, forward count). Dynamic-resolution models (Qwen2-VL)
    need the positive images' ``cd_image_grid_thw`` for their M-RoPE ids; ``cd_adapter`` gives
    the model's position rule (looked up when not given). Stream with ``cd_streamer=``:
    transformers (5.24) does not hand ``streamer`` on to a ``custom_generate`` callable.
    """
    from .ops import contrast

    if cd_alpha < 0:
        raise ConfigError(f"cd_alpha must be >= 0, got {cd_alpha}")
    combine = cd_combine or (lambda lp, ln, step: contrast(lp, ln, cd_alpha) if ln is not None else lp)
    pos = Branch.from_inputs({"input_ids": input_ids, **model_kwargs})
    if cd_image_grid_thw is not None:  # generate() hands over encoded images without their grid
        pos.vision.setdefault("image_grid_thw", cd_image_grid_thw)
    neg = None
    if cd_negative is not None:
        neg = cd_negative if isinstance(cd_negative, Branch) else Branch.from_inputs(cd_negative)
        neg = neg.to(input_ids.device)
    for option in ("num_beams", "num_return_sequences"):
        if getattr(generation_config, option, 1) not in (None, 1):
            raise ConfigError(f"contrastive decoding runs one greedy or sampled sequence per prompt; the generation "
                              f"config asks for {option}={getattr(generation_config, option)}")
    max_new = generation_config.max_length - input_ids.shape[1]
    if generation_config.max_new_tokens is not None:
        max_new = generation_config.max_new_tokens
    if cd_streamer is not None:
        cd_streamer.put(input_ids.cpu())  # the prompt, as generate() does for its own streamer
    pad = generation_config._pad_token_tensor
    eos = generation_config._eos_token_tensor
    result = ContrastiveDecoder(model, combine, cd_beta, cd_separate, cd_adapter).run(
        pos, neg,
        max_new_tokens=max_new,
        eos_token_id=eos.tolist() if eos is not None else None,
        pad_token_id=int(pad) if pad is not None else 0,
        do_sample=bool(generation_config.do_sample),
        logits_processor=logits_processor,
        stopping_criteria=stopping_criteria,
        streamer=cd_streamer if cd_streamer is not None else streamer,
    )
    if cd_result is not None:
        cd_result.append(result)
    sequences = torch.cat([input_ids, result.new_tokens], 1)
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences
