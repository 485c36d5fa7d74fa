#!/usr/bin/env bash
# profile_step.sh: where one full training step's time goes, kernel by kernel (Nsight Compute).
# Runs one of bench.sh's full-step rows (synthetic data of the row's shape) under ncu twice, for S and 2 S
# training steps (kernels serialised, GPU caches and clocks left alone), and takes the difference, so model
# creation and the final evaluation cancel. Prints per step: the number of kernels, their summed time, the
# row's wall-clock step time without ncu (median after warm-up, as bench.sh reads it), the share of the step
# outside kernels (launch gaps, host work), and the kernels by time. A measurement tool, not a test.
#
#   scripts/profile_step.sh [bert-base|distilbert-32|distilbert-128]   (default distilbert-32)
#   ELMO_BIN=dir    prebuilt elmo-train (required; e.g. .dev/gpu/bin from scripts/gpu_run.sh)
#   ENCODER=fp8     the encoder's dtype (default fp8; bf16 for the BF16 encoder)
#   S=3             steps of the shorter ncu run; TOP=25 kernels listed; NCU=path to ncu
#   EST_TBS=2.88    also read each kernel's DRAM bytes and estimate the step on a card with the same SMs and
#                   clocks but this memory bandwidth (TB/s it sustains; e.g. 2.88, issue #5's measured H100 copy rate, when this is an
#                   H200): each kernel takes max(its time here, its bytes / EST_TBS); the wall step moves by the
#                   kernels' sum. A first-order model (same L2, same latencies), not a measurement.
# Needs ncu (Nsight Compute, with access to the GPU's counters) and python3 (to read ncu's CSV).
set -uo pipefail
cd "$(dirname "$0")/.."
row=${1:-distilbert-32}
case "$row" in
  bert-base) layers=12 T=128 B=128 L=2812281 ;;
  distilbert-32) layers=6 T=32 B=512 L=1305265 ;;
  distilbert-128) layers=6 T=128 B=128 L=8623847 ;;
  *) echo "profile_step: unknown row '$row' (bert-base, distilbert-32 or distilbert-128)" >&2; exit 2 ;;
esac
[ -n "${ELMO_BIN:-}" ] && [ -x "$ELMO_BIN/elmo-train" ] || { echo "profile_step: set ELMO_BIN to a directory with elmo-train" >&2; exit 2; }
NCU=${NCU:-$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)}
[ -n "$NCU" ] || { echo "profile_step: ncu (Nsight Compute) not found; set NCU" >&2; exit 2; }
command -v python3 >/dev/null || { echo "profile_step: python3 is needed to read ncu's CSV" >&2; exit 2; }
S=${S:-3} TOP=${TOP:-25} ENCODER=${ENCODER:-fp8} WALL_STEPS=25
TMP=${TMPDIR:-/tmp}/elmo-bench
mkdir -p "$TMP"
data=$TMP/profile-synth-$L-$B   # its own: one epoch is WALL_STEPS batches, so the ncu runs never end an epoch
[ -f "$data/trn_X.txt" ] || bash scripts/make_synthetic.sh "$data" $((B * WALL_STEPS)) 64 "$L" 5 $((T / 2)) 1 >/dev/null
[ $((2 * S)) -lt $WALL_STEPS ] || { echo "profile_step: S must be below $((WALL_STEPS / 2))" >&2; exit 2; }
train() { # steps out [prefix...]: elmo-train on the row, its log in out.log
  local steps=$1 out=$2
  shift 2
  "$@" "$ELMO_BIN/elmo-train" configs/synth-amazon3m-bert.json --device cuda --set data.dir="$data" \
    --set data.max_len=$T --set model.encoder.layers=$layers --set training.batch_size=$B \
    --set training.max_steps="$steps" --set model.classifier.dtype=fp8 --set model.encoder.recompute=true \
    --set model.encoder.dtype="$ENCODER" --set output.checkpoints=false --set eval.every_epochs=1 \
    --out "$out" >"$out.log" 2>&1
}
run=$TMP/profile-$row-$ENCODER
train $WALL_STEPS "$run-wall" || { echo "profile_step: elmo-train failed: $(tail -2 "$run-wall.log")" >&2; exit 1; }
wall=$(grep -o '"step_ms_median":[0-9.e+]*' "$run-wall/metrics.jsonl" | tail -1 | cut -d: -f2)
metrics=gpu__time_duration.sum
[ -n "${EST_TBS:-}" ] && metrics=$metrics,dram__bytes.sum
for n in "$S" $((2 * S)); do
  train "$n" "$run-$n" "$NCU" --clock-control none --cache-control none --metrics $metrics --csv \
    --print-units base --log-file "$run-$n.csv" ||
    { echo "profile_step: ncu run failed: $(tail -2 "$run-$n.log")" >&2; exit 1; }
done
python3 - "$run-$S.csv" "$run-$((2 * S)).csv" "$S" "${wall:-0}" "$TOP" "$row ($ENCODER encoder)" "${EST_TBS:-0}" <<'PY'
import collections, csv, sys
est = float(sys.argv[7])
def kernels(path):   # (name, ns, ns on the estimated card) a launch, in launch order
    with open(path) as f:
        lines = [l for l in f if l.startswith('"')]
    t, nb, names = {}, {}, {}
    for r in csv.DictReader(lines):
        v = float(r["Metric Value"].replace(",", ""))
        names[r["ID"]] = r["Kernel Name"]
        if r.get("Metric Name") == "gpu__time_duration.sum": t[r["ID"]] = v
        elif r.get("Metric Name") == "dram__bytes.sum": nb[r["ID"]] = v
    ids = sorted(t, key=int)
    return [(names[i], t[i], max(t[i], nb.get(i, 0.0) / est * 1e-3) if est > 0 else t[i]) for i in ids]
a, b = kernels(sys.argv[1]), kernels(sys.argv[2])
s, wall, top, name = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
n = (len(b) - len(a)) / s
t = (sum(x for _, x, _ in b) - sum(x for _, x, _ in a)) / s / 1e6   # ns -> ms
line = f"{name}: {n:.0f} kernels a step, {t:.3f} ms of kernel time a step"
if wall > 0:
    line += f"; wall {wall:.3f} ms a step, {100 * (wall - t) / wall:.1f}% outside kernels"
print(line)
if est > 0:
    te = (sum(x for _, _, x in b) - sum(x for _, _, x in a)) / s / 1e6
    line = f"at {est:g} TB/s (same SMs and clocks): {te:.3f} ms of kernel time a step (+{te - t:.3f} ms)"
    if wall > 0:
        line += f", wall ~{wall + te - t:.3f} ms a step"
    print(line)
ta, tb, ca, cb = (collections.Counter() for _ in range(4))
for k, x, _ in a: ta[k] += x; ca[k] += 1
for k, x, _ in b: tb[k] += x; cb[k] += 1
rows = sorted(((tb[k] - ta[k]) / s / 1e6, (cb[k] - ca[k]) / s, k) for k in cb)
print(f"{'ms/step':>8} {'calls':>6} {'us each':>8}  kernel")
for ms, c, k in reversed(rows[-top:]):
    print(f"{ms:8.3f} {c:6.0f} {1e3 * ms / c if c else 0:8.1f}  {k[:90]}")
PY
