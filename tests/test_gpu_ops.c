/* test_gpu_ops.c: every CUDA op against its CPU twin on fresh seeded random inputs (suite gpu;
 * exit 77 without a device). Device outputs are poisoned (all bytes 0xFF: NaN in fp32, bf16 and
 * e4m3) before each run, so an unwritten element fails, and NaN never passes a comparison.
 * Tolerances, per dtype:
 *   exact (bit for bit): input casts, e4m3 widening, dropout, AdamW (same non-contracted float
 *     operations in the same order), top-k on the same scores, sparse-encoder backward scatter
 *     given equal inputs;
 *   logits: GEMM vs sequential FP32 sums differ by summation order: |gpu - cpu| <= 1e-5 * sum|x w|
 *     for BF16 / FP32 GEMMs, 1e-3 * sum|x w| for FP8 tensor cores (they accumulate with about 14
 *     bits); stored bf16 logits may then differ by one more bf16 step;
 *   G = bf16(sigmoid(z) - y): device expf differs from glibc by <= 2 ulp, so G may differ by one
 *     bf16 step (counted; at most 1% of elements); the summed loss to 1e-5 relative;
 *   dX: 1e-5 * sum|g w| + 1e-6 (summation order);
 *   SR update: given the same G and Xq the rounded weights are equal except where G^T Xq differs
 *     by FP32 rounding (tensor-core vs sequential order) and the SR threshold falls between: such
 *     mismatches must be one step (adjacent codes) and rare (<= 0.5% of weights; typically 0);
 *     fp32 weights: within 1e-6 (1 + lr max sum|G x|); Kahan compensations (rounding residuals):
 *     one bf16 step, or within 1e-5 (1 + lr max sum|G x|);
 *   whole step: G may differ by a bf16 step where device expf or FP8 logits round differently,
 *     which moves that label's row by lr G x: at most 2 + L/50 rows may differ by more than one
 *     code step (1e-4 for fp32), and at most 2% of the fp8/bf16 weights differ at all;
 *   sparse encoder forward: 1e-6 relative (double reductions in another order). */
#include "testutil.h"
#include "classifier.h"
#include "numerics.h"
#include "optim.h"
#include "sparse_encoder.h"

#include "cuda/blas.h"
#include "cuda/classifier.h"
#include "cuda/classifier_fast.h"
#include "cuda/convert.h"
#include "cuda/dropout.h"
#include "cuda/optim.h"
#include "cuda/pool.h"
#include "cuda/sparse_encoder.h"
#include "cuda/topk.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cudaStream_t S;
static elmo_blas *BL;
static void *WS;

/* ---- device helpers ------------------------------------------------------------------------ */

#define CK(x) assert_int_equal((int)(x), (int)cudaSuccess)

static void *dpoison(size_t n) {
  void *p = NULL;
  CK(cudaMalloc(&p, n ? n : 1));
  CK(cudaMemset(p, 0xFF, n ? n : 1));
  return p;
}

static void *dup_up(const void *h, size_t n) {
  void *p = dpoison(n);
  if (n) CK(cudaMemcpy(p, h, n, cudaMemcpyHostToDevice));
  return p;
}

static void down(void *h, const void *d, size_t n) {
  CK(cudaStreamSynchronize(S));
  CK(cudaGetLastError());
  CK(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost));
}

/* Sign-magnitude code -> ordered integer, so adjacent representable values differ by 1. */
static int32_t code_key(uint32_t c, int bits) {
  uint32_t sign = 1u << (bits - 1), mag = c & (sign - 1);
  return (c & sign) ? -(int32_t)mag : (int32_t)mag;
}

/* Distance between two weights: code steps (fp8, bf16) or absolute difference (fp32). */
static double weight_dist(const void *a, const void *b, int64_t i, elmo_dtype dt) {
  if (dt == ELMO_F32) return fabs((double)((const float *)a)[i] - ((const float *)b)[i]);
  int bits = dt == ELMO_FP8 ? 8 : 16;
  uint32_t x = dt == ELMO_FP8 ? ((const uint8_t *)a)[i] : ((const uint16_t *)a)[i];
  uint32_t y = dt == ELMO_FP8 ? ((const uint8_t *)b)[i] : ((const uint16_t *)b)[i];
  return abs(code_key(x, bits) - code_key(y, bits));
}

static int weight_nan(const void *a, int64_t i, elmo_dtype dt) {
  switch (dt) {
    case ELMO_FP8: return elmo_fp8_is_nan(((const uint8_t *)a)[i]);
    case ELMO_BF16: return isnan(elmo_bf16_to_f32(((const uint16_t *)a)[i]));
    default: return isnan(((const float *)a)[i]);
  }
}

/* Given the same G and Xq: counts mismatches; fails on NaN, on codes that are not neighbours,
 * or on fp32 weights further apart than f32_tol. */
static int64_t compare_weights(const void *a, const void *b, int64_t n, elmo_dtype dt, const char *what, double f32_tol) {
  int64_t mism = 0;
  for (int64_t i = 0; i < n; i++) {
    if (weight_nan(a, i, dt)) fail_msg("%s[%lld]: NaN on the device", what, (long long)i);
    double dist = weight_dist(a, b, i, dt);
    if (dist > (dt == ELMO_F32 ? f32_tol : 1.0)) fail_msg("%s[%lld]: gpu and cpu %g apart", what, (long long)i, dist);
    mism += dist > 0;
  }
  return mism;
}

/* Kahan compensations (bf16) hold the residual u - (p' - p) of a rounding: where G^T Xq is summed
 * in another order, u moves by its FP32 rounding (up to tol) and the small residual by as much,
 * which can be several bf16 steps at its scale. Fails on NaN and on larger differences. */
static int64_t compare_kahan(const uint16_t *a, const uint16_t *b, int64_t n, double tol) {
  int64_t mism = 0;
  for (int64_t i = 0; i < n; i++) {
    double x = elmo_bf16_to_f32(a[i]), y = elmo_bf16_to_f32(b[i]);
    if (isnan(x)) fail_msg("kahan[%lld]: NaN on the device", (long long)i);
    int dist = abs(code_key(a[i], 16) - code_key(b[i], 16));
    if (dist > 1 && !(fabs(x - y) <= tol)) fail_msg("kahan[%lld]: gpu %g cpu %g (tolerance %g)", (long long)i, x, y, tol);
    mism += dist > 0;
  }
  return mism;
}

static int group_setup(void **state) {
  CK(cudaStreamCreate(&S));
  CK(cudaMalloc(&WS, elmo_blas_workspace_bytes()));
  BL = elmo_blas_create(WS, elmo_blas_workspace_bytes());
  return 0;
}

static int group_teardown(void **state) {
  elmo_blas_destroy(&BL);
  cudaFree(WS);
  cudaStreamDestroy(S);
  return 0;
}

/* ---- classifier fixture ----------------------------------------------------------------------- */

typedef struct cls_case {
  elmo_dtype dt;
  int fp8_input;
  int64_t L, d, B, chunk, n_head;
  uint64_t seed;
  int64_t piece; /* labels per piece in the step (0: the device's choice) */
  int skip_loss; /* the step forms no loss (e4m3 input, B <= 128: the fused logits + grad kernel) */
  int no_decay;  /* run_cls_ops: weight decay 0 (the update's epilogue without the decay product) */
} cls_case;

typedef struct cls_fix {
  cls_case cc;
  int64_t L_pad;
  float *X;           /* [B, d] */
  void *W;            /* [L_pad, d] host, dtype */
  uint16_t *kahan;    /* [n_head, d] */
  int32_t *head_slot; /* [L_pad] */
  int64_t *yp;        /* [B+1] */
  int32_t *yi;
  /* device */
  elmo_pool pool;
  elmo_cuda_cls c;
  float *dX;
  int64_t *d_yp;
  int32_t *d_yi;
} cls_fix;

static size_t wsize(elmo_dtype dt) { return elmo_dtype_size(dt); }

static void store_w(void *W, elmo_dtype dt, int64_t i, float v) {
  if (dt == ELMO_FP8) ((uint8_t *)W)[i] = elmo_f32_to_fp8(v);
  else if (dt == ELMO_BF16) ((uint16_t *)W)[i] = elmo_f32_to_bf16(v);
  else ((float *)W)[i] = v;
}

/* Random inputs with planted large logits: for each row two labels whose weights follow the
 * signs of the row, so |z| reaches 10..40; two planted large inputs per row. */
static void fix_host(cls_fix *f) {
  const cls_case *c = &f->cc;
  uint64_t s = c->seed;
  f->L_pad = (c->L + 15) / 16 * 16;
  f->X = malloc(sizeof(float) * (size_t)(c->B * c->d));
  for (int64_t i = 0; i < c->B * c->d; i++) f->X[i] = tu_rand_normal(&s);
  for (int64_t b = 0; b < c->B; b++) {
    f->X[b * c->d + (b * 7) % c->d] = 9.0f;
    f->X[b * c->d + (b * 5 + 3) % c->d] = -7.5f;
  }
  f->W = calloc((size_t)(f->L_pad * c->d), wsize(c->dt));
  for (int64_t i = 0; i < c->L * c->d; i++) store_w(f->W, c->dt, i, 0.15f * tu_rand_normal(&s));
  for (int64_t b = 0; b < c->B; b++)
    for (int r = 0; r < 2; r++) {
      int64_t l = (b * 13 + r * 29 + 5) % c->L;
      for (int64_t k = 0; k < c->d; k++) store_w(f->W, c->dt, l * c->d + k, (r ? -0.4f : 0.5f) * (f->X[b * c->d + k] > 0 ? 1.f : -1.f));
    }
  f->kahan = calloc((size_t)(c->n_head * c->d) + 1, 2);
  for (int64_t i = 0; i < c->n_head * c->d; i++) f->kahan[i] = elmo_f32_to_bf16(1e-4f * tu_rand_normal(&s));
  f->head_slot = malloc(sizeof(int32_t) * (size_t)f->L_pad);
  for (int64_t l = 0; l < f->L_pad; l++) f->head_slot[l] = -1;
  for (int64_t h = 0; h < c->n_head; h++) f->head_slot[(h * 7 + 1) % c->L] = (int32_t)h;
  f->yp = malloc(sizeof(int64_t) * (size_t)(c->B + 1));
  f->yi = malloc(sizeof(int32_t) * (size_t)(c->B * 6 + 1));
  int64_t n = 0;
  for (int64_t b = 0; b < c->B; b++) {
    f->yp[b] = n;
    int cnt = (int)(tu_rand_u64(&s) % 6), last = -1;
    for (int j = 0; j < cnt; j++) { /* sorted, unique */
      int64_t room = c->L - 1 - last - (cnt - 1 - j);
      if (room <= 0) break;
      int lab = last + 1 + (int)(tu_rand_u64(&s) % (uint64_t)(room < 40 ? room : 40));
      f->yi[n++] = lab;
      last = lab;
    }
  }
  f->yp[c->B] = n;
}

