#!/usr/bin/env bash
# The CLI end to end on one GPU, on the embedded demo data, then training and predict speed.
#
#     bash benchmarks/gpu_check.sh OUT_DIR                         # needs a CUDA GPU
#     ACCEL=cpu DEVICE=cpu SPEED=0 bash benchmarks/gpu_check.sh OUT_DIR   # same steps, CPU
#
# It trains the default detector (32-bit) and the single-label classifier (bf16-mixed) on the
# GPU, distils a student from the classifier there, runs one epoch under the DDP strategy,
# loads the GPU-made checkpoints on the CPU (evaluate, export --onnx), and compares
# predict's scores on the GPU with the CPU's on the same files (the largest difference is
# printed and must stay under 1e-3). Then it times training (benchmarks/training.py) and
# predict on one and on four 30-minute files on both devices (SPEED_ONLY=1: only the
# detector is trained, then the timings not made before: 8 and 12 loader workers, predict). A failed step is reported and the others
# still run; the exit status is 1 if any failed. BS overrides the command (default:
# birdstack), PY the Python; SPEED=0 skips the timings.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
ACCEL=${ACCEL:-gpu}
DEVICE=${DEVICE:-cuda}
BS=${BS:-birdstack}
PY=${PY:-python3}
DATA=data/birds-demo
mkdir -p "$OUT"
W=$(mktemp -d)
CACHE="$W/cache"
FAILED=()
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
fail() {
    FAILED+=("$1")
    echo "FAILED: $1"
}
timed() {
    local t0
    t0=$(date +%s%N)
    "$@" || return
    echo "wall $((($(date +%s%N) - t0) / 1000000)) ms: $*"
}
finish() {
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo "gpu_check: ${#FAILED[@]} step(s) failed: ${FAILED[*]}"
        exit 1
    fi
    echo "gpu_check: all steps passed$1"
    exit 0
}

step "devices"
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
EOF

train() { timed $BS train --data $DATA --model mobilenet_compact --accelerator "$ACCEL" \
    --no-progress --set data.cache_dir="$CACHE" "$@"; }
step "train: default detector, 3 epochs, $ACCEL"
train --epochs 3 --out "$W/det" || fail "train detector"
if [ "${SPEED_ONLY:-0}" = 0 ]; then
step "train: single-label classifier, bf16-mixed, 3 epochs, $ACCEL"
train --task multiclass --epochs 3 --precision bf16-mixed --out "$W/mc" ||
    fail "train bf16 classifier"
step "train: distilled student, teacher = the classifier, 2 epochs, $ACCEL"
train --task multiclass --epochs 2 --teacher "$W/mc/checkpoints/last.ckpt" --out "$W/st" ||
    fail "train distilled student"
step "train: DDP strategy, 1 device, 1 epoch, $ACCEL"
train --task multiclass --epochs 1 --devices 1 --strategy ddp --out "$W/ddp" ||
    fail "train under DDP"

step "evaluate and export on the CPU, from checkpoints made on $ACCEL"
$BS evaluate "$W/det/checkpoints/best.ckpt" --data $DATA --include-trained --out "$W/eval" \
    --cache-dir "$CACHE" || fail "evaluate"
cp "$W/eval/metrics.json" "$OUT/eval_metrics.json" 2>/dev/null
$BS export "$W/st/checkpoints/last.ckpt" --onnx "$W/st.onnx" || fail "export"

step "predict: $DEVICE against cpu, same files"
for dev in cpu "$DEVICE"; do
    timed $BS predict "$W/det/checkpoints/best.ckpt" $DATA/train_audio --out "$W/pred_$dev" \
        --device "$dev" --format csv --min-confidence 0 --no-progress || fail "predict $dev"
done
$PY - "$W/pred_cpu" "$W/pred_$DEVICE" <<'EOF' || fail "predict scores equal"
import sys
from pathlib import Path

import pandas as pd

a, b = (pd.read_csv(Path(d) / "detections.csv") for d in sys.argv[1:])
m = a.merge(b, on=["file", "start_s", "end_s", "species"], suffixes=("_a", "_b"))
diff = float((m["confidence_a"] - m["confidence_b"]).abs().max())
print(f"predict windows x species: cpu {len(a)}, other {len(b)}, matched {len(m)}; "
      f"largest confidence difference {diff:.2e}")
# a score at a species' threshold may fall on either side of it on the two devices
assert len(m) >= 0.95 * max(len(a), len(b)), "the two devices reported different windows"
assert diff < 1e-3, "GPU and CPU scores differ"
EOF
fi
[ "${SPEED:-1}" = 0 ] && finish " (timings skipped)"

step "speed: training throughput (benchmarks/training.py, segments, batch 64)"
bench() { $PY benchmarks/training.py --encoding segments --batch-size 64 --workers 4 \
    --epochs 3 "$@" 2>&1 | grep -v Warning | tail -4; }
if [ "${SPEED_ONLY:-0}" = 0 ]; then
    bench --accelerator cpu || fail "training speed cpu"
    if [ "$ACCEL" = gpu ]; then
        bench --accelerator gpu || fail "training speed gpu"
        bench --accelerator gpu --precision bf16-mixed || fail "training speed gpu bf16"
    fi
fi
if [ "$ACCEL" = gpu ]; then
    for n in 8 12; do bench --accelerator gpu --workers $n || fail "training speed gpu, $n workers"; done
fi

step "speed: predict on one and on four 30-minute files (the difference is throughput)"
mkdir -p "$W/long" "$W/long4"
$PY - "$DATA/train_audio" "$W/long/long.wav" <<'EOF' || fail "30-minute file"
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

parts, total = [], 0
files = sorted(Path(sys.argv[1]).rglob("*.ogg"))
while total < 30 * 60 * 32000:
    for f in files:
        x, sr = sf.read(f, dtype="float32", always_2d=True)
        x = soxr.resample(x.mean(axis=1), sr, 32000)
        parts.append(x)
        total += len(x)
sf.write(sys.argv[2], np.concatenate(parts)[: 30 * 60 * 32000], 32000)
EOF
for i in 1 2 3 4; do cp "$W/long/long.wav" "$W/long4/long$i.wav"; done
for dev in cpu "$DEVICE"; do
    for n in "" 4; do
        timed $BS predict "$W/det/checkpoints/best.ckpt" "$W/long$n" --out "$W/out${n}_$dev" \
            --device "$dev" --batch-size 64 --format csv --no-progress ||
            fail "predict speed $dev ${n:-1} file(s)"
    done
done
finish ""
