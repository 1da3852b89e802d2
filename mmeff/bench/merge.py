"""``mmeff bench merge``: token merging in diffusion (plain, tomesd, tome_sd, todo) and ToMe on a timm ViT.

Speed: one denoiser step (batch 2, as classifier-free guidance runs it) on random-weight UNets with
SD 1.5's token layout at 512 px and SDXL's at 1024 px, channel widths divided for the CPU; medians of
interleaved repeats, ratios against the plain UNet of the same run; analytic self-attention FLOPs at
the real models' widths. Quality: the bundled shapes-sd on the shapes prompt set, scored by the
OpenCV oracle, and the mean pixel difference to the plain images. ViT: images/s of a random
``vit_base_patch16_224`` against ToMe's r.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

RATIOS = (0.3, 0.5, 0.7)
TIMESTEP = 500  # above ToDo's 0.2 switch: the downsampling path


@dataclass(frozen=True)
class UNetLayout:
    """A UNet2DConditionModel's token layout; ``widths`` are the real model's, ``divide`` shrinks them for the CPU."""

    name: str
    pixels: int
    widths: tuple[int, ...]
    down: tuple[str, ...]
    up: tuple[str, ...]
    transformer_layers: tuple[int, ...]
    head_dim: int
    divide: int = 10
    first_attention: int = 1  # downsampling of the highest-resolution blocks with attention (SDXL: 2)
    cross_dim: int = 64  # text-embedding width (the real models': 768 SD 1.5, 2048 SDXL)
    groups: int = 8  # GroupNorm groups (the real models': 32)

    def at_width_divisor(self, divide: int) -> UNetLayout:
        """The same layout at ``widths / divide``; at 1 the real model's widths, text width and norm groups."""
        if divide == 1:
            return replace(self, divide=1, cross_dim=REAL_CROSS_DIM[self.name], groups=32)
        return replace(self, divide=divide)

    @property
    def latent(self) -> int:
        return self.pixels // 8

    def build(self, seed: int = 0):
        from diffusers import UNet2DConditionModel

        torch.manual_seed(seed)
        widths = tuple(w // self.divide for w in self.widths)
        return UNet2DConditionModel(
            sample_size=self.latent, block_out_channels=widths, layers_per_block=2, down_block_types=self.down,
            up_block_types=self.up, transformer_layers_per_block=self.transformer_layers,
            attention_head_dim=tuple(max(1, w // self.head_dim) for w in widths), cross_attention_dim=self.cross_dim,
            norm_num_groups=self.groups).eval()


SD15 = UNetLayout("sd1.5-512", 512, (320, 640, 1280, 1280),
                  ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), (1, 1, 1, 1), 40)
SDXL = UNetLayout("sdxl-1024", 1024, (320, 640, 1280),
                  ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), (1, 2, 10), 64, first_attention=2)
LAYOUTS = {layout.name: layout for layout in (SD15, SDXL)}
REAL_CROSS_DIM = {"sd1.5-512": 768, "sdxl-1024": 2048}


def methods(layout: UNetLayout, ratios: tuple[float, ...]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, kind, options): the released tomesd and mmeff's tome_sd at each ratio, random offsets off so
    both merge the same tokens; ToDo at factor 2 (it has no ratio). On SDXL, whose top level has no
    attention, both methods' defaults do nothing: there ToMe runs at max_downsample 2 and ToDo downsamples
    level 2 by 2."""
    tome = {"use_rand": False} | ({"max_downsample": 2} if layout.first_attention == 2 else {})
    todo = {"downsample_factor_level_2": 2} if layout.first_attention == 2 else {}
    out = [("plain", "plain", {})]
    for r in ratios:
        out += [(f"tomesd@{r}", "tomesd", {"ratio": r, **tome}), (f"tome_sd@{r}", "tome_sd", {"ratio": r, **tome})]
    return out + [("todo (x2)", "todo", todo)]


def attach(unet, kind: str, options: dict[str, Any]) -> Callable[[], None]:
    """Put a method on ``unet``; returns the function that takes it off again."""
    if kind == "plain":
        return lambda: None
    if kind == "tomesd":
        import tomesd

        tomesd.apply_patch(unet, **options)
        return lambda: tomesd.remove_patch(unet)
    from ..pipeline import MMPipeline

    pipe = MMPipeline(unet, adapter=_UNetOnly(unet))
    pipe.add_plugin(kind, **options)
    return pipe.remove_all_plugins


class _UNetOnly:
    """A bare UNet as a text-to-image adapter: all that token-merging plugins ask of one (the denoiser, the hook
    roots), so the bench times the UNet step alone, without a VAE or text encoder around it."""

    key = "diffusers_t2i"
    family = "t2i"

    def __init__(self, unet) -> None:
        self.denoiser = unet

    def hook_roots(self):
        return [self.denoiser]


def time_steps(layout: UNetLayout, ratios: tuple[float, ...], repeats: int, seed: int = 0) -> dict[str, Any]:
    """Seconds per denoiser step for every method, interleaved so drift hits all alike."""
    unet = layout.build(seed)
    record_attention(unet, layout)
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, layout.latent, layout.latent, generator=g)
    text = torch.randn(2, 77, layout.cross_dim, generator=g)
    timestep = torch.tensor(TIMESTEP)
    runs = methods(layout, ratios)
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    tokens: dict[str, Any] = {}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for rep in tqdm(range(repeats + 1), desc=f"bench merge: {layout.name}", leave=False):
            for label, kind, options in runs:
                detach = attach(unet, kind, options)
                start = time.perf_counter()
                out = unet(sample, timestep, encoder_hidden_states=text).sample
                elapsed = time.perf_counter() - start
                if rep:  # the first round warms up
                    seconds[label].append(elapsed)
                else:
                    outputs[label] = out
                    tokens[label] = attention_tokens(unet)
                detach()
    plain = statistics.median(seconds["plain"])
    rows = {}
    for label, kind, options in runs:
        median = statistics.median(seconds[label])
        rows[label] = {"seconds_per_step": median, "speedup": plain / median, "kind": kind, "options": options,
                       "self_attention_flops_ratio": flops_ratio(layout, tokens[label], tokens["plain"]),
                       "max_abs_diff_to_plain": float((outputs[label] - outputs["plain"]).abs().max())}
    for r in ratios:  # the released and mmeff's ToMe-SD on the same step
        rows[f"tome_sd@{r}"]["max_abs_diff_to_tomesd"] = float(
            (outputs[f"tome_sd@{r}"] - outputs[f"tomesd@{r}"]).abs().max())
    return {"layout": layout.name, "latent": layout.latent, "widths_divided_by": layout.divide, "methods": rows}


def attention_tokens(unet) -> list[tuple[int, int, int]]:
    """(queries, keys, real width) of every self-attention in the last forward, recorded by forward hooks."""
    return list(getattr(unet, "_bench_attn", []))


def record_attention(unet, layout: UNetLayout) -> None:
    """Hooks on every ``attn1.to_q`` / ``to_k`` that note the tokens each self-attention ran on."""
    unet._bench_attn = []

    def real_width(features: int) -> int:  # the divided model rounds widths to whole heads (1280 / 10 -> 126)
        return min(layout.widths, key=lambda w: abs(w / layout.divide - features))

    def reset(module, args, kwargs):
        unet._bench_attn = []

    unet.register_forward_pre_hook(reset, with_kwargs=True)
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            width = real_width(module.to_q.in_features)
            state: dict[str, int] = {}
            module.to_q.register_forward_hook(lambda m, a, o, s=state: s.__setitem__("q", a[0].shape[1]))
            module.to_k.register_forward_hook(
                lambda m, a, o, s=state, w=width: unet._bench_attn.append((s["q"], a[0].shape[1], w)))


def flops_ratio(layout: UNetLayout, tokens: list[tuple[int, int, int]], plain: list[tuple[int, int, int]]) -> float:
    """Self-attention FLOPs (projections + QK^T + AV) at the real widths, against the plain UNet."""
    def flops(rows):
        return sum(2 * (2 * q + 2 * k) * w * w + 4 * q * k * w for q, k, w in rows)

    return flops(tokens) / flops(plain) if plain else float("nan")


def vit_speed(rs: tuple[int, ...], batch: int, repeats: int, seed: int = 0) -> list[dict[str, Any]]:
    """Images per second of a random vit_base_patch16_224 with ToMe at each r (r=0: the plain model)."""
    import timm

    from ..pipeline import wrap

    torch.manual_seed(seed)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    pipe = wrap(vit)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    seconds: dict[int, list[float]] = {r: [] for r in rs}
    tokens: dict[int, int] = {}
    with torch.no_grad():
        for rep in tqdm(range(repeats + 1), desc="bench merge: vit", leave=False):
            for r in rs:
                pipe.add_plugin("tome", r=r)
                start = time.perf_counter()
                pipe(images)
                if rep:
                    seconds[r].append(time.perf_counter() - start)
                tokens[r] = pipe.last_stats["tome"]["final_tokens"]
                pipe.remove_plugin("tome")
    base = statistics.median(seconds[rs[0]])
    return [{"r": r, "images_per_s": batch / statistics.median(seconds[r]), "speedup": base / statistics.median(
        seconds[r]), "final_tokens": tokens[r]} for r in rs]


def quality(model_dir: Path, ratios: tuple[float, ...], per_category: int, seeds: tuple[int, ...],
            steps: int = 4) -> dict[str, Any]:
    """Oracle prompt-following on shapes-sd per method, and the mean pixel difference to the plain images."""
    from diffusers import StableDiffusionPipeline

    from ..pipeline import wrap
    from ..testbed.t2i_eval import summarise, to_uint8
    from ..testbed.t2i_prompts import eval_prompts, score_image

    base = StableDiffusionPipeline.from_pretrained(model_dir)
    base.set_progress_bar_config(disable=True)
    pipe = wrap(base)
    prompts = [p for p in eval_prompts(per_category) for _ in seeds]
    seed_list = [s for _ in eval_prompts(per_category) for s in seeds]
    runs = [("plain", "plain", {})] + [(f"tome_sd@{r}", "tome_sd", {"ratio": r}) for r in ratios] + \
           [("todo (x2)", "todo", {})]
    images: dict[str, list[np.ndarray]] = {}
    out: dict[str, Any] = {}
    for label, kind, options in tqdm(runs, desc="bench merge: shapes-sd", leave=False):
        if kind != "plain":
            pipe.add_plugin(kind, seed=0, **options)
        imgs = []
        for i in range(0, len(prompts), 32):
            gens = [torch.Generator().manual_seed(s) for s in seed_list[i:i + 32]]
            result = pipe([p.text for p in prompts[i:i + 32]], num_inference_steps=steps, guidance_scale=1.0,
                          generator=gens, output_type="np")
            imgs += to_uint8(result.images)
        if kind != "plain":
            pipe.remove_plugin(kind)
        images[label] = imgs
        hits = [score_image(p, img) for p, img in zip(prompts, imgs)]
        per_image = np.asarray(hits, dtype=float)
        out[label] = {"oracle": summarise(prompts, hits), "se": float(per_image.std(ddof=1) / np.sqrt(len(hits))),
                      "pixel_diff_to_plain": float(np.mean([np.abs(a.astype(float) - b.astype(float)).mean()
                                                            for a, b in zip(imgs, images["plain"])])),
                      "n": len(hits)}
    return out


def run_merge_bench(layouts: tuple[str, ...], ratios: tuple[float, ...] = RATIOS, repeats: int = 3,
                    model_dir: Path | None = None, per_category: int = 8, seeds: tuple[int, ...] = (0, 1),
                    vit_rs: tuple[int, ...] = (0, 8, 13, 16), vit_batch: int = 8,
                    width_divisor: int = 10) -> dict[str, Any]:
    results: dict[str, Any] = {"speed": {}, "ratios": list(ratios), "timestep": TIMESTEP}
    for name in layouts:
        layout = LAYOUTS[name].at_width_divisor(width_divisor)
        results["speed"][name] = time_steps(layout, ratios, repeats)
    if model_dir is not None and (Path(model_dir) / "model_index.json").is_file():
        results["quality"] = quality(Path(model_dir), ratios, per_category, seeds)
    if vit_rs:
        results["vit"] = vit_speed(vit_rs, vit_batch, repeats)
    return results
