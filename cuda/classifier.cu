/* classifier.cu: chunked fused classifier step on the device (classifier.h): scratch layout, the
 * logits through cuBLASLt, the gradient kernel (BCE partials), and the step that runs the ops
 * piece by piece; the tensor-core update and dX kernels are in classifier_fast.cu. */
#include "classifier.h"
#include "check.h"
#include "classifier_fast.h"
#include "convert.h"

#include "numerics.h"

/* ---- sizes and layout ------------------------------------------------------------------- */

static int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }
static int64_t grad_tiles(int64_t n) { return (n + ELMO_CUDA_GRAD_TILE - 1) / ELMO_CUDA_GRAD_TILE; }
static size_t z_elem(elmo_dtype t) { return t == ELMO_F32 ? 4 : 2; }

/* z must also hold FP32 logits of at least 16 labels for prediction. */
static size_t z_bytes_for(elmo_dtype t, int64_t B_cap, int64_t chunk) {
  size_t a = (size_t)(B_cap * chunk) * z_elem(t), b = (size_t)(B_cap * 16) * 4;
  return a > b ? a : b;
}

/* The dX partial sums (e4m3 / bf16 weights; fp32 weights accumulate through cuBLASLt). */
static size_t dx_part_bytes(elmo_dtype t, int64_t B_cap, int64_t d) {
  return t == ELMO_F32 ? 0 : sizeof(float) * (size_t)(elmo_cuda_cls_dx_slices(t, B_cap, d) * B_cap * d);
}

/* FP8 tensor cores (sm_89 and newer). Without a device (planning on a build machine) the plan
 * assumes them, as on the H100 it is made for. ELMO_NO_FP8_GEMM=1 in the environment takes them away
 * (an Ampere card's paths, for tests on newer cards). */
extern "C" int elmo_cuda_fp8_gemm_ok(void) {
  const char *e = getenv("ELMO_NO_FP8_GEMM");
  if (e && strcmp(e, "1") == 0) return 0;
  int dev;
  cudaDeviceProp prop;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return prop.major * 10 + prop.minor >= 89;
}

extern "C" void elmo_cuda_cls_layout(elmo_cuda_cls *c, elmo_pool *p) {
  size_t bd = (size_t)(c->B_cap * c->d);
  c->Xq8 = c->fp8_input ? (uint8_t *)elmo_pool_take(p, bd, ELMO_MEM_ACTIVATIONS) : NULL;
  c->Xq16 = (uint16_t *)elmo_pool_take(p, bd * 2, ELMO_MEM_ACTIVATIONS);
  c->Xp16 = (uint16_t *)elmo_pool_take(p, (size_t)(c->B_cap * elmo_cuda_cls_xp_cols(c->d)) * 2, ELMO_MEM_ACTIVATIONS);
  c->Xt16 = c->dtype == ELMO_FP8
                ? (uint16_t *)elmo_pool_take(p, (size_t)(elmo_cuda_cls_xp_cols(c->d) * elmo_cuda_cls_xt_cols(c->B_cap)) * 2,
                                             ELMO_MEM_ACTIVATIONS)
                : NULL;
  c->Xq32 = c->dtype == ELMO_F32 ? (float *)elmo_pool_take(p, bd * 4, ELMO_MEM_ACTIVATIONS) : NULL;
  c->z_bytes = z_bytes_for(c->dtype, c->B_cap, c->chunk);
  c->z = elmo_pool_take(p, c->z_bytes, ELMO_MEM_CHUNK);
  /* The BF16 copy of a W chunk only serves the bf16-input logits and the no-FP8-GEMM fallback. */
  int widen = c->dtype == ELMO_FP8 && (!c->fp8_input || !elmo_cuda_fp8_gemm_ok());
  c->Wc16 = widen ? (uint16_t *)elmo_pool_take(p, (size_t)(c->chunk * c->d) * 2, ELMO_MEM_CHUNK) : NULL;
  c->loss_part = (double *)elmo_pool_take(p, sizeof(double) * (size_t)(c->B_cap * grad_tiles(c->chunk)), ELMO_MEM_CHUNK);
  c->loss = (double *)elmo_pool_take(p, sizeof(double), ELMO_MEM_CHUNK);
  c->dx_slices = elmo_cuda_cls_dx_slices(c->dtype, c->B_cap, c->d);
  c->dx_part = c->dtype != ELMO_F32 ? (float *)elmo_pool_take(p, dx_part_bytes(c->dtype, c->B_cap, c->d), ELMO_MEM_CHUNK)
                                    : NULL;
  c->grad_tab = (uint16_t *)elmo_pool_take(p, 2 * 65536 * sizeof(uint16_t), ELMO_MEM_CHUNK);
  c->xp_rows = -1;
  c->pdl_step = 0;
  c->grad_tab_ready = 0;
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
    g.fast_accum = elmo_cuda_fp8_fast_accum();
  } else {
    g.ta = g.tb = ELMO_BF16;
    g.A = c->dtype == ELMO_FP8 ? (const void *)c->Wc16 : (const void *)((const uint16_t *)c->W + l0 * c->d);
    g.B = c->Xq16;
  }
  return g;
}

