"""Reduce tokens inside the vision tower, then let the decoder see only the survivors.

A vision-side method (VisionZip, ToMe, MustDrop's local merge) registers *transforms* that
run after chosen ViT layers and shrink the token state ``(x, sizes, sources)``. After the
projector, the surviving features are written back to their grid slots of a zero tensor of
the original size, so the placeholder count that transformers checks, and LLaVA-NeXT's tile
packing and unpadding, stay as they are. The shared :class:`DropEngine` then drops the
zero image rows before decoder layer 0 (a stage at boundary 0), so every decoder layer and
the KV cache hold only the reduced tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..adapters.vlm import VLMAdapter
from ..errors import InputError
from ..hooks import ModelHook
from ..plugin import PluginContext
from .engine import DropEngine, SelectionInput
from .vision_ops import compact_alive, fill_first_free_slot, scatter_to_grid, size_bias


@dataclass
class TokenState:
    x: torch.Tensor  # (B, L, D) hidden states, CLS at slot 0
    sizes: torch.Tensor  # (B, L) patches per token; 0 = dead padding slot
    sources: torch.Tensor  # (B, L) grid slot each token is written back to; -1 = CLS

    @property
    def uniform(self) -> bool:
        return bool((self.sizes == 1).all())


@dataclass
class VisionStep:
    """What a transform sees after vision layer ``layer_idx``: its input and output states."""

    layer_idx: int
    layer: nn.Module
    layer_input: torch.Tensor
    state: TokenState  # ``x`` is the layer's output; sizes/sources as they were at its input


Transform = Callable[[VisionStep], TokenState]


class ZeroRowStage:
    """What every vision-side reducer shares: tokens it drops become zero rows of the features, which one
    stage of the shared :class:`DropEngine` removes before decoder layer 0."""

    owner: str
    engine: DropEngine | None = None

    def reset(self) -> None:
        raise NotImplementedError

    def add_zero_row_stage(self, adapter: VLMAdapter) -> None:
        self.engine = DropEngine.shared(adapter)
        self.engine.add_stages(self.owner, (0,), self._keep_nonzero, priority=0)

    def detach(self) -> None:
        if self.engine is not None:
            self.engine.remove_owner(self.owner)
        self.engine = None
        self.reset()

    @staticmethod
    def _keep_nonzero(inp: SelectionInput) -> torch.Tensor:
        return (inp.hidden != 0).any(-1).to(inp.layout.image.device)


class VisionReducer(ZeroRowStage):
    """Owns the vision-side hooks of one plugin; ``transforms`` maps ViT layer index -> transform (one after
    the feature layer may only observe: what it returns is ignored)."""

    def __init__(
        self, owner: str, transforms: dict[int, Transform], *, proportional_attention: bool = True,
        reduces: bool = True, keep_cls: bool = False,
    ) -> None:
        """``reduces=False``: transforms only observe (e.g. MustDrop's key set); nothing is dropped.
        ``keep_cls``: the feature layer's CLS token, projected, also reaches the LLM, in the first grid
        slot the kept tokens leave free (VisionZip's release passes it on)."""
        self.owner = owner
        self.keep_cls = keep_cls
        self.reduces = reduces
        self.transforms = transforms
        self.proportional_attention = proportional_attention
        self.state: TokenState | None = None
        self.feature_state: TokenState | None = None
        self._bias: torch.Tensor | None = None  # attention bias of the current state (None: all sizes 1)
        self._layer_input: torch.Tensor | None = None
        self.engine: DropEngine | None = None
        self.adapter: VLMAdapter | None = None

    def attach(self, ctx: PluginContext) -> None:
        adapter = ctx.adapter
        assert isinstance(adapter, VLMAdapter)
        self.adapter = adapter
        feature_idx = adapter.feature_layer_index()
        for i, layer in enumerate(adapter.vision_layers):
            ctx.add_hook(layer, f"vision{i}", _VisionLayerHook(self, i, feature_idx))
        if self.reduces:
            ctx.add_hook(adapter.projector, "scatter", _ScatterHook(self))
            self.add_zero_row_stage(adapter)

    def reset(self) -> None:
        self.state = None
        self.feature_state = None
        self._bias = None


    # -- hooks ---------------------------------------------------------------------------
    def before_layer(self, layer_idx: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        if layer_idx == 0 or self.state is None:
            batch, length, _ = hidden.shape
            ones = torch.ones(batch, length, device=hidden.device)
            sources = torch.arange(-1, length - 1, device=hidden.device).expand(batch, -1)
            self.state, self._bias = TokenState(hidden, ones, sources), None
        self._layer_input = hidden
        bias = self._bias
        if bias is None:
            return args, kwargs
        if len(args) > 1:
            args = (args[0], bias, *args[2:])
        else:
            kwargs = dict(kwargs, attention_mask=bias)
        return args, kwargs

    def after_layer(self, layer: nn.Module, layer_idx: int, feature_idx: int, output):
        hidden = output[0] if isinstance(output, tuple) else output
        st = self.state
        transform = self.transforms.get(layer_idx)
        if transform is not None and layer_idx > feature_idx:  # after the features: an observer only
            if hidden.shape[1] == st.sizes.shape[1]:  # not when another plugin has changed the tokens since
                transform(VisionStep(layer_idx, layer, self._layer_input, TokenState(hidden, st.sizes, st.sources)))
            transform = None
        if transform is not None:
            new = transform(VisionStep(layer_idx, layer, self._layer_input, TokenState(hidden, st.sizes, st.sources)))
            if not bool((new.sizes > 0).all()):
                new = TokenState(*compact_alive(new.x, new.sizes, new.sources))
            self.state = new
            hidden = new.x
            sizes = new.sizes if self.proportional_attention else (new.sizes > 0).float()
            self._bias = None if new.uniform else size_bias(sizes, hidden.dtype)
        if layer_idx == feature_idx:
            self.feature_state = self.state
        self._layer_input = None
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def scatter(self, features: torch.Tensor) -> torch.Tensor:
        st = self.feature_state
        if st is None:
            return features
        self.feature_state = None
        if features.shape[:2] != (st.x.shape[0], st.x.shape[1] - 1):
            raise InputError(
                f"the projector got {tuple(features.shape[:2])} tokens but the vision tower kept "
                f"{(st.x.shape[0], st.x.shape[1] - 1)}; vision-side reduction needs LLaVA's feature path"
            )
        n = self.adapter.patch_grid ** 2
        grid = scatter_to_grid(features, st.sources[:, 1:], st.sizes[:, 1:] > 0, n)
        if self.keep_cls:
            projector = self.adapter.projector
            cls = type(projector).forward(projector, st.x[:, :1])[:, 0]  # the class forward: not our hook again
            grid = fill_first_free_slot(grid, cls)
        return grid


class _VisionLayerHook(ModelHook):
    stateful = True

    def __init__(self, reducer: VisionReducer, layer_idx: int, feature_idx: int) -> None:
        self.reducer, self.layer_idx, self.feature_idx = reducer, layer_idx, feature_idx

    def pre_forward(self, module, args, kwargs):
        return self.reducer.before_layer(self.layer_idx, args, kwargs)

    def post_forward(self, module, output):
        return self.reducer.after_layer(module, self.layer_idx, self.feature_idx, output)

    def reset_state(self, module) -> None:
        self.reducer.reset()


class _ScatterHook(ModelHook):
    def __init__(self, reducer: VisionReducer) -> None:
        self.reducer = reducer

    def post_forward(self, module, output):
        return self.reducer.scatter(output)
