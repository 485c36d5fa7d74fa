/* gelu.cu: GELU (exact erf form) forward with the bias add, its recompute and backward, and the
 * deterministic column sums that give bias gradients, for the CUDA encoder. CPU twins:
 * elmo_tf_gelu_forward/backward and the db part of elmo_tf_linear_backward. */
#include <cuda_bf16.h>

#include <mutex>

#include "cuda/gelu.h"
#include "cuda/attention.h"
#include "cuda/convert.h"
#include "cuda/check.h"
#include "cuda/transformer.h"
#include "cuda/e4m3.cuh"

typedef __nv_bfloat16 bf16;

enum { EW_THREADS = 256, COL_ROWS = 64, COL_THREADS = 128 };

/* GELU(x) and, in *grad, GELU'(x) from one erff (the one definition of both; a caller that uses only
 * one of them leaves the other's arithmetic to dead-code elimination). */
static __device__ __forceinline__ float gelu_and_grad(float x, float *grad) {
  const float e = erff(x * 0.70710678118654752f);
  const float cdf = 0.5f * (1.0f + e);
  const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
  *grad = cdf + x * pdf;
  return 0.5f * x * (1.0f + e);
}

static __device__ float gelu_f(float x) {
  float unused;
  return gelu_and_grad(x, &unused);
}

static __device__ float gelu_grad(float x) {
  float grad;
  gelu_and_grad(x, &grad);
  return grad;
}

static unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + EW_THREADS - 1) / EW_THREADS;
  return (unsigned)(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

static int check_n(const char *what, int64_t n, elmo_err *err) {
  if (n < 0) return elmo_fail(err, ELMO_EINPUT, "%s: %lld elements (expected >= 0)", what, (long long)n);
  return ELMO_OK;
}

/* ------------------------------------------------------------------ forward */

static __global__ void gelu_forward_kernel(const float *a, const bf16 *bias, int64_t n, int F, bf16 *pre,
                                           bf16 *g) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float v = a[i];
    if (bias) v += __bfloat162float(bias[i % F]);
    const bf16 p = __float2bfloat16_rn(v);
    if (pre) pre[i] = p;
    g[i] = __float2bfloat16_rn(gelu_f(__bfloat162float(p)));
  }
}

extern "C" int elmo_cuda_gelu_forward(const float *a, const elmo_bf16 *bias, int64_t M, int F, elmo_bf16 *pre,
                                      elmo_bf16 *g, cudaStream_t s, elmo_err *err) {
  if (M < 0 || F < 1)
    return elmo_fail(err, ELMO_EINPUT, "gelu forward: %lld x %d (expected rows >= 0, columns >= 1)",
                     (long long)M, F);
  if (M == 0) return ELMO_OK;
  gelu_forward_kernel<<<grid_for(M * F), EW_THREADS, 0, s>>>(a, (const bf16 *)bias, M * F, F, (bf16 *)pre,
                                                             (bf16 *)g);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

static __global__ void gelu_recompute_kernel(const bf16 *pre, int64_t n, bf16 *g) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    g[i] = __float2bfloat16_rn(gelu_f(__bfloat162float(pre[i])));
}

/* 8 bf16 in one 16-byte word, to and from floats. */
static __device__ void unpack8(uint4 u, float f[8]) {
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float2 t = __bfloat1622float2(h[k]);
    f[2 * k] = t.x;
    f[2 * k + 1] = t.y;
  }
}

static __device__ uint4 pack8(const float f[8]) {
  uint4 u;
  __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
  return u;
}

/* The same maths 8 elements at a time (n8 = n / 8, 16-byte aligned pointers). */
static __global__ void gelu_recompute8_kernel(const uint4 *pre, int64_t n8, uint4 *g) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    float f[8];
    unpack8(pre[i], f);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] = gelu_f(f[k]);
    g[i] = pack8(f);
  }
}

