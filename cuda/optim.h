/* optim.h: AdamW on the device, twin of elmo_adamw_update (src/optim.c): the same non-contracted
 * float operations in the same order, so equal gradients give bit-identical parameters, moments
 * and Kahan buffers. Weight decay per tensor from a small range table instead of a per-element
 * mask (elements outside every range, e.g. alignment gaps, get no decay). */
#ifndef ELMO_CUDA_OPTIM_H
#define ELMO_CUDA_OPTIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../src/optim.h"

/* Tensors with weight decay: element i decays when start[j] <= i < end[j] for some j. */
typedef struct elmo_cuda_decay {
  const int64_t *start, *end;  /* device [n], sorted, disjoint */
  int n;
} elmo_cuda_decay;

/* p/m/v bf16 (dtype ELMO_BF16) or fp32; c: bf16 Kahan buffer or NULL; g FP32 [n]. */
void elmo_cuda_adamw(void *p, void *m, void *v, uint16_t *c, elmo_dtype dtype, const float *g, int64_t n,
                     const elmo_cuda_decay *decay, const elmo_adamw_hyper *h, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
