/* csr.h: compressed sparse row matrices (label matrices, BoW features, sparse predictions). */
#ifndef ELMO_CSR_H
#define ELMO_CSR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_csr {
  int64_t rows, cols;
  int64_t *indptr;   /* [rows + 1] */
  int32_t *indices;  /* [nnz] column ids, 0-based */
  float *data;       /* [nnz] values */
} elmo_csr;

static inline int64_t elmo_csr_nnz(const elmo_csr *m) { return m->indptr ? m->indptr[m->rows] : 0; }

void elmo_csr_free(elmo_csr *m);
/* Sorts each row's indices ascending (values follow). */
void elmo_csr_sort_rows(elmo_csr *m);
/* Returns a new matrix with only the listed rows (in order). */
void elmo_csr_select_rows(const elmo_csr *m, const int64_t *rows, int64_t n, elmo_csr *out);
/* Column sums over binarised entries (value != 0 counts 1): out[cols]. */
void elmo_csr_col_counts(const elmo_csr *m, int64_t *out);

/* Builder used by the readers: append rows one at a time. */
typedef struct elmo_csr_builder {
  elmo_csr m;
  int64_t nnz;       /* entries pushed so far */
  size_t cap_rows, cap_nnz;
} elmo_csr_builder;
void elmo_csrb_init(elmo_csr_builder *b, int64_t cols);
void elmo_csrb_push(elmo_csr_builder *b, int32_t idx, float val); /* entry in the current row */
void elmo_csrb_end_row(elmo_csr_builder *b);                       /* closes the current row */
void elmo_csrb_finish(elmo_csr_builder *b, elmo_csr *out);         /* moves the matrix out */

#ifdef __cplusplus
}
#endif

#endif
