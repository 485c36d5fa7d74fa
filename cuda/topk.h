/* topk.h: running top-k per row over label chunks on the device, the twin of elmo_topk_merge
 * (src/classifier.h): lists sorted by score descending then label ascending, filter pairs and
 * labels >= L skipped, ties to the lower label id. Deterministic: each chunk's candidates that
 * beat the current k-th entry are ranked against the list (ranks do not depend on the order
 * in which threads found them). NaN scores count as -inf. k <= ELMO_CUDA_TOPK_MAX. */
#ifndef ELMO_CUDA_TOPK_H
#define ELMO_CUDA_TOPK_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ELMO_CUDA_TOPK_MAX 1024

/* topk [B, k] = -1, topv [B, k] = -inf. */
void elmo_cuda_topk_init(int32_t *topk, float *topv, int64_t B, int k, cudaStream_t s);
/* Merges FP32 scores z [B, ldz] of labels l0..l0+n into the lists. f_indptr [B+1] / f_indices:
 * filter labels of each batch row, sorted ascending (f_indptr NULL = no filter). */
void elmo_cuda_topk_merge(const float *z, int64_t ldz, int64_t B, int64_t l0, int64_t n, int64_t L, int k,
                          const int64_t *f_indptr, const int32_t *f_indices, int32_t *topk, float *topv,
                          cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
