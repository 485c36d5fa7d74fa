/* optim.cu: Kahan-compensated AdamW (bf16) and AdamW (fp32) on the device (optim.h). */
#include "optim.h"
#include "check.h"

#include "numerics.h"

#include <math.h>
#include <stdint.h>

struct adamw_args {
  void *p, *m, *v;
  uint16_t *c;
  const float *g;
  int64_t n;
  elmo_cuda_decay decay;
  float lr, b1, b2, eps, wd, bc1, bc2;
};

static __device__ __forceinline__ float ld(const void *a, int bf16, int64_t i) {
  return bf16 ? elmo_bf16_to_f32(((const uint16_t *)a)[i]) : ((const float *)a)[i];
}

/* Stores x in the dtype (RN) and returns the stored value. */
static __device__ __forceinline__ float st(void *a, int bf16, int64_t i, float x) {
  if (bf16) {
    uint16_t q = elmo_f32_to_bf16(x);
    ((uint16_t *)a)[i] = q;
    return elmo_bf16_to_f32(q);
  }
  ((float *)a)[i] = x;
  return x;
}

/* Number of ranges starting at or before i, by one warp (all 32 lanes call it): a 32-ary search,
 * one coalesced load and a ballot per round (2 rounds up to 1024 ranges) instead of a chain of
 * dependent loads. */
static __device__ int ranges_started_warp(const elmo_cuda_decay &d, int64_t i) {
  const int lane = threadIdx.x & 31;
  int lo = 0, hi = d.n; /* the answer lies in [lo, hi] */
  while (lo < hi) {
    const int step = (hi - lo + 31) / 32, idx = lo + lane * step;
    const unsigned le = __ballot_sync(0xFFFFFFFFu, idx < hi && d.start[idx] <= i);
    const int c = __popc(le); /* starts are sorted: the true lanes are a prefix */
    if (c == 0) break;
    const int nlo = lo + (c - 1) * step + 1, nhi = lo + c * step < hi ? lo + c * step : hi;
    lo = nlo;
    hi = nhi;
  }
  return lo;
}

#define AW_PER 4 /* element pairs a thread per block span, blockDim pairs apart (coalesced); 4 against 1, 2, 8:
                  * -3% on the 66M / 110M parameters of DistilBERT / BERT-base (H100, 2026-11-27) */

/* Two adjacent elements i, i + 1 (i even) of p/m/v (bf16 pair in one 32-bit word, or an FP32
 * pair) and of c (bf16 pair). */
template <int BF16> struct pair_io;
template <> struct pair_io<1> {
  static __device__ __forceinline__ void ld(const void *a, int64_t i, float x[2]) {
    const uint32_t w = ((const uint32_t *)a)[i >> 1];
    x[0] = __uint_as_float(w << 16);
    x[1] = __uint_as_float(w & 0xFFFF0000u);
  }
  /* stores RN and returns the stored values */
  static __device__ __forceinline__ void st(void *a, int64_t i, float x[2]) {
    const uint32_t q0 = elmo_f32_to_bf16(x[0]), q1 = elmo_f32_to_bf16(x[1]);
    ((uint32_t *)a)[i >> 1] = q0 | (q1 << 16);
    x[0] = elmo_bf16_to_f32((uint16_t)q0);
    x[1] = elmo_bf16_to_f32((uint16_t)q1);
  }
};
template <> struct pair_io<0> {
  static __device__ __forceinline__ void ld(const void *a, int64_t i, float x[2]) {
    const float2 f = ((const float2 *)a)[i >> 1];
    x[0] = f.x;
    x[1] = f.y;
  }
  static __device__ __forceinline__ void st(void *a, int64_t i, float x[2]) { ((float2 *)a)[i >> 1] = make_float2(x[0], x[1]); }
};

/* One element's update from its loaded values, the CPU's operations in its order
 * (elmo_adamw_update): m, v, p come back as the values to store (already rounded to the dtype), with
 * their bf16 codes in qm, qv, qp for bf16 state (so that a store need not encode them again; 0 for
 * FP32), c as the new Kahan compensation before its bf16 rounding (when has_c). */