static void fix_device(cls_fix *f) {
  const cls_case *cc = &f->cc;
  elmo_cuda_cls *c = &f->c;
  memset(c, 0, sizeof *c);
  c->dtype = cc->dt;
  c->L = cc->L;
  c->L_pad = f->L_pad;
  c->d = cc->d;
  c->fp8_input = cc->fp8_input;
  c->chunk = cc->chunk;
  c->B_cap = (cc->B + 15) / 16 * 16;
  c->piece = cc->piece;
  c->blas = BL;
  elmo_pool p;
  elmo_pool_plan_init(&p);
  elmo_cuda_cls_layout(c, &p);
  elmo_err err = {0};
  assert_int_equal(elmo_pool_alloc(&f->pool, p.used, &err), ELMO_OK);
  CK(cudaMemset(f->pool.base, 0xFF, f->pool.size));
  elmo_cuda_cls_layout(c, &f->pool);
  c->W = dup_up(f->W, (size_t)(f->L_pad * cc->d) * wsize(cc->dt));
  c->kahan = cc->n_head ? dup_up(f->kahan, (size_t)(cc->n_head * cc->d) * 2) : NULL;
  c->head_slot = cc->n_head ? dup_up(f->head_slot, sizeof(int32_t) * (size_t)f->L_pad) : NULL;
  elmo_cuda_cls_init_paths(c, stderr);
  f->dX = dpoison(sizeof(float) * (size_t)(cc->B * cc->d));
  f->d_yp = dup_up(f->yp, sizeof(int64_t) * (size_t)(cc->B + 1));
  f->d_yi = dup_up(f->yi, sizeof(int32_t) * (size_t)(f->yp[cc->B] + 1));
}

/* A fixture of case cc, host and device. */
static void fix_open(cls_fix *f, cls_case cc) {
  memset(f, 0, sizeof *f);
  f->cc = cc;
  fix_host(f);
  fix_device(f);
}

static void fix_free(cls_fix *f) {
  cudaFree(f->c.W);
  cudaFree(f->c.kahan);
  cudaFree((void *)f->c.head_slot);
  cudaFree(f->dX);
  cudaFree(f->d_yp);
  cudaFree(f->d_yi);
  elmo_pool_free(&f->pool);
  free(f->X);
  free(f->W);
  free(f->kahan);
  free(f->head_slot);
  free(f->yp);
  free(f->yi);
}

static elmo_cls_weights cpu_weights(cls_fix *f, void *W, uint16_t *kahan) {
  elmo_cls_weights w = {.W = W, .dtype = f->cc.dt, .L = f->cc.L, .L_pad = f->L_pad, .d = f->cc.d,
                        .kahan = f->cc.n_head ? kahan : NULL, .head_slot = f->cc.n_head ? f->head_slot : NULL};
  return w;
}

/* z of the device ([B16, n] bf16 or fp32) as FP32 [B, n]. */
static void down_z(cls_fix *f, int64_t n, float *z) {
  int64_t B = f->cc.B;
  if (f->cc.dt == ELMO_F32) {
    down(z, f->c.z, sizeof(float) * (size_t)(B * n));
    return;
  }
  uint16_t *h = malloc(2 * (size_t)(B * n));
  down(h, f->c.z, 2 * (size_t)(B * n));
  for (int64_t i = 0; i < B * n; i++) z[i] = elmo_bf16_to_f32(h[i]);
  free(h);
}

/* ---- tests: casts ------------------------------------------------------------------------------ */

static void test_cast_input(void **state) {
  const int64_t B = 37, Bp = 48, d = 64;
  uint64_t s = 101;
  float *X = malloc(sizeof(float) * B * d), *ref = malloc(sizeof(float) * B * d);
  for (int64_t i = 0; i < B * d; i++) X[i] = tu_rand_normal(&s) * (i % 17 == 0 ? 300.0f : 1.0f);
  X[3] = 1000.0f; /* saturates in e4m3 */
  X[4] = 1e-4f;   /* below the e4m3 subnormals */
  float *dXin = dup_up(X, sizeof(float) * B * d), *q32 = dpoison(sizeof(float) * Bp * d);
  uint8_t *q8 = dpoison(Bp * d), *h8 = malloc(Bp * d);
  uint16_t *q16 = dpoison(2 * Bp * d), *h16 = malloc(2 * Bp * d);
  float *h32 = malloc(sizeof(float) * Bp * d);
  for (int fp8 = 0; fp8 <= 1; fp8++) {
    elmo_cuda_cast_input(dXin, B, Bp, d, fp8, q8, q16, q32, S);
    down(h8, q8, Bp * d);
    down(h16, q16, 2 * Bp * d);
    down(h32, q32, sizeof(float) * Bp * d);
    elmo_cls_cast_input(X, B * d, fp8, ref);
    for (int64_t i = 0; i < Bp * d; i++) {
      float r = i < B * d ? ref[i] : 0.0f;
      if (memcmp(&h32[i], &r, 4)) fail_msg("fp8=%d q32[%lld] %g != %g", fp8, (long long)i, h32[i], r);
      assert_int_equal(h16[i], elmo_f32_to_bf16(r));
      if (fp8) assert_int_equal(h8[i], i < B * d ? elmo_f32_to_fp8(X[i]) : 0);
    }
  }
  /* e4m3 -> bf16 widening over every code */
  uint8_t codes[256];
  for (int i = 0; i < 256; i++) codes[i] = (uint8_t)i;
  uint8_t *dc = dup_up(codes, 256);
  uint16_t *dw = dpoison(512), hw[256];
  elmo_cuda_fp8_to_bf16(dc, dw, 256, S);
  down(hw, dw, 512);
  for (int i = 0; i < 256; i++) {
    uint32_t bits;
    float v = elmo_fp8_to_f32((uint8_t)i);
    memcpy(&bits, &v, 4);
    assert_int_equal(hw[i], bits >> 16);
  }
  cudaFree(dXin); cudaFree(q32); cudaFree(q8); cudaFree(q16); cudaFree(dc); cudaFree(dw);
  free(X); free(ref); free(h8); free(h16); free(h32);
}

/* ---- the update kernels' forms of the SR bits and of e4m3 SR, against numerics.h ------------------ */

static void test_cls_sr_twins(void **state) {
  uint64_t s = 211;
  /* every bf16-high pattern (all exponents, signs, NaN, inf) with random low bits and random r,
   * r = 0 and r = all ones; then values around the e4m3 subnormal and saturation edges; all run
   * through the update kernel's SR on the device */
  const float edges[] = {0.0f, -0.0f, 1.9073486e-06f /* 2^-19 */, 7.6293945e-06f, 0.001953125f, 0.0029296875f,
                         0.015625f, 0.0156249991f, -0.0156249991f, 0.0156249981f, 447.99997f, 448.0f, 463.99997f,
                         464.0f, 1e30f, -3.4e38f, 1e-45f, -1e-45f};
  const int64_t ne = (int64_t)(sizeof edges / sizeof edges[0]), n = 65536 * 8 + ne * 1000;
  float *x = malloc(sizeof(float) * (size_t)n);
  uint32_t *r = malloc(sizeof(uint32_t) * (size_t)n);
  uint8_t *got = malloc((size_t)n);
  int64_t i = 0;
  for (uint32_t hi = 0; hi < 65536; hi++)
    for (int k = 0; k < 8; k++, i++) {
      r[i] = k == 0 ? 0u : k == 1 ? 0xFFFFFFFFu : (uint32_t)tu_rand_u64(&s);
      uint32_t u = (hi << 16) | (uint32_t)(tu_rand_u64(&s) & 0xFFFFu);
      memcpy(&x[i], &u, 4);
    }
  for (int64_t e = 0; e < ne; e++)
    for (int k = 0; k < 1000; k++, i++) {
      x[i] = edges[e];
      r[i] = (uint32_t)tu_rand_u64(&s);
    }
  float *dx = dup_up(x, sizeof(float) * (size_t)n);
  uint32_t *dr = dup_up(r, sizeof(uint32_t) * (size_t)n);
  uint8_t *dout = dpoison((size_t)n);
  elmo_cuda_cls_sr_fp8_dev(dx, dr, dout, n, S);
  down(got, dout, (size_t)n);
  for (i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    if (got[i] != elmo_sr_fp8(x[i], r[i]))
      fail_msg("device e4m3 SR(%08x, %08x) = %02x, elmo_sr_fp8 %02x", u, r[i], got[i], elmo_sr_fp8(x[i], r[i]));
  }
  uint16_t *got16 = malloc(2 * (size_t)n), *dout16 = dpoison(2 * (size_t)n);
  elmo_cuda_cls_sr_bf16_dev(dx, dr, dout16, n, S);
  down(got16, dout16, 2 * (size_t)n);
  for (i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    /* NaN inputs reach the kernel as the add's canonical NaN; elmo_sr_bf16 keeps payloads */
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
      if ((got16[i] & 0x7FFFu) <= 0x7F80u) fail_msg("device bf16 SR(%08x) = %04x is not NaN", u, got16[i]);
      continue;
    }
    if (got16[i] != elmo_sr_bf16(x[i], r[i]))
      fail_msg("device bf16 SR(%08x, %08x) = %04x, elmo_sr_bf16 %04x", u, r[i], got16[i], elmo_sr_bf16(x[i], r[i]));
  }
  cudaFree(dx); cudaFree(dr); cudaFree(dout); cudaFree(dout16);
  free(x); free(r); free(got); free(got16);
  for (int k = 0; k < 200000; k++) {
    uint64_t seed = tu_rand_u64(&s), step = k & 1 ? tu_rand_u64(&s) : tu_rand_u64(&s) % 100000, block = tu_rand_u64(&s) >> (k % 40);
    uint32_t a[4], b[4];
    elmo_cuda_cls_rand_block_rk(seed, step, ELMO_RNG_CLS_SR, block, a);
    elmo_rand_block_r(seed, step, ELMO_RNG_CLS_SR, block, ELMO_CLS_SR_ROUNDS, b);
    if (memcmp(a, b, sizeof a)) fail_msg("rand_block_rk differs at seed %llx step %llx block %llx", (unsigned long long)seed,
                                         (unsigned long long)step, (unsigned long long)block);
  }
  print_message("device e4m3 / bf16 SR: %lld patterns equal to elmo_sr_fp8 / elmo_sr_bf16; Philox round-key form equal on 200000 blocks\n", (long long)n);
}

