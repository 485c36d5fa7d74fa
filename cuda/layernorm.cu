/* layernorm.cu: LayerNorm forward/backward for the CUDA encoder. One warp per row (held in registers
 * when the width is 128 K, K <= 8; else staged in shared memory); FP32 statistics;
 * parameter gradients summed deterministically (fixed blocks of rows, then the blocks in order).
 * CPU twins: elmo_tf_layernorm_forward/backward in src/transformer.c. */
#include <cuda_bf16.h>
#include <stdint.h>
#include <string.h>

#include "cuda/layernorm.h"
#include "cuda/gelu.h"
#include "cuda/check.h"
#include "cuda/transformer.h"
#include "cuda/bf16x8.cuh"
#include "cuda/e4m3.cuh"

typedef __nv_bfloat16 bf16;

enum {
  LN_WARPS = 4,          /* rows per block in the row kernels */
  PART_ROWS = 64,        /* rows per partial sum of the parameter gradients */
  PART_THREADS = 128
};

static __device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static int64_t part_blocks(int64_t M) { return (M + PART_ROWS - 1) / PART_ROWS; }

/* ------------------------------------------------------------------ rows held in registers */

/* H = 128 K columns (K <= 8): lane holds columns 128 k + 4 lane .. +3 of its warp's row in
 * registers, with 16-byte FP32 and 8-byte bf16 accesses; the arithmetic per element is the
 * shared-memory kernels' (only the order of the row sums differs). */
static __device__ __forceinline__ void bf16x4_to_f32(uint2 u, float v[4]) {
  v[0] = __uint_as_float(u.x << 16);
  v[1] = __uint_as_float(u.x & 0xFFFF0000u);
  v[2] = __uint_as_float(u.y << 16);
  v[3] = __uint_as_float(u.y & 0xFFFF0000u);
}
static __device__ __forceinline__ uint2 f32x4_to_bf16(const float v[4]) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
  return make_uint2(*(const uint32_t *)&lo, *(const uint32_t *)&hi);
}

template <int K>
static __global__ void __launch_bounds__(LN_WARPS * 32)
ln_forward_vec_kernel(const float *a, const bf16 *bias, const bf16 *res, const bf16 *w, const bf16 *b, int64_t M,
                      float eps, bf16 *y, bf16 *xhat, float *rstd, uint8_t *yq, const float *qs) {
  constexpr int H = 128 * K;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * LN_WARPS + warp;
  if (r >= M) return;
  const int64_t base = r * H;
  float v[K][4], sum = 0.0f;
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = 128 * k + 4 * lane;
    const float4 x = *(const float4 *)(a + base + j);
    v[k][0] = x.x; v[k][1] = x.y; v[k][2] = x.z; v[k][3] = x.w;
    float t[4];
    if (bias) {
      bf16x4_to_f32(*(const uint2 *)(bias + j), t);
#pragma unroll
      for (int e = 0; e < 4; e++) v[k][e] += t[e];
    }
    if (res) {
      bf16x4_to_f32(*(const uint2 *)(res + base + j), t);
#pragma unroll
      for (int e = 0; e < 4; e++) v[k][e] += t[e];
    }
#pragma unroll
    for (int e = 0; e < 4; e++) sum += v[k][e];
  }
  const float mean = warp_sum(sum) / (float)H;
  float var = 0.0f;
#pragma unroll
  for (int k = 0; k < K; k++)
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const float d = v[k][e] - mean;
      var += d * d;
    }
  var = warp_sum(var) / (float)H;
  const float rs = 1.0f / sqrtf(var + eps);
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = 128 * k + 4 * lane;
    float h[4], wv[4], bv[4], o[4];
    bf16x4_to_f32(*(const uint2 *)(w + j), wv);
    bf16x4_to_f32(*(const uint2 *)(b + j), bv);
#pragma unroll
    for (int e = 0; e < 4; e++) h[e] = (v[k][e] - mean) * rs;
    const uint2 hq = f32x4_to_bf16(h);
    bf16x4_to_f32(hq, h); /* the rounded xhat, as the other kernel uses */
