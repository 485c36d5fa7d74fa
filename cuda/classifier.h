/* classifier.h: the chunked fused low-precision classifier on the device (the CUDA twin of
 * src/classifier.c; DESIGN.md §5). Each chunk of labels runs whole, or in pieces of `piece`
 * labels when asked (elmo_cuda_cls_piece; pieces that keep W in L2 between the ops were measured
 * slower on the H100). Per piece [l0, l0+n):
 *   z  = Xq W_c^T               cuBLASLt, FP32 accumulation, stored BF16 (FP32 for fp32 weights)
 *                               FP8 x FP8 tensor cores when W is e4m3 and the input is cast to e4m3
 *   G  = bf16(sigmoid(z) - y)   in place, looked up per bf16 logit code in elmo_cls_grad_table
 *                               (the CPU's own values); padded labels 0; summed BCE per block,
 *                               reduced in order
 *                               On steps that form no loss, with e4m3 weights and input, B <= 512 (ELMO_LG_MAX_B),
 *                               d <= 768 and compute capability 9.0, z and G are one kernel
 *                               (elmo_cuda_cls_logits_grad, FP8 wgmma): the logits never reach memory
 *   dX += G W_c                 e4m3/bf16 W: BF16 tensor-core kernel split over labels into
 *                               dx_part slices (e4m3 tiles converted in registers on sm_90a with
 *                               TMA, else widened in shared memory), the slices
 *                               summed in order into dX once per step (classifier_fast.h);
 *                               fp32 W: cuBLASLt FP32
 *   W_c <- SR(W_c - lr (G^T Xq + wd W_c))  one kernel (classifier_fast.h): each block forms
 *                               tiles of G^T Xq with BF16 tensor cores (FP32 accumulation; G and
 *                               Xq are exact in BF16; 64x128 tiles with Xq resident for batches
 *                               up to 128 rows, 128x128 above) and rounds the weights in
 *                               registers: the weight gradient never reaches global memory. SR
 *                               bits (Philox4x32-7, numbered as src/classifier.h says), the FP32 update (FMA) and the
 *                               rounding bit for bit as on the CPU; head labels get the CPU's
 *                               Kahan round-to-nearest rows.
 * Shapes: d a multiple of 16; chunk a multiple of 16; row capacity B_cap a multiple of 16. Rows
 * B..round16(B) of the input casts are zero, so the FP8 GEMM always sees multiples of 16.
 * All pointers are device memory; everything runs on the stream passed in. */
#ifndef ELMO_CUDA_CLASSIFIER_H
#define ELMO_CUDA_CLASSIFIER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#include "blas.h"
#include "pool.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "../src/classifier.h"   /* elmo_cls_hyper (the host header of the same name) */

#define ELMO_CUDA_GRAD_TILE 2048   /* labels per block of the gradient kernel */

/* elmo_cuda_cls.bench_flags (benchmarks only; 0 in training and tests) */
#define ELMO_CLS_BENCH_CONST_BITS 1 /* update draws cheap stand-in bits instead of Philox (wrong SR) */
#define ELMO_CLS_BENCH_NO_ROUND 2   /* e4m3 wgmma update: no SGD + SR epilogue (weights unchanged) */
#define ELMO_CLS_BENCH_NO_PRODUCT 4 /* e4m3 wgmma update: no G^T Xq product (zero gradient) */

typedef struct elmo_cuda_cls {
  /* set by the caller */
  void *W;                    /* [L_pad, d] e4m3 | bf16 | fp32 (model buffer) */
  elmo_dtype dtype;
  int64_t L, L_pad, d;
  int64_t label_base;         /* global label of W's row 0: the SR bits are keyed by global labels, so a shard
                                 of a label-sharded model rounds as the whole model would (0 unsharded) */
  uint16_t *kahan;            /* [n_head, d] bf16, or NULL */
  const int32_t *head_slot;   /* [L_pad] row in kahan or -1, or NULL */
  int fp8_input;              /* Xq = e4m3(X) (1) or bf16(X) (0) */
  int64_t chunk;              /* labels per chunk (multiple of 16) */
  int64_t B_cap;              /* rows the scratch holds (multiple of 16) */
  int64_t piece;              /* labels per piece of a chunk in the step; 0 or >= chunk: whole
                                 chunks (init_paths sets 0 to chunk) */
  int bench_flags;            /* ELMO_CLS_BENCH_* (benchmarks only) */
  elmo_blas *blas;
  /* scratch from elmo_cuda_cls_layout */
  uint8_t *Xq8;               /* [B_cap, d] e4m3 codes (fp8 input) */
  uint16_t *Xq16;             /* [B_cap, d] bf16 codes of Xq */
  uint16_t *Xp16;             /* [B_cap, round32(d)] the same, columns permuted for the update kernels */
  uint16_t *Xt16;             /* [round32(d), round64(B_cap)] Xp16 transposed (e4m3 weights: the wgmma
                                 update's operand) or NULL */
  float *Xq32;                /* [B_cap, d] Xq as FP32 (fp32 weights only) */
  void *z;                    /* [B_cap, chunk] logits / G: bf16, or FP32 for fp32 weights */
  size_t z_bytes;
  uint16_t *Wc16;             /* [chunk, d] W chunk widened to bf16 (e4m3 weights only) */
  double *loss_part;          /* [B_cap * ceil(chunk / ELMO_CUDA_GRAD_TILE)] per-block BCE sums */
  double *loss;               /* [1] summed BCE of the current step */
  float *dx_part;             /* [dx_slices, B_cap, d] dX partial sums (e4m3 / bf16 weights) */
  uint16_t *grad_tab;         /* [131072] elmo_cls_grad_table, filled on first use */
  int grad_tab_ready;
  int64_t dx_slices;
  /* paths, from elmo_cuda_cls_init_paths */
  int fp8_logits;             /* train logits through FP8 tensor cores */
  int fp8_logits_f32;         /* prediction logits (FP32 out) through FP8 tensor cores */
  int64_t widened_l0, widened_n; /* labels currently in Wc16 (l0 = -1: none) */
  int64_t xp_rows;            /* rows of Xp16 / Xt16 made from the current Xq (-1: none; the cast resets it) */
  int pdl_step;               /* set by elmo_cuda_cls_step around its chunk loop: the fused kernels there may
                                 launch before the kernel ahead of them ends (programmatic dependent launch) */
} elmo_cuda_cls;

