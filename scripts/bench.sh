#!/usr/bin/env bash
# bench.sh: elmo's speed and memory benchmark (issue #5): for every row of the baseline table,
# ms/step, peak device GiB, the roofline and the ratio to it, and the ratio to ELMO's own
# implementation measured on an H100 80GB (PyTorch 2.11 + Triton 3.6, median of 10 steps).
# Classifier rows time the chunked classifier step alone (scripts/bench_cls.c); full-step rows
# train on synthetic data with the model's shape (scripts/make_synthetic.sh) and read the median
# step time (after 5 warm-up steps) and the measured peak memory from metrics.jsonl. After the table, a line per issue #5 target
# whose rows ran says whether it is met (the targets are stated for one H100 80GB HBM3). Usable on any CUDA card of
# compute capability 8.0+: the rooflines use the card's own ceilings, measured first by scripts/bench_peaks.c
# (device-to-device copy and an 8192^3 BF16 GEMM), except on the H100 80GB HBM3, where issue #5's own
# figures (2.88 TB/s, 764 TFLOP/s) define the targets' rooflines; PEAK_TBS / PEAK_TFLOPS override both.
# ELMO's columns are its H100 80GB HBM3 measurements whatever the card.
#
#   scripts/bench.sh [cls|full|all|multi|predict] (default all; multi: the fp8 full-step rows with the
#                   classifier sharded by labels over GPUS GPUs, default 2, e.g. GPUS="1 2 4"; GiB is the
#                   largest GPU's peak, the roofline one GPU's share of the work; needs NCCL's libnccl.so.2;
#                   predict: elmo-train's top-100 prediction of PRED_ROWS (8192) synthetic test rows after
#                   4 steps, in ms per 1,000 rows, roofline = FP32 logits written + read and the FLOPs)
#   ELMO_BIN=dir    prebuilt elmo-train + bench_cls (e.g. .dev/gpu/bin from scripts/gpu_run.sh);
#                   otherwise builds build-bench with -Dcuda=enabled
#   STEPS=n         training steps per full-step row (default 40)
#   RECOMPUTE=false full-step rows keep all encoder activations (faster, more memory)
#   ENCODER=fp8     multi rows with the FP8 encoder option (model.encoder.dtype "fp8": E4M3 forward GEMMs); `full`
#                   runs the three FP8 rows both ways
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
STEPS=${STEPS:-40}
if [ -z "${ELMO_BIN:-}" ]; then
  [ -f build-bench/build.ninja ] || meson setup build-bench -Dcuda=enabled >/dev/null
  ninja -C build-bench >/dev/null || exit 1
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  gcc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -I. -Isrc -Icuda -Ibuild-bench -I"$CUDA_HOME/include" scripts/bench_cls.c \
    build-bench/cuda/libelmo_cuda.a build-bench/src/libelmo.a -L"$CUDA_HOME/lib64" -lcudart -lcublasLt -lcjson -lz \
    -lpthread -lstdc++ -lm -o build-bench/bench_cls || exit 1
  gcc -O2 -std=c11 -I"$CUDA_HOME/include" scripts/bench_peaks.c -L"$CUDA_HOME/lib64" -lcudart -lcublasLt \
    -o build-bench/bench_peaks || exit 1
  ELMO_BIN=build-bench
  cp build-bench/elmo-train build-bench/elmo-train 2>/dev/null
fi
# the card's ceilings: device-to-device copy (TB/s) and dense BF16 GEMM (TFLOP/s)
peaks_from="given"
if [ -z "${PEAK_TBS:-}" ] || [ -z "${PEAK_TFLOPS:-}" ]; then
  p=$("$ELMO_BIN/bench_peaks" 2>/dev/null | grep '^PEAKS ')
  if [ -n "$p" ]; then
    tbs=$(sed -n 's/.*tbs=\([0-9.]*\).*/\1/p' <<<"$p") tflops=$(sed -n 's/.*tflops=\([0-9.]*\).*/\1/p' <<<"$p")
    if [ "${p#*card=}" = "NVIDIA H100 80GB HBM3" ]; then # the card of issue #5's table: its ceilings
      PEAK_TBS=${PEAK_TBS:-2.88}
      PEAK_TFLOPS=${PEAK_TFLOPS:-764}
      peaks_from="issue #5's for this card; measured here: $tbs TB/s, $tflops TFLOP/s"
    else
      PEAK_TBS=${PEAK_TBS:-$tbs}
      PEAK_TFLOPS=${PEAK_TFLOPS:-$tflops}
      peaks_from="measured on this card"
    fi
  else
    echo "bench: bench_peaks failed; using the H100 80GB HBM3's ceilings" >&2
    PEAK_TBS=${PEAK_TBS:-2.88}
    PEAK_TFLOPS=${PEAK_TFLOPS:-764}
    peaks_from="the H100's"
  fi