#pragma unroll
    for (int e = 0; e < 4; e++) o[e] = h[e] * wv[e] + bv[e];
    *(uint2 *)(xhat + base + j) = hq;
    const uint2 yo = f32x4_to_bf16(o);
    *(uint2 *)(y + base + j) = yo;
    if (yq) {                      /* the E4M3 copy of the stored (bf16) y */
      bf16x4_to_f32(yo, o);
      *(uint32_t *)(yq + base + j) = e4m3x4(o, *qs);
    }
  }
  if (lane == 0) rstd[r] = rs;
}

/* Backward rows in registers with the parameter-gradient partial sums fused in (a separate partial
 * pass would read dy and xhat a second time): block b takes rows VP_ROWS b .. VP_ROWS b + VP_ROWS - 1, warp w
 * rows w, w + 4, ... of them; each lane sums dy * xhat and dy over its rows for its columns, then the four
 * warps' sums are added in warp order into pw[b], pb[b] ([R, H], R = ceil(M / VP_ROWS)), which
 * ln_param_finish_kernel reduces in a fixed order as before. VP_ROWS 16 -> 32 -> 64 took the finish
 * 10 -> 7 -> 4.6 us a LayerNorm and the rows' pass 46 -> 43 us (DistilBERT-32, H200, 2026-11-28). */
enum { VP_ROWS = 64 };
/* Row scale of an E4M3 gradient row from the largest |bf16| code of it (bf16 bits without the sign: NaN
 * above inf above every finite value): elmo_tf_fp8_pow2_scale of that value, as the CPU's
 * elmo_tf_linear_dgrad_fp8. */
static __device__ __forceinline__ float row_scale_of(unsigned amax_bits) {
  return elmo_tf_fp8_pow2_scale((double)__uint_as_float(amax_bits << 16));
}
/* Lane 0 of row r's warp, ss = the warp's sum of the row's squared bf16 values: the bound scale of q. */
static __device__ __forceinline__ void ln_q_bound(const elmo_cuda_ln_q &q, int64_t r, float ss) {
  const float sc = elmo_tf_fp8_pow2_scale((double)(sqrtf(ss) * *q.bound));
  q.bs[r] = sc;
  q.bs_inv[r] = 1.0f / sc;
}

/* q (parts NULL: none): each row's bf16 dx16 values times the row's power of two in E4M3 and the scale's
 * inverse, and the row's bound scale (elmo_cuda_ln_q; dx16 must then be given). */
