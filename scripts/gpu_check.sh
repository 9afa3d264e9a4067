#!/usr/bin/env bash
# The GPU path, measured: the unit tests and every notebook on CUDA, and what they measured.
#
#   OUT=/some/folder scripts/gpu_check.sh     # results in $OUT (default: ./gpu-results)
#
# Writes to $OUT:
#   device.json            the GPU, driver, torch and CUDA versions (fails early without CUDA)
#   nvidia-smi.txt         nvidia-smi before the runs
#   unit-tests.log/.xml    pytest over tests/ (the browser test is left to `make test`), JUnit XML
#   notebook_times.json    every notebook run top to bottom in a fresh kernel, the seconds each
#                          took and the device it reported ("device: cuda" expected), by
#                          scripts/measure_notebooks.py (README and headers are not touched)
#   notebooks.log          that script's output
#   summary.json           exit codes and wall-clock seconds of both parts
# Needs the environment of `make lab` / `make test` (.venv, or PYTHON=... for another python)
# with a CUDA build of PyTorch.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$OUT/nvidia-smi.txt"
if ! "$PY" - > "$OUT/device.json" <<'PY'
import json, platform, torch
if not torch.cuda.is_available():
    raise SystemExit(f"no CUDA device visible to torch {torch.__version__}")
p = torch.cuda.get_device_properties(0)
print(json.dumps({
    "device": torch.cuda.get_device_name(0),
    "memory_GiB": round(p.total_memory / 2**30, 1),
    "devices": torch.cuda.device_count(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
    "python": platform.python_version(),
}, indent=2))
PY
then
    cat "$OUT/device.json"
    echo "gpu_check: CUDA is not available; nothing measured (see $OUT/device.json)" >&2
    exit 2
fi
cat "$OUT/device.json"

start=$(date +%s)
"$PY" -m pytest tests --ignore=tests/test_browser.py -q -p no:cacheprovider \
    --junitxml="$OUT/unit-tests.xml" 2>&1 | tee "$OUT/unit-tests.log"
tests_rc=${PIPESTATUS[0]}
tests_s=$(( $(date +%s) - start ))

start=$(date +%s)
"$PY" scripts/measure_notebooks.py --no-text --out "$OUT/notebook_times.json" 2>&1 \
    | tee "$OUT/notebooks.log"
notebooks_rc=${PIPESTATUS[0]}
notebooks_s=$(( $(date +%s) - start ))

cat > "$OUT/summary.json" <<JSON
{"unit_tests": {"exit_code": $tests_rc, "seconds": $tests_s},
 "notebooks": {"exit_code": $notebooks_rc, "seconds": $notebooks_s,
               "times": "notebook_times.json"}}
JSON
cat "$OUT/summary.json"
# Every notebook ran clean and on CUDA?
"$PY" - "$OUT/notebook_times.json" <<'PY'
import json, sys
times = json.load(open(sys.argv[1]))["notebooks"]
bad = {k: v for k, v in times.items() if not v["ok"] or "cuda" not in (v["device"] or "")}
for name, entry in times.items():
    print(f"{name:<40} {entry['seconds']:>7.1f} s  {entry['device']}  {'ok' if entry['ok'] else entry['error']}")
sys.exit(1 if bad else 0)
PY
check_rc=$?
[ "$tests_rc" = 0 ] && [ "$notebooks_rc" = 0 ] && [ "$check_rc" = 0 ]
