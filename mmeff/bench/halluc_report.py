"""Tables, target checks and plots for ``mmeff bench halluc``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import markdown_table, print_table, write_json

QUALITY_COLUMNS = [
    ("random acc", "random_accuracy"), ("popular acc", "popular_accuracy"), ("adv. acc", "adversarial_accuracy"),
    ("adv. P", "adversarial_precision"), ("adv. R", "adversarial_recall"), ("adv. F1", "adversarial_f1"),
    ("adv. yes-ratio", "adversarial_yes_ratio"), ("adv. partner false-yes", "adversarial_false_yes_partner"),
    ("CHAIR_s", "chair_s"), ("CHAIR_i", "chair_i"), ("caption recall", "caption_recall"),
]


def _cell(metric: dict[str, float] | None, sampled: bool) -> str:
    if metric is None:
        return "–"
    return f"{metric['mean']:.3f} ± {metric['std']:.3f}" if sampled else f"{metric['mean']:.3f}"


def quality_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["method", "kind", "seeds", *[c for c, _ in QUALITY_COLUMNS]]
    table = [[r["method"], r["kind"], r["seeds"],
              *[_cell(r["metrics"].get(k), r["sampled"]) for _, k in QUALITY_COLUMNS]] for r in rows]
    return headers, table


def speed_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["method", "decode ms/token", "× single-branch", "prefill ms", "× single-branch", "branch setup ms"]
    return headers, [[r["method"], r["per_token_ms"], r["per_token_ratio"], r["prefill_ms"], r["prefill_ratio"],
                      r["branch_setup_ms"]] for r in rows]


def _m(row: dict[str, Any], key: str) -> float:
    return row["metrics"][key]["mean"]


def target_checks(quality: list[dict[str, Any]], speed: list[dict[str, Any]]) -> list[list[Any]]:
    """The issue's targets, measured: best method vs greedy; two-branch cost per token (on the
    speed rows given: the 7B-layout ones when there are any)."""
    greedy = next(r for r in quality if r["method"] == "greedy")
    methods = [r for r in quality if r["kind"] == "method"]
    best = max(methods, key=lambda r: _m(r, "adversarial_f1"))
    gain = _m(best, "adversarial_f1") - _m(greedy, "adversarial_f1")
    random_delta = _m(best, "random_accuracy") - _m(greedy, "random_accuracy")
    chair_best = min(methods, key=lambda r: _m(r, "chair_i"))
    two_branch = [r for r in speed if r["method"] not in ("greedy", "vdgd")]
    worst = max(two_branch, key=lambda r: r["per_token_ratio"]) if two_branch else None
    yes_shift = _m(best, "adversarial_yes_ratio") - _m(greedy, "adversarial_yes_ratio")
    return [
        ["best adversarial F1 gain over greedy", "≥ +0.030", f"{best['method']}: {gain:+.3f} "
         f"(yes-ratio {yes_shift:+.3f})", gain >= 0.03],
        ["… without lowering random accuracy", "≥ 0", f"{random_delta:+.3f}", random_delta >= 0],
        ["lowest CHAIR_i vs greedy", "lower", f"{chair_best['method']}: {_m(chair_best, 'chair_i'):.3f} vs "
         f"{_m(greedy, 'chair_i'):.3f}", _m(chair_best, "chair_i") < _m(greedy, "chair_i")],
        ["two-branch decode per token", "≤ 1.5× single-branch",
         f"worst {worst['method']}: {worst['per_token_ratio']:.2f}×" if worst else "–",
         bool(worst and worst["per_token_ratio"] <= 1.5)],
    ]


def write_report(out_dir: Path, quality: list[dict[str, Any]], speed: list[dict[str, Any]], meta: dict[str, Any],
                 speed_7b: list[dict[str, Any]] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    speed_7b = speed_7b or []
    write_json(out_dir / "halluc.json", {"benchmark": "halluc", **meta, "quality": quality, "speed": speed,
                                          "speed_7b_layout": speed_7b})
    md = ["# mmeff bench halluc", "", f"Model: {meta['model']}; {meta['n_pope']} scenes per POPE split "
          f"({meta['n_pope'] * 6} questions), {meta['n_caption']} captions; sampled rows: {meta['seeds']} seeds "
          "(mean ± std); device: " + meta["device"] + ".", ""]
    if quality:
        headers, table = quality_table(quality)
        print_table("mmeff bench halluc: quality", headers, table)
        md += ["## Quality", "", markdown_table(headers, table), "", "![quality](halluc_quality.png)", ""]
    if speed:
        headers, table = speed_table(speed)
        print_table("mmeff bench halluc: speed (shapes-llava)", headers, table)
        md += ["## Speed on shapes-llava (same loop, same batch of 8, medians)", "", markdown_table(headers, table), ""]
    if speed_7b:
        headers, table = speed_table(speed_7b)
        print_table("mmeff bench halluc: speed (7B layout)", headers, table)
        md += ["## Speed on LLaVA-1.5-7B's token layout (random weights, 32 layers, 576 image tokens, hidden 512; "
               "batch of 2, medians)", "", markdown_table(headers, table), ""]
    if quality and speed:
        checks = target_checks(quality, speed_7b or speed)
        print_table("targets", ["target", "wanted", "measured", "met"], checks)
        md += ["## Targets", "", markdown_table(["target", "wanted", "measured", "met"], checks), "",
               "![tradeoff](halluc_tradeoff.png)", ""]
    (out_dir / "halluc.md").write_text("\n".join(md) + "\n")
    if quality:
        _plot_quality(out_dir / "halluc_quality.png", quality)
    if quality and speed:
        _plot_tradeoff(out_dir / "halluc_tradeoff.png", quality, speed)


def _plot_quality(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=False)
    names = [r["method"] for r in rows]
    colors = ["tab:gray" if r["kind"] == "control" else "tab:blue" for r in rows]
    for ax, (key, title) in zip(axes, [("adversarial_f1", "POPE adversarial F1"),
                                       ("adversarial_yes_ratio", "adversarial yes-ratio (0.5 = balanced)"),
                                       ("chair_i", "caption CHAIR_i (lower is better)")]):
        means = [r["metrics"][key]["mean"] for r in rows]
        stds = [r["metrics"][key]["std"] for r in rows]
        ax.barh(names, means, xerr=stds, color=colors)
        greedy = next(r for r in rows if r["method"] == "greedy")["metrics"][key]["mean"]
        ax.axvline(greedy, color="black", lw=0.8)
        if key == "adversarial_yes_ratio":
            ax.axvline(0.5, color="tab:green", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
    fig.suptitle("Contrastive decoding on shapes-llava (grey: controls; line: greedy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_tradeoff(path: Path, quality: list[dict[str, Any]], speed: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = {r["method"]: r["per_token_ratio"] for r in speed}
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in quality:
        if r["method"] in ratio:
            ax.scatter(ratio[r["method"]], r["metrics"]["adversarial_f1"]["mean"],
                       color="tab:gray" if r["kind"] == "control" else "tab:blue")
            ax.annotate(r["method"], (ratio[r["method"]], r["metrics"]["adversarial_f1"]["mean"]), fontsize=8)
    ax.axvline(1.5, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("decode time per token (× single-branch loop)")
    ax.set_ylabel("POPE adversarial F1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
