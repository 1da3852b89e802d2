"""``mmeff app``: a Gradio app that shows a model's answers without and with plugins, side by side.

Gradio is an optional extra (``pip install 'mmeff[app]'``), imported only when the app is built, so
``import mmeff.app`` and the overlay math work without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..testbed.assets import SHAPES_LLAVA, SHAPES_SD

if TYPE_CHECKING:
    import gradio as gr

INSTALL_HINT = "the app needs Gradio: pip install 'mmeff[app]' (or pip install gradio)"


def build_app(model: str | Path = SHAPES_LLAVA, sd_model: str | Path | None = SHAPES_SD) -> gr.Blocks:
    """The app's Blocks for a VLM ``model`` and a diffusers ``sd_model`` (None: no text-to-image tab).
    The VLM loads here (its adapter decides which plugins are offered); the text-to-image model on first use."""
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    from .runner import T2IRunner, VLMRunner
    from .ui import build_blocks

    return build_blocks(VLMRunner(model), T2IRunner(sd_model) if sd_model is not None else None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's options, shared by ``mmeff app`` (the CLI's subparser) and :func:`main`."""
    parser.add_argument("--model", default=str(SHAPES_LLAVA),
                        help="VLM hub id or folder (default: the bundled shapes-llava)")
    parser.add_argument("--sd-model", default=str(SHAPES_SD),
                        help="diffusers text-to-image model for the second tab (default: the bundled shapes-sd; "
                             "'none' hides the tab)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")


def launch(args: argparse.Namespace) -> None:
    """Build the app from parsed options and serve it until interrupted."""
    sd_model = None if str(args.sd_model).lower() == "none" else args.sd_model
    try:
        demo = build_app(args.model, sd_model)
    except ImportError as error:
        raise SystemExit(str(error)) from error
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                   ssr_mode=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmeff app", description=__doc__)
    add_arguments(parser)
    launch(parser.parse_args(argv))


__all__ = ["add_arguments", "build_app", "launch", "main"]
