/* test_metrics.c: metrics against pyxclib's numbers (xmc-formats-metrics.md §1.12), top-k ranking
 * (ties, padding, filters), inverse propensities and the printed/JSON output. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

#define TOL 1e-6

/* Builds a CSR from "rows cols\nl:v l:v\n..." text (empty line = empty row); test data only. */
static void csr_from_text(const char *text, elmo_csr *out) {
  char *buf = strdup(text), *save = NULL;
  char *line = strtok_r(buf, "\n", &save);
  long rows = 0, cols = 0;
  assert_int_equal(sscanf(line, "%ld %ld", &rows, &cols), 2);
  elmo_csr_builder b;
  elmo_csrb_init(&b, cols);
  const char *p = text + (strchr(text, '\n') - text) + 1;
  for (long r = 0; r < rows; r++) {
    const char *eol = strchr(p, '\n');
    size_t n = eol ? (size_t)(eol - p) : strlen(p);
    char *row = strndup(p, n), *tok, *s2 = NULL;
    for (tok = strtok_r(row, " ", &s2); tok; tok = strtok_r(NULL, " ", &s2)) {
      int l; float v;
      assert_int_equal(sscanf(tok, "%d:%f", &l, &v), 2);
      elmo_csrb_push(&b, l, v);
    }
    free(row);
    elmo_csrb_end_row(&b);
    p = eol ? eol + 1 : p + n;
  }
  elmo_csrb_finish(&b, out);
  free(buf);
}

/* §1.12 files */
static const char *TRAIN = "5 6\n0:1\n0:1 1:1\n2:1\n0:1 3:1\n\n";
static const char *TRUTH = "4 6\n0:1 2:1\n1:1\n3:1 4:1 5:1\n\n";
static const char *PRED =
    "4 6\n0:0.9 1:0.4 2:0.5 5:0.1\n1:0.7 3:0.8\n0:-0.2 1:-0.5 3:-0.4 4:-0.3 5:-0.1\n1:1.0 2:0.9\n";

static void assert_vec(const double *got, const double *want, int n, const char *what) {
  for (int i = 0; i < n; i++)
    if (!(fabs(got[i] - want[i]) <= TOL)) /* NaN fails */
      fail_msg("%s[%d] = %.9f, expected %.9f", what, i, got[i], want[i]);
}

/* Evaluates the §1.12 vector; filter_text may be NULL. */
static void eval_vector(double A, double B, const char *filter_text, int remove_invalid, double *w,
                        elmo_metrics *m) {
  elmo_csr train, truth, pred, filter;
  csr_from_text(TRAIN, &train);
  csr_from_text(TRUTH, &truth);
  csr_from_text(PRED, &pred);
  if (filter_text) csr_from_text(filter_text, &filter);
  elmo_inv_propensity(&train, A, B, w);
  int32_t topk[4 * 5];
  elmo_topk_from_csr(&pred, filter_text ? &filter : NULL, 5, topk, NULL);
  elmo_metrics_compute(&truth, topk, 5, w, remove_invalid, m);
  assert_int_equal(m->k, 5);
  elmo_csr_free(&train);
  elmo_csr_free(&truth);
  elmo_csr_free(&pred);
  if (filter_text) elmo_csr_free(&filter);
}

static void test_vector_055_15(void **state) {
  (void)state;
  double w[6];
  elmo_metrics m;
  eval_vector(0.55, 1.5, NULL, 0, w, &m);
  const double ew[6] = {1.441092, 1.609438, 1.609438, 1.609438, 1.807135, 1.807135};
  const double P[5] = {0.5, 0.5, 0.416667, 0.375, 0.3};
  const double N[5] = {0.5, 0.561019, 0.583712, 0.634239, 0.634239};
  const double PSP[5] = {0.646283, 0.781595, 0.837162, 1.0, 1.0};
  const double PSN[5] = {0.646283, 0.731664, 0.771948, 0.838135, 0.838135};
  const double R[5] = {0.208333, 0.583333, 0.666667, 0.75, 0.75};
  const double PSR[5] = {0.438558, 0.861186, 0.889974, 1.0, 1.0};
  assert_vec(w, ew, 6, "inv_psp");
  assert_vec(m.P, P, 5, "P");
  assert_vec(m.nDCG, N, 5, "nDCG");
  assert_vec(m.PSP, PSP, 5, "PSP");
  assert_vec(m.PSnDCG, PSN, 5, "PSnDCG");
  assert_vec(m.R, R, 5, "R");
  assert_vec(m.PSR, PSR, 5, "PSR");
}

