/* test_transformer.c: CPU reference transformer encoder: parameter layout and names, init, GEMM
 * kernels, every op's gradient against central finite differences, the whole model's gradient,
 * the forward against a naive double-precision reference on the padded batch, padding
 * invariance, and the FP8 forward mode (quantiser and linear layer against an independent
 * quantise-then-GEMM reference; the whole model close to FP32). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transformer.h"

/* ------------------------------------------------------------------ helpers */

static void fill_normal(float *x, int64_t n, float std, uint64_t *rng) {
  for (int64_t i = 0; i < n; i++) x[i] = std * tu_rand_normal(rng);
}

static float *rand_array(int64_t n, float std, uint64_t *rng) {
  float *x = malloc((size_t)n * sizeof(float));
  fill_normal(x, n, std, rng);
  return x;
}

static double dot_d(const float *a, const float *b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

/* Compares an analytic gradient with central differences of loss() over x[n]. Passes when every
 * element has |a - g| <= rtol |g| + atol and the vectors agree in L2 to rtol (plus atol per
 * element). atol is absolute: it covers the finite-difference noise of the FP32 forward and
 * gradients that are exactly zero in theory (e.g. the attention key bias). */
typedef double (*loss_fn)(void *ctx);

static void check_grad(const char *what, loss_fn loss, void *ctx, float *x, const float *analytic,
                       int64_t n, float eps, double rtol, double atol) {
  double *num = malloc((size_t)n * sizeof(double));
  for (int64_t i = 0; i < n; i++) {
    const float keep = x[i];
    x[i] = keep + eps;
    const double lp = loss(ctx);
    x[i] = keep - eps;
    const double lm = loss(ctx);
    x[i] = keep;
    num[i] = (lp - lm) / (2.0 * (double)eps);
  }
  double diff2 = 0.0, ref2 = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double a = analytic[i], d = fabs(a - num[i]);
    if (!(d <= rtol * fabs(num[i]) + atol))
      fail_msg("%s[%lld]: analytic %.7g, numeric %.7g", what, (long long)i, a, num[i]);
    diff2 += d * d;
    ref2 += num[i] * num[i];
  }
  if (!(sqrt(diff2) <= rtol * sqrt(ref2) + atol * sqrt((double)n)))
    fail_msg("%s: L2 error %.3g vs L2 norm %.3g", what, sqrt(diff2), sqrt(ref2));
  free(num);
}

static void assert_finite(const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(x[i])) fail_msg("non-finite value %g at %lld", (double)x[i], (long long)i);
}

static elmo_tf_config small_config(elmo_tf_pooling pooling) {
  elmo_tf_config c;
  elmo_tf_config_init(&c);
  c.vocab_size = 50;
  c.max_position = 16;
  c.type_vocab = 2;
  c.hidden = 16;
  c.layers = 2;
  c.heads = 2;
  c.ffn = 32;
  c.pooling = pooling;
  return c;
}

/* ------------------------------------------------------------------ layout, config, init */

