/* sparse_encoder.cu: embedding bag + L2 norm (+ LayerNorm) forward/backward on the device. */
#include "sparse_encoder.h"
#include "check.h"

#include "numerics.h"

#include <cub/device/device_radix_sort.cuh>

#define SE_THREADS 256
#define LN_EPS 1e-5f

static __device__ __forceinline__ float ld_param(const void *p, elmo_dtype t, int64_t i) {
  return t == ELMO_BF16 ? elmo_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* Fixed-order block sum (blockDim.x == SE_THREADS). Ends with a barrier so sh can be reused. */
static __device__ double block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = SE_THREADS / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

/* One block per row. */
static __global__ void __launch_bounds__(SE_THREADS)
forward_kernel(elmo_cuda_sparse e, const int64_t *indptr, const int32_t *indices, const float *values, float *out) {
  __shared__ double sh[SE_THREADS];
  const int64_t b = blockIdx.x, d = e.d, s = indptr[b], t = indptr[b + 1];
  float *x = e.x + b * d;
  double ss = 0.0;
  for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) {
    float h = 0.0f;
    for (int64_t i = s; i < t; i++) h = __fadd_rn(h, __fmul_rn(values[i], ld_param(e.E, e.dtype, (int64_t)indices[i] * d + k)));
    x[k] = h;
    ss += (double)h * h;
  }
  ss = block_sum(ss, sh);
  float n = (float)sqrt(ss);
  if (n < 1e-12f) n = 1e-12f;
  if (threadIdx.x == 0) e.norm[b] = n;
  double mean = 0.0;
  for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) {
    float v = __fdiv_rn(x[k], n);
    x[k] = v;
    mean += v;
    if (!e.gamma) out[b * d + k] = v;
  }
  if (!e.gamma) return;
  mean = block_sum(mean, sh) / (double)d;
  double var = 0.0;
  for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) var += (x[k] - mean) * (x[k] - mean);
  var = block_sum(var, sh) / (double)d;
  const float r = (float)(1.0 / sqrt(var + LN_EPS));
  if (threadIdx.x == 0) e.rstd[b] = r;
  for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) {
    float xh = __fmul_rn((float)(x[k] - mean), r);
    e.xhat[b * d + k] = xh;
    out[b * d + k] = __fadd_rn(__fmul_rn(xh, ld_param(e.gamma, e.dtype, k)), ld_param(e.beta, e.dtype, k));
  }
}

extern "C" void elmo_cuda_sparse_forward(const elmo_cuda_sparse *e, int64_t B, const int64_t *indptr,
                                         const int32_t *indices, const float *values, float *out, cudaStream_t s) {
  if (B <= 0) return;
  forward_kernel<<<(unsigned)B, SE_THREADS, 0, s>>>(*e, indptr, indices, values, out);
  ELMO_LAUNCH_CHECK();
}

/* ---- sort by feature -------------------------------------------------------------------- */

extern "C" size_t elmo_cuda_sparse_sort_temp_bytes(int64_t nnz_cap) {
  size_t bytes = 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                                  (const int32_t *)NULL, (int32_t *)NULL, (int)nnz_cap, 0, 31);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return bytes;
}

static __global__ void entry_rows_kernel(const int64_t *indptr, int32_t *entry_row, int32_t *iota) {
  const int64_t b = blockIdx.x;
  for (int64_t i = indptr[b] + threadIdx.x; i < indptr[b + 1]; i += blockDim.x) {
    entry_row[i] = (int32_t)b;
    iota[i] = (int32_t)i;
  }
}

extern "C" void elmo_cuda_sparse_prepare(elmo_cuda_sparse_sort *srt, int64_t B, int64_t nnz, const int64_t *indptr,
                                         const int32_t *indices, cudaStream_t s) {
  if (B <= 0 || nnz <= 0) return;
  entry_rows_kernel<<<(unsigned)B, 128, 0, s>>>(indptr, srt->entry_row, srt->iota);
  ELMO_LAUNCH_CHECK();
  size_t bytes = srt->temp_bytes;
  ELMO_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(srt->temp, bytes, indices, srt->feat, srt->iota, srt->ent, (int)nnz,
                                                  0, 31, s));
}

