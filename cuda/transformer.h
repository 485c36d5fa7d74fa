/* transformer.h: CUDA transformer encoder (BERT-family, post-LN), forward and backward, the GPU twin
 * of elmo_tf_forward / elmo_tf_backward in src/transformer.h. C-callable.
 *
 * Numerics: parameters are read as BF16 (ENC_PARAM, the CPU's flat layout, same offsets and padding)
 * or FP32 (converted once per forward into a BF16 shadow copy); GEMMs run on BF16 tensor cores with
 * FP32 accumulation (cuBLASLt); elementwise math is FP32; activations are stored in BF16, LayerNorm
 * statistics and the residual-stream gradient in FP32. Parameter gradients are FP32, in the same
 * flat layout as the parameters, and ACCUMULATE (zero them before a step), as on the CPU.
 *
 * FP8 forward (cfg->fp8_forward, model.encoder.dtype "fp8"): the six linear layers' forward GEMMs
 * take E4M3 operands: the weights with their per-tensor amax scale (cast per layer and step), the
 * layer inputs with the power-of-two scales of elmo_tf_fp8_layer_scales, bounds that follow from the
 * parameters (computed on the device once a forward: one pass over the weights for their amax and
 * row norms, a block a layer for the LayerNorm and bias bounds). Because no pass over an activation
 * is needed for its scale, the kernels that produce the GEMM inputs write the E4M3 copies themselves:
 * the LayerNorm forward (and apply, on a RECOMPUTE rerun) for the q/k/v and intermediate inputs, the
 * fused attention for ctx (the batched path casts ctx in a pass), the GELU for the second FFN input
 * (which then writes no BF16 copy). FP32 accumulation with cuBLASLt's fast accumulation (as torchao's
 * forward), the product times 1/(scale_x scale_w) as the GEMM's alpha (a device scalar), then the
 * usual bias epilogue / FP32 output. Nothing else changes: the kept activations are the BF16 outputs
 * of those GEMMs, and the backward's GEMMs are BF16 on the BF16 layer inputs (recomputed as usual)
 * and BF16 weights, never the E4M3 copies. RECOMPUTE reruns the same FP8 forward, so both modes give
 * the same bits. Needs hidden and ffn multiples of 16 (config check). Extra scratch: [4 H H + 2 H F]
 * bytes and a small per-layer table, and [M, max(H, F)] bytes for the E4M3 inputs off the fused attention
 * path (on it they live in the GELU buffer's space, unused by the FP8 forward and a RECOMPUTE rerun).
 *
 * Layout: batches stay padded, [B, Tp] with Tp = T rounded up to a multiple of 8; masked positions
 * (mask 0, or t >= T) get a zero embedding, are excluded from attention keys, have zero attention
 * output and pool to nothing, so padding never reaches the result and gets exactly zero gradient.
 * Attention: the fused kernels of cuda/attention_fused.cu (q, k, v kept merged, no score matrix, no
 * head permutes) when the planned Tp (max_len rounded up to 8) is <= 128 and the head dim 16, 32 or 64,
 * chosen at create and planned accordingly; otherwise, or with ELMO_ATTN_FUSED=0 in the environment at
 * create, the batched cuBLASLt path with FP32 scores [B * heads, Tp, Tp] and BF16 probabilities.
 * Every LayerNorm output is bf16(bf16(xhat) * w + b), a pure function of the stored xhat, so the
 * backward recomputes layer inputs, h1, GELU outputs and attention probabilities bit for bit
 * instead of storing them.
 *
 * Memory: one device block of elmo_cuda_tf_workspace_bytes(), either given by the caller (the pool)
 * or allocated by elmo_cuda_tf_create; no allocation in forward/backward. Kept between forward and
 * backward (elmo_cuda_tf_activation_bytes), per layer with M = B * Tp rows:
 *   default:   q, k, v [3, M, H] + xhat1 [M, H] + GELU input [M, F] + xhat2 [M, H] in BF16, 2 x [M] FP32
 *   RECOMPUTE: only the two LayerNorms' xhat1, xhat2 [M, H] BF16 + rstd1, rstd2 [M] per layer; the
 *              backward reruns each layer's q/k/v and intermediate GEMMs (the layer input and h1 come
 *              from the kept LayerNorm outputs) and the GELU into one shared set of buffers: about
 *              half a forward pass of extra compute (attention, output projection, second FFN GEMM
 *              and the LayerNorm forwards are not rerun).
 *
 * Ownership: elmo_cuda_tf_create makes the object (and a cuBLASLt handle); destroy frees what create
 * allocated (not a caller's block) and NULLs the pointer. The object keeps no pointer to the caller's
 * ids, mask or parameters between calls.
 */
