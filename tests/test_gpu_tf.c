/* test_gpu_tf.c: parity of the CUDA transformer encoder ops and the whole encoder against their CPU
 * twins in src/transformer.h, on fresh seeded random inputs with padding. Device outputs are poisoned
 * with NaN (all-ones bytes) before each run; NaN never passes. Errors are ||gpu - cpu|| / ||cpu||:
 * FP32 outputs from identical inputs within 1e-5, BF16 outputs within 1e-2 (2e-2 for the attention
 * backward, whose dS is BF16), the whole encoder (BF16 activations vs the FP32 CPU) within 3e-2 on the
 * pooled output and 5e-2 per gradient tensor. FP8 forward GEMMs: scales and E4M3 bytes equal the CPU's
 * bit for bit on the same BF16 inputs, and the FP8 encoder meets the encoder tolerances against the
 * CPU's FP8 forward. Padding: masked rows must be exactly zero and garbage at
 * masked positions must change nothing. The fused attention kernels (Tp <= 128, head dim 16/32/64)
 * get their own parity test and run inside the encoder tests (head dim 16); one encoder test also
 * runs the batched path (ELMO_ATTN_FUSED=0) and compares. Exits 77 (skipped) without a CUDA device.
 *
 * ELMO_BENCH_TF=1 (with ELMO_ATTN_FUSED=0 for the batched attention path) also times BERT-base forward+backward (B 128, T 128; BF16 and FP8 forward GEMMs,
 * each with and without recompute), one linear layer's BF16 GEMM, FP8 GEMM and FP8 quantisation at
 * BERT-base shapes, and prints the memory plan; those are benchmark prints, never assertions. ELMO_BENCH_TF=2 runs one BERT-base forward+backward
 * alone, for a profiler (ncu). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime.h>

#include "cuda/attention.h"
#include "cuda/embedding.h"
#include "cuda/gelu.h"
#include "cuda/layernorm.h"
#include "cuda/pooling.h"
#include "cuda/transformer.h"
#include "numerics.h"
#include "src/transformer.h"
#include "testutil.h"

#define CK(call) assert_int_equal((int)(call), (int)cudaSuccess)

/* ------------------------------------------------------------------ host/device helpers */

static void *dev_poisoned(size_t bytes) {
  void *d = NULL;
  CK(cudaMalloc(&d, bytes > 0 ? bytes : 1));
  CK(cudaMemset(d, 0xFF, bytes > 0 ? bytes : 1));   /* NaN in fp32 and bf16 */
  return d;
}

static void *dev_upload(const void *h, size_t bytes) {
  void *d = dev_poisoned(bytes);
  CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
  return d;
}

static void download(void *h, const void *d, size_t bytes) {
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}

/* A device float holding v (the E4M3 producers' scale). */
static float *dev_scalar(float v) { return dev_upload(&v, sizeof v); }

/* The E4M3 copy q[n] (device) of the values x[n] (host, the producer's own bf16 output) at scale s:
 * every byte is elmo_f32_to_fp8(x * s). */
static void expect_e4m3_copy(const void *d_q, const float *x, size_t n, float s, const char *what) {
  uint8_t *q = malloc(n > 0 ? n : 1);
  download(q, d_q, n);
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (q[i] != elmo_f32_to_fp8(x[i] * s) && bad++ == 0) first = i;
  if (bad)
    fail_msg("%s: %zu of %zu E4M3 bytes differ, first at %zu: 0x%02x for %g * %g (expected 0x%02x)", what, bad, n, first,
             q[first], (double)x[first], (double)s, elmo_f32_to_fp8(x[first] * s));
  free(q);
}

static float *randn(size_t n, uint64_t *rng, float scale, float shift) {
  float *x = malloc(n * sizeof *x);
  for (size_t i = 0; i < n; i++) x[i] = shift + scale * tu_rand_normal(rng);
  return x;
}

static void quantize(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = elmo_bf16_to_f32(elmo_f32_to_bf16(x[i]));
}

static void *dev_bf16(const float *x, size_t n) {
  elmo_bf16 *h = malloc(n * sizeof *h);
  elmo_f32_to_bf16_n(h, x, n);
  void *d = dev_upload(h, n * sizeof *h);
  free(h);
  return d;
}

static float *host_from_bf16(const void *d, size_t n) {
  elmo_bf16 *h = malloc(n * sizeof *h);
  float *x = malloc(n * sizeof *x);
  download(h, d, n * sizeof *h);
  elmo_bf16_to_f32_n(x, h, n);
  free(h);
  return x;
}

static float *host_from_f32(const void *d, size_t n) {
  float *x = malloc(n * sizeof *x);
  download(x, d, n * sizeof *x);
  return x;
}

/* ||a - b|| / ||b||; infinity when a holds a NaN or inf. */
static double rel_err(const float *a, const float *b, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(a[i])) return INFINITY;
    const double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static void expect_close(const float *gpu, const float *cpu, size_t n, double tol, const char *what) {
  const double e = rel_err(gpu, cpu, n);
  if (!(e <= tol)) fail_msg("%s: relative error %.3e > %.1e", what, e, tol);
}

/* Rows of x[B * Tp, H] whose mask_p is set, in order (the CPU's packed rows). */
static float *gather_rows(const float *x, const uint8_t *mask_p, int64_t rows, int H, int64_t *N) {
  float *out = calloc((size_t)rows * H, sizeof *out);
  int64_t n = 0;
  for (int64_t r = 0; r < rows; r++)
    if (mask_p[r]) memcpy(out + (n++) * H, x + r * H, (size_t)H * sizeof *out);
  *N = n;
  return out;
}

static void expect_masked_zero(const float *x, const uint8_t *mask_p, int64_t rows, int H, const char *what) {
  for (int64_t r = 0; r < rows; r++)
    if (!mask_p[r])
      for (int j = 0; j < H; j++)
        if (x[r * H + j] != 0.0f) fail_msg("%s: masked row %lld column %d = %g (expected 0)", what, (long long)r, j,
                                            (double)x[r * H + j]);
}

/* mask [B, T] with given real lengths (prefix), and one hole in row `hole_row` (or -1). */
static uint8_t *make_mask(int B, int T, const int *len, int hole_row) {
  uint8_t *m = calloc((size_t)B * T, 1);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < len[b]; t++) m[b * T + t] = 1;
  if (hole_row >= 0 && len[hole_row] > 2) m[hole_row * T + 1] = 0;
  return m;
}

/* The padded mask [B, Tp] as the GPU builds it. */
static uint8_t *pad_mask(const uint8_t *m, int B, int T, int Tp) {
  uint8_t *p = calloc((size_t)B * Tp, 1);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) p[b * Tp + t] = m[b * T + t];
  return p;
}

/* ------------------------------------------------------------------ layernorm */

/* H 80: the shared-memory kernel; H 128 and 768: the register kernels (H = 128 K). */
static void run_layernorm_forward(int H) {
  uint64_t rng = 101 + (uint64_t)H;
  const int64_t M = 37;
  const float eps = 1e-12f;
  float *a = randn((size_t)M * H, &rng, 2.0f, 0.5f), *res = randn((size_t)M * H, &rng, 1.0f, 0.0f);
  float *bias = randn(H, &rng, 0.1f, 0.0f), *w = randn(H, &rng, 0.2f, 1.0f), *b = randn(H, &rng, 0.1f, 0.0f);
  quantize(res, (size_t)M * H); quantize(bias, H); quantize(w, H); quantize(b, H);
  float *pre = malloc((size_t)M * H * sizeof *pre), *y = malloc((size_t)M * H * sizeof *y);
  float *xhat = malloc((size_t)M * H * sizeof *xhat), *rstd = malloc((size_t)M * sizeof *rstd);
  for (int64_t i = 0; i < M * H; i++) pre[i] = a[i] + bias[i % H] + res[i];
  elmo_tf_layernorm_forward(pre, w, b, M, H, eps, y, xhat, rstd);

  float *d_a = dev_upload(a, (size_t)M * H * 4);
  void *d_res = dev_bf16(res, (size_t)M * H), *d_bias = dev_bf16(bias, H), *d_w = dev_bf16(w, H), *d_b = dev_bf16(b, H);
  void *d_y = dev_poisoned((size_t)M * H * 2), *d_xhat = dev_poisoned((size_t)M * H * 2);
  float *d_rstd = dev_poisoned((size_t)M * 4);
  elmo_err err;
  assert_int_equal(elmo_cuda_layernorm_forward(d_a, d_bias, d_res, d_w, d_b, M, H, eps, d_y, d_xhat, d_rstd, 0, &err),
                   ELMO_OK);
  float *g_y = host_from_bf16(d_y, (size_t)M * H), *g_xhat = host_from_bf16(d_xhat, (size_t)M * H);
  float *g_rstd = host_from_f32(d_rstd, (size_t)M);
  expect_close(g_y, y, (size_t)M * H, 1e-2, "layernorm y (bf16)");
  expect_close(g_xhat, xhat, (size_t)M * H, 1e-2, "layernorm xhat (bf16)");
  expect_close(g_rstd, rstd, (size_t)M, 1e-5, "layernorm rstd (fp32)");

  /* apply reproduces y exactly from the stored xhat */
  void *d_y2 = dev_poisoned((size_t)M * H * 2);
  assert_int_equal(elmo_cuda_layernorm_apply(d_xhat, d_w, d_b, M, H, d_y2, 0, &err), ELMO_OK);
  float *g_y2 = host_from_bf16(d_y2, (size_t)M * H);
  assert_memory_equal(g_y2, g_y, (size_t)M * H * sizeof(float));
  /* with the E4M3 copy (the FP8 forward's GEMM input): the same y, and yq = e4m3(y * scale) */
  float *d_s = dev_scalar(8.0f);
  uint8_t *d_yq = dev_poisoned((size_t)M * H), *d_yq2 = dev_poisoned((size_t)M * H);
  assert_int_equal(elmo_cuda_layernorm_forward_q(d_a, d_bias, d_res, d_w, d_b, M, H, eps, d_y2, d_xhat, d_rstd, d_yq, d_s,
                                                 0, &err), ELMO_OK);
  free(g_y2);
  g_y2 = host_from_bf16(d_y2, (size_t)M * H);
  assert_memory_equal(g_y2, g_y, (size_t)M * H * sizeof(float));
  expect_e4m3_copy(d_yq, g_y, (size_t)M * H, 8.0f, "layernorm forward, E4M3 copy");
  assert_int_equal(elmo_cuda_layernorm_apply_q(d_xhat, d_w, d_b, M, H, d_y2, d_yq2, d_s, 0, &err), ELMO_OK);
  expect_e4m3_copy(d_yq2, g_y, (size_t)M * H, 8.0f, "layernorm apply, E4M3 copy");
  assert_int_equal(elmo_cuda_layernorm_forward_q(d_a, d_bias, d_res, d_w, d_b, M, H, eps, d_y2, d_xhat, d_rstd, d_yq,
                                                 NULL, 0, &err), ELMO_EINPUT);
  cudaFree(d_s); cudaFree(d_yq); cudaFree(d_yq2);
  assert_int_equal(elmo_cuda_layernorm_forward(d_a, NULL, NULL, d_w, d_b, M, 0, eps, d_y, d_xhat, d_rstd, 0, &err),
                   ELMO_EINPUT);

  cudaFree(d_a); cudaFree(d_res); cudaFree(d_bias); cudaFree(d_w); cudaFree(d_b); cudaFree(d_y); cudaFree(d_xhat);
  cudaFree(d_rstd); cudaFree(d_y2);
  free(a); free(res); free(bias); free(w); free(b); free(pre); free(y); free(xhat); free(rstd);
  free(g_y); free(g_xhat); free(g_rstd); free(g_y2);
}

static void test_layernorm_forward(void **state) {
  (void)state;
  run_layernorm_forward(80);
  run_layernorm_forward(128);
  run_layernorm_forward(768);
}

