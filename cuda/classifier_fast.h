/* classifier_fast.h: the tensor-core kernels of the classifier step (cuda/classifier.h), internal
 * to the CUDA backend. BF16 mma.sync (m16n8k16, FP32 accumulation) on tiles staged in shared
 * memory by cp.async; no widened copy of W and no weight gradient in global memory.
 *
 *   update: W[l0:l0+n] <- SR(fma(-lr, G^T Xq, (1 - lr wd) W)), head rows Kahan RN (the FP32
 *           update of src/classifier.h). G^T Xq (K = the batch) accumulates in registers per tile
 *           and the SGD + SR epilogue runs on those registers; the new codes go back through
 *           shared memory for 16-byte stores. Batches up to 128 rows: 64-label x 128-feature
 *           tiles, Xq's feature slice resident in shared memory, three blocks per SM (e4m3 with two
 *           weight buffers, bf16 with one); larger batches: 128 x 128 tiles with K streamed in
 *           stages. Both persistent, and both read Xq from c->Xp16, a copy with the columns
 *           permuted so that each lane's accumulators are 8 adjacent features of a row (8 weights
 *           read, rounded and written at once from whole Philox blocks, no exchange between
 *           lanes). SR bits as src/classifier.h says (Philox4x32-7 with its round keys
 *           precomputed; e4m3: 20 bits a weight, five blocks per 32 weights, of which a lane
 *           holding one quarter of 8 draws two and the wgmma kernel's lane, holding all four of a
 *           row, the five once; bf16: one block per 8 weights) and the rounding is elmo_sr_fp8 /
 *           elmo_sr_bf16 bit for bit (e4m3: an FP32 form finished by
 *           the hardware's e4m3x2 conversion, checked on the device in tests). On compute
 *           capability 9.0 e4m3 updates of any batch run as 128 x 128 tiles on wgmma
 *           (elmo_cuda_cls_update_wgmma): G^T read as the transposed A operand straight from its
 *           TMA box, the next tile's first two batch stages loading during the rounding, whose
 *           rows run without branches (each row rounded, SR rows stored).
 *   dX:     split over labels (K): block (batch tile, feature tile, slice s) sums G W over its
 *           labels into dx_part[s] (overwrites or adds, a fixed assignment, no atomics); e4m3
 *           tiles (128 features, 8 warps) are widened to BF16 in shared memory, bf16 tiles take
 *           256 features with 16 warps (fewer reads of each G tile). On compute capability 9.0
 *           the e4m3 blocks run on wgmma instead of mma.sync (elmo_cuda_cls_dx_wgmma); with TMA stages
 *           they form dX^T = W^T G^T with the weights converted straight into registers
 *           (elmo_cuda_cls_dx_rs), which moves a third fewer shared-memory bytes. Then
 *           elmo_cuda_cls_dx_reduce adds the slices in order into dX, so the result does not
 *           depend on scheduling.
 *   logits + grad (e4m3 weights and input, B <= 512 in slices of 128, sm_90a): G = grad_tab[y][bf16(Xq W^T)] per
 *           128-label tile on FP8 wgmma with Xq resident in shared memory, two warpgroups that
 *           alternate tiles, the gradient table and the positives in the epilogue.
 * On sm_90a the wgmma kernels and update_tma_kernel take their tiles by TMA (box copies one thread
 * issues, counted by shared-memory barriers, 128-byte swizzle) and the updates store by TMA; each
 * keeps its cp.async form behind a switch (elmo_cuda_cls_update_tma, _dx_tma, _lg_tma), bit for bit.
 * Weights e4m3 or bf16 (fp32 reference weights take the cuBLASLt path in classifier.cu); the
 * update also takes fp32 weights (G in FP32 holding bf16 values). */
#ifndef ELMO_CUDA_CLASSIFIER_FAST_H
#define ELMO_CUDA_CLASSIFIER_FAST_H

#include "classifier.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Row length of c->Xp16, the update kernels' column-permuted copy of Xq16: d rounded up to 32. */
int64_t elmo_cuda_cls_xp_cols(int64_t d);
/* Row length of c->Xt16 (Xp16 transposed, for the wgmma update). */
int64_t elmo_cuda_cls_xt_cols(int64_t B_cap);
/* 1 when e4m3 updates run on Hopper's warpgroup MMA, any batch (a device of compute capability 9.0,
 * unless ELMO_UPDATE_WGMMA=0 is set in the environment), 0 for update_res_kernel (up to 128 rows) and
 * update_mma_kernel (above). */
int elmo_cuda_cls_update_wgmma(void);
/* 1 when the e4m3 updates move their tiles by TMA (update_wg_kernel's TMA form, and update_tma_kernel
 * when ELMO_UPDATE_WGMMA=0 sends batches up to 128 rows there: compute capability 9.0 and a driver with
 * cuTensorMapEncodeTiled, unless ELMO_UPDATE_TMA=0), 0 for the cp.async forms; the same weights either way. */
