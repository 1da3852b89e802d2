"""``mmeff demo``: the same questions answered by the unmodified model and by each method, beside the
true answers, in a table and in a picture of the image tokens each method kept.

Runs on a model you name, else on the bundled shapes-testbed model when it exists, else
on a tiny random-weight LLaVA (whose answers are noise: it shows the mechanics only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

import mmeff

from .testbed.assets import SHAPES_LLAVA
from .testbed.render import render
from .testbed.world import ObjectSpec, SceneSpec

BUNDLED = SHAPES_LLAVA


DEFAULT_METHODS = [("pyramid_drop", {}), ("fastv", {"budget": 64}), ("visionzip", {"budget": 64}),
                   ("random_drop", {"budget": 64})]  # the last is the control: a method should beat it
TRUTHS = ["yes", "three"]


def demo_inputs() -> tuple[list[np.ndarray], list[str]]:
    """Two shapes-testbed scenes (the bundled model's world) and a question about each (answers: ``TRUTHS``)."""
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
             max_new_tokens: int = 12, out: str | Path | None = "demo_results/demo.png") -> dict[str, Any]:
    """The demo questions answered by the unmodified model, then by each method in turn (default: PyramidDrop
    at its defaults, FastV, VisionZip and random drop at 1/9 of the tokens; ``plugins``: that one stack
    instead). Writes the picture to ``out`` (None: no picture)."""
    console = Console(width=160)
    pipe = load_demo_pipe(model, console)
    images, prompts = demo_inputs()
    methods = [[entry] for entry in DEFAULT_METHODS if mmeff.supported(entry[0], pipe.adapter.key)]
    if plugins:
        methods = [list(plugins)]
    pipe.generate(images[:1], prompts[:1], max_new_tokens=1)  # warm-up, so wall times compare fairly
    answers = {"unmodified": pipe.generate(images, prompts, max_new_tokens=max_new_tokens)}
    times = {"unmodified": pipe.last_stats["wall_time_s"]}
    kept: dict[str, list[list[int]] | None] = {"unmodified": None}
    tokens = {"unmodified": ""}
    n_tokens = 0
    for stack in methods:
        label = " + ".join(name for name, _ in stack)
        added = pipe.add_plugins(stack)
        try:
            answers[label] = pipe.generate(images, prompts, max_new_tokens=max_new_tokens)
            stats = pipe.last_stats
        finally:
            for plugin in reversed(added):
                pipe.remove_plugin(plugin.name)
        times[label] = stats["wall_time_s"]
        dropping = [stats[name] for name, _ in stack if "kept_image_tokens_by_row" in stats.get(name, {})]
        # the prompts' rows (a contrastive plugin's negative rows follow them in the batch)
        kept[label] = dropping[-1]["kept_image_tokens_by_row"][: len(prompts)] if dropping else None
        if dropping:
            n_tokens = int(dropping[-1]["image_tokens_before"][0])
            tokens[label] = f"{dropping[-1]['final_image_tokens']:.0f} of {n_tokens} tokens"
        else:
            tokens[label] = "all tokens"

    table = Table(title="answers: the unmodified model and each method (✓ = the true answer)")
    for col in ("question", "truth", *answers):
        table.add_column(col)
    for i, (question, truth) in enumerate(zip(prompts, TRUTHS)):
        marks = [f"{a[i]} {'✓' if a[i].strip().lower().rstrip('.') == truth else '✗'}" for a in answers.values()]
        table.add_row(question, truth, *marks)
    console.print(table)
    for label in answers:
        if tokens[label]:
            console.print(f"{label}: the last decoder layer sees {tokens[label]}; {times[label]:.3f}s for both "
                          "questions")
    console.print(f"unmodified: {times['unmodified']:.3f}s (on tiny models hook overhead dominates; "
                  "`mmeff bench tokens --speed` measures a 7B-shaped layout)")
    figure = None
    if out is not None and n_tokens:
        from .demo_figure import write_demo_figure

        figure = write_demo_figure(out, images, prompts, TRUTHS, answers, kept, tokens, n_tokens)
        console.print(f"wrote {figure}: each scene, the truth, and the tokens each method kept")
    return {"answers": answers, "truths": TRUTHS, "kept": kept, "figure": figure}