static void test_vector_06_26(void **state) {
  (void)state;
  double w[6];
  elmo_metrics m;
  eval_vector(0.6, 2.6, NULL, 0, w, &m);
  const double ew[6] = {1.467518, 1.609438, 1.609438, 1.609438, 1.740844, 1.740844};
  const double P[5] = {0.5, 0.5, 0.416667, 0.375, 0.3};
  const double PSP[5] = {0.646884, 0.786872, 0.835394, 1.0, 1.0};
  const double PSN[5] = {0.646884, 0.735044, 0.772114, 0.838852, 0.838852};
  assert_vec(w, ew, 6, "inv_psp");
  assert_vec(m.P, P, 5, "P");
  assert_vec(m.PSP, PSP, 5, "PSP");
  assert_vec(m.PSnDCG, PSN, 5, "PSnDCG");
}

static void test_vector_filter(void **state) {
  (void)state;
  double w[6];
  elmo_metrics m;
  eval_vector(0.55, 1.5, "4 6\n\n3:1\n\n\n", 0, w, &m);
  const double P[5] = {0.75, 0.5, 0.416667, 0.375, 0.3};
  assert_vec(m.P, P, 5, "P (filter row 1 label 3)");
}

static void test_vector_remove_invalid(void **state) {
  (void)state;
  double w[6];
  elmo_metrics m;
  eval_vector(0.55, 1.5, NULL, 1, w, &m);
  const double P[5] = {0.666667, 0.666667, 0.555556, 0.5, 0.4};
  assert_vec(m.P, P, 5, "P (remove_invalid)");
  /* PS metrics are ratios of sums, unchanged by dropping rows without labels */
  const double PSP[5] = {0.646283, 0.781595, 0.837162, 1.0, 1.0};
  assert_vec(m.PSP, PSP, 5, "PSP (remove_invalid)");
}

/* N_l = 1 gives w = ln N exactly, for any A, B. */
static void test_inv_propensity_identity(void **state) {
  (void)state;
  const int64_t Ns[3] = {5, 1000, 294805};
  const double AB[3][2] = {{0.55, 1.5}, {0.6, 2.6}, {0.5, 0.4}};
  int64_t one = 1;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) {
      double w = 0;
      elmo_inv_propensity_counts(&one, 1, Ns[i], AB[j][0], AB[j][1], &w);
      assert_true(fabs(w - log((double)Ns[i])) < 1e-12);
    }
  /* augmented: train freq 0 -> 1 and N + L rows, so an unseen label gets ln(N + L) */
  elmo_csr train;
  csr_from_text(TRAIN, &train);
  double w[6];
  elmo_inv_propensity_aug(&train, 0.6, 2.6, w);
  assert_true(fabs(w[4] - log(11.0)) < 1e-12);
  assert_true(fabs(w[5] - log(11.0)) < 1e-12);
  assert_true(w[0] < w[1]); /* freq 4 vs 2 */
  const double ew[6] = {1.971695, 2.206706, 2.206706, 2.206706, 2.397895, 2.397895};
  assert_vec(w, ew, 6, "inv_psp (augmented, A=0.6 B=2.6)");
  elmo_csr_free(&train);
}

/* Equal scores rank by lower label; NaN ranks last; higher scores first. */
static void test_ties(void **state) {
  (void)state;
  elmo_csr pred;
  csr_from_text("3 20\n7:0.5 3:0.5 9:0.5 1:0.5 4:0.5\n2:1 8:nan 5:1 6:2\n19:0.1 0:0.1 10:0.3\n", &pred);
  int32_t topk[3 * 4];
  float sc[3 * 4];
  elmo_topk_from_csr(&pred, NULL, 4, topk, sc);
  const int32_t want[12] = {1, 3, 4, 7, 6, 2, 5, 8, 10, 0, 19, -1};
  for (int i = 0; i < 12; i++) assert_int_equal(topk[i], want[i]);
  assert_true(sc[4] == 2.0f && sc[5] == 1.0f && sc[11] == -INFINITY);
  /* tie at the k boundary: the lower label wins the last slot */
  int32_t top2[3 * 2];
  elmo_topk_from_csr(&pred, NULL, 2, top2, NULL);
  assert_int_equal(top2[0], 1);
  assert_int_equal(top2[1], 3);
  elmo_csr_free(&pred);
}

