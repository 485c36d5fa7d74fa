/* model.c: derive shapes, dtypes, buffers and tensor names of a model from config + data. */
#include "model.h"
#include "numerics.h"
#include "pretrained.h"
#include "transformer.h"

#include <math.h>
#include <pthread.h>
#include <unistd.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t elmo_dtype_size(elmo_dtype t) {
  switch (t) {
    case ELMO_F32: case ELMO_I32: return 4;
    case ELMO_BF16: return 2;
    case ELMO_FP8: return 1;
  }
  return 0;
}

const char *elmo_dtype_st_name(elmo_dtype t) {
  switch (t) {
    case ELMO_F32: return "F32";
    case ELMO_BF16: return "BF16";
    case ELMO_FP8: return "F8_E4M3";
    case ELMO_I32: return "I32";
  }
  return "?";
}

static elmo_dtype parse_dtype(const char *s) {
  if (!strcmp(s, "fp8")) return ELMO_FP8;
  if (!strcmp(s, "bf16")) return ELMO_BF16;
  return ELMO_F32;
}

static void add_slot(elmo_model_desc *md, const char *name, int ndim, int64_t s0, int64_t s1) {
  md->enc_tensors = elmo_realloc(md->enc_tensors, sizeof(elmo_tensor_slot) * (size_t)(md->n_enc_tensors + 1));
  elmo_tensor_slot *t = &md->enc_tensors[md->n_enc_tensors++];
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s", name);
  t->ndim = ndim;
  t->shape[0] = s0;
  t->shape[1] = s1;
  t->numel = ndim == 1 ? s0 : s0 * s1;
  t->offset = md->enc_numel;
  md->enc_numel += t->numel;
}

static void sparse_layout(elmo_model_desc *md) {
  add_slot(md, "encoder.embedding.weight", 2, md->num_features, md->d);
  if (md->sparse_layernorm) {
    add_slot(md, "encoder.LayerNorm.weight", 1, md->d, 0);
    add_slot(md, "encoder.LayerNorm.bias", 1, md->d, 0);
  }
}

void elmo_model_tf_config(const elmo_model_desc *md, elmo_tf_config *c) {
  elmo_tf_config_init(c);
  c->vocab_size = (int)md->vocab_size;
  c->max_position = (int)md->max_position;
  c->type_vocab = (int)md->type_vocab;
  c->hidden = (int)md->d;
  c->layers = (int)md->layers;
  c->heads = (int)md->heads;
  c->ffn = (int)md->ffn;
  c->pooling = md->pooling_cls ? ELMO_TF_POOL_CLS : ELMO_TF_POOL_MEAN;
  c->fp8_forward = md->enc_fp8_gemm;
}

/* Takes the transformer's own layout (Hugging Face names, aligned offsets) as the slots. */
static int transformer_layout(elmo_model_desc *md, elmo_err *err) {
  elmo_tf_config c;
  elmo_model_tf_config(md, &c);
  elmo_tf_params p;
  int rc = elmo_tf_alloc(&p, &c, err);
  if (rc) return rc;
  for (int i = 0; i < p.num_tensors; i++) {
    const elmo_tf_tensor *t = &p.tensors[i];
    add_slot(md, t->name, t->ndim, t->shape[0], t->ndim > 1 ? t->shape[1] : 0);
    md->enc_tensors[md->n_enc_tensors - 1].offset = t->offset;
  }
  md->enc_numel = p.num_params;
  elmo_tf_free(&p);
  return ELMO_OK;
}

/* Head labels: the ceil(head_ratio * L) most frequent training labels, ties to the lower id. */
static const int64_t *g_freq;
static int cmp_head(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  if (g_freq[x] != g_freq[y]) return g_freq[x] > g_freq[y] ? -1 : 1;
  return (x > y) - (x < y);
}

static void pick_head(elmo_model_desc *md, double ratio, const int64_t *freq) {
  int64_t L = md->num_labels;
  md->n_head = (int64_t)(ratio * (double)L + 0.999999);
  if (md->n_head > L) md->n_head = L;
  if (md->n_head <= 0 || !freq) { md->n_head = 0; return; }
  int32_t *ids = elmo_malloc(sizeof(int32_t) * (size_t)L);
  for (int64_t l = 0; l < L; l++) ids[l] = (int32_t)l;
  g_freq = freq;
  qsort(ids, (size_t)L, sizeof(int32_t), cmp_head);
  md->head_labels = elmo_realloc(ids, sizeof(int32_t) * (size_t)md->n_head);
}

