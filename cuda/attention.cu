/* attention.cu: masked multi-head self-attention for the CUDA encoder on padded batches: head
 * split/merge permutes, masked softmax forward/backward (one warp per row), and the batched cuBLASLt
 * GEMMs per (sequence, head). Probabilities are recomputed, never kept between layers.
 * CPU twins: elmo_tf_attention_forward/backward in src/transformer.c. */
#include <math.h>
#include <cuda_bf16.h>

#include "cuda/attention.h"
#include "cuda/check.h"
#include "cuda/transformer.h"

typedef __nv_bfloat16 bf16;

enum { EW_THREADS = 256, SM_WARPS = 8 };

typedef struct bias3 { const bf16 *b[3]; } bias3;

static __device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

static unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + EW_THREADS - 1) / EW_THREADS;
  return (unsigned)(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

static __device__ float load_f(const float *p, int64_t i) { return p[i]; }
static __device__ float load_f(const bf16 *p, int64_t i) { return __bfloat162float(p[i]); }

/* Index in split [n, B, heads, Tp, dh] of element i of merged [n, B * Tp, heads * dh]. */
static __device__ int64_t split_index(int64_t i, int64_t per, int Tp, int heads, int dh) {
  const int H = heads * dh;
  const int64_t tensor = i / per, rem = i % per, r = rem / H;
  const int c = (int)(rem % H);
  const int64_t b = r / Tp, t = r % Tp;
  const int h = c / dh, d = c % dh;
  return tensor * per + ((b * heads + h) * Tp + t) * dh + d;
}

/* ------------------------------------------------------------------ permutes */

template <typename T>
static __global__ void heads_split_kernel(const T *in, bias3 bias, int64_t n, int64_t per, int Tp, int heads,
                                          int dh, bf16 *out) {
  const int H = heads * dh;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float v = load_f(in, i);
    const bf16 *bi = bias.b[i / per];
    if (bi) v += __bfloat162float(bi[i % H]);
    out[split_index(i, per, Tp, heads, dh)] = __float2bfloat16_rn(v);
  }
}

static __global__ void heads_merge_kernel(const bf16 *in, int64_t n, int64_t per, int Tp, int heads, int dh,
                                          bf16 *out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = in[split_index(i, per, Tp, heads, dh)];
}

/* Plain bf16 permute in 16-byte pieces (dh a multiple of 8, so a piece never straddles heads):
 * split when to_split, else merge. n8 = elements / 8. */
static __global__ void heads_permute16_kernel(const uint4 *in, int64_t n8, int64_t per, int Tp, int heads, int dh,
                                              int to_split, uint4 *out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t j = split_index(i * 8, per, Tp, heads, dh) / 8;
    if (to_split) out[j] = in[i];
    else out[i] = in[j];
  }
}

static int permute16_ok(const void *in, const void *out, int dh) {
  return dh % 8 == 0 && ((uintptr_t)in | (uintptr_t)out) % 16 == 0;
}

static void permute16_launch(const void *in, int64_t total, int64_t per, int Tp, int heads, int dh, int to_split,
                             void *out, cudaStream_t s) {
  heads_permute16_kernel<<<grid_for(total / 8), EW_THREADS, 0, s>>>((const uint4 *)in, total / 8, per, Tp, heads,
                                                                     dh, to_split, (uint4 *)out);
  ELMO_LAUNCH_CHECK();
}

static int check_dims(const char *what, int n, int B, int Tp, int heads, int dh, elmo_err *err) {
  if (n < 1 || n > 3 || B < 0 || Tp < 8 || Tp % 8 != 0 || heads < 1 || dh < 1 ||
      (int64_t)B * heads > 0x7FFFFFFF)
    return elmo_fail(err, ELMO_EINPUT, "%s: %d tensors, B %d, Tp %d, heads %d, head dim %d (expected 1..3 "
                     "tensors, B >= 0, Tp a positive multiple of 8, heads >= 1, head dim >= 1)",
                     what, n, B, Tp, heads, dh);
  return ELMO_OK;
}