/* ---- tests: the classifier ops one by one, chunk by chunk -------------------------------------- */

static void check_logits(cls_fix *f, const float *Xq, int64_t l0, int64_t n, const float *zg, int f32_out) {
  /* FP8 tensor cores accumulate with less than FP32 precision (about 14 bits, as DeepSeek-V3
   * reports for H800; errors up to 2.7e-4 of sum|x w| were seen on H100 at k = 64): 1e-3 of
   * sum|x w| there, 1e-5 for BF16 / FP32 GEMMs. An indexing error would be O(1). */
  const double rel = (f32_out ? f->c.fp8_logits_f32 : f->c.fp8_logits) ? 1e-3 : 1e-5;
  const int64_t B = f->cc.B, d = f->cc.d;
  elmo_cls_weights w = cpu_weights(f, f->W, f->kahan);
  float *zc = malloc(sizeof(float) * (size_t)(B * n));
  elmo_cls_logits(&w, Xq, B, l0, n, 0, zc);
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = 0; j < n; j++) {
      double mag = 0;
      for (int64_t k = 0; k < d; k++) mag += fabs((double)Xq[b * d + k] * elmo_cls_w(&w, l0 + j, k));
      float ref = zc[b * n + j], g = zg[b * n + j];
      double tol = rel * mag + 1e-6;
      if (!f32_out) tol += fabs(ref) / 128.0; /* one bf16 step */
      if (!(fabs((double)g - ref) <= tol))
        fail_msg("logits [%lld, %lld] (l0 %lld): gpu %g cpu %g tol %g", (long long)b, (long long)j, (long long)l0, g,
                 ref, tol);
    }
  free(zc);
}

/* Runs grad on the device logits and compares with the CPU on the same logits; returns the
 * device G as FP32 [B, n]. */
static void check_grad(cls_fix *f, int64_t l0, int64_t n, float *G) {
  const int64_t B = f->cc.B;
  float *zc = malloc(sizeof(float) * (size_t)(B * n));
  down_z(f, n, zc);
  if (f->cc.dt == ELMO_F32) /* the CPU step stores logits in bf16 whatever the weights */
    for (int64_t i = 0; i < B * n; i++) zc[i] = elmo_bf16_to_f32(elmo_f32_to_bf16(zc[i]));
  CK(cudaMemset(f->c.loss, 0, sizeof(double)));
  elmo_cuda_cls_grad(&f->c, B, l0, n, f->d_yp, f->d_yi, 1, S);
  double lg = 0, lc = elmo_cls_grad(zc, B, l0, n, f->cc.L, f->yp, f->yi, 1);
  down(&lg, f->c.loss, sizeof(double));
  down_z(f, n, G);
  if (!(fabs(lg - lc) <= 1e-5 * fabs(lc) + 1e-6)) fail_msg("loss chunk %lld: gpu %.9g cpu %.9g", (long long)l0, lg, lc);
  int64_t mism = 0;
  for (int64_t i = 0; i < B * n; i++) {
    if (isnan(G[i])) fail_msg("G[%lld] NaN", (long long)i);
    if (G[i] == zc[i]) continue;
    mism++;
    if (abs(code_key(elmo_f32_to_bf16(G[i]), 16) - code_key(elmo_f32_to_bf16(zc[i]), 16)) > 1)
      fail_msg("G[%lld]: gpu %g cpu %g", (long long)i, G[i], zc[i]);
  }
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = 0; j < n; j++)
      if (l0 + j >= f->cc.L && G[b * n + j] != 0.0f) fail_msg("padded label %lld has G %g", (long long)(l0 + j), G[b * n + j]);
  if (mism * 100 > B * n) fail_msg("G differs in %lld of %lld elements", (long long)mism, (long long)(B * n));
  free(zc);
}

static void check_dx(cls_fix *f, const float *G, int64_t l0, int64_t n, float *dXc) {
  const int64_t B = f->cc.B, d = f->cc.d;
  elmo_cls_weights w = cpu_weights(f, f->W, f->kahan);
  elmo_cuda_cls_dx(&f->c, B, l0, n, f->dX, S);
  elmo_cls_dx(&w, G, B, l0, n, dXc);
  float *dg = malloc(sizeof(float) * (size_t)(B * d));
  down(dg, f->dX, sizeof(float) * (size_t)(B * d));
  for (int64_t b = 0; b < B; b++)
    for (int64_t k = 0; k < d; k++) {
      double mag = 1.0; /* |dX| before this chunk is O(1) */
      for (int64_t j = 0; j < n; j++) mag += fabs((double)G[b * n + j] * elmo_cls_w(&w, l0 + j, k));
      float a = dg[b * d + k], c = dXc[b * d + k];
      if (!(fabs((double)a - c) <= 1e-5 * mag + 1e-6)) fail_msg("dX[%lld, %lld]: gpu %g cpu %g", (long long)b, (long long)k, a, c);
    }
  memcpy(dXc, dg, sizeof(float) * (size_t)(B * d)); /* continue from the device's values */
  free(dg);
}

static int64_t check_update(cls_fix *f, const float *G, const float *Xq, int64_t l0, int64_t n, const elmo_cls_hyper *h) {
  const int64_t d = f->cc.d;
  elmo_cuda_cls_update(&f->c, f->cc.B, l0, n, h, S);
  elmo_cls_weights w = cpu_weights(f, f->W, f->kahan);
  elmo_cls_update(&w, G, Xq, f->cc.B, l0, n, h);
  size_t wb = (size_t)(f->L_pad * d) * wsize(f->cc.dt);
  void *Wg = malloc(wb);
  down(Wg, f->c.W, wb);
  double gmax = 0; /* largest sum_b |G x|: the fp32 weights may differ by its FP32 rounding */
  for (int64_t j = 0; j < n; j++)
    for (int64_t k = 0; k < d; k++) {
      double m = 0;
      for (int64_t b = 0; b < f->cc.B; b++) m += fabs((double)G[b * n + j] * Xq[b * d + k]);
      gmax = fmax(gmax, m);
    }
  int64_t mism = compare_weights(Wg, f->W, f->L_pad * d, f->cc.dt, "W", 1e-6 * (1.0 + h->lr * gmax));
  memcpy(f->W, Wg, wb); /* both continue from the device's weights */
  if (f->cc.n_head) {
    uint16_t *kg = malloc(2 * (size_t)(f->cc.n_head * d));
    down(kg, f->c.kahan, 2 * (size_t)(f->cc.n_head * d));
    mism += compare_kahan(kg, f->kahan, f->cc.n_head * d, 1e-5 * (1.0 + h->lr * gmax));
    memcpy(f->kahan, kg, 2 * (size_t)(f->cc.n_head * d));
    free(kg);
  }
  free(Wg);
  return mism;
}

static void run_cls_ops(cls_case cc) {
  cls_fix f;
  fix_open(&f, cc);
  const int64_t B = cc.B, d = cc.d;
  float *Xq = malloc(sizeof(float) * (size_t)(B * d)), *dXc = calloc((size_t)(B * d), sizeof(float));
  float *zg = malloc(sizeof(float) * (size_t)(B * cc.chunk)), *G = malloc(sizeof(float) * (size_t)(B * cc.chunk));
  float *dXin = dup_up(f.X, sizeof(float) * (size_t)(B * d));
  elmo_cls_cast_input(f.X, B * d, cc.fp8_input, Xq);
  elmo_cuda_cls_cast(&f.c, dXin, B, S);
  CK(cudaMemset(f.dX, 0, sizeof(float) * (size_t)(B * d)));
  elmo_cls_hyper h = {.lr = 0.5, .weight_decay = cc.no_decay ? 0.0 : 0.01, .seed = cc.seed, .step = 3};
  int64_t mism = 0, total = 0;
  for (int64_t l0 = 0; l0 < f.L_pad; l0 += cc.chunk) {
    int64_t n = f.L_pad - l0 < cc.chunk ? f.L_pad - l0 : cc.chunk;
    const int64_t span = elmo_cuda_cls_predict_span(&f.c, B); /* prediction logits, FP32 */
    for (int64_t p0 = l0; p0 < l0 + n; p0 += span) {
      int64_t m = l0 + n - p0 < span ? l0 + n - p0 : span;
      elmo_cuda_cls_logits(&f.c, B, p0, m, 1, S);
      down(zg, f.c.z, sizeof(float) * (size_t)(B * m));
      check_logits(&f, Xq, p0, m, zg, 1);
    }
    elmo_cuda_cls_logits(&f.c, B, l0, n, 0, S); /* training logits, stored bf16 */
    down_z(&f, n, zg);
    check_logits(&f, Xq, l0, n, zg, 0);
    check_grad(&f, l0, n, G);
    check_dx(&f, G, l0, n, dXc);
    mism += check_update(&f, G, Xq, l0, n, &h);
    total += n * d;
    f.c.widened_l0 = -1; /* W changed */
  }
  print_message("dtype %d input %s: %lld of %lld weights differ (%s)\n", cc.dt, cc.fp8_input ? "fp8" : "bf16",
                (long long)mism, (long long)total, cc.dt == ELMO_F32 ? "by FP32 rounding" : "by one code step");
  /* SR / RN codes: a flip needs the threshold between two values one FP32 rounding apart, so
   * flips are rare. FP32 weights differ by that rounding itself (checked by tolerance above). */
  if (cc.dt != ELMO_F32 && mism * 200 > total)
    fail_msg("too many SR mismatches: %lld of %lld", (long long)mism, (long long)total);
  cudaFree(dXin);
  free(Xq); free(dXc); free(zg); free(G);
  fix_free(&f);
}

static void test_cls_ops_fp8(void **state) {
  run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 300, .d = 64, .B = 37, .chunk = 128, .n_head = 5, .seed = 1});
  run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 77, .d = 48, .B = 16, .chunk = 32, .n_head = 0, .seed = 2});
  /* whole and partial 128 x 128 tiles of the tensor-core kernels: two batch tiles (130 rows),
   * three feature tiles, a partial label tile, several dX slices. bf16 input: FP8 tensor-core
   * logits of 384 terms with the planted inputs can exceed their 1e-3 tolerance, and the logits
   * are not what this case is for */
  run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 700, .d = 384, .B = 130, .chunk = 512, .n_head = 3, .seed = 11});
  /* no weight decay (the default): the update's epilogue without the decay product (bf16 input: the
   * planted logits of 128 FP8 terms can exceed the FP8 tolerance, as above) */
  run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 300, .d = 128, .B = 64, .chunk = 160, .n_head = 2, .seed = 41,
                         .no_decay = 1});
}

