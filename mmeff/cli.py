"""The ``mmeff`` command line: ``list``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import registry


def cmd_list(args: argparse.Namespace) -> None:
    if args.markdown:
        print(registry.support_matrix_markdown())
        return
    console = Console(width=160)
    plugins, adapters = registry.list_plugins(args.filter), registry.list_adapters()
    table = Table(title="plugins × model families (✓ = supported, ✗ = refused; reasons and partial support below)")
    table.add_column("plugin")
    for a in adapters:
        table.add_column(a, justify="center")
    table.add_column("what it does")
    for p in plugins:
        cls = registry.get_plugin(p)
        table.add_row(p, *(registry.support_cell(p, a) for a in adapters), cls.description)
    console.print(table)
    for p in plugins:
        for a in adapters:
            if registry.support_cell(p, a) == "✗":
                console.print(f"✗ {p} on {a}: {registry.refusal(p, a)}")
            elif a in (notes := registry.get_plugin(p).notes):
                console.print(f"✓ {p} on {a}, partly: {notes[a]}")
    adapters_table = Table(title="adapters")
    adapters_table.add_column("adapter")
    adapters_table.add_column("models")
    for a in adapters:
        adapters_table.add_row(a, registry.get_adapter(a).description)
    console.print(adapters_table)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.model, args.plugin, args.max_new_tokens, json.loads(args.options))


def _bench_merge(args: argparse.Namespace) -> None:
    import sys

    from .bench.merge import LAYOUTS, run_merge_bench
    from .bench.merge_report import write_merge_report

    model = Path(args.model or "assets/models/shapes-sd")
    results = run_merge_bench(() if args.quality else tuple(LAYOUTS), repeats=args.runs,
                              model_dir=None if args.speed else model, per_category=args.per_category,
                              vit_rs=() if args.quality else (0, 8, 13, 16))
    write_merge_report(Path(args.out) / "merge", results, {"command": "mmeff " + " ".join(sys.argv[1:])})


def cmd_bench(args: argparse.Namespace) -> None:
    if args.suite == "merge":
        _bench_merge(args)
    if args.suite == "reno":
        _bench_reno(args)
    if args.suite == "ar":
        _bench_ar(args)
    if args.suite == "halluc":
        _bench_halluc(args)
    if args.suite == "tokens":
        import sys
        from dataclasses import replace

        from .bench.layouts import LAYOUTS
        from .bench.tokens import run_speed
        from .bench.tokens_report import write_combined

        out = Path(args.out) / "tokens"
        both = not (args.speed or args.quality)
        meta = {"command": "mmeff " + " ".join(sys.argv[1:]), "seed": args.seed,
                "quality_scenes": args.n_scenes or "40"}
        quality = speed = None
        if args.quality or both:
            from .bench.tokens_quality import run_quality, write_quality
            from .demo import load_demo_pipe

            pipe = load_demo_pipe(args.model, Console(width=160))
            quality = run_quality(pipe, n_scenes=args.n_scenes, seed=args.seed)
            write_quality(out / "quality", quality, meta)
        if args.speed or both:
            preset = LAYOUTS[args.layout]
            layout = replace(preset, layers=args.layers or preset.layers, hidden=args.hidden or preset.hidden)
            speed = run_speed(out / "speed", layout=layout, runs=args.runs, decode_tokens=args.decode_tokens,
                              attn_implementation=args.attn, ideal=not args.no_ideal)
        quality, speed = _earlier_tokens_results(out, quality, speed)
        write_combined(out, quality, speed, meta)
        Console().print(f"wrote {out}/report.md (+ quality/ and speed/ with JSON and plots)")


def _bench_halluc(args: argparse.Namespace) -> None:
    import json
    import sys

    import torch

    import mmeff

    from .bench.halluc import default_methods, run_quality, run_speed
    from .bench.halluc_report import write_report
    from .demo import load_demo_pipe
    from .testing import tiny_llava

    out = Path(args.out) / "halluc"
    both = not (args.speed or args.quality)
    pipe = load_demo_pipe(args.model, Console(width=160))
    methods = default_methods()
    n_pope, n_caption = args.n_scenes or 50, args.caption_scenes
    earlier = json.loads((out / "halluc.json").read_text()) if (out / "halluc.json").is_file() else {}
    quality = run_quality(pipe, methods, n_pope=n_pope, n_caption=n_caption, seeds=args.seeds) \
        if args.quality or both else earlier.get("quality", [])
    speed = run_speed(pipe, methods, tokens=args.decode_tokens, runs=args.runs) if args.speed or both \
        else earlier.get("speed", [])
    speed_7b = earlier.get("speed_7b_layout", [])
    if args.speed or both:  # the same loops on LLaVA-1.5-7B's token layout (32 layers, 576 image tokens), hidden 512
        big = mmeff.wrap(*tiny_llava(layers=32, hidden=512, heads=8, kv_heads=8, image_size=336, patch_size=14))
        speed_7b = run_speed(big, methods, batch=2, tokens=args.decode_tokens, runs=args.runs)
    where = pipe.model.device
    device = torch.cuda.get_device_name(where) if where.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    meta = {"command": "mmeff " + " ".join(sys.argv[1:]), "model": getattr(pipe.model.config, "_name_or_path", ""),
            "n_pope": n_pope, "n_caption": n_caption, "seeds": args.seeds, "device": device}
    write_report(out, quality, speed, meta, speed_7b)
    Console().print(f"wrote {out}/halluc.md (+ halluc.json and plots)")


def _bench_reno(args: argparse.Namespace) -> None:
    import sys

    import torch

    import mmeff

    from .bench.reno import run_bench
    from .bench.reno_report import write_report
    from .plugins.reno import RenoConfig, RewardSet
    from .rewards import load_reward, parse_rewards
    from .testbed.assets import SHAPES_SD, SHAPES_SD_CALL, SHAPES_SD_RENO
    from .testbed.t2i_prompts import eval_prompts

    model = args.model or str(SHAPES_SD)
    pipe = mmeff.load(model)
    pipe.model.to(args.device)
    weights = parse_rewards(args.reward or ["shapes_clip"])
    paths = dict(p.split("=", 1) for p in args.reward_path)
    rewards = RewardSet({n: load_reward(n, paths.get(n)) for n in weights}, weights)
    prompts = eval_prompts(args.per_category)
    steps = args.steps or SHAPES_SD_CALL["num_inference_steps"]
    guidance = args.guidance if args.guidance is not None else SHAPES_SD_CALL["guidance_scale"]
    options = {"lr": args.lr} if args.lr else dict(SHAPES_SD_RENO) if args.model is None else {}
    results = run_bench(pipe, rewards, prompts, args.seeds, iterations=args.iterations,
                        budgets=tuple(sorted({1, *(b for b in (10, 25) if b < args.iterations), args.iterations})),
                        num_inference_steps=steps, guidance_scale=guidance, batch_size=args.batch_size or 32,
                        reno_options=options)
    device = pipe.adapter.device
    meta = {"command": "mmeff " + " ".join(sys.argv[1:]), "model": model, "rewards": weights,
            "prompts": len(prompts), "seeds": args.seeds, "steps": steps, "guidance": guidance,
            "lr": options.get("lr", RenoConfig.lr),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads"}
    out = Path(args.out) / "reno"
    write_report(out, results, meta)
    Console().print(f"wrote {out}/reno.md (+ reno.json and plots)")


def _bench_ar(args: argparse.Namespace) -> None:
    """Discrete-token decode loops on shapes-ar and continuous-token ones on shapes-mar (or on --model)."""
    import sys

    import torch

    import mmeff

    from .bench.ar import METHODS, continuous_methods, run_bench, select_methods
    from .bench.ar_report import write_report
    from .testbed.ar_eval import SHAPES_AR_SAMPLING
    from .testbed.assets import SHAPES_AR, SHAPES_MAR, SHAPES_MAR_SMALL
    from .testbed.mar_eval import SHAPES_MAR_SAMPLING
    from .testbed.t2i_prompts import eval_prompts

    models = [args.model] if args.model else [str(m) for m in (SHAPES_AR, SHAPES_MAR) if m.is_dir()]
    prompts = eval_prompts(args.per_category)
    batch_size = args.batch_size or 1
    for model in models:
        pipe = mmeff.load(model)
        pipe.model.to(args.device)
        continuous = pipe.adapter.family == "ar_continuous"
        if continuous:
            sampling = dict(SHAPES_MAR_SAMPLING)
            methods = continuous_methods(args.draft or str(SHAPES_MAR_SMALL))
        else:
            sampling, methods = dict(SHAPES_AR_SAMPLING), METHODS
        try:
            methods = select_methods(methods, args.method)
        except ValueError as err:
            raise SystemExit(f"mmeff bench ar: {err}") from None
        if args.guidance is not None:
            sampling["guidance_scale"] = args.guidance
        seeds = list(range(args.seed, args.seed + args.seeds))
        results = run_bench(pipe, prompts, seeds, batch_size=batch_size, sampling=sampling, methods=methods)
        device = pipe.adapter.device
        meta = {"command": "mmeff " + " ".join(sys.argv[1:]), "model": model, "prompts": len(prompts),
                "seeds": args.seeds, "first_seed": args.seed, "images": len(prompts) * args.seeds,
                "batch_size": batch_size,
                "sampling": sampling, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU, {torch.get_num_threads()} threads"}
        out = Path(args.out) / ("ar_continuous" if continuous else "ar")
        write_report(out, results, meta)
        Console().print(f"wrote {out}/ar.md (+ ar.json and plots)")


def _earlier_tokens_results(out: Path, quality, speed):
    """A ``--speed`` or ``--quality`` run completes the report with the other half's last results."""
    import json

    q_file, s_file = out / "quality" / "tokens_quality.json", out / "speed" / "tokens_speed.json"
    if quality is None and q_file.is_file():
        quality = json.loads(q_file.read_text())["results"]
    if speed is None and s_file.is_file():
        speed = json.loads(s_file.read_text())
    return quality, speed