/* A row with fewer predictions than k: padding counts wrong (P@k divides by k). */
static void test_padding(void **state) {
  (void)state;
  elmo_csr truth, pred;
  csr_from_text("2 10\n1:1 2:1 3:1\n4:1\n", &truth);
  csr_from_text("2 10\n1:0.9\n4:0.5 0:0.1 1:0.2\n", &pred);
  int32_t topk[2 * 5];
  elmo_topk_from_csr(&pred, NULL, 5, topk, NULL);
  assert_int_equal(topk[1], -1);
  elmo_metrics m;
  elmo_metrics_compute(&truth, topk, 5, NULL, 0, &m);
  const double P[5] = {1.0, 0.5, 1.0 / 3, 0.25, 0.2};
  const double R[5] = {(1.0 / 3 + 1) / 2, (1.0 / 3 + 1) / 2, (1.0 / 3 + 1) / 2, (1.0 / 3 + 1) / 2,
                       (1.0 / 3 + 1) / 2};
  /* row 0: DCG 1, Z@2 = 1 + 1/log2(3); row 1: 1 */
  double z2 = 1 + 1 / log2(3.0), z3 = z2 + 0.5;
  const double N[5] = {1.0, (1 / z2 + 1) / 2, (1 / z3 + 1) / 2, (1 / z3 + 1) / 2, (1 / z3 + 1) / 2};
  assert_vec(m.P, P, 5, "P");
  assert_vec(m.R, R, 5, "R");
  assert_vec(m.nDCG, N, 5, "nDCG");
  for (int j = 0; j < 5; j++) assert_true(m.PSP[j] == 0.0); /* no propensities given */
  elmo_csr_free(&truth);
  elmo_csr_free(&pred);
}

/* k larger than the number of labels: every label ranked, the rest padding. */
static void test_k_beyond_labels(void **state) {
  (void)state;
  elmo_csr truth, pred;
  csr_from_text("1 3\n0:1 2:1\n", &truth);
  csr_from_text("1 3\n0:0.1 1:0.9 2:0.5\n", &pred);
  int32_t topk[5];
  elmo_topk_from_csr(&pred, NULL, 5, topk, NULL);
  const int32_t want[5] = {1, 2, 0, -1, -1};
  for (int i = 0; i < 5; i++) assert_int_equal(topk[i], want[i]);
  double w[3] = {2.0, 1.0, 3.0};
  elmo_metrics m;
  elmo_metrics_compute(&truth, topk, 5, w, 0, &m);
  const double P[5] = {0, 0.5, 2.0 / 3, 0.5, 0.4};
  const double R[5] = {0, 0.5, 1, 1, 1};
  /* ideal: 2 (w 3) then 0 (w 2): PSP@1 = 0/3, @2 = 3/5, @3.. = 5/5 */
  const double PSP[5] = {0, 0.6, 1, 1, 1};
  assert_vec(m.P, P, 5, "P");
  assert_vec(m.R, R, 5, "R");
  assert_vec(m.PSP, PSP, 5, "PSP");
  assert_vec(m.PSR, PSP, 5, "PSR");
  elmo_csr_free(&truth);
  elmo_csr_free(&pred);
}

/* Ground truth is binarised: stored zeros are not labels, values > 1 count once. */
static void test_binarised_truth(void **state) {
  (void)state;
  elmo_csr truth, pred;
  csr_from_text("1 4\n0:0 1:3.5 2:1\n", &truth);
  csr_from_text("1 4\n0:0.9 1:0.8 2:0.7\n", &pred);
  int32_t topk[3];
  elmo_topk_from_csr(&pred, NULL, 3, topk, NULL);
  elmo_metrics m;
  elmo_metrics_compute(&truth, topk, 3, NULL, 0, &m);
  const double P[3] = {0, 0.5, 2.0 / 3};
  const double R[3] = {0, 0.5, 1};
  assert_vec(m.P, P, 3, "P");
  assert_vec(m.R, R, 3, "R");
  elmo_csr_free(&truth);
  elmo_csr_free(&pred);
}

