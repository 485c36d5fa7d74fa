/* attention.h: masked multi-head self-attention forward/backward for the CUDA encoder, on padded
 * batches: the batched path (permutes, cuBLASLt GEMMs per (sequence, head), row softmax) for any
 * shape, and the fused path (one kernel each way) for Tp <= 128 and head dim 16/32/64.
 * CPU twins: elmo_tf_attention_forward/backward (packed rows).
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

/* ---- fused path (cuda/attention_fused.cu): short sequences, no score matrix, no permutes ----
 * q, k, v, dctx, ctx, dq, dk, dv: merged [B * Tp, heads * dh] bf16 (q, k, v with their biases already
 * added), 16-byte aligned; mask [B, Tp]. Same masking rules and rounding points as above (P and dS
 * rounded to BF16 before their GEMMs); the backward recomputes P from q and k, so nothing but ctx
 * passes from forward to backward. ELMO_EINPUT for shapes the kernels do not cover. */
#define ELMO_CUDA_ATTN_FUSED_MAX_TP 128
/* 1 when the fused kernels cover (Tp, dh): Tp a multiple of 8 up to ELMO_CUDA_ATTN_FUSED_MAX_TP, dh 16,
 * 32 or 64, and the environment does not set ELMO_ATTN_FUSED=0 (the switch back to the batched path,
 * for benchmarks and comparisons). */
int elmo_cuda_attention_fused_ok(int Tp, int dh);
/* Shared memory a block may have on the current device (opt-in), bytes; ELMO_SMEM_OPTIN_KB in the
 * environment stands in for it (tests of smaller cards' paths on a larger one). */
int elmo_cuda_smem_optin(void);
/* ctx = softmax(q k^T / sqrt(dh)) v per (sequence, head), masked. ld_qkv: the row stride of q, k, v
 * (and of dq, dk, dv in the backward) in elements, 0 for heads * dh; 3 heads dh when they are the
 * column blocks of one [B * Tp, 3 heads dh] matrix (a multiple of 8, >= heads * dh). */
int elmo_cuda_attention_fused_forward(const elmo_bf16 *q, const elmo_bf16 *k, const elmo_bf16 *v, int ld_qkv,
                                      const uint8_t *mask, int B, int Tp, int heads, int dh, elmo_bf16 *ctx,
                                      cudaStream_t s, elmo_err *err);
/* The same with an E4M3 copy: ctxq [B * Tp, heads * dh] = e4m3_satfinite(bf16(ctx) * *ctxq_scale) (a device
 * scalar) when ctxq is given, ctx (bf16) only when ctx is given (one of them at least): the FP8 forward's
 * output-projection input, cast where it is formed. */
int elmo_cuda_attention_fused_forward_q(const elmo_bf16 *q, const elmo_bf16 *k, const elmo_bf16 *v, int ld_qkv,
                                        const uint8_t *mask, int B, int Tp, int heads, int dh, elmo_bf16 *ctx,
                                        uint8_t *ctxq, const float *ctxq_scale, cudaStream_t s, elmo_err *err);
/* dq, dk, dv from dctx (rows of masked queries and keys come out zero). ctx: NULL, or also writes the
 * forward's output, bit for bit what elmo_cuda_attention_fused_forward gives (P is recomputed anyway),
 * so a backward need not rerun the forward for it. colpart: NULL, or [3][R][heads * dh] FP32 with
 * R = elmo_cuda_attention_colpart_rows(B, Tp): the column sums of the stored (bf16) dq, dk, dv over
 * each 16 rows of each sequence, in a fixed order, for elmo_cuda_colsum_finish (bias gradients without
 * reading dq, dk, dv again). */
int elmo_cuda_attention_fused_backward(const elmo_bf16 *q, const elmo_bf16 *k, const elmo_bf16 *v, int ld_qkv,
                                       const elmo_bf16 *dctx, const uint8_t *mask, int B, int Tp, int heads,
                                       int dh, elmo_bf16 *dq, elmo_bf16 *dk, elmo_bf16 *dv, elmo_bf16 *ctx,
                                       float *colpart, cudaStream_t s, elmo_err *err);
/* Rows of the backward's colpart per matrix: B times the 16-row query tiles of a block (ceil(Tp / 16)
 * rounded up to 1, 2, 4 or 8; tiles past Tp sum to zero). */
int64_t elmo_cuda_attention_colpart_rows(int B, int Tp);

#ifdef __cplusplus
}
#endif

#endif