fi
TMP=${TMPDIR:-/tmp}/elmo-bench
mkdir -p "$TMP"
rows=()

# roofline ms: max(bytes / bandwidth, flops / tensor rate)
roof() { awk -v b="$1" -v f="$2" -v bw="$PEAK_TBS" -v fl="$PEAK_TFLOPS" 'BEGIN {
  m = b / (bw * 1e9); c = f / (fl * 1e9); printf "%.3f", (m > c ? m : c) }'; }

row() { # name mode ms gib roof elmo_ms elmo_gib
  rows+=("$(awk -v n="$1" -v mo="$2" -v ms="$3" -v g="$4" -v r="$5" -v em="$6" -v eg="$7" 'BEGIN {
    if (ms <= 0) { printf "%-44s %-5s %9s   (failed: see the message above the table)", n, mo, "-"; exit }
    printf "%-44s %-5s %9.2f %7.2f %9.2f %7.0f%%", n, mo, ms, g, r, (ms > 0 ? 100 * r / ms : 0)
    if (em > 0) printf " %9.1f %7.2fx %7.2f %6.2fx", em, ms / em, eg, (eg > 0 ? g / eg : 0)
    else printf " %9s %8s %7s %7s", "-", "-", "-", "-" }')")
}

cls_row() { # L B chunks dtype elmo_ms elmo_gib
  local L=$1 B=$2 n=$3 dt=$4 d=768
  local chunk=$(( ((L + n - 1) / n + 15) / 16 * 16 ))
  local out
  local all
  all=$("$ELMO_BIN/bench_cls" "$L" "$B" $d $chunk "$dt" fp8 10 2>&1)
  out=$(grep '^RESULT' <<<"$all")
  [ -n "$out" ] || echo "classifier L=$L B=$B $dt failed: $(tail -2 <<<"$all")" >&2
  local ms gib
  ms=$(sed -n 's/.*step \([0-9.]*\) ms.*/\1/p' <<<"$out")
  gib=$(sed -n 's/.*device memory \([0-9.]*\) GiB.*/\1/p' <<<"$out")
  local wb=1; [ "$dt" = bf16 ] && wb=2
  row "classifier L=$L B=$B d=$d $n chunks" "$dt" "${ms:-0}" "${gib:-0}" \
    "$(roof $((2 * wb * L * d)) $((6 * B * L * d)))" "$5" "$6"
}

