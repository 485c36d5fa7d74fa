/* backend.h: the interface between the training loop and a compute backend (CPU reference or
 * CUDA). The loop (train.c) owns data, batching, schedules, evaluation bookkeeping and
 * checkpoints; a backend owns the model's buffers and runs the step:
 *   encoder forward -> dropout -> classifier forward+backward+update per label chunk (fused, no
 *   weight-gradient buffer) -> dropout backward -> encoder backward -> encoder AdamW.
 * Both backends store the same buffers (model.h) in the same dtypes, so checkpoints move freely
 * between them, and they draw the same counter-based random bits (numerics.h). */
#ifndef ELMO_BACKEND_H
#define ELMO_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"
#include "config.h"
#include "csr.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif


/* One mini-batch, host memory, rows already gathered. */
typedef struct elmo_batch {
  int64_t B;                 /* rows in this batch (<= batch_size) */
  const int64_t *rows;       /* [B] dataset row ids (filter lookup at evaluation) */
  /* sparse encoder input (BoW), rows re-based to this batch */
  const int64_t *x_indptr;   /* [B+1] */
  const int32_t *x_indices;  /* [nnz] feature ids */
  const float *x_values;     /* [nnz] */
  /* transformer input */
  int64_t T;                 /* tokens per row (max_len) */
  const int32_t *ids;        /* [B, T] */
  const uint8_t *mask;       /* [B, T] 1 = real token */
  /* labels (training only; may be NULL at prediction) */
  const int64_t *y_indptr;   /* [B+1] */
  const int32_t *y_indices;  /* [nnz] label ids < num_labels */
} elmo_batch;

/* Per-step scalars decided by the loop. */
typedef struct elmo_step {
  int64_t step;              /* global step, 0-based: keys the random bits */
  double lr_encoder, lr_classifier;
  int compute_loss;          /* 1: form the summed BCE this step (skip-loss otherwise) */
} elmo_step;

typedef struct elmo_backend elmo_backend;
typedef struct elmo_model elmo_model;  /* backend-private */

struct elmo_backend {
  const char *name;          /* "cpu" | "cuda" */
  /* Plans and allocates every buffer of `md` once, initialises parameters from cfg->seed. */
  int (*create)(const elmo_config *cfg, const elmo_model_desc *md, elmo_model **out, elmo_err *err);
  void (*destroy)(elmo_model **m);
  /* One training step. *loss = summed BCE over the batch and all labels when s->compute_loss,
   * else NAN. */
  int (*train_step)(elmo_model *m, const elmo_batch *b, const elmo_step *s, double *loss, elmo_err *err);
  /* Top-k labels per row by logit (FP32), filter pairs (CSR over dataset rows, may be NULL)
   * excluded, ties to the lower label id. topk [B*k] (-1 = none), scores [B*k]. */
  int (*predict)(elmo_model *m, const elmo_batch *b, int k, const elmo_csr *filter, int32_t *topk,
                 float *scores, elmo_err *err);
  /* Copies bytes between a model buffer and host memory (checkpoints). write=1: host -> model. */
  int (*buffer_io)(elmo_model *m, int buf, int write, size_t offset, void *host, size_t nbytes, elmo_err *err);
  /* Peak memory used by the model so far, bytes (device memory for CUDA; 0 if unknown). */
  size_t (*peak_bytes)(elmo_model *m);
};

const elmo_backend *elmo_backend_cpu(void);
/* NULL when built without CUDA or when no device is present (reason in err). */
const elmo_backend *elmo_backend_cuda(elmo_err *err);

#ifdef __cplusplus
}
#endif

#endif