/* The e4m3 dX on every kernel where the device has several (on compute capability 9.0: wgmma with
 * 128- and 256-feature tiles, and mma.sync; elsewhere mma.sync only): the cases above ran the
 * default choice; these force each one. */
static void test_cls_ops_fp8_dx_kernels(void **state) {
  (void)state;
  if (!elmo_cuda_cls_dx_wgmma()) skip();
  static const char *const modes[3] = {"0", "128", "256"};
  for (int m = 0; m < 3; m++) {
    setenv("ELMO_DX_WGMMA", modes[m], 1);
    assert_int_equal(elmo_cuda_cls_dx_wgmma(), m > 0);
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 300, .d = 64, .B = 37, .chunk = 128, .n_head = 5, .seed = 1});
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 700, .d = 384, .B = 130, .chunk = 512, .n_head = 3, .seed = 11});
  }
  unsetenv("ELMO_DX_WGMMA");
}

/* The e4m3 update on both kernels where the device has two (update_wg_kernel for every batch on compute
 * capability 9.0; update_mma_kernel above 128 rows and update_res_kernel / update_tma_kernel up to 128
 * otherwise), against the CPU: 130 rows (three 64-row stages, the last with two), 300 rows over two
 * feature tiles and a partial label tile, 100 and 37 rows, each with head rows, and d = 176. */
static void test_cls_ops_fp8_update_kernels(void **state) {
  (void)state;
  for (int m = 0; m < 2; m++) {
    if (m == 0 && !elmo_cuda_cls_update_wgmma()) continue;
    if (m == 1) setenv("ELMO_UPDATE_WGMMA", "0", 1);
    /* bf16 input, as in test_cls_ops_fp8: FP8 logits of hundreds of terms can exceed their tolerance */
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 700, .d = 384, .B = 130, .chunk = 512, .n_head = 3, .seed = 21});
    /* up to 128 rows: update_wg_kernel (two stages, the second partial) or update_res_kernel / update_tma_kernel */
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 700, .d = 384, .B = 100, .chunk = 512, .n_head = 3, .seed = 23});
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 300, .d = 64, .B = 37, .chunk = 128, .n_head = 5, .seed = 24});
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 333, .d = 256, .B = 300, .chunk = 336, .n_head = 4, .seed = 22});
    /* d = 176: a part of a 128-feature span whose last 32-feature group has two quarters of the SR groups */
    run_cls_ops((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 300, .d = 176, .B = 64, .chunk = 160, .n_head = 2, .seed = 25});
  }
  unsetenv("ELMO_UPDATE_WGMMA");
}

/* The e4m3 updates with their tiles moved by TMA (the default on compute capability 9.0:
 * update_tma_kernel up to 128 rows, update_wg_kernel's TMA form above) give the same weights and Kahan
 * words, bit for bit, as the cp.async forms (ELMO_UPDATE_TMA=0) from the same weights and G, chunk after
 * chunk: the same products and rounding, only the copies differ; likewise the wgmma dX with and without
 * TMA stages (ELMO_DX_TMA=0), bit for bit. The shapes: a feature tile wider than d
 * (the box's columns past d arrive as zeros and are not stored), partial label tiles and padded labels
 * (rows past L are not stored), full and partial batches and batch stages, head rows (Kahan), and no
 * weight decay. */
static void run_update_tma(cls_case cc) {
  cls_fix f;
  fix_open(&f, cc);
  const int64_t B = cc.B, d = cc.d;
  float *dXin = dup_up(f.X, sizeof(float) * (size_t)(B * d));
  elmo_cuda_cls_cast(&f.c, dXin, B, S);
  const elmo_cls_hyper h = {.lr = 0.5, .weight_decay = cc.no_decay ? 0.0 : 0.01, .seed = cc.seed, .step = 3};
  const size_t wb = (size_t)(f.L_pad * d), kb = 2 * (size_t)(cc.n_head * d);
  uint8_t *w0 = malloc(wb), *wv[2] = {malloc(wb), malloc(wb)};
  uint16_t *k0 = malloc(kb + 2), *kv[2] = {malloc(kb + 2), malloc(kb + 2)};
  float *dxv[3] = {malloc(sizeof(float) * (size_t)(B * d)), malloc(sizeof(float) * (size_t)(B * d)),
                   malloc(sizeof(float) * (size_t)(B * d))};
  int64_t changed = 0, dx_nonzero = 0;
  for (int64_t l0 = 0; l0 < f.L_pad; l0 += cc.chunk) {
    const int64_t n = f.L_pad - l0 < cc.chunk ? f.L_pad - l0 : cc.chunk;
    elmo_cuda_cls_logits(&f.c, B, l0, n, 0, S);
    elmo_cuda_cls_grad(&f.c, B, l0, n, f.d_yp, f.d_yi, 1, S);
    /* dX: 0 cp.async stages, 1 TMA stages (the wgmma kernel either way; above 128 rows the weights as the
     * register operand, dx_rs_kernel), 2 TMA stages with the weights widened in shared memory (ELMO_DX_RS=0) */
    for (int v = 0; v < 3; v++) {
      CK(cudaMemset(f.dX, 0, sizeof(float) * (size_t)(B * d)));
      if (v == 0) setenv("ELMO_DX_TMA", "0", 1);
      else unsetenv("ELMO_DX_TMA");
      if (v == 2) setenv("ELMO_DX_RS", "0", 1);
      else unsetenv("ELMO_DX_RS");
      assert_int_equal(elmo_cuda_cls_dx_tma(), v > 0);
      assert_int_equal(elmo_cuda_cls_dx_rs(), v < 2);
      elmo_cuda_cls_dx(&f.c, B, l0, n, f.dX, S);
      down(dxv[v], f.dX, sizeof(float) * (size_t)(B * d));
    }
    unsetenv("ELMO_DX_RS");
    for (int64_t i = 0; i < B * d; i++) {
      for (int v = 1; v < 3; v++)
        if (memcmp(&dxv[0][i], &dxv[v][i], sizeof(float)))
          fail_msg("chunk %lld: dX[%lld] %g with TMA (%s), %g without", (long long)l0, (long long)i, dxv[v][i],
                   v == 1 ? "default" : "ELMO_DX_RS=0", dxv[0][i]);
      dx_nonzero += dxv[0][i] != 0.0f;
    }
    down(w0, f.c.W, wb);
    if (kb) down(k0, f.c.kahan, kb);
    for (int wg = 1; wg >= 0; wg--) { /* update_wg_kernel; update_res_kernel / update_tma_kernel up to 128 rows */
      if (wg) unsetenv("ELMO_UPDATE_WGMMA");
      else setenv("ELMO_UPDATE_WGMMA", "0", 1);
      if (!wg && B > 128) continue; /* update_mma_kernel has no TMA form */
      for (int v = 0; v < 2; v++) { /* 0: cp.async copies, 1: TMA */
        CK(cudaMemcpy(f.c.W, w0, wb, cudaMemcpyHostToDevice));
        if (kb) CK(cudaMemcpy(f.c.kahan, k0, kb, cudaMemcpyHostToDevice));
        if (v == 0) setenv("ELMO_UPDATE_TMA", "0", 1);
        else unsetenv("ELMO_UPDATE_TMA");
        assert_int_equal(elmo_cuda_cls_update_tma(), v);
        elmo_cuda_cls_update(&f.c, B, l0, n, &h, S);
        down(wv[v], f.c.W, wb);
        if (kb) down(kv[v], f.c.kahan, kb);
      }
      for (size_t i = 0; i < wb; i++) {
        if (wv[0][i] != wv[1][i])
          fail_msg("chunk %lld (%s): weight %zu (label %lld, feature %lld) 0x%02x with TMA, 0x%02x without", (long long)l0,
                   wg ? "wgmma" : "mma.sync", i, (long long)(i / (size_t)d), (long long)(i % (size_t)d), wv[1][i], wv[0][i]);
        changed += wv[0][i] != w0[i];
      }
      if (kb && memcmp(kv[0], kv[1], kb)) fail_msg("chunk %lld: Kahan words differ with and without TMA", (long long)l0);
    }
    unsetenv("ELMO_UPDATE_WGMMA");
    CK(cudaMemcpy(f.c.W, wv[1], wb, cudaMemcpyHostToDevice)); /* the next chunk from the wgmma (or last) result */
    f.c.widened_l0 = -1; /* W changed */
  }
  print_message("update with TMA (L %lld, d %lld, B %lld): %lld weights changed, all as without; dX the same bits "
                "in all three forms (%lld nonzero)\n", (long long)cc.L, (long long)d, (long long)B, (long long)changed, (long long)dx_nonzero);
  if (changed == 0 || dx_nonzero == 0) fail_msg("no weight changed or dX all zero: the comparison says nothing");
  cudaFree(dXin);
  free(w0); free(wv[0]); free(wv[1]); free(k0); free(kv[0]); free(kv[1]); free(dxv[0]); free(dxv[1]); free(dxv[2]);
  fix_free(&f);
}

static void test_cls_update_tma(void **state) {
  (void)state;
  if (!elmo_cuda_cls_update_tma() || !elmo_cuda_cls_dx_tma()) skip();
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 300, .d = 64, .B = 37, .chunk = 128, .n_head = 5, .seed = 1});
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 700, .d = 208, .B = 128, .chunk = 512, .n_head = 3, .seed = 31});
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 333, .d = 384, .B = 16, .chunk = 336, .n_head = 0, .seed = 32,
                            .no_decay = 1});
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 1000, .d = 768, .B = 100, .chunk = 1008, .n_head = 4, .seed = 33});
  /* above 128 rows (update_wg_kernel): three batch stages, the last partial; two feature tiles */
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 700, .d = 384, .B = 130, .chunk = 512, .n_head = 3, .seed = 34});
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 333, .d = 208, .B = 300, .chunk = 336, .n_head = 4, .seed = 35,
                            .no_decay = 1});
  /* the DistilBERT-32 row's shape in small: four batch tiles (the last partial), six feature tiles */
  run_update_tma((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 1200, .d = 768, .B = 500, .chunk = 608, .n_head = 2, .seed = 36});
  unsetenv("ELMO_UPDATE_TMA");
  unsetenv("ELMO_DX_TMA");
}