/* The E4M3 copy of what gelu_recompute8_kernel stores: e4m3(bf16(GELU(pre)) * *qs), 8 a thread. */
static __global__ void gelu_forward_q8_kernel(const uint4 *pre, int64_t n8, uint2 *gq, const float *qs) {
  const float q = *qs;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    float f[8];
    unpack8(pre[i], f);
#pragma unroll
    for (int k = 0; k < 8; k++) f[k] = __bfloat162float(__float2bfloat16_rn(gelu_f(f[k])));
    gq[i] = e4m3x8(f, q);
  }
}

static __global__ void gelu_forward_q_kernel(const bf16 *pre, int64_t n, uint8_t *gq, const float *qs) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    gq[i] = e4m3x1(__bfloat162float(__float2bfloat16_rn(gelu_f(__bfloat162float(pre[i])))) * *qs);
}

static __global__ void gelu_backward8_kernel(const uint4 *pre, const uint4 *dy, int64_t n8, uint4 *dx) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    float x[8], g[8];
    unpack8(pre[i], x);
    unpack8(dy[i], g);
#pragma unroll
    for (int k = 0; k < 8; k++) g[k] *= gelu_grad(x[k]);
    dx[i] = pack8(g);
  }
}

/* ---- GELU of a bf16 value by table ----
 * GELU's input here is bf16 (the rounded pre-activation), so bf16(GELU(x)) has 65,536 possible arguments:
 * g_gelu_tab[c] = bf16 bits of GELU(bf16 code c), built once a device by gelu_tab_build_kernel from
 * gelu_f itself, so a lookup gives the very bits the formula does (every code is compared in
 * test_gpu_tf). The table kernels copy it into shared memory (128 KB: one block an SM, persistent)
 * and look each value up: ~6 instructions a value instead of ~35 (erff), which left the E4M3 GELU
 * forward issue-bound at 70 us a DistilBERT-32 layer on the H200. */
enum { TAB_N = 65536, TAB_THREADS = 1024 };
static __device__ uint16_t g_gelu_tab[TAB_N];

static __global__ void gelu_tab_build_kernel() {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < TAB_N; c += gridDim.x * blockDim.x)
    g_gelu_tab[c] = __bfloat16_as_ushort(__float2bfloat16_rn(gelu_f(__uint_as_float((uint32_t)c << 16))));
}

/* Eight looked-up bf16 codes of the eight bf16 values in v. */
static __device__ __forceinline__ uint4 tab8(const uint16_t *tab, uint4 v) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
  uint32_t o[4];
#pragma unroll
  for (int k = 0; k < 4; k++) o[k] = (uint32_t)tab[u[k] & 0xFFFFu] | ((uint32_t)tab[u[k] >> 16] << 16);
  return make_uint4(o[0], o[1], o[2], o[3]);
}

static __device__ __forceinline__ void tab_to_shared(uint16_t *tab) {
  const uint4 *src = (const uint4 *)g_gelu_tab;
  uint4 *dst = (uint4 *)tab;
  for (int i = threadIdx.x; i < TAB_N / 8; i += blockDim.x) dst[i] = src[i];
  __syncthreads();
}

/* Q8: e4m3(GELU(pre) * *qs) 8 bytes a step (gq), else bf16 GELU(pre) (g); two steps' loads at once. */
template <bool Q8>
static __global__ void __launch_bounds__(TAB_THREADS) gelu_tab_kernel(const uint4 *pre, int64_t n8, uint4 *g,
                                                                       uint2 *gq, const float *qs) {
  extern __shared__ uint16_t tab[];
  tab_to_shared(tab);
  const float q = Q8 ? *qs : 0.0f;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += 2 * stride) {
    const bool two = i + stride < n8;
    const uint4 a = pre[i], b = two ? pre[i + stride] : make_uint4(0, 0, 0, 0);
    const uint4 ta = tab8(tab, a), tb = tab8(tab, b);
    if (Q8) {
      gq[i] = e4m3x8_bf16(ta, q);
      if (two) gq[i + stride] = e4m3x8_bf16(tb, q);
    } else {
      g[i] = ta;
      if (two) g[i + stride] = tb;
    }
  }
}

