/* bench_peaks.c: the two ceilings scripts/bench.sh divides by, measured on the card at hand the way
 * issue #5 measured them on the H100: device-to-device copy bandwidth (cudaMemcpy of 1 GiB, bytes read
 * plus bytes written over the time, best of 10) and dense BF16 GEMM throughput (cuBLASLt's first
 * heuristic algorithm, 8192 x 8192 x 8192, FP32 accumulation, best of 10 after 3 warm-ups).
 *   bench_peaks            prints "PEAKS tbs=<TB/s> tflops=<TFLOP/s> card=<name>"
 * A measurement tool, not a test. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define LK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s: status %d\n", #x, (int)s_); exit(1); } } while (0)

/* Best time (ms) of `reps` single runs of what run() enqueues. */
static float best_ms(void (*run)(void *), void *arg, int reps) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float best = 1e30f;
  for (int i = 0; i < reps; i++) {
    CK(cudaEventRecord(e0, 0));
    run(arg);
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (ms < best) best = ms;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best;
}

typedef struct copy_job { void *dst; const void *src; size_t bytes; } copy_job;
static void run_copy(void *p) {
  const copy_job *j = p;
  CK(cudaMemcpyAsync(j->dst, j->src, j->bytes, cudaMemcpyDeviceToDevice, 0));
}

typedef struct gemm_job {
  cublasLtHandle_t lt;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t l;
  cublasLtMatmulAlgo_t algo;
  const void *a, *b;
  void *c, *ws;
  size_t ws_bytes;
} gemm_job;
static void run_gemm(void *p) {
  const gemm_job *g = p;
  const float alpha = 1.0f, beta = 0.0f;
  LK(cublasLtMatmul(g->lt, g->op, &alpha, g->a, g->l, g->b, g->l, &beta, g->c, g->l, g->c, g->l, &g->algo, g->ws,
                    g->ws_bytes, 0));
}

int main(void) {
  int dev = 0;
  struct cudaDeviceProp prop;
  CK(cudaGetDevice(&dev));
  CK(cudaGetDeviceProperties(&prop, dev));

  copy_job cj;
  cj.bytes = (size_t)1 << 30;
  CK(cudaMalloc(&cj.dst, cj.bytes));
  CK(cudaMalloc((void **)&cj.src, cj.bytes));
  CK(cudaMemset(cj.dst, 0, cj.bytes));
  CK(cudaMemset((void *)cj.src, 1, cj.bytes));
  run_copy(&cj);
  const float copy_ms = best_ms(run_copy, &cj, 10);
  const double tbs = 2.0 * (double)cj.bytes / (copy_ms * 1e-3) / 1e12;
  CK(cudaFree(cj.dst));
  CK(cudaFree((void *)cj.src));

  const int64_t n = 8192;
  gemm_job g;
  g.ws_bytes = (size_t)32 << 20;
  CK(cudaMalloc((void **)&g.a, (size_t)(n * n * 2)));
  CK(cudaMalloc((void **)&g.b, (size_t)(n * n * 2)));
  CK(cudaMalloc(&g.c, (size_t)(n * n * 2)));
  CK(cudaMalloc(&g.ws, g.ws_bytes));
  { /* random BF16 values of magnitude [1, 2), either sign (zeros would draw less power and flatter the rate) */
    uint16_t *h = malloc((size_t)(n * n * 2));
    if (!h) return 1;
    uint64_t r = 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < n * n; i++) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      h[i] = (uint16_t)(0x3F80u | ((r >> 63) << 15)) ^ (uint16_t)((r >> 40) & 0x7Fu); /* +-[1, 2) */
    }
    CK(cudaMemcpy((void *)g.a, h, (size_t)(n * n * 2), cudaMemcpyHostToDevice));
    CK(cudaMemcpy((void *)g.b, h, (size_t)(n * n * 2), cudaMemcpyHostToDevice));
    free(h);
  }
  LK(cublasLtCreate(&g.lt));
  LK(cublasLtMatmulDescCreate(&g.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t tr = CUBLAS_OP_T, nt = CUBLAS_OP_N;
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr));
  LK(cublasLtMatmulDescSetAttribute(g.op, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
  LK(cublasLtMatrixLayoutCreate(&g.l, CUDA_R_16BF, (uint64_t)n, (uint64_t)n, n));
  cublasLtMatmulPreference_t pref;
  LK(cublasLtMatmulPreferenceCreate(&pref));
  LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g.ws_bytes,
                                          sizeof g.ws_bytes));
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  LK(cublasLtMatmulAlgoGetHeuristic(g.lt, g.op, g.l, g.l, g.l, g.l, pref, 1, &res, &found));
  if (!found) {
    fprintf(stderr, "bench_peaks: cuBLASLt offers no BF16 GEMM for 8192^3 on the %s\n", prop.name);
    return 1;
  }
  g.algo = res.algo;
  for (int i = 0; i < 3; i++) run_gemm(&g);
  const float gemm_ms = best_ms(run_gemm, &g, 10);
  const double tflops = 2.0 * (double)n * (double)n * (double)n / (gemm_ms * 1e-3) / 1e12;
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(g.l);
  cublasLtMatmulDescDestroy(g.op);
  cublasLtDestroy(g.lt);
  CK(cudaFree((void *)g.a));
  CK(cudaFree((void *)g.b));
  CK(cudaFree(g.c));
  CK(cudaFree(g.ws));
  printf("PEAKS tbs=%.2f tflops=%.0f card=%s\n", tbs, tflops, prop.name);
  return 0;
}
