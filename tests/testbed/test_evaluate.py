import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmeff
from mmeff.plugin_spec import parse_plugin_spec
from mmeff.testbed.evaluate import run_eval
from mmeff.testing import tiny_llava


def test_parse_plugin_spec():
    assert parse_plugin_spec("vcd:alpha=1.0,beta=0.1") == ("vcd", {"alpha": 1.0, "beta": 0.1})
    assert parse_plugin_spec("pyramid_drop") == ("pyramid_drop", {})
    assert parse_plugin_spec("x:layers=(2, 4)") == ("x", {"layers": (2, 4)})
    with pytest.raises(ValueError, match="key=value"):
        parse_plugin_spec("x:oops")


def test_eval_runs_end_to_end_and_writes_reports(tmp_path):
    pipe = mmeff.wrap(*tiny_llava(layers=8))
    pipe.add_plugin("pyramid_drop")
    result = run_eval(pipe, "pope", tmp_path, n_scenes=3, batch_size=8)
    assert set(result["metrics"]) == {"random", "popular", "adversarial"}
    assert result["metrics"]["random"]["n"] == 18
    assert result["efficiency"]["mean_image_tokens"] < result["efficiency"]["image_tokens_before"]
    assert json.loads((tmp_path / "eval_pope.json").read_text())["suite"] == "pope"
    assert (tmp_path / "eval_pope.md").is_file() and (tmp_path / "eval_pope.png").is_file()
    again = run_eval(pipe, "pope", None, n_scenes=3, batch_size=4)
    assert again["metrics"] == result["metrics"], "deterministic, whatever the batch size"


def test_eval_cli_on_tiny_model(tmp_path):
    cmd = [sys.executable, "-m", "mmeff.cli", "eval", "--suite", "counting", "--n-scenes", "2",
           "--plugin", "pyramid_drop:ratio=0.5", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert json.loads((tmp_path / "eval_counting.json").read_text())["plugins"]["pyramid_drop"]["ratio"] == 0.5


def test_eval_under_accelerate_launch_with_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, mmeff\n"
        "from mmeff.testing import tiny_llava\n"
        "from mmeff.testbed.evaluate import run_eval\n"
        "r = run_eval(mmeff.wrap(*tiny_llava(layers=4)), 'counting', None, n_scenes=4, batch_size=2)\n"
        "if r: open(sys.argv[1], 'w').write(json.dumps(r['metrics']) + json.dumps(r['processes']))\n"
        "import torch.distributed as dist\n"
        "if dist.is_initialized(): dist.destroy_process_group()  # gloo torn down before exit, not during it\n"
    )
    single = run_eval(mmeff.wrap(*tiny_llava(layers=4)), "counting", None, n_scenes=4, batch_size=2)
    out = tmp_path / "out.json"
    launcher = Path(sys.executable).with_name("accelerate")
    # --multi_gpu with no visible GPU: accelerate starts 2 CPU processes with the gloo backend
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
                           str(script), str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"accelerate launch failed ({done.returncode}):\n{done.stderr[-3000:]}"
    text = out.read_text()
    assert text.endswith("2"), "both processes took part"
    assert json.loads(text[:-1]) == single["metrics"]
