"""An image grid with a caption per row and a title per column, for demos comparing methods."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def save_image_grid(path: Path, titles: Sequence[str], rows: Sequence[tuple[str, Sequence[np.ndarray]]]) -> None:
    """``rows``: (caption, images as HxWx3 arrays) per row; one column per title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.2 * len(titles), 2.4 * len(rows)), squeeze=False)
    for r, (caption, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(titles[c], 24)), fontsize=8)
        axes[r][0].set_ylabel(caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
