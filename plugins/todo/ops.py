"""ToDo's tensor math (Smith et al., 2024): downsample a block's tokens on their 2-D grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLS = ("avg_pool", "max_pool")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def downsample_tokens(x: torch.Tensor, h: int, w: int, factor: int, method: str) -> torch.Tensor:
    """(B, h*w, C) -> (B, (h//factor) * (w//factor), C), resampled as an image of C channels."""
    b, n, c = x.shape
    if n != h * w:
        raise ValueError(f"{n} tokens do not form a {h}x{w} grid")
    grid = x.transpose(1, 2).reshape(b, c, h, w)
    if method == "avg_pool":
        small = F.avg_pool2d(grid, kernel_size=factor, stride=factor)
    elif method == "max_pool":
        small = F.max_pool2d(grid, kernel_size=factor, stride=factor)
    else:
        small = F.interpolate(grid, size=(h // factor, w // factor), mode=method)
    return small.flatten(2).transpose(1, 2)
