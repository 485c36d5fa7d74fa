/* sparse_encoder.h: embedding-bag encoder for BoW input (CPU reference).
 *   h_b = sum_f v_bf E[f]            E [D, d]
 *   x_b = h_b / max(||h_b||, 1e-12)  (L2-normalised)
 *   y_b = LN(x_b) (gamma, beta) when layernorm is on, else x_b */
#ifndef ELMO_SPARSE_ENCODER_H
#define ELMO_SPARSE_ENCODER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_sparse_cache {
  float *x;      /* [B, d] normalised bag */
  float *norm;   /* [B] ||h_b|| */
  float *xhat;   /* [B, d] LN-normalised (layernorm only) */
  float *rstd;   /* [B] 1/std (layernorm only) */
} elmo_sparse_cache;

/* E, gamma, beta are FP32 views of the parameters (gamma/beta NULL without layernorm). */
void elmo_sparse_forward(const float *E, const float *gamma, const float *beta, int64_t d, int64_t B,
                         const int64_t *indptr, const int32_t *indices, const float *values,
                         elmo_sparse_cache *c, float *out /* [B, d] */);
/* Accumulates dE (rows touched only), dgamma, dbeta from dout [B, d]. dout is clobbered. */
void elmo_sparse_backward(const float *gamma, int64_t d, int64_t B, const int64_t *indptr, const int32_t *indices,
                          const float *values, const elmo_sparse_cache *c, float *dout, float *dE, float *dgamma,
                          float *dbeta);
void elmo_sparse_cache_alloc(elmo_sparse_cache *c, int64_t B, int64_t d);
void elmo_sparse_cache_free(elmo_sparse_cache *c);

#ifdef __cplusplus
}
#endif

#endif
