/* transformer.cu: the CUDA encoder (BERT-family, post-LN) forward and backward composed from the op
 * files (embedding, layernorm, attention, gelu, pooling), its memory plan, a small cuBLASLt GEMM
 * helper (row-major, BF16 x BF16 or E4M3 x E4M3 -> FP32/BF16, cached plans) used until cuda/blas.h
 * provides one, and the FP8 forward GEMMs (per-tensor amax, scale and E4M3 cast kernels).
 * See cuda/transformer.h for numerics, layouts and ownership; the CPU twin is src/transformer.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "cuda/attention.h"
#include "cuda/embedding.h"
#include "cuda/gelu.h"
#include "cuda/layernorm.h"
#include "cuda/pooling.h"
#include "cuda/check.h"
#include "cuda/transformer.h"
#include "cuda/bf16x8.cuh"
#include "cuda/e4m3.cuh"

typedef __nv_bfloat16 bf16;
typedef elmo_bf16 h16;      /* bf16 bits as the op entries take them */

enum { LT_WORKSPACE = 32 << 20, MM_CACHE = 128, MEM_ALIGN = 256 };
/* The FP8 forward's per-layer table (f8tab): the four input scales (elmo_tf_fp8_scales' order), the six
 * weights' scales and the six GEMMs' alphas (q, k, v, o, ff1, ff2), and a 0.0f for the GEMMs' beta;
 * per-layer maxima (f8acc): the six weights' amax and the largest row norms of v_w and ff1_w, as FP32
 * bit patterns (integer order = float order for non-negative values; NaN above all). */
enum { F8_X = 0, F8_CTX = 1, F8_H1 = 2, F8_G = 3, F8_SW = 4, F8_ALPHA = 10, F8_ZERO = 16, F8_BG = 17, F8_TAB = 18 };
enum { F8_NV = 6, F8_NF = 7, F8_NC = 8, F8_ACC = 9, F8_W = 6 };
/* f8off [layers][F8_OFF]: the parameter offsets the scales need: the six weights (GEMM order), v_b,
 * ff1_b, the layer input's LayerNorm (the embedding one or the previous layer's output one), ln1. */
enum { F8_OFF_VB = 6, F8_OFF_FB = 7, F8_OFF_INW = 8, F8_OFF_INB = 9, F8_OFF_L1W = 10, F8_OFF_L1B = 11, F8_OFF = 12 };
/* Floats of a layer's f8vec row: 3 H (q, k, v), H (ff2), H (o's dgrad), F (ff2's dgrad), H (ff1's dgrad). */
static __host__ __device__ inline int64_t f8_vec_len(int64_t H, int64_t F) { return 6 * H + F; }


/* ==================================================================== cuBLASLt GEMM helper */

typedef struct mm_key {
  int ta, tb, c_f32, batch, bias, fp8, dev_scalars, vec_scales;
  int64_t m, n, k, lda, ldb, ldc, sa, sb, sc;
  uint32_t al_a, al_b, al_c;
} mm_key;

typedef struct mm_plan {
  mm_key key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t la, lb, lc;    /* cuBLASLt's A (= our B), B (= our A), C = D */
  cublasLtMatmulAlgo_t algo;
  int ok;                               /* 0: cuBLASLt offers no algorithm (kept, so it is asked once) */
} mm_plan;

struct elmo_cuda_tf_gemm {
  cublasLtHandle_t lt;
  void *ws;
  size_t ws_bytes;
  int splitk_wgrad;          /* ELMO_WGRAD_SPLITK=1: weight gradients take the heuristic's first choice (see plan_build) */
  int n_plans, next_evict;
  mm_plan plans[MM_CACHE];
};

/* Largest power of two (<= 256) dividing the address and, for batches, the stride in bytes. */
static uint32_t align_of(const void *p, int64_t stride_bytes, int batch) {
  uint64_t v = (uint64_t)(uintptr_t)p | 256u;
  if (batch > 1) v |= (uint64_t)stride_bytes;
  return (uint32_t)(v & (~v + 1));
}

static cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int batch,
                                          int64_t stride) {
  cublasLtMatrixLayout_t l;
  ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, (uint64_t)rows, (uint64_t)cols, ld));
  if (batch > 1) {
    int32_t count = batch;
    ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    ELMO_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                              sizeof stride));
  }
  return l;
}

/* Pointers a plan's descriptor holds, set before each run. */
typedef struct mm_ptrs {
  const void *bias;
  const float *scale_n, *scale_m;
} mm_ptrs;

static void desc_set_ptrs(cublasLtMatmulDesc_t d, const mm_key *k, const mm_ptrs *p) {
  if (k->bias)
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p->bias, sizeof p->bias));
  if (k->vec_scales) {   /* cuBLASLt's A is our B (the weights: a scale per output column n), its B our A */
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p->scale_n,
                                                     sizeof p->scale_n));
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p->scale_m,
                                                     sizeof p->scale_m));
  }
}

static cublasLtMatmulDesc_t desc_create(const mm_key *k, int fast_accum) {
  cublasLtMatmulDesc_t d;
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  if (k->bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  }
  if (k->fp8) {
    const int8_t fast = (int8_t)fast_accum;
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
  }
  if (k->vec_scales) {   /* (the bias type stated, as scripts/probe_fp8_gemm.c found the algorithms with it) */
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode));
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode));
    if (k->bias) {
      const cudaDataType_t bt = k->c_f32 ? CUDA_R_32F : CUDA_R_16BF;
      ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
  }
  if (k->dev_scalars) {   /* alpha and beta read from device memory (the FP8 scale, computed on the device) */
    const cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
    ELMO_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm));
  }
  return d;
}

static cublasLtMatmulPreference_t pref_create(const elmo_cuda_tf_gemm *g, const mm_key *k, int no_splitk) {
  cublasLtMatmulPreference_t pref;
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  if (no_splitk) {
    const uint32_t mask = CUBLASLT_REDUCTION_SCHEME_NONE;
    ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask,
                                                           sizeof mask));
  }
  const uint64_t ws = g->ws_bytes;
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                         sizeof ws));
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k->al_b,
                                                sizeof k->al_b));
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k->al_a,
                                                sizeof k->al_a));
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k->al_c,
                                                sizeof k->al_c));
  ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k->al_c,
                                                sizeof k->al_c));
  return pref;
}

/* The first heuristic algorithm (checked: the first that cuBLASLt's own check accepts for pl->desc);
 * 0 when none. */
static int pick_algo(elmo_cuda_tf_gemm *g, mm_plan *pl, cublasLtMatmulPreference_t pref, int checked) {
  enum { TRIES = 8 };
  cublasLtMatmulHeuristicResult_t res[TRIES];
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(g->lt, pl->desc, pl->la, pl->lb, pl->lc, pl->lc, pref, TRIES, res, &found) !=
      CUBLAS_STATUS_SUCCESS)
    return 0;
  for (int i = 0; i < found; i++) {
    cublasLtMatmulHeuristicResult_t chk;
    if (!checked || cublasLtMatmulAlgoCheck(g->lt, pl->desc, pl->la, pl->lb, pl->lc, pl->lc, &res[i].algo, &chk) ==
        CUBLAS_STATUS_SUCCESS) {
      pl->algo = res[i].algo;
      return 1;
    }
  }
  return 0;
}

/* Row-major C[m, n] = op(A) op(B) is column-major C^T[n, m] = op(B)^T op(A)^T: cuBLASLt's A is our B.
 * FP8: fast accumulation (as torchao's forward GEMM) when cuBLASLt offers it for the shape, else the
 * default accumulation. */
static void plan_build(elmo_cuda_tf_gemm *g, const mm_key *k, const mm_ptrs *ptrs, mm_plan *pl) {
  pl->key = *k;
  const cudaDataType_t in_type = k->fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  pl->la = make_layout(in_type, k->tb ? k->k : k->n, k->tb ? k->n : k->k, k->ldb, k->batch, k->sb);
  pl->lb = make_layout(in_type, k->ta ? k->m : k->k, k->ta ? k->k : k->m, k->lda, k->batch, k->sa);
  pl->lc = make_layout(k->c_f32 ? CUDA_R_32F : CUDA_R_16BF, k->n, k->m, k->ldc, k->batch, k->sc);
  /* A weight gradient (BF16, FP32 accumulator, dy^T x) with a large output asks first for a form without
   * split-K: for the FFN weights (3,072 x 768 outputs, K 16,384 tokens) the heuristic's first choice splits K
   * in two and sums the halves in a second kernel, 111 / 117 us where the unsplit form takes 108 (H200,
   * scripts/probe_wgrad_gemm.c); the 768 x 768 output needs the split (44 against 88 us). */
  const int no_splitk_first = !g->splitk_wgrad && !k->fp8 && k->c_f32 && k->ta && k->m * k->n >= (1 << 20);
  int ok = 0;
  for (int ns = no_splitk_first; ns >= 0 && !ok; ns--) {
    cublasLtMatmulPreference_t pref = pref_create(g, k, ns);
    for (int fast = k->fp8; fast >= 0 && !ok; fast--) {
      pl->desc = desc_create(k, fast);
      desc_set_ptrs(pl->desc, k, ptrs);   /* (the heuristic offers nothing for scale modes without their pointers) */
      ok = pick_algo(g, pl, pref, k->fp8) || (k->vec_scales && pick_algo(g, pl, pref, 0));
      if (!ok && (fast || ns)) cublasLtMatmulDescDestroy(pl->desc);   /* the last one stays, for plan_release */
    }
    ELMO_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  }
  pl->ok = ok;
  if (!ok && k->vec_scales) {   /* the caller has another way (gemm_try) */
    fprintf(stderr, "elmo: note: cuBLASLt offers no FP8 GEMM with row and column scales for %lldx%lldx%lld (%s "
            "output); taking the per-weight or BF16 form\n", (long long)k->m, (long long)k->n, (long long)k->k,
            k->c_f32 ? "FP32" : "BF16");
    return;
  }
  if (!ok) {
    char what[256];
    snprintf(what, sizeof what, "no cuBLASLt algorithm for %lldx%lldx%lld ta %d tb %d batch %d bias %d fp8 %d "
             "device scalars %d scale vectors %d out %s", (long long)k->m, (long long)k->n, (long long)k->k, k->ta,
             k->tb, k->batch, k->bias, k->fp8, k->dev_scalars, k->vec_scales, k->c_f32 ? "fp32" : "bf16");
    elmo_cuda_die("cublasLtMatmulAlgoGetHeuristic/AlgoCheck found no algorithm", what, __FILE__, __LINE__);
  }
}

static void plan_release(mm_plan *pl) {
  cublasLtMatmulDescDestroy(pl->desc);
  cublasLtMatrixLayoutDestroy(pl->la);
  cublasLtMatrixLayoutDestroy(pl->lb);
  cublasLtMatrixLayoutDestroy(pl->lc);
}

static mm_plan *plan_get(elmo_cuda_tf_gemm *g, const mm_key *k, const mm_ptrs *ptrs) {
  for (int i = 0; i < g->n_plans; i++)
    if (memcmp(&g->plans[i].key, k, sizeof *k) == 0) return &g->plans[i];
  mm_plan *pl;
  if (g->n_plans < MM_CACHE) {
    pl = &g->plans[g->n_plans++];
  } else {
    pl = &g->plans[g->next_evict];
    g->next_evict = (g->next_evict + 1) % MM_CACHE;
    plan_release(pl);
  }
  plan_build(g, k, ptrs, pl);
  return pl;
}

extern "C" elmo_cuda_tf_gemm *elmo_cuda_tf_gemm_create(void *workspace, size_t ws_bytes) {
  elmo_cuda_tf_gemm *g = (elmo_cuda_tf_gemm *)elmo_calloc(1, sizeof *g);
  ELMO_CUBLAS_CHECK(cublasLtCreate(&g->lt));
  g->ws = workspace;
  g->ws_bytes = workspace ? ws_bytes : 0;
  /* the unsplit weight gradients were measured on compute capability 9 (H200); elsewhere the heuristic
   * chooses, as with ELMO_WGRAD_SPLITK=1 */
  int dev = 0, major = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  ELMO_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  const char *e = getenv("ELMO_WGRAD_SPLITK");   /* 1: the heuristic's first choice for weight gradients too */
  g->splitk_wgrad = (e && strcmp(e, "1") == 0) || major != 9;
  return g;
}

