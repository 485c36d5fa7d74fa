/* dataset.h: load a dataset as the config describes it and gather mini-batches.
 * Formats: bow (XMC repository BoW; the sparse encoder, or pseudo-text from data.feature_words
 * for the transformer), text (trn_X.txt + trn_X_Y.txt), jsonl (trn.json with target_ind). */
#ifndef ELMO_DATASET_H
#define ELMO_DATASET_H

#include <stdint.h>
#include "backend.h"
#include "config.h"
#include "csr.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_split {
  int64_t n;
  elmo_csr X;          /* [n, D] BoW features (sparse encoder), else empty */
  int64_t T;           /* tokens per row (transformer) */
  int32_t *ids;        /* [n, T] token ids (transformer), else NULL */
  uint8_t *mask;       /* [n, T] */
  elmo_csr Y;          /* [n, L] labels */
} elmo_split;

typedef struct elmo_dataset {
  elmo_split train, val, test;
  int64_t num_labels, num_features, vocab_size, T;
  elmo_csr filter;     /* [test.n, L] filter pairs, empty when none */
  int64_t *label_freq; /* [L] label counts over all training rows (before the validation split) */
  elmo_csr train_Y_all;/* [N_train, L] all training labels: inverse propensities */
  char *vocab_path;    /* resolved vocab.txt (transformer) or NULL */
  int token_cache_hits;/* splits whose token ids came from output.dir/cache */
} elmo_dataset;

int elmo_dataset_load(elmo_dataset *ds, const elmo_config *cfg, int verbose, elmo_err *err);
void elmo_dataset_free(elmo_dataset *ds);
/* Resolves a data file: dir/name, or dir/name.gz when only that exists. malloc'd. */
char *elmo_data_path(const char *dir, const char *name);

/* Scratch for gathering batches (sized on first use, reused). */
typedef struct elmo_batch_buf {
  int64_t *rows, *x_indptr, *y_indptr;
  int32_t *x_indices, *y_indices;
  float *x_values;
  int32_t *ids;
  uint8_t *mask;
  size_t cap_rows, cap_x, cap_y, cap_tok;
} elmo_batch_buf;

/* Gathers rows[0..B) of split into a batch (pointers into bb or the split). */
void elmo_batch_gather(const elmo_split *s, const int64_t *rows, int64_t B, elmo_batch_buf *bb, elmo_batch *out);
void elmo_batch_buf_free(elmo_batch_buf *bb);

#ifdef __cplusplus
}
#endif

#endif