template <int K>
static __global__ void __launch_bounds__(LN_WARPS * 32)
ln_backward_vec_param_kernel(const float *dy, const bf16 *xhat, const float *rstd, const bf16 *w, int64_t M,
                             float *dx, bf16 *dx16, float *pw, float *pb, float *pd, elmo_cuda_ln_q lq) {
  constexpr int H = 128 * K;
  __shared__ __align__(16) float s_p[LN_WARPS][2][H];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float aw[K][4], ab[K][4], ad[K][4];
#pragma unroll
  for (int k = 0; k < K; k++)
#pragma unroll
    for (int e = 0; e < 4; e++) aw[k][e] = ab[k][e] = ad[k][e] = 0.0f;
#pragma unroll 1
  for (int q = 0; q < VP_ROWS / LN_WARPS; q++) {
    const int64_t r = (int64_t)blockIdx.x * VP_ROWS + warp + LN_WARPS * q;
    if (r >= M) break;
    const int64_t base = r * H;
    float gw[K][4], xh[K][4], sum_g = 0.0f, sum_gh = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) {
      const int j = 128 * k + 4 * lane;
      const float4 g = *(const float4 *)(dy + base + j);
      float wv[4];
      bf16x4_to_f32(*(const uint2 *)(w + j), wv);
      bf16x4_to_f32(*(const uint2 *)(xhat + base + j), xh[k]);
      const float gg[4] = {g.x, g.y, g.z, g.w};
#pragma unroll
      for (int e = 0; e < 4; e++) {
        aw[k][e] += gg[e] * xh[k][e];
        ab[k][e] += gg[e];
        gw[k][e] = gg[e] * wv[e];
        sum_g += gw[k][e];
        sum_gh += gw[k][e] * xh[k][e];
      }
    }
    const float mg = warp_sum(sum_g) / (float)H, mgh = warp_sum(sum_gh) / (float)H, rs = rstd[r];
    uint2 hb[K];
    unsigned am = 0;
#pragma unroll
    for (int k = 0; k < K; k++) {
      const int j = 128 * k + 4 * lane;
      float d[4];
#pragma unroll
      for (int e = 0; e < 4; e++) {
        d[e] = rs * (gw[k][e] - mg - xh[k][e] * mgh);
        ad[k][e] += d[e];
      }
      *(float4 *)(dx + base + j) = make_float4(d[0], d[1], d[2], d[3]);
      hb[k] = f32x4_to_bf16(d);
      am = max(am, bf16x4_abs_max(hb[k]));
      if (dx16) *(uint2 *)(dx16 + base + j) = hb[k];
    }
    if (lq.dq) {
      for (int o = 16; o > 0; o >>= 1) am = max(am, __shfl_xor_sync(0xFFFFFFFFu, am, o));
      const float sc = row_scale_of(am);
#pragma unroll
      for (int k = 0; k < K; k++) {
        float v[4];
        bf16x4_to_f32(hb[k], v);
        *(uint32_t *)(lq.dq + base + 128 * k + 4 * lane) = e4m3x4(v, sc);
      }
      if (lane == 0) lq.dq_inv[r] = 1.0f / sc;
    }
    if (lq.bs) {
      float ss = 0.0f;
#pragma unroll
      for (int k = 0; k < K; k++) {
        float v[4];
        bf16x4_to_f32(hb[k], v);
#pragma unroll
        for (int e = 0; e < 4; e++) ss = fmaf(v[e], v[e], ss);
      }
      ss = warp_sum(ss);
      if (lane == 0) ln_q_bound(lq, r, ss);
    }
  }
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = 128 * k + 4 * lane;
    *(float4 *)&s_p[warp][0][j] = make_float4(aw[k][0], aw[k][1], aw[k][2], aw[k][3]);
    *(float4 *)&s_p[warp][1][j] = make_float4(ab[k][0], ab[k][1], ab[k][2], ab[k][3]);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < H; j += LN_WARPS * 32) {
    float sw = s_p[0][0][j], sb = s_p[0][1][j];
#pragma unroll
    for (int wi = 1; wi < LN_WARPS; wi++) {
      sw += s_p[wi][0][j];
      sb += s_p[wi][1][j];
    }
    pw[(int64_t)blockIdx.x * H + j] = sw;
    pb[(int64_t)blockIdx.x * H + j] = sb;
  }
  if (!pd) return;
  __syncthreads(); /* the same buffer for the column sums of dx */
#pragma unroll
  for (int k = 0; k < K; k++) {
    const int j = 128 * k + 4 * lane;
    *(float4 *)&s_p[warp][0][j] = make_float4(ad[k][0], ad[k][1], ad[k][2], ad[k][3]);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < H; j += LN_WARPS * 32) {
    float sd = s_p[0][0][j];
#pragma unroll
    for (int wi = 1; wi < LN_WARPS; wi++) sd += s_p[wi][0][j];
    pd[(int64_t)blockIdx.x * H + j] = sd;
  }
}

/* Warp per row of x16 [M, H] (H a multiple of 8, rows 16-byte aligned): the row in E4M3 times the power of two
 * of its bf16 amax, and the scale's inverse (what ln_backward_vec_param_kernel writes with dq). */
