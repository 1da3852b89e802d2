"""``mmeff testbed oracle``: measure the OpenCV oracle on held-out renders.

Generation benchmarks score images with the oracle, so its own error has to be known:
this reports object-level precision / recall / F1 overall and per shape and background.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..bench.report import markdown_table, print_table, write_json
from .oracle import detect, match, object_f1
from .questions import EVAL_SEED_OFFSET
from .render import render
from .world import sample_scene

#: far from the training seeds and from the question suites' scenes
ORACLE_SEED_OFFSET = EVAL_SEED_OFFSET + 900_000


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    return {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "f1": object_f1(tp, fp, fn),
            "objects": tp + fn}


def check_oracle(n_scenes: int = 500, image_size: int = 96, out_dir: Path | None = None) -> dict[str, Any]:
    totals = np.zeros(3, int)
    by_background: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, int))
    shape_hits: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2, int))  # found, total
    for seed in tqdm(range(ORACLE_SEED_OFFSET, ORACLE_SEED_OFFSET + n_scenes), desc="oracle", unit="scene"):
        scene = sample_scene(seed, image_size=image_size)
        found = detect(np.asarray(render(scene)))
        counts = np.array(match(found, list(scene.objects)))
        totals += counts
        by_background[scene.background] += counts
        for obj in scene.objects:
            shape_hits[obj.shape] += (match(found, [obj])[0], 1)
    result = {
        "n_scenes": n_scenes,
        "image_size": image_size,
        "overall": _prf(*totals),
        "by_background": {k: _prf(*v) for k, v in sorted(by_background.items())},
        "recall_by_shape": {k: float(v[0] / v[1]) for k, v in sorted(shape_hits.items())},
    }
    if out_dir is not None:
        write_oracle_report(Path(out_dir), result)
    return result


def write_oracle_report(out_dir: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "oracle.json", result)
    headers = ["scenes", "precision", "recall", "f1", "objects"]
    rows = [["all", *result["overall"].values()]] + [[k, *v.values()] for k, v in result["by_background"].items()]
    print_table(f"oracle on {result['n_scenes']} held-out {result['image_size']} px renders", headers, rows)
    md = [f"# OpenCV oracle: {result['n_scenes']} held-out scenes at {result['image_size']} px", "",
          markdown_table(headers, rows), "", "Recall by shape: " + ", ".join(
              f"{k} {v:.3f}" for k, v in result["recall_by_shape"].items()), "", "![recall by shape](oracle.png)"]
    (out_dir / "oracle.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.bar(list(result["recall_by_shape"]), list(result["recall_by_shape"].values()))
    ax.set_ylim(0.9, 1.0)
    ax.set_ylabel("recall")
    fig.tight_layout()
    fig.savefig(out_dir / "oracle.png", dpi=110)
    plt.close(fig)