/* The fused e4m3 logits + gradient (elmo_cuda_cls_logits_grad) against the CPU's logits and G:
 * |dG| <= |dz| / 4 + both bf16 roundings, dz within check_logits' FP8 tolerance; positives spread
 * over every label (rows with none, rows with runs of neighbours inside one tile), partial label
 * and K tiles, padded labels, one or two warpgroups of rows, and more label tiles than blocks (the
 * per-row cursors skip the positives of tiles other blocks take). */
static void run_lg_fused(int64_t L, int64_t d, int64_t B, int64_t chunk, uint64_t seed) {
  cls_fix f;
  memset(&f, 0, sizeof f);
  f.cc = (cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = L, .d = d, .B = B, .chunk = chunk, .n_head = 0, .seed = seed};
  fix_host(&f);
  free(f.yi);
  f.yi = malloc(sizeof(int32_t) * (size_t)(B * 12 + 1));
  uint64_t s = seed * 7 + 1;
  int64_t ny = 0;
  for (int64_t b = 0; b < B; b++) {
    f.yp[b] = ny;
    const int cnt = (int)(tu_rand_u64(&s) % 13);
    int64_t last = -1;
    for (int j = 0; j < cnt; j++) {
      const int64_t lab = last + 1 + (int64_t)(tu_rand_u64(&s) % (uint64_t)(b % 4 == 0 ? 3 : L / 8 + 1));
      if (lab >= L) break;
      f.yi[ny++] = (int32_t)lab;
      last = lab;
    }
  }
  f.yp[B] = ny;
  fix_device(&f);
  if (!elmo_cuda_cls_lg_wgmma() || !f.c.fp8_logits) {
    fix_free(&f);
    skip();
  }
  float *Xq = malloc(sizeof(float) * (size_t)(B * d)), *zc = malloc(sizeof(float) * (size_t)(B * chunk));
  float *Gc = malloc(sizeof(float) * (size_t)(B * chunk)), *Gd = malloc(sizeof(float) * (size_t)(B * chunk));
  float *zd = malloc(sizeof(float) * (size_t)(B * chunk));
  float *dXin = dup_up(f.X, sizeof(float) * (size_t)(B * d));
  elmo_cls_cast_input(f.X, B * d, 1, Xq);
  elmo_cuda_cls_cast(&f.c, dXin, B, S);
  elmo_cls_weights w = cpu_weights(&f, f.W, NULL);
  int64_t diff = 0, diff_lt = 0, diff_fl = 0, total = 0, npos = 0;
  for (int64_t l0 = 0; l0 < f.L_pad; l0 += chunk) {
    const int64_t n = f.L_pad - l0 < chunk ? f.L_pad - l0 : chunk;
    elmo_cls_logits(&w, Xq, B, l0, n, 1, zc);
    memcpy(Gc, zc, sizeof(float) * (size_t)(B * n));
    elmo_cls_grad(Gc, B, l0, n, L, f.yp, f.yi, 0);
    CK(cudaMemset(f.c.z, 0xFF, (size_t)(B * n) * 2));
    /* d > 768: Xq and two weight rings do not fit shared memory; the caller runs logits + grad */
    assert_int_equal(elmo_cuda_cls_logits_grad(&f.c, B, l0, n, f.d_yp, f.d_yi, S), d <= 768);
    if (d > 768) break;
    down_z(&f, n, Gd);
    if (elmo_cuda_cls_lg_tma()) { /* the cp.async form of the kernel: the same G bit for bit */
      setenv("ELMO_LG_TMA", "0", 1);
      CK(cudaMemset(f.c.z, 0xFF, (size_t)(B * n) * 2));
      assert_int_equal(elmo_cuda_cls_logits_grad(&f.c, B, l0, n, f.d_yp, f.d_yi, S), 1);
      unsetenv("ELMO_LG_TMA");
      down_z(&f, n, zd);
      if (memcmp(zd, Gd, sizeof(float) * (size_t)(B * n)))
        fail_msg("chunk %lld: fused logits + gradient differ with and without TMA stages", (long long)l0);
    }
    /* the same G through cuBLASLt's logits and the gradient kernel, for the count of differences */
    elmo_cuda_cls_logits(&f.c, B, l0, n, 0, S);
    elmo_cuda_cls_grad(&f.c, B, l0, n, f.d_yp, f.d_yi, 0, S);
    down_z(&f, n, zd);
    for (int64_t i = 0; i < B * n; i++) {
      diff_lt += zd[i] != Gc[i] && l0 + i % n < L;
      diff_fl += zd[i] != Gd[i];
    }
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < n; j++) {
        const float gd = Gd[b * n + j], gc = Gc[b * n + j], z = zc[b * n + j];
        if (l0 + j >= L) {
          if (gd != 0.0f) fail_msg("padded label %lld row %lld: G %g", (long long)(l0 + j), (long long)b, gd);
          continue;
        }
        double mag = 0;
        for (int64_t k = 0; k < d; k++) mag += fabs((double)Xq[b * d + k] * elmo_cls_w(&w, l0 + j, k));
        const double tz = 1e-3 * mag + fabs(z) / 128.0 + 1e-6;
        const double tol = 0.25 * tz + (fabs(gd) + fabs(gc)) / 256.0 + 1e-6;
        if (!(fabs((double)gd - gc) <= tol))
          fail_msg("G[%lld, %lld] (l0 %lld): fused %g cpu %g (z %g, tol %g)", (long long)b, (long long)(l0 + j),
                   (long long)l0, gd, gc, z, tol);
        diff += gd != gc;
        npos += gc < 0.0f;
        total++;
      }
  }
  print_message("fused logits+grad L %lld d %lld B %lld chunk %lld (%s accumulation): %lld of %lld G differ from the "
                "CPU's (%lld positives; cuBLASLt logits + grad kernel: %lld; fused against that: %lld)\n", (long long)L,
                (long long)d, (long long)B, (long long)chunk, elmo_cuda_fp8_fast_accum() ? "fast" : "promoted",
                (long long)diff, (long long)total, (long long)npos, (long long)diff_lt, (long long)diff_fl);
  if (diff * 10 > total) fail_msg("fused G differs from the CPU's in %lld of %lld", (long long)diff, (long long)total);
  /* the fused kernel sums as cuBLASLt does in either mode (the same bits on the H100 and H200, 2026-11-28);
   * another cuBLASLt algorithm may sum in another order, so rare differences pass */
  if (diff_fl * 1000 > total) fail_msg("fused G differs from cuBLASLt's in %lld of %lld", (long long)diff_fl, (long long)total);
  cudaFree(dXin);
  free(Xq); free(zc); free(Gc); free(Gd); free(zd);
  fix_free(&f);
}

static void test_cls_logits_grad_fused(void **state) {
  (void)state;
  for (int promoted = 0; promoted < 2; promoted++) { /* the default fast accumulation, then ELMO_FP8_FAST_ACCUM=0 */
    if (promoted) setenv("ELMO_FP8_FAST_ACCUM", "0", 1);
    run_lg_fused(300, 64, 37, 128, 31);     /* one warpgroup, half a K-block, partial tiles, padded labels */
    run_lg_fused(1000, 768, 128, 512, 32);  /* BERT's width, two warpgroups */
    run_lg_fused(700, 80, 100, 352, 33);    /* a partial second warpgroup, d not a multiple of 128 */
    run_lg_fused(401, 768, 64, 416, 34);    /* one m64 half of rows */
    run_lg_fused(160, 1024, 64, 160, 36);   /* too wide: not taken */
    run_lg_fused(20000, 32, 40, 20000, 35); /* 157 label tiles: blocks take several, cursors skip */
    run_lg_fused(700, 80, 200, 352, 37);    /* two batch slices, the second partial (72 rows, one m64 half + 8) */
    run_lg_fused(1500, 768, 512, 768, 38);  /* four full slices of 128 rows */
  }
  unsetenv("ELMO_FP8_FAST_ACCUM");
}

static void test_cls_ops_bf16(void **state) {
  run_cls_ops((cls_case){.dt = ELMO_BF16, .fp8_input = 1, .L = 300, .d = 64, .B = 37, .chunk = 96, .n_head = 4, .seed = 3});
  run_cls_ops((cls_case){.dt = ELMO_BF16, .fp8_input = 0, .L = 130, .d = 160, .B = 70, .chunk = 144, .n_head = 0, .seed = 4});
  run_cls_ops((cls_case){.dt = ELMO_BF16, .fp8_input = 1, .L = 400, .d = 256, .B = 200, .chunk = 272, .n_head = 2, .seed = 13});
}

static void test_cls_ops_fp32(void **state) {
  run_cls_ops((cls_case){.dt = ELMO_F32, .fp8_input = 1, .L = 200, .d = 64, .B = 21, .chunk = 64, .n_head = 3, .seed = 5});
}

/* ---- the whole step ---------------------------------------------------------------------------- */

/* Weights of a step (W [L_pad, d], NaN fails) against a reference: *mism = how many differ, *far_rows =
 * label rows with a weight more than one code step away (fp32: more than 1e-4). */
static void step_weight_diffs(const void *W, const void *ref, int64_t L_pad, int64_t d, elmo_dtype dt, const char *what,
                              int64_t *mism, int64_t *far_rows) {
  for (int64_t l = 0; l < L_pad; l++) {
    int far = 0;
    for (int64_t k = 0; k < d; k++) {
      if (weight_nan(W, l * d + k, dt)) fail_msg("%s W[%lld, %lld]: NaN", what, (long long)l, (long long)k);
      const double dist = weight_dist(W, ref, l * d + k, dt);
      *mism += dist > 0;
      far |= dist > (dt == ELMO_F32 ? 1e-4 : 1.0);
    }
    *far_rows += far;
  }
}