extern "C" void elmo_cuda_tf_gemm_destroy(elmo_cuda_tf_gemm **g) {
  if (!g || !*g) return;
  for (int i = 0; i < (*g)->n_plans; i++) plan_release(&(*g)->plans[i]);
  cublasLtDestroy((*g)->lt);
  free(*g);
  *g = NULL;
}

/* Runs p; fp8: a and b are E4M3 (x[m, k] w[n, k]^T, the layout cuBLASLt's FP8 GEMMs take). Returns 0
 * only for scale vectors (p->scale_n) that this cuBLASLt offers no algorithm for, or refuses to run:
 * nothing was done, and the caller takes another way; any other failure is fatal. */
static int gemm_try(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_mm *p, int fp8, cudaStream_t s) {
  if (p->m <= 0 || p->n <= 0 || p->batch <= 0) return 1;
  mm_key k;
  memset(&k, 0, sizeof k);
  if (p->bias && (p->c_f32 || p->batch > 1))
    elmo_cuda_die("a bias needs a BF16 output and batch 1", "elmo_cuda_tf_gemm_run", __FILE__, __LINE__);
  if (fp8 && (p->trans_a || !p->trans_b || p->batch > 1))
    elmo_cuda_die("FP8 GEMMs need x[m, k] w[n, k]^T and batch 1", "gemm_run", __FILE__, __LINE__);
  if (!p->alpha_dev != !p->beta_dev)
    elmo_cuda_die("device alpha and beta go together", "gemm_run", __FILE__, __LINE__);
  if (!p->scale_n != !p->scale_m || (p->scale_n && (!fp8 || p->alpha_dev)))
    elmo_cuda_die("scale vectors: both, FP8 only, without device scalars", "gemm_run", __FILE__, __LINE__);
  const int64_t es = fp8 ? 1 : 2;
  k.ta = p->trans_a; k.tb = p->trans_b; k.c_f32 = p->c_f32; k.batch = p->batch; k.bias = p->bias != NULL;
  k.fp8 = fp8;
  k.dev_scalars = p->alpha_dev != NULL;
  k.vec_scales = p->scale_n != NULL;
  k.m = p->m; k.n = p->n; k.k = p->k;
  k.lda = p->lda; k.ldb = p->ldb; k.ldc = p->ldc;
  if (p->batch > 1) { k.sa = p->stride_a; k.sb = p->stride_b; k.sc = p->stride_c; }
  k.al_a = align_of(p->a, p->stride_a * es, p->batch);
  k.al_b = align_of(p->b, p->stride_b * es, p->batch);
  k.al_c = align_of(p->c, p->stride_c * (p->c_f32 ? 4 : 2), p->batch);
  const mm_ptrs ptrs = {p->bias, p->scale_n, p->scale_m};
  mm_plan *pl = plan_get(g, &k, &ptrs);
  if (!pl->ok) return 0;
  desc_set_ptrs(pl->desc, &k, &ptrs);
  const float alpha = 1.0f, beta = p->beta;
  const void *pa = p->alpha_dev ? (const void *)p->alpha_dev : (const void *)&alpha;
  const void *pb = p->beta_dev ? (const void *)p->beta_dev : (const void *)&beta;
  const cublasStatus_t st = cublasLtMatmul(g->lt, pl->desc, pa, p->b, pl->la, p->a, pl->lb, pb, p->c, pl->lc, p->c,
                                           pl->lc, &pl->algo, g->ws, g->ws_bytes, s);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED && k.vec_scales) {
    pl->ok = 0;
    return 0;
  }
  ELMO_CUBLAS_CHECK(st);
  return 1;
}

static void gemm_run(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_mm *p, int fp8, cudaStream_t s) {
  if (!gemm_try(g, p, fp8, s))
    elmo_cuda_die("cuBLASLt has no algorithm for these FP8 scale vectors", "gemm_run", __FILE__, __LINE__);
}

extern "C" void elmo_cuda_tf_gemm_run(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_mm *p, cudaStream_t s) {
  gemm_run(g, p, 0, s);
}

/* ==================================================================== layout and memory plan */

typedef struct layer_off {
  int64_t q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_w, ln1_b, ff1_w, ff1_b, ff2_w, ff2_b, ln2_w, ln2_b;
} layer_off;

/* Per-layer activations kept for the backward (RECOMPUTE: all layers share one qkv and ff). */
typedef struct layer_acts {
  h16 *qkv;                  /* [3, B, heads, Tp, dh] split, or [M, 3 H] (q | k | v per row) on the fused path */
  h16 *xhat1;                /* [M, H] attention LayerNorm, normalised */
  float *rstd1;              /* [M] */
  h16 *ff;                   /* [M, F] GELU input */
  h16 *xhat2;                /* [M, H] output LayerNorm, normalised: defines the layer output */
  float *rstd2;              /* [M] */
} layer_acts;

struct elmo_cuda_tf {
  elmo_tf_config cfg;
  int max_batch, max_len, max_tp, flags;
  int fused;                 /* fused attention (no scores, probs or permutes), fixed at create for the plan */
  int64_t num_params;
  int64_t word, pos, type, emb_ln_w, emb_ln_b;  /* offsets; type -1 without a table */
  layer_off *off;            /* [layers] */
  elmo_cuda_tf_gemm *gemm;
  void *mem;
  int own_mem;
  size_t mem_bytes;
  /* kept from forward to backward */
  uint8_t *mask;             /* [B, Tp] */
  int32_t *keys;             /* [M] word id per row (V when masked) */
  h16 *xhat_e;               /* [M, H] embedding LayerNorm */
  float *rstd_e;             /* [M] */
  layer_acts *act;           /* [layers] */
  /* scratch */
  float *f32;                /* union: fp32 [M, H] GEMM outputs, scores, bf16 merged dq/dk/dv [3, M, H] */
  h16 *probs;                /* [B * heads, Tp, Tp]; NULL on the fused path */
  h16 *ctxp;                 /* [B, heads, Tp, dh] attention output / its gradient, split; NULL when fused */
  h16 *ctx;                  /* [M, H] merged */
  h16 *g16;                  /* [M, max(F, 3H)] merged q/k/v, GELU output / its gradient, split dq/dk/dv */
  h16 *xa, *xb, *h1, *d16;   /* [M, H] */
  float *dx;                 /* [M, H] residual-stream gradient */
  float *part;               /* partial sums of the parameter gradients */
  void *emb_ws;
  size_t emb_ws_bytes;
  int *bad_id;
  h16 *shadow;               /* [num_params] BF16 copy of FP32 parameters */
  h16 *wqkv, *bqkv;          /* fused path: layer wqkv_layer's q, k, v weights [3 H, H] and biases [3 H] gathered */
  int wqkv_layer;            /* -1: none (reset by every forward and backward call) */
  elmo_cuda_tf_fp8 fp8;      /* fp8 forward: xq [M, max(H, F)] (the current GEMM input; in g16 on the fused
                                path), wq [4 H H + 2 H F] (the layer's six weights) */
  float *f8tab;              /* fp8 forward: [layers][F8_TAB] scales and GEMM alphas (f8_scales_kernel) */
  unsigned *f8acc;           /* fp8 forward: [layers][F8_ACC] weight maxima (f8_stats_kernel) */
  int64_t *f8off;            /* fp8 forward: [layers][F8_OFF] parameter offsets (device, set at create) */
  float *f8vec;              /* fp8 forward: [layers][f8_vec_len(H, F)] GEMM scales by output column: the q, k, v alphas
                                over the fused q/k/v GEMM's 3 H columns, ff2's alpha over its H, then the FP8 input
                                gradients' 1 / sw of o_w over H and of ff2_w over F (f8_scales_kernel) */
  float *f8ones;             /* fp8 forward: [M] 1.0f, the row scales of the GEMMs that take f8vec */
  h16 *f8bqkv;               /* fp8 forward, fused path: the cast layer's q, k, v biases [3 H] (f8_wcast_kernel) */
  int f8_colscale;           /* fp8 forward: GEMMs with f8vec (0: one GEMM a weight, ELMO_FP8_COLSCALE=0) */
  int f8_dgrad;              /* fp8: the input gradients of o, ff2 and ff1 on E4M3 (0: BF16, ELMO_FP8_DGRAD=0) */
  uint8_t *f8dq;             /* f8_dgrad: [M, H] the LayerNorm backward's gradient rows in E4M3 */
  float *f8dq_inv;           /* f8_dgrad: [M] their 1 / scale */
  float *f8bs, *f8bs_inv;    /* f8_dgrad: [M] the intermediate gradient's row scales (from a bound) and 1 / them */
  void *lt_ws;
  /* the last forward */
  int B, T, Tp, have_forward;
};

typedef struct carver {
  char *base;
  size_t used;
} carver;

static void *carve(carver *cv, size_t bytes) {
  void *p = cv->base ? cv->base + cv->used : NULL;
  cv->used += (bytes + MEM_ALIGN - 1) / MEM_ALIGN * MEM_ALIGN;
  return p;
}