/* Takes the scratch buffers from the pool (planning pools give NULL pointers). */
void elmo_cuda_cls_layout(elmo_cuda_cls *c, elmo_pool *p);
/* The code the current device runs from this binary: -1 none (built for other GPUs), 0 the portable
 * kernels (any device of compute capability 8.0 or newer), 1 also the sm_90a ones (wgmma, TMA). */
int elmo_cuda_code_kind(void);
/* 1 when cuBLASLt's FP8 GEMMs run here (compute capability 8.9 or newer; ELMO_NO_FP8_GEMM=1 says no). */
int elmo_cuda_fp8_gemm_ok(void);
/* Shared memory a block of the portable classifier kernels needs for these weights and batch rows
 * (bytes; the sm_90a kernels run on the H100's 227 KB). */
size_t elmo_cuda_cls_smem_need(elmo_dtype dt, int64_t B_cap);
/* Picks the GEMM paths cuBLASLt can run for these shapes (and the piece size: whole chunks when
 * c->piece is 0); writes one line per op to `log` (may be NULL) saying which path runs. */
void elmo_cuda_cls_init_paths(elmo_cuda_cls *c, FILE *log);
/* Labels per piece of a chunk in elmo_cuda_cls_step (a multiple of 16, <= chunk). */
int64_t elmo_cuda_cls_piece(const elmo_cuda_cls *c);

/* The ops (B <= B_cap real rows; n labels from l0, n a multiple of 16). */
/* Xq* from X [B, d] FP32. */
void elmo_cuda_cls_cast(elmo_cuda_cls *c, const float *X, int64_t B, cudaStream_t s);
/* c->z [round16(B), n] = Xq W[l0:l0+n]^T: BF16 (FP32 for fp32 weights), or FP32 when f32_out. */
void elmo_cuda_cls_logits(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, int f32_out, cudaStream_t s);
/* In place z -> G; y rows sorted ascending (CSR over the B rows). Adds the summed BCE of the
 * chunk to *c->loss when want_loss. */
void elmo_cuda_cls_grad(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                        const int32_t *y_indices, int want_loss, cudaStream_t s);
/* logits and grad in one pass where the device has it (e4m3 weights and input, B <= 512, compute
 * capability 9.0; classifier_fast.h): c->z [round16(B), n] = G of the logits Xq W[l0:l0+n]^T (rows < B),
 * the logits never stored and no loss formed. Returns 0, doing nothing, where it does not apply. */
int elmo_cuda_cls_logits_grad(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                              const int32_t *y_indices, cudaStream_t s);
/* dX [B, d] += G W[l0:l0+n] (old W). */
void elmo_cuda_cls_dx(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, float *dX, cudaStream_t s);
/* W[l0:l0+n] <- SR(W - lr (G^T Xq + wd W)), head rows Kahan RN. */
void elmo_cuda_cls_update(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const elmo_cls_hyper *h,
                          cudaStream_t s);
/* The whole step over all chunks, piece by piece: dX [B, d] overwritten; *c->loss = summed BCE (0 unless
 * want_loss). */
void elmo_cuda_cls_step(elmo_cuda_cls *c, const float *X, int64_t B, const int64_t *y_indptr,
                        const int32_t *y_indices, const elmo_cls_hyper *h, int want_loss, float *dX,
                        cudaStream_t s);
/* Labels per prediction sub-chunk: FP32 logits of round16(B) rows must fit in c->z. */
int64_t elmo_cuda_cls_predict_span(const elmo_cuda_cls *c, int64_t B);
/* The initial weights W [L_pad, d] of dtype dt on the device, bit for bit model.c's (elmo_model_init_host):
 * element i of a shard starting at label_base draws Philox block (seed, 0, tensor, (label_base d + i) / 4) and is
 * a (2 r 2^-32 - 1), a = 1 / sqrtf(d), rounded to dt; rows num_labels..L_pad - 1 are zero. */
void elmo_cuda_cls_init_weights(void *W, elmo_dtype dt, int64_t num_labels, int64_t L_pad, int64_t d,
                                int64_t label_base, uint64_t seed, uint32_t tensor, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
