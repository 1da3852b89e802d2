"""``mmeff bench ar`` end to end on a tiny random ar_image model."""

from __future__ import annotations

import json

import pytest

import mmeff
from mmeff.bench.ar import js_divergence, run_bench
from mmeff.bench.ar_report import write_report
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


def test_report_files_and_targets(results, tmp_path):
    meta = {"model": "tiny", "prompts": 6, "seeds": 2, "images": 12, "batch_size": 1,
            "sampling": {"guidance_scale": 3.0}, "device": "cpu"}
    write_report(tmp_path, results, meta)
    data = json.loads((tmp_path / "ar.json").read_text())
    assert data["benchmark"] == "ar" and set(data["methods"]) == set(results["methods"])
    md = (tmp_path / "ar.md").read_text()
    assert "SJD: fewer sequential forwards" in md and "noise floor" in md
    assert (tmp_path / "ar_methods.png").stat().st_size > 10_000


def test_js_divergence_bounds():
    import numpy as np

    a = np.array([1.0, 0, 0])
    assert js_divergence(a, a) == 0 and js_divergence(a, np.array([0, 1.0, 0])) == pytest.approx(1.0)
