#!/usr/bin/env bash
# mmeff eval vs lmms-eval --model mmeff on the full shapes suites, 1 and 2 processes, with and without FastV
# (docs/lmms_eval.md). Usage: bash tools/lmms_eval_agreement/run.sh [OUT_DIR]
set -e
cd "$(dirname "$0")/../.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1
R=${1:-lmms_eval_agreement}
.venv/bin/mmeff testbed export-lmms-eval --out $R/tasks --suite pope --suite counting --suite caption
for P in "" "fastv:budget=64"; do
  L=$( [ -z "$P" ] && echo baseline || echo fastv )
  ARGS="pretrained=assets/models/shapes-llava"; [ -n "$P" ] && ARGS="$ARGS,plugins=\"$P\""
  .venv/bin/python -m lmms_eval --model mmeff --model_args "$ARGS" --tasks shapes_pope,shapes_counting,shapes_caption --include_path $R/tasks --batch_size 16 --log_samples --output_path $R/lmms_${L}_1p
  .venv/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no --main_process_port 29551 -m lmms_eval --model mmeff --model_args "$ARGS" --tasks shapes_pope,shapes_counting,shapes_caption --include_path $R/tasks --batch_size 16 --log_samples --output_path $R/lmms_${L}_2p
done
.venv/bin/python tools/lmms_eval_agreement/compare.py $R | tee $R/compare.md
