/* topk.cu: running top-k with filter masking (topk.h). One block per row; the row is scanned
 * in super-tiles of TK_V x TK_THREADS scores; a tile's candidates are merged by rank. */
#include "topk.h"
#include "check.h"

#include <math.h>

#define TK_THREADS 512

static __global__ void topk_init_kernel(int32_t *topk, float *topv, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    topk[i] = -1;
    topv[i] = -INFINITY;
  }
}

extern "C" void elmo_cuda_topk_init(int32_t *topk, float *topv, int64_t B, int k, cudaStream_t s) {
  int64_t n = B * k;
  if (n <= 0) return;
  int64_t blocks = (n + 255) / 256;
  topk_init_kernel<<<(unsigned)(blocks > 4096 ? 4096 : blocks), 256, 0, s>>>(topk, topv, n);
  ELMO_LAUNCH_CHECK();
}

/* (s, l) ranks before (t, m): higher score, then lower label; empty entries (label < 0) last. */
static __device__ __forceinline__ int better(float s, int32_t l, float t, int32_t m) {
  if (m < 0) return l >= 0;
  if (l < 0) return 0;
  return s > t || (s == t && l < m);
}

static __device__ int filtered(const int64_t *ip, const int32_t *ix, int64_t row, int32_t label) {
  if (!ip) return 0;
  int64_t lo = ip[row], hi = ip[row + 1];
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (ix[mid] == label) return 1;
    if (ix[mid] < label) lo = mid + 1; else hi = mid;
  }
  return 0;
}

struct topk_smem {
  float rv[ELMO_CUDA_TOPK_MAX];
  int32_t rl[ELMO_CUDA_TOPK_MAX];
  float cv[TK_THREADS];
  int32_t cl[TK_THREADS];
  int count;
};

/* Running entries better than (s, l): the list is sorted, so a binary search. */
static __device__ int running_better(const topk_smem &sm, int k, float s, int32_t l) {
  int lo = 0, hi = k;
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (better(sm.rv[mid], sm.rl[mid], s, l)) lo = mid + 1; else hi = mid;
  }
  return lo;
}

static __device__ int cand_better(const topk_smem &sm, int c, float s, int32_t l) {
  int r = 0;
  for (int i = 0; i < c; i++) r += better(sm.cv[i], sm.cl[i], s, l);
  return r;
}

/* Merges the c candidates into the list: every entry's rank in the union, then a scatter. */
static __device__ void merge_candidates(topk_smem &sm, int k, int c) {
  const int t = threadIdx.x;
  int cr = -1, rr[ELMO_CUDA_TOPK_MAX / TK_THREADS];
  float cs = 0.f, rs[ELMO_CUDA_TOPK_MAX / TK_THREADS];
  int32_t clab = -1, rlab[ELMO_CUDA_TOPK_MAX / TK_THREADS];
  if (t < c) {
    cs = sm.cv[t];
    clab = sm.cl[t];
    cr = running_better(sm, k, cs, clab) + cand_better(sm, c, cs, clab);
  }
#pragma unroll
  for (int q = 0; q < ELMO_CUDA_TOPK_MAX / TK_THREADS; q++) {
    int r = t + q * TK_THREADS;
    rr[q] = -1;
    if (r < k) {
      rs[q] = sm.rv[r];
      rlab[q] = sm.rl[r];
      rr[q] = r + cand_better(sm, c, rs[q], rlab[q]);
    }
  }
  __syncthreads();
  if (cr >= 0 && cr < k) {
    sm.rv[cr] = cs;
    sm.rl[cr] = clab;
  }
#pragma unroll
  for (int q = 0; q < ELMO_CUDA_TOPK_MAX / TK_THREADS; q++)
    if (rr[q] >= 0 && rr[q] < k) {
      sm.rv[rr[q]] = rs[q];
      sm.rl[rr[q]] = rlab[q];
    }
  __syncthreads();
}

/* One block per row. Each thread holds TK_V scores of a super-tile (TK_V tiles of TK_THREADS labels, each
 * tile's loads coalesced) in flight at once. A super-tile none of whose scores beats the running k-th entry
 * costs one barrier: the k-th entry only rises, so such a super-tile has no candidate then or later. Any other
 * super-tile's candidates (scores that beat the k-th entry, not filtered) are ranked against the list and each
 * other by merge_candidates, all at once when they fit its TK_THREADS slots (after the first super-tiles nearly
 * always), else tile by tile. Either way the list becomes the top k of itself and the candidates. */
