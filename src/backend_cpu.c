/* backend_cpu.c: the CPU reference backend: every op in plain C, the numerics oracle. */
#include "backend.h"
#include "classifier.h"
#include "numerics.h"
#include "optim.h"
#include "sparse_encoder.h"
#include "transformer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct elmo_model {
  elmo_model_desc md;          /* shallow copy; tensor tables owned by the caller */
  elmo_opt_config enc_opt, cls_opt;
  void *buf[ELMO_NUM_BUFS];    /* host buffers, layout in model.h */
  float *enc_f32;              /* [enc_numel] FP32 view of the parameters */
  int enc_f32_stale;           /* ENC_PARAM changed since enc_f32 was widened */
  float *enc_grad;             /* [enc_numel] */
  uint8_t *decay;              /* [enc_numel] */
  int32_t *head_slot;          /* [L_pad] */
  float *X, *Xq, *dX, *z;      /* [B, d] x3, [B, chunk] */
  elmo_sparse_cache sc;
  elmo_tf_params tfp, tfg;     /* transformer: FP32 view of the parameters, gradients */
  elmo_tf_cache tf;            /* transformer activations */
  size_t bytes;                /* everything allocated */
};

static void cpu_destroy(elmo_model **pm);

static void *alloc_track(elmo_model *m, size_t n) {
  m->bytes += n;
  return elmo_calloc(1, n);
}

static int cpu_create(const elmo_config *cfg, const elmo_model_desc *md, elmo_model **out, elmo_err *err) {
  elmo_model *m = elmo_calloc(1, sizeof *m);
  m->md = *md;
  m->enc_opt = cfg->enc_opt;
  m->cls_opt = cfg->cls_opt;
  for (int b = 0; b < ELMO_NUM_BUFS; b++) m->buf[b] = alloc_track(m, elmo_buf_bytes(md, b));
  elmo_model_init_host(md, m->buf);
  m->enc_f32_stale = 1;
  int64_t n = md->enc_numel, B = md->batch_size, d = md->d;
  if (md->encoder_kind == ELMO_ENC_TRANSFORMER) {
    elmo_tf_config tc;
    elmo_model_tf_config(md, &tc);
    int rc = elmo_tf_alloc(&m->tfp, &tc, err);
    if (!rc) rc = elmo_tf_alloc(&m->tfg, &tc, err);
    if (!rc) rc = elmo_tf_cache_alloc(&m->tf, &tc, (int)md->batch_size, (int)md->T, err);
    if (rc) {
      elmo_model *mm = m;
      cpu_destroy(&mm);
      return rc;
    }
    m->enc_f32 = m->tfp.flat;
    m->enc_grad = m->tfg.flat;
    m->bytes += 2 * sizeof(float) * (size_t)n;
  } else {
    m->enc_f32 = alloc_track(m, sizeof(float) * (size_t)n);
    m->enc_grad = alloc_track(m, sizeof(float) * (size_t)n);
  }
  m->decay = alloc_track(m, (size_t)n);
  elmo_model_decay_mask(md, m->decay);
  m->head_slot = alloc_track(m, sizeof(int32_t) * (size_t)md->L_pad);
  elmo_model_head_slots(md, m->head_slot);
  m->X = alloc_track(m, sizeof(float) * (size_t)(B * d));
  m->Xq = alloc_track(m, sizeof(float) * (size_t)(B * d));
  m->dX = alloc_track(m, sizeof(float) * (size_t)(B * d));
  m->z = alloc_track(m, sizeof(float) * (size_t)(B * md->chunk_labels));
  if (md->encoder_kind == ELMO_ENC_SPARSE) elmo_sparse_cache_alloc(&m->sc, B, d);
  *out = m;
  return ELMO_OK;
}

static void cpu_destroy(elmo_model **pm) {
  elmo_model *m = *pm;
  if (!m) return;
  for (int b = 0; b < ELMO_NUM_BUFS; b++) free(m->buf[b]);
  if (m->md.encoder_kind == ELMO_ENC_TRANSFORMER) {
    elmo_tf_free(&m->tfp);
    elmo_tf_free(&m->tfg);
    elmo_tf_cache_free(&m->tf);
  } else {
    free(m->enc_f32);
    free(m->enc_grad);
  }
  free(m->decay);
  free(m->head_slot);
  free(m->X);
  free(m->Xq);
  free(m->dX);
  free(m->z);
  elmo_sparse_cache_free(&m->sc);
  free(m);
  *pm = NULL;
}

