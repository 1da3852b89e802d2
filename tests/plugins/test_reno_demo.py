"""``demos/reno.py`` end to end on the bundled pipeline: options reach the plugin, the grid is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mmeff.rewards import parse_rewards

DEMO = Path(__file__).resolve().parents[2] / "demos" / "reno.py"


def _demo():
    spec = importlib.util.spec_from_file_location("reno_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_writes_the_grid_with_the_chosen_reward_and_options(tmp_path):
    out = tmp_path / "reno.png"
    stats = _demo().main(["--prompt", "three squares", "--iterations", "3", "--reward", "shapes_clip:2",
                          "--gradient-checkpointing", "--out", str(out)])
    assert out.stat().st_size > 10_000
    assert stats["iterations"] == 3 and stats["weights"] == {"shapes_clip": 2.0}
    assert stats["peak_memory_mb"] > 0 and len(stats["best_iteration"]) == 1


def test_fp16_on_the_cpu_is_refused_before_loading(capsys):
    with pytest.raises(SystemExit):
        _demo().main(["--dtype", "fp16"])
    assert "fp16 is for GPUs" in capsys.readouterr().err


def test_reward_lists_parse_and_bad_weights_are_named():
    assert parse_rewards(["shapes_clip", "clip:0.5"]) == {"shapes_clip": 1.0, "clip": 0.5}
    with pytest.raises(ValueError, match="clip:x.*name\\[:weight\\]"):
        parse_rewards(["clip:x"])
