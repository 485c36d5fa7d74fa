/* classifier.cu: chunked fused classifier step on the device: logits and dX through cuBLASLt,
 * the gradient kernel (BCE partials), and the fused tensor-core SGD + SR update (classifier.h). */
#include "classifier.h"
#include "check.h"
#include "convert.h"

#include "numerics.h"

#include <cuda_bf16.h>
#include <mma.h>

/* ---- sizes and layout ------------------------------------------------------------------- */

static int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }
static int64_t grad_tiles(int64_t n) { return (n + ELMO_CUDA_GRAD_TILE - 1) / ELMO_CUDA_GRAD_TILE; }
static size_t z_elem(elmo_dtype t) { return t == ELMO_F32 ? 4 : 2; }

/* z must also hold FP32 logits of at least 16 labels for prediction. */
static size_t z_bytes_for(elmo_dtype t, int64_t B_cap, int64_t chunk) {
  size_t a = (size_t)(B_cap * chunk) * z_elem(t), b = (size_t)(B_cap * 16) * 4;
  return a > b ? a : b;
}

extern "C" size_t elmo_cuda_cls_chunk_bytes(elmo_dtype dtype, int64_t d, int64_t B_cap, int64_t chunk) {
  size_t n = elmo_pool_round(z_bytes_for(dtype, B_cap, chunk));
  if (dtype == ELMO_FP8) n += elmo_pool_round((size_t)(chunk * d) * 2);
  n += elmo_pool_round(sizeof(double) * (size_t)(B_cap * grad_tiles(chunk))) + elmo_pool_round(sizeof(double));
  return n;
}

extern "C" void elmo_cuda_cls_layout(elmo_cuda_cls *c, elmo_pool *p) {
  size_t bd = (size_t)(c->B_cap * c->d);
  c->Xq8 = c->fp8_input ? (uint8_t *)elmo_pool_take(p, bd, ELMO_MEM_ACTIVATIONS) : NULL;
  c->Xq16 = (uint16_t *)elmo_pool_take(p, bd * 2, ELMO_MEM_ACTIVATIONS);
  c->Xq32 = c->dtype == ELMO_F32 ? (float *)elmo_pool_take(p, bd * 4, ELMO_MEM_ACTIVATIONS) : NULL;
  c->z_bytes = z_bytes_for(c->dtype, c->B_cap, c->chunk);
  c->z = elmo_pool_take(p, c->z_bytes, ELMO_MEM_CHUNK);
  c->Wc16 = c->dtype == ELMO_FP8 ? (uint16_t *)elmo_pool_take(p, (size_t)(c->chunk * c->d) * 2, ELMO_MEM_CHUNK) : NULL;
  c->loss_part = (double *)elmo_pool_take(p, sizeof(double) * (size_t)(c->B_cap * grad_tiles(c->chunk)), ELMO_MEM_CHUNK);
  c->loss = (double *)elmo_pool_take(p, sizeof(double), ELMO_MEM_CHUNK);
  c->widened_l0 = -1;
}

/* ---- GEMM descriptions ------------------------------------------------------------------- */

/* z^T [n, Bp] = W_c [n, d] . Xq^T: the TN form (W row-major [n, d] = column-major [d, n]). */
static elmo_gemm logits_gemm(const elmo_cuda_cls *c, int64_t Bp, int64_t l0, int64_t n, int fp8, int f32_out) {
  elmo_gemm g;
  memset(&g, 0, sizeof g);
  g.transa = 1;
  g.m = n;
  g.n = Bp;
  g.k = c->d;
  g.lda = g.ldb = c->d;
  g.ldd = n;
  g.D = c->z;
  if (c->dtype == ELMO_F32) {
    g.ta = g.tb = g.td = ELMO_F32;
    g.A = (const float *)c->W + l0 * c->d;
    g.B = c->Xq32;
    return g;
  }
  g.td = (f32_out || c->dtype == ELMO_F32) ? ELMO_F32 : ELMO_BF16;
  if (fp8) {
    g.ta = g.tb = ELMO_FP8;
    g.A = (const uint8_t *)c->W + l0 * c->d;
    g.B = c->Xq8;
  } else {
    g.ta = g.tb = ELMO_BF16;
    g.A = c->dtype == ELMO_FP8 ? (const void *)c->Wc16 : (const void *)((const uint16_t *)c->W + l0 * c->d);
    g.B = c->Xq16;
  }
  return g;
}

