/* convert.cu: dtype conversion kernels (bit-exact, numerics.h). */
#include "convert.h"
#include "check.h"

#include "numerics.h"

static int blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (int)(b > 65535 * 16 ? 65535 * 16 : (b < 1 ? 1 : b));
}

static __global__ void cast_input_kernel(const float *X, int64_t n_real, int64_t n_all, int fp8, uint8_t *q8,
                                         uint16_t *q16, float *q32) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n_all; i += (int64_t)gridDim.x * blockDim.x) {
    float v = 0.0f;
    uint8_t c = 0;
    if (i < n_real) {
      if (fp8) {
        c = elmo_f32_to_fp8(X[i]);
        v = elmo_fp8_to_f32(c);
      } else {
        v = elmo_bf16_to_f32(elmo_f32_to_bf16(X[i]));
      }
    }
    if (q8) q8[i] = c;
    if (q16) q16[i] = (uint16_t)(elmo_f32_bits(v) >> 16);
    if (q32) q32[i] = v;
  }
}

extern "C" void elmo_cuda_cast_input(const float *X, int64_t B, int64_t B_pad, int64_t d, int fp8, uint8_t *q8,
                                     uint16_t *q16, float *q32, cudaStream_t s) {
  int64_t n_all = B_pad * d;
  if (n_all <= 0) return;
  cast_input_kernel<<<blocks_for(n_all, 256), 256, 0, s>>>(X, B * d, n_all, fp8, q8, q16, q32);
  ELMO_LAUNCH_CHECK();
}

static __global__ void fp8_to_bf16_kernel(const uint8_t *src, uint16_t *dst, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = (uint16_t)(elmo_f32_bits(elmo_fp8_to_f32(src[i])) >> 16);
}

/* Four codes per thread when the buffers allow it (the common case: n a multiple of 16). */
static __global__ void fp8_to_bf16_x4_kernel(const uchar4 *src, ushort4 *dst, int64_t n4) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
    uchar4 q = src[i];
    ushort4 o;
    o.x = (uint16_t)(elmo_f32_bits(elmo_fp8_to_f32(q.x)) >> 16);
    o.y = (uint16_t)(elmo_f32_bits(elmo_fp8_to_f32(q.y)) >> 16);
    o.z = (uint16_t)(elmo_f32_bits(elmo_fp8_to_f32(q.z)) >> 16);
    o.w = (uint16_t)(elmo_f32_bits(elmo_fp8_to_f32(q.w)) >> 16);
    dst[i] = o;
  }
}

extern "C" void elmo_cuda_fp8_to_bf16(const uint8_t *src, uint16_t *dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (n % 4 == 0 && (uintptr_t)src % 4 == 0 && (uintptr_t)dst % 8 == 0)
    fp8_to_bf16_x4_kernel<<<blocks_for(n / 4, 256), 256, 0, s>>>((const uchar4 *)src, (ushort4 *)dst, n / 4);
  else
    fp8_to_bf16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(src, dst, n);
  ELMO_LAUNCH_CHECK();
}

static __global__ void bf16_to_f32_kernel(const uint16_t *src, float *dst, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = elmo_bf16_to_f32(src[i]);
}

extern "C" void elmo_cuda_bf16_to_f32(const uint16_t *src, float *dst, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<blocks_for(n, 256), 256, 0, s>>>(src, dst, n);
  ELMO_LAUNCH_CHECK();
}
