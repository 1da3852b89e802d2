"""``mmeff demo``: the same questions with and without a plugin, side by side.

Runs on a model you name, else on the bundled shapes-testbed model when it exists, else
on a tiny random-weight LLaVA (whose answers are noise: it shows the mechanics only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

import mmeff

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "models" / "shapes-llava"
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def shape_scene(objects: list[tuple[str, str, tuple[int, int]]], size: int = 96) -> np.ndarray:
    """A plain scene of (colour, shape, centre) objects, drawn with OpenCV."""
    img = np.full((size, size, 3), 245, np.uint8)
    r = size // 8
    for color, shape, (x, y) in objects:
        c = COLORS[color]
        if shape == "circle":
            cv2.circle(img, (x, y), r, c, -1)
        elif shape == "square":
            cv2.rectangle(img, (x - r, y - r), (x + r, y + r), c, -1)
        elif shape == "triangle":
            pts = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)
            cv2.fillPoly(img, [pts], c)
    return img


def demo_inputs() -> tuple[list[np.ndarray], list[str]]:
    images = [
        shape_scene([("red", "circle", (28, 30)), ("blue", "square", (66, 64))]),
        shape_scene([("green", "triangle", (48, 30)), ("yellow", "circle", (30, 70)), ("red", "square", (70, 70))]),
    ]
    prompts = ["is there a red circle in the image?", "how many objects are in the image?"]
    return images, prompts


def load_demo_pipe(model: str | None, console: Console) -> mmeff.MMPipeline:
    if model:
        console.print(f"[bold]model:[/] {model}")
        return mmeff.load(model)
    if (BUNDLED / "config.json").is_file():
        console.print(f"[bold]model:[/] bundled shapes-testbed LLaVA ({BUNDLED})")
        return mmeff.load(BUNDLED)
    from .testing import tiny_llava

    console.print(
        "[bold yellow]model: tiny random-weight LLaVA[/] (no bundled testbed model yet: "
        "answers are noise, the token counts and timings are real)"
    )
    return mmeff.wrap(*tiny_llava(layers=8, hidden=64, heads=4, kv_heads=4, image_size=32, patch_size=4))


def run_demo(model: str | None = None, plugin: str = "pyramid_drop", max_new_tokens: int = 12,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    console = Console(width=160)
    pipe = load_demo_pipe(model, console)
    images, prompts = demo_inputs()
    pipe.generate(images[:1], prompts[:1], max_new_tokens=1)  # warm-up, so wall times compare fairly
    baseline = pipe.generate(images, prompts, max_new_tokens=max_new_tokens)
    base_stats = pipe.last_stats
    pipe.add_plugin(plugin, **(options or {}))
    reduced = pipe.generate(images, prompts, max_new_tokens=max_new_tokens)
    stats = pipe.last_stats

    table = Table(title=f"{plugin} vs the unmodified model")
    for col in ("question", "baseline", plugin):
        table.add_column(col)
    for q, a, b in zip(prompts, baseline, reduced):
        table.add_row(q, a, b)
    console.print(table)
    ps = stats.get(plugin, {})
    if "image_tokens_per_layer" in ps:
        console.print(f"image tokens per layer: {[round(x, 1) for x in ps['image_tokens_per_layer']]}")
        console.print(
            f"mean image tokens kept: {ps['mean_image_tokens']:.1f} of {ps['image_tokens_before'][0]:.0f} "
            f"({100 * ps['retained_fraction']:.0f}%), analytic prefill FLOPs {ps['prefill_flops_ratio']:.2f}x baseline"
        )
    console.print(f"wall time: baseline {base_stats['wall_time_s']:.3f}s, {plugin} {stats['wall_time_s']:.3f}s "
                  "(on tiny models hook overhead dominates; `mmeff bench tokens --speed` measures a 7B-shaped layout)")
    pipe.remove_plugin(plugin)
    return {"baseline": baseline, plugin: reduced, "stats": stats}
