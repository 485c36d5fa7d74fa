/* bench_gemm.c: how far the heuristic's first cuBLASLt algorithm is from the fastest of its
 * candidates, on the GEMM shapes of a BERT-base step (B 128 x T 128 = 16,384 tokens) and the FP8
 * classifier logits. Built and run by scripts/gpu_run.sh / gpu_remote.sh (BENCH_GEMM=1):
 *   bench_gemm [tokens [hidden [ffn]]]
 * Shapes use the encoder helper's row-major convention (cuda/transformer.cu: C[m, n] = op(A) op(B),
 * cuBLASLt's A is our B). Per shape: the heuristic's candidates (up to 16), each timed over 20 runs
 * after 3 warm-ups; prints the first's time, the best's, and TFLOP/s. A measurement tool, not a test. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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

int main(int argc, char **argv) {
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
    cublasLtMatmulPreference_t pref;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &WS, sizeof WS));
    cublasLtMatmulHeuristicResult_t res[16];
    int found = 0;
    LK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, 16, res, &found));
    float first = -1, best = 1e30f;
    int bi = -1;
    for (int i = 0; i < found; i++) {
      float us = time_algo(d, la, lb, lc, &res[i].algo, pa, pb, c, s->beta);
      if (i == 0) first = us;
      if (us > 0 && us < best) { best = us; bi = i; }
    }
    const double fl = 2.0 * s->m * s->n * s->k;
    printf("%-24s %5d %9.1f %8.0f %9.1f %8.0f %5d %6.1f%%\n", s->name, found, first, fl / first * 1e-6, best,
           fl / best * 1e-6, bi, 100.0 * (first - best) / first);
    if (s->per_layer) {
      layer_first += s->per_layer * first;
      layer_best += s->per_layer * best;
    }
    cublasLtMatmulPreferenceDestroy(pref);
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
