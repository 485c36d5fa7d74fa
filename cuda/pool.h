/* pool.h: the device memory pool. Every device buffer of a model is planned up front and carved
 * out of one cudaMalloc at create; nothing is allocated inside a step.
 *
 * Use: lay the buffers out twice with the same code, first into a planning pool (no memory, it
 * only counts bytes per category), then into a real pool of exactly that size. Takes are
 * 256-byte aligned. The pool owns its one allocation; callers own nothing they take.
 * Peak tracking samples cudaMemGetInfo (free memory below the level seen before the model's
 * first allocation), so allocations made inside libraries are counted too. */
#ifndef ELMO_CUDA_POOL_H
#define ELMO_CUDA_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "common.h"

/* What a buffer is for (the rows of `elmo-train --plan`). */
typedef enum elmo_mem_cat {
  ELMO_MEM_CLS_WEIGHTS = 0, /* classifier weights, head Kahan rows, head slots */
  ELMO_MEM_ENC_PARAMS,      /* encoder parameters */
  ELMO_MEM_ENC_GRADS,       /* FP32 encoder gradients */
  ELMO_MEM_OPT_STATE,       /* AdamW moments, Kahan compensation, decay table */
  ELMO_MEM_ACTIVATIONS,     /* encoder activations, X / dX / Xq, top-k lists */
  ELMO_MEM_INPUTS,          /* batch inputs on the device (features, labels, filters) + sort scratch */
  ELMO_MEM_CHUNK,           /* classifier chunk buffers: logits/G, widened W chunk, loss partials */
  ELMO_MEM_WORKSPACE,       /* cuBLASLt workspace */
  ELMO_MEM_NCAT
} elmo_mem_cat;

const char *elmo_mem_cat_name(elmo_mem_cat c);

typedef struct elmo_pool {
  char *base;                    /* device memory; NULL while planning */
  size_t size;                   /* bytes allocated (0 while planning) */
  size_t used;                   /* bytes handed out so far (aligned) */
  size_t by_cat[ELMO_MEM_NCAT];  /* bytes handed out per category */
} elmo_pool;

/* A pool that only counts. */
void elmo_pool_plan_init(elmo_pool *p);
/* One cudaMalloc of `bytes`. ELMO_ERUNTIME with the sizes when the device lacks the memory. */
int elmo_pool_alloc(elmo_pool *p, size_t bytes, elmo_err *err);
/* Next `bytes` (256-byte aligned) for category `cat`; NULL while planning or for 0 bytes.
 * Taking more than was allocated is a planning bug and aborts. */
void *elmo_pool_take(elmo_pool *p, size_t bytes, elmo_mem_cat cat);
void elmo_pool_free(elmo_pool *p);
size_t elmo_pool_round(size_t bytes);

/* Device memory in use by this model as seen by the driver. */
typedef struct elmo_mem_probe {
  size_t base_free;   /* free bytes before the model's first allocation */
  size_t peak;        /* largest base_free - free seen so far */
} elmo_mem_probe;
void elmo_mem_probe_start(elmo_mem_probe *m);
void elmo_mem_probe_sample(elmo_mem_probe *m);

#ifdef __cplusplus
}
#endif

#endif