/* dX^T [d, B] += W_c^T [d, n] . G^T [n, B]: W row-major [n, d] is column-major [d, n]. */
static elmo_gemm dx_gemm(const elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, float *dX) {
  elmo_gemm g;
  memset(&g, 0, sizeof g);
  g.m = c->d;
  g.n = B;
  g.k = n;
  g.lda = c->d;
  g.ldb = n;
  g.ldd = c->d;
  g.B = c->z;
  g.D = dX;
  g.td = ELMO_F32;
  g.accumulate = 1;
  if (c->dtype == ELMO_F32) {
    g.ta = g.tb = ELMO_F32;
    g.A = (const float *)c->W + l0 * c->d;
  } else {
    g.ta = g.tb = ELMO_BF16;
    g.A = c->dtype == ELMO_FP8 ? (const void *)c->Wc16 : (const void *)((const uint16_t *)c->W + l0 * c->d);
  }
  return g;
}

static void log_path(FILE *log, const char *op, const elmo_gemm *g, const char *how) {
  if (log) fprintf(log, "elmo cuda: %-22s %-22s %s\n", op, elmo_blas_types(g), how);
}

extern "C" void elmo_cuda_cls_init_paths(elmo_cuda_cls *c, FILE *log) {
  int want_fp8 = c->dtype == ELMO_FP8 && c->fp8_input;
  elmo_gemm g8 = logits_gemm(c, c->B_cap, 0, c->chunk, 1, 0), g8f = logits_gemm(c, c->B_cap, 0, c->chunk, 1, 1);
  c->fp8_logits = want_fp8 && elmo_blas_supported(c->blas, &g8);
  c->fp8_logits_f32 = want_fp8 && elmo_blas_supported(c->blas, &g8f);
  elmo_gemm gt = logits_gemm(c, c->B_cap, 0, c->chunk, c->fp8_logits, 0);
  elmo_gemm gp = logits_gemm(c, c->B_cap, 0, c->chunk, c->fp8_logits_f32, 1);
  const char *tc = c->dtype == ELMO_F32 ? "FP32 reference GEMM (no tensor cores)"
                   : c->fp8_logits ? "FP8 tensor cores (cuBLASLt, scale 1)"
                   : want_fp8 ? "BF16 FALLBACK: no FP8 GEMM on this device (W chunk widened to bf16)"
                   : c->dtype == ELMO_FP8 ? "BF16 tensor cores (W chunk widened, input kept bf16)"
                                          : "BF16 tensor cores";
  log_path(log, "classifier logits", &gt, tc);
  log_path(log, "prediction logits", &gp, c->fp8_logits_f32 ? "FP8 tensor cores, FP32 out"
                                          : want_fp8 ? "BF16 FALLBACK (W chunk widened), FP32 out" : "FP32 out");
  elmo_gemm gd = dx_gemm(c, c->B_cap, 0, c->chunk, NULL);
  log_path(log, "classifier dX", &gd, c->dtype == ELMO_FP8 ? "BF16 tensor cores (W chunk widened from e4m3)"
                                      : c->dtype == ELMO_F32 ? "FP32 reference GEMM" : "BF16 tensor cores");
  if (log)
    fprintf(log, "elmo cuda: %-22s %-22s %s\n", "classifier update", "G^T Xq bf16 -> fp32",
            "fused WMMA tiles (BF16 tensor cores) + SGD + stochastic rounding, no gradient buffer");
}

/* ---- cast and widen ----------------------------------------------------------------------- */

extern "C" void elmo_cuda_cls_cast(elmo_cuda_cls *c, const float *X, int64_t B, cudaStream_t s) {
  elmo_cuda_cast_input(X, B, round16(B), c->d, c->fp8_input, c->Xq8, c->Xq16, c->Xq32, s);
}

