"""Faster autoregressive image generation: plain token-by-token sampling next to SJD, LANTERN and ZipAR.

    python demos/ar_accel.py                                          # bundled shapes-ar (8 x 8 tokens)
    python demos/ar_accel.py --model deepseek-community/Janus-Pro-1B  # a Janus checkpoint (576 tokens)
    python demos/ar_accel.py --prompt "two green squares" --seed 3

Writes a grid (one row per method, one column per prompt; each row's caption gives its
sequential forwards per image and the wall time) to --out (default demo_results/ar_accel.png).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import mmeff
from mmeff.bench.grid import save_image_grid
from mmeff.testbed.assets import SHAPES_AR

DEFAULT_PROMPTS = ["a red circle", "two blue squares", "a yellow star left of a green cross",
                   "a purple hexagon above an orange triangle"]


def methods(bundled: bool) -> list[tuple[str, str | None, dict]]:
    """Windows sized for the grid: the bundled model's rows are 8 tokens, Janus's 24."""
    zip_window = 2 if bundled else 8
    return [("plain", None, {}), ("SJD (window 16)", "sjd", {"window": 16}),
            ("LANTERN (k 8, δ 0.25)" if bundled else "LANTERN (k 1000, δ 0.1)", "lantern",
             {"window": 16, "k": 8, "delta": 0.25} if bundled else {"window": 16}),
            (f"ZipAR (window {zip_window})", "zipar", {"window": zip_window})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Janus checkpoint id or folder (default: bundled shapes-ar)")
    parser.add_argument("--prompt", action="append", help="repeatable (default: four testbed prompts)")
    parser.add_argument("--guidance", type=float, default=None, help="default: 3 (shapes-ar) or the model's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo_results/ar_accel.png")
    args = parser.parse_args()

    bundled = args.model is None
    pipe = mmeff.load(str(SHAPES_AR) if bundled else args.model)
    prompts = args.prompt or DEFAULT_PROMPTS
    guidance = args.guidance if args.guidance is not None else (3.0 if bundled else pipe.adapter.default_guidance)
    rows: list[tuple[str, np.ndarray]] = []
    for label, plugin, options in methods(bundled):
        if plugin:
            pipe.add_plugin(plugin, **options)
        images = pipe.generate_images(prompts, guidance_scale=guidance, seed=args.seed, output_type="np",
                                      progress=True)
        stats = dict(pipe.last_stats)
        rows.append((f"{label}\n{stats['sequential_forwards']} forwards, {stats['wall_time_s']:.2f} s", images))
        if plugin:
            pipe.remove_plugin(plugin)
        print(f"{label:28s} {stats['sequential_forwards']:4d} forwards for {stats['image_tokens']} tokens, "
              f"{stats['wall_time_s']:.2f} s")
    save_image_grid(Path(args.out), prompts, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