static __global__ void ln_rowcast_kernel(const bf16 *x16, int64_t M, int H, elmo_cuda_ln_q q) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
  if (r >= M) return;
  const uint4 *row = (const uint4 *)(x16 + r * H);
  unsigned am = 0;
  float ss = 0.0f;
  for (int c = lane; c < H / 8; c += 32) {
    const uint4 v = row[c];
    am = max(am, bf16x8_abs_max(v));
    ss = bf16x8_sumsq(v, ss);
  }
  if (q.dq) {
    for (int o = 16; o > 0; o >>= 1) am = max(am, __shfl_xor_sync(0xFFFFFFFFu, am, o));
    const float sc = row_scale_of(am);
    for (int c = lane; c < H / 8; c += 32) ((uint2 *)(q.dq + r * H))[c] = e4m3x8_bf16(row[c], sc);
    if (lane == 0) q.dq_inv[r] = 1.0f / sc;
  }
  if (q.bs) {
    ss = warp_sum(ss);
    if (lane == 0) ln_q_bound(q, r, ss);
  }
}

/* The register kernels take H = 128 K (K = 1..8) with 16-byte aligned rows. */
static int ln_vec_ok(int H, const void *const *ptrs, int n) {
  if (H % 128 || H > 1024) return 0;
  for (int i = 0; i < n; i++)
    if (((uintptr_t)ptrs[i]) % 16) return 0;
  return 1;
}

#define LN_VEC_SWITCH(K_EXPR, CALL) \
  switch (K_EXPR) {                 \
    case 1: CALL(1); break;         \
    case 2: CALL(2); break;         \
    case 3: CALL(3); break;         \
    case 4: CALL(4); break;         \
    case 5: CALL(5); break;         \
    case 6: CALL(6); break;         \
    case 7: CALL(7); break;         \
    default: CALL(8); break;        \
  }

/* ------------------------------------------------------------------ forward */

/* Row r: pre (staged in shared memory) -> xhat, y, rstd. */
static __global__ void ln_forward_kernel(const float *a, const bf16 *bias, const bf16 *res, const bf16 *w,
                                         const bf16 *b, int64_t M, int H, float eps, bf16 *y, bf16 *xhat,
                                         float *rstd, uint8_t *yq, const float *qs) {
  extern __shared__ float ln_row[];                 /* [LN_WARPS, H] */
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * LN_WARPS + warp;
  if (r >= M) return;
  float *pre = ln_row + (int64_t)warp * H;
  const int64_t base = r * H;
  float sum = 0.0f;
  for (int j = lane; j < H; j += 32) {
    float v = a[base + j];
    if (bias) v += __bfloat162float(bias[j]);
    if (res) v += __bfloat162float(res[base + j]);
    pre[j] = v;
    sum += v;
  }
  const float mean = warp_sum(sum) / (float)H;
  float var = 0.0f;
  for (int j = lane; j < H; j += 32) {
    const float d = pre[j] - mean;
    var += d * d;
  }
  var = warp_sum(var) / (float)H;
  const float rs = 1.0f / sqrtf(var + eps);
  for (int j = lane; j < H; j += 32) {
    const bf16 h = __float2bfloat16_rn((pre[j] - mean) * rs);
    xhat[base + j] = h;
    const bf16 yo = __float2bfloat16_rn(__bfloat162float(h) * __bfloat162float(w[j]) + __bfloat162float(b[j]));
    y[base + j] = yo;
    if (yq) yq[base + j] = e4m3x1(__bfloat162float(yo) * *qs);
  }
  if (lane == 0) rstd[r] = rs;
}