/* dX^T [d, B] += W_c^T [d, n] . G^T [n, B] for fp32 weights: W row-major [n, d] is column-major
 * [d, n]. (e4m3 / bf16 weights take the tensor-core kernel of classifier_fast.cu.) */
static elmo_gemm dx_gemm(const elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, float *dX) {
  elmo_gemm g;
  memset(&g, 0, sizeof g);
  g.m = c->d;
  g.n = B;
  g.k = n;
  g.lda = c->d;
  g.ldb = n;
  g.ldd = c->d;
  g.A = (const float *)c->W + l0 * c->d;
  g.B = c->z;
  g.D = dX;
  g.ta = g.tb = g.td = ELMO_F32;
  g.accumulate = 1;
  return g;
}

static void init_piece(elmo_cuda_cls *c, FILE *log);

static void log_path(FILE *log, const char *op, const elmo_gemm *g, const char *how) {
  if (log) fprintf(log, "elmo cuda: %-22s %-22s %s\n", op, elmo_blas_types(g), how);
}

extern "C" void elmo_cuda_cls_init_paths(elmo_cuda_cls *c, FILE *log) {
  int want_fp8 = c->dtype == ELMO_FP8 && c->fp8_input, can_fp8 = want_fp8 && elmo_cuda_fp8_gemm_ok();
  elmo_gemm g8 = logits_gemm(c, c->B_cap, 0, c->chunk, 1, 0), g8f = logits_gemm(c, c->B_cap, 0, c->chunk, 1, 1);
  c->fp8_logits = can_fp8 && elmo_blas_supported(c->blas, &g8);
  c->fp8_logits_f32 = can_fp8 && elmo_blas_supported(c->blas, &g8f);
  if (want_fp8 && (!c->fp8_logits || !c->fp8_logits_f32) && !c->Wc16)
    elmo_cuda_die("cuBLASLt offers no FP8 logits GEMM for this shape on this FP8-capable device; "
                  "set model.classifier.input_dtype=bf16", "elmo_cuda_cls_init_paths", __FILE__, __LINE__);
  elmo_gemm gt = logits_gemm(c, c->B_cap, 0, c->chunk, c->fp8_logits, 0);
  elmo_gemm gp = logits_gemm(c, c->B_cap, 0, c->chunk, c->fp8_logits_f32, 1);
  const char *tc = c->dtype == ELMO_F32 ? "FP32 reference GEMM (no tensor cores)"
                   : c->fp8_logits ? (elmo_cuda_fp8_fast_accum() ? "FP8 tensor cores (cuBLASLt, scale 1, fast accumulation)"
                                                                 : "FP8 tensor cores (cuBLASLt, scale 1, promoted every 128 features)")
                   : want_fp8 ? "BF16 FALLBACK: no FP8 GEMM on this device (W chunk widened to bf16)"
                   : c->dtype == ELMO_FP8 ? "BF16 tensor cores (W chunk widened, input kept bf16)"
                                          : "BF16 tensor cores";
  log_path(log, "classifier logits", &gt, tc);
  if (log && c->fp8_logits && elmo_cuda_cls_lg_ok(c, c->B_cap))
    fprintf(log, "elmo cuda: %-22s %-22s %s%s%s\n", "classifier logits+grad", "e4m3 x e4m3 -> G bf16",
            "one kernel (FP8 wgmma, gradient table in the epilogue, logits never stored) on skip-loss steps",
            elmo_cuda_fp8_fast_accum() ? "; fast accumulation (ELMO_FP8_FAST_ACCUM=0: promoted)" : "; promoted accumulation",
            elmo_cuda_cls_lg_tma() ? "; weight stages by TMA" : "");
  log_path(log, "prediction logits", &gp, c->fp8_logits_f32 ? "FP8 tensor cores, FP32 out"
                                          : want_fp8 ? "BF16 FALLBACK (W chunk widened), FP32 out" : "FP32 out");
  if (c->dtype == ELMO_F32) {
    elmo_gemm gd = dx_gemm(c, c->B_cap, 0, c->chunk, NULL);
    log_path(log, "classifier dX", &gd, "FP32 reference GEMM");
  } else if (log) {
    fprintf(log, "elmo cuda: %-22s %-22s %s\n", "classifier dX", c->dtype == ELMO_FP8 ? "bf16 x e4m3 -> fp32" : "bf16 x bf16 -> fp32",
            c->dtype == ELMO_FP8 ? (elmo_cuda_cls_dx_wgmma()
                                        ? (elmo_cuda_cls_dx_tma()
                                               ? (elmo_cuda_cls_dx_rs()
                                                      ? "BF16 tensor cores (wgmma), stages by TMA, W converted into "
                                                        "registers (dX^T = W^T G^T), split over labels"
                                                      : "BF16 tensor cores (wgmma), stages by TMA, W tiles widened in "
                                                        "shared memory, split over labels")
                                               : "BF16 tensor cores (wgmma), W tiles widened in shared memory, split "
                                                 "over labels")
                                        : "BF16 tensor cores (mma.sync), W tiles widened in shared memory, split over labels")
                                 : "BF16 tensor cores (mma.sync), split over labels");
  }
  if (log)
    fprintf(log, "elmo cuda: %-22s %-22s %s\n", "classifier update", "G^T Xq bf16 -> fp32",
            c->dtype == ELMO_FP8 && c->Xt16 && elmo_cuda_cls_update_wgmma()
                ? (elmo_cuda_cls_update_tma() ? "fused tiles (BF16 tensor cores: wgmma; tiles moved by TMA) + SGD + "
                                                "stochastic rounding, no gradient buffer"
                                              : "fused tiles (BF16 tensor cores: wgmma) + SGD + stochastic rounding, no "
                                                "gradient buffer")
                : "fused mma.sync tiles (BF16 tensor cores) + SGD + stochastic rounding, no gradient buffer");
  init_piece(c, log);
}

