#!/usr/bin/env bash
# gpu_remote.sh: runs on the lent GPU machine from the repository root, over what
# scripts/gpu_run.sh packed into .dev/gpu/: the card, the gpu test programs, then the classifier
# benchmarks. Full logs go to $OUT (card.txt, <test>.log, bench.log); a summary prints last.
#   TESTS="test_gpu_ops ..."  which test programs (default: all packed)
#   BENCH=0                   skip the benchmarks; BENCH_ARGS="L B d chunk dtype input steps;..."
#   BENCH_GEMM=1              also time the cuBLASLt candidates of the encoder's GEMM shapes (bench_gemm)
#   NCU=1                     also profile the classifier kernels once with Nsight Compute (ncu.txt)
#   E2E=1                     also train configs/bibtex.json end to end with elmo-train on cuda and
#                             cpu (E2E_SETS: extra --set options) and print both test metric tables
#   MULTI=1                   also (machines with 2+ GPUs) Bibtex with --gpus 2, its checkpoint scored on
#                             one GPU, and scripts/bench.sh multi (GPUS, MULTI_ROWS as there)
# NCCL (label sharding over GPUs) is opened at run time: the first libnccl.so.2 found under /opt or /usr
# (on the lent machines, PyTorch's wheel's) is put on LD_LIBRARY_PATH, and NVLink multicast stays off.
set -u
PACK=${PACK:-.dev/gpu}
OUT=${OUT:-/tmp/elmo-gpu-out}
mkdir -p "$OUT"
NCCL_LIB=$(find /opt /usr -name 'libnccl.so.2' 2>/dev/null | head -1)
export LD_LIBRARY_PATH=$PWD/$PACK/lib:/usr/local/cuda/lib64:${NCCL_LIB:+$(dirname "$NCCL_LIB"):}${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export ELMO_TEST_DATA=$PWD/$PACK/data ELMO_SOURCE_ROOT=$PWD
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } | tee "$OUT/card.txt"
summary=()
for t in ${TESTS:-test_gpu_ops test_gpu_train test_gpu_tf}; do
  [ -x "$PACK/bin/$t" ] || continue
  t0=$(date +%s%N)
  timeout 300 "$PACK/bin/$t" >"$OUT/$t.log" 2>&1
  rc=$?
  t1=$(date +%s%N)
  tail -n 25 "$OUT/$t.log"
  summary+=("$(printf '%-16s rc=%-3s %6ss  %s' "$t" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')" \
    "$(grep -E '^\[  (PASSED|FAILED) \]' "$OUT/$t.log" | tr '\n' ' ')")")
done
if [ "${BENCH:-1}" != 0 ]; then
  IFS=';' read -r -a runs <<<"${BENCH_ARGS:-131072 512 768 0 fp8 fp8 20;131072 512 768 0 fp8 bf16 10;131072 512 768 0 bf16 fp8 10;2812281 128 768 262144 fp8 fp8 8;2812281 128 768 0 fp8 fp8 5}"
  for a in "${runs[@]}"; do
    # shellcheck disable=SC2086
    timeout 180 "$PACK/bin/bench_cls" $a >>"$OUT/bench.log" 2>&1 || echo "bench $a: exit $?" >>"$OUT/bench.log"
  done
  grep -E 'elmo cuda:' "$OUT/bench.log" | sort -u | head -8
fi
if [ "${BENCH_GEMM:-0}" = 1 ]; then
  timeout 240 "$PACK/bin/bench_gemm" ${BENCH_GEMM_ARGS:-} >"$OUT/bench_gemm.log" 2>&1 || echo "bench_gemm exit $?" >>"$OUT/bench_gemm.log"
  cat "$OUT/bench_gemm.log"
fi
if [ "${E2E:-0}" = 1 ]; then
  for dev in cuda cpu; do
    t0=$(date +%s%N)
    # shellcheck disable=SC2086
    "$PACK/bin/elmo-train" configs/bibtex.json --device $dev --set data.dir="$ELMO_TEST_DATA/bibtex" \
      ${E2E_SETS:-} --out "/tmp/e2e-$dev" >"$OUT/e2e-$dev.log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    summary+=("$(printf 'elmo-train %-5s rc=%-3s %6ss  %s' "$dev" "$rc" \
      "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')" "$(grep -E '^P@k' "$OUT/e2e-$dev.log")")")
    grep -E 'elmo cuda: [A-Z]|^model:|^eval epoch|^best|error' "$OUT/e2e-$dev.log" | head -12
  done
fi
if [ "${MULTI:-0}" = 1 ]; then
  B=$ELMO_TEST_DATA/bibtex
  "$PACK/bin/elmo-train" configs/bibtex.json --device cuda --gpus 2 --set data.dir="$B" --out /tmp/multi-b2 \
    >"$OUT/multi-b2.log" 2>&1
  rc=$?
  summary+=("$(printf 'elmo-train --gpus 2 rc=%-3s %s' "$rc" "$(grep -E '^P@k' "$OUT/multi-b2.log")")")
  "$PACK/bin/elmo-eval" /tmp/multi-b2/last --data "$B" --device cuda >"$OUT/multi-eval.log" 2>&1
  rc=$?
  summary+=("$(printf 'elmo-eval (1 GPU) of it rc=%-3s %s' "$rc" "$(grep -E '^P@k' "$OUT/multi-eval.log")")")
  ELMO_BIN=$PACK/bin timeout 400 bash scripts/bench.sh multi 2>&1 | tail -8 | tee "$OUT/multi-bench.txt"
fi
if [ "${NCU:-0}" = 1 ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
  if [ -n "$NCU_BIN" ]; then
    timeout 240 "$NCU_BIN" --kernel-name regex:'update_kernel|grad_kernel|fp8_to_bf16' --launch-skip 3 --launch-count 3 \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      "$PACK/bin/bench_cls" 2812281 128 768 262144 fp8 fp8 1 >"$OUT/ncu.txt" 2>&1 || echo "ncu exit $?" >>"$OUT/ncu.txt"
    grep -E '^  [a-z_]+.*\(|Duration|Throughput|Achieved Occupancy|Registers Per' "$OUT/ncu.txt" | head -40
  else
    echo "ncu not found"
  fi
fi
echo "==== summary ($(head -1 "$OUT/card.txt"); $(sed -n 3p "$OUT/card.txt"))"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench.log" ] && grep -E '^RESULT|exit' "$OUT/bench.log"
exit 0