void elmo_model_desc_set_chunks(elmo_model_desc *md, int64_t n_chunks) {
  if (n_chunks < 1) n_chunks = 1;
  int64_t per = (md->L_pad + n_chunks - 1) / n_chunks;
  per = (per + 15) / 16 * 16;
  md->chunk_labels = per;
  md->n_chunks = (md->L_pad + per - 1) / per;
}

/* Options the schema accepts but this build does not implement yet: refuse them loudly. */
static int check_supported(const elmo_config *cfg, elmo_err *err) {
  if (!strcmp(cfg->encoder_dtype, "fp8") && strcmp(cfg->encoder_kind, "transformer"))
    return elmo_fail(err, ELMO_EINPUT, "model.encoder.dtype: \"fp8\" runs the transformer's linear layers in E4M3; "
                                       "the sparse encoder has none (use bf16 or fp32, or model.encoder.kind "
                                       "\"transformer\")");
  if (strcmp(cfg->enc_opt.optimizer, "adamw"))
    return elmo_fail(err, ELMO_EINPUT, "training.encoder.optimizer: only \"adamw\" is implemented for the encoder");
  if (strcmp(cfg->cls_opt.optimizer, "sgd"))
    return elmo_fail(err, ELMO_EINPUT, "training.classifier.optimizer: only \"sgd\" (with stochastic rounding) is "
                                       "implemented for the classifier");
  if (cfg->cls_opt.kahan)
    return elmo_fail(err, ELMO_EINPUT, "training.classifier.kahan: the classifier uses stochastic rounding; for "
                                       "Kahan-compensated head labels set model.classifier.head_ratio");
  if (cfg->pretrained[0] && strcmp(cfg->encoder_kind, "transformer"))
    return elmo_fail(err, ELMO_EINPUT, "model.encoder.pretrained: needs model.encoder.kind \"transformer\"");
  return ELMO_OK;
}

int elmo_model_desc_init(elmo_model_desc *md, const elmo_config *cfg, int64_t num_labels, int64_t num_features,
                         int64_t vocab_size, int64_t T, const int64_t *label_freq, elmo_err *err) {
  memset(md, 0, sizeof *md);
  int rc0 = check_supported(cfg, err);
  if (rc0) return rc0;
  md->encoder_kind = strcmp(cfg->encoder_kind, "transformer") ? ELMO_ENC_SPARSE : ELMO_ENC_TRANSFORMER;
  md->num_labels = num_labels;
  md->L_pad = (num_labels + 15) / 16 * 16;
  md->d = cfg->dim;
  md->batch_size = cfg->batch_size;
  md->enc_batch = cfg->batch_size;
  md->num_features = num_features;
  md->sparse_layernorm = cfg->encoder_layernorm;
  md->vocab_size = vocab_size;
  md->max_position = cfg->max_position;
  md->layers = cfg->layers;
  md->heads = cfg->heads;
  md->ffn = cfg->ffn_dim ? cfg->ffn_dim : 4 * cfg->dim;
  md->T = T;
  md->type_vocab = 2;
  md->pooling_cls = !strcmp(cfg->pooling, "cls");
  md->recompute = cfg->encoder_recompute;
  md->enc_dtype = strcmp(cfg->encoder_dtype, "fp32") ? ELMO_BF16 : ELMO_F32;   /* fp8: BF16 parameters */
  md->enc_fp8_gemm = !strcmp(cfg->encoder_dtype, "fp8");
  md->cls_dtype = parse_dtype(cfg->classifier_dtype);
  md->cls_input_fp8 = !strcmp(cfg->classifier_input, "fp8");
  md->enc_kahan = md->enc_dtype == ELMO_BF16 && cfg->enc_opt.kahan;
  md->dropout = cfg->dropout;
  md->seed = cfg->seed;
  if (md->encoder_kind == ELMO_ENC_TRANSFORMER && T > md->max_position)
    return elmo_fail(err, ELMO_EINPUT, "data.max_len %lld exceeds model.encoder.max_position %lld",
                     (long long)T, (long long)md->max_position);
  elmo_hf_info hf;
  if (cfg->pretrained[0]) { /* sizes come from the Hugging Face config */
    int rc = elmo_hf_read_config(cfg->pretrained, &hf, err);
    if (rc) return rc;
    md->d = hf.hidden;
    md->layers = hf.layers;
    md->heads = hf.heads;
    md->ffn = hf.ffn;
    md->max_position = hf.max_position;
    md->type_vocab = hf.type_vocab;
    if (hf.vocab_size != vocab_size)
      return elmo_fail(err, ELMO_EINPUT, "model.encoder.pretrained: %s has vocab_size %lld but the tokenizer's "
                       "vocab has %lld tokens (expected the model's own vocab.txt)", cfg->pretrained,
                       (long long)hf.vocab_size, (long long)vocab_size);
    if (T > md->max_position)
      return elmo_fail(err, ELMO_EINPUT, "data.max_len %lld exceeds the pretrained model's %lld positions",
                       (long long)T, (long long)md->max_position);
  }
  if (md->encoder_kind == ELMO_ENC_SPARSE) sparse_layout(md);
  else {
    int rc = transformer_layout(md, err);
    if (rc) return rc;
  }
  if (cfg->pretrained[0]) {
    md->pretrained_params = elmo_calloc((size_t)md->enc_numel, elmo_dtype_size(md->enc_dtype));
    int rc = elmo_hf_load_params(cfg->pretrained, md, md->pretrained_params, err);
    if (rc) return rc;
  }
  pick_head(md, cfg->head_ratio, label_freq);
  elmo_model_desc_set_chunks(md, cfg->chunks);

  md->buf_dtype[ELMO_BUF_ENC_PARAM] = md->buf_dtype[ELMO_BUF_ENC_M] = md->buf_dtype[ELMO_BUF_ENC_V] = md->enc_dtype;
  md->buf_dtype[ELMO_BUF_ENC_KAHAN] = ELMO_BF16;
  md->buf_dtype[ELMO_BUF_CLS_W] = md->cls_dtype;
  md->buf_dtype[ELMO_BUF_CLS_KAHAN] = ELMO_BF16;
  md->buf_dtype[ELMO_BUF_CLS_HEAD] = ELMO_I32;
  md->buf_numel[ELMO_BUF_ENC_PARAM] = md->buf_numel[ELMO_BUF_ENC_M] = md->buf_numel[ELMO_BUF_ENC_V] = md->enc_numel;
  md->buf_numel[ELMO_BUF_ENC_KAHAN] = md->enc_kahan ? md->enc_numel : 0;
  md->buf_numel[ELMO_BUF_CLS_W] = md->L_pad * md->d;
  md->buf_numel[ELMO_BUF_CLS_KAHAN] = md->n_head * md->d;
  md->buf_numel[ELMO_BUF_CLS_HEAD] = md->n_head;
  return ELMO_OK;
}

