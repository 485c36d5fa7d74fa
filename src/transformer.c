/* transformer.c: CPU reference BERT-family (post-LN) encoder: parameter layout with Hugging Face
 * names, init, FP32 ops (GEMM, linear, LayerNorm, GELU, attention, embeddings, pooling) and the
 * packed-batch forward/backward built from them. See transformer.h for shapes and ownership. */
#include "transformer.h"
#include "numerics.h"

#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ELMO_TF_HAVE_AVX2_KERNEL 1
#else
#define ELMO_TF_HAVE_AVX2_KERNEL 0
#endif

static int64_t align_up(int64_t n) { return (n + ELMO_TF_ALIGN - 1) / ELMO_TF_ALIGN * ELMO_TF_ALIGN; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ======================================================================== config */

void elmo_tf_config_init(elmo_tf_config *c) {
  c->vocab_size = 30522;
  c->max_position = 512;
  c->type_vocab = 2;
  c->hidden = 768;
  c->layers = 12;
  c->heads = 12;
  c->ffn = 3072;
  c->ln_eps = 1e-12f;
  c->pooling = ELMO_TF_POOL_MEAN;
  c->fp8_forward = 0;
}

static int check_at_least(const char *field, int v, int lo, elmo_err *err) {
  if (v >= lo) return ELMO_OK;
  return elmo_fail(err, ELMO_EINPUT, "transformer config: %s = %d (expected >= %d)", field, v, lo);
}

int elmo_tf_config_check(const elmo_tf_config *c, elmo_err *err) {
  int rc = check_at_least("vocab_size", c->vocab_size, 1, err);
  if (!rc) rc = check_at_least("max_position", c->max_position, 1, err);
  if (!rc) rc = check_at_least("type_vocab", c->type_vocab, 0, err);
  if (!rc) rc = check_at_least("hidden", c->hidden, 1, err);
  if (!rc) rc = check_at_least("layers", c->layers, 0, err);
  if (!rc) rc = check_at_least("heads", c->heads, 1, err);
  if (!rc) rc = check_at_least("ffn", c->ffn, 1, err);
  if (rc) return rc;
  if (c->hidden % c->heads != 0)
    return elmo_fail(err, ELMO_EINPUT, "transformer config: heads = %d does not divide hidden = %d "
                     "(expected hidden to be a multiple of heads)", c->heads, c->hidden);
  if (!(c->ln_eps > 0.0f) || !isfinite(c->ln_eps))
    return elmo_fail(err, ELMO_EINPUT, "transformer config: ln_eps = %g (expected a positive number)",
                     (double)c->ln_eps);
  if (c->pooling != ELMO_TF_POOL_MEAN && c->pooling != ELMO_TF_POOL_CLS)
    return elmo_fail(err, ELMO_EINPUT, "transformer config: pooling = %d (expected mean or cls)",
                     (int)c->pooling);
  if (c->fp8_forward != 0 && c->fp8_forward != 1)
    return elmo_fail(err, ELMO_EINPUT, "transformer config: fp8_forward = %d (expected 0 or 1)",
                     c->fp8_forward);
  if (c->fp8_forward && (c->hidden % 16 != 0 || c->ffn % 16 != 0))
    return elmo_fail(err, ELMO_EINPUT, "transformer config: FP8 encoder GEMMs need hidden and ffn "
                     "multiples of 16 (got hidden = %d, ffn = %d); use model.encoder.dtype bf16 or "
                     "change the sizes", c->hidden, c->ffn);
  return ELMO_OK;
}

/* ======================================================================== parameter layout */

typedef struct layout_builder {
  elmo_tf_params *p;
  size_t cap;
} layout_builder;

static void add_tensor(layout_builder *lb, elmo_tf_kind kind, int64_t rows, int64_t cols,
                       const char *name) {
  elmo_tf_params *p = lb->p;
  elmo_grow((void **)&p->tensors, &lb->cap, (size_t)p->num_tensors + 1, sizeof(elmo_tf_tensor));
  elmo_tf_tensor *t = &p->tensors[p->num_tensors++];
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s", name);
  t->kind = kind;
  t->ndim = cols > 0 ? 2 : 1;
  t->shape[0] = rows;
  t->shape[1] = cols > 0 ? cols : 1;
  t->numel = t->shape[0] * t->shape[1];
  t->offset = p->num_params;
  p->num_params += align_up(t->numel);
}

/* "encoder.layer.<i>.<suffix>" */
static void add_layer_tensor(layout_builder *lb, elmo_tf_kind kind, int64_t rows, int64_t cols,
                             int i, const char *suffix) {
  char name[ELMO_TF_NAME_MAX];
  snprintf(name, sizeof name, "encoder.layer.%d.%s", i, suffix);
  add_tensor(lb, kind, rows, cols, name);
}

static void add_layer_tensors(layout_builder *lb, int i, int64_t H, int64_t F) {
  add_layer_tensor(lb, ELMO_TF_MATRIX, H, H, i, "attention.self.query.weight");
  add_layer_tensor(lb, ELMO_TF_BIAS, H, 0, i, "attention.self.query.bias");
  add_layer_tensor(lb, ELMO_TF_MATRIX, H, H, i, "attention.self.key.weight");
  add_layer_tensor(lb, ELMO_TF_BIAS, H, 0, i, "attention.self.key.bias");
  add_layer_tensor(lb, ELMO_TF_MATRIX, H, H, i, "attention.self.value.weight");
  add_layer_tensor(lb, ELMO_TF_BIAS, H, 0, i, "attention.self.value.bias");
  add_layer_tensor(lb, ELMO_TF_MATRIX, H, H, i, "attention.output.dense.weight");
  add_layer_tensor(lb, ELMO_TF_BIAS, H, 0, i, "attention.output.dense.bias");
  add_layer_tensor(lb, ELMO_TF_NORM_WEIGHT, H, 0, i, "attention.output.LayerNorm.weight");
  add_layer_tensor(lb, ELMO_TF_NORM_BIAS, H, 0, i, "attention.output.LayerNorm.bias");
  add_layer_tensor(lb, ELMO_TF_MATRIX, F, H, i, "intermediate.dense.weight");
  add_layer_tensor(lb, ELMO_TF_BIAS, F, 0, i, "intermediate.dense.bias");
  add_layer_tensor(lb, ELMO_TF_MATRIX, H, F, i, "output.dense.weight");
  add_layer_tensor(lb, ELMO_TF_BIAS, H, 0, i, "output.dense.bias");
  add_layer_tensor(lb, ELMO_TF_NORM_WEIGHT, H, 0, i, "output.LayerNorm.weight");
  add_layer_tensor(lb, ELMO_TF_NORM_BIAS, H, 0, i, "output.LayerNorm.bias");
}

static void build_layout(elmo_tf_params *p) {
  const elmo_tf_config *c = &p->cfg;
  layout_builder lb = {p, 0};
  add_tensor(&lb, ELMO_TF_EMBEDDING, c->vocab_size, c->hidden, "embeddings.word_embeddings.weight");
  add_tensor(&lb, ELMO_TF_EMBEDDING, c->max_position, c->hidden,
             "embeddings.position_embeddings.weight");
  if (c->type_vocab > 0)
    add_tensor(&lb, ELMO_TF_EMBEDDING, c->type_vocab, c->hidden,
               "embeddings.token_type_embeddings.weight");
  add_tensor(&lb, ELMO_TF_NORM_WEIGHT, c->hidden, 0, "embeddings.LayerNorm.weight");
  add_tensor(&lb, ELMO_TF_NORM_BIAS, c->hidden, 0, "embeddings.LayerNorm.bias");
  for (int i = 0; i < c->layers; i++) add_layer_tensors(&lb, i, c->hidden, c->ffn);
}

/* Points the named views at the tensors, walking them in build_layout's order. */
static void bind_views(elmo_tf_params *p) {
  int t = 0;
#define NEXT_VIEW() (p->flat + p->tensors[t++].offset)
  p->word_emb = NEXT_VIEW();
  p->pos_emb = NEXT_VIEW();
  p->type_emb = p->cfg.type_vocab > 0 ? NEXT_VIEW() : NULL;
  p->emb_ln_w = NEXT_VIEW();
  p->emb_ln_b = NEXT_VIEW();
  for (int i = 0; i < p->cfg.layers; i++) {
    elmo_tf_layer *l = &p->layer[i];
    l->q_w = NEXT_VIEW(); l->q_b = NEXT_VIEW();
    l->k_w = NEXT_VIEW(); l->k_b = NEXT_VIEW();
    l->v_w = NEXT_VIEW(); l->v_b = NEXT_VIEW();
    l->o_w = NEXT_VIEW(); l->o_b = NEXT_VIEW();
    l->ln1_w = NEXT_VIEW(); l->ln1_b = NEXT_VIEW();
    l->ff1_w = NEXT_VIEW(); l->ff1_b = NEXT_VIEW();
    l->ff2_w = NEXT_VIEW(); l->ff2_b = NEXT_VIEW();
    l->ln2_w = NEXT_VIEW(); l->ln2_b = NEXT_VIEW();
  }
#undef NEXT_VIEW
}

int elmo_tf_alloc(elmo_tf_params *p, const elmo_tf_config *cfg, elmo_err *err) {
  memset(p, 0, sizeof *p);
  int rc = elmo_tf_config_check(cfg, err);
  if (rc) return rc;
  p->cfg = *cfg;
  build_layout(p);
  p->flat = elmo_calloc((size_t)p->num_params, sizeof(float));
  p->layer = elmo_calloc((size_t)(cfg->layers > 0 ? cfg->layers : 1), sizeof(elmo_tf_layer));
  bind_views(p);
  return ELMO_OK;
}

void elmo_tf_free(elmo_tf_params *p) {
  free(p->flat);
  free(p->tensors);
  free(p->layer);
  memset(p, 0, sizeof *p);
}

void elmo_tf_zero(elmo_tf_params *p) { memset(p->flat, 0, (size_t)p->num_params * sizeof(float)); }

float *elmo_tf_flat(const elmo_tf_params *p) { return p->flat; }
int64_t elmo_tf_num_params(const elmo_tf_params *p) { return p->num_params; }
int elmo_tf_num_tensors(const elmo_tf_params *p) { return p->num_tensors; }

const elmo_tf_tensor *elmo_tf_tensor_at(const elmo_tf_params *p, int i) {
  return i >= 0 && i < p->num_tensors ? &p->tensors[i] : NULL;
}

const char *elmo_tf_tensor_name(const elmo_tf_params *p, int i) {
  const elmo_tf_tensor *t = elmo_tf_tensor_at(p, i);
  return t ? t->name : NULL;
}

float *elmo_tf_tensor_data(const elmo_tf_params *p, int i) {
  const elmo_tf_tensor *t = elmo_tf_tensor_at(p, i);
  return t ? p->flat + t->offset : NULL;
}

int elmo_tf_find_tensor(const elmo_tf_params *p, const char *name) {
  for (int i = 0; i < p->num_tensors; i++)
    if (strcmp(p->tensors[i].name, name) == 0) return i;
  return -1;
}

/* ======================================================================== init */

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t splitmix64(uint64_t *state) { return mix64(*state += 0x9E3779B97F4A7C15ull); }

/* x[n] ~ normal(0, std), Box-Muller on pairs of 53-bit uniforms. */
static void fill_normal(float *x, int64_t n, double std, uint64_t seed) {
  uint64_t s = seed;
  const double two_pi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 2) {
    double u1 = (double)((splitmix64(&s) >> 11) + 1) * 0x1.0p-53;  /* (0, 1] */
    double u2 = (double)(splitmix64(&s) >> 11) * 0x1.0p-53;        /* [0, 1) */
    double r = sqrt(-2.0 * log(u1)) * std;
    x[i] = (float)(r * cos(two_pi * u2));
    if (i + 1 < n) x[i + 1] = (float)(r * sin(two_pi * u2));
  }
}

