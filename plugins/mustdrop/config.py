"""MustDrop's settings, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import check_fraction, check_layers, parse_budget

#: the released scripts' (global, individual) thresholds for LLaVA-1.5-7B at 192 / 128 / 64 tokens
RELEASED_THRESHOLDS = {"192": (0.001, 0.001), "128": (0.0012, 0.001), "64": (0.011, 0.01)}
#: the released share of patches kept as the key set
RELEASED_KEY_FRACTION = 0.08


@dataclass
class MustDropConfig(PluginConfig):
    """MustDrop's three stages, each switchable.

    (a) ``merge``: after vision layer ``merge_layer``, merge every 3×3 window of patches whose
        mean pairwise cosine is at least ``merge_threshold``; the top ``key_fraction`` of patches by
        the last ViT layer's CLS attention (as released) become the key set, never dropped.
        ``merge=None`` (default) runs the merge where the tower allows it (LLaVA-1.5, LLaVA-NeXT) and
        leaves it off elsewhere; ``key_fraction=None`` (default) is 0.08 where the adapter has a
        key-set signal (LLaVA-1.5/NeXT: CLS attention; InternVL: CLS attention of each token's four
        pixel-shuffled patches, per tile; Qwen2/2.5/3-VL: the attention each merged token's
        patches receive in the tower's last block) and 0 elsewhere. ``last_stats`` names the stages
        that ran; asking explicitly for a stage the model cannot run is refused with the reason.
    (b) ``filter``: after each decoder layer in ``layers`` (default: 2, 6, 10, 14 of 32, scaled
        to depth; as released, those layers still run on the full set), drop image tokens whose
        summed attention from the text after the image is below ``global_threshold`` of the total
        *and* whose maximum is below ``individual_threshold``. With ``budget`` (a fraction or "192"/"128"/"64") the two
        thresholds are raised together until the image tokens *averaged over decoder layers*
        (MustDrop's convention) meet the budget exactly; ``budget=None`` uses the thresholds.
    (c) ``cache_policy``: after prefill, every dropping layer's KV cache keeps only the
        tokens that survive the last drop (the released code's output-aware policy).
    """

    merge: bool | None = field(default=None, metadata={"help": "None: on where the tower allows it"})
    merge_layer: int = field(default=0, metadata={
        "help": "vision layer (>= 0, not past the feature layer) after which the 3x3 merge runs"})
    merge_threshold: float = field(default=0.8, metadata={
        "help": "merge a 3x3 window whose patches' mean pairwise cosine is at least this, in [-1, 1]"})
    proportional_attention: bool = field(default=False, metadata={
        "help": "weight merged tokens by their size in later ViT layers (ToMe's log-size bias); the release does not"})
    key_fraction: float | None = field(default=None, metadata={
        "help": "None: 0.08 (as released) where the adapter has a key-set signal, else 0"})
    filter: bool = field(default=True, metadata={"help": "stage (b): drop image tokens by text attention after layers"})
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "decoder layers (increasing, >= 1) the filter drops after; None = 2, 6, 10, 14 of 32, scaled"})
    budget: float | str | None = field(default="192", metadata={"help": "layer-average fraction, or 192/128/64"})
    global_threshold: float = field(default=RELEASED_THRESHOLDS["192"][0], metadata={
        "help": "in [0, 1]: drop if text-attention share < this and peak < individual_threshold (budget scales both)"})
    individual_threshold: float = field(default=RELEASED_THRESHOLDS["192"][1], metadata={
        "help": "in [0, 1]: drop if peak text attention < this and share < global_threshold (released 192 value)"})
    cache_policy: bool = field(default=True, metadata={
        "help": "stage (c): after prefill, dropping layers' KV cache keeps only the last drop's tokens; needs filter"})

    def validate(self) -> None:
        if self.merge is not None and not isinstance(self.merge, bool):
            raise ConfigError(f"mustdrop merge must be True, False or None (on where the tower allows it), "
                              f"got {self.merge!r}")
        for name in ("filter", "cache_policy", "proportional_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"mustdrop {name} must be True or False, got {getattr(self, name)!r}")
        if self.cache_policy and not self.filter:
            raise ConfigError("mustdrop cache_policy needs filter=True (it evicts what the filter drops); "
                              "set cache_policy=False to use the merge alone")
        if self.merge is False and not self.filter:
            raise ConfigError("mustdrop needs at least one stage on: merge and/or filter")
        if not isinstance(self.merge_layer, int) or isinstance(self.merge_layer, bool) or self.merge_layer < 0:
            raise ConfigError(f"mustdrop merge_layer must be a vision layer index >= 0, got {self.merge_layer!r}")
        if not isinstance(self.merge_threshold, (int, float)) or not -1 <= self.merge_threshold <= 1.0001:
            raise ConfigError(f"mustdrop merge_threshold is a cosine in [-1, 1], got {self.merge_threshold!r}")
        if self.key_fraction is not None:
            check_fraction(self.key_fraction, "key_fraction", "mustdrop")
        check_fraction(self.global_threshold, "global_threshold", "mustdrop")
        check_fraction(self.individual_threshold, "individual_threshold", "mustdrop")
        self._budget = parse_budget(self.budget, "mustdrop")
        self.layers = check_layers(self.layers, "mustdrop")

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        return self.layers if self.layers is not None else default_layers(num_layers)

    def key_count(self, patches: int) -> int:
        return math.ceil((RELEASED_KEY_FRACTION if self.key_fraction is None else self.key_fraction) * patches)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The released (2, 6, 10, 14) of 32 layers, scaled: at 1/16, 3/16, 5/16 and 7/16 of depth."""
    candidates = (round(num_layers * k / 16) for k in (1, 3, 5, 7))
    return tuple(sorted({b for b in candidates if 1 <= b < num_layers - 1}))  # the drop follows the layer
