#!/usr/bin/env bash
# Train the shipped pixel-space models on a GPU machine (used once, on a lent H200):
# the classifier, the class-conditional U-Net, the diffusers anchor for the same wall-clock
# time, then score them all. Needs diffusers (carried as wheels in .whl when not installed).
set -x
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
OUT=${OUT:-runs/out}
mkdir -p "$OUT" runs
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"
python3 -m lesson_lib.train --config mnist_classifier --out runs/classifier --no-progress --ship 2>&1 | tail -3
python3 -m lesson_lib.train --config mnist --out runs/mnist --no-progress --ship
secs=$(python3 -c "import json; print(json.load(open('runs/mnist/info.json'))['seconds_last_session'])")
python3 scripts/anchor.py --seconds "$secs" --out runs/anchor 2>&1 | tail -3
anchor_arg=""; [ -f runs/anchor/model.pt ] && anchor_arg="--anchor runs/anchor"
python3 scripts/benchmark_models.py --device cuda --ddpm --write-manifest $anchor_arg
tar czf "$OUT/results.tgz" lesson_lib/weights docs/benchmarks_models.json runs/*/info.json runs/anchor/model.pt
ls -la "$OUT"
