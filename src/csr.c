/* csr.c: CSR matrices and the row-by-row builder used by the readers. */
#include "csr.h"
#include "common.h"

#include <stdlib.h>
#include <string.h>

void elmo_csr_free(elmo_csr *m) {
  ELMO_FREE(m->indptr);
  ELMO_FREE(m->indices);
  ELMO_FREE(m->data);
  m->rows = m->cols = 0;
}

/* Insertion sort per row: rows are short (labels, features), and this keeps values paired. */
void elmo_csr_sort_rows(elmo_csr *m) {
  for (int64_t r = 0; r < m->rows; r++) {
    int64_t s = m->indptr[r], e = m->indptr[r + 1];
    for (int64_t i = s + 1; i < e; i++) {
      int32_t ki = m->indices[i];
      float kv = m->data[i];
      int64_t j = i - 1;
      while (j >= s && m->indices[j] > ki) {
        m->indices[j + 1] = m->indices[j];
        m->data[j + 1] = m->data[j];
        j--;
      }
      m->indices[j + 1] = ki;
      m->data[j + 1] = kv;
    }
  }
}

void elmo_csr_select_rows(const elmo_csr *m, const int64_t *rows, int64_t n, elmo_csr *out) {
  int64_t nnz = 0;
  for (int64_t i = 0; i < n; i++) nnz += m->indptr[rows[i] + 1] - m->indptr[rows[i]];
  out->rows = n;
  out->cols = m->cols;
  out->indptr = elmo_malloc(sizeof(int64_t) * (size_t)(n + 1));
  out->indices = elmo_malloc(sizeof(int32_t) * (size_t)nnz);
  out->data = elmo_malloc(sizeof(float) * (size_t)nnz);
  out->indptr[0] = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t s = m->indptr[rows[i]], c = m->indptr[rows[i] + 1] - s, o = out->indptr[i];
    memcpy(out->indices + o, m->indices + s, sizeof(int32_t) * (size_t)c);
    memcpy(out->data + o, m->data + s, sizeof(float) * (size_t)c);
    out->indptr[i + 1] = o + c;
  }
}

void elmo_csr_col_counts(const elmo_csr *m, int64_t *out) {
  memset(out, 0, sizeof(int64_t) * (size_t)m->cols);
  int64_t nnz = elmo_csr_nnz(m);
  for (int64_t i = 0; i < nnz; i++)
    if (m->data[i] != 0.0f) out[m->indices[i]]++;
}

void elmo_csrb_init(elmo_csr_builder *b, int64_t cols) {
  memset(b, 0, sizeof *b);
  b->m.cols = cols;
  elmo_grow((void **)&b->m.indptr, &b->cap_rows, 1, sizeof(int64_t));
  b->m.indptr[0] = 0;
}

void elmo_csrb_push(elmo_csr_builder *b, int32_t idx, float val) {
  int64_t n = b->nnz;
  /* indices and data share one capacity counter */
  size_t cap = b->cap_nnz;
  elmo_grow((void **)&b->m.indices, &cap, (size_t)n + 1, sizeof(int32_t));
  if (cap != b->cap_nnz) {
    b->m.data = elmo_realloc(b->m.data, cap * sizeof(float));
    b->cap_nnz = cap;
  }
  b->m.indices[n] = idx;
  b->m.data[n] = val;
  b->nnz = n + 1;
}

void elmo_csrb_end_row(elmo_csr_builder *b) {
  int64_t n = b->nnz;
  elmo_grow((void **)&b->m.indptr, &b->cap_rows, (size_t)b->m.rows + 2, sizeof(int64_t));
  b->m.rows++;
  b->m.indptr[b->m.rows] = n;
}

void elmo_csrb_finish(elmo_csr_builder *b, elmo_csr *out) {
  *out = b->m;
  if (!out->indices) out->indices = elmo_malloc(sizeof(int32_t));
  if (!out->data) out->data = elmo_malloc(sizeof(float));
  memset(b, 0, sizeof *b);
}
