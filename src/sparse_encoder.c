/* sparse_encoder.c: embedding bag + L2 normalisation (+ optional LayerNorm), forward/backward. */
#include "sparse_encoder.h"
#include "common.h"

#include <math.h>
#include <string.h>

#define LN_EPS 1e-5f

void elmo_sparse_cache_alloc(elmo_sparse_cache *c, int64_t B, int64_t d) {
  c->x = elmo_malloc(sizeof(float) * (size_t)(B * d));
  c->norm = elmo_malloc(sizeof(float) * (size_t)B);
  c->xhat = elmo_malloc(sizeof(float) * (size_t)(B * d));
  c->rstd = elmo_malloc(sizeof(float) * (size_t)B);
}

void elmo_sparse_cache_free(elmo_sparse_cache *c) {
  ELMO_FREE(c->x);
  ELMO_FREE(c->norm);
  ELMO_FREE(c->xhat);
  ELMO_FREE(c->rstd);
}

static void bag_row(const float *E, int64_t d, int64_t s, int64_t e, const int32_t *indices, const float *values,
                    float *h) {
  memset(h, 0, sizeof(float) * (size_t)d);
  for (int64_t i = s; i < e; i++) {
    const float *row = E + (int64_t)indices[i] * d;
    float v = values[i];
    for (int64_t k = 0; k < d; k++) h[k] += v * row[k];
  }
}

static void layernorm_row(const float *x, const float *gamma, const float *beta, int64_t d, float *xhat,
                          float *rstd, float *out) {
  double mean = 0, var = 0;
  for (int64_t k = 0; k < d; k++) mean += x[k];
  mean /= (double)d;
  for (int64_t k = 0; k < d; k++) var += (x[k] - mean) * (x[k] - mean);
  var /= (double)d;
  float r = (float)(1.0 / sqrt(var + LN_EPS));
  *rstd = r;
  for (int64_t k = 0; k < d; k++) {
    xhat[k] = (float)(x[k] - mean) * r;
    out[k] = xhat[k] * gamma[k] + beta[k];
  }
}

void elmo_sparse_forward(const float *E, const float *gamma, const float *beta, int64_t d, int64_t B,
                         const int64_t *indptr, const int32_t *indices, const float *values,
                         elmo_sparse_cache *c, float *out) {
  for (int64_t b = 0; b < B; b++) {
    float *x = c->x + b * d;
    bag_row(E, d, indptr[b], indptr[b + 1], indices, values, x);
    double ss = 0;
    for (int64_t k = 0; k < d; k++) ss += (double)x[k] * x[k];
    float n = (float)sqrt(ss);
    if (n < 1e-12f) n = 1e-12f;
    c->norm[b] = n;
    for (int64_t k = 0; k < d; k++) x[k] /= n;
    if (gamma) layernorm_row(x, gamma, beta, d, c->xhat + b * d, &c->rstd[b], out + b * d);
    else memcpy(out + b * d, x, sizeof(float) * (size_t)d);
  }
}

/* dx from dy through LayerNorm: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy * gamma. */
static void layernorm_back_row(const float *dy, const float *gamma, const float *xhat, float rstd, int64_t d,
                               float *dx, float *dgamma, float *dbeta) {
  double mg = 0, mgx = 0;
  for (int64_t k = 0; k < d; k++) {
    float g = dy[k] * gamma[k];
    mg += g;
    mgx += g * xhat[k];
    dgamma[k] += dy[k] * xhat[k];
    dbeta[k] += dy[k];
  }
  mg /= (double)d;
  mgx /= (double)d;
  for (int64_t k = 0; k < d; k++) dx[k] = rstd * (float)(dy[k] * gamma[k] - mg - xhat[k] * mgx);
}

void elmo_sparse_backward(const float *gamma, int64_t d, int64_t B, const int64_t *indptr, const int32_t *indices,
                          const float *values, const elmo_sparse_cache *c, float *dout, float *dE, float *dgamma,
                          float *dbeta) {
  for (int64_t b = 0; b < B; b++) {
    float *dx = dout + b * d;
    const float *x = c->x + b * d;
    if (gamma) {
      float tmp[d];
      layernorm_back_row(dx, gamma, c->xhat + b * d, c->rstd[b], d, tmp, dgamma, dbeta);
      memcpy(dx, tmp, sizeof tmp);
    }
    /* through x = h / ||h||: dh = (dx - x (x . dx)) / ||h|| */
    double dot = 0;
    for (int64_t k = 0; k < d; k++) dot += (double)x[k] * dx[k];
    float inv = 1.0f / c->norm[b];
    for (int64_t k = 0; k < d; k++) dx[k] = (dx[k] - x[k] * (float)dot) * inv;
    for (int64_t i = indptr[b]; i < indptr[b + 1]; i++) {
      float *row = dE + (int64_t)indices[i] * d;
      float v = values[i];
      for (int64_t k = 0; k < d; k++) row[k] += v * dx[k];
    }
  }
}
