"""``mmeff demo`` on the bundled model: each method's answers beside the truth, and a picture of the kept tokens."""

from __future__ import annotations

import pytest
from PIL import Image

from mmeff.demo import BUNDLED, TRUTHS, run_demo

pytestmark = pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="needs the bundled shapes-llava")


def test_demo_compares_every_method_with_the_truth_and_draws_the_kept_tokens(tmp_path) -> None:
    result = run_demo(max_new_tokens=4, out=tmp_path / "demo.png")
    assert list(result["answers"]) == ["unmodified", "pyramid_drop", "fastv", "visionzip", "random_drop"]
    assert result["truths"] == TRUTHS and all(len(a) == len(TRUTHS) for a in result["answers"].values())
    assert result["kept"]["unmodified"] is None
    for method in ("fastv", "visionzip", "random_drop"):  # 1/9 of 144
        assert [len(row) for row in result["kept"][method]] == [16, 16]
    assert len(set(map(tuple, [result["kept"]["fastv"][0], result["kept"]["random_drop"][0]]))) == 2
    with Image.open(result["figure"]) as picture:
        assert picture.format == "PNG" and picture.width > picture.height > 300


def test_a_given_stack_replaces_the_default_methods(tmp_path) -> None:
    result = run_demo(plugins=[("fastv", {"budget": 64}), ("vcd", {})], max_new_tokens=2, out=None)
    assert list(result["answers"]) == ["unmodified", "fastv + vcd"] and result["figure"] is None
    assert [len(row) for row in result["kept"]["fastv + vcd"]] == [16, 16]