static void run_layernorm_backward(int H) {
  uint64_t rng = 202 + (uint64_t)H;
  const int64_t M = 150;   /* partial-sum blocks: 3 of 64 rows (H 72), 10 of 16, the last of 6 (H 128, 768) */
  float *dy = randn((size_t)M * H, &rng, 1.0f, 0.0f), *xhat = randn((size_t)M * H, &rng, 1.0f, 0.0f);
  float *w = randn(H, &rng, 0.2f, 1.0f), *rstd = malloc((size_t)M * sizeof *rstd);
  float *dw = randn(H, &rng, 1.0f, 0.0f), *db = randn(H, &rng, 1.0f, 0.0f), *ds = randn(H, &rng, 1.0f, 0.0f);
  for (int64_t r = 0; r < M; r++) rstd[r] = 0.5f + tu_rand_uniform(&rng);
  for (int j = 0; j < H; j++) dy[7 * H + j] = 0.0f;   /* a zero row: its E4M3 copy is zeros */
  dy[9 * H + 3] = 3e4f;                               /* an outlier: the rest of its row goes subnormal */
  quantize(xhat, (size_t)M * H); quantize(w, H);
  float *d_dy = dev_upload(dy, (size_t)M * H * 4), *d_rstd = dev_upload(rstd, (size_t)M * 4);
  float *d_dy2 = dev_upload(dy, (size_t)M * H * 4);
  float *d_dw = dev_upload(dw, H * 4), *d_db = dev_upload(db, H * 4), *d_ds = dev_upload(ds, H * 4);
  void *d_xhat = dev_bf16(xhat, (size_t)M * H), *d_w = dev_bf16(w, H), *d_dx16 = dev_poisoned((size_t)M * H * 2);
  float *d_ws = dev_poisoned((size_t)elmo_cuda_layernorm_ws_floats(M, H) * 4);
  float *dx = malloc((size_t)M * H * sizeof *dx);
  elmo_tf_layernorm_backward(dy, xhat, rstd, w, M, H, dx, dw, db);
  for (int64_t r = 0; r < M; r++)
    for (int j = 0; j < H; j++) ds[j] += dx[r * H + j];   /* the bias gradient of the layer before */

  elmo_err err;
  assert_int_equal(elmo_cuda_layernorm_backward(d_dy, d_xhat, d_rstd, d_w, M, H, d_dy, d_dx16, d_dw, d_db, d_ds, d_ws,
                                                0, &err), ELMO_OK);   /* in place over dy */
  float *g_dx = host_from_f32(d_dy, (size_t)M * H), *g_dx16 = host_from_bf16(d_dx16, (size_t)M * H);
  float *g_dw = host_from_f32(d_dw, H), *g_db = host_from_f32(d_db, H), *g_ds = host_from_f32(d_ds, H);
  expect_close(g_ds, ds, H, 1e-5, "layernorm dx column sums (accumulated)");
  free(g_ds); free(ds); cudaFree(d_ds);
  expect_close(g_dx, dx, (size_t)M * H, 1e-5, "layernorm dx (fp32)");
  expect_close(g_dx16, dx, (size_t)M * H, 1e-2, "layernorm dx (bf16 copy)");
  expect_close(g_dw, dw, H, 1e-5, "layernorm dw (accumulated)");
  expect_close(g_db, db, H, 1e-5, "layernorm db (accumulated)");
  {  /* with the E4M3 rows for the FP8 input gradient: dx16 the same bits, each row of it in E4M3 times the
      * power of two of its bf16 amax (the CPU's elmo_tf_linear_dgrad_fp8), byte for byte, and 1 / scale; the
      * bound scales pow2(||dx16[r]||_2 f) (elmo_tf_fp8_dff_factor's use), equal to the host's unless the host's
      * bound lies within float rounding of a power of two (the GPU sums the squares in another order) */
    void *d_dx16b = dev_poisoned((size_t)M * H * 2);
    uint8_t *d_dq = dev_poisoned((size_t)M * H);
    float *d_inv = dev_poisoned((size_t)M * 4), *d_ws2 = dev_poisoned((size_t)elmo_cuda_layernorm_ws_floats(M, H) * 4);
    float *d_dw2 = dev_upload(dw, H * 4), *d_db2 = dev_upload(db, H * 4), *d_f = dev_scalar(0.37f);
    float *d_bs = dev_poisoned((size_t)M * 4), *d_bsi = dev_poisoned((size_t)M * 4);
    const elmo_cuda_ln_q lq = {d_dq, d_inv, d_f, d_bs, d_bsi};
    assert_int_equal(elmo_cuda_layernorm_backward_q(d_dy2, d_xhat, d_rstd, d_w, M, H, d_dy2, d_dx16b, d_dw2, d_db2, NULL,
                                                    d_ws2, &lq, 0, &err), ELMO_OK);
    float *h16b = host_from_bf16(d_dx16b, (size_t)M * H), *inv = host_from_f32(d_inv, (size_t)M);
    float *bs = host_from_f32(d_bs, (size_t)M), *bsi = host_from_f32(d_bsi, (size_t)M);
    assert_memory_equal(h16b, g_dx16, (size_t)M * H * 4);
    for (int64_t r = 0; r < M; r++) {
      double m = 0.0, ss = 0.0;
      for (int j = 0; j < H; j++) {
        m = fmax(m, fabs((double)h16b[r * H + j]));
        ss += (double)h16b[r * H + j] * h16b[r * H + j];
      }
      const float sc = elmo_tf_fp8_pow2_scale(m);
      char what[64];
      snprintf(what, sizeof what, "layernorm backward E4M3 row %lld (H %d)", (long long)r, H);
      expect_e4m3_copy(d_dq + r * H, h16b + r * H, (size_t)H, sc, what);
      if (!(inv[r] == 1.0f / sc)) fail_msg("%s: 1 / scale %g, expected %g", what, (double)inv[r], 1.0 / sc);
      const double b = (double)((float)sqrt(ss) * 0.37f), lo = elmo_tf_fp8_pow2_scale(b * (1 + 1e-5));
      const double hi = elmo_tf_fp8_pow2_scale(b * (1 - 1e-5));
      if (!(bs[r] == elmo_tf_fp8_pow2_scale(b) || (bs[r] >= lo && bs[r] <= hi)) || !(bsi[r] == 1.0f / bs[r]))
        fail_msg("%s: bound scale %g (1 / %g), expected %g", what, (double)bs[r], (double)bsi[r],
                 (double)elmo_tf_fp8_pow2_scale(b));
    }
    assert_true(inv[7] == 1.0f / elmo_tf_fp8_pow2_scale(0.0) && bs[7] == elmo_tf_fp8_pow2_scale(0.0));
    free(h16b); free(inv); free(bs); free(bsi);
    cudaFree(d_dx16b); cudaFree(d_dq); cudaFree(d_inv); cudaFree(d_ws2); cudaFree(d_dw2); cudaFree(d_db2);
    cudaFree(d_f); cudaFree(d_bs); cudaFree(d_bsi);
    const elmo_cuda_ln_q bad = {d_dx16, d_rstd, NULL, NULL, NULL};
    assert_int_equal(elmo_cuda_layernorm_backward_q(d_dy, d_xhat, d_rstd, d_w, M, H, d_dy, NULL, d_dw, d_db, NULL, d_ws,
                                                    &bad, 0, &err), ELMO_EINPUT);   /* dq needs dx16 */
  }

  cudaFree(d_dy); cudaFree(d_dy2); cudaFree(d_rstd); cudaFree(d_dw); cudaFree(d_db); cudaFree(d_xhat); cudaFree(d_w);
  cudaFree(d_dx16); cudaFree(d_ws);
  free(dy); free(xhat); free(w); free(rstd); free(dw); free(db); free(dx);
  free(g_dx); free(g_dx16); free(g_dw); free(g_db);
}

static void test_layernorm_backward(void **state) {
  (void)state;
  run_layernorm_backward(72);
  run_layernorm_backward(128);
  run_layernorm_backward(768);
}

/* ------------------------------------------------------------------ gelu and column sums */

