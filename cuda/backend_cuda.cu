/* backend_cuda.cu: the CUDA backend (src/backend.h): one planned device allocation, the training
 * step (encoder forward -> dropout -> chunked fused classifier -> dropout backward -> encoder
 * backward -> AdamW), prediction with a running top-k, checkpoint buffer I/O, peak memory.
 * It follows backend_cpu.c op by op; the kernels live in the other files of cuda/. */
#include "backend_cuda.h"
#include "attention.h"
#include "blas.h"
#include "check.h"
#include "classifier.h"
#include "convert.h"
#include "dropout.h"
#include "optim.h"
#include "sparse_encoder.h"
#include "topk.h"
#include "transformer.h"

extern "C" {
#include "../src/backend.h"
#include "../src/metrics.h"
}

#include <dlfcn.h>
#include <pthread.h>
#if defined(__has_include)
#if __has_include(<nccl.h>)
#include <nccl.h>
#define ELMO_NCCL_HEADER 1
#endif
#endif

#include <math.h>
#include <string.h>

#define GIB 1073741824.0
#define MIB 1048576.0

/* Batch inputs: the same layout on the device and in pinned host memory (one copy per part). */
typedef struct inputs {
  int64_t *x_indptr, *y_indptr, *f_indptr;  /* [B_cap + 1] */
  int32_t *x_indices;                       /* [x_cap] */
  float *x_values;                          /* [x_cap] */
  int32_t *y_indices;                       /* [y_cap] labels, sorted per row */
  int32_t *f_indices;                       /* [f_cap] filter labels, sorted per row */
  int32_t *ids;                             /* [B_cap, T] (transformer) */
  uint8_t *mask;                            /* [B_cap, T] */
} inputs;

typedef struct caps {
  int64_t x, y, f;
} caps;

struct elmo_model {
  elmo_model_desc md;            /* private copy; tensor table owned by the caller */
  elmo_opt_config enc_opt, cls_opt;
  int64_t B_cap;                 /* batch_size rounded up to 16 */
  caps cap;
  cudaStream_t s;
  elmo_pool pool;                /* the planned allocation */
  elmo_pool overflow;            /* batch inputs regrown past the plan (rare), else empty */
  elmo_mem_probe probe;
  elmo_blas *blas;
  void *buf[ELMO_NUM_BUFS];      /* model buffers (model.h) */
  float *enc_grad;               /* [enc_numel] */
  int32_t *head_slot;            /* [L_pad] or NULL */
  int64_t *decay;                /* [2, n_enc_tensors]: starts then ends of decayed tensors */
  elmo_cuda_decay decay_view;    /* decayed ranges of the whole encoder */
  elmo_cuda_decay decay_part[2]; /* sharded: of this GPU's slice and of the tail (re-based to their starts) */
  int64_t opt_per;               /* sharded: parameters a GPU steps (its slice [rank per, (rank + 1) per)); the
                                    tail [nranks per, enc_numel) is stepped by every GPU; 0 = not split. A GPU's
                                    AdamW buffers (ENC_M, ENC_V, ENC_KAHAN) hold its slice, then the tail */
  float *X, *dX;                 /* [B_cap, d] */
  int32_t *topk;                 /* [B_cap, ELMO_CUDA_TOPK_MAX] */
  float *topv;
  elmo_cuda_cls cls;
  elmo_cuda_sparse se;
  elmo_cuda_sparse_sort srt;
  elmo_cuda_tf *tf;
  inputs dev, host;
  void *pinned;                  /* host side of the inputs */
  double *loss_host;             /* pinned [1] */
  /* ELMO_PROFILE=1: device time of each phase of the training step, summed over steps after the
   * first, printed to stderr when the model is destroyed */
  int prof;
  cudaEvent_t ev[8];
  double prof_ms[7];
  int64_t prof_steps;
  /* Label sharding (training.gpus > 1, DESIGN.md section 8): each GPU holds a model whose classifier is
   * its share of the labels (md.label_base on) and a full encoder that runs its share of each batch's
   * rows; the rows' pooled vectors are gathered to every GPU, each GPU's dX summed back to the GPU
   * that encoded the rows, and the encoder gradients summed over GPUs (NCCL), so every GPU steps its
   * encoder copy the same way. */
  int gpu;                       /* CUDA device of this model */
  int rank, nranks;              /* 0, 1 when not sharded */
  int64_t B_enc;                 /* rows the encoder is planned for (md.enc_batch rounded up to 16) */
  elmo_model **ranks;            /* rank 0 (the model the loop holds) only: every rank's model, [0] = itself */
  void *comm;                    /* ncclComm_t of this rank */
  int64_t glob_L_pad;            /* rank 0: the whole classifier's padded rows (checkpoint offsets) */
  int64_t glob_n_head;           /* rank 0: the whole model's head labels */
  int64_t *head_glob;            /* sharded: [md.n_head] the whole model's head slot of each of this GPU's */
};

#define PROF_PHASES 7
static const char *const prof_names[PROF_PHASES] = {"upload", "encoder forward", "dropout", "classifier step",
                                                   "dropout (grad)", "encoder backward", "encoder AdamW"};

static void prof_mark(elmo_model *m, int i) {
  if (m->prof) ELMO_CUDA_CHECK(cudaEventRecord(m->ev[i], m->s));
}

/* After a synchronised step: adds its phases' times (the first step, with its warm-up, is left out). */
static void prof_collect(elmo_model *m) {
  if (!m->prof) return;
  if (m->prof_steps++ == 0) return;
  for (int i = 0; i < PROF_PHASES; i++) {
    float ms = 0.0f;
    ELMO_CUDA_CHECK(cudaEventElapsedTime(&ms, m->ev[i], m->ev[i + 1]));
    m->prof_ms[i] += ms;
  }
}

static void prof_report(elmo_model *m) {
  if (!m->prof || m->prof_steps < 2) return;
  double n = (double)(m->prof_steps - 1), total = 0.0;
  for (int i = 0; i < PROF_PHASES; i++) total += m->prof_ms[i];
  fprintf(stderr, "elmo cuda profile: %lld steps, %.3f ms/step of device time\n", (long long)(m->prof_steps - 1),
          total / n);
  for (int i = 0; i < PROF_PHASES; i++)
    fprintf(stderr, "elmo cuda profile: %-18s %8.3f ms  %5.1f%%\n", prof_names[i], m->prof_ms[i] / n,
            total > 0 ? 100.0 * m->prof_ms[i] / total : 0.0);
}

/* ---- layout ------------------------------------------------------------------------------ */

