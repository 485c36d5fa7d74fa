/* classifier.c: CPU reference of the chunked fused FP8/BF16/FP32 classifier step. */
#include "classifier.h"
#include "numerics.h"

#include <math.h>
#include <string.h>

void elmo_cls_cast_input(const float *X, int64_t n, int fp8, float *Xq) {
  for (int64_t i = 0; i < n; i++)
    Xq[i] = fp8 ? elmo_fp8_to_f32(elmo_f32_to_fp8(X[i])) : elmo_bf16_to_f32(elmo_f32_to_bf16(X[i]));
}

float elmo_cls_w(const elmo_cls_weights *w, int64_t l, int64_t k) {
  int64_t i = l * w->d + k;
  switch (w->dtype) {
    case ELMO_FP8: return elmo_fp8_to_f32(((const uint8_t *)w->W)[i]);
    case ELMO_BF16: return elmo_bf16_to_f32(((const uint16_t *)w->W)[i]);
    default: return ((const float *)w->W)[i];
  }
}

/* Row l of W widened to FP32. */
static void load_row(const elmo_cls_weights *w, int64_t l, float *row) {
  for (int64_t k = 0; k < w->d; k++) row[k] = elmo_cls_w(w, l, k);
}

void elmo_cls_logits(const elmo_cls_weights *w, const float *Xq, int64_t B, int64_t l0, int64_t n, int store_bf16,
                     float *z) {
  int64_t d = w->d;
  float row[d];
  for (int64_t j = 0; j < n; j++) {
    load_row(w, l0 + j, row);
    for (int64_t b = 0; b < B; b++) {
      const float *x = Xq + b * d;
      float acc = 0.0f;
      for (int64_t k = 0; k < d; k++) acc += x[k] * row[k];
      z[b * n + j] = store_bf16 ? elmo_bf16_to_f32(elmo_f32_to_bf16(acc)) : acc;
    }
  }
}

static inline float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

void elmo_cls_grad_table(uint16_t *t) {
  for (uint32_t c = 0; c < 65536; c++) {
    float s = sigmoidf(elmo_bf16_to_f32((elmo_bf16)c));
    t[c] = elmo_f32_to_bf16(s);
    s -= 1.0f;
    t[65536 + c] = elmo_f32_to_bf16(s);
  }
}

double elmo_cls_grad(float *z, int64_t B, int64_t l0, int64_t n, int64_t L, const int64_t *y_indptr,
                     const int32_t *y_indices, int want_loss) {
  double loss = 0.0;
  for (int64_t b = 0; b < B; b++) {
    float *zr = z + b * n;
    if (want_loss) {
      for (int64_t j = 0; j < n && l0 + j < L; j++) {
        float v = zr[j];
        loss += (double)(fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v))));
      }
      for (int64_t e = y_indptr[b]; e < y_indptr[b + 1]; e++) {
        int64_t j = y_indices[e] - l0;
        if (j >= 0 && j < n) loss -= (double)zr[j];
      }
    }
    for (int64_t j = 0; j < n; j++) zr[j] = l0 + j < L ? sigmoidf(zr[j]) : 0.0f;
    for (int64_t e = y_indptr[b]; e < y_indptr[b + 1]; e++) {
      int64_t j = y_indices[e] - l0;
      if (j >= 0 && j < n) zr[j] -= 1.0f;
    }
    for (int64_t j = 0; j < n; j++) zr[j] = elmo_bf16_to_f32(elmo_f32_to_bf16(zr[j]));
  }
  return loss;
}

void elmo_cls_dx(const elmo_cls_weights *w, const float *G, int64_t B, int64_t l0, int64_t n, float *dX) {
  int64_t d = w->d;
  float row[d];
  for (int64_t j = 0; j < n; j++) {
    load_row(w, l0 + j, row);
    for (int64_t b = 0; b < B; b++) {
      float g = G[b * n + j];
      if (g == 0.0f) continue;
      float *dx = dX + b * d;
      for (int64_t k = 0; k < d; k++) dx[k] += g * row[k];
    }
  }
}

/* Stores v into W[i] with SR (fp8/bf16) or exactly (fp32). */
static inline void store_sr(elmo_cls_weights *w, int64_t i, float v, uint32_t r) {
  switch (w->dtype) {
    case ELMO_FP8: ((uint8_t *)w->W)[i] = elmo_sr_fp8(v, r); break;
    case ELMO_BF16: ((uint16_t *)w->W)[i] = elmo_sr_bf16(v, r); break;
    default: ((float *)w->W)[i] = v; break;
  }
}

/* Kahan row: p' = RN(p + u), c' = bf16(u - (p' - p)) with u = fma(nlr, g, ndecay p) + c. */
static void update_kahan_row(elmo_cls_weights *w, int64_t l, const float *grad, const elmo_cls_coef *cf, uint16_t *c) {
  for (int64_t k = 0; k < w->d; k++) {
    int64_t i = l * w->d + k;
    float p = elmo_cls_w(w, l, k);
    float u = fmaf(cf->nlr, grad[k], cf->ndecay * p) + elmo_bf16_to_f32(c[k]);
    float q;
    switch (w->dtype) {
      case ELMO_FP8: ((uint8_t *)w->W)[i] = elmo_f32_to_fp8(p + u); q = elmo_fp8_to_f32(((uint8_t *)w->W)[i]); break;
      case ELMO_BF16: ((uint16_t *)w->W)[i] = elmo_f32_to_bf16(p + u); q = elmo_bf16_to_f32(((uint16_t *)w->W)[i]); break;
      default: ((float *)w->W)[i] = p + u; q = p + u; break;
    }
    c[k] = elmo_f32_to_bf16(u - (q - p));
  }
}

