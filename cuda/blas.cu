/* blas.cu: cuBLASLt GEMMs with cached descriptors and algorithms (see blas.h). */
#include "blas.h"
#include "check.h"

#include <string.h>

#define WORKSPACE_BYTES ((size_t)32 << 20)  /* what cuBLASLt recommends for Hopper */
#define CACHE_SIZE 64

typedef struct gemm_key {
  int transa, transb, accumulate, fast_accum;
  int64_t m, n, k, lda, ldb, ldd;
  elmo_dtype ta, tb, td;
} gemm_key;

typedef struct gemm_entry {
  gemm_key key;
  int valid, ok;              /* ok: an algorithm was found */
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatmulAlgo_t algo;
} gemm_entry;

struct elmo_blas {
  cublasLtHandle_t handle;
  void *workspace;
  size_t ws_bytes;
  gemm_entry cache[CACHE_SIZE];
  int next_evict;
};

static cudaDataType_t cuda_type(elmo_dtype t) {
  switch (t) {
    case ELMO_BF16: return CUDA_R_16BF;
    case ELMO_FP8: return CUDA_R_8F_E4M3;
    default: return CUDA_R_32F;
  }
}

static gemm_key key_of(const elmo_gemm *g) {
  gemm_key k;
  memset(&k, 0, sizeof k);
  k.transa = g->transa;
  k.transb = g->transb;
  k.accumulate = g->accumulate;
  k.fast_accum = g->ta == ELMO_FP8 && g->fast_accum;
  k.m = g->m; k.n = g->n; k.k = g->k;
  k.lda = g->lda; k.ldb = g->ldb; k.ldd = g->ldd;
  k.ta = g->ta; k.tb = g->tb; k.td = g->td;
  return k;
}

extern "C" size_t elmo_blas_workspace_bytes(void) { return WORKSPACE_BYTES; }

extern "C" elmo_blas *elmo_blas_create(void *workspace, size_t ws_bytes) {
  elmo_blas *b = (elmo_blas *)elmo_calloc(1, sizeof *b);
  ELMO_CUBLAS_CHECK(cublasLtCreate(&b->handle));
  b->workspace = workspace;
  b->ws_bytes = ws_bytes;
  return b;
}

static void entry_release(gemm_entry *e) {
  if (!e->valid) return;
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(e->a));
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(e->b));
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(e->d));
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescDestroy(e->op));
  e->valid = 0;
}

extern "C" void elmo_blas_destroy(elmo_blas **pb) {
  elmo_blas *b = *pb;
  if (!b) return;
  for (int i = 0; i < CACHE_SIZE; i++) entry_release(&b->cache[i]);
  ELMO_CUBLAS_CHECK(cublasLtDestroy(b->handle));
  free(b);
  *pb = NULL;
}

/* Shape rules that cuBLASLt would reject (or that we do not want to run). NULL = fine. */
static const char *shape_problem(const elmo_gemm *g) {
  size_t sa = elmo_dtype_size(g->ta), sb = elmo_dtype_size(g->tb), sd = elmo_dtype_size(g->td);
  int64_t a_rows = g->transa ? g->k : g->m, b_rows = g->transb ? g->n : g->k;
  if (g->m <= 0 || g->n <= 0 || g->k <= 0) return "empty dimension";
  if (g->lda < a_rows || g->ldb < b_rows || g->ldd < g->m) return "leading dimension too small";
  if (((size_t)g->lda * sa) % 16 || ((size_t)g->ldb * sb) % 16 || ((size_t)g->ldd * sd) % 16)
    return "leading dimensions must be multiples of 16 bytes";
  if (((uintptr_t)g->A | (uintptr_t)g->B | (uintptr_t)g->D) % 16) return "pointers must be 16-byte aligned";
  if (g->ta != g->tb && !(g->ta == ELMO_FP8 && g->tb == ELMO_FP8)) return "operand types differ";
  if (g->ta == ELMO_FP8) {
    if (!g->transa || g->transb) return "FP8 needs the TN form (A transposed, B not)";
    if (g->m % 16 || g->n % 16 || g->k % 16) return "FP8 needs m, n, k multiples of 16";
    if (g->td == ELMO_FP8) return "FP8 output not used";
  }
  if (g->ta == ELMO_F32 && g->td != ELMO_F32) return "FP32 operands need FP32 output";
  return NULL;
}

