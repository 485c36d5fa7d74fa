/* e4m3.cuh: device helpers that write E4M3 copies of values a kernel already has (the FP8 forward's
 * layer inputs, cast where they are produced). Round to nearest even, saturating to +-448 (satfinite),
 * NaN stays NaN: the CPU's elmo_f32_to_fp8. */
#ifndef ELMO_CUDA_E4M3_CUH
#define ELMO_CUDA_E4M3_CUH

#include <cuda_fp8.h>
#include <stdint.h>

/* Two values (already scaled) as two E4M3 bytes, a in the low byte. */
static __device__ __forceinline__ uint32_t e4m3x2(float a, float b) {
  return (uint32_t)__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}
/* Four values times s as four E4M3 bytes, v[0] in the low byte. */
static __device__ __forceinline__ uint32_t e4m3x4(const float v[4], float s) {
  return e4m3x2(v[0] * s, v[1] * s) | (e4m3x2(v[2] * s, v[3] * s) << 16);
}
/* Eight values times s as eight E4M3 bytes, f[0] first. */
static __device__ __forceinline__ uint2 e4m3x8(const float f[8], float s) {
  return make_uint2(e4m3x4(f, s), e4m3x4(f + 4, s));
}
/* Eight bf16 (16 bytes, as loaded) times s as eight E4M3 bytes in the same order. */
static __device__ __forceinline__ uint2 e4m3x8_bf16(uint4 v, float s) {
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
  float f[8];
#pragma unroll
  for (int k = 0; k < 4; k++) {
    f[2 * k] = __uint_as_float(u[k] << 16);
    f[2 * k + 1] = __uint_as_float(u[k] & 0xFFFF0000u);
  }
  return e4m3x8(f, s);
}
static __device__ __forceinline__ uint8_t e4m3x1(float a) {
  return (uint8_t)__nv_cvt_float_to_fp8(a, __NV_SATFINITE, __NV_E4M3);
}

#endif