void elmo_cls_update(elmo_cls_weights *w, const float *G, const float *Xq, int64_t B, int64_t l0, int64_t n,
                     const elmo_cls_hyper *h) {
  int64_t d = w->d;
  float grad[d];
  const elmo_cls_coef cf = elmo_cls_coefs(h);
  for (int64_t j = 0; j < n; j++) {
    int64_t l = l0 + j;
    if (l >= w->L) continue; /* padded rows stay zero */
    memset(grad, 0, sizeof grad);
    for (int64_t b = 0; b < B; b++) {
      float g = G[b * n + j];
      if (g == 0.0f) continue;
      const float *x = Xq + b * d;
      for (int64_t k = 0; k < d; k++) grad[k] += g * x[k];
    }
    int32_t slot = w->head_slot ? w->head_slot[l] : -1;
    if (slot >= 0 && w->kahan) {
      update_kahan_row(w, l, grad, &cf, w->kahan + (int64_t)slot * d);
      continue;
    }
    if (w->dtype == ELMO_FP8) { /* 20 bits a weight, five blocks per group of 32 (classifier.h) */
      for (int64_t k0 = 0; k0 < d; k0 += 128)
        for (int64_t t = 0; t < 4; t++) {
          const uint64_t grp = elmo_cls_sr8_group(l, k0 + 8 * t, d);
          uint32_t words[20];
          for (int j = 0; j < 5; j++)
            elmo_rand_block_r(h->seed, (uint64_t)h->step, ELMO_RNG_CLS_SR, 5 * grp + (uint64_t)j, ELMO_CLS_SR_ROUNDS,
                              words + 4 * j);
          for (int q = 0; q < 4; q++)
            for (int e = 0; e < 8; e++) {
              const int64_t k = k0 + 32 * q + 8 * t + e;
              if (k >= d) continue;
              const float p = elmo_cls_w(w, l, k);
              store_sr(w, l * d + k, fmaf(cf.nlr, grad[k], cf.decay * p), elmo_cls_sr8_pick(words + 5 * q, e));
            }
        }
      continue;
    }
    uint32_t bits[4] = {0, 0, 0, 0}; /* bf16: 16 bits a weight, one block per 8 (classifier.h); fp32 uses none */
    for (int64_t k = 0; k < d; k++) {
      int64_t i = l * d + k;
      if (w->dtype == ELMO_BF16 && (k == 0 || (i & 7) == 0))
        elmo_rand_block_r(h->seed, (uint64_t)h->step, ELMO_RNG_CLS_SR, (uint64_t)i >> 3, ELMO_CLS_SR_ROUNDS, bits);
      float p = elmo_cls_w(w, l, k);
      store_sr(w, i, fmaf(cf.nlr, grad[k], cf.decay * p), bits[(i & 7) >> 1] >> (16 * (i & 1)));
    }
  }
}

double elmo_cls_step(elmo_cls_weights *w, const float *X, int fp8_input, int64_t B, int64_t chunk,
                     const int64_t *y_indptr, const int32_t *y_indices, const elmo_cls_hyper *h, int want_loss,
                     float *Xq, float *zbuf, float *dX) {
  elmo_cls_cast_input(X, B * w->d, fp8_input, Xq);
  memset(dX, 0, sizeof(float) * (size_t)(B * w->d));
  double loss = 0.0;
  for (int64_t l0 = 0; l0 < w->L_pad; l0 += chunk) {
    int64_t n = w->L_pad - l0 < chunk ? w->L_pad - l0 : chunk;
    elmo_cls_logits(w, Xq, B, l0, n, 1, zbuf);
    loss += elmo_cls_grad(zbuf, B, l0, n, w->L, y_indptr, y_indices, want_loss);
    elmo_cls_dx(w, zbuf, B, l0, n, dX);
    elmo_cls_update(w, zbuf, Xq, B, l0, n, h);
  }
  return loss;
}

/* Is (row, label) a filter pair? Rows of the filter CSR are sorted. */
static int filtered(const int64_t *ip, const int32_t *ix, int64_t row, int32_t label) {
  if (!ip) return 0;
  int64_t lo = ip[row], hi = ip[row + 1];
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (ix[mid] == label) return 1;
    if (ix[mid] < label) lo = mid + 1; else hi = mid;
  }
  return 0;
}

/* Better = higher score, then lower label. */
static inline int better(float s, int32_t l, float t, int32_t m) {
  return s > t || (s == t && m >= 0 && l < m) || m < 0;
}

void elmo_topk_merge(const float *z, int64_t B, int64_t l0, int64_t n, int64_t L, int k, const int64_t *rows,
                     const int64_t *f_indptr, const int32_t *f_indices, int32_t *topk, float *topv) {
  for (int64_t b = 0; b < B; b++) {
    int32_t *tl = topk + b * k;
    float *tv = topv + b * k;
    for (int64_t j = 0; j < n; j++) {
      int32_t l = (int32_t)(l0 + j);
      if (l >= L) break;
      float s = z[b * n + j];
      if (isnan(s)) s = -INFINITY; /* as the CUDA top-k: a NaN score ranks as -inf */
      if (!better(s, l, tv[k - 1], tl[k - 1])) continue;
      if (filtered(f_indptr, f_indices, rows ? rows[b] : b, l)) continue;
      int p = k - 1;
      while (p > 0 && better(s, l, tv[p - 1], tl[p - 1])) {
        tl[p] = tl[p - 1];
        tv[p] = tv[p - 1];
        p--;
      }
      tl[p] = l;
      tv[p] = s;
    }
  }
}
