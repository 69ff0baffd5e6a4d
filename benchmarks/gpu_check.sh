#!/usr/bin/env bash
# GPU end-to-end check of katapool's TensorRT path, in one run, on a machine with an NVIDIA GPU.
#
# Usage, from the repository root (the shared data beside it, or KATAPOOL_SHARED_DIR):
#   benchmarks/gpu_check.sh                  # everything, output in ./gpu-check-out
#   OUT=/some/dir benchmarks/gpu_check.sh    # output there instead
#   NETS="" benchmarks/gpu_check.sh          # every network (default: NETS=g170, which fits a
#                                            # lent GPU's 15 minutes; words pick networks by name)
#   MAX_BATCH=32 benchmarks/gpu_check.sh     # engines' max batch (nnMaxBatchSize; default 16)
#
# What it does: sets up .venv with `bin/bootstrap "test,tensorrt"` (pip needs NVIDIA's wheels for
# tensorrt; in a container that already has TensorRT, create .venv first with
# `python3 -m venv --system-site-packages .venv`), prints nvidia-smi and the TensorRT version,
# installs KataGo (`katapool engine install`, for INT8 calibration inputs), exports the networks
# in ../shared/models and KaTrain's bundled b10c384 to ONNX, quantizes each to FP16 and INT8
# (`katapool model quantize`, calibration positions from ../shared/sgf), builds FP32, FP16 and
# INT8 engines with `katapool model build-trt` (build time and size in the JSON it writes), runs
# tests/test_tensorrt.py and `katapool bench --json`. Every step's output is in logs/, the
# engines' reports in plans/*.json, and summary.txt lists each step with its status and time.
# A failing step is recorded and the run goes on; the exit status is 1 if any step failed.
#
# Run time, estimated (not yet measured: no run on a GPU so far), one data-centre GPU, downloads
# cached: about
# 30 minutes for all four networks, most of it engine builds (b10c384: 1-3 minutes each) and
# INT8 calibration; NETS=g170 takes about 8 minutes. A first run adds the downloads (TensorRT's
# wheels are over 1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-$PWD/gpu-check-out}"
SHARED="${KATAPOOL_SHARED_DIR:-$PWD/../shared}"
MAX_BATCH="${MAX_BATCH:-16}"
# g170 alone by default: the whole set takes longer than a lent GPU's time slot.
NETS="${NETS-g170}"
# Every step is cut off after STEP_TIMEOUT seconds (a hung build is a failed step).
STEP_TIMEOUT="${STEP_TIMEOUT:-900}"
# The same engine and downloads as the test suite's (tests/conftest.py).
export KATAPOOL_DATA_DIR="${KATAPOOL_DATA_DIR:-$PWD/.cache/test-data}"
export KATAPOOL_CACHE_DIR="${KATAPOOL_CACHE_DIR:-$PWD/.cache/test-downloads}"
export KATAPOOL_SHARED_DIR="$SHARED"
mkdir -p "$OUT_DIR/logs" "$OUT_DIR/onnx" "$OUT_DIR/plans"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
PY=.venv/bin/python
KP=(.venv/bin/python -m katapool)
failed=0

# step NAME COMMAND...: run it with its output in logs/NAME.log, record status and seconds.
step() {
  local name=$1 rc=0 began ended
  shift
  began=$(date +%s.%N)
  echo "== $name: $*" >&2
  local run=("$@")
  declare -F "$1" >/dev/null || run=(timeout "$STEP_TIMEOUT" "$@")  # functions time themselves
  if "${run[@]}" >"$OUT_DIR/logs/$name.log" 2>&1; then rc=0; else rc=$?; fi
  ended=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$began" -v b="$ended" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then
    printf '%-44s ok        %8ss\n' "$name" "$secs" | tee -a "$SUMMARY" >&2
  else
    failed=1
    printf '%-44s FAILED %-3s%7ss  (logs/%s.log)\n' "$name" "$rc" "$secs" "$name" | tee -a "$SUMMARY" >&2
    tail -n 5 "$OUT_DIR/logs/$name.log" | sed 's/^/    /' >&2
  fi
  return 0
}

# info NAME COMMAND...: like step, but its failure is information, not a failed check.
info() {
  local name=$1 rc=0
  shift
  echo "== $name: $*" >&2
  if "$@" >"$OUT_DIR/logs/$name.log" 2>&1; then rc=0; else rc=$?; fi
  printf '%-44s %s\n' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo "exit $rc (information only)")" \
    | tee -a "$SUMMARY" >&2
  return 0
}

# to_file FILE COMMAND...: the command's stdout (its JSON) into FILE; stderr stays in the log.
# shellcheck disable=SC2317  # called through step and info
to_file() {
  local dest=$1
  shift
  timeout "$STEP_TIMEOUT" "$@" >"$dest"
}

# shellcheck disable=SC2317  # called through step
no_skips() {
  ! grep '^SKIPPED' "$1"
}