/* Wc16 <- bf16(W[l0:l0+n]) unless already there. */
static void widen_chunk(elmo_cuda_cls *c, int64_t l0, int64_t n, cudaStream_t s) {
  if (c->dtype != ELMO_FP8 || (c->widened_l0 == l0 && c->widened_n == n)) return;
  elmo_cuda_fp8_to_bf16((const uint8_t *)c->W + l0 * c->d, c->Wc16, n * c->d, s);
  c->widened_l0 = l0;
  c->widened_n = n;
}

extern "C" void elmo_cuda_cls_logits(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, int f32_out, cudaStream_t s) {
  size_t need = (size_t)(round16(B) * n) * (f32_out ? 4 : z_elem(c->dtype));
  if (need > c->z_bytes || n > c->chunk || B > c->B_cap) {
    fprintf(stderr, "elmo: internal error: logits of %lld rows x %lld labels do not fit the chunk buffer (%zu bytes)\n",
            (long long)B, (long long)n, c->z_bytes);
    abort();
  }
  int fp8 = f32_out ? c->fp8_logits_f32 : c->fp8_logits;
  if (!fp8) widen_chunk(c, l0, n, s);
  elmo_gemm g = logits_gemm(c, round16(B), l0, n, fp8, f32_out);
  elmo_blas_run(c->blas, &g, s);
}

extern "C" void elmo_cuda_cls_dx(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, float *dX, cudaStream_t s) {
  widen_chunk(c, l0, n, s);
  elmo_gemm g = dx_gemm(c, B, l0, n, dX);
  elmo_blas_run(c->blas, &g, s);
}

/* ---- gradient: G = bf16(sigmoid(z) - y) and BCE partials ---------------------------------- */

#define GRAD_THREADS 256

static __device__ __forceinline__ float z_load(const uint16_t *z, int64_t i) { return elmo_bf16_to_f32(z[i]); }
static __device__ __forceinline__ float z_load(const float *z, int64_t i) {
  return elmo_bf16_to_f32(elmo_f32_to_bf16(z[i])); /* the CPU stores logits in bf16 */
}
static __device__ __forceinline__ void z_store(uint16_t *z, int64_t i, float g) { z[i] = elmo_f32_to_bf16(g); }
static __device__ __forceinline__ void z_store(float *z, int64_t i, float g) {
  z[i] = elmo_bf16_to_f32(elmo_f32_to_bf16(g));
}

/* Is `label` among y[lo, hi) (sorted)? */
static __device__ int is_positive(const int32_t *y, int64_t lo, int64_t hi, int64_t label) {
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (y[mid] == label) return 1;
    if (y[mid] < label) lo = mid + 1; else hi = mid;
  }
  return 0;
}

/* First position in y[lo, hi) with y >= v. */
static __device__ int64_t lower_bound(const int32_t *y, int64_t lo, int64_t hi, int64_t v) {
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (y[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/* Fixed-order block sum of one double per thread (blockDim.x == GRAD_THREADS). */
static __device__ double block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = GRAD_THREADS / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  return sh[0];
}

/* grid (tiles of ELMO_CUDA_GRAD_TILE labels, B rows). */
template <typename ZT>
static __global__ void __launch_bounds__(GRAD_THREADS)
grad_kernel(ZT *z, int64_t n, int64_t l0, int64_t L, const int64_t *y_indptr, const int32_t *y_indices,
            int want_loss, double *part) {
  __shared__ double sh[GRAD_THREADS];
  __shared__ int64_t range[2];
  const int64_t b = blockIdx.y, t0 = (int64_t)blockIdx.x * ELMO_CUDA_GRAD_TILE;
  const int64_t t1 = t0 + ELMO_CUDA_GRAD_TILE < n ? t0 + ELMO_CUDA_GRAD_TILE : n;
  if (threadIdx.x == 0) {
    int64_t s = y_indptr[b], e = y_indptr[b + 1];
    range[0] = lower_bound(y_indices, s, e, l0 + t0);
    range[1] = lower_bound(y_indices, range[0], e, l0 + t1);
  }
  __syncthreads();
  const int64_t lo = range[0], hi = range[1];
  double loss = 0.0;
  ZT *zr = z + b * n;
  for (int64_t j = t0 + threadIdx.x; j < t1; j += GRAD_THREADS) {
    const int64_t label = l0 + j;
    if (label >= L) { z_store(zr, j, 0.0f); continue; }
    const float v = z_load(zr, j);
    const int pos = hi > lo && is_positive(y_indices, lo, hi, label);
    if (want_loss) {
      loss += (double)(fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v))));
      if (pos) loss -= (double)v;
    }
    float g = 1.0f / (1.0f + expf(-v));
    if (pos) g -= 1.0f;
    z_store(zr, j, g);
  }
  if (want_loss) {
    double sum = block_sum(loss, sh);
    if (threadIdx.x == 0) part[(int64_t)blockIdx.y * gridDim.x + blockIdx.x] = sum;
  }
}

