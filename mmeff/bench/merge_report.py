"""``mmeff bench merge``'s JSON, markdown report and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import markdown_table, print_table, write_json


def speed_rows(result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for label, m in result["methods"].items():
        rows.append([label, f"{m['seconds_per_step'] * 1000:.0f}", f"{m['speedup']:.2f}x",
                     f"{m['self_attention_flops_ratio']:.2f}", f"{m['max_abs_diff_to_plain']:.3g}",
                     f"{m['max_abs_diff_to_tomesd']:.1e}" if "max_abs_diff_to_tomesd" in m else ""])
    return rows


SPEED_HEADERS = ["method", "ms / step", "speed-up", "self-attn FLOPs", "max abs diff to plain",
                 "max abs diff to tomesd"]


def write_merge_report(out_dir: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "merge.json", {**meta, **results})
    md = ["# Token merging in diffusion: `mmeff bench merge`", "", f"Command: `{meta['command']}`", "",
          "One denoiser step (batch 2, timestep 500) on random-weight UNets with the real models' token layouts "
          "and channel widths divided as each heading says (/ 1: the real widths); medians of interleaved repeats; "
          "speed-ups against the plain "
          "UNet of the same run; self-attention FLOPs at the real widths. `tomesd` and `tome_sd` run with random "
          "offsets off, so they merge the same tokens.", ""]
    for name, result in results["speed"].items():
        print_table(f"bench merge: {name}", SPEED_HEADERS, speed_rows(result))
        md += [f"## {name} (latent {result['latent']}x{result['latent']}, widths / {result['widths_divided_by']})",
               "", markdown_table(SPEED_HEADERS, speed_rows(result)), ""]
    if "quality" in results:
        headers = ["method", "oracle overall", "± se", "pixel diff to plain (0-255)", "images"]
        rows = [[label, f"{q['oracle']['overall']:.3f}", f"{q['se']:.3f}", f"{q['pixel_diff_to_plain']:.2f}", q["n"]]
                for label, q in results["quality"].items()]
        print_table("bench merge: shapes-sd quality", headers, rows)
        md += ["## Quality on shapes-sd (OpenCV oracle, 4 steps)", "", markdown_table(headers, rows), ""]
    if "vit" in results:
        headers = ["r", "final tokens", "images / s", "speed-up"]
        rows = [[v["r"], v["final_tokens"], f"{v['images_per_s']:.1f}", f"{v['speedup']:.2f}x"] for v in results["vit"]]
        print_table("bench merge: ToMe on vit_base_patch16_224", headers, rows)
        md += ["## ToMe on a random vit_base_patch16_224", "", markdown_table(headers, rows), ""]
    md += ["![speed](merge.png)", ""]
    (out_dir / "merge.md").write_text("\n".join(md))
    _plot(out_dir / "merge.png", results)


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(results["speed"]) + ("quality" in results) + ("vit" in results)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    axes = list(axes[0])
    ratios = results["ratios"]
    for ax, (name, result) in zip(axes, results["speed"].items()):
        m = result["methods"]
        for kind, marker in (("tomesd", "s"), ("tome_sd", "o")):
            ax.plot(ratios, [m[f"{kind}@{r}"]["speedup"] for r in ratios], marker=marker, label=kind)
        if "todo (x2)" in m:
            ax.axhline(m["todo (x2)"]["speedup"], color="tab:green", linestyle="--", label="todo (x2)")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(title=name, xlabel="merge ratio", ylabel="step speed-up vs plain")
        ax.legend(fontsize=8)
    rest = axes[len(results["speed"]):]
    if "quality" in results:
        ax = rest.pop(0)
        labels = list(results["quality"])
        values = [results["quality"][k]["oracle"]["overall"] for k in labels]
        errors = [results["quality"][k]["se"] for k in labels]
        ax.bar(range(len(labels)), values, yerr=errors, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set(title="shapes-sd: oracle score", ylim=(0, 1))
    if "vit" in results:
        ax = rest.pop(0)
        ax.plot([v["r"] for v in results["vit"]], [v["images_per_s"] for v in results["vit"]], marker="o")
        ax.set(title="ToMe on ViT-B/16", xlabel="r (tokens merged per block)", ylabel="images / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
