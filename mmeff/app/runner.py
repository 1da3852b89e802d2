"""What the app does, without the UI: run a model with and without a plugin stack and summarise both.

Kept apart from the Gradio layout so the comparison itself (exactly ``pipe.generate``'s answers, the
plugins removed again afterwards) is plain Python that tests and other front ends can call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..options_doc import options_markdown
from ..plugin_spec import check_stack, parse_plugin_spec
from ..registry import get_plugin, list_plugins, supported
from ..testbed.assets import SHAPES_LLAVA, SHAPES_SD, SHAPES_SD_CALL, SHAPES_SD_RENO
from .overlay import enlarge, heat_overlay, kept_mask, kept_overlay, to_uint8

Stack = list[tuple[str, dict[str, Any]]]


def vlm_plugin_names(adapter_key: str) -> list[str]:
    """The plugins offered for a VLM: those registered as supporting its adapter."""
    return [name for name in list_plugins() if supported(name, adapter_key)]


def parse_options(name: str, text: str) -> dict[str, Any]:
    """``"budget=64, k=2"`` -> ``{"budget": 64, "k": 2}`` (the ``--plugin name:key=value`` syntax), checked
    against the plugin's config so a typo is reported when the plugin is added, not when it runs."""
    text = (text or "").strip()
    _, options = parse_plugin_spec(f"{name}:{text}" if text else name)
    check_stack([(name, options)])
    return options


def check_compatible(stack: Stack) -> None:
    """Refuse two plugins that take over the same stage now, when one is added, rather than on "run"
    (``add_plugin`` would refuse them then, with the same reason)."""
    owner: dict[str, str] = {}
    for name, options in stack:
        cls = get_plugin(name)
        for stage in cls(cls.config_cls.from_kwargs(**options)).owned_stages():
            if stage in owner:
                raise ConfigError(f"{name!r} and {owner[stage]!r} both take over the {stage} stage; "
                                  f"clear the plugins and choose one of them (plugins on different stages compose)")
            owner[stage] = name


def options_help(name: str) -> str:
    """A markdown table of a plugin's options (the same rows as ``mmeff list --options``)."""
    return options_markdown([name])


def describe_stack(stack: Stack) -> str:
    """``fastv(budget=64) + vcd()``: the stack as one line, in the order the plugins are added."""
    if not stack:
        return "(no plugins: add one below)"
    return " + ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in o.items())})" for n, o in stack)


@dataclass
class VLMComparison:
    """Both answers to one question about one image, and what the plugins did."""

    plain: str
    with_plugins: str
    overlay: np.ndarray  # the model's view, dropped tokens dimmed (damro: outlier tokens marked)
    tokens: str  # markdown: "16 of 144 image tokens ..." per plugin
    timings: str  # markdown: seconds for each call
    stats: dict[str, Any]


class _LoadedOnFirstUse:
    """A model loaded by ``mmeff.load`` on first use, with a lock: one comparison at a time (plugins keep
    per-call state)."""

    def __init__(self, model: str | Path) -> None:
        self.model = str(model)
        self._pipe: Any = None
        self._lock = threading.Lock()

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            import mmeff

            self._pipe = mmeff.load(self.model)
        return self._pipe


