"""Tables, targets and plots for ``mmeff bench ar``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .ar import PLAIN_MAR_STEPS, RELAXED_TAUS
from .report import markdown_table, print_table, write_json

HEADERS = ["method", "forwards / image", "forward reduction", "wall-time speed-up", "tokens / forward",
           "acceptance", "oracle overall", "± se", "token JS (bits)", "kind JS (bits)", "objects / image"]
CONTINUOUS_HEADERS = ["method", "target forwards / image", "forward reduction", "head steps / image",
                      "head-step reduction", "draft forwards / image", "wall-time speed-up", "acceptance",
                      "oracle overall", "± se", "kind JS (bits)", "objects / image"]


def is_continuous(results: dict[str, Any]) -> bool:
    return "head_steps_per_image" in results["methods"]["plain"]


def _se(data: dict[str, Any]) -> float:
    p = data["oracle"]["overall"]
    return math.sqrt(max(p * (1 - p), 1e-12) / data["n"])


def rows(results: dict[str, Any]) -> list[list[Any]]:
    out = []
    for label, d in [*results["methods"].items(), ("plain, other seeds (noise floor)", results["noise_floor"])]:
        if is_continuous(results):
            out.append([label, d["forwards_per_image"], d["forward_reduction"], d["head_steps_per_image"],
                        d["head_step_reduction"], d["draft_forwards_per_image"], d["wall_time_ratio"],
                        d["acceptance_rate"], d["oracle"]["overall"], _se(d), d["kind_js_bits"],
                        d["features"]["objects_mean"]])
        else:
            out.append([label, d["forwards_per_image"], d["forward_reduction"], d["wall_time_ratio"],
                        d["tokens_per_forward"], d["acceptance_rate"], d["oracle"]["overall"], _se(d),
                        d["token_js_bits"], d["kind_js_bits"], d["features"]["objects_mean"]])
    return out


def _equal_score(method: dict[str, Any], plain: dict[str, Any]) -> tuple[str, str, bool]:
    gap = method["oracle"]["overall"] - plain["oracle"]["overall"]
    noise = 2 * math.hypot(_se(method), _se(plain))
    return f"abs(gap) <= {noise:.3f}", f"{gap:+.3f}", abs(gap) <= noise


def target_checks(results: dict[str, Any]) -> list[list[Any]]:
    methods = results["methods"]
    plain = methods["plain"]
    checks = []
    sjd = methods.get("sjd w16")
    if sjd is not None:
        checks.append(["SJD: fewer sequential forwards", ">= 2x", f"{sjd['forward_reduction']:.2f}x",
                       sjd["forward_reduction"] >= 2])
        checks.append(["SJD: equal oracle score (within 2 se)", *_equal_score(sjd, plain)])
    disa = methods.get("disa 50→5 linear")
    if disa is not None:
        checks.append(["DiSA: fewer head denoising steps than plain at 50", ">= 3x",
                       f"{disa['head_step_reduction']:.2f}x", disa["head_step_reduction"] >= 3])
        checks.append(["DiSA: equal oracle score (within 2 se)", *_equal_score(disa, plain)])
        mar = methods.get(PLAIN_MAR_STEPS)
        if mar is not None:  # the paper's baseline: MAR's sampling default
            fewer = mar["head_steps_per_image"] / disa["head_steps_per_image"]
            checks.append([f"DiSA: fewer head denoising steps than {PLAIN_MAR_STEPS} (the paper's baseline)",
                           ">= 3x", f"{fewer:.2f}x", fewer >= 3])
            checks.append([f"DiSA: equal oracle score to {PLAIN_MAR_STEPS} (within 2 se)",
                           *_equal_score(disa, mar)])
    tau = RELAXED_TAUS[0]
    for name, label in (("speculative", "continuous_spec k8"),
                        (f"speculative, τ {tau} (relaxed)", f"continuous_spec k8 τ{tau}")):
        checks += _speculative_checks(name, methods.get(label), methods.get(f"{label} + disa"), disa, plain)
    return checks


def _speculative_checks(name: str, spec: dict | None, both: dict | None, disa: dict | None,
                        plain: dict) -> list[list[Any]]:
    if spec is None:
        return []
    checks = [[f"{name}: fewer target forwards", ">= 2x", f"{spec['forward_reduction']:.2f}x",
               spec["forward_reduction"] >= 2],
              [f"{name}: equal oracle score (within 2 se)", *_equal_score(spec, plain)]]
    if both is not None and disa is not None:
        faster = both["wall_time_ratio"] > max(disa["wall_time_ratio"], spec["wall_time_ratio"])
        checks.append([f"{name} + DiSA beat each alone (wall time)", "> each",
                       f"{both['wall_time_ratio']:.2f}x vs {disa['wall_time_ratio']:.2f}x / "
                       f"{spec['wall_time_ratio']:.2f}x", faster])
    return checks


def write_report(out_dir: Path, results: dict[str, Any], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "ar.json", {"benchmark": "ar", **meta, **results})
    table = rows(results)
    headers = CONTINUOUS_HEADERS if is_continuous(results) else HEADERS
    print_table("mmeff bench ar", headers, table)
    checks = target_checks(results)
    print_table("targets", ["target", "wanted", "measured", "met"], checks)
    md = [
        "# mmeff bench ar", "",
        f"Model: {meta['model']}; {meta['images']} images per method ({meta['prompts']} prompts x "
        f"{meta['seeds']} seeds from {meta.get('first_seed', 0)}), batch size {meta['batch_size']}; "
        f"sampling {meta['sampling']}; device: "
        f"{meta['device']}. Forwards count every sequential model call, the prompt's included. Wall-time "
        "speed-up = plain seconds per image / method's, measured in the same run. Oracle = the OpenCV oracle's "
        "GenEval-style verdicts, overall = mean over categories. Distribution check against plain sampling at "
        "the same seeds: Jensen-Shannon divergence of the image-token histogram (discrete tokens) and of the "
        "oracle's (colour, shape) detections; the last row is plain sampling at other seeds, i.e. the noise "
        "floor. Continuous tokens: head steps are the target's diffusion-head denoising steps per image "
        "(verification and resampling included), draft forwards the draft model's.", "",
        markdown_table(headers, table), "", "## Targets", "",
        markdown_table(["target", "wanted", "measured", "met"], checks), "", "![methods](ar_methods.png)", "",
    ]
    (out_dir / "ar.md").write_text("\n".join(md) + "\n")
    _plot(out_dir / "ar_methods.png", results)


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["methods"])
    data = [results["methods"][m] for m in labels]
    continuous = is_continuous(results)
    fig, axes = plt.subplots(1, 3 if continuous else 2, figsize=(17 if continuous else 12, 4))
    axes[0].barh(labels, [d["forwards_per_image"] for d in data], color="tab:blue")
    axes[0].set_xlabel("sequential (target) forwards per image (fewer is faster)")
    axes[0].invert_yaxis()
    if continuous:  # the head's denoising steps are the other half of the cost
        axes[1].barh(labels, [d["head_steps_per_image"] for d in data], color="tab:orange")
        axes[1].set_xlabel("target head denoising steps per image")
        axes[1].invert_yaxis()
        axes[1].set_yticklabels([])
    plain = next((d for d, label in zip(data, labels) if label == "plain"), None)
    if plain is not None:  # the baseline every method is judged against: its score ± se, and 1x
        level = plain["oracle"]["overall"]
        axes[-1].axhline(level, color="black", lw=1.0)
        axes[-1].axhspan(level - _se(plain), level + _se(plain), color="black", alpha=0.08, lw=0)
        axes[-1].axvline(1.0, color="black", lw=0.6, ls=":")
    for d, label in zip(data, labels):
        axes[-1].errorbar(d["forward_reduction"], d["oracle"]["overall"], yerr=_se(d), fmt="o", capsize=3)
        axes[-1].annotate(label, (d["forward_reduction"], d["oracle"]["overall"]), fontsize=8,
                          xytext=(4, 4), textcoords="offset points")
    axes[-1].set_xlabel("forward reduction vs plain (x)")
    axes[-1].set_ylabel("oracle prompt-following (overall, ± se)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
