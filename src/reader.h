/* reader.h: XMC repository file formats (see ../shared/docs/xmc-formats-metrics.md §3).
 * All readers stream through gzline (plain or .gz), check everything against the header and
 * fail with ELMO_EINPUT and "path:line: what is wrong (what was expected)". */
#ifndef ELMO_READER_H
#define ELMO_READER_H

#include <stdint.h>
#include "common.h"
#include "csr.h"

#ifdef __cplusplus
extern "C" {
#endif


/* Sparse matrix text: header "rows cols", then one line per row of "idx:val" pairs, 0-based;
 * an empty line is an empty row. Used for trn_X_Y.txt, tst_X_Y.txt and prediction files. */
int elmo_read_sparse(const char *path, elmo_csr *out, elmo_err *err);

/* XMC repository BoW format: header "N D L", lines "l1,l2 f:v f:v"; a line starting with a
 * space has no labels. X: [N, D] features, Y: [N, L] labels (values 1). */
int elmo_read_bow(const char *path, elmo_csr *X, elmo_csr *Y, elmo_err *err);

/* Filter file: "doc label" pairs, one per line, 0-based, no header. rows/cols bound the ids
 * (pass -1 to skip a check). Returned as a CSR with value 1 per pair, rows x cols. */
int elmo_read_filter(const char *path, int64_t rows, int64_t cols, elmo_csr *out, elmo_err *err);

/* Top-k predictions as sparse text: header "rows num_labels", each line "label:score" pairs
 * in rank order, original label ids. labels[r*k + j] < 0 marks padding (skipped).
 * Written to a temp name and renamed. */
int elmo_write_topk(const char *path, int64_t rows, int64_t num_labels, int k, const int32_t *labels,
                    const float *scores, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
