"""PyramidDrop's settings, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmeff.errors import ConfigError
from mmeff.plugin import PluginConfig
from mmeff.token_drop.budget import check_layers


@dataclass
class PyramidDropConfig(PluginConfig):
    """Drop image tokens in stages, keeping a fraction ``ratio`` at each stage boundary.

    ``layers``: 0-based decoder layers *before* which a drop happens, i.e. PyramidDrop's
    "after layers 8, 16, 24" of a 32-layer model is ``(8, 16, 24)``. ``None`` scales that
    default to the model's depth (1/4, 1/2, 3/4). After ``k`` boundaries a row keeps
    ``int(n_image * ratio**k)`` image tokens, as in the released code's
    ``image_token_ratio_list = [0.5, 0.25, 0.125]``.
    """

    ratio: float = field(default=0.5, metadata={"help": "fraction of image tokens each stage keeps, in (0, 1]"})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "stage boundaries; None = depth/4,/2,3/4"})

    def validate(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
            raise ConfigError(f"pyramid_drop ratio must be a number in (0, 1], got {self.ratio!r}")
        self.layers = check_layers(self.layers, "pyramid_drop")

    def resolve_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        return default_layers(num_layers)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """PyramidDrop's (8, 16, 24) for 32 layers, scaled: boundaries at 1/4, 1/2 and 3/4 of depth."""
    candidates = (round(num_layers * k / 4) for k in (1, 2, 3))
    return tuple(sorted({b for b in candidates if 1 <= b < num_layers}))
