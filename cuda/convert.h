/* convert.h: device dtype conversions with the bit-exact rules of numerics.h. All pointers are
 * device memory; launches go on `s` and return at once. */
#ifndef ELMO_CUDA_CONVERT_H
#define ELMO_CUDA_CONVERT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The classifier input cast (elmo_cls_cast_input): v = e4m3(X) when fp8 else bf16(X), RN.
 * X [B, d] FP32. Writes every non-NULL output for rows < B and zeros for rows B..B_pad:
 *   q8  [B_pad, d] e4m3 codes (only meaningful when fp8)
 *   q16 [B_pad, d] bf16 codes of v (exact)
 *   q32 [B_pad, d] v as FP32 */
void elmo_cuda_cast_input(const float *X, int64_t B, int64_t B_pad, int64_t d, int fp8, uint8_t *q8, uint16_t *q16,
                          float *q32, cudaStream_t s);
/* dst[i] = bf16 code of e4m3 src[i] (exact). n: any. */
void elmo_cuda_fp8_to_bf16(const uint8_t *src, uint16_t *dst, int64_t n, cudaStream_t s);
/* dst[i] = bf16 src[i] widened to FP32 (exact). */
void elmo_cuda_bf16_to_f32(const uint16_t *src, float *dst, int64_t n, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
/* Eight bf16 codes at p (16 bytes, 16-byte aligned) as FP32, exact. */
static __device__ __forceinline__ void elmo_bf16x8_to_f32(const void *p, float v[8]) {
  const uint4 q = *(const uint4 *)p;
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int e = 0; e < 4; e++) {
    v[2 * e] = __uint_as_float(w[e] << 16);
    v[2 * e + 1] = __uint_as_float(w[e] & 0xFFFF0000u);
  }
}
#endif

#endif