void elmo_tf_init_random(elmo_tf_params *p, uint64_t seed) {
  elmo_tf_zero(p);
  for (int i = 0; i < p->num_tensors; i++) {
    const elmo_tf_tensor *t = &p->tensors[i];
    float *x = p->flat + t->offset;
    if (t->kind == ELMO_TF_EMBEDDING || t->kind == ELMO_TF_MATRIX)
      fill_normal(x, t->numel, 0.02, mix64(seed ^ mix64((uint64_t)i + 1)));
    else if (t->kind == ELMO_TF_NORM_WEIGHT)
      for (int64_t j = 0; j < t->numel; j++) x[j] = 1.0f;
  }
}

/* ======================================================================== GEMM */

/* Portable kernel: i-k-j order, each C element summed over k in order (no contraction in ISO C). */
static void gemm_portable(int64_t M, int64_t N, int64_t K, const float *restrict A, int64_t lda,
                          const float *restrict B, int64_t ldb, float *restrict C, int64_t ldc,
                          int accumulate) {
  for (int64_t i = 0; i < M; i++) {
    float *restrict c = C + i * ldc;
    if (!accumulate) memset(c, 0, (size_t)N * sizeof(float));
    for (int64_t k = 0; k < K; k++) {
      const float a = A[i * lda + k];
      const float *restrict b = B + k * ldb;
      for (int64_t j = 0; j < N; j++) c[j] += a * b[j];
    }
  }
}

#if ELMO_TF_HAVE_AVX2_KERNEL
enum { TILE_M = 6, TILE_N = 16, BLOCK_M = 96, BLOCK_K = 256 };