static void test_layout_names(void **state) {
  (void)state;
  elmo_tf_config cfg = small_config(ELMO_TF_POOL_MEAN);
  elmo_tf_params p;
  elmo_err err = {0};
  assert_int_equal(elmo_tf_alloc(&p, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_num_tensors(&p), 5 + 16 * cfg.layers);
  assert_string_equal(elmo_tf_tensor_name(&p, 0), "embeddings.word_embeddings.weight");
  assert_string_equal(elmo_tf_tensor_name(&p, 2), "embeddings.token_type_embeddings.weight");
  assert_string_equal(elmo_tf_tensor_name(&p, 4), "embeddings.LayerNorm.bias");
  assert_string_equal(elmo_tf_tensor_name(&p, 5), "encoder.layer.0.attention.self.query.weight");
  assert_string_equal(elmo_tf_tensor_name(&p, 5 + 16 + 10),
                      "encoder.layer.1.intermediate.dense.weight");
  assert_null(elmo_tf_tensor_name(&p, elmo_tf_num_tensors(&p)));
  int i = elmo_tf_find_tensor(&p, "encoder.layer.1.output.dense.weight");
  assert_true(i >= 0);
  const elmo_tf_tensor *t = elmo_tf_tensor_at(&p, i);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 16);             /* HF Linear layout [out, in] = [H, F] */
  assert_int_equal(t->shape[1], 32);
  assert_ptr_equal(elmo_tf_tensor_data(&p, i), p.layer[1].ff2_w);
  assert_ptr_equal(elmo_tf_tensor_data(&p, elmo_tf_find_tensor(&p, "embeddings.LayerNorm.weight")),
                   p.emb_ln_w);
  assert_int_equal(elmo_tf_find_tensor(&p, "pooler.dense.weight"), -1);
  /* tensors are aligned, in order, disjoint and inside flat */
  int64_t end = 0, total = 0;
  for (int k = 0; k < elmo_tf_num_tensors(&p); k++) {
    t = elmo_tf_tensor_at(&p, k);
    assert_int_equal(t->offset % ELMO_TF_ALIGN, 0);
    assert_true(t->offset >= end);
    assert_int_equal(t->numel, t->shape[0] * t->shape[1]);
    end = t->offset + t->numel;
    total += t->numel;
  }
  assert_true(end <= elmo_tf_num_params(&p));
  assert_int_equal(total, 50 * 16 + 16 * 16 + 2 * 16 + 2 * 16 +
                              2 * (4 * (16 * 16 + 16) + 2 * 16 + (32 * 16 + 32) + (16 * 32 + 16) +
                                   2 * 16));
  elmo_tf_free(&p);
  assert_null(p.flat);

  cfg.type_vocab = 0;
  assert_int_equal(elmo_tf_alloc(&p, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_num_tensors(&p), 4 + 16 * cfg.layers);
  assert_null(p.type_emb);
  assert_int_equal(elmo_tf_find_tensor(&p, "embeddings.token_type_embeddings.weight"), -1);
  elmo_tf_free(&p);
}

static void test_config_errors(void **state) {
  (void)state;
  elmo_tf_config cfg = small_config(ELMO_TF_POOL_MEAN);
  elmo_tf_params p;
  elmo_err err = {0};
  cfg.heads = 5;
  assert_int_equal(elmo_tf_alloc(&p, &cfg, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "heads = 5 does not divide hidden = 16");
  cfg = small_config(ELMO_TF_POOL_MEAN);
  cfg.ffn = 0;
  assert_int_equal(elmo_tf_config_check(&cfg, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "ffn = 0 (expected >= 1)");
  cfg = small_config(ELMO_TF_POOL_MEAN);
  cfg.ln_eps = 0.0f;
  assert_int_equal(elmo_tf_config_check(&cfg, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "ln_eps");
  cfg = small_config(ELMO_TF_POOL_MEAN);
  elmo_tf_cache c;
  assert_int_equal(elmo_tf_cache_alloc(&c, &cfg, 2, 17, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "max_position = 16");
}

static void test_init(void **state) {
  (void)state;
  elmo_tf_config cfg = small_config(ELMO_TF_POOL_MEAN);
  cfg.vocab_size = 2000;
  elmo_tf_params a, b, c;
  elmo_err err = {0};
  assert_int_equal(elmo_tf_alloc(&a, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_alloc(&b, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_alloc(&c, &cfg, &err), ELMO_OK);
  elmo_tf_init_random(&a, 42);
  elmo_tf_init_random(&b, 42);
  elmo_tf_init_random(&c, 43);
  const size_t bytes = (size_t)elmo_tf_num_params(&a) * sizeof(float);
  assert_memory_equal(a.flat, b.flat, bytes);
  assert_memory_not_equal(a.flat, c.flat, bytes);
  /* word embeddings: 32000 draws of normal(0, 0.02) */
  const int64_t n = 2000 * 16;
  double s = 0.0, s2 = 0.0;
  for (int64_t i = 0; i < n; i++) {
    s += a.word_emb[i];
    s2 += (double)a.word_emb[i] * a.word_emb[i];
  }
  assert_true(fabs(s / n) < 0.001);
  assert_true(fabs(sqrt(s2 / n) - 0.02) < 0.0005);
  /* tensors of different kinds, and padding between tensors */
  for (int j = 0; j < 16; j++) {
    assert_true(a.emb_ln_w[j] == 1.0f && a.emb_ln_b[j] == 0.0f);
    assert_true(a.layer[1].ln2_w[j] == 1.0f && a.layer[1].q_b[j] == 0.0f);
  }
  assert_true(a.layer[0].ff1_b[31] == 0.0f && a.layer[0].ff1_w[100] != 0.0f);
  assert_memory_not_equal(a.layer[0].q_w, a.layer[0].k_w, 16 * 16 * sizeof(float));
  int64_t nonzero_pad = 0;
  for (int k = 0; k < elmo_tf_num_tensors(&a); k++) {
    const elmo_tf_tensor *t = elmo_tf_tensor_at(&a, k);
    const int64_t end = k + 1 < elmo_tf_num_tensors(&a) ? elmo_tf_tensor_at(&a, k + 1)->offset
                                                         : elmo_tf_num_params(&a);
    for (int64_t i = t->offset + t->numel; i < end; i++) nonzero_pad += a.flat[i] != 0.0f;
  }
  assert_int_equal(nonzero_pad, 0);
  elmo_tf_free(&a);
  elmo_tf_free(&b);
  elmo_tf_free(&c);
}

/* ------------------------------------------------------------------ GEMM */

static void gemm_reference(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                           int64_t ldb, const float *C0, int64_t ldc, double *out) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = C0 ? C0[i * ldc + j] : 0.0;
      for (int64_t k = 0; k < K; k++) s += (double)A[i * lda + k] * B[k * ldb + j];
      out[i * N + j] = s;
    }
}

static void check_gemm_shape(int64_t M, int64_t N, int64_t K, int accumulate, uint64_t *rng) {
  const int64_t lda = K + 3, ldb = N + 5, ldc = N + 2;
  float *A = rand_array(M * lda, 1.0f, rng), *B = rand_array(K * ldb, 1.0f, rng);
  float *C = rand_array(M * ldc, 1.0f, rng);
  float *C0 = malloc((size_t)(M * ldc) * sizeof(float));
  memcpy(C0, C, (size_t)(M * ldc) * sizeof(float));
  double *ref = malloc((size_t)(M * N) * sizeof(double));
  gemm_reference(M, N, K, A, lda, B, ldb, accumulate ? C0 : NULL, ldc, ref);
  elmo_tf_gemm(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  for (int64_t i = 0; i < M; i++) {
    for (int64_t j = 0; j < N; j++) {
      const double d = fabs(C[i * ldc + j] - ref[i * N + j]);
      if (!(d <= 1e-5 * sqrt((double)K + 1) * 4.0))
        fail_msg("gemm %lldx%lldx%lld: C[%lld,%lld] = %g, expected %g", (long long)M, (long long)N,
                 (long long)K, (long long)i, (long long)j, (double)C[i * ldc + j], ref[i * N + j]);
    }
    for (int64_t j = N; j < ldc; j++) assert_true(C[i * ldc + j] == C0[i * ldc + j]);  /* untouched */
  }
  free(A); free(B); free(C); free(C0); free(ref);
}

static void test_gemm(void **state) {
  (void)state;
  uint64_t rng = 7;
  const int64_t shapes[][3] = {{1, 1, 1}, {6, 16, 8}, {7, 19, 5}, {37, 50, 300}, {100, 33, 600},
                               {13, 16, 0}, {96 + 7, 48, 257}, {2, 17, 3}, {3, 40, 33},
                               {11, 31, 520}, {4, 8, 9}};
  const int simd = elmo_tf_gemm_simd(-1);
  for (int mode = 0; mode < 2; mode++) {
    elmo_tf_gemm_simd(mode);            /* 0: portable kernel, 1: automatic (AVX2 where present) */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int acc = 0; acc < 2; acc++) check_gemm_shape(shapes[s][0], shapes[s][1], shapes[s][2], acc, &rng);
  }
  assert_int_equal(elmo_tf_gemm_simd(-1), simd);
}

/* A row of C does not depend on how many other rows are computed with it (batch invariance). */
/* Every row of C is bitwise the same computed alone or with others; M*N*K is above the size at
 * which elmo_tf_gemm splits rows over threads (on a machine with 2+ CPUs), so this also checks that
 * the threaded GEMM is bit-identical to the serial one. */
static void test_gemm_row_invariance(void **state) {
  (void)state;
  uint64_t rng = 8;
  const int64_t M = 241, N = 67, K = 300;
  float *A = rand_array(M * K, 1.0f, &rng), *B = rand_array(K * N, 1.0f, &rng);
  float *C = malloc((size_t)(M * N) * sizeof(float)), *row = malloc((size_t)N * sizeof(float));
  for (int mode = 0; mode < 2; mode++) {
    elmo_tf_gemm_simd(mode);
    elmo_tf_gemm(M, N, K, A, K, B, N, C, N, 0);
    for (int64_t i = 0; i < M; i++) {
      elmo_tf_gemm(1, N, K, A + i * K, K, B, N, row, N, 0);
      assert_memory_equal(row, C + i * N, (size_t)N * sizeof(float));
    }
  }
  elmo_tf_gemm_simd(1);
  free(A); free(B); free(C); free(row);
}

/* ------------------------------------------------------------------ op gradients */

typedef struct linear_case {
  float *x, *w, *b, *y, *r, *ws;
  int64_t N;
  int in, out;
} linear_case;

static double linear_loss(void *ctx) {
  linear_case *c = ctx;
  elmo_tf_linear_forward(c->x, c->w, c->b, c->N, c->in, c->out, c->y, c->ws);
  return dot_d(c->y, c->r, c->N * c->out);
}

static void test_grad_linear(void **state) {
  (void)state;
  uint64_t rng = 11;
  linear_case c = {.N = 5, .in = 7, .out = 9};
  c.x = rand_array(c.N * c.in, 1.0f, &rng);
  c.w = rand_array(c.out * c.in, 0.5f, &rng);
  c.b = rand_array(c.out, 0.5f, &rng);
  c.r = rand_array(c.N * c.out, 1.0f, &rng);
  c.y = malloc(sizeof(float) * (size_t)(c.N * c.out));
  c.ws = malloc(sizeof(float) * (size_t)(c.N * c.out + c.in * c.out));
  float *dx = calloc((size_t)(c.N * c.in), sizeof(float));
  float *dw = calloc((size_t)(c.out * c.in), sizeof(float)), *db = calloc((size_t)c.out, sizeof(float));
  elmo_tf_linear_backward(c.x, c.w, c.r, c.N, c.in, c.out, dx, 0, dw, db, c.ws);
  check_grad("linear dx", linear_loss, &c, c.x, dx, c.N * c.in, 1e-2f, 1e-3, 1e-4);
  check_grad("linear dw", linear_loss, &c, c.w, dw, c.out * c.in, 1e-2f, 1e-3, 1e-4);
  check_grad("linear db", linear_loss, &c, c.b, db, c.out, 1e-2f, 1e-3, 1e-4);
  /* accumulate_dx adds to what is there */
  float *dx2 = malloc(sizeof(float) * (size_t)(c.N * c.in));
  for (int64_t i = 0; i < c.N * c.in; i++) dx2[i] = 1.0f;
  elmo_tf_linear_backward(c.x, c.w, c.r, c.N, c.in, c.out, dx2, 1, NULL, NULL, c.ws);
  for (int64_t i = 0; i < c.N * c.in; i++) assert_float_equal(dx2[i], dx[i] + 1.0f, 1e-5);
  free(c.x); free(c.w); free(c.b); free(c.r); free(c.y); free(c.ws);
  free(dx); free(dw); free(db); free(dx2);
}

typedef struct ln_case {
  float *x, *w, *b, *y, *xhat, *rstd, *r;
  int64_t N;
  int H;
} ln_case;

static double ln_loss(void *ctx) {
  ln_case *c = ctx;
  elmo_tf_layernorm_forward(c->x, c->w, c->b, c->N, c->H, 1e-12f, c->y, c->xhat, c->rstd);
  return dot_d(c->y, c->r, c->N * c->H);
}

static void test_grad_layernorm(void **state) {
  (void)state;
  uint64_t rng = 12;
  ln_case c = {.N = 4, .H = 12};
  const int64_t n = c.N * c.H;
  c.x = rand_array(n, 1.0f, &rng);
  c.w = rand_array(c.H, 0.5f, &rng);
  c.b = rand_array(c.H, 0.5f, &rng);
  for (int j = 0; j < c.H; j++) c.w[j] += 1.0f;
  c.r = rand_array(n, 1.0f, &rng);
  c.y = malloc(sizeof(float) * (size_t)n);
  c.xhat = malloc(sizeof(float) * (size_t)n);
  c.rstd = malloc(sizeof(float) * (size_t)c.N);
  ln_loss(&c);
  for (int64_t r = 0; r < c.N; r++) {            /* normalised rows: mean 0, variance 1 */
    double m = 0.0, v = 0.0;
    for (int j = 0; j < c.H; j++) m += c.xhat[r * c.H + j];
    for (int j = 0; j < c.H; j++) v += (double)c.xhat[r * c.H + j] * c.xhat[r * c.H + j];
    assert_true(fabs(m / c.H) < 1e-6 && fabs(v / c.H - 1.0) < 1e-5);
  }
  float *dx = calloc((size_t)n, sizeof(float)), *dw = calloc((size_t)c.H, sizeof(float));
  float *db = calloc((size_t)c.H, sizeof(float));
  elmo_tf_layernorm_backward(c.r, c.xhat, c.rstd, c.w, c.N, c.H, dx, dw, db);
  check_grad("layernorm dx", ln_loss, &c, c.x, dx, n, 3e-3f, 1e-2, 1e-3);
  check_grad("layernorm dw", ln_loss, &c, c.w, dw, c.H, 1e-2f, 1e-3, 1e-4);
  check_grad("layernorm db", ln_loss, &c, c.b, db, c.H, 1e-2f, 1e-3, 1e-4);
  /* in place (dx == dy) gives the same */
  float *inplace = malloc(sizeof(float) * (size_t)n);
  memcpy(inplace, c.r, sizeof(float) * (size_t)n);
  elmo_tf_layernorm_backward(inplace, c.xhat, c.rstd, c.w, c.N, c.H, inplace, dw, db);
  assert_memory_equal(inplace, dx, sizeof(float) * (size_t)n);
  free(c.x); free(c.w); free(c.b); free(c.r); free(c.y); free(c.xhat); free(c.rstd);
  free(dx); free(dw); free(db); free(inplace);
}

typedef struct gelu_case {
  float *x, *y, *r;
  int64_t n;
} gelu_case;

static double gelu_loss(void *ctx) {
  gelu_case *c = ctx;
  elmo_tf_gelu_forward(c->x, c->n, c->y);
  return dot_d(c->y, c->r, c->n);
}

static void test_grad_gelu(void **state) {
  (void)state;
  uint64_t rng = 13;
  gelu_case c = {.n = 64};
  c.x = malloc(sizeof(float) * (size_t)c.n);
  for (int64_t i = 0; i < c.n; i++) c.x[i] = -4.0f + 8.0f * (float)i / (float)(c.n - 1);
  c.r = rand_array(c.n, 1.0f, &rng);
  c.y = malloc(sizeof(float) * (size_t)c.n);
  /* values: GELU(1) = 0.8413447, GELU(-1) = -0.1586553 */
  float one[2] = {1.0f, -1.0f}, g[2];
  elmo_tf_gelu_forward(one, 2, g);
  assert_float_equal(g[0], 0.8413447f, 1e-6);
  assert_float_equal(g[1], -0.1586553f, 1e-6);
  float *dx = malloc(sizeof(float) * (size_t)c.n);
  elmo_tf_gelu_backward(c.x, c.r, c.n, dx);
  check_grad("gelu dx", gelu_loss, &c, c.x, dx, c.n, 1e-2f, 1e-3, 1e-4);
  free(c.x); free(c.r); free(c.y); free(dx);
}

typedef struct attn_case {
  float *q, *k, *v, *probs, *ctx, *r, *ws;
  int64_t seq_start[5], prob_start[5];
  int B, H, heads;
} attn_case;

static double attn_loss(void *ctx) {
  attn_case *c = ctx;
  elmo_tf_attention_forward(c->q, c->k, c->v, c->seq_start, c->prob_start, c->B, c->H, c->heads,
                            c->probs, c->ctx, c->ws);
  return dot_d(c->ctx, c->r, c->seq_start[c->B] * c->H);
}

static void test_grad_attention(void **state) {
  (void)state;
  uint64_t rng = 14;
  attn_case c = {.B = 4, .H = 8, .heads = 2};
  const int lens[4] = {3, 0, 5, 1};
  int64_t n = 0, pofs = 0;
  for (int b = 0; b < c.B; b++) {
    c.seq_start[b] = n;
    c.prob_start[b] = pofs;
    n += lens[b];
    pofs += (int64_t)c.heads * lens[b] * lens[b];
  }
  c.seq_start[c.B] = n;
  c.prob_start[c.B] = pofs;
  const int64_t nh = n * c.H;
  c.q = rand_array(nh, 1.0f, &rng);
  c.k = rand_array(nh, 1.0f, &rng);
  c.v = rand_array(nh, 1.0f, &rng);
  c.r = rand_array(nh, 1.0f, &rng);
  c.probs = malloc(sizeof(float) * (size_t)pofs);
  c.ctx = malloc(sizeof(float) * (size_t)nh);
  c.ws = malloc(sizeof(float) * (size_t)(2 * 5 * 5 + 4 * 5));
  attn_loss(&c);
  double total = 0.0;                            /* every row of every P sums to 1 */
  for (int64_t i = 0; i < pofs; i++) total += c.probs[i];
  assert_float_equal(total, (double)c.heads * (3 + 5 + 1), 1e-4);
  /* a one-token sequence attends to itself: ctx = v */
  for (int j = 0; j < c.H; j++) assert_float_equal(c.ctx[8 * c.H + j], c.v[8 * c.H + j], 1e-6);
  float *dq = malloc(sizeof(float) * (size_t)nh), *dk = malloc(sizeof(float) * (size_t)nh);
  float *dv = malloc(sizeof(float) * (size_t)nh);
  elmo_tf_attention_backward(c.q, c.k, c.v, c.probs, c.r, c.seq_start, c.prob_start, c.B, c.H,
                             c.heads, dq, dk, dv, c.ws);
  check_grad("attention dq", attn_loss, &c, c.q, dq, nh, 1e-2f, 1e-2, 1e-3);
  check_grad("attention dk", attn_loss, &c, c.k, dk, nh, 1e-2f, 1e-2, 1e-3);
  check_grad("attention dv", attn_loss, &c, c.v, dv, nh, 1e-2f, 1e-3, 1e-4);
  free(c.q); free(c.k); free(c.v); free(c.r); free(c.probs); free(c.ctx); free(c.ws);
  free(dq); free(dk); free(dv);
}

typedef struct embed_case {
  float *word, *pos, *type, *e, *r;
  int32_t tok_id[6], tok_pos[6];
  int64_t N;
  int H;
} embed_case;

static double embed_loss(void *ctx) {
  embed_case *c = ctx;
  elmo_tf_embed_forward(c->word, c->pos, c->type, c->tok_id, c->tok_pos, c->N, c->H, c->e);
  return dot_d(c->e, c->r, c->N * c->H);
}

static void test_grad_embedding(void **state) {
  (void)state;
  uint64_t rng = 15;
  embed_case c = {.N = 6, .H = 4, .tok_id = {3, 1, 3, 0, 4, 3}, .tok_pos = {0, 1, 2, 0, 1, 2}};
  c.word = rand_array(5 * c.H, 1.0f, &rng);
  c.pos = rand_array(3 * c.H, 1.0f, &rng);
  c.type = rand_array(2 * c.H, 1.0f, &rng);
  c.r = rand_array(c.N * c.H, 1.0f, &rng);
  c.e = malloc(sizeof(float) * (size_t)(c.N * c.H));
  float *dword = calloc(5 * (size_t)c.H, sizeof(float)), *dpos = calloc(3 * (size_t)c.H, sizeof(float));
  float *dtype = calloc(2 * (size_t)c.H, sizeof(float));
  elmo_tf_embed_backward(c.r, c.tok_id, c.tok_pos, c.N, c.H, dword, dpos, dtype);
  check_grad("embedding dword", embed_loss, &c, c.word, dword, 5 * c.H, 1e-2f, 1e-3, 1e-4);
  check_grad("embedding dpos", embed_loss, &c, c.pos, dpos, 3 * c.H, 1e-2f, 1e-3, 1e-4);
  check_grad("embedding dtype", embed_loss, &c, c.type, dtype, c.H, 1e-2f, 1e-3, 1e-4);
  for (int j = c.H; j < 2 * c.H; j++) assert_true(dtype[j] == 0.0f);  /* only type 0 is used */
  for (int j = 0; j < c.H; j++) assert_true(dword[2 * c.H + j] == 0.0f); /* id 2 never occurs */
  free(c.word); free(c.pos); free(c.type); free(c.r); free(c.e); free(dword); free(dpos); free(dtype);
}

typedef struct pool_case {
  float *x, *pooled, *r;
  int64_t seq_start[4];
  int B, H;
  elmo_tf_pooling mode;
} pool_case;

static double pool_loss(void *ctx) {
  pool_case *c = ctx;
  elmo_tf_pool_forward(c->x, c->seq_start, c->B, c->H, c->mode, c->pooled);
  return dot_d(c->pooled, c->r, (int64_t)c->B * c->H);
}

static void check_pool(elmo_tf_pooling mode) {
  uint64_t rng = 16;
  pool_case c = {.seq_start = {0, 3, 3, 7}, .B = 3, .H = 5, .mode = mode};
  const int64_t n = 7 * c.H;
  c.x = rand_array(n, 1.0f, &rng);
  c.r = rand_array(c.B * c.H, 1.0f, &rng);
  c.pooled = malloc(sizeof(float) * (size_t)(c.B * c.H));
  pool_loss(&c);
  for (int j = 0; j < c.H; j++) {
    const float want = mode == ELMO_TF_POOL_CLS ? c.x[3 * c.H + j]
                                                : (c.x[3 * c.H + j] + c.x[4 * c.H + j] +
                                                   c.x[5 * c.H + j] + c.x[6 * c.H + j]) / 4.0f;
    assert_float_equal(c.pooled[2 * c.H + j], want, 1e-6);
    assert_true(c.pooled[1 * c.H + j] == 0.0f);  /* empty sequence */
  }
  float *dx = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) dx[i] = NAN;  /* every row must be written */
  elmo_tf_pool_backward(c.r, c.seq_start, c.B, c.H, mode, dx);
  check_grad(mode == ELMO_TF_POOL_CLS ? "cls pool dx" : "mean pool dx", pool_loss, &c, c.x, dx, n,
             1e-2f, 1e-3, 1e-4);
  free(c.x); free(c.r); free(c.pooled); free(dx);
}

static void test_grad_pool_mean(void **state) { (void)state; check_pool(ELMO_TF_POOL_MEAN); }
static void test_grad_pool_cls(void **state) { (void)state; check_pool(ELMO_TF_POOL_CLS); }

/* ------------------------------------------------------------------ whole model */

enum { MB = 3, MT = 7 };

typedef struct model_case {
  elmo_tf_params p, g;
  elmo_tf_cache c;
  int32_t ids[MB * MT];
  uint8_t mask[MB * MT];
  float pooled[MB * 16], r[MB * 16];
} model_case;

static double model_loss(void *ctx) {
  model_case *m = ctx;
  elmo_err err = {0};
  assert_int_equal(elmo_tf_forward(&m->p, &m->c, m->ids, m->mask, MB, MT, m->pooled, &err), ELMO_OK);
  return dot_d(m->pooled, m->r, MB * 16);
}

/* Parameters larger than the 0.02 init so that every nonlinearity is exercised. */
static void randomise_params(elmo_tf_params *p, uint64_t *rng) {
  for (int i = 0; i < elmo_tf_num_tensors(p); i++) {
    const elmo_tf_tensor *t = elmo_tf_tensor_at(p, i);
    float *x = elmo_tf_tensor_data(p, i);
    const float std = t->kind == ELMO_TF_MATRIX ? 0.35f : t->kind == ELMO_TF_EMBEDDING ? 1.0f : 0.2f;
    fill_normal(x, t->numel, std, rng);
    if (t->kind == ELMO_TF_NORM_WEIGHT)
      for (int64_t j = 0; j < t->numel; j++) x[j] += 1.0f;
  }
}

/* Row 0 full, row 1 right-padded to 4 tokens, row 2 with padding at both ends (5 tokens). */
static void model_setup(model_case *m, elmo_tf_pooling pooling, uint64_t seed) {
  elmo_tf_config cfg = small_config(pooling);
  elmo_err err = {0};
  uint64_t rng = seed;
  assert_int_equal(elmo_tf_alloc(&m->p, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_alloc(&m->g, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_cache_alloc(&m->c, &cfg, MB, MT, &err), ELMO_OK);
  randomise_params(&m->p, &rng);
  static const uint8_t mask[MB * MT] = {1, 1, 1, 1, 1, 1, 1,  1, 1, 1, 1, 0, 0, 0,  0, 1, 1, 1, 1, 1, 0};
  memcpy(m->mask, mask, sizeof mask);
  for (int i = 0; i < MB * MT; i++) m->ids[i] = (int32_t)(tu_rand_u64(&rng) % 50);
  m->ids[2] = m->ids[5] = 7;                     /* a repeated id: its gradient rows add up */
  fill_normal(m->r, MB * 16, 1.0f, &rng);
}

static void model_teardown(model_case *m) {
  elmo_tf_free(&m->p);
  elmo_tf_free(&m->g);
  elmo_tf_cache_free(&m->c);
}

static void check_model_grad(elmo_tf_pooling pooling) {
  model_case *m = calloc(1, sizeof *m);
  model_setup(m, pooling, pooling == ELMO_TF_POOL_CLS ? 21 : 22);
  elmo_err err = {0};
  model_loss(m);
  assert_finite(m->pooled, MB * 16);
  elmo_tf_zero(&m->g);
  assert_int_equal(elmo_tf_backward(&m->p, &m->c, m->r, &m->g, &err), ELMO_OK);
  assert_finite(m->g.flat, elmo_tf_num_params(&m->g));
  for (int i = 0; i < elmo_tf_num_tensors(&m->p); i++) {
    const elmo_tf_tensor *t = elmo_tf_tensor_at(&m->p, i);
    char what[160];
    snprintf(what, sizeof what, "%s %s", pooling == ELMO_TF_POOL_CLS ? "cls" : "mean", t->name);
    check_grad(what, model_loss, m, elmo_tf_tensor_data(&m->p, i), elmo_tf_tensor_data(&m->g, i),
               t->numel, 1e-2f, 2e-2, 1e-3);
  }
  /* backward accumulates: a second call doubles the gradients */
  float *once = malloc(sizeof(float) * (size_t)elmo_tf_num_params(&m->g));
  memcpy(once, m->g.flat, sizeof(float) * (size_t)elmo_tf_num_params(&m->g));
  model_loss(m);
  assert_int_equal(elmo_tf_backward(&m->p, &m->c, m->r, &m->g, &err), ELMO_OK);
  for (int64_t i = 0; i < elmo_tf_num_params(&m->g); i++)
    assert_float_equal(m->g.flat[i], 2.0f * once[i], 1e-5 + 1e-5 * fabs(once[i]));
  free(once);
  model_teardown(m);
  free(m);
}

static void test_grad_model_mean(void **state) { (void)state; check_model_grad(ELMO_TF_POOL_MEAN); }
static void test_grad_model_cls(void **state) { (void)state; check_model_grad(ELMO_TF_POOL_CLS); }

/* Naive double-precision BERT forward on the padded batch, masking keys with the padding mask. */
static void ref_layernorm(double *x, const float *w, const float *b, int H, double eps) {
  double m = 0.0, v = 0.0;
  for (int j = 0; j < H; j++) m += x[j];
  m /= H;
  for (int j = 0; j < H; j++) v += (x[j] - m) * (x[j] - m);
  const double rs = 1.0 / sqrt(v / H + eps);
  for (int j = 0; j < H; j++) x[j] = (x[j] - m) * rs * w[j] + b[j];
}

static void ref_linear(const double *x, const float *w, const float *b, int in, int out, double *y) {
  for (int o = 0; o < out; o++) {
    double s = b[o];
    for (int i = 0; i < in; i++) s += (double)w[o * in + i] * x[i];
    y[o] = s;
  }
}

static void ref_attention(const elmo_tf_config *cfg, const uint8_t *mask, int T, double *q, double *k,
                          double *v, double *ctx) {
  const int H = cfg->hidden, dh = H / cfg->heads;
  for (int h = 0; h < cfg->heads; h++)
    for (int i = 0; i < T; i++) {
      double s[MT], mx = -1e300, z = 0.0;
      for (int j = 0; j < T; j++) {
        s[j] = 0.0;
        for (int d = 0; d < dh; d++) s[j] += q[i * H + h * dh + d] * k[j * H + h * dh + d];
        s[j] = mask[j] ? s[j] / sqrt((double)dh) : -1e300;
        if (s[j] > mx) mx = s[j];
      }
      for (int j = 0; j < T; j++) {
        s[j] = mask[j] ? exp(s[j] - mx) : 0.0;
        z += s[j];
      }
      for (int d = 0; d < dh; d++) {
        double a = 0.0;
        for (int j = 0; j < T; j++) a += s[j] / z * v[j * H + h * dh + d];
        ctx[i * H + h * dh + d] = a;
      }
    }
}

static void ref_layer(const elmo_tf_config *cfg, const elmo_tf_layer *w, const uint8_t *mask, int T,
                      double *x) {
  const int H = cfg->hidden, F = cfg->ffn;
  double q[MT * 16], k[MT * 16], v[MT * 16], ctx[MT * 16], a[16], f[32];
  for (int t = 0; t < T; t++) {
    ref_linear(x + t * H, w->q_w, w->q_b, H, H, q + t * H);
    ref_linear(x + t * H, w->k_w, w->k_b, H, H, k + t * H);
    ref_linear(x + t * H, w->v_w, w->v_b, H, H, v + t * H);
  }
  ref_attention(cfg, mask, T, q, k, v, ctx);
  for (int t = 0; t < T; t++) {
    double *xt = x + t * H;
    ref_linear(ctx + t * H, w->o_w, w->o_b, H, H, a);
    for (int j = 0; j < H; j++) xt[j] += a[j];
    ref_layernorm(xt, w->ln1_w, w->ln1_b, H, cfg->ln_eps);
    ref_linear(xt, w->ff1_w, w->ff1_b, H, F, f);
    for (int j = 0; j < F; j++) f[j] = 0.5 * f[j] * (1.0 + erf(f[j] / sqrt(2.0)));
    ref_linear(f, w->ff2_w, w->ff2_b, F, H, a);
    for (int j = 0; j < H; j++) xt[j] += a[j];
    ref_layernorm(xt, w->ln2_w, w->ln2_b, H, cfg->ln_eps);
  }
}

static void ref_forward_row(const elmo_tf_params *p, const int32_t *ids, const uint8_t *mask, int T,
                            double *pooled) {
  const elmo_tf_config *cfg = &p->cfg;
  const int H = cfg->hidden;
  double x[MT * 16];
  for (int t = 0; t < T; t++) {
    for (int j = 0; j < H; j++)
      x[t * H + j] = (double)p->word_emb[ids[t] * H + j] + p->pos_emb[t * H + j] + p->type_emb[j];
    ref_layernorm(x + t * H, p->emb_ln_w, p->emb_ln_b, H, cfg->ln_eps);
  }
  for (int l = 0; l < cfg->layers; l++) ref_layer(cfg, &p->layer[l], mask, T, x);
  int count = 0, first = -1;
  for (int j = 0; j < H; j++) pooled[j] = 0.0;
  for (int t = 0; t < T; t++) {
    if (!mask[t]) continue;
    if (first < 0) first = t;
    count++;
    for (int j = 0; j < H; j++) pooled[j] += x[t * H + j];
  }
  for (int j = 0; j < H; j++)
    pooled[j] = cfg->pooling == ELMO_TF_POOL_CLS ? x[first * H + j] : pooled[j] / count;
}

static void check_against_reference(elmo_tf_pooling pooling) {
  model_case *m = calloc(1, sizeof *m);
  model_setup(m, pooling, 31);
  model_loss(m);
  for (int b = 0; b < MB; b++) {
    double ref[16];
    ref_forward_row(&m->p, m->ids + b * MT, m->mask + b * MT, MT, ref);
    for (int j = 0; j < 16; j++)
      if (!(fabs(m->pooled[b * 16 + j] - ref[j]) <= 1e-4 * (1.0 + fabs(ref[j]))))
        fail_msg("row %d col %d: %g, reference %g", b, j, (double)m->pooled[b * 16 + j], ref[j]);
  }
  model_teardown(m);
  free(m);
}

static void test_forward_reference_mean(void **state) { (void)state; check_against_reference(ELMO_TF_POOL_MEAN); }
static void test_forward_reference_cls(void **state) { (void)state; check_against_reference(ELMO_TF_POOL_CLS); }

/* Padded positions never reach the output; a row's output does not depend on its batch. */
static void test_padding_invariance(void **state) {
  (void)state;
  for (int pooling = 0; pooling < 2; pooling++) {
    model_case *m = calloc(1, sizeof *m);
    model_setup(m, (elmo_tf_pooling)pooling, 41);
    elmo_err err = {0};
    float base[MB * 16], alone[16];
    model_loss(m);
    memcpy(base, m->pooled, sizeof base);
    for (int i = 0; i < MB * MT; i++)
      if (!m->mask[i]) m->ids[i] = (m->ids[i] + 13) % 50 + (i % 3 == 0 ? 100000 : 0);  /* even invalid */
    model_loss(m);
    assert_memory_equal(base, m->pooled, sizeof base);
    for (int b = 0; b < MB; b++) {
      assert_int_equal(elmo_tf_forward(&m->p, &m->c, m->ids + b * MT, m->mask + b * MT, 1, MT, alone,
                                       &err), ELMO_OK);
      assert_memory_equal(alone, base + b * 16, sizeof alone);
    }
    /* a right-padded row gives the same output at a shorter T */
    assert_int_equal(elmo_tf_forward(&m->p, &m->c, m->ids + MT, m->mask + MT, 1, 4, alone, &err),
                     ELMO_OK);
    assert_memory_equal(alone, base + 16, sizeof alone);
    /* changing an unmasked token does change the output */
    m->ids[MT + 1] = (m->ids[MT + 1] + 1) % 50;
    model_loss(m);
    assert_memory_not_equal(base + 16, m->pooled + 16, 16 * sizeof(float));
    assert_memory_equal(base, m->pooled, 16 * sizeof(float));
    model_teardown(m);
    free(m);
  }
}

static void test_forward_errors(void **state) {
  (void)state;
  model_case *m = calloc(1, sizeof *m);
  model_setup(m, ELMO_TF_POOL_MEAN, 51);
  elmo_err err = {0};
  assert_int_equal(elmo_tf_backward(&m->p, &m->c, m->r, &m->g, &err), ELMO_ERUNTIME);
  tu_assert_contains(err.msg, "no forward");
  m->ids[MT + 2] = 50;
  assert_int_equal(elmo_tf_forward(&m->p, &m->c, m->ids, m->mask, MB, MT, m->pooled, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "row 1 position 2: token id 50 (expected 0 <= id < vocab_size = 50)");
  m->ids[MT + 2] = 0;
  assert_int_equal(elmo_tf_forward(&m->p, &m->c, m->ids, m->mask, MB + 1, MT, m->pooled, &err),
                   ELMO_EINPUT);
  tu_assert_contains(err.msg, "batch 4 x length 7");
  assert_int_equal(elmo_tf_forward(&m->p, &m->c, m->ids, NULL, MB, MT, m->pooled, &err), ELMO_OK);
  assert_true(elmo_tf_cache_floats(&m->p.cfg, MB, MT) >= 2 * (int64_t)MB * MT * (8 * 16 + 2 * 32));
  elmo_tf_params other;
  elmo_tf_config cfg = small_config(ELMO_TF_POOL_MEAN);
  cfg.layers = 1;
  assert_int_equal(elmo_tf_alloc(&other, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_backward(&m->p, &m->c, m->r, &other, &err), ELMO_ERUNTIME);
  tu_assert_contains(err.msg, "another layout");
  elmo_tf_free(&other);
  model_teardown(m);
  free(m);
}

/* Fixed seed: the default-initialised model gives the same output every run, and it is finite. */
static void test_forward_deterministic(void **state) {
  (void)state;
  elmo_tf_config cfg = small_config(ELMO_TF_POOL_MEAN);
  elmo_err err = {0};
  elmo_tf_params p;
  elmo_tf_cache c;
  assert_int_equal(elmo_tf_alloc(&p, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_cache_alloc(&c, &cfg, 2, 5, &err), ELMO_OK);
  elmo_tf_init_random(&p, 1234);
  const int32_t ids[10] = {1, 2, 3, 4, 5, 9, 8, 7, 0, 0};
  const uint8_t mask[10] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  float a[32], b[32];
  assert_int_equal(elmo_tf_forward(&p, &c, ids, mask, 2, 5, a, &err), ELMO_OK);
  assert_int_equal(elmo_tf_forward(&p, &c, ids, mask, 2, 5, b, &err), ELMO_OK);
  assert_finite(a, 32);
  assert_memory_equal(a, b, sizeof a);
  assert_memory_not_equal(a, a + 16, 16 * sizeof(float));
  elmo_tf_free(&p);
  elmo_tf_cache_free(&c);
}

/* ------------------------------------------------------------------ FP8 forward GEMMs */

/* Independent E4M3 quantiser: scans the 127 non-negative finite codes (value from the bit fields),
 * nearest value, ties to the even code, saturating at 448. */
static double ref_e4m3_value(int code) {
  const int e = code >> 3, m = code & 7;
  return e == 0 ? m * ldexp(1.0, -9) : (1.0 + m / 8.0) * ldexp(1.0, e - 7);
}

static double ref_e4m3(double v) {
  const double a = fabs(v);
  int best = 0;
  for (int c = 1; c < 127; c++) {
    const double d = fabs(a - ref_e4m3_value(c)), db = fabs(a - ref_e4m3_value(best));
    if (d < db || (d == db && (c & 1) == 0)) best = c;
  }
  const double q = a >= 448.0 ? 448.0 : ref_e4m3_value(best);
  return v < 0 ? -q : q;
}

static double ref_amax(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)x[i]));
  return m;
}

/* y = (e4m3(x sx) e4m3(w sw)^T) / (sx sw) + b in double; bound[n, o] = sum |products| / (sx sw). */
static void ref_linear_fp8(const float *x, const float *w, const float *b, int N, int in, int out,
                           double *y, double *bound) {
  const float sx = (float)(448.0 / ref_amax(x, (int64_t)N * in));
  const float sw = (float)(448.0 / ref_amax(w, (int64_t)out * in));
  const double deq = (double)((1.0f / sx) * (1.0f / sw));
  for (int n = 0; n < N; n++)
    for (int o = 0; o < out; o++) {
      double s = 0.0, sa = 0.0;
      for (int k = 0; k < in; k++) {
        const double pr = ref_e4m3(x[n * in + k] * sx) * ref_e4m3(w[o * in + k] * sw);
        s += pr;
        sa += fabs(pr);
      }
      y[n * out + o] = s * deq + b[o];
      bound[n * out + o] = sa * deq;
    }
}

static void test_fp8_quantize(void **state) {
  (void)state;
  const float x[6] = {1000.0f, -0.001f, 0.0f, 3.0f, -448.0f, 0.0009765625f /* 2^-10: ties to 0 */};
  float q[6];
  elmo_tf_fp8_quantize(x, 6, 1.0f, q);
  for (int i = 0; i < 6; i++)
    if (!((double)q[i] == ref_e4m3(x[i]))) fail_msg("e4m3(%g) = %g, expected %g", (double)x[i], (double)q[i],
                                                    ref_e4m3(x[i]));
  assert_true(q[0] == 448.0f && q[5] == 0.0f);
  assert_true(elmo_tf_amax(x, 6) == 1000.0f);
  assert_true(elmo_tf_fp8_scale(2.0f) == 224.0f);
  assert_true(elmo_tf_fp8_scale(0.0f) == (float)(448.0 / 1e-12));       /* all-zero tensor */
  const float with_nan[3] = {1.0f, NAN, -5.0f};
  assert_true(isnan(elmo_tf_amax(with_nan, 3)));
  assert_true(isnan(elmo_tf_fp8_scale(NAN)));
}

/* The FP8 linear forward equals quantise-then-GEMM in double, and differs from FP32 by FP8 noise. */
static void test_fp8_linear(void **state) {
  (void)state;
  uint64_t rng = 881;
  enum { N = 13, IN = 32, OUT = 48 };
  float *x = rand_array(N * IN, 1.0f, &rng), *w = rand_array(OUT * IN, 0.05f, &rng);
  float *b = rand_array(OUT, 0.1f, &rng);
  x[5] = 37.0f;                         /* outliers set the scales: small values go subnormal */
  w[7] = -0.9f;
  float *y = malloc(sizeof(float) * N * OUT), *y32 = malloc(sizeof(float) * N * OUT);
  float *ws = malloc(sizeof(float) * (IN * OUT + N * IN));
  double *ref = malloc(sizeof(double) * N * OUT), *bound = malloc(sizeof(double) * N * OUT);
  elmo_tf_linear_forward_fp8(x, w, b, N, IN, OUT, y, ws);
  ref_linear_fp8(x, w, b, N, IN, OUT, ref, bound);
  for (int i = 0; i < N * OUT; i++)
    if (!(fabs(y[i] - ref[i]) <= 1e-6 * bound[i] + 1e-6 * fabs(ref[i]) + 1e-7))
      fail_msg("fp8 linear y[%d] = %.9g, reference %.9g", i, (double)y[i], ref[i]);
  elmo_tf_linear_forward(x, w, b, N, IN, OUT, y32, ws);
  double num = 0.0, den = 0.0;
  for (int i = 0; i < N * OUT; i++) {
    num += ((double)y[i] - y32[i]) * ((double)y[i] - y32[i]);
    den += (double)y32[i] * y32[i];
  }
  const double rel = sqrt(num / den);
  print_message("fp8 vs fp32 linear: relative error %.3e\n", rel);
  assert_true(rel > 1e-3 && rel < 0.15);
  x[9] = NAN;                           /* NaN is never hidden by the scaling */
  elmo_tf_linear_forward_fp8(x, w, b, N, IN, OUT, y, ws);
  for (int i = 0; i < N * OUT; i++) assert_true(isnan(y[i]));
  free(x); free(w); free(b); free(y); free(y32); free(ws); free(ref); free(bound);
}

/* The FP8 input gradient equals quantise-then-GEMM in double (each row of dy by the power of two of its
 * bf16 amax, w by its forward scale); scaling a row by 2^k scales only that row's result, exactly; a zero
 * row gives zeros and a NaN stays in its row. */
static void test_fp8_dgrad(void **state) {
  (void)state;
  uint64_t rng = 907;
  enum { N = 11, IN = 48, OUT = 32 };
  float *dy = rand_array(N * OUT, 0.01f, &rng), *w = rand_array(OUT * IN, 0.05f, &rng);
  for (int k = 0; k < OUT; k++) dy[4 * OUT + k] = 0.0f;   /* an all-zero row */
  dy[2 * OUT + 3] = 0.9f;                                  /* a row whose outlier sends the rest subnormal */
  float *dx = malloc(sizeof(float) * N * IN), *dx2 = malloc(sizeof(float) * N * IN);
  float *ws = malloc(sizeof(float) * (IN * OUT + N * OUT));
  elmo_tf_linear_dgrad_fp8(dy, w, N, IN, OUT, NULL, dx, 0, ws);
  const float sw = (float)(448.0 / ref_amax(w, OUT * IN));
  for (int n = 0; n < N; n++) {
    double m = 0.0;
    for (int k = 0; k < OUT; k++) m = fmax(m, fabs((double)elmo_bf16_to_f32(elmo_f32_to_bf16(dy[n * OUT + k]))));
    const double sn = m > 0.0 ? exp2(floor(log2(448.0 / m))) : exp2(100.0);
    for (int c = 0; c < IN; c++) {
      double acc = 0.0, bound = 0.0;
      for (int k = 0; k < OUT; k++) {
        const double pr = ref_e4m3(elmo_bf16_to_f32(elmo_f32_to_bf16(dy[n * OUT + k])) * sn) *
                          ref_e4m3(w[k * IN + c] * sw);
        acc += pr;
        bound += fabs(pr);
      }
      const double ref = acc / sn / sw, tol = 1e-6 * bound / sn / sw + 1e-12;
      if (!(fabs(dx[n * IN + c] - ref) <= tol))
        fail_msg("fp8 dgrad dx[%d, %d] = %.9g, reference %.9g", n, c, (double)dx[n * IN + c], ref);
    }
  }
  for (int c = 0; c < IN; c++) assert_true(dx[4 * IN + c] == 0.0f);
  /* row 6 times 2^-5: its result times 2^-5 bit for bit, every other row the same bits */
  for (int k = 0; k < OUT; k++) dy[6 * OUT + k] *= 0.03125f;
  elmo_tf_linear_dgrad_fp8(dy, w, N, IN, OUT, NULL, dx2, 0, ws);
  for (int n = 0; n < N; n++)
    for (int c = 0; c < IN; c++) assert_true(dx2[n * IN + c] == (n == 6 ? dx[n * IN + c] * 0.03125f : dx[n * IN + c]));
  dy[8 * OUT + 1] = NAN;
  elmo_tf_linear_dgrad_fp8(dy, w, N, IN, OUT, NULL, dx2, 0, ws);
  for (int n = 0; n < N; n++)
    for (int c = 0; c < IN; c++) assert_true(n == 8 ? isnan(dx2[n * IN + c]) : isfinite(dx2[n * IN + c]));
  free(dy); free(w); free(dx); free(dx2); free(ws);
}

/* The intermediate's input gradient: its row scales from the bound of elmo_tf_fp8_dff_factor hold every
 * element of dff = GELU'(a) (dy ff2_w) (the ff2 product on E4M3 as the model forms it) below 448 / scale,
 * pre-activations at GELU''s extremes included; with row_bound given, the dgrad takes those scales, and
 * accumulate adds the same product to dx bit for bit. */
static void test_fp8_dff_bound(void **state) {
  (void)state;
  uint64_t rng = 913;
  enum { N = 9, H = 32, F = 64 };
  float *dy = rand_array(N * H, 0.02f, &rng), *w2 = rand_array(H * F, 0.08f, &rng);
  float *a = rand_array(N * F, 2.0f, &rng), *w1 = rand_array(F * H, 0.05f, &rng);
  for (int j = 0; j < F; j += 3) a[j] = (j % 2) ? 1.41421356f : -1.41421356f;
  for (int k = 0; k < H; k++) dy[5 * H + k] = (k % 2) ? 0.02f : -0.02f;   /* a row along one weight column */
  float *dg = malloc(sizeof(float) * N * F), *dff = malloc(sizeof(float) * N * F), *bound = malloc(sizeof(float) * N);
  float *ws = malloc(sizeof(float) * (H * F + N * F));
  elmo_tf_linear_dgrad_fp8(dy, w2, N, F, H, NULL, dg, 0, ws);
  elmo_tf_gelu_backward(a, dg, N * F, dff);
  const float f = elmo_tf_fp8_dff_factor(w2, H, F);
  assert_true(f > 0.0f && (double)f == (double)(float)(1.25 * 1.13 * elmo_tf_fp8_col_norm_max(w2, H, F)));
  elmo_tf_fp8_dff_bounds(dy, N, H, f, bound);
  double tightest = 0.0;
  for (int n = 0; n < N; n++) {
    const double lim = 448.0 / elmo_tf_fp8_pow2_scale(bound[n]);
    for (int j = 0; j < F; j++) {
      const double v = fabs((double)elmo_bf16_to_f32(elmo_f32_to_bf16(dff[n * F + j])));
      if (!(v <= lim)) fail_msg("dff[%d, %d] = %g above its row's E4M3 range %g", n, j, v, lim);
      tightest = fmax(tightest, v * 1.25 / bound[n]);
    }
  }
  print_message("dff bound: largest |dff| / (bound / margin) %.3f\n", tightest);
  assert_true(tightest > 0.05 && tightest <= 1.0);
  /* the dgrad with these row bounds; accumulate = the product added to what dx held */
  float *dx = malloc(sizeof(float) * N * H), *dx2 = malloc(sizeof(float) * N * H);
  elmo_tf_linear_dgrad_fp8(dff, w1, N, H, F, bound, dx, 0, ws);
  for (int i = 0; i < N * H; i++) dx2[i] = 0.5f * (float)i;
  elmo_tf_linear_dgrad_fp8(dff, w1, N, H, F, bound, dx2, 1, ws);
  for (int i = 0; i < N * H; i++) assert_true(dx2[i] == 0.5f * (float)i + dx[i]);
  const float sw = (float)(448.0 / ref_amax(w1, F * H));
  for (int n = 0; n < N; n++) {
    const double sn = elmo_tf_fp8_pow2_scale(bound[n]);
    for (int c = 0; c < H; c++) {
      double acc = 0.0, b = 0.0;
      for (int k = 0; k < F; k++) {
        const double pr = ref_e4m3(elmo_bf16_to_f32(elmo_f32_to_bf16(dff[n * F + k])) * sn) * ref_e4m3(w1[k * H + c] * sw);
        acc += pr;
        b += fabs(pr);
      }
      const double ref = acc / sn / sw;
      if (!(fabs(dx[n * H + c] - ref) <= 1e-6 * b / sn / sw + 1e-12))
        fail_msg("fp8 dgrad with row bounds dx[%d, %d] = %.9g, reference %.9g", n, c, (double)dx[n * H + c], ref);
    }
  }
  free(dy); free(w2); free(a); free(w1); free(dg); free(dff); free(bound); free(ws); free(dx); free(dx2);
}

static double rel_l2(const float *a, const float *b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(a[i])) return INFINITY;
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += (double)b[i] * b[i];
  }
  return sqrt(num / den);
}

/* The whole model in FP8 mode (BERT init): output and gradients close to FP32 but not equal,
 * finite, deterministic, padding-invariant and batch-invariant (the scales come from the parameters);
 * hidden/ffn must be multiples of 16. */
static void test_fp8_model(void **state) {
  (void)state;
  model_case *m = calloc(1, sizeof *m), *f = calloc(1, sizeof *f);
  model_setup(m, ELMO_TF_POOL_MEAN, 61);
  elmo_tf_config cfg = small_config(ELMO_TF_POOL_MEAN);
  cfg.fp8_forward = 1;
  elmo_err err = {0};
  assert_int_equal(elmo_tf_alloc(&f->p, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_alloc(&f->g, &cfg, &err), ELMO_OK);
  assert_int_equal(elmo_tf_cache_alloc(&f->c, &cfg, MB, MT, &err), ELMO_OK);
  elmo_tf_init_random(&m->p, 62);
  memcpy(f->p.flat, m->p.flat, sizeof(float) * (size_t)m->p.num_params);
  memcpy(f->ids, m->ids, sizeof f->ids);
  memcpy(f->mask, m->mask, sizeof f->mask);
  memcpy(f->r, m->r, sizeof f->r);
  model_loss(m);
  model_loss(f);
  elmo_tf_zero(&m->g);
  elmo_tf_zero(&f->g);
  assert_int_equal(elmo_tf_backward(&m->p, &m->c, m->r, &m->g, &err), ELMO_OK);
  assert_int_equal(elmo_tf_backward(&f->p, &f->c, f->r, &f->g, &err), ELMO_OK);
  const int64_t np = elmo_tf_num_params(&f->g);
  assert_finite(f->pooled, MB * 16);
  assert_finite(f->g.flat, np);
  const double ep = rel_l2(f->pooled, m->pooled, MB * 16), eg = rel_l2(f->g.flat, m->g.flat, np);
  print_message("fp8 vs fp32 model: pooled error %.3e, gradient error %.3e\n", ep, eg);
  assert_true(ep > 1e-5 && ep < 1e-2);   /* measured 5.6e-4 and 3.9e-4 (BERT init): FP8 noise, */
  assert_true(eg > 1e-5 && eg < 1e-2);   /* far above FP32 rounding, far below a broken layer */
  /* deterministic, and masked positions still never matter */
  float first[MB * 16];
  memcpy(first, f->pooled, sizeof first);
  for (int i = 0; i < MB * MT; i++)
    if (!f->mask[i]) f->ids[i] = (f->ids[i] + 17) % 50;
  model_loss(f);
  assert_memory_equal(first, f->pooled, sizeof first);
  /* another sequence in the batch (row 2's tokens changed) leaves rows 0 and 1 exactly as they were */
  for (int t = 0; t < MT; t++)
    if (f->mask[2 * MT + t]) f->ids[2 * MT + t] = (f->ids[2 * MT + t] + 5) % 50;
  model_loss(f);
  assert_memory_equal(first, f->pooled, sizeof(float) * 2 * 16);
  assert_memory_not_equal(first + 2 * 16, f->pooled + 2 * 16, sizeof(float) * 16);
  /* FP8 tensor-core GEMMs need sizes in multiples of 16 */
  elmo_tf_params bad;
  cfg.hidden = 24;
  cfg.heads = 2;
  assert_int_equal(elmo_tf_alloc(&bad, &cfg, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "multiples of 16");
  model_teardown(m);
  model_teardown(f);
  free(m);
  free(f);
}

static float amax_f(const float *x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
  return m;
}

/* The FP8 forward's input scales: every layer input, attention output, h1 and GELU output of an FP32
 * forward (random parameters, so LayerNorm weights and biases far from 1 and 0) stays within the
 * bound its scale comes from, each row's L2 norm within the norm bound, and the scales are the
 * largest powers of two that keep bound * margin * scale <= 448. */
static void test_fp8_bounds(void **state) {
  (void)state;
  assert_true(elmo_tf_fp8_pow2_scale(448.0) == 1.0f);
  assert_true(elmo_tf_fp8_pow2_scale(448.5) == 0.5f);
  assert_true(elmo_tf_fp8_pow2_scale(224.0) == 2.0f);
  assert_true(elmo_tf_fp8_pow2_scale(0.01) == 32768.0f);
  assert_true(elmo_tf_fp8_pow2_scale(0.0) == ldexpf(1.0f, 100));
  assert_true(isnan(elmo_tf_fp8_pow2_scale(NAN)));
  model_case *m = calloc(1, sizeof *m);
  model_setup(m, ELMO_TF_POOL_MEAN, 63);
  model_loss(m);
  const elmo_tf_config *cfg = &m->p.cfg;
  const int H = cfg->hidden, F = cfg->ffn;
  const int64_t N = m->c.ntok;
  for (int i = 0; i < cfg->layers; i++) {
    const elmo_tf_layer *l = &m->p.layer[i];
    const elmo_tf_layer_cache *lc = &m->c.layer[i];
    const float *in = i ? m->c.layer[i - 1].out : m->c.x0;
    const float *in_w = i ? m->p.layer[i - 1].ln2_w : m->p.emb_ln_w, *in_b = i ? m->p.layer[i - 1].ln2_b : m->p.emb_ln_b;
    const double b_x = elmo_tf_fp8_ln_elem(in_w, in_b, H), n_in = elmo_tf_fp8_ln_norm(in_w, in_b, H);
    const double b_ctx = n_in * elmo_tf_fp8_row_norm_max(l->v_w, H, H) + elmo_tf_fp8_abs_max(l->v_b, H);
    const double b_h1 = elmo_tf_fp8_ln_elem(l->ln1_w, l->ln1_b, H);
    double b_g = elmo_tf_fp8_ln_norm(l->ln1_w, l->ln1_b, H) * elmo_tf_fp8_row_norm_max(l->ff1_w, F, H) +
                 elmo_tf_fp8_abs_max(l->ff1_b, F);
    b_g = b_g > ELMO_TF_FP8_GELU_MIN ? b_g : ELMO_TF_FP8_GELU_MIN;
    const double got[4] = {amax_f(in, N * H), amax_f(lc->ctx, N * H), amax_f(lc->h1, N * H), amax_f(lc->gelu, N * F)};
    const double bound[4] = {b_x, b_ctx, b_h1, b_g};
    elmo_tf_fp8_scales sc;
    elmo_tf_fp8_layer_scales(cfg, in_w, in_b, l, &sc);
    const float scale[4] = {sc.x, sc.ctx, sc.h1, sc.g};
    for (int k = 0; k < 4; k++) {
      print_message("layer %d input %d: amax %.4g, bound %.4g, scale %g\n", i, k, got[k], bound[k], (double)scale[k]);
      assert_true(got[k] > 0.0 && got[k] <= bound[k]);
      const double t = bound[k] * ELMO_TF_FP8_BOUND_MARGIN * scale[k];
      int e;
      assert_true(frexpf(scale[k], &e) == 0.5f);  /* a power of two */
      assert_true(t <= 448.0 && 2.0 * t > 448.0);
    }
    for (int64_t n = 0; n < N; n++) {  /* the norm bound, row by row */
      double ss = 0.0;
      for (int j = 0; j < H; j++) ss += (double)in[n * H + j] * in[n * H + j];
      assert_true(sqrt(ss) <= n_in);
    }
  }
  model_teardown(m);
  free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layout_names),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_init),
      cmocka_unit_test(test_gemm),
      cmocka_unit_test(test_gemm_row_invariance),
      cmocka_unit_test(test_grad_linear),
      cmocka_unit_test(test_grad_layernorm),
      cmocka_unit_test(test_grad_gelu),
      cmocka_unit_test(test_grad_attention),
      cmocka_unit_test(test_grad_embedding),
      cmocka_unit_test(test_grad_pool_mean),
      cmocka_unit_test(test_grad_pool_cls),
      cmocka_unit_test(test_grad_model_mean),
      cmocka_unit_test(test_grad_model_cls),
      cmocka_unit_test(test_forward_reference_mean),
      cmocka_unit_test(test_forward_reference_cls),
      cmocka_unit_test(test_padding_invariance),
      cmocka_unit_test(test_forward_errors),
      cmocka_unit_test(test_forward_deterministic),
      cmocka_unit_test(test_fp8_quantize),
      cmocka_unit_test(test_fp8_linear),
      cmocka_unit_test(test_fp8_dgrad),
      cmocka_unit_test(test_fp8_dff_bound),
      cmocka_unit_test(test_fp8_model),
    cmocka_unit_test(test_fp8_bounds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
