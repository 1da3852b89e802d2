"""The ``mmeff`` command line.

Subcommands import what they need when they run, so ``mmeff --help`` answers at once. Errors
print as one line (exit code 2); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .bench import add_bench_parsers
from .testbed import add_testbed_parser

PLUGIN_HELP = ("a plugin and its options: name, name:key=value,key=value or JSON ('{\"name\": \"fastv\", "
               "\"budget\": 64}'); repeatable, attached in order")


def cmd_list(args: argparse.Namespace) -> None:
    from .. import registry

    if args.options is not None:
        _print_options(args.options, args.markdown)
        return
    if args.markdown:
        print(registry.support_matrix_markdown())
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    plugins, adapters = registry.list_plugins(args.filter), registry.list_adapters()
    table = Table(title="plugins × model families (✓ = supported, ✗ = refused; reasons and partial support below)")
    table.add_column("plugin")
    for a in adapters:
        table.add_column(a, justify="center")
    table.add_column("what it does")
    for p in plugins:
        table.add_row(p, *(registry.support_cell(p, a) for a in adapters), registry.get_plugin(p).description)
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
    console.print("options of a plugin: mmeff list --options NAME")


def _print_options(name: str, markdown: bool) -> None:
    from .. import registry
    from ..options_doc import option_rows, options_markdown

    names = registry.list_plugins() if name == "all" else [registry.get_plugin(name).name]
    if markdown:
        print(options_markdown(names), end="")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    for plugin in names:
        table = Table(title=f"{plugin}: {registry.get_plugin(plugin).description}")
        for column in ("option", "type", "default", "what it does"):
            table.add_column(column)
        for row in option_rows(plugin):
            table.add_row(row["option"], row["type"], row["default"], row["help"])
        console.print(table)


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo
    from ..plugin_spec import parse_plugin_args

    stack = parse_plugin_args(args.plugin, args.plugins)  # none given: the demo's four methods, one at a time
    run_demo(args.model, stack, args.max_new_tokens, out=None if args.out == "none" else args.out)


def cmd_eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rich.console import Console

    from ..demo import load_demo_pipe
    from ..plugin_spec import parse_plugin_args
    from ..testbed.evaluate import run_eval

    stack = parse_plugin_args(args.plugin, args.plugins)  # checked before the model loads
    pipe = load_demo_pipe(args.model, Console(width=160))
    pipe.add_plugins(stack)
    for suite in args.suite:
        run_eval(pipe, suite, Path(args.out), n_scenes=args.n_scenes, batch_size=args.batch_size, seed=args.seed)


def cmd_app(args: argparse.Namespace) -> None:
    from ..app import launch

    launch(args)  # exits with the install hint when Gradio is missing


def add_plugin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="SPEC", help=PLUGIN_HELP)
    p.add_argument("--plugins", metavar="FILE", help="a plugin stack file written by pipe.save_plugins "
                                                      "(attached before any --plugin)")


def build_parser() -> argparse.ArgumentParser:
    from .testbed import SUITE_NAMES

    parser = argparse.ArgumentParser(prog="mmeff", description="mmeff: cheaper, more faithful multimodal "
                                     "inference through removable plugins.")
    parser.add_argument("--version", action="version", version=f"mmeff {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="every plugin, every adapter, which plugin supports which model; options")
    p.add_argument("filter", nargs="?", default="*", help="fnmatch pattern over plugin names")
    p.add_argument("--markdown", action="store_true", help="print the support matrix (or --options) as markdown")
    p.add_argument("--options", metavar="NAME", help="the options of plugin NAME ('all': every plugin)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="answers of the unmodified model and of each method (default: four token-"
                                    "reduction methods at 1/9; --plugin: that stack), the truth, and a picture")
    p.add_argument("--model", help="hub id or local folder (default: the bundled shapes-llava)")
    add_plugin_options(p)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--out", default="demo_results/demo.png", help="the picture ('none': no picture)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="score a model (+ plugins) on the shapes testbed's question suites")
    p.add_argument("--model", help="hub id or local folder (default: bundled shapes model, else tiny random)")
    p.add_argument("--suite", action="append", required=True, choices=SUITE_NAMES)
    add_plugin_options(p)
    p.add_argument("--n-scenes", type=int, default=None, help="scenes per suite (default: the suite's size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval_results")
    p.set_defaults(func=cmd_eval)

    from ..app import add_arguments as add_app_arguments  # Gradio is imported only when the app is built

    p = sub.add_parser("app", help="interactive app (pip install 'mmeff[app]'): answers with and without plugins "
                                   "side by side, the kept-token overlay; text-to-image with ReNO / token merging")
    add_app_arguments(p)
    p.set_defaults(func=cmd_app)

    add_testbed_parser(sub)
    add_bench_parsers(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmeff")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _show_library_logs()
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as err:  # one clear line; --debug for the traceback
        if args.debug:
            raise
        print(f"mmeff: error: {_message(err)}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _show_library_logs() -> None:
    """The library logs through ``logging`` (``mmeff.*`` loggers) and prints nothing; the CLI shows INFO."""
    import logging

    log = logging.getLogger("mmeff")
    if not any(getattr(h, "_mmeff_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._mmeff_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _message(err: BaseException) -> str:
    from ..errors import MMEffError

    text: Any = err if isinstance(err, MMEffError) else f"{type(err).__name__}: {err}"
    return str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__


if __name__ == "__main__":
    main()
