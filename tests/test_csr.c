/* test_csr.c: the CSR builder, row sorting, row selection and column counts (src/csr.c). */
#include "testutil.h"
#include "csr.h"

#include <stdlib.h>
#include <string.h>

/* Builds a small matrix row by row: [[3:1, 1:2], [], [0:-1]]. */
static void build_small(elmo_csr *m) {
  elmo_csr_builder b;
  elmo_csrb_init(&b, 5);
  elmo_csrb_push(&b, 3, 1.0f);
  elmo_csrb_push(&b, 1, 2.0f);
  elmo_csrb_end_row(&b);
  elmo_csrb_end_row(&b);
  elmo_csrb_push(&b, 0, -1.0f);
  elmo_csrb_end_row(&b);
  elmo_csrb_finish(&b, m);
  assert_null(b.m.indptr);   /* the builder gave its arrays away */
}

static void test_builder_small(void **state) {
  (void)state;
  elmo_csr m;
  build_small(&m);
  assert_int_equal(m.rows, 3);
  assert_int_equal(m.cols, 5);
  assert_int_equal(elmo_csr_nnz(&m), 3);
  int64_t ptr[] = {0, 2, 2, 3};
  for (int i = 0; i < 4; i++) assert_int_equal(m.indptr[i], ptr[i]);
  assert_int_equal(m.indices[0], 3);
  assert_int_equal(m.indices[1], 1);
  assert_int_equal(m.indices[2], 0);
  assert_true(m.data[0] == 1.0f && m.data[1] == 2.0f && m.data[2] == -1.0f);
  elmo_csr_free(&m);
  assert_null(m.indptr);
  assert_null(m.indices);
  assert_null(m.data);
  assert_int_equal(elmo_csr_nnz(&m), 0);
}

static void test_builder_empty(void **state) {
  (void)state;
  elmo_csr_builder b;
  elmo_csrb_init(&b, 7);
  elmo_csr m;
  elmo_csrb_finish(&b, &m);
  assert_int_equal(m.rows, 0);
  assert_int_equal(m.cols, 7);
  assert_int_equal(elmo_csr_nnz(&m), 0);
  assert_non_null(m.indices);   /* never NULL, so callers can index [0, nnz) freely */
  assert_non_null(m.data);
  elmo_csr_free(&m);
}

/* Many rows and entries force several reallocations; every entry must survive them. */
static void test_builder_grows(void **state) {
  (void)state;
  uint64_t rng = 42;
  enum { ROWS = 20000 };
  elmo_csr_builder b;
  elmo_csrb_init(&b, 1000);
  int64_t expect_nnz = 0;
  for (int r = 0; r < ROWS; r++) {
    int n = (int)(tu_rand_u64(&rng) % 12);
    for (int j = 0; j < n; j++) elmo_csrb_push(&b, (r * 7 + j) % 1000, (float)(r + j));
    expect_nnz += n;
    elmo_csrb_end_row(&b);
  }
  elmo_csr m;
  elmo_csrb_finish(&b, &m);
  assert_int_equal(m.rows, ROWS);
  assert_int_equal(elmo_csr_nnz(&m), expect_nnz);
  rng = 42;
  for (int r = 0; r < ROWS; r++) {
    int n = (int)(tu_rand_u64(&rng) % 12);
    assert_int_equal(m.indptr[r + 1] - m.indptr[r], n);
    for (int j = 0; j < n; j++) {
      assert_int_equal(m.indices[m.indptr[r] + j], (r * 7 + j) % 1000);
      assert_true(m.data[m.indptr[r] + j] == (float)(r + j));
    }
  }
  elmo_csr_free(&m);
}

static void test_sort_rows(void **state) {
  (void)state;
  uint64_t rng = 7;
  elmo_csr_builder b;
  elmo_csrb_init(&b, 100000);
  for (int r = 0; r < 300; r++) {
    int n = (int)(tu_rand_u64(&rng) % 60);
    for (int j = 0; j < n; j++) {
      int32_t idx = (int32_t)(tu_rand_u64(&rng) % 100000);
      elmo_csrb_push(&b, idx, (float)idx * 0.5f);   /* value tied to index to check pairing */
    }
    elmo_csrb_end_row(&b);
  }
  elmo_csr m;
  elmo_csrb_finish(&b, &m);
  int64_t *before = malloc(sizeof(int64_t) * 300);
  for (int r = 0; r < 300; r++) {
    int64_t sum = 0;
    for (int64_t i = m.indptr[r]; i < m.indptr[r + 1]; i++) sum += m.indices[i];
    before[r] = sum;
  }
  elmo_csr_sort_rows(&m);
  for (int r = 0; r < 300; r++) {
    int64_t sum = 0;
    for (int64_t i = m.indptr[r]; i < m.indptr[r + 1]; i++) {
      sum += m.indices[i];
      assert_true(m.data[i] == (float)m.indices[i] * 0.5f);
      if (i > m.indptr[r]) assert_true(m.indices[i - 1] <= m.indices[i]);
    }
    assert_int_equal(sum, before[r]);   /* same multiset (checksum) */
  }
  free(before);
  elmo_csr_free(&m);
}

static void test_select_rows(void **state) {
  (void)state;
  elmo_csr m, s;
  build_small(&m);
  int64_t pick[] = {2, 0, 1, 2};
  elmo_csr_select_rows(&m, pick, 4, &s);
  assert_int_equal(s.rows, 4);
  assert_int_equal(s.cols, 5);
  int64_t ptr[] = {0, 1, 3, 3, 4};
  for (int i = 0; i < 5; i++) assert_int_equal(s.indptr[i], ptr[i]);
  int32_t idx[] = {0, 3, 1, 0};
  float val[] = {-1.0f, 1.0f, 2.0f, -1.0f};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(s.indices[i], idx[i]);
    assert_true(s.data[i] == val[i]);
  }
  elmo_csr_free(&s);
  elmo_csr_select_rows(&m, pick, 0, &s);
  assert_int_equal(s.rows, 0);
  assert_int_equal(elmo_csr_nnz(&s), 0);
  elmo_csr_free(&s);
  elmo_csr_free(&m);
}

static void test_col_counts(void **state) {
  (void)state;
  elmo_csr_builder b;
  elmo_csrb_init(&b, 4);
  elmo_csrb_push(&b, 1, 1.0f);
  elmo_csrb_push(&b, 3, 0.0f);     /* explicit zero: not counted */
  elmo_csrb_end_row(&b);
  elmo_csrb_push(&b, 1, 0.25f);    /* any non-zero counts 1 */
  elmo_csrb_push(&b, 0, -2.0f);
  elmo_csrb_end_row(&b);
  elmo_csr m;
  elmo_csrb_finish(&b, &m);
  int64_t counts[4] = {-9, -9, -9, -9};
  elmo_csr_col_counts(&m, counts);
  assert_int_equal(counts[0], 1);
  assert_int_equal(counts[1], 2);
  assert_int_equal(counts[2], 0);
  assert_int_equal(counts[3], 0);
  elmo_csr_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_builder_small), cmocka_unit_test(test_builder_empty),
      cmocka_unit_test(test_builder_grows), cmocka_unit_test(test_sort_rows),
      cmocka_unit_test(test_select_rows),   cmocka_unit_test(test_col_counts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
