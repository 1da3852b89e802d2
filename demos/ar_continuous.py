"""Continuous-token AR generation made cheaper: plain vs DiSA vs speculative decoding vs both.

    python demos/ar_continuous.py                                  # bundled shapes-mar + shapes-mar-small
    python demos/ar_continuous.py --model DIR --draft DIR          # any continuous_ar target / draft pair
    python demos/ar_continuous.py --prompt "two green squares" --seed 3

Writes a grid (one row per method, one column per prompt; each row's caption gives the target
forwards, the head denoising steps per image and the wall time) to --out
(default demo_results/ar_continuous.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mmeff
from mmeff.bench.grid import save_image_grid
from mmeff.testbed.assets import SHAPES_MAR, SHAPES_MAR_SMALL

DEFAULT_PROMPTS = ["two green squares", "a red circle", "a yellow star left of a blue cross",
                   "a purple hexagon above an orange triangle"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHAPES_MAR), help="continuous_ar target folder")
    parser.add_argument("--draft", default=str(SHAPES_MAR_SMALL), help="a smaller model of the same family")
    parser.add_argument("--prompt", action="append", help="repeatable (default: four testbed prompts)")
    parser.add_argument("--steps", type=int, default=50, help="head denoising steps without DiSA (and DiSA's upper)")
    parser.add_argument("--lower", type=int, default=5, help="DiSA's steps at the last token")
    parser.add_argument("--draft-len", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo_results/ar_continuous.png")
    args = parser.parse_args()

    pipe = mmeff.load(args.model)
    prompts = args.prompt or DEFAULT_PROMPTS
    disa = ("disa", {"upper": args.steps, "lower": args.lower})
    spec = ("continuous_spec", {"draft": args.draft, "draft_len": args.draft_len})
    rows = []
    for label, plugins in [("plain", []), (f"DiSA {args.steps}→{args.lower}", [disa]),
                           (f"speculative (k {args.draft_len})", [spec]), ("speculative + DiSA", [spec, disa])]:
        for name, options in plugins:
            pipe.add_plugin(name, **options)
        images = pipe.generate_images(prompts, seed=args.seed, diffusion_steps=args.steps, output_type="np",
                                      progress=True)
        stats = dict(pipe.last_stats)
        for name, _ in plugins:
            pipe.remove_plugin(name)
        rows.append((f"{label}\n{stats['target_forwards']} forwards, {stats['head_steps']} head steps\n"
                     f"{stats['wall_time_s']:.2f} s", images))
        accept = f", acceptance {stats['acceptance_rate']:.2f}" if "acceptance_rate" in stats else ""
        print(f"{label:24s} {stats['target_forwards']:4d} target forwards, {stats['head_steps']:5d} head steps"
              f"{accept}, {stats['wall_time_s']:.2f} s")
    save_image_grid(Path(args.out), prompts, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