/* Builds this device's table the first time (once a process and device; waits for it), and gives the
 * persistent grid: one block an SM; 0 on a card whose blocks cannot have 128 KB of shared memory (the
 * formula kernels then). The table is a device global: nothing here resets devices (a cudaDeviceReset
 * would drop it while tab_sms still said built). */
static std::mutex tab_mu;
static int tab_sms[64]; /* per device: 0 not yet, -1 no table, else the SM count */
static unsigned tab_grid(cudaStream_t s) {
  int dev = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return 0;
  std::lock_guard<std::mutex> lock(tab_mu);
  if (tab_sms[dev]) return tab_sms[dev] > 0 ? (unsigned)tab_sms[dev] : 0;
  int sms = 0;
  ELMO_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (elmo_cuda_smem_optin() < TAB_N * 2) { /* ELMO_SMEM_OPTIN_KB stands in for a smaller card */
    tab_sms[dev] = -1;
    return 0;
  }
  ELMO_CUDA_CHECK(cudaFuncSetAttribute(gelu_tab_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, TAB_N * 2));
  ELMO_CUDA_CHECK(cudaFuncSetAttribute(gelu_tab_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, TAB_N * 2));
  gelu_tab_build_kernel<<<TAB_N / 256, 256, 0, s>>>();
  ELMO_LAUNCH_CHECK();
  ELMO_CUDA_CHECK(cudaStreamSynchronize(s));
  tab_sms[dev] = sms;
  return (unsigned)sms;
}

/* The table kernel when this card takes it (returns 1), else nothing (0). */
static int gelu_tab_launch(const uint4 *pre, int64_t n8, uint4 *g, uint2 *gq, const float *qs, cudaStream_t s) {
  const unsigned sms = tab_grid(s);
  if (!sms) return 0;
  const int64_t need = (n8 + 2 * TAB_THREADS - 1) / (2 * TAB_THREADS);
  const unsigned grid = (unsigned)(need < (int64_t)sms ? need : sms);
  if (gq) gelu_tab_kernel<true><<<grid, TAB_THREADS, TAB_N * 2, s>>>(pre, n8, NULL, gq, qs);
  else gelu_tab_kernel<false><<<grid, TAB_THREADS, TAB_N * 2, s>>>(pre, n8, g, NULL, NULL);
  ELMO_LAUNCH_CHECK();
  return 1;
}

static int vec8_ok(int64_t n, const void *a, const void *b, const void *c) {
  return n % 8 == 0 && ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16 == 0;
}