/* C[mr, nr] = (load ? C : 0) + A[mr, K] B[K, nr] for mr <= 6, nr <= 16, in AVX registers; columns
 * past nr are masked off. Inlined with a constant mr so the accumulators stay in registers. */
__attribute__((target("avx2,fma"), always_inline))
static inline void tile_kernel(const int mr, int64_t nr, int64_t K, int load, const float *A,
                               int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), lane);
  const int full = nr == TILE_N;
  __m256 c[TILE_M][2];
  for (int r = 0; r < mr; r++) {
    c[r][0] = !load ? _mm256_setzero_ps() : full ? _mm256_loadu_ps(C + r * ldc)
                                                 : _mm256_maskload_ps(C + r * ldc, m0);
    c[r][1] = !load ? _mm256_setzero_ps() : full ? _mm256_loadu_ps(C + r * ldc + 8)
                                                 : _mm256_maskload_ps(C + r * ldc + 8, m1);
  }
  for (int64_t k = 0; k < K; k++) {
    const float *b = B + k * ldb;
    const __m256 b0 = full ? _mm256_loadu_ps(b) : _mm256_maskload_ps(b, m0);
    const __m256 b1 = full ? _mm256_loadu_ps(b + 8) : _mm256_maskload_ps(b + 8, m1);
    for (int r = 0; r < mr; r++) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
    }
  }
  for (int r = 0; r < mr; r++) {
    if (full) {
      _mm256_storeu_ps(C + r * ldc, c[r][0]);
      _mm256_storeu_ps(C + r * ldc + 8, c[r][1]);
    } else {
      _mm256_maskstore_ps(C + r * ldc, m0, c[r][0]);
      _mm256_maskstore_ps(C + r * ldc + 8, m1, c[r][1]);
    }
  }
}

/* One tile of mr rows: dispatch to a register-resident kernel for that row count. */
__attribute__((target("avx2,fma")))
static void tile_rows(int mr, int64_t nr, int64_t K, int load, const float *A, int64_t lda,
                      const float *B, int64_t ldb, float *C, int64_t ldc) {
  switch (mr) {
    case 6: tile_kernel(6, nr, K, load, A, lda, B, ldb, C, ldc); break;
    case 5: tile_kernel(5, nr, K, load, A, lda, B, ldb, C, ldc); break;
    case 4: tile_kernel(4, nr, K, load, A, lda, B, ldb, C, ldc); break;
    case 3: tile_kernel(3, nr, K, load, A, lda, B, ldb, C, ldc); break;
    case 2: tile_kernel(2, nr, K, load, A, lda, B, ldb, C, ldc); break;
    default: tile_kernel(1, nr, K, load, A, lda, B, ldb, C, ldc); break;
  }
}

/* One K block: rows in blocks of BLOCK_M, 16-wide column panels, 6-row tiles (edges masked). */
static void gemm_avx2_kblock(int64_t M, int64_t N, int64_t K, int load, const float *A, int64_t lda,
                             const float *B, int64_t ldb, float *C, int64_t ldc) {
  for (int64_t ib = 0; ib < M; ib += BLOCK_M) {
    const int64_t ie = ib + BLOCK_M < M ? ib + BLOCK_M : M;
    for (int64_t j = 0; j < N; j += TILE_N) {
      const int64_t nr = N - j < TILE_N ? N - j : TILE_N;
      for (int64_t i = ib; i < ie; i += TILE_M) {
        const int mr = (int)(ie - i < TILE_M ? ie - i : TILE_M);
        tile_rows(mr, nr, K, load, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc);
      }
    }
  }
}

static void gemm_avx2(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                      int64_t ldb, float *C, int64_t ldc, int accumulate) {
  if (K == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
    return;
  }
  for (int64_t kb = 0; kb < K; kb += BLOCK_K) {
    const int64_t kn = kb + BLOCK_K < K ? BLOCK_K : K - kb;
    gemm_avx2_kblock(M, N, kn, accumulate || kb > 0, A + kb, lda, B + kb * ldb, ldb, C, ldc);
  }
}
#endif

static int g_simd = -1;  /* -1: not decided yet */

