#!/usr/bin/env bash
# Train shapes-qwen2vl with the bundled recipe on the lent GPU machine, time it, and score POPE there.
#
# The device machine has torch, transformers, timm, opencv, accelerate, matplotlib and rich, but not
# diffusers, and reaches no network. Before the call, on the CPU machine, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1
# then run this with the device tool: command "bash tools/gpu/qwen2vl_recipe.sh", carry [".whl"].
# Extra arguments go to `mmeff testbed train vlm` (e.g. --recipe chat_steps=3000). DEVICE=cpu and a
# short recipe rehearse it on the CPU machine.
set -euo pipefail
OUT=${OUT:-/tmp/qwen2vl_recipe}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
if [ -d .whl ]; then  # mmeff itself (built here, offline) and the carried wheels, beside the machine's packages
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
      --target "$SITE" .whl/*.whl . 2>&1 | tail -3
  export PYTHONPATH="$SITE"
fi
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
PY
start=$(date +%s)
python3 -m mmeff.cli testbed train vlm --arch qwen2_vl --device "$DEVICE" \
    --out "$OUT/shapes-qwen2vl" --run-dir "$OUT/run" "$@" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" | tail -40
echo "train wall seconds: $(( $(date +%s) - start ))" | tee "$OUT/train_seconds.txt"
python3 -m mmeff.cli eval --model "$OUT/shapes-qwen2vl" --suite pope --out "$OUT/pope" 2>&1 | tail -15