static int64_t round16(int64_t x) { return (x + 15) / 16 * 16; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t enc_rows_cap(const elmo_model_desc *md) {
  return round16(md->enc_batch > 0 && md->enc_batch < md->batch_size ? md->enc_batch : md->batch_size);
}

static caps default_caps(const elmo_model_desc *md, int64_t B_cap) {
  caps c;
  c.x = md->encoder_kind == ELMO_ENC_SPARSE ? max64(1024, B_cap * min64(md->num_features, 256)) : 0;
  c.y = max64(1024, B_cap * min64(md->num_labels, 32));
  c.f = max64(1024, B_cap * 16);
  return c;
}

static void transfer_layout(inputs *in, elmo_pool *p, const elmo_model_desc *md, int64_t B_cap, caps c) {
  size_t ip = sizeof(int64_t) * (size_t)(B_cap + 1);
  in->x_indptr = (int64_t *)elmo_pool_take(p, ip, ELMO_MEM_INPUTS);
  in->y_indptr = (int64_t *)elmo_pool_take(p, ip, ELMO_MEM_INPUTS);
  in->f_indptr = (int64_t *)elmo_pool_take(p, ip, ELMO_MEM_INPUTS);
  in->x_indices = (int32_t *)elmo_pool_take(p, 4 * (size_t)c.x, ELMO_MEM_INPUTS);
  in->x_values = (float *)elmo_pool_take(p, 4 * (size_t)c.x, ELMO_MEM_INPUTS);
  in->y_indices = (int32_t *)elmo_pool_take(p, 4 * (size_t)c.y, ELMO_MEM_INPUTS);
  in->f_indices = (int32_t *)elmo_pool_take(p, 4 * (size_t)c.f, ELMO_MEM_INPUTS);
  int64_t tok = md->encoder_kind == ELMO_ENC_TRANSFORMER ? B_cap * md->T : 0;
  in->ids = (int32_t *)elmo_pool_take(p, 4 * (size_t)tok, ELMO_MEM_INPUTS);
  in->mask = (uint8_t *)elmo_pool_take(p, (size_t)tok, ELMO_MEM_INPUTS);
}

static size_t sort_temp_bytes(int64_t x_cap) {
  if (x_cap <= 0) return 0;
  size_t b = elmo_cuda_sparse_sort_temp_bytes(x_cap);
  return b ? b : (size_t)x_cap * 16 + ((size_t)1 << 20); /* no device to ask: a safe estimate */
}

static void sort_layout(elmo_cuda_sparse_sort *srt, elmo_pool *p, int64_t x_cap) {
  size_t n = 4 * (size_t)x_cap;
  srt->entry_row = (int32_t *)elmo_pool_take(p, n, ELMO_MEM_INPUTS);
  srt->iota = (int32_t *)elmo_pool_take(p, n, ELMO_MEM_INPUTS);
  srt->feat = (int32_t *)elmo_pool_take(p, n, ELMO_MEM_INPUTS);
  srt->ent = (int32_t *)elmo_pool_take(p, n, ELMO_MEM_INPUTS);
  srt->temp_bytes = sort_temp_bytes(x_cap);
  srt->temp = elmo_pool_take(p, srt->temp_bytes, ELMO_MEM_INPUTS);
}

static int tf_flags(const elmo_model_desc *md) {
  return (md->enc_dtype == ELMO_F32 ? ELMO_CUDA_TF_F32_PARAMS : 0) | (md->recompute ? ELMO_CUDA_TF_RECOMPUTE : 0);
}

static size_t tf_bytes(const elmo_model_desc *md, int64_t B_cap) {
  if (md->encoder_kind != ELMO_ENC_TRANSFORMER) return 0;
  elmo_tf_config tc;
  elmo_model_tf_config(md, &tc);
  return elmo_cuda_tf_workspace_bytes(&tc, (int)B_cap, (int)md->T, tf_flags(md));
}

static void *tensor_ptr(const elmo_model *m, const char *name) {
  for (int t = 0; t < m->md.n_enc_tensors; t++)
    if (!strcmp(m->md.enc_tensors[t].name, name))
      return (char *)m->buf[ELMO_BUF_ENC_PARAM] + (size_t)m->md.enc_tensors[t].offset * elmo_dtype_size(m->md.enc_dtype);
  return NULL;
}

static float *grad_ptr(const elmo_model *m, const char *name) {
  for (int t = 0; t < m->md.n_enc_tensors; t++)
    if (!strcmp(m->md.enc_tensors[t].name, name)) return m->enc_grad + m->md.enc_tensors[t].offset;
  return NULL;
}

static void model_layout(elmo_model *m, elmo_pool *p, void **tf_mem) {
  const elmo_model_desc *md = &m->md;
  static const elmo_mem_cat buf_cat[ELMO_NUM_BUFS] = {ELMO_MEM_ENC_PARAMS, ELMO_MEM_OPT_STATE, ELMO_MEM_OPT_STATE,
                                                      ELMO_MEM_OPT_STATE, ELMO_MEM_CLS_WEIGHTS, ELMO_MEM_CLS_WEIGHTS,
                                                      ELMO_MEM_CLS_WEIGHTS};
  for (int b = 0; b < ELMO_NUM_BUFS; b++) m->buf[b] = elmo_pool_take(p, elmo_buf_bytes(md, b), buf_cat[b]);
  m->head_slot = md->n_head ? (int32_t *)elmo_pool_take(p, 4 * (size_t)md->L_pad, ELMO_MEM_CLS_WEIGHTS) : NULL;
  m->decay = (int64_t *)elmo_pool_take(p, 3 * 16 * (size_t)max64(md->n_enc_tensors, 1), ELMO_MEM_OPT_STATE);
  m->enc_grad = (float *)elmo_pool_take(p, 4 * (size_t)md->enc_numel, ELMO_MEM_ENC_GRADS);
  size_t bd = 4 * (size_t)(m->B_cap * md->d);
  m->X = (float *)elmo_pool_take(p, bd, ELMO_MEM_ACTIVATIONS);
  m->dX = (float *)elmo_pool_take(p, bd, ELMO_MEM_ACTIVATIONS);
  if (md->encoder_kind == ELMO_ENC_SPARSE) {
    m->se.x = (float *)elmo_pool_take(p, bd, ELMO_MEM_ACTIVATIONS);
    m->se.norm = (float *)elmo_pool_take(p, 4 * (size_t)m->B_cap, ELMO_MEM_ACTIVATIONS);
    m->se.xhat = md->sparse_layernorm ? (float *)elmo_pool_take(p, bd, ELMO_MEM_ACTIVATIONS) : NULL;
    m->se.rstd = md->sparse_layernorm ? (float *)elmo_pool_take(p, 4 * (size_t)m->B_cap, ELMO_MEM_ACTIVATIONS) : NULL;
  }
  *tf_mem = elmo_pool_take(p, tf_bytes(md, m->B_enc), ELMO_MEM_ACTIVATIONS);
  size_t tk = (size_t)(m->B_cap * ELMO_CUDA_TOPK_MAX);
  m->topk = (int32_t *)elmo_pool_take(p, 4 * tk, ELMO_MEM_ACTIVATIONS);
  m->topv = (float *)elmo_pool_take(p, 4 * tk, ELMO_MEM_ACTIVATIONS);
  m->cls.dtype = md->cls_dtype;
  m->cls.d = md->d;
  m->cls.chunk = md->chunk_labels;
  m->cls.B_cap = m->B_cap;
  m->cls.fp8_input = md->cls_input_fp8;
  elmo_cuda_cls_layout(&m->cls, p);
  size_t ws = elmo_blas_workspace_bytes();
  void *w = elmo_pool_take(p, ws, ELMO_MEM_WORKSPACE);
  if (p->base) m->blas = elmo_blas_create(w, ws);
  transfer_layout(&m->dev, p, md, m->B_cap, m->cap);
  sort_layout(&m->srt, p, m->cap.x);
}

/* ---- the plan ----------------------------------------------------------------------------- */

static size_t plan_model(elmo_model *m, elmo_cuda_plan_t *out) {
  elmo_pool p;
  elmo_pool_plan_init(&p);
  void *tf_mem;
  model_layout(m, &p, &tf_mem);
  if (out) {
    memset(out, 0, sizeof *out);
    memcpy(out->bytes, p.by_cat, sizeof out->bytes);
    out->total = p.used;
    out->chunk_labels = m->md.chunk_labels;
    out->n_chunks = m->md.n_chunks;
    out->batch_rows = m->B_cap;
    out->x_nnz_cap = m->cap.x;
    out->y_nnz_cap = m->cap.y;
    out->f_nnz_cap = m->cap.f;
  }
  return p.used;
}

extern "C" size_t elmo_cuda_plan(const elmo_model_desc *md, elmo_cuda_plan_t *out) {
  elmo_model m;
  memset(&m, 0, sizeof m);
  m.md = *md;
  m.B_cap = round16(md->batch_size);
  m.B_enc = enc_rows_cap(md);
  m.cap = default_caps(md, m.B_cap);
  return plan_model(&m, out);
}

extern "C" void elmo_cuda_plan_print(const elmo_cuda_plan_t *p, const elmo_model_desc *md, FILE *fp) {
  fprintf(fp, "CUDA memory plan (one device allocation)\n");
  fprintf(fp, "  %-22s %12s %10s\n", "part", "MiB", "GiB");
  for (int c = 0; c < ELMO_MEM_NCAT; c++)
    fprintf(fp, "  %-22s %12.1f %10.3f\n", elmo_mem_cat_name((elmo_mem_cat)c), (double)p->bytes[c] / MIB,
            (double)p->bytes[c] / GIB);
  fprintf(fp, "  %-22s %12.1f %10.3f\n", "total", (double)p->total / MIB, (double)p->total / GIB);
  fprintf(fp, "  classifier [%lld, %lld] %s in %lld chunk(s) of %lld labels; %lld batch rows\n", (long long)md->L_pad,
          (long long)md->d, elmo_dtype_st_name(md->cls_dtype), (long long)p->n_chunks, (long long)p->chunk_labels,
          (long long)p->batch_rows);
  fprintf(fp, "  batch input capacity: %lld feature, %lld label, %lld filter entries (grows if a batch needs more)\n",
          (long long)p->x_nnz_cap, (long long)p->y_nnz_cap, (long long)p->f_nnz_cap);
}

static int budget_bytes(const elmo_config *cfg, size_t *out, elmo_err *err) {
  if (cfg->memory_budget_gib > 0) {
    *out = (size_t)(cfg->memory_budget_gib * GIB);
    return ELMO_OK;
  }
  size_t fr = 0, tot = 0;
  cudaError_t e = cudaMemGetInfo(&fr, &tot);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return elmo_fail(err, ELMO_ERUNTIME, "model.classifier.chunks is 0 and no CUDA device answers to measure free "
                     "memory (%s); set model.classifier.chunks or model.classifier.memory_budget_gib",
                     cudaGetErrorString(e));
  }
  *out = fr > ((size_t)1 << 30) ? fr - ((size_t)1 << 30) : 0;
  return ELMO_OK;
}

extern "C" int elmo_cuda_choose_chunks(const elmo_config *cfg, elmo_model_desc *md, elmo_err *err) {
  if (cfg->chunks > 0) return ELMO_OK;
  size_t budget = 0;
  int rc = budget_bytes(cfg, &budget, err);
  if (rc) return rc;
  const int64_t n0 = md->n_chunks;
  const int64_t wb = md->L_pad * md->d * (int64_t)elmo_dtype_size(md->cls_dtype) / ELMO_CUDA_CHUNK_W_DIV;
  const int64_t zb = wb > ELMO_CUDA_CHUNK_Z_BYTES ? wb : ELMO_CUDA_CHUNK_Z_BYTES;
  const int64_t by_z = zb / (2 * round16(md->batch_size > 0 ? md->batch_size : 1)) / 16 * 16;
  const int64_t cmax = by_z > ELMO_CUDA_CHUNK_MAX ? by_z : ELMO_CUDA_CHUNK_MAX;
  int64_t n = (md->L_pad + cmax - 1) / cmax;
  elmo_model_desc_set_chunks(md, n);
  elmo_cuda_plan_t p;
  while (elmo_cuda_plan(md, &p) > budget && md->chunk_labels > 16) {
    /* the chunk buffers scale with the chunk: shrink them by the ratio still missing */
    size_t over = p.total - budget, chunk = p.bytes[ELMO_MEM_CHUNK];
    int64_t next = over >= chunk ? md->L_pad / 16 : (int64_t)((double)n * (double)chunk / (double)(chunk - over)) + 1;
    n = max64(next, n + 1);
    elmo_model_desc_set_chunks(md, n);
  }
  if (p.total <= budget) return ELMO_OK;
  elmo_model_desc_set_chunks(md, n0);
  return elmo_fail(err, ELMO_ERUNTIME,
                   "the model does not fit the device memory budget of %.2f GiB even with 16-label chunks: it needs "
                   "%.2f GiB (classifier weights %.2f, encoder %.2f + gradients %.2f + optimiser %.2f, activations "
                   "%.2f, batch inputs %.2f GiB); lower training.batch_size%s or raise "
                   "model.classifier.memory_budget_gib",
                   (double)budget / GIB, (double)p.total / GIB, (double)p.bytes[ELMO_MEM_CLS_WEIGHTS] / GIB,
                   (double)p.bytes[ELMO_MEM_ENC_PARAMS] / GIB, (double)p.bytes[ELMO_MEM_ENC_GRADS] / GIB,
                   (double)p.bytes[ELMO_MEM_OPT_STATE] / GIB, (double)p.bytes[ELMO_MEM_ACTIVATIONS] / GIB,
                   (double)p.bytes[ELMO_MEM_INPUTS] / GIB,
                   md->cls_dtype == ELMO_FP8 ? "" : ", use model.classifier.dtype fp8");
}

