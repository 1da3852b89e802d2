"""``mmeff bench <suite>``: one subcommand per benchmark, each with only its own options.

Every benchmark writes JSON, a markdown report and plots under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

LAYOUT_NAMES = ["llava-1.5-7b", "qwen2.5-vl-7b"]  # mmeff.bench.layouts.LAYOUTS (kept literal: --help stays fast)


def add_bench_parsers(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks that write JSON, a markdown report and plots",
                           description="Benchmarks: each writes JSON, a markdown report and plots under --out.")
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")

    p = suites.add_parser("tokens", help="vision-token reduction: speed on a 7B layout, accuracy on the testbed")
    _speed_quality(p, "prefill/decode time, KV cache and FLOPs on a 7B-layout random model",
                   "testbed accuracy per method and budget")
    p.add_argument("--model", help="quality: model folder (default: the bundled shapes-llava)")
    p.add_argument("--n-scenes", type=int, default=None, help="quality: scenes per suite (default 40)")
    p.add_argument("--seed", type=int, default=0, help="quality: the scenes' seed")
    p.add_argument("--runs", type=int, default=5, help="speed: timed runs per method")
    p.add_argument("--decode-tokens", type=int, default=16, help="speed: tokens decoded per timed run")
    p.add_argument("--no-ideal", action="store_true", help="speed: skip timing the unmodified decoder at the kept "
                   "lengths (the 'ideal' columns)")
    p.add_argument("--layout", default="llava-1.5-7b", choices=LAYOUT_NAMES, help="speed: whose token layout")
    p.add_argument("--layers", type=int, default=None, help="speed: decoder layers (default: the layout's)")
    p.add_argument("--hidden", type=int, default=None, help="speed: hidden size (default: the layout's)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="speed: attention implementation")
    _out(p)
    p.set_defaults(func=bench_tokens)

    p = suites.add_parser("halluc", help="contrastive decoding: POPE and CHAIR on the testbed, and its cost")
    _speed_quality(p, "decode time per method (testbed model and LLaVA-1.5-7B's layout)",
                   "POPE accuracy and CHAIR per method")
    p.add_argument("--model", help="model folder (default: the bundled shapes-llava)")
    p.add_argument("--n-scenes", type=int, default=None, help="POPE scenes (default 50)")
    p.add_argument("--caption-scenes", type=int, default=40, help="caption scenes for CHAIR")
    p.add_argument("--seeds", type=int, default=3, help="seeds for the sampled rows")
    p.add_argument("--runs", type=int, default=5, help="speed: timed runs per method")
    p.add_argument("--decode-tokens", type=int, default=16, help="speed: tokens decoded per timed run")
    _out(p)
    p.set_defaults(func=bench_halluc)

    p = suites.add_parser("reno", help="ReNO vs best-of-N vs plain sampling, paired, scored by the oracle")
    p.add_argument("--model", help="diffusers folder (default: the bundled shapes-sd)")
    p.add_argument("--reward", action="append", help="name[:weight], repeatable (default shapes_clip)")
    p.add_argument("--reward-path", action="append", default=[], help="name=path to load a reward from")
    p.add_argument("--per-category", type=int, default=8, help="prompts per GenEval-style category")
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    p.add_argument("--iterations", type=int, default=50, help="generator + reward evaluations per image")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the testbed's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the testbed's)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default ReNO's 5.0; 0.625 on the bundled shapes-sd: SHAPES_SD_RENO)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 32)")
    p.add_argument("--device", default="cpu", help="where the model runs")
    _out(p)
    p.set_defaults(func=bench_reno)

    p = suites.add_parser("ar", help="autoregressive image generation: speed-ups and quality per method")
    p.add_argument("--model", help="model folder (default: the bundled shapes-ar and shapes-mar)")
    p.add_argument("--per-category", type=int, default=8, help="prompts per GenEval-style category")
    p.add_argument("--seeds", type=int, default=3, help="seeds per prompt")
    p.add_argument("--seed", type=int, default=0, help="the first of the --seeds seeds (other first seeds draw "
                                                       "other images, to pool)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the testbed's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 1 (per-sequence acceleration, as the papers measure it)")
    p.add_argument("--device", default="cpu", help="where the model runs")
    p.add_argument("--method", action="append", default=[], metavar="PATTERN",
                   help="only the methods whose label matches (fnmatch, repeatable; plain always runs), e.g. 'disa*'")
    p.add_argument("--draft", default=None, help="continuous-token models: the draft for continuous_spec "
                                                 "(default: the bundled shapes-mar-small)")
    _out(p)
    p.set_defaults(func=bench_ar)

    p = suites.add_parser("merge", help="token merging in diffusion UNets (tomesd, tome_sd, todo) and timm ViTs")
    _speed_quality(p, "per-step time and attention FLOPs on SD 1.5 / SDXL token layouts, ViT images/s",
                   "oracle score and pixel difference on the bundled shapes-sd")
    p.add_argument("--model", help="quality: diffusers folder (default: the bundled shapes-sd)")
    p.add_argument("--runs", type=int, default=5, help="speed: timed runs per method")
    p.add_argument("--per-category", type=int, default=8, help="quality: prompts per GenEval-style category")
    p.add_argument("--layout", action="append", choices=["sd1.5-512", "sdxl-1024"],
                   help="speed: only these UNet layouts (repeatable; default both)")
    p.add_argument("--width-divisor", type=int, default=10,
                   help="speed: channel widths / N for the CPU (1 = the real models' widths, text width and norms)")
    p.add_argument("--no-vit", action="store_true", help="speed: skip the timm ViT timing")
    _out(p)
    p.set_defaults(func=bench_merge)


def _speed_quality(p: argparse.ArgumentParser, speed: str, quality: str) -> None:
    p.add_argument("--speed", action="store_true", help=f"only speed: {speed}")
    p.add_argument("--quality", action="store_true", help=f"only quality: {quality}")


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench_results", help="report folder (default bench_results)")


def bench_tokens(args: argparse.Namespace) -> None:
    import sys
    from dataclasses import replace

    from ..bench.layouts import LAYOUTS
    from ..bench.tokens import run_speed
    from ..bench.tokens_report import write_combined

    out = Path(args.out) / "tokens"
    both = not (args.speed or args.quality)
    meta = {"command": "mmeff " + " ".join(sys.argv[1:]), "seed": args.seed,
            "quality_scenes": args.n_scenes or "40"}
    quality = speed = None
    if args.quality or both:
        from ..bench.tokens_quality import run_quality, write_quality
        from ..demo import load_demo_pipe

        pipe = load_demo_pipe(args.model, Console(width=160))
        meta["model"] = Path(getattr(pipe.model.config, "_name_or_path", "") or "").name
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


def bench_halluc(args: argparse.Namespace) -> None:
    import json
    import sys

    import torch

    import mmeff

    from ..bench.halluc import default_methods, run_quality, run_speed
    from ..bench.halluc_report import write_report
    from ..demo import load_demo_pipe
    from ..testing import tiny_llava

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


def bench_reno(args: argparse.Namespace) -> None:
    import sys

    import torch

    import mmeff

    from ..bench.reno import run_bench
    from ..bench.reno_report import write_report
    from ..plugins.reno import RenoConfig, RewardSet
    from ..rewards import load_reward, parse_rewards
    from ..testbed.assets import SHAPES_SD, SHAPES_SD_CALL, SHAPES_SD_RENO
    from ..testbed.t2i_prompts import eval_prompts

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


def bench_ar(args: argparse.Namespace) -> None:
    """Discrete-token decode loops on shapes-ar and continuous-token ones on shapes-mar (or on --model)."""
    import sys
    from fnmatch import fnmatch

    import torch

    import mmeff

    from ..bench.ar import METHODS, continuous_methods, run_bench, select_methods
    from ..bench.ar_report import write_report
    from ..errors import ConfigError
    from ..plugin_spec import did_you_mean
    from ..testbed.ar_eval import SHAPES_AR_SAMPLING
    from ..testbed.assets import SHAPES_AR, SHAPES_MAR, SHAPES_MAR_SMALL
    from ..testbed.mar_eval import SHAPES_MAR_SAMPLING
    from ..testbed.t2i_prompts import eval_prompts

    labels = list(dict.fromkeys(m[0] for m in METHODS + continuous_methods(args.draft or str(SHAPES_MAR_SMALL))))
    for pattern in args.method:  # before any model loads
        if not any(fnmatch(label.lower(), pattern.lower()) for label in labels):
            raise ConfigError(f"--method {pattern!r} matches no method.{did_you_mean(pattern, labels)} "
                              f"The methods: {labels}")
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
        except ValueError:  # the patterns name only the other family's methods
            Console().print(f"{model}: no --method matches its methods; skipped")
            continue
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


def bench_merge(args: argparse.Namespace) -> None:
    import sys

    from ..bench.merge import LAYOUTS, run_merge_bench
    from ..bench.merge_report import write_merge_report
    from ..errors import ConfigError

    model = Path(args.model or "assets/models/shapes-sd")
    if args.width_divisor < 1:
        raise ConfigError(f"--width-divisor takes a whole number >= 1, got {args.width_divisor}")
    layouts = () if args.quality else tuple(args.layout or LAYOUTS)
    results = run_merge_bench(layouts, repeats=args.runs,
                              model_dir=None if args.speed else model, per_category=args.per_category,
                              vit_rs=() if args.quality or args.no_vit else (0, 8, 13, 16),
                              width_divisor=args.width_divisor)
    write_merge_report(Path(args.out) / "merge", results, {"command": "mmeff " + " ".join(sys.argv[1:])})


