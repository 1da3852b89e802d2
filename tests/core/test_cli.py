"""The command line: one plugin syntax, a subcommand per benchmark with its own options, quick --help,
one-line errors with exit code 2 (``--debug`` for the traceback), checks before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmeff.cli import build_parser, main
from mmeff.plugin_spec import stack_document


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmeff.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_and_version_import_neither_torch_nor_transformers() -> None:
    code = ("import sys\nfrom mmeff.cli import build_parser\n"
            "for argv in (['--help'], ['bench', 'tokens', '--help'], ['--version']):\n"
            "    try:\n        build_parser().parse_args(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "mmeff 0.1.0" in out.stdout


def test_each_benchmark_takes_only_its_own_options(capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "tokens", "--speed", "--layout", "qwen2.5-vl-7b"])
    assert (args.suite, args.layout, args.speed) == ("tokens", "qwen2.5-vl-7b", True)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["bench", "reno", "--layout", "qwen2.5-vl-7b"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --layout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "tokens", "--help"])
    text = capsys.readouterr().out
    assert "--layout" in text and "--reward" not in text
    for suite in ("tokens", "halluc", "reno", "ar", "merge"):
        assert parser.parse_args(["bench", suite]).func.__name__ == f"bench_{suite}"


def test_a_misspelt_plugin_is_one_line_with_a_suggestion_and_exit_2_before_loading() -> None:
    out = run_cli("demo", "--plugin", "fastvv")
    assert out.returncode == 2
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("mmeff: error: unknown plugin 'fastvv'. Did you mean 'fastv'?")
    assert "Traceback" not in out.stderr and "Loading weights" not in out.stderr + out.stdout
    out = run_cli("demo", "--plugin", "fastv:budgt=64")
    assert out.returncode == 2 and "Did you mean 'budget'" in out.stderr


def test_debug_shows_the_traceback() -> None:
    out = run_cli("--debug", "demo", "--plugin", "fastvv")
    assert out.returncode == 1 and "Traceback" in out.stderr and "UnknownPluginError" in out.stderr


def test_bench_ar_method_is_checked_before_any_model_loads(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "ar", "--method", "SJD, window 16"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--method 'SJD, window 16' matches no method" in err
    assert "The methods:" in err


def test_list_options_prints_each_option_with_its_default_and_help(capsys) -> None:
    main(["list", "--options", "pyramid_drop"])
    out = capsys.readouterr().out
    assert "ratio" in out and "0.5" in out and "fraction of image tokens each stage keeps" in out
    main(["list", "--options", "all", "--markdown"])
    out = capsys.readouterr().out
    assert "## `pyramid_drop`" in out and "## `tome_sd`" in out and "| `ratio` | `float` | `0.5` |" in out
    with pytest.raises(SystemExit):
        main(["list", "--options", "pyramid"])
    assert "Did you mean 'pyramid_drop'" in capsys.readouterr().err


def test_eval_takes_a_stack_file_and_plugin_specs(tmp_path) -> None:
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps(stack_document([("fastv", {"budget": 64})])))
    args = build_parser().parse_args(["eval", "--suite", "pope", "--plugins", str(stack), "--plugin", "vcd:alpha=2"])
    from mmeff.plugin_spec import parse_plugin_args

    assert parse_plugin_args(args.plugin, args.plugins) == [("fastv", {"budget": 64}), ("vcd", {"alpha": 2})]
    stack.write_text("{}")
    out = run_cli("eval", "--suite", "pope", "--plugins", str(stack))
    assert out.returncode == 2 and "is not a plugin stack" in out.stderr
