/* bench_cls.c: times the CUDA classifier step (cuda/classifier.h) at a given shape: the whole
 * chunked step (logits, gradient, dX, fused SR update) and each op summed over the chunks, with
 * CUDA events, median of the timed steps after warm-up; prints ms, effective TFLOP/s (3 GEMM-shaped
 * products of 2 B L d each), the share of the roofline and device memory. Roofline: the weights
 * read once and written once (2 L d bytes per element size) at 2.88 TB/s, or 6 B L d FLOPs at
 * 764 TFLOP/s (BF16 dense), whichever is longer. Weights are random e4m3/bf16 codes, inputs
 * random. Built by scripts/gpu_run.sh against the static libraries (not part of the test suites).
 *
 *   bench_cls L B d chunk dtype(fp8|bf16|fp32) input(fp8|bf16) steps [piece [flags]]
 *   piece: labels per L2-resident piece (0: from the L2 size; >= chunk: none);
 *   flags: ELMO_CLS_BENCH_* (1: constant SR bits, timing only); BENCH_WD=x in the environment: weight
 *   decay x instead of 1e-4 (0 is training's default) */
#include "cuda/blas.h"
#include "cuda/classifier.h"
#include "cuda/classifier_fast.h"
#include "cuda/pool.h"
#include "numerics.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
  fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); exit(1); } } while (0)

static uint64_t rng = 0x1234567;
static uint32_t next_u32(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33);
}
static float next_normal(void) {
  float s = 0;
  for (int i = 0; i < 4; i++) s += (float)next_u32() / 4294967296.0f - 0.5f;
  return s * 1.7f;
}

/* Random weights: a 16 MiB host tile of codes uploaded over and over. */
static void fill_weights(void *W, size_t bytes, elmo_dtype dt, float scale) {
  size_t tile = (size_t)16 << 20;
  uint8_t *h = malloc(tile);
  size_t es = elmo_dtype_size(dt);
  for (size_t i = 0; i < tile / es; i++) {
    float v = scale * next_normal();
    if (dt == ELMO_FP8) h[i] = elmo_f32_to_fp8(v);
    else if (dt == ELMO_BF16) ((uint16_t *)h)[i] = elmo_f32_to_bf16(v);
    else ((float *)h)[i] = v;
  }
  for (size_t off = 0; off < bytes; off += tile)
    CK(cudaMemcpy((char *)W + off, h, bytes - off < tile ? bytes - off : tile, cudaMemcpyHostToDevice));
  free(h);
}

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static elmo_dtype parse_dt(const char *s) {
  return !strcmp(s, "fp8") ? ELMO_FP8 : !strcmp(s, "bf16") ? ELMO_BF16 : ELMO_F32;
}