extern "C" int elmo_cuda_heads_split(const void *in, int in_f32, const elmo_bf16 *const *bias, int n, int B,
                                     int Tp, int heads, int dh, elmo_bf16 *out, cudaStream_t s, elmo_err *err) {
  int rc = check_dims("heads split", n, B, Tp, heads, dh, err);
  if (rc || B == 0) return rc;
  bias3 bb = {{NULL, NULL, NULL}};
  for (int i = 0; i < n && bias; i++) bb.b[i] = (const bf16 *)bias[i];
  const int64_t per = (int64_t)B * Tp * heads * dh, total = per * n;
  if (!in_f32 && !bias && permute16_ok(in, out, dh)) {
    permute16_launch(in, total, per, Tp, heads, dh, 1, out, s);
    return ELMO_OK;
  }
  if (in_f32)
    heads_split_kernel<float><<<grid_for(total), EW_THREADS, 0, s>>>((const float *)in, bb, total, per, Tp,
                                                                     heads, dh, (bf16 *)out);
  else
    heads_split_kernel<bf16><<<grid_for(total), EW_THREADS, 0, s>>>((const bf16 *)in, bb, total, per, Tp,
                                                                    heads, dh, (bf16 *)out);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

extern "C" int elmo_cuda_heads_merge(const elmo_bf16 *in, int n, int B, int Tp, int heads, int dh,
                                     elmo_bf16 *out, cudaStream_t s, elmo_err *err) {
  int rc = check_dims("heads merge", n, B, Tp, heads, dh, err);
  if (rc || B == 0) return rc;
  const int64_t per = (int64_t)B * Tp * heads * dh, total = per * n;
  if (permute16_ok(in, out, dh)) {
    permute16_launch(in, total, per, Tp, heads, dh, 0, out, s);
    return ELMO_OK;
  }
  heads_merge_kernel<<<grid_for(total), EW_THREADS, 0, s>>>((const bf16 *)in, total, per, Tp, heads, dh,
                                                            (bf16 *)out);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

/* ------------------------------------------------------------------ softmax */

/* Row (sequence b, head, query i) of S [B * heads, Tp, Tp] -> P: softmax of scale * S over the real
 * keys; zeros for masked keys and for a masked query. */
static __global__ void softmax_forward_kernel(const float *S, const uint8_t *mask, int64_t rows, int heads,
                                              int Tp, float scale, bf16 *P) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * SM_WARPS + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t bh = row / Tp, i = row % Tp;
  const uint8_t *mk = mask + (bh / heads) * Tp;
  const float *s = S + row * Tp;
  bf16 *p = P + row * Tp;
  if (!mk[i]) {
    for (int j = lane; j < Tp; j += 32) p[j] = __float2bfloat16_rn(0.0f);
    return;
  }
  float mx = -INFINITY;
  for (int j = lane; j < Tp; j += 32)
    if (mk[j]) mx = fmaxf(mx, s[j] * scale);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j < Tp; j += 32)
    if (mk[j]) sum += expf(s[j] * scale - mx);
  const float inv = 1.0f / warp_sum(sum);
  for (int j = lane; j < Tp; j += 32)
    p[j] = __float2bfloat16_rn(mk[j] ? expf(s[j] * scale - mx) * inv : 0.0f);
}

/* In place over P: dS = P * (dP - sum_j P dP) * scale per row (zero rows stay zero). */
static __global__ void softmax_backward_kernel(bf16 *P, const float *dP, int64_t rows, int Tp, float scale) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * SM_WARPS + threadIdx.x / 32;
  if (row >= rows) return;
  bf16 *p = P + row * Tp;
  const float *g = dP + row * Tp;
  float dot = 0.0f;
  for (int j = lane; j < Tp; j += 32) dot += __bfloat162float(p[j]) * g[j];
  dot = warp_sum(dot);
  for (int j = lane; j < Tp; j += 32) {
    const float pj = __bfloat162float(p[j]);
    p[j] = __float2bfloat16_rn(pj * (g[j] - dot) * scale);
  }
}

static unsigned row_grid(int64_t rows) { return (unsigned)((rows + SM_WARPS - 1) / SM_WARPS); }

/* The same two row kernels with the row in registers, 16-byte loads: lane owns columns
 * 128 c + 4 lane .. + 3 of chunk c (C * 128 >= Tp, Tp a multiple of 4). One read of S or dP. */
template <int C>
static __global__ void softmax_forward_vec_kernel(const float *S, const uint8_t *mask, int64_t rows, int heads,
                                                  int Tp, float scale, bf16 *P) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * SM_WARPS + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t bh = row / Tp, i = row % Tp;
  const uint8_t *mk = mask + (bh / heads) * Tp;
  const float *s = S + row * Tp;
  bf16 *p = P + row * Tp;
  if (!mk[i]) {
    for (int j = lane; j < Tp; j += 32) p[j] = __float2bfloat16_rn(0.0f);
    return;
  }
  float v[C][4];
  float mx = -INFINITY;
