"""``mmeff demo``: the same questions with and without a plugin, side by side.

Runs on a model you name, else on the bundled shapes-testbed model when it exists, else
on a tiny random-weight LLaVA (whose answers are noise: it shows the mechanics only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import mmeff

from .testbed.assets import SHAPES_LLAVA
from .testbed.render import render
from .testbed.world import ObjectSpec, SceneSpec

BUNDLED = SHAPES_LLAVA


def demo_inputs() -> tuple[list[np.ndarray], list[str]]:
    """Two shapes-testbed scenes (the bundled model's world) and a question about each."""
    scenes = [
        SceneSpec((ObjectSpec("circle", "red", 0.3, 0.3, 0.12, 0), ObjectSpec("square", "blue", 0.7, 0.68, 0.12, 10)),
                  "plain", seed=1),
        SceneSpec((ObjectSpec("triangle", "green", 0.5, 0.3, 0.12, 0), ObjectSpec("star", "yellow", 0.3, 0.72, 0.12, 0),
                   ObjectSpec("hexagon", "purple", 0.72, 0.72, 0.11, 0)), "gradient", seed=2),
    ]
    prompts = ["is there a red circle in the image?", "how many objects are in the image?"]
    return [render(s) for s in scenes], prompts


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


def run_demo(model: str | None = None, plugins: list[tuple[str, dict[str, Any]]] | None = None,
             max_new_tokens: int = 12) -> dict[str, Any]:
    """The demo questions answered by the unmodified model, then with ``plugins`` (default PyramidDrop) attached."""
    console = Console(width=160)
    stack = plugins or [("pyramid_drop", {})]
    label = " + ".join(name for name, _ in stack)
    pipe = load_demo_pipe(model, console)
    images, prompts = demo_inputs()
    pipe.generate(images[:1], prompts[:1], max_new_tokens=1)  # warm-up, so wall times compare fairly
    baseline = pipe.generate(images, prompts, max_new_tokens=max_new_tokens)
    base_stats = pipe.last_stats
    added = pipe.add_plugins(stack)
    reduced = pipe.generate(images, prompts, max_new_tokens=max_new_tokens)
    stats = pipe.last_stats

    table = Table(title=f"{label} vs the unmodified model")
    for col in ("question", "baseline", label):
        table.add_column(col)
    for q, a, b in zip(prompts, baseline, reduced):
        table.add_row(q, a, b)
    console.print(table)
    for name, _ in stack:
        ps = stats.get(name, {})
        if "image_tokens_per_layer" in ps:
            console.print(f"{name}: image tokens per layer {[round(x, 1) for x in ps['image_tokens_per_layer']]}")
            console.print(
                f"{name}: mean image tokens kept {ps['mean_image_tokens']:.1f} of {ps['image_tokens_before'][0]:.0f} "
                f"({100 * ps['retained_fraction']:.0f}%), analytic prefill FLOPs {ps['prefill_flops_ratio']:.2f}x "
                "baseline"
            )
    console.print(f"wall time: baseline {base_stats['wall_time_s']:.3f}s, {label} {stats['wall_time_s']:.3f}s "
                  "(on tiny models hook overhead dominates; `mmeff bench tokens --speed` measures a 7B-shaped layout)")
    for plugin in reversed(added):
        pipe.remove_plugin(plugin.name)
    return {"baseline": baseline, label: reduced, "stats": stats}