/* *acc += sum(part[0..n)) in a fixed order (one block). */
static __global__ void __launch_bounds__(GRAD_THREADS) loss_reduce_kernel(const double *part, int64_t n, double *acc) {
  __shared__ double sh[GRAD_THREADS];
  double v = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += GRAD_THREADS) v += part[i];
  double sum = block_sum(v, sh);
  if (threadIdx.x == 0) *acc += sum;
}

extern "C" void elmo_cuda_cls_grad(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                                   const int32_t *y_indices, int want_loss, cudaStream_t s) {
  if (B <= 0) return;
  dim3 grid((unsigned)grad_tiles(n), (unsigned)B);
  if (c->dtype == ELMO_F32)
    grad_kernel<float><<<grid, GRAD_THREADS, 0, s>>>((float *)c->z, n, l0, c->L, y_indptr, y_indices, want_loss,
                                                     c->loss_part);
  else
    grad_kernel<uint16_t><<<grid, GRAD_THREADS, 0, s>>>((uint16_t *)c->z, n, l0, c->L, y_indptr, y_indices,
                                                        want_loss, c->loss_part);
  ELMO_LAUNCH_CHECK();
  if (want_loss) {
    loss_reduce_kernel<<<1, GRAD_THREADS, 0, s>>>(c->loss_part, (int64_t)grid.x * B, c->loss);
    ELMO_LAUNCH_CHECK();
  }
}

/* ---- fused update: W <- SR(W - lr (G^T Xq + wd W)) ---------------------------------------- */

#define UT_L 64        /* labels per block */
#define UT_K 128       /* features per block */
#define UT_B 32        /* batch rows per stage */
#define UT_THREADS 256 /* 8 warps: 2 (labels) x 4 (features), each 32 x 32 */
#define SG_LD (UT_L + 8)
#define SX_LD (UT_K + 8)
#define ACC_LD (UT_K + 4)
#define X_VECS (UT_B * UT_K / 8 / UT_THREADS) /* 16-byte pieces of Xq per thread and stage */

struct update_args {
  void *W;
  int64_t d, L, l0, n, B;
  uint16_t *kahan;
  const int32_t *head_slot;
  const void *G;                /* [B, n] bf16 codes or FP32 */
  const uint16_t *Xq16;         /* [B, d] */
  float lr, wd;
  uint64_t seed, step;
  int k_tiles;                  /* feature tiles per label tile */
};

/* The stage buffers (rows b0..b0+UT_B of G^T and Xq, bf16) share memory with the accumulator
 * tile, which is only written after the last stage. */
union update_smem {
  struct {
    __nv_bfloat16 g[UT_B][SG_LD];   /* G^T tile, stored [b][label]: column-major for WMMA a */
    __nv_bfloat16 x[UT_B][SX_LD];   /* Xq tile [b][feature] */
  } st;
  float acc[UT_L][ACC_LD];
};

/* One thread's share of a stage, fetched into registers ahead of use: 8 labels of one row of G
 * and X_VECS x 8 features of Xq, all as bf16 codes. */
struct stage_regs {
  uint4 g;
  uint4 x[X_VECS];
};

