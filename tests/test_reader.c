/* test_reader.c: sparse text, BoW and filter readers and the top-k writer (src/reader.c,
 * src/gzline.c): every bad-input rule, exact number parsing/formatting, and the real data. */
#include "testutil.h"
#include "common.h"
#include "gzline.h"
#include "reader.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kind { SPARSE, BOW, FILTER };

/* Reads path with the reader of `kind` and frees the result. */
static int read_kind(enum kind k, const char *path, elmo_err *err) {
  elmo_csr a, b;
  int rc;
  if (k == SPARSE) rc = elmo_read_sparse(path, &a, err);
  else if (k == BOW) rc = elmo_read_bow(path, &a, &b, err);
  else rc = elmo_read_filter(path, 4, 6, &a, err);
  if (rc == ELMO_OK) {
    elmo_csr_free(&a);
    if (k == BOW) elmo_csr_free(&b);
  } else {
    assert_null(a.indptr);   /* nothing handed out on failure */
  }
  return rc;
}

/* Writes `text` to a temp file (plain and gzip) and expects an input error at `line`. */
static void expect_error(enum kind k, const char *text, int line, const char *needle) {
  const char *suffix[2] = {".txt", ".txt.gz"};
  for (int s = 0; s < 2; s++) {
    char *path = tu_write_temp(text, suffix[s]);
    elmo_err err = {0};
    int rc = read_kind(k, path, &err);
    if (rc != ELMO_EINPUT) fail_msg("expected an input error for %s", path);
    tu_check_input_error(rc, &err, path, line, needle);
    unlink(path);
    free(path);
  }
}

static void read_sparse_text(const char *text, const char *suffix, elmo_csr *m) {
  char *path = tu_write_temp(text, suffix);
  elmo_err err = {0};
  int rc = elmo_read_sparse(path, m, &err);
  if (rc != ELMO_OK) fail_msg("%s", err.msg);
  unlink(path);
  free(path);
}

/* ---- sparse text: valid input ------------------------------------------------------------ */

static void test_sparse_small(void **state) {
  (void)state;
  const char *suffix[2] = {".txt", ".gz"};
  for (int s = 0; s < 2; s++) {
    elmo_csr m;
    read_sparse_text("3 5\n4:0.5 0:2\t2:1e-3\n\n1:-7.25\n", suffix[s], &m);
    assert_int_equal(m.rows, 3);
    assert_int_equal(m.cols, 5);
    int64_t ptr[] = {0, 3, 3, 4};
    for (int i = 0; i < 4; i++) assert_int_equal(m.indptr[i], ptr[i]);
    int32_t idx[] = {0, 2, 4, 1};   /* row 0 sorted, values follow */
    float val[] = {2.0f, 1e-3f, 0.5f, -7.25f};
    for (int i = 0; i < 4; i++) {
      assert_int_equal(m.indices[i], idx[i]);
      assert_true(m.data[i] == val[i]);
    }
    elmo_csr_free(&m);
  }
}

/* Line endings: no final newline, CRLF, trailing blanks, an empty last row. */
static void test_sparse_line_endings(void **state) {
  (void)state;
  elmo_csr m;
  read_sparse_text("2 3\n0:1\n1:1", ".txt", &m);
  assert_int_equal(m.rows, 2);
  assert_int_equal(elmo_csr_nnz(&m), 2);
  elmo_csr_free(&m);
  read_sparse_text("2 3\r\n0:1 2:1  \r\n\r\n", ".txt", &m);
  assert_int_equal(m.rows, 2);
  assert_int_equal(m.indptr[1], 2);
  assert_int_equal(m.indptr[2], 2);
  elmo_csr_free(&m);
  read_sparse_text("0 4\n", ".gz", &m);
  assert_int_equal(m.rows, 0);
  assert_int_equal(m.cols, 4);
  elmo_csr_free(&m);
  read_sparse_text("2 4\n\n\n", ".txt", &m);   /* two empty rows */
  assert_int_equal(m.rows, 2);
  assert_int_equal(elmo_csr_nnz(&m), 0);
  elmo_csr_free(&m);
}