static int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Layer buffers: what = KEEP_BIG (q, k, v and the GELU input: per layer, or the one shared set of
 * RECOMPUTE) | KEEP_LN (the two LayerNorms' xhat and rstd, kept per layer in both modes). */
enum { KEEP_BIG = 1, KEEP_LN = 2 };
static void carve_layer(carver *cv, int64_t M, int64_t H, int64_t F, layer_acts *a, int what) {
  if (what & KEEP_BIG) {
    a->qkv = (h16 *)carve(cv, 3 * M * H * 2);
    a->ff = (h16 *)carve(cv, M * F * 2);
  }
  if (what & KEEP_LN) {
    a->xhat1 = (h16 *)carve(cv, M * H * 2);
    a->rstd1 = (float *)carve(cv, M * 4);
    a->xhat2 = (h16 *)carve(cv, M * H * 2);
    a->rstd2 = (float *)carve(cv, M * 4);
  }
}

/* The kept activations: mask, keys, embedding LayerNorm and the layers. */
static void carve_kept(carver *cv, elmo_cuda_tf *t, int64_t M) {
  const int64_t H = t->cfg.hidden, F = t->cfg.ffn;
  t->mask = (uint8_t *)carve(cv, M);
  t->keys = (int32_t *)carve(cv, M * 4);
  t->xhat_e = (h16 *)carve(cv, M * H * 2);
  t->rstd_e = (float *)carve(cv, M * 4);
  const int rec = t->flags & ELMO_CUDA_TF_RECOMPUTE;
  for (int i = 0; i < t->cfg.layers; i++) carve_layer(cv, M, H, F, &t->act[i], rec ? KEEP_LN : KEEP_BIG | KEEP_LN);
}

/* Shared layer buffers (RECOMPUTE) and scratch. */
static void carve_scratch(carver *cv, elmo_cuda_tf *t, int64_t M, size_t emb_ws) {
  const elmo_tf_config *c = &t->cfg;
  const int64_t H = c->hidden, F = c->ffn;
  const int64_t S = t->fused ? 0 : (int64_t)t->max_batch * c->heads * t->max_tp * t->max_tp;   /* scores */
  if (t->flags & ELMO_CUDA_TF_RECOMPUTE) {
    layer_acts shared;
    carve_layer(cv, M, H, F, &shared, KEEP_BIG);
    for (int i = 0; i < c->layers; i++) {
      t->act[i].qkv = shared.qkv;
      t->act[i].ff = shared.ff;
    }
  }
  /* fp32 or merged dq/dk/dv; FP8 input gradients: also the intermediate gradient's E4M3 rows (ffn_backward) */
  t->f32 = (float *)carve(cv, (size_t)max3(M * H * 4, 3 * M * H * 2, max3(S * 4, c->fp8_forward ? M * F : 0, 0)));
  t->probs = t->fused ? NULL : (h16 *)carve(cv, (size_t)S * 2);
  t->ctxp = t->fused ? NULL : (h16 *)carve(cv, M * H * 2);
  t->ctx = (h16 *)carve(cv, M * H * 2);
  t->wqkv = t->fused ? (h16 *)carve(cv, (size_t)(3 * H * H) * 2) : NULL;
  t->bqkv = t->fused ? (h16 *)carve(cv, (size_t)(3 * H) * 2) : NULL;
  t->g16 = (h16 *)carve(cv, (size_t)(M * F > 3 * M * H ? M * F : 3 * M * H) * 2);
  t->xa = (h16 *)carve(cv, M * H * 2);
  t->xb = (h16 *)carve(cv, M * H * 2);
  t->h1 = (h16 *)carve(cv, M * H * 2);
  t->d16 = (h16 *)carve(cv, M * H * 2);
  t->dx = (float *)carve(cv, M * H * 4);
  /* partial sums: LayerNorm backward, the fused attention backward's q/k/v bias partials, column sums */
  const int64_t attn_part = 3 * elmo_cuda_attention_colpart_rows(t->max_batch, t->max_tp) * H;
  t->part = (float *)carve(cv, (size_t)max3(max3(elmo_cuda_layernorm_ws_floats(M, (int)H), attn_part,
                                                 elmo_cuda_colsum_ws_floats(M, (int)H, 3)), /* q, k, v biases */
                                            elmo_cuda_colsum_ws_floats(M, (int)F, 1), 0) * 4);
  t->emb_ws = carve(cv, emb_ws);
  t->emb_ws_bytes = emb_ws;
  t->bad_id = (int *)carve(cv, sizeof(int));
  t->shadow = (t->flags & ELMO_CUDA_TF_F32_PARAMS) ? (h16 *)carve(cv, (size_t)t->num_params * 2) : NULL;
  if (c->fp8_forward) {
    /* the GEMM inputs' E4M3 copies: on the fused path in g16's space, which neither the forward (q/k/v go to
     * the kept matrix, the GELU writes only E4M3) nor a RECOMPUTE rerun uses (the backward's first use of g16,
     * dGELU, comes after the rerun's last E4M3 input was read; the next layer's rerun starts after its last) */
    t->fp8.xq = t->fused ? (uint8_t *)t->g16 : (uint8_t *)carve(cv, (size_t)(M * (H > F ? H : F)));
    t->fp8.wq = (uint8_t *)carve(cv, (size_t)(4 * H * H + 2 * H * F));
    t->f8tab = (float *)carve(cv, (size_t)c->layers * F8_TAB * sizeof(float));
    t->f8acc = (unsigned *)carve(cv, (size_t)c->layers * F8_ACC * sizeof(unsigned));
    t->f8off = (int64_t *)carve(cv, (size_t)c->layers * F8_OFF * sizeof(int64_t));
    t->f8vec = (float *)carve(cv, (size_t)(c->layers * f8_vec_len(H, F)) * sizeof(float));
    t->f8dq = (uint8_t *)carve(cv, (size_t)(M * H));
    t->f8dq_inv = (float *)carve(cv, (size_t)M * sizeof(float));
    t->f8bs = (float *)carve(cv, (size_t)M * sizeof(float));
    t->f8bs_inv = (float *)carve(cv, (size_t)M * sizeof(float));
    t->f8ones = (float *)carve(cv, (size_t)M * sizeof(float));
    t->f8bqkv = t->fused ? (h16 *)carve(cv, (size_t)(3 * H) * 2) : NULL;
    t->fp8.amax = (unsigned *)carve(cv, ELMO_CUDA_TF_FP8_SEGS * sizeof(unsigned));
    t->fp8.inv = (float *)carve(cv, ELMO_CUDA_TF_FP8_SEGS * sizeof(float));
    t->fp8.alpha = (float *)carve(cv, ELMO_CUDA_TF_FP8_SEGS * sizeof(float));
  }
  t->lt_ws = carve(cv, LT_WORKSPACE);
}

/* Reads the tensor offsets of the CPU layout (the one source of truth). */
static int read_layout(elmo_cuda_tf *t, elmo_err *err) {
  elmo_tf_params p;
  int rc = elmo_tf_alloc(&p, &t->cfg, err);
  if (rc) return rc;
  t->num_params = p.num_params;
  t->word = p.word_emb - p.flat;
  t->pos = p.pos_emb - p.flat;
  t->type = p.type_emb ? p.type_emb - p.flat : -1;
  t->emb_ln_w = p.emb_ln_w - p.flat;
  t->emb_ln_b = p.emb_ln_b - p.flat;
  t->off = (layer_off *)elmo_calloc((size_t)(t->cfg.layers > 0 ? t->cfg.layers : 1), sizeof(layer_off));
  for (int i = 0; i < t->cfg.layers; i++) {
    const elmo_tf_layer *l = &p.layer[i];
    layer_off *o = &t->off[i];
#define OFF(f) o->f = l->f - p.flat
    OFF(q_w); OFF(q_b); OFF(k_w); OFF(k_b); OFF(v_w); OFF(v_b); OFF(o_w); OFF(o_b);
    OFF(ln1_w); OFF(ln1_b); OFF(ff1_w); OFF(ff1_b); OFF(ff2_w); OFF(ff2_b); OFF(ln2_w); OFF(ln2_b);
#undef OFF
  }
  elmo_tf_free(&p);
  return ELMO_OK;
}

static int check_sizes(const elmo_tf_config *cfg, int max_batch, int max_len, elmo_err *err) {
  int rc = elmo_tf_config_check(cfg, err);
  if (rc) return rc;
  if (max_batch < 1 || max_len < 1 || max_len > cfg->max_position || max_batch > 65535)
    return elmo_fail(err, ELMO_EINPUT, "CUDA transformer: batch %d x length %d (expected 1 <= batch <= "
                     "65535 and 1 <= length <= max_position = %d)", max_batch, max_len, cfg->max_position);
  return ELMO_OK;
}

static int tp_of(int T) { return (T + 7) / 8 * 8; }

/* Fills the sizes of t (no memory) and returns the bytes of the whole block; kept = the kept part. */
static size_t plan(elmo_cuda_tf *t, size_t *kept) {
  const int64_t M = (int64_t)t->max_batch * t->max_tp;
  carver cv = {NULL, 0};
  carve_kept(&cv, t, M);
  if (kept) *kept = cv.used;
  const size_t emb_ws = elmo_cuda_embed_ws_bytes(M, t->max_tp, t->cfg.hidden);
  carve_scratch(&cv, t, M, emb_ws);
  return cv.used;
}

static elmo_cuda_tf *shell_new(const elmo_tf_config *cfg, int max_batch, int max_len, int flags) {
  elmo_cuda_tf *t = (elmo_cuda_tf *)elmo_calloc(1, sizeof *t);
  t->cfg = *cfg;
  t->max_batch = max_batch;
  t->max_len = max_len;
  t->max_tp = tp_of(max_len);
  t->flags = flags;
  t->fused = elmo_cuda_attention_fused_ok(t->max_tp, cfg->hidden / cfg->heads);
  t->act = (layer_acts *)elmo_calloc((size_t)(cfg->layers > 0 ? cfg->layers : 1), sizeof(layer_acts));
  t->wqkv_layer = -1;
  const char *e = getenv("ELMO_FP8_COLSCALE");   /* 0: the per-weight FP8 GEMMs (tests compare both) */
  t->f8_colscale = !(e && strcmp(e, "0") == 0);
  e = getenv("ELMO_FP8_DGRAD");                   /* 0: BF16 input gradients (not the CPU's numerics) */
  t->f8_dgrad = cfg->fp8_forward && !(e && strcmp(e, "0") == 0);
  return t;
}

static void shell_free(elmo_cuda_tf *t) {
  free(t->act);
  free(t->off);
  free(t);
}

static size_t bytes_of(const elmo_tf_config *cfg, int max_batch, int max_len, int flags, int kept_only) {
  elmo_err err;
  if (check_sizes(cfg, max_batch, max_len, &err)) return 0;
  elmo_cuda_tf *t = shell_new(cfg, max_batch, max_len, flags);
  size_t kept = 0, total = 0;
  if (read_layout(t, &err) == ELMO_OK) total = plan(t, &kept);
  shell_free(t);
  return kept_only ? kept : total;
}

extern "C" size_t elmo_cuda_tf_workspace_bytes(const elmo_tf_config *cfg, int max_batch, int max_len, int flags) {
  return bytes_of(cfg, max_batch, max_len, flags, 0);
}

extern "C" size_t elmo_cuda_tf_activation_bytes(const elmo_tf_config *cfg, int max_batch, int max_len, int flags) {
  return bytes_of(cfg, max_batch, max_len, flags, 1);
}

/* ==================================================================== create / destroy */

extern "C" int elmo_cuda_tf_create(const elmo_tf_config *cfg, int max_batch, int max_len, int flags, void *dev_mem,
                                   elmo_cuda_tf **out, elmo_err *err) {
  *out = NULL;
  int rc = check_sizes(cfg, max_batch, max_len, err);
  if (rc) return rc;
  if ((uintptr_t)dev_mem % MEM_ALIGN != 0)
    return elmo_fail(err, ELMO_EINPUT, "CUDA transformer: workspace %p is not 256-byte aligned", dev_mem);
  elmo_cuda_tf *t = shell_new(cfg, max_batch, max_len, flags);
  rc = read_layout(t, err);
  if (rc) {
    shell_free(t);
    return rc;
  }
  t->mem_bytes = plan(t, NULL);
  if (t->emb_ws_bytes == 0) {
    shell_free(t);
    return elmo_fail(err, ELMO_ERUNTIME, "CUDA transformer: cannot size the embedding sort (no CUDA device?)");
  }
  t->mem = dev_mem;
  if (!dev_mem) {
    cudaError_t e = cudaMalloc(&t->mem, t->mem_bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      const double mib = t->mem_bytes / 1048576.0;
      shell_free(t);
      return elmo_fail(err, ELMO_ERUNTIME, "CUDA transformer: cannot allocate %.1f MiB of device memory: %s",
                       mib, cudaGetErrorString(e));
    }
    t->own_mem = 1;
  }
  const int64_t M = (int64_t)t->max_batch * t->max_tp;
  carver cv = {(char *)t->mem, 0};
  carve_kept(&cv, t, M);
  carve_scratch(&cv, t, M, t->emb_ws_bytes);
  ELMO_CUDA_CHECK(cudaMemset(t->bad_id, 0, sizeof(int)));
  if (t->cfg.fp8_forward && t->cfg.layers > 0) {   /* the offsets the per-step scale kernels read */
    const int L = t->cfg.layers;
    int64_t *h = (int64_t *)elmo_calloc((size_t)L * F8_OFF, sizeof(int64_t));
    for (int i = 0; i < L; i++) {
      const layer_off *o = &t->off[i];
      const int64_t v[F8_OFF] = {o->q_w, o->k_w, o->v_w, o->o_w, o->ff1_w, o->ff2_w, o->v_b, o->ff1_b,
                                 i ? t->off[i - 1].ln2_w : t->emb_ln_w, i ? t->off[i - 1].ln2_b : t->emb_ln_b,
                                 o->ln1_w, o->ln1_b};
      memcpy(h + (int64_t)i * F8_OFF, v, sizeof v);
    }
    ELMO_CUDA_CHECK(cudaMemcpy(t->f8off, h, (size_t)L * F8_OFF * sizeof(int64_t), cudaMemcpyHostToDevice));
    free(h);
    float *ones = (float *)elmo_calloc((size_t)M, sizeof(float));
    for (int64_t r = 0; r < M; r++) ones[r] = 1.0f;
    ELMO_CUDA_CHECK(cudaMemcpy(t->f8ones, ones, (size_t)M * sizeof(float), cudaMemcpyHostToDevice));
    free(ones);
  }
  t->gemm = elmo_cuda_tf_gemm_create(t->lt_ws, LT_WORKSPACE);
  *out = t;
  return ELMO_OK;
}

extern "C" int elmo_cuda_tf_attention_fused(const elmo_cuda_tf *t) { return t->fused; }

extern "C" void elmo_cuda_tf_destroy(elmo_cuda_tf **pt) {
  if (!pt || !*pt) return;
  elmo_cuda_tf *t = *pt;
  elmo_cuda_tf_gemm_destroy(&t->gemm);
  if (t->own_mem) cudaFree(t->mem);
  shell_free(t);
  *pt = NULL;
}

extern "C" int elmo_cuda_tf_bad_ids(elmo_cuda_tf *t, cudaStream_t s) {
  int flag = 0;
  ELMO_CUDA_CHECK(cudaMemcpyAsync(&flag, t->bad_id, sizeof flag, cudaMemcpyDeviceToHost, s));
  ELMO_CUDA_CHECK(cudaStreamSynchronize(s));
  if (flag) ELMO_CUDA_CHECK(cudaMemsetAsync(t->bad_id, 0, sizeof(int), s));
  return flag;
}

extern "C" int elmo_cuda_tf_fp8_scales(const elmo_cuda_tf *t, elmo_tf_fp8_scales *scales, cudaStream_t s,
                                       elmo_err *err) {
  if (!t->cfg.fp8_forward) return elmo_fail(err, ELMO_EINPUT, "CUDA transformer: no FP8 forward, no FP8 scales");
  for (int i = 0; i < t->cfg.layers; i++) {
    float tab[F8_TAB];
    ELMO_CUDA_CHECK(cudaMemcpyAsync(tab, t->f8tab + (int64_t)i * F8_TAB, sizeof tab, cudaMemcpyDeviceToHost, s));
    ELMO_CUDA_CHECK(cudaStreamSynchronize(s));
    scales[i].x = tab[F8_X];
    scales[i].ctx = tab[F8_CTX];
    scales[i].h1 = tab[F8_H1];
    scales[i].g = tab[F8_G];
  }
  return ELMO_OK;
}

/* ==================================================================== GEMM shorthands */

/* y[M, out] = x[M, in] w^T: FP32 y, or BF16 y = bf16(x w^T + bias) (bias [out] or NULL); w [out, in]. */
static void linear_fwd(elmo_cuda_tf *t, const h16 *x, const h16 *w, const h16 *bias, int64_t M, int in, int out,
                       void *y, int y_f32, cudaStream_t s) {
  elmo_cuda_tf_mm p = {0, 1, M, out, in, x, in, 0, w, in, 0, y, out, 0, y_f32, 0.0f, 1, bias, NULL, NULL, NULL, NULL};
  elmo_cuda_tf_gemm_run(t->gemm, &p, s);
}

/* dw[out, in] += dy[M, out]^T x[M, in] (FP32); dy's rows ldy elements apart. */
static void linear_dw_ld(elmo_cuda_tf *t, const h16 *dy, int64_t ldy, const h16 *x, int64_t M, int in, int out,
                         float *dw, cudaStream_t s) {
  elmo_cuda_tf_mm p = {1, 0, out, in, M, dy, ldy, 0, x, in, 0, dw, in, 0, 1, 1.0f, 1, NULL, NULL, NULL, NULL, NULL};
  elmo_cuda_tf_gemm_run(t->gemm, &p, s);
}
static void linear_dw(elmo_cuda_tf *t, const h16 *dy, const h16 *x, int64_t M, int in, int out, float *dw,
                      cudaStream_t s) {
  linear_dw_ld(t, dy, out, x, M, in, out, dw, s);
}

/* dx[M, in] = dy[M, out] w[out, in] (+ beta dx). */
static void linear_dx(elmo_cuda_tf *t, const h16 *dy, const h16 *w, int64_t M, int in, int out, void *dx,
                      int dx_f32, float beta, cudaStream_t s) {
  elmo_cuda_tf_mm p = {0, 0, M, in, out, dy, out, 0, w, in, 0, dx, in, 0, dx_f32, beta, 1, NULL, NULL, NULL, NULL,
                       NULL};
  elmo_cuda_tf_gemm_run(t->gemm, &p, s);
}


/* ==================================================================== FP8 forward GEMMs */

/* Per-tensor dynamic scaling (src/transformer.h, elmo_tf_linear_forward_fp8): for each tensor of a job,
 * amax = max |x| over its rows (masked rows of the padded batch left out, so padding never moves the
 * scale), scale = 448 / max(amax, 1e-12) (double division, as the CPU), q = e4m3_satfinite(x * scale),
 * inv = 1 / scale for the GEMM. amax is an integer max of |x| bit patterns (exact and order-free, so
 * deterministic; a NaN wins and propagates). Two kernels per job, each tensor one blockIdx.y. */

enum { FP8_SEGS = ELMO_CUDA_TF_FP8_SEGS, FP8_THREADS = 256, FP8_MAX_BLOCKS = 512 };

typedef struct fp8_seg {
  const h16 *x;              /* [rows, cols] bf16, cols a multiple of 16 */
  int64_t rows;
  int cols;
  const uint8_t *row_mask;   /* [rows] (0 = padding, left out of amax) or NULL */
  uint8_t *q;                /* [rows, cols] e4m3 */
} fp8_seg;

typedef struct fp8_job {
  fp8_seg seg[FP8_SEGS];     /* segment i uses amax[i], inv[i] */
  int n;
} fp8_job;

static __global__ void fp8_amax_kernel(fp8_job job, unsigned *amax) {
  const fp8_seg sg = job.seg[blockIdx.y];
  const int64_t chunks = sg.rows * sg.cols / 8;   /* 8 bf16 = 16 bytes, never across a row */
  unsigned m = 0;
  for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (int64_t)gridDim.x * blockDim.x) {
    if (sg.row_mask && !sg.row_mask[c * 8 / sg.cols]) continue;
    m = max(m, bf16x8_abs_max(((const uint4 *)sg.x)[c]));
  }
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
  __shared__ unsigned warp_max[FP8_THREADS / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); w++) m = max(m, warp_max[w]);
    atomicMax(&amax[blockIdx.y], m << 16);        /* float bits of |x|max: integer order = float order */
  }
}