#pragma unroll
  for (int c = 0; c < C; c++) {
    const int j = c * 128 + lane * 4;
    const float4 x = j < Tp ? *reinterpret_cast<const float4 *>(s + j) : make_float4(0.f, 0.f, 0.f, 0.f);
    const uchar4 m = j < Tp ? *reinterpret_cast<const uchar4 *>(mk + j) : make_uchar4(0, 0, 0, 0);
    v[c][0] = m.x ? x.x * scale : -INFINITY;
    v[c][1] = m.y ? x.y * scale : -INFINITY;
    v[c][2] = m.z ? x.z * scale : -INFINITY;
    v[c][3] = m.w ? x.w * scale : -INFINITY;
#pragma unroll
    for (int k = 0; k < 4; k++) mx = fmaxf(mx, v[c][k]);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < C; c++)
#pragma unroll
    for (int k = 0; k < 4; k++) {
      v[c][k] = v[c][k] == -INFINITY ? 0.0f : expf(v[c][k] - mx);
      sum += v[c][k];
    }
  const float inv = 1.0f / warp_sum(sum);
#pragma unroll
  for (int c = 0; c < C; c++) {
    const int j = c * 128 + lane * 4;
    if (j >= Tp) continue;
    __nv_bfloat162 h[2] = {__floats2bfloat162_rn(v[c][0] * inv, v[c][1] * inv),
                           __floats2bfloat162_rn(v[c][2] * inv, v[c][3] * inv)};
    *reinterpret_cast<uint2 *>(p + j) = *reinterpret_cast<const uint2 *>(h);
  }
}

template <int C>
static __global__ void softmax_backward_vec_kernel(bf16 *P, const float *dP, int64_t rows, int Tp, float scale) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * SM_WARPS + threadIdx.x / 32;
  if (row >= rows) return;
  bf16 *p = P + row * Tp;
  const float *g = dP + row * Tp;
  float pv[C][4], gv[C][4];
  float dot = 0.0f;
#pragma unroll
  for (int c = 0; c < C; c++) {
    const int j = c * 128 + lane * 4;
    if (j < Tp) {
      const uint2 pu = *reinterpret_cast<const uint2 *>(p + j);
      const __nv_bfloat162 *ph = reinterpret_cast<const __nv_bfloat162 *>(&pu);
      const float2 p01 = __bfloat1622float2(ph[0]), p23 = __bfloat1622float2(ph[1]);
      const float4 x = *reinterpret_cast<const float4 *>(g + j);
      pv[c][0] = p01.x; pv[c][1] = p01.y; pv[c][2] = p23.x; pv[c][3] = p23.y;
      gv[c][0] = x.x; gv[c][1] = x.y; gv[c][2] = x.z; gv[c][3] = x.w;
    } else {
#pragma unroll
      for (int k = 0; k < 4; k++) pv[c][k] = gv[c][k] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 4; k++) dot += pv[c][k] * gv[c][k];
  }
  dot = warp_sum(dot);
#pragma unroll
  for (int c = 0; c < C; c++) {
    const int j = c * 128 + lane * 4;
    if (j >= Tp) continue;
    float d[4];
#pragma unroll
    for (int k = 0; k < 4; k++) d[k] = pv[c][k] * (gv[c][k] - dot) * scale;
    __nv_bfloat162 h[2] = {__floats2bfloat162_rn(d[0], d[1]), __floats2bfloat162_rn(d[2], d[3])};
    *reinterpret_cast<uint2 *>(p + j) = *reinterpret_cast<const uint2 *>(h);
  }
}

/* Softmax forward (dP == NULL) or backward: the vector kernels for Tp <= 512 (a multiple of 8, so
 * every row is 16-byte aligned in S / dP and 8-byte aligned in P), else the plain ones. */
static void softmax_launch(const float *S, const float *dP, const uint8_t *mask, int64_t rows, int heads, int Tp,
                           float scale, bf16 *P, cudaStream_t s) {
  const unsigned grid = row_grid(rows), threads = SM_WARPS * 32;
  const int c = (Tp + 127) / 128;
  const int aligned = Tp % 8 == 0 && ((uintptr_t)S | (uintptr_t)dP) % 16 == 0 && (uintptr_t)P % 8 == 0 &&
                      (uintptr_t)mask % 4 == 0;
#define SM_CASE(C) \
  if (aligned && c <= C) { \
    if (dP) softmax_backward_vec_kernel<C><<<grid, threads, 0, s>>>(P, dP, rows, Tp, scale); \
    else softmax_forward_vec_kernel<C><<<grid, threads, 0, s>>>(S, mask, rows, heads, Tp, scale, P); \
    ELMO_LAUNCH_CHECK(); \
    return; \
  }
  SM_CASE(1) SM_CASE(2) SM_CASE(4)
#undef SM_CASE
  if (dP) softmax_backward_kernel<<<grid, threads, 0, s>>>(P, dP, rows, Tp, scale);
  else softmax_forward_kernel<<<grid, threads, 0, s>>>(S, mask, rows, heads, Tp, scale, P);
  ELMO_LAUNCH_CHECK();
}