extern "C" int elmo_cuda_gelu_recompute(const elmo_bf16 *pre, int64_t n, elmo_bf16 *g, cudaStream_t s,
                                        elmo_err *err) {
  int rc = check_n("gelu recompute", n, err);
  if (rc || n == 0) return rc;
  if (vec8_ok(n, pre, g, g)) {
    if (!gelu_tab_launch((const uint4 *)pre, n / 8, (uint4 *)g, NULL, NULL, s))
      gelu_recompute8_kernel<<<grid_for(n / 8), EW_THREADS, 0, s>>>((const uint4 *)pre, n / 8, (uint4 *)g);
  } else
    gelu_recompute_kernel<<<grid_for(n), EW_THREADS, 0, s>>>((const bf16 *)pre, n, (bf16 *)g);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

extern "C" int elmo_cuda_gelu_forward_q(const elmo_bf16 *pre, int64_t n, uint8_t *gq, const float *gq_scale,
                                        cudaStream_t s, elmo_err *err) {
  int rc = check_n("gelu forward (e4m3)", n, err);
  if (rc || n == 0) return rc;
  if (n % 8 == 0 && (uintptr_t)pre % 16 == 0 && (uintptr_t)gq % 8 == 0) {
    if (!gelu_tab_launch((const uint4 *)pre, n / 8, NULL, (uint2 *)gq, gq_scale, s))
      gelu_forward_q8_kernel<<<grid_for(n / 8), EW_THREADS, 0, s>>>((const uint4 *)pre, n / 8, (uint2 *)gq, gq_scale);
  } else
    gelu_forward_q_kernel<<<grid_for(n), EW_THREADS, 0, s>>>((const bf16 *)pre, n, gq, gq_scale);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

/* ------------------------------------------------------------------ backward */

static __global__ void gelu_backward_kernel(const bf16 *pre, const bf16 *dy, int64_t n, bf16 *dx) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = __float2bfloat16_rn(__bfloat162float(dy[i]) * gelu_grad(__bfloat162float(pre[i])));
}

extern "C" int elmo_cuda_gelu_backward(const elmo_bf16 *pre, const elmo_bf16 *dy, int64_t n, elmo_bf16 *dx,
                                       cudaStream_t s, elmo_err *err) {
  int rc = check_n("gelu backward", n, err);
  if (rc || n == 0) return rc;
  if (vec8_ok(n, pre, dy, dx))
    gelu_backward8_kernel<<<grid_for(n / 8), EW_THREADS, 0, s>>>((const uint4 *)pre, (const uint4 *)dy, n / 8,
                                                                 (uint4 *)dx);
  else
    gelu_backward_kernel<<<grid_for(n), EW_THREADS, 0, s>>>((const bf16 *)pre, (const bf16 *)dy, n, (bf16 *)dx);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

/* ------------------------------------------------------------------ column sums */

static __device__ float load_f(const float *p, int64_t i) { return p[i]; }
static __device__ float load_f(const bf16 *p, int64_t i) { return __bfloat162float(p[i]); }

/* Block (column tile, row block, matrix): sum of COL_ROWS rows of one column. part [count, R, N]. */
template <typename T>
static __global__ void colsum_partial_kernel(const T *x, int64_t M, int N, int64_t ld, int64_t x_stride, float *part) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= N) return;
  const T *xi = x + (int64_t)blockIdx.z * x_stride;
  const int64_t r0 = (int64_t)blockIdx.y * COL_ROWS;
  const int64_t r1 = r0 + COL_ROWS < M ? r0 + COL_ROWS : M;
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; r++) acc += load_f(xi, r * ld + j);
  part[((int64_t)blockIdx.z * gridDim.y + blockIdx.y) * N + j] = acc;
}

/* The same with V adjacent columns a thread (16-byte loads: 8 bf16 or 4 FP32), rows unrolled by 8
 * so that eight loads are in flight: each column is still summed over its rows in order, so the
 * partial sums are bit for bit those of colsum_partial_kernel. Needs N % V == 0 and 16-byte
 * aligned rows (colsum_vec_ok). */
static __device__ __forceinline__ void load_v(const float *p, float v[4]) {
  const float4 q = *(const float4 *)p;
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}
static __device__ __forceinline__ void load_v(const bf16 *p, float v[8]) { elmo_bf16x8_to_f32(p, v); }
template <typename T>
static __global__ void colsum_partial_vec_kernel(const T *x, int64_t M, int N, int64_t ld, int64_t x_stride, float *part) {
  constexpr int V = 16 / sizeof(T), U = 8;
  const int j = (blockIdx.x * blockDim.x + threadIdx.x) * V;
  if (j >= N) return;
  const T *xi = x + (int64_t)blockIdx.z * x_stride + j;
  const int64_t r0 = (int64_t)blockIdx.y * COL_ROWS;
  const int64_t r1 = r0 + COL_ROWS < M ? r0 + COL_ROWS : M;
  float acc[V];
#pragma unroll
  for (int e = 0; e < V; e++) acc[e] = 0.0f;
  int64_t r = r0;
  for (; r + U <= r1; r += U) {
    float v[U][V];
#pragma unroll
    for (int u = 0; u < U; u++) load_v(xi + (r + u) * ld, v[u]);
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
      for (int e = 0; e < V; e++) acc[e] += v[u][e];
  }
  for (; r < r1; r++) {
    float v[V];
    load_v(xi + r * ld, v);
#pragma unroll
    for (int e = 0; e < V; e++) acc[e] += v[e];
  }
  float *o = part + ((int64_t)blockIdx.z * gridDim.y + blockIdx.y) * N + j;
#pragma unroll
  for (int e = 0; e < V; e++) o[e] = acc[e];
}

