#!/usr/bin/env bash
# gpu_run.sh: builds the CUDA tree here and packs what the lent GPU machine needs into .dev/gpu/
# (git-ignored): the gpu test programs, elmo-train / elmo-eval, the classifier benchmark
# (scripts/bench_cls.c, compiled against build-cuda's static libraries), the shared libraries
# the device image lacks (cJSON, cmocka; CUDA's own come from the image) and the Bibtex data.
# Then run on the device (device tool): carry [".dev/gpu"], command "bash scripts/gpu_remote.sh".
#   BUILD=dir   build directory (default build-cuda, configured with -Dcuda=enabled if missing)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-cuda}
PACK=${PACK:-$ROOT/.dev/gpu}
cd "$ROOT"
[ -d "$BUILD" ] || meson setup "$BUILD" -Dcuda=enabled
# Meson's nvcc rule gets no depfile (ninja -t deps shows 0 deps for .cu objects), so a changed
# header does not rebuild CUDA objects: drop the ones older than any header first.
newest=$(ls -t src/*.h cuda/*.h | head -1)
find "$BUILD/cuda" -name '*.cu.o' ! -newer "$newest" -print -delete | sed 's/^/stale: /'
ninja -C "$BUILD"
rm -rf "$PACK"
mkdir -p "$PACK/bin" "$PACK/lib" "$PACK/data"
bins=()
for t in test_gpu_ops test_gpu_train test_gpu_tf; do
  if [ -x "$BUILD/tests/$t" ]; then cp "$BUILD/tests/$t" "$PACK/bin/"; bins+=("$PACK/bin/$t"); fi
done
for p in elmo-train elmo-eval; do cp "$BUILD/$p" "$PACK/bin/"; bins+=("$PACK/bin/$p"); done
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
gcc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -I. -Isrc -Icuda -I"$BUILD" -I"$CUDA_HOME/include" scripts/bench_cls.c \
  "$BUILD/cuda/libelmo_cuda.a" "$BUILD/src/libelmo.a" -L"$CUDA_HOME/lib64" -lcudart -lcublasLt -lcjson -lz -lpthread -lstdc++ -lm \
  -o "$PACK/bin/bench_cls"
bins+=("$PACK/bin/bench_cls")
gcc -O2 -std=c11 -I"$CUDA_HOME/include" scripts/bench_gemm.c -L"$CUDA_HOME/lib64" -lcudart -lcublasLt \
  -o "$PACK/bin/bench_gemm"
gcc -O2 -std=c11 -I"$CUDA_HOME/include" scripts/bench_peaks.c -L"$CUDA_HOME/lib64" -lcudart -lcublasLt \
  -o "$PACK/bin/bench_peaks"
# libraries outside the CUDA toolkit that the device image may not have
for b in "${bins[@]}"; do
  ldd "$b" | awk '/libcjson|libcmocka/ {print $3}' | while read -r lib; do cp -L "$lib" "$PACK/lib/"; done
done
data=$ROOT/../shared/data/bibtex
[ -f "$data/train.txt.gz" ] || data=$ROOT/datasets/bibtex
cp -r "$data" "$PACK/data/bibtex"
du -sh "$PACK"
echo "packed; now run on the device: carry [\".dev/gpu\"], command \"bash scripts/gpu_remote.sh\""
