/* pool.cu: one device allocation per model, carved into aligned buffers; peak memory probe. */
#include "pool.h"
#include "check.h"

#include <string.h>

#define POOL_ALIGN 256

static const char *const CAT_NAMES[ELMO_MEM_NCAT] = {
  "classifier weights", "encoder parameters", "encoder gradients", "optimiser state",
  "activations", "batch inputs", "chunk buffers", "workspace",
};

extern "C" const char *elmo_mem_cat_name(elmo_mem_cat c) {
  return c >= 0 && c < ELMO_MEM_NCAT ? CAT_NAMES[c] : "?";
}

extern "C" size_t elmo_pool_round(size_t bytes) { return (bytes + POOL_ALIGN - 1) / POOL_ALIGN * POOL_ALIGN; }

extern "C" void elmo_pool_plan_init(elmo_pool *p) { memset(p, 0, sizeof *p); }

extern "C" int elmo_pool_alloc(elmo_pool *p, size_t bytes, elmo_err *err) {
  memset(p, 0, sizeof *p);
  if (bytes == 0) return ELMO_OK;
  void *ptr = NULL;
  cudaError_t e = cudaMalloc(&ptr, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky-free error state */
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    return elmo_fail(err, ELMO_ERUNTIME, "device memory: the plan needs %.2f GiB but only %.2f GiB of %.2f GiB are free (%s)",
                     (double)bytes / 1073741824.0, (double)fr / 1073741824.0, (double)tot / 1073741824.0,
                     cudaGetErrorString(e));
  }
  p->base = (char *)ptr;
  p->size = bytes;
  return ELMO_OK;
}

extern "C" void *elmo_pool_take(elmo_pool *p, size_t bytes, elmo_mem_cat cat) {
  if (bytes == 0) return NULL;
  size_t n = elmo_pool_round(bytes);
  size_t off = p->used;
  p->used += n;
  p->by_cat[cat] += n;
  if (!p->base) return NULL;
  if (p->used > p->size) {
    fprintf(stderr, "elmo: internal error: device pool overrun (%zu > %zu bytes planned)\n", p->used, p->size);
    abort();
  }
  return p->base + off;
}

extern "C" void elmo_pool_free(elmo_pool *p) {
  if (p->base) ELMO_CUDA_CHECK(cudaFree(p->base));
  memset(p, 0, sizeof *p);
}

extern "C" void elmo_mem_probe_start(elmo_mem_probe *m) {
  size_t fr = 0, tot = 0;
  ELMO_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  m->base_free = fr;
  m->peak = 0;
}

extern "C" void elmo_mem_probe_sample(elmo_mem_probe *m) {
  size_t fr = 0, tot = 0;
  ELMO_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  if (fr < m->base_free && m->base_free - fr > m->peak) m->peak = m->base_free - fr;
}