/* Reference ranking: full sort of the row. */
static int cmp_rank(const void *a, const void *b) {
  const float *x = a, *y = b; /* {score, label} pairs */
  if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
  return (x[1] > y[1]) - (x[1] < y[1]);
}

/* Random rows of up to 150 entries with many tied scores (and -0 beside +0) and a random filter:
 * one k on each side of the small/large top-k paths (k <= 16 / k > 16). */
static void check_topk_random(int k, uint64_t seed) {
  uint64_t rng = seed;
  const int rows = 300, cols = 500;
  elmo_csr_builder b, fb;
  elmo_csrb_init(&b, cols);
  elmo_csrb_init(&fb, cols);
  for (int r = 0; r < rows; r++) {
    int n = (int)(tu_rand_u64(&rng) % 150);
    uint8_t used[500] = {0};
    for (int i = 0; i < n; i++) {
      int l = (int)(tu_rand_u64(&rng) % cols);
      if (used[l]) continue;
      used[l] = 1;
      float v = (float)(tu_rand_u64(&rng) % 8) * 0.25f - 1.0f;
      if (v == 0.0f && tu_rand_u64(&rng) % 2) v = -0.0f;
      elmo_csrb_push(&b, l, v);
      if (tu_rand_u64(&rng) % 5 == 0) elmo_csrb_push(&fb, l, 1.0f);
    }
    elmo_csrb_end_row(&b);
    elmo_csrb_end_row(&fb);
  }
  elmo_csr pred, filt;
  elmo_csrb_finish(&b, &pred);
  elmo_csrb_finish(&fb, &filt);
  int32_t *topk = malloc(sizeof(int32_t) * rows * k);
  float *sc = malloc(sizeof(float) * rows * k);
  elmo_topk_from_csr(&pred, &filt, k, topk, sc);
  for (int r = 0; r < rows; r++) {
    float buf[300];
    int n = 0;
    for (int64_t e = pred.indptr[r]; e < pred.indptr[r + 1]; e++) {
      int filtered = 0;
      for (int64_t f = filt.indptr[r]; f < filt.indptr[r + 1]; f++) filtered |= filt.indices[f] == pred.indices[e];
      if (filtered) continue;
      buf[2 * n] = pred.data[e];
      buf[2 * n + 1] = (float)pred.indices[e];
      n++;
    }
    qsort(buf, (size_t)n, 2 * sizeof(float), cmp_rank);
    for (int j = 0; j < k; j++) {
      if (topk[r * k + j] != (j < n ? (int32_t)buf[2 * j + 1] : -1))
        fail_msg("k=%d row %d rank %d: label %d, expected %d", k, r, j, topk[r * k + j],
                 j < n ? (int32_t)buf[2 * j + 1] : -1);
      assert_true(j < n ? sc[r * k + j] == buf[2 * j] : sc[r * k + j] == -INFINITY);
    }
  }
  free(topk);
  free(sc);
  elmo_csr_free(&pred);
  elmo_csr_free(&filt);
}

/* The top-k selection agrees with a full sort of each row. */
static void test_topk_random_vs_sort(void **state) {
  (void)state;
  const int ks[6] = {1, 5, 16, 17, 40, 100};
  for (int i = 0; i < 6; i++) check_topk_random(ks[i], 12345 + (uint64_t)i);
}

/* Ranks labels [l0, l1) of row sc (score, then lower label) into k entries, -1 / -inf past the labels. */
static void rank_span(const float *sc, int l0, int l1, int k, int32_t *ids, float *scores) {
  for (int e = 0; e < k; e++) {
    int best = -1;
    for (int l = l0; l < l1; l++) {
      int taken = 0;
      for (int j = 0; j < e; j++) taken |= ids[j] == l;
      if (!taken && (best < 0 || sc[l] > sc[best])) best = l; /* ascending l: ties keep the lower label */
    }
    ids[e] = best;
    scores[e] = best < 0 ? -INFINITY : sc[best];
  }
}

