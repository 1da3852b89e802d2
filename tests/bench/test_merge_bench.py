"""``mmeff bench merge`` on a small layout: every method runs, the report is written, tomesd and tome_sd agree."""

from __future__ import annotations

import json

import pytest
import torch

from mmeff.bench.merge import SD15, UNetLayout, flops_ratio, time_steps, vit_speed
from mmeff.bench.merge_report import write_merge_report

pytest.importorskip("tomesd")

SMALL = UNetLayout("sd1.5-128", 128, SD15.widths, SD15.down, SD15.up, SD15.transformer_layers, SD15.head_dim,
                   divide=20)


def test_step_timing_rows_flops_and_report(tmp_path):
    result = time_steps(SMALL, (0.5,), repeats=1)
    rows = result["methods"]
    assert set(rows) == {"plain", "tomesd@0.5", "tome_sd@0.5", "todo (x2)"}
    assert rows["tome_sd@0.5"]["max_abs_diff_to_tomesd"] < 1e-5
    assert rows["tome_sd@0.5"]["self_attention_flops_ratio"] == pytest.approx(
        rows["tomesd@0.5"]["self_attention_flops_ratio"])
    assert rows["tome_sd@0.5"]["self_attention_flops_ratio"] < 1
    assert rows["todo (x2)"]["self_attention_flops_ratio"] < 1 and rows["plain"]["max_abs_diff_to_plain"] == 0
    write_merge_report(tmp_path, {"speed": {SMALL.name: result}, "ratios": [0.5], "timestep": 500},
                       {"command": "test"})
    assert "tome_sd@0.5" in (tmp_path / "merge.md").read_text()
    assert json.loads((tmp_path / "merge.json").read_text())["speed"][SMALL.name]["methods"]
    assert (tmp_path / "merge.png").stat().st_size > 0


def test_flops_ratio_counts_projections_and_scores():
    plain = [(64, 64, 320)]
    assert flops_ratio(SD15, plain, plain) == 1
    # halving the tokens quarters the scores and halves the projections
    half = flops_ratio(SD15, [(32, 32, 320)], plain)
    full_proj, full_scores = 2 * 4 * 64 * 320 * 320, 4 * 64 * 64 * 320
    assert half == pytest.approx((full_proj / 2 + full_scores / 4) / (full_proj + full_scores))


def test_vit_speed_reports_fewer_tokens_with_r():
    rows = vit_speed((0, 8), batch=1, repeats=1)
    assert [r["final_tokens"] for r in rows] == [197, 197 - 12 * 8]


def test_width_divisor_one_is_the_real_models_config():
    real = SD15.at_width_divisor(1)
    assert (real.divide, real.cross_dim, real.groups) == (1, 768, 32)
    assert SD15.at_width_divisor(10) == SD15  # the default bench layout is unchanged
    wide = UNetLayout("sd1.5-64", 64, SD15.widths, SD15.down, SD15.up, SD15.transformer_layers, SD15.head_dim,
                      divide=20, cross_dim=96, groups=4)
    unet = wide.build()
    assert (unet.config.cross_attention_dim, unet.config.norm_num_groups) == (96, 4)
    assert tuple(unet.config.block_out_channels) == (16, 32, 64, 64)


def test_flops_are_counted_at_the_real_widths_of_a_divided_unet():
    """SD 1.5 / 10 has 126-wide attention at 1280 / 10 (three whole heads): counted as 1280, not 126."""
    from mmeff.bench.merge import attention_tokens, record_attention

    layout = UNetLayout("sd1.5-64", 64, SD15.widths, SD15.down, SD15.up, SD15.transformer_layers, SD15.head_dim)
    unet = layout.build()
    record_attention(unet, layout)
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor(500), encoder_hidden_states=torch.randn(1, 77, 64))
    widths = [w for _, _, w in attention_tokens(unet)]
    assert set(widths) == {320, 640, 1280} and widths.count(1280) == 6
