/* test_sparse_encoder.c: the embedding-bag encoder's backward against central finite
 * differences (FP32), with and without LayerNorm; output rows are unit-norm. */
#include "testutil.h"
#include "sparse_encoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NF = 12, D = 8, B = 3 };
static const int64_t indptr[B + 1] = {0, 3, 4, 8};
static const int32_t indices[8] = {0, 5, 7, 2, 1, 5, 9, 11};
static const float values[8] = {1.0f, 0.5f, 2.0f, 1.0f, 0.3f, 1.0f, 0.7f, 1.5f};

/* loss = sum(out * R), in double over the FP32 forward */
static double loss_of(const float *E, const float *g, const float *b, const float *R) {
  elmo_sparse_cache c;
  elmo_sparse_cache_alloc(&c, B, D);
  float out[B * D];
  elmo_sparse_forward(E, g, b, D, B, indptr, indices, values, &c, out);
  double l = 0;
  for (int i = 0; i < B * D; i++) l += (double)out[i] * R[i];
  elmo_sparse_cache_free(&c);
  return l;
}

static void check(int layernorm) {
  uint64_t s = 42 + layernorm;
  float E[NF * D], g[D], bb[D], R[B * D];
  for (int i = 0; i < NF * D; i++) E[i] = tu_rand_normal(&s);
  for (int i = 0; i < D; i++) { g[i] = 1.0f + 0.3f * tu_rand_normal(&s); bb[i] = 0.1f * tu_rand_normal(&s); }
  for (int i = 0; i < B * D; i++) R[i] = tu_rand_normal(&s);
  const float *gp = layernorm ? g : NULL, *bp = layernorm ? bb : NULL;
  elmo_sparse_cache c;
  elmo_sparse_cache_alloc(&c, B, D);
  float out[B * D], dout[B * D], dE[NF * D] = {0}, dg[D] = {0}, db[D] = {0};
  elmo_sparse_forward(E, gp, bp, D, B, indptr, indices, values, &c, out);
  if (!layernorm)
    for (int r = 0; r < B; r++) {
      double n = 0;
      for (int k = 0; k < D; k++) n += (double)out[r * D + k] * out[r * D + k];
      assert_true(fabs(n - 1.0) < 1e-5);
    }
  memcpy(dout, R, sizeof dout);
  elmo_sparse_backward(gp, D, B, indptr, indices, values, &c, dout, dE, dg, db);
  const float eps = 1e-2f;
  double num = 0, den = 0;
  for (int i = 0; i < NF * D; i++) {
    float keep = E[i];
    E[i] = keep + eps;
    double lp = loss_of(E, gp, bp, R);
    E[i] = keep - eps;
    double lm = loss_of(E, gp, bp, R);
    E[i] = keep;
    double fd = (lp - lm) / (2 * eps);
    num += (fd - dE[i]) * (fd - dE[i]);
    den += fd * fd;
    assert_false(isnan(dE[i]));
  }
  assert_true(den > 0);
  assert_true(sqrt(num / den) < 2e-3);
  /* rows of features that no sample uses get no gradient */
  for (int k = 0; k < D; k++) assert_true(dE[3 * D + k] == 0.0f);
  if (layernorm) {
    for (int i = 0; i < D; i++) {
      float keep = g[i];
      g[i] = keep + eps;
      double lp = loss_of(E, gp, bp, R);
      g[i] = keep - eps;
      double lm = loss_of(E, gp, bp, R);
      g[i] = keep;
      assert_true(fabs((lp - lm) / (2 * eps) - dg[i]) < 2e-3 * (1 + fabs(dg[i])));
      keep = bb[i];
      bb[i] = keep + eps;
      lp = loss_of(E, gp, bp, R);
      bb[i] = keep - eps;
      lm = loss_of(E, gp, bp, R);
      bb[i] = keep;
      assert_true(fabs((lp - lm) / (2 * eps) - db[i]) < 2e-3 * (1 + fabs(db[i])));
    }
  }
  elmo_sparse_cache_free(&c);
}

static void test_gradcheck_plain(void **state) { check(0); }
static void test_gradcheck_layernorm(void **state) { check(1); }

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_gradcheck_plain), cmocka_unit_test(test_gradcheck_layernorm),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