class VLMRunner(_LoadedOnFirstUse):
    """One VLM, loaded on first use; one comparison at a time (plugins keep per-call state)."""

    def __init__(self, model: str | Path = SHAPES_LLAVA, *, overlay_scale: int = 3) -> None:
        super().__init__(model)
        self.overlay_scale = overlay_scale

    def plugin_names(self) -> list[str]:
        return vlm_plugin_names(self.pipe.adapter.key)

    def compare(self, image: np.ndarray, prompt: str, stack: Stack, max_new_tokens: int = 24) -> VLMComparison:
        image = to_uint8(image)
        with self._lock:
            pipe = self.pipe
            pipe.remove_all_plugins()
            plain = pipe.generate([image], [prompt], max_new_tokens=max_new_tokens)[0]
            plain_s = pipe.last_stats["wall_time_s"]
            try:
                for name, options in stack:
                    pipe.add_plugin(name, **options)
                answer = pipe.generate([image], [prompt], max_new_tokens=max_new_tokens)[0]
                stats = dict(pipe.last_stats)
            finally:
                pipe.remove_all_plugins()
            inputs = pipe.adapter.build_inputs([image], [prompt])
            n_tokens = int(pipe.adapter.image_token_mask(inputs["input_ids"]).sum())
        overlay, tokens = self._summarise(image, stack, stats, n_tokens)
        with_s = stats["wall_time_s"]
        timings = (f"unmodified **{plain_s:.2f} s** · with plugins **{with_s:.2f} s** "
                   f"({with_s / plain_s:.2f}× the time; {max_new_tokens} new tokens at most)")
        return VLMComparison(plain, answer, overlay, tokens, timings, stats)

    def _summarise(self, image: np.ndarray, stack: Stack, stats: dict[str, Any],
                   n_tokens: int) -> tuple[np.ndarray, str]:
        lines, kept, outliers = [], None, None
        for name, _ in stack:
            s = stats.get(name, {})
            if "final_image_tokens" in s:
                before = int(s["image_tokens_before"][0]) if s.get("image_tokens_before") else n_tokens
                line = (f"**{name}**: the last decoder layer sees **{int(s['final_image_tokens'])} of {before}** "
                        f"image tokens (mean {s['mean_image_tokens']:.1f} per layer)")
                if "prefill_flops_ratio" in s:
                    line += f"; prefill FLOPs {s['prefill_flops_ratio']:.0%} of the unmodified model's"
                lines.append(line)
                if s.get("kept_image_tokens_by_row"):
                    kept = s["kept_image_tokens_by_row"][0]
            else:
                line = f"**{name}**: all {n_tokens} image tokens kept"
                if "forwards" in s:
                    line += f"; {s['forwards']} forward passes per decoding step"
                if s.get("outlier_tokens"):
                    outliers = s["outlier_tokens"][0]
                    line += f"; {len(outliers)} outlier tokens (marked red)"
                lines.append(line)
        try:
            view = kept_overlay(image, kept, n_tokens, scale=self.overlay_scale)
            if outliers is not None:
                view = heat_overlay(view, kept_mask(outliers, n_tokens).astype(float))
        except ValueError as error:  # a non-square token grid (other models): show the image, say why
            view = enlarge(to_uint8(image), self.overlay_scale)
            lines.append(f"(no overlay: {error})")
        return view, "\n\n".join(lines) or "(no plugins)"


@dataclass
class T2IComparison:
    """One prompt's image without and with ReNO / token merging."""

    plain: np.ndarray
    modified: np.ndarray
    summary: str  # markdown: rewards, merged tokens, timings
    stats: dict[str, Any]


class T2IRunner(_LoadedOnFirstUse):
    """A diffusers text-to-image pipeline (default the bundled shapes-sd), loaded on first use."""

    MERGERS = ("none", "tome_sd", "todo")

    def __init__(self, model: str | Path | None = None, *, scale: int = 8) -> None:
        self.bundled = model is None or Path(model).resolve() == SHAPES_SD.resolve()
        super().__init__(SHAPES_SD if model is None else model)
        self.scale = scale

    def _call(self, prompt: str, seed: int) -> tuple[np.ndarray, float]:
        call = dict(SHAPES_SD_CALL) if self.bundled else {"num_inference_steps": 1, "guidance_scale": 0.0}
        out = self.pipe([prompt], generator=[torch.Generator("cpu").manual_seed(seed)], output_type="np", **call)
        return to_uint8(out.images[0]), self.pipe.last_stats["wall_time_s"]

    def compare(self, prompt: str, seed: int = 0, reno_iterations: int = 5, merge: str = "none",
                ratio: float = 0.5) -> T2IComparison:
        if merge not in self.MERGERS:
            raise ValueError(f"merge must be one of {self.MERGERS}, got {merge!r}")
        seed = int(seed)
        with self._lock:
            pipe = self.pipe
            pipe.remove_all_plugins()
            plain, plain_s = self._call(prompt, seed)
            try:
                if reno_iterations > 0:
                    reno = {"rewards": {"shapes_clip": 1.0}, **SHAPES_SD_RENO} if self.bundled else {}
                    pipe.add_plugin("reno", iterations=int(reno_iterations), **reno)
                if merge != "none":
                    pipe.add_plugin(merge, ratio=float(ratio))
                modified, modified_s = self._call(prompt, seed)
                stats = dict(pipe.last_stats)
            finally:
                pipe.remove_all_plugins()
        lines = []
        if "reno" in stats:
            r = stats["reno"]
            lines.append(f"**reno**: reward {r['initial_reward'][0]:.3f} → **{r['best_reward'][0]:.3f}** "
                         f"(best of {r['iterations']} iterations: {r['best_iteration'][0]})")
        for name in ("tome_sd", "todo"):
            if name in stats:
                s = stats[name]
                before, after = s.get("tokens_before") or s["kv_tokens_before"], s.get("tokens_after") or s[
                    "kv_tokens_after"]
                lines.append(f"**{name}**: attention {'tokens' if 'tokens_before' in s else 'keys/values'} per "
                             f"block {sum(after)} of {sum(before)} ({before} → {after})")
        lines.append(f"unmodified **{plain_s:.2f} s** · modified **{modified_s:.2f} s**")
        return T2IComparison(enlarge(plain, self.scale), enlarge(modified, self.scale), "\n\n".join(lines), stats)