def cmd_eval(args: argparse.Namespace) -> None:
    from .demo import load_demo_pipe
    from .testbed.evaluate import parse_plugin_spec, run_eval

    pipe = load_demo_pipe(args.model, Console(width=160))
    for spec in args.plugin:
        name, options = parse_plugin_spec(spec)
        pipe.add_plugin(name, **options)
    for suite in args.suite:
        run_eval(pipe, suite, Path(args.out), n_scenes=args.n_scenes, batch_size=args.batch_size, seed=args.seed)


def cmd_testbed(args: argparse.Namespace) -> None:
    if args.what == "oracle":
        from .testbed.oracle_check import check_oracle

        check_oracle(args.n_scenes or 500, args.image_size, Path(args.out or "eval_results/oracle"))
        return
    if args.what == "export-lmms-eval":
        from .harness.export import export_tasks
        from .testbed.questions import SUITES

        out = Path(args.out or "lmms_eval_tasks")
        for path in export_tasks(out, tuple(args.suite or ()) or SUITES, n_scenes=args.n_scenes, seed=args.seed):
            print(f"wrote {path}")
        print(f"run: python -m lmms_eval --model mmeff --model_args pretrained=assets/models/shapes-llava "
              f"--tasks shapes_pope --include_path {out}")
        return
    if args.model is None:
        raise SystemExit("usage: mmeff testbed train vlm|sd|clip|ar|mar|mar-draft [--out DIR] [--run-dir DIR]")
    from .testbed.train import parse_overrides

    if (args.arch != "llava" or args.spec) and args.model != "vlm":
        raise SystemExit("--arch and --spec apply to `train vlm` only")
    name = "qwen2vl" if args.arch == "qwen2_vl" else TESTBED_MODELS[args.model]
    out = Path(args.out or f"assets/models/shapes-{name}")
    run_dir = Path(args.run_dir or f"runs/shapes-{name}")
    if args.model == "vlm":
        from .testbed.train import recipe_class, spec_class, train_vlm

        recipe_cls, spec_cls = recipe_class(args.arch), spec_class(args.arch)
        train_vlm(out, run_dir, recipe_cls(**parse_overrides(recipe_cls, args.recipe)),
                  spec=spec_cls(**parse_overrides(spec_cls, args.spec, "--spec")), arch=args.arch, device=args.device)
    elif args.model == "sd":
        from .testbed.train_sd import SDRecipe, train_sd

        train_sd(out, run_dir, SDRecipe(**parse_overrides(SDRecipe, args.recipe)), device=args.device)
    elif args.model == "ar":
        from .testbed.train_ar import ARRecipe, train_ar

        train_ar(out, run_dir, ARRecipe(**parse_overrides(ARRecipe, args.recipe)), device=args.device)
    elif args.model == "mar-draft":  # fine-tunes the draft on the target's predictions
        from .testbed.distill_mar import DistillRecipe, distill_draft

        distill_draft(out, run_dir, DistillRecipe(**parse_overrides(DistillRecipe, args.recipe)), device=args.device)
    elif args.model == "mar":  # the draft goes beside --out: <out>-small
        from .testbed.train_mar import MARRecipe, train_mar

        train_mar(out, run_dir, MARRecipe(**parse_overrides(MARRecipe, args.recipe)), device=args.device)
    else:
        from .testbed.train_clip import ClipRecipe, train_clip

        train_clip(out, run_dir, ClipRecipe(**parse_overrides(ClipRecipe, args.recipe)), device=args.device)