/* ---- create / destroy ----------------------------------------------------------------------- */

static void cuda_destroy(elmo_model **pm);

static int check_desc(const elmo_model_desc *md, elmo_err *err) {
  if (md->d % 16)
    return elmo_fail(err, ELMO_EINPUT, "model.encoder.dim %lld: the CUDA backend needs a multiple of 16 "
                     "(FP8 GEMMs and tensor-core tiles)", (long long)md->d);
  if (md->batch_size > 65535)
    return elmo_fail(err, ELMO_EINPUT, "training.batch_size %lld: the CUDA backend takes at most 65535 rows",
                     (long long)md->batch_size);
  if (md->chunk_labels % 16)
    return elmo_fail(err, ELMO_EINPUT, "classifier chunk of %lld labels is not a multiple of 16",
                     (long long)md->chunk_labels);
  return ELMO_OK;
}

/* Initial values (the same as every backend's): the classifier's weights drawn here on the device (no host copy
 * of them: 6.6 GB at 8.6M labels), the other buffers from the host, uploaded once. */
static void upload_init(elmo_model *m) {
  void *host[ELMO_NUM_BUFS];
  for (int b = 0; b < ELMO_NUM_BUFS; b++)
    host[b] = b == ELMO_BUF_CLS_W ? NULL : elmo_malloc(elmo_buf_bytes(&m->md, b) + 1);
  elmo_model_init_host(&m->md, host);
  for (int b = 0; b < ELMO_NUM_BUFS; b++) {
    if (host[b] && elmo_buf_bytes(&m->md, b))
      ELMO_CUDA_CHECK(cudaMemcpy(m->buf[b], host[b], elmo_buf_bytes(&m->md, b), cudaMemcpyHostToDevice));
    free(host[b]);
  }
  elmo_cuda_cls_init_weights(m->buf[ELMO_BUF_CLS_W], m->md.cls_dtype, m->md.num_labels, m->md.L_pad, m->md.d,
                             m->md.label_base, m->md.seed, ELMO_RNG_INIT_CLS, m->s);
  ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s));
  if (m->head_slot) {
    int32_t *hs = (int32_t *)elmo_malloc(4 * (size_t)m->md.L_pad);
    elmo_model_head_slots(&m->md, hs);
    ELMO_CUDA_CHECK(cudaMemcpy(m->head_slot, hs, 4 * (size_t)m->md.L_pad, cudaMemcpyHostToDevice));
    free(hs);
  }
}

/* The decayed ranges of [lo, hi) re-based to lo, into decay table `slot` (0: the whole encoder). */
static void upload_decay_view(elmo_model *m, const int64_t *start, const int64_t *end, int n, int slot, int64_t lo,
                              int64_t hi, elmo_cuda_decay *view) {
  const int nt = (int)max64(m->md.n_enc_tensors, 1);
  int64_t *r = (int64_t *)elmo_malloc(16 * (size_t)nt + 16);
  int k = 0;
  for (int i = 0; i < n; i++) {
    const int64_t a = max64(start[i], lo), b = min64(end[i], hi);
    if (a < b) {
      r[k] = a - lo;
      r[nt + k] = b - lo;
      k++;
    }
  }
  int64_t *d = m->decay + 2 * (int64_t)nt * slot;
  if (k) {
    ELMO_CUDA_CHECK(cudaMemcpy(d, r, 8 * (size_t)k, cudaMemcpyHostToDevice));
    ELMO_CUDA_CHECK(cudaMemcpy(d + nt, r + nt, 8 * (size_t)k, cudaMemcpyHostToDevice));
  }
  view->start = d;
  view->end = d + nt;
  view->n = k;
  free(r);
}

/* Weight decay as [start, end) element ranges of the decayed tensors (model.c's mask): of the whole
 * encoder, and (opt_per > 0) of this GPU's slice of it and of the tail. */
static void upload_decay(elmo_model *m) {
  const elmo_model_desc *md = &m->md;
  uint8_t *mask = (uint8_t *)elmo_calloc(1, (size_t)md->enc_numel + 1);
  elmo_model_decay_mask(md, mask);
  int nt = md->n_enc_tensors, n = 0;
  int64_t *r = (int64_t *)elmo_malloc(16 * (size_t)(nt + 1));
  int64_t *start = r, *end = r + nt;
  for (int t = 0; t < nt; t++) { /* tensors are laid out in increasing offset order */
    const elmo_tensor_slot *s = &md->enc_tensors[t];
    if (!s->numel || !mask[s->offset]) continue;
    if (n && end[n - 1] == s->offset) end[n - 1] = s->offset + s->numel;
    else { start[n] = s->offset; end[n] = s->offset + s->numel; n++; }
  }
  upload_decay_view(m, start, end, n, 0, 0, md->enc_numel, &m->decay_view);
  if (m->opt_per) {
    const int64_t lo = m->rank * m->opt_per, tail = m->nranks * m->opt_per;
    upload_decay_view(m, start, end, n, 1, lo, lo + m->opt_per, &m->decay_part[0]);
    upload_decay_view(m, start, end, n, 2, tail, md->enc_numel, &m->decay_part[1]);
  }
  free(r);
  free(mask);
}

static void pinned_alloc(elmo_model *m) {
  elmo_pool p;
  elmo_pool_plan_init(&p);
  transfer_layout(&m->host, &p, &m->md, m->B_cap, m->cap);
  ELMO_CUDA_CHECK(cudaMallocHost(&m->pinned, p.used + 256));
  p.base = (char *)m->pinned;
  p.size = p.used + 256;
  p.used = 0;
  transfer_layout(&m->host, &p, &m->md, m->B_cap, m->cap);
}

static int encoder_setup(elmo_model *m, void *tf_mem, elmo_err *err) {
  if (m->md.encoder_kind == ELMO_ENC_TRANSFORMER) {
    elmo_tf_config tc;
    elmo_model_tf_config(&m->md, &tc);
    return elmo_cuda_tf_create(&tc, (int)m->B_enc, (int)m->md.T, tf_flags(&m->md), tf_mem, &m->tf, err);
  }
  m->se.E = tensor_ptr(m, "encoder.embedding.weight");
  m->se.gamma = tensor_ptr(m, "encoder.LayerNorm.weight");
  m->se.beta = tensor_ptr(m, "encoder.LayerNorm.bias");
  m->se.dtype = m->md.enc_dtype;
  m->se.D = m->md.num_features;
  m->se.d = m->md.d;
  return ELMO_OK;
}

static void log_create(const elmo_model *m) {
  cudaDeviceProp prop;
  int dev = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  ELMO_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  fprintf(stderr, "elmo cuda: %s (sm_%d%d, %.1f GiB); plan %.2f GiB, classifier in %lld chunk(s) of %lld labels\n",
          prop.name, prop.major, prop.minor, (double)prop.totalGlobalMem / GIB, (double)m->pool.size / GIB,
          (long long)m->md.n_chunks, (long long)m->md.chunk_labels);
  if (m->tf)
    fprintf(stderr, "elmo cuda: attention %s\n", elmo_cuda_tf_attention_fused(m->tf)
                        ? "fused (one kernel per sequence and head each way, no score matrix)"
                        : "batched cuBLASLt GEMMs + softmax kernels (padded length > 128, head dim not 16/32/64, "
                          "or too little shared memory a block)");
  if (m->tf && m->md.enc_fp8_gemm)
    fprintf(stderr, "elmo cuda: encoder linear forward GEMMs in E4M3 (weights by their amax; layer inputs by "
                    "power-of-two scales from parameter bounds, cast by the kernels that make them); backward BF16\n");
}

/* What this device cannot run, said before anything is allocated: no code for it in the binary, the FP8
 * encoder without FP8 tensor cores, classifier kernels that want more shared memory than it has. */
static int check_device(const elmo_model_desc *md, elmo_err *err) {
  int dev = 0;
  cudaDeviceProp prop;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  ELMO_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  const int optin = elmo_cuda_smem_optin();
  if (elmo_cuda_code_kind() < 0) {
    const char *a = prop.major == 9 && prop.minor == 0 ? "a" : ""; /* Hopper: the sm_90a code */
    return elmo_fail(err, ELMO_ERUNTIME, "this build has no GPU code for the %s (compute capability %d.%d): "
                     "rebuild with -Dgpu_gencode='-gencode=arch=compute_%d%d%s,code=sm_%d%d%s' added (meson configure "
                     "BUILD_DIR -Dgpu_gencode=...), or run with --device cpu", prop.name, prop.major, prop.minor,
                     prop.major, prop.minor, a, prop.major, prop.minor, a);
  }
  if (md->enc_fp8_gemm && !elmo_cuda_fp8_gemm_ok())
    return elmo_fail(err, ELMO_EINPUT, "model.encoder.dtype \"fp8\" needs FP8 tensor cores (compute capability 8.9 "
                     "or newer) and the %s has %d.%d: use \"bf16\"", prop.name, prop.major, prop.minor);
  const size_t need = elmo_cuda_cls_smem_need(md->cls_dtype, round16(md->batch_size));
  const char *dt = md->cls_dtype == ELMO_FP8 ? "fp8" : md->cls_dtype == ELMO_BF16 ? "bf16" : "fp32";
  if (need > (size_t)optin)
    return elmo_fail(err, ELMO_EINPUT, "model.classifier.dtype \"%s\" with %lld batch rows needs %zu KB of shared "
                     "memory a block on this device, and the %s offers %d KB: use \"fp8\"%s", dt,
                     (long long)md->batch_size, need / 1024, prop.name, optin / 1024,
                     md->batch_size > 128 ? " or at most 128 rows a batch" : "");
  return ELMO_OK;
}

