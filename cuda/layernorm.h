/* layernorm.h: LayerNorm forward/backward kernels of the CUDA encoder (BF16 activations, FP32
 * statistics and gradients). CPU twins: elmo_tf_layernorm_forward/backward. Pointers are device
 * pointers; work is enqueued on stream s. Entries return ELMO_EINPUT on bad shapes. */
#ifndef ELMO_CUDA_LAYERNORM_H
#define ELMO_CUDA_LAYERNORM_H

#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#include "numerics.h"

/* Per row of pre = a + bias + res (bias [H] and res [M, H] may be NULL): xhat = (pre - mean) * rstd,
 * rstd = 1 / sqrt(var + eps), y = bf16(bf16(xhat) * w + b).
 * a [M, H] fp32; w, b [H] bf16; y, xhat [M, H] bf16; rstd [M] fp32. */
int elmo_cuda_layernorm_forward(const float *a, const elmo_bf16 *bias, const elmo_bf16 *res,
                                const elmo_bf16 *w, const elmo_bf16 *b, int64_t M, int H, float eps,
                                elmo_bf16 *y, elmo_bf16 *xhat, float *rstd, cudaStream_t s, elmo_err *err);
/* y[M, H] = bf16(xhat * w + b): the forward's output again from the stored xhat. */
int elmo_cuda_layernorm_apply(const elmo_bf16 *xhat, const elmo_bf16 *w, const elmo_bf16 *b, int64_t M,
                              int H, elmo_bf16 *y, cudaStream_t s, elmo_err *err);
/* The same two with an E4M3 copy of y: yq[M, H] = e4m3_satfinite(y * *yq_scale) (yq_scale a device
 * scalar), written in the same pass when yq is not NULL (the FP8 forward's GEMM inputs). */
int elmo_cuda_layernorm_forward_q(const float *a, const elmo_bf16 *bias, const elmo_bf16 *res,
                                  const elmo_bf16 *w, const elmo_bf16 *b, int64_t M, int H, float eps,
                                  elmo_bf16 *y, elmo_bf16 *xhat, float *rstd, uint8_t *yq, const float *yq_scale,
                                  cudaStream_t s, elmo_err *err);
int elmo_cuda_layernorm_apply_q(const elmo_bf16 *xhat, const elmo_bf16 *w, const elmo_bf16 *b, int64_t M,
                                int H, elmo_bf16 *y, uint8_t *yq, const float *yq_scale, cudaStream_t s,
                                elmo_err *err);

/* Scratch floats elmo_cuda_layernorm_backward needs for M rows of H. */
int64_t elmo_cuda_layernorm_ws_floats(int64_t M, int H);
/* dx = rstd * (dy w - mean(dy w) - xhat mean(dy w xhat)) per row; dw += sum dy xhat, db += sum dy
 * (deterministic: fixed row blocks summed in order). dy, dx [M, H] fp32 (dx may equal dy); dx16
 * [M, H] bf16 copy of dx or NULL; dw, db [H] fp32; dsum [H] fp32 or NULL: += the column sums of dx
 * (the bias gradient of the linear layer whose output the LayerNorm took), formed in the same pass;
 * ws: elmo_cuda_layernorm_ws_floats. */
int elmo_cuda_layernorm_backward(const float *dy, const elmo_bf16 *xhat, const float *rstd,
                                 const elmo_bf16 *w, int64_t M, int H, float *dx, elmo_bf16 *dx16,
                                 float *dw, float *db, float *dsum, float *ws, cudaStream_t s, elmo_err *err);
/* What the FP8 input gradients take from the LayerNorm backward's rows (each part NULL: not wanted). */
typedef struct elmo_cuda_ln_q {
  uint8_t *dq;              /* [M, H] each row of dx16 in E4M3 times s_r = elmo_tf_fp8_pow2_scale(max |dx16[r]|) */
  float *dq_inv;            /* [M] 1 / s_r */
  const float *bound;       /* device scalar f: bs_r = elmo_tf_fp8_pow2_scale(||dx16[r]||_2 * f) (FP32 product), */
  float *bs, *bs_inv;       /* [M] bs_r and 1 / bs_r: the next gradient's row scales (elmo_tf_fp8_dff_factor) */
} elmo_cuda_ln_q;
/* The same, and q's parts (q NULL: none); dx16 is then required, H a multiple of 8, dx16 and dq 16-byte aligned. */
int elmo_cuda_layernorm_backward_q(const float *dy, const elmo_bf16 *xhat, const float *rstd,
                                   const elmo_bf16 *w, int64_t M, int H, float *dx, elmo_bf16 *dx16,
                                   float *dw, float *db, float *dsum, float *ws, const elmo_cuda_ln_q *q,
                                   cudaStream_t s, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
