/* evaluate.c: top-k prediction over a split in batches, then metrics. */
#include "evaluate.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

void elmo_eval_AB(const elmo_config *cfg, double *A, double *B) {
  elmo_propensity_defaults(cfg->data_dir, A, B);
  if (cfg->A >= 0) *A = cfg->A;
  if (cfg->B >= 0) *B = cfg->B;
}

int elmo_evaluate(const elmo_backend *be, elmo_model *m, const elmo_config *cfg, const elmo_split *s,
                  const elmo_csr *filter, const double *inv_prop, int keep_k, elmo_eval_result *out, elmo_err *err) {
  double t0 = elmo_now();
  memset(out, 0, sizeof *out);
  int k = keep_k > (int)cfg->k ? keep_k : (int)cfg->k;
  out->k = k;
  out->topk = elmo_malloc(sizeof(int32_t) * (size_t)(s->n * k));
  out->scores = elmo_malloc(sizeof(float) * (size_t)(s->n * k));
  int64_t bs = cfg->batch_size;
  int64_t *rows = elmo_malloc(sizeof(int64_t) * (size_t)bs);
  elmo_batch_buf bb = {0};
  int rc = ELMO_OK;
  for (int64_t r0 = 0; r0 < s->n && !rc; r0 += bs) {
    int64_t B = s->n - r0 < bs ? s->n - r0 : bs;
    for (int64_t i = 0; i < B; i++) rows[i] = r0 + i;
    elmo_batch b;
    elmo_batch_gather(s, rows, B, &bb, &b);
    rc = be->predict(m, &b, k, filter && filter->indptr ? filter : NULL, out->topk + r0 * k, out->scores + r0 * k,
                     err);
  }
  free(rows);
  elmo_batch_buf_free(&bb);
  if (rc) {
    elmo_eval_result_free(out);
    return rc;
  }
  /* metrics over the first cfg->k ranks */
  int mk = (int)cfg->k;
  int32_t *top = elmo_malloc(sizeof(int32_t) * (size_t)(s->n * mk));
  for (int64_t r = 0; r < s->n; r++) memcpy(top + r * mk, out->topk + r * k, sizeof(int32_t) * (size_t)mk);
  elmo_metrics_compute(&s->Y, top, mk, inv_prop, cfg->remove_invalid, &out->metrics);
  free(top);
  out->seconds = elmo_now() - t0;
  return ELMO_OK;
}

void elmo_eval_result_free(elmo_eval_result *r) {
  ELMO_FREE(r->topk);
  ELMO_FREE(r->scores);
}

double elmo_metric_by_name(const elmo_metrics *m, const char *name) {
  static const struct { const char *p; size_t off; } tab[] = {
    {"PSnDCG@", offsetof(elmo_metrics, PSnDCG)}, {"nDCG@", offsetof(elmo_metrics, nDCG)},
    {"PSP@", offsetof(elmo_metrics, PSP)}, {"PSR@", offsetof(elmo_metrics, PSR)},
    {"P@", offsetof(elmo_metrics, P)}, {"R@", offsetof(elmo_metrics, R)},
  };
  for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
    size_t n = strlen(tab[i].p);
    if (!strncmp(name, tab[i].p, n)) {
      int k = atoi(name + n);
      if (k < 1 || k > m->k) return NAN;
      return ((const double *)((const char *)m + tab[i].off))[k - 1];
    }
  }
  return NAN;
}
