"""``mmeff bench tokens`` quality half: testbed accuracy of every method at every budget.

All methods run on the same question sets (same seed) as the unmodified model, so each
accuracy is also reported relative to the baseline.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import registry
from ..pipeline import MMPipeline
from ..testbed.evaluate import run_eval
from ..testbed.questions import POPE_SPLITS
from .methods import Method, all_methods
from .report import markdown_table, print_table, write_json

SUITES = ("pope", "attributes", "counting", "spatial")
QUALITY_SCENES = {"pope": 40, "attributes": 40, "counting": 40, "spatial": 40}


def score_columns(results: dict[str, dict[str, Any]], key: str = "accuracy") -> dict[str, float]:
    """Flatten run_eval results into ``{"pope_random": acc, ..., "counting": acc}`` (``key="n"``: the counts)."""
    out: dict[str, float] = {}
    for suite, result in results.items():
        for split, metrics in result["metrics"].items():
            out[f"pope_{split}" if suite == "pope" else suite] = metrics[key]
    return out


def run_quality(
    pipe: MMPipeline, *, methods: list[Method] | None = None, n_scenes: int | None = None, seed: int = 0,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    methods = methods if methods is not None else all_methods()
    # methods the model's adapter refuses (vision-side ones on Qwen-VL's tower) are left out, as in the speed half
    methods = [m for m in methods if not m.plugin or registry.supported(m.plugin, pipe.adapter.key)]
    rows = []
    for method in tqdm([Method("baseline"), *methods], desc="bench tokens: quality", unit="method"):
        if method.plugin:
            pipe.add_plugin(method.plugin, **method.options)
        start = time.perf_counter()
        results = {
            suite: run_eval(pipe, suite, None, n_scenes=n_scenes or QUALITY_SCENES[suite], batch_size=batch_size,
                            seed=seed)
            for suite in SUITES
        }
        efficiency = results["pope"]["efficiency"]
        before = efficiency.get("image_tokens_before")
        rows.append({
            "method": method.label,
            "plugin": method.plugin,
            "budget": method.budget,
            "options": method.options,
            "scores": score_columns(results),
            "questions": score_columns(results, "n"),
            "pope_yes_ratio": {s: results["pope"]["metrics"][s]["yes_ratio"] for s in POPE_SPLITS},
            "mean_image_tokens": efficiency.get("mean_image_tokens", before),
            "final_image_tokens": efficiency.get("final_image_tokens", before),
            "image_tokens_before": before,
            "wall_time_s": time.perf_counter() - start,
        })
        if method.plugin:
            pipe.remove_plugin(method.plugin)
    full = next((r["image_tokens_before"] for r in rows if r["image_tokens_before"]), None)
    rows[0]["mean_image_tokens"] = rows[0]["final_image_tokens"] = full  # the unmodified model keeps all
    base = rows[0]["scores"]
    for row in rows:
        row["relative"] = {k: (v / base[k] if base[k] else 0.0) for k, v in row["scores"].items()}
    return rows


def quality_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    columns = list(rows[0]["scores"])
    headers = ["method", "mean img tokens", "final img tokens", *columns, "POPE-random rel."]
    table = [[r["method"], r["mean_image_tokens"], r["final_image_tokens"], *[r["scores"][c] for c in columns],
              r["relative"]["pope_random"]] for r in rows]
    return headers, table


def write_quality(out_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "tokens_quality.json", {"benchmark": "tokens quality", **meta, "results": rows})
    headers, table = quality_table(rows)
    print_table("mmeff bench tokens: quality", headers, table)
    (out_dir / "quality_table.md").write_text(markdown_table(headers, table) + "\n")

    plot_accuracy_vs_tokens(out_dir / "accuracy_vs_tokens.png", rows, meta.get("model", ""))



def plot_accuracy_vs_tokens(path: Path, rows: list[dict[str, Any]], model: str = "") -> None:
    """Accuracy against the image tokens the last layer sees, one line per method, ± one binomial standard
    error (rows without question counts: no bars), the unmodified model as a line with its band, the
    legend outside the axes so it hides nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    plugins = sorted({r["plugin"] for r in rows if r["plugin"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for ax, metric in zip(axes, ("pope_random", "counting")):
        for i, plugin in enumerate(plugins):
            pts = sorted((r["final_image_tokens"], r["scores"][metric], r.get("questions", {}).get(metric))
                         for r in rows if r["plugin"] == plugin)
            x = [p[0] * (1 + 0.015 * (i - len(plugins) / 2)) for p in pts]  # a small dodge: bars stay apart
            y = [p[1] for p in pts]
            err = [_binomial_se(p[1], p[2]) for p in pts]
            ax.errorbar(x, y, yerr=err if all(e is not None for e in err) else None, marker="o", capsize=3,
                        label=plugin, linestyle="--" if plugin == "random_drop" else "-", alpha=0.9)
        level, n = base["scores"][metric], base.get("questions", {}).get(metric)
        ax.axhline(level, color="black", lw=1.0, label="unmodified")
        if n:
            band = _binomial_se(level, n)
            ax.axhspan(level - band, level + band, color="black", alpha=0.08, lw=0)
        ax.set_xlabel("image tokens at the last decoder layer")
        ax.set_ylabel(f"{metric.replace('_', ' ')} accuracy")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    bars = "; bars and band: ± 1 s.e." if base.get("questions") else ""
    fig.suptitle(f"Accuracy vs retained image tokens{f' ({model})' if model else ''}{bars}")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _binomial_se(p: float, n: int | None) -> float | None:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else None