#define TK_V 16
static __global__ void __launch_bounds__(TK_THREADS)
topk_scan_kernel(const float *z, int64_t ldz, int64_t l0, int64_t n, int64_t L, int k, const int64_t *f_indptr,
                 const int32_t *f_indices, int32_t *topk, float *topv) {
  __shared__ topk_smem sm;
  const int64_t b = blockIdx.x;
  for (int i = threadIdx.x; i < k; i += TK_THREADS) {
    sm.rv[i] = topv[b * k + i];
    sm.rl[i] = topk[b * k + i];
  }
  __syncthreads();
  const int64_t m = min(n, L - l0); /* scores of labels < L */
  const float *zr = z + b * ldz;
  for (int64_t t0 = 0; t0 < m; t0 += (int64_t)TK_V * TK_THREADS) {
    float v[TK_V];
#pragma unroll
    for (int q = 0; q < TK_V; q++) {
      const int64_t j = t0 + q * TK_THREADS + threadIdx.x;
      v[q] = j < m ? __ldg(zr + j) : -INFINITY;
      if (isnan(v[q])) v[q] = -INFINITY;
    }
    const float kv = sm.rv[k - 1];
    const int32_t kl = sm.rl[k - 1];
    int any = 0;
#pragma unroll
    for (int q = 0; q < TK_V; q++) {
      const int64_t j = t0 + q * TK_THREADS + threadIdx.x;
      any |= j < m && better(v[q], (int32_t)(l0 + j), kv, kl);
    }
    if (!__syncthreads_or(any)) continue;
    /* the super-tile's candidates at once when they fit the buffer: one merge, not one a tile */
    if (threadIdx.x == 0) sm.count = 0;
    __syncthreads();
#pragma unroll
    for (int q = 0; q < TK_V; q++) {
      const int64_t j = t0 + q * TK_THREADS + threadIdx.x, label = l0 + j;
      if (j < m && better(v[q], (int32_t)label, kv, kl) && !filtered(f_indptr, f_indices, b, (int32_t)label)) {
        const int pos = atomicAdd(&sm.count, 1);
        if (pos < TK_THREADS) {
          sm.cv[pos] = v[q];
          sm.cl[pos] = (int32_t)label;
        }
      }
    }
    __syncthreads();
    const int all = sm.count;
    __syncthreads();
    if (all <= TK_THREADS) {
      if (all > 0) merge_candidates(sm, k, all);
      continue;
    }
    /* too many to hold (the first super-tiles, while the list fills): tile by tile */
#pragma unroll
    for (int q = 0; q < TK_V; q++) {
      if (threadIdx.x == 0) sm.count = 0;
      __syncthreads();
      const int64_t j = t0 + q * TK_THREADS + threadIdx.x, label = l0 + j;
      if (j < m && better(v[q], (int32_t)label, sm.rv[k - 1], sm.rl[k - 1]) &&
          !filtered(f_indptr, f_indices, b, (int32_t)label)) {
        int pos = atomicAdd(&sm.count, 1);
        sm.cv[pos] = v[q];
        sm.cl[pos] = (int32_t)label;
      }
      __syncthreads();
      const int c = sm.count;
      __syncthreads(); /* everyone has read count before thread 0 resets it */
      if (c > 0) merge_candidates(sm, k, c);
    }
  }
  for (int i = threadIdx.x; i < k; i += TK_THREADS) {
    topv[b * k + i] = sm.rv[i];
    topk[b * k + i] = sm.rl[i];
  }
}

extern "C" void elmo_cuda_topk_merge(const float *z, int64_t ldz, int64_t B, int64_t l0, int64_t n, int64_t L, int k,
                                     const int64_t *f_indptr, const int32_t *f_indices, int32_t *topk, float *topv,
                                     cudaStream_t s) {
  if (B <= 0 || n <= 0 || k <= 0) return;
  if (k > ELMO_CUDA_TOPK_MAX) {
    fprintf(stderr, "elmo: internal error: top-k %d > %d on CUDA\n", k, ELMO_CUDA_TOPK_MAX);
    abort();
  }
  topk_scan_kernel<<<(unsigned)B, TK_THREADS, 0, s>>>(z, ldz, l0, n, L, k, f_indptr, f_indices, topk, topv);
  ELMO_LAUNCH_CHECK();
}
