"""``mmeff bench ar`` end to end on a tiny random ar_image model."""

from __future__ import annotations

import json

import pytest

import mmeff
from mmeff.bench.ar import PLAIN_MAR_STEPS, js_divergence, run_bench
from mmeff.bench.ar_report import write_report
from mmeff.testbed.t2i_eval import summarise
from mmeff.testbed.t2i_prompts import eval_prompts
from mmeff.testing.ar import tiny_ar_image

METHODS = [("plain", None, {}), ("sjd w16", "sjd", {"window": 16}), ("zipar w1", "zipar", {"window": 1})]


@pytest.fixture(scope="module")
def results():
    pipe = mmeff.wrap(tiny_ar_image())
    return run_bench(pipe, eval_prompts(1), [0, 1], batch_size=1, sampling={"guidance_scale": 3.0},
                     methods=METHODS)


def test_every_method_is_measured_against_plain(results):
    assert list(results["methods"]) == ["plain", "sjd w16", "zipar w1"]
    plain = results["methods"]["plain"]
    assert plain["forwards_per_image"] == 16 and plain["forward_reduction"] == 1 and plain["token_js_bits"] == 0
    for label in ("sjd w16", "zipar w1"):
        data = results["methods"][label]
        assert data["n"] == 12 and data["forwards_per_image"] < 16 and data["forward_reduction"] > 1
        assert 0 <= data["token_js_bits"] <= 1 and data["wall_time_ratio"] > 0
    assert "acceptance_rate" in results["methods"]["sjd w16"]["plugin_stats"]
    assert results["noise_floor"]["token_js_bits"] > 0  # other seeds draw other tokens


def test_per_image_verdicts_are_kept_to_pool_runs(results):
    """Every image's verdict, seed-major as generated, gives back the summary score (runs at other first seeds
    can then be pooled image by image)."""
    ordered = [p for _ in (0, 1) for p in eval_prompts(1)]
    for data in results["methods"].values():
        assert len(data["hits"]) == data["n"] == len(ordered)
        assert summarise(ordered, data["hits"]) == data["oracle"]


def test_report_files_and_targets(results, tmp_path):
    meta = {"model": "tiny", "prompts": 6, "seeds": 2, "first_seed": 0, "images": 12, "batch_size": 1,
            "sampling": {"guidance_scale": 3.0}, "device": "cpu"}
    write_report(tmp_path, results, meta)
    data = json.loads((tmp_path / "ar.json").read_text())
    assert data["benchmark"] == "ar" and set(data["methods"]) == set(results["methods"])
    md = (tmp_path / "ar.md").read_text()
    assert "SJD: fewer sequential forwards" in md and "noise floor" in md and "2 seeds from 0" in md
    assert len(data["methods"]["plain"]["hits"]) == 12
    assert (tmp_path / "ar_methods.png").stat().st_size > 10_000


def test_js_divergence_bounds():
    import numpy as np

    a = np.array([1.0, 0, 0])
    assert js_divergence(a, a) == 0 and js_divergence(a, np.array([0, 1.0, 0])) == pytest.approx(1.0)


def test_continuous_methods_report_head_steps_and_targets(tmp_path):
    from mmeff.bench.ar import continuous_methods
    from mmeff.bench.ar_report import rows, target_checks
    from mmeff.testing.car import write_tiny_pair

    target, draft = write_tiny_pair(tmp_path / "pair")
    methods = [m for m in continuous_methods(str(draft)) if m[0] != "disa 50→5 cosine"]
    methods = [(label, [(n, {**o, "upper": 8, "lower": 2} if n == "disa" else o) for n, o in plugins],
                {"diffusion_steps": 16} if overrides else {}) for label, plugins, overrides in methods]
    results = run_bench(mmeff.load(target), eval_prompts(1)[:3], [0], batch_size=1,
                        sampling={"guidance_scale": 3.0, "diffusion_steps": 8}, methods=methods)
    plain, disa = results["methods"]["plain"], results["methods"]["disa 50→5 linear"]
    assert plain["head_steps_per_image"] == 8 * 16 and disa["head_step_reduction"] > 1.5
    assert results["methods"][PLAIN_MAR_STEPS]["head_steps_per_image"] == 16 * 16  # its own step count
    spec = results["methods"]["continuous_spec k8"]
    assert spec["draft_forwards_per_image"] > 0 and spec["acceptance_rate"] is not None
    assert plain["token_js_bits"] is None  # continuous tokens: the oracle's statistics only
    assert len(rows(results)) == len(methods) + 1
    names = [c[0] for c in target_checks(results)]
    assert "DiSA: fewer head denoising steps than plain at 50" in names
    assert "speculative + DiSA beat each alone (wall time)" in names
    assert "speculative, τ 200 (relaxed): fewer target forwards" in names
    assert "speculative, τ 200 (relaxed) + DiSA beat each alone (wall time)" in names
    loose = results["methods"]["continuous_spec k8 τ1000"]
    assert loose["acceptance_rate"] is not None and loose["draft_forwards_per_image"] > 0
    against_mar = next(c for c in target_checks(results) if PLAIN_MAR_STEPS in c[0] and c[1] == ">= 3x")
    assert against_mar[2] == f"{256 / disa['head_steps_per_image']:.2f}x"


def test_method_selection_keeps_plain_first_and_names_the_methods_on_no_match():
    from mmeff.bench.ar import continuous_methods, select_methods

    methods = continuous_methods("draft")
    assert [m[0] for m in select_methods(methods, ["disa*"])] == \
        ["plain", PLAIN_MAR_STEPS, "disa 50→5 linear", "disa 50→5 cosine", "disa 25→5 linear"]
    assert select_methods(methods, []) == methods
    relaxed = {m[0]: m[1] for m in select_methods(methods, ["continuous_spec k8 τ*"])}
    assert [o["inner_temperature"] for n, o in relaxed["continuous_spec k8 τ200 + disa"] if n == "continuous_spec"] \
        == [200]
    assert relaxed["continuous_spec k8 τ1000"][0][1]["inner_temperature"] == 1000
    assert "continuous_spec k8" not in relaxed  # the released setting is not matched by the τ pattern
    with pytest.raises(ValueError, match="continuous_spec k8"):
        select_methods(methods, ["sjd*"])
