#!/usr/bin/env bash
# gpu_synth.sh: the Amazon-3M-shaped memory run (issue #4) on a GPU machine, from the repository
# root over what scripts/gpu_run.sh packed into .dev/gpu: a synthetic text dataset with
# 2,812,281 labels (scripts/make_synthetic.sh), `elmo-train --plan`, then 200 training steps of
# BERT-base (12 layers, hidden 768, 12 heads, max_len 128, batch 128, FP8 classifier) with the
# measured peak device memory. Logs to $OUT.
set -u
PACK=${PACK:-.dev/gpu}
OUT=${OUT:-/tmp/elmo-gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$PACK/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
D=/tmp/synth-amazon3m
CFG=configs/synth-amazon3m-bert.json
SETS=(--set data.dir=$D ${SYNTH_SETS:-})
t0=$(date +%s)
bash scripts/make_synthetic.sh $D 25600 1024 2812281 5 40 1 | tee "$OUT/synth.log"
"$PACK/bin/elmo-train" $CFG "${SETS[@]}" --plan 2>&1 | tee -a "$OUT/synth.log" | grep -vE '^data:'
timeout 420 "$PACK/bin/elmo-train" $CFG "${SETS[@]}" --out /tmp/synth-run >>"$OUT/synth.log" 2>&1
rc=$?
grep -E 'elmo cuda|^model:|^epoch .* step (1|100|200)/|^eval|^best|rror' "$OUT/synth.log" | head -30
cp /tmp/synth-run/metrics.jsonl "$OUT/synth-metrics.jsonl" 2>/dev/null
echo "synthetic run rc=$rc in $(( $(date +%s) - t0 ))s; metrics: $(head -c 400 /tmp/synth-run/metrics.jsonl 2>/dev/null)"
grep -o '"peak_mem_gib":[0-9.]*' /tmp/synth-run/metrics.jsonl 2>/dev/null | tail -1
