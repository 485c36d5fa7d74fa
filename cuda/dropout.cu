/* dropout.cu: counter-based inverted dropout (dropout.h). Four elements per thread share one
 * Philox block, as elmo_rand_u32 defines them. */
#include "dropout.h"
#include "check.h"

extern "C" {
#include "../src/model.h"
}
#include "numerics.h"

/* x[i] is element first + i of the stream; first is a multiple of 4. */
static __global__ void dropout_kernel(float *x, int64_t n, int64_t first, uint32_t thr, float scale, uint64_t seed,
                                      uint64_t step) {
  const int64_t nb = (n + 3) / 4;
  for (int64_t blk = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; blk < nb; blk += (int64_t)gridDim.x * blockDim.x) {
    uint32_t r[4];
    elmo_rand_block(seed, step, ELMO_RNG_DROPOUT, (uint64_t)(first / 4 + blk), r);
    for (int e = 0; e < 4; e++) {
      int64_t i = blk * 4 + e;
      if (i < n) x[i] = r[e] < thr ? 0.0f : __fmul_rn(x[i], scale);
    }
  }
}

extern "C" void elmo_cuda_dropout(float *x, int64_t n, int64_t first, double p, uint64_t seed, int64_t step,
                                  cudaStream_t s) {
  if (p <= 0.0 || n <= 0) return;
  if (first % 4) {
    fprintf(stderr, "elmo: dropout from element %lld: not a multiple of 4\n", (long long)first);
    abort();
  }
  const uint32_t thr = (uint32_t)(p * 4294967296.0);
  const float scale = (float)(1.0 / (1.0 - p));
  int64_t blocks = ((n + 3) / 4 + 255) / 256;
  dropout_kernel<<<(unsigned)(blocks > 32768 ? 32768 : blocks), 256, 0, s>>>(x, n, first, thr, scale, seed,
                                                                             (uint64_t)step);
  ELMO_LAUNCH_CHECK();
}