/* One model on the current device: the whole classifier (rank 0 of 1), or GPU `rank`'s shard of it (md from
 * elmo_cuda_shard_desc). */
static int64_t opt_slice(const elmo_model_desc *md, int n);

static int create_one(const elmo_config *cfg, const elmo_model_desc *md, int rank, int nranks, elmo_model **out,
                      elmo_err *err) {
  *out = NULL;
  int rc = check_device(md, err);
  if (rc) return rc;
  elmo_model *m = (elmo_model *)elmo_calloc(1, sizeof *m);
  m->md = *md;
  m->enc_opt = cfg->enc_opt;
  m->cls_opt = cfg->cls_opt;
  m->rank = rank;
  m->nranks = nranks;
  m->opt_per = opt_slice(md, nranks); /* before upload_decay, which uploads the slice's decay table too */
  ELMO_CUDA_CHECK(cudaGetDevice(&m->gpu));
  m->B_cap = round16(md->batch_size);
  m->B_enc = enc_rows_cap(md);
  m->cap = default_caps(md, m->B_cap);
  rc = elmo_cuda_choose_chunks(cfg, &m->md, err);
  if (!rc) rc = check_desc(&m->md, err);
  if (rc) {
    free(m);
    return rc;
  }
  ELMO_CUDA_CHECK(cudaStreamCreateWithFlags(&m->s, cudaStreamNonBlocking));
  elmo_mem_probe_start(&m->probe);
  elmo_cuda_plan_t plan;
  size_t total = plan_model(m, &plan);
  rc = elmo_pool_alloc(&m->pool, total, err);
  if (rc) {
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, "; plan: classifier weights %.2f GiB, chunk buffers %.2f GiB "
             "(%lld chunk(s)), activations %.2f GiB: raise model.classifier.chunks, lower training.batch_size "
             "or model.classifier.memory_budget_gib%s", (double)plan.bytes[ELMO_MEM_CLS_WEIGHTS] / GIB,
             (double)plan.bytes[ELMO_MEM_CHUNK] / GIB, (long long)plan.n_chunks,
             (double)plan.bytes[ELMO_MEM_ACTIVATIONS] / GIB,
             cfg->gpus == 1 ? ", or shard the labels over more GPUs (training.gpus, --gpus)" : "");
    ELMO_CUDA_CHECK(cudaStreamDestroy(m->s));
    free(m);
    return rc;
  }
  void *tf_mem = NULL;
  model_layout(m, &m->pool, &tf_mem);
  m->cls.W = m->buf[ELMO_BUF_CLS_W];
  m->cls.L = md->num_labels;
  m->cls.L_pad = md->L_pad;
  m->cls.label_base = md->label_base;
  m->cls.kahan = md->n_head ? (uint16_t *)m->buf[ELMO_BUF_CLS_KAHAN] : NULL;
  m->cls.head_slot = m->head_slot;
  m->cls.blas = m->blas;
  upload_init(m);
  upload_decay(m);
  pinned_alloc(m);
  ELMO_CUDA_CHECK(cudaMallocHost((void **)&m->loss_host, sizeof(double)));
  rc = encoder_setup(m, tf_mem, err);
  if (rc) {
    cuda_destroy(&m);
    return rc;
  }
  log_create(m);
  elmo_cuda_cls_init_paths(&m->cls, md->label_base ? NULL : stderr);
  const char *pe = getenv("ELMO_PROFILE");
  m->prof = pe && *pe && strcmp(pe, "0") != 0;
  for (int i = 0; m->prof && i <= PROF_PHASES; i++) ELMO_CUDA_CHECK(cudaEventCreate(&m->ev[i]));
  ELMO_CUDA_CHECK(cudaDeviceSynchronize());
  elmo_mem_probe_sample(&m->probe);
  *out = m;
  return ELMO_OK;
}

/* ---- NCCL, opened at run time (libnccl.so.2): only label-sharded training needs it ------------------ */

#if ELMO_NCCL_HEADER
typedef struct nccl_api {
  ncclResult_t (*comm_init_all)(ncclComm_t *, int, const int *);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  ncclResult_t (*broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*reduce_scatter)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*all_gather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*group_start)(void);
  ncclResult_t (*group_end)(void);
  const char *(*error_string)(ncclResult_t);
} nccl_api;
static nccl_api nccl;

static int nccl_open(elmo_err *err) {
  if (nccl.comm_init_all) return ELMO_OK;
  void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!lib) lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return elmo_fail(err, ELMO_ERUNTIME, "training.gpus > 1 needs NCCL and libnccl.so.2 was not found (%s): install "
                     "NCCL (Debian/Ubuntu: libnccl2) or add its folder to LD_LIBRARY_PATH", dlerror());
  nccl_api a;
  void **f[] = {(void **)&a.comm_init_all, (void **)&a.comm_destroy, (void **)&a.broadcast, (void **)&a.reduce,
                (void **)&a.all_reduce, (void **)&a.reduce_scatter, (void **)&a.all_gather, (void **)&a.group_start,
                (void **)&a.group_end, (void **)&a.error_string};
  const char *names[] = {"ncclCommInitAll", "ncclCommDestroy", "ncclBroadcast", "ncclReduce", "ncclAllReduce",
                         "ncclReduceScatter", "ncclAllGather", "ncclGroupStart", "ncclGroupEnd", "ncclGetErrorString"};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    *f[i] = dlsym(lib, names[i]);
    if (!*f[i]) {
      dlclose(lib);
      return elmo_fail(err, ELMO_ERUNTIME, "libnccl.so.2 has no %s: NCCL 2.7 or newer is needed", names[i]);
    }
  }
  nccl = a;
  return ELMO_OK;
}

#define ELMO_NCCL_CHECK(stmt)                                                                \
  do {                                                                                        \
    ncclResult_t elmo_r_ = (stmt);                                                            \
    if (elmo_r_ != ncclSuccess) elmo_cuda_die(nccl.error_string(elmo_r_), #stmt, __FILE__, __LINE__); \
  } while (0)
#endif

/* ---- label sharding over GPUs ----------------------------------------------------------------------- */

/* GPU q of n: [base, base + count) of `total` items in shares of ceil(total / n) rounded up to `align` (labels:
 * 16; batch rows: 1, the last GPUs' shares possibly short or empty). */
static void split_span(int64_t total, int n, int q, int64_t align, int64_t *base, int64_t *count) {
  const int64_t per = ((total + n - 1) / n + align - 1) / align * align;
  *base = min64((int64_t)q * per, total);
  *count = min64(per, total - *base);
}

/* This model's rows of a batch of B (all of them unless sharded). */
static void shard_rows(const elmo_model *m, int64_t B, int64_t *r0, int64_t *nr) {
  split_span(B, m->nranks, m->rank, 1, r0, nr);
}

/* The rows [r0, r0 + nr) of a batch as a batch of their own. */
static elmo_batch batch_rows(const elmo_batch *b, int64_t r0, int64_t nr) {
  elmo_batch s = *b;
  s.B = nr;
  if (b->rows) s.rows = b->rows + r0;
  if (b->x_indptr) s.x_indptr = b->x_indptr + r0;
  if (b->ids) s.ids = b->ids + r0 * b->T;
  if (b->mask) s.mask = b->mask + r0 * b->T;
  if (b->y_indptr) s.y_indptr = b->y_indptr + r0;
  return s;
}

/* Parameters of each GPU's slice of the encoder's AdamW over n GPUs: a multiple of 128; 0 = every GPU steps
 * the whole encoder (ELMO_SPLIT_ADAMW=0, or too few parameters). */
static int64_t opt_slice(const elmo_model_desc *md, int n) {
  const char *z = getenv("ELMO_SPLIT_ADAMW");
  return n < 2 || (z && !strcmp(z, "0")) ? 0 : md->enc_numel / n / 128 * 128;
}

extern "C" void elmo_cuda_shard_desc(const elmo_model_desc *md, int n, int q, elmo_model_desc *out) {
  *out = *md;
  const int64_t per = opt_slice(md, n);
  if (per) { /* the AdamW state of the GPU's slice and of the tail */
    const int64_t own = per + md->enc_numel - n * per;
    out->buf_numel[ELMO_BUF_ENC_M] = out->buf_numel[ELMO_BUF_ENC_V] = own;
    out->buf_numel[ELMO_BUF_ENC_KAHAN] = md->enc_kahan ? own : 0;
  }
  int64_t base, count;
  split_span(md->num_labels, n, q, 16, &base, &count);
  out->label_base = base;
  out->num_labels = count;
  out->L_pad = round16(count);
  out->enc_batch = (md->batch_size + n - 1) / n;
  out->buf_numel[ELMO_BUF_CLS_W] = out->L_pad * out->d;
  out->n_head = elmo_model_shard_heads(md, base, count, &out->head_labels, NULL);
  out->buf_numel[ELMO_BUF_CLS_KAHAN] = out->n_head * out->d;
  out->buf_numel[ELMO_BUF_CLS_HEAD] = out->n_head;
  elmo_model_desc_set_chunks(out, (out->L_pad + md->chunk_labels - 1) / md->chunk_labels);
}

static int create_sharded(const elmo_config *cfg, const elmo_model_desc *md, int n, elmo_model **out,
                          elmo_err *err) {
#if ELMO_NCCL_HEADER
  if (md->num_labels < 16 * (int64_t)n)
    return elmo_fail(err, ELMO_EINPUT, "training.gpus %d: %lld labels are too few to shard (16 or more a GPU)", n,
                     (long long)md->num_labels);
  int rc = nccl_open(err);
  if (rc) return rc;
  int dev0 = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev0));
  elmo_model **r = (elmo_model **)elmo_calloc((size_t)n, sizeof *r);
  for (int q = 0; q < n && !rc; q++) {
    elmo_model_desc sd;
    elmo_cuda_shard_desc(md, n, q, &sd);
    const int64_t base = sd.label_base, count = sd.num_labels;
    ELMO_CUDA_CHECK(cudaSetDevice(q));
    rc = create_one(cfg, &sd, q, n, &r[q], err);
    if (!rc) /* the model owns its head list (sd's); and where each of its head rows is in the whole's */
      elmo_model_shard_heads(md, base, count, NULL, &r[q]->head_glob);
    else
      free(sd.head_labels);
    if (rc) {
      size_t k = strlen(err->msg);
      snprintf(err->msg + k, sizeof err->msg - k, " (GPU %d, labels %lld..%lld)", q, (long long)base,
               (long long)(base + count - 1));
      break;
    }
  }
  if (!rc) {
    ncclComm_t comms[32];
    int devs[32];
    for (int q = 0; q < n; q++) devs[q] = q;
    ELMO_NCCL_CHECK(nccl.comm_init_all(comms, n, devs));
    for (int q = 0; q < n; q++) r[q]->comm = comms[q];
  }
  ELMO_CUDA_CHECK(cudaSetDevice(dev0));
  if (rc) {
    for (int q = n - 1; q >= 0; q--)
      if (r[q]) {
        ELMO_CUDA_CHECK(cudaSetDevice(q));
        cuda_destroy(&r[q]);
      }
    ELMO_CUDA_CHECK(cudaSetDevice(dev0));
    free(r);
    return rc;
  }
  r[0]->ranks = r;
  r[0]->glob_L_pad = md->L_pad;
  r[0]->glob_n_head = md->n_head;
  fprintf(stderr, "elmo cuda: classifier sharded by labels over %d GPUs (NCCL):", n);
  for (int q = 0; q < n; q++)
    fprintf(stderr, " GPU %d labels %lld..%lld%s", q, (long long)r[q]->md.label_base,
            (long long)(r[q]->md.label_base + r[q]->md.num_labels - 1), q + 1 < n ? ";" : "");
  fprintf(stderr, "; encoder data-parallel, up to %lld rows a GPU\n", (long long)r[0]->md.enc_batch);
  *out = r[0];
  return ELMO_OK;