/* Labels per piece: whole chunks unless c->piece asks for less. Pieces small enough for a piece
 * of W and its logits to stay in L2 (about 30K labels at d = 768, B = 128 on an H100) were
 * measured slower (docs/PERFORMANCE.md, issue #5): the smaller launches and the dX slices written
 * per piece cost more than the second read of W saves. */
static void init_piece(elmo_cuda_cls *c, FILE *log) {
  if (c->piece <= 0) c->piece = c->chunk;
  if (log && elmo_cuda_cls_piece(c) < c->chunk)
    fprintf(log, "elmo cuda: classifier chunks of %lld labels run in pieces of %lld labels\n", (long long)c->chunk,
            (long long)elmo_cuda_cls_piece(c));
}

extern "C" int64_t elmo_cuda_cls_piece(const elmo_cuda_cls *c) {
  const int64_t p = c->piece <= 0 || c->piece >= c->chunk ? c->chunk : c->piece / 16 * 16;
  return p < 16 ? 16 : p;
}

/* ---- cast and widen ----------------------------------------------------------------------- */

extern "C" void elmo_cuda_cls_cast(elmo_cuda_cls *c, const float *X, int64_t B, cudaStream_t s) {
  elmo_cuda_cast_input(X, B, round16(B), c->d, c->fp8_input, c->Xq8, c->Xq16, c->Xq32, s);
  c->xp_rows = -1; /* Xp16 / Xt16 are made again from this Xq */
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
  if (c->dtype == ELMO_F32) {
    elmo_gemm g = dx_gemm(c, B, l0, n, dX);
    elmo_blas_run(c->blas, &g, s);
    return;
  }
  elmo_cuda_cls_dx_part(c, B, l0, n, 0, s);
  elmo_cuda_cls_dx_reduce(c, B, dX, s);
}