/* FP32 view of the encoder parameters (exact widening of bf16), redone only after they change. */
static void widen_params(elmo_model *m) {
  if (!m->enc_f32_stale) return;
  m->enc_f32_stale = 0;
  int64_t n = m->md.enc_numel;
  if (m->md.enc_dtype == ELMO_BF16) {
    const uint16_t *p = m->buf[ELMO_BUF_ENC_PARAM];
    for (int64_t i = 0; i < n; i++) m->enc_f32[i] = elmo_bf16_to_f32(p[i]);
  } else {
    memcpy(m->enc_f32, m->buf[ELMO_BUF_ENC_PARAM], sizeof(float) * (size_t)n);
  }
}

static const float *tensor_f32(const elmo_model *m, const float *base, const char *name) {
  for (int t = 0; t < m->md.n_enc_tensors; t++)
    if (!strcmp(m->md.enc_tensors[t].name, name)) return base + m->md.enc_tensors[t].offset;
  return NULL;
}

static int encoder_forward(elmo_model *m, const elmo_batch *b, float *X, elmo_err *err) {
  if (m->md.encoder_kind == ELMO_ENC_SPARSE) {
    const float *E = m->enc_f32;
    const float *g = tensor_f32(m, m->enc_f32, "encoder.LayerNorm.weight");
    const float *be = tensor_f32(m, m->enc_f32, "encoder.LayerNorm.bias");
    elmo_sparse_forward(E, g, be, m->md.d, b->B, b->x_indptr, b->x_indices, b->x_values, &m->sc, X);
    return ELMO_OK;
  }
  return elmo_tf_forward(&m->tfp, &m->tf, b->ids, b->mask, (int)b->B, (int)b->T, X, err);
}

static int encoder_backward(elmo_model *m, const elmo_batch *b, float *dX, elmo_err *err) {
  memset(m->enc_grad, 0, sizeof(float) * (size_t)m->md.enc_numel);
  if (m->md.encoder_kind == ELMO_ENC_SPARSE) {
    const float *g = tensor_f32(m, m->enc_f32, "encoder.LayerNorm.weight");
    float *dg = (float *)tensor_f32(m, m->enc_grad, "encoder.LayerNorm.weight");
    float *db = (float *)tensor_f32(m, m->enc_grad, "encoder.LayerNorm.bias");
    elmo_sparse_backward(g, m->md.d, b->B, b->x_indptr, b->x_indices, b->x_values, &m->sc, dX, m->enc_grad, dg, db);
    return ELMO_OK;
  }
  return elmo_tf_backward(&m->tfp, &m->tf, dX, &m->tfg, err);
}

/* Inverted dropout with counter-based keep bits: element (row, k) of step `step`. */
static void dropout(const elmo_model *m, int64_t step, int64_t B, float *x) {
  double p = m->md.dropout;
  if (p <= 0.0) return;
  uint32_t thr = (uint32_t)(p * 4294967296.0);
  float scale = (float)(1.0 / (1.0 - p));
  int64_t n = B * m->md.d;
  for (int64_t i = 0; i < n; i++)
    x[i] = elmo_rand_u32(m->md.seed, (uint64_t)step, ELMO_RNG_DROPOUT, (uint64_t)i) < thr ? 0.0f : x[i] * scale;
}

static elmo_cls_weights cls_weights(elmo_model *m) {
  elmo_cls_weights w = {
    .W = m->buf[ELMO_BUF_CLS_W], .dtype = m->md.cls_dtype, .L = m->md.num_labels, .L_pad = m->md.L_pad,
    .d = m->md.d, .kahan = m->md.n_head ? m->buf[ELMO_BUF_CLS_KAHAN] : NULL,
    .head_slot = m->md.n_head ? m->head_slot : NULL,
  };
  return w;
}