static void ln_forward_launch(const float *a, const bf16 *bias, const bf16 *res, const bf16 *w, const bf16 *b,
                              int64_t M, int H, float eps, bf16 *y, bf16 *xhat, float *rstd, uint8_t *yq,
                              const float *qs, cudaStream_t s) {
  const unsigned grid = (unsigned)((M + LN_WARPS - 1) / LN_WARPS);
  const void *ptrs[] = {a, bias ? (const void *)bias : a, res ? (const void *)res : a, w, b, y, xhat};
  if (ln_vec_ok(H, ptrs, 7) && (uintptr_t)yq % 4 == 0) {
#define LN_FWD(K) \
  ln_forward_vec_kernel<K><<<grid, LN_WARPS * 32, 0, s>>>(a, bias, res, w, b, M, eps, y, xhat, rstd, yq, qs)
    LN_VEC_SWITCH(H / 128, LN_FWD)
#undef LN_FWD
    ELMO_LAUNCH_CHECK();
    return;
  }
  const size_t smem = (size_t)LN_WARPS * H * sizeof(float);
  if (smem > 48 * 1024)
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(ln_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
  ln_forward_kernel<<<grid, LN_WARPS * 32, smem, s>>>(a, bias, res, w, b, M, H, eps, y, xhat, rstd, yq, qs);
  ELMO_LAUNCH_CHECK();
}

static int check_rows(const char *what, int64_t M, int H, elmo_err *err) {
  if (M < 0 || H < 1 || H > 16384 || (M + LN_WARPS) / LN_WARPS > 0x7FFFFFFF)
    return elmo_fail(err, ELMO_EINPUT, "%s: %lld rows x %d columns (expected rows >= 0, "
                     "1 <= columns <= 16384)", what, (long long)M, H);
  return ELMO_OK;
}

extern "C" int elmo_cuda_layernorm_forward_q(const float *a, const elmo_bf16 *bias, const elmo_bf16 *res,
                                             const elmo_bf16 *w, const elmo_bf16 *b, int64_t M, int H,
                                             float eps, elmo_bf16 *y, elmo_bf16 *xhat, float *rstd, uint8_t *yq,
                                             const float *yq_scale, cudaStream_t s, elmo_err *err) {
  int rc = check_rows("layernorm forward", M, H, err);
  if (rc) return rc;
  if (!(eps > 0.0f))
    return elmo_fail(err, ELMO_EINPUT, "layernorm forward: eps = %g (expected > 0)", (double)eps);
  if (yq && !yq_scale) return elmo_fail(err, ELMO_EINPUT, "layernorm forward: an E4M3 output without its scale");
  if (M == 0) return ELMO_OK;
  ln_forward_launch(a, (const bf16 *)bias, (const bf16 *)res, (const bf16 *)w, (const bf16 *)b, M, H, eps,
                    (bf16 *)y, (bf16 *)xhat, rstd, yq, yq_scale, s);
  return ELMO_OK;
}

extern "C" int elmo_cuda_layernorm_forward(const float *a, const elmo_bf16 *bias, const elmo_bf16 *res,
                                           const elmo_bf16 *w, const elmo_bf16 *b, int64_t M, int H,
                                           float eps, elmo_bf16 *y, elmo_bf16 *xhat, float *rstd,
                                           cudaStream_t s, elmo_err *err) {
  return elmo_cuda_layernorm_forward_q(a, bias, res, w, b, M, H, eps, y, xhat, rstd, NULL, NULL, s, err);
}

/* ------------------------------------------------------------------ apply */

static __global__ void ln_apply_kernel(const bf16 *xhat, const bf16 *w, const bf16 *b, int64_t n, int H,
                                       bf16 *y, uint8_t *yq, const float *qs) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int j = (int)(i % H);
    const bf16 yo = __float2bfloat16_rn(__bfloat162float(xhat[i]) * __bfloat162float(w[j]) + __bfloat162float(b[j]));
    y[i] = yo;
    if (yq) yq[i] = e4m3x1(__bfloat162float(yo) * *qs);
  }
}

/* The same 8 columns at a time (H a multiple of 8, 16-byte aligned pointers); n8 = M * H / 8. */
static __global__ void ln_apply8_kernel(const uint4 *xhat, const uint4 *w, const uint4 *b, int64_t n8, int H8,
                                        uint4 *y, uint2 *yq, const float *qs) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    const int j8 = (int)(i % H8);
    const uint4 xu = xhat[i], wu = w[j8], bu = b[j8];
    const bf16 *xv = reinterpret_cast<const bf16 *>(&xu), *wv = reinterpret_cast<const bf16 *>(&wu);
    const bf16 *bv = reinterpret_cast<const bf16 *>(&bu);
    uint4 out;
    bf16 *ov = reinterpret_cast<bf16 *>(&out);