full_row() { # name layers T B L elmo_ms elmo_gib dtype [gpus]
  local name=$1 layers=$2 T=$3 B=$4 L=$5 dt=$8 d=768 ffn=3072 gpus=${9:-1}
  local data=$TMP/synth-$L-$B
  [ -f "$data/trn_X.txt" ] || bash scripts/make_synthetic.sh "$data" $((B * STEPS)) 64 "$L" 5 $((T / 2)) 1 >/dev/null
  local run=$TMP/run-$name-$dt-$gpus-${ENCODER:-bf16}
  "$ELMO_BIN/elmo-train" configs/synth-amazon3m-bert.json --device cuda --set data.dir="$data" --set data.max_len=$T \
    --set model.encoder.layers=$layers --set training.batch_size=$B --set training.max_steps=$STEPS \
    --set training.gpus=$gpus \
    --set model.classifier.dtype=$dt --set model.encoder.recompute=${RECOMPUTE:-true} --set output.checkpoints=false \
    --set model.encoder.dtype=${ENCODER:-bf16} \
    --set eval.every_epochs=1 --out "$run" >"$run.log" 2>&1
  local sps gib
  sps=$(grep -o '"samples_per_s":[0-9.e+]*' "$run/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
  gib=$(grep -o '"peak_mem_gib":[0-9.e+]*' "$run/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
  # median step time after 5 warm-up steps (as ELMO's baseline: median of 10 steps); else throughput
  local med ms
  med=$(grep -o '"step_ms_median":[0-9.e+]*' "$run/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
  ms=$(awk -v m="${med:-0}" -v s="${sps:-0}" -v b=$B 'BEGIN { printf "%.3f", (m > 0 ? m : (s > 0 ? 1000 * b / s : 0)) }')
  # FLOPs: classifier 6BLd + encoder 6 * tokens * layer weights + attention 12 B T^2 d per layer
  local flops bytes
  flops=$(awk -v B=$B -v L=$L -v d=$d -v T=$T -v n=$layers -v f=$ffn 'BEGIN {
    printf "%.0f", 6 * B * L * d + 6 * B * T * n * (4 * d * d + 2 * d * f) + 12 * n * B * T * T * d }')
  bytes=$(awk -v L=$L -v d=$d -v n=$layers -v f=$ffn -v w=$([ "$dt" = bf16 ] && echo 2 || echo 1) 'BEGIN {
    printf "%.0f", 2 * w * L * d + 20 * (n * (4 * d * d + 2 * d * f) + 30522 * d) }')
  # sharded over GPUs: the roofline is the work of one GPU (a 1 / gpus share of the labels and the rows)
  local label="full $name seq $T B=$B L=$L"
  [ "${ENCODER:-bf16}" = bf16 ] || label="$label, ${ENCODER} encoder"
  [ "$gpus" = 1 ] || label="$label, $gpus GPUs"
  row "$label" "$dt" "$ms" "${gib:-0}" "$(roof "$(awk -v b="$bytes" -v g=$gpus 'BEGIN { printf "%.0f", b / g }')" \
    "$(awk -v f="$flops" -v g=$gpus 'BEGIN { printf "%.0f", f / g }')")" "$6" "$7"
  [ -n "$sps" ] || echo "full $name $dt failed: $(tail -3 "$run.log")" >&2
}

if [ "$what" = cls ] || [ "$what" = all ]; then
  cls_row 131072 512 2 fp8 3.54 0.22
  cls_row 670091 128 2 fp8 6.23 0.64
  cls_row 2812281 128 8 fp8 26.0 2.18
  cls_row 8623847 128 8 fp8 69.2 6.69
  # BF16 weights: ELMO's BF16 path was measured at 2.8M only (15.3 ms, 5.11 GiB); the other rows have no baseline
  cls_row 131072 512 2 bf16 0 0
  cls_row 670091 128 2 bf16 0 0
  cls_row 2812281 128 8 bf16 15.3 5.11
  cls_row 2812281 128 1 bf16 15.3 5.11   # one chunk: still less memory than ELMO's BF16 run
  cls_row 8623847 128 8 bf16 0 0
fi
if [ "$what" = full ] || [ "$what" = all ]; then
  full_row bert-base 12 128 128 2812281 63.7 7.72 fp8
  full_row distilbert 6 32 512 1305265 48.6 4.94 fp8
  full_row distilbert 6 128 128 8623847 90.9 9.45 fp8
  # the same three with the FP8 encoder option (E4M3 forward GEMMs; ELMO's baseline ran a BF16 encoder)
  ENCODER=fp8 full_row bert-base 12 128 128 2812281 63.7 7.72 fp8
  ENCODER=fp8 full_row distilbert 6 32 512 1305265 48.6 4.94 fp8
  ENCODER=fp8 full_row distilbert 6 128 128 8623847 90.9 9.45 fp8
  full_row bert-base 12 128 128 2812281 0 0 bf16      # no published ELMO baseline for these
  full_row distilbert 6 32 512 1305265 0 0 bf16
  full_row distilbert 6 128 128 8623847 0 0 bf16
fi
predict_row() { # name layers T B L: elmo-train's test-split prediction (top-100) after a few steps
  local name=$1 layers=$2 T=$3 B=$4 L=$5 d=768 ffn=3072 n=${PRED_ROWS:-8192}
  local data=$TMP/synth-pred-$L-$B-$n
  [ -f "$data/trn_X.txt" ] || bash scripts/make_synthetic.sh "$data" $((B * 4)) "$n" "$L" 5 $((T / 2)) 2 >/dev/null
  local run=$TMP/run-pred-$name
  "$ELMO_BIN/elmo-train" configs/synth-amazon3m-bert.json --device cuda --set data.dir="$data" --set data.max_len=$T \
    --set model.encoder.layers=$layers --set training.batch_size=$B --set training.epochs=1 \
    --set eval.topk=100 --set output.checkpoints=false --set eval.every_epochs=1 --out "$run" >"$run.log" 2>&1
  local es gib ms
  es=$(grep -o '"eval_seconds":[0-9.e+-]*' "$run/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
  gib=$(grep -o '"peak_mem_gib":[0-9.e+]*' "$run/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
  ms=$(awk -v e="${es:-0}" -v n=$n 'BEGIN { printf "%.3f", 1e6 * e / n }')
  # per 1,000 rows: the FP32 logits written and read (8 L bytes a row); the classifier's 2 L d and the
  # encoder's 2 T (layer weights) FLOPs a row
  local flops bytes
  flops=$(awk -v L=$L -v d=$d -v T=$T -v l=$layers -v f=$ffn 'BEGIN {
    printf "%.0f", 1000 * (2 * L * d + 2 * T * l * (4 * d * d + 2 * d * f)) }')
  bytes=$(awk -v L=$L 'BEGIN { printf "%.0f", 1000 * 8 * L }')
  row "predict $name seq $T L=$L, ms/1000 rows" fp8 "$ms" "${gib:-0}" \
    "$(roof "$bytes" "$flops")" 0 0
  [ -n "$es" ] || echo "predict $name failed: $(tail -3 "$run.log")" >&2
}

if [ "$what" = predict ]; then # prediction (eval) speed; no ELMO baseline
  predict_row bert-base 12 128 128 2812281
  predict_row distilbert 6 32 512 1305265
fi
if [ "$what" = multi ]; then # label sharding: the fp8 full-step rows over GPUS GPUs (GiB: the largest GPU's peak)
  for g in ${GPUS:-2}; do # MULTI_ROWS="1 3": only those rows (1 BERT-base, 2 DistilBERT-32, 3 DistilBERT at 8.6M)
    [[ " ${MULTI_ROWS:-1 2 3} " == *" 1 "* ]] && full_row bert-base 12 128 128 2812281 63.7 7.72 fp8 "$g"
    [[ " ${MULTI_ROWS:-1 2 3} " == *" 2 "* ]] && full_row distilbert 6 32 512 1305265 48.6 4.94 fp8 "$g"
    [[ " ${MULTI_ROWS:-1 2 3} " == *" 3 "* ]] && full_row distilbert 6 128 128 8623847 90.9 9.45 fp8 "$g"
  done
fi
echo
echo "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u +%F); roofline: ${PEAK_TBS} TB/s, ${PEAK_TFLOPS} TFLOP/s BF16 ($peaks_from); elmo_* columns: ELMO on an H100 80GB HBM3"
printf '%-44s %-5s %9s %7s %9s %8s %9s %8s %7s %7s\n' shape mode ms/step GiB roof_ms of_roof elmo_ms x_elmo elmo_GiB x_mem
for r in "${rows[@]}"; do echo "$r"; done
# Issue #5's targets against the rows above (they are stated for one H100 80GB HBM3; sharded rows, "N GPUs" in the
# name, are listed apart): a line per target whose rows ran. Fields are read from the right of each row (the name
# may be longer than its column); ratios from the unrounded ms and GiB.
printf '%s\n' "${rows[@]}" | awk '
  /\(failed:/ { next }
  NF >= 10 {
    name = $1; for (i = 2; i <= NF - 9; i++) name = name " " $i
    mode = $(NF - 8); ms = $(NF - 7); gib = $(NF - 6); pct = $(NF - 4); em = $(NF - 3); eg = $(NF - 1)
    sub(/%/, "", pct)
    if (name ~ /^classifier/ && mode == "fp8") {
      nc++; if (pct + 0 >= 60) okc++; pl = pl sprintf(" %s%%", pct)
      if (name ~ /L=2812281 /) big = ms
    }
    if (name ~ /^classifier/ && mode == "bf16" && em != "-" && ms > 0) {
      nb++; sp = em / ms; if (sp >= 1.5) okb++; bl = bl sprintf(" %.2fx", sp)
    }
    if (name ~ /^full/ && mode == "fp8" && em != "-" && eg != "-" && em > 0 && eg > 0) {
      g = (name ~ /GPUs/) ? "sharded rows" : (name ~ /fp8 encoder/) ? "one GPU, FP8 encoder" : "one GPU"; nf[g]++
      xt = ms / em; xm = gib / eg; if (xt <= 0.35) okt[g]++; if (xm <= 0.6) okm[g]++
      tl[g] = tl[g] sprintf(" %.2fx", xt); ml[g] = ml[g] sprintf(" %.2fx", xm)
    } }
  function verdict(ok, all) { return (ok == all) ? "met" : "not met" }
  END {
    if (!nc && !nb && !length(nf)) exit
    print ""; print "issue #5 targets (stated for one H100 80GB HBM3):"
    if (big != "") printf "  FP8 classifier at L=2812281 <= 3.0 ms: %s ms, %s\n", big, (big + 0 <= 3.0) ? "met" : "not met"
    if (nc) printf "  FP8 classifier rows >= 60%% of the roofline: %d of %d (%s), %s\n", okc, nc, substr(pl, 2), verdict(okc, nc)
    if (nb) printf "  BF16 classifier >= 1.5x faster than ELMO BF16: %s, %s\n", substr(bl, 2), verdict(okb, nb)
    split("one GPU|one GPU, FP8 encoder|sharded rows", gs, "|")
    for (k = 1; k <= 3; k++) {
      g = gs[k]
      if (!(g in nf)) continue
      printf "  full steps <= 0.35x ELMO time (%s): %d of %d (%s), %s\n", g, okt[g] + 0, nf[g], substr(tl[g], 2), verdict(okt[g] + 0, nf[g])
      printf "  full steps <= 0.6x ELMO memory (%s): %d of %d (%s), %s\n", g !~ /sharded/ ? g : g ", the largest GPU", okm[g] + 0,
             nf[g], substr(ml[g], 2), verdict(okm[g] + 0, nf[g])
    } }'