void elmo_model_desc_free(elmo_model_desc *md) {
  ELMO_FREE(md->enc_tensors);
  ELMO_FREE(md->head_labels);
  ELMO_FREE(md->pretrained_params);
  md->n_enc_tensors = 0;
}

size_t elmo_buf_bytes(const elmo_model_desc *md, int buf) {
  return (size_t)md->buf_numel[buf] * elmo_dtype_size(md->buf_dtype[buf]);
}

/* A standard normal from two counter-based draws. */
static float rand_normal(uint64_t seed, uint32_t stream, uint64_t i) {
  uint32_t a = elmo_rand_u32(seed, 0, stream, 2 * i), b = elmo_rand_u32(seed, 0, stream, 2 * i + 1);
  double u1 = ((double)a + 1.0) / 4294967296.0, u2 = (double)b / 4294967296.0;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcmp(s + n - m, suffix);
}

static int is_norm_or_bias(const char *name) {
  return ends_with(name, ".bias") || strstr(name, "LayerNorm") || strstr(name, "layer_norm");
}

static void store_enc(const elmo_model_desc *md, void *buf, int64_t i, float x) {
  if (md->enc_dtype == ELMO_BF16) ((uint16_t *)buf)[i] = elmo_f32_to_bf16(x);
  else ((float *)buf)[i] = x;
}

/* Classifier weights U(-1/sqrt(d), 1/sqrt(d)) from (seed, 0, INIT_CLS, element), rounded to the
 * dtype. Four elements per Philox block (the same bits as elmo_rand_u32 per element), split over
 * threads: this is 2 G elements at L = 2.8M, d = 768. */
typedef struct init_job { const elmo_model_desc *md; void *W; int64_t b0, b1; } init_job;