#pragma unroll
    for (int k = 0; k < 8; k++)
      ov[k] = __float2bfloat16_rn(__bfloat162float(xv[k]) * __bfloat162float(wv[k]) + __bfloat162float(bv[k]));
    y[i] = out;
    if (yq) yq[i] = e4m3x8_bf16(out, *qs);   /* the E4M3 copy of the stored (bf16) y */
  }
}

static unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return (unsigned)(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

extern "C" int elmo_cuda_layernorm_apply_q(const elmo_bf16 *xhat, const elmo_bf16 *w, const elmo_bf16 *b,
                                           int64_t M, int H, elmo_bf16 *y, uint8_t *yq, const float *yq_scale,
                                           cudaStream_t s, elmo_err *err) {
  int rc = check_rows("layernorm apply", M, H, err);
  if (rc || M == 0) return rc;
  if (yq && !yq_scale) return elmo_fail(err, ELMO_EINPUT, "layernorm apply: an E4M3 output without its scale");
  if (H % 8 == 0 && ((uintptr_t)xhat | (uintptr_t)w | (uintptr_t)b | (uintptr_t)y) % 16 == 0 && (uintptr_t)yq % 8 == 0)
    ln_apply8_kernel<<<grid_for(M * H / 8, 256), 256, 0, s>>>((const uint4 *)xhat, (const uint4 *)w,
                                                              (const uint4 *)b, M * H / 8, H / 8, (uint4 *)y,
                                                              (uint2 *)yq, yq_scale);
  else
    ln_apply_kernel<<<grid_for(M * H, 256), 256, 0, s>>>((const bf16 *)xhat, (const bf16 *)w, (const bf16 *)b,
                                                         M * H, H, (bf16 *)y, yq, yq_scale);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

extern "C" int elmo_cuda_layernorm_apply(const elmo_bf16 *xhat, const elmo_bf16 *w, const elmo_bf16 *b,
                                         int64_t M, int H, elmo_bf16 *y, cudaStream_t s, elmo_err *err) {
  return elmo_cuda_layernorm_apply_q(xhat, w, b, M, H, y, NULL, NULL, s, err);
}

/* ------------------------------------------------------------------ backward */

/* Row r: dx = rstd * (dy w - mean(dy w) - xhat mean(dy w xhat)); dx may alias dy. */
static __global__ void ln_backward_kernel(const float *dy, const bf16 *xhat, const float *rstd, const bf16 *w,
                                          int64_t M, int H, float *dx, bf16 *dx16) {
  extern __shared__ float ln_row[];                 /* [LN_WARPS, H]: dy * w */
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * LN_WARPS + warp;
  if (r >= M) return;
  float *gw = ln_row + (int64_t)warp * H;
  const int64_t base = r * H;
  float sum_g = 0.0f, sum_gh = 0.0f;
  for (int j = lane; j < H; j += 32) {
    const float v = dy[base + j] * __bfloat162float(w[j]);
    gw[j] = v;
    sum_g += v;
    sum_gh += v * __bfloat162float(xhat[base + j]);
  }
  const float mg = warp_sum(sum_g) / (float)H, mgh = warp_sum(sum_gh) / (float)H, rs = rstd[r];
  for (int j = lane; j < H; j += 32) {
    const float d = rs * (gw[j] - mg - __bfloat162float(xhat[base + j]) * mgh);
    dx[base + j] = d;
    if (dx16) dx16[base + j] = __float2bfloat16_rn(d);
  }
}

/* Block (column tile, row block): partial sums of dy * xhat and dy over PART_ROWS rows. */
static __global__ void ln_param_partial_kernel(const float *dy, const bf16 *xhat, int64_t M, int H, float *pw,
                                               float *pb) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= H) return;
  const int64_t r0 = (int64_t)blockIdx.y * PART_ROWS;
  const int64_t r1 = r0 + PART_ROWS < M ? r0 + PART_ROWS : M;
  float sw = 0.0f, sb = 0.0f;
  for (int64_t r = r0; r < r1; r++) {
    const float g = dy[r * H + j];
    sw += g * __bfloat162float(xhat[r * H + j]);
    sb += g;
  }
  pw[(int64_t)blockIdx.y * H + j] = sw;
  pb[(int64_t)blockIdx.y * H + j] = sb;
}