#else
  (void)cfg; (void)md; (void)out;
  return elmo_fail(err, ELMO_EINPUT, "training.gpus %d: this elmo was built without NCCL's header (nccl.h); rebuild "
                   "with NCCL installed, or set training.gpus 1", n);
#endif
}

static int cuda_create(const elmo_config *cfg, const elmo_model_desc *md, elmo_model **out, elmo_err *err) {
  *out = NULL;
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    cudaGetLastError();
    return elmo_fail(err, ELMO_ERUNTIME, "no CUDA device");
  }
  const int n = cfg->gpus == 0 ? (ndev < 32 ? ndev : 32) : (int)cfg->gpus;
  if (n > ndev)
    return elmo_fail(err, ELMO_EINPUT, "training.gpus %d: this machine shows %d CUDA device(s) "
                     "(CUDA_VISIBLE_DEVICES picks which)", n, ndev);
  if (n > 1) return create_sharded(cfg, md, n, out, err);
  return create_one(cfg, md, 0, 1, out, err);
}

static void destroy_one(elmo_model **pm) {
  elmo_model *m = *pm;
  if (!m) return;
  ELMO_CUDA_CHECK(cudaSetDevice(m->gpu));
  if (m->s) ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s));
#if ELMO_NCCL_HEADER
  if (m->comm) ELMO_NCCL_CHECK(nccl.comm_destroy((ncclComm_t)m->comm));
#endif
  if (m->nranks > 1 && m->prof) fprintf(stderr, "elmo cuda profile: GPU %d\n", m->rank);
  prof_report(m);
  for (int i = 0; m->prof && i <= PROF_PHASES; i++) ELMO_CUDA_CHECK(cudaEventDestroy(m->ev[i]));
  if (m->tf) elmo_cuda_tf_destroy(&m->tf);
  elmo_blas_destroy(&m->blas);
  elmo_pool_free(&m->overflow);
  elmo_pool_free(&m->pool);
  if (m->pinned) ELMO_CUDA_CHECK(cudaFreeHost(m->pinned));
  if (m->loss_host) ELMO_CUDA_CHECK(cudaFreeHost(m->loss_host));
  if (m->s) ELMO_CUDA_CHECK(cudaStreamDestroy(m->s));
  if (m->nranks > 1) free(m->md.head_labels); /* a shard's own list (elmo_cuda_shard_desc) */
  free(m->head_glob);
  free(m);
  *pm = NULL;
}

static void cuda_destroy(elmo_model **pm) {
  elmo_model *m = *pm;
  if (!m) return;
  int dev0 = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev0));
  elmo_model **r = m->ranks;
  if (r) {
    for (int q = 0; q < m->nranks; q++) { /* every stream idle before any communicator goes */
      ELMO_CUDA_CHECK(cudaSetDevice(r[q]->gpu));
      ELMO_CUDA_CHECK(cudaStreamSynchronize(r[q]->s));
    }
    for (int q = m->nranks - 1; q >= 1; q--) destroy_one(&r[q]);
  }
  destroy_one(pm);
  free(r);
  ELMO_CUDA_CHECK(cudaSetDevice(dev0));
}

/* ---- batch upload ---------------------------------------------------------------------------- */

static void sort_i32(int32_t *a, int64_t n) {
  for (int64_t i = 1; i < n; i++) { /* rows are short and usually sorted already */
    int32_t v = a[i];
    int64_t j = i;
    while (j > 0 && a[j - 1] > v) {
      a[j] = a[j - 1];
      j--;
    }
    a[j] = v;
  }
}

/* Makes room for a batch larger than planned: a new input group in its own allocation. */
static int grow_inputs(elmo_model *m, caps need, elmo_err *err) {
  caps c = m->cap;
  if (need.x > c.x) c.x = need.x + need.x / 2;
  if (need.y > c.y) c.y = need.y + need.y / 2;
  if (need.f > c.f) c.f = need.f + need.f / 2;
  ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s));
  elmo_pool p;
  elmo_pool_plan_init(&p);
  inputs tmp;
  elmo_cuda_sparse_sort ts;
  transfer_layout(&tmp, &p, &m->md, m->B_cap, c);
  sort_layout(&ts, &p, c.x);
  elmo_pool_free(&m->overflow);
  int rc = elmo_pool_alloc(&m->overflow, p.used, err);
  if (rc) return rc;
  m->cap = c;
  transfer_layout(&m->dev, &m->overflow, &m->md, m->B_cap, c);
  sort_layout(&m->srt, &m->overflow, c.x);
  ELMO_CUDA_CHECK(cudaFreeHost(m->pinned));
  pinned_alloc(m);
  fprintf(stderr, "elmo cuda: batch inputs grew to %.1f MiB (capacity %lld feature, %lld label, %lld filter entries)\n",
          (double)p.used / MIB, (long long)c.x, (long long)c.y, (long long)c.f);
  return ELMO_OK;
}

static void copy_up(void *dst, const void *src, size_t n, cudaStream_t s) {
  if (n) ELMO_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s));
}

/* Filter rows of the batch re-based to batch rows (dataset row ids in b->rows). */
static int64_t filter_nnz(const elmo_batch *b, const elmo_csr *f) {
  int64_t n = 0;
  for (int64_t i = 0; f && i < b->B; i++) {
    int64_t r = b->rows ? b->rows[i] : i;
    if (r >= 0 && r < f->rows) n += f->indptr[r + 1] - f->indptr[r];
  }
  return n;
}

/* Keeps the ids of this model's labels, re-based to its first label (all of them unless sharded). */
static int64_t own_labels(const elmo_model *m, const int32_t *src, int64_t n, int32_t *dst) {
  const int64_t lo = m->md.label_base, hi = lo + m->md.num_labels;
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    if (src[i] >= lo && src[i] < hi) dst[k++] = (int32_t)(src[i] - lo);
  return k;
}

static void fill_filter(elmo_model *m, const elmo_batch *b, const elmo_csr *f) {
  int64_t *ip = m->host.f_indptr, n = 0;
  ip[0] = 0;
  for (int64_t i = 0; i < b->B; i++) {
    int64_t r = b->rows ? b->rows[i] : i;
    if (r >= 0 && r < f->rows) {
      int64_t len = own_labels(m, f->indices + f->indptr[r], f->indptr[r + 1] - f->indptr[r], m->host.f_indices + n);
      sort_i32(m->host.f_indices + n, len);
      n += len;
    }
    ip[i + 1] = n;
  }
  copy_up(m->dev.f_indptr, ip, 8 * (size_t)(b->B + 1), m->s);
  copy_up(m->dev.f_indices, m->host.f_indices, 4 * (size_t)n, m->s);
}