static void run_cls_step(cls_case cc) {
  cls_fix f;
  fix_open(&f, cc);
  const int64_t B = cc.B, d = cc.d;
  float *Xq = malloc(sizeof(float) * (size_t)(B * d)), *dXc = malloc(sizeof(float) * (size_t)(B * d));
  float *zc = malloc(sizeof(float) * (size_t)(B * cc.chunk)), *dg = malloc(sizeof(float) * (size_t)(B * d));
  float *dXin = dup_up(f.X, sizeof(float) * (size_t)(B * d));
  elmo_cls_hyper h = {.lr = 0.3, .weight_decay = 0.001, .seed = 99, .step = 12};
  elmo_cuda_cls_step(&f.c, dXin, B, f.d_yp, f.d_yi, &h, !cc.skip_loss, f.dX, S);
  elmo_cls_weights w = cpu_weights(&f, f.W, f.kahan);
  double lc = elmo_cls_step(&w, f.X, cc.fp8_input, B, cc.chunk, f.yp, f.yi, &h, !cc.skip_loss, Xq, zc, dXc), lg = 0;
  down(&lg, f.c.loss, sizeof(double));
  if (cc.skip_loss && (lg != 0.0 || lc != 0.0)) fail_msg("skip-loss step: loss gpu %g cpu %g", lg, lc);
  down(dg, f.dX, sizeof(float) * (size_t)(B * d));
  if (!(fabs(lg - lc) <= 1e-4 * fabs(lc))) fail_msg("step loss gpu %.9g cpu %.9g", lg, lc);
  double scale = 0;
  for (int64_t i = 0; i < B * d; i++) scale = fmax(scale, fabs(dXc[i]));
  for (int64_t i = 0; i < B * d; i++)
    if (!(fabs(dg[i] - dXc[i]) <= 1e-3 * scale + 1e-5)) fail_msg("step dX[%lld]: gpu %g cpu %g", (long long)i, dg[i], dXc[i]);
  size_t wb = (size_t)(f.L_pad * d) * wsize(cc.dt);
  void *Wg = malloc(wb);
  down(Wg, f.c.W, wb);
  /* A label whose G differs by one bf16 step (device expf) moves its whole row by lr G x: such
   * rows may differ by more than one step; they must be rare. Other rows: neighbours only. */
  int64_t mism = 0, far_rows = 0;
  step_weight_diffs(Wg, f.W, f.L_pad, d, cc.dt, "step", &mism, &far_rows);
  print_message("step dtype %d: loss gpu %.6f cpu %.6f, %lld weights differ, %lld rows by more than one step\n",
                cc.dt, lg, lc, (long long)mism, (long long)far_rows);
  if (far_rows > 2 + f.L_pad / 50) fail_msg("step: %lld label rows differ", (long long)far_rows);
  if (cc.dt != ELMO_F32 && mism * 50 > f.L_pad * d) fail_msg("step: %lld weights differ", (long long)mism);
  cudaFree(dXin);
  free(Wg); free(Xq); free(dXc); free(zc); free(dg);
  fix_free(&f);
}

/* dX [B, d] and the e4m3 weights [L_pad, d] of a fixture's device step, into new host buffers. */
static void step_download(cls_fix *f, float **dg, void **Wg) {
  const int64_t B = f->cc.B, d = f->cc.d;
  *dg = malloc(sizeof(float) * (size_t)(B * d));
  down(*dg, f->dX, sizeof(float) * (size_t)(B * d));
  *Wg = malloc((size_t)(f->L_pad * d));
  down(*Wg, f->c.W, (size_t)(f->L_pad * d));
}

/* A skip-loss e4m3 step at BERT's width against the same step with logits and grad unfused
 * (ELMO_LG_WGMMA=0), both on the device: at d = 768, B = 128 both differ from the CPU in hundreds of
 * label rows by more than one code step (lr 0.3 turns a one-ulp G difference into several steps of
 * the small weights; measured H100 2026-11-27: 463 rows either way), too many for run_cls_step's
 * bound, so the check here is that fusing changes nothing beyond rare single code steps. */
static void run_cls_step_fused(cls_case cc) {
  cls_fix f[2];
  float *dg[2];
  void *Wg[2];
  const int64_t B = cc.B, d = cc.d;
  elmo_cls_hyper h = {.lr = 0.3, .weight_decay = 0.001, .seed = 99, .step = 12};
  for (int v = 0; v < 2; v++) { /* v = 0: unfused, 1: the default (fused where the device has it) */
    memset(&f[v], 0, sizeof f[v]);
    f[v].cc = cc;
    fix_host(&f[v]);
    fix_device(&f[v]);
    float *dXin = dup_up(f[v].X, sizeof(float) * (size_t)(B * d));
    if (v == 0) setenv("ELMO_LG_WGMMA", "0", 1);
    elmo_cuda_cls_step(&f[v].c, dXin, B, f[v].d_yp, f[v].d_yi, &h, 0, f[v].dX, S);
    unsetenv("ELMO_LG_WGMMA");
    step_download(&f[v], &dg[v], &Wg[v]);
    cudaFree(dXin);
  }
  double scale = 0;
  for (int64_t i = 0; i < B * d; i++) scale = fmax(scale, fabs(dg[0][i]));
  for (int64_t i = 0; i < B * d; i++)
    if (!(fabs(dg[1][i] - dg[0][i]) <= 1e-3 * scale + 1e-5)) fail_msg("fused step dX[%lld]: %g, unfused %g", (long long)i, dg[1][i], dg[0][i]);
  /* the two logits differ only in the order of FP32 additions (none in practice: the same bits on
   * the H100); a G one ulp apart would move its label row by more than a step, which must stay rare */
  int64_t mism = 0, far_rows = 0;
  step_weight_diffs(Wg[1], Wg[0], f[0].L_pad, d, ELMO_FP8, "fused step", &mism, &far_rows);
  print_message("skip-loss step L %lld d %lld B %lld: fused logits+grad %s; %lld of %lld weights, %lld rows by more "
                "than one step, differ from the unfused step\n", (long long)cc.L, (long long)d, (long long)B,
                elmo_cuda_cls_lg_wgmma() ? "on" : "not on this device", (long long)mism, (long long)(f[0].L_pad * d),
                (long long)far_rows);
  if (far_rows > 2 + f[0].L_pad / 200 || mism * 200 > f[0].L_pad * d)
    fail_msg("fused step: %lld weights, %lld rows differ", (long long)mism, (long long)far_rows);
  for (int v = 0; v < 2; v++) {
    free(dg[v]);
    free(Wg[v]);
    fix_free(&f[v]);
  }
}

/* The step with its fused kernels launched early and their tiles taken at run time (the defaults) against
 * the same two steps with both off (ELMO_CLS_PDL=0, ELMO_CLS_DYN=0): the same bits, weights and dX. The
 * positive labels are spread over every chunk, so the fused logits kernel's row cursors cross tiles other
 * warpgroups took; the second step finds the tile counters zeroed by the first. */
static void run_cls_step_sched(cls_case cc) {
  cls_fix f[2];
  float *dg[2];
  void *Wg[2];
  const int64_t B = cc.B, d = cc.d;
  for (int v = 0; v < 2; v++) {
    memset(&f[v], 0, sizeof f[v]);
    f[v].cc = cc;
    fix_host(&f[v]);
    int64_t n = 0; /* 0..5 labels a row, sorted and unique, anywhere in [0, L) */
    for (int64_t b = 0; b < B; b++) {
      const int64_t cnt = f[v].yp[b + 1] - f[v].yp[b], step = cc.L / (cnt + 1);
      f[v].yp[b] = n;
      for (int64_t j = 0; j < cnt; j++) f[v].yi[n++] = (int32_t)(j * step + (b * 7919 + j * 104729) % step);
    }
    f[v].yp[B] = n;
    fix_device(&f[v]);
    float *dXin = dup_up(f[v].X, sizeof(float) * (size_t)(B * d));
    if (v == 0) {
      setenv("ELMO_CLS_PDL", "0", 1);
      setenv("ELMO_CLS_DYN", "0", 1);
    }
    for (int st = 0; st < 2; st++) {
      elmo_cls_hyper h = {.lr = 0.3, .weight_decay = 0.0, .seed = 99, .step = 12 + st};
      elmo_cuda_cls_step(&f[v].c, dXin, B, f[v].d_yp, f[v].d_yi, &h, 0, f[v].dX, S);
    }
    unsetenv("ELMO_CLS_PDL");
    unsetenv("ELMO_CLS_DYN");
    step_download(&f[v], &dg[v], &Wg[v]);
    cudaFree(dXin);
  }
  int64_t wdiff = 0, xdiff = 0, nan = 0;
  for (int64_t i = 0; i < f[0].L_pad * d; i++) wdiff += ((uint8_t *)Wg[0])[i] != ((uint8_t *)Wg[1])[i];
  for (int64_t i = 0; i < B * d; i++) {
    xdiff += memcmp(&dg[0][i], &dg[1][i], 4) != 0;
    nan += isnan(dg[1][i]);
  }
  int64_t moved = 0; /* the steps did something: weights that left their start */
  for (int64_t i = 0; i < f[0].L_pad * d; i++) moved += ((uint8_t *)Wg[1])[i] != ((uint8_t *)f[1].W)[i];
  print_message("step L %lld d %lld B %lld chunk %lld, launched early + tiles at run time vs neither: %lld weights "
                "and %lld dX differ (%lld weights moved)\n", (long long)cc.L, (long long)d, (long long)B,
                (long long)cc.chunk, (long long)wdiff, (long long)xdiff, (long long)moved);
  if (wdiff || xdiff || nan || moved * 10 < f[0].L_pad * d)
    fail_msg("scheduled step: %lld weights, %lld dX differ, %lld NaN, %lld moved", (long long)wdiff, (long long)xdiff,
             (long long)nan, (long long)moved);
  for (int v = 0; v < 2; v++) {
    free(dg[v]);
    free(Wg[v]);
    fix_free(&f[v]);
  }
}

static void test_cls_step(void **state) {
  run_cls_step((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 500, .d = 128, .B = 64, .chunk = 160, .n_head = 6, .seed = 7});
  run_cls_step((cls_case){.dt = ELMO_BF16, .fp8_input = 1, .L = 250, .d = 64, .B = 33, .chunk = 256, .n_head = 0, .seed = 8});
  run_cls_step((cls_case){.dt = ELMO_F32, .fp8_input = 0, .L = 120, .d = 32, .B = 20, .chunk = 64, .n_head = 2, .seed = 9});
  /* chunks in pieces (dX slices accumulated over pieces and chunks, summed once) */
  run_cls_step((cls_case){.dt = ELMO_FP8, .fp8_input = 0, .L = 2000, .d = 256, .B = 128, .chunk = 1024, .n_head = 4,
                          .seed = 10, .piece = 384});
  run_cls_step((cls_case){.dt = ELMO_BF16, .fp8_input = 0, .L = 900, .d = 160, .B = 48, .chunk = 512, .n_head = 2,
                          .seed = 12, .piece = 256});
  /* skip-loss steps with e4m3 input: logits + grad in one kernel where the device has it */
  run_cls_step((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 500, .d = 128, .B = 64, .chunk = 160, .n_head = 6,
                          .seed = 7, .skip_loss = 1});
  run_cls_step_fused((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 3000, .d = 768, .B = 128, .chunk = 1024,
                                .n_head = 4, .seed = 14, .skip_loss = 1});
  run_cls_step((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 700, .d = 96, .B = 50, .chunk = 352, .n_head = 0,
                          .seed = 15, .skip_loss = 1});
  /* launched early, tiles at run time: several tiles a worker (2 x 547 logits tiles, 2 x 3,282 update tiles);
   * two slices of 128 rows (logits tiles round-robin, launched early); one 128-feature block (d 96) */
  run_cls_step_sched((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 140000, .d = 768, .B = 128, .chunk = 70016,
                                .n_head = 4, .seed = 16, .skip_loss = 1});
  run_cls_step_sched((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 40000, .d = 256, .B = 256, .chunk = 13344,
                                .n_head = 2, .seed = 17, .skip_loss = 1});
  run_cls_step_sched((cls_case){.dt = ELMO_FP8, .fp8_input = 1, .L = 70000, .d = 96, .B = 100, .chunk = 35008,
                                .n_head = 0, .seed = 18, .skip_loss = 1});
}

