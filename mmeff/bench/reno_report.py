"""Tables, targets and plots for ``mmeff bench reno``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..memory import CUDA
from ..plugins.reno import RenoConfig
from ..testbed.t2i_prompts import CATEGORIES
from .report import markdown_table, print_table, write_json


def score_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """One row per (method, budget): oracle score per category and overall, mean best reward, time."""
    headers = ["method", "iterations", *CATEGORIES, "overall", "± se", "reward", "s / image"]
    rows = []
    plain = results["plain"]
    rows.append(["plain pipeline", 1, *_cats(plain), _se(plain), results["methods"]["reno"]["budgets"][0]["reward"],
                 plain["seconds_per_image"]])
    for method, label in (("best_of_n", "best-of-N (random noise)"), ("reno", "ReNO")):
        data = results["methods"][method]
        for b in data["budgets"]:
            if b["iterations"] == 1:
                continue  # iteration 0 is the plain image (checked equal while benchmarking)
            per_iteration = data["seconds_per_image"] / max(1, data["budgets"][-1]["iterations"])
            rows.append([label, b["iterations"], *_cats(b), _se(b), b["reward"], per_iteration * b["iterations"]])
    return headers, rows


def _cats(budget: dict[str, Any]) -> list[Any]:
    o = budget["oracle"]
    return [o.get(c) for c in CATEGORIES] + [o["overall"]]


def _se(budget: dict[str, Any]) -> float:
    p, n = budget["oracle"]["overall"], budget["n"]
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def target_checks(results: dict[str, Any]) -> list[list[Any]]:
    reno, bon = results["methods"]["reno"]["budgets"], results["methods"]["best_of_n"]["budgets"]
    plain = results["plain"]["oracle"]
    last = reno[-1]["oracle"]
    worse = [c for c in CATEGORIES if c in plain and last[c] <= plain[c]]
    paired = {d["iterations"]: d for d in results.get("paired", {}).get("reno_vs_best_of_n", [])}
    per_budget = [f"{r['iterations']}: {r['oracle']['overall']:.3f} vs {b['oracle']['overall']:.3f}"
                  + (f" ({_signed(paired[r['iterations']])} paired)" if r["iterations"] in paired else "")
                  for r, b in zip(reno, bon) if r["iterations"] > 1]
    beats = all(r["oracle"]["overall"] > b["oracle"]["overall"] for r, b in zip(reno, bon) if r["iterations"] > 1)
    clear = bool(paired) and all(d["difference"] > 2 * d["se"] for d in paired.values())
    return [
        ["ReNO beats best-of-N at equal compute (oracle, overall)", "at every budget",
         "; ".join(per_budget), _verdict(beats, clear)],
        ["ReNO improves every category over the plain pipeline", "all categories",
         "not: " + ", ".join(worse) if worse else "all improved", not worse],
    ]


def _verdict(ahead: bool, clear: bool) -> str:
    """A lead smaller than two paired standard errors is reported as such, not as a win."""
    if not ahead:
        return "no"
    return "yes (> 2 paired se everywhere)" if clear else "ahead, within 2 paired se"


def _signed(d: dict[str, Any]) -> str:
    return f"{d['difference']:+.3f} ± {d['se']:.3f}"


def paired_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """ReNO minus each baseline on the same images: the difference, its paired se, the discordant images."""
    headers = ["ReNO against", "iterations", "difference (overall)", "paired se", "difference / se",
               "images only ReNO got right", "images only the other got right"]
    rows = []
    for key, label in (("reno_vs_best_of_n", "best-of-N"), ("reno_vs_plain", "plain pipeline")):
        for d in results.get("paired", {}).get(key, []):
            ratio = d["difference"] / d["se"] if d["se"] > 0 else float("nan")
            rows.append([label, d["iterations"], d["difference"], d["se"], ratio, d["only_a"], d["only_b"]])
    return headers, rows


def alignment_rows(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The reward's ranking of the plain pipeline's samples, against the oracle's verdicts."""
    a = results.get("reward_alignment")
    if not a:
        return [], []
    headers = ["samples / prompt", "one sample (plain)", "reward's pick", "oracle's pick (ceiling)",
               "within-prompt AUC", "pairs"]
    return headers, [[a["samples_per_prompt"], a["mean_hit"]["overall"], a["reward_pick"]["overall"],
                      a["oracle_pick"]["overall"], a["auc"], a["pairs"]]]