static void fill_labels(elmo_model *m, const elmo_batch *b) {
  int64_t *ip = m->host.y_indptr, n = 0;
  ip[0] = 0;
  for (int64_t i = 0; i < b->B; i++) {
    int64_t len = own_labels(m, b->y_indices + b->y_indptr[i], b->y_indptr[i + 1] - b->y_indptr[i],
                             m->host.y_indices + n);
    sort_i32(m->host.y_indices + n, len);
    n += len;
    ip[i + 1] = n;
  }
  copy_up(m->dev.y_indptr, ip, 8 * (size_t)(b->B + 1), m->s);
  copy_up(m->dev.y_indices, m->host.y_indices, 4 * (size_t)n, m->s);
}

static void fill_features(elmo_model *m, const elmo_batch *b) {
  if (m->md.encoder_kind == ELMO_ENC_TRANSFORMER) {
    size_t tok = (size_t)(b->B * b->T);
    memcpy(m->host.ids, b->ids, 4 * tok);
    if (b->mask) memcpy(m->host.mask, b->mask, tok);
    copy_up(m->dev.ids, m->host.ids, 4 * tok, m->s);
    copy_up(m->dev.mask, m->host.mask, b->mask ? tok : 0, m->s);
    return;
  }
  int64_t base = b->x_indptr[0], n = b->x_indptr[b->B] - base;
  for (int64_t i = 0; i <= b->B; i++) m->host.x_indptr[i] = b->x_indptr[i] - base;
  memcpy(m->host.x_indices, b->x_indices + base, 4 * (size_t)n);
  memcpy(m->host.x_values, b->x_values + base, 4 * (size_t)n);
  copy_up(m->dev.x_indptr, m->host.x_indptr, 8 * (size_t)(b->B + 1), m->s);
  copy_up(m->dev.x_indices, m->host.x_indices, 4 * (size_t)n, m->s);
  copy_up(m->dev.x_values, m->host.x_values, 4 * (size_t)n, m->s);
}

/* b: the whole batch (its labels when `labels`, its filter rows when `filter`); the features uploaded are
 * those of this model's rows of it (all of them unless sharded). */
static int upload_batch(elmo_model *m, const elmo_batch *b, int labels, const elmo_csr *filter, elmo_err *err) {
  if (b->B < 1 || b->B > m->md.batch_size)
    return elmo_fail(err, ELMO_EINPUT, "batch of %lld rows (the model was planned for 1..%lld)", (long long)b->B,
                     (long long)m->md.batch_size);
  if (m->md.encoder_kind == ELMO_ENC_TRANSFORMER && b->T > m->md.T)
    return elmo_fail(err, ELMO_EINPUT, "batch of %lld tokens per row (the model was planned for %lld)",
                     (long long)b->T, (long long)m->md.T);
  int64_t r0, nr;
  shard_rows(m, b->B, &r0, &nr);
  const elmo_batch fb = batch_rows(b, r0, nr);
  caps need = {0, 0, 0};
  if (m->md.encoder_kind == ELMO_ENC_SPARSE) need.x = fb.x_indptr[fb.B] - fb.x_indptr[0];
  if (labels) need.y = b->y_indptr[b->B] - b->y_indptr[0];
  need.f = filter_nnz(b, filter);
  if (need.x > m->cap.x || need.y > m->cap.y || need.f > m->cap.f) {
    int rc = grow_inputs(m, need, err);
    if (rc) return rc;
  }
  ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s)); /* the pinned buffers are free to overwrite */
  fill_features(m, &fb);
  if (labels) fill_labels(m, b);
  if (filter) fill_filter(m, b, filter);
  return ELMO_OK;
}

/* ---- the step ------------------------------------------------------------------------------- */

/* The encoder on rows b (X: their pooled vectors). */
static int encoder_forward(elmo_model *m, const elmo_batch *b, float *X, elmo_err *err) {
  if (m->md.encoder_kind == ELMO_ENC_TRANSFORMER)
    return elmo_cuda_tf_forward(m->tf, m->buf[ELMO_BUF_ENC_PARAM], m->md.enc_dtype == ELMO_BF16, m->dev.ids,
                                b->mask ? m->dev.mask : NULL, (int)b->B, (int)b->T, X, m->s, err);
  elmo_cuda_sparse_forward(&m->se, b->B, m->dev.x_indptr, m->dev.x_indices, m->dev.x_values, X, m->s);
  return ELMO_OK;
}

/* enc_grad = the encoder's gradient from dX of rows b (zero for no rows). */
static int encoder_backward(elmo_model *m, const elmo_batch *b, float *dX, elmo_err *err) {
  ELMO_CUDA_CHECK(cudaMemsetAsync(m->enc_grad, 0, 4 * (size_t)m->md.enc_numel, m->s));
  if (b->B == 0) return ELMO_OK;
  if (m->md.encoder_kind == ELMO_ENC_TRANSFORMER)
    return elmo_cuda_tf_backward(m->tf, m->buf[ELMO_BUF_ENC_PARAM], m->md.enc_dtype == ELMO_BF16, dX,
                                 m->enc_grad, m->s, err);
  int64_t nnz = b->x_indptr[b->B] - b->x_indptr[0];
  elmo_cuda_sparse_prepare(&m->srt, b->B, nnz, m->dev.x_indptr, m->dev.x_indices, m->s);
  elmo_cuda_sparse_backward(&m->se, b->B, nnz, m->dev.x_values, &m->srt, dX, grad_ptr(m, "encoder.embedding.weight"),
                            grad_ptr(m, "encoder.LayerNorm.weight"), grad_ptr(m, "encoder.LayerNorm.bias"), m->s);
  return ELMO_OK;
}

/* AdamW on parameters [lo, lo + n) of the encoder, their moments from element mo of the AdamW buffers, `view`
 * their decayed ranges re-based to lo. */
static void encoder_update_range(elmo_model *m, const elmo_step *s, int64_t lo, int64_t mo, int64_t n,
                                 const elmo_cuda_decay *view) {
  if (n <= 0) return;
  elmo_adamw_hyper ah;
  ah.lr = (float)s->lr_encoder;
  ah.beta1 = (float)m->enc_opt.beta1;
  ah.beta2 = (float)m->enc_opt.beta2;
  ah.eps = (float)m->enc_opt.eps;
  ah.weight_decay = (float)m->enc_opt.weight_decay;
  ah.t = s->step + 1;
  const size_t es = elmo_dtype_size(m->md.enc_dtype);
  elmo_cuda_adamw((char *)m->buf[ELMO_BUF_ENC_PARAM] + lo * es, (char *)m->buf[ELMO_BUF_ENC_M] + mo * es,
                  (char *)m->buf[ELMO_BUF_ENC_V] + mo * es,
                  m->md.enc_kahan ? (uint16_t *)m->buf[ELMO_BUF_ENC_KAHAN] + mo : NULL, m->md.enc_dtype,
                  m->enc_grad + lo, n, view, &ah, m->s);
}

static void encoder_update(elmo_model *m, const elmo_step *s) {
  encoder_update_range(m, s, 0, 0, m->md.enc_numel, &m->decay_view);
}

/* Sharded: every GPU's rows of buf [B, d] to all GPUs (all-gather by rows), or (sum) the sum over GPUs
 * of each GPU's rows to the GPU that owns them (reduce-scatter by rows). Nothing when not sharded. */
static void exchange_rows(elmo_model *m, float *buf, int64_t B, int sum) {
#if ELMO_NCCL_HEADER
  if (m->nranks == 1) return;
  const int64_t d = m->md.d;
  ELMO_NCCL_CHECK(nccl.group_start());
  for (int q = 0; q < m->nranks; q++) {
    int64_t r0, nr;
    split_span(B, m->nranks, q, 1, &r0, &nr);
    if (nr <= 0) continue;
    float *p = buf + r0 * d;
    if (sum) ELMO_NCCL_CHECK(nccl.reduce(p, p, (size_t)(nr * d), ncclFloat32, ncclSum, q, (ncclComm_t)m->comm, m->s));
    else ELMO_NCCL_CHECK(nccl.broadcast(p, p, (size_t)(nr * d), ncclFloat32, q, (ncclComm_t)m->comm, m->s));
  }
  ELMO_NCCL_CHECK(nccl.group_end());
#else
  (void)m; (void)buf; (void)B; (void)sum;
#endif
}

/* Sharded: enc_grad summed over GPUs on every GPU (the same bits everywhere). Summing each layer's share
 * on a second stream while the lower layers' backward runs was tried and measured no faster (H100 x2 and
 * x4, docs/PERFORMANCE.md). */
static void sum_encoder_grad(elmo_model *m) {
#if ELMO_NCCL_HEADER
  if (m->nranks == 1) return;
  ELMO_NCCL_CHECK(nccl.all_reduce(m->enc_grad, m->enc_grad, (size_t)m->md.enc_numel, ncclFloat32, ncclSum,
                                  (ncclComm_t)m->comm, m->s));
#else
  (void)m;
#endif
}

/* Sharded, opt_per > 0: the encoder gradients' sums split over the GPUs (reduce-scatter), each GPU steps
 * AdamW on its slice (the tail on every GPU), and the new parameters are gathered to all (the moments of a
 * slice live on its GPU only). The same bits as the all-reduce and a whole step on every GPU, with a
 * quarter less traffic and 1/N of the AdamW pass. */