template <int BF16>
static __device__ __forceinline__ float rnd(float x, uint32_t &code) {
  if (!BF16) {
    code = 0;
    return x;
  }
  code = elmo_f32_to_bf16(x);
  return elmo_bf16_to_f32((uint16_t)code);
}
template <int BF16>
static __device__ __forceinline__ void adamw_math(const adamw_args &a, float g, int dec, bool has_c, float &m, float &v,
                                                  float &p, float &c, uint32_t &qm, uint32_t &qv, uint32_t &qp) {
  m = rnd<BF16>(__fadd_rn(__fmul_rn(a.b1, m), __fmul_rn(__fsub_rn(1.0f, a.b1), g)), qm);
  v = rnd<BF16>(__fadd_rn(__fmul_rn(a.b2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.b2), g), g)), qv);
  const float wd = dec ? a.wd : 0.0f;
  const float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, a.bc2)), a.eps);
  const float upd = __fmul_rn(-a.lr, __fadd_rn(__fdiv_rn(__fdiv_rn(m, a.bc1), den), __fmul_rn(wd, p)));
  const float u = has_c ? __fadd_rn(upd, c) : upd;
  const float q = rnd<BF16>(__fadd_rn(p, u), qp);
  if (has_c) c = __fsub_rn(u, __fsub_rn(q, p));
  p = q;
}

/* One element (the odd tail and the unaligned fallback). */
template <int BF16>
static __device__ __forceinline__ void adamw_one(const adamw_args &a, int64_t i, int dec) {
  float m = ld(a.m, BF16, i), v = ld(a.v, BF16, i), p = ld(a.p, BF16, i), c = a.c ? elmo_bf16_to_f32(a.c[i]) : 0.0f;
  uint32_t qm, qv, qp;
  adamw_math<BF16>(a, a.g[i], dec, a.c != NULL, m, v, p, c, qm, qv, qp);
  st(a.m, BF16, i, m);
  st(a.v, BF16, i, v);
  st(a.p, BF16, i, p);
  if (a.c) a.c[i] = elmo_f32_to_bf16(c);
}

/* Two adjacent elements a thread (32-bit bf16 pairs, 64-bit FP32 pairs: each warp access is 128
 * or 256 contiguous bytes), AW_PER pairs per thread per block span of 2 AW_PER blockDim
 * elements; the decay range at the span's start is searched once by warp 0
 * (ranges_started_warp) and each thread steps over the few range starts after it. One barrier
 * per span (the start index alternates between two slots). The arithmetic of each element is
 * adamw_one's, bit for bit the CPU's. */
