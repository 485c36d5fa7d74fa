/* bench_gemm.c: how far the heuristic's first cuBLASLt algorithm is from the fastest of its
 * candidates, on the GEMM shapes of a BERT-base step (B 128 x T 128 = 16,384 tokens) and the FP8
 * classifier logits. (This default table keeps the fourth round's forms: q, k and v as three H x H GEMMs,
 * since fused into one 3H x H GEMM in cuda/transformer.cu; the fp8 mode below uses the fused one.) Built and run by scripts/gpu_run.sh / gpu_remote.sh (BENCH_GEMM=1):
 *   bench_gemm [tokens [hidden [ffn]]]
 *   bench_gemm fp8 [tokens [hidden [ffn]]]: every GEMM of an encoder layer (fused q/k/v) in the "TN" form
 *     that Hopper's FP8 GEMMs need (both operands K-major), once with BF16 operands and once with FP8 ones
 *     (forward E4M3 x E4M3 with fast accumulation; dgrad and wgrad E5M2 x E4M3 without, as torchao's
 *     Float8Linear), BF16 output, random operands: what FP8 GEMMs alone would save per layer, casts,
 *     transposes and scales left out.
 * Shapes use the encoder helper's row-major convention (cuda/transformer.cu: C[m, n] = op(A) op(B),
 * cuBLASLt's A is our B). Per shape: the heuristic's candidates (up to 16), each timed over 20 runs
 * after 3 warm-ups; prints the first's time, the best's, and TFLOP/s. A measurement tool, not a test. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define LK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s: status %d\n", #x, (int)s_); exit(1); } } while (0)

typedef struct shape {
  const char *name;
  int ta, tb;            /* row-major: C[m, n] = op(A) op(B) */
  int64_t m, n, k;
  int bias, c_f32, fp8;  /* fp8: E4M3 TN, column-major as cuda/blas.c (classifier logits) */
  float beta;
  int per_layer;         /* calls per encoder layer (0: classifier) */
} shape;

static cublasLtHandle_t lt;
static void *ws;
static const size_t WS = (size_t)32 << 20;

static float time_algo(cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                       cublasLtMatrixLayout_t lc, const cublasLtMatmulAlgo_t *algo, const void *a, const void *b,
                       void *c, float beta) {
  const float alpha = 1.0f;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; i++)
    if (cublasLtMatmul(lt, d, &alpha, a, la, b, lb, &beta, c, lc, c, lc, algo, ws, WS, 0) != CUBLAS_STATUS_SUCCESS)
      return -1.0f;
  CK(cudaEventRecord(e0, 0));
  for (int i = 0; i < 20; i++) LK(cublasLtMatmul(lt, d, &alpha, a, la, b, lb, &beta, c, lc, c, lc, algo, ws, WS, 0));
  CK(cudaEventRecord(e1, 0));
  CK(cudaEventSynchronize(e1));
  float ms;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / 20.0f * 1000.0f; /* us */
}

/* Times the heuristic's candidates (up to 16) for d; *first: the first's us, *best: the fastest's. */
static int time_candidates(cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                           cublasLtMatrixLayout_t lc, const void *pa, const void *pb, void *c, float beta, float *first,
                           float *best, int *best_i) {
  cublasLtMatmulPreference_t pref;
  LK(cublasLtMatmulPreferenceCreate(&pref));
  LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS));
  cublasLtMatmulHeuristicResult_t res[16];
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, 16, res, &found) != CUBLAS_STATUS_SUCCESS) found = 0;
  cublasLtMatmulPreferenceDestroy(pref);
  *first = -1;
  *best = 1e30f;
  *best_i = -1;
  for (int i = 0; i < found; i++) {
    float us = time_algo(d, la, lb, lc, &res[i].algo, pa, pb, c, beta);
    if (i == 0) *first = us;
    if (us > 0 && us < *best) { *best = us; *best_i = i; }
  }
  return found;
}

/* Random bytes in [p, p + n): one 64 MiB host block copied over and over (e4m3 codes 0x7F / 0xFF, the NaNs,
 * become 0x7E; the values' sizes do not matter here, only that the tensor cores see varied data). */
static void fill_random(void *p, size_t n) {
  const size_t blk = (size_t)64 << 20;
  unsigned char *h = malloc(blk);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < blk; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    unsigned char v = (unsigned char)(x >> 24) & 0xBF; /* clear bit 6: e4m3 |v| < 2, bf16 high bytes small */
    h[i] = (v & 0x7F) == 0x7F ? (unsigned char)(v - 1) : v;
  }
  for (size_t o = 0; o < n; o += blk) CK(cudaMemcpy((char *)p + o, h, n - o < blk ? n - o : blk, cudaMemcpyHostToDevice));
  free(h);
}

