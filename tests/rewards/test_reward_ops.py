"""The differentiable preprocessing matches torchvision's tensor transforms and passes gradients."""

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2

from mmeff.rewards import ops


@pytest.mark.parametrize("shape", [(1, 3, 64, 80), (2, 3, 20, 28), (1, 3, 50, 50), (1, 3, 97, 33), (1, 3, 32, 40)])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resize_matches_torchvision(shape, mode):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    interp = InterpolationMode.BICUBIC if mode == "bicubic" else InterpolationMode.BILINEAR
    want = v2.Resize(32, interpolation=interp, antialias=True)(x)
    got = ops.resize_shortest(x, 32, mode)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(224, 300), (300, 224), (225, 227), (31, 32)])
def test_center_crop_matches_torchvision(hw):
    x = torch.rand(1, 3, *hw)
    size = min(hw) - 1
    torch.testing.assert_close(ops.center_crop(x, size), v2.CenterCrop(size)(x), atol=0, rtol=0)


def test_center_crop_rejects_small_image():
    with pytest.raises(ValueError, match="larger than the image"):
        ops.center_crop(torch.rand(1, 3, 10, 10), 12)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_preprocess_matches_torchvision_pipeline(resize_mode):
    x = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    resize = v2.Resize(32 if resize_mode == "shortest" else (32, 32), interpolation=InterpolationMode.BICUBIC)
    want = v2.Compose([resize, v2.CenterCrop(32), v2.Normalize(mean, std)])(x)
    got = ops.preprocess(x, 32, mean, std, resize_mode=resize_mode)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_preprocess_defaults_to_openai_stats():
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(ops.preprocess(x, 32), v2.Normalize(ops.OPENAI_MEAN, ops.OPENAI_STD)(x))


@pytest.mark.parametrize("hw", [(64, 48), (16, 20)])
def test_preprocess_passes_gradients(hw):
    x = torch.rand(2, 3, *hw, requires_grad=True)
    ops.preprocess(x, 32).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ops.preprocess(torch.rand(3, 32, 32), 32)
    with pytest.raises(ValueError, match="resize_mode"):
        ops.preprocess(torch.rand(1, 3, 32, 32), 32, resize_mode="pad")


def test_resize_keeps_half_precision_dtype():
    x = torch.rand(1, 3, 40, 48)
    out = ops.resize_shortest(x.to(torch.bfloat16), 32)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ops.resize_shortest(x, 32), atol=2e-2, rtol=0)