/* A row longer than the reader's 1 MiB buffer. */
static void test_sparse_long_line(void **state) {
  (void)state;
  enum { N = 300000 };
  size_t cap = (size_t)N * 16 + 64;
  char *text = malloc(cap);
  size_t n = (size_t)snprintf(text, cap, "1 %d\n", N);
  for (int i = N - 1; i >= 0; i--) n += (size_t)snprintf(text + n, cap - n, "%d:%d ", i, i % 97);
  text[n - 1] = '\n';
  elmo_csr m;
  read_sparse_text(text, ".txt", &m);
  assert_int_equal(elmo_csr_nnz(&m), N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(m.indices[i], i);
    assert_true(m.data[i] == (float)(i % 97));
  }
  elmo_csr_free(&m);
  free(text);
}

/* Unsorted rows of many lengths (short, quicksort-sized, qsort-sized) come back sorted with
 * each value still beside its index. */
static void test_sparse_unsorted_rows(void **state) {
  (void)state;
  enum { ROWS = 120, COLS = 10000 };
  uint64_t rng = 11;
  int32_t *perm = malloc(sizeof(int32_t) * COLS);
  size_t cap = (size_t)ROWS * COLS * 12, n = 0;
  char *text = malloc(cap);
  n += (size_t)snprintf(text, cap, "%d %d\n", ROWS, COLS);
  for (int r = 0; r < ROWS; r++) {
    int len = r % 3 == 0 ? (int)(tu_rand_u64(&rng) % 30) : (int)(tu_rand_u64(&rng) % (r % 3 == 1 ? 300 : COLS));
    for (int i = 0; i < COLS; i++) perm[i] = i;
    for (int i = 0; i < len; i++) {   /* partial Fisher-Yates: len distinct indices */
      int j = i + (int)(tu_rand_u64(&rng) % (uint64_t)(COLS - i));
      int32_t t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
      n += (size_t)snprintf(text + n, cap - n, "%s%d:%d", i ? " " : "", perm[i], perm[i] % 1013 - 500);
    }
    text[n++] = '\n';
  }
  text[n] = '\0';
  elmo_csr m;
  read_sparse_text(text, ".txt", &m);
  rng = 11;
  for (int r = 0; r < ROWS; r++) {
    int len = r % 3 == 0 ? (int)(tu_rand_u64(&rng) % 30) : (int)(tu_rand_u64(&rng) % (r % 3 == 1 ? 300 : COLS));
    for (int i = 0; i < len; i++) tu_rand_u64(&rng);
    assert_int_equal(m.indptr[r + 1] - m.indptr[r], len);
    for (int64_t i = m.indptr[r]; i < m.indptr[r + 1]; i++) {
      if (i > m.indptr[r]) assert_true(m.indices[i - 1] < m.indices[i]);
      assert_true(m.data[i] == (float)(m.indices[i] % 1013 - 500));
    }
  }
  elmo_csr_free(&m);
  free(text);
  free(perm);
}

/* ---- sparse text: every bad-input rule --------------------------------------------------- */

static void test_sparse_errors(void **state) {
  (void)state;
  expect_error(SPARSE, "", 1, "empty file");
  expect_error(SPARSE, "3\n", 1, "header has 1 fields");
  expect_error(SPARSE, "4880 1836 159\n", 1, "BoW");
  expect_error(SPARSE, "rows 5\n", 1, "not a non-negative integer");
  expect_error(SPARSE, "-3 5\n", 1, "not a non-negative integer");
  expect_error(SPARSE, "3 5x\n", 1, "not a non-negative integer");
  expect_error(SPARSE, "1 99999999999\n", 1, "too large");
  expect_error(SPARSE, "3 5\n0:1\n1:1\n", 4, "expected 3 rows");
  expect_error(SPARSE, "1 5\n0:1\n1:1\n", 3, "more rows");
  expect_error(SPARSE, "1 5\n0:1\n\n", 3, "more rows");           /* an extra empty row */
  expect_error(SPARSE, "2 5\n0:1\n1:1 2\n", 3, "bad pair \"2\"");
  expect_error(SPARSE, "1 5\n0;1\n", 2, "bad pair");
  expect_error(SPARSE, "1 5\nx:1\n", 2, "bad pair");
  expect_error(SPARSE, "1 5\n-1:1\n", 2, "bad pair");
  expect_error(SPARSE, "1 5\n0:abc\n", 2, "bad value");
  expect_error(SPARSE, "1 5\n0:1.5x\n", 2, "bad value");
  expect_error(SPARSE, "1 5\n0:nan\n", 2, "bad value");
  expect_error(SPARSE, "1 5\n0:\n", 2, "bad value");
  expect_error(SPARSE, "1 5\n0:1e40\n", 2, "out of float range");
  expect_error(SPARSE, "2 5\n\n5:1\n", 3, "index 5 >= 5");
  expect_error(SPARSE, "2 5\n0:1\n99999999999999999999999:1\n", 3, ">= 5");
  expect_error(SPARSE, "1 5\n3:1 1:1 3:2\n", 2, "index 3 appears twice");
}

