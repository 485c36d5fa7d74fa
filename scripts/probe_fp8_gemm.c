/* probe_fp8_gemm.c: which cuBLASLt FP8 (e4m3 x e4m3, TN) GEMM forms run on this card and how fast, at
 * the encoder's BERT-base shapes (16,384 tokens): FP32 output unscaled, BF16/FP32 output with the A/B
 * scale pointers, with a device alpha (pointer mode device), with a BF16 bias epilogue; and, for an FP8
 * backward, the scale modes that need no per-tensor amax (a scale per row / column: OUTER_VEC_32F; a
 * scale per 128 elements of a row of x and per 128 x 128 block of w: VEC128_32F / BLK128x128_32F), also
 * with x in E5M2 (a gradient), and with the bias epilogue (a scale per output column would let the FP8
 * forward's q, k and v, each with its own weight scale, be one [M, 3 H] GEMM as in the BF16 path: compare
 * "qkv fused" against three "qkv-part"). A measurement
 * tool, not a test: status 0 = ran (the value checks the scaling), 2015 = cublasLtMatmul answered
 * NOT_SUPPORTED. PROBE_ALL=1: only the trainer's forms (alpha on the device + bias, FP32 out with alpha on the
 * device, row/column vectors + bias, FP32 out with row/column vectors), every algorithm the heuristic offers
 * (up to 32) timed, listed before the first's line. Build: gcc -O2 -std=c11 -I$CUDA_HOME/include scripts/probe_fp8_gemm.c
 *   -L$CUDA_HOME/lib64 -lcudart -lcublasLt -o probe_fp8_gemm */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
static cublasLtHandle_t lt;
static void *ws;
static const size_t WS = (size_t)32 << 20;

typedef struct variant { const char *name; int d_bf16, scales, bias, alpha_dev, mode_w, mode_x, x_e5m2; } variant;

static float run(const variant *v, int64_t M, int64_t N, int64_t K, int64_t ldc, const void *x, const void *w, void *d,
                 const float *sa, const float *sb, const void *bias, const float *alpha_d, int *status) {
  cublasLtMatmulDesc_t desc;
  cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  int8_t fast = 1;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast);
  if (v->scales) {   /* cuBLASLt's A is our w, its B our x */
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb, sizeof sb);
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa, sizeof sa);
    if (v->mode_w || v->mode_x) {
      const int32_t mw = v->mode_w, mx = v->mode_x;
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mw, sizeof mw);
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mx, sizeof mx);
    }
  }
  if (v->bias) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    cudaDataType_t bt = CUDA_R_16BF;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
  }
  if (v->alpha_dev) {
    cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_DEVICE;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm);
  }
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, N, K);
  cublasLtMatrixLayoutCreate(&lb, v->x_e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3, K, M, K);
  cublasLtMatrixLayoutCreate(&lc, v->d_bf16 ? CUDA_R_16BF : CUDA_R_32F, N, M, ldc);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  uint64_t wsb = WS;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
  const int all = getenv("PROBE_ALL") != NULL;
  cublasLtMatmulHeuristicResult_t res[32];
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, all ? 32 : 8, res, &found);
  char line[2048];
  int len = 0;
  line[0] = 0;
  float best = -1.0f;
  *status = st != CUBLAS_STATUS_SUCCESS ? 1000 + (int)st : found == 0 ? 999 : 0;
  static const float one = 1.0f, zero = 0.0f;
  static float *zero_d = NULL;
  if (!zero_d) { CK(cudaMalloc((void **)&zero_d, 4)); CK(cudaMemset(zero_d, 0, 4)); }
  const void *alpha = v->alpha_dev ? (const void *)alpha_d : (const void *)&one;
  const void *beta = v->alpha_dev ? (const void *)zero_d : (const void *)&zero;
  for (int i = 0; i < found && *status == 0; i++) {
    cublasStatus_t s = cublasLtMatmul(lt, desc, alpha, w, la, x, lb, beta, d, lc, d, lc, &res[i].algo, ws, WS, 0);
    if (s != CUBLAS_STATUS_SUCCESS) { if (i == 0) *status = 2000 + (int)s; continue; }
    CK(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    cudaEventRecord(e0, 0);
    for (int r = 0; r < 20; r++) cublasLtMatmul(lt, desc, alpha, w, la, x, lb, beta, d, lc, d, lc, &res[i].algo, ws, WS, 0);
    cudaEventRecord(e1, 0);
    CK(cudaEventSynchronize(e1));
    float ms; cudaEventElapsedTime(&ms, e0, e1);
    ms = ms / 20 * 1000;
    if (i == 0) best = ms;   /* the heuristic's first */
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    if (!all) break;
    if (len < (int)sizeof line - 32) len += snprintf(line + len, sizeof line - len, " #%d %.1f", i, ms);
  }
  if (all && len) printf("    all %d algorithms (us):%s\n", found, line);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  return best;
}

