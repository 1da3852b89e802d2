"""``mmeff bench tokens``: the speed half runs end to end on a tiny layout; targets are checked right."""

from __future__ import annotations

import json

import pytest

from mmeff.bench.layouts import SpeedLayout
from mmeff.bench.methods import BUDGETS, all_methods, method_at
from mmeff.bench.tokens import run_speed
from mmeff.bench.tokens_report import check_targets, write_combined


def test_methods_hit_their_budgets_on_the_speed_model(tmp_path):
    layout = SpeedLayout(layers=4, hidden=32, heads=2, image_size=84, patch_size=14, text_after=6)  # 36 image tokens
    methods = tuple(all_methods(("visionzip", "tome", "fastv", "random_drop"), ("1/9",)))
    result = run_speed(tmp_path / "speed", methods=methods, layout=layout, runs=1, decode_tokens=2, warmup=0)
    rows = {r["method"]: r for r in result["results"]}
    assert rows["baseline"]["final_image_tokens"] == 36
    for method in methods:
        assert rows[method.label]["final_image_tokens"] == 4  # round(36 / 9)
        assert rows[method.label]["kv_cache_mb_reference_fp16"] < rows["baseline"]["kv_cache_mb_reference_fp16"]
    assert rows["fastv @1/9"]["mean_image_tokens"] > 4  # layers before K see everything
    assert json.loads((tmp_path / "speed" / "tokens_speed.json").read_text())["results"]
    write_combined(tmp_path, None, result, {"command": "test"})
    assert "Speed" in (tmp_path / "report.md").read_text()
    # the ideal: a vision-side drop is measured at its kept length, a decoder-side one (FastV keeps
    # everything before layer K) composed layer by layer; the non-decoder part is timed on its own
    assert rows["baseline"]["ideal_kind"] == "measured"
    assert 0 < result["non_decoder_ms"] < rows["baseline"]["prefill_ms"]
    assert rows["visionzip @1/9"]["ideal_kind"] == "measured" and rows["fastv @1/9"]["ideal_kind"] == "per-layer"
    for method in methods:  # timings of a tiny model are noise: check the arithmetic, not the values
        r = rows[method.label]
        assert r["ideal_prefill_speedup"] == pytest.approx(rows["baseline"]["prefill_ms"] / r["ideal_prefill_ms"])
        assert r["prefill_efficiency"] == pytest.approx(r["ideal_prefill_ms"] / r["prefill_ms"])
        assert "decode_overhead_us_per_layer" in r
    assert "of ideal" in (tmp_path / "speed" / "report.md").read_text()


def test_method_options_follow_the_budget():
    assert method_at("visionzip", "1/9").options == {"budget": BUDGETS["1/9"]}
    assert method_at("pyramid_drop", "1/9").options["ratio"] ** 3 == pytest.approx(1 / 9, rel=1e-3)


def _row(plugin, budget, pope, rel):
    return {"method": f"{plugin} @{budget}", "plugin": plugin, "budget": budget, "relative": {"pope_random": rel},
            "scores": {"pope_random": pope, "pope_popular": pope, "pope_adversarial": pope}}


def test_targets_are_judged_on_the_measured_numbers():
    quality = [_row("visionzip", "1/9", 0.9, 0.96), _row("mustdrop", "1/9", 0.85, 0.9), _row("fastv", "1/9", 0.8, 0.85),
               _row("tome", "1/9", 0.7, 0.75), _row("random_drop", "1/9", 0.75, 0.8)]
    speed = [{"budget": "1/9", "plugin": "visionzip", "prefill_speedup": 3.5},
             {"budget": "1/9", "plugin": "tome", "prefill_speedup": 2.0}]
    checks = {c[0]: c[2] for c in check_targets(quality, speed)}
    assert checks["best method at 1/9 keeps >= 95% of POPE-random"] == "yes"
    assert checks["tome beats random_drop at 1/9 (POPE, 3 splits)"] == "no"
    assert checks["fastv beats random_drop at 1/9 (POPE, 3 splits)"] == "yes"
    assert checks["visionzip at 1/9: >= 3x prefill speedup"] == "yes"
    assert checks["tome at 1/9: >= 3x prefill speedup"] == "no"
    order = next(v for k, v in checks.items() if k.startswith("published order"))
    assert order == "replicates"
    qwen = {c[0]: c[2] for c in check_targets(None, speed + [{"budget": "1/9", "plugin": "pyramid_drop",
                                                                "prefill_speedup": 2.1}], "qwen2.5-vl-7b")}
    assert qwen == {"visionzip at 1/9: >= 4x prefill speedup": "no", "tome at 1/9: >= 4x prefill speedup": "no",
                    "pyramid_drop at 1/9: >= 1.8x prefill speedup": "yes"}