static void encoder_update_split(elmo_model *m, const elmo_step *s) {
#if ELMO_NCCL_HEADER
  const int64_t per = m->opt_per, lo = m->rank * per, tail = m->nranks * per, nt = m->md.enc_numel - tail;
  ncclComm_t c = (ncclComm_t)m->comm;
  ELMO_NCCL_CHECK(nccl.group_start());
  ELMO_NCCL_CHECK(nccl.reduce_scatter(m->enc_grad, m->enc_grad + lo, (size_t)per, ncclFloat32, ncclSum, c, m->s));
  if (nt > 0)
    ELMO_NCCL_CHECK(nccl.all_reduce(m->enc_grad + tail, m->enc_grad + tail, (size_t)nt, ncclFloat32, ncclSum, c, m->s));
  ELMO_NCCL_CHECK(nccl.group_end());
  encoder_update_range(m, s, lo, 0, per, &m->decay_part[0]);
  encoder_update_range(m, s, tail, per, nt, &m->decay_part[1]);
  const int bf = m->md.enc_dtype == ELMO_BF16;
  const size_t es = bf ? 2 : 4;
  char *p = (char *)m->buf[ELMO_BUF_ENC_PARAM];
  ELMO_NCCL_CHECK(nccl.all_gather(p + lo * es, p, (size_t)per, bf ? ncclBfloat16 : ncclFloat32, c, m->s));
#else
  (void)m; (void)s;
#endif
}

/* One model's part of the step after upload_batch: the whole step unless sharded. Leaves its summed BCE
 * (this model's labels) in *m->loss_host when s->compute_loss. */
static int model_step(elmo_model *m, const elmo_batch *b, const elmo_step *s, elmo_err *err) {
  int64_t r0, nr;
  shard_rows(m, b->B, &r0, &nr);
  const elmo_batch fb = batch_rows(b, r0, nr);
  const int64_t d = m->md.d;
  float *X = m->X + r0 * d, *dX = m->dX + r0 * d;
  int rc = nr ? encoder_forward(m, &fb, X, err) : ELMO_OK;
  if (rc) return rc;
  prof_mark(m, 2);
  elmo_cuda_dropout(X, nr * d, r0 * d, m->md.dropout, m->md.seed, s->step, m->s);
  exchange_rows(m, m->X, b->B, 0);
  prof_mark(m, 3);
  elmo_cls_hyper h;
  h.lr = s->lr_classifier;
  h.weight_decay = m->cls_opt.weight_decay;
  h.seed = m->md.seed;
  h.step = s->step;
  elmo_cuda_cls_step(&m->cls, m->X, b->B, m->dev.y_indptr, m->dev.y_indices, &h, s->compute_loss, m->dX, m->s);
  if (s->compute_loss)
    ELMO_CUDA_CHECK(cudaMemcpyAsync(m->loss_host, m->cls.loss, sizeof(double), cudaMemcpyDeviceToHost, m->s));
  exchange_rows(m, m->dX, b->B, 1);
  prof_mark(m, 4);
  elmo_cuda_dropout(dX, nr * d, r0 * d, m->md.dropout, m->md.seed, s->step, m->s); /* the same mask */
  prof_mark(m, 5);
  rc = encoder_backward(m, &fb, dX, err);
  if (rc) return rc;
  if (!m->opt_per) sum_encoder_grad(m);
  prof_mark(m, 6);
  if (m->opt_per) encoder_update_split(m, s);
  else encoder_update(m, s);
  prof_mark(m, 7);
  ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s));
  prof_collect(m);
  elmo_mem_probe_sample(&m->probe);
  return ELMO_OK;
}

/* ---- running the ranks of a sharded model, one host thread each -------------------------------------- */

/* Rank threads wait at this gate until every one of them exists: a rank must not enter a collective that
 * a rank without a thread would never join. */
typedef struct rank_gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int state;                 /* 0 wait, 1 run, -1 give up */
} rank_gate;

typedef struct rank_call {
  rank_gate *gate;
  elmo_model *m;
  int what;                  /* 0 upload for training, 1 step, 2 upload for prediction, 3 predict */
  const elmo_batch *b;
  const elmo_step *s;
  const elmo_csr *filter;
  int k;
  int32_t *topk;
  float *scores;
  int rc;
  elmo_err err;
} rank_call;

static int model_predict(elmo_model *m, const elmo_batch *b, int k, const elmo_csr *filter, int32_t *topk,
                         float *scores, elmo_err *err);

static void *rank_run(void *p) {
  rank_call *c = (rank_call *)p;
  if (c->gate) {
    pthread_mutex_lock(&c->gate->mu);
    while (c->gate->state == 0) pthread_cond_wait(&c->gate->cv, &c->gate->mu);
    const int go = c->gate->state > 0;
    pthread_mutex_unlock(&c->gate->mu);
    if (!go) return NULL;
  }
  ELMO_CUDA_CHECK(cudaSetDevice(c->m->gpu));
  switch (c->what) {
    case 0:
      prof_mark(c->m, 0);
      c->rc = upload_batch(c->m, c->b, 1, NULL, &c->err);
      prof_mark(c->m, 1);
      break;
    case 1: c->rc = model_step(c->m, c->b, c->s, &c->err); break;
    case 2: c->rc = upload_batch(c->m, c->b, 0, c->filter, &c->err); break;
    default: c->rc = model_predict(c->m, c->b, c->k, c->filter, c->topk, c->scores, &c->err); break;
  }
  return NULL;
}

/* calls[q] on rank q, all at once (rank 0 on this thread); the first failure's code and message. */
static int on_ranks(elmo_model *m, rank_call *calls, elmo_err *err) {
  const int n = m->nranks;
  pthread_t th[32];
  rank_gate gate;
  pthread_mutex_init(&gate.mu, NULL);
  pthread_cond_init(&gate.cv, NULL);
  gate.state = 0;
  int started = 1;
  for (int q = 1; q < n && started == q; q++) {
    calls[q].gate = &gate;
    started += pthread_create(&th[q], NULL, rank_run, &calls[q]) == 0;
  }
  pthread_mutex_lock(&gate.mu);
  gate.state = started == n ? 1 : -1;
  pthread_cond_broadcast(&gate.cv);
  pthread_mutex_unlock(&gate.mu);
  if (started == n) rank_run(&calls[0]);
  for (int q = 1; q < started; q++) pthread_join(th[q], NULL);
  pthread_cond_destroy(&gate.cv);
  pthread_mutex_destroy(&gate.mu);
  ELMO_CUDA_CHECK(cudaSetDevice(m->gpu));
  if (started < n)
    return elmo_fail(err, ELMO_ERUNTIME, "could not start a host thread for GPU %d of %d (pthread_create)", started, n);
  for (int q = 0; q < n; q++)
    if (calls[q].rc) {
      *err = calls[q].err;
      return calls[q].rc;
    }
  return ELMO_OK;
}

static int cuda_train_step(elmo_model *m, const elmo_batch *b, const elmo_step *s, double *loss, elmo_err *err) {
  *loss = NAN;
  int rc;
  double sum = 0.0;
  if (!m->ranks) {
    prof_mark(m, 0); /* upload: host-side filling of the pinned buffers included */
    rc = upload_batch(m, b, 1, NULL, err);
    if (rc) return rc;
    prof_mark(m, 1);
    rc = model_step(m, b, s, err);
    if (rc) return rc;
    sum = *m->loss_host;
  } else {
    rank_call c[32];
    memset(c, 0, sizeof c);
    for (int q = 0; q < m->nranks; q++) {
      c[q].m = m->ranks[q];
      c[q].b = b;
      c[q].s = s;
    }
    rc = on_ranks(m, c, err); /* uploads first: an input error stops every rank before any collective */
    if (rc) return rc;
    for (int q = 0; q < m->nranks; q++) c[q].what = 1;
    rc = on_ranks(m, c, err);
    if (rc) return rc;
    for (int q = 0; q < m->nranks; q++) sum += *m->ranks[q]->loss_host;
  }
  if (s->compute_loss) {
    *loss = sum;
    if (!isfinite(*loss))
      return elmo_fail(err, ELMO_ERUNTIME, "step %lld: loss is not finite (%g); lower the learning rates",
                       (long long)s->step, *loss);
  }
  return ELMO_OK;
}

/* One model's top-k over its labels (ids of the whole model's label space) after upload_batch. */
static int model_predict(elmo_model *m, const elmo_batch *b, int k, const elmo_csr *filter, int32_t *topk,
                         float *scores, elmo_err *err) {
  int64_t r0, nr;
  shard_rows(m, b->B, &r0, &nr);
  const elmo_batch fb = batch_rows(b, r0, nr);
  int rc = nr ? encoder_forward(m, &fb, m->X + r0 * m->md.d, err) : ELMO_OK;
  if (rc) return rc;
  exchange_rows(m, m->X, b->B, 0);
  elmo_cuda_cls_cast(&m->cls, m->X, b->B, m->s);
  elmo_cuda_topk_init(m->topk, m->topv, b->B, k, m->s);
  const int64_t span = elmo_cuda_cls_predict_span(&m->cls, b->B);
  m->cls.widened_l0 = -1;
  for (int64_t l0 = 0; l0 < m->md.L_pad; l0 += span) {
    int64_t n = min64(span, m->md.L_pad - l0);
    elmo_cuda_cls_logits(&m->cls, b->B, l0, n, 1, m->s);
    elmo_cuda_topk_merge((const float *)m->cls.z, n, b->B, l0, n, m->md.num_labels, k,
                         filter ? m->dev.f_indptr : NULL, m->dev.f_indices, m->topk, m->topv, m->s);
  }
  m->cls.widened_l0 = -1;
  size_t nk = (size_t)(b->B * k);
  ELMO_CUDA_CHECK(cudaMemcpyAsync(topk, m->topk, 4 * nk, cudaMemcpyDeviceToHost, m->s));
  ELMO_CUDA_CHECK(cudaMemcpyAsync(scores, m->topv, 4 * nk, cudaMemcpyDeviceToHost, m->s));
  ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s));
  for (size_t i = 0; m->md.label_base && i < nk; i++)
    if (topk[i] >= 0) topk[i] += (int32_t)m->md.label_base;
  elmo_mem_probe_sample(&m->probe);
  return ELMO_OK;
}

