/* attention.h: masked multi-head self-attention forward/backward for the CUDA encoder, on padded
 * batches. CPU twins: elmo_tf_attention_forward/backward (packed rows).
 *
 * Layouts (device, bf16 unless said): rows r = b * Tp + t, M = B * Tp, H = heads * dh.
 *   merged    [n, M, H]               what the linear layers read and write
 *   split     [n, B, heads, Tp, dh]   per-(sequence, head) matrices for the batched GEMMs
 *   mask      [B, Tp] uint8           1 = real token
 * Scores go through FP32 [B * heads, Tp, Tp]; probabilities are BF16 [B * heads, Tp, Tp]. Masked keys
 * get probability 0, and masked query rows get all-zero probabilities (so zero output and zero
 * gradients), which also covers sequences without any real token. */
#ifndef ELMO_CUDA_ATTENTION_H
#define ELMO_CUDA_ATTENTION_H

#include <stdint.h>
#include <cuda_runtime.h>
#include "cuda/transformer.h"

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#include "numerics.h"

/* out (split, bf16) = in (merged, fp32 when in_f32 else bf16) + bias[i] for tensor i < n (bias[i]
 * [H] bf16 or NULL; bias may be NULL). n <= 3. */
int elmo_cuda_heads_split(const void *in, int in_f32, const elmo_bf16 *const *bias, int n, int B, int Tp,
                          int heads, int dh, elmo_bf16 *out, cudaStream_t s, elmo_err *err);
/* out (merged) = in (split), n tensors, bf16. */
int elmo_cuda_heads_merge(const elmo_bf16 *in, int n, int B, int Tp, int heads, int dh, elmo_bf16 *out,
                          cudaStream_t s, elmo_err *err);

/* qkv: split [3, B, heads, Tp, dh] (q, k, v). P = softmax(Q K^T / sqrt(dh)) masked -> probs;
 * ctx (split [B, heads, Tp, dh]) = P V. scores: fp32 scratch [B * heads, Tp, Tp]. */
int elmo_cuda_attention_forward(elmo_cuda_tf_gemm *g, const elmo_bf16 *qkv, const uint8_t *mask, int B, int Tp,
                                int heads, int dh, float *scores, elmo_bf16 *probs, elmo_bf16 *ctx,
                                cudaStream_t s, elmo_err *err);
/* From the forward's probs and dctx (split [B, heads, Tp, dh]): dqkv (split [3, B, heads, Tp, dh]).
 * probs is overwritten with dS; scores is fp32 scratch as above. */
int elmo_cuda_attention_backward(elmo_cuda_tf_gemm *g, const elmo_bf16 *qkv, elmo_bf16 *probs,
                                 const elmo_bf16 *dctx, const uint8_t *mask, int B, int Tp, int heads,
                                 int dh, float *scores, elmo_bf16 *dqkv, cudaStream_t s, elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