enum { FIN_COLS = 32, FIN_SLICES = 32 };

/* dw[j] += sum over the R row blocks of pw, db likewise (and dsum of pd when pd is given). Block
 * (32 columns) x (32 slices): slice y sums blocks y, y + 32, ... in order, then slice 0 adds the 32
 * slice sums in order: a fixed order. (With 8 slices, 24 blocks of BERT's 768 columns spent 20 us on
 * 1,024 row blocks: H100, 2026-11-27.) */
static __global__ void ln_param_finish_kernel(const float *pw, const float *pb, const float *pd, int R, int H,
                                              float *dw, float *db, float *dsum) {
  __shared__ float sw_s[FIN_SLICES][FIN_COLS], sb_s[FIN_SLICES][FIN_COLS], sd_s[FIN_SLICES][FIN_COLS];
  const int x = threadIdx.x, y = threadIdx.y, j = blockIdx.x * FIN_COLS + x;
  float sw = 0.0f, sb = 0.0f, sd = 0.0f;
  if (j < H)
    for (int r = y; r < R; r += FIN_SLICES) {
      sw += pw[(int64_t)r * H + j];
      sb += pb[(int64_t)r * H + j];
      if (pd) sd += pd[(int64_t)r * H + j];
    }
  sw_s[y][x] = sw;
  sb_s[y][x] = sb;
  sd_s[y][x] = sd;
  __syncthreads();
  if (y != 0 || j >= H) return;
  for (int k = 1; k < FIN_SLICES; k++) {
    sw += sw_s[k][x];
    sb += sb_s[k][x];
    sd += sd_s[k][x];
  }
  dw[j] += sw;
  db[j] += sb;
  if (pd) dsum[j] += sd;
}

static void ln_params_launch(const float *dy, const bf16 *xhat, int64_t M, int H, float *dw, float *db,
                             float *ws, cudaStream_t s) {
  const int64_t R = part_blocks(M);
  float *pw = ws, *pb = ws + R * H;
  const dim3 grid((unsigned)((H + PART_THREADS - 1) / PART_THREADS), (unsigned)R);
  ln_param_partial_kernel<<<grid, PART_THREADS, 0, s>>>(dy, xhat, M, H, pw, pb);
  ELMO_LAUNCH_CHECK();
  ln_param_finish_kernel<<<(unsigned)((H + FIN_COLS - 1) / FIN_COLS), dim3(FIN_COLS, FIN_SLICES), 0, s>>>(
      pw, pb, NULL, (int)R, H, dw, db, NULL);
  ELMO_LAUNCH_CHECK();
}