static __device__ __forceinline__ uint4 fetch_g8(const uint16_t *G, const update_args &a, int64_t b, int64_t j) {
  return *(const uint4 *)(G + b * a.n + j);
}

static __device__ __forceinline__ uint4 fetch_g8(const float *G, const update_args &a, int64_t b, int64_t j) {
  /* FP32 G holds bf16-exact values: their top halves are the bf16 codes */
  const float4 p = *(const float4 *)(G + b * a.n + j), q = *(const float4 *)(G + b * a.n + j + 4);
  uint4 r;
  r.x = (elmo_f32_bits(p.x) >> 16) | (elmo_f32_bits(p.y) & 0xFFFF0000u);
  r.y = (elmo_f32_bits(p.z) >> 16) | (elmo_f32_bits(p.w) & 0xFFFF0000u);
  r.z = (elmo_f32_bits(q.x) >> 16) | (elmo_f32_bits(q.y) & 0xFFFF0000u);
  r.w = (elmo_f32_bits(q.z) >> 16) | (elmo_f32_bits(q.w) & 0xFFFF0000u);
  return r;
}

/* Rows >= B, labels >= n and features >= d read as zeros (n and d are multiples of 8). */
template <typename GT>
static __device__ void fetch_stage(const update_args &a, int64_t b0, int64_t j0, int64_t k0, stage_regs &r) {
  const int t = threadIdx.x;
  const int gr = t / (UT_L / 8), gv = t % (UT_L / 8);
  const int64_t gb = b0 + gr, gj = j0 + gv * 8;
  r.g = gb < a.B && gj < a.n ? fetch_g8((const GT *)a.G, a, gb, gj) : make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int q = 0; q < X_VECS; q++) {
    const int i = t + q * UT_THREADS, xr = i / (UT_K / 8), xv = i % (UT_K / 8);
    const int64_t xb = b0 + xr, xk = k0 + xv * 8;
    r.x[q] = xb < a.B && xk < a.d ? *(const uint4 *)(a.Xq16 + xb * a.d + xk) : make_uint4(0, 0, 0, 0);
  }
}

static __device__ void put_stage(const stage_regs &r, update_smem &sm) {
  const int t = threadIdx.x;
  *(uint4 *)&sm.st.g[t / (UT_L / 8)][(t % (UT_L / 8)) * 8] = r.g;
#pragma unroll
  for (int q = 0; q < X_VECS; q++) {
    const int i = t + q * UT_THREADS;
    *(uint4 *)&sm.st.x[i / (UT_K / 8)][(i % (UT_K / 8)) * 8] = r.x[q];
  }
}

/* Four consecutive weights (l, k..k+3) as FP32, and their store with SR / RN. */
template <int DT> static __device__ void load4(const void *W, int64_t i, float p[4]);
template <> __device__ void load4<ELMO_FP8>(const void *W, int64_t i, float p[4]) {
  uchar4 q = *(const uchar4 *)((const uint8_t *)W + i);
  p[0] = elmo_fp8_to_f32(q.x); p[1] = elmo_fp8_to_f32(q.y); p[2] = elmo_fp8_to_f32(q.z); p[3] = elmo_fp8_to_f32(q.w);
}
template <> __device__ void load4<ELMO_BF16>(const void *W, int64_t i, float p[4]) {
  ushort4 q = *(const ushort4 *)((const uint16_t *)W + i);
  p[0] = elmo_bf16_to_f32(q.x); p[1] = elmo_bf16_to_f32(q.y); p[2] = elmo_bf16_to_f32(q.z); p[3] = elmo_bf16_to_f32(q.w);
}
template <> __device__ void load4<ELMO_F32>(const void *W, int64_t i, float p[4]) {
  float4 q = *(const float4 *)((const float *)W + i);
  p[0] = q.x; p[1] = q.y; p[2] = q.z; p[3] = q.w;
}

