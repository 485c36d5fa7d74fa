/* gelu.h: GELU (exact erf form, as BERT) forward/backward with the bias add, and bias gradients
 * (column sums) for the CUDA encoder. CPU twins: elmo_tf_gelu_forward/backward and the db part of
 * elmo_tf_linear_backward. Device pointers, stream s; ELMO_EINPUT on bad shapes. */
#ifndef ELMO_CUDA_GELU_H
#define ELMO_CUDA_GELU_H

#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#include "numerics.h"

/* pre = bf16(a + bias), g = bf16(GELU(pre)): a [M, F] fp32, bias [F] bf16 or NULL, pre and g
 * [M, F] bf16 (pre may be NULL). GELU is taken of the rounded pre, as elmo_cuda_gelu_recompute does.
 * (The encoder gets pre from its GEMM's bias epilogue and calls elmo_cuda_gelu_recompute.) */
int elmo_cuda_gelu_forward(const float *a, const elmo_bf16 *bias, int64_t M, int F, elmo_bf16 *pre,
                           elmo_bf16 *g, cudaStream_t s, elmo_err *err);
/* g[n] = bf16(GELU(pre[n])), bf16 in and out; deterministic (the encoder's forward and backward
 * both use it, so they see the same bits). */
int elmo_cuda_gelu_recompute(const elmo_bf16 *pre, int64_t n, elmo_bf16 *g, cudaStream_t s, elmo_err *err);
/* gq[i] = e4m3_satfinite(bf16(GELU(pre[i])) * *gq_scale) (gq_scale a device scalar): the E4M3 copy of
 * elmo_cuda_gelu_recompute's output, for the FP8 forward's second FFN GEMM, without the BF16 one. */
int elmo_cuda_gelu_forward_q(const elmo_bf16 *pre, int64_t n, uint8_t *gq, const float *gq_scale, cudaStream_t s,
                             elmo_err *err);
/* dx = bf16(dy * GELU'(pre)) over n elements, bf16; dx may equal dy. */
int elmo_cuda_gelu_backward(const elmo_bf16 *pre, const elmo_bf16 *dy, int64_t n, elmo_bf16 *dx,
                            cudaStream_t s, elmo_err *err);

/* dx[M, N] = bf16(dy * GELU'(pre)) and out[N] += its column sums, in one pass where N % 8 == 0 and rows are
 * 16-byte aligned (else the two calls): the same bits as elmo_cuda_gelu_backward then elmo_cuda_colsum.
 * g non-NULL: the same pass also writes g = bf16(GELU(pre)), elmo_cuda_gelu_recompute's bits (the
 * encoder's recompute mode gets the FFN's second GEMM input this way, with one read of pre).
 * dx may equal dy, g may equal pre; ws: elmo_cuda_colsum_ws_floats(M, N, 1). */
int elmo_cuda_gelu_backward_colsum(const elmo_bf16 *pre, const elmo_bf16 *dy, int64_t M, int N, elmo_bf16 *dx,
                                   elmo_bf16 *g, float *out, float *ws, cudaStream_t s, elmo_err *err);
/* The same, and (dxq not NULL) each stored dx row in E4M3 times rs[r] into dxq [M, N] (the FP8 input gradient's
 * operand; its row scales come from the LayerNorm backward, elmo_cuda_ln_q.bs). */
int elmo_cuda_gelu_backward_colsum_q(const elmo_bf16 *pre, const elmo_bf16 *dy, int64_t M, int N, elmo_bf16 *dx,
                                     elmo_bf16 *g, float *out, float *ws, uint8_t *dxq, const float *rs,
                                     cudaStream_t s, elmo_err *err);
/* out_i[j] += sum over r < R of part[i][r][j] for i < count (out_i = out + i * out_stride), rows in a
 * fixed order: the finishing pass of elmo_cuda_colsum over partial sums formed elsewhere. */
void elmo_cuda_colsum_finish(const float *part, int64_t R, int N, int count, float *out, int64_t out_stride,
                             cudaStream_t s);
/* Scratch floats elmo_cuda_colsum needs for `count` matrices of M rows and N columns. */
int64_t elmo_cuda_colsum_ws_floats(int64_t M, int N, int count);
/* For i < count: out_i[N] += column sums of x_i[M, N] (fp32 accumulation, rows summed in fixed
 * blocks in order: deterministic). x_i = x + i * x_stride elements, out_i = out + i * out_stride.
 * x is bf16 (x_bf16 = 1) or fp32. */
int elmo_cuda_colsum(const void *x, int x_bf16, int64_t M, int N, int count, int64_t x_stride,
                     float *out, int64_t out_stride, float *ws, cudaStream_t s, elmo_err *err);
/* The same over rows ld >= N elements apart (e.g. column blocks of a wider matrix). */
int elmo_cuda_colsum_ld(const void *x, int x_bf16, int64_t M, int N, int64_t ld, int count, int64_t x_stride,
                        float *out, int64_t out_stride, float *ws, cudaStream_t s, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