#ifndef ELMO_CUDA_TRANSFORMER_H
#define ELMO_CUDA_TRANSFORMER_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "common.h"
#include "numerics.h"
#include "src/transformer.h"

enum {
  ELMO_CUDA_TF_F32_PARAMS = 1,   /* allow FP32 parameters (reserves a BF16 shadow copy) */
  ELMO_CUDA_TF_RECOMPUTE = 2     /* keep only LayerNorm outputs; recompute q/k/v, FFN input, GELU in the backward */
};

typedef struct elmo_cuda_tf elmo_cuda_tf;

/* Device bytes elmo_cuda_tf_create needs (activations + scratch + cuBLASLt workspace + shadow). */
size_t elmo_cuda_tf_workspace_bytes(const elmo_tf_config *cfg, int max_batch, int max_len, int flags);
/* The part of it kept from forward to backward (for --plan and reports). */
size_t elmo_cuda_tf_activation_bytes(const elmo_tf_config *cfg, int max_batch, int max_len, int flags);

/* dev_mem: NULL (allocate) or a device block of elmo_cuda_tf_workspace_bytes() bytes, 256-byte
 * aligned, owned by the caller. ELMO_EINPUT for a bad config or sizes. */
int elmo_cuda_tf_create(const elmo_tf_config *cfg, int max_batch, int max_len, int flags, void *dev_mem,
                        elmo_cuda_tf **out, elmo_err *err);
void elmo_cuda_tf_destroy(elmo_cuda_tf **t);
/* 1 when this encoder runs the fused attention kernels (padded length <= 128, head dim 16/32/64,
 * ELMO_ATTN_FUSED not 0), 0 for the batched cuBLASLt path. */
int elmo_cuda_tf_attention_fused(const elmo_cuda_tf *t);

/* pooled[B, H] (FP32, device) = encoder(ids[B, T], mask[B, T]) on stream s; mask NULL = all real.
 * params: device, the flat layout of elmo_tf_params, BF16 when params_bf16 else FP32 (needs
 * ELMO_CUDA_TF_F32_PARAMS). Unmasked ids outside [0, V) embed as zeros and raise the flag read by
 * elmo_cuda_tf_bad_ids. ELMO_EINPUT when B > max_batch, T > max_len or T > max_position. */
int elmo_cuda_tf_forward(elmo_cuda_tf *t, const void *params, int params_bf16, const int32_t *ids,
                         const uint8_t *mask, int B, int T, float *pooled, cudaStream_t s, elmo_err *err);
/* Backward of the last forward from dpooled[B, H] (FP32, device): ACCUMULATES into grads (FP32,
 * device, flat layout). params must be the ones given to that forward. A second backward of the
 * same forward is allowed. ELMO_ERUNTIME when no forward ran. */
int elmo_cuda_tf_backward(elmo_cuda_tf *t, const void *params, int params_bf16, const float *dpooled,
                          float *grads, cudaStream_t s, elmo_err *err);
/* Waits for s; 1 when a forward since the last call saw an unmasked id outside [0, V), else 0. */
int elmo_cuda_tf_bad_ids(elmo_cuda_tf *t, cudaStream_t s);
/* Waits for s; the FP8 forward's input scales of the last forward into scales[layers] (host), the GPU
 * twin of elmo_tf_fp8_layer_scales. ELMO_EINPUT without cfg.fp8_forward. */
int elmo_cuda_tf_fp8_scales(const elmo_cuda_tf *t, elmo_tf_fp8_scales *scales, cudaStream_t s, elmo_err *err);

/* ---- internal to the encoder's .cu files ---- */