/* elmo_topk_merge_lists against the top-k of the whole score matrix: L labels in n contiguous shards as the
 * sharded CUDA backend splits them (the last shorter, or shorter than k), scores from 6 levels so that
 * ties cross shards. */
static void test_topk_merge_shards(void **state) {
  (void)state;
  enum { ROWS = 9, L = 37, KMAX = 40 };
  uint64_t seed = 4242;
  float sc[ROWS][L];
  for (int r = 0; r < ROWS; r++)
    for (int l = 0; l < L; l++) sc[r][l] = (float)(tu_rand_u64(&seed) % 6) - 2.0f;
  const int ks[4] = {1, 5, 12, KMAX};
  for (int n = 1; n <= 4; n++) {
    for (int ki = 0; ki < 4; ki++) {
      const int k = ks[ki], per = (L + n - 1) / n;
      int32_t *lists = malloc(sizeof(int32_t) * (size_t)(n * ROWS * k)), *got = malloc(sizeof(int32_t) * ROWS * k);
      float *ls = malloc(sizeof(float) * (size_t)(n * ROWS * k)), *gs = malloc(sizeof(float) * ROWS * k);
      for (int q = 0; q < n; q++)
        for (int r = 0; r < ROWS; r++) {
          const int l0 = q * per < L ? q * per : L, l1 = (q + 1) * per < L ? (q + 1) * per : L;
          rank_span(sc[r], l0, l1, k, lists + (q * ROWS + r) * k, ls + (q * ROWS + r) * k);
        }
      elmo_topk_merge_lists(n, ROWS, k, lists, ls, got, gs);
      for (int r = 0; r < ROWS; r++) {
        int32_t want[KMAX];
        float ws[KMAX];
        rank_span(sc[r], 0, L, k, want, ws);
        for (int e = 0; e < k; e++)
          if (got[r * k + e] != want[e] || memcmp(&gs[r * k + e], &ws[e], sizeof(float)))
            fail_msg("n %d k %d row %d rank %d: merged (%d, %g), whole (%d, %g)", n, k, r, e, got[r * k + e],
                     gs[r * k + e], want[e], ws[e]);
      }
      free(lists); free(got); free(ls); free(gs);
    }
  }
}

static void test_print_and_json(void **state) {
  (void)state;
  double w[6];
  elmo_metrics m;
  eval_vector(0.55, 1.5, NULL, 0, w, &m);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  elmo_metrics_print(&m, f);
  fclose(f);
  const char *want =
      "P@k: 50.00,50.00,41.67,37.50,30.00\n"
      "nDCG@k: 50.00,56.10,58.37,63.42,63.42\n"
      "PSP@k: 64.63,78.16,83.72,100.00,100.00\n"
      "PSnDCG@k: 64.63,73.17,77.19,83.81,83.81\n"
      "R@k: 20.83,58.33,66.67,75.00,75.00\n"
      "PSR@k: 43.86,86.12,89.00,100.00,100.00\n";
  assert_string_equal(text, want);
  free(text);
  char *js = elmo_metrics_json(&m);
  assert_true(js[0] == '{' && js[strlen(js) - 1] == '}');
  tu_assert_contains(js, "{\"P@1\":0.50000000,\"P@2\":0.50000000,\"P@3\":0.41666667,");
  tu_assert_contains(js, "\"nDCG@2\":0.56101");
  tu_assert_contains(js, "\"PSnDCG@5\":0.83813");
  tu_assert_contains(js, "\"PSR@5\":1.00000000}");
  free(js);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vector_055_15),
      cmocka_unit_test(test_vector_06_26),
      cmocka_unit_test(test_vector_filter),
      cmocka_unit_test(test_vector_remove_invalid),
      cmocka_unit_test(test_inv_propensity_identity),
      cmocka_unit_test(test_ties),
      cmocka_unit_test(test_padding),
      cmocka_unit_test(test_k_beyond_labels),
      cmocka_unit_test(test_binarised_truth),
      cmocka_unit_test(test_topk_random_vs_sort),
      cmocka_unit_test(test_topk_merge_shards),
      cmocka_unit_test(test_print_and_json),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
