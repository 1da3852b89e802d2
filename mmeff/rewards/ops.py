"""Differentiable image preprocessing for reward models, in torch.

Reward models were trained on PIL/torchvision pipelines (resize the shortest side with
bicubic, centre-crop, normalise). ReNO needs the gradient of the reward with respect to
the generated pixels, so the same steps run here on tensors; they match
``torchvision.transforms.v2`` Resize/CenterCrop/Normalize on float tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: pixel statistics OpenAI CLIP was trained with; CLIP-H, HPSv2, PickScore, ImageReward (BLIP) and the
#: LAION aesthetic predictor all normalise with these
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (H, W) when the shortest side becomes ``size``; the long side is truncated as torchvision does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize(images: torch.Tensor, shape: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize (B, C, H, W) to ``shape`` with ``mode`` (bicubic or bilinear), anti-aliased as torchvision does."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images
    # anti-aliased kernels lack half precision on some devices (bf16 on CPU): resample in fp32
    wide = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return F.interpolate(wide, size=shape, mode=mode, align_corners=False, antialias=True).to(images.dtype)


def resize_shortest(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize so the shortest side is ``size``, keeping the aspect ratio (torchvision ``Resize(size)``)."""
    return resize(images, resized_shape(*images.shape[-2:], size), mode)


def center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Centre crop to ``size`` (int or (h, w)); offsets rounded as torchvision rounds them."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = images.shape[-2:]
    if th > h or tw > w:
        raise ValueError(f"crop {th}x{tw} is larger than the image {h}x{w}; resize first")
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return images[..., top : top + th, left : left + tw]


def resize_longest_and_pad(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """open_clip's ``ResizeMaxSize`` (the ``hpsv2`` package's scoring transform): the longest side becomes
    ``size`` (sides rounded), then centred black padding to ``size`` x ``size``."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = resize(images, (nh, nw), mode)
    ph, pw = size - nh, size - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` on (B, C, H, W)."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - m) / s


def preprocess(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> torch.Tensor:
    """Images in [0, 1] of any H, W -> the square ``size`` input a CLIP-style encoder expects.

    ``resize_mode`` follows open_clip: ``"shortest"`` = resize the shortest side then centre-crop
    (every ReNO reward), ``"squash"`` = resize to ``size`` x ``size`` ignoring the aspect ratio,
    ``"longest"`` = resize the longest side then pad with black (the ``hpsv2`` package's own scoring).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if resize_mode == "shortest":
        images = center_crop(resize_shortest(images, size, interpolation), size)
    elif resize_mode == "squash":
        images = resize(images, (size, size), interpolation)
    elif resize_mode == "longest":
        images = resize_longest_and_pad(images, size, interpolation)
    else:
        raise ValueError(f"resize_mode must be 'shortest', 'squash' or 'longest', got {resize_mode!r}")
    return normalize(images, mean, std)