static __device__ float fp8_scale_of(unsigned amax_bits) {
  const double a = (double)__uint_as_float(amax_bits);
  return (float)(448.0 / (a > 1e-12 ? a : isnan(a) ? a : 1e-12));
}

/* Also inv[y] = 1 / scale and, for the weights (y >= 1), the GEMM's alpha[y - 1] = inv[0] * inv[y]
 * (one FP32 rounding, as the CPU's inv_x * inv_w); alpha[FP8_SEGS - 1] = 0, the GEMM's beta. */
static __global__ void fp8_cast_kernel(fp8_job job, const unsigned *amax, float *inv, float *alpha) {
  const fp8_seg sg = job.seg[blockIdx.y];
  const float scale = fp8_scale_of(amax[blockIdx.y]);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    inv[blockIdx.y] = 1.0f / scale;
    if (blockIdx.y > 0) alpha[blockIdx.y - 1] = __fmul_rn(1.0f / fp8_scale_of(amax[0]), 1.0f / scale);
    else alpha[FP8_SEGS - 1] = 0.0f;
  }
  const int64_t chunks = sg.rows * sg.cols / 8;
  for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += (int64_t)gridDim.x * blockDim.x)
    ((uint2 *)sg.q)[c] = e4m3x8_bf16(((const uint4 *)sg.x)[c], scale);
}

/* Quantises the job's tensors: q->amax[i], q->inv[i] and seg[i].q for i < job->n. */
static void fp8_quantize(const elmo_cuda_tf_fp8 *q, const fp8_job *job, cudaStream_t s) {
  int64_t most = 0;
  for (int i = 0; i < job->n; i++) {
    const int64_t c = job->seg[i].rows * job->seg[i].cols / 8;
    most = c > most ? c : most;
  }
  int64_t blocks = (most + FP8_THREADS - 1) / FP8_THREADS;
  blocks = blocks < 1 ? 1 : blocks > (int64_t)FP8_MAX_BLOCKS ? (int64_t)FP8_MAX_BLOCKS : blocks;
  const dim3 grid((unsigned)blocks, (unsigned)job->n);
  ELMO_CUDA_CHECK(cudaMemsetAsync(q->amax, 0, FP8_SEGS * sizeof(unsigned), s));
  fp8_amax_kernel<<<grid, FP8_THREADS, 0, s>>>(*job, q->amax);
  ELMO_LAUNCH_CHECK();
  fp8_cast_kernel<<<grid, FP8_THREADS, 0, s>>>(*job, q->amax, q->inv, q->alpha);
  ELMO_LAUNCH_CHECK();
}

static int misaligned(const void *p) { return (uintptr_t)p % 16 != 0; }

extern "C" int elmo_cuda_tf_fp8_prepare(const elmo_cuda_tf_fp8 *q, const elmo_bf16 *x, const uint8_t *row_mask,
                                        int64_t M, int in, const elmo_bf16 *const *w, int count, int out,
                                        cudaStream_t s, elmo_err *err) {
  if (M < 1 || in < 16 || out < 16 || in % 16 || out % 16 || count < 1 || count >= FP8_SEGS)
    return elmo_fail(err, ELMO_EINPUT, "CUDA fp8 linear: M %lld, in %d, out %d, %d weights (expected M >= 1, in and "
                     "out multiples of 16, 1 to %d weights)", (long long)M, in, out, count, FP8_SEGS - 1);
  int bad = misaligned(x) || misaligned(q->xq) || misaligned(q->wq);
  for (int j = 0; j < count; j++) bad |= misaligned(w[j]);
  if (bad) return elmo_fail(err, ELMO_EINPUT, "CUDA fp8 linear: operands must be 16-byte aligned");
  fp8_job job;
  memset(&job, 0, sizeof job);
  const fp8_seg in_seg = {x, M, in, row_mask, q->xq};
  job.seg[0] = in_seg;
  for (int j = 0; j < count; j++) {
    const fp8_seg w_seg = {w[j], out, in, NULL, q->wq + (int64_t)j * out * in};
    job.seg[1 + j] = w_seg;
  }
  job.n = 1 + count;
  fp8_quantize(q, &job, s);
  return ELMO_OK;
}

/* One cuBLASLt call: the unscaled E4M3 product times alpha[j] (a device scalar: the scales are known
 * only on the device), plus the bias in the epilogue, rounded once to y's type; y's rows ldy elements
 * apart (3 H for q, k, v in the fused path's [M, 3 H] matrix). cuBLASLt refuses the A/B scale
 * pointers for these layouts on the H100 (CUDA 13, measured), the device alpha it takes. */
static void fp8_linear_ld(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_fp8 *q, int j, const elmo_bf16 *bias, int64_t M,
                          int in, int out, void *y, int64_t ldy, int y_f32, cudaStream_t s) {
  if (M <= 0 || out <= 0) return;
  elmo_cuda_tf_mm p = {0, 1, M, out, in, q->xq, in, 0, q->wq + (int64_t)j * out * in, in, 0, y, ldy, 0, y_f32, 0.0f,
                       1, bias, q->alpha + j, q->alpha + FP8_SEGS - 1, NULL, NULL};
  gemm_run(g, &p, 1, s);
}
extern "C" void elmo_cuda_tf_fp8_linear(elmo_cuda_tf_gemm *g, const elmo_cuda_tf_fp8 *q, int j, const elmo_bf16 *bias,
                                        int64_t M, int in, int out, void *y, int y_f32, cudaStream_t s) {
  fp8_linear_ld(g, q, j, bias, M, in, out, y, out, y_f32, s);
}

/* ---- the encoder's FP8 forward: scales from the parameters (src/transformer.h, elmo_tf_fp8_layer_scales) ----
 * Once a forward, before the embedding LayerNorm writes layer 0's input: f8_stats_kernel (every layer's
 * six weights: amax, and the row norms of v_w and ff1_w) and f8_scales_kernel (a block a layer: the
 * LayerNorm and bias bounds, the four input scales, the weight scales and the GEMM alphas into f8tab).
 * At a layer's start (and before a RECOMPUTE rerun) its six weights are cast into wq (f8_wcast_kernel);
 * every GEMM input is written in E4M3 into xq by the kernel that produces it (LayerNorm forward or
 * apply, attention, GELU), with its scale from f8tab. */

