#!/usr/bin/env bash
# The GPU measurements of docs/PERFORMANCE.md, on one GPU of a node, in one go.
#
#   bash launch/bench_gpu.sh OUT [PART ...]    PART: gn2 mlpf loop input convergence (default: all, in order)
#
#   gn2    `smilejax bench train gn2`: one training step, padded to 40 tracks and bucketed (16, 24), per
#          attention implementation (math, cudnn, pallas: fused short sets) and vertex head (xla, pallas:
#          the fused pair kernel), against the PyTorch peer (eager, torch.compile)
#   mlpf   `smilejax bench train mlpf`: the CLIC model (chunked, cudnn attention) against particleflow
#          3.1.0 itself (eager, torch.compile) on the same batches
#   loop   `smilejax train gn2`: the whole training loop on the synthetic set, bucketed, with input
#   input  `smilejax bench input gn2`: jets/s from HDF5 to device-ready batches with up to 16 cores
#   convergence  `smilejax bench convergence gn2`: the batching variants (padded as salt, bucketed,
#          window16, packed) trained from the same seeds on one sample, validation loss and light/c
#          rejection at 77 % b-efficiency against jets seen and device time, with the PyTorch peer
#          (torch.compile) trained on the padded variant's batches
#
# Each part writes its results under OUT/PART and its log to OUT/PART.log, and goes on to the next
# part if one fails (the exit status is then 1). Settings, from the environment:
#   PY           Python with smilejax and JAX (default python3)
#   TORCH_PY     Python with torch for GN2's PyTorch peer (default $PY; "" skips it)
#   MLPF_REF_PY  Python with torch and particleflow 3.1.0 (default: the bench's own lookup, .mlpf-ref)
#   STEPS, REPEATS (30, 2); GN2_ATTENTION (math,cudnn,pallas); GN2_BUCKETS ("16 24");
#   GN2_TORCH_MODES (eager,compile)
#   GN2_VARY (model.vertex_kernel=xla,pallas): the gn2 part's --vary ("" for none)
#   PROFILE_STEPS (3): gn2 and mlpf trace this many more steps per JAX row and write where the device
#                time goes (OUT/PART/profile-*.md/.png; 0: no trace)
#   MLPF_ATTENTION (chunked,cudnn); MLPF_SHAPES ("256x128 1024x32")
#   BUCKET_WINDOW (16): the loop's and the input's data.bucket_window (jets of 16 batches sorted by track
#                count before batching; 1: each batch as shuffled, padded to its longest jet)
#   LOOP_STEPS (150), LOOP_THREADS (16), LOOP_SETTINGS (default: the attention and varied fields of the
#                fastest bucketed row of the gn2 part, as KEY=VALUE overrides)
#   INPUT_JETS (400000); INPUT_THREADS (4,16); INPUT_WORKERS (0,8,16)
#   CONV_DATA (default: a synthetic set of CONV_JETS (1000000) jets made first in OUT/convergence-data);
#                CONV_VARIANTS (padded,bucketed,window16,packed), CONV_SEEDS (2), CONV_STEPS (600),
#                CONV_EVAL_EVERY (100), CONV_EVAL_BATCHES (5); CONV_SETTINGS (default: as LOOP_SETTINGS);
#                CONV_TORCH_MODES (compile): the PyTorch peer (TORCH_PY) trained on the padded variant's
#                batches as variants torch-MODE, the reference of the time-to-target ratio ("" skips it)
#   GN2_OVERRIDES, MLPF_OVERRIDES, CONV_OVERRIDES  extra KEY=VALUE overrides (small models for a CPU
#                smoke run)
set -uo pipefail

OUT=${1:?usage: bash launch/bench_gpu.sh OUT [gn2|mlpf|loop|input|convergence ...]}
shift
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(gn2 mlpf loop input convergence)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PY=${PY:-python3}
TORCH_PY=${TORCH_PY-$PY}
STEPS=${STEPS:-30}
REPEATS=${REPEATS:-2}
read -r -a GN2_OVR <<<"${GN2_OVERRIDES:-}"
read -r -a MLPF_OVR <<<"${MLPF_OVERRIDES:-}"
GN2_VARY=${GN2_VARY-model.vertex_kernel=xla,pallas}
read -r -a GN2_BUCKET_ARGS <<<"${GN2_BUCKETS-16 24}"
read -r -a MLPF_SHAPE_ARGS <<<"${MLPF_SHAPES:-256x128 1024x32}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

part_gn2() {
  local torch=()
  [ -n "$TORCH_PY" ] && torch=(--torch-python "$TORCH_PY" --torch-modes "${GN2_TORCH_MODES:-eager,compile}")
  local vary=()
  [ -n "$GN2_VARY" ] && vary=(--vary "$GN2_VARY")
  "$PY" -m smilejax bench train gn2 "${GN2_OVR[@]}" --batch "${GN2_BATCH:-4000}" --tracks 40 \
    --bucket "${GN2_BUCKET_ARGS[@]}" --attention "${GN2_ATTENTION:-math,cudnn,pallas}" "${vary[@]}" --precision bf16 \
    --steps "$STEPS" --repeats "$REPEATS" --profile "${PROFILE_STEPS:-3}" "${torch[@]}" --out "$OUT/gn2"
}