int main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: %s L B d chunk fp8|bf16|fp32 fp8|bf16 steps [piece [flags]]\n", argv[0]);
    return 2;
  }
  const int64_t L = atoll(argv[1]), B = atoll(argv[2]), d = atoll(argv[3]);
  int64_t chunk = atoll(argv[4]);
  const elmo_dtype dt = parse_dt(argv[5]);
  const int fp8_in = !strcmp(argv[6], "fp8"), steps = atoi(argv[7]);
  const int64_t L_pad = (L + 15) / 16 * 16;
  if (chunk <= 0 || chunk > L_pad) chunk = L_pad;
  chunk = (chunk + 15) / 16 * 16;
  size_t free0, tot;
  CK(cudaFree(0));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  CK(cudaMemGetInfo(&free0, &tot));
  /* weights and inputs */
  size_t wb = (size_t)(L_pad * d) * elmo_dtype_size(dt);
  void *W;
  CK(cudaMalloc(&W, wb));
  fill_weights(W, wb, dt, 0.04f);
  float *hX = malloc(sizeof(float) * (size_t)(B * d));
  for (int64_t i = 0; i < B * d; i++) hX[i] = next_normal() * 0.05f;
  int64_t *hp = malloc(sizeof(int64_t) * (size_t)(B + 1));
  int32_t *hi = malloc(sizeof(int32_t) * (size_t)(B * 5));
  for (int64_t b = 0; b <= B; b++) hp[b] = b * 5;
  for (int64_t b = 0; b < B; b++)
    for (int j = 0; j < 5; j++) hi[b * 5 + j] = (int32_t)((L / 5) * j + next_u32() % (uint32_t)(L / 5));
  float *X, *dX;
  int64_t *yp;
  int32_t *yi;
  CK(cudaMalloc((void **)&X, sizeof(float) * (size_t)(B * d)));
  CK(cudaMalloc((void **)&dX, sizeof(float) * (size_t)(B * d)));
  CK(cudaMalloc((void **)&yp, sizeof(int64_t) * (size_t)(B + 1)));
  CK(cudaMalloc((void **)&yi, sizeof(int32_t) * (size_t)(B * 5)));
  CK(cudaMemcpy(X, hX, sizeof(float) * (size_t)(B * d), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(yp, hp, sizeof(int64_t) * (size_t)(B + 1), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(yi, hi, sizeof(int32_t) * (size_t)(B * 5), cudaMemcpyHostToDevice));
  /* classifier scratch from a pool, as the backend does */
  elmo_cuda_cls c;
  memset(&c, 0, sizeof c);
  c.W = W;
  c.dtype = dt;
  c.L = L;
  c.L_pad = L_pad;
  c.d = d;
  c.fp8_input = fp8_in;
  c.chunk = chunk;
  c.B_cap = (B + 15) / 16 * 16;
  c.piece = argc > 8 ? atoll(argv[8]) : 0;
  c.bench_flags = argc > 9 ? atoi(argv[9]) : 0;
  elmo_pool plan, pool;
  elmo_pool_plan_init(&plan);
  elmo_cuda_cls_layout(&c, &plan);
  size_t ws_bytes = elmo_blas_workspace_bytes();
  elmo_err err = {0};
  if (elmo_pool_alloc(&pool, plan.used + elmo_pool_round(ws_bytes), &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  elmo_cuda_cls_layout(&c, &pool);
  c.blas = elmo_blas_create(elmo_pool_take(&pool, ws_bytes, ELMO_MEM_WORKSPACE), ws_bytes);
  elmo_cuda_cls_init_paths(&c, stdout);
  elmo_cls_hyper h = {.lr = 0.05, .weight_decay = 1e-4, .seed = 1, .step = 0};
  if (getenv("BENCH_WD")) h.weight_decay = atof(getenv("BENCH_WD")); /* e.g. 0: the default of training */
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float *ms = malloc(sizeof(float) * (size_t)(steps > 0 ? steps : 1));
  for (int i = -2; i < steps; i++) { /* two warm-up steps */
    h.step = i + 2;
    CK(cudaEventRecord(e0, s));
    elmo_cuda_cls_step(&c, X, B, yp, yi, &h, 0, dX, s);
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    if (i >= 0) CK(cudaEventElapsedTime(&ms[i], e0, e1));
  }
  CK(cudaGetLastError());
  size_t free1;
  CK(cudaMemGetInfo(&free1, &tot));
  qsort(ms, (size_t)steps, sizeof(float), cmp_f);
  float med = ms[steps / 2];
  /* per op, summed over the pieces, one instrumented step (events around each launch) */
  float t_op[4] = {0, 0, 0, 0};
  const int64_t piece = elmo_cuda_cls_piece(&c);
  const int split_dx = dt != ELMO_F32;
  int first = 1;
  elmo_cuda_cls_cast(&c, X, B, s);
  CK(cudaMemsetAsync(dX, 0, sizeof(float) * (size_t)(B * d), s));
  c.widened_l0 = -1;
  for (int64_t l0 = 0; l0 < L_pad; l0 += chunk) {
    int64_t n = L_pad - l0 < chunk ? L_pad - l0 : chunk;
    for (int64_t p0 = l0; p0 < l0 + n; p0 += piece) {
      const int64_t m = l0 + n - p0 < piece ? l0 + n - p0 : piece;
      int fused = 0; /* logits + grad in one kernel (timed as logits) where the step runs it */
      for (int op = 0; op < 4; op++) {
        float t;
        CK(cudaEventRecord(e0, s));
        if (op == 0) fused = elmo_cuda_cls_logits_grad(&c, B, p0, m, yp, yi, s);
        if (op == 0 && !fused) elmo_cuda_cls_logits(&c, B, p0, m, 0, s);
        if (op == 1 && !fused) elmo_cuda_cls_grad(&c, B, p0, m, yp, yi, 0, s);
        if (op == 2 && split_dx) elmo_cuda_cls_dx_part(&c, B, p0, m, !first, s);
        if (op == 2 && !split_dx) elmo_cuda_cls_dx(&c, B, p0, m, dX, s);
        if (op == 3) elmo_cuda_cls_update(&c, B, p0, m, &h, s);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&t, e0, e1));
        t_op[op] += t;
      }
      first = 0;
    }
  }
  if (split_dx) {
    float t;
    CK(cudaEventRecord(e0, s));
    elmo_cuda_cls_dx_reduce(&c, B, dX, s);
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&t, e0, e1));
    t_op[2] += t;
  }
  c.widened_l0 = -1;
  CK(cudaGetLastError());
  double flop = 3.0 * 2.0 * (double)B * (double)L_pad * (double)d;
  double roof_ms = 1e3 * (2.0 * (double)wb / 2.88e12), flop_ms = 1e3 * flop / 764e12;
  if (flop_ms > roof_ms) roof_ms = flop_ms;
  printf("RESULT L=%lld B=%lld d=%lld dtype=%s input=%s chunks=%lld (of %lld labels) pieces of %lld flags=%d: "
         "step %.3f ms (min %.3f, max %.3f, %d steps), %.1f TFLOP/s effective, %.0f%% of roofline (%.3f ms); "
         "logits %.3f grad %.3f dX %.3f update %.3f ms; device memory %.2f GiB (weights %.2f GiB)\n",
         (long long)L, (long long)B, (long long)d, argv[5], argv[6], (long long)((L_pad + chunk - 1) / chunk),
         (long long)chunk, (long long)piece, c.bench_flags, med, ms[0], ms[steps - 1], steps,
         flop / (med * 1e-3) / 1e12, 100.0 * roof_ms / med, roof_ms, t_op[0], t_op[1], t_op[2], t_op[3],
         (double)(free0 - free1) / 1073741824.0, (double)wb / 1073741824.0);
  elmo_blas_destroy(&c.blas);
  elmo_pool_free(&pool);
  cudaFree(W);
  cudaFree(X);
  cudaFree(dX);
  cudaFree(yp);
  cudaFree(yi);
  free(hX);
  free(hp);
  free(hi);
  free(ms);
  return 0;
}
