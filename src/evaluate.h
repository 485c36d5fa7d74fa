/* evaluate.h: model evaluation on a split: top-k per row through the backend, then metrics
 * with the foundation's code (pyxclib semantics). */
#ifndef ELMO_EVALUATE_H
#define ELMO_EVALUATE_H

#include "backend.h"
#include "dataset.h"
#include "metrics.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_eval_result {
  elmo_metrics metrics;
  int k;                /* ranked labels kept per row */
  int32_t *topk;        /* [n, k] */
  float *scores;        /* [n, k] */
  double seconds;
} elmo_eval_result;

/* Evaluates split s (filter: CSR over s's rows or NULL). keep_k >= cfg->k ranks are kept
 * (for writing predictions). inv_prop: [L]. */
int elmo_evaluate(const elmo_backend *be, elmo_model *m, const elmo_config *cfg, const elmo_split *s,
                  const elmo_csr *filter, const double *inv_prop, int keep_k, elmo_eval_result *out, elmo_err *err);
void elmo_eval_result_free(elmo_eval_result *r);
/* A metric by name ("P@1", "nDCG@3", "PSP@5", ...); NAN if unknown. */
double elmo_metric_by_name(const elmo_metrics *m, const char *name);
/* Propensity parameters: cfg->A/B when >= 0, else by family of the data directory name. */
void elmo_eval_AB(const elmo_config *cfg, double *A, double *B);

#ifdef __cplusplus
}
#endif

#endif