/* ------------------------------------------------------------------ batched GEMMs */

/* One GEMM per (sequence, head): C = op(A) op(B) with the given shapes and leading dimensions. */
static void head_mm(elmo_cuda_tf_gemm *g, int ta, int tb, int m, int n, int k, const bf16 *a, int lda, int64_t sa,
                    const bf16 *b, int ldb, int64_t sb, void *c, int ldc, int64_t sc, int c_f32, int batch,
                    cudaStream_t s) {
  elmo_cuda_tf_mm p = {ta, tb, m, n, k, a, lda, sa, b, ldb, sb, c, ldc, sc, c_f32, 0.0f, batch, NULL, NULL, NULL,
                       NULL, NULL};
  elmo_cuda_tf_gemm_run(g, &p, s);
}

/* ------------------------------------------------------------------ entries */

extern "C" int elmo_cuda_attention_forward(elmo_cuda_tf_gemm *g, const elmo_bf16 *qkv, const uint8_t *mask, int B,
                                           int Tp, int heads, int dh, float *scores, elmo_bf16 *probs,
                                           elmo_bf16 *ctx, cudaStream_t s, elmo_err *err) {
  int rc = check_dims("attention forward", 1, B, Tp, heads, dh, err);
  if (rc || B == 0) return rc;
  const int BH = B * heads;
  const int64_t per = (int64_t)BH * Tp * dh, sq = (int64_t)Tp * dh, ss = (int64_t)Tp * Tp;
  const bf16 *q = (const bf16 *)qkv, *k = q + per, *v = k + per;
  bf16 *P = (bf16 *)probs;
  head_mm(g, 0, 1, Tp, Tp, dh, q, dh, sq, k, dh, sq, scores, Tp, ss, 1, BH, s);          /* S = Q K^T */
  softmax_launch(scores, NULL, mask, (int64_t)BH * Tp, heads, Tp, 1.0f / sqrtf((float)dh), P, s);
  head_mm(g, 0, 0, Tp, dh, Tp, P, Tp, ss, v, dh, sq, ctx, dh, sq, 0, BH, s);             /* ctx = P V */
  return ELMO_OK;
}

extern "C" int elmo_cuda_attention_backward(elmo_cuda_tf_gemm *g, const elmo_bf16 *qkv, elmo_bf16 *probs,
                                            const elmo_bf16 *dctx, const uint8_t *mask, int B, int Tp, int heads,
                                            int dh, float *scores, elmo_bf16 *dqkv, cudaStream_t s,
                                            elmo_err *err) {
  int rc = check_dims("attention backward", 1, B, Tp, heads, dh, err);
  if (rc || B == 0) return rc;
  (void)mask;  /* masked entries of P are zero, so dS is zero there without looking at the mask */
  const int BH = B * heads;
  const int64_t per = (int64_t)BH * Tp * dh, sq = (int64_t)Tp * dh, ss = (int64_t)Tp * Tp;
  const bf16 *q = (const bf16 *)qkv, *k = q + per, *v = k + per, *dc = (const bf16 *)dctx;
  bf16 *dq = (bf16 *)dqkv, *dk = dq + per, *dv = dk + per, *P = (bf16 *)probs;
  head_mm(g, 1, 0, Tp, dh, Tp, P, Tp, ss, dc, dh, sq, dv, dh, sq, 0, BH, s);             /* dV = P^T dctx */
  head_mm(g, 0, 1, Tp, Tp, dh, dc, dh, sq, v, dh, sq, scores, Tp, ss, 1, BH, s);         /* dP = dctx V^T */
  softmax_launch(NULL, scores, mask, (int64_t)BH * Tp, heads, Tp, 1.0f / sqrtf((float)dh), P, s);
  head_mm(g, 0, 0, Tp, dh, Tp, P, Tp, ss, k, dh, sq, dq, dh, sq, 0, BH, s);              /* dQ = dS K */
  head_mm(g, 1, 0, Tp, dh, Tp, P, Tp, ss, q, dh, sq, dk, dh, sq, 0, BH, s);              /* dK = dS^T Q */
  return ELMO_OK;
}
