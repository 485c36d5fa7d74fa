/* pooling.cu: mean / CLS pooling of the CUDA encoder's last hidden state over real tokens, forward
 * and backward. CPU twins: elmo_tf_pool_forward/backward in src/transformer.c. */
#include <cuda_bf16.h>

#include "cuda/pooling.h"
#include "cuda/check.h"
#include "cuda/transformer.h"

typedef __nv_bfloat16 bf16;

enum { POOL_THREADS = 256 };

/* Real tokens of sequence b and the first of them (-1 when none), computed by every thread. */
static __device__ int seq_count(const uint8_t *mk, int Tp, int *first) {
  int n = 0;
  *first = -1;
  for (int t = 0; t < Tp; t++)
    if (mk[t]) {
      if (*first < 0) *first = t;
      n++;
    }
  return n;
}

/* Block (column tile, sequence b). */
static __global__ void pool_forward_kernel(const bf16 *x, const uint8_t *mask, int Tp, int H, int cls,
                                           float *pooled) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (j >= H) return;
  const uint8_t *mk = mask + (int64_t)b * Tp;
  int first;
  const int n = seq_count(mk, Tp, &first);
  const bf16 *xb = x + (int64_t)b * Tp * H;
  float acc = 0.0f;
  if (n > 0 && cls) {
    acc = __bfloat162float(xb[(int64_t)first * H + j]);
  } else if (n > 0) {
    for (int t = 0; t < Tp; t++)
      if (mk[t]) acc += __bfloat162float(xb[(int64_t)t * H + j]);
    acc *= 1.0f / (float)n;
  }
  pooled[(int64_t)b * H + j] = acc;
}

/* Block (column tile, sequence b): writes all Tp rows of the sequence. */
static __global__ void pool_backward_kernel(const float *dpooled, const uint8_t *mask, int Tp, int H, int cls,
                                            float *dx) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (j >= H) return;
  const uint8_t *mk = mask + (int64_t)b * Tp;
  int first;
  const int n = seq_count(mk, Tp, &first);
  const float g = dpooled[(int64_t)b * H + j];
  const float f = cls ? 1.0f : 1.0f / (float)(n > 0 ? n : 1);
  float *dxb = dx + (int64_t)b * Tp * H;
  for (int t = 0; t < Tp; t++) {
    const int live = mk[t] && (!cls || t == first);
    dxb[(int64_t)t * H + j] = live ? g * f : 0.0f;
  }
}

static int check_pool(const char *what, int B, int Tp, int H, elmo_tf_pooling mode, elmo_err *err) {
  if (B < 0 || B > 65535 || Tp < 1 || H < 1 || (mode != ELMO_TF_POOL_MEAN && mode != ELMO_TF_POOL_CLS))
    return elmo_fail(err, ELMO_EINPUT, "%s: B %d, Tp %d, H %d, mode %d (expected 0 <= B <= 65535, Tp >= 1, "
                     "H >= 1, mean or cls)", what, B, Tp, H, (int)mode);
  return ELMO_OK;
}

extern "C" int elmo_cuda_pool_forward(const elmo_bf16 *x, const uint8_t *mask_p, int B, int Tp, int H,
                                      elmo_tf_pooling mode, float *pooled, cudaStream_t s, elmo_err *err) {
  int rc = check_pool("pool forward", B, Tp, H, mode, err);
  if (rc || B == 0) return rc;
  const dim3 grid((unsigned)((H + POOL_THREADS - 1) / POOL_THREADS), (unsigned)B);
  pool_forward_kernel<<<grid, POOL_THREADS, 0, s>>>((const bf16 *)x, mask_p, Tp, H, mode == ELMO_TF_POOL_CLS,
                                                    pooled);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

extern "C" int elmo_cuda_pool_backward(const float *dpooled, const uint8_t *mask_p, int B, int Tp, int H,
                                       elmo_tf_pooling mode, float *dx, cudaStream_t s, elmo_err *err) {
  int rc = check_pool("pool backward", B, Tp, H, mode, err);
  if (rc || B == 0) return rc;
  const dim3 grid((unsigned)((H + POOL_THREADS - 1) / POOL_THREADS), (unsigned)B);
  pool_backward_kernel<<<grid, POOL_THREADS, 0, s>>>(dpooled, mask_p, Tp, H, mode == ELMO_TF_POOL_CLS, dx);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}