static void test_gelu(void **state) {
  (void)state;
  uint64_t rng = 303;
  const int64_t M = 29;
  const int F = 112;
  const size_t n = (size_t)M * F;
  float *a = randn(n, &rng, 2.0f, 0.0f), *bias = randn(F, &rng, 0.5f, 0.0f), *dy = randn(n, &rng, 1.0f, 0.0f);
  quantize(bias, F); quantize(dy, n);
  float *pre = malloc(n * sizeof *pre), *g = malloc(n * sizeof *g), *dx = malloc(n * sizeof *dx);
  for (size_t i = 0; i < n; i++) pre[i] = a[i] + bias[i % F];
  float *pre_q = malloc(n * sizeof *pre_q);
  memcpy(pre_q, pre, n * sizeof *pre_q);
  quantize(pre_q, n);
  elmo_tf_gelu_forward(pre_q, (int64_t)n, g);
  elmo_tf_gelu_backward(pre_q, dy, (int64_t)n, dx);

  float *d_a = dev_upload(a, n * 4);
  void *d_bias = dev_bf16(bias, F), *d_dy = dev_bf16(dy, n), *d_pre = dev_poisoned(n * 2), *d_g = dev_poisoned(n * 2);
  void *d_g2 = dev_poisoned(n * 2);
  elmo_err err;
  assert_int_equal(elmo_cuda_gelu_forward(d_a, d_bias, M, F, d_pre, d_g, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_gelu_recompute(d_pre, (int64_t)n, d_g2, 0, &err), ELMO_OK);
  float *g_pre = host_from_bf16(d_pre, n), *g_g = host_from_bf16(d_g, n), *g_g2 = host_from_bf16(d_g2, n);
  expect_close(g_pre, pre, n, 1e-2, "gelu pre-activation (bf16)");
  expect_close(g_g, g, n, 1e-2, "gelu forward (bf16)");
  expect_close(g_g2, g, n, 1e-2, "gelu recompute (bf16)");
  {  /* the E4M3 copy of the recompute's output, 8 at a time and (odd count) one at a time */
    float *d_s = dev_scalar(0.25f);
    uint8_t *d_gq = dev_poisoned(n);
    assert_int_equal(elmo_cuda_gelu_forward_q(d_pre, (int64_t)n, d_gq, d_s, 0, &err), ELMO_OK);
    expect_e4m3_copy(d_gq, g_g2, n, 0.25f, "gelu forward, E4M3 copy");
    assert_int_equal(elmo_cuda_gelu_forward_q(d_pre, (int64_t)n - 1, d_gq, d_s, 0, &err), ELMO_OK);
    expect_e4m3_copy(d_gq, g_g2, n - 1, 0.25f, "gelu forward, E4M3 copy (scalar kernel)");
    cudaFree(d_s); cudaFree(d_gq);
  }
  {  /* every bf16 code: the table kernels (a multiple of 8, aligned) against the formula's scalar kernels
      * (65,535 codes from code 0, and from code 1 at an address the vector paths refuse), bit for bit */
    const int64_t N = 65536;
    uint16_t *codes = malloc((size_t)N * 2), *o1 = malloc((size_t)N * 2), *o2 = malloc((size_t)N * 2);
    uint8_t *q1 = malloc((size_t)N), *q2 = malloc((size_t)N);
    for (int64_t c = 0; c < N; c++) codes[c] = (uint16_t)c;
    uint16_t *d_codes = dev_upload(codes, (size_t)N * 2), *d_o1 = dev_poisoned((size_t)N * 2);
    uint16_t *d_o2 = dev_poisoned((size_t)N * 2);
    uint8_t *d_q1 = dev_poisoned((size_t)N), *d_q2 = dev_poisoned((size_t)N);
    float *d_s = dev_scalar(0.0625f);
    assert_int_equal(elmo_cuda_gelu_recompute(d_codes, N, d_o1, 0, &err), ELMO_OK);
    assert_int_equal(elmo_cuda_gelu_forward_q(d_codes, N, d_q1, d_s, 0, &err), ELMO_OK);
    download(o1, d_o1, (size_t)N * 2);
    download(q1, d_q1, (size_t)N);
    for (int from = 0; from < 2; from++) {
      assert_int_equal(elmo_cuda_gelu_recompute(d_codes + from, N - 1, d_o2, 0, &err), ELMO_OK);
      assert_int_equal(elmo_cuda_gelu_forward_q(d_codes + from, N - 1, d_q2 + 1, d_s, 0, &err), ELMO_OK);
      download(o2, d_o2, (size_t)(N - 1) * 2);
      download(q2, d_q2 + 1, (size_t)(N - 1));
      for (int64_t c = from; c < N - 1 + from; c++) {
        if (o1[c] != o2[c - from]) fail_msg("gelu of bf16 code 0x%04x: table 0x%04x, formula 0x%04x", (unsigned)c,
                                            (unsigned)o1[c], (unsigned)o2[c - from]);
        if (q1[c] != q2[c - from]) fail_msg("E4M3 gelu of bf16 code 0x%04x: table 0x%02x, formula 0x%02x",
                                            (unsigned)c, (unsigned)q1[c], (unsigned)q2[c - from]);
      }
    }
    cudaFree(d_codes); cudaFree(d_o1); cudaFree(d_o2); cudaFree(d_q1); cudaFree(d_q2); cudaFree(d_s);
    free(codes); free(o1); free(o2); free(q1); free(q2);
  }
  assert_int_equal(elmo_cuda_gelu_backward(d_pre, d_dy, (int64_t)n, d_dy, 0, &err), ELMO_OK);   /* in place */
  float *g_dx = host_from_bf16(d_dy, n);
  /* CPU from the GPU's own rounded pre-activations */
  elmo_tf_gelu_backward(g_pre, dy, (int64_t)n, dx);
  expect_close(g_dx, dx, n, 1e-2, "gelu backward (bf16)");

  cudaFree(d_a); cudaFree(d_bias); cudaFree(d_dy); cudaFree(d_pre); cudaFree(d_g); cudaFree(d_g2);
  free(a); free(bias); free(dy); free(pre); free(g); free(dx); free(pre_q); free(g_pre); free(g_g); free(g_g2);
  free(g_dx);
}

/* The FFN's dff with its bias gradient in one pass: bit for bit the two-call path (gelu backward, then
 * column sums), and close to the CPU's sums; with g, also GELU(pre) written over pre, bit for bit
 * elmo_cuda_gelu_recompute's, and dx and the sums unchanged. */
static void run_gelu_colsum(int64_t M, int F, uint64_t rng, int all_codes) {
  const size_t n = (size_t)M * F;
  float *pre = randn(n, &rng, 2.0f, 0.0f), *dy = randn(n, &rng, 1.0f, 0.0f), *out = randn(F, &rng, 1.0f, 0.0f);
  quantize(pre, n); quantize(dy, n);
  void *d_pre = dev_bf16(pre, n), *d_a = dev_bf16(dy, n), *d_b = dev_bf16(dy, n);
  void *d_pre_c = dev_bf16(pre, n), *d_c = dev_bf16(dy, n), *d_g = dev_poisoned(n * 2);
  if (all_codes) { /* pre = every bf16 code in turn (the one-pass kernel's table and its formula path) */
    uint16_t *codes = malloc(n * 2);
    for (size_t i = 0; i < n; i++) codes[i] = (uint16_t)i;
    CK(cudaMemcpy(d_pre, codes, n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_pre_c, codes, n * 2, cudaMemcpyHostToDevice));
    free(codes);
  }
  float *d_oa = dev_upload(out, (size_t)F * 4), *d_ob = dev_upload(out, (size_t)F * 4), *d_oc = dev_upload(out, (size_t)F * 4);
  float *d_ws = dev_poisoned((size_t)elmo_cuda_colsum_ws_floats(M, F, 1) * 4);
  elmo_err err;
  assert_int_equal(elmo_cuda_gelu_backward(d_pre, d_a, (int64_t)n, d_a, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_colsum(d_a, 1, M, F, 1, 0, d_oa, 0, d_ws, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_gelu_backward_colsum(d_pre, d_b, M, F, d_b, NULL, d_ob, d_ws, 0, &err), ELMO_OK); /* in place */
  assert_int_equal(elmo_cuda_gelu_recompute(d_pre, (int64_t)n, d_g, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_gelu_backward_colsum(d_pre_c, d_c, M, F, d_c, d_pre_c, d_oc, d_ws, 0, &err), ELMO_OK);
  float *ga = host_from_bf16(d_a, n), *gb = host_from_bf16(d_b, n), *oa = host_from_f32(d_oa, F), *ob = host_from_f32(d_ob, F);
  float *gc = host_from_bf16(d_c, n), *oc = host_from_f32(d_oc, F), *gg = host_from_bf16(d_g, n), *gp = host_from_bf16(d_pre_c, n);
  if (memcmp(ga, gb, n * sizeof *ga)) fail_msg("gelu backward + column sums: dx differs from the two-call path (%lld x %d)", (long long)M, F);
  if (memcmp(oa, ob, (size_t)F * sizeof *oa)) fail_msg("gelu backward + column sums: sums differ from the two-call path (%lld x %d)", (long long)M, F);
  if (memcmp(ga, gc, n * sizeof *ga)) fail_msg("gelu backward + column sums + GELU: dx differs from the two-call path (%lld x %d)", (long long)M, F);
  if (memcmp(oa, oc, (size_t)F * sizeof *oa)) fail_msg("gelu backward + column sums + GELU: sums differ (%lld x %d)", (long long)M, F);
  if (memcmp(gg, gp, n * sizeof *gg)) fail_msg("gelu backward + column sums + GELU: GELU(pre) differs from the recompute (%lld x %d)", (long long)M, F);
  {  /* with the E4M3 copy of dx by row scales (the FP8 input gradient's operand): dx, the sums and GELU(pre)
      * the same bits, the copy byte for byte e4m3(dx[r] rs[r]) */
    float *rs = malloc((size_t)M * sizeof *rs);
    for (int64_t r = 0; r < M; r++) rs[r] = ldexpf(1.0f, (int)(r % 11) - 3);
    float *d_rs = dev_upload(rs, (size_t)M * 4), *d_od = dev_upload(out, (size_t)F * 4);
    void *d_pre_d = dev_bf16(pre, n), *d_d = dev_bf16(dy, n);
    if (all_codes) CK(cudaMemcpy(d_pre_d, d_pre, n * 2, cudaMemcpyDeviceToDevice));
    uint8_t *d_q = dev_poisoned(n);
    assert_int_equal(elmo_cuda_gelu_backward_colsum_q(d_pre_d, d_d, M, F, d_d, d_pre_d, d_od, d_ws, d_q, d_rs, 0, &err),
                     ELMO_OK);
    float *gd = host_from_bf16(d_d, n), *od = host_from_f32(d_od, F), *gpd = host_from_bf16(d_pre_d, n);
    if (memcmp(ga, gd, n * sizeof *ga) || memcmp(oa, od, (size_t)F * sizeof *oa) || memcmp(gp, gpd, n * sizeof *gp))
      fail_msg("gelu backward + column sums + E4M3 copy: dx, sums or GELU differ (%lld x %d)", (long long)M, F);
    for (int64_t r = 0; r < M; r++) expect_e4m3_copy(d_q + r * F, ga + r * F, (size_t)F, rs[r], "gelu backward E4M3 rows");
    cudaFree(d_rs); cudaFree(d_od); cudaFree(d_pre_d); cudaFree(d_d); cudaFree(d_q);
    free(rs); free(gd); free(od); free(gpd);
  }
  if (!all_codes) {
    float *gcpu = malloc(n * sizeof *gcpu);
    elmo_tf_gelu_forward(pre, (int64_t)n, gcpu);
    expect_close(gp, gcpu, n, 1e-2, "GELU(pre) written over pre (vs CPU)");
    free(gcpu);
    for (int64_t r = 0; r < M; r++)
      for (int j = 0; j < F; j++) out[j] += ga[r * F + j];
    expect_close(ob, out, (size_t)F, 1e-5, "gelu backward + column sums (vs CPU sums)");
  }
  cudaFree(d_pre); cudaFree(d_a); cudaFree(d_b); cudaFree(d_oa); cudaFree(d_ob); cudaFree(d_ws);
  cudaFree(d_pre_c); cudaFree(d_c); cudaFree(d_g); cudaFree(d_oc);
  free(pre); free(dy); free(out); free(ga); free(gb); free(oa); free(ob); free(gc); free(oc); free(gg); free(gp);
}

static void test_gelu_colsum(void **state) {
  (void)state;
  run_gelu_colsum(29, 112, 311, 0);    /* one partial row block */
  run_gelu_colsum(300, 3072, 312, 0);  /* BERT's width: several row blocks and column tiles, a partial last block */
  run_gelu_colsum(70, 20, 313, 0);     /* 20 columns: the two-call fallback */
  run_gelu_colsum(512, 128, 314, 1);   /* pre = all 65,536 bf16 codes (NaN and inf included) */
}

/* count matrices of M x N with rows ld apart, matrix i at x + i * x_stride. */
static void colsum_case(int64_t M, int N, int64_t ld, int count, int64_t x_stride, int64_t out_stride, uint64_t rng) {
  const size_t nx = (size_t)((count - 1) * x_stride + M * ld);
  float *x = randn(nx, &rng, 1.0f, 0.0f);
  quantize(x, nx);
  float *out = randn((size_t)(count * out_stride), &rng, 1.0f, 0.0f);
  float *ref = malloc((size_t)(count * out_stride) * sizeof *ref);
  memcpy(ref, out, (size_t)(count * out_stride) * sizeof *ref);
  for (int i = 0; i < count; i++)
    for (int64_t r = 0; r < M; r++)
      for (int j = 0; j < N; j++) ref[i * out_stride + j] += x[i * x_stride + r * ld + j];
  float *d_ws = dev_poisoned((size_t)elmo_cuda_colsum_ws_floats(M, N, count) * 4);
  elmo_err err;
  for (int as_bf16 = 0; as_bf16 < 2; as_bf16++) {
    void *d_x = as_bf16 ? dev_bf16(x, nx) : dev_upload(x, nx * 4);
    float *d_out = dev_upload(out, (size_t)(count * out_stride) * 4);
    if (ld == N)
      assert_int_equal(elmo_cuda_colsum(d_x, as_bf16, M, N, count, x_stride, d_out, out_stride, d_ws, 0, &err), ELMO_OK);
    else
      assert_int_equal(elmo_cuda_colsum_ld(d_x, as_bf16, M, N, ld, count, x_stride, d_out, out_stride, d_ws, 0, &err),
                       ELMO_OK);
    float *g = host_from_f32(d_out, (size_t)(count * out_stride));
    expect_close(g, ref, (size_t)(count * out_stride), 1e-5, as_bf16 ? "column sums of bf16" : "column sums of fp32");
    free(g);
    cudaFree(d_x); cudaFree(d_out);
  }
  cudaFree(d_ws);
  free(x); free(out); free(ref);
}

static void test_colsum(void **state) {
  (void)state;
  colsum_case(300, 150, 150, 2, 300 * 150 + 16, 158, 404); /* the scalar kernel (150 columns) */
  colsum_case(300, 768, 768, 3, 300 * 768, 776, 405);      /* 16-byte loads, rows 300 = 4 x 64 + 44 (8 x 5 + 4) */
  colsum_case(37, 96, 96, 1, 37 * 96, 96, 406);            /* fewer rows than one block, a partial tile of threads */
  colsum_case(300, 96, 288, 3, 96, 100, 407);              /* the column blocks of a [300, 3 x 96] matrix */
  colsum_case(45, 20, 66, 2, 22, 20, 408);                 /* strided rows, the scalar kernel */
  elmo_err err;
  assert_int_equal(elmo_cuda_colsum_ld(NULL, 1, 4, 8, 6, 1, 0, NULL, 0, NULL, 0, &err), ELMO_EINPUT);
}

/* ------------------------------------------------------------------ attention */

typedef struct attn_case {
  int B, T, Tp, heads, dh, H;
  int64_t rows, N;
  uint8_t *mask, *mask_p;
  int64_t *seq_start, *prob_start;
} attn_case;

/* B sequences of real lengths len[] (row 0 with a hole at t = 1), T tokens padded to Tp. */
static void attn_case_init(attn_case *c, int B, int T, int Tp, int heads, int dh, const int *len) {
  c->B = B; c->T = T; c->Tp = Tp; c->heads = heads; c->dh = dh; c->H = heads * dh;
  c->rows = (int64_t)c->B * c->Tp;
  c->mask = make_mask(c->B, c->T, len, 0);
  c->mask_p = pad_mask(c->mask, c->B, c->T, c->Tp);
  c->seq_start = malloc((size_t)(c->B + 1) * sizeof(int64_t));
  c->prob_start = malloc((size_t)(c->B + 1) * sizeof(int64_t));
  int32_t *ids = calloc((size_t)c->B * c->T, sizeof *ids), *tid = malloc((size_t)c->B * c->T * 4);
  int32_t *tpos = malloc((size_t)c->B * c->T * 4);
  c->N = elmo_tf_pack(ids, c->mask, c->B, c->T, c->heads, c->seq_start, c->prob_start, tid, tpos);
  free(ids); free(tid); free(tpos);
}

static void attn_case_free(attn_case *c) {
  free(c->mask); free(c->mask_p); free(c->seq_start); free(c->prob_start);
}

/* Random merged [rows, H] with garbage (large) values at masked rows; quantized to bf16. */
static float *attn_input(const attn_case *c, uint64_t *rng) {
  float *x = randn((size_t)c->rows * c->H, rng, 1.0f, 0.0f);
  for (int64_t r = 0; r < c->rows; r++)
    if (!c->mask_p[r])
      for (int j = 0; j < c->H; j++) x[r * c->H + j] = 40.0f + (float)j;
  quantize(x, (size_t)c->rows * c->H);
  return x;
}

/* Inputs (merged, bf16 values, garbage at masked rows) and the CPU reference on packed rows. */
typedef struct attn_data {
  float *qkv;                /* [3, rows, H] */
  float *dctx;               /* [rows, H] */
  float *ctx, *dq, *dk, *dv; /* CPU [N, H] */
} attn_data;

static void attn_data_init(attn_data *d, const attn_case *c, uint64_t seed) {
  uint64_t rng = seed;
  const size_t per = (size_t)c->rows * c->H;
  d->qkv = malloc(3 * per * sizeof *d->qkv);
  for (int j = 0; j < 3; j++) {
    float *x = attn_input(c, &rng);
    memcpy(d->qkv + j * per, x, per * sizeof *x);
    free(x);
  }
  d->dctx = attn_input(c, &rng);
  int64_t N;
  float *q = gather_rows(d->qkv, c->mask_p, c->rows, c->H, &N), *k = gather_rows(d->qkv + per, c->mask_p, c->rows, c->H, &N);
  float *v = gather_rows(d->qkv + 2 * per, c->mask_p, c->rows, c->H, &N);
  float *dc = gather_rows(d->dctx, c->mask_p, c->rows, c->H, &N);
  assert_int_equal(N, c->N);
  float *probs = malloc((size_t)(c->prob_start[c->B] > 0 ? c->prob_start[c->B] : 1) * sizeof *probs);
  float *ws = malloc((size_t)(2 * c->T * c->T + c->dh * c->T) * 4);
  const size_t nh = (size_t)(N > 0 ? N : 1) * c->H * 4;
  d->ctx = malloc(nh); d->dq = malloc(nh); d->dk = malloc(nh); d->dv = malloc(nh);
  elmo_tf_attention_forward(q, k, v, c->seq_start, c->prob_start, c->B, c->H, c->heads, probs, d->ctx, ws);
  elmo_tf_attention_backward(q, k, v, probs, dc, c->seq_start, c->prob_start, c->B, c->H, c->heads, d->dq, d->dk,
                             d->dv, ws);
  free(q); free(k); free(v); free(dc); free(probs); free(ws);
}

static void attn_data_free(attn_data *d) {
  free(d->qkv); free(d->dctx); free(d->ctx); free(d->dq); free(d->dk); free(d->dv);
}

/* A merged GPU result g [rows, H] against the CPU's packed rows ref: close on the real rows, exactly
 * zero on the masked ones. */
static void expect_attn_rows(const float *g, const float *ref, const attn_case *c, double tol, const char *what) {
  int64_t N;
  float *gr = gather_rows(g, c->mask_p, c->rows, c->H, &N);
  expect_close(gr, ref, (size_t)N * c->H, tol, what);
  expect_masked_zero(g, c->mask_p, c->rows, c->H, what);
  free(gr);
}

static void attention_case(int B, int T, int Tp, int heads, int dh, const int *len, uint64_t seed) {
  attn_case c;
  attn_case_init(&c, B, T, Tp, heads, dh, len);
  const size_t per = (size_t)c.rows * c.H;
  attn_data d;
  attn_data_init(&d, &c, seed);
  const float *qkv = d.qkv, *dctx = d.dctx, *ctx = d.ctx, *dq = d.dq, *dk = d.dk, *dv = d.dv;
  int64_t N;

  /* GPU: fp32 merged -> split -> attention -> merge */
  elmo_err err;
  elmo_cuda_tf_gemm *g = elmo_cuda_tf_gemm_create(NULL, 0);
  float *d_in = dev_upload(qkv, 3 * per * 4);
  uint8_t *d_mask = dev_upload(c.mask, (size_t)c.B * c.T), *d_mask_p = dev_poisoned((size_t)c.rows);
  void *d_qkv = dev_poisoned(3 * per * 2), *d_probs = dev_poisoned((size_t)c.B * c.heads * c.Tp * c.Tp * 2);
  float *d_scores = dev_poisoned((size_t)c.B * c.heads * c.Tp * c.Tp * 4);
  void *d_ctxp = dev_poisoned(per * 2), *d_ctx = dev_poisoned(per * 2);
  assert_int_equal(elmo_cuda_embed_mask(d_mask, c.B, c.T, c.Tp, d_mask_p, 0, &err), ELMO_OK);
  uint8_t *g_mask = malloc((size_t)c.rows);
  download(g_mask, d_mask_p, (size_t)c.rows);
  assert_memory_equal(g_mask, c.mask_p, (size_t)c.rows);
  assert_int_equal(elmo_cuda_heads_split(d_in, 1, NULL, 3, c.B, c.Tp, c.heads, c.dh, d_qkv, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_attention_forward(g, d_qkv, d_mask_p, c.B, c.Tp, c.heads, c.dh, d_scores, d_probs, d_ctxp,
                                               0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_heads_merge(d_ctxp, 1, c.B, c.Tp, c.heads, c.dh, d_ctx, 0, &err), ELMO_OK);
  float *g_ctx_all = host_from_bf16(d_ctx, per);
  float *g_ctx = gather_rows(g_ctx_all, c.mask_p, c.rows, c.H, &N);
  expect_close(g_ctx, ctx, (size_t)N * c.H, 1e-2, "attention forward ctx (bf16)");
  expect_masked_zero(g_ctx_all, c.mask_p, c.rows, c.H, "attention forward ctx");

  /* backward: dctx (bf16, merged, garbage on masked rows) -> split -> backward -> merge */
  void *d_dctx = dev_bf16(dctx, per), *d_dqkv = dev_poisoned(3 * per * 2), *d_dqkv_m = dev_poisoned(3 * per * 2);
  assert_int_equal(elmo_cuda_heads_split(d_dctx, 0, NULL, 1, c.B, c.Tp, c.heads, c.dh, d_ctxp, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_attention_backward(g, d_qkv, d_probs, d_ctxp, d_mask_p, c.B, c.Tp, c.heads, c.dh,
                                                d_scores, d_dqkv, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_heads_merge(d_dqkv, 3, c.B, c.Tp, c.heads, c.dh, d_dqkv_m, 0, &err), ELMO_OK);
  float *g_d = host_from_bf16(d_dqkv_m, 3 * per);
  const float *ref[3] = {dq, dk, dv};
  static const char *names[3] = {"attention backward dq", "attention backward dk", "attention backward dv"};
  for (int j = 0; j < 3; j++) {
    float *gj = gather_rows(g_d + j * per, c.mask_p, c.rows, c.H, &N);
    expect_close(gj, ref[j], (size_t)N * c.H, 2e-2, names[j]);
    expect_masked_zero(g_d + j * per, c.mask_p, c.rows, c.H, names[j]);
    free(gj);
  }
  assert_int_equal(elmo_cuda_attention_forward(g, d_qkv, d_mask_p, c.B, 12, c.heads, c.dh, d_scores, d_probs, d_ctxp,
                                               0, &err), ELMO_EINPUT);   /* Tp not a multiple of 8 */

  elmo_cuda_tf_gemm_destroy(&g);
  assert_null(g);
  cudaFree(d_in); cudaFree(d_mask); cudaFree(d_mask_p); cudaFree(d_qkv); cudaFree(d_probs); cudaFree(d_scores);
  cudaFree(d_ctxp); cudaFree(d_ctx); cudaFree(d_dctx); cudaFree(d_dqkv); cudaFree(d_dqkv_m);
  free(g_mask); free(g_ctx_all); free(g_ctx); free(g_d);
  attn_data_free(&d);
  attn_case_free(&c);
}

static void test_attention(void **state) {
  (void)state;
  static const int len[3] = {13, 7, 0};
  attention_case(3, 13, 16, 2, 16, len, 505);
}

/* Rows longer than 128 keys (the softmax's two-chunk path) and a head size of 8. */
static void test_attention_long(void **state) {
  (void)state;
  static const int len[2] = {150, 77};
  attention_case(2, 150, 152, 3, 8, len, 515);
}

/* The fused kernels on the merged layout (q, k, v, dctx read in place; ctx, dq, dk, dv written
 * merged) against the CPU reference. Row 0 has a masked token at t = 1 (make_mask's hole). */
static void fused_case(int B, int T, int Tp, int heads, int dh, const int *len, uint64_t seed) {
  attn_case c;
  attn_case_init(&c, B, T, Tp, heads, dh, len);
  attn_data d;
  attn_data_init(&d, &c, seed);
  const size_t per = (size_t)c.rows * c.H;
  elmo_err err;
  uint8_t *d_mask = dev_upload(c.mask_p, (size_t)c.rows);
  elmo_bf16 *d_qkv = dev_bf16(d.qkv, 3 * per), *d_dctx = dev_bf16(d.dctx, per);
  elmo_bf16 *d_ctx = dev_poisoned(per * 2), *d_ctx2 = dev_poisoned(per * 2), *d_dqkv = dev_poisoned(3 * per * 2);
  assert_int_equal(elmo_cuda_attention_fused_forward(d_qkv, d_qkv + per, d_qkv + 2 * per, 0, d_mask, c.B, c.Tp, c.heads,
                                                     c.dh, d_ctx, 0, &err), ELMO_OK);
  float *g_ctx = host_from_bf16(d_ctx, per);
  char what[96];
  snprintf(what, sizeof what, "fused attention ctx (Tp %d, dh %d)", Tp, dh);
  expect_attn_rows(g_ctx, d.ctx, &c, 1e-2, what);
  assert_int_equal(elmo_cuda_attention_fused_backward(d_qkv, d_qkv + per, d_qkv + 2 * per, 0, d_dctx, d_mask, c.B, c.Tp,
                                                      c.heads, c.dh, d_dqkv, d_dqkv + per, d_dqkv + 2 * per, d_ctx2, NULL,
                                                      0, &err), ELMO_OK);
  float *g_d = host_from_bf16(d_dqkv, 3 * per), *g_ctx2 = host_from_bf16(d_ctx2, per);
  assert_memory_equal(g_ctx2, g_ctx, per * sizeof *g_ctx);      /* the backward's ctx: the forward's bits */
  const float *ref[3] = {d.dq, d.dk, d.dv};
  static const char *names[3] = {"dq", "dk", "dv"};
  for (int j = 0; j < 3; j++) {
    snprintf(what, sizeof what, "fused attention %s (Tp %d, dh %d)", names[j], Tp, dh);
    expect_attn_rows(g_d + j * per, ref[j], &c, 2e-2, what);
  }
  /* q, k, v (and dq, dk, dv) as the column blocks of one [rows, 3 H] matrix (the encoder's layout):
   * the same bits as the separate tensors */
  const int H = c.H;
  float *qi = malloc(3 * per * sizeof *qi);
  assert_non_null(qi);
  for (size_t r = 0; r < (size_t)c.rows; r++)
    for (int j = 0; j < 3; j++) memcpy(qi + r * 3 * H + j * H, d.qkv + j * per + r * H, (size_t)H * sizeof *qi);
  elmo_bf16 *d_qi = dev_bf16(qi, 3 * per), *d_ctx3 = dev_poisoned(per * 2), *d_di = dev_poisoned(3 * per * 2);
  assert_int_equal(elmo_cuda_attention_fused_forward(d_qi, d_qi + H, d_qi + 2 * H, 3 * H, d_mask, c.B, c.Tp, c.heads,
                                                     c.dh, d_ctx3, 0, &err), ELMO_OK);
  float *g_ctx3 = host_from_bf16(d_ctx3, per);
  assert_memory_equal(g_ctx3, g_ctx, per * sizeof *g_ctx);
  {  /* the E4M3 copy alone (no bf16 ctx): e4m3(ctx * scale), padded rows untouched */
    float *d_s = dev_scalar(16.0f);
    uint8_t *d_cq = dev_poisoned(per);
    CK(cudaMemset(d_cq, 0, per));
    assert_int_equal(elmo_cuda_attention_fused_forward_q(d_qi, d_qi + H, d_qi + 2 * H, 3 * H, d_mask, c.B, c.Tp, c.heads,
                                                         c.dh, NULL, d_cq, d_s, 0, &err), ELMO_OK);
    snprintf(what, sizeof what, "fused attention ctx, E4M3 copy (Tp %d, dh %d)", Tp, dh);
    expect_e4m3_copy(d_cq, g_ctx, per, 16.0f, what);
    assert_int_equal(elmo_cuda_attention_fused_forward_q(d_qi, d_qi + H, d_qi + 2 * H, 3 * H, d_mask, c.B, c.Tp, c.heads,
                                                         c.dh, NULL, NULL, d_s, 0, &err), ELMO_EINPUT);
    cudaFree(d_s); cudaFree(d_cq);
  }
  /* with the bias-gradient partials: their finished sums (added to random values) against the column
   * sums of the dq, dk, dv the kernel stored */
  const int64_t prow = elmo_cuda_attention_colpart_rows(c.B, c.Tp);
  float *d_part = dev_poisoned((size_t)(3 * prow * H) * 4);
  float *bias0 = randn((size_t)(3 * H), &seed, 1.0f, 0.0f), *d_bias = dev_upload(bias0, (size_t)(3 * H) * 4);
  assert_int_equal(elmo_cuda_attention_fused_backward(d_qi, d_qi + H, d_qi + 2 * H, 3 * H, d_dctx, d_mask, c.B, c.Tp,
                                                      c.heads, c.dh, d_di, d_di + H, d_di + 2 * H, NULL, d_part, 0, &err),
                   ELMO_OK);
  elmo_cuda_colsum_finish(d_part, prow, H, 3, d_bias, H, 0);
  float *g_di = host_from_bf16(d_di, 3 * per), *g_bias = host_from_f32(d_bias, (size_t)(3 * H));
  for (size_t r = 0; r < (size_t)c.rows; r++)
    for (int j = 0; j < 3; j++) {
      assert_memory_equal(g_di + r * 3 * H + j * H, g_d + j * per + r * H, (size_t)H * sizeof *g_di);
      for (int col = 0; col < H; col++) bias0[j * H + col] += g_di[r * 3 * H + j * H + col];
    }
  snprintf(what, sizeof what, "fused attention q/k/v bias sums (Tp %d, dh %d)", Tp, dh);
  expect_close(g_bias, bias0, (size_t)(3 * H), 1e-5, what);
  cudaFree(d_part); cudaFree(d_bias); free(bias0); free(g_bias);
  assert_int_equal(elmo_cuda_attention_fused_forward(d_qi, d_qi + H, d_qi + 2 * H, H + 4, d_mask, c.B, c.Tp, c.heads,
                                                     c.dh, d_ctx3, 0, &err), ELMO_EINPUT);   /* rows not 16-byte */
  cudaFree(d_qi); cudaFree(d_ctx3); cudaFree(d_di);
  free(qi); free(g_ctx3); free(g_di);
  cudaFree(d_mask); cudaFree(d_qkv); cudaFree(d_dctx); cudaFree(d_ctx); cudaFree(d_ctx2); cudaFree(d_dqkv);
  free(g_ctx); free(g_ctx2); free(g_d);
  attn_data_free(&d);
  attn_case_free(&c);
}

/* Head dim 64 at Tp 128 (16 warps' worth of keys, a fully masked sequence, a single token), Tp 120
 * and 40 (query and key tiles past Tp), Tp 8; head dims 32 and 16; shapes the kernels refuse. */
static void test_attention_fused(void **state) {
  (void)state;
  static const int len128[4] = {128, 90, 1, 0}, len120[2] = {117, 60}, len40[3] = {37, 20, 0}, len8[2] = {5, 3};
  static const int len64[3] = {64, 33, 0}, len24[2] = {20, 9};
  fused_case(4, 128, 128, 2, 64, len128, 1301);
  fused_case(2, 117, 120, 1, 64, len120, 1302);
  fused_case(3, 37, 40, 3, 64, len40, 1303);
  fused_case(2, 5, 8, 2, 64, len8, 1304);
  fused_case(3, 64, 64, 2, 32, len64, 1305);
  fused_case(2, 20, 24, 4, 16, len24, 1306);
  assert_int_equal(elmo_cuda_attention_fused_ok(136, 64), 0);
  assert_int_equal(elmo_cuda_attention_fused_ok(128, 8), 0);
  elmo_err err;
  elmo_bf16 *d = dev_poisoned((size_t)4 * 136 * 64 * 2);
  uint8_t *m = dev_poisoned(136);
  assert_int_equal(elmo_cuda_attention_fused_forward(d, d, d, 0, m, 1, 136, 1, 64, d, 0, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "Tp a multiple of 8");
  assert_int_equal(elmo_cuda_attention_fused_backward(d, d, d, 0, d, m, 1, 64, 8, 8, d, d, d, NULL, NULL, 0, &err),
                   ELMO_EINPUT);
  assert_int_equal(elmo_cuda_attention_fused_forward(d + 1, d, d, 0, m, 1, 64, 1, 64, d, 0, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "16-byte aligned");
  cudaFree(d); cudaFree(m);
}

/* ------------------------------------------------------------------ FP8 linear (forward GEMMs) */

/* A device scratch for elmo_cuda_tf_fp8_* of x [M, in] and one weight [out, in]. */
static elmo_cuda_tf_fp8 fp8_scratch(int64_t M, int in, int out) {
  elmo_cuda_tf_fp8 q;
  q.xq = dev_poisoned((size_t)(M * in));
  q.wq = dev_poisoned((size_t)out * in);
  q.amax = dev_poisoned(ELMO_CUDA_TF_FP8_SEGS * sizeof(unsigned));
  q.inv = dev_poisoned(ELMO_CUDA_TF_FP8_SEGS * sizeof(float));
  q.alpha = dev_poisoned(ELMO_CUDA_TF_FP8_SEGS * sizeof(float));
  return q;
}

static void fp8_scratch_free(elmo_cuda_tf_fp8 *q) {
  cudaFree(q->xq); cudaFree(q->wq); cudaFree(q->amax); cudaFree(q->inv); cudaFree(q->alpha);
}

/* Same BF16 inputs on both sides: the scales and E4M3 bytes must equal the CPU's exactly, the
 * outputs within BF16 rounding / FP8 fast accumulation; masked rows (garbage 900) must not move the
 * activation scale. */
static void test_fp8_linear(void **state) {
  (void)state;
  uint64_t rng = 1111;
  enum { M = 37, IN = 48, OUT = 80 };
  static const int masked[3] = {5, 6, 20};
  uint8_t mask[M];
  memset(mask, 1, sizeof mask);
  for (int i = 0; i < 3; i++) mask[masked[i]] = 0;
  float *x = randn((size_t)M * IN, &rng, 1.0f, 0.0f), *w = randn((size_t)OUT * IN, &rng, 0.05f, 0.0f);
  float *b = randn(OUT, &rng, 0.1f, 0.0f);
  x[3 * IN + 7] = -29.0f;                              /* the activation amax */
  for (int r = 0; r < M; r++)
    if (!mask[r]) for (int j = 0; j < IN; j++) x[r * IN + j] = 900.0f;
  quantize(x, (size_t)M * IN); quantize(w, (size_t)OUT * IN); quantize(b, OUT);
  /* CPU on the unmasked rows */
  int64_t N;
  float *xs = gather_rows(x, mask, M, IN, &N);
  float *ws = malloc((size_t)(IN * OUT + N * IN) * 4), *y = malloc((size_t)N * OUT * 4), *y0 = malloc((size_t)N * OUT * 4);
  elmo_tf_linear_forward_fp8(xs, w, b, N, IN, OUT, y, ws);
  elmo_tf_linear_forward_fp8(xs, w, NULL, N, IN, OUT, y0, ws);
  const float sx = elmo_tf_fp8_scale(elmo_tf_amax(xs, N * IN)), sw = elmo_tf_fp8_scale(elmo_tf_amax(w, OUT * IN));
  /* GPU */
  elmo_err err;
  void *lt_ws = dev_poisoned((size_t)32 << 20);
  elmo_cuda_tf_gemm *g = elmo_cuda_tf_gemm_create(lt_ws, (size_t)32 << 20);
  elmo_cuda_tf_fp8 q = fp8_scratch(M, IN, OUT);
  void *d_x = dev_bf16(x, (size_t)M * IN), *d_w = dev_bf16(w, (size_t)OUT * IN), *d_b = dev_bf16(b, OUT);
  uint8_t *d_mask = dev_upload(mask, M);
  void *d_y = dev_poisoned((size_t)M * OUT * 2);
  float *d_y0 = dev_poisoned((size_t)M * OUT * 4);
  const elmo_bf16 *wl[1] = {d_w};
  assert_int_equal(elmo_cuda_tf_fp8_prepare(&q, d_x, d_mask, M, IN, wl, 1, OUT, 0, &err), ELMO_OK);
  elmo_cuda_tf_fp8_linear(g, &q, 0, d_b, M, IN, OUT, d_y, 0, 0);
  elmo_cuda_tf_fp8_linear(g, &q, 0, NULL, M, IN, OUT, d_y0, 1, 0);
  float inv[2];
  uint8_t *xq = malloc((size_t)M * IN), *wq = malloc((size_t)OUT * IN);
  download(inv, q.inv, sizeof inv);
  download(xq, q.xq, (size_t)M * IN);
  download(wq, q.wq, (size_t)OUT * IN);
  assert_true(inv[0] == 1.0f / sx && inv[1] == 1.0f / sw);
  for (int64_t r = 0, n = 0; r < M; r++) {
    if (!mask[r]) continue;
    for (int j = 0; j < IN; j++)
      if (xq[r * IN + j] != elmo_f32_to_fp8(xs[n * IN + j] * sx))
        fail_msg("xq[%lld, %d] = 0x%02x, expected 0x%02x", (long long)r, j, xq[r * IN + j],
                 elmo_f32_to_fp8(xs[n * IN + j] * sx));
    n++;
  }
  for (int i = 0; i < OUT * IN; i++) assert_int_equal(wq[i], elmo_f32_to_fp8(w[i] * sw));
  float *gy_all = host_from_bf16(d_y, (size_t)M * OUT), *gy0_all = host_from_f32(d_y0, (size_t)M * OUT);
  float *gy = gather_rows(gy_all, mask, M, OUT, &N), *gy0 = gather_rows(gy0_all, mask, M, OUT, &N);
  print_message("fp8 linear: bf16+bias error %.3e, fp32 error %.3e\n", rel_err(gy, y, (size_t)N * OUT),
                rel_err(gy0, y0, (size_t)N * OUT));
  expect_close(gy, y, (size_t)N * OUT, 4e-3, "fp8 linear, bf16 output with bias");
  expect_close(gy0, y0, (size_t)N * OUT, 1e-3, "fp8 linear, fp32 output");
  /* without the mask the garbage rows set the scale */
  assert_int_equal(elmo_cuda_tf_fp8_prepare(&q, d_x, NULL, M, IN, wl, 1, OUT, 0, &err), ELMO_OK);
  download(inv, q.inv, sizeof inv);
  assert_true(inv[0] == 1.0f / elmo_tf_fp8_scale(900.0f));
  assert_int_equal(elmo_cuda_tf_fp8_prepare(&q, d_x, NULL, M, 40, wl, 1, OUT, 0, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "multiples of 16");

  elmo_cuda_tf_gemm_destroy(&g);
  fp8_scratch_free(&q);
  cudaFree(lt_ws); cudaFree(d_x); cudaFree(d_w); cudaFree(d_b); cudaFree(d_mask); cudaFree(d_y); cudaFree(d_y0);
  free(x); free(w); free(b); free(xs); free(ws); free(y); free(y0); free(xq); free(wq);
  free(gy_all); free(gy0_all); free(gy); free(gy0);
}

/* ------------------------------------------------------------------ embedding */

static void embedding_case(int V, int P, int H, int B, int T, int Tp, const int *len, uint64_t rng) {
  const int64_t rows = (int64_t)B * Tp;
  uint8_t *mask = make_mask(B, T, len, B - 1), *mask_p = pad_mask(mask, B, T, Tp);
  int32_t *ids = malloc((size_t)B * T * sizeof *ids);
  for (int i = 0; i < B * T; i++)
    ids[i] = mask[i] ? (int32_t)(tu_rand_u64(&rng) % (uint64_t)V) : (i % 2 ? -7 : 100000);  /* garbage when masked */
  float *word = randn((size_t)V * H, &rng, 1.0f, 0.0f), *pos = randn((size_t)P * H, &rng, 1.0f, 0.0f);
  float *type = randn((size_t)2 * H, &rng, 1.0f, 0.0f);
  quantize(word, (size_t)V * H); quantize(pos, (size_t)P * H); quantize(type, (size_t)2 * H);
  int64_t *ss = malloc((size_t)(B + 1) * 8), *ps = malloc((size_t)(B + 1) * 8);
  int32_t *tid = malloc((size_t)B * T * 4), *tpos = malloc((size_t)B * T * 4);
  const int64_t N = elmo_tf_pack(ids, mask, B, T, 1, ss, ps, tid, tpos);
  float *e = malloc((size_t)N * H * 4);
  elmo_tf_embed_forward(word, pos, type, tid, tpos, N, H, e);

  elmo_err err;
  void *d_word = dev_bf16(word, (size_t)V * H), *d_pos = dev_bf16(pos, (size_t)P * H), *d_type = dev_bf16(type, 2 * H);
  int32_t *d_ids = dev_upload(ids, (size_t)B * T * 4), *d_keys = dev_poisoned((size_t)rows * 4);
  uint8_t *d_mask_p = dev_upload(mask_p, (size_t)rows);
  float *d_e = dev_poisoned((size_t)rows * H * 4);
  int *d_bad = dev_upload(&(int){0}, sizeof(int));
  assert_int_equal(elmo_cuda_embed_forward(d_word, d_pos, d_type, V, P, d_ids, d_mask_p, B, T, Tp, H, d_e, d_keys,
                                           d_bad, 0, &err), ELMO_OK);
  float *g_e_all = host_from_f32(d_e, (size_t)rows * H);
  int64_t n2;
  float *g_e = gather_rows(g_e_all, mask_p, rows, H, &n2);
  assert_int_equal(n2, N);
  expect_close(g_e, e, (size_t)N * H, 1e-6, "embedding forward (fp32)");
  expect_masked_zero(g_e_all, mask_p, rows, H, "embedding forward");
  int32_t *keys = malloc((size_t)rows * 4);
  int bad = -1;
  download(keys, d_keys, (size_t)rows * 4);
  download(&bad, d_bad, sizeof bad);
  assert_int_equal(bad, 0);
  for (int64_t r = 0; r < rows; r++) {
    const int t = (int)(r % Tp);
    assert_int_equal(keys[r], mask_p[r] ? ids[(r / Tp) * T + t] : V);
  }

  /* backward, accumulating onto random gradients; garbage in masked rows of de */
  float *de = randn((size_t)rows * H, &rng, 1.0f, 0.0f);
  for (int64_t r = 0; r < rows; r++)
    if (!mask_p[r]) de[r * H] = 1e6f;
  int64_t n3;
  float *de_p = gather_rows(de, mask_p, rows, H, &n3);
  float *dword = randn((size_t)V * H, &rng, 1.0f, 0.0f), *dpos = randn((size_t)P * H, &rng, 1.0f, 0.0f);
  float *dtype = randn((size_t)2 * H, &rng, 1.0f, 0.0f);
  float *d_dword = dev_upload(dword, (size_t)V * H * 4), *d_dpos = dev_upload(dpos, (size_t)P * H * 4);
  float *d_dtype = dev_upload(dtype, (size_t)2 * H * 4), *d_de = dev_upload(de, (size_t)rows * H * 4);
  elmo_tf_embed_backward(de_p, tid, tpos, N, H, dword, dpos, dtype);
  const size_t wsb = elmo_cuda_embed_ws_bytes(rows, Tp, H);
  assert_true(wsb > 0);
  void *d_ws = dev_poisoned(wsb);
  assert_int_equal(elmo_cuda_embed_backward(d_de, d_keys, d_mask_p, V, P, B, Tp, H, d_dword, d_dpos, d_dtype, d_ws, wsb,
                                            0, &err), ELMO_OK);
  float *g_dword = host_from_f32(d_dword, (size_t)V * H), *g_dpos = host_from_f32(d_dpos, (size_t)P * H);
  float *g_dtype = host_from_f32(d_dtype, (size_t)2 * H);
  expect_close(g_dword, dword, (size_t)V * H, 1e-5, "embedding backward word (fp32)");
  expect_close(g_dpos, dpos, (size_t)P * H, 1e-5, "embedding backward position (fp32)");
  expect_close(g_dtype, dtype, (size_t)2 * H, 1e-5, "embedding backward type (fp32)");

  /* an unmasked id outside [0, V) raises the flag */
  ids[0] = V;
  CK(cudaMemcpy(d_ids, ids, (size_t)B * T * 4, cudaMemcpyHostToDevice));
  assert_int_equal(elmo_cuda_embed_forward(d_word, d_pos, d_type, V, P, d_ids, d_mask_p, B, T, Tp, H, d_e, d_keys,
                                           d_bad, 0, &err), ELMO_OK);
  download(&bad, d_bad, sizeof bad);
  assert_int_equal(bad, 1);
  assert_int_equal(elmo_cuda_embed_forward(d_word, d_pos, d_type, V, T - 1, d_ids, d_mask_p, B, T, Tp, H, d_e, d_keys,
                                           d_bad, 0, &err), ELMO_EINPUT);   /* T > P */

  cudaFree(d_word); cudaFree(d_pos); cudaFree(d_type); cudaFree(d_ids); cudaFree(d_keys); cudaFree(d_mask_p);
  cudaFree(d_e); cudaFree(d_bad); cudaFree(d_dword); cudaFree(d_dpos); cudaFree(d_dtype); cudaFree(d_de);
  cudaFree(d_ws);
  free(mask); free(mask_p); free(ids); free(word); free(pos); free(type); free(ss); free(ps); free(tid); free(tpos);
  free(e); free(g_e_all); free(g_e); free(keys); free(de); free(de_p); free(dword); free(dpos); free(dtype);
  free(g_dword); free(g_dpos); free(g_dtype);
}

static void test_embedding(void **state) {
  (void)state;
  static const int len[4] = {17, 5, 0, 12};
  embedding_case(11, 20, 48, 4, 17, 24, len, 606);
  /* three ids over 24 full rows of 40: word-gradient runs of ~300 rows (the long-run kernel, six columns
   * a thread as at BERT's width) and a width that is not a multiple of its 128 threads */
  int len24[24];
  for (int b = 0; b < 24; b++) len24[b] = 40;
  embedding_case(3, 48, 712, 24, 40, 40, len24, 607);
  /* two ids over 64 rows of 40: runs of ~1,280 rows (the long-run kernel's end search past 1,024 keys),
   * a width that is not a multiple of 8 (the element-wise forward) nor of 32 (a part slice), and 64
   * sequences a position (several groups of the position sums) */
  int len64[64];
  for (int b = 0; b < 64; b++) len64[b] = b % 7 ? 40 : 33;
  embedding_case(2, 40, 36, 64, 40, 40, len64, 608);
}

/* ------------------------------------------------------------------ pooling */

static void pooling_case(elmo_tf_pooling mode) {
  uint64_t rng = 707 + (uint64_t)mode;
  const int B = 4, T = 11, Tp = 16, H = 40;
  static const int len[4] = {11, 0, 4, 9};
  const int64_t rows = (int64_t)B * Tp;
  uint8_t *mask = make_mask(B, T, len, 3), *mask_p = pad_mask(mask, B, T, Tp);
  float *x = randn((size_t)rows * H, &rng, 1.0f, 0.0f);
  quantize(x, (size_t)rows * H);
  int64_t N, ss[5];
  float *xp = gather_rows(x, mask_p, rows, H, &N);
  ss[0] = 0;
  for (int b = 0; b < B; b++) {
    int n = 0;
    for (int t = 0; t < Tp; t++) n += mask_p[b * Tp + t];
    ss[b + 1] = ss[b] + n;
  }
  float *pooled = malloc((size_t)B * H * 4), *dpooled = randn((size_t)B * H, &rng, 1.0f, 0.0f);
  float *dx = malloc((size_t)N * H * 4);
  elmo_tf_pool_forward(xp, ss, B, H, mode, pooled);
  elmo_tf_pool_backward(dpooled, ss, B, H, mode, dx);

  elmo_err err;
  void *d_x = dev_bf16(x, (size_t)rows * H);
  uint8_t *d_mask_p = dev_upload(mask_p, (size_t)rows);
  float *d_pooled = dev_poisoned((size_t)B * H * 4), *d_dp = dev_upload(dpooled, (size_t)B * H * 4);
  float *d_dx = dev_poisoned((size_t)rows * H * 4);
  assert_int_equal(elmo_cuda_pool_forward(d_x, d_mask_p, B, Tp, H, mode, d_pooled, 0, &err), ELMO_OK);
  assert_int_equal(elmo_cuda_pool_backward(d_dp, d_mask_p, B, Tp, H, mode, d_dx, 0, &err), ELMO_OK);
  float *g_pooled = host_from_f32(d_pooled, (size_t)B * H), *g_dx_all = host_from_f32(d_dx, (size_t)rows * H);
  int64_t n2;
  float *g_dx = gather_rows(g_dx_all, mask_p, rows, H, &n2);
  expect_close(g_pooled, pooled, (size_t)B * H, 1e-5,
               mode == ELMO_TF_POOL_CLS ? "cls pool forward" : "mean pool forward");
  expect_close(g_dx, dx, (size_t)N * H, 1e-6, mode == ELMO_TF_POOL_CLS ? "cls pool backward" : "mean pool backward");
  expect_masked_zero(g_dx_all, mask_p, rows, H, "pool backward");
  for (int j = 0; j < H; j++) assert_true(g_pooled[1 * H + j] == 0.0f);   /* the empty row */

  cudaFree(d_x); cudaFree(d_mask_p); cudaFree(d_pooled); cudaFree(d_dp); cudaFree(d_dx);
  free(mask); free(mask_p); free(x); free(xp); free(pooled); free(dpooled); free(dx); free(g_pooled); free(g_dx_all);
  free(g_dx);
}

static void test_pooling_mean(void **state) { (void)state; pooling_case(ELMO_TF_POOL_MEAN); }
static void test_pooling_cls(void **state) { (void)state; pooling_case(ELMO_TF_POOL_CLS); }

/* ------------------------------------------------------------------ whole encoder */

typedef struct enc_case {
  elmo_tf_config cfg;
  int B, T;
  elmo_tf_params p;          /* bf16-representable values */
  int32_t *ids;
  uint8_t *mask;
  float *dpooled;
} enc_case;

static void enc_case_init(enc_case *c, elmo_tf_pooling mode, uint64_t seed) {
  static const int len[5] = {17, 9, 1, 0, 13};
  elmo_tf_config_init(&c->cfg);
  c->cfg.vocab_size = 100; c->cfg.max_position = 32; c->cfg.type_vocab = 2; c->cfg.hidden = 64;
  c->cfg.layers = 2; c->cfg.heads = 4; c->cfg.ffn = 128; c->cfg.pooling = mode;
  c->B = 5; c->T = 17;
  elmo_err err;
  assert_int_equal(elmo_tf_alloc(&c->p, &c->cfg, &err), ELMO_OK);
  elmo_tf_init_random(&c->p, seed);
  uint64_t rng = seed * 7 + 1;
  for (int i = 0; i < c->p.num_tensors; i++) {   /* non-trivial LayerNorm weights and biases */
    const elmo_tf_tensor *t = elmo_tf_tensor_at(&c->p, i);
    float *x = elmo_tf_tensor_data(&c->p, i);
    for (int64_t j = 0; j < t->numel; j++) {
      if (t->kind == ELMO_TF_NORM_WEIGHT) x[j] += 0.1f * tu_rand_normal(&rng);
      if (t->kind == ELMO_TF_BIAS || t->kind == ELMO_TF_NORM_BIAS) x[j] = 0.05f * tu_rand_normal(&rng);
    }
  }
  quantize(c->p.flat, (size_t)c->p.num_params);
  c->mask = make_mask(c->B, c->T, len, 4);
  c->ids = malloc((size_t)c->B * c->T * sizeof *c->ids);
  for (int i = 0; i < c->B * c->T; i++)
    c->ids[i] = c->mask[i] ? (int32_t)(tu_rand_u64(&rng) % 100) : -3;
  c->dpooled = randn((size_t)c->B * c->cfg.hidden, &rng, 1.0f, 0.0f);
}

static void enc_case_free(enc_case *c) {
  elmo_tf_free(&c->p);
  free(c->ids); free(c->mask); free(c->dpooled);
}

typedef struct enc_result {
  float *pooled;             /* [B, H] */
  float *grads;              /* [num_params] */
  elmo_tf_fp8_scales *scales;  /* [layers], FP8 forward only */
} enc_result;

static void enc_result_free(enc_result *r) { free(r->pooled); free(r->grads); free(r->scales); }

static void run_cpu(const enc_case *c, enc_result *r) {
  elmo_tf_cache cache;
  elmo_tf_params g;
  elmo_err err;
  assert_int_equal(elmo_tf_cache_alloc(&cache, &c->cfg, c->B, c->T, &err), ELMO_OK);
  assert_int_equal(elmo_tf_alloc(&g, &c->cfg, &err), ELMO_OK);
  r->scales = NULL;
  r->pooled = malloc((size_t)c->B * c->cfg.hidden * 4);
  assert_int_equal(elmo_tf_forward(&c->p, &cache, c->ids, c->mask, c->B, c->T, r->pooled, &err), ELMO_OK);
  assert_int_equal(elmo_tf_backward(&c->p, &cache, c->dpooled, &g, &err), ELMO_OK);
  r->grads = malloc((size_t)g.num_params * 4);
  memcpy(r->grads, g.flat, (size_t)g.num_params * 4);
  elmo_tf_free(&g);
  elmo_tf_cache_free(&cache);
}

/* GPU forward + backward (twice: the second backward accumulates) with the given flags. */
static void run_gpu(const enc_case *c, int flags, int f32_params, enc_result *r, enc_result *twice) {
  elmo_err err;
  elmo_cuda_tf *t = NULL;
  const size_t np = (size_t)c->p.num_params, H = (size_t)c->cfg.hidden;
  assert_int_equal(elmo_cuda_tf_create(&c->cfg, c->B + 2, c->T + 3, flags, NULL, &t, &err), ELMO_OK);
  void *d_params = f32_params ? dev_upload(c->p.flat, np * 4) : dev_bf16(c->p.flat, np);
  int32_t *d_ids = dev_upload(c->ids, (size_t)c->B * c->T * 4);
  uint8_t *d_mask = dev_upload(c->mask, (size_t)c->B * c->T);
  float *d_pooled = dev_poisoned((size_t)c->B * H * 4), *d_dp = dev_upload(c->dpooled, (size_t)c->B * H * 4);
  float *d_grads = dev_poisoned(np * 4);
  CK(cudaMemset(d_grads, 0, np * 4));
  assert_int_equal(elmo_cuda_tf_forward(t, d_params, !f32_params, d_ids, d_mask, c->B, c->T, d_pooled, 0, &err),
                   ELMO_OK);
  assert_int_equal(elmo_cuda_tf_backward(t, d_params, !f32_params, d_dp, d_grads, 0, &err), ELMO_OK);
  r->pooled = host_from_f32(d_pooled, (size_t)c->B * H);
  r->grads = host_from_f32(d_grads, np);
  r->scales = NULL;
  if (c->cfg.fp8_forward) {
    r->scales = calloc((size_t)c->cfg.layers, sizeof *r->scales);
    assert_int_equal(elmo_cuda_tf_fp8_scales(t, r->scales, 0, &err), ELMO_OK);
  }
  assert_int_equal(elmo_cuda_tf_bad_ids(t, 0), 0);     /* garbage ids sit only at masked positions */
  if (twice) {
    assert_int_equal(elmo_cuda_tf_backward(t, d_params, !f32_params, d_dp, d_grads, 0, &err), ELMO_OK);
    twice->pooled = NULL;
    twice->scales = NULL;
    twice->grads = host_from_f32(d_grads, np);
  }
  elmo_cuda_tf_destroy(&t);
  assert_null(t);
  cudaFree(d_params); cudaFree(d_ids); cudaFree(d_mask); cudaFree(d_pooled); cudaFree(d_dp); cudaFree(d_grads);
}

/* Per tensor: ||g - c|| <= 5e-2 ||c|| + 2e-3 ||c_all|| sqrt(numel / numel_all) (the floor covers
 * gradients that vanish in exact arithmetic, e.g. the key bias); whole vector within 3e-2. */
static void expect_grads_close(const enc_case *c, const float *gpu, const float *cpu) {
  const size_t np = (size_t)c->p.num_params;
  double all = 0.0;
  for (size_t i = 0; i < np; i++) all += (double)cpu[i] * cpu[i];
  all = sqrt(all);
  double worst = 0.0;
  const char *worst_name = "";
  for (int i = 0; i < c->p.num_tensors; i++) {
    const elmo_tf_tensor *t = elmo_tf_tensor_at(&c->p, i);
    const float *g = gpu + t->offset, *r = cpu + t->offset;
    double num = 0.0, den = 0.0;
    for (int64_t j = 0; j < t->numel; j++) {
      if (!isfinite(g[j])) fail_msg("%s: gradient %lld is not finite", t->name, (long long)j);
      num += ((double)g[j] - r[j]) * ((double)g[j] - r[j]);
      den += (double)r[j] * r[j];
    }
    num = sqrt(num);
    den = sqrt(den);
    const double floor = 2e-3 * all * sqrt((double)t->numel / (double)np), bound = 5e-2 * den + floor;
    if (den > 10.0 * floor && num / den > worst) { worst = num / den; worst_name = t->name; }
    if (!(num <= bound)) fail_msg("%s: gradient error %.3e (norm %.3e, bound %.3e)", t->name, num, den, bound);
  }
  print_message("worst per-tensor gradient error %.3e (%s; tensors well above the floor)\n", worst, worst_name);
  expect_close(gpu, cpu, np, 3e-2, "encoder gradients (whole vector)");
}

static void encoder_case(elmo_tf_pooling mode) {
  enc_case c;
  enc_case_init(&c, mode, 808 + (uint64_t)mode);
  enc_result cpu, gpu, twice;
  run_cpu(&c, &cpu);
  run_gpu(&c, 0, 0, &gpu, &twice);
  const size_t ph = (size_t)c.B * c.cfg.hidden, np = (size_t)c.p.num_params;
  print_message("pooled error %.3e\n", rel_err(gpu.pooled, cpu.pooled, ph));
  expect_close(gpu.pooled, cpu.pooled, ph, 3e-2, "encoder pooled output");
  for (int j = 0; j < c.cfg.hidden; j++) assert_true(gpu.pooled[3 * c.cfg.hidden + j] == 0.0f);  /* empty row */
  expect_grads_close(&c, gpu.grads, cpu.grads);
  float *doubled = malloc(np * 4);
  for (size_t i = 0; i < np; i++) doubled[i] = 2.0f * gpu.grads[i];
  expect_close(twice.grads, doubled, np, 1e-6, "second backward accumulates");
  for (size_t i = 0; i < np; i++)     /* alignment padding keeps a zero gradient */
    if (cpu.grads[i] == 0.0f && gpu.grads[i] != 0.0f) {
      int in_tensor = 0;
      for (int k = 0; k < c.p.num_tensors && !in_tensor; k++) {
        const elmo_tf_tensor *t = elmo_tf_tensor_at(&c.p, k);
        in_tensor = (int64_t)i >= t->offset && (int64_t)i < t->offset + t->numel;
      }
      if (!in_tensor) fail_msg("padding float %zu got gradient %g", i, (double)gpu.grads[i]);
    }
  free(doubled);
  enc_result_free(&cpu); enc_result_free(&gpu); free(twice.grads);
  enc_case_free(&c);
}

static void test_encoder_mean(void **state) { (void)state; encoder_case(ELMO_TF_POOL_MEAN); }
static void test_encoder_cls(void **state) { (void)state; encoder_case(ELMO_TF_POOL_CLS); }

/* Recompute mode, FP32 parameters and a repeated run all give the same bits as the default. */
static void test_encoder_modes_bitwise(void **state) {
  (void)state;
  enc_case c;
  enc_case_init(&c, ELMO_TF_POOL_MEAN, 909);
  const size_t ph = (size_t)c.B * c.cfg.hidden * 4, gb = (size_t)c.p.num_params * 4;
  enc_result base, again, rec, f32;
  run_gpu(&c, 0, 0, &base, NULL);
  run_gpu(&c, 0, 0, &again, NULL);
  run_gpu(&c, ELMO_CUDA_TF_RECOMPUTE, 0, &rec, NULL);
  run_gpu(&c, ELMO_CUDA_TF_F32_PARAMS, 1, &f32, NULL);
  assert_memory_equal(again.pooled, base.pooled, ph);
  assert_memory_equal(again.grads, base.grads, gb);
  assert_memory_equal(rec.pooled, base.pooled, ph);
  assert_memory_equal(rec.grads, base.grads, gb);
  assert_memory_equal(f32.pooled, base.pooled, ph);
  assert_memory_equal(f32.grads, base.grads, gb);
  enc_result_free(&base); enc_result_free(&again); enc_result_free(&rec); enc_result_free(&f32);
  enc_case_free(&c);
}

/* Sets ELMO_ATTN_FUSED (read when an encoder is created or planned); NULL unsets it. */
static void set_fused_env(const char *v) {
  if (v) setenv("ELMO_ATTN_FUSED", v, 1);
  else unsetenv("ELMO_ATTN_FUSED");
}

/* The encoder on the fused attention path (head dim 16, Tp 24 here) against the batched cuBLASLt path
 * (ELMO_ATTN_FUSED=0): same numerics up to summation order, and a smaller plan without the score
 * matrix, probabilities and split context. The CPU comparisons above run whichever path is active. */
static void test_encoder_fused_vs_batched(void **state) {
  (void)state;
  const char *was = getenv("ELMO_ATTN_FUSED");
  char *saved = was ? strdup(was) : NULL;
  enc_case c;
  enc_case_init(&c, ELMO_TF_POOL_MEAN, 1404);
  enc_result fused, batched, cpu;
  set_fused_env("1");
  assert_int_equal(elmo_cuda_attention_fused_ok(24, 16), 1);
  run_gpu(&c, 0, 0, &fused, NULL);
  const size_t ws_fused = elmo_cuda_tf_workspace_bytes(&c.cfg, 128, 32, 0);
  set_fused_env("0");
  assert_int_equal(elmo_cuda_attention_fused_ok(24, 16), 0);
  run_gpu(&c, 0, 0, &batched, NULL);
  const size_t ws_batched = elmo_cuda_tf_workspace_bytes(&c.cfg, 128, 32, 0);
  set_fused_env(saved);
  free(saved);
  run_cpu(&c, &cpu);
  const size_t ph = (size_t)c.B * c.cfg.hidden, np = (size_t)c.p.num_params;
  print_message("fused vs batched: pooled %.3e, gradients %.3e; vs CPU pooled %.3e / %.3e; workspace %.1f vs %.1f "
                "MiB at B 128, T 32\n", rel_err(fused.pooled, batched.pooled, ph), rel_err(fused.grads, batched.grads, np),
                rel_err(fused.pooled, cpu.pooled, ph), rel_err(batched.pooled, cpu.pooled, ph), ws_fused / 1048576.0,
                ws_batched / 1048576.0);
  expect_close(fused.pooled, batched.pooled, ph, 1e-2, "fused vs batched attention: pooled output");
  expect_close(fused.grads, batched.grads, np, 2e-2, "fused vs batched attention: gradients");
  expect_close(fused.pooled, cpu.pooled, ph, 3e-2, "fused attention encoder: pooled output vs CPU");
  expect_grads_close(&c, fused.grads, cpu.grads);
  /* the fused plan drops probs [B heads, Tp, Tp] and ctxp [M, H] (bf16), and the fp32 scores */
  const size_t S = (size_t)128 * c.cfg.heads * 32 * 32, MH = (size_t)128 * 32 * c.cfg.hidden;
  assert_true(ws_fused > 0 && ws_batched >= ws_fused + S * 2 + MH * 2);
  enc_result_free(&fused); enc_result_free(&batched); enc_result_free(&cpu);
  enc_case_free(&c);
}

/* run_gpu (no flags, BF16 parameters) with the environment variable var set to value, restored after. */
static void run_gpu_env(const enc_case *c, const char *var, const char *value, enc_result *r) {
  const char *was = getenv(var);
  char *saved = was ? strdup(was) : NULL;
  setenv(var, value, 1);
  run_gpu(c, 0, 0, r, NULL);
  if (saved) setenv(var, saved, 1);
  else unsetenv(var);
  free(saved);
}

/* FP8 forward GEMMs and the E4M3 input gradients of o and ff2 (cfg.fp8_forward): the GPU's input scales are
 * the CPU's (the same formulas on the same BF16 parameters) and its output and gradients match the CPU's FP8
 * encoder within the encoder tolerances;
 * the gradients stay finite and close to the BF16 path's; FP8 really runs (its output differs from
 * BF16's); recompute, a repeated run, the batched attention path and one GEMM a weight instead of the
 * column-scaled q/k/v and ff2 GEMMs (ELMO_FP8_COLSCALE=0) give the same bits. */
static void test_encoder_fp8(void **state) {
  (void)state;
  enc_case c;
  enc_case_init(&c, ELMO_TF_POOL_MEAN, 1202);
  enc_result bf, cpu, gpu, again, rec;
  run_gpu(&c, 0, 0, &bf, NULL);                         /* BF16 GEMMs */
  c.cfg.fp8_forward = c.p.cfg.fp8_forward = 1;
  run_cpu(&c, &cpu);
  run_gpu(&c, 0, 0, &gpu, NULL);
  run_gpu(&c, 0, 0, &again, NULL);
  run_gpu(&c, ELMO_CUDA_TF_RECOMPUTE, 0, &rec, NULL);
  const size_t ph = (size_t)c.B * c.cfg.hidden, np = (size_t)c.p.num_params;
  const double e_cpu = rel_err(gpu.pooled, cpu.pooled, ph), e_bf = rel_err(gpu.pooled, bf.pooled, ph);
  const double g_bf = rel_err(gpu.grads, bf.grads, np);
  print_message("fp8 pooled: vs CPU fp8 %.3e, vs GPU bf16 %.3e; gradients vs GPU bf16 %.3e\n", e_cpu, e_bf, g_bf);
  {  /* one GEMM a weight (ELMO_FP8_COLSCALE=0) gives the same bits as q/k/v in one GEMM with column scales */
    enc_result pw;
    run_gpu_env(&c, "ELMO_FP8_COLSCALE", "0", &pw);
    assert_memory_equal(pw.pooled, gpu.pooled, ph * 4);
    assert_memory_equal(pw.grads, gpu.grads, np * 4);
    enc_result_free(&pw);
  }
  {  /* BF16 input gradients for o and ff2 (ELMO_FP8_DGRAD=0): the same forward, other gradients (the E4M3 ones
      * ran), close to them */
    enc_result bd;
    run_gpu_env(&c, "ELMO_FP8_DGRAD", "0", &bd);
    assert_memory_equal(bd.pooled, gpu.pooled, ph * 4);
    const double e_dg = rel_err(gpu.grads, bd.grads, np);
    print_message("fp8 input gradients vs bf16 ones: gradients %.3e apart\n", e_dg);
    assert_true(e_dg > 1e-5);
    expect_close(gpu.grads, bd.grads, np, 5e-2, "fp8 encoder gradients, FP8 vs BF16 input gradients");
    enc_result_free(&bd);
  }
  {  /* the batched attention path (ctx cast by its own pass) gives the same bits as the fused one */
    enc_result nf;
    run_gpu_env(&c, "ELMO_ATTN_FUSED", "0", &nf);
    assert_memory_equal(nf.pooled, gpu.pooled, ph * 4);
    enc_result_free(&nf);
  }
  /* the input scales: the CPU's formulas on the BF16 parameters the GPU read */
  elmo_tf_params pb;
  elmo_err err;
  assert_int_equal(elmo_tf_alloc(&pb, &c.cfg, &err), ELMO_OK);
  for (int64_t i = 0; i < c.p.num_params; i++) pb.flat[i] = elmo_bf16_to_f32(elmo_f32_to_bf16(c.p.flat[i]));
  for (int i = 0; i < c.cfg.layers; i++) {
    elmo_tf_fp8_scales want;
    elmo_tf_fp8_layer_scales(&c.cfg, i ? pb.layer[i - 1].ln2_w : pb.emb_ln_w, i ? pb.layer[i - 1].ln2_b : pb.emb_ln_b,
                             &pb.layer[i], &want);
    print_message("layer %d fp8 scales x %g ctx %g h1 %g g %g (CPU %g %g %g %g)\n", i, (double)gpu.scales[i].x,
                  (double)gpu.scales[i].ctx, (double)gpu.scales[i].h1, (double)gpu.scales[i].g, (double)want.x, (double)want.ctx,
                  (double)want.h1, (double)want.g);
    assert_true(gpu.scales[i].x == want.x && gpu.scales[i].ctx == want.ctx);
    assert_true(gpu.scales[i].h1 == want.h1 && gpu.scales[i].g == want.g);
  }
  elmo_tf_free(&pb);
  expect_close(gpu.pooled, cpu.pooled, ph, 3e-2, "fp8 encoder pooled output vs CPU fp8");
  expect_grads_close(&c, gpu.grads, cpu.grads);
  assert_true(e_bf > 1e-4);                             /* the FP8 path ran */
  expect_close(gpu.pooled, bf.pooled, ph, 3e-2, "fp8 encoder pooled output vs bf16");
  expect_close(gpu.grads, bf.grads, np, 5e-2, "fp8 encoder gradients vs bf16");
  for (int j = 0; j < c.cfg.hidden; j++) assert_true(gpu.pooled[3 * c.cfg.hidden + j] == 0.0f);  /* empty row */
  assert_memory_equal(again.pooled, gpu.pooled, ph * 4);
  assert_memory_equal(again.grads, gpu.grads, np * 4);
  assert_memory_equal(rec.pooled, gpu.pooled, ph * 4);
  assert_memory_equal(rec.grads, gpu.grads, np * 4);
  elmo_tf_config plain = c.cfg;
  plain.fp8_forward = 0;
  assert_true(elmo_cuda_tf_workspace_bytes(&c.cfg, 8, 32, 0) > elmo_cuda_tf_workspace_bytes(&plain, 8, 32, 0));
  assert_true(elmo_cuda_tf_activation_bytes(&c.cfg, 8, 32, 0) == elmo_cuda_tf_activation_bytes(&plain, 8, 32, 0));
  enc_result_free(&bf); enc_result_free(&cpu); enc_result_free(&gpu); enc_result_free(&again); enc_result_free(&rec);
  enc_case_free(&c);
}

static void test_encoder_errors(void **state) {
  (void)state;
  enc_case c;
  enc_case_init(&c, ELMO_TF_POOL_MEAN, 1001);
  elmo_err err;
  elmo_cuda_tf *t = NULL;
  assert_int_equal(elmo_cuda_tf_create(&c.cfg, 4, 33, 0, NULL, &t, &err), ELMO_EINPUT);   /* > max_position */
  tu_assert_contains(err.msg, "max_position");
  assert_null(t);
  assert_int_equal(elmo_cuda_tf_create(&c.cfg, 4, 16, 0, NULL, &t, &err), ELMO_OK);
  void *d_params = dev_bf16(c.p.flat, (size_t)c.p.num_params);
  float *d_pooled = dev_poisoned((size_t)8 * c.cfg.hidden * 4), *d_grads = dev_poisoned((size_t)c.p.num_params * 4);
  int32_t *d_ids = dev_upload(c.ids, (size_t)c.B * c.T * 4);
  assert_int_equal(elmo_cuda_tf_backward(t, d_params, 1, d_pooled, d_grads, 0, &err), ELMO_ERUNTIME);
  assert_int_equal(elmo_cuda_tf_forward(t, d_params, 1, d_ids, NULL, 5, 16, d_pooled, 0, &err), ELMO_EINPUT);
  assert_int_equal(elmo_cuda_tf_forward(t, d_params, 1, d_ids, NULL, 4, 17, d_pooled, 0, &err), ELMO_EINPUT);
  assert_int_equal(elmo_cuda_tf_forward(t, d_params, 0, d_ids, NULL, 4, 16, d_pooled, 0, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "ELMO_CUDA_TF_F32_PARAMS");
  assert_true(elmo_cuda_tf_activation_bytes(&c.cfg, 4, 16, ELMO_CUDA_TF_RECOMPUTE) <
              elmo_cuda_tf_activation_bytes(&c.cfg, 4, 16, 0));
  assert_true(elmo_cuda_tf_activation_bytes(&c.cfg, 4, 16, 0) < elmo_cuda_tf_workspace_bytes(&c.cfg, 4, 16, 0));
  elmo_cuda_tf_destroy(&t);
  cudaFree(d_params); cudaFree(d_pooled); cudaFree(d_grads); cudaFree(d_ids);
  enc_case_free(&c);
}

/* ------------------------------------------------------------------ benchmark (ELMO_BENCH_TF=1) */

static int cmp_float(const void *a, const void *b) {
  const float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Median milliseconds of `reps` forward(+backward) runs. */
static float bench_time(elmo_cuda_tf *t, const void *params, const int32_t *ids, const uint8_t *mask, int B, int T,
                        float *pooled, float *dp, float *grads, int backward, int reps) {
  elmo_err err;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float ms[32];
  for (int r = 0; r < reps + 3; r++) {
    CK(cudaEventRecord(e0, 0));
    assert_int_equal(elmo_cuda_tf_forward(t, params, 1, ids, mask, B, T, pooled, 0, &err), ELMO_OK);
    if (backward) assert_int_equal(elmo_cuda_tf_backward(t, params, 1, dp, grads, 0, &err), ELMO_OK);
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    if (r >= 3) CK(cudaEventElapsedTime(&ms[r - 3], e0, e1));
  }
  qsort(ms, (size_t)reps, sizeof ms[0], cmp_float);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms[reps / 2];
}

/* Median ms of `reps` forward+backward runs on a stream of its own, launched one by one (*stream_ms)
 * and as one CUDA graph captured from the same calls (return value; -1 when capture fails): the
 * launch gaps between the step's ~500 kernels, measured. */
static float bench_graph(elmo_cuda_tf *t, const void *params, const int32_t *ids, const uint8_t *mask, int B, int T,
                         float *pooled, float *dp, float *grads, int reps, float *stream_ms) {
  elmo_err err;
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float ms[32], gms[32];
  for (int r = 0; r < reps + 3; r++) {
    CK(cudaEventRecord(e0, s));
    assert_int_equal(elmo_cuda_tf_forward(t, params, 1, ids, mask, B, T, pooled, s, &err), ELMO_OK);
    assert_int_equal(elmo_cuda_tf_backward(t, params, 1, dp, grads, s, &err), ELMO_OK);
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    if (r >= 3) CK(cudaEventElapsedTime(&ms[r - 3], e0, e1));
  }
  qsort(ms, (size_t)reps, sizeof ms[0], cmp_float);
  *stream_ms = ms[reps / 2];
  cudaGraph_t g = NULL;
  cudaGraphExec_t ge = NULL;
  float out = -1.0f;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const int ok = elmo_cuda_tf_forward(t, params, 1, ids, mask, B, T, pooled, s, &err) == ELMO_OK &&
                 elmo_cuda_tf_backward(t, params, 1, dp, grads, s, &err) == ELMO_OK;
  const cudaError_t ce = cudaStreamEndCapture(s, &g);
  if (ok && ce == cudaSuccess && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess) {
    size_t nodes = 0;
    CK(cudaGraphGetNodes(g, NULL, &nodes));
    for (int r = 0; r < reps + 3; r++) {
      CK(cudaEventRecord(e0, s));
      CK(cudaGraphLaunch(ge, s));
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      if (r >= 3) CK(cudaEventElapsedTime(&gms[r - 3], e0, e1));
    }
    qsort(gms, (size_t)reps, sizeof gms[0], cmp_float);
    out = gms[reps / 2];
    printf("bench graph: %zu nodes\n", nodes);
  } else {
    printf("bench graph: capture failed (%s)\n", cudaGetErrorString(ce != cudaSuccess ? ce : cudaGetLastError()));
  }
  if (ge) cudaGraphExecDestroy(ge);
  if (g) cudaGraphDestroy(g);
  cudaGetLastError();
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  CK(cudaStreamDestroy(s));
  return out;
}

/* profile = 1: one forward+backward of the default mode only (for a profiler), no timing. */
static void bench_bert_base(int profile) {
  elmo_tf_config cfg;
  elmo_tf_config_init(&cfg);
  const int B = 128, T = 128;
  elmo_tf_params p;
  elmo_err err;
  assert_int_equal(elmo_tf_alloc(&p, &cfg, &err), ELMO_OK);
  const size_t np = (size_t)p.num_params;
  uint64_t rng = 4242;
  elmo_bf16 *hp = malloc(np * 2);
  for (size_t i = 0; i < np; i++) hp[i] = elmo_f32_to_bf16(0.04f * (tu_rand_uniform(&rng) - 0.5f));
  for (int i = 0; i < p.num_tensors; i++) {
    const elmo_tf_tensor *t = elmo_tf_tensor_at(&p, i);
    if (t->kind == ELMO_TF_NORM_WEIGHT)
      for (int64_t j = 0; j < t->numel; j++) hp[t->offset + j] = elmo_f32_to_bf16(1.0f);
  }
  int32_t *ids = malloc((size_t)B * T * 4);
  uint8_t *mask = malloc((size_t)B * T);
  for (int i = 0; i < B * T; i++) {
    ids[i] = (int32_t)(tu_rand_u64(&rng) % (uint64_t)cfg.vocab_size);
    mask[i] = 1;
  }
  void *d_params = dev_upload(hp, np * 2);
  int32_t *d_ids = dev_upload(ids, (size_t)B * T * 4);
  uint8_t *d_mask = dev_upload(mask, (size_t)B * T);
  float *dp = randn((size_t)B * cfg.hidden, &rng, 1e-3f, 0.0f);
  float *d_dp = dev_upload(dp, (size_t)B * cfg.hidden * 4), *d_pooled = dev_poisoned((size_t)B * cfg.hidden * 4);
  float *d_grads = dev_poisoned(np * 4);
  CK(cudaMemset(d_grads, 0, np * 4));
  static const char *const mode_name[4] = {"default", "recompute", "fp8", "fp8 recompute"};
  for (int mode = 0; mode < (profile ? 1 : 4); mode++) {
    const int flags = mode & 1 ? ELMO_CUDA_TF_RECOMPUTE : 0;
    cfg.fp8_forward = mode >= 2;
    elmo_cuda_tf *t = NULL;
    assert_int_equal(elmo_cuda_tf_create(&cfg, B, T, flags, NULL, &t, &err), ELMO_OK);
    if (profile) {
      assert_int_equal(elmo_cuda_tf_forward(t, d_params, 1, d_ids, d_mask, B, T, d_pooled, 0, &err), ELMO_OK);
      assert_int_equal(elmo_cuda_tf_backward(t, d_params, 1, d_dp, d_grads, 0, &err), ELMO_OK);
      CK(cudaDeviceSynchronize());
      elmo_cuda_tf_destroy(&t);
      continue;
    }
    const float f = bench_time(t, d_params, d_ids, d_mask, B, T, d_pooled, d_dp, d_grads, 0, 10);
    const float fb = bench_time(t, d_params, d_ids, d_mask, B, T, d_pooled, d_dp, d_grads, 1, 10);
    float *g = host_from_f32(d_grads, np);
    const double e = rel_err(g, g, np);   /* finite check only */
    size_t free_b, total_b;
    CK(cudaMemGetInfo(&free_b, &total_b));
    float sms = 0.0f;
    const float gms = bench_graph(t, d_params, d_ids, d_mask, B, T, d_pooled, d_dp, d_grads, 10, &sms);
    printf("bench BERT-base B %d T %d %s: forward+backward on a stream %.2f ms, as one CUDA graph %.2f ms\n", B, T,
           mode_name[mode], sms, gms);
    printf("bench BERT-base B %d T %d %s: forward %.2f ms, forward+backward %.2f ms (%.1f TFLOP/s model), "
           "activations kept %.1f MiB, workspace %.1f MiB, device used %.1f MiB%s\n", B, T,
           mode_name[mode], f, fb, 6.0 * 85.0e6 * B * T / (fb * 1e-3) / 1e12,
           elmo_cuda_tf_activation_bytes(&cfg, B, T, flags) / 1048576.0,
           elmo_cuda_tf_workspace_bytes(&cfg, B, T, flags) / 1048576.0, (total_b - free_b) / 1048576.0,
           isfinite(e) ? "" : " NON-FINITE GRADIENTS");
    free(g);
    elmo_cuda_tf_destroy(&t);
  }
  cudaFree(d_params); cudaFree(d_ids); cudaFree(d_mask); cudaFree(d_dp); cudaFree(d_pooled); cudaFree(d_grads);
  free(hp); free(ids); free(mask); free(dp);
  elmo_tf_free(&p);
}

/* Median ms of `reps` runs of one linear layer's forward at BERT-base shapes: the BF16 GEMM, the FP8
 * GEMM alone, and the FP8 quantisation (amax + cast of input and weight) alone. */
static void bench_linear_shape(int64_t M, int in, int out) {
  uint64_t rng = 77;
  const size_t nx = (size_t)M * in, nw = (size_t)out * in;
  elmo_bf16 *hx = malloc(nx * 2), *hw = malloc(nw * 2);
  for (size_t i = 0; i < nx; i++) hx[i] = elmo_f32_to_bf16(tu_rand_normal(&rng));
  for (size_t i = 0; i < nw; i++) hw[i] = elmo_f32_to_bf16(0.02f * tu_rand_normal(&rng));
  void *d_x = dev_upload(hx, nx * 2), *d_w = dev_upload(hw, nw * 2), *d_y = dev_poisoned((size_t)M * out * 4);
  void *lt_ws = dev_poisoned((size_t)32 << 20);
  elmo_cuda_tf_gemm *g = elmo_cuda_tf_gemm_create(lt_ws, (size_t)32 << 20);
  elmo_cuda_tf_fp8 q = fp8_scratch(M, in, out);
  const elmo_bf16 *wl[1] = {d_w};
  elmo_err err;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float med[3];
  for (int what = 0; what < 3; what++) {
    float ms[20];
    for (int r = 0; r < 23; r++) {
      CK(cudaEventRecord(e0, 0));
      for (int k = 0; k < 10; k++) {
        if (what == 0) {
          elmo_cuda_tf_mm p = {0, 1, M, out, in, d_x, in, 0, d_w, in, 0, d_y, out, 0, 1, 0.0f, 1, NULL, NULL,
                               NULL, NULL, NULL};
          elmo_cuda_tf_gemm_run(g, &p, 0);
        } else if (what == 1) {
          elmo_cuda_tf_fp8_linear(g, &q, 0, NULL, M, in, out, d_y, 1, 0);
        } else {
          assert_int_equal(elmo_cuda_tf_fp8_prepare(&q, d_x, NULL, M, in, wl, 1, out, 0, &err), ELMO_OK);
        }
      }
      CK(cudaEventRecord(e1, 0));
      CK(cudaEventSynchronize(e1));
      if (r >= 3) CK(cudaEventElapsedTime(&ms[r - 3], e0, e1));
    }
    qsort(ms, 20, sizeof ms[0], cmp_float);
    med[what] = ms[10] / 10.0f;
  }
  const double flop = 2.0 * (double)M * in * out;
  printf("bench linear forward M %lld, %d -> %d: bf16 GEMM %.1f us (%.0f TFLOP/s), fp8 GEMM %.1f us (%.0f TFLOP/s), "
         "fp8 quantisation %.1f us, fp8 total %.1f us\n", (long long)M, in, out, med[0] * 1e3, flop / (med[0] * 1e-3) / 1e12,
         med[1] * 1e3, flop / (med[1] * 1e-3) / 1e12, med[2] * 1e3, (med[1] + med[2]) * 1e3);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  elmo_cuda_tf_gemm_destroy(&g);
  fp8_scratch_free(&q);
  cudaFree(d_x); cudaFree(d_w); cudaFree(d_y); cudaFree(lt_ws);
  free(hx); free(hw);
}

static void test_bench(void **state) {
  (void)state;
  const char *b = getenv("ELMO_BENCH_TF");
  if (!b || (strcmp(b, "1") != 0 && strcmp(b, "2") != 0)) skip();
  bench_bert_base(strcmp(b, "2") == 0);
  if (strcmp(b, "1") == 0) {
    bench_linear_shape(128 * 128, 768, 768);
    bench_linear_shape(128 * 128, 768, 3072);
    bench_linear_shape(128 * 128, 3072, 768);
  }
}

int main(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
    printf("no CUDA device: skipping the GPU transformer tests\n");
    return 77;
  }
  const char *b = getenv("ELMO_BENCH_TF");
  if (b && strcmp(b, "2") == 0) cmocka_set_test_filter("test_bench");   /* profiling: the benchmark alone */
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_layernorm_forward),
    cmocka_unit_test(test_layernorm_backward),
    cmocka_unit_test(test_gelu), cmocka_unit_test(test_gelu_colsum),
    cmocka_unit_test(test_colsum),
    cmocka_unit_test(test_attention),
    cmocka_unit_test(test_attention_long),
    cmocka_unit_test(test_attention_fused),
    cmocka_unit_test(test_embedding),
    cmocka_unit_test(test_pooling_mean),
    cmocka_unit_test(test_pooling_cls),
    cmocka_unit_test(test_encoder_mean),
    cmocka_unit_test(test_encoder_cls),
    cmocka_unit_test(test_encoder_modes_bitwise),
    cmocka_unit_test(test_encoder_fused_vs_batched),
    cmocka_unit_test(test_encoder_errors),
    cmocka_unit_test(test_fp8_linear),
    cmocka_unit_test(test_encoder_fp8),
    cmocka_unit_test(test_bench),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