template <typename T> static bool colsum_vec_ok(const T *x, int N, int64_t ld, int64_t x_stride) {
  constexpr int V = 16 / sizeof(T);
  return N % V == 0 && ld % V == 0 && x_stride % V == 0 && (uintptr_t)x % 16 == 0;
}

enum { FIN_COLS = 32, FIN_SLICES = 32 };

/* out_i[j] += sum over the R row blocks. Block (32 columns) x (32 slices), matrix blockIdx.y: slice y
 * sums blocks y, y + 32, ... in order, then slice 0 adds the 32 slice sums in order (a fixed order). */
static __global__ void colsum_finish_kernel(const float *part, int R, int N, float *out, int64_t out_stride) {
  __shared__ float acc_s[FIN_SLICES][FIN_COLS];
  const int x = threadIdx.x, y = threadIdx.y, j = blockIdx.x * FIN_COLS + x;
  const float *p = part + (int64_t)blockIdx.y * R * N;
  float acc = 0.0f;
  if (j < N)
    for (int r = y; r < R; r += FIN_SLICES) acc += p[(int64_t)r * N + j];
  acc_s[y][x] = acc;
  __syncthreads();
  if (y != 0 || j >= N) return;
  for (int k = 1; k < FIN_SLICES; k++) acc += acc_s[k][x];
  out[(int64_t)blockIdx.y * out_stride + j] += acc;
}

template <typename T>
static void colsum_launch(const T *x, int64_t M, int N, int64_t ld, int count, int64_t x_stride, float *out,
                          int64_t out_stride, float *ws, cudaStream_t s) {
  const int64_t R = (M + COL_ROWS - 1) / COL_ROWS;
  const unsigned tiles = (unsigned)((N + COL_THREADS - 1) / COL_THREADS);
  if (colsum_vec_ok(x, N, ld, x_stride)) {
    const int V = 16 / sizeof(T);
    const unsigned vtiles = (unsigned)((N / V + COL_THREADS - 1) / COL_THREADS);
    colsum_partial_vec_kernel<T><<<dim3(vtiles, (unsigned)R, (unsigned)count), COL_THREADS, 0, s>>>(x, M, N, ld, x_stride, ws);
  } else {
    colsum_partial_kernel<T><<<dim3(tiles, (unsigned)R, (unsigned)count), COL_THREADS, 0, s>>>(x, M, N, ld, x_stride, ws);
  }
  ELMO_LAUNCH_CHECK();
  elmo_cuda_colsum_finish(ws, R, N, count, out, out_stride, s);
}

/* gelu_backward8 and colsum_partial_vec<bf16> in one pass over [M, N] (N % 8 == 0, 16-byte rows): thread
 * (column group j, row block y) forms dx for 8 columns of rows y COL_ROWS .. and sums the rounded bf16
 * values, rows in order, so dx and the partial sums are bit for bit those of the two kernels (and
 * colsum_finish completes them). WITH_G: it also writes g = bf16(GELU(pre)), gelu_recompute8's bits,
 * from the same erff. Rows go two at a time, each loaded before it is written (dx may be dy, g may
 * be pre); four at a time held 80-96 registers a thread and ran at 27-32% of the warps (H200, DistilBERT-32
 * FFN: 119 us, 155 us with the E4M3 copy; two: 64 registers, 129 us with it).
 * dxq non-NULL: also each stored dx row in E4M3 times its row scale rs[r] (the FP8 input gradient's operand). */