/* Row-major GEMM on BF16 operands with FP32 accumulation: a local cuBLASLt helper, because the
 * encoder needs strided batches (attention) and a bias epilogue, which cuda/blas.h lacks so far:
 * C[m, n] = op(A)[m, k] op(B)[k, n] + beta * C, op = transpose when trans_*; A is stored [m, k]
 * (or [k, m] transposed) with leading dimension lda, likewise B. C is FP32 when c_f32, else BF16.
 * batch > 1: matrix i starts stride_* elements after matrix i - 1. bias (BF16 C only, batch 1):
 * NULL or a BF16 [n] added to every row before the one rounding to BF16 (cuBLASLt epilogue). */
typedef struct elmo_cuda_tf_mm {
  int trans_a, trans_b;
  int64_t m, n, k;
  const void *a; int64_t lda, stride_a;
  const void *b; int64_t ldb, stride_b;
  void *c; int64_t ldc, stride_c;
  int c_f32;
  float beta;
  int batch;
  const void *bias;
  const float *alpha_dev, *beta_dev;   /* both NULL (alpha 1, beta as above), or device scalars used instead */
  /* FP8 only, both or neither (then alpha 1, no device scalars): device FP32 vectors that multiply the
   * product, scale_n[j] per output column and scale_m[r] per row (cuBLASLt's OUTER_VEC_32F scale modes) */
  const float *scale_n, *scale_m;
} elmo_cuda_tf_mm;
typedef struct elmo_cuda_tf_gemm elmo_cuda_tf_gemm;
/* workspace: device scratch for cuBLASLt (may be NULL with ws_bytes 0). */
elmo_cuda_tf_gemm *elmo_cuda_tf_gemm_create(void *workspace, size_t ws_bytes);
void elmo_cuda_tf_gemm_destroy(elmo_cuda_tf_gemm **g);
void elmo_cuda_tf_gemm_run(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_mm *p, cudaStream_t s);

/* One FP8 linear layer with per-tensor dynamic scaling (the CUDA twin of elmo_tf_linear_forward_fp8): the
 * encoder's FP8 forward until the sixteenth session, now that of the tests' linear-layer parity check and
 * ELMO_BENCH_TF's BF16-vs-FP8 GEMM timing (the encoder takes its input scales from the parameters).
 * Scratch, device, 16-byte aligned: xq [M, in] and wq [count, out, in] bytes (E4M3), amax, inv and
 * alpha [ELMO_CUDA_TF_FP8_SEGS] (amax/inv: slot 0 the input, 1 + j weight j; alpha: slot j weight j,
 * the last slot 0.0f, the GEMM's beta). */
#define ELMO_CUDA_TF_FP8_SEGS 4
typedef struct elmo_cuda_tf_fp8 {
  uint8_t *xq, *wq;
  unsigned *amax;            /* |x| maxima as FP32 bit patterns */
  float *inv;                /* 1 / scale */
  float *alpha;              /* inv[0] * inv[1 + j] (one FP32 rounding), then 0 */
} elmo_cuda_tf_fp8;
/* Quantises x [M, in] BF16 (rows with row_mask 0 are left out of its amax; row_mask [M] or NULL) and
 * count (1..3) BF16 weights w[j] [out, in], each with its own per-tensor scale. ELMO_EINPUT unless in
 * and out are multiples of 16 and the pointers 16-byte aligned. */
int elmo_cuda_tf_fp8_prepare(const elmo_cuda_tf_fp8 *q, const elmo_bf16 *x, const uint8_t *row_mask, int64_t M,
                             int in, const elmo_bf16 *const *w, int count, int out, cudaStream_t s, elmo_err *err);
/* y[M, out] = (xq wq_j^T) * alpha[j] (+ bias [out] BF16, BF16 y only), alpha[j] = inv[0] * inv[1 + j],
 * in one cuBLASLt call (scale and bias in its epilogue): FP32 y when y_f32, else BF16. After
 * elmo_cuda_tf_fp8_prepare on the same stream. */
void elmo_cuda_tf_fp8_linear(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_fp8 *q, int j, const elmo_bf16 *bias,
                             int64_t M, int in, int out, void *y, int y_f32, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
