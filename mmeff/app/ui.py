"""The Gradio layout: a VLM tab (plain vs plugin answers, kept-token overlay) and a text-to-image tab.

Every element a test reads or drives has an ``elem_id``, so the browser test does not depend on labels
or layout.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ..errors import MMEffError
from ..testbed.render import render
from ..testbed.world import sample_scene
from .runner import Stack, T2IRunner, VLMRunner, check_compatible, describe_stack, options_help, parse_options

DEFAULT_PROMPT = "describe the image."
DEFAULT_OPTIONS = {"fastv": "budget=64", "pyramid_drop": "ratio=0.5", "visionzip": "budget=64",
                   "random_drop": "budget=64", "mustdrop": "budget=64", "tome": "budget=64", "divprune": "budget=64"}


def _error(error: Exception) -> gr.Error:
    return gr.Error(f"{type(error).__name__}: {error}")


def _vlm_tab(runner: VLMRunner) -> None:
    names = runner.plugin_names()
    first = "fastv" if "fastv" in names else names[0]
    stack_state = gr.State([])
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="numpy", image_mode="RGB", sources=["upload", "clipboard"], format="png",
                             label="image: upload one, or render a testbed scene", elem_id="vlm-image",
                             height=300)
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="scene seed", elem_id="scene-seed", min_width=80)
                scene_btn = gr.Button("render scene", elem_id="scene-button")
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="question", elem_id="vlm-prompt")
            max_new = gr.Slider(1, 64, value=24, step=1, label="max new tokens", elem_id="vlm-max-new-tokens")
        with gr.Column(scale=1):
            plugin = gr.Dropdown(names, value=first, label="plugin", elem_id="plugin-name")
            options = gr.Textbox(value=DEFAULT_OPTIONS.get(first, ""), label="options (key=value, comma separated)",
                                 elem_id="plugin-options")
            with gr.Row():
                add_btn = gr.Button("add plugin", elem_id="add-plugin")
                clear_btn = gr.Button("clear plugins", elem_id="clear-plugins")
            stack_view = gr.Textbox(describe_stack([]), label="plugin stack", interactive=False,
                                    elem_id="plugin-stack")
            help_md = gr.Markdown(options_help(first), elem_id="plugin-help")
    run_btn = gr.Button("run", variant="primary", elem_id="vlm-run")
    with gr.Row():
        plain = gr.Textbox(label="unmodified answer", interactive=False, elem_id="answer-plain")
        answer = gr.Textbox(label="answer with plugins", interactive=False, elem_id="answer-plugin")
    with gr.Row():
        overlay = gr.Image(label="kept image tokens (dropped ones dimmed)", interactive=False, format="png",
                           elem_id="token-overlay")
        with gr.Column():
            tokens = gr.Markdown(elem_id="token-counts")
            timings = gr.Markdown(elem_id="timings")

    def choose(name: str) -> tuple[str, str]:
        return DEFAULT_OPTIONS.get(name, ""), options_help(name)

    def add(name: str, text: str, stack: Stack) -> tuple[Stack, str]:
        try:
            new = [(n, o) for n, o in stack if n != name] + [(name, parse_options(name, text))]  # re-adding replaces
            check_compatible(new)
        except (MMEffError, ValueError, TypeError, KeyError) as error:
            raise _error(error) from error
        return new, describe_stack(new)

    def run(img: np.ndarray | None, question: str, stack: Stack, limit: float) -> tuple[Any, ...]:
        if img is None:
            raise gr.Error("upload an image or render a scene first")
        if not stack:
            raise gr.Error("add at least one plugin")
        try:
            result = runner.compare(img, question, stack, int(limit))
        except (MMEffError, ValueError, TypeError, KeyError) as error:
            raise _error(error) from error
        return result.plain, result.with_plugins, result.overlay, result.tokens, result.timings

    plugin.change(choose, plugin, [options, help_md])
    scene_btn.click(lambda s: render(sample_scene(int(s or 0))), seed, image)
    add_btn.click(add, [plugin, options, stack_state], [stack_state, stack_view])
    clear_btn.click(lambda: ([], describe_stack([])), None, [stack_state, stack_view])
    run_btn.click(run, [image, prompt, stack_state, max_new], [plain, answer, overlay, tokens, timings])


def _t2i_tab(runner: T2IRunner) -> None:
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(value="a red circle", label="prompt", elem_id="t2i-prompt")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="t2i-seed")
            iterations = gr.Slider(0, 20, value=5, step=1, label="ReNO iterations (0: off)",
                                   elem_id="reno-iterations")
            merge = gr.Radio(list(T2IRunner.MERGERS), value="none", label="token merging", elem_id="t2i-merge")
            ratio = gr.Slider(0.1, 0.9, value=0.5, step=0.05, label="merge ratio", elem_id="t2i-ratio")
            run_btn = gr.Button("generate", variant="primary", elem_id="t2i-run")
        plain = gr.Image(label="unmodified", interactive=False, format="png", elem_id="t2i-plain")
        modified = gr.Image(label="ReNO / merged", interactive=False, format="png", elem_id="t2i-modified")
    summary = gr.Markdown(elem_id="t2i-summary")

    def run(text: str, s: float, its: float, how: str, r: float) -> tuple[Any, ...]:
        if not (text or "").strip():
            raise gr.Error("type a prompt, e.g. 'two blue squares'")
        try:
            result = runner.compare(text, int(s or 0), int(its), how, float(r))
        except (MMEffError, ValueError, TypeError, KeyError) as error:
            raise _error(error) from error
        return result.plain, result.modified, result.summary

    run_btn.click(run, [prompt, seed, iterations, merge, ratio], [plain, modified, summary])


def build_blocks(vlm: VLMRunner, t2i: T2IRunner | None) -> gr.Blocks:
    with gr.Blocks(title="mmeff") as demo:
        gr.Markdown("# mmeff: the same model with and without plugins")
        with gr.Tab("vision-language", elem_id="tab-vlm"):
            _vlm_tab(vlm)
        if t2i is not None:
            with gr.Tab("text-to-image", elem_id="tab-t2i"):
                _t2i_tab(t2i)
    return demo