static int simd_supported(void) {
#if ELMO_TF_HAVE_AVX2_KERNEL
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

int elmo_tf_gemm_simd(int mode) {
  if (mode == 0) g_simd = 0;
  else if (mode == 1 || g_simd < 0) g_simd = simd_supported();
  return g_simd;
}

static void gemm_serial(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float *C, int64_t ldc, int accumulate);

/* Rows of C split over threads: every element is still summed over k in order by the same kernel,
 * so the result is bitwise the same for any thread count. ELMO_THREADS caps the threads (default:
 * the online CPUs, at most 16); small products stay on the calling thread. */
typedef struct gemm_job {
  int64_t M, N, K, lda, ldb, ldc;
  const float *A, *B;
  float *C;
  int accumulate;
} gemm_job;

static void *gemm_thread(void *arg) {
  const gemm_job *j = arg;
  gemm_serial(j->M, j->N, j->K, j->A, j->lda, j->B, j->ldb, j->C, j->ldc, j->accumulate);
  return NULL;
}

static int gemm_threads(void) {
  static int n = 0;
  if (n == 0) {
    const char *e = getenv("ELMO_THREADS");
    long v = e && *e ? strtol(e, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    n = v < 1 ? 1 : v > 16 ? 16 : (int)v;
  }
  return n;
}

void elmo_tf_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float *C, int64_t ldc, int accumulate) {
  if (M <= 0 || N <= 0) return;
  int T = gemm_threads();
  if (T > M) T = (int)M;
  if (T < 2 || (double)M * (double)N * (double)K < 4e6) {
    gemm_serial(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    return;
  }
  pthread_t th[16];
  gemm_job jobs[16];
  int started[16] = {0};
  for (int t = 0; t < T; t++) {
    int64_t r0 = M * t / T, r1 = M * (t + 1) / T;
    jobs[t] = (gemm_job){r1 - r0, N, K, lda, ldb, ldc, A + r0 * lda, B, C + r0 * ldc, accumulate};
    if (t > 0) started[t] = pthread_create(&th[t], NULL, gemm_thread, &jobs[t]) == 0;
  }
  gemm_thread(&jobs[0]);
  for (int t = 1; t < T; t++) {
    if (started[t]) pthread_join(th[t], NULL);
    else gemm_thread(&jobs[t]);
  }
}

static void gemm_serial(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float *C, int64_t ldc, int accumulate) {
#if ELMO_TF_HAVE_AVX2_KERNEL
  if (elmo_tf_gemm_simd(-1)) {
    gemm_avx2(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    return;
  }
#endif
  gemm_portable(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void elmo_tf_transpose(const float *src, int64_t R, int64_t C, int64_t lds, float *dst) {
  enum { TB = 32 };
  for (int64_t r0 = 0; r0 < R; r0 += TB)
    for (int64_t c0 = 0; c0 < C; c0 += TB) {
      const int64_t r1 = r0 + TB < R ? r0 + TB : R, c1 = c0 + TB < C ? c0 + TB : C;
      for (int64_t r = r0; r < r1; r++)
        for (int64_t c = c0; c < c1; c++) dst[c * R + r] = src[r * lds + c];
    }
}

/* ======================================================================== ops */

int64_t elmo_tf_workspace_floats(const elmo_tf_config *cfg, int max_len, int64_t N) {
  const int64_t H = cfg->hidden, F = cfg->ffn, T = max_len, dh = cfg->hidden / cfg->heads;
  int64_t n = max64(H * H, H * F);                  /* linear forward: w^T */
  n = max64(n, max64(H, F) * N);                    /* linear backward: dy^T */
  n = max64(n, 2 * T * T + dh * T);                 /* attention backward */
  if (cfg->fp8_forward) n = max64(n, H * F + N * max64(H, F)); /* fp8 forward: wq^T, xq; fp8 dgrad: wq, dyq */
  return n;
}

void elmo_tf_linear_forward(const float *x, const float *w, const float *b, int64_t N, int in,
                            int out, float *y, float *ws) {
  elmo_tf_transpose(w, out, in, in, ws);            /* ws: [in, out] */
  elmo_tf_gemm(N, out, in, x, in, ws, out, y, out, 0);
  if (!b) return;
  for (int64_t n = 0; n < N; n++) {
    float *restrict yr = y + n * out;
    for (int o = 0; o < out; o++) yr[o] += b[o];
  }
}

/* |x| as a bit pattern: for non-negative floats the integer order is the float order, and NaN
 * patterns lie above infinity, so the maximum is NaN when any element is NaN. */
static uint32_t abs_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u & 0x7FFFFFFFu;
}

float elmo_tf_amax(const float *x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; i++) {
    const uint32_t a = abs_bits(x[i]);
    if (a > m) m = a;
  }
  float r;
  memcpy(&r, &m, sizeof r);
  return r;
}

float elmo_tf_fp8_scale(float amax) {
  const double a = (double)amax;
  return (float)((double)ELMO_TF_FP8_MAX / (a > ELMO_TF_FP8_AMAX_EPS ? a : isnan(a) ? a : ELMO_TF_FP8_AMAX_EPS));
}

void elmo_tf_fp8_quantize(const float *x, int64_t n, float scale, float *q) {
  for (int64_t i = 0; i < n; i++) q[i] = elmo_fp8_to_f32(elmo_f32_to_fp8(x[i] * scale));
}

void elmo_tf_linear_forward_fp8(const float *x, const float *w, const float *b, int64_t N, int in,
                                int out, float *y, float *ws) {
  elmo_tf_linear_forward_fp8_scaled(x, w, b, N, in, out, elmo_tf_fp8_scale(elmo_tf_amax(x, N * in)), y, ws);
}

/* max(m, a) where a NaN, once met, stays (as the GPU's f8_nanmax). */
static double nan_max(double m, double a) {
  if (isnan(m)) return m;
  return a > m || isnan(a) ? a : m;
}

double elmo_tf_fp8_ln_elem(const float *w, const float *b, int H) {
  const double r = sqrt((double)(H - 1));
  double m = 0.0;
  for (int j = 0; j < H; j++) m = nan_max(m, r * fabs((double)w[j]) + fabs((double)b[j]));
  return m;
}

double elmo_tf_fp8_ln_norm(const float *w, const float *b, int H) {
  double mw = 0.0, sb = 0.0;
  for (int j = 0; j < H; j++) {
    mw = nan_max(mw, fabs((double)w[j]));
    sb += (double)b[j] * (double)b[j];
  }
  return sqrt((double)H) * mw + sqrt(sb);
}

/* The largest Euclidean norm of n vectors of len elements: vector v's element e at w[v vs + e es]. */
static double norm_max(const float *w, int64_t n, int64_t len, int64_t vs, int64_t es) {
  double m = 0.0;
  for (int64_t v = 0; v < n; v++) {
    double ss = 0.0;
    for (int64_t e = 0; e < len; e++) ss += (double)w[v * vs + e * es] * (double)w[v * vs + e * es];
    m = nan_max(m, sqrt(ss));
  }
  return m;
}

double elmo_tf_fp8_row_norm_max(const float *w, int64_t rows, int cols) {
  return norm_max(w, rows, cols, cols, 1);
}

double elmo_tf_fp8_abs_max(const float *b, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++) m = nan_max(m, fabs((double)b[i]));
  return m;
}

void elmo_tf_fp8_layer_scales(const elmo_tf_config *cfg, const float *in_w, const float *in_b,
                              const elmo_tf_layer *l, elmo_tf_fp8_scales *s) {
  const int H = cfg->hidden, F = cfg->ffn;
  elmo_tf_fp8_scales_of(elmo_tf_fp8_ln_elem(in_w, in_b, H), elmo_tf_fp8_ln_norm(in_w, in_b, H),
                        elmo_tf_fp8_ln_elem(l->ln1_w, l->ln1_b, H), elmo_tf_fp8_ln_norm(l->ln1_w, l->ln1_b, H),
                        elmo_tf_fp8_row_norm_max(l->v_w, H, H), elmo_tf_fp8_abs_max(l->v_b, H),
                        elmo_tf_fp8_row_norm_max(l->ff1_w, F, H), elmo_tf_fp8_abs_max(l->ff1_b, F), s);
}

void elmo_tf_linear_forward_fp8_scaled(const float *x, const float *w, const float *b, int64_t N, int in,
                                       int out, float sx, float *y, float *ws) {
  const int64_t nw = (int64_t)in * out;
  float *wq = ws, *xq = ws + nw;                    /* [in, out] (transposed), [N, in] */
  const float sw = elmo_tf_fp8_scale(elmo_tf_amax(w, nw));
  elmo_tf_transpose(w, out, in, in, wq);
  elmo_tf_fp8_quantize(wq, nw, sw, wq);
  elmo_tf_fp8_quantize(x, N * in, sx, xq);
  elmo_tf_gemm(N, out, in, xq, in, wq, out, y, out, 0);
  const float deq = (1.0f / sx) * (1.0f / sw);
  for (int64_t n = 0; n < N; n++) {
    float *restrict yr = y + n * out;
    for (int o = 0; o < out; o++) yr[o] = yr[o] * deq + (b ? b[o] : 0.0f);
  }
}

double elmo_tf_fp8_col_norm_max(const float *w, int64_t rows, int cols) {
  return norm_max(w, cols, rows, 1, cols);
}

float elmo_tf_fp8_dff_factor(const float *ff2_w, int H, int F) {
  return (float)(ELMO_TF_FP8_BOUND_MARGIN * ELMO_TF_FP8_GELU_GRAD_MAX * elmo_tf_fp8_col_norm_max(ff2_w, H, F));
}

void elmo_tf_fp8_dff_bounds(const float *dy, int64_t N, int H, float f, float *bound) {
  for (int64_t n = 0; n < N; n++) {
    double ss = 0.0;
    for (int j = 0; j < H; j++) {
      const double v = elmo_bf16_to_f32(elmo_f32_to_bf16(dy[n * H + j]));
      ss += v * v;
    }
    bound[n] = (float)sqrt(ss) * f;
  }
}

void elmo_tf_linear_dgrad_fp8(const float *dy, const float *w, int64_t N, int in, int out, const float *row_bound,
                              float *dx, int accumulate, float *ws) {
  const int64_t nw = (int64_t)in * out;
  float *wq = ws, *dq = ws + nw;                    /* [out, in], [N, out] */
  const float sw = elmo_tf_fp8_scale(elmo_tf_amax(w, nw));
  elmo_tf_fp8_quantize(w, nw, sw, wq);
  float *inv = (float *)elmo_malloc(sizeof(float) * (size_t)(N > 0 ? N : 1));   /* each row's 1 / s_n */
  for (int64_t n = 0; n < N; n++) {
    const float *restrict g = dy + n * out;
    float *restrict q = dq + n * out;
    double m = 0.0;
    for (int k = 0; k < out; k++) {
      q[k] = elmo_bf16_to_f32(elmo_f32_to_bf16(g[k]));
      m = nan_max(m, fabs((double)q[k]));
    }
    const float sn = elmo_tf_fp8_pow2_scale(row_bound ? (double)row_bound[n] : m);
    elmo_tf_fp8_quantize(q, out, sn, q);
    inv[n] = 1.0f / sn;
  }
  float *prod = accumulate ? (float *)elmo_malloc(sizeof(float) * (size_t)(N * in > 0 ? N * in : 1)) : dx;
  elmo_tf_gemm(N, in, out, dq, out, wq, in, prod, in, 0);
  const float wi = 1.0f / sw;
  for (int64_t n = 0; n < N; n++) {
    float *restrict y = dx + n * in;
    const float *restrict p = prod + n * in;
    for (int c = 0; c < in; c++) y[c] = (accumulate ? y[c] : 0.0f) + (p[c] * inv[n]) * wi;
  }
  if (accumulate) free(prod);
  free(inv);
}

void elmo_tf_linear_backward(const float *x, const float *w, const float *dy, int64_t N, int in,
                             int out, float *dx, int accumulate_dx, float *dw, float *db, float *ws) {
  if (dw) {
    elmo_tf_transpose(dy, N, out, out, ws);         /* ws: [out, N] */
    elmo_tf_gemm(out, in, N, ws, N, x, in, dw, in, 1);
  }
  if (db)
    for (int64_t n = 0; n < N; n++) {
      const float *restrict g = dy + n * out;
      for (int o = 0; o < out; o++) db[o] += g[o];
    }
  if (dx) elmo_tf_gemm(N, in, out, dy, out, w, in, dx, in, accumulate_dx);
}

void elmo_tf_layernorm_forward(const float *x, const float *w, const float *b, int64_t N, int H,
                               float eps, float *y, float *xhat, float *rstd) {
  for (int64_t n = 0; n < N; n++) {
    const float *xr = x + n * H;
    double mean = 0.0, var = 0.0;
    for (int j = 0; j < H; j++) mean += xr[j];
    mean /= H;
    for (int j = 0; j < H; j++) var += ((double)xr[j] - mean) * ((double)xr[j] - mean);
    const float rs = (float)(1.0 / sqrt(var / H + (double)eps));
    const float m = (float)mean;
    rstd[n] = rs;
    for (int j = 0; j < H; j++) {
      const float h = (xr[j] - m) * rs;
      xhat[n * H + j] = h;
      y[n * H + j] = h * w[j] + b[j];
    }
  }
}

void elmo_tf_layernorm_backward(const float *dy, const float *xhat, const float *rstd, const float *w,
                                int64_t N, int H, float *dx, float *dw, float *db) {
  for (int64_t n = 0; n < N; n++) {
    const float *g = dy + n * H, *h = xhat + n * H;
    double sum_g = 0.0, sum_gh = 0.0;                /* of dxhat = dy * w, and dxhat * xhat */
    for (int j = 0; j < H; j++) {
      const float gw = g[j] * w[j];
      sum_g += gw;
      sum_gh += (double)gw * h[j];
      dw[j] += g[j] * h[j];
      db[j] += g[j];
    }
    const float mg = (float)(sum_g / H), mgh = (float)(sum_gh / H), rs = rstd[n];
    for (int j = 0; j < H; j++) dx[n * H + j] = rs * (g[j] * w[j] - mg - h[j] * mgh);
  }
}

static const float kInvSqrt2 = 0.70710678118654752f;
static const float kInvSqrt2Pi = 0.39894228040143268f;

void elmo_tf_gelu_forward(const float *x, int64_t n, float *y) {
  for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * kInvSqrt2));
}

