/* bf16x8.cuh: device helpers over bf16 values as loaded (8 in a uint4, 4 in a uint2; element 0 in the
 * low half of .x), shared by the kernels that take a row's amax and sum of squares on the way. */
#ifndef ELMO_CUDA_BF16X8_CUH
#define ELMO_CUDA_BF16X8_CUH

#include <stdint.h>

/* The largest |value| of four bf16 as its bit pattern (a NaN's pattern wins over every finite one). */
static __device__ __forceinline__ unsigned bf16x4_abs_max(uint2 v) {
  const unsigned a = max(v.x & 0x7FFFu, (v.x >> 16) & 0x7FFFu), b = max(v.y & 0x7FFFu, (v.y >> 16) & 0x7FFFu);
  return max(a, b);
}
static __device__ __forceinline__ unsigned bf16x8_abs_max(uint4 v) {
  return max(bf16x4_abs_max(make_uint2(v.x, v.y)), bf16x4_abs_max(make_uint2(v.z, v.w)));
}
/* ss + the squares of eight bf16, one FMA each in element order. */
static __device__ __forceinline__ float bf16x8_sumsq(uint4 v, float ss) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float lo = __uint_as_float(u[k] << 16), hi = __uint_as_float(u[k] & 0xFFFF0000u);
    ss = fmaf(lo, lo, ss);
    ss = fmaf(hi, hi, ss);
  }
  return ss;
}

#endif
