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
#: the call settings shapes-sd was measured with (few steps, as SD-Turbo is used)
SHAPES_SD_CALL = {"num_inference_steps": 1, "guidance_scale": 1.0}
