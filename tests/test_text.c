/* test_text.c: one-text-per-line files and JSON lines (src/text.c). */
#include "testutil.h"
#include "common.h"
#include "text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_lines_small(void **state) {
  (void)state;
  const char *suffix[2] = {".txt", ".txt.gz"};
  for (int s = 0; s < 2; s++) {
    char *path = tu_write_temp("first text\n\n  spaced  \r\nlast", suffix[s]);
    elmo_texts t;
    elmo_err err = {0};
    assert_int_equal(elmo_read_lines(path, &t, &err), ELMO_OK);
    assert_int_equal(t.n, 4);
    assert_string_equal(t.text[0], "first text");
    assert_string_equal(t.text[1], "");          /* an empty line is a text too */
    assert_string_equal(t.text[2], "  spaced  ");
    assert_string_equal(t.text[3], "last");
    elmo_texts_free(&t);
    assert_int_equal(t.n, 0);
    assert_null(t.text);
    unlink(path);
    free(path);
  }
}

static void test_lines_empty_and_missing(void **state) {
  (void)state;
  char *path = tu_write_temp("", ".txt");
  elmo_texts t;
  elmo_err err = {0};
  assert_int_equal(elmo_read_lines(path, &t, &err), ELMO_OK);
  assert_int_equal(t.n, 0);
  elmo_texts_free(&t);
  unlink(path);
  free(path);
  path = tu_write_temp("a\n\n", ".txt");   /* final newline ends line 2, adds no third */
  assert_int_equal(elmo_read_lines(path, &t, &err), ELMO_OK);
  assert_int_equal(t.n, 2);
  elmo_texts_free(&t);
  unlink(path);
  free(path);
  assert_int_equal(elmo_read_lines("/nonexistent/Y.txt", &t, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "/nonexistent/Y.txt");
}

static void test_lines_truncated_gzip(void **state) {
  (void)state;
  enum { N = 40000 };
  char *text = malloc((size_t)N * 40);
  size_t n = 0;
  for (int i = 0; i < N; i++) n += (size_t)sprintf(text + n, "text number %d of many\n", i * 7919);
  char *path = tu_write_temp(text, ".gz");
  elmo_texts t;
  elmo_err err = {0};
  assert_int_equal(elmo_read_lines(path, &t, &err), ELMO_OK);
  assert_int_equal(t.n, N);
  elmo_texts_free(&t);
  FILE *f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fclose(f);
  assert_int_equal(truncate(path, size * 2 / 3), 0);
  assert_int_equal(elmo_read_lines(path, &t, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, path);
  tu_assert_contains(err.msg, "truncated gzip");
  assert_int_equal(t.n, 0);
  unlink(path);
  free(path);
  free(text);
}

/* bibtex/features.txt: 1836 words, labels.txt: 159 tag names. */
static void test_lines_bibtex(void **state) {
  (void)state;
  const char *files[2] = {"bibtex/features.txt", "bibtex/labels.txt"};
  int64_t want[2] = {1836, 159};
  for (int i = 0; i < 2; i++) {
    char *path = tu_shared(files[i]);
    elmo_texts t;
    elmo_err err = {0};
    if (elmo_read_lines(path, &t, &err) != ELMO_OK) fail_msg("%s", err.msg);
    assert_int_equal(t.n, want[i]);
    for (int64_t j = 0; j < t.n; j++) assert_true(strlen(t.text[j]) > 0);
    elmo_texts_free(&t);
    free(path);
  }
}

static const char *JSONL =
    "{\"uid\": \"B001\", \"title\": \"Red shoes\", \"content\": \"leather\", \"target_ind\": [5, 2, 5], "
    "\"target_rel\": [1.0, 1.0, 1.0]}\n"
    "{\"uid\": 17, \"title\": \"caf\\u00e9 \\\"x\\\"\", \"content\": \"\", \"target_ind\": []}\n"
    "  {\"title\": \"third\", \"content\": \"c\", \"target_ind\": [0]}  \n";

static void test_jsonl_small(void **state) {
  (void)state;
  const char *suffix[2] = {".json", ".json.gz"};
  for (int s = 0; s < 2; s++) {
    char *path = tu_write_temp(JSONL, suffix[s]);
    elmo_texts t;
    elmo_csr Y;
    elmo_err err = {0};
    if (elmo_read_jsonl(path, 0, -1, &t, &Y, &err) != ELMO_OK) fail_msg("%s", err.msg);
    assert_int_equal(t.n, 3);
    assert_string_equal(t.text[0], "Red shoes");
    assert_string_equal(t.text[1], "caf\xC3\xA9 \"x\"");
    assert_string_equal(t.text[2], "third");
    assert_int_equal(Y.rows, 3);
    assert_int_equal(Y.cols, 6);                  /* inferred: max label 5 + 1 */
    int64_t ptr[] = {0, 2, 2, 3};
    for (int i = 0; i < 4; i++) assert_int_equal(Y.indptr[i], ptr[i]);
    assert_int_equal(Y.indices[0], 2);            /* sorted, the repeated 5 kept once */
    assert_int_equal(Y.indices[1], 5);
    assert_int_equal(Y.indices[2], 0);
    for (int i = 0; i < 3; i++) assert_true(Y.data[i] == 1.0f);
    elmo_texts_free(&t);
    elmo_csr_free(&Y);

    if (elmo_read_jsonl(path, 1, 100, &t, &Y, &err) != ELMO_OK) fail_msg("%s", err.msg);
    assert_string_equal(t.text[0], "Red shoes leather");   /* title + " " + content */
    assert_string_equal(t.text[1], "caf\xC3\xA9 \"x\" ");
    assert_string_equal(t.text[2], "third c");
    assert_int_equal(Y.cols, 100);
    elmo_texts_free(&t);
    elmo_csr_free(&Y);

    assert_int_equal(elmo_read_jsonl(path, 0, -1, &t, NULL, &err), ELMO_OK);   /* texts only */
    assert_int_equal(t.n, 3);
    elmo_texts_free(&t);
    unlink(path);
    free(path);
  }
}

/* Line 2 of a two-line file is `bad`; the error must name path, ":2:" and `needle`. */
static void expect_jsonl_error(const char *bad, int with_content, int64_t num_labels, const char *needle) {
  char text[512];
  snprintf(text, sizeof text, "{\"title\": \"ok\", \"content\": \"c\", \"target_ind\": [1]}\n%s\n", bad);
  char *path = tu_write_temp(text, ".json");
  elmo_texts t;
  elmo_csr Y;
  elmo_err err = {0};
  int rc = elmo_read_jsonl(path, with_content, num_labels, &t, &Y, &err);
  tu_check_input_error(rc, &err, path, 2, needle);
  assert_int_equal(t.n, 0);
  assert_null(t.text);
  assert_null(Y.indptr);
  unlink(path);
  free(path);
}

static void test_jsonl_errors(void **state) {
  (void)state;
  expect_jsonl_error("{\"uid\": 1, \"target_ind\": [1]}", 0, -1, "missing field \"title\"");
  expect_jsonl_error("{\"title\": 3, \"target_ind\": [1]}", 0, -1, "field \"title\" is not a string");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": [1]}", 1, -1, "missing field \"content\"");
  expect_jsonl_error("{\"title\": \"t\"}", 0, -1, "missing field \"target_ind\"");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": 3}", 0, -1, "\"target_ind\" is not a list");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": [1.5]}", 0, -1, "\"target_ind\" holds a value");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": [-1]}", 0, -1, "\"target_ind\" holds a value");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": [\"4\"]}", 0, -1, "\"target_ind\" holds a value");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": [7]}", 0, 7, "label 7 out of range");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": [1]", 0, -1, "invalid JSON");
  expect_jsonl_error("[1, 2]", 0, -1, "not a JSON object");
  expect_jsonl_error("{\"title\": \"t\", \"target_ind\": []} x", 0, -1, "extra text");
  expect_jsonl_error("", 0, -1, "empty line");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lines_small),       cmocka_unit_test(test_lines_empty_and_missing),
      cmocka_unit_test(test_lines_truncated_gzip), cmocka_unit_test(test_lines_bibtex),
      cmocka_unit_test(test_jsonl_small),       cmocka_unit_test(test_jsonl_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
