/* optim.c: Kahan-compensated AdamW for bf16 parameters, plain AdamW in fp32; LR schedules. */
#include "optim.h"
#include "numerics.h"

#include <math.h>
#include <string.h>

static inline float ld(const void *a, elmo_dtype t, int64_t i) {
  return t == ELMO_BF16 ? elmo_bf16_to_f32(((const uint16_t *)a)[i]) : ((const float *)a)[i];
}

static inline float st(void *a, elmo_dtype t, int64_t i, float x) {
  if (t == ELMO_BF16) {
    uint16_t q = elmo_f32_to_bf16(x);
    ((uint16_t *)a)[i] = q;
    return elmo_bf16_to_f32(q);
  }
  ((float *)a)[i] = x;
  return x;
}

void elmo_adamw_update(void *p, void *m, void *v, uint16_t *c, elmo_dtype dtype, const float *g, int64_t n,
                       const uint8_t *decay_mask, const elmo_adamw_hyper *h) {
  const float b1 = h->beta1, b2 = h->beta2;
  const float bc1 = 1.0f - powf(b1, (float)h->t), bc2 = 1.0f - powf(b2, (float)h->t);
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = st(m, dtype, i, b1 * ld(m, dtype, i) + (1.0f - b1) * gi);
    float vi = st(v, dtype, i, b2 * ld(v, dtype, i) + (1.0f - b2) * gi * gi);
    float pi = ld(p, dtype, i);
    float wd = (!decay_mask || decay_mask[i]) ? h->weight_decay : 0.0f;
    float upd = -h->lr * ((mi / bc1) / (sqrtf(vi / bc2) + h->eps) + wd * pi);
    if (c) {
      float u = upd + elmo_bf16_to_f32(c[i]);
      float q = st(p, dtype, i, pi + u);
      c[i] = elmo_f32_to_bf16(u - (q - pi));
    } else {
      st(p, dtype, i, pi + upd);
    }
  }
}

double elmo_lr_at(const elmo_opt_config *opt, int64_t step, int64_t total) {
  if (opt->warmup_steps > 0 && step < opt->warmup_steps)
    return opt->lr * (double)(step + 1) / (double)opt->warmup_steps;
  if (!strcmp(opt->schedule, "constant")) return opt->lr;
  int64_t span = total - opt->warmup_steps;
  if (span <= 0) return opt->lr;
  double t = (double)(step - opt->warmup_steps) / (double)span;
  if (t > 1.0) t = 1.0;
  if (!strcmp(opt->schedule, "linear")) return opt->lr * (1.0 - t);
  return opt->lr * 0.5 * (1.0 + cos(M_PI * t));
}
