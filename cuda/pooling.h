/* pooling.h: mean / CLS pooling of the last hidden state over real tokens, forward and backward,
 * for the CUDA encoder. CPU twins: elmo_tf_pool_forward/backward (packed rows). Rows r = b * Tp + t;
 * a sequence without real tokens pools to zeros. Device pointers, stream s. */
#ifndef ELMO_CUDA_POOLING_H
#define ELMO_CUDA_POOLING_H

#include <stdint.h>
#include <cuda_runtime.h>
#include "cuda/transformer.h"

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#include "numerics.h"

/* pooled[B, H] fp32 from x[B * Tp, H] bf16 and mask_p [B, Tp]: the mean of the real rows, or the
 * first real row (CLS). */
int elmo_cuda_pool_forward(const elmo_bf16 *x, const uint8_t *mask_p, int B, int Tp, int H,
                           elmo_tf_pooling mode, float *pooled, cudaStream_t s, elmo_err *err);
/* dx[B * Tp, H] fp32 (overwritten, zeros on masked rows) from dpooled[B, H] fp32. */
int elmo_cuda_pool_backward(const float *dpooled, const uint8_t *mask_p, int B, int Tp, int H,
                            elmo_tf_pooling mode, float *dx, cudaStream_t s, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