/* bench_gemm fp8: BF16 against FP8 for an encoder layer's GEMMs, all in the TN form. */
static int fp8_encoder(int64_t M, int64_t H, int64_t F) {
  struct { const char *name; int64_t m, n, k; int grad; } g[] = {
      /* column-major D[m, n] = A^T B, A [k, m] and B [k, n] K-major: forward (out, tokens, in), dgrad
       * (in, tokens, out), wgrad (out, in, tokens) */
      {"fwd  qkv", 3 * H, M, H, 0}, {"fwd  o", H, M, H, 0}, {"fwd  ff1", F, M, H, 0}, {"fwd  ff2", H, M, F, 0},
      {"dgrad qkv", H, M, 3 * H, 1}, {"dgrad o", H, M, H, 1}, {"dgrad ff1", H, M, F, 1}, {"dgrad ff2", F, M, H, 1},
      {"wgrad qkv", 3 * H, H, M, 1}, {"wgrad o", H, H, M, 1}, {"wgrad ff1", F, H, M, 1}, {"wgrad ff2", H, F, M, 1},
  };
  const int n = (int)(sizeof g / sizeof g[0]);
  size_t big = 0;
  for (int i = 0; i < n; i++) {
    size_t e = (size_t)(g[i].m > g[i].n ? g[i].m : g[i].n) * (size_t)(g[i].k > g[i].n ? g[i].k : g[i].n) * 2;
    if (e > big) big = e;
  }
  void *a, *b, *c;
  CK(cudaMalloc(&a, big));
  CK(cudaMalloc(&b, big));
  CK(cudaMalloc(&c, big));
  fill_random(a, big);
  fill_random(b, big);
  printf("%-10s %6s %6s %6s %9s %8s %9s %8s %7s\n", "gemm", "m", "n", "k", "bf16 us", "TFLOP/s", "fp8 us", "TFLOP/s",
         "saves");
  double t16[3] = {0, 0, 0}, t8[3] = {0, 0, 0};
  for (int i = 0; i < n; i++) {
    float us[2];
    for (int v = 0; v < 2; v++) { /* 0: BF16, 1: FP8 */
      cublasLtMatmulDesc_t d;
      cublasLtMatrixLayout_t la, lb, lc;
      LK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
      LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
      LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
      const cudaDataType_t ta = v ? CUDA_R_8F_E4M3 : CUDA_R_16BF,
                           tb = v ? (g[i].grad ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3) : CUDA_R_16BF;
      if (v && !g[i].grad) {
        const int8_t fast = 1;
        LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
      }
      LK(cublasLtMatrixLayoutCreate(&la, ta, g[i].k, g[i].m, g[i].k));
      LK(cublasLtMatrixLayoutCreate(&lb, tb, g[i].k, g[i].n, g[i].k));
      LK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, g[i].m, g[i].n, g[i].m));
      float best;
      int bi;
      if (!time_candidates(d, la, lb, lc, a, b, c, 0.0f, &us[v], &best, &bi)) us[v] = -1;
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(d);
    }
    const double fl = 2.0 * g[i].m * g[i].n * g[i].k;
    printf("%-10s %6lld %6lld %6lld %9.1f %8.0f %9.1f %8.0f %6.1f%%\n", g[i].name, (long long)g[i].m, (long long)g[i].n,
           (long long)g[i].k, us[0], fl / us[0] * 1e-6, us[1], fl / us[1] * 1e-6, 100.0 * (us[0] - us[1]) / us[0]);
    t16[i / 4] += us[0];
    t8[i / 4] += us[1];
  }
  const char *part[3] = {"forward", "dgrad", "wgrad"};
  for (int p = 0; p < 3; p++)
    printf("layer %-8s bf16 %8.1f us, fp8 %8.1f us: saves %.1f us (%.0f%%)\n", part[p], t16[p], t8[p], t16[p] - t8[p],
           100.0 * (t16[p] - t8[p]) / t16[p]);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "fp8")) {
    LK(cublasLtCreate(&lt));
    CK(cudaMalloc(&ws, WS));
    return fp8_encoder(argc > 2 ? atoll(argv[2]) : 16384, argc > 3 ? atoll(argv[3]) : 768,
                       argc > 4 ? atoll(argv[4]) : 3072);
  }
  const int64_t M = argc > 1 ? atoll(argv[1]) : 16384, H = argc > 2 ? atoll(argv[2]) : 768,
                F = argc > 3 ? atoll(argv[3]) : 3072;
  const shape shapes[] = {
      {"fwd qkv  x W^T +b bf16", 0, 1, M, H, H, 1, 0, 0, 0.0f, 3},
      {"fwd o    x W^T   f32", 0, 1, M, H, H, 0, 1, 0, 0.0f, 1},
      {"fwd ff1  x W^T +b bf16", 0, 1, M, F, H, 1, 0, 0, 0.0f, 1},
      {"fwd ff2  x W^T   f32", 0, 1, M, H, F, 0, 1, 0, 0.0f, 1},
      {"dw  HxH  dy^T x  f32+=", 1, 0, H, H, M, 0, 1, 0, 1.0f, 4},
      {"dw  ff1  dy^T x  f32+=", 1, 0, F, H, M, 0, 1, 0, 1.0f, 1},
      {"dw  ff2  dy^T x  f32+=", 1, 0, H, F, M, 0, 1, 0, 1.0f, 1},
      {"dx  o    dy W    bf16", 0, 0, M, H, H, 0, 0, 0, 0.0f, 1},
      {"dx  qkv  dy W    f32+=", 0, 0, M, H, H, 0, 1, 0, 1.0f, 3},
      {"dx  ff2  dy W    bf16", 0, 0, M, F, H, 0, 0, 0, 0.0f, 1},
      {"dx  ff1  dy W    f32+=", 0, 0, M, H, F, 0, 1, 0, 1.0f, 1},
      {"cls logits e4m3 2.8M", 1, 0, 2812288, 128, 768, 0, 0, 1, 0.0f, 0},
      {"cls logits e4m3 352K", 1, 0, 351536, 128, 768, 0, 0, 1, 0.0f, 0},
  };
  const int ns = (int)(sizeof shapes / sizeof shapes[0]);
  LK(cublasLtCreate(&lt));
  CK(cudaMalloc(&ws, WS));
  size_t big = (size_t)2812288 * 768 + (size_t)M * F * 4 + 64; /* largest operand, bytes */
  void *a, *b, *c;
  CK(cudaMalloc(&a, big));
  CK(cudaMalloc(&b, big));
  CK(cudaMalloc(&c, big));
  CK(cudaMemset(a, 0x11, big)); /* small finite values in bf16 and e4m3 */
  CK(cudaMemset(b, 0x11, big));
  CK(cudaMemset(c, 0, big));
  void *bias;
  CK(cudaMalloc(&bias, 16 * 4096));
  CK(cudaMemset(bias, 0, 16 * 4096));
  printf("%-24s %5s %9s %8s %9s %8s %5s %7s\n", "shape", "algos", "first us", "TFLOP/s", "best us", "TFLOP/s", "best",
         "gain");
  double layer_first = 0, layer_best = 0;
  for (int si = 0; si < ns; si++) {
    const shape *s = &shapes[si];
    cublasLtMatmulDesc_t d;
    cublasLtMatrixLayout_t la, lb, lc;
    LK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const void *pa, *pb;
    if (s->fp8) { /* column-major D[m, n] = A^T B, A [k, m], B [k, n] */
      const cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
      LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
      LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
      LK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, s->k, s->m, s->k));
      LK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, s->k, s->n, s->k));
      LK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, s->m, s->n, s->m));
      pa = a;
      pb = b;
    } else { /* row-major C[m, n] = column-major C^T[n, m] = op(B)^T op(A)^T */
      const cublasOperation_t oa = s->tb ? CUBLAS_OP_T : CUBLAS_OP_N, ob = s->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof oa));
      LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof ob));
      const int64_t lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
      LK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s->tb ? s->k : s->n, s->tb ? s->n : s->k, ldb));
      LK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s->ta ? s->m : s->k, s->ta ? s->k : s->m, lda));
      LK(cublasLtMatrixLayoutCreate(&lc, s->c_f32 ? CUDA_R_32F : CUDA_R_16BF, s->n, s->m, s->n));
      if (s->bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
      }
      pa = b; /* cuBLASLt's A is our B */
      pb = a;
    }
    float first, best;
    int bi;
    const int found = time_candidates(d, la, lb, lc, pa, pb, c, s->beta, &first, &best, &bi);
    const double fl = 2.0 * s->m * s->n * s->k;
    printf("%-24s %5d %9.1f %8.0f %9.1f %8.0f %5d %6.1f%%\n", s->name, found, first, fl / first * 1e-6, best,
           fl / best * 1e-6, bi, 100.0 * (first - best) / first);
    if (s->per_layer) {
      layer_first += s->per_layer * first;
      layer_best += s->per_layer * best;
    }
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(d);
  }
  printf("encoder layer GEMMs (fwd + bwd, no recompute): first %.1f us, best %.1f us (%.1f%%); x12 layers: %.2f -> "
         "%.2f ms\n", layer_first, layer_best, 100.0 * (layer_first - layer_best) / layer_first, 12 * layer_first / 1e3,
         12 * layer_best / 1e3);
  return 0;
}
