/* optim.h: optimisers and learning-rate schedules.
 * AdamW over a flat parameter vector stored in bf16 (Kahan-compensated, DESIGN.md §5) or fp32:
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2          (FP32 math, stored in the param dtype)
 *   upd = -lr (m_hat / (sqrt(v_hat) + eps) + wd p)
 *   bf16+Kahan: u = upd + c;  p' = bf16_rn(p + u);  c' = bf16_rn(u - (p' - p))
 *   otherwise:  p' = p + upd (rounded RN to the param dtype)
 * The classifier's SGD with stochastic rounding is fused into the classifier step (classifier.h). */
#ifndef ELMO_OPTIM_H
#define ELMO_OPTIM_H

#include <stdint.h>
#include "config.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif


typedef struct elmo_adamw_hyper {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t t;           /* 1-based step for bias correction */
} elmo_adamw_hyper;

/* Updates n parameters. p/m/v are bf16 (uint16_t) when dtype is ELMO_BF16, else float.
 * c: bf16 Kahan buffer or NULL. g: FP32 gradients. decay_mask: per element 1 = apply weight
 * decay (NULL = all). */
void elmo_adamw_update(void *p, void *m, void *v, uint16_t *c, elmo_dtype dtype, const float *g, int64_t n,
                       const uint8_t *decay_mask, const elmo_adamw_hyper *h);

/* Learning rate at `step` (0-based) of `total` steps: linear warm-up to opt->lr over
 * opt->warmup_steps, then cosine to 0 / linear to 0 / constant. */
double elmo_lr_at(const elmo_opt_config *opt, int64_t step, int64_t total);

#ifdef __cplusplus
}
#endif

#endif