static void *init_classifier_part(void *arg) {
  const init_job *j = arg;
  const elmo_model_desc *md = j->md;
  const float a = 1.0f / sqrtf((float)md->d);
  const int64_t n = md->num_labels * md->d;
  const int64_t g0 = md->label_base * md->d / 4; /* a shard's first block: label_base is a multiple of 16 */
  for (int64_t blk = j->b0; blk < j->b1; blk++) {
    uint32_t r[4];
    elmo_rand_block(md->seed, 0, ELMO_RNG_INIT_CLS, (uint64_t)(g0 + blk), r);
    for (int w = 0; w < 4 && 4 * blk + w < n; w++) {
      int64_t i = 4 * blk + w;
      float x = a * (2.0f * ((float)r[w] * (1.0f / 4294967296.0f)) - 1.0f);
      switch (md->cls_dtype) {
        case ELMO_FP8: ((uint8_t *)j->W)[i] = elmo_f32_to_fp8(x); break;
        case ELMO_BF16: ((uint16_t *)j->W)[i] = elmo_f32_to_bf16(x); break;
        default: ((float *)j->W)[i] = x; break;
      }
    }
  }
  return NULL;
}

static void init_classifier(const elmo_model_desc *md, void *W) {
  int64_t blocks = (md->num_labels * md->d + 3) / 4;
  long nt = sysconf(_SC_NPROCESSORS_ONLN);
  int T = blocks < (1 << 20) ? 1 : (int)(nt < 1 ? 1 : nt > 32 ? 32 : nt);
  pthread_t th[32];
  init_job jobs[32];
  for (int t = 0; t < T; t++) {
    jobs[t] = (init_job){md, W, blocks * t / T, blocks * (t + 1) / T};
    if (T == 1 || pthread_create(&th[t], NULL, init_classifier_part, &jobs[t]) != 0) {
      init_classifier_part(&jobs[t]);
      th[t] = 0;
    }
  }
  for (int t = 0; t < T; t++)
    if (T > 1 && th[t]) pthread_join(th[t], NULL);
}

void elmo_model_init_host(const elmo_model_desc *md, void *host[ELMO_NUM_BUFS]) {
  for (int b = 0; b < ELMO_NUM_BUFS; b++)
    if (host[b]) memset(host[b], 0, elmo_buf_bytes(md, b));
  if (md->pretrained_params)
    memcpy(host[ELMO_BUF_ENC_PARAM], md->pretrained_params, elmo_buf_bytes(md, ELMO_BUF_ENC_PARAM));
  for (int t = 0; t < md->n_enc_tensors && !md->pretrained_params; t++) {
    const elmo_tensor_slot *s = &md->enc_tensors[t];
    int one = strstr(s->name, "LayerNorm") && ends_with(s->name, ".weight");
    int zero = is_norm_or_bias(s->name) && !one;
    for (int64_t i = 0; i < s->numel; i++) {
      float x = one ? 1.0f : zero ? 0.0f : 0.02f * rand_normal(md->seed, ELMO_RNG_INIT_ENC, (uint64_t)(s->offset + i));
      store_enc(md, host[ELMO_BUF_ENC_PARAM], s->offset + i, x);
    }
  }
  if (host[ELMO_BUF_CLS_W]) init_classifier(md, host[ELMO_BUF_CLS_W]);
  if (md->n_head && host[ELMO_BUF_CLS_HEAD])
    memcpy(host[ELMO_BUF_CLS_HEAD], md->head_labels, sizeof(int32_t) * (size_t)md->n_head);
}

void elmo_model_decay_mask(const elmo_model_desc *md, uint8_t *decay) {
  for (int t = 0; t < md->n_enc_tensors; t++) {
    const elmo_tensor_slot *s = &md->enc_tensors[t];
    memset(decay + s->offset, is_norm_or_bias(s->name) ? 0 : 1, (size_t)s->numel);
  }
}

int64_t elmo_model_shard_heads(const elmo_model_desc *md, int64_t base, int64_t count, int32_t **labels,
                               int64_t **glob) {
  int64_t n = 0;
  if (labels) *labels = NULL;
  if (glob) *glob = NULL;
  for (int64_t h = 0; h < md->n_head; h++) {
    const int64_t l = md->head_labels[h] - base;
    if (l < 0 || l >= count) continue;
    if (!n && labels) *labels = elmo_malloc(sizeof(int32_t) * (size_t)md->n_head);
    if (!n && glob) *glob = elmo_malloc(sizeof(int64_t) * (size_t)md->n_head);
    if (labels) (*labels)[n] = (int32_t)l;
    if (glob) (*glob)[n] = h;
    n++;
  }
  return n;
}

void elmo_model_head_slots(const elmo_model_desc *md, int32_t *head_slot) {
  for (int64_t l = 0; l < md->L_pad; l++) head_slot[l] = -1;
  for (int64_t h = 0; h < md->n_head; h++) head_slot[md->head_labels[h]] = (int32_t)h;
}
