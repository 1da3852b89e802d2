"""The picture ``mmeff demo`` writes: each scene, the true answer, and per method its answer (marked right
or wrong) over the image tokens it kept, so a reader sees what each method looked at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .app.overlay import kept_overlay


def write_demo_figure(path: str | Path, images: list[np.ndarray], prompts: list[str], truths: list[str],
                      answers: dict[str, list[str]], kept: dict[str, list[list[int]] | None],
                      tokens: dict[str, str], n_tokens: int) -> Path:
    """One row per scene: the scene with its question and truth, then one panel per method. ``kept[method]``
    gives per scene the ordinals of the image tokens the last decoder layer saw (None: all of them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(answers)
    fig, axes = plt.subplots(len(images), len(methods) + 1, figsize=(2.6 * (len(methods) + 1), 3.2 * len(images)),
                             squeeze=False, layout="constrained")
    for row, (image, prompt, truth) in enumerate(zip(images, prompts, truths)):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"{prompt}\ntruth: {truth}", fontsize=8, loc="left")
        for col, method in enumerate(methods, start=1):
            ax = axes[row, col]
            rows = kept[method]
            ax.imshow(kept_overlay(image, None if rows is None else rows[row], n_tokens, scale=1))
            answer = answers[method][row].strip()
            right = answer.lower().rstrip(".") == truth.lower()
            ax.set_title(f"{method}: {answer[:28]} {'✓' if right else '✗'}\n{tokens[method]}", fontsize=8,
                         color="tab:green" if right else "tab:red")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("mmeff demo: dimmed cells are image tokens a method dropped before the last decoder layer",
                 fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
