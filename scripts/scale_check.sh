#!/usr/bin/env bash
# scale_check.sh: does elmo-train address every label of a very large classifier right? Trains a small
# transformer on a dataset whose rows all have the same text and the same positives, spread from label 10 to
# the last label (weight offsets up to L x 768 bytes, 7.7e10 at 10^8 labels), then predicts: the top 5 of the
# test rows must be 5 of the 6 positives (P@5 = 100). A wrong 32-bit offset in any kernel (logits, gradient,
# dX, update, top-k) or in the sharding would send a positive's update or score to another row. Needs a GPU
# with the classifier's memory (L x 768 bytes of FP8 weights, e.g. 10^8 labels: 77 GB, one H200 or two H100s);
# exits 77 (skipped) where no GPU answers. The GPU test suite runs it at 6,000,000 labels (4.6 GB of weights,
# rows past byte 2^32 from label 5,592,406 on).
#
#   scripts/scale_check.sh [L=100000000] [GPUS=1]
#   ELMO_BIN=dir   elmo-train's directory (default build)
#   OUT=dir        where the data and the run go (default runs/scale-check-L)
#   DEVICE=cpu     the CPU reference instead (small L only: a check of the script itself)
#   CKPT=1         also write the checkpoint (L x 768 bytes of classifier.weight on disk) and score it with
#                  elmo-eval on GPUS GPUs: the same P@5 = 100 must come back from the file
set -euo pipefail
L=${1:-100000000}
G=${2:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${ELMO_BIN:-$ROOT/build}
OUTD=${OUT:-$ROOT/runs/scale-check-$L}
[ "$L" -ge 1000 ] || { echo "scale_check.sh: L must be at least 1000" >&2; exit 2; }
if [ "${DEVICE:-cuda}" = cuda ] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "scale_check.sh: no GPU here (nvidia-smi -L): skipped"
  exit 77 # Meson's "skipped"
fi
pos="10 $((L * 7 / 100)) $((L / 2)) $((L - 1000)) $((L - 2)) $((L - 1))"
data=$OUTD/data
mkdir -p "$data"
mk() { # rows prefix
  awk -v n="$1" -v L="$L" -v pos="$pos" -v xf="$data/$2_X.txt" -v yf="$data/$2_X_Y.txt" 'BEGIN {
    print n " " L > yf
    k = split(pos, p, " "); line = ""
    for (j = 1; j <= k; j++) line = line (j > 1 ? " " : "") p[j] ":1"
    for (i = 0; i < n; i++) { print "the quick brown fox jumps over the lazy dog" > xf; print line > yf }
  }'
}
mk 1280 trn
mk 8 tst
start=$(date +%s)
"$BIN/elmo-train" "$ROOT/configs/synth-amazon3m-bert.json" --device "${DEVICE:-cuda}" --set data.dir="$data" --set data.max_len=16 \
  --set model.encoder.layers=2 --set training.batch_size=128 --set training.epochs=1 --set training.max_steps=10 \
  --set training.gpus="$G" --set training.classifier.warmup_steps=0 --set training.encoder.warmup_steps=0 \
  --set model.classifier.dtype=fp8 --set output.checkpoints="$([ "${CKPT:-0}" = 1 ] && echo true || echo false)" \
  --set eval.every_epochs=1 \
  --out "$OUTD/run" > "$OUTD/run.log" 2>&1 || { tail -5 "$OUTD/run.log" >&2; exit 1; }
p5=$(grep -o '"P@5":[0-9.e+-]*' "$OUTD/run/metrics.jsonl" | tail -1 | cut -d: -f2)
ms=$(grep -o '"step_ms_median":[0-9.e+-]*' "$OUTD/run/metrics.jsonl" | tail -1 | cut -d: -f2)
gib=$(grep -o '"peak_mem_gib":[0-9.e+-]*' "$OUTD/run/metrics.jsonl" | tail -1 | cut -d: -f2)
echo "L=$L gpus=$G: P@5 $p5 (positives $pos), step ${ms} ms, peak ${gib} GiB a GPU, $(($(date +%s) - start)) s"
# metrics.jsonl keeps P@k as fractions
awk -v p="${p5:-0}" 'BEGIN { exit !(p + 0 >= 0.9999) }' || { echo "scale_check.sh: FAILED, P@5 is $p5, not 1" >&2; exit 1; }
if [ "${CKPT:-0}" = 1 ]; then
  t0=$(date +%s)
  "$BIN/elmo-eval" "$OUTD/run/last" --data "$data" --device "${DEVICE:-cuda}" --gpus "$G" --json > "$OUTD/eval.json" \
    2> "$OUTD/eval.log" || { tail -5 "$OUTD/eval.log" >&2; exit 1; }
  e5=$(grep -o '"P@5":[0-9.e+-]*' "$OUTD/eval.json" | cut -d: -f2)
  echo "checkpoint: $(du -sh "$OUTD/run/last" | cut -f1) in $OUTD/run/last; elmo-eval P@5 $e5, $(($(date +%s) - t0)) s"
  awk -v p="${e5:-0}" 'BEGIN { exit !(p + 0 >= 0.9999) }' ||
    { echo "scale_check.sh: FAILED, the checkpoint's P@5 is $e5, not 1" >&2; exit 1; }
fi
echo "scale_check.sh: OK"