/* Stores v[0..3]; sr: stochastic with bits r, else round to nearest. Returns the stored values in q. */
template <int DT> static __device__ void store4(void *W, int64_t i, const float v[4], const uint32_t *r, float q[4]);
template <> __device__ void store4<ELMO_FP8>(void *W, int64_t i, const float v[4], const uint32_t *r, float q[4]) {
  uint8_t c[4];
  for (int e = 0; e < 4; e++) {
    c[e] = r ? elmo_sr_fp8(v[e], r[e]) : elmo_f32_to_fp8(v[e]);
    q[e] = elmo_fp8_to_f32(c[e]);
  }
  *(uchar4 *)((uint8_t *)W + i) = make_uchar4(c[0], c[1], c[2], c[3]);
}
template <> __device__ void store4<ELMO_BF16>(void *W, int64_t i, const float v[4], const uint32_t *r, float q[4]) {
  uint16_t c[4];
  for (int e = 0; e < 4; e++) {
    c[e] = r ? elmo_sr_bf16(v[e], r[e]) : elmo_f32_to_bf16(v[e]);
    q[e] = elmo_bf16_to_f32(c[e]);
  }
  *(ushort4 *)((uint16_t *)W + i) = make_ushort4(c[0], c[1], c[2], c[3]);
}
template <> __device__ void store4<ELMO_F32>(void *W, int64_t i, const float v[4], const uint32_t *r, float q[4]) {
  for (int e = 0; e < 4; e++) q[e] = v[e];
  *(float4 *)((float *)W + i) = make_float4(v[0], v[1], v[2], v[3]);
}

/* Applies the update to weights (l, k..k+3) given their gradient sums. Non-contracted float
 * operations in the CPU's order, so equal gradients give equal bits. */
template <int DT> static __device__ void update4(const update_args &a, int64_t l, int64_t k, const float grad[4]) {
  const int64_t i = l * a.d + k;
  float p[4], delta[4], v[4], q[4];
  load4<DT>(a.W, i, p);
  for (int e = 0; e < 4; e++) delta[e] = __fmul_rn(-a.lr, __fadd_rn(grad[e], __fmul_rn(a.wd, p[e])));
  const int32_t slot = a.head_slot ? a.head_slot[l] : -1;
  if (slot >= 0 && a.kahan) {
    uint16_t *c = a.kahan + (int64_t)slot * a.d + k;
    float u[4];
    for (int e = 0; e < 4; e++) {
      u[e] = __fadd_rn(delta[e], elmo_bf16_to_f32(c[e]));
      v[e] = __fadd_rn(p[e], u[e]);
    }
    store4<DT>(a.W, i, v, NULL, q);
    for (int e = 0; e < 4; e++) c[e] = elmo_f32_to_bf16(__fsub_rn(u[e], __fsub_rn(q[e], p[e])));
    return;
  }
  uint32_t r[4];
  elmo_rand_block(a.seed, a.step, ELMO_RNG_CLS_SR, (uint64_t)i >> 2, r);
  for (int e = 0; e < 4; e++) v[e] = __fadd_rn(p[e], delta[e]);
  store4<DT>(a.W, i, v, r, q);
}

/* 1-D grid: block i takes label tile i / k_tiles and feature tile i % k_tiles, so the blocks
 * that share a tile of G run together and find it in L2. */
template <typename GT, int DT>
static __global__ void __launch_bounds__(UT_THREADS, 3) update_kernel(update_args a) {
  using namespace nvcuda;
  __shared__ __align__(32) update_smem sm;
  const int64_t j0 = (int64_t)(blockIdx.x / a.k_tiles) * UT_L, k0 = (int64_t)(blockIdx.x % a.k_tiles) * UT_K;
  const int warp = threadIdx.x / 32, wl = warp / 4, wk = warp % 4;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
  stage_regs r;
  fetch_stage<GT>(a, 0, j0, k0, r);
  for (int64_t b0 = 0; b0 < a.B; b0 += UT_B) {
    put_stage(r, sm);
    __syncthreads();
    if (b0 + UT_B < a.B) fetch_stage<GT>(a, b0 + UT_B, j0, k0, r); /* in flight during the MMAs */
#pragma unroll
    for (int kb = 0; kb < UT_B; kb += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], &sm.st.g[kb][wl * 32 + i * 16], SG_LD);
      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], &sm.st.x[kb][wk * 32 + j * 16], SX_LD);
      for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++)
      wmma::store_matrix_sync(&sm.acc[wl * 32 + i * 16][wk * 32 + j * 16], acc[i][j], ACC_LD, wmma::mem_row_major);
  __syncthreads();
  for (int g = threadIdx.x; g < UT_L * UT_K / 4; g += UT_THREADS) {
    const int li = g / (UT_K / 4), kk = (g % (UT_K / 4)) * 4;
    const int64_t j = j0 + li, l = a.l0 + j, k = k0 + kk;
    if (j >= a.n || l >= a.L || k >= a.d) continue; /* padded rows stay zero */
    const float4 gr = *(const float4 *)&sm.acc[li][kk];
    const float grad[4] = {gr.x, gr.y, gr.z, gr.w};
    update4<DT>(a, l, k, grad);
  }
}

