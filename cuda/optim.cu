/* optim.cu: Kahan-compensated AdamW (bf16) and AdamW (fp32) on the device (optim.h). */
#include "optim.h"
#include "check.h"

#include "numerics.h"

#include <math.h>

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

/* Number of ranges starting at or before i. */
static __device__ int ranges_started(const elmo_cuda_decay &d, int64_t i) {
  int lo = 0, hi = d.n;
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (d.start[mid] <= i) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/* One element per thread (coalesced); the decay range of a block's span is searched once, by its
 * first thread, and each thread steps over the few range starts inside the span. */
template <int BF16>
static __global__ void __launch_bounds__(256) adamw_kernel(adamw_args a) {
  __shared__ int s_lo;
  for (int64_t base = blockIdx.x * (int64_t)blockDim.x; base < a.n; base += (int64_t)gridDim.x * blockDim.x) {
    if (threadIdx.x == 0) s_lo = ranges_started(a.decay, base);
    __syncthreads();
    int lo = s_lo;
    __syncthreads(); /* s_lo is rewritten next round */
    const int64_t i = base + threadIdx.x;
    if (i >= a.n) continue;
    while (lo < a.decay.n && a.decay.start[lo] <= i) lo++;
    const int dec = lo > 0 && i < a.decay.end[lo - 1];
    const float gi = a.g[i];
    const float mi = st(a.m, BF16, i, __fadd_rn(__fmul_rn(a.b1, ld(a.m, BF16, i)), __fmul_rn(__fsub_rn(1.0f, a.b1), gi)));
    const float vi = st(a.v, BF16, i, __fadd_rn(__fmul_rn(a.b2, ld(a.v, BF16, i)),
                                               __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.b2), gi), gi)));
    const float pi = ld(a.p, BF16, i);
    const float wd = dec ? a.wd : 0.0f;
    const float den = __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, a.bc2)), a.eps);
    const float upd = __fmul_rn(-a.lr, __fadd_rn(__fdiv_rn(__fdiv_rn(mi, a.bc1), den), __fmul_rn(wd, pi)));
    if (a.c) {
      const float u = __fadd_rn(upd, elmo_bf16_to_f32(a.c[i]));
      const float q = st(a.p, BF16, i, __fadd_rn(pi, u));
      a.c[i] = elmo_f32_to_bf16(__fsub_rn(u, __fsub_rn(q, pi)));
    } else {
      st(a.p, BF16, i, __fadd_rn(pi, upd));
    }
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
  int64_t blocks = (n + 255) / 256;
  unsigned grid = (unsigned)(blocks > 32768 ? 32768 : blocks);
  if (dtype == ELMO_BF16) adamw_kernel<1><<<grid, 256, 0, s>>>(a);
  else adamw_kernel<0><<<grid, 256, 0, s>>>(a);
  ELMO_LAUNCH_CHECK();
}
