/* numerics.c: bulk host helpers over the per-element conversions and stochastic rounding of
 * numerics.h (which defines the numerics themselves, shared with the CUDA kernels). */
#include "numerics.h"

#include <float.h>

/* elmo_sr_fp8 adds two floats and relies on single-precision evaluation (numerics.h). */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "elmo needs FLT_EVAL_METHOD 0 (SSE2 on x86, or any 64-bit target)"
#endif

void elmo_f32_to_bf16_n(elmo_bf16 *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = elmo_f32_to_bf16(src[i]);
}

void elmo_bf16_to_f32_n(float *dst, const elmo_bf16 *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = elmo_bf16_to_f32(src[i]);
}

void elmo_f32_to_fp8_n(elmo_fp8 *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = elmo_f32_to_fp8(src[i]);
}

void elmo_fp8_to_f32_n(float *dst, const elmo_fp8 *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = elmo_fp8_to_f32(src[i]);
}

/* Element i uses word (idx0 + i) % 4 of Philox block (idx0 + i) / 4; one block per 4 elements. */
void elmo_sr_bf16_n(elmo_bf16 *dst, const float *src, size_t n,
                    uint64_t seed, uint64_t step, uint32_t tensor, uint64_t idx0) {
  uint32_t w[4];
  for (size_t i = 0; i < n; i++) {
    uint64_t idx = idx0 + i;
    if (i == 0 || (idx & 3u) == 0) elmo_rand_block(seed, step, tensor, idx >> 2, w);
    dst[i] = elmo_sr_bf16(src[i], w[idx & 3u]);
  }
}

void elmo_sr_fp8_n(elmo_fp8 *dst, const float *src, size_t n,
                   uint64_t seed, uint64_t step, uint32_t tensor, uint64_t idx0) {
  uint32_t w[4];
  for (size_t i = 0; i < n; i++) {
    uint64_t idx = idx0 + i;
    if (i == 0 || (idx & 3u) == 0) elmo_rand_block(seed, step, tensor, idx >> 2, w);
    dst[i] = elmo_sr_fp8(src[i], w[idx & 3u]);
  }
}