/* ---- gradient: G = bf16(sigmoid(z) - y) and BCE partials ---------------------------------- */

#define GRAD_THREADS 256
#define GRAD_VEC 8 /* labels per thread: one 16-byte load of bf16 logits */
static_assert(GRAD_THREADS * GRAD_VEC == ELMO_CUDA_GRAD_TILE, "one label tile per block pass");

/* Eight logits as FP32 (FP32 logits are rounded to bf16 first: the CPU stores them in bf16),
 * and eight gradients stored back. */
static __device__ __forceinline__ void z_load8(const uint16_t *z, float v[8]) { elmo_bf16x8_to_f32(z, v); }
static __device__ __forceinline__ void z_load8(const float *z, float v[8]) {
  const float4 p = *(const float4 *)z, q = *(const float4 *)(z + 4);
  const float r[8] = {p.x, p.y, p.z, p.w, q.x, q.y, q.z, q.w};
#pragma unroll
  for (int e = 0; e < 8; e++) v[e] = elmo_bf16_to_f32(elmo_f32_to_bf16(r[e]));
}
static __device__ __forceinline__ void z_store8(uint16_t *z, const float g[8]) {
  uint32_t w[4];
#pragma unroll
  for (int e = 0; e < 4; e++) w[e] = (uint32_t)elmo_f32_to_bf16(g[2 * e]) | ((uint32_t)elmo_f32_to_bf16(g[2 * e + 1]) << 16);
  *(uint4 *)z = make_uint4(w[0], w[1], w[2], w[3]);
}
static __device__ __forceinline__ void z_store8(float *z, const float g[8]) {
  float r[8];
#pragma unroll
  for (int e = 0; e < 8; e++) r[e] = elmo_bf16_to_f32(elmo_f32_to_bf16(g[e]));
  *(float4 *)z = make_float4(r[0], r[1], r[2], r[3]);
  *(float4 *)(z + 4) = make_float4(r[4], r[5], r[6], r[7]);
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

/* grid (tiles of ELMO_CUDA_GRAD_TILE labels, B rows); each thread takes GRAD_VEC consecutive
 * labels (n is a multiple of 16, so a vector is all in or all out). */
template <typename ZT>
static __global__ void __launch_bounds__(GRAD_THREADS)
grad_kernel(ZT *z, int64_t n, int64_t l0, int64_t L, const int64_t *y_indptr, const int32_t *y_indices,
            int want_loss, double *part, const uint16_t *__restrict__ tab) {
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
  const int64_t lo = range[0], hi = range[1], j = t0 + (int64_t)threadIdx.x * GRAD_VEC;
  double loss = 0.0;
  if (j < t1) {
    ZT *zr = z + b * n + j;
    float v[GRAD_VEC], g[GRAD_VEC];
    z_load8(zr, v);
#pragma unroll
    for (int e = 0; e < GRAD_VEC; e++) {
      const int64_t label = l0 + j + e;
      g[e] = 0.0f;
      if (label >= L) continue;
      const int pos = hi > lo && is_positive(y_indices, lo, hi, label);
      if (want_loss) {
        loss += (double)(fmaxf(v[e], 0.0f) + log1pf(expf(-fabsf(v[e]))));
        if (pos) loss -= (double)v[e];
      }
      g[e] = elmo_bf16_to_f32(__ldg(tab + (pos ? 65536u : 0u) + (elmo_f32_bits(v[e]) >> 16)));
    }
    z_store8(zr, g);
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

/* Once: G of every bf16 logit (both labels), computed by the CPU reference. */
static void grad_tab_upload(elmo_cuda_cls *c) {
  if (c->grad_tab_ready) return;
  static uint16_t tab[2 * 65536];
  elmo_cls_grad_table(tab);
  ELMO_CUDA_CHECK(cudaMemcpy(c->grad_tab, tab, sizeof tab, cudaMemcpyHostToDevice));
  c->grad_tab_ready = 1;
}

extern "C" void elmo_cuda_cls_grad(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                                   const int32_t *y_indices, int want_loss, cudaStream_t s) {
  if (B <= 0) return;
  grad_tab_upload(c);
  dim3 grid((unsigned)grad_tiles(n), (unsigned)B);
  if (c->dtype == ELMO_F32)
    grad_kernel<float><<<grid, GRAD_THREADS, 0, s>>>((float *)c->z, n, l0, c->L, y_indptr, y_indices, want_loss,
                                                     c->loss_part, c->grad_tab);
  else
    grad_kernel<uint16_t><<<grid, GRAD_THREADS, 0, s>>>((uint16_t *)c->z, n, l0, c->L, y_indptr, y_indices,
                                                        want_loss, c->loss_part, c->grad_tab);
  ELMO_LAUNCH_CHECK();
  if (want_loss) {
    loss_reduce_kernel<<<1, GRAD_THREADS, 0, s>>>(c->loss_part, (int64_t)grid.x * B, c->loss);
    ELMO_LAUNCH_CHECK();
  }
}

extern "C" int elmo_cuda_cls_logits_grad(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                                         const int32_t *y_indices, cudaStream_t s) {
  if ((size_t)(round16(B) * n) * 2 > c->z_bytes || n > c->chunk || B > c->B_cap) return 0;
  if (!c->fp8_logits || !elmo_cuda_cls_lg_ok(c, B)) return 0;
  grad_tab_upload(c);
  return elmo_cuda_cls_lg_fused(c, B, l0, n, y_indptr, y_indices, s);
}

/* ---- fused update: W <- SR(W - lr (G^T Xq + wd W)) ---------------------------------------- */

extern "C" void elmo_cuda_cls_update(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const elmo_cls_hyper *h,
                                     cudaStream_t s) {
  elmo_cuda_cls_update_mma(c, B, l0, n, h, s);
}

/* ---- the step ------------------------------------------------------------------------------ */

extern "C" void elmo_cuda_cls_step(elmo_cuda_cls *c, const float *X, int64_t B, const int64_t *y_indptr,
                                   const int32_t *y_indices, const elmo_cls_hyper *h, int want_loss, float *dX,
                                   cudaStream_t s) {
  elmo_cuda_cls_cast(c, X, B, s);
  ELMO_CUDA_CHECK(cudaMemsetAsync(dX, 0, sizeof(float) * (size_t)(B * c->d), s));
  ELMO_CUDA_CHECK(cudaMemsetAsync(c->loss, 0, sizeof(double), s));
  c->widened_l0 = -1; /* W changed since the last widening */
  const int64_t piece = elmo_cuda_cls_piece(c);
  const int split_dx = c->dtype != ELMO_F32;
  int first = 1;
  c->pdl_step = 1;
  for (int64_t l0 = 0; l0 < c->L_pad; l0 += c->chunk) {
    const int64_t n = c->L_pad - l0 < c->chunk ? c->L_pad - l0 : c->chunk;
    for (int64_t p0 = l0; p0 < l0 + n; p0 += piece) {
      const int64_t m = l0 + n - p0 < piece ? l0 + n - p0 : piece;
      if (want_loss || !elmo_cuda_cls_logits_grad(c, B, p0, m, y_indptr, y_indices, s)) {
        elmo_cuda_cls_logits(c, B, p0, m, 0, s);
        elmo_cuda_cls_grad(c, B, p0, m, y_indptr, y_indices, want_loss, s);
      }
      if (split_dx) elmo_cuda_cls_dx_part(c, B, p0, m, !first, s); /* slices summed once, below */
      else elmo_cuda_cls_dx(c, B, p0, m, dX, s);
      elmo_cuda_cls_update(c, B, p0, m, h, s);
      first = 0;
    }
  }
  c->pdl_step = 0;
  if (split_dx && !first) elmo_cuda_cls_dx_reduce(c, B, dX, s);
  c->widened_l0 = -1;
}

/* Four elements a thread (one Philox block), as model.c's init_classifier_part; the arithmetic in explicit
 * round-to-nearest steps so that nothing is contracted into an FMA (the host's C11 build contracts nothing). */
static __global__ void cls_init_kernel(void *W, int dt, int64_t n, int64_t g0, uint64_t seed, uint32_t tensor,
                                       float a) {
  const int64_t nb = (n + 3) / 4;
  for (int64_t blk = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; blk < nb;
       blk += (int64_t)gridDim.x * blockDim.x) {
    uint32_t r[4];
    elmo_rand_block(seed, 0, tensor, (uint64_t)(g0 + blk), r);
    for (int w = 0; w < 4 && 4 * blk + w < n; w++) {
      const int64_t i = 4 * blk + w;
      const float u = __fmul_rn(__uint2float_rn(r[w]), 1.0f / 4294967296.0f);
      const float x = __fmul_rn(a, __fadd_rn(__fmul_rn(2.0f, u), -1.0f));
      if (dt == ELMO_FP8) ((uint8_t *)W)[i] = elmo_f32_to_fp8(x);
      else if (dt == ELMO_BF16) ((uint16_t *)W)[i] = elmo_f32_to_bf16(x);
      else ((float *)W)[i] = x;
    }
  }
}

extern "C" void elmo_cuda_cls_init_weights(void *W, elmo_dtype dt, int64_t num_labels, int64_t L_pad, int64_t d,
                                           int64_t label_base, uint64_t seed, uint32_t tensor, cudaStream_t s) {
  const size_t es = elmo_dtype_size(dt);
  const int64_t n = num_labels * d;
  if (L_pad > num_labels)
    ELMO_CUDA_CHECK(cudaMemsetAsync((char *)W + (size_t)n * es, 0, (size_t)((L_pad - num_labels) * d) * es, s));
  if (n <= 0) return;
  const float a = 1.0f / sqrtf((float)d);
  const int64_t nb = (n + 3) / 4, blocks = (nb + 255) / 256;
  cls_init_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, s>>>(W, (int)dt, n, label_base * d / 4, seed,
                                                                             tensor, a);
  ELMO_LAUNCH_CHECK();
}

extern "C" int64_t elmo_cuda_cls_predict_span(const elmo_cuda_cls *c, int64_t B) {
  int64_t span = (int64_t)(c->z_bytes / ((size_t)round16(B) * 4)) / 16 * 16;
  if (span > c->L_pad) span = c->L_pad;
  if (span > c->chunk) span = c->chunk; /* logits take at most one chunk (and Wc16 holds one) */
  return span;
}