static int cuda_predict(elmo_model *m, const elmo_batch *b, int k, const elmo_csr *filter, int32_t *topk,
                        float *scores, elmo_err *err) {
  if (k < 1 || k > ELMO_CUDA_TOPK_MAX)
    return elmo_fail(err, ELMO_EINPUT, "top-k of %d: the CUDA backend ranks 1..%d labels per row (eval.topk)", k,
                     ELMO_CUDA_TOPK_MAX);
  if (!m->ranks) {
    ELMO_CUDA_CHECK(cudaSetDevice(m->gpu));
    int rc = upload_batch(m, b, 0, filter, err);
    return rc ? rc : model_predict(m, b, k, filter, topk, scores, err);
  }
  /* every GPU ranks its labels for all rows; the lists are merged here */
  const int n = m->nranks;
  const size_t nk = (size_t)(b->B * k);
  int32_t *ids = (int32_t *)elmo_malloc(4 * nk * (size_t)n);
  float *sc = (float *)elmo_malloc(4 * nk * (size_t)n);
  rank_call c[32];
  memset(c, 0, sizeof c);
  for (int q = 0; q < n; q++) {
    c[q].m = m->ranks[q];
    c[q].what = 2;
    c[q].b = b;
    c[q].filter = filter;
    c[q].k = k;
    c[q].topk = ids + nk * (size_t)q;
    c[q].scores = sc + nk * (size_t)q;
  }
  int rc = on_ranks(m, c, err);
  for (int q = 0; !rc && q < n; q++) c[q].what = 3;
  if (!rc) rc = on_ranks(m, c, err);
  if (!rc) elmo_topk_merge_lists(n, b->B, k, ids, sc, topk, scores);
  free(ids);
  free(sc);
  return rc;
}

static int buffer_io_one(elmo_model *m, int buf, int write, size_t offset, void *host, size_t nbytes,
                         elmo_err *err) {
  if (buf < 0 || buf >= ELMO_NUM_BUFS || offset + nbytes > elmo_buf_bytes(&m->md, buf))
    return elmo_fail(err, ELMO_ERUNTIME, "buffer %d: access [%zu, %zu) out of range", buf, offset, offset + nbytes);
  if (!nbytes) return ELMO_OK;
  ELMO_CUDA_CHECK(cudaSetDevice(m->gpu));
  ELMO_CUDA_CHECK(cudaStreamSynchronize(m->s));
  char *p = (char *)m->buf[buf] + offset;
  if (write) ELMO_CUDA_CHECK(cudaMemcpy(p, host, nbytes, cudaMemcpyHostToDevice));
  else ELMO_CUDA_CHECK(cudaMemcpy(host, p, nbytes, cudaMemcpyDeviceToHost));
  if (write) m->cls.widened_l0 = -1;
  return ELMO_OK;
}

/* [lo, hi) = [offset, offset + n) within [a, e); lo >= hi when they do not meet. */
static void overlap(size_t offset, size_t n, size_t a, size_t e, size_t *lo, size_t *hi) {
  *lo = offset > a ? offset : a;
  *hi = offset + n < e ? offset + n : e;
}

/* Sharded, the head labels' buffers (CLS_KAHAN rows, CLS_HEAD ids): the whole model's head slot h is on the GPU
 * that holds label head_labels[h], as that GPU's slot j (head_glob[j] = h); a GPU keeps its ids re-based to its
 * first label. Each GPU's buffer goes through a host copy (checkpoints only: small). A write of ids other than
 * the model's own is refused: the shards were laid out for those. */
static int head_io(elmo_model *m, int buf, int write, size_t offset, void *host, size_t nbytes, elmo_err *err) {
  const int ids = buf == ELMO_BUF_CLS_HEAD;
  const size_t rb = ids ? 4 : (size_t)m->md.d * 2;
  if (offset + nbytes > (size_t)m->glob_n_head * rb)
    return elmo_fail(err, ELMO_ERUNTIME, "buffer %d: access [%zu, %zu) out of range", buf, offset, offset + nbytes);
  int rc = ELMO_OK;
  for (int q = 0; q < m->nranks && !rc; q++) {
    elmo_model *r = m->ranks[q];
    const int64_t nh = r->md.n_head, base = r->md.label_base;
    if (!nh) continue;
    uint8_t *stage = (uint8_t *)elmo_malloc((size_t)nh * rb);
    int32_t *id = (int32_t *)stage;
    rc = buffer_io_one(r, buf, 0, 0, stage, (size_t)nh * rb, err);
    for (int64_t j = 0; ids && j < nh; j++) id[j] += (int32_t)base; /* the whole model's ids outside */
    for (int64_t j = 0; j < nh && !rc; j++) {
      const size_t a = (size_t)r->head_glob[j] * rb;
      size_t lo, hi;
      overlap(offset, nbytes, a, a + rb, &lo, &hi);
      if (lo >= hi) continue;
      uint8_t *h = (uint8_t *)host + (lo - offset), *at = stage + (size_t)j * rb + (lo - a);
      if (write) memcpy(at, h, hi - lo);
      else memcpy(h, at, hi - lo);
    }
    for (int64_t j = 0; !rc && write && ids && j < nh; j++) /* the ids are the layout: checked, not written */
      if (id[j] != r->md.head_labels[j] + (int32_t)base)
        rc = elmo_fail(err, ELMO_EINPUT, "classifier.head_labels[%lld] = %d, but this model's head label there is "
                       "%lld: the labels were sharded for other head labels", (long long)r->head_glob[j], id[j],
                       (long long)(r->md.head_labels[j] + base));
    if (!rc && write && !ids) rc = buffer_io_one(r, buf, 1, 0, stage, (size_t)nh * rb, err);
    free(stage);
  }
  return rc;
}

/* Sharded: the encoder's parameters are the same on every GPU (read from the first, written to all), its
 * AdamW moments each GPU's slice on that GPU (read from there, written to all); the
 * classifier's rows are laid end to end in label order, every shard but the last a multiple of 16 rows, so
 * the whole model's [L_pad, d] is the shards' buffers one after another. */
static int cuda_buffer_io(elmo_model *m, int buf, int write, size_t offset, void *host, size_t nbytes, elmo_err *err) {
  if (!m->ranks) return buffer_io_one(m, buf, write, offset, host, nbytes, err);
  int rc = ELMO_OK;
  const int moments = buf == ELMO_BUF_ENC_M || buf == ELMO_BUF_ENC_V || buf == ELMO_BUF_ENC_KAHAN;
  if (moments && m->opt_per) { /* GPU q's slice on GPU q (its buffer's start), the tail on every GPU (after it) */
    const size_t es = elmo_dtype_size(m->md.buf_dtype[buf]), per = (size_t)m->opt_per * es;
    const size_t whole = (size_t)m->md.enc_numel * es * (m->md.buf_numel[buf] > 0);
    if (offset + nbytes > whole)
      return elmo_fail(err, ELMO_ERUNTIME, "buffer %d: access [%zu, %zu) out of range", buf, offset, offset + nbytes);
    for (int q = 0; q <= m->nranks && !rc; q++) {
      const size_t a = per * (size_t)q, e = q < m->nranks ? a + per : whole;
      size_t lo, hi;
      overlap(offset, nbytes, a, e, &lo, &hi);
      if (lo >= hi) continue;
      char *h = (char *)host + (lo - offset);
      if (q < m->nranks) rc = buffer_io_one(m->ranks[q], buf, write, lo - a, h, hi - lo, err);
      else
        for (int t = 0; t < (write ? m->nranks : 1) && !rc; t++)
          rc = buffer_io_one(m->ranks[t], buf, write, per + (lo - a), h, hi - lo, err);
    }
  } else if ((buf == ELMO_BUF_CLS_KAHAN || buf == ELMO_BUF_CLS_HEAD) && m->glob_n_head) {
    rc = head_io(m, buf, write, offset, host, nbytes, err);
  } else if (buf != ELMO_BUF_CLS_W) {
    for (int q = 0; q < (write ? m->nranks : 1) && !rc; q++)
      rc = buffer_io_one(m->ranks[q], buf, write, offset, host, nbytes, err);
  } else {
    const size_t rb = (size_t)m->md.d * elmo_dtype_size(m->md.cls_dtype);
    if (offset + nbytes > (size_t)m->glob_L_pad * rb)
      return elmo_fail(err, ELMO_ERUNTIME, "buffer %d: access [%zu, %zu) out of range", buf, offset, offset + nbytes);
    for (int q = 0; q < m->nranks && !rc; q++) {
      const elmo_model *r = m->ranks[q];
      const size_t a = (size_t)r->md.label_base * rb, e = a + (size_t)r->md.L_pad * rb;
      size_t lo, hi;
      overlap(offset, nbytes, a, e, &lo, &hi);
      if (lo < hi) rc = buffer_io_one(m->ranks[q], buf, write, lo - a, (char *)host + (lo - offset), hi - lo, err);
    }
  }
  ELMO_CUDA_CHECK(cudaSetDevice(m->gpu));
  return rc;
}

/* Per GPU: the largest of the GPUs' peaks when sharded. */
static size_t cuda_peak_bytes(elmo_model *m) {
  size_t peak = 0;
  for (int q = 0; q < (m->ranks ? m->nranks : 1); q++) {
    const elmo_model *r = m->ranks ? m->ranks[q] : m;
    size_t own = r->pool.size + r->overflow.size, p = r->probe.peak > own ? r->probe.peak : own;
    if (p > peak) peak = p;
  }
  return peak;
}

static const elmo_backend cuda_backend = {
  "cuda", cuda_create, cuda_destroy, cuda_train_step, cuda_predict, cuda_buffer_io, cuda_peak_bytes,
};

extern "C" const elmo_backend *elmo_backend_cuda(elmo_err *err) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    elmo_fail(err, ELMO_ERUNTIME, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return NULL;
  }
  return &cuda_backend;
}
