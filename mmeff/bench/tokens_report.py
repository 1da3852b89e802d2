"""The combined ``mmeff bench tokens`` report: quality and speed side by side, and the issue's
targets checked against what was measured (whatever it shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .methods import VISION_SIDE
from .report import markdown_table


def _pope(row: dict[str, Any]) -> float:
    s = row["scores"]
    return (s["pope_random"] + s["pope_popular"] + s["pope_adversarial"]) / 3


#: prefill speedups at 1/9 the issues name, per speed layout: vision-side methods, and PyramidDrop on Qwen
SPEED_TARGETS: dict[str, dict[str, float]] = {
    "llava-1.5-7b": {"vision": 3.0},
    "qwen2.5-vl-7b": {"vision": 4.0, "pyramid_drop": 1.8},
}


def check_targets(quality: list[dict[str, Any]] | None, speed: list[dict[str, Any]] | None,
                  layout: str = "llava-1.5-7b") -> list[list[str]]:
    """One row per target: what, measured, met?"""
    checks: list[list[str]] = []
    if quality:
        at = [r for r in quality if r["budget"] == "1/9"]
        random = next((r for r in at if r["plugin"] == "random_drop"), None)
        if at:
            best = max(at, key=lambda r: r["relative"]["pope_random"])
            rel = best["relative"]["pope_random"]
            checks.append(["best method at 1/9 keeps >= 95% of POPE-random", f"{best['method']}: {rel:.1%}",
                           "yes" if rel >= 0.95 else "no"])
        if random is not None:
            for r in at:
                if r["plugin"] != "random_drop":
                    ok = _pope(r) > _pope(random)
                    checks.append([f"{r['plugin']} beats random_drop at 1/9 (POPE, 3 splits)",
                                   f"{_pope(r):.3f} vs {_pope(random):.3f}", "yes" if ok else "no"])
        by = {r["plugin"]: r["scores"]["pope_random"] for r in at}
        if all(p in by for p in ("visionzip", "mustdrop", "fastv", "tome")):
            ahead = min(by["visionzip"], by["mustdrop"]) > max(by["fastv"], by["tome"])
            checks.append(["published order at 64 tokens: VisionZip, MustDrop ahead of FastV, ToMe (POPE-random)",
                           ", ".join(f"{p} {by[p]:.3f}" for p in ("visionzip", "mustdrop", "fastv", "tome")),
                           "replicates" if ahead else "does not replicate"])
    if speed:
        targets = SPEED_TARGETS.get(layout, SPEED_TARGETS["llava-1.5-7b"])
        for r in speed:
            plugin = r.get("plugin")
            goal = targets.get("vision") if plugin in VISION_SIDE else targets.get(plugin)
            if r.get("budget") == "1/9" and goal is not None:
                ok = r["prefill_speedup"] >= goal
                checks.append([f"{plugin} at 1/9: >= {goal:g}x prefill speedup", f"{r['prefill_speedup']:.2f}x",
                               "yes" if ok else "no"])
    return checks


def write_combined(out_dir: Path, quality: list[dict[str, Any]] | None, speed: dict[str, Any] | None,
                   meta: dict[str, Any]) -> None:
    md = ["# Vision-token reduction: quality and speed", ""]
    md += [f"Command: `{meta.get('command', 'mmeff bench tokens')}`", ""]
    layout = (speed or {}).get("layout", {}).get("reference", "llava-1.5-7b")
    checks = check_targets(quality, speed["results"] if speed else None, layout)
    if checks:
        md += ["## Targets", "", markdown_table(["target", "measured", "met"], checks), ""]
    if quality:
        md += [f"## Quality on {meta.get('model') or 'shapes-llava'}", "",
               f"Held-out testbed suites ({meta.get('quality_scenes')} scenes each, seed {meta.get('seed', 0)}); "
               "accuracy, with POPE-random relative to the unmodified model. *mean* = image tokens averaged over "
               "decoder layers, *final* = at the last layer (papers mix the two).", "",
               (out_dir / "quality" / "quality_table.md").read_text(), "",
               "![accuracy vs tokens](quality/accuracy_vs_tokens.png)", ""]
    if speed:
        md += [f"## Speed on a {speed.get('layout', {}).get('reference', 'LLaVA-1.5-7B')}-shaped random model", "",
               (out_dir / "speed" / "report.md").read_text().split("\n", 2)[2].replace("](", "](speed/"), ""]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
