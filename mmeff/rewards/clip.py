"""open_clip rewards: CLIP-H score, HPSv2.1 and the testbed's shapes-clip.

All three are an open_clip ``CLIP`` scoring the cosine between image and prompt
embeddings; they differ in weights, in whether ReNO scales the cosine by
``logit_scale.exp()``, and in ReNO's loss offset and weight.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import ops
from .base import Reward
from .registry import register_reward
from .weights import loading, resolve_file, weights_error

Tokenize = Callable[[list[str]], torch.Tensor]
ViT_H = "ViT-H-14"



def _open_clip() -> Any:
    """open_clip, which only these rewards need (the ``[rewards]`` extra)."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("the CLIP rewards (clip_h, hpsv2, shapes_clip) need open_clip: "
                          "pip install 'mmeff[rewards]' (or pip install open_clip_torch)") from err
    return open_clip

def tiny_open_clip_cfg() -> dict:
    """A tiny ``open_clip.CLIP`` config with the real BPE vocabulary, so the real tokenizer drives it."""
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def split_open_clip_name(source: str) -> tuple[str, str | None]:
    """``"ViT-B-32:openai"`` -> ("ViT-B-32", "openai"); ``hf-hub:``/``local-dir:`` names and folders carry no tag."""
    if source.startswith(("hf-hub:", "local-dir:")):
        return source, None
    if Path(source).expanduser().is_dir():
        return f"local-dir:{Path(source).expanduser()}", None
    name, _, tag = source.partition(":")
    return name, tag or None


class OpenClipReward(Reward):
    """Cosine of L2-normalised open_clip image and text embeddings (times ``logit_scale.exp()`` if ``scaled``)."""

    scaled: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, tokenize: Tokenize) -> None:
        open_clip = _open_clip()

        super().__init__()
        self.model, self.tokenize = model, tokenize
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", model.visual.image_size)
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ConfigError(f"{self.name}: non-square image size {tuple(size)} is not supported")
            size = size[0]
        self.image_size = int(size)
        self.mean = tuple(cfg.get("mean", ops.OPENAI_MEAN))
        self.std = tuple(cfg.get("std", ops.OPENAI_STD))
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.freeze()

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.check(images, prompts)
        img = F.normalize(self.model.encode_image(self.pixels(images)), dim=-1)
        with torch.no_grad():  # the prompt is fixed; only the image needs a gradient
            txt = F.normalize(self.model.encode_text(self.tokenize(list(prompts)).to(self.device)), dim=-1)
        cos = (img * txt).sum(-1)
        if self.scaled:
            cos = self.model.logit_scale.exp() * cos
        return cos.float()

    @classmethod
    def from_open_clip(cls, source: str, *, device=None, dtype=None) -> OpenClipReward:
        """Any open_clip model: ``"name:tag"``, ``"name:/file.pt"``, ``"hf-hub:org/repo"``, ``"local-dir:path"``."""
        open_clip = _open_clip()

        name, tag = split_open_clip_name(source)
        with loading(cls.name, source):
            model = open_clip.create_model(name, pretrained=tag, require_pretrained=True)
            tokenize = open_clip.get_tokenizer(name)
        return cls(model, tokenize)._placed(device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0) -> OpenClipReward:
        open_clip = _open_clip()

        torch.manual_seed(seed)
        cfg = tiny_open_clip_cfg()
        model = open_clip.CLIP(**cfg)
        open_clip.set_model_preprocess_cfg(model, {"size": cfg["vision_cfg"]["image_size"], "mean": ops.OPENAI_MEAN,
                                                   "std": ops.OPENAI_STD, "interpolation": "bicubic",
                                                   "resize_mode": "shortest"})
        return cls(model, open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"]))


@register_reward
class ClipReward(OpenClipReward):
    """CLIP-H/14 (LAION-2B) score ``100·cos``: ReNO's prompt-following reward."""

    name = "clip"
    offset = 100.0
    default_weight = 0.01
    DEFAULT = f"{ViT_H}:laion2B-s32B-b79K"

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None) -> ClipReward:
        return cls.from_open_clip(path or cls.DEFAULT, device=device, dtype=dtype)


@register_reward
class HPSv2Reward(OpenClipReward):
    """HPSv2.1 human-preference score: open_clip ViT-H-14 fine-tuned on HPD v2; the plain cosine."""

    name = "hpsv2"
    offset = 1.0
    default_weight = 5.0
    scaled = False
    REPO, FILE = "xswu/HPSv2", "HPS_v2.1_compressed.pt"
    ARCH = ViT_H  # the open_clip architecture the checkpoint fits (a class attribute, so tests can shrink it)

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None, resize_mode: str = "shortest") -> HPSv2Reward:
        """``path``: the hub repo (default ``xswu/HPSv2``), a folder with the .pt, or the .pt file itself.

        ``resize_mode``: ``"shortest"`` (resize the shortest side, centre-crop) is what ReNO's release feeds
        every reward; ``"longest"`` (resize the longest side, pad black) is the ``hpsv2`` package's own
        ``score``. They agree on square images (tests/rewards/test_reward_packages.py)."""
        open_clip = _open_clip()

        if resize_mode not in ("shortest", "longest"):
            raise ConfigError(f"hpsv2 resize_mode must be 'shortest' (ReNO's) or 'longest' (the hpsv2 package's), "
                              f"got {resize_mode!r}")

        source = path or cls.REPO
        file = resolve_file(cls.name, source, cls.FILE)  # before building 1B parameters, so failures are fast
        with loading(cls.name, str(file)):
            state = torch.load(file, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            model = open_clip.create_model(cls.ARCH, pretrained=None)
            model.load_state_dict(state)
            tokenize = open_clip.get_tokenizer(cls.ARCH)
        reward = cls(model, tokenize)._placed(device, dtype)
        reward.resize_mode = resize_mode
        return reward


def default_shapes_clip_dir() -> Path:
    from ..testbed.assets import SHAPES_CLIP

    return SHAPES_CLIP


@register_reward
class ShapesClipReward(OpenClipReward):
    """The testbed's open_clip model of the shapes world (32 px): ReNO's reward on the bundled tiny SD."""

    name = "shapes_clip"
    offset = 100.0
    default_weight = 1.0

    @classmethod
    def load(cls, path: str | None = None, *, device=None, dtype=None) -> ShapesClipReward:
        """``path``: an open_clip ``local-dir`` folder (default ``assets/models/shapes-clip``)."""
        open_clip = _open_clip()

        folder = Path(path).expanduser() if path else default_shapes_clip_dir()
        if not (folder / "open_clip_config.json").is_file():
            raise weights_error(cls.name, str(folder), "no open_clip_config.json; train it with "
                                "`mmeff testbed train clip` (recipe mmeff/testbed/train_clip.py)")
        with loading(cls.name, str(folder)):
            model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
            tokenize = open_clip.get_tokenizer(f"local-dir:{folder}")
        return cls(model, tokenize)._placed(device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0) -> ShapesClipReward:
        """An untrained shapes-clip, written in the recipe's export format and loaded back from it."""
        import tempfile

        from ..testing.rewards import write_tiny_shapes_clip

        with tempfile.TemporaryDirectory() as folder:
            write_tiny_shapes_clip(Path(folder), seed)
            return cls.load(folder)