static void entry_build(elmo_blas *b, gemm_entry *e, const elmo_gemm *g) {
  e->key = key_of(g);
  e->valid = 1;
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = g->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  if (e->key.fast_accum) {
    const int8_t fast = 1;
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
  }
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->a, cuda_type(g->ta), g->transa ? g->k : g->m,
                                               g->transa ? g->m : g->k, g->lda));
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->b, cuda_type(g->tb), g->transb ? g->n : g->k,
                                               g->transb ? g->k : g->n, g->ldb));
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e->d, cuda_type(g->td), g->m, g->n, g->ldd));
  cublasLtMatmulPreference_t pref;
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &b->ws_bytes, sizeof b->ws_bytes));
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(b->handle, e->op, e->a, e->b, e->d, e->d, pref, 1, &res, &found);
  if (e->key.fast_accum && (st != CUBLAS_STATUS_SUCCESS || found == 0)) {
    /* a card or cuBLASLt without fast FP8 accumulation for this shape: FP32 promotion, as without the flag (the
     * fused kernel that must match it bit for bit runs only on compute capability 9.0, which has both) */
    const int8_t fast = 0;
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
    st = cublasLtMatmulAlgoGetHeuristic(b->handle, e->op, e->a, e->b, e->d, e->d, pref, 1, &res, &found);
  }
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  e->ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (e->ok) e->algo = res.algo;
}

static gemm_entry *lookup(elmo_blas *b, const elmo_gemm *g) {
  gemm_key k = key_of(g);
  for (int i = 0; i < CACHE_SIZE; i++)
    if (b->cache[i].valid && !memcmp(&b->cache[i].key, &k, sizeof k)) return &b->cache[i];
  gemm_entry *e = NULL;
  for (int i = 0; i < CACHE_SIZE && !e; i++)
    if (!b->cache[i].valid) e = &b->cache[i];
  if (!e) {
    e = &b->cache[b->next_evict];
    b->next_evict = (b->next_evict + 1) % CACHE_SIZE;
    entry_release(e);
  }
  entry_build(b, e, g);
  return e;
}

extern "C" int elmo_blas_supported(elmo_blas *b, const elmo_gemm *g) {
  if (shape_problem(g)) return 0;
  return lookup(b, g)->ok;
}

extern "C" const char *elmo_blas_types(const elmo_gemm *g) {
  static char buf[64];
  static const char *const names[] = {"fp32", "bf16", "fp8", "i32"};
  snprintf(buf, sizeof buf, "%s x %s -> %s", names[g->ta], names[g->tb], names[g->td]);
  return buf;
}

static void die_shape(const elmo_gemm *g, const char *why) {
  fprintf(stderr, "elmo: internal error: cuBLASLt GEMM %s m=%lld n=%lld k=%lld lda=%lld ldb=%lld ldd=%lld %s%s: %s\n",
          elmo_blas_types(g), (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->lda,
          (long long)g->ldb, (long long)g->ldd, g->transa ? "T" : "N", g->transb ? "T" : "N", why);
  abort();
}

extern "C" void elmo_blas_run(elmo_blas *b, const elmo_gemm *g, cudaStream_t s) {
  const char *why = shape_problem(g);
  if (why) die_shape(g, why);
  gemm_entry *e = lookup(b, g);
  if (!e->ok) die_shape(g, "no cuBLASLt algorithm for this shape");
  const float alpha = 1.0f, beta = g->accumulate ? 1.0f : 0.0f;
  ELMO_CUBLAS_CHECK(cublasLtMatmul(b->handle, e->op, &alpha, g->A, e->a, g->B, e->b, &beta, g->D, e->d, g->D, e->d,
                                   &e->algo, b->workspace, b->ws_bytes, s));
}
