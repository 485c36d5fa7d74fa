/* classifier.h: the chunked, fused low-precision classifier step (CPU reference, DESIGN.md §5).
 * Per chunk of labels [l0, l0+n):
 *   z = Xq W_c^T        FP32 accumulation, stored BF16          z  [B, n]
 *   G = sigmoid(z) - Y  in place, BF16; padded labels give 0    G  [B, n]
 *   dX += G W_c         FP32 accumulation (old W)               dX [B, d]
 *   W_c <- SR(W_c - lr (G^T Xq + wd W_c))  tile by tile, no weight-gradient buffer
 * Xq is X cast once per step to e4m3 (RN, satfinite, scale 1) or bf16, held as FP32 values.
 * The update in FP32, with c = elmo_cls_coefs(h) and g = (G^T Xq)[l, k] (FP32 sum):
 *   SR rows     W <- SR(fma(c.nlr, g, c.decay * W))          nlr = -lr, decay = 1 - lr wd
 *   head rows   u = fma(c.nlr, g, c.ndecay * W) + comp;  W' = RN(W + u);  comp' = bf16(u - (W' - W))
 * (fused multiply-adds, the same bits as the GPU's FFMA). Random bits for SR, from Philox4x32-7 blocks
 * P(j) = elmo_rand_block_r(seed, step, ELMO_RNG_CLS_SR, j, ELMO_CLS_SR_ROUNDS):
 *   e4m3 weights, 20 bits a weight (all elmo_sr_fp8 uses): weight (l, k) belongs to group
 *     grp = (l * ceil(d / 128) + k / 128) * 4 + (k % 32) / 8
 *   (its row, its 128-feature span, and which 8 of each 32 features) at position
 *     p = 8 ((k % 128) / 32) + k % 8,
 *   the group's 640 bits are the 20 words of P(5 grp) .. P(5 grp + 4) in order, and weight p takes
 *   bits 20 p .. 20 p + 19 (little-endian across words): elmo_cls_sr8_pick. Five blocks per 32
 *   weights; positions 8q .. 8q + 7 (8 adjacent features, what a GPU lane rounds at once) are
 *   exactly words 5q .. 5q + 4, and a lane that holds all four q of a row draws the five blocks once.
 *   bf16 weights, 16 bits a weight: element i = label * d + k takes the low (i even) or high (i odd)
 *   half of word (i % 8) / 2 of P(i / 8), one block per 8 weights.
 * (The generator was a third of the GPU update with one block per 4 e4m3 weights.) */
#ifndef ELMO_CLASSIFIER_H
#define ELMO_CLASSIFIER_H

#include <stdint.h>
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_cls_weights {
  void *W;                    /* [L_pad, d] in dtype */
  elmo_dtype dtype;           /* ELMO_FP8 | ELMO_BF16 | ELMO_F32 */
  int64_t L, L_pad, d;        /* real labels, padded rows, input dim */
  uint16_t *kahan;            /* [n_head, d] bf16 compensation, or NULL */
  const int32_t *head_slot;   /* [L_pad] row in kahan or -1, or NULL */
} elmo_cls_weights;

typedef struct elmo_cls_hyper {
  double lr, weight_decay;
  uint64_t seed;
  int64_t step;
} elmo_cls_hyper;

#define ELMO_CLS_SR_ROUNDS 7

/* The e4m3 SR group of weight (l, k) of rows d wide (header comment). */
static inline uint64_t elmo_cls_sr8_group(int64_t l, int64_t k, int64_t d) {
  return ((uint64_t)l * (uint64_t)((d + 127) / 128) + (uint64_t)(k / 128)) * 4u + (uint64_t)((k % 32) / 8);
}
/* Bits 20 e .. 20 e + 19 of the 160-bit string u[0..4] (e < 8): position 8q + e of a group whose
 * words 5q .. 5q + 4 are u. */
static inline uint32_t elmo_cls_sr8_pick(const uint32_t u[5], int e) {
  const int o = 20 * e, q = o >> 5, s = o & 31;
  uint32_t r = u[q] >> s;
  if (s > 12) r |= u[q + 1] << (32 - s);
  return r & 0xFFFFFu;
}

/* The update's FP32 coefficients (above), rounded once from the double hyperparameters. */
typedef struct elmo_cls_coef {
  float nlr, decay, ndecay;   /* -lr, 1 - lr wd, -lr wd */
} elmo_cls_coef;

static inline elmo_cls_coef elmo_cls_coefs(const elmo_cls_hyper *h) {
  elmo_cls_coef c;
  c.nlr = (float)-h->lr;
  c.decay = (float)(1.0 - h->lr * h->weight_decay);
  c.ndecay = (float)-(h->lr * h->weight_decay);
  return c;
}

/* Xq[i] = cast(X[i]) as FP32 values exactly representable in e4m3 (fp8=1) or bf16 (fp8=0). */
void elmo_cls_cast_input(const float *X, int64_t n, int fp8, float *Xq);
/* Weight (l, k) as FP32. */
float elmo_cls_w(const elmo_cls_weights *w, int64_t l, int64_t k);
/* z[b, j] = bf16(sum_k Xq[b,k] W[l0+j,k]) (store_bf16) or the FP32 sum. */
void elmo_cls_logits(const elmo_cls_weights *w, const float *Xq, int64_t B, int64_t l0, int64_t n, int store_bf16,
                     float *z);
/* The gradient of one bf16 logit code c as elmo_cls_grad computes it: t[c] = bf16(sigmoid(z)),
 * t[65536 + c] = bf16(sigmoid(z) - 1) (a positive label), z = the bf16 value of c. The GPU looks
 * G up here, so both give the same bits. t holds 131072 codes. */
void elmo_cls_grad_table(uint16_t *t);
/* In place z -> G = bf16(sigmoid(z) - y); labels >= L get 0. Returns the summed BCE over the
 * real labels when want_loss (computed from the stored logits), else 0. */
double elmo_cls_grad(float *z, int64_t B, int64_t l0, int64_t n, int64_t L, const int64_t *y_indptr,
                     const int32_t *y_indices, int want_loss);
/* dX[B, d] += G[B, n] W[l0:l0+n] */
void elmo_cls_dx(const elmo_cls_weights *w, const float *G, int64_t B, int64_t l0, int64_t n, float *dX);
/* Fused SGD update of rows l0..l0+n with SR (Kahan RN rows for head labels). */
void elmo_cls_update(elmo_cls_weights *w, const float *G, const float *Xq, int64_t B, int64_t l0, int64_t n,
                     const elmo_cls_hyper *h);
/* The whole step over all chunks. zbuf: [B, chunk] scratch. dX [B, d] is overwritten.
 * Returns the loss as elmo_cls_grad does. */
double elmo_cls_step(elmo_cls_weights *w, const float *X, int fp8_input, int64_t B, int64_t chunk,
                     const int64_t *y_indptr, const int32_t *y_indices, const elmo_cls_hyper *h, int want_loss,
                     float *Xq, float *zbuf, float *dX);

/* Top-k update for prediction: merges scores z[B, n] of labels l0.. into running lists
 * topk/topv [B, k] sorted by score desc then label asc; entries in filter (rows = dataset row
 * ids) and labels >= L are skipped; a NaN score counts as -inf (as cuda/topk.h's). */
void elmo_topk_merge(const float *z, int64_t B, int64_t l0, int64_t n, int64_t L, int k, const int64_t *rows,
                     const int64_t *f_indptr, const int32_t *f_indices, int32_t *topk, float *topv);

#ifdef __cplusplus
}
#endif

#endif
