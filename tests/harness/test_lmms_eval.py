"""``--model mmeff`` inside lmms-eval's own evaluator, on the exported shapes tasks (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is the eval extra: pip install 'mmeff[eval]'")

import mmeff  # noqa: E402
from mmeff.errors import ConfigError, UnsupportedModelError  # noqa: E402
from mmeff.harness.export import export_tasks  # noqa: E402
from mmeff.harness.plugin_stack import parse_plugin_stack  # noqa: E402
from mmeff.testbed.evaluate import answer_questions, score  # noqa: E402
from mmeff.testbed.questions import build_suite  # noqa: E402
from mmeff.testbed.render import render  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes-llava"
SCENES = {"pope": 2, "counting": 3, "caption": 3}
BATCH = 8
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms_tasks")
    for suite, n in SCENES.items():
        export_tasks(out, (suite,), n_scenes=n)
    return out


def lmms_run(tasks_dir: Path, tasks: list[str], plugins: str = "", model: object = "mmeff", limit=None):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    args = f"pretrained={BUNDLED}" + (f',plugins="{plugins}"' if plugins else "")
    return simple_evaluate(model=model, model_args=args, tasks=tasks, batch_size=BATCH, limit=limit,
                           task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                           verbosity="WARNING")


def responses(result: dict, task: str) -> list[str]:
    samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
    return [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in samples]


def mmeff_eval(suite: str, plugins: list[tuple[str, dict]]) -> tuple[list[str], dict]:
    pipe = mmeff.load(BUNDLED)
    for name, options in plugins:
        pipe.add_plugin(name, **options)
    questions = build_suite(suite, SCENES[suite])
    answers, _ = answer_questions(pipe, questions, BATCH, 24 if suite == "caption" else 2, progress=False)
    return answers, score(suite, questions, answers)


def test_plugin_stack_syntax_and_errors():
    assert parse_plugin_stack('"pyramid_drop;vcd:alpha=1.0,beta=0.1"') == [
        ("pyramid_drop", {}), ("vcd", {"alpha": 1.0, "beta": 0.1})]
    assert parse_plugin_stack("") == []
    with pytest.raises(ConfigError, match="Did you mean 'fastv'.*available: .*fastv"):
        parse_plugin_stack("fastvv")
    with pytest.raises(ConfigError, match="allowed: \\['budget', 'k', 'ratio'\\]"):
        parse_plugin_stack("fastv:bogus=1")
    with pytest.raises(ConfigError, match="more than once"):
        parse_plugin_stack("fastv;fastv")


def test_export_holds_mmeff_evals_questions_and_images(tasks_dir):
    import datasets

    data = datasets.load_from_disk(str(tasks_dir / "data" / "shapes_counting"))["test"]
    questions = build_suite("counting", SCENES["counting"])
    assert len(data) == len(questions)
    assert data["question"] == [q.text for q in questions]
    assert data["answer"] == [q.answer for q in questions]
    for row, q in zip(data.select(range(3)), questions):
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(render(q.scene)))
    assert "!function utils.pope_random_f1" in (tasks_dir / "shapes_pope.yaml").read_text()


@pytest.mark.parametrize("plugins", ["", "fastv:budget=64"], ids=["baseline", "fastv"])
def test_lmms_eval_reproduces_mmeff_eval_question_for_question(tasks_dir, plugins):
    result = lmms_run(tasks_dir, ["shapes_pope", "shapes_counting", "shapes_caption"], plugins)
    stack = parse_plugin_stack(plugins)
    for suite in ("pope", "counting", "caption"):
        answers, metrics = mmeff_eval(suite, stack)
        assert responses(result, f"shapes_{suite}") == answers, suite
        got = result["results"][f"shapes_{suite}"]
        if suite == "pope":
            for split, values in metrics.items():
                for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
                    assert got[f"pope_{split}_{key},none"] == pytest.approx(values[key]), (split, key)
        elif suite == "caption":
            for key in ("chair_s", "chair_i", "recall"):
                assert got[f"{key},none"] == pytest.approx(metrics["caption"][key]), key
        else:
            assert got["accuracy,none"] == pytest.approx(metrics[suite]["accuracy"])


def test_plugins_reach_the_model_and_stats_reach_the_results(tasks_dir):
    from mmeff.harness.lmms_model import MMeffLMM

    lm = MMeffLMM(pretrained=str(BUNDLED), plugins="fastv:budget=64", batch_size=BATCH)
    result = lmms_run(tasks_dir, ["shapes_pope"], model=lm, limit=16)
    stats = lm.pipe.last_stats["fastv"]
    assert stats["final_image_tokens"] == 16 < stats["image_tokens_before"][0] == 144  # fewer tokens in the cache
    throughput = result["throughput"]
    assert throughput["avg_final_image_tokens"] == 16
    assert throughput["avg_mean_image_tokens_in"] == 144
    assert throughput["total_gen_tokens"] > 0 and throughput["avg_speed"] > 0


def test_a_contrastive_plugin_reports_its_model_forwards(tasks_dir):
    result = lmms_run(tasks_dir, ["shapes_pope"], "vcd", limit=8)
    throughput = result["throughput"]
    assert throughput["avg_model_forwards"] >= 2 * throughput["avg_requests_answered"] / BATCH  # two streams


def test_a_bad_plugin_string_fails_before_any_model_loads():
    from mmeff.harness.lmms_model import MMeffLMM

    with pytest.raises(ConfigError, match="allowed: \\['budget', 'k', 'ratio'\\]"):
        MMeffLMM(pretrained="/nonexistent/model", plugins="fastv:bogus=1")  # the plugin error, not the path's
    with pytest.raises(ConfigError, match="unknown key"):
        MMeffLMM(pretrained=str(BUNDLED), plugin="fastv")


def test_a_diffusers_pipeline_is_refused_clearly(tmp_path):
    from mmeff.harness.lmms_model import MMeffLMM
    from mmeff.testing import tiny_sd

    tiny_sd().save_pretrained(tmp_path / "sd")
    with pytest.raises(UnsupportedModelError, match="lmms-eval cannot feed"):
        MMeffLMM(pretrained=str(tmp_path / "sd"))


def test_loglikelihood_scores_the_continuation_under_the_plugins():
    from mmeff.harness.lmms_model import MMeffLMM

    lm = MMeffLMM(pretrained=str(BUNDLED))
    scene = build_suite("pope", 1)[0].scene
    image, prompt = render(scene), "is there a red circle in the image?"
    logprob, greedy = lm.continuation_logprob(image, prompt, "yes")
    inputs = lm.pipe.to_model(lm.pipe.adapter.build_inputs([image], [prompt]))
    with torch.no_grad():
        logits = lm.pipe.model(**inputs).logits[0, -1].float().log_softmax(-1)
    yes = lm.pipe.processor.tokenizer.convert_tokens_to_ids("yes")
    assert logprob == pytest.approx(logits[yes].item(), abs=2e-4)  # generate and a bare forward: float noise
    assert greedy == (int(logits.argmax()) == yes)
    lm.pipe.add_plugin("vcd")
    assert lm.continuation_logprob(image, prompt, "yes")[0] != pytest.approx(logprob, abs=1e-4)


def test_two_processes_give_the_metrics_of_one(tasks_dir, tmp_path):
    single = lmms_run(tasks_dir, ["shapes_counting"], "fastv:budget=64")["results"]["shapes_counting"]
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # --multi_gpu, no GPU: gloo on CPU
    done = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541",
         "-m", "lmms_eval", "--model", "mmeff", "--model_args", f'pretrained={BUNDLED},plugins="fastv:budget=64"',
         "--tasks", "shapes_counting", "--include_path", str(tasks_dir), "--batch_size", str(BATCH),
         "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Running on rank 1" in done.stdout + done.stderr, "both processes took part"
    written = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    assert written["results"]["shapes_counting"]["accuracy,none"] == pytest.approx(single["accuracy,none"])
    n_docs = len(build_suite("counting", SCENES["counting"]))
    assert written["throughput"]["avg_requests_answered"] == n_docs  # throughput summed over both processes


def test_a_qwen2_vl_folder_runs_with_a_plugin(tasks_dir, tmp_path):
    """Any adapter mmeff.load takes: a saved Qwen2-VL (dynamic resolution, M-RoPE) through the evaluator."""
    from mmeff.harness.lmms_model import MMeffLMM
    from mmeff.testing.qwen import tiny_qwen2_vl

    model, processor = tiny_qwen2_vl()
    model.save_pretrained(tmp_path / "qwen")
    processor.save_pretrained(tmp_path / "qwen")
    lm = MMeffLMM(pretrained=str(tmp_path / "qwen"), plugins="pyramid_drop", batch_size=4)
    result = lmms_run(tasks_dir, ["shapes_counting"], model=lm, limit=4)
    assert len(result["samples"]["shapes_counting"]) == 4
    stats = lm.pipe.last_stats["pyramid_drop"]
    assert stats["final_image_tokens"] < stats["image_tokens_before"][0]


def test_generation_kwargs_stop_strings_and_refusals():
    from lmms_eval.api.instance import Instance

    from mmeff.harness.lmms_model import MMeffLMM

    lm = MMeffLMM(pretrained=str(BUNDLED), batch_size=2)
    scene = build_suite("counting", 1)[0].scene
    lm.task_dict = {"t": {"test": [{"image": render(scene)}]}}

    def request(gen_kwargs, context="describe the image."):
        return Instance("generate_until", (context, gen_kwargs, lambda doc: [doc["image"]], 0, "t", "test"), idx=0,
                        metadata={"task": "t", "doc_id": 0, "repeats": 1})

    full = lm.generate_until([request({"max_new_tokens": 12})])[0]
    word = full.split()[1]
    cut = lm.generate_until([request({"max_new_tokens": 12, "until": [word]})])[0]
    assert cut == full.split(word, 1)[0] and len(cut) < len(full)
    with pytest.warns(UserWarning, match="ignores generation kwargs \\['image_aspect_ratio'\\]"):
        lm.generate_until([request({"max_new_tokens": 2, "image_aspect_ratio": "pad"})])
    with pytest.raises(mmeff.errors.InputError, match="num_beams"):
        lm.generate_until([request({"max_new_tokens": 2, "num_beams": 3})])
    with pytest.raises(mmeff.errors.InputError, match="empty prompt"):
        lm.generate_until([request({"max_new_tokens": 2}, context="<image>")])
