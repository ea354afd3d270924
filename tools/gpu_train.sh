#!/usr/bin/env bash
# One time-boxed GPU lease in one call (the `device` tool's run: about 15 min of device time per task, 10 min per
# command): the data engine's and the network's GPU throughput, then a width-16 model widened from the shipped one
# (function preserved, train.widen) trained for TRAIN_S seconds at constant lr with snapshots, the second half of
# its snapshots averaged and BatchNorm recalibrated on the GPU (train.ship). Everything lands in $OUT: the log,
# the benchmark, the training log, and the candidate in parts of at most 15 MB (the device returns files of at
# most 16 MB). Evaluate the candidate here on the CPU afterwards, with the model card's eval.py commands.
#
# Prepare here, once (the device gets the checkout, not ../shared):
#   mkdir -p .carry/shared/face-model/ict-facekit
#   cp ../shared/face-model/ict-facekit/ict_facekit_light.npz .carry/shared/face-model/ict-facekit/
# Run:        device run: command "bash tools/gpu_train.sh", carry [".carry"], timeout_s 600
# Back here:  mkdir -p runs/gpu && cat FILES_AT/cand.part-* > runs/gpu/weights.safetensors
#             cp FILES_AT/train_log.jsonl runs/gpu/log.jsonl
#             evaluate (eval.py, as on the model card), then, if it is to ship:
#             python -m prn_blender.train.ship --run runs/gpu --bn-batches 0 --eval-aflw ... --eval-synth ...
# CPU dry run of the same glue (no GPU; tests/test_synth_train.py runs it):
#   DEVICE=cpu BATCH=2 TRAIN_S=4 KEEP=1 BENCH=0 BN_BATCHES=1 EVAL_N=2 PY=.venv/bin/python bash tools/gpu_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
WIDTH=${WIDTH:-16}
BATCH=${BATCH:-64}
LR=${LR:-1e-4}
LOSS=${LOSS:-mse}            # train.py --loss: mse or euclid
WITHOUT=${WITHOUT:-}         # train.py --without: training-scene features switched off (e.g. distract)
TRAIN_S=${TRAIN_S:-300}      # training s; with setup, benchmark (<= 120 s) and evaluation (<= 90 s): < 9.5 min
KEEP=${KEEP:-100}            # snapshot every KEEP steps
REUSE=${REUSE:-1}            # each rendered batch is served 1 + REUSE times, re-augmented
BN_BATCHES=${BN_BATCHES:-24}
BENCH=${BENCH:-1}
EVAL_N=${EVAL_N:-200}        # a first look at the candidate on the held-out synthetic set (the ship decision is
#                              made here on the CPU, with the model card's commands)
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PRN_BLENDER_SHARED=${PRN_BLENDER_SHARED:-$PWD/.carry/shared} PYTHONUNBUFFERED=1
W=$(mktemp -d)

session() {
  $PY -c "import torch, numpy; print('torch', torch.__version__, '| numpy', numpy.__version__, '| cuda',
torch.cuda.is_available() and torch.cuda.get_device_name())"
  if [ "$BENCH" = 1 ]; then
    timeout 120 $PY benchmarks/bench_core.py --device "$DEVICE" --reps 3 --only net,data --data-batch 16,256 \
      || echo "[gpu_train] benchmark failed or timed out; training goes on"
  fi
  $PY -m prn_blender.train.widen --init prn_blender/assets/weights/prn-ict-default.safetensors --width "$WIDTH" \
    --out "$W/init.safetensors"
  $PY train.py --device "$DEVICE" --out "$W/run" --width "$WIDTH" --batch "$BATCH" --init "$W/init.safetensors" \
    --preset paper-neck --lr "$LR" --loss "$LOSS" --without "$WITHOUT" --warmup 300 --halve-every 1e9 \
    --max-time "$TRAIN_S" --reuse "$REUSE" --amp bf16 --save-every "$KEEP" --keep-every "$KEEP" --seed 17 --no-progress
  local last from
  last=$(ls "$W/run/snapshots" | sed 's/[^0-9]//g' | sort -n | tail -1)
  from=$(( (10#$last / 2 + KEEP - 1) / KEEP * KEEP ))
  echo "[gpu_train] $((10#$last)) steps; averaging the snapshots from step $from"
  $PY -m prn_blender.train.ship --run "$W/run" --average-from "$from" --device "$DEVICE" \
    --bn-batches "$BN_BATCHES" --out-weights "$W/cand.safetensors" \
    || { echo "[gpu_train] averaging failed: returning the run's last weights instead"
         cp "$W/run/weights.safetensors" "$W/cand.safetensors"; }
}

session 2>&1 | tee "$OUT/session.log"
cp "$W/run/log.jsonl" "$OUT/train_log.jsonl"
split -b 15M -d "$W/cand.safetensors" "$OUT/cand.part-"
sha256sum "$W/cand.safetensors" | tee -a "$OUT/session.log"
{ timeout 90 $PY eval.py --dataset synthetic --n "$EVAL_N" --seed 777 --weights "$W/cand.safetensors" --no-peer \
    --device "$DEVICE" --out "$W/eval_synth" && cat "$W/eval_synth/metrics.md"; } 2>&1 | tee -a "$OUT/session.log" \
  || echo "[gpu_train] held-out evaluation failed or timed out" | tee -a "$OUT/session.log"
ls -l "$OUT"