template <bool WITH_G>
static __global__ void gelu_backward_colsum8_kernel(const uint4 *pre, const uint4 *dy, int64_t M, int N, uint4 *dx,
                                                    uint4 *g_out, float *part, uint2 *dxq, const float *rs) {
  constexpr int U = 2;
  const int j = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (j >= N) return;
  const int64_t r0 = (int64_t)blockIdx.y * COL_ROWS, r1 = r0 + COL_ROWS < M ? r0 + COL_ROWS : M, n8 = N / 8;
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; e++) acc[e] = 0.0f;
  for (int64_t r = r0; r < r1; r += U) {
    uint4 xp[U], gp[U];
    float sc[U];   /* the row scales, loaded with the rows (timed the same as loading them at the cast) */
#pragma unroll
    for (int u = 0; u < U; u++)
      if (r + u < r1) {
        xp[u] = pre[(r + u) * n8 + j / 8];
        gp[u] = dy[(r + u) * n8 + j / 8];
        sc[u] = dxq ? rs[r + u] : 0.0f;
      }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (r + u >= r1) break;
      float x[8], g[8];
      unpack8(xp[u], x);
      unpack8(gp[u], g);
      if (WITH_G) {
        float y[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
          float d;
          y[k] = gelu_and_grad(x[k], &d);
          g[k] *= d;
        }
        g_out[(r + u) * n8 + j / 8] = pack8(y);
      } else {
#pragma unroll
        for (int k = 0; k < 8; k++) g[k] *= gelu_grad(x[k]);
      }
      const uint4 q = pack8(g);
      dx[(r + u) * n8 + j / 8] = q;
      unpack8(q, g);
      if (dxq) dxq[(r + u) * n8 + j / 8] = e4m3x8(g, sc[u]);
#pragma unroll
      for (int e = 0; e < 8; e++) acc[e] += g[e];
    }
  }
  float *o = part + (int64_t)blockIdx.y * N + j;
#pragma unroll
  for (int e = 0; e < 8; e++) o[e] = acc[e];
}

/* dxq[i] = e4m3(dx[i] rs[i / N]) (the generic paths' E4M3 copy, after dx is stored). */
static __global__ void rowscale_cast_kernel(const bf16 *dx, int64_t M, int N, const float *rs, uint8_t *dxq) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < M * N; i += (int64_t)gridDim.x * blockDim.x)
    dxq[i] = e4m3x1(__bfloat162float(dx[i]) * rs[i / N]);
}