TESTBED_MODELS = {"vlm": "llava", "sd": "sd", "clip": "clip", "ar": "ar", "mar": "mar", "mar-draft": "mar-small"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmeff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every plugin, every adapter, and which plugin supports which model")
    p.add_argument("filter", nargs="?", default="*", help="fnmatch pattern over plugin names")
    p.add_argument("--markdown", action="store_true", help="print the support matrix as a markdown table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="answers with and without a plugin, on the bundled or a named model")
    p.add_argument("--model", help="hub id or local folder (default: bundled tiny model)")
    p.add_argument("--plugin", default="pyramid_drop")
    p.add_argument("--options", default="{}", help='plugin options as JSON, e.g. \'{"ratio": 0.25}\'')
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="score a model (+ plugins) on the shapes testbed's question suites")
    p.add_argument("--model", help="hub id or local folder (default: bundled shapes model, else tiny random)")
    p.add_argument("--suite", action="append", required=True,
                   choices=["pope", "attributes", "counting", "spatial", "caption"])
    p.add_argument("--plugin", action="append", default=[], help="name[:key=value,...], repeatable")
    p.add_argument("--n-scenes", type=int, default=None, help="scenes per suite (default: the suite's size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval_results")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("testbed", help="train the bundled shapes-testbed models; measure the OpenCV oracle")
    p.add_argument("what", choices=["train", "oracle", "export-lmms-eval"],
                   help="export-lmms-eval: write the eval suites as an lmms-eval task folder (--out) for "
                        "--include_path")
    p.add_argument("model", nargs="?", choices=list(TESTBED_MODELS),
                   help="what to train (train only): vlm = shapes-llava, sd = shapes-sd, clip = shapes-clip, "
                        "ar = shapes-ar, mar = shapes-mar + its draft shapes-mar-small, "
                        "mar-draft = distil shapes-mar-small on shapes-mar's predictions")
    p.add_argument("--arch", default="llava", choices=["llava", "qwen2_vl"],
                   help="train vlm: llava = shapes-llava, qwen2_vl = shapes-qwen2vl (Qwen2-VL, dynamic resolution)")
    p.add_argument("--out", help="train: where save_pretrained writes (default assets/models/shapes-<model>); "
                                 "oracle: report folder (default eval_results/oracle); "
                                 "export-lmms-eval: task folder (default lmms_eval_tasks)")
    p.add_argument("--run-dir", help="checkpoints (resume from here) and logs (default runs/shapes-<model>)")
    p.add_argument("--device", default="cpu",
                   help="train vlm|sd|clip|ar|mar: torch device (cuda trains the same recipe faster)")
    p.add_argument("--spec", action="append", default=[], metavar="NAME=VALUE",
                   help="train vlm: override a field of the model's shape, e.g. vision_hidden=128 (resume with the "
                        "same overrides)")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=VALUE",
                   help="train vlm|sd|clip|ar|mar: override a field of the recipe, e.g. unet_steps=12000 "
                        "(repeatable; mar: vae=DIR trains on another AutoencoderKL)")
    p.add_argument("--n-scenes", type=int, default=None,
                   help="oracle: held-out scenes to score (default 500); export-lmms-eval: scenes per suite "
                        "(default: mmeff eval's)")
    p.add_argument("--suite", action="append", choices=["pope", "attributes", "counting", "spatial", "caption"],
                   help="export-lmms-eval: suites to write (default all; repeatable)")
    p.add_argument("--seed", type=int, default=0, help="export-lmms-eval: question seed, as mmeff eval --seed")
    p.add_argument("--image-size", type=int, default=96, help="oracle: render size in pixels")
    p.set_defaults(func=cmd_testbed)

    p = sub.add_parser("bench", help="benchmarks that write JSON, a markdown report and plots")
    p.add_argument("suite", choices=["tokens", "halluc", "reno", "ar", "merge"])
    p.add_argument("--speed", action="store_true", help="only prefill/decode time, KV cache and FLOPs "
                                                         "on a 7B-layout random model")
    p.add_argument("--quality", action="store_true", help="only testbed accuracy per method and budget")
    p.add_argument("--model", help="quality: model folder (default: the bundled shapes-llava)")
    p.add_argument("--n-scenes", type=int, default=None,
                   help="quality: scenes per suite (tokens: default 40; halluc: POPE scenes, default 50)")
    p.add_argument("--caption-scenes", type=int, default=40, help="halluc: caption scenes for CHAIR")
    p.add_argument("--seeds", type=int, default=3,
                   help="halluc: seeds for the sampled rows; reno, ar: seeds per prompt")
    p.add_argument("--seed", type=int, default=0, help="tokens: the scenes' seed; ar: the first of the "
                                                       "--seeds seeds (other first seeds draw other images, to pool)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=16, help="tokens decoded per timed run")
    p.add_argument("--no-ideal", action="store_true", help="tokens --speed: skip timing the unmodified decoder at "
                   "the kept lengths (the 'ideal' columns)")
    p.add_argument("--layout", default="llava-1.5-7b", choices=["llava-1.5-7b", "qwen2.5-vl-7b"],
                   help="tokens --speed: whose token layout the random model has")
    p.add_argument("--layers", type=int, default=None, help="tokens --speed: decoder layers (default: the layout's)")
    p.add_argument("--hidden", type=int, default=None, help="tokens --speed: hidden size (default: the layout's)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--reward", action="append", help="reno: name[:weight], repeatable (default shapes_clip)")
    p.add_argument("--reward-path", action="append", default=[], help="reno: name=path to load a reward from")
    p.add_argument("--per-category", type=int, default=8, help="reno, ar: prompts per GenEval-style category")
    p.add_argument("--iterations", type=int, default=50, help="reno: generator + reward evaluations per image")
    p.add_argument("--steps", type=int, default=None, help="reno: denoising steps (default: the testbed's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="reno, ar: guidance scale (default: the testbed's)")
    p.add_argument("--lr", type=float, default=None,
                   help="reno: learning rate (default ReNO's 5.0; 0.625 on the bundled shapes-sd: SHAPES_SD_RENO)")
    p.add_argument("--batch-size", type=int, default=None, help="reno: default 32; ar: default 1 (per-sequence "
                                                                     "acceleration, as the papers measure it)")
    p.add_argument("--device", default="cpu", help="reno, ar: where the model runs")
    p.add_argument("--method", action="append", default=[], metavar="PATTERN",
                   help="ar: only the methods whose label matches (fnmatch, repeatable; plain always runs), "
                        "e.g. 'disa*'")
    p.add_argument("--draft", default=None, help="ar, continuous-token models: the draft for continuous_spec "
                                                 "(default: the bundled shapes-mar-small)")
    p.add_argument("--out", default="bench_results")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