typedef struct f8_weights {
  const h16 *w[F8_W];
  int rows[F8_W], cols[F8_W];
  uint8_t *q[F8_W];
  const h16 *b[3];   /* q, k, v biases, copied one after another into bq (NULL: not) with their weights */
  h16 *bq;
} f8_weights;

/* Weight j's E4M3 copy in wq: q, k, v, o [H, H], ff1 [F, H], ff2 [H, F] one after another. */
static uint8_t *f8_wq(const elmo_cuda_tf *t, int j) {
  const int64_t HH = (int64_t)t->cfg.hidden * t->cfg.hidden, HF = (int64_t)t->cfg.hidden * t->cfg.ffn;
  return t->fp8.wq + (j < 5 ? j * HH : 4 * HH + HF);
}

/* The layer's weights in GEMM order q, k, v, o, ff1, ff2 and their places in wq. */
static f8_weights f8_layer_weights(const elmo_cuda_tf *t, const h16 *P, int i) {
  const layer_off *o = &t->off[i];
  const int H = t->cfg.hidden, F = t->cfg.ffn;
  const int64_t off[F8_W] = {o->q_w, o->k_w, o->v_w, o->o_w, o->ff1_w, o->ff2_w};
  const int rows[F8_W] = {H, H, H, H, F, H}, cols[F8_W] = {H, H, H, H, H, F};
  f8_weights w;
  for (int j = 0; j < F8_W; j++) {
    w.w[j] = P + off[j];
    w.rows[j] = rows[j];
    w.cols[j] = cols[j];
    w.q[j] = f8_wq(t, j);
  }
  w.b[0] = P + o->q_b;
  w.b[1] = P + o->k_b;
  w.b[2] = P + o->v_b;
  w.bq = t->f8bqkv;
  return w;
}

static __device__ float f8_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

/* Layer blockIdx.z, weight blockIdx.y (GEMM order), warp per row: the weight's amax into acc[y] (bf16 bits
 * << 16) and, for v_w (y 2) and ff1_w (y 4), the largest row norm (FP32, the row's squares summed per lane
 * in column order, then lane 0's butterfly) into acc[F8_NV], acc[F8_NF]; acc = f8acc[z]. Columns a
 * multiple of 8, rows 16-byte aligned. */
static __global__ void f8_stats_kernel(const h16 *P, const int64_t *offs, int H, int F, unsigned *accs) {
  const int j = blockIdx.y, R = j == 4 ? F : H, C8 = (j == 5 ? F : H) / 8;
  const bool norms = j == 2 || j == 4;   /* only v_w's and ff1_w's row norms enter the bounds */
  const h16 *w = P + offs[(int64_t)blockIdx.z * F8_OFF + j];
  unsigned *acc = accs + (int64_t)blockIdx.z * F8_ACC;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  unsigned am = 0, nm = 0;
  for (int r = blockIdx.x * nw + warp; r < R; r += gridDim.x * nw) {
    const uint4 *row = (const uint4 *)(w + (int64_t)r * C8 * 8);
    float ss = 0.0f;
    for (int c = lane; c < C8; c += 32) {
      const uint4 v = row[c];
      am = max(am, bf16x8_abs_max(v));
      if (norms) ss = bf16x8_sumsq(v, ss);
    }
    if (!norms) continue;
    ss = f8_warp_sum(ss);
    if (lane == 0) nm = max(nm, __float_as_uint(sqrtf(ss)));
  }
  for (int o = 16; o > 0; o >>= 1) am = max(am, __shfl_xor_sync(0xFFFFFFFFu, am, o));
  if (lane == 0) {
    atomicMax(&acc[j], am << 16);
    if (norms) atomicMax(&acc[j == 2 ? F8_NV : F8_NF], nm);
  }
}

/* Layer blockIdx.y: max_j ||ff2_w[:, j]||_2 (FP32, a thread a column, its squares summed in row order) into
 * acc[F8_NC] (the intermediate gradient's row bound, elmo_tf_fp8_dff_factor). ff2_w [H, F]. */
static __global__ void f8_colnorm_kernel(const h16 *P, const int64_t *offs, int H, int F, unsigned *accs) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned m = 0;
  if (j < F) {
    const h16 *w = P + offs[(int64_t)blockIdx.y * F8_OFF + 5] + j;
    float ss = 0.0f;
    for (int r = 0; r < H; r++) {
      const float v = __uint_as_float((uint32_t)w[(int64_t)r * F] << 16);
      ss = fmaf(v, v, ss);
    }
    m = __float_as_uint(sqrtf(ss));
  }
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
  if ((threadIdx.x & 31) == 0) atomicMax(&accs[(int64_t)blockIdx.y * F8_ACC + F8_NC], m);
}

enum { F8_SC_THREADS = 256 };

static __device__ double f8_nanmax(double a, double b) { return isnan(a) || a > b ? a : b; }
/* A parameter's value from its bf16 bits (h16 is the bits, not __nv_bfloat16). */
static __device__ double f8_bf16(h16 v) { return (double)__uint_as_float((uint32_t)v << 16); }

/* Block-wide max (op 0) or sum (op 1) of v in a fixed order (the same bits every run). */
static __device__ double f8_block_reduce(double v, int op, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = F8_SC_THREADS / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w)
      sh[threadIdx.x] = op ? sh[threadIdx.x] + sh[threadIdx.x + w] : f8_nanmax(sh[threadIdx.x], sh[threadIdx.x + w]);
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

/* Thread 0 of f8_scales_kernel: f8tab[z] from the layer's reduced bounds and weight maxima. */
static __device__ void f8_scales_tab(double e_in, double g_in, double b_in, double e_1, double g_1, double b_1,
                                     double vb, double fb, int H, const unsigned *acc, float *tab) {
  const double sH = sqrt((double)H);
  elmo_tf_fp8_scales sc;
  elmo_tf_fp8_scales_of(e_in, sH * g_in + sqrt(b_in), e_1, sH * g_1 + sqrt(b_1),
                        (double)__uint_as_float(acc[F8_NV]), vb, (double)__uint_as_float(acc[F8_NF]), fb, &sc);
  tab[F8_X] = sc.x;
  tab[F8_CTX] = sc.ctx;
  tab[F8_H1] = sc.h1;
  tab[F8_G] = sc.g;
  const float in_scale[F8_W] = {sc.x, sc.x, sc.x, sc.ctx, sc.h1, sc.g};
  for (int j = 0; j < F8_W; j++) {
    const float sw = fp8_scale_of(acc[j]);
    tab[F8_SW + j] = sw;
    tab[F8_ALPHA + j] = __fmul_rn(1.0f / in_scale[j], 1.0f / sw);
  }
  tab[F8_ZERO] = 0.0f;
  tab[F8_BG] = (float)(ELMO_TF_FP8_BOUND_MARGIN * ELMO_TF_FP8_GELU_GRAD_MAX * (double)__uint_as_float(acc[F8_NC]));
}

/* Block z = layer z, F8_SC_THREADS threads: the bounds of elmo_tf_fp8_layer_scales from the bf16
 * parameters and f8acc[z], then f8tab[z]: input scales, weight scales (fp8_scale_of their amax, as the
 * CPU's elmo_tf_fp8_scale), alphas = (1 / input scale) * (1 / weight scale) in FP32, and 0. */
static __global__ void f8_scales_kernel(const h16 *P, const int64_t *offs, int H, int F, const unsigned *accs,
                                        float *tabs, float *vecs) {
  const int64_t *of = offs + (int64_t)blockIdx.x * F8_OFF;
  const h16 *in_w = P + of[F8_OFF_INW], *in_b = P + of[F8_OFF_INB], *ln1_w = P + of[F8_OFF_L1W];
  const h16 *ln1_b = P + of[F8_OFF_L1B], *v_b = P + of[F8_OFF_VB], *ff1_b = P + of[F8_OFF_FB];
  const unsigned *acc = accs + (int64_t)blockIdx.x * F8_ACC;
  float *tab = tabs + (int64_t)blockIdx.x * F8_TAB;
  __shared__ double sh[F8_SC_THREADS];
  const double r = sqrt((double)(H - 1));
  double e_in = 0, g_in = 0, b_in = 0, e_1 = 0, g_1 = 0, b_1 = 0, vb = 0, fb = 0;
  for (int j = threadIdx.x; j < H; j += F8_SC_THREADS) {
    const double wi = fabs(f8_bf16(in_w[j])), bi = f8_bf16(in_b[j]);
    const double w1 = fabs(f8_bf16(ln1_w[j])), b1 = f8_bf16(ln1_b[j]);
    e_in = f8_nanmax(r * wi + fabs(bi), e_in);
    g_in = f8_nanmax(wi, g_in);
    b_in += bi * bi;
    e_1 = f8_nanmax(r * w1 + fabs(b1), e_1);
    g_1 = f8_nanmax(w1, g_1);
    b_1 += b1 * b1;
    vb = f8_nanmax(fabs(f8_bf16(v_b[j])), vb);
  }
  for (int j = threadIdx.x; j < F; j += F8_SC_THREADS) fb = f8_nanmax(fabs(f8_bf16(ff1_b[j])), fb);
  e_in = f8_block_reduce(e_in, 0, sh);
  g_in = f8_block_reduce(g_in, 0, sh);
  b_in = f8_block_reduce(b_in, 1, sh);
  e_1 = f8_block_reduce(e_1, 0, sh);
  g_1 = f8_block_reduce(g_1, 0, sh);
  b_1 = f8_block_reduce(b_1, 1, sh);
  vb = f8_block_reduce(vb, 0, sh);
  fb = f8_block_reduce(fb, 0, sh);
  if (threadIdx.x == 0) f8_scales_tab(e_in, g_in, b_in, e_1, g_1, b_1, vb, fb, H, acc, tab);
  __syncthreads();   /* tab's alphas by output column of the fused q/k/v and the ff2 GEMM, then 1 / sw of o_w, ff2_w */
  float *vec = vecs + (int64_t)blockIdx.x * f8_vec_len(H, F);
  for (int c = threadIdx.x; c < f8_vec_len(H, F); c += F8_SC_THREADS)
    vec[c] = c < 4 * H ? tab[F8_ALPHA + (c < 3 * H ? c / H : 5)]
                       : 1.0f / tab[F8_SW + (c < 5 * H ? 3 : c < 5 * H + F ? 5 : 4)];
}

/* wq_j = e4m3(w_j * sw_j) for the weights j (blockIdx.y) in the bit mask `which`, 8 elements a thread-step;
 * block 0 of q, k and v also copies their bias into ws.bq (the fused q/k/v GEMM's [3 H] bias). */
static __global__ void f8_wcast_kernel(f8_weights ws, const float *tab, unsigned which) {
  const int j = blockIdx.y;
  if (!(which >> j & 1u)) return;
  if (j < 3 && ws.bq && blockIdx.x == 0)
    for (int c = threadIdx.x; c < ws.rows[j]; c += blockDim.x) ws.bq[j * ws.rows[j] + c] = ws.b[j][c];
  const float sw = tab[F8_SW + j];
  const int64_t n8 = (int64_t)ws.rows[j] * ws.cols[j] / 8;
  const uint4 *src = (const uint4 *)ws.w[j];
  uint2 *dst = (uint2 *)ws.q[j];
  for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n8; c += (int64_t)gridDim.x * blockDim.x)
    dst[c] = e4m3x8_bf16(src[c], sw);
}

/* xq = e4m3(x * *qs), 8 elements a thread-step (the batched attention path's ctx). */
static __global__ void f8_act_cast_kernel(const uint4 *x, int64_t n8, const float *qs, uint2 *xq) {
  const float q = *qs;
  for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n8; c += (int64_t)gridDim.x * blockDim.x)
    xq[c] = e4m3x8_bf16(x[c], q);
}

static const float *f8_tab(const elmo_cuda_tf *t, int i) { return t->f8tab + (int64_t)i * F8_TAB; }

/* Every layer's f8tab row from the parameters, once a forward (before the embedding LayerNorm writes
 * layer 0's input): the stats pass over all layers' weights, then one scales block a layer. */