extern "C" int elmo_cuda_gelu_backward_colsum_q(const elmo_bf16 *pre, const elmo_bf16 *dy, int64_t M, int N,
                                                elmo_bf16 *dx, elmo_bf16 *g, float *out, float *ws, uint8_t *dxq,
                                                const float *rs, cudaStream_t s, elmo_err *err) {
  if (M < 0 || N < 1 || (M + COL_ROWS - 1) / COL_ROWS > 65535)
    return elmo_fail(err, ELMO_EINPUT, "gelu backward with column sums: %lld x %d (expected at most %d rows, "
                     "columns >= 1)", (long long)M, N, 65535 * COL_ROWS);
  if (dxq && !rs) return elmo_fail(err, ELMO_EINPUT, "gelu backward: an E4M3 copy without its row scales");
  if (M == 0) return ELMO_OK;
  if (N % 8 || !vec8_ok(M * N, pre, dy, dx) || (g && (uintptr_t)g % 16) || (uintptr_t)dxq % 8) {
    int rc = elmo_cuda_gelu_backward(pre, dy, M * N, dx, s, err);
    if (!rc && dxq) {
      const int64_t blocks = (M * N + 255) / 256;
      rowscale_cast_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, s>>>((const bf16 *)dx, M, N, rs, dxq);
      ELMO_LAUNCH_CHECK();
    }
    if (!rc && g) rc = elmo_cuda_gelu_recompute(pre, M * N, g, s, err);   /* after dx: g may be pre */
    return rc ? rc : elmo_cuda_colsum(dx, 1, M, N, 1, 0, out, 0, ws, s, err);
  }
  const int64_t R = (M + COL_ROWS - 1) / COL_ROWS;
  const dim3 grid((unsigned)((N / 8 + COL_THREADS - 1) / COL_THREADS), (unsigned)R);
  if (g)
    gelu_backward_colsum8_kernel<true><<<grid, COL_THREADS, 0, s>>>((const uint4 *)pre, (const uint4 *)dy, M, N,
                                                                    (uint4 *)dx, (uint4 *)g, ws, (uint2 *)dxq, rs);
  else
    gelu_backward_colsum8_kernel<false><<<grid, COL_THREADS, 0, s>>>((const uint4 *)pre, (const uint4 *)dy, M, N,
                                                                     (uint4 *)dx, NULL, ws, (uint2 *)dxq, rs);
  ELMO_LAUNCH_CHECK();
  elmo_cuda_colsum_finish(ws, R, N, 1, out, 0, s);
  return ELMO_OK;
}

extern "C" int elmo_cuda_gelu_backward_colsum(const elmo_bf16 *pre, const elmo_bf16 *dy, int64_t M, int N, elmo_bf16 *dx,
                                              elmo_bf16 *g, float *out, float *ws, cudaStream_t s, elmo_err *err) {
  return elmo_cuda_gelu_backward_colsum_q(pre, dy, M, N, dx, g, out, ws, NULL, NULL, s, err);
}

extern "C" void elmo_cuda_colsum_finish(const float *part, int64_t R, int N, int count, float *out,
                                        int64_t out_stride, cudaStream_t s) {
  if (R <= 0 || N <= 0 || count <= 0) return;
  colsum_finish_kernel<<<dim3((unsigned)((N + FIN_COLS - 1) / FIN_COLS), (unsigned)count), dim3(FIN_COLS, FIN_SLICES), 0,
                         s>>>(part, (int)R, N, out, out_stride);
  ELMO_LAUNCH_CHECK();
}

extern "C" int64_t elmo_cuda_colsum_ws_floats(int64_t M, int N, int count) {
  return (M + COL_ROWS - 1) / COL_ROWS * (int64_t)N * count;
}

extern "C" int elmo_cuda_colsum_ld(const void *x, int x_bf16, int64_t M, int N, int64_t ld, int count,
                                   int64_t x_stride, float *out, int64_t out_stride, float *ws, cudaStream_t s,
                                   elmo_err *err) {
  if (M < 0 || N < 1 || ld < N || count < 1 || count > 65535 || (M + COL_ROWS - 1) / COL_ROWS > 65535)
    return elmo_fail(err, ELMO_EINPUT, "column sums: %d matrices of %lld x %d, row stride %lld (expected 1..65535 "
                     "matrices, at most %d rows, columns >= 1, stride >= columns)", count, (long long)M, N,
                     (long long)ld, 65535 * COL_ROWS);
  if (M == 0) return ELMO_OK;
  if (x_bf16)
    colsum_launch((const bf16 *)x, M, N, ld, count, x_stride, out, out_stride, ws, s);
  else
    colsum_launch((const float *)x, M, N, ld, count, x_stride, out, out_stride, ws, s);
  return ELMO_OK;
}

extern "C" int elmo_cuda_colsum(const void *x, int x_bf16, int64_t M, int N, int count, int64_t x_stride,
                                float *out, int64_t out_stride, float *ws, cudaStream_t s, elmo_err *err) {
  return elmo_cuda_colsum_ld(x, x_bf16, M, N, N, count, x_stride, out, out_stride, ws, s, err);
}