static float bf(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

int main(void) {
  cublasLtCreate(&lt);
  CK(cudaMalloc(&ws, WS));
  const int64_t M = 16384;
  struct { const char *name; int64_t N, K, ldc; } shapes[] = {{"qkv-part (N 768, ldc 2304)", 768, 768, 2304},
                                                             {"qkv fused (N 2304, K 768)", 2304, 768, 2304},
                                                             {"o / ff2-like (N 768, K 768)", 768, 768, 768},
                                                             {"ff1 (N 3072, K 768)", 3072, 768, 3072},
                                                             {"ff2 (N 768, K 3072)", 768, 3072, 768}};
  const int OV = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, V128 = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const int B128 = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  const variant vars[] = {{"fp32 out, unscaled (now)", 0, 0, 0, 0, 0, 0, 0},
                          {"bf16 out, A/B scales + bias", 1, 1, 1, 0, 0, 0, 0},
                          {"bf16 out, A/B scales", 1, 1, 0, 0, 0, 0, 0},
                          {"fp32 out, A/B scales", 0, 1, 0, 0, 0, 0, 0},
                          {"bf16 out, alpha dev + bias", 1, 0, 1, 1, 0, 0, 0},
                          {"fp32 out, alpha dev", 0, 0, 0, 1, 0, 0, 0},
                          {"bf16 out, unscaled + bias", 1, 0, 1, 0, 0, 0, 0},
                          {"bf16 out, row/col vectors", 1, 1, 0, 0, OV, OV, 0},
                          {"bf16 out, row/col vectors + bias", 1, 1, 1, 0, OV, OV, 0},
                          {"fp32 out, row/col vectors", 0, 1, 0, 0, OV, OV, 0},
                          {"bf16 out, row/col, x e5m2", 1, 1, 0, 0, OV, OV, 1},
                          {"bf16 out, w blk128 x vec128", 1, 1, 0, 0, B128, V128, 0},
                          {"bf16 out, w vec128 x vec128", 1, 1, 0, 0, V128, V128, 0},
                          {"bf16 out, blk128 x vec128, x e5m2", 1, 1, 0, 0, B128, V128, 1}};
  uint8_t *x, *w; void *d; float *sc; uint16_t *bias;
  const int64_t K = 3072, N = 3072;
  CK(cudaMalloc((void **)&x, M * K)); CK(cudaMalloc((void **)&w, N * K)); CK(cudaMalloc(&d, M * 3072 * 4));
  const size_t NS = (size_t)(K / 128) * M;   /* enough for every scale mode's tensor at these shapes */
  CK(cudaMalloc((void **)&sc, 16)); CK(cudaMalloc((void **)&bias, N * 2));
  float *sx, *sw;
  CK(cudaMalloc((void **)&sx, NS * 4)); CK(cudaMalloc((void **)&sw, NS * 4));
  {
    float *h = malloc(NS * 4);
    for (size_t i = 0; i < NS; i++) h[i] = 2.0f;
    CK(cudaMemcpy(sx, h, NS * 4, cudaMemcpyHostToDevice));
    for (size_t i = 0; i < NS; i++) h[i] = 3.0f;
    CK(cudaMemcpy(sw, h, NS * 4, cudaMemcpyHostToDevice));
    free(h);
  }
  /* e4m3 0x38 = 1.0, 0x30 = 0.5: x all 1, w all 0.5 -> acc = 0.5 K; scales 2 and 3; bias 1.0 */
  CK(cudaMemset(x, 0x38, M * K)); CK(cudaMemset(w, 0x30, N * K));
  float hs[4] = {2.0f, 3.0f, 6.0f, 0.0f};
  CK(cudaMemcpy(sc, hs, 16, cudaMemcpyHostToDevice));
  uint16_t *hb = malloc(N * 2);
  for (int i = 0; i < N; i++) hb[i] = 0x3F80;
  CK(cudaMemcpy(bias, hb, N * 2, cudaMemcpyHostToDevice));
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    printf("%s\n", shapes[s].name);
    for (size_t v = 0; v < sizeof vars / sizeof vars[0]; v++) {
      if (getenv("PROBE_ALL") && v != 4 && v != 5 && v != 8 && v != 9) continue;
      int status = 0;
      CK(cudaMemset(d, 0, M * 3072 * 4));
      const int vec = vars[v].mode_w || vars[v].mode_x;
      const float us = run(&vars[v], M, shapes[s].N, shapes[s].K, shapes[s].ldc, x, w, d, vec ? sx : sc, vec ? sw : sc + 1,
                           bias, sc + 2, &status);
      float got = NAN;
      if (us > 0) {
        if (vars[v].d_bf16) { uint16_t h; CK(cudaMemcpy(&h, (uint16_t *)d + 5 * shapes[s].ldc + 7, 2, cudaMemcpyDeviceToHost)); got = bf(h); }
        else CK(cudaMemcpy(&got, (float *)d + 5 * shapes[s].ldc + 7, 4, cudaMemcpyDeviceToHost));
      }
      const double acc = 0.5 * shapes[s].K;
      const double want = acc * ((vars[v].scales ? 6.0 : 1.0) * (vars[v].alpha_dev ? 6.0 : 1.0)) + (vars[v].bias ? 1.0 : 0.0);
      printf("  %-30s status %4d  %8.1f us  %7.1f TFLOP/s  value %g (want %g)\n", vars[v].name, status, us,
             us > 0 ? 2.0 * M * shapes[s].N * shapes[s].K / (us * 1e-6) / 1e12 : 0.0, got, want);
    }
  }
  return 0;
}