part_mlpf() {
  local ref=()
  [ -n "${MLPF_REF_PY:-}" ] && ref=(--torch-python "$MLPF_REF_PY")
  "$PY" -m smilejax bench train mlpf "${MLPF_OVR[@]}" --shape "${MLPF_SHAPE_ARGS[@]}" \
    --attention "${MLPF_ATTENTION:-chunked,cudnn}" --precision bf16 --steps "$STEPS" \
    --repeats "$REPEATS" --profile "${PROFILE_STEPS:-3}" "${ref[@]}" --out "$OUT/mlpf"
}

fastest_gn2_settings() {
  # The fastest bucketed row of the gn2 part as overrides: its attention and varied fields.
  "$PY" - "$OUT/gn2/train.json" "$GN2_VARY" <<'PYEOF' 2>/dev/null || echo model.attention=math
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["impl"] == "jax" and r.get("samples_per_s")]
best = max(rows, key=lambda r: (r["padding"] == "bucket", r["samples_per_s"]))
keys = ["model.attention"] + [sys.argv[2].partition("=")[0]] * bool(sys.argv[2])
print(" ".join(f"{k}={best[k.rsplit('.', 1)[-1]]}" for k in keys))
PYEOF
}

part_loop() {
  # The packaged recipe (batch 4000, bf16) on the synthetic set, each batch padded only to the
  # smallest bucket that holds its jets, the jets of BUCKET_WINDOW batches sorted by track count first;
  # jets/s, data wait and MFU per logging window in metrics.jsonl.
  local settings
  read -r -a settings <<<"${LOOP_SETTINGS:-$(fastest_gn2_settings)}"
  echo "settings: ${settings[*]}"
  "$PY" -m smilejax train gn2 "${GN2_OVR[@]}" "run.dir=$OUT/loop" "run.steps=${LOOP_STEPS:-150}" \
    run.log_every=25 run.eval_every=0 "run.checkpoint_every=${LOOP_STEPS:-150}" \
    logging.tensorboard=false 'data.bucket_tracks=[8,12,16,24,32]' "data.read_threads=${LOOP_THREADS:-16}" \
    "data.bucket_window=${BUCKET_WINDOW:-16}" "${settings[@]}" "${LOOP_OVERRIDES[@]}"
}

part_input() {
  "$PY" -m smilejax bench input gn2 "${GN2_OVR[@]}" 'data.bucket_tracks=[8,12,16,24,32]' \
    "data.bucket_window=${BUCKET_WINDOW:-16}" \
    --jets "${INPUT_JETS:-400000}" --threads "${INPUT_THREADS:-4,16}" --workers "${INPUT_WORKERS:-0,8,16}" \
    --batches "${INPUT_BATCHES:-50}" --out "$OUT/input"
}

part_convergence() {
  # Every variant from the same seeds on one sample (the file's last 10 % held out for evaluation).
  local data=${CONV_DATA:-}
  if [ -z "$data" ]; then
    data="$OUT/convergence-data/train.h5"
    [ -f "$data" ] || "$PY" -m smilejax data make ftag-synthetic --out "$data" --jets "${CONV_JETS:-1000000}" \
      --seed 1 || return 1
  fi
  local settings torch=()
  read -r -a settings <<<"${CONV_SETTINGS:-${LOOP_SETTINGS:-$(fastest_gn2_settings)}}"
  echo "settings: ${settings[*]}"
  local modes=${CONV_TORCH_MODES-compile}
  [ -n "$TORCH_PY" ] && [ -n "$modes" ] && torch=(--torch --torch-modes "$modes" --torch-python "$TORCH_PY")
  "$PY" -m smilejax bench convergence gn2 "${GN2_OVR[@]}" "data.path=$data" \
    "data.read_threads=${LOOP_THREADS:-16}" "${settings[@]}" "${CONV_OVR[@]}" "${torch[@]}" \
    --variants "${CONV_VARIANTS:-padded,bucketed,window16,packed}" --seeds "${CONV_SEEDS:-2}" \
    --steps "${CONV_STEPS:-600}" --eval-every "${CONV_EVAL_EVERY:-100}" \
    --eval-batches "${CONV_EVAL_BATCHES:-5}" --out "$OUT/convergence"
}

read -r -a LOOP_OVERRIDES <<<"${LOOP_OVERRIDES:-}"
read -r -a CONV_OVR <<<"${CONV_OVERRIDES:-}"
status=0
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
for part in "${PARTS[@]}"; do
  if ! declare -F "part_$part" >/dev/null; then
    echo "bench_gpu: unknown part '$part' (gn2, mlpf, loop, input, convergence)" >&2
    exit 2
  fi
  echo "=== $part $(date -u +%FT%TZ)"
  start=$SECONDS
  "part_$part" >"$OUT/$part.log" 2>&1
  rc=$?
  grep -v "Warning\|warn(" "$OUT/$part.log" | tail -n 25
  echo "=== $part: exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
done
exit $status
