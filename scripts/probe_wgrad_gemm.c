/* probe_wgrad_gemm.c: the encoder's BF16 weight-gradient GEMMs as the trainer calls them,
 * dw[out, in] (FP32, beta 1) += dy[M, out]^T x[M, in], and its BF16 input gradients, dx[M, in] (+)= dy[M, out]
 * w[out, in] (PROBE_WGRAD_ONLY=1: the first only), M = 16,384 tokens: every algorithm cuBLASLt's
 * heuristic offers (up to 32), with its split-K count and reduction scheme, timed (median of 20 calls,
 * the split-K reduce included). Answers whether a form without the separate split-K reduce (or a faster
 * one) exists for these shapes. A measurement tool, not a test.
 * Build: gcc -O2 -std=c11 -I$CUDA_HOME/include scripts/probe_wgrad_gemm.c -L$CUDA_HOME/lib64 -lcudart
 *   -lcublasLt -o probe_wgrad_gemm */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define LK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s: %d\n", #x, (int)s_); exit(1); } } while (0)

static int cmpf(const void *a, const void *b) { float x = *(const float *)a, y = *(const float *)b; return (x > y) - (x < y); }

int main(void) {
  cublasLtHandle_t lt;
  LK(cublasLtCreate(&lt));
  const size_t WS = (size_t)32 << 20;
  void *ws, *x, *dy, *w, *c;
  const int64_t M = 16384;
  CK(cudaMalloc(&ws, WS));
  CK(cudaMalloc(&x, (size_t)M * 3072 * 2));
  CK(cudaMalloc(&dy, (size_t)M * 3072 * 2));
  CK(cudaMalloc(&w, (size_t)3072 * 3072 * 2));
  CK(cudaMalloc(&c, (size_t)M * 3072 * 4));
  CK(cudaMemset(w, 0x3c, (size_t)3072 * 3072 * 2));
  CK(cudaMemset(x, 0x3c, (size_t)M * 3072 * 2));   /* small bf16 values: the time does not depend on them */
  CK(cudaMemset(dy, 0x3c, (size_t)M * 3072 * 2));
  CK(cudaMemset(c, 0, (size_t)M * 3072 * 4));
  /* column-major views (cuBLASLt's A is the trainer's B): weight gradient C^T[in, out] += x^T[in, M] (dy^T[out, M])^T;
   * input gradient C^T[in, M] (+)= w^T[in, out] dy^T[out, M] */
  const struct { const char *name; int wgrad; int64_t in, out; int c_f32; float beta; } shapes[] = {
      {"weight gradient ff1 (out 3072, in 768)", 1, 768, 3072, 1, 1.0f},
      {"weight gradient ff2 (out 768, in 3072)", 1, 3072, 768, 1, 1.0f},
      {"weight gradient qkv (out 2304, in 768)", 1, 768, 2304, 1, 1.0f},
      {"weight gradient o (out 768, in 768)", 1, 768, 768, 1, 1.0f},
      {"input gradient qkv (K 2304, FP32 += )", 0, 768, 2304, 1, 1.0f},
      {"input gradient ff1 (K 3072, FP32 += )", 0, 768, 3072, 1, 1.0f},
      {"input gradient ff2 (K 768, BF16 out)", 0, 3072, 768, 0, 0.0f},
      {"input gradient o (K 768, BF16 out)", 0, 768, 768, 0, 0.0f}};
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const int only_w = getenv("PROBE_WGRAD_ONLY") != NULL;
  for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++) {
    const int64_t in = shapes[si].in, out = shapes[si].out;
    const int wg = shapes[si].wgrad;
    if (only_w && !wg) continue;
    cublasLtMatmulDesc_t desc;
    LK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_N, tb = wg ? CUBLAS_OP_T : CUBLAS_OP_N;
    LK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    const cudaDataType_t ct = shapes[si].c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    if (wg) {
      LK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, in, M, in));
      LK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, out, M, out));
      LK(cublasLtMatrixLayoutCreate(&lc, ct, in, out, in));
    } else {
      LK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, in, out, in));
      LK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, out, M, out));
      LK(cublasLtMatrixLayoutCreate(&lc, ct, in, M, in));
    }
    for (int mask = 0; mask < 2; mask++) {
      cublasLtMatmulPreference_t pref;
      LK(cublasLtMatmulPreferenceCreate(&pref));
      const uint64_t wsb = WS;
      LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
      const uint32_t al = 256;   /* as the trainer states its buffers' alignment (it can change the ranking) */
      LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al));
      LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al));
      LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al));
      LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al));
      if (mask) {
        const uint32_t m = CUBLASLT_REDUCTION_SCHEME_NONE;
        LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &m, sizeof m));
      }
      cublasLtMatmulHeuristicResult_t res[32];
      int found = 0;
      cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &found);
      printf("%s, %s: %d algorithms\n", shapes[si].name, mask ? "reduction scheme NONE only" : "default preference", found);
      for (int i = 0; i < found; i++) {
        int32_t splitk = -1, red = -1, tile = -1, stages = -1;
        size_t sz;
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &sz);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &sz);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &sz);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &sz);
        const float alpha = 1.0f, beta = shapes[si].beta;
        float t[20];
        int bad = 0;
        for (int r = -3; r < 20 && !bad; r++) {
          CK(cudaEventRecord(e0, 0));
          bad = cublasLtMatmul(lt, desc, &alpha, wg ? x : w, la, dy, lb, &beta, c, lc, c, lc, &res[i].algo, ws, WS, 0) !=
                CUBLAS_STATUS_SUCCESS;
          CK(cudaEventRecord(e1, 0));
          CK(cudaEventSynchronize(e1));
          if (r >= 0) CK(cudaEventElapsedTime(&t[r], e0, e1));
        }
        if (bad) { printf("  #%-2d refused\n", i); continue; }
        qsort(t, 20, sizeof t[0], cmpf);
        printf("  #%-2d %8.1f us  split-K %d  reduction %d  tile %d  stages %d  workspace %zu\n", i, 1e3 * t[10], splitk,
               red, tile, stages, res[i].workspaceSize);
      }
      LK(cublasLtMatmulPreferenceDestroy(pref));
    }
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
  }
  return 0;
}
