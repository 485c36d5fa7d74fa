/* text.c: raw-text inputs: one text per line (trn_X.txt, Y.txt) and JSON lines with the fields
 * uid, title, content, target_ind (trn.json, tst.json, lbl.json), streamed through gzline. */
#include "text.h"
#include "gzline.h"

#include <cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Growable list of texts being read. */
typedef struct text_list {
  elmo_texts t;
  size_t cap;
} text_list;

static void push_text(text_list *l, char *s) {
  elmo_grow((void **)&l->t.text, &l->cap, (size_t)l->t.n + 1, sizeof(char *));
  l->t.text[l->t.n++] = s;
}

static char *copy_bytes(const char *s, size_t n) {
  char *d = elmo_malloc(n + 1);
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

void elmo_texts_free(elmo_texts *t) {
  for (int64_t i = 0; i < t->n; i++) free(t->text[i]);
  ELMO_FREE(t->text);
  t->n = 0;
}

int elmo_read_lines(const char *path, elmo_texts *out, elmo_err *err) {
  memset(out, 0, sizeof *out);
  elmo_lines *in;
  int rc = elmo_lines_open(&in, path, err);
  if (rc != ELMO_OK) return rc;
  text_list l = {0};
  char *line;
  size_t len;
  int got;
  while ((got = elmo_lines_next(in, &line, &len, err)) == 1) push_text(&l, copy_bytes(line, len));
  elmo_lines_close(&in);
  if (got < 0) {
    elmo_texts_free(&l.t);
    return -got;
  }
  *out = l.t;
  return ELMO_OK;
}

/* ---- JSON lines -------------------------------------------------------------------------- */

typedef struct jsonl {
  elmo_lines *in;
  int with_content;
  int64_t num_labels;       /* column bound, or -1 to infer */
  int64_t max_label;        /* largest label seen */
  int32_t *row;             /* [row_cap] labels of the current line */
  size_t row_cap;
} jsonl;

static int bad(const jsonl *j, elmo_err *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(const jsonl *j, elmo_err *err, const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return elmo_fail(err, ELMO_EINPUT, "%s:%lld: %s", elmo_lines_path(j->in),
                   (long long)elmo_lines_lineno(j->in), msg);
}

/* A string field of the object, or an error naming it. */
static int get_string(const jsonl *j, const cJSON *obj, const char *field, const char **out, elmo_err *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
  if (!v) return bad(j, err, "missing field \"%s\" (expected a string)", field);
  if (!cJSON_IsString(v)) return bad(j, err, "field \"%s\" is not a string (expected a string)", field);
  *out = v->valuestring;
  return ELMO_OK;
}

/* title, or title + " " + content */
static int make_text(const jsonl *j, const cJSON *obj, char **out, elmo_err *err) {
  const char *title = NULL, *content = NULL;
  int rc = get_string(j, obj, "title", &title, err);
  if (rc == ELMO_OK && j->with_content) rc = get_string(j, obj, "content", &content, err);
  if (rc != ELMO_OK) return rc;
  size_t nt = strlen(title), nc = content ? strlen(content) : 0;
  char *s = elmo_malloc(nt + nc + 2);
  memcpy(s, title, nt);
  if (content) {
    s[nt] = ' ';
    memcpy(s + nt + 1, content, nc);
    nt += nc + 1;
  }
  s[nt] = '\0';
  *out = s;
  return ELMO_OK;
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* One label id of target_ind: an integer 0 <= id < num_labels (or < 2^31 when inferring). */
static int check_label(const jsonl *j, const cJSON *v, int32_t *out, elmo_err *err) {
  double bound = j->num_labels >= 0 ? (double)j->num_labels : 2147483648.0;
  if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble || v->valuedouble < 0)
    return bad(j, err, "field \"target_ind\" holds a value that is not a non-negative integer "
               "(expected a list of 0-based label ids)");
  if (v->valuedouble >= bound)
    return bad(j, err, "field \"target_ind\": label %.0f out of range (expected 0 <= label < %.0f)",
               v->valuedouble, bound);
  *out = (int32_t)v->valuedouble;
  return ELMO_OK;
}

/* Labels of target_ind into Y's next row: sorted, repeats collapsed. */
static int add_labels(jsonl *j, const cJSON *obj, elmo_csr_builder *y, elmo_err *err) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(obj, "target_ind");
  if (!arr) return bad(j, err, "missing field \"target_ind\" (expected a list of 0-based label ids)");
  if (!cJSON_IsArray(arr))
    return bad(j, err, "field \"target_ind\" is not a list (expected a list of 0-based label ids)");
  size_t n = 0;
  const cJSON *v;
  cJSON_ArrayForEach(v, arr) {
    elmo_grow((void **)&j->row, &j->row_cap, n + 1, sizeof(int32_t));
    int rc = check_label(j, v, &j->row[n++], err);
    if (rc != ELMO_OK) return rc;
  }
  qsort(j->row, n, sizeof(int32_t), cmp_i32);
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && j->row[i] == j->row[i - 1]) continue;
    elmo_csrb_push(y, j->row[i], 1.0f);
    if (j->row[i] > j->max_label) j->max_label = j->row[i];
  }
  elmo_csrb_end_row(y);
  return ELMO_OK;
}