def write_report(out_dir: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "reno.json", {"benchmark": "reno", **meta, **results})
    headers, rows = score_rows(results)
    print_table("mmeff bench reno: oracle prompt-following", headers, rows)
    checks = target_checks(results)
    print_table("targets", ["target", "wanted", "measured", "met"], checks)
    md = [
        "# mmeff bench reno", "",
        f"Pipeline: {meta['model']}; reward: {meta['rewards']}; {results['images']} images "
        f"({meta['prompts']} prompts x {meta['seeds']} seeds); {meta['steps']} denoising step(s), guidance "
        f"{meta['guidance']}; ReNO lr {meta.get('lr', RenoConfig.lr)}; device: {meta['device']}. Scores are the OpenCV "
        "oracle's GenEval-style verdicts (never the reward being optimised); overall = mean over categories; "
        "± se = binomial standard error of overall. Best-of-N draws as many noises as ReNO makes generator and "
        "reward evaluations.", "",
        "## Oracle prompt-following", "", markdown_table(headers, rows), "",
        "## Targets", "", markdown_table(["target", "wanted", "measured", "met"], checks), "",
        *_paired_section(results),
        *_alignment_section(results),
        "![curves](reno_curves.png)", "", "![categories](reno_categories.png)", "",
    ]
    if results.get("peak_memory_mb"):
        kind = results.get("peak_memory_kind", CUDA)  # older results measured CUDA only
        where = "GPU memory (allocated)" if kind == CUDA else "process memory (resident, models included)"
        added = results.get("peak_memory_added_mb", {})
        md.insert(4, f"Peak {where} per search: " + ", ".join(
            f"{m} {v:.0f} MB" + (f" (+{added[m]:.0f} MB over its start)" if m in added else "")
            for m, v in results["peak_memory_mb"].items()) + ".")
    (out_dir / "reno.md").write_text("\n".join(md) + "\n")
    _plot_curves(out_dir / "reno_curves.png", results)
    _plot_categories(out_dir / "reno_categories.png", results)


def _paired_section(results: dict[str, Any]) -> list[str]:
    return _section("ReNO minus each baseline, on the same images", *paired_rows(results),
                    "Every method runs on the same prompts and seeds, so the difference is taken image by image and "
                    "its standard error leaves out what the methods share (an easy prompt is easy for all of them). "
                    "Where two searches end on different images the pairing gains little: then the paired se is "
                    "about the two scores' ± se combined. Overall = mean over categories of the per-image "
                    "differences; paired se from their spread within each category. The last two columns count "
                    "the images where exactly one side passes the oracle.")


def _alignment_section(results: dict[str, Any]) -> list[str]:
    return _section("Does the reward rank the pipeline's own samples as the oracle would?", *alignment_rows(results),
                    "Plain samples of every prompt at other seeds, oracle score overall: of one sample, of the one "
                    "the reward ranks first, and of the best if the oracle picked; AUC over (accepted, rejected) "
                    "pairs of the same prompt (0.5 = chance). ReNO and best-of-N can only buy what this ranking "
                    "sees.")


def _section(title: str, headers: list[str], rows: list[list[Any]], explanation: str) -> list[str]:
    """A titled markdown table with what it means (also printed); nothing when the run has no such rows."""
    if not rows:
        return []
    print_table(title, headers, rows)
    return [f"## {title}", "", explanation, "", markdown_table(headers, rows), ""]


def _plot_curves(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plain = results["plain"]
    axes[0].axhline(plain["oracle"]["overall"], color="black", lw=1.0, label="plain pipeline")
    axes[0].axhspan(plain["oracle"]["overall"] - _se(plain), plain["oracle"]["overall"] + _se(plain), color="black",
                    alpha=0.08, lw=0)
    for method, color, label in (("reno", "tab:blue", "ReNO"), ("best_of_n", "tab:orange", "best-of-N")):
        curves = results["curves"][method]
        x = range(1, len(curves["oracle"]) + 1)
        axes[0].plot(x, curves["oracle"], color=color, label=label)
        axes[1].plot(x, curves["best_reward"], color=color, label=f"{label}: best so far")
        axes[1].plot(x, curves["current_reward"], color=color, ls=":", label=f"{label}: current")
    axes[0].set_title("oracle prompt-following of the kept image")
    axes[1].set_title("weighted reward (mean over images)")
    for ax in axes:
        ax.set_xlabel("generator + reward evaluations")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_categories(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    reno, bon = results["methods"]["reno"]["budgets"], results["methods"]["best_of_n"]["budgets"]
    series = [("plain", results["plain"], "tab:gray"), (f"best-of-{bon[-1]['iterations']}", bon[-1], "tab:orange"),
              (f"ReNO {reno[-1]['iterations']} it.", reno[-1], "tab:blue")]
    cats = [c for c in CATEGORIES if c in reno[0]["oracle"]] + ["overall"]
    x = np.arange(len(cats))
    fig, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    for i, (label, budget, color) in enumerate(series):
        rates = [budget["oracle"][c] for c in cats]
        # images per category: the prompt set is balanced over its categories
        sizes = [budget["n"] if c == "overall" else budget["n"] / (len(cats) - 1) for c in cats]
        errors = [math.sqrt(max(r * (1 - r), 0.0) / n) for r, n in zip(rates, sizes)]
        ax.bar(x + (i - 1) * 0.27, rates, 0.27, yerr=errors, capsize=2, label=label, color=color)
    ax.set_xticks(x, cats, rotation=20, ha="right")
    ax.set_ylabel("oracle success rate (± 1 s.e.)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