int elmo_cuda_cls_update_tma(void);
/* 1 when the wgmma dX (elmo_cuda_cls_dx_wgmma) moves its stages by TMA (compute capability 9.0 and a
 * driver with cuTensorMapEncodeTiled, unless ELMO_DX_TMA=0); the same bits either way. */
int elmo_cuda_cls_dx_tma(void);
/* 1 when the TMA dX takes the weights as the register operand (dx_rs_kernel: dX^T = W^T G^T, the e4m3
 * stage converted into the A fragments, nothing widened into shared memory; 128-feature tiles), unless
 * ELMO_DX_RS=0; the same bits as the widening form. */
int elmo_cuda_cls_dx_rs(void);
/* 1 when the fused e4m3 logits + gradient (elmo_cuda_cls_lg_fused) takes its weight stages by TMA
 * (compute capability 9.0 and the driver's map encoder, unless ELMO_LG_TMA=0); the same G either way. */
int elmo_cuda_cls_lg_tma(void);
/* Slices of the dX kernel for this batch capacity and width: about two blocks per SM of an
 * H100 over all (batch, feature) tiles. c->dx_part holds [slices, B_cap, d] FP32. */
int64_t elmo_cuda_cls_dx_slices(elmo_dtype dt, int64_t B_cap, int64_t d);
/* dx_part[s] (+ when accumulate) = G[:, slice s] W[l0 + slice s] for the n labels from l0. */
void elmo_cuda_cls_dx_part(const elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, int accumulate,
                           cudaStream_t s);
/* 1 when the e4m3 dX blocks run on Hopper's warpgroup MMA (a device of compute capability 9.0,
 * unless ELMO_DX_WGMMA=0 is set in the environment; =128 or =256 forces its feature tile, which is
 * otherwise 256 for batches up to 128 rows and 128 above), 0 for the mma.sync kernel. */
int elmo_cuda_cls_dx_wgmma(void);
/* dX[B, d] += sum over s in order of dx_part[s]. */
void elmo_cuda_cls_dx_reduce(const elmo_cuda_cls *c, int64_t B, float *dX, cudaStream_t s);
/* 1 when e4m3 logits + gradient (batches up to ELMO_LG_MAX_B rows) run fused on Hopper's warpgroup MMA (compute
 * capability 9.0, unless ELMO_LG_WGMMA=0 is set in the environment). */
int elmo_cuda_cls_lg_wgmma(void);
/* 1 (the default) when the classifier's FP8 logits sum over all of d in the tensor cores' own accumulation
 * (the fused kernel in one chain, cuBLASLt with CUBLASLT_MATMUL_DESC_FAST_ACCUM), 0 when each 128-feature
 * part is promoted to FP32 (ELMO_FP8_FAST_ACCUM=0; read at every call). */
int elmo_cuda_fp8_fast_accum(void);
/* 1 when elmo_cuda_cls_lg_fused takes a batch of B rows with c's shapes (e4m3 weights and input, B <= 512
 * (ELMO_LG_MAX_B) in slices of 128 rows, d <= 768, lg_wgmma on). */
int elmo_cuda_cls_lg_ok(const elmo_cuda_cls *c, int64_t B);
/* c->z [round16(B), n] (rows < B) = grad_tab[y][bf16(Xq8 W[l0:l0+n]^T)] in one kernel, c->grad_tab filled:
 * elmo_cuda_cls_lg_ok. Returns 0, launching nothing, otherwise. */
int elmo_cuda_cls_lg_fused(const elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const int64_t *y_indptr,
                           const int32_t *y_indices, cudaStream_t s);
/* W[l0:l0+n] <- SR(W - lr (G^T Xq + wd W)) with G in c->z [round16(B), n]. */
void elmo_cuda_cls_update_mma(elmo_cuda_cls *c, int64_t B, int64_t l0, int64_t n, const elmo_cls_hyper *h,
                              cudaStream_t s);
/* For tests, both must equal numerics.h bit for bit: the update kernel's e4m3 SR run on the
 * device over n (even) device values x with bits r into out (elmo_sr_fp8(x[i], r[i])), and
 * elmo_rand_block_r(..., ELMO_CLS_SR_ROUNDS) through precomputed round keys (host). */
void elmo_cuda_cls_sr_fp8_dev(const float *x, const uint32_t *r, uint8_t *out, int64_t n, cudaStream_t s);
/* The same for bf16 weights (elmo_sr_bf16). */
void elmo_cuda_cls_sr_bf16_dev(const float *x, const uint32_t *r, uint16_t *out, int64_t n, cudaStream_t s);
void elmo_cuda_cls_rand_block_rk(uint64_t seed, uint64_t step, uint32_t tensor, uint64_t block, uint32_t out[4]);

#ifdef __cplusplus
}
#endif

#endif