{ echo "katapool GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "max batch $MAX_BATCH; output $OUT_DIR"; echo; } >>"$SUMMARY"

info nvidia-smi nvidia-smi
cat "$OUT_DIR/logs/nvidia-smi.log" >&2 || true
# An offline GPU machine with TensorRT already there: make .venv with
# `python3 -m venv --system-site-packages .venv` and `pip install --no-deps -e .`; then no
# download is tried.
if [ -x "$PY" ] && "$PY" -c 'import tensorrt, katapool' 2>/dev/null; then
  echo "bootstrap: .venv already has katapool and tensorrt" | tee -a "$SUMMARY" >&2
else
  step bootstrap bin/bootstrap "test,tensorrt"
fi
if [ ! -x "$PY" ]; then
  echo "no .venv: nothing else can run (see logs/bootstrap.log)" | tee -a "$SUMMARY" >&2
  exit 1
fi
step tensorrt "$PY" -c '
import tensorrt
from katapool.models.tensorrt_build import tensorrt_status
print("tensorrt", tensorrt.__version__)
try:
    from cuda.bindings import runtime as cudart
except ImportError:
    from cuda import cudart
print("CUDA runtime", cudart.cudaRuntimeGetVersion()[1], "driver", cudart.cudaDriverGetVersion()[1])
reason = tensorrt_status()
print("katapool:", reason or "TensorRT usable")
raise SystemExit(1 if reason else 0)'
cat "$OUT_DIR/logs/tensorrt.log" >&2

if [ -n "${KATAPOOL_KATAGO:-}" ]; then
  echo "engine: $KATAPOOL_KATAGO (KATAPOOL_KATAGO), no install" | tee -a "$SUMMARY" >&2
else
  step engine-install "${KP[@]}" engine install
fi
step engine-prepare "${KP[@]}" prepare --fast --model "$SHARED/models/g170-b6c96-s175395328-d26788732.bin.gz"
B10=$("$PY" -c 'from katapool.engine.discovery import resolve_model; print(resolve_model(None))' \
      2>>"$OUT_DIR/logs/engine-install.log" || true)

nets=("$SHARED"/models/*.bin.gz)
[ -n "$B10" ] && [ -f "$B10" ] && nets+=("$B10")
G170="$SHARED/models/g170-b6c96-s175395328-d26788732.bin.gz"
# Calibration positions from one game of each set in ../shared/sgf (professional and self-play).
games=()
for dir in "$SHARED"/sgf/*/; do
  first=$(find "$dir" -maxdepth 1 -name '*.sgf' | sort | head -n 1)
  [ -z "$first" ] || games+=("$first")
done

for net in "${nets[@]}"; do
  name=$(basename "$net"); name=${name%.bin.gz}
  if [ -n "$NETS" ]; then
    keep=0
    for word in $NETS; do [[ "$name" == *"$word"* ]] && keep=1; done
    [ "$keep" -eq 1 ] || continue
  fi
  onnx="$OUT_DIR/onnx/$name"
  step "$name.export" "${KP[@]}" model export-onnx "$net" -o "$onnx.onnx"
  step "$name.quantize-fp16" "${KP[@]}" model quantize "$net" --fp16 --positions 0 \
    --bench-seconds 0 -o "$onnx.fp16.onnx"
  step "$name.quantize-int8" "${KP[@]}" model quantize "$net" --int8 --calibration "${games[@]}" \
    --calibration-positions 32 --input-model "$G170" --positions 0 --bench-seconds 0 \
    -o "$onnx.int8.onnx"
  for variant in fp32 fp16 int8; do
    src="$onnx.onnx"; [ "$variant" = fp32 ] || src="$onnx.$variant.onnx"
    step "$name.build-$variant" to_file "$OUT_DIR/plans/$name.$variant.json" \
      "${KP[@]}" model build-trt "$src" "--$variant" -o "$OUT_DIR/plans/$name.$variant.plan" \
      --max-batch "$MAX_BATCH" --json
    rm -f "$OUT_DIR/plans/$name.$variant.plan"  # big; the JSON keeps the figures
  done
  # TensorRT 10's FP16 builder flag on the FP32 file (TensorRT 11 has none and says so).
  info "$name.build-fp16-flag" to_file "$OUT_DIR/plans/$name.fp16-flag.json" \
    "${KP[@]}" model build-trt "$onnx.onnx" --fp16 -o "$OUT_DIR/plans/$name.fp16-flag.plan" \
    --max-batch "$MAX_BATCH" --json
  rm -f "$OUT_DIR/plans/$name.fp16-flag.plan"
done

step pytest-tensorrt "$PY" -m pytest tests/test_tensorrt.py -q -rs -p no:cacheprovider
tail -n 12 "$OUT_DIR/logs/pytest-tensorrt.log" >&2
# On a GPU machine a skipped GPU test is a check that did not happen.
step pytest-tensorrt-nothing-skipped no_skips "$OUT_DIR/logs/pytest-tensorrt.log"
step bench to_file "$OUT_DIR/bench.json" "${KP[@]}" bench --json --chart "$OUT_DIR/bench.png"

{ echo; echo "engines (build-trt --json):"
  "$PY" - "$OUT_DIR/plans" <<'EOF'
import json
import sys
from pathlib import Path

print(f"{'engine':<48} {'precision':<9} {'typed':<7} {'build s':>8} {'MB':>8}  TensorRT")
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    try:
        r = json.loads(path.read_text())
    except ValueError:
        print(f"{path.stem:<48} (no report)")
        continue
    typed = "strong" if r["strongly_typed"] else "weak"
    print(f"{path.stem:<48} {r['precision']:<9} {typed:<7} {r['seconds']:>8.1f} "
          f"{r['size_bytes'] / 1e6:>8.1f}  {r['tensorrt_version']}")
EOF
  echo; echo "overall: $([ "$failed" -eq 0 ] && echo passed || echo FAILED)"; } >>"$SUMMARY"
cat "$SUMMARY"
exit "$failed"
