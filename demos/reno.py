"""ReNO on a text-to-image pipeline: the plain image and the reward-optimised one, side by side.

    python demos/reno.py                                   # bundled shapes-sd + shapes_clip reward
    python demos/reno.py --model stabilityai/sd-turbo      # a real checkpoint, ReNO's four rewards
    python demos/reno.py --prompt "a red star and a blue circle" --iterations 30
    python demos/reno.py --model stabilityai/sd-turbo --device cuda --dtype fp16 --reward hpsv2 \
        --reward clip:0.01 --gradient-checkpointing                         # one GPU, two rewards

Writes a grid (plain | ReNO per prompt, with the oracle's verdict on the bundled model) and
the reward curve to --out (default demo_results/reno.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import mmeff
from mmeff.plugins.reno.config import PRECISIONS
from mmeff.rewards import parse_rewards
from mmeff.testbed.assets import SHAPES_SD, SHAPES_SD_CALL, SHAPES_SD_RENO

DEFAULT_PROMPTS = ["a circle left of a star", "three squares", "a yellow star and a purple hexagon",
                   "a triangle above a cross"]


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="diffusers model id or folder (default: bundled shapes-sd)")
    parser.add_argument("--prompt", action="append", help="repeatable (default: four testbed prompts)")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward", action="append", metavar="NAME[:WEIGHT]",
                        help="repeatable (default: shapes_clip on the bundled model, ReNO's four rewards otherwise)")
    parser.add_argument("--device", default="cpu", help="where the pipeline and the rewards run (cuda, mps, ...)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="the pipeline's weights")
    parser.add_argument("--precision", default="pipeline", choices=PRECISIONS,
                        help="ReNO's differentiable path under autocast (default: the pipeline's dtype)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more time")
    parser.add_argument("--out", default="demo_results/reno.png")
    args = parser.parse_args(argv)

    if args.dtype == "fp16" and args.device == "cpu":
        parser.error("--dtype fp16 is for GPUs (slow on the CPU, and the search's gradients get no loss scaling); "
                     "use fp32 or bf16 here")
    bundled = args.model is None
    pipe = mmeff.load(str(SHAPES_SD) if bundled else args.model, torch_dtype=DTYPES[args.dtype])
    pipe.model.to(args.device)
    prompts = args.prompt or DEFAULT_PROMPTS
    call = dict(SHAPES_SD_CALL) if bundled else {"num_inference_steps": 1, "guidance_scale": 0.0}
    if args.steps:
        call["num_inference_steps"] = args.steps
    options = {"rewards": {"shapes_clip": 1.0}, **SHAPES_SD_RENO} if bundled else {}
    if args.reward:
        options["rewards"] = parse_rewards(args.reward)
    options.update(precision=args.precision, gradient_checkpointing=args.gradient_checkpointing)

    def run() -> list[np.ndarray]:
        gens = [torch.Generator(args.device).manual_seed(args.seed + i) for i in range(len(prompts))]
        return list(pipe(prompts, generator=gens, output_type="np", **call).images)

    plain = run()
    pipe.add_plugin("reno", iterations=args.iterations, progress=True, **options)
    optimised = run()
    stats = pipe.last_stats["reno"]
    verdicts = _oracle(prompts, plain, optimised) if bundled else None
    _save(Path(args.out), prompts, plain, optimised, stats, verdicts)
    for i, p in enumerate(prompts):
        print(f"{p!r}: reward {stats['initial_reward'][i]:.3f} -> {stats['best_reward'][i]:.3f} "
              f"(best iteration {stats['best_iteration'][i]})")
    memory = f"peak {stats['peak_memory_kind']} {stats['peak_memory_mb']:.0f} MB"
    print(f"{stats['seconds']:.1f} s for {stats['iterations']} iterations, {memory}; wrote {args.out}")
    return stats


def _oracle(prompts: list[str], plain: list[np.ndarray], optimised: list[np.ndarray]) -> list[tuple[bool, bool]]:
    from mmeff.testbed.t2i_eval import to_uint8
    from mmeff.testbed.t2i_prompts import parse_prompt, score_image

    parsed = [parse_prompt(p) for p in prompts]
    return [(score_image(q, a), score_image(q, b)) if q else (None, None)
            for q, a, b in zip(parsed, to_uint8(plain), to_uint8(optimised))]


def _save(path: Path, prompts, plain, optimised, stats, verdicts) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(prompts)
    fig, axes = plt.subplots(2, n + 1, figsize=(2.6 * (n + 1), 5.4), squeeze=False)
    for i, prompt in enumerate(prompts):
        for row, (images, label) in enumerate(((plain, "plain"), (optimised, "ReNO"))):
            ax = axes[row][i]
            ax.imshow(images[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            tag = ""
            if verdicts and verdicts[i][row] is not None:
                tag = " ✓" if verdicts[i][row] else " ✗"
            ax.set_title(f"{label}{tag}", fontsize=9)
            if row == 0:
                ax.set_xlabel(prompt, fontsize=8)
                ax.xaxis.set_label_position("top")
    curve = axes[0][n]
    curve.plot(stats["reward"], label="current")
    curve.set_title("mean reward per iteration", fontsize=9)
    curve.set_xlabel("iteration")
    axes[1][n].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