void elmo_tf_gelu_backward(const float *x, const float *dy, int64_t n, float *dx) {
  for (int64_t i = 0; i < n; i++) {
    const float cdf = 0.5f * (1.0f + erff(x[i] * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * x[i] * x[i]);
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

/* Row-wise softmax of scale * s over s[len, len], in place. */
static void softmax_rows(float *s, int64_t len, float scale) {
  for (int64_t r = 0; r < len; r++) {
    float *row = s + r * len, mx = -INFINITY;
    for (int64_t j = 0; j < len; j++) {
      row[j] *= scale;
      if (row[j] > mx) mx = row[j];
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < len; j++) {
      row[j] = expf(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < len; j++) row[j] *= inv;
  }
}

void elmo_tf_attention_forward(const float *q, const float *k, const float *v,
                               const int64_t *seq_start, const int64_t *prob_start, int B, int H,
                               int heads, float *probs, float *ctx, float *ws) {
  const int dh = H / heads;
  const float scale = 1.0f / sqrtf((float)dh);
  for (int b = 0; b < B; b++) {
    const int64_t s0 = seq_start[b], len = seq_start[b + 1] - s0;
    if (len == 0) continue;
    for (int h = 0; h < heads; h++) {
      const int64_t col = s0 * H + (int64_t)h * dh;
      float *P = probs + prob_start[b] + (int64_t)h * len * len;   /* [len, len] */
      elmo_tf_transpose(k + col, len, dh, H, ws);                  /* ws: K_h^T [dh, len] */
      elmo_tf_gemm(len, len, dh, q + col, H, ws, len, P, len, 0);
      softmax_rows(P, len, scale);
      elmo_tf_gemm(len, dh, len, P, len, v + col, H, ctx + col, H, 0);
    }
  }
}

/* dS = P * (dP - rowsum(dP * P)) * scale, in place over dP[len, len]. */
static void softmax_backward_rows(const float *P, float *dP, int64_t len, float scale) {
  for (int64_t r = 0; r < len; r++) {
    const float *p = P + r * len;
    float *g = dP + r * len;
    float dot = 0.0f;
    for (int64_t j = 0; j < len; j++) dot += p[j] * g[j];
    for (int64_t j = 0; j < len; j++) g[j] = p[j] * (g[j] - dot) * scale;
  }
}

void elmo_tf_attention_backward(const float *q, const float *k, const float *v, const float *probs,
                                const float *dctx, const int64_t *seq_start,
                                const int64_t *prob_start, int B, int H, int heads, float *dq,
                                float *dk, float *dv, float *ws) {
  const int dh = H / heads;
  const float scale = 1.0f / sqrtf((float)dh);
  for (int b = 0; b < B; b++) {
    const int64_t s0 = seq_start[b], len = seq_start[b + 1] - s0;
    if (len == 0) continue;
    float *dP = ws, *tmp = ws + len * len, *vt = ws + 2 * len * len;  /* [len,len] [len,len] [dh,len] */
    for (int h = 0; h < heads; h++) {
      const int64_t col = s0 * H + (int64_t)h * dh;
      const float *P = probs + prob_start[b] + (int64_t)h * len * len;
      elmo_tf_transpose(v + col, len, dh, H, vt);
      elmo_tf_gemm(len, len, dh, dctx + col, H, vt, len, dP, len, 0);    /* dP = dctx V^T */
      elmo_tf_transpose(P, len, len, len, tmp);
      elmo_tf_gemm(len, dh, len, tmp, len, dctx + col, H, dv + col, H, 0); /* dV = P^T dctx */
      softmax_backward_rows(P, dP, len, scale);                           /* dP -> dS */
      elmo_tf_gemm(len, dh, len, dP, len, k + col, H, dq + col, H, 0);    /* dQ = dS K */
      elmo_tf_transpose(dP, len, len, len, tmp);
      elmo_tf_gemm(len, dh, len, tmp, len, q + col, H, dk + col, H, 0);   /* dK = dS^T Q */
    }
  }
}

void elmo_tf_embed_forward(const float *word, const float *pos, const float *type,
                           const int32_t *tok_id, const int32_t *tok_pos, int64_t N, int H, float *e) {
  for (int64_t n = 0; n < N; n++) {
    const float *w = word + (int64_t)tok_id[n] * H, *p = pos + (int64_t)tok_pos[n] * H;
    float *er = e + n * H;
    for (int j = 0; j < H; j++) er[j] = w[j] + p[j];
    if (type)
      for (int j = 0; j < H; j++) er[j] += type[j];
  }
}

void elmo_tf_embed_backward(const float *de, const int32_t *tok_id, const int32_t *tok_pos, int64_t N,
                            int H, float *dword, float *dpos, float *dtype) {
  for (int64_t n = 0; n < N; n++) {
    const float *g = de + n * H;
    float *w = dword + (int64_t)tok_id[n] * H, *p = dpos + (int64_t)tok_pos[n] * H;
    for (int j = 0; j < H; j++) {
      w[j] += g[j];
      p[j] += g[j];
    }
    if (dtype)
      for (int j = 0; j < H; j++) dtype[j] += g[j];
  }
}

void elmo_tf_pool_forward(const float *x, const int64_t *seq_start, int B, int H,
                          elmo_tf_pooling mode, float *pooled) {
  for (int b = 0; b < B; b++) {
    const int64_t s0 = seq_start[b], len = seq_start[b + 1] - s0;
    float *out = pooled + (int64_t)b * H;
    memset(out, 0, (size_t)H * sizeof(float));
    if (len == 0) continue;
    if (mode == ELMO_TF_POOL_CLS) {
      memcpy(out, x + s0 * H, (size_t)H * sizeof(float));
      continue;
    }
    for (int64_t n = s0; n < s0 + len; n++)
      for (int j = 0; j < H; j++) out[j] += x[n * H + j];
    const float inv = 1.0f / (float)len;
    for (int j = 0; j < H; j++) out[j] *= inv;
  }
}

void elmo_tf_pool_backward(const float *dpooled, const int64_t *seq_start, int B, int H,
                           elmo_tf_pooling mode, float *dx) {
  for (int b = 0; b < B; b++) {
    const int64_t s0 = seq_start[b], len = seq_start[b + 1] - s0;
    const float *g = dpooled + (int64_t)b * H;
    const float f = mode == ELMO_TF_POOL_CLS ? 1.0f : 1.0f / (float)(len > 0 ? len : 1);
    for (int64_t n = s0; n < s0 + len; n++) {
      const float fn = mode == ELMO_TF_POOL_CLS && n > s0 ? 0.0f : f;
      for (int j = 0; j < H; j++) dx[n * H + j] = g[j] * fn;
    }
  }
}

int64_t elmo_tf_pack(const int32_t *ids, const uint8_t *mask, int B, int T, int heads,
                     int64_t *seq_start, int64_t *prob_start, int32_t *tok_id, int32_t *tok_pos) {
  int64_t n = 0, pofs = 0;
  for (int b = 0; b < B; b++) {
    seq_start[b] = n;
    prob_start[b] = pofs;
    for (int t = 0; t < T; t++) {
      const int64_t i = (int64_t)b * T + t;
      if (mask && !mask[i]) continue;
      tok_id[n] = ids[i];
      tok_pos[n] = t;
      n++;
    }
    const int64_t len = n - seq_start[b];
    pofs += (int64_t)heads * len * len;
  }
  seq_start[B] = n;
  prob_start[B] = pofs;
  return n;
}

/* ======================================================================== cache */

/* Bump allocator over one float buffer; with base == NULL it only measures. */
typedef struct carver {
  float *base;
  int64_t used;
} carver;

static float *carve(carver *cv, int64_t n) {
  float *p = cv->base ? cv->base + cv->used : NULL;
  cv->used += align_up(n);
  return p;
}

static void carve_cache(elmo_tf_cache *c, carver *cv) {
  const int64_t H = c->cfg.hidden, F = c->cfg.ffn, N = (int64_t)c->max_batch * c->max_len;
  const int64_t P = (int64_t)c->cfg.heads * c->max_batch * c->max_len * c->max_len;
  c->emb_xhat = carve(cv, N * H);
  c->emb_rstd = carve(cv, N);
  c->x0 = carve(cv, N * H);
  for (int i = 0; i < c->cfg.layers; i++) {
    elmo_tf_layer_cache *l = &c->layer[i];
    l->q = carve(cv, N * H);
    l->k = carve(cv, N * H);
    l->v = carve(cv, N * H);
    l->probs = carve(cv, P);
    l->ctx = carve(cv, N * H);
    l->xhat1 = carve(cv, N * H);
    l->rstd1 = carve(cv, N);
    l->h1 = carve(cv, N * H);
    l->ff = carve(cv, N * F);
    l->gelu = carve(cv, N * F);
    l->xhat2 = carve(cv, N * H);
    l->rstd2 = carve(cv, N);
    l->out = carve(cv, N * H);
  }
  c->d_x = carve(cv, N * H);
  c->d_y = carve(cv, N * H);
  c->d_q = carve(cv, N * H);
  c->d_k = carve(cv, N * H);
  c->d_v = carve(cv, N * H);
  c->d_f = carve(cv, N * F);
  c->ws = carve(cv, elmo_tf_workspace_floats(&c->cfg, c->max_len, N));
}

int64_t elmo_tf_cache_floats(const elmo_tf_config *cfg, int max_batch, int max_len) {
  elmo_tf_cache c = {.cfg = *cfg, .max_batch = max_batch, .max_len = max_len};
  c.layer = elmo_calloc((size_t)(cfg->layers > 0 ? cfg->layers : 1), sizeof(elmo_tf_layer_cache));
  carver cv = {NULL, 0};
  carve_cache(&c, &cv);
  free(c.layer);
  return cv.used;
}

int elmo_tf_cache_alloc(elmo_tf_cache *c, const elmo_tf_config *cfg, int max_batch, int max_len,
                        elmo_err *err) {
  memset(c, 0, sizeof *c);
  int rc = elmo_tf_config_check(cfg, err);
  if (rc) return rc;
  if (max_batch < 1 || max_len < 1 || max_len > cfg->max_position)
    return elmo_fail(err, ELMO_EINPUT, "transformer cache: batch %d x length %d (expected batch >= 1 "
                     "and 1 <= length <= max_position = %d)", max_batch, max_len, cfg->max_position);
  c->cfg = *cfg;
  c->max_batch = max_batch;
  c->max_len = max_len;
  c->layer = elmo_calloc((size_t)(cfg->layers > 0 ? cfg->layers : 1), sizeof(elmo_tf_layer_cache));
  carver cv = {NULL, 0};
  carve_cache(c, &cv);
  c->buf = elmo_malloc((size_t)cv.used * sizeof(float));
  cv = (carver){c->buf, 0};
  carve_cache(c, &cv);
  const size_t ntok = (size_t)max_batch * (size_t)max_len;
  c->seq_start = elmo_calloc((size_t)max_batch + 1, sizeof(int64_t));
  c->prob_start = elmo_calloc((size_t)max_batch + 1, sizeof(int64_t));
  c->tok_id = elmo_calloc(ntok, sizeof(int32_t));
  c->tok_pos = elmo_calloc(ntok, sizeof(int32_t));
  return ELMO_OK;
}

void elmo_tf_cache_free(elmo_tf_cache *c) {
  free(c->buf);
  free(c->layer);
  free(c->seq_start);
  free(c->prob_start);
  free(c->tok_id);
  free(c->tok_pos);
  memset(c, 0, sizeof *c);
}

/* ======================================================================== forward */

static int check_batch(const elmo_tf_params *p, const elmo_tf_cache *c, const int32_t *ids,
                       const uint8_t *mask, int B, int T, elmo_err *err) {
  if (c->cfg.hidden != p->cfg.hidden || c->cfg.layers != p->cfg.layers ||
      c->cfg.heads != p->cfg.heads || c->cfg.ffn != p->cfg.ffn)
    return elmo_fail(err, ELMO_ERUNTIME, "transformer forward: cache was sized for another model");
  if (B < 0 || B > c->max_batch || T < 1 || T > c->max_len || T > p->cfg.max_position)
    return elmo_fail(err, ELMO_EINPUT, "transformer forward: batch %d x length %d (expected at most "
                     "%d x %d, length <= max_position = %d)", B, T, c->max_batch, c->max_len,
                     p->cfg.max_position);
  for (int64_t i = 0; i < (int64_t)B * T; i++) {
    if (mask && !mask[i]) continue;
    if (ids[i] < 0 || ids[i] >= p->cfg.vocab_size)
      return elmo_fail(err, ELMO_EINPUT, "transformer forward: row %d position %d: token id %d "
                       "(expected 0 <= id < vocab_size = %d)", (int)(i / T), (int)(i % T),
                       (int)ids[i], p->cfg.vocab_size);
  }
  return ELMO_OK;
}

static void add_inplace(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* The layer's linear forward: FP32, or FP8 GEMMs with input scale sx when cfg->fp8_forward. */
static void linear_fwd(const elmo_tf_config *cfg, const float *x, const float *w, const float *b,
                       int64_t N, int in, int out, float sx, float *y, float *ws) {
  if (cfg->fp8_forward) elmo_tf_linear_forward_fp8_scaled(x, w, b, N, in, out, sx, y, ws);
  else elmo_tf_linear_forward(x, w, b, N, in, out, y, ws);
}

/* One encoder layer: in[N, H] -> lc->out[N, H]; c->d_x is the scratch for pre-LayerNorm sums.
 * in_w, in_b: the LayerNorm that produced in (for the FP8 scales). */
static void layer_forward(const elmo_tf_config *cfg, const elmo_tf_layer *w, elmo_tf_layer_cache *lc,
                          const elmo_tf_cache *c, const float *in, const float *in_w, const float *in_b) {
  const int64_t N = c->ntok;
  const int H = cfg->hidden, F = cfg->ffn;
  float *pre = c->d_x;                                                   /* [N, H] */
  elmo_tf_fp8_scales sc = {1.0f, 1.0f, 1.0f, 1.0f};
  if (cfg->fp8_forward) elmo_tf_fp8_layer_scales(cfg, in_w, in_b, w, &sc);
  linear_fwd(cfg, in, w->q_w, w->q_b, N, H, H, sc.x, lc->q, c->ws);
  linear_fwd(cfg, in, w->k_w, w->k_b, N, H, H, sc.x, lc->k, c->ws);
  linear_fwd(cfg, in, w->v_w, w->v_b, N, H, H, sc.x, lc->v, c->ws);
  elmo_tf_attention_forward(lc->q, lc->k, lc->v, c->seq_start, c->prob_start, c->B, H, cfg->heads,
                            lc->probs, lc->ctx, c->ws);
  linear_fwd(cfg, lc->ctx, w->o_w, w->o_b, N, H, H, sc.ctx, pre, c->ws);
  add_inplace(pre, in, N * H);
  elmo_tf_layernorm_forward(pre, w->ln1_w, w->ln1_b, N, H, cfg->ln_eps, lc->h1, lc->xhat1, lc->rstd1);
  linear_fwd(cfg, lc->h1, w->ff1_w, w->ff1_b, N, H, F, sc.h1, lc->ff, c->ws);
  elmo_tf_gelu_forward(lc->ff, N * F, lc->gelu);
  linear_fwd(cfg, lc->gelu, w->ff2_w, w->ff2_b, N, F, H, sc.g, pre, c->ws);
  add_inplace(pre, lc->h1, N * H);
  elmo_tf_layernorm_forward(pre, w->ln2_w, w->ln2_b, N, H, cfg->ln_eps, lc->out, lc->xhat2, lc->rstd2);
}

int elmo_tf_forward(const elmo_tf_params *p, elmo_tf_cache *c, const int32_t *ids,
                    const uint8_t *mask, int B, int T, float *pooled, elmo_err *err) {
  int rc = check_batch(p, c, ids, mask, B, T, err);
  if (rc) return rc;
  const elmo_tf_config *cfg = &p->cfg;
  const int H = cfg->hidden;
  c->B = B;
  c->T = T;
  c->ntok = elmo_tf_pack(ids, mask, B, T, cfg->heads, c->seq_start, c->prob_start, c->tok_id,
                         c->tok_pos);
  elmo_tf_embed_forward(p->word_emb, p->pos_emb, p->type_emb, c->tok_id, c->tok_pos, c->ntok, H,
                        c->d_x);
  elmo_tf_layernorm_forward(c->d_x, p->emb_ln_w, p->emb_ln_b, c->ntok, H, cfg->ln_eps, c->x0,
                            c->emb_xhat, c->emb_rstd);
  const float *x = c->x0;
  for (int i = 0; i < cfg->layers; i++) {
    layer_forward(cfg, &p->layer[i], &c->layer[i], c, x, i ? p->layer[i - 1].ln2_w : p->emb_ln_w,
                  i ? p->layer[i - 1].ln2_b : p->emb_ln_b);
    x = c->layer[i].out;
  }
  c->hidden = (float *)x;
  elmo_tf_pool_forward(x, c->seq_start, B, H, cfg->pooling, pooled);
  c->have_forward = 1;
  return ELMO_OK;
}

/* ======================================================================== backward */

/* Layer backward: c->d_x holds d(out) on entry and d(in) on exit. */
static void layer_backward(const elmo_tf_config *cfg, const elmo_tf_layer *w, elmo_tf_layer *g,
                           const elmo_tf_layer_cache *lc, const elmo_tf_cache *c, const float *in) {
  const int64_t N = c->ntok;
  const int H = cfg->hidden, F = cfg->ffn, fp8 = cfg->fp8_forward;
  float *dx = c->d_x;
  elmo_tf_layernorm_backward(dx, lc->xhat2, lc->rstd2, w->ln2_w, N, H, dx, g->ln2_w, g->ln2_b);
  elmo_tf_linear_backward(lc->gelu, w->ff2_w, dx, N, F, H, fp8 ? NULL : c->d_f, 0, g->ff2_w, g->ff2_b, c->ws);
  float *bound = NULL;   /* fp8: the intermediate gradient's row bounds (elmo_tf_fp8_dff_factor) */
  if (fp8) {
    elmo_tf_linear_dgrad_fp8(dx, w->ff2_w, N, F, H, NULL, c->d_f, 0, c->ws);
    bound = (float *)elmo_malloc(sizeof(float) * (size_t)(N > 0 ? N : 1));
    elmo_tf_fp8_dff_bounds(dx, N, H, elmo_tf_fp8_dff_factor(w->ff2_w, H, F), bound);
  }
  elmo_tf_gelu_backward(lc->ff, c->d_f, N * F, c->d_f);
  elmo_tf_linear_backward(lc->h1, w->ff1_w, c->d_f, N, H, F, fp8 ? NULL : dx, 1, g->ff1_w, g->ff1_b, c->ws);
  if (fp8) elmo_tf_linear_dgrad_fp8(c->d_f, w->ff1_w, N, H, F, bound, dx, 1, c->ws);
  free(bound);
  elmo_tf_layernorm_backward(dx, lc->xhat1, lc->rstd1, w->ln1_w, N, H, dx, g->ln1_w, g->ln1_b);
  elmo_tf_linear_backward(lc->ctx, w->o_w, dx, N, H, H, fp8 ? NULL : c->d_y, 0, g->o_w, g->o_b, c->ws);
  if (fp8) elmo_tf_linear_dgrad_fp8(dx, w->o_w, N, H, H, NULL, c->d_y, 0, c->ws);
  elmo_tf_attention_backward(lc->q, lc->k, lc->v, lc->probs, c->d_y, c->seq_start, c->prob_start,
                             c->B, H, cfg->heads, c->d_q, c->d_k, c->d_v, c->ws);
  elmo_tf_linear_backward(in, w->q_w, c->d_q, N, H, H, dx, 1, g->q_w, g->q_b, c->ws);
  elmo_tf_linear_backward(in, w->k_w, c->d_k, N, H, H, dx, 1, g->k_w, g->k_b, c->ws);
  elmo_tf_linear_backward(in, w->v_w, c->d_v, N, H, H, dx, 1, g->v_w, g->v_b, c->ws);
}

int elmo_tf_backward(const elmo_tf_params *p, elmo_tf_cache *c, const float *dpooled,
                     elmo_tf_params *grads, elmo_err *err) {
  if (!c->have_forward)
    return elmo_fail(err, ELMO_ERUNTIME, "transformer backward: the cache holds no forward");
  if (grads->num_params != p->num_params || grads->num_tensors != p->num_tensors)
    return elmo_fail(err, ELMO_ERUNTIME, "transformer backward: gradients have another layout "
                     "(%lld floats, expected %lld)", (long long)grads->num_params,
                     (long long)p->num_params);
  const elmo_tf_config *cfg = &p->cfg;
  const int H = cfg->hidden;
  elmo_tf_pool_backward(dpooled, c->seq_start, c->B, H, cfg->pooling, c->d_x);
  for (int i = cfg->layers - 1; i >= 0; i--) {
    const float *in = i > 0 ? c->layer[i - 1].out : c->x0;
    layer_backward(cfg, &p->layer[i], &grads->layer[i], &c->layer[i], c, in);
  }
  elmo_tf_layernorm_backward(c->d_x, c->emb_xhat, c->emb_rstd, p->emb_ln_w, c->ntok, H, c->d_x,
                             grads->emb_ln_w, grads->emb_ln_b);
  elmo_tf_embed_backward(c->d_x, c->tok_id, c->tok_pos, c->ntok, H, grads->word_emb, grads->pos_emb,
                         grads->type_emb);
  return ELMO_OK;
}