/* ---- backward ---------------------------------------------------------------------------- */

/* dgamma[k] = sum_b dy[b,k] xhat[b,k], dbeta[k] = sum_b dy[b,k], rows in order (CPU order). */
static __global__ void ln_param_grad_kernel(const float *dy, const float *xhat, int64_t B, int64_t d, float *dgamma,
                                            float *dbeta) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k >= d) return;
  float g = 0.0f, be = 0.0f;
  for (int64_t b = 0; b < B; b++) {
    float v = dy[b * d + k];
    g = __fadd_rn(g, __fmul_rn(v, xhat[b * d + k]));
    be = __fadd_rn(be, v);
  }
  dgamma[k] = g;
  dbeta[k] = be;
}

/* One block per row: dout -> dx through LayerNorm (optional) -> dh through the L2 norm. */
static __global__ void __launch_bounds__(SE_THREADS) row_backward_kernel(elmo_cuda_sparse e, float *dout) {
  __shared__ double sh[SE_THREADS];
  const int64_t b = blockIdx.x, d = e.d;
  float *dx = dout + b * d;
  const float *x = e.x + b * d;
  if (e.gamma) {
    const float *xh = e.xhat + b * d;
    double mg = 0.0, mgx = 0.0;
    for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) {
      float g = __fmul_rn(dx[k], ld_param(e.gamma, e.dtype, k));
      mg += g;
      mgx += __fmul_rn(g, xh[k]);
    }
    mg = block_sum(mg, sh) / (double)d;
    mgx = block_sum(mgx, sh) / (double)d;
    const float r = e.rstd[b];
    for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) {
      float g = __fmul_rn(dx[k], ld_param(e.gamma, e.dtype, k));
      dx[k] = __fmul_rn(r, (float)((double)g - mg - (double)xh[k] * mgx));
    }
    __syncthreads();
  }
  double dot = 0.0;
  for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) dot += (double)x[k] * dx[k];
  const float fd = (float)block_sum(dot, sh), inv = __fdiv_rn(1.0f, e.norm[b]);
  for (int64_t k = threadIdx.x; k < d; k += SE_THREADS) dx[k] = __fmul_rn(__fsub_rn(dx[k], __fmul_rn(x[k], fd)), inv);
}

/* One warp per sorted entry; the first entry of each feature's run sums the run in order. */
static __global__ void scatter_kernel(const int32_t *feat, const int32_t *ent, const int32_t *entry_row,
                                      const float *values, int64_t nnz, const float *dh, int64_t d, float *dE) {
  const int64_t e0 = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (e0 >= nnz || (e0 > 0 && feat[e0] == feat[e0 - 1])) return;
  const int32_t f = feat[e0];
  int64_t e1 = e0 + 1;
  while (e1 < nnz && feat[e1] == f) e1++;
  for (int64_t k = lane; k < d; k += 32) {
    float acc = 0.0f;
    for (int64_t e = e0; e < e1; e++) {
      const int32_t i = ent[e];
      acc = __fadd_rn(acc, __fmul_rn(values[i], dh[(int64_t)entry_row[i] * d + k]));
    }
    dE[(int64_t)f * d + k] = acc;
  }
}

extern "C" void elmo_cuda_sparse_backward(const elmo_cuda_sparse *e, int64_t B, int64_t nnz, const float *values,
                                          const elmo_cuda_sparse_sort *srt, float *dout, float *dE, float *dgamma,
                                          float *dbeta, cudaStream_t s) {
  if (B <= 0) return;
  if (e->gamma) {
    ln_param_grad_kernel<<<(unsigned)((e->d + 127) / 128), 128, 0, s>>>(dout, e->xhat, B, e->d, dgamma, dbeta);
    ELMO_LAUNCH_CHECK();
  }
  row_backward_kernel<<<(unsigned)B, SE_THREADS, 0, s>>>(*e, dout);
  ELMO_LAUNCH_CHECK();
  if (nnz <= 0) return;
  scatter_kernel<<<(unsigned)((nnz * 32 + 255) / 256), 256, 0, s>>>(srt->feat, srt->ent, srt->entry_row, values, nnz,
                                                                    dout, e->d, dE);
  ELMO_LAUNCH_CHECK();
}