/* The shared-memory row kernel (widths the register kernel does not take). */
static void ln_backward_launch(const float *dy, const bf16 *xhat, const float *rstd, const bf16 *w, int64_t M,
                               int H, float *dx, bf16 *dx16, cudaStream_t s) {
  const unsigned grid = (unsigned)((M + LN_WARPS - 1) / LN_WARPS);
  const size_t smem = (size_t)LN_WARPS * H * sizeof(float);
  if (smem > 48 * 1024)
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(ln_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
  ln_backward_kernel<<<grid, LN_WARPS * 32, smem, s>>>(dy, xhat, rstd, w, M, H, dx, dx16);
  ELMO_LAUNCH_CHECK();
}

/* Scratch for the parameter partials: R = ceil(M / VP_ROWS) rows of the fused register kernel, three arrays
 * (dw, db, dsum; the shared-memory path uses ceil(M / 64) rows of two, then the column sums' own). */
extern "C" int64_t elmo_cuda_layernorm_ws_floats(int64_t M, int H) {
  const int64_t a = 3 * ((M + VP_ROWS - 1) / VP_ROWS) * H, c = elmo_cuda_colsum_ws_floats(M, H, 1);
  return a > c ? a : c;
}

extern "C" int elmo_cuda_layernorm_backward_q(const float *dy, const elmo_bf16 *xhat, const float *rstd,
                                              const elmo_bf16 *w, int64_t M, int H, float *dx, elmo_bf16 *dx16,
                                              float *dw, float *db, float *dsum, float *ws, const elmo_cuda_ln_q *qp,
                                              cudaStream_t s, elmo_err *err) {
  int rc = check_rows("layernorm backward", M, H, err);
  if (rc) return rc;
  elmo_cuda_ln_q q;
  memset(&q, 0, sizeof q);
  if (qp) q = *qp;
  if ((q.dq || q.bs) && (!dx16 || (q.dq && !q.dq_inv) || (q.bs && (!q.bs_inv || !q.bound)) || H % 8 ||
                         ((uintptr_t)dx16 | (uintptr_t)q.dq) % 16))
    return elmo_fail(err, ELMO_EINPUT, "layernorm backward: an E4M3 copy or row scales need the bf16 copy, their "
                     "scales, a width that is a multiple of 8 and 16-byte aligned rows");
  if (part_blocks(M) > 65535)
    return elmo_fail(err, ELMO_EINPUT, "layernorm backward: %lld rows (expected at most %lld)",
                     (long long)M, (long long)65535 * PART_ROWS);
  if (M == 0) return ELMO_OK;
  const void *ptrs[] = {dy, xhat, w, dx, dx16 ? (const void *)dx16 : dy};
  if (ln_vec_ok(H, ptrs, 5)) { /* rows in registers, parameter partials fused */
    const int64_t R = (M + VP_ROWS - 1) / VP_ROWS;
    float *pw = ws, *pb = ws + R * H, *pd = dsum ? ws + 2 * R * H : NULL;
#define LN_BWDP(K)                                                                                        \
  ln_backward_vec_param_kernel<K><<<(unsigned)R, LN_WARPS * 32, 0, s>>>(dy, (const bf16 *)xhat, rstd, (const bf16 *)w, \
                                                                       M, dx, (bf16 *)dx16, pw, pb, pd, q)
    LN_VEC_SWITCH(H / 128, LN_BWDP)
#undef LN_BWDP
    ELMO_LAUNCH_CHECK();
    ln_param_finish_kernel<<<(unsigned)((H + FIN_COLS - 1) / FIN_COLS), dim3(FIN_COLS, FIN_SLICES), 0, s>>>(
        pw, pb, pd, (int)R, H, dw, db, dsum);
    ELMO_LAUNCH_CHECK();
    return ELMO_OK;
  }
  /* parameter sums read dy before the row kernel may overwrite it in place */
  ln_params_launch(dy, (const bf16 *)xhat, M, H, dw, db, ws, s);
  ln_backward_launch(dy, (const bf16 *)xhat, rstd, (const bf16 *)w, M, H, dx, (bf16 *)dx16, s);
  if (q.dq || q.bs) {
    ln_rowcast_kernel<<<(unsigned)((M + 7) / 8), 256, 0, s>>>((const bf16 *)dx16, M, H, q);
    ELMO_LAUNCH_CHECK();
  }
  if (dsum) return elmo_cuda_colsum(dx, 0, M, H, 1, 0, dsum, 0, ws, s, err);
  return ELMO_OK;
}

extern "C" int elmo_cuda_layernorm_backward(const float *dy, const elmo_bf16 *xhat, const float *rstd,
                                            const elmo_bf16 *w, int64_t M, int H, float *dx, elmo_bf16 *dx16,
                                            float *dw, float *db, float *dsum, float *ws, cudaStream_t s,
                                            elmo_err *err) {
  return elmo_cuda_layernorm_backward_q(dy, xhat, rstd, w, M, H, dx, dx16, dw, db, dsum, ws, NULL, s, err);
}
