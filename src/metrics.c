/* metrics.c: XMC metrics with pyxclib's semantics (../shared/docs/xmc-formats-metrics.md §1).
 *
 * Pipeline: inverse propensities from the train label matrix (§1.5); top-k per row of sparse
 * predictions with filter pairs removed first (§1.2, §2); then P, nDCG, PSP, PSnDCG, R, PSR @1..k
 * (§1.3-§1.8), the PS metrics as ratios of dataset sums. Ground truth is binarised (value != 0).
 * Ties are broken by the lower label index; NaN scores rank as -inf. Top-k per row works on
 * integer keys (score, then label): a sorted insertion run for k <= 16, else quickselect + sort. */
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------- inverse propensity ---------- */

void elmo_inv_propensity_counts(const int64_t *counts, int64_t L, int64_t N, double A, double B,
                                double *w) {
  double C = (log((double)N) - 1.0) * pow(B + 1.0, A);
  for (int64_t l = 0; l < L; l++) w[l] = 1.0 + C * pow((double)counts[l] + B, -A);
}

static void inv_propensity_impl(const elmo_csr *train_Y, double A, double B, int aug, double *w) {
  int64_t L = train_Y->cols;
  int64_t *counts = elmo_malloc(sizeof(int64_t) * (size_t)(L ? L : 1)); /* [L] */
  elmo_csr_col_counts(train_Y, counts);
  if (aug)
    for (int64_t l = 0; l < L; l++) counts[l] += 1;
  elmo_inv_propensity_counts(counts, L, train_Y->rows + (aug ? L : 0), A, B, w);
  free(counts);
}

void elmo_inv_propensity(const elmo_csr *train_Y, double A, double B, double *w) {
  inv_propensity_impl(train_Y, A, B, 0, w);
}

void elmo_inv_propensity_aug(const elmo_csr *train_Y, double A, double B, double *w) {
  inv_propensity_impl(train_Y, A, B, 1, w);
}

/* ---------- top-k ---------- */

/* A candidate as one integer key, larger = ranked first: the score mapped to an order-preserving
 * uint32 in the high half (NaN as -inf, -0 as +0), ~label in the low half so that among equal
 * scores the lower label wins. */
static inline uint64_t rank_key(float s, int32_t label) {
  if (isnan(s)) s = -INFINITY;
  if (s == 0.0f) s = 0.0f;
  uint32_t b;
  memcpy(&b, &s, sizeof b);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return ((uint64_t)b << 32) | (uint32_t)~(uint32_t)label;
}

static inline int32_t key_label(uint64_t key) { return (int32_t)~(uint32_t)key; }

static inline float key_score(uint64_t key) {
  uint32_t b = (uint32_t)(key >> 32);
  b = (b & 0x80000000u) ? (b & 0x7FFFFFFFu) : ~b;
  float s;
  memcpy(&s, &b, sizeof s);
  return s;
}

static inline void swap_keys(uint64_t *a, uint64_t *b) { uint64_t t = *a; *a = *b; *b = t; }

/* Partitions a[lo..hi] (inclusive) around the median of three: larger keys left of the
 * returned pivot position, smaller right. */
static size_t partition_desc(uint64_t *a, size_t lo, size_t hi) {
  size_t mid = lo + (hi - lo) / 2;
  if (a[mid] > a[lo]) swap_keys(&a[mid], &a[lo]);
  if (a[hi] > a[lo]) swap_keys(&a[hi], &a[lo]);
  if (a[mid] > a[hi]) swap_keys(&a[mid], &a[hi]); /* a[hi] = median */
  uint64_t p = a[hi];
  size_t i = lo;
  for (size_t j = lo; j < hi; j++)
    if (a[j] > p) swap_keys(&a[i++], &a[j]);
  swap_keys(&a[i], &a[hi]);
  return i;
}

static void insertion_sort_desc(uint64_t *a, size_t n) {
  for (size_t i = 1; i < n; i++) {
    uint64_t x = a[i];
    size_t j = i;
    for (; j > 0 && a[j - 1] < x; j--) a[j] = a[j - 1];
    a[j] = x;
  }
}