/* ---- top-k --------------------------------------------------------------------------------- */

/* L labels (padded to Lp = round16(L)) in chunks of `span`, against the CPU's elmo_topk_merge. */
static void run_topk_at(int k, uint64_t seed, int64_t L, int64_t span) {
  const int64_t B = 23, Lp = (L + 15) / 16 * 16 + (L % 16 ? 0 : 16); /* at least one padded label */
  uint64_t s = seed;
  float *z = malloc(sizeof(float) * B * Lp);
  for (int64_t i = 0; i < B * Lp; i++) z[i] = roundf(tu_rand_normal(&s) * 8.0f) / 4.0f; /* many exact ties */
  for (int64_t b = 0; b < B; b++) {
    z[b * Lp + (b * 37) % L] = 50.0f + (float)b; /* planted large scores */
    z[b * Lp + (b * 11 + 400) % L] = 50.0f + (float)b; /* a tie among them */
    z[b * Lp + L - 1 - (b * 13) % (L / 2)] = 60.0f; /* late ones, after the lists have filled */
    z[b * Lp + L + 3 % (Lp - L)] = 1e9f;           /* a padded label: never ranked */
    z[b * Lp + 5] = -INFINITY;
    if (b % 4 == 1) z[b * Lp + 7] = NAN; /* ranks as -inf on both */
  }
  /* filter: a few labels per row, including a planted winner */
  int64_t *fp = malloc(sizeof(int64_t) * (B + 1));
  int32_t *fi = malloc(sizeof(int32_t) * B * 4);
  int64_t n = 0;
  for (int64_t b = 0; b < B; b++) {
    fp[b] = n;
    int32_t a = (int32_t)((b * 37) % L), c = (int32_t)((b * 3 + 1) % L);
    if (b % 3 == 0) { fi[n++] = a < c ? a : c; if (a != c) fi[n++] = a < c ? c : a; }
  }
  fp[B] = n;
  int32_t *tk = malloc(sizeof(int32_t) * B * k), *gk = malloc(sizeof(int32_t) * B * k);
  float *tv = malloc(sizeof(float) * B * k), *gv = malloc(sizeof(float) * B * k);
  for (int64_t i = 0; i < B * k; i++) { tk[i] = -1; tv[i] = -INFINITY; }
  int32_t *dk = dpoison(sizeof(int32_t) * B * k);
  float *dv = dpoison(sizeof(float) * B * k), *dz = dpoison(sizeof(float) * B * span);
  int64_t *dfp = dup_up(fp, sizeof(int64_t) * (B + 1));
  int32_t *dfi = dup_up(fi, sizeof(int32_t) * (size_t)(n + 1));
  elmo_cuda_topk_init(dk, dv, B, k, S);
  float *zc = malloc(sizeof(float) * B * span);
  for (int64_t l0 = 0; l0 < Lp; l0 += span) {
    int64_t m = Lp - l0 < span ? Lp - l0 : span;
    for (int64_t b = 0; b < B; b++) memcpy(zc + b * m, z + b * Lp + l0, sizeof(float) * m);
    CK(cudaMemcpy(dz, zc, sizeof(float) * B * m, cudaMemcpyHostToDevice));
    elmo_cuda_topk_merge(dz, m, B, l0, m, L, k, dfp, dfi, dk, dv, S);
    elmo_topk_merge(zc, B, l0, m, L, k, NULL, fp, fi, tk, tv);
    CK(cudaStreamSynchronize(S));
  }
  down(gk, dk, sizeof(int32_t) * B * k);
  down(gv, dv, sizeof(float) * B * k);
  for (int64_t i = 0; i < B * k; i++) {
    if (gk[i] != tk[i] || memcmp(&gv[i], &tv[i], 4))
      fail_msg("k=%d entry %lld: gpu (%d, %g) cpu (%d, %g)", k, (long long)i, gk[i], gv[i], tk[i], tv[i]);
    assert_true(gk[i] < L);
  }
  cudaFree(dk); cudaFree(dv); cudaFree(dz); cudaFree(dfp); cudaFree(dfi);
  free(z); free(fp); free(fi); free(tk); free(gk); free(tv); free(gv); free(zc);
}

static void run_topk(int k, uint64_t seed) { run_topk_at(k, seed, 1000, 336); }

static void test_topk(void **state) {
  run_topk(1, 21);
  run_topk(5, 22);
  run_topk(100, 23);
  run_topk(700, 24); /* more than one chunk's worth of candidates per merge */
  /* chunks of several of the scan's super-tiles (16 x 512 scores a thread block), most of them skipped */
  run_topk_at(5, 25, 100000, 40000);
  run_topk_at(100, 26, 77777, 77792);
}

/* ---- sparse encoder -------------------------------------------------------------------------- */

typedef struct bow {
  int64_t B, D, d, nnz;
  int64_t *ip;
  int32_t *ix;
  float *v;
} bow;

static void make_bow(bow *w, uint64_t seed) {
  uint64_t s = seed;
  w->ip = malloc(sizeof(int64_t) * (w->B + 1));
  w->ix = malloc(sizeof(int32_t) * w->B * 40);
  w->v = malloc(sizeof(float) * w->B * 40);
  int64_t n = 0;
  for (int64_t b = 0; b < w->B; b++) {
    w->ip[b] = n;
    int c = b == 3 ? 0 : 1 + (int)(tu_rand_u64(&s) % 39); /* row 3 is empty: norm clamps */
    for (int j = 0; j < c; j++) {
      w->ix[n] = j < 3 ? (int32_t)(j * 5) : (int32_t)(tu_rand_u64(&s) % (uint64_t)w->D); /* popular features */
      w->v[n++] = 0.1f + tu_rand_uniform(&s);
    }
  }
  w->ip[w->B] = n;
  w->nnz = n;
}

static void run_sparse(int layernorm, elmo_dtype dt, uint64_t seed) {
  bow w = {.B = 29, .D = 300, .d = 96};
  make_bow(&w, seed);
  const int64_t B = w.B, D = w.D, d = w.d;
  uint64_t s = seed * 7 + 1;
  size_t es = elmo_dtype_size(dt);
  size_t np = (size_t)(D * d + 2 * d);
  void *P = malloc(np * es);
  float *Pf = malloc(np * sizeof(float));
  for (size_t i = 0; i < np; i++) {
    float x = i >= (size_t)(D * d) ? 1.0f + 0.1f * tu_rand_normal(&s) : 0.05f * tu_rand_normal(&s);
    if (dt == ELMO_BF16) { ((uint16_t *)P)[i] = elmo_f32_to_bf16(x); Pf[i] = elmo_bf16_to_f32(((uint16_t *)P)[i]); }
    else { ((float *)P)[i] = x; Pf[i] = x; }
  }
  const float *gam = layernorm ? Pf + D * d : NULL, *bet = layernorm ? Pf + D * d + d : NULL;
  elmo_sparse_cache sc;
  elmo_sparse_cache_alloc(&sc, B, d);
  float *out = malloc(sizeof(float) * B * d), *gout = malloc(sizeof(float) * B * d);
  elmo_sparse_forward(Pf, gam, bet, d, B, w.ip, w.ix, w.v, &sc, out);
  /* device */
  void *dP = dup_up(P, np * es);
  elmo_cuda_sparse e = {.E = dP, .dtype = dt, .D = D, .d = d};
  if (layernorm) { e.gamma = (char *)dP + (size_t)(D * d) * es; e.beta = (char *)dP + (size_t)(D * d + d) * es; }
  e.x = dpoison(sizeof(float) * B * d);
  e.norm = dpoison(sizeof(float) * B);
  e.xhat = dpoison(sizeof(float) * B * d);
  e.rstd = dpoison(sizeof(float) * B);
  int64_t *dip = dup_up(w.ip, sizeof(int64_t) * (B + 1));
  int32_t *dix = dup_up(w.ix, sizeof(int32_t) * w.nnz);
  float *dv = dup_up(w.v, sizeof(float) * w.nnz), *dout = dpoison(sizeof(float) * B * d);
  elmo_cuda_sparse_forward(&e, B, dip, dix, dv, dout, S);
  down(gout, dout, sizeof(float) * B * d);
  for (int64_t i = 0; i < B * d; i++)
    if (!(fabsf(gout[i] - out[i]) <= 1e-6f * fabsf(out[i]) + 1e-7f)) fail_msg("forward[%lld]: gpu %g cpu %g", (long long)i, gout[i], out[i]);
  /* backward from the same dout on both sides */
  float *dy = malloc(sizeof(float) * B * d);
  for (int64_t i = 0; i < B * d; i++) dy[i] = tu_rand_normal(&s);
  float *dyg = dup_up(dy, sizeof(float) * B * d);
  float *dE = calloc((size_t)(D * d + 2 * d), sizeof(float));
  elmo_sparse_backward(gam, d, B, w.ip, w.ix, w.v, &sc, dy, dE, dE + D * d, dE + D * d + d);
  float *ddE = dpoison(sizeof(float) * (D * d + 2 * d));
  CK(cudaMemset(ddE, 0, sizeof(float) * D * d)); /* rows outside the batch: the caller zeroes */
  elmo_cuda_sparse_sort srt;
  srt.entry_row = dpoison(4 * w.nnz); srt.iota = dpoison(4 * w.nnz);
  srt.feat = dpoison(4 * w.nnz); srt.ent = dpoison(4 * w.nnz);
  srt.temp_bytes = elmo_cuda_sparse_sort_temp_bytes(w.nnz);
  assert_true(srt.temp_bytes > 0);
  srt.temp = dpoison(srt.temp_bytes);
  elmo_cuda_sparse_prepare(&srt, B, w.nnz, dip, dix, S);
  elmo_cuda_sparse_backward(&e, B, w.nnz, dv, &srt, dyg, ddE, layernorm ? ddE + D * d : NULL,
                            layernorm ? ddE + D * d + d : NULL, S);
  float *gE = malloc(sizeof(float) * (D * d + 2 * d));
  down(gE, ddE, sizeof(float) * (D * d + (layernorm ? 2 * d : 0)));
  for (int64_t i = 0; i < D * d + (layernorm ? 2 * d : 0); i++)
    if (!(fabsf(gE[i] - dE[i]) <= 2e-5f * fabsf(dE[i]) + 1e-6f))
      fail_msg("backward ln=%d dtype %d [%lld]: gpu %g cpu %g", layernorm, dt, (long long)i, gE[i], dE[i]);
  cudaFree(dP); cudaFree((void *)e.x); cudaFree(e.norm); cudaFree(e.xhat); cudaFree(e.rstd); cudaFree(dip);
  cudaFree(dix); cudaFree(dv); cudaFree(dout); cudaFree(dyg); cudaFree(ddE); cudaFree(srt.entry_row);
  cudaFree(srt.iota); cudaFree(srt.feat); cudaFree(srt.ent); cudaFree(srt.temp);
  elmo_sparse_cache_free(&sc);
  free(P); free(Pf); free(out); free(gout); free(dy); free(dE); free(gE);
  free(w.ip); free(w.ix); free(w.v);
}

