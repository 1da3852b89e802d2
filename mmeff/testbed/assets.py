"""Where the bundled testbed models live, and how the text-to-image one is meant to be called."""

from __future__ import annotations

from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "assets" / "models"  # beside the mmeff package
SHAPES_LLAVA = MODELS / "shapes-llava"
SHAPES_SD = MODELS / "shapes-sd"
SHAPES_CLIP = MODELS / "shapes-clip"
SHAPES_AR = MODELS / "shapes-ar"
SHAPES_MAR = MODELS / "shapes-mar"
SHAPES_MAR_SMALL = MODELS / "shapes-mar-small"
#: the call settings shapes-sd is measured with: few steps, with classifier-free guidance (its 4-step
#: score is 0.47 at guidance 3, 0.33 without (8 prompts a category); docs/testbed_notes.md)
SHAPES_SD_CALL = {"num_inference_steps": 4, "guidance_scale": 3.0}
#: ReNO's settings for shapes-sd where they differ from the paper's. Its latent is 8x8x4 = 256 numbers,
#: SD-Turbo's 64x64x4 = 16,384. With gradients clipped to norm 0.1 and momentum 0.9, one step of lr 5 moves
#: the noise by up to about 5 in norm: 4% of SD-Turbo's noise norm (128) but 31% of this one's (16).
#: lr 5 x sqrt(256 / 16384) = 0.625 keeps the paper's step relative to the noise (README: bench reno).
SHAPES_SD_RENO = {"lr": 0.625}