/* Sorts descending: quicksort, recursing into the smaller side, insertion sort below 16. */
static void sort_desc(uint64_t *a, size_t n) {
  while (n > 16) {
    size_t p = partition_desc(a, 0, n - 1);
    if (p < n - 1 - p) {
      sort_desc(a, p);
      a += p + 1;
      n -= p + 1;
    } else {
      sort_desc(a + p + 1, n - 1 - p);
      n = p;
    }
  }
  insertion_sort_desc(a, n);
}

/* Moves the k largest of a[0..n) (k < n) to a[0..k), in no particular order (quickselect). */
static void select_top(uint64_t *a, size_t n, size_t k) {
  size_t lo = 0, hi = n - 1;
  while (lo < hi) {
    size_t p = partition_desc(a, lo, hi);
    if (p == k - 1) return;
    if (p > k - 1) hi = p - 1;
    else lo = p + 1;
  }
}

/* Small k: keeps a sorted run of the best k keys, rejecting most candidates with one compare. */
static size_t top_small(const elmo_csr *pred, int64_t r, const uint8_t *masked, size_t k, uint64_t *buf) {
  size_t m = 0;
  for (int64_t e = pred->indptr[r]; e < pred->indptr[r + 1]; e++) {
    int32_t l = pred->indices[e];
    if (masked && masked[l]) continue;
    uint64_t key = rank_key(pred->data[e], l);
    if (m == k && key <= buf[k - 1]) continue;
    size_t j = m < k ? m++ : k - 1;
    for (; j > 0 && buf[j - 1] < key; j--) buf[j] = buf[j - 1];
    buf[j] = key;
  }
  return m;
}

/* Large k: all candidates, quickselect of the best k, then a sort of those. */
static size_t top_large(const elmo_csr *pred, int64_t r, const uint8_t *masked, size_t k, uint64_t *buf) {
  size_t n = 0;
  for (int64_t e = pred->indptr[r]; e < pred->indptr[r + 1]; e++) {
    int32_t l = pred->indices[e];
    if (!masked || !masked[l]) buf[n++] = rank_key(pred->data[e], l);
  }
  if (n > k) {
    select_top(buf, n, k);
    n = k;
  }
  sort_desc(buf, n);
  return n;
}

/* Ranks one row: the stored entries of pred row r not marked in `masked`, best first.
 * buf holds at least max(k, the row's length) keys. */
static void topk_row(const elmo_csr *pred, int64_t r, const uint8_t *masked, int k, uint64_t *buf,
                     int32_t *topk, float *scores) {
  size_t n = k <= 16 ? top_small(pred, r, masked, (size_t)k, buf) : top_large(pred, r, masked, (size_t)k, buf);
  for (int j = 0; j < k; j++) {
    topk[j] = (size_t)j < n ? key_label(buf[j]) : -1;
    if (scores) scores[j] = (size_t)j < n ? key_score(buf[j]) : -INFINITY;
  }
}

/* Sets (on = 1) or clears (on = 0) the mask bytes of filter row r. */
static void mark_filter_row(const elmo_csr *filter, int64_t r, int64_t cols, uint8_t *mask, uint8_t on) {
  if (!filter || r >= filter->rows) return;
  for (int64_t e = filter->indptr[r]; e < filter->indptr[r + 1]; e++) {
    int32_t l = filter->indices[e];
    if (l >= 0 && l < cols) mask[l] = on;
  }
}

static int64_t max_row_len(const elmo_csr *m) {
  int64_t best = 0;
  for (int64_t r = 0; r < m->rows; r++)
    if (m->indptr[r + 1] - m->indptr[r] > best) best = m->indptr[r + 1] - m->indptr[r];
  return best;
}

void elmo_topk_merge_lists(int n, int64_t rows, int k, const int32_t *lists, const float *list_scores, int32_t *out,
                           float *out_scores) {
  const size_t stride = (size_t)rows * (size_t)k;
  int *at = elmo_calloc((size_t)(n > 0 ? n : 1), sizeof(int));
  for (int64_t r = 0; r < rows; r++) {
    memset(at, 0, sizeof(int) * (size_t)(n > 0 ? n : 1));
    for (int e = 0; e < k; e++) {
      int best = -1;
      int32_t bl = -1;
      float bs = -INFINITY;
      for (int q = 0; q < n; q++) {
        if (at[q] >= k) continue;
        const size_t i = stride * (size_t)q + (size_t)(r * k + at[q]);
        const int32_t l = lists[i];
        if (l < 0) continue;
        const float sc = list_scores[i];
        if (best < 0 || sc > bs || (sc == bs && l < bl)) {
          best = q;
          bl = l;
          bs = sc;
        }
      }
      out[r * k + e] = bl;
      out_scores[r * k + e] = best < 0 ? -INFINITY : bs;
      if (best >= 0) at[best]++;
    }
  }
  free(at);
}