static void f8_prepare(elmo_cuda_tf *t, const h16 *P, cudaStream_t s) {
  const int L = t->cfg.layers, H = t->cfg.hidden, F = t->cfg.ffn;
  ELMO_CUDA_CHECK(cudaMemsetAsync(t->f8acc, 0, (size_t)L * F8_ACC * sizeof(unsigned), s));
  f8_stats_kernel<<<dim3(24, F8_W, (unsigned)L), 256, 0, s>>>(P, t->f8off, H, F, t->f8acc);
  ELMO_LAUNCH_CHECK();
  f8_colnorm_kernel<<<dim3((unsigned)((F + 255) / 256), (unsigned)L), 256, 0, s>>>(P, t->f8off, H, F, t->f8acc);
  ELMO_LAUNCH_CHECK();
  f8_scales_kernel<<<(unsigned)L, F8_SC_THREADS, 0, s>>>(P, t->f8off, H, F, t->f8acc, t->f8tab, t->f8vec);
  ELMO_LAUNCH_CHECK();
}

/* Layer i's weights in the bit mask `which` (bit j = weight j in GEMM order) cast into wq. */
static void f8_cast_weights(elmo_cuda_tf *t, const h16 *P, int i, unsigned which, cudaStream_t s) {
  /* 480 blocks a weight: with 120 each thread walked ~10 steps of the FFN weights, one load at a time (10 -> 8 us, H200) */
  f8_wcast_kernel<<<dim3(480, F8_W), 256, 0, s>>>(f8_layer_weights(t, P, i), f8_tab(t, i), which);
  ELMO_LAUNCH_CHECK();
}

/* y[M, out] (rows ldy apart) = (xq wq_j^T) * alpha_j (+ bias) with xq the E4M3 input in t->fp8.xq. */
static void f8_gemm(elmo_cuda_tf *t, int i, int j, const h16 *bias, int64_t M, int in, int out, void *y, int64_t ldy,
                    int y_f32, cudaStream_t s) {
  const float *tab = f8_tab(t, i);
  elmo_cuda_tf_mm p = {0, 1, M, out, in, t->fp8.xq, in, 0, f8_wq(t, j), in, 0, y, ldy, 0, y_f32, 0.0f, 1, bias,
                       tab + F8_ALPHA + j, tab + F8_ZERO, NULL, NULL};
  gemm_run(t->gemm, &p, 1, s);
}

/* y[M, out] (rows ldy apart) = (xq wq^T) * f8vec row (+ bias), wq from weight j0's place on: the fused
 * q/k/v GEMM (j0 0, out 3 H, the three weights one after another in wq, each column its weight's alpha)
 * and ff2 (j0 5). The alphas multiply by output column (with 1.0f by row), so each element is the same
 * FP32 product acc * alpha_j as in the per-weight GEMM; cuBLASLt's kernel for the shape may sum acc in
 * another order. (H200, first heuristic algorithm, 16,384 rows: q/k/v 3 x 23.5 -> 57.3 us, ff2 58.9 ->
 * 53.2 us; scripts/probe_fp8_gemm.c) */
static int f8_gemm_vec(elmo_cuda_tf *t, int j0, const h16 *bias, int64_t M, int in, int out, void *y,
                       int64_t ldy, int y_f32, const float *vec, cudaStream_t s) {
  if (!t->f8_colscale) return 0;
  elmo_cuda_tf_mm p = {0, 1, M, out, in, t->fp8.xq, in, 0, f8_wq(t, j0), in, 0, y, ldy, 0, y_f32, 0.0f, 1, bias,
                       NULL, NULL, vec, t->f8ones};
  return gemm_try(t->gemm, &p, 1, s);
}
static const float *f8_vec(const elmo_cuda_tf *t, int i) {
  return t->f8vec + (int64_t)i * f8_vec_len(t->cfg.hidden, t->cfg.ffn);
}

/* ---- the FP8 input gradients of o, ff2 and ff1 (elmo_tf_linear_dgrad_fp8; ff1's rows by bound scales): dx = dy w with dy's rows in E4M3 by
 * their own powers of two (written by the LayerNorm backward into f8dq, f8dq_inv) and w^T in E4M3 by its
 * forward scale, so cuBLASLt takes w^T as the K-major operand and scales rows and columns. ---- */

/* blockIdx.z 0: o_w [H, H], 1: ff2_w [H, F], 2: ff1_w [F, H] (rows = outputs), each into its wq slot
 * transposed, [in, out]: wt[c, r] = e4m3(w[r, c] sw). A block a 64 x 64 tile: 16-byte loads of 8 weights,
 * their bytes transposed in shared memory, 16-byte stores (H and F multiples of 16; 32 x 32 tiles of one
 * byte a thread took 12 us a DistilBERT layer, H200). */
