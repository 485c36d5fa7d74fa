/* backend_cuda.h: the CUDA backend's memory plan, for `elmo-train --plan` and for choosing the
 * classifier's chunk count from a memory budget. The backend itself is reached through
 * elmo_backend_cuda() in src/backend.h. Plain C declarations (no CUDA types).
 *
 * Everything a model needs on the device is laid out by one function, run once on a counting
 * pool (this plan) and once on the real allocation (create), so the plan is exactly what create
 * allocates. Libraries may add a little on top (cuBLASLt handles); peak_bytes measures that. */
#ifndef ELMO_CUDA_BACKEND_CUDA_H
#define ELMO_CUDA_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "pool.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "../src/config.h"
#include "../src/model.h"

/* Chunks are never larger than this many labels, or than the labels whose logits (bf16, the batch
 * rows rounded to 16) fill ELMO_CUDA_CHUNK_Z_BYTES or 1 / ELMO_CUDA_CHUNK_W_DIV of the classifier
 * weights' bytes, whichever is most: larger chunks only raise peak memory (the logits grow with
 * them), while each chunk costs a pipeline fill and a read-modify-write of the dX partials (H100,
 * 2026-11-27, BERT-base B 128 at 2.81M labels: 11 chunks 33.95 ms / 4.47 GiB, 5 chunks 33.48 / 4.54,
 * 3 chunks 33.27 / 4.63; DistilBERT 8.6M: 33 chunks 37.32 ms, 12 chunks 35.66; after the TMA kernels,
 * DistilBERT 8.6M 14 / 8 / 6 chunks 32.49 / 31.97 / 31.64 ms at 7.95 / 8.06 / 8.15 GiB). The weight
 * share keeps the chunk buffers at ~6% of the weights while large label sets take fewer chunks;
 * below ~2.7 GB of weights (BERT-base at 2.81M labels: 2.16 GB) the byte cap decides. */
#define ELMO_CUDA_CHUNK_MAX 262144
#define ELMO_CUDA_CHUNK_Z_BYTES ((int64_t)160 << 20)
#define ELMO_CUDA_CHUNK_W_DIV 16

typedef struct elmo_cuda_plan_t {
  size_t bytes[ELMO_MEM_NCAT];  /* per category (pool.h), bytes */
  size_t total;                 /* the one device allocation */
  int64_t chunk_labels, n_chunks;
  int64_t batch_rows;           /* rows planned for: batch_size rounded up to 16 */
  int64_t x_nnz_cap, y_nnz_cap, f_nnz_cap;  /* batch input capacities (grow if exceeded) */
} elmo_cuda_plan_t;

/* Plans md as it stands (its chunk_labels). Returns out->total. Needs no device, except that
 * the sort scratch of the sparse encoder is estimated when no device answers. */
size_t elmo_cuda_plan(const elmo_model_desc *md, elmo_cuda_plan_t *out);
/* The plan as a table (one row per category, GiB and MiB, then the total and the chunking). */
void elmo_cuda_plan_print(const elmo_cuda_plan_t *p, const elmo_model_desc *md, FILE *fp);
/* When cfg->chunks is 0: sets md's chunks (elmo_model_desc_set_chunks) to the fewest chunks of at
 * most max(ELMO_CUDA_CHUNK_MAX, max(ELMO_CUDA_CHUNK_Z_BYTES, weight bytes / ELMO_CUDA_CHUNK_W_DIV) /
 * (2 round16(batch))) labels whose plan fits the budget: model.classifier.memory_budget_gib,
 * or (0) the device's free memory minus 1 GiB. ELMO_ERUNTIME naming the plan when even 16-label
 * chunks do not fit, or (budget 0) when no device answers. cfg->chunks > 0: md unchanged. */
int elmo_cuda_choose_chunks(const elmo_config *cfg, elmo_model_desc *md, elmo_err *err);
/* GPU q's model when md's classifier is sharded by labels over n GPUs (training.gpus): labels
 * [label_base, label_base + num_labels), label_base = q round16(ceil(L / n)); the encoder planned for
 * ceil(batch_size / n) rows; md's chunk size kept; the AdamW buffers (ENC_M, ENC_V, ENC_KAHAN) sized for
 * the GPU's slice of the encoder's parameters plus the tail (unless ELMO_SPLIT_ADAMW=0); its head labels are
 * md's within its range, most frequent first, re-based to label_base (CLS_KAHAN and CLS_HEAD sized for them),
 * in out->head_labels, a new array the caller frees (NULL when it has none). Shares md's tensor table. */
void elmo_cuda_shard_desc(const elmo_model_desc *md, int n, int q, elmo_model_desc *out);

#ifdef __cplusplus
}
#endif

#endif