void elmo_topk_from_csr(const elmo_csr *pred, const elmo_csr *filter, int k, int32_t *topk, float *scores) {
  if (k <= 0) return;
  int64_t cap = max_row_len(pred) > k ? max_row_len(pred) : k;
  uint64_t *buf = elmo_malloc(sizeof(uint64_t) * (size_t)cap); /* [max(row length, k)] */
  uint8_t *mask = filter ? elmo_calloc((size_t)(pred->cols ? pred->cols : 1), 1) : NULL; /* [cols] */
  for (int64_t r = 0; r < pred->rows; r++) {
    mark_filter_row(filter, r, pred->cols, mask, 1);
    topk_row(pred, r, mask, k, buf, topk + r * k, scores ? scores + r * k : NULL);
    mark_filter_row(filter, r, pred->cols, mask, 0);
  }
  free(mask);
  free(buf);
}

/* ---------- metrics ---------- */

/* Dataset sums; PS metrics are ratios num/den, the others means over the kept rows. */
typedef struct sums {
  double P[ELMO_MAX_K], nDCG[ELMO_MAX_K], R[ELMO_MAX_K];
  double psp_num[ELMO_MAX_K], psp_den[ELMO_MAX_K];
  double psn_num[ELMO_MAX_K], psn_den[ELMO_MAX_K];
  double psr_num[ELMO_MAX_K], psr_den[ELMO_MAX_K];
  int64_t rows;
} sums;

/* Per-row scratch. */
typedef struct row_ws {
  uint8_t *is_true;  /* [cols] marks of the current row's true labels */
  double *wtrue;     /* [max row length] weights of the true labels, sorted descending */
  size_t cap;
} row_ws;

static int cmp_desc(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x < y) - (x > y);
}

/* Marks row r's distinct nonzero labels; returns |y_r|. Fills ws->wtrue (sorted) when w given. */
static int64_t mark_truth_row(const elmo_csr *truth, int64_t r, const double *w, row_ws *ws) {
  int64_t ny = 0;
  for (int64_t e = truth->indptr[r]; e < truth->indptr[r + 1]; e++) {
    int32_t l = truth->indices[e];
    if (truth->data[e] == 0.0f || ws->is_true[l]) continue;
    ws->is_true[l] = 1;
    if (w) {
      elmo_grow((void **)&ws->wtrue, &ws->cap, (size_t)ny + 1, sizeof(double));
      ws->wtrue[ny] = w[l];
    }
    ny++;
  }
  if (w && ny > 1) qsort(ws->wtrue, (size_t)ny, sizeof(double), cmp_desc);
  return ny;
}

static void unmark_truth_row(const elmo_csr *truth, int64_t r, row_ws *ws) {
  for (int64_t e = truth->indptr[r]; e < truth->indptr[r + 1]; e++) ws->is_true[truth->indices[e]] = 0;
}

/* Adds one row's contributions @1..k; disc[j] = 1 / log2(j + 2). */
static void accumulate_row(const int32_t *ranked, int k, int64_t ny, int64_t cols, const double *w,
                           const double *disc, const row_ws *ws, sums *s) {
  double hits = 0, dcg = 0, z = 0, ps = 0, psdcg = 0, best = 0, bestdcg = 0;
  double inv_ny = 1.0 / (double)(ny > 1 ? ny : 1);
  for (int j = 0; j < k; j++) {
    int32_t l = ranked[j];
    if (l >= 0 && l < cols && ws->is_true[l]) {
      hits += 1;
      dcg += disc[j];
      if (w) { ps += w[l]; psdcg += w[l] * disc[j]; }
    }
    if (j < ny) {
      z += disc[j];
      if (w) { best += ws->wtrue[j]; bestdcg += ws->wtrue[j] * disc[j]; }
    }
    double inv_k = 1.0 / (double)(j + 1);
    s->P[j] += hits * inv_k;
    s->R[j] += hits * inv_ny;
    if (ny == 0) continue; /* z = 0: nDCG and PS terms are 0 */
    s->nDCG[j] += dcg / z;
    s->psp_num[j] += ps * inv_k;
    s->psp_den[j] += best * inv_k;
    s->psn_num[j] += psdcg / z;
    s->psn_den[j] += bestdcg / z;
    s->psr_num[j] += ps * inv_ny;
    s->psr_den[j] += best * inv_ny;
  }
  s->rows++;
}