static void test_sparse_encoder(void **state) {
  run_sparse(0, ELMO_BF16, 31);
  run_sparse(1, ELMO_BF16, 32);
  run_sparse(1, ELMO_F32, 33);
}

/* ---- AdamW and dropout ---------------------------------------------------------------------- */

/* nr = 0: the fixed ranges below over 5003 elements; else nr random disjoint ranges over n (the
 * device searches them 32 at a time: more than 1024 ranges take three rounds). */
/* Copies n elements of es bytes to the device one element past a 16-byte boundary when shift
 * (the kernel then cannot take element pairs and runs its one-element fallback). */
static void *dup_up_shift(const void *h, size_t es, int64_t n, int shift) {
  char *d = NULL;
  CK(cudaMalloc((void **)&d, (size_t)(n + 1) * es));
  CK(cudaMemcpy(d + shift * es, h, (size_t)n * es, cudaMemcpyHostToDevice));
  return d + shift * es;
}

static void run_adamw(elmo_dtype dt, int kahan, uint64_t seed, int64_t n, int nr, int shift) {
  uint64_t s = seed;
  size_t es = elmo_dtype_size(dt);
  void *p = malloc(n * es), *m = malloc(n * es), *v = malloc(n * es);
  uint16_t *c = calloc(n, 2);
  float *g = malloc(sizeof(float) * n);
  uint8_t *mask = malloc(n);
  for (int64_t i = 0; i < n; i++) {
    float x = tu_rand_normal(&s) * 0.05f, mm = tu_rand_normal(&s) * 1e-3f, vv = tu_rand_uniform(&s) * 1e-5f;
    if (dt == ELMO_BF16) {
      ((uint16_t *)p)[i] = elmo_f32_to_bf16(x); ((uint16_t *)m)[i] = elmo_f32_to_bf16(mm); ((uint16_t *)v)[i] = elmo_f32_to_bf16(vv);
    } else {
      ((float *)p)[i] = x; ((float *)m)[i] = mm; ((float *)v)[i] = vv;
    }
    c[i] = kahan ? elmo_f32_to_bf16(tu_rand_normal(&s) * 1e-6f) : 0;
    g[i] = tu_rand_normal(&s) * (i % 97 == 0 ? 100.0f : 0.01f);
    mask[i] = 0;
  }
  int64_t fixed[6] = {1001, 3005, 4003, 3005, 3006, 5003}; /* starts, then ends: 3005 starts where one ends */
  const int k = nr ? nr : 3;
  int64_t *ranges = malloc(sizeof(int64_t) * 2 * (size_t)k);
  if (!nr) {
    memcpy(ranges, fixed, sizeof fixed);
  } else { /* k ranges in k slots of n / k elements: random bounds inside each slot, some touching */
    const int64_t slot = n / k;
    for (int r = 0; r < k; r++) {
      int64_t a = r * slot + (int64_t)(tu_rand_u64(&s) % (uint64_t)(slot / 2 + 1));
      int64_t b = a + 1 + (int64_t)(tu_rand_u64(&s) % (uint64_t)(slot - (a - r * slot)));
      if (r % 7 == 3) b = (r + 1) * slot; /* ends where the next slot begins */
      ranges[r] = a;
      ranges[k + r] = b;
    }
  }
  for (int r = 0; r < k; r++)
    for (int64_t i = ranges[r]; i < ranges[k + r]; i++) mask[i] = 1;
  void *dp = dup_up_shift(p, es, n, shift), *dm = dup_up_shift(m, es, n, shift), *dv = dup_up_shift(v, es, n, shift);
  uint16_t *dc = kahan ? dup_up_shift(c, 2, n, shift) : NULL;
  float *dg = dup_up_shift(g, sizeof(float), n, shift);
  int64_t *dr = dup_up(ranges, sizeof(int64_t) * 2 * (size_t)k);
  elmo_cuda_decay dec = {.start = dr, .end = dr + k, .n = k};
  for (int t = 1; t <= 3; t++) {
    elmo_adamw_hyper h = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f, .t = t};
    elmo_cuda_adamw(dp, dm, dv, dc, dt, dg, n, &dec, &h, S);
    elmo_adamw_update(p, m, v, kahan ? c : NULL, dt, g, n, mask, &h);
  }
  void *hp = malloc(n * es), *hm = malloc(n * es), *hv = malloc(n * es);
  uint16_t *hc = malloc(2 * n);
  down(hp, dp, n * es);
  down(hm, dm, n * es);
  down(hv, dv, n * es);
  if (kahan) down(hc, dc, 2 * n);
  for (int64_t i = 0; i < n; i++) {
    if (memcmp((char *)hp + i * es, (char *)p + i * es, es)) fail_msg("adamw p[%lld] differs", (long long)i);
    if (memcmp((char *)hm + i * es, (char *)m + i * es, es)) fail_msg("adamw m[%lld] differs", (long long)i);
    if (memcmp((char *)hv + i * es, (char *)v + i * es, es)) fail_msg("adamw v[%lld] differs", (long long)i);
    if (kahan && hc[i] != c[i]) fail_msg("adamw kahan[%lld] differs", (long long)i);
  }
  cudaFree((char *)dp - shift * es); cudaFree((char *)dm - shift * es); cudaFree((char *)dv - shift * es);
  if (dc) cudaFree(dc - shift);
  cudaFree(dg - shift); cudaFree(dr);
  free(p); free(m); free(v); free(c); free(g); free(mask); free(hp); free(hm); free(hv); free(hc); free(ranges);
}

static void test_adamw(void **state) {
  run_adamw(ELMO_BF16, 1, 41, 5003, 0, 0); /* an odd tail, range bounds inside spans and pairs */
  run_adamw(ELMO_BF16, 0, 42, 5003, 0, 0);
  run_adamw(ELMO_F32, 0, 43, 5003, 0, 0);
  run_adamw(ELMO_BF16, 1, 44, 400009, 1500, 0); /* many ranges: a 3-round search */
  run_adamw(ELMO_BF16, 1, 45, 100003, 40, 0);
  run_adamw(ELMO_BF16, 1, 46, 5003, 0, 1); /* arrays one element off: the one-element fallback */
  run_adamw(ELMO_F32, 0, 47, 5003, 0, 1);
}

static void test_dropout(void **state) {
  const int64_t n = 4099;
  const double p = 0.65;
  const uint64_t seed = 77;
  const int64_t step = 5;
  uint64_t s = 51;
  float *x = malloc(sizeof(float) * n), *g = malloc(sizeof(float) * n);
  for (int64_t i = 0; i < n; i++) x[i] = tu_rand_normal(&s);
  float *dx = dup_up(x, sizeof(float) * n);
  elmo_cuda_dropout(dx, n, 0, p, seed, step, S);
  down(g, dx, sizeof(float) * n);
  uint32_t thr = (uint32_t)(p * 4294967296.0);
  float scale = (float)(1.0 / (1.0 - p));
  int64_t dropped = 0;
  for (int64_t i = 0; i < n; i++) {
    float ref = elmo_rand_u32(seed, (uint64_t)step, ELMO_RNG_DROPOUT, (uint64_t)i) < thr ? 0.0f : x[i] * scale;
    if (memcmp(&g[i], &ref, 4)) fail_msg("dropout[%lld]: gpu %g cpu %g", (long long)i, g[i], ref);
    dropped += ref == 0.0f;
  }
  assert_true(dropped > n / 2 && dropped < n * 3 / 4); /* about p of them */
  cudaFree(dx);
  /* a slice from element 1000 (a shard's rows of the batch) draws the whole batch's mask there */
  const int64_t f0 = 1000;
  dx = dup_up(x + f0, sizeof(float) * (n - f0));
  elmo_cuda_dropout(dx, n - f0, f0, p, seed, step, S);
  down(g, dx, sizeof(float) * (n - f0));
  for (int64_t i = f0; i < n; i++) {
    float ref = elmo_rand_u32(seed, (uint64_t)step, ELMO_RNG_DROPOUT, (uint64_t)i) < thr ? 0.0f : x[i] * scale;
    if (memcmp(&g[i - f0], &ref, 4)) fail_msg("dropout slice[%lld]: gpu %g cpu %g", (long long)i, g[i - f0], ref);
  }
  cudaFree(dx);
  free(x); free(g);
}

int main(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    fprintf(stderr, "test_gpu_ops: no CUDA device, skipped\n");
    return 77;
  }
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_cast_input), cmocka_unit_test(test_cls_sr_twins), cmocka_unit_test(test_cls_ops_fp8),
      cmocka_unit_test(test_cls_ops_fp8_dx_kernels), cmocka_unit_test(test_cls_ops_fp8_update_kernels),
      cmocka_unit_test(test_cls_update_tma),
      cmocka_unit_test(test_cls_logits_grad_fused), cmocka_unit_test(test_cls_ops_bf16),
    cmocka_unit_test(test_cls_ops_fp32), cmocka_unit_test(test_cls_step), cmocka_unit_test(test_topk),
    cmocka_unit_test(test_sparse_encoder), cmocka_unit_test(test_adamw), cmocka_unit_test(test_dropout),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