def test_qwen_layout_runs_its_methods_and_reports_the_refused(tmp_path):
    """Qwen2.5-VL's layout (M-RoPE, GQA, merged patches): VisionZip and decoder-side methods hit their
    budgets; ToMe is refused on this tower and the report says why."""
    layout = SpeedLayout(layers=4, hidden=64, heads=4, kv_heads=2, image_size=112, patch_size=14, merge=2,
                         text_before=4, text_after=6, arch="qwen2_5_vl", reference="qwen2.5-vl-7b")
    assert layout.image_tokens == 16
    methods = tuple(all_methods(("visionzip", "tome", "fastv", "random_drop"), ("1/9",)))
    result = run_speed(tmp_path / "speed", methods=methods, layout=layout, runs=1, decode_tokens=2, warmup=0)
    rows = {r["method"]: r for r in result["results"]}
    assert rows["baseline"]["final_image_tokens"] == 16
    assert rows["fastv @1/9"]["final_image_tokens"] == rows["random_drop @1/9"]["final_image_tokens"] == 2
    assert rows["visionzip @1/9"]["final_image_tokens"] == 2
    assert rows["fastv @1/9"]["kv_cache_mb_reference_fp16"] < rows["baseline"]["kv_cache_mb_reference_fp16"]
    assert "tome @1/9" not in rows and "patch merger" in result["refused"]["tome"]
    assert "refused on this model" in (tmp_path / "speed" / "report.md").read_text()


def test_ideal_row_arithmetic():
    """Non-decoder time as given; each layer costs 1/layers of the unmodified decoder at its own length;
    decode overhead is per layer against the mean cache length."""
    from mmeff.bench.tokens_ideal import ideal_lengths, ideal_row

    measured = {100: (0.5, 0.010), 40: (0.2, 0.006), 70: (0.35, 0.008)}
    row = ideal_row([40.0] * 4, [40.0] * 4, 0.3, 0.8, measured, prefill=0.6, decode=0.007)
    assert row["ideal_kind"] == "measured" and row["ideal_prefill_ms"] == pytest.approx(500.0)  # 0.3 + 0.2 s
    assert row["ideal_prefill_speedup"] == pytest.approx(1.6) and row["prefill_efficiency"] == pytest.approx(0.5 / 0.6)
    assert row["decode_overhead_us_per_layer"] == pytest.approx(250.0)  # (7 - 6 ms) / 4 layers
    tokens = [100.0, 100.0, 40.0, 40.0]
    assert ideal_lengths(tokens, tokens) == ([40, 100], 70)
    varying = ideal_row(tokens, tokens, 0.3, 0.8, measured, prefill=0.7, decode=0.009)
    assert varying["ideal_kind"] == "per-layer"
    assert varying["ideal_prefill_ms"] == pytest.approx((0.3 + (0.5 + 0.5 + 0.2 + 0.2) / 4) * 1e3)
    assert varying["ideal_decode_ms_per_token"] == pytest.approx(8.0)  # mean cache length 70


def test_without_decoder_layers_restores_the_model():
    from mmeff.bench.layouts import build_speed_model
    from mmeff.bench.tokens_ideal import time_other, without_decoder_layers

    layout = SpeedLayout(layers=2, hidden=32, heads=2, image_size=28, patch_size=14, text_after=3)
    model, inputs = build_speed_model(layout)
    lm = model.model.language_model
    layers = lm.layers
    with without_decoder_layers(lm):
        assert len(lm.layers) == 0
    assert lm.layers is layers and time_other(model, lm, inputs) > 0 and lm.layers is layers


def test_quality_report_names_the_model_it_ran_on(tmp_path):
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "quality_table.md").write_text("| method |\n|---|\n")
    quality = [{**_row("random_drop", "1/9", 0.7, 0.8), "relative": {"pope_random": 0.8}}]
    write_combined(tmp_path, quality, None, {"command": "test", "model": "shapes-qwen2vl"})
    assert "## Quality on shapes-qwen2vl" in (tmp_path / "report.md").read_text()