/* Parses one line: an object whose text goes to l and labels (when y) to y. */
static int parse_json_line(jsonl *j, const char *line, size_t len, text_list *l, elmo_csr_builder *y,
                           elmo_err *err) {
  if (strspn(line, " \t") == len) return bad(j, err, "empty line (expected one JSON object per line)");
  const char *end = NULL;
  cJSON *obj = cJSON_ParseWithLengthOpts(line, len, &end, 0);
  if (!obj)
    return bad(j, err, "invalid JSON at column %lld (expected one JSON object per line)",
               (long long)(end ? end - line + 1 : 1));
  int rc = ELMO_OK;
  if (!cJSON_IsObject(obj)) rc = bad(j, err, "line is not a JSON object (expected {\"uid\":..., \"title\":...})");
  else if (strspn(end, " \t") != len - (size_t)(end - line))
    rc = bad(j, err, "extra text after the JSON object at column %lld (expected one object per line)",
             (long long)(end - line + 1));
  char *text = NULL;
  if (rc == ELMO_OK) rc = make_text(j, obj, &text, err);
  if (rc == ELMO_OK && y) rc = add_labels(j, obj, y, err);
  cJSON_Delete(obj);
  if (rc != ELMO_OK) {
    free(text);
    return rc;
  }
  push_text(l, text);
  return ELMO_OK;
}

static int read_json_lines(jsonl *j, text_list *l, elmo_csr_builder *y, elmo_err *err) {
  char *line;
  size_t len;
  int got;
  while ((got = elmo_lines_next(j->in, &line, &len, err)) == 1) {
    int rc = parse_json_line(j, line, len, l, y, err);
    if (rc != ELMO_OK) return rc;
  }
  return got < 0 ? -got : ELMO_OK;
}

int elmo_read_jsonl(const char *path, int with_content, int64_t num_labels, elmo_texts *out, elmo_csr *Y,
                    elmo_err *err) {
  memset(out, 0, sizeof *out);
  if (Y) memset(Y, 0, sizeof *Y);
  jsonl j = {.with_content = with_content, .num_labels = num_labels, .max_label = -1};
  int rc = elmo_lines_open(&j.in, path, err);
  if (rc != ELMO_OK) return rc;
  text_list l = {0};
  elmo_csr_builder y;
  elmo_csrb_init(&y, num_labels >= 0 ? num_labels : 0);
  rc = read_json_lines(&j, &l, Y ? &y : NULL, err);
  elmo_lines_close(&j.in);
  free(j.row);
  elmo_csr m;
  elmo_csrb_finish(&y, &m);
  if (rc != ELMO_OK) {
    elmo_texts_free(&l.t);
    elmo_csr_free(&m);
    return rc;
  }
  if (num_labels < 0) m.cols = j.max_label + 1;
  if (Y) *Y = m;
  else elmo_csr_free(&m);
  *out = l.t;
  return ELMO_OK;
}
