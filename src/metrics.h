/* metrics.h: XMC metrics with pyxclib's semantics (../shared/docs/xmc-formats-metrics.md §1).
 * P@k, nDCG@k, PSP@k, PSnDCG@k (normalised, ratios of dataset sums), R@k, PSR@k.
 * Rows without labels count 0 and stay in the mean unless remove_invalid. */
#ifndef ELMO_METRICS_H
#define ELMO_METRICS_H

#include <stdint.h>
#include "common.h"
#include "csr.h"

#ifdef __cplusplus
extern "C" {
#endif


#define ELMO_MAX_K 100

typedef struct elmo_metrics {
  int k;
  double P[ELMO_MAX_K], nDCG[ELMO_MAX_K], PSP[ELMO_MAX_K], PSnDCG[ELMO_MAX_K], R[ELMO_MAX_K], PSR[ELMO_MAX_K];
} elmo_metrics;

/* w[l] = 1 + C (N_l + B)^-A, C = (ln N - 1)(B + 1)^A, N = train rows, N_l = label frequency. */
void elmo_inv_propensity(const elmo_csr *train_Y, double A, double B, double *w /* [train_Y->cols] */);
/* Renee/ELMO label-augmented variant: every label's frequency +1 and N + L rows (--psp-train-aug). */
void elmo_inv_propensity_aug(const elmo_csr *train_Y, double A, double B, double *w /* [train_Y->cols] */);
/* The formula from label frequencies counts[L] and N training rows. */
void elmo_inv_propensity_counts(const int64_t *counts, int64_t L, int64_t N, double A, double B,
                                double *w /* [L] */);

/* Top-k of sparse predictions (only stored entries ranked), filter pairs (CSR, may be NULL)
 * removed first, ties broken by the lower label index, NaN ranked as -inf.
 * topk[r*k + j] = label, -1 = padding; scores (may be NULL) [rows*k] the matching scores,
 * -inf for padding. Any k >= 1 (k <= 16 and larger k take different, equally exact paths). */
void elmo_topk_from_csr(const elmo_csr *pred, const elmo_csr *filter, int k, int32_t *topk, float *scores);

/* Merges n ranked lists of k per row into one: lists [n][rows][k] (labels of disjoint label sets, -1 =
 * empty, each list ranked by score then lower label), out [rows][k] the k best of their union by score,
 * ties to the lower label, empty entries (-1, score -inf) last: the top-k of labels sharded over GPUs. */
void elmo_topk_merge_lists(int n, int64_t rows, int k, const int32_t *lists, const float *list_scores, int32_t *out,
                           float *out_scores);

/* Metrics @1..k from ranked labels [truth->rows * k] (-1 = padding) against the ground truth
 * (binarised: value != 0 is a label). w: inverse propensities [truth->cols] (NULL: PS metrics
 * are 0). remove_invalid: rows without labels are dropped instead of counting 0.
 * k > ELMO_MAX_K: metrics @1..ELMO_MAX_K only (topk keeps its stride k). */
void elmo_metrics_compute(const elmo_csr *truth, const int32_t *topk, int k, const double *w,
                          int remove_invalid, elmo_metrics *out);

/* pyxclib xc_metrics.format style: lines "P@k: 50.00,50.00,..." etc. to a FILE*. */
void elmo_metrics_print(const elmo_metrics *m, void *fp /* FILE* */);
/* {"P@1":0.5,...,"nDCG@1":...,"PSP@1":...,"PSnDCG@1":...,"R@1":...,"PSR@1":...}; caller frees. */
char *elmo_metrics_json(const elmo_metrics *m);

#ifdef __cplusplus
}
#endif

#endif