enum { WT_T = 64, WT_LD = WT_T + 16 };
typedef struct f8_wt {
  const h16 *w[3];
  uint8_t *q[3];
} f8_wt;
static __global__ void __launch_bounds__(256) f8_wtcast_kernel(f8_wt ws, int H, int F, const float *tab) {
  __shared__ __align__(16) uint8_t tile[WT_T][WT_LD];   /* [c][r] */
  const int z = blockIdx.z, R = z == 2 ? F : H, C = z == 1 ? F : H;
  const h16 *w = ws.w[z];
  uint8_t *wt = ws.q[z];
  const int c0 = blockIdx.x * WT_T, r0 = blockIdx.y * WT_T;
  if (c0 >= C || r0 >= R) return;
  const float sw = tab[F8_SW + (z == 0 ? 3 : z == 1 ? 5 : 4)];
  for (int i = threadIdx.x; i < WT_T * WT_T / 8; i += blockDim.x) {
    const int rr = i / (WT_T / 8), cc = (i % (WT_T / 8)) * 8, r = r0 + rr, c = c0 + cc;
    uint2 q = make_uint2(0u, 0u);
    if (r < R && c < C) q = e4m3x8_bf16(*(const uint4 *)(w + (int64_t)r * C + c), sw);   /* C % 8 == 0 */
    const uint8_t *qb = (const uint8_t *)&q;
#pragma unroll
    for (int e = 0; e < 8; e++) tile[cc + e][rr] = qb[e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < WT_T * WT_T / 16; i += blockDim.x) {
    const int cc = i / (WT_T / 16), rr = (i % (WT_T / 16)) * 16, c = c0 + cc, r = r0 + rr;
    if (c < C && r < R) *(uint4 *)(wt + (int64_t)c * R + r) = *(const uint4 *)&tile[cc][rr];   /* R % 16 == 0 */
  }
}

/* o_w^T, ff2_w^T and ff1_w^T of layer i in E4M3 into wq's slots 3, 5 and 4 (after a RECOMPUTE rerun's GEMMs,
 * which read slot 4). */
static void f8_cast_wt(elmo_cuda_tf *t, const h16 *P, int i, cudaStream_t s) {
  const int H = t->cfg.hidden, F = t->cfg.ffn, big = ((F > H ? F : H) + WT_T - 1) / WT_T;
  const layer_off *o = &t->off[i];
  const f8_wt ws = {{P + o->o_w, P + o->ff2_w, P + o->ff1_w}, {f8_wq(t, 3), f8_wq(t, 5), f8_wq(t, 4)}};
  f8_wtcast_kernel<<<dim3((unsigned)big, (unsigned)big, 3), 256, 0, s>>>(ws, H, F, f8_tab(t, i));
  ELMO_LAUNCH_CHECK();
}

/* y[M, in] = dy w (+ beta y) for weight j (3: o, 5: ff2, 4: ff1; its transposed E4M3 copy in wq's slot j), dy the
 * E4M3 rows dq [M, out] and their 1 / scale dq_inv; y BF16 or (y_f32) FP32. 0 when cuBLASLt offers no
 * scale-vector algorithm (the caller takes the BF16 GEMM). */
static int f8_dgrad(elmo_cuda_tf *t, int i, int j, const uint8_t *dq, const float *dq_inv, int64_t M, int in, int out,
                    void *y, int y_f32, float beta, cudaStream_t s) {
  const int64_t H = t->cfg.hidden, F = t->cfg.ffn;
  const float *vec = f8_vec(t, i) + (j == 3 ? 4 * H : j == 5 ? 5 * H : 5 * H + F);
  elmo_cuda_tf_mm p = {0, 1, M, in, out, dq, out, 0, f8_wq(t, j), out, 0, y, in, 0, y_f32, beta, 1, NULL,
                       NULL, NULL, vec, dq_inv};
  return gemm_try(t->gemm, &p, 1, s);
}

/* Where the layer input's E4M3 copy goes, and its scale: layer i's q/k/v input (NULL, NULL off the FP8
 * forward or past the last layer). */
static uint8_t *f8_x_out(const elmo_cuda_tf *t, int i) {
  return t->cfg.fp8_forward && i < t->cfg.layers ? t->fp8.xq : NULL;
}
static const float *f8_x_scale(const elmo_cuda_tf *t, int i) {
  return t->cfg.fp8_forward && i < t->cfg.layers ? f8_tab(t, i) + F8_X : NULL;
}

/* ==================================================================== forward */

static __global__ void to_bf16_kernel(const float *x, int64_t n, bf16 *y) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

static void params_to_shadow(elmo_cuda_tf *t, const float *params, cudaStream_t s) {
  const int64_t blocks = (t->num_params + 255) / 256;
  to_bf16_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, s>>>(params, t->num_params,
                                                                              (bf16 *)t->shadow);
  ELMO_LAUNCH_CHECK();
}

/* ctx (merged) from the layer's q, k, v: one fused kernel, or probs, ctxp and a merge. */
static int attention_core(elmo_cuda_tf *t, const layer_acts *a, cudaStream_t s, elmo_err *err) {
  const int heads = t->cfg.heads, dh = t->cfg.hidden / heads;
  if (t->fused) {
    const int H = t->cfg.hidden;   /* q, k, v: the column blocks of one [M, 3 H] matrix */
    return elmo_cuda_attention_fused_forward(a->qkv, a->qkv + H, a->qkv + 2 * H, 3 * H, t->mask, t->B, t->Tp, heads,
                                             dh, t->ctx, s, err);
  }
  int rc = elmo_cuda_attention_forward(t->gemm, a->qkv, t->mask, t->B, t->Tp, heads, dh, t->f32, t->probs,
                                       t->ctxp, s, err);
  if (!rc) rc = elmo_cuda_heads_merge(t->ctxp, 1, t->B, t->Tp, heads, dh, t->ctx, s, err);
  return rc;
}

/* The fused path's q, k, v weights [3 H, H] and biases [3 H] of layer i gathered into t->wqkv, t->bqkv
 * (one GEMM for the three projections forward, one for their dx backward); 16-byte copies when every
 * offset allows. Skipped when they already hold layer i (t->wqkv_layer, reset per forward/backward). */
static __global__ void qkv_gather_kernel(const h16 *P, int64_t w0, int64_t w1, int64_t w2, int64_t b0, int64_t b1,
                                         int64_t b2, int64_t HH, int H, int V, h16 *wq, h16 *bq) {
  const int64_t nw = 3 * HH / V, n = nw + 3 * H / V;
  for (int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; u < n; u += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = (u < nw ? u : u - nw) * V;   /* first element within the weights or the biases */
    const h16 *src;
    h16 *dst;
    if (u < nw) {
      const int64_t j = e / HH, r = e - j * HH;
      src = P + (j == 0 ? w0 : j == 1 ? w1 : w2) + r;
      dst = wq + e;
    } else {
      const int64_t j = e / H, r = e - j * H;
      src = P + (j == 0 ? b0 : j == 1 ? b1 : b2) + r;
      dst = bq + e;
    }
    if (V == 8) *(uint4 *)dst = *(const uint4 *)src;
    else *dst = *src;
  }
}

static void qkv_gather(elmo_cuda_tf *t, const h16 *P, const layer_off *o, cudaStream_t s) {
  const int i = (int)(o - t->off);
  if (t->wqkv_layer == i) return;
  const int H = t->cfg.hidden;
  const int64_t HH = (int64_t)H * H;
  const int V = H % 8 == 0 && (uintptr_t)P % 16 == 0 && (o->q_w | o->k_w | o->v_w | o->q_b | o->k_b | o->v_b) % 8 == 0
                    ? 8 : 1;
  const int64_t n = (3 * HH + 3 * H) / V, blocks = (n + 255) / 256;
  qkv_gather_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(P, o->q_w, o->k_w, o->v_w, o->q_b, o->k_b,
                                                                              o->v_b, HH, H, V, t->wqkv, t->bqkv);
  ELMO_LAUNCH_CHECK();
  t->wqkv_layer = i;
}

/* q, k, v from x_in: bf16(x_in W^T + b). Fused path: straight into a->qkv as the column blocks of one
 * [M, 3 H] matrix (one GEMM over the gathered weights; FP8: one GEMM over the three cast weights with each
 * output column scaled by its weight's alpha, or, where cuBLASLt lacks that, three GEMMs); batched path:
 * merged [3, M, H] into g16, then split into heads. */
static int qkv_forward(elmo_cuda_tf *t, const h16 *P, const layer_off *o, const h16 *x_in, layer_acts *a,
                       cudaStream_t s, elmo_err *err) {
  const int64_t M = (int64_t)t->B * t->Tp;
  const int H = t->cfg.hidden;
  const int64_t w[3] = {o->q_w, o->k_w, o->v_w}, b[3] = {o->q_b, o->k_b, o->v_b};
  const int64_t ld = t->fused ? 3 * H : H, step = t->fused ? H : M * H;   /* row stride, offset of k from q */
  h16 *y = t->fused ? a->qkv : t->g16;
  const int i = (int)(o - t->off);
  if (t->cfg.fp8_forward && t->fused && f8_gemm_vec(t, 0, t->f8bqkv, M, H, 3 * H, y, ld, 0, f8_vec(t, i), s)) {
    /* one GEMM: the q, k, v weights one after another in wq, their biases in f8bqkv */
  } else if (t->cfg.fp8_forward) {   /* x_in's E4M3 copy in t->fp8.xq, the layer's weights cast (f8_cast_weights) */
    for (int j = 0; j < 3; j++) f8_gemm(t, i, j, P + b[j], M, H, H, y + j * step, ld, 0, s);
  } else if (t->fused) {
    qkv_gather(t, P, o, s);
    linear_fwd(t, x_in, t->wqkv, t->bqkv, M, H, 3 * H, y, 0, s);
  } else {
    for (int j = 0; j < 3; j++) linear_fwd(t, x_in, P + w[j], P + b[j], M, H, H, y + j * M * H, 0, s);
  }
  if (t->fused) return ELMO_OK;
  return elmo_cuda_heads_split(t->g16, 0, NULL, 3, t->B, t->Tp, t->cfg.heads, H / t->cfg.heads, a->qkv, s, err);
}

/* Layer i: x_in [M, H] -> x_out [M, H]. */
static int layer_forward(elmo_cuda_tf *t, const h16 *P, int i, const h16 *x_in, h16 *x_out, cudaStream_t s,
                         elmo_err *err) {
  const elmo_tf_config *c = &t->cfg;
  const layer_off *o = &t->off[i];
  layer_acts *a = &t->act[i];
  const int64_t M = (int64_t)t->B * t->Tp;
  const int H = c->hidden, F = c->ffn;
  if (!c->fp8_forward) {
    int rc = qkv_forward(t, P, o, x_in, a, s, err);
    if (!rc) rc = attention_core(t, a, s, err);
    if (rc) return rc;
    linear_fwd(t, t->ctx, P + o->o_w, NULL, M, H, H, t->f32, 1, s);
    rc = elmo_cuda_layernorm_forward(t->f32, P + o->o_b, x_in, P + o->ln1_w, P + o->ln1_b, M, H, c->ln_eps, t->h1,
                                     a->xhat1, a->rstd1, s, err);
    if (rc) return rc;
    linear_fwd(t, t->h1, P + o->ff1_w, P + o->ff1_b, M, H, F, a->ff, 0, s);  /* GELU input, bf16 */
    rc = elmo_cuda_gelu_recompute(a->ff, M * F, t->g16, s, err);
    if (rc) return rc;
    linear_fwd(t, t->g16, P + o->ff2_w, NULL, M, F, H, t->f32, 1, s);
    return elmo_cuda_layernorm_forward(t->f32, P + o->ff2_b, t->h1, P + o->ln2_w, P + o->ln2_b, M, H, c->ln_eps,
                                       x_out, a->xhat2, a->rstd2, s, err);
  }
  /* FP8: each GEMM input's E4M3 copy in t->fp8.xq, written by the kernel that makes it (x_in's by the
   * LayerNorm before this layer), each consumed by its GEMM before the next is written */
  const float *tab = f8_tab(t, i);
  uint8_t *xq = t->fp8.xq;
  f8_cast_weights(t, P, i, 0x3Fu, s);
  int rc = qkv_forward(t, P, o, x_in, a, s, err);
  if (rc) return rc;
  if (t->fused) {
    rc = elmo_cuda_attention_fused_forward_q(a->qkv, a->qkv + H, a->qkv + 2 * H, 3 * H, t->mask, t->B, t->Tp, c->heads,
                                             H / c->heads, NULL, xq, tab + F8_CTX, s, err);
  } else {
    rc = attention_core(t, a, s, err);
    if (!rc) {
      f8_act_cast_kernel<<<(unsigned)((M * H / 8 + 255) / 256 < 4096 ? (M * H / 8 + 255) / 256 : 4096), 256, 0, s>>>(
          (const uint4 *)t->ctx, M * H / 8, tab + F8_CTX, (uint2 *)xq);
      ELMO_LAUNCH_CHECK();
    }
  }
  if (rc) return rc;
  f8_gemm(t, i, 3, NULL, M, H, H, t->f32, H, 1, s);
  rc = elmo_cuda_layernorm_forward_q(t->f32, P + o->o_b, x_in, P + o->ln1_w, P + o->ln1_b, M, H, c->ln_eps, t->h1,
                                     a->xhat1, a->rstd1, xq, tab + F8_H1, s, err);
  if (rc) return rc;
  f8_gemm(t, i, 4, P + o->ff1_b, M, H, F, a->ff, F, 0, s);                /* GELU input, bf16 */
  rc = elmo_cuda_gelu_forward_q(a->ff, M * F, xq, tab + F8_G, s, err);
  if (rc) return rc;
  if (!f8_gemm_vec(t, 5, NULL, M, F, H, t->f32, H, 1, f8_vec(t, i) + 3 * H, s))
    f8_gemm(t, i, 5, NULL, M, F, H, t->f32, H, 1, s);
  return elmo_cuda_layernorm_forward_q(t->f32, P + o->ff2_b, t->h1, P + o->ln2_w, P + o->ln2_b, M, H, c->ln_eps,
                                       x_out, a->xhat2, a->rstd2, f8_x_out(t, i + 1), f8_x_scale(t, i + 1), s, err);
}

/* Embeddings + their LayerNorm into t->xa. */
static int embed_forward(elmo_cuda_tf *t, const h16 *P, const int32_t *ids, const uint8_t *mask, cudaStream_t s,
                         elmo_err *err) {
  const elmo_tf_config *c = &t->cfg;
  const int64_t M = (int64_t)t->B * t->Tp;
  int rc = elmo_cuda_embed_mask(mask, t->B, t->T, t->Tp, t->mask, s, err);
  if (!rc)
    rc = elmo_cuda_embed_forward(P + t->word, P + t->pos, t->type >= 0 ? P + t->type : NULL, c->vocab_size,
                                 c->max_position, ids, t->mask, t->B, t->T, t->Tp, c->hidden, t->f32, t->keys,
                                 t->bad_id, s, err);
  if (!rc && c->fp8_forward && c->layers > 0) f8_prepare(t, P, s);
  if (!rc)
    rc = elmo_cuda_layernorm_forward_q(t->f32, NULL, NULL, P + t->emb_ln_w, P + t->emb_ln_b, M, c->hidden,
                                       c->ln_eps, t->xa, t->xhat_e, t->rstd_e, f8_x_out(t, 0), f8_x_scale(t, 0), s,
                                       err);
  return rc;
}

static int check_call(const elmo_cuda_tf *t, const void *params, int params_bf16, elmo_err *err) {
  if (!params) return elmo_fail(err, ELMO_EINPUT, "CUDA transformer: no parameters given");
  if (!params_bf16 && !(t->flags & ELMO_CUDA_TF_F32_PARAMS))
    return elmo_fail(err, ELMO_EINPUT, "CUDA transformer: FP32 parameters given to an encoder created without "
                     "ELMO_CUDA_TF_F32_PARAMS (expected BF16 parameters)");
  if ((uintptr_t)params % 16 != 0)
    return elmo_fail(err, ELMO_EINPUT, "CUDA transformer: parameters at %p are not 16-byte aligned", params);
  return ELMO_OK;
}

extern "C" int elmo_cuda_tf_forward(elmo_cuda_tf *t, const void *params, int params_bf16, const int32_t *ids,
                                    const uint8_t *mask, int B, int T, float *pooled, cudaStream_t s, elmo_err *err) {
  int rc = check_call(t, params, params_bf16, err);
  if (rc) return rc;
  if (B < 1 || B > t->max_batch || T < 1 || T > t->max_len)
    return elmo_fail(err, ELMO_EINPUT, "CUDA transformer forward: batch %d x length %d (expected at most "
                     "%d x %d)", B, T, t->max_batch, t->max_len);
  t->have_forward = 0;
  t->wqkv_layer = -1;
  t->B = B;
  t->T = T;
  t->Tp = tp_of(T);
  const h16 *P = (const h16 *)params;
  if (!params_bf16) {
    params_to_shadow(t, (const float *)params, s);
    P = t->shadow;
  }
  rc = embed_forward(t, P, ids, mask, s, err);
  h16 *x = t->xa, *y = t->xb;
  for (int i = 0; i < t->cfg.layers && !rc; i++) {
    rc = layer_forward(t, P, i, x, y, s, err);
    h16 *tmp = x; x = y; y = tmp;
  }
  if (!rc) rc = elmo_cuda_pool_forward(x, t->mask, B, t->Tp, t->cfg.hidden, t->cfg.pooling, pooled, s, err);
  if (!rc) t->have_forward = 1;
  return rc;
}

/* ==================================================================== backward */

/* x_in of layer i into t->xa: the embedding LayerNorm output or layer i - 1's output; with its E4M3
 * copy in t->fp8.xq (the forward's bits) when a RECOMPUTE rerun of an FP8 forward needs it. */
static int layer_input(elmo_cuda_tf *t, const h16 *P, int i, cudaStream_t s, elmo_err *err) {
  const int64_t M = (int64_t)t->B * t->Tp;
  const int H = t->cfg.hidden;
  const int rq = (t->flags & ELMO_CUDA_TF_RECOMPUTE) != 0;
  uint8_t *xq = rq ? f8_x_out(t, i) : NULL;
  const float *qs = rq ? f8_x_scale(t, i) : NULL;
  if (i == 0)
    return elmo_cuda_layernorm_apply_q(t->xhat_e, P + t->emb_ln_w, P + t->emb_ln_b, M, H, t->xa, xq, qs, s, err);
  const layer_off *o = &t->off[i - 1];
  return elmo_cuda_layernorm_apply_q(t->act[i - 1].xhat2, P + o->ln2_w, P + o->ln2_b, M, H, t->xa, xq, qs, s, err);
}

/* Everything the layer backward reads besides the kept buffers: ctx and the probabilities (only off
 * the fused path, whose backward kernel recomputes P and rewrites ctx itself), h1 = the attention
 * LayerNorm output (from the kept xhat1), g16 = GELU(ff); RECOMPUTE first reruns the q/k/v and
 * intermediate GEMMs from the layer input in t->xa and h1 (the same calls as the forward, so the same
 * bits; the attention, output projection and LayerNorm forward are not rerun) and leaves GELU(ff) to
 * ffn_backward. */
static int layer_recompute(elmo_cuda_tf *t, const h16 *P, int i, cudaStream_t s, elmo_err *err) {
  const int64_t M = (int64_t)t->B * t->Tp;
  const int H = t->cfg.hidden, F = t->cfg.ffn;
  const layer_off *o = &t->off[i];
  layer_acts *a = &t->act[i];
  const int rec = t->flags & ELMO_CUDA_TF_RECOMPUTE, q8 = rec && t->cfg.fp8_forward;
  if (q8) f8_cast_weights(t, P, i, 0x17u, s);   /* q, k, v, ff1 in E4M3 again (f8tab[i] holds their scales) */
  int rc = rec ? qkv_forward(t, P, o, t->xa, a, s, err) : ELMO_OK;
  if (!rc && !t->fused) rc = attention_core(t, a, s, err);
  if (!rc)
    rc = elmo_cuda_layernorm_apply_q(a->xhat1, P + o->ln1_w, P + o->ln1_b, M, H, t->h1, q8 ? t->fp8.xq : NULL,
                                     q8 ? f8_tab(t, i) + F8_H1 : NULL, s, err);
  if (!rc && q8) f8_gemm(t, i, 4, P + o->ff1_b, M, H, F, a->ff, F, 0, s);
  else if (!rc && rec) linear_fwd(t, t->h1, P + o->ff1_w, P + o->ff1_b, M, H, F, a->ff, 0, s);
  /* RECOMPUTE: GELU(ff) comes with the GELU backward (ffn_backward), which may overwrite ff */
  if (!rc && !rec) rc = elmo_cuda_gelu_recompute(a->ff, M * F, t->g16, s, err);
  return rc;
}

/* Output LayerNorm, FFN and attention LayerNorm: t->dx from d(out) to d(pre1); t->d16 = bf16 d(pre1). */
static int ffn_backward(elmo_cuda_tf *t, const h16 *P, int i, float *G, cudaStream_t s, elmo_err *err) {
  const elmo_tf_config *c = &t->cfg;
  const layer_off *o = &t->off[i];
  const layer_acts *a = &t->act[i];
  const int64_t M = (int64_t)t->B * t->Tp;
  const int H = c->hidden, F = c->ffn;
  /* FP8 input gradients: the LayerNorm backward's rows for ff2's (and at the end o's), and the row scales of
   * the intermediate gradient dff (bound: elmo_tf_fp8_dff_factor), which the GELU backward casts for ff1's */
  const int q8 = t->f8_dgrad;
  const elmo_cuda_ln_q q2 = {t->f8dq, t->f8dq_inv, f8_tab(t, i) + F8_BG, t->f8bs, t->f8bs_inv};
  const elmo_cuda_ln_q q1 = {t->f8dq, t->f8dq_inv, NULL, NULL, NULL};
  uint8_t *dffq = q8 ? (uint8_t *)t->f32 : NULL;   /* [M, F] bytes; t->f32 is free until the attention backward */
  int rc = elmo_cuda_layernorm_backward_q(t->dx, a->xhat2, a->rstd2, P + o->ln2_w, M, H, t->dx, t->d16,
                                          G + o->ln2_w, G + o->ln2_b, G + o->ff2_b, t->part, q8 ? &q2 : NULL, s, err);
  if (rc) return rc;
  /* RECOMPUTE: ff is this backward's own rerun (layer_recompute), so the GELU backward replaces it by
   * g = GELU(ff) as it reads it (one pass over ff instead of a recompute pass and a backward pass);
   * otherwise ff is the forward's and stays (a second backward may follow), g16 holds g already. */
  const int g_in_ff = (t->flags & ELMO_CUDA_TF_RECOMPUTE) != 0;
  if (!g_in_ff) linear_dw(t, t->d16, t->g16, M, F, H, G + o->ff2_w, s);
  if (!(q8 && f8_dgrad(t, i, 5, t->f8dq, t->f8dq_inv, M, F, H, t->g16, 0, 0.0f, s)))
    linear_dx(t, t->d16, P + o->ff2_w, M, F, H, t->g16, 0, 0.0f, s);        /* dGELU (bf16) */
  rc = elmo_cuda_gelu_backward_colsum_q(a->ff, t->g16, M, F, t->g16, g_in_ff ? a->ff : NULL, G + o->ff1_b, t->part,
                                        dffq, t->f8bs, s, err);               /* dff */
  if (rc) return rc;
  if (g_in_ff) linear_dw(t, t->d16, a->ff, M, F, H, G + o->ff2_w, s);
  linear_dw(t, t->g16, t->h1, M, H, F, G + o->ff1_w, s);
  if (!(q8 && f8_dgrad(t, i, 4, dffq, t->f8bs_inv, M, H, F, t->dx, 1, 1.0f, s)))
    linear_dx(t, t->g16, P + o->ff1_w, M, H, F, t->dx, 1, 1.0f, s);         /* + residual */
  /* with the output projection's bias gradient (the column sums of d(pre1)) */
  return elmo_cuda_layernorm_backward_q(t->dx, a->xhat1, a->rstd1, P + o->ln1_w, M, H, t->dx, t->d16,
                                        G + o->ln1_w, G + o->ln1_b, G + o->o_b, t->part, q8 ? &q1 : NULL, s, err);
}

/* Output projection, attention and q/k/v: t->dx from d(pre1) to d(x_in). */
static int attention_backward(elmo_cuda_tf *t, const h16 *P, int i, float *G, cudaStream_t s, elmo_err *err) {
  const elmo_tf_config *c = &t->cfg;
  const layer_off *o = &t->off[i];
  const layer_acts *a = &t->act[i];
  const int64_t M = (int64_t)t->B * t->Tp, MH = M * c->hidden;
  const int H = c->hidden, heads = c->heads, dh = H / heads;
  int rc = ELMO_OK;   /* the output projection's bias gradient came with the LayerNorm backward */
  h16 *dqkv = (h16 *)t->f32;   /* fused: [M, 3 H], dq | dk | dv per row; batched: [3, M, H] merged */
  const int64_t w[3] = {o->q_w, o->k_w, o->v_w}, b[3] = {o->q_b, o->k_b, o->v_b};
  if (t->fused) {   /* dctx into h1 (free after the FFN backward); the kernel also writes ctx, for dW_o */
    if (!(t->f8_dgrad && f8_dgrad(t, i, 3, t->f8dq, t->f8dq_inv, M, H, H, t->h1, 0, 0.0f, s)))
      linear_dx(t, t->d16, P + o->o_w, M, H, H, t->h1, 0, 0.0f, s);
    /* the three bias gradients from column sums the kernel forms as it stores dq, dk, dv, when their
     * offsets are evenly spaced (they are in every layout we load) */
    const int even = b[1] - b[0] == b[2] - b[1];
    rc = elmo_cuda_attention_fused_backward(a->qkv, a->qkv + H, a->qkv + 2 * H, 3 * H, t->h1, t->mask, t->B, t->Tp,
                                            heads, dh, dqkv, dqkv + H, dqkv + 2 * H, t->ctx, even ? t->part : NULL,
                                            s, err);
    if (rc) return rc;
    linear_dw(t, t->d16, t->ctx, M, H, H, G + o->o_w, s);
    if (even)
      elmo_cuda_colsum_finish(t->part, elmo_cuda_attention_colpart_rows(t->B, t->Tp), H, 3, G + b[0], b[1] - b[0], s);
    else
      for (int j = 0; j < 3 && !rc; j++)
        rc = elmo_cuda_colsum_ld(dqkv + j * H, 1, M, H, 3 * H, 1, 0, G + b[j], 0, t->part, s, err);
    if (rc) return rc;
    if (w[1] - w[0] == w[2] - w[1]) { /* the three weight gradients as one strided batch (x shared) */
      elmo_cuda_tf_mm p = {1, 0, H, H, M, dqkv, 3 * H, H, t->xa, H, 0, G + w[0], H, w[1] - w[0], 1, 1.0f, 3,
                           NULL, NULL, NULL, NULL, NULL};
      elmo_cuda_tf_gemm_run(t->gemm, &p, s);
    } else {
      for (int j = 0; j < 3; j++) linear_dw_ld(t, dqkv + j * H, 3 * H, t->xa, M, H, H, G + w[j], s);
    }
    qkv_gather(t, P, o, s);   /* held already after a RECOMPUTE rerun of this layer's BF16 q/k/v GEMM */
    linear_dx(t, dqkv, t->wqkv, M, H, 3 * H, t->dx, 1, 1.0f, s);             /* + residual, K = 3 H */
    return ELMO_OK;
  }
  linear_dw(t, t->d16, t->ctx, M, H, H, G + o->o_w, s);
  if (!(t->f8_dgrad && f8_dgrad(t, i, 3, t->f8dq, t->f8dq_inv, M, H, H, t->ctx, 0, 0.0f, s)))
    linear_dx(t, t->d16, P + o->o_w, M, H, H, t->ctx, 0, 0.0f, s);           /* dctx, merged */
  rc = elmo_cuda_heads_split(t->ctx, 0, NULL, 1, t->B, t->Tp, heads, dh, t->ctxp, s, err);
  if (!rc) rc = elmo_cuda_attention_backward(t->gemm, a->qkv, t->probs, t->ctxp, t->mask, t->B, t->Tp, heads, dh,
                                             t->f32, t->g16, s, err);
  if (!rc) rc = elmo_cuda_heads_merge(t->g16, 3, t->B, t->Tp, heads, dh, dqkv, s, err);
  if (!rc && b[1] - b[0] == b[2] - b[1])
    rc = elmo_cuda_colsum(dqkv, 1, M, H, 3, MH, G + b[0], b[1] - b[0], t->part, s, err);
  else
    for (int j = 0; j < 3 && !rc; j++) rc = elmo_cuda_colsum(dqkv + j * MH, 1, M, H, 1, 0, G + b[j], 0, t->part, s, err);
  if (rc) return rc;
  for (int j = 0; j < 3; j++) linear_dw(t, dqkv + j * MH, t->xa, M, H, H, G + w[j], s);
  for (int j = 0; j < 3; j++) linear_dx(t, dqkv + j * MH, P + w[j], M, H, H, t->dx, 1, 1.0f, s);
  return ELMO_OK;
}

static int layer_backward(elmo_cuda_tf *t, const h16 *P, int i, float *G, cudaStream_t s, elmo_err *err) {
  int rc = layer_input(t, P, i, s, err);
  if (!rc) rc = layer_recompute(t, P, i, s, err);
  if (!rc && t->f8_dgrad) f8_cast_wt(t, P, i, s);   /* o_w^T, ff2_w^T in E4M3 for the input gradients */
  if (!rc) rc = ffn_backward(t, P, i, G, s, err);
  if (!rc) rc = attention_backward(t, P, i, G, s, err);
  return rc;
}

extern "C" int elmo_cuda_tf_backward(elmo_cuda_tf *t, const void *params, int params_bf16, const float *dpooled,
                                     float *grads, cudaStream_t s, elmo_err *err) {
  int rc = check_call(t, params, params_bf16, err);
  if (rc) return rc;
  if (!t->have_forward)
    return elmo_fail(err, ELMO_ERUNTIME, "CUDA transformer backward: no forward to differentiate");
  const elmo_tf_config *c = &t->cfg;
  const int64_t M = (int64_t)t->B * t->Tp;
  const h16 *P = params_bf16 ? (const h16 *)params : t->shadow;
  t->wqkv_layer = -1;
  rc = elmo_cuda_pool_backward(dpooled, t->mask, t->B, t->Tp, c->hidden, c->pooling, t->dx, s, err);
  for (int i = c->layers - 1; i >= 0 && !rc; i--) rc = layer_backward(t, P, i, grads, s, err);
  if (!rc)
    rc = elmo_cuda_layernorm_backward(t->dx, t->xhat_e, t->rstd_e, P + t->emb_ln_w, M, c->hidden, t->dx, NULL,
                                      grads + t->emb_ln_w, grads + t->emb_ln_b, NULL, t->part, s, err);
  if (!rc)
    rc = elmo_cuda_embed_backward(t->dx, t->keys, t->mask, c->vocab_size, c->max_position, t->B, t->Tp, c->hidden,
                                  grads + t->word, grads + t->pos, t->type >= 0 ? grads + t->type : NULL, t->emb_ws,
                                  t->emb_ws_bytes, s, err);
  return rc;
}