template <int BF16>
static __global__ void __launch_bounds__(256) adamw_kernel(adamw_args a) {
  __shared__ int s_lo[2];
  const int64_t span = (int64_t)blockDim.x * 2 * AW_PER;
  int par = 0;
  for (int64_t base = blockIdx.x * span; base < a.n; base += (int64_t)gridDim.x * span, par ^= 1) {
    if (threadIdx.x < 32) {
      const int r = ranges_started_warp(a.decay, base);
      if (threadIdx.x == 0) s_lo[par] = r;
    }
    __syncthreads(); /* also orders this span's read of s_lo[par] before its rewrite two spans on */
    int lo = s_lo[par];
    /* the next range start after element i and the end of the range i lies in (or before) */
    int64_t next = lo < a.decay.n ? a.decay.start[lo] : INT64_MAX, cur_end = lo > 0 ? a.decay.end[lo - 1] : 0;
#pragma unroll
    for (int k = 0; k < AW_PER; k++) {
      const int64_t i = base + 2 * (threadIdx.x + (int64_t)k * blockDim.x);
      if (i >= a.n) break;
      int dec[2];
#pragma unroll
      for (int e = 0; e < 2; e++) {
        while (i + e >= next) {
          cur_end = a.decay.end[lo];
          lo++;
          next = lo < a.decay.n ? a.decay.start[lo] : INT64_MAX;
        }
        dec[e] = i + e < cur_end;
      }
      if (i + 1 >= a.n) { /* odd tail */
        adamw_one<BF16>(a, i, dec[0]);
        break;
      }
      const float2 g2 = *(const float2 *)(a.g + i);
      const float g[2] = {g2.x, g2.y};
      float m[2], v[2], p[2], c[2] = {0.0f, 0.0f};
      pair_io<BF16>::ld(a.m, i, m);
      pair_io<BF16>::ld(a.v, i, v);
      pair_io<BF16>::ld(a.p, i, p);
      if (a.c) pair_io<1>::ld(a.c, i, c);
      uint32_t qm[2], qv[2], qp[2];
#pragma unroll
      for (int e = 0; e < 2; e++) adamw_math<BF16>(a, g[e], dec[e], a.c != NULL, m[e], v[e], p[e], c[e], qm[e], qv[e], qp[e]);
      if constexpr (BF16) { /* the codes from the rounding, stored as they are */
        ((uint32_t *)a.m)[i >> 1] = qm[0] | (qm[1] << 16);
        ((uint32_t *)a.v)[i >> 1] = qv[0] | (qv[1] << 16);
        ((uint32_t *)a.p)[i >> 1] = qp[0] | (qp[1] << 16);
        if (a.c) ((uint32_t *)a.c)[i >> 1] = (uint32_t)elmo_f32_to_bf16(c[0]) | ((uint32_t)elmo_f32_to_bf16(c[1]) << 16);
      } else {
        pair_io<BF16>::st(a.m, i, m);
        pair_io<BF16>::st(a.v, i, v);
        pair_io<BF16>::st(a.p, i, p);
        if (a.c) pair_io<1>::st(a.c, i, c);
      }
    }
  }
}

/* Fallback for arrays not aligned for pairs: one element a thread, its range by binary search. */
template <int BF16>
static __global__ void __launch_bounds__(256) adamw_scalar_kernel(adamw_args a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.n; i += (int64_t)gridDim.x * blockDim.x) {
    int lo = 0, hi = a.decay.n;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (a.decay.start[mid] <= i) lo = mid + 1; else hi = mid;
    }
    adamw_one<BF16>(a, i, lo > 0 && i < a.decay.end[lo - 1]);
  }
}

extern "C" void elmo_cuda_adamw(void *p, void *m, void *v, uint16_t *c, elmo_dtype dtype, const float *g, int64_t n,
                                const elmo_cuda_decay *decay, const elmo_adamw_hyper *h, cudaStream_t s) {
  if (n <= 0) return;
  adamw_args a;
  a.p = p; a.m = m; a.v = v; a.c = c; a.g = g; a.n = n;
  a.decay = *decay;
  a.lr = h->lr; a.b1 = h->beta1; a.b2 = h->beta2; a.eps = h->eps; a.wd = h->weight_decay;
  /* bias corrections on the host with the CPU's expressions */
  a.bc1 = 1.0f - powf(h->beta1, (float)h->t);
  a.bc2 = 1.0f - powf(h->beta2, (float)h->t);
  int64_t blocks = (n + 512 * AW_PER - 1) / (512 * AW_PER);
  unsigned grid = (unsigned)(blocks > 32768 ? 32768 : blocks);
  const uintptr_t pa = (uintptr_t)p | (uintptr_t)m | (uintptr_t)v;
  const bool pairs = pa % (dtype == ELMO_BF16 ? 4 : 8) == 0 && (uintptr_t)c % 4 == 0 && (uintptr_t)g % 8 == 0;
  if (!pairs) {
    const int64_t b1 = (n + 255) / 256;
    const unsigned g1 = (unsigned)(b1 > 32768 ? 32768 : b1);
    if (dtype == ELMO_BF16) adamw_scalar_kernel<1><<<g1, 256, 0, s>>>(a);
    else adamw_scalar_kernel<0><<<g1, 256, 0, s>>>(a);
  } else if (dtype == ELMO_BF16) {
    adamw_kernel<1><<<grid, 256, 0, s>>>(a);
  } else {
    adamw_kernel<0><<<grid, 256, 0, s>>>(a);
  }
  ELMO_LAUNCH_CHECK();
}
