/* reader.c: XMC repository file formats: sparse text ("rows cols" + "idx:val" lines), the BoW
 * format ("N D L" + "l1,l2 f:v ..."), filter files ("doc label") and the top-k writer.
 *
 * Numbers are parsed by hand (the hot loop sees tens of millions of "label:score" pairs):
 * indices by a plain digit loop, values by a fast decimal path that gives exactly strtof's
 * result and falls back to strtof where it could not be sure (see parse_float). Scores are
 * written with exactly printf's "%.9g" digits (9 significant digits round-trip any float). */
#include "reader.h"
#include "gzline.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define MAX_COLS ((int64_t)INT32_MAX + 1)   /* indices are int32 */
#define SHOW 40                            /* characters of a bad token quoted in messages */

/* ---- number parsing ---------------------------------------------------------------------- */

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_space(char c) { return c == ' ' || c == '\t'; }
static int is_end(char c) { return c == '\0' || is_space(c); }

/* Parses unsigned decimal digits at *pp (no sign). Saturates at UINT64_MAX on overflow.
 * Returns 0 when no digit starts there. */
static int parse_u64(char **pp, uint64_t *out) {
  char *p = *pp;
  uint64_t v = 0;
  if (!is_digit(*p)) return 0;
  for (; is_digit(*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
  }
  *pp = p;
  *out = v;
  return 1;
}

static const double pow10_exact[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A double exactly halfway between two adjacent normal floats: rounding it again to float
 * might differ from rounding the decimal input once, so the caller asks strtof instead. */
static int is_float_midpoint(double d) {
  uint64_t bits;
  memcpy(&bits, &d, sizeof bits);
  return (bits & ((1ull << 29) - 1)) == (1ull << 28);
}

/* Decimal mantissa and exponent of a number "[+-]digits[.digits][e[+-]digits]". */
typedef struct decimal {
  uint64_t m;     /* first 19 significant digits */
  int exp10;      /* value = m * 10^exp10 (when !inexact) */
  int neg, any, inexact;
} decimal;

/* Locals, not d's fields, in the loop: stores through d could alias the characters read. */
static void scan_digits(char **pp, decimal *d, int fraction) {
  char *p = *pp;
  uint64_t m = d->m;
  int exp10 = d->exp10, any = d->any, inexact = d->inexact;
  for (; is_digit(*p); p++) {
    unsigned dig = (unsigned)(*p - '0');
    any = 1;
    if (m == 0 && dig == 0) {
      exp10 -= fraction;             /* leading zero */
    } else if (m < 1000000000000000000ull) {
      m = m * 10 + dig;              /* at most 19 digits */
      exp10 -= fraction;
    } else {
      exp10 += !fraction;            /* digit beyond 19: dropped */
      inexact |= dig != 0;
    }
  }
  d->m = m;
  d->exp10 = exp10;
  d->any = any;
  d->inexact = inexact;
  *pp = p;
}

static void scan_exponent(char **pp, decimal *d) {
  char *q = *pp + 1;
  int neg = 0;
  if (*q == '+' || *q == '-') neg = *q++ == '-';
  if (!is_digit(*q)) return;         /* "1e" is "1" followed by garbage */
  int e = 0;
  for (; is_digit(*q); q++)
    if (e < 100000) e = e * 10 + (*q - '0');
  d->exp10 += neg ? -e : e;
  *pp = q;
}

/* Parses a decimal float at *pp and advances *pp past it; returns 0 if none starts there.
 * The result equals strtof's on the same characters (out-of-range values give +-inf or 0,
 * as strtof does). No "inf", "nan" or hex forms. */
static int parse_float(char **pp, float *out) {
  char *p = *pp, *start = p;
  decimal d = {0};
  if (*p == '+' || *p == '-') d.neg = *p++ == '-';
  scan_digits(&p, &d, 0);
  if (*p == '.') {
    p++;
    scan_digits(&p, &d, 1);
  }
  if (!d.any) return 0;
  if (*p == 'e' || *p == 'E') scan_exponent(&p, &d);
  *pp = p;
  if (d.m == 0) {
    *out = d.neg ? -0.0f : 0.0f;
    return 1;
  }
  if (!d.inexact && d.m <= (1ull << 53) && d.exp10 >= -22 && d.exp10 <= 22) {
    /* m and 10^|e| are exact doubles, so one correctly rounded operation */
    double v = d.exp10 < 0 ? (double)d.m / pow10_exact[-d.exp10] : (double)d.m * pow10_exact[d.exp10];
    if (v >= FLT_MIN && v <= FLT_MAX && !is_float_midpoint(v)) {
      *out = d.neg ? -(float)v : (float)v;
      return 1;
    }
  }
  char save = *p;
  *p = '\0';
  *out = strtof(start, NULL);
  *p = save;
  return 1;
}

/* ---- error context ----------------------------------------------------------------------- */

typedef struct rd {
  elmo_lines *in;
  char *line;          /* current line, NUL-terminated */
  uint64_t *scratch;   /* [scratch_cap] packed (index, value bits) for sorting a row */
  size_t scratch_cap;
} rd;

/* "path:line: <message>" with ELMO_EINPUT. */
static int bad_at(const rd *r, int64_t line, elmo_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad_at(const rd *r, int64_t line, elmo_err *err, const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return elmo_fail(err, ELMO_EINPUT, "%s:%lld: %s", elmo_lines_path(r->in), (long long)line, msg);
}

#define BAD(r, err, ...) bad_at((r), elmo_lines_lineno((r)->in), (err), __VA_ARGS__)

/* Length of the token at p (up to whitespace), capped for quoting in messages. */
static int show_len(const char *p) {
  size_t n = strcspn(p, " \t");
  return n > SHOW ? SHOW : (int)n;
}

static int rd_open(rd *r, const char *path, elmo_err *err) {
  memset(r, 0, sizeof *r);
  return elmo_lines_open(&r->in, path, err);
}

static void rd_close(rd *r) {
  elmo_lines_close(&r->in);
  ELMO_FREE(r->scratch);
}

/* Next line into r->line: 1, 0 at end, or -code. */
static int rd_next(rd *r, elmo_err *err) {
  size_t len;
  return elmo_lines_next(r->in, &r->line, &len, err);
}

/* ---- header ------------------------------------------------------------------------------ */

/* Reads line 1 as exactly n non-negative integers; `names` says what they are ("rows cols"). */
static int read_header(rd *r, int n, const char *names, const char *hint, int64_t *out, elmo_err *err) {
  int got = rd_next(r, err);
  if (got < 0) return -got;
  if (got == 0) return bad_at(r, 1, err, "empty file (expected a header line \"%s\")", names);
  char *p = r->line;
  int count = 0;
  for (;;) {
    while (is_space(*p)) p++;
    if (!*p) break;
    char *tok = p;
    uint64_t v = 0;
    if (count < n && (!parse_u64(&p, &v) || !is_end(*p) || v > (uint64_t)INT64_MAX))
      return BAD(r, err, "header field %d \"%.*s\" is not a non-negative integer (expected \"%s\")",
                 count + 1, show_len(tok), tok, names);
    if (count < n) out[count] = (int64_t)v;
    p += strcspn(p, " \t");
    count++;
  }
  if (count != n)
    return BAD(r, err, "header has %d fields (expected %d: \"%s\")%s", count, n, names, hint);
  return ELMO_OK;
}

/* ---- rows -------------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static void insertion_sort_u64(uint64_t *a, size_t n) {
  for (size_t i = 1; i < n; i++) {
    uint64_t k = a[i];
    size_t j = i;
    for (; j > 0 && a[j - 1] > k; j--) a[j] = a[j - 1];
    a[j] = k;
  }
}

/* Sorts a row's packed keys. Rows are short (top-100 predictions, a few labels), where an
 * inlined quicksort is several times faster than qsort's callbacks; long rows use qsort. */
static void sort_u64(uint64_t *a, size_t n) {
  while (n > 24) {
    if (n > 4096) {
      qsort(a, n, sizeof *a, cmp_u64);
      return;
    }
    uint64_t x = a[0], y = a[n / 2], z = a[n - 1];
    uint64_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
    size_t i = 0, j = n - 1;
    for (;;) {   /* Hoare partition: a[0, j] <= pivot <= a[j + 1, n) */
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i >= j) break;
      uint64_t t = a[i];
      a[i++] = a[j];
      a[j--] = t;
    }
    size_t left = j + 1;
    if (left < n - left) {   /* recurse into the smaller side, loop on the larger */
      sort_u64(a, left);
      a += left;
      n -= left;
    } else {
      sort_u64(a + left, n - left);
      n = left;
    }
  }
  insertion_sort_u64(a, n);
}

/* Sorts the builder's current row [start, nnz) by index and rejects repeated indices. */
static int sort_row(rd *r, elmo_csr_builder *b, int64_t start, const char *what, elmo_err *err) {
  int32_t *idx = b->m.indices + start;
  float *val = b->m.data + start;
  size_t n = (size_t)(b->nnz - start);
  size_t i = 1;
  while (i < n && idx[i - 1] < idx[i]) i++;
  if (i >= n) return ELMO_OK;                      /* already strictly increasing */
  elmo_grow((void **)&r->scratch, &r->scratch_cap, n, sizeof(uint64_t));
  for (size_t j = 0; j < n; j++) {
    uint32_t bits;
    memcpy(&bits, &val[j], sizeof bits);
    r->scratch[j] = (uint64_t)(uint32_t)idx[j] << 32 | bits;
  }
  sort_u64(r->scratch, n);
  for (size_t j = 0; j < n; j++) {
    idx[j] = (int32_t)(r->scratch[j] >> 32);
    uint32_t bits = (uint32_t)r->scratch[j];
    memcpy(&val[j], &bits, sizeof bits);
    if (j > 0 && idx[j] == idx[j - 1])
      return BAD(r, err, "%s %d appears twice in this row (expected each %s at most once per row)", what,
                 (int)idx[j], what);
  }
  return ELMO_OK;
}

/* Parses "idx:val" pairs separated by spaces/tabs from p into the builder's current row,
 * checking 0 <= idx < cols; sorts the row. `what` names the index ("label", "feature"). */
static int parse_pairs(rd *r, char *p, int64_t cols, elmo_csr_builder *b, const char *what, elmo_err *err) {
  int64_t start = b->nnz;
  for (;;) {
    while (is_space(*p)) p++;
    if (!*p) break;
    char *tok = p;
    uint64_t idx;
    float v;
    if (!parse_u64(&p, &idx) || *p != ':')
      return BAD(r, err, "bad pair \"%.*s\" (expected %s:value with a non-negative integer %s)",
                 show_len(tok), tok, what, what);
    p++;
    if (!parse_float(&p, &v) || !is_end(*p))
      return BAD(r, err, "bad value in \"%.*s\" (expected %s:value with a decimal number value)",
                 show_len(tok), tok, what);
    if (idx >= (uint64_t)cols)
      return BAD(r, err, "%s %.*s >= %lld declared in the header (expected 0 <= %s < %lld)", what,
                 (int)strcspn(tok, ":"), tok, (long long)cols, what, (long long)cols);
    if (!isfinite(v))
      return BAD(r, err, "value in \"%.*s\" is out of float range (expected a finite number)",
                 show_len(tok), tok);
    elmo_csrb_push(b, (int32_t)idx, v);
  }
  return sort_row(r, b, start, what, err);
}

/* Checks the header's column count fits int32 indices. */
static int check_cols(rd *r, int64_t cols, const char *name, elmo_err *err) {
  if (cols > MAX_COLS)
    return bad_at(r, 1, err, "header %s %lld is too large (expected at most %lld)", name, (long long)cols,
                  (long long)MAX_COLS);
  return ELMO_OK;
}

static int too_many_rows(rd *r, int64_t rows, elmo_err *err) {
  return BAD(r, err,
             "more rows than the %lld declared in the header on line 1 (expected exactly %lld lines "
             "after the header; an empty line is an empty row)",
             (long long)rows, (long long)rows);
}

static int too_few_rows(rd *r, int64_t found, int64_t rows, elmo_err *err) {
  return bad_at(r, elmo_lines_lineno(r->in) + 1, err,
                "file ends after %lld rows (expected %lld rows as declared in the header on line 1)",
                (long long)found, (long long)rows);
}

/* ---- sparse text ------------------------------------------------------------------------- */

static int read_sparse_rows(rd *r, int64_t rows, elmo_csr_builder *b, elmo_err *err) {
  int got;
  while ((got = rd_next(r, err)) == 1) {
    if (b->m.rows == rows) return too_many_rows(r, rows, err);
    int rc = parse_pairs(r, r->line, b->m.cols, b, "index", err);
    if (rc != ELMO_OK) return rc;
    elmo_csrb_end_row(b);
  }
  if (got < 0) return -got;
  if (b->m.rows < rows) return too_few_rows(r, b->m.rows, rows, err);
  return ELMO_OK;
}

int elmo_read_sparse(const char *path, elmo_csr *out, elmo_err *err) {
  memset(out, 0, sizeof *out);
  rd r;
  int rc = rd_open(&r, path, err);
  if (rc != ELMO_OK) return rc;
  int64_t hdr[2];   /* rows, cols */
  rc = read_header(&r, 2, "rows cols",
                   " (a 3-field header \"N D L\" is the XMC BoW format, which has its own reader)", hdr, err);
  if (rc == ELMO_OK) rc = check_cols(&r, hdr[1], "cols", err);
  if (rc == ELMO_OK) {
    elmo_csr_builder b;
    elmo_csrb_init(&b, hdr[1]);
    rc = read_sparse_rows(&r, hdr[0], &b, err);
    elmo_csrb_finish(&b, out);
    if (rc != ELMO_OK) elmo_csr_free(out);
  }
  rd_close(&r);
  return rc;
}

/* ---- BoW --------------------------------------------------------------------------------- */

/* Parses the label list "l1,l2,..." at the start of p into Y's current row; advances *pp. */
static int parse_labels(rd *r, char **pp, elmo_csr_builder *y, elmo_err *err) {
  char *p = *pp, *tok = p;
  int64_t start = y->nnz;
  for (;;) {
    uint64_t l;
    if (!parse_u64(&p, &l) || (*p != ',' && !is_end(*p)))
      return BAD(r, err, "bad label list \"%.*s\" (expected comma-separated non-negative integers "
                 "such as 3,17,42, then feature:value pairs)", show_len(tok), tok);
    if (l >= (uint64_t)y->m.cols)
      return BAD(r, err, "label %llu >= %lld declared in the header (expected 0 <= label < %lld)",
                 (unsigned long long)l, (long long)y->m.cols, (long long)y->m.cols);
    elmo_csrb_push(y, (int32_t)l, 1.0f);
    if (*p != ',') break;
    p++;
  }
  *pp = p;
  return sort_row(r, y, start, "label", err);
}

/* One BoW line. A first token with ':' is a feature (no labels), as sklearn reads it. */
static int parse_bow_line(rd *r, elmo_csr_builder *x, elmo_csr_builder *y, elmo_err *err) {
  char *p = r->line;
  if (*p && !is_space(*p)) {
    size_t n = strcspn(p, " \t");
    if (!memchr(p, ':', n)) {
      int rc = parse_labels(r, &p, y, err);
      if (rc != ELMO_OK) return rc;
    }
  }
  int rc = parse_pairs(r, p, x->m.cols, x, "feature", err);
  if (rc != ELMO_OK) return rc;
  elmo_csrb_end_row(x);
  elmo_csrb_end_row(y);
  return ELMO_OK;
}

static int read_bow_rows(rd *r, int64_t rows, elmo_csr_builder *x, elmo_csr_builder *y, elmo_err *err) {
  int got;
  while ((got = rd_next(r, err)) == 1) {
    if (x->m.rows == rows) return too_many_rows(r, rows, err);
    int rc = parse_bow_line(r, x, y, err);
    if (rc != ELMO_OK) return rc;
  }
  if (got < 0) return -got;
  if (x->m.rows < rows) return too_few_rows(r, x->m.rows, rows, err);
  return ELMO_OK;
}

int elmo_read_bow(const char *path, elmo_csr *X, elmo_csr *Y, elmo_err *err) {
  memset(X, 0, sizeof *X);
  memset(Y, 0, sizeof *Y);
  rd r;
  int rc = rd_open(&r, path, err);
  if (rc != ELMO_OK) return rc;
  int64_t hdr[3];   /* N, D, L */
  rc = read_header(&r, 3, "N D L", " (a 2-field header \"rows cols\" is the sparse matrix format)", hdr, err);
  if (rc == ELMO_OK) rc = check_cols(&r, hdr[1], "D", err);
  if (rc == ELMO_OK) rc = check_cols(&r, hdr[2], "L", err);
  if (rc == ELMO_OK) {
    elmo_csr_builder x, y;
    elmo_csrb_init(&x, hdr[1]);
    elmo_csrb_init(&y, hdr[2]);
    rc = read_bow_rows(&r, hdr[0], &x, &y, err);
    elmo_csrb_finish(&x, X);
    elmo_csrb_finish(&y, Y);
    if (rc != ELMO_OK) {
      elmo_csr_free(X);
      elmo_csr_free(Y);
    }
  }
  rd_close(&r);
  return rc;
}

/* ---- filter files ------------------------------------------------------------------------ */

typedef struct pairs {
  int64_t *doc;    /* [n] */
  int32_t *lab;    /* [n] */
  int64_t n;
  size_t cap_doc, cap_lab;
} pairs;

/* Parses "doc label" from the current line (a blank line is skipped: returns 0 pairs). */
static int parse_filter_line(rd *r, int64_t rows, int64_t cols, pairs *ps, elmo_err *err) {
  char *p = r->line;
  uint64_t v[2];
  int count = 0;
  for (;;) {
    while (is_space(*p)) p++;
    if (!*p) break;
    char *tok = p;
    if (count < 2 && (!parse_u64(&p, &v[count]) || !is_end(*p)))
      return BAD(r, err, "field %d \"%.*s\" is not a non-negative integer (expected \"doc label\")", count + 1,
                 show_len(tok), tok);
    p += strcspn(p, " \t");
    count++;
  }
  if (count == 0) return ELMO_OK;
  if (count != 2) return BAD(r, err, "line has %d fields (expected 2: \"doc label\")", count);
  uint64_t max_doc = rows >= 0 ? (uint64_t)rows : (uint64_t)INT32_MAX + 1;
  uint64_t max_lab = cols >= 0 && cols < MAX_COLS ? (uint64_t)cols : (uint64_t)MAX_COLS;
  if (v[0] >= max_doc)
    return BAD(r, err, "doc %llu out of range (expected 0 <= doc < %llu)", (unsigned long long)v[0],
               (unsigned long long)max_doc);
  if (v[1] >= max_lab)
    return BAD(r, err, "label %llu out of range (expected 0 <= label < %llu)", (unsigned long long)v[1],
               (unsigned long long)max_lab);
  elmo_grow((void **)&ps->doc, &ps->cap_doc, (size_t)ps->n + 1, sizeof(int64_t));
  elmo_grow((void **)&ps->lab, &ps->cap_lab, (size_t)ps->n + 1, sizeof(int32_t));
  ps->doc[ps->n] = (int64_t)v[0];
  ps->lab[ps->n] = (int32_t)v[1];
  ps->n++;
  return ELMO_OK;
}

static int cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

/* Counting sort of the pairs by doc into a CSR, then per row: sort labels, drop repeats. */
static void pairs_to_csr(const pairs *ps, int64_t rows, int64_t cols, elmo_csr *out) {
  out->rows = rows;
  out->cols = cols;
  out->indptr = elmo_calloc((size_t)rows + 1, sizeof(int64_t));
  out->indices = elmo_malloc(sizeof(int32_t) * (size_t)ps->n);
  for (int64_t i = 0; i < ps->n; i++) out->indptr[ps->doc[i] + 1]++;
  for (int64_t d = 0; d < rows; d++) out->indptr[d + 1] += out->indptr[d];
  int64_t *fill = elmo_malloc(sizeof(int64_t) * (size_t)(rows + 1));
  memcpy(fill, out->indptr, sizeof(int64_t) * (size_t)(rows + 1));
  for (int64_t i = 0; i < ps->n; i++) out->indices[fill[ps->doc[i]]++] = ps->lab[i];
  free(fill);
  int64_t w = 0;   /* write position after dropping repeats */
  for (int64_t d = 0; d < rows; d++) {
    int64_t s = out->indptr[d], e = out->indptr[d + 1];
    qsort(out->indices + s, (size_t)(e - s), sizeof(int32_t), cmp_i32);
    out->indptr[d] = w;
    for (int64_t i = s; i < e; i++)
      if (i == s || out->indices[i] != out->indices[i - 1]) out->indices[w++] = out->indices[i];
  }
  out->indptr[rows] = w;
  out->data = elmo_malloc(sizeof(float) * (size_t)w);
  for (int64_t i = 0; i < w; i++) out->data[i] = 1.0f;
}

int elmo_read_filter(const char *path, int64_t rows, int64_t cols, elmo_csr *out, elmo_err *err) {
  memset(out, 0, sizeof *out);
  rd r;
  int rc = rd_open(&r, path, err);
  if (rc != ELMO_OK) return rc;
  pairs ps = {0};
  int got = 0;
  while (rc == ELMO_OK && (got = rd_next(&r, err)) == 1) rc = parse_filter_line(&r, rows, cols, &ps, err);
  if (rc == ELMO_OK && got < 0) rc = -got;
  if (rc == ELMO_OK) {
    int64_t n_rows = rows, n_cols = cols;
    if (n_rows < 0 || n_cols < 0) {
      int64_t max_doc = -1, max_lab = -1;
      for (int64_t i = 0; i < ps.n; i++) {
        if (ps.doc[i] > max_doc) max_doc = ps.doc[i];
        if (ps.lab[i] > max_lab) max_lab = ps.lab[i];
      }
      if (n_rows < 0) n_rows = max_doc + 1;
      if (n_cols < 0) n_cols = max_lab + 1;
    }
    pairs_to_csr(&ps, n_rows, n_cols, out);
  }
  free(ps.doc);
  free(ps.lab);
  rd_close(&r);
  return rc;
}

/* ---- top-k writer ------------------------------------------------------------------------ */

/* Output through one buffer into a FILE* or, for a ".gz" path, a gzip stream on the same file. */
typedef struct sink {
  char *buf;      /* [SINK_CAP] */
  size_t len;
  FILE *fp;
  gzFile gz;      /* NULL for plain output */
  int failed;
} sink;

enum { SINK_CAP = 1 << 20, SINK_ROOM = 1 << 12 };

static void sink_flush(sink *s) {
  if (s->len == 0 || s->failed) {
    s->len = 0;
    return;
  }
  if (s->gz) s->failed = gzwrite(s->gz, s->buf, (unsigned)s->len) != (int)s->len;
  else s->failed = fwrite(s->buf, 1, s->len, s->fp) != s->len;
  s->len = 0;
}

/* Makes room for at least SINK_ROOM bytes. */
static char *sink_room(sink *s) {
  if (SINK_CAP - s->len < SINK_ROOM) sink_flush(s);
  return s->buf + s->len;
}

static int put_i64(char *o, int64_t v) {
  char tmp[24];
  int n = 0, k = 0;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do tmp[n++] = (char)('0' + u % 10); while ((u /= 10) != 0);
  if (v < 0) o[k++] = '-';
  while (n > 0) o[k++] = tmp[--n];
  return k;
}

/* round(|f| * 10^s) to nearest, ties to even, computed exactly: f = M * 2^E, M < 2^24, so
 * M * 5^s fits in 64 bits for s <= 12. */
static uint64_t scaled_digits(uint32_t M, int E, int s) {
  uint64_t n = M;
  for (int i = 0; i < s; i++) n *= 5;
  int sh = E + s;
  if (sh >= 0) return n << sh;
  int k = -sh;
  if (k >= 63) return 0;
  uint64_t q = n >> k, rem = n & ((1ull << k) - 1), half = 1ull << (k - 1);
  if (rem > half || (rem == half && (q & 1))) q++;
  return q;
}

/* Writes 9 significant digits q (10^8 <= q < 10^9) with decimal exponent x in %g's fixed
 * style (-4 <= x <= 8): trailing zeros and a bare '.' removed. */
static int put_fixed(char *o, uint64_t q, int x) {
  char dig[9];
  for (int i = 8; i >= 0; i--, q /= 10) dig[i] = (char)('0' + q % 10);
  int n = 0, last = 8;
  while (last > x && last >= 0 && dig[last] == '0') last--;
  if (x < 0) {
    o[n++] = '0';
    o[n++] = '.';
    for (int i = 0; i < -x - 1; i++) o[n++] = '0';
    for (int i = 0; i <= last; i++) o[n++] = dig[i];
    return n;
  }
  for (int i = 0; i <= x; i++) o[n++] = dig[i];
  if (last > x) {
    o[n++] = '.';
    for (int i = x + 1; i <= last; i++) o[n++] = dig[i];
  }
  return n;
}

/* Formats f exactly as printf("%.9g") would; a fast exact path for the usual range. */
static int put_float9(char *o, float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  uint32_t be = (bits >> 23) & 0xFF;
  double a = fabs((double)f);
  if (a >= 1e-4 && a < 1e9 && be != 0 && be != 0xFF) {
    uint32_t M = (bits & 0x7FFFFF) | 0x800000;
    int E = (int)be - 150;
    int x = (int)floor(log10(a));
    for (int tries = 0; tries < 3 && x >= -4 && x <= 8; tries++) {
      uint64_t q = scaled_digits(M, E, 8 - x);
      if (q >= 1000000000ull) x++;
      else if (q < 100000000ull) x--;
      else {
        int n = 0;
        if (bits >> 31) o[n++] = '-';
        return n + put_fixed(o + n, q, x);
      }
    }
  }
  return snprintf(o, 32, "%.9g", (double)f);
}

static int write_row(sink *s, int k, const int32_t *lab, const float *sc, int64_t num_labels, int64_t row,
                     const char *path, elmo_err *err) {
  int first = 1;
  for (int j = 0; j < k; j++) {
    if (lab[j] < 0) continue;
    if (lab[j] >= num_labels)
      return elmo_fail(err, ELMO_EINPUT, "%s: row %lld: label %d >= num_labels %lld (expected 0 <= label < %lld)",
                       path, (long long)row, (int)lab[j], (long long)num_labels, (long long)num_labels);
    if (!isfinite(sc[j]))
      return elmo_fail(err, ELMO_ERUNTIME, "%s: row %lld: score of label %d is not finite (%g)", path,
                       (long long)row, (int)lab[j], (double)sc[j]);
    char *o = sink_room(s);
    int n = 0;
    if (!first) o[n++] = ' ';
    n += put_i64(o + n, lab[j]);
    o[n++] = ':';
    n += put_float9(o + n, sc[j]);
    s->len += (size_t)n;
    first = 0;
  }
  sink_room(s)[0] = '\n';
  s->len++;
  return ELMO_OK;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int write_all(sink *s, const char *path, int64_t rows, int64_t num_labels, int k, const int32_t *labels,
                     const float *scores, elmo_err *err) {
  char *o = sink_room(s);
  int n = put_i64(o, rows);
  o[n++] = ' ';
  n += put_i64(o + n, num_labels);
  o[n++] = '\n';
  s->len += (size_t)n;
  for (int64_t r = 0; r < rows; r++) {
    int rc = write_row(s, k, labels + r * k, scores + r * k, num_labels, r, path, err);
    if (rc != ELMO_OK) return rc;
  }
  sink_flush(s);
  return ELMO_OK;
}

int elmo_write_topk(const char *path, int64_t rows, int64_t num_labels, int k, const int32_t *labels,
                    const float *scores, elmo_err *err) {
  if (rows < 0 || num_labels < 0 || k < 0)
    return elmo_fail(err, ELMO_EINPUT, "%s: bad top-k shape rows=%lld num_labels=%lld k=%d (expected >= 0)",
                     path, (long long)rows, (long long)num_labels, k);
  elmo_outfile of;
  int rc = elmo_open_out(&of, path, err);
  if (rc != ELMO_OK) return rc;
  sink s = {.buf = elmo_malloc(SINK_CAP), .fp = of.fp};
  if (ends_with(path, ".gz")) {
    fflush(s.fp);
    s.gz = gzdopen(dup(fileno(s.fp)), "wb1");
    if (!s.gz) s.failed = 1;
  }
  rc = write_all(&s, path, rows, num_labels, k, labels, scores, err);
  if (s.gz && gzclose(s.gz) != Z_OK) s.failed = 1;
  free(s.buf);
  if (rc == ELMO_OK && s.failed) rc = elmo_fail(err, ELMO_ERUNTIME, "%s: write failed (disk full?)", path);
  if (rc != ELMO_OK) {
    elmo_abort_file(&of);
    return rc;
  }
  return elmo_commit(&of, err);
}