extern "C" void elmo_cuda_cls_update(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const elmo_cls_hyper *h,
                                     cudaStream_t s) {
  if (n <= 0) return;
  update_args a;
  a.W = c->W;
  a.d = c->d;
  a.L = c->L;
  a.l0 = l0;
  a.n = n;
  a.B = B;
  a.kahan = c->kahan;
  a.head_slot = c->head_slot;
  a.G = c->z;
  a.Xq16 = c->Xq16;
  a.lr = (float)h->lr;
  a.wd = (float)h->weight_decay;
  a.seed = h->seed;
  a.step = (uint64_t)h->step;
  a.k_tiles = (int)((c->d + UT_K - 1) / UT_K);
  const int64_t blocks = (n + UT_L - 1) / UT_L * a.k_tiles;
  if (blocks > 0x7FFFFFFF) {
    fprintf(stderr, "elmo: internal error: classifier chunk of %lld labels is too large for one launch\n", (long long)n);
    abort();
  }
  const unsigned grid = (unsigned)blocks;
  switch (c->dtype) {
    case ELMO_FP8: update_kernel<uint16_t, ELMO_FP8><<<grid, UT_THREADS, 0, s>>>(a); break;
    case ELMO_BF16: update_kernel<uint16_t, ELMO_BF16><<<grid, UT_THREADS, 0, s>>>(a); break;
    default: update_kernel<float, ELMO_F32><<<grid, UT_THREADS, 0, s>>>(a); break;
  }
  ELMO_LAUNCH_CHECK();
}

/* ---- the step ------------------------------------------------------------------------------ */

extern "C" void elmo_cuda_cls_step(elmo_cuda_cls *c, const float *X, int64_t B, const int64_t *y_indptr,
                                   const int32_t *y_indices, const elmo_cls_hyper *h, int want_loss, float *dX,
                                   cudaStream_t s) {
  elmo_cuda_cls_cast(c, X, B, s);
  ELMO_CUDA_CHECK(cudaMemsetAsync(dX, 0, sizeof(float) * (size_t)(B * c->d), s));
  ELMO_CUDA_CHECK(cudaMemsetAsync(c->loss, 0, sizeof(double), s));
  c->widened_l0 = -1; /* W changed since the last widening */
  for (int64_t l0 = 0; l0 < c->L_pad; l0 += c->chunk) {
    int64_t n = c->L_pad - l0 < c->chunk ? c->L_pad - l0 : c->chunk;
    elmo_cuda_cls_logits(c, B, l0, n, 0, s);
    elmo_cuda_cls_grad(c, B, l0, n, y_indptr, y_indices, want_loss, s);
    elmo_cuda_cls_dx(c, B, l0, n, dX, s);
    elmo_cuda_cls_update(c, B, l0, n, h, s);
  }
  c->widened_l0 = -1;
}

extern "C" int64_t elmo_cuda_cls_predict_span(const elmo_cuda_cls *c, int64_t B) {
  int64_t span = (int64_t)(c->z_bytes / ((size_t)round16(B) * 4)) / 16 * 16;
  if (span > c->L_pad) span = c->L_pad;
  if (c->dtype == ELMO_FP8 && span > c->chunk) span = c->chunk; /* Wc16 holds one chunk */
  return span;
}
