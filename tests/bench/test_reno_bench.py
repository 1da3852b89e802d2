"""``mmeff bench reno`` end to end on a tiny pipeline and an untrained shapes-clip reward."""

from __future__ import annotations

import json

import pytest

import mmeff
from mmeff.bench.reno import run_bench
from mmeff.bench.reno_report import write_report
from mmeff.plugins.reno import RewardSet
from mmeff.rewards import load_reward
from mmeff.testbed.t2i_prompts import eval_prompts
from mmeff.testing import tiny_sd
from mmeff.testing.rewards import write_tiny_shapes_clip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = write_tiny_shapes_clip(tmp_path_factory.mktemp("clip"))
    rewards = RewardSet({"shapes_clip": load_reward("shapes_clip", str(folder))}, {"shapes_clip": 1.0})
    pipe = mmeff.wrap(tiny_sd())
    return run_bench(pipe, rewards, eval_prompts(1), seeds=2, iterations=4, budgets=(1, 2, 4), batch_size=5,
                     reno_options={"lr": 50.0})


def test_every_method_has_every_budget_and_curves_of_full_length(results):
    assert results["images"] == 12  # six categories x one prompt x two seeds
    assert set(results["methods"]) == {"reno", "best_of_n"}
    for method, data in results["methods"].items():
        assert [b["iterations"] for b in data["budgets"]] == [1, 2, 4]
        rewards = [b["reward"] for b in data["budgets"]]
        assert rewards == sorted(rewards)  # best-so-far never falls
        curves = results["curves"][method]
        assert len(curves["oracle"]) == len(curves["best_reward"]) == 4
    assert results["iteration0_mismatches"] == {"reno": 0, "best_of_n": 0}
    assert results["peak_memory_kind"] == "process RSS" and set(results["peak_memory_mb"]) == {"reno", "best_of_n"}
    assert all(mb > 50 for mb in results["peak_memory_mb"].values())
    alignment = results["reward_alignment"]  # the reward's ranking of plain samples at 8 other seeds
    assert alignment["samples_per_prompt"] == 8
    assert {"mean_hit", "reward_pick", "oracle_pick", "auc", "pairs"} <= set(alignment)
    # iteration 0 of both searches is the same plain image, so the same reward (up to float error: the
    # gradient search renders with autograd on, and the CPU may pick other kernels then)
    assert results["methods"]["reno"]["budgets"][0]["reward"] == \
        pytest.approx(results["methods"]["best_of_n"]["budgets"][0]["reward"], abs=1e-5)


def test_paired_comparisons_match_the_summaries_and_the_stored_verdicts(results):
    reno, bon = results["methods"]["reno"]["budgets"], results["methods"]["best_of_n"]["budgets"]
    vs_bon, vs_plain = results["paired"]["reno_vs_best_of_n"], results["paired"]["reno_vs_plain"]
    assert [d["iterations"] for d in vs_bon] == [d["iterations"] for d in vs_plain] == [2, 4]
    for d, p, r, b in zip(vs_bon, vs_plain, reno[1:], bon[1:]):
        assert d["difference"] == pytest.approx(r["oracle"]["overall"] - b["oracle"]["overall"])
        assert p["difference"] == pytest.approx(r["oracle"]["overall"] - results["plain"]["oracle"]["overall"])
        k = str(d["iterations"])
        assert d["only_a"] - d["only_b"] == sum(results["hits"]["reno"][k]) - sum(results["hits"]["best_of_n"][k])
    assert len(results["hits"]["plain"]) == results["images"]
    assert results["hits"]["reno"]["1"] == results["hits"]["plain"]  # iteration 0 is the plain image


def test_report_files(results, tmp_path):
    meta = {"model": "tiny", "rewards": {"shapes_clip": 1.0}, "prompts": 6, "seeds": 2, "steps": 1,
            "guidance": 1.0, "device": "cpu"}
    write_report(tmp_path, results, meta)
    data = json.loads((tmp_path / "reno.json").read_text())
    assert data["benchmark"] == "reno" and "plain" in data
    md = (tmp_path / "reno.md").read_text()
    assert "plain pipeline" in md and "ReNO" in md and "best-of-N" in md and "Targets" in md
    assert "within-prompt AUC" in md and "paired se" in md and "Peak process memory (resident, models included)" in md
    assert (tmp_path / "reno_curves.png").stat().st_size > 0 and (tmp_path / "reno_categories.png").is_file()


def test_reward_target_is_refused():
    with pytest.raises(ValueError, match="reward_target"):
        run_bench(mmeff.wrap(tiny_sd()), None, eval_prompts(1), 1, reno_options={"reward_target": 1.0})


def _budget(k: int, overall: float) -> dict:
    return {"iterations": k, "oracle": {"colors": overall, "overall": overall}, "reward": 0.0, "n": 100}


@pytest.mark.parametrize(("reno", "se", "verdict"), [
    (0.30, 0.02, "yes (> 2 paired se everywhere)"),  # +0.10 at 5 se
    (0.23, 0.02, "ahead, within 2 paired se"),  # +0.03 at 1.5 se
    (0.19, 0.02, "no"),  # behind
])
def test_a_lead_within_noise_is_not_reported_as_a_win(reno, se, verdict):
    from mmeff.bench.reno_report import target_checks

    results = {"plain": {"oracle": {"colors": 0.1, "overall": 0.1}},
               "methods": {"reno": {"budgets": [_budget(1, 0.1), _budget(10, reno)]},
                           "best_of_n": {"budgets": [_budget(1, 0.1), _budget(10, 0.2)]}},
               "paired": {"reno_vs_best_of_n": [{"iterations": 10, "difference": reno - 0.2, "se": se}]}}
    beats = target_checks(results)[0]
    assert beats[3] == verdict
    assert f"{reno - 0.2:+.3f} ± {se:.3f} paired" in beats[2]