static void test_missing_file(void **state) {
  (void)state;
  elmo_csr m;
  elmo_err err = {0};
  int rc = elmo_read_sparse("/nonexistent/dir/trn_X_Y.txt", &m, &err);
  assert_int_equal(rc, ELMO_EINPUT);
  tu_assert_contains(err.msg, "/nonexistent/dir/trn_X_Y.txt");
  tu_assert_contains(err.msg, "cannot open");
  char *dir = tu_temp_dir();
  assert_int_equal(elmo_read_sparse(dir, &m, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, dir);
  tu_assert_contains(err.msg, "directory");
  rmdir(dir);
  free(dir);
}

/* Text of `lines` rows "i:1.5 (i+1):2" under a "rows cols" header. */
static char *many_rows(int lines) {
  size_t cap = (size_t)lines * 32 + 32, n = 0;
  char *text = malloc(cap);
  n += (size_t)snprintf(text, cap, "%d 100000\n", lines);
  for (int i = 0; i < lines; i++) n += (size_t)snprintf(text + n, cap - n, "%d:1.5 %d:2\n", i % 99999, i % 99999 + 1);
  return text;
}

static void test_truncated_gzip(void **state) {
  (void)state;
  enum { LINES = 50000 };
  char *text = many_rows(LINES);
  char *path = tu_write_temp(text, ".gz");
  elmo_csr m;
  elmo_err err = {0};
  assert_int_equal(elmo_read_sparse(path, &m, &err), ELMO_OK);   /* intact: fine */
  elmo_csr_free(&m);
  long size = tu_file_size(path);
  long cuts[] = {size - 4, size / 2, 20};
  for (int c = 0; c < 3; c++) {
    assert_int_equal(truncate(path, cuts[c]), 0);
    int rc = elmo_read_sparse(path, &m, &err);
    assert_int_equal(rc, ELMO_EINPUT);
    tu_assert_contains(err.msg, path);
    tu_assert_contains(err.msg, "truncated gzip");
    /* names the line being read: path:<n>: with 1 <= n <= LINES + 2 */
    long line = strtol(err.msg + strlen(path) + 1, NULL, 10);
    assert_true(line >= 1 && line <= LINES + 2);
    assert_null(m.indptr);
  }
  unlink(path);
  free(path);
  free(text);
}

static void test_corrupt_gzip(void **state) {
  (void)state;
  char *text = many_rows(20000);
  char *path = tu_write_temp(text, ".gz");
  long size = tu_file_size(path);
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  fseek(f, size / 2, SEEK_SET);
  for (int i = 0; i < 64; i++) fputc(0xA5 ^ i, f);
  fclose(f);
  elmo_csr m;
  elmo_err err = {0};
  int rc = elmo_read_sparse(path, &m, &err);
  assert_int_equal(rc, ELMO_EINPUT);
  tu_assert_contains(err.msg, path);
  assert_null(m.indptr);
  unlink(path);
  free(path);
  free(text);
}

/* gzline alone: line numbers, CR stripping, a byte-order mark, no final newline. */
static void test_gzline(void **state) {
  (void)state;
  char *path = tu_write_temp("\xEF\xBB\xBF" "a\r\n\nbc\nlast", ".gz");
  elmo_lines *in;
  elmo_err err = {0};
  assert_int_equal(elmo_lines_open(&in, path, &err), ELMO_OK);
  const char *want[] = {"a", "", "bc", "last"};
  char *line;
  size_t len;
  for (int i = 0; i < 4; i++) {
    assert_int_equal(elmo_lines_next(in, &line, &len, &err), 1);
    assert_string_equal(line, want[i]);
    assert_int_equal(len, strlen(want[i]));
    assert_int_equal(elmo_lines_lineno(in), i + 1);
  }
  assert_int_equal(elmo_lines_next(in, &line, &len, &err), 0);
  assert_int_equal(elmo_lines_next(in, &line, &len, &err), 0);
  assert_string_equal(elmo_lines_path(in), path);
  elmo_lines_close(&in);
  assert_null(in);
  unlink(path);
  free(path);
}

/* ---- number parsing: equal to strtof on every input ---------------------------------------- */

static uint32_t bits_of(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

/* A random decimal string: 1..22 digits, a point somewhere, maybe an exponent. */
static void random_decimal(uint64_t *rng, char *out) {
  int nd = 1 + (int)(tu_rand_u64(rng) % 22), n = 0, point = (int)(tu_rand_u64(rng) % (nd + 1));
  if (tu_rand_u64(rng) % 3 == 0) out[n++] = '-';
  for (int i = 0; i < nd; i++) {
    if (i == point && i > 0) out[n++] = '.';
    out[n++] = (char)('0' + tu_rand_u64(rng) % 10);
  }
  if (tu_rand_u64(rng) % 2) n += sprintf(out + n, "e%d", (int)(tu_rand_u64(rng) % 80) - 45);
  out[n] = '\0';
}

static void test_parse_matches_strtof(void **state) {
  (void)state;
  enum { N = 60000 };
  const char *special[] = {
      "16777217", "16777219", "16777217.000000001", "16777216.999999999", "0.5", "-0", "0.000",
      "1.00000", "3.4028235e38", "3.4028236e38", "1.17549435e-38", "1e-45", "7e-46", "1e-50",
      "0.1", "+2.5", ".5", "5.", "1E3", "123456789012345678901234567890", "0.1000000014901161193847656",
      "0.10000000149011611938476562", "33554434.9999999999", "1.0000000596046447753906250",
      /* <= 16 digits whose nearest double is a float midpoint though they are not one */
      "1.990870177745819", "1.419909656047821", "1.762408435344696", "-1.058081567287445"};
  int ns = (int)(sizeof special / sizeof special[0]);
  char (*tok)[48] = malloc(sizeof *tok * N);
  uint64_t rng = 2024;
  for (int i = 0; i < N; i++) {
    if (i < ns) strcpy(tok[i], special[i]);
    else random_decimal(&rng, tok[i]);
    if (!isfinite(strtof(tok[i], NULL))) strcpy(tok[i], "1");
  }
  size_t cap = (size_t)N * 64 + 64, n = 0;
  char *text = malloc(cap);
  n += (size_t)snprintf(text, cap, "%d 1\n", N);
  for (int i = 0; i < N; i++) n += (size_t)snprintf(text + n, cap - n, "0:%s\n", tok[i]);
  elmo_csr m;
  read_sparse_text(text, ".txt", &m);
  for (int i = 0; i < N; i++) {
    float want = strtof(tok[i], NULL);
    if (bits_of(m.data[i]) != bits_of(want))
      fail_msg("\"%s\": got %.9g, strtof gives %.9g", tok[i], (double)m.data[i], (double)want);
  }
  elmo_csr_free(&m);
  free(text);
  free(tok);
}

/* ---- top-k writer ------------------------------------------------------------------------ */

/* A random finite float: random bits (all magnitudes) or a sigmoid-like score. */
static float random_score(uint64_t *rng) {
  for (;;) {
    uint32_t b = (uint32_t)tu_rand_u64(rng);
    float f;
    memcpy(&f, &b, sizeof f);
    if (tu_rand_u64(rng) % 2) f = tu_rand_uniform(rng) * (tu_rand_u64(rng) % 2 ? 1.0f : 2000.0f) - 0.01f;
    if (isfinite(f)) return f;
  }
}

/* Formatting equals printf("%.9g") token for token (rows of k = 1). */
static void test_topk_format_matches_printf(void **state) {
  (void)state;
  enum { N = 100000 };
  float special[] = {0.0f, -0.0f, 1.0f, 0.5f, 1e-4f, 9.99999975e-05f, 1e9f, 999999999.0f, 999999936.0f,
                     1234567.125f, 1234567.375f, 0.100000001f, 3.40282347e38f, 1.4e-45f, -2.5f, 100.0f,
                     123456792.0f, 99999.9922f, 16777216.0f, 0.00999999978f};
  int ns = (int)(sizeof special / sizeof special[0]);
  int32_t *lab = malloc(sizeof(int32_t) * N);
  float *sc = malloc(sizeof(float) * N);
  uint64_t rng = 99;
  for (int i = 0; i < N; i++) {
    lab[i] = i % 1000;
    sc[i] = i < ns ? special[i] : random_score(&rng);
  }
  char *dir = tu_temp_dir();
  char *path = elmo_path_join(dir, "pred.txt");
  elmo_err err = {0};
  assert_int_equal(elmo_write_topk(path, N, 1000, 1, lab, sc, &err), ELMO_OK);
  elmo_lines *in;
  assert_int_equal(elmo_lines_open(&in, path, &err), ELMO_OK);
  char *line, want[64];
  size_t len;
  assert_int_equal(elmo_lines_next(in, &line, &len, &err), 1);
  snprintf(want, sizeof want, "%d 1000", N);
  assert_string_equal(line, want);
  for (int i = 0; i < N; i++) {
    assert_int_equal(elmo_lines_next(in, &line, &len, &err), 1);
    snprintf(want, sizeof want, "%d:%.9g", lab[i], (double)sc[i]);
    if (strcmp(line, want) != 0) fail_msg("score %a: wrote \"%s\", printf gives \"%s\"", (double)sc[i], line, want);
  }
  assert_int_equal(elmo_lines_next(in, &line, &len, &err), 0);
  elmo_lines_close(&in);
  unlink(path);
  rmdir(dir);
  free(path);
  free(dir);
  free(lab);
  free(sc);
}

/* Fills a [rows, k] top-k with distinct labels per row and -1 padding at some row ends. */
static void random_topk(uint64_t *rng, int rows, int k, int num_labels, int32_t *lab, float *sc) {
  for (int r = 0; r < rows; r++) {
    int used = k - (int)(tu_rand_u64(rng) % 4 == 0 ? tu_rand_u64(rng) % (k + 1) : 0);
    for (int j = 0; j < k; j++) {
      int32_t l;
      int dup;
      do {
        l = (int32_t)(tu_rand_u64(rng) % (uint64_t)num_labels);
        dup = 0;
        for (int t = 0; t < j; t++) dup |= lab[r * k + t] == l;
      } while (dup);
      lab[r * k + j] = j < used ? l : -1;
      sc[r * k + j] = random_score(rng);
    }
  }
}

/* The row's (label, score) entries sorted by label must equal what was read back, bit for bit. */
static void check_row(const elmo_csr *m, int r, int k, const int32_t *lab, const float *sc) {
  int64_t s = m->indptr[r], n = 0;
  for (int j = 0; j < k; j++) {
    if (lab[j] < 0) continue;
    n++;
    int64_t i;
    for (i = m->indptr[r]; i < m->indptr[r + 1] && m->indices[i] != lab[j]; i++) {}
    if (i == m->indptr[r + 1]) fail_msg("row %d: label %d missing", r, lab[j]);
    assert_int_equal(bits_of(m->data[i]), bits_of(sc[j]));
  }
  assert_int_equal(m->indptr[r + 1] - s, n);
  for (int64_t i = s + 1; i < m->indptr[r + 1]; i++) assert_true(m->indices[i - 1] < m->indices[i]);
}

static void test_topk_roundtrip(void **state) {
  (void)state;
  enum { ROWS = 3000, K = 40, L = 131073 };
  int32_t *lab = malloc(sizeof(int32_t) * ROWS * K);
  float *sc = malloc(sizeof(float) * ROWS * K);
  uint64_t rng = 5;
  random_topk(&rng, ROWS, K, L, lab, sc);
  char *dir = tu_temp_dir();
  const char *names[2] = {"pred.txt", "pred.txt.gz"};
  for (int f = 0; f < 2; f++) {
    char *path = elmo_path_join(dir, names[f]);
    elmo_err err = {0};
    assert_int_equal(elmo_write_topk(path, ROWS, L, K, lab, sc, &err), ELMO_OK);
    elmo_csr m;
    if (elmo_read_sparse(path, &m, &err) != ELMO_OK) fail_msg("%s", err.msg);
    assert_int_equal(m.rows, ROWS);
    assert_int_equal(m.cols, L);
    for (int r = 0; r < ROWS; r++) check_row(&m, r, K, lab + r * K, sc + r * K);
    elmo_csr_free(&m);
    unlink(path);
    free(path);
  }
  rmdir(dir);
  free(dir);
  free(lab);
  free(sc);
}

static void test_topk_errors(void **state) {
  (void)state;
  char *dir = tu_temp_dir();
  char *path = elmo_path_join(dir, "pred.txt");
  int32_t lab[4] = {1, 2, 7, 0};
  float sc[4] = {0.5f, 0.25f, 0.1f, NAN};
  elmo_err err = {0};
  assert_int_equal(elmo_write_topk(path, 2, 5, 2, lab, sc, &err), ELMO_EINPUT);   /* 7 >= 5 */
  tu_assert_contains(err.msg, "label 7");
  assert_false(elmo_file_exists(path));                                          /* nothing left */
  lab[2] = 3;
  assert_int_equal(elmo_write_topk(path, 2, 5, 2, lab, sc, &err), ELMO_ERUNTIME); /* NaN */
  assert_false(elmo_file_exists(path));
  char *bad = elmo_path_join(dir, "no/such/dir/pred.txt");
  assert_int_equal(elmo_write_topk(bad, 2, 5, 2, lab, sc, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, bad);
  rmdir(dir);
  free(bad);
  free(path);
  free(dir);
}

/* ---- BoW --------------------------------------------------------------------------------- */

static void test_bow_small(void **state) {
  (void)state;
  char *path = tu_write_temp("4 6 5\n2,0 1:0.5 3:1\n 2:1 0:2\n4\n3 5:0.25\n", ".txt");
  elmo_csr X, Y;
  elmo_err err = {0};
  if (elmo_read_bow(path, &X, &Y, &err) != ELMO_OK) fail_msg("%s", err.msg);
  assert_int_equal(X.rows, 4);
  assert_int_equal(X.cols, 6);
  assert_int_equal(Y.rows, 4);
  assert_int_equal(Y.cols, 5);
  int64_t yp[] = {0, 2, 2, 3, 4}, xp[] = {0, 2, 4, 4, 5};
  for (int i = 0; i < 5; i++) {
    assert_int_equal(Y.indptr[i], yp[i]);
    assert_int_equal(X.indptr[i], xp[i]);
  }
  int32_t yi[] = {0, 2, 4, 3}, xi[] = {1, 3, 0, 2, 5};
  float xv[] = {0.5f, 1.0f, 2.0f, 1.0f, 0.25f};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(Y.indices[i], yi[i]);
    assert_true(Y.data[i] == 1.0f);
  }
  for (int i = 0; i < 5; i++) {
    assert_int_equal(X.indices[i], xi[i]);
    assert_true(X.data[i] == xv[i]);
  }
  elmo_csr_free(&X);
  elmo_csr_free(&Y);
  unlink(path);
  free(path);
}

static void test_bow_errors(void **state) {
  (void)state;
  expect_error(BOW, "", 1, "empty file");
  expect_error(BOW, "2 3\n", 1, "header has 2 fields");
  expect_error(BOW, "2 x 3\n", 1, "not a non-negative integer");
  expect_error(BOW, "2 3 4\n0 1:1\n", 3, "expected 2 rows");
  expect_error(BOW, "1 3 4\n0 1:1\n1 0:1\n", 3, "more rows");
  expect_error(BOW, "2 3 4\n0 1:1\n4 0:1\n", 3, "label 4 >= 4");
  expect_error(BOW, "1 3 4\n0 3:1\n", 2, "feature 3 >= 3");
  expect_error(BOW, "1 3 4\n1,,2 0:1\n", 2, "bad label list");
  expect_error(BOW, "1 3 4\n1,a 0:1\n", 2, "bad label list");
  expect_error(BOW, "1 3 4\n-1 0:1\n", 2, "bad label list");
  expect_error(BOW, "1 3 4\n1,2,1 0:1\n", 2, "label 1 appears twice");
  expect_error(BOW, "1 3 4\n1 0:1 0:2\n", 2, "feature 0 appears twice");
  expect_error(BOW, "1 3 4\n1 0:x\n", 2, "bad value");
  expect_error(BOW, "1 3 4\n1 0 1:1\n", 2, "bad pair");
}

/* bibtex: 4880 train / 2515 test points, 1836 features, 159 labels; exact nnz counted with an
 * independent script (Y: 11616 = 2.38 labels per point, X: 334250 = 68.5 features per point). */
static void test_bow_bibtex(void **state) {
  (void)state;
  struct { const char *file; int64_t rows, nnz_y, nnz_x; } sets[2] = {
      {"bibtex/train.txt.gz", 4880, 11616, 334250}, {"bibtex/test.txt.gz", 2515, 6146, 173496}};
  for (int s = 0; s < 2; s++) {
    char *path = tu_shared(sets[s].file);
    elmo_csr X, Y;
    elmo_err err = {0};
    if (elmo_read_bow(path, &X, &Y, &err) != ELMO_OK) fail_msg("%s", err.msg);
    assert_int_equal(X.rows, sets[s].rows);
    assert_int_equal(Y.rows, sets[s].rows);
    assert_int_equal(X.cols, 1836);
    assert_int_equal(Y.cols, 159);
    assert_int_equal(elmo_csr_nnz(&Y), sets[s].nnz_y);
    assert_int_equal(elmo_csr_nnz(&X), sets[s].nnz_x);
    for (int64_t i = 0; i < elmo_csr_nnz(&X); i++) assert_true(X.data[i] == 1.0f);   /* binary features */
    for (int64_t r = 0; r < Y.rows; r++) assert_true(Y.indptr[r + 1] > Y.indptr[r]);  /* no empty rows */
    elmo_csr_free(&X);
    elmo_csr_free(&Y);
    free(path);
  }
}

/* ---- filter files ------------------------------------------------------------------------ */

static void test_filter_small(void **state) {
  (void)state;
  char *path = tu_write_temp("0 3\n2 1\n0 3\n\n0 1\n", ".txt");
  elmo_err err = {0};
  for (int infer = 0; infer < 2; infer++) {
    elmo_csr m;
    if (elmo_read_filter(path, infer ? -1 : 4, infer ? -1 : 6, &m, &err) != ELMO_OK) fail_msg("%s", err.msg);
    assert_int_equal(m.rows, infer ? 3 : 4);
    assert_int_equal(m.cols, infer ? 4 : 6);
    int64_t ptr[] = {0, 2, 2, 3};
    for (int i = 0; i < 4; i++) assert_int_equal(m.indptr[i], ptr[i]);
    assert_int_equal(m.indices[0], 1);
    assert_int_equal(m.indices[1], 3);   /* the repeated pair (0, 3) appears once */
    assert_int_equal(m.indices[2], 1);
    for (int i = 0; i < 3; i++) assert_true(m.data[i] == 1.0f);
    elmo_csr_free(&m);
  }
  unlink(path);
  free(path);
  path = tu_write_temp("", ".txt");   /* no pairs at all is a valid (empty) filter */
  elmo_csr m;
  assert_int_equal(elmo_read_filter(path, 5, 7, &m, &err), ELMO_OK);
  assert_int_equal(m.rows, 5);
  assert_int_equal(elmo_csr_nnz(&m), 0);
  elmo_csr_free(&m);
  unlink(path);
  free(path);
}

static void test_filter_errors(void **state) {
  (void)state;   /* read_kind uses rows 4, cols 6 */
  expect_error(FILTER, "0 1\n7\n", 2, "line has 1 fields");
  expect_error(FILTER, "0 1\n1 2 3\n", 2, "line has 3 fields");
  expect_error(FILTER, "0 x\n", 1, "not a non-negative integer");
  expect_error(FILTER, "0 1\n\n-1 2\n", 3, "not a non-negative integer");
  expect_error(FILTER, "0 1\n4 2\n", 2, "doc 4 out of range");
  expect_error(FILTER, "0 6\n", 1, "label 6 out of range");
}

/* ---- real LF-AmazonTitles-131K label structure --------------------------------------------- */

static void test_lf131k_tst_X_Y(void **state) {
  (void)state;
  char *path = tu_shared("lf-amazontitles-131k-labels/tst_X_Y.txt.gz");
  elmo_csr m;
  elmo_err err = {0};
  double t0 = elmo_now();
  if (elmo_read_sparse(path, &m, &err) != ELMO_OK) fail_msg("%s", err.msg);
  double dt = elmo_now() - t0;
  print_message("read %s: %.3f s\n", path, dt);
  assert_int_equal(m.rows, 134835);
  assert_int_equal(m.cols, 131073);
  assert_int_equal(elmo_csr_nnz(&m), 284746);
  for (int64_t i = 0; i < elmo_csr_nnz(&m); i++) assert_true(m.data[i] == 1.0f);
  int64_t *counts = malloc(sizeof(int64_t) * (size_t)m.cols), most = 0;
  elmo_csr_col_counts(&m, counts);
  for (int64_t c = 0; c < m.cols; c++) {
    assert_true(counts[c] > 0);   /* every label used */
    if (counts[c] > most) most = counts[c];
  }
  assert_int_equal(most, 705);
  assert_int_equal(m.indices[0], 42537);   /* first row "42537:1.00000 43834:1.00000" */
  assert_int_equal(m.indices[1], 43834);
  assert_int_equal(m.indptr[1], 2);
  free(counts);
  elmo_csr_free(&m);
  free(path);
}

static void test_lf131k_filter(void **state) {
  (void)state;
  char *path = tu_shared("lf-amazontitles-131k-labels/tst_filter_labels.txt.gz");
  elmo_csr m;
  elmo_err err = {0};
  if (elmo_read_filter(path, 134835, 131073, &m, &err) != ELMO_OK) fail_msg("%s", err.msg);
  assert_int_equal(m.rows, 134835);
  assert_int_equal(elmo_csr_nnz(&m), 79663);
  int64_t rows_with = 0, most = 0;
  for (int64_t r = 0; r < m.rows; r++) {
    int64_t n = m.indptr[r + 1] - m.indptr[r];
    rows_with += n > 0;
    if (n > most) most = n;
  }
  assert_int_equal(rows_with, 38808);
  assert_int_equal(most, 51);
  elmo_csr_free(&m);
  /* the same file against a smaller declared shape fails, naming the line */
  int rc = elmo_read_filter(path, 1000, 131073, &m, &err);
  assert_int_equal(rc, ELMO_EINPUT);
  tu_assert_contains(err.msg, "doc ");
  tu_assert_contains(err.msg, path);
  free(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sparse_small),
      cmocka_unit_test(test_sparse_line_endings),
      cmocka_unit_test(test_sparse_long_line),
      cmocka_unit_test(test_sparse_unsorted_rows),
      cmocka_unit_test(test_sparse_errors),
      cmocka_unit_test(test_missing_file),
      cmocka_unit_test(test_truncated_gzip),
      cmocka_unit_test(test_corrupt_gzip),
      cmocka_unit_test(test_gzline),
      cmocka_unit_test(test_parse_matches_strtof),
      cmocka_unit_test(test_topk_format_matches_printf),
      cmocka_unit_test(test_topk_roundtrip),
      cmocka_unit_test(test_topk_errors),
      cmocka_unit_test(test_bow_small),
      cmocka_unit_test(test_bow_errors),
      cmocka_unit_test(test_bow_bibtex),
      cmocka_unit_test(test_filter_small),
      cmocka_unit_test(test_filter_errors),
      cmocka_unit_test(test_lf131k_tst_X_Y),
      cmocka_unit_test(test_lf131k_filter),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