static int cpu_train_step(elmo_model *m, const elmo_batch *b, const elmo_step *s, double *loss, elmo_err *err) {
  widen_params(m);
  int rc = encoder_forward(m, b, m->X, err);
  if (rc) return rc;
  dropout(m, s->step, b->B, m->X);
  elmo_cls_weights w = cls_weights(m);
  elmo_cls_hyper h = {.lr = s->lr_classifier, .weight_decay = m->cls_opt.weight_decay, .seed = m->md.seed,
                      .step = s->step};
  double l = elmo_cls_step(&w, m->X, m->md.cls_input_fp8, b->B, m->md.chunk_labels, b->y_indptr, b->y_indices,
                           &h, s->compute_loss, m->Xq, m->z, m->dX);
  *loss = s->compute_loss ? l : NAN;
  dropout(m, s->step, b->B, m->dX); /* same mask: zeroed where X was dropped, scaled elsewhere */
  rc = encoder_backward(m, b, m->dX, err);
  if (rc) return rc;
  elmo_adamw_hyper ah = {.lr = (float)s->lr_encoder, .beta1 = (float)m->enc_opt.beta1,
                         .beta2 = (float)m->enc_opt.beta2, .eps = (float)m->enc_opt.eps,
                         .weight_decay = (float)m->enc_opt.weight_decay, .t = s->step + 1};
  elmo_adamw_update(m->buf[ELMO_BUF_ENC_PARAM], m->buf[ELMO_BUF_ENC_M], m->buf[ELMO_BUF_ENC_V],
                    m->md.enc_kahan ? m->buf[ELMO_BUF_ENC_KAHAN] : NULL, m->md.enc_dtype, m->enc_grad,
                    m->md.enc_numel, m->decay, &ah);
  m->enc_f32_stale = 1;
  if (!isfinite(*loss) && s->compute_loss)
    return elmo_fail(err, ELMO_ERUNTIME, "step %lld: loss is not finite (%g); lower the learning rates",
                     (long long)s->step, *loss);
  return ELMO_OK;
}

static int cpu_predict(elmo_model *m, const elmo_batch *b, int k, const elmo_csr *filter, int32_t *topk,
                       float *scores, elmo_err *err) {
  widen_params(m);
  int rc = encoder_forward(m, b, m->X, err);
  if (rc) return rc;
  elmo_cls_cast_input(m->X, b->B * m->md.d, m->md.cls_input_fp8, m->Xq);
  for (int64_t i = 0; i < b->B * k; i++) {
    topk[i] = -1;
    scores[i] = -INFINITY;
  }
  elmo_cls_weights w = cls_weights(m);
  for (int64_t l0 = 0; l0 < m->md.L_pad; l0 += m->md.chunk_labels) {
    int64_t n = m->md.L_pad - l0 < m->md.chunk_labels ? m->md.L_pad - l0 : m->md.chunk_labels;
    elmo_cls_logits(&w, m->Xq, b->B, l0, n, 0, m->z);
    elmo_topk_merge(m->z, b->B, l0, n, m->md.num_labels, k, b->rows, filter ? filter->indptr : NULL,
                    filter ? filter->indices : NULL, topk, scores);
  }
  return ELMO_OK;
}

static int cpu_buffer_io(elmo_model *m, int buf, int write, size_t offset, void *host, size_t nbytes,
                         elmo_err *err) {
  if (buf < 0 || buf >= ELMO_NUM_BUFS || offset + nbytes > elmo_buf_bytes(&m->md, buf))
    return elmo_fail(err, ELMO_ERUNTIME, "buffer %d: access [%zu, %zu) out of range", buf, offset, offset + nbytes);
  char *p = (char *)m->buf[buf] + offset;
  if (write && buf == ELMO_BUF_ENC_PARAM) m->enc_f32_stale = 1;
  if (write) memcpy(p, host, nbytes);
  else memcpy(host, p, nbytes);
  return ELMO_OK;
}

static size_t cpu_peak_bytes(elmo_model *m) { return m->bytes; }

static const elmo_backend cpu_backend = {
  .name = "cpu", .create = cpu_create, .destroy = cpu_destroy, .train_step = cpu_train_step,
  .predict = cpu_predict, .buffer_io = cpu_buffer_io, .peak_bytes = cpu_peak_bytes,
};

const elmo_backend *elmo_backend_cpu(void) { return &cpu_backend; }
