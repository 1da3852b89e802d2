"""``mmeff testbed``: train the bundled shapes-testbed models, check the oracle, export lmms-eval tasks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TESTBED_MODELS = {"vlm": "llava", "sd": "sd", "clip": "clip", "ar": "ar", "mar": "mar", "mar-draft": "mar-small",
                  "sd-lcm": "sd-lcm"}
SUITE_NAMES = ["pope", "attributes", "counting", "spatial", "caption"]


def add_testbed_parser(sub: Any) -> None:
    p = sub.add_parser("testbed", help="train the bundled shapes-testbed models; measure the OpenCV oracle")
    p.add_argument("what", choices=["train", "oracle", "export-lmms-eval"],
                   help="export-lmms-eval: write the eval suites as an lmms-eval task folder (--out) for "
                        "--include_path")
    p.add_argument("model", nargs="?", choices=list(TESTBED_MODELS),
                   help="what to train (train only): vlm = shapes-llava, sd = shapes-sd, clip = shapes-clip, "
                        "ar = shapes-ar, mar = shapes-mar + its draft shapes-mar-small, "
                        "mar-draft = distil shapes-mar-small on shapes-mar's predictions, "
                        "sd-lcm = distil shapes-sd into a 1-4 step model (latent consistency distillation)")
    p.add_argument("--arch", default="llava", choices=["llava", "qwen2_vl"],
                   help="train vlm: llava = shapes-llava, qwen2_vl = shapes-qwen2vl (Qwen2-VL, dynamic resolution)")
    p.add_argument("--out", help="train: where save_pretrained writes (default assets/models/shapes-<model>); "
                                 "oracle: report folder (default eval_results/oracle); "
                                 "export-lmms-eval: task folder (default lmms_eval_tasks)")
    p.add_argument("--run-dir", help="checkpoints (resume from here) and logs (default runs/shapes-<model>)")
    p.add_argument("--device", default="cpu",
                   help="train vlm|sd|sd-lcm|clip|ar|mar: torch device (cuda trains the same recipe faster)")
    p.add_argument("--spec", action="append", default=[], metavar="NAME=VALUE",
                   help="train vlm|ar: override a field of the model's shape, e.g. vision_hidden=128 or "
                        "codebook_size=512 (resume with the same overrides)")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=VALUE",
                   help="train vlm|sd|sd-lcm|clip|ar|mar: override a field of the recipe, e.g. unet_steps=12000 "
                        "(repeatable; ar: lm=DIR, sd: unet=DIR and mar: target=DIR continue an export; mar: "
                        "vae=DIR trains on another AutoencoderKL)")
    p.add_argument("--n-scenes", type=int, default=None,
                   help="oracle: held-out scenes to score (default 500); export-lmms-eval: scenes per suite "
                        "(default: mmeff eval's)")
    p.add_argument("--suite", action="append", choices=SUITE_NAMES,
                   help="export-lmms-eval: suites to write (default all; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="export-lmms-eval: question seed, as mmeff eval --seed")
    p.add_argument("--image-size", type=int, default=96, help="oracle: render size in pixels")
    p.set_defaults(func=run_testbed)



def run_testbed(args: argparse.Namespace) -> None:
    if args.what == "oracle":
        from ..testbed.oracle_check import check_oracle

        check_oracle(args.n_scenes or 500, args.image_size, Path(args.out or "eval_results/oracle"))
        return
    if args.what == "export-lmms-eval":
        from ..harness.export import export_tasks
        from ..testbed.questions import SUITES

        out = Path(args.out or "lmms_eval_tasks")
        for path in export_tasks(out, tuple(args.suite or ()) or SUITES, n_scenes=args.n_scenes, seed=args.seed):
            print(f"wrote {path}")
        print(f"run: python -m lmms_eval --model mmeff --model_args pretrained=assets/models/shapes-llava "
              f"--tasks shapes_pope --include_path {out}")
        return
    if args.model is None:
        raise SystemExit("usage: mmeff testbed train vlm|sd|sd-lcm|clip|ar|mar|mar-draft [--out DIR] [--run-dir DIR]")
    from ..testbed.train import parse_overrides

    if args.arch != "llava" and args.model != "vlm":
        raise SystemExit("--arch applies to `train vlm` only")
    if args.spec and args.model not in ("vlm", "ar"):
        raise SystemExit("--spec applies to `train vlm` and `train ar` only")
    name = "qwen2vl" if args.arch == "qwen2_vl" else TESTBED_MODELS[args.model]
    out = Path(args.out or f"assets/models/shapes-{name}")
    run_dir = Path(args.run_dir or f"runs/shapes-{name}")
    if args.model == "vlm":
        from ..testbed.train import recipe_class, spec_class, train_vlm

        recipe_cls, spec_cls = recipe_class(args.arch), spec_class(args.arch)
        train_vlm(out, run_dir, recipe_cls(**parse_overrides(recipe_cls, args.recipe)),
                  spec=spec_cls(**parse_overrides(spec_cls, args.spec, "--spec")), arch=args.arch, device=args.device)
    elif args.model == "sd":
        from ..testbed.train_sd import SDRecipe, train_sd

        train_sd(out, run_dir, SDRecipe(**parse_overrides(SDRecipe, args.recipe)), device=args.device)
    elif args.model == "ar":
        from ..testbed.ar_model import ShapesARSpec
        from ..testbed.train_ar import ARRecipe, train_ar

        train_ar(out, run_dir, ARRecipe(**parse_overrides(ARRecipe, args.recipe)),
                 spec=ShapesARSpec(**parse_overrides(ShapesARSpec, args.spec, "--spec")), device=args.device)
    elif args.model == "mar-draft":  # fine-tunes the draft on the target's predictions
        from ..testbed.distill_mar import DistillRecipe, distill_draft

        distill_draft(out, run_dir, DistillRecipe(**parse_overrides(DistillRecipe, args.recipe)), device=args.device)
    elif args.model == "sd-lcm":  # distils a teacher pipeline (--recipe teacher=DIR)
        from ..testbed.distill_sd import LCMRecipe, distill_sd

        distill_sd(out, run_dir, LCMRecipe(**parse_overrides(LCMRecipe, args.recipe)), device=args.device)
    elif args.model == "mar":  # the draft goes beside --out: <out>-small
        from ..testbed.train_mar import MARRecipe, train_mar

        train_mar(out, run_dir, MARRecipe(**parse_overrides(MARRecipe, args.recipe)), device=args.device)
    else:
        from ..testbed.train_clip import ClipRecipe, train_clip

        train_clip(out, run_dir, ClipRecipe(**parse_overrides(ClipRecipe, args.recipe)), device=args.device)


