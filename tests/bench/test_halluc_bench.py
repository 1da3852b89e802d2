"""``mmeff bench halluc`` end to end on the bundled shapes model, at toy sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mmeff
from mmeff.bench.halluc import HallucMethod, run_quality, run_speed
from mmeff.bench.halluc_report import target_checks, write_report

MODEL = Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes-llava"


@pytest.fixture(scope="module")
def pipe():
    return mmeff.load(MODEL)


def test_quality_speed_and_report(pipe, tmp_path):
    methods = [
        HallucMethod("greedy", kind="control"),
        HallucMethod("sampling", sample=True, kind="control"),
        HallucMethod("vcd alpha 0", "vcd", {"alpha": 0.0}),
        HallucMethod("vcd", "vcd", {"alpha": 1.0}),
    ]
    quality = run_quality(pipe, methods, n_pope=2, n_caption=2, seeds=2)
    rows = {r["method"]: r for r in quality}
    assert rows["sampling"]["seeds"] == 2 and rows["greedy"]["seeds"] == 1
    # the neutral contrast goes through the two-branch loop and must score exactly like greedy
    assert rows["vcd alpha 0"]["metrics"] == rows["greedy"]["metrics"]
    assert not pipe.plugins, "the bench must leave the pipeline as it found it"
    speed = run_speed(pipe, methods, batch=2, tokens=3, runs=1)
    ratios = {r["method"]: r["per_token_ratio"] for r in speed}
    assert set(ratios) == {"greedy", "vcd alpha 0", "vcd"} and ratios["greedy"] == 1.0
    checks = target_checks(quality, speed)
    assert [c[0] for c in checks][0] == "best adversarial F1 gain over greedy"
    write_report(tmp_path, quality, speed, {"model": "shapes-llava", "n_pope": 2, "n_caption": 2, "seeds": 2,
                                            "device": "cpu", "command": "test"})
    assert "## Targets" in (tmp_path / "halluc.md").read_text()
    assert json.loads((tmp_path / "halluc.json").read_text())["quality"]
    assert (tmp_path / "halluc_quality.png").stat().st_size > 0 and (tmp_path / "halluc_tradeoff.png").is_file()


def test_every_default_method_runs(pipe):
    from mmeff.bench.halluc import default_methods

    methods = default_methods()
    rows = run_quality(pipe, methods, n_pope=1, n_caption=1, seeds=1)
    assert [r["method"] for r in rows] == [m.label for m in methods]
    for row in rows:
        for key in ("random_accuracy", "adversarial_f1", "adversarial_yes_ratio", "chair_i"):
            assert 0.0 <= row["metrics"][key]["mean"] <= 1.0, (row["method"], key)
    assert not pipe.plugins