static double ratio(double num, double den) { return den > 0 ? num / den : 0.0; }

static void finish_metrics(const sums *s, int k, elmo_metrics *out) {
  memset(out, 0, sizeof *out);
  out->k = k;
  double n = (double)s->rows;
  for (int j = 0; j < k; j++) {
    out->P[j] = ratio(s->P[j], n);
    out->nDCG[j] = ratio(s->nDCG[j], n);
    out->R[j] = ratio(s->R[j], n);
    out->PSP[j] = ratio(s->psp_num[j], s->psp_den[j]);
    out->PSnDCG[j] = ratio(s->psn_num[j], s->psn_den[j]);
    out->PSR[j] = ratio(s->psr_num[j], s->psr_den[j]);
  }
}

void elmo_metrics_compute(const elmo_csr *truth, const int32_t *topk, int k, const double *w,
                          int remove_invalid, elmo_metrics *out) {
  int kk = k < ELMO_MAX_K ? k : ELMO_MAX_K; /* metrics @1..kk; topk rows keep stride k */
  sums *s = elmo_calloc(1, sizeof *s);
  row_ws ws = {elmo_calloc((size_t)(truth->cols ? truth->cols : 1), 1), NULL, 0};
  double disc[ELMO_MAX_K];
  for (int j = 0; j < kk; j++) disc[j] = 1.0 / log2((double)j + 2.0);
  for (int64_t r = 0; r < truth->rows; r++) {
    int64_t ny = mark_truth_row(truth, r, w, &ws);
    if (ny > 0 || !remove_invalid) accumulate_row(topk + r * k, kk, ny, truth->cols, w, disc, &ws, s);
    unmark_truth_row(truth, r, &ws);
  }
  finish_metrics(s, kk, out);
  free(ws.is_true);
  free(ws.wtrue);
  free(s);
}

/* ---------- output ---------- */

typedef struct metric_row {
  const char *name;
  const double *v;
} metric_row;

static void metric_rows(const elmo_metrics *m, metric_row rows[6]) {
  rows[0] = (metric_row){"P", m->P};
  rows[1] = (metric_row){"nDCG", m->nDCG};
  rows[2] = (metric_row){"PSP", m->PSP};
  rows[3] = (metric_row){"PSnDCG", m->PSnDCG};
  rows[4] = (metric_row){"R", m->R};
  rows[5] = (metric_row){"PSR", m->PSR};
}

void elmo_metrics_print(const elmo_metrics *m, void *fp) {
  FILE *f = fp;
  metric_row rows[6];
  metric_rows(m, rows);
  for (int i = 0; i < 6; i++) {
    fprintf(f, "%s@k: ", rows[i].name);
    for (int j = 0; j < m->k; j++) fprintf(f, "%s%0.2f", j ? "," : "", rows[i].v[j] * 100.0);
    fputc('\n', f);
  }
}

char *elmo_metrics_json(const elmo_metrics *m) {
  metric_row rows[6];
  metric_rows(m, rows);
  size_t cap = 64 + (size_t)6 * (size_t)m->k * 40, len = 0;
  char *buf = elmo_malloc(cap);
  buf[len++] = '{';
  for (int i = 0; i < 6; i++)
    for (int j = 0; j < m->k; j++) {
      double v = isfinite(rows[i].v[j]) ? rows[i].v[j] : 0.0;
      len += (size_t)snprintf(buf + len, cap - len, "%s\"%s@%d\":%.8f", (i || j) ? "," : "",
                              rows[i].name, j + 1, v);
    }
  snprintf(buf + len, cap - len, "}");
  return buf;
}
