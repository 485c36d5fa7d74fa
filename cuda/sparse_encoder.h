/* sparse_encoder.h: the embedding-bag encoder on the device, twin of src/sparse_encoder.c:
 *   h_b = sum_f v_bf E[f];  x_b = h_b / max(||h_b||, 1e-12);  y_b = LN(x_b) when layernorm.
 * Sums run in the CPU's order with non-contracted float operations; norms and LN statistics
 * in double with a fixed-order block reduction. The backward pass is deterministic without
 * float atomics: the batch's (feature, entry) pairs are sorted by feature (CUB radix sort,
 * stable), and one warp per distinct feature sums its entries in the CPU's order into dE.
 * Pointers are device memory; launches go on `s`. */
#ifndef ELMO_CUDA_SPARSE_ENCODER_H
#define ELMO_CUDA_SPARSE_ENCODER_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "model.h"

typedef struct elmo_cuda_sparse {
  const void *E;             /* [D, d] bf16 | fp32 (inside ENC_PARAM) */
  const void *gamma, *beta;  /* [d] LayerNorm, same dtype, or NULL */
  elmo_dtype dtype;
  int64_t D, d;
  /* cache [B_cap rows], set by the caller */
  float *x;                  /* [B_cap, d] normalised bag */
  float *norm;               /* [B_cap] */
  float *xhat;               /* [B_cap, d] (layernorm only) */
  float *rstd;               /* [B_cap] (layernorm only) */
} elmo_cuda_sparse;

/* The batch's entries sorted by feature for the backward pass (scratch of capacity nnz_cap). */
typedef struct elmo_cuda_sparse_sort {
  int32_t *entry_row;        /* [nnz_cap] row of each entry */
  int32_t *iota;             /* [nnz_cap] 0..nnz-1 */
  int32_t *feat;             /* [nnz_cap] sorted feature ids */
  int32_t *ent;              /* [nnz_cap] entry ids in sorted order (stable) */
  void *temp;                /* CUB scratch */
  size_t temp_bytes;
} elmo_cuda_sparse_sort;

/* CUB scratch bytes for sorting up to nnz_cap entries (0 on failure to query). */
size_t elmo_cuda_sparse_sort_temp_bytes(int64_t nnz_cap);

/* out [B, d]. indptr [B+1], indices/values [nnz]. */
void elmo_cuda_sparse_forward(const elmo_cuda_sparse *e, int64_t B, const int64_t *indptr, const int32_t *indices,
                              const float *values, float *out, cudaStream_t s);
/* Fills srt for the batch (nnz entries, known on the host). */
void elmo_cuda_sparse_prepare(elmo_cuda_sparse_sort *srt, int64_t B, int64_t nnz, const int64_t *indptr,
                              const int32_t *indices, cudaStream_t s);
/* From dout [B, d] (clobbered): dE rows of the batch's features are overwritten (rows not in
 * the batch are not touched: zero them first); dgamma / dbeta [d] overwritten (layernorm). */
void elmo_cuda_sparse_backward(const elmo_cuda_sparse *e, int64_t B, int64_t nnz, const float *values,
                               const elmo_cuda_sparse_sort *srt, float *dout, float *dE, float *dgamma, float *dbeta,
                               cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
