/* embedding.cu: padded-batch mask and word + position (+ token type 0) embeddings for the CUDA
 * encoder. The backward is deterministic without float atomics: word rows through a stable radix
 * sort of the token ids (CUB) and one block per distinct id; positions and the type row through
 * ordered sums. CPU twins: elmo_tf_embed_forward/backward in src/transformer.c. */
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>

#include "cuda/embedding.h"
#include "cuda/convert.h"
#include "cuda/check.h"
#include "cuda/transformer.h"

typedef __nv_bfloat16 bf16;

enum { EW_THREADS = 256, COL_THREADS = 128, WORD_THREADS = 128, POS_GROUP = 32, EMB_ROWS = 8 };
/* word gradients: runs of WORD_LONG rows and more go to word_grad_long_kernel (WORD_LONG_BLOCKS blocks
 * of WORD_THREADS, WORD_GROUP rows in flight a warp) */
enum { WORD_LONG = 32, WORD_LONG_BLOCKS = 132, WORD_GROUP = 64 };

static unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + EW_THREADS - 1) / EW_THREADS;
  return (unsigned)(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

static size_t align256(size_t n) { return (n + 255) / 256 * 256; }

/* ------------------------------------------------------------------ mask */

static __global__ void mask_kernel(const uint8_t *mask, int64_t n, int T, int Tp, uint8_t *mask_p) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / Tp;
    const int t = (int)(i % Tp);
    mask_p[i] = t < T && (!mask || mask[b * T + t]) ? 1 : 0;
  }
}

extern "C" int elmo_cuda_embed_mask(const uint8_t *mask, int B, int T, int Tp, uint8_t *mask_p, cudaStream_t s,
                                    elmo_err *err) {
  if (B < 0 || T < 1 || Tp < T)
    return elmo_fail(err, ELMO_EINPUT, "embedding mask: B %d, T %d, Tp %d (expected B >= 0, 1 <= T <= Tp)",
                     B, T, Tp);
  if (B == 0) return ELMO_OK;
  mask_kernel<<<grid_for((int64_t)B * Tp), EW_THREADS, 0, s>>>(mask, (int64_t)B * Tp, T, Tp, mask_p);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

/* ------------------------------------------------------------------ forward */

/* Element (row r = b * Tp + t, column j); also the row's sort key (written by column 0). */
static __global__ void embed_forward_kernel(const bf16 *word, const bf16 *pos, const bf16 *type, int V,
                                            const int32_t *ids, const uint8_t *mask_p, int64_t n, int T, int Tp,
                                            int H, float *e, int32_t *keys, int *bad_id) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / H, b = r / Tp;
    const int j = (int)(i % H), t = (int)(r % Tp);
    float v = 0.0f;
    int key = V;
    if (mask_p[r]) {
      const int32_t id = ids[b * T + t];
      const int ok = id >= 0 && id < V;
      if (ok) {
        v = __bfloat162float(word[(int64_t)id * H + j]);
        key = id;
      } else if (j == 0 && bad_id) {
        *bad_id = 1;
      }
      v += __bfloat162float(pos[(int64_t)t * H + j]);
      if (type) v += __bfloat162float(type[j]);
    }
    e[i] = v;
    if (j == 0 && keys) keys[r] = key;
  }
}

/* The same sums 8 columns a thread (H % 8 == 0, 16-byte aligned tables and e): block (32, EMB_ROWS),
 * one row a warp; no 64-bit division per element (the element-wise form above issued ~140 instructions
 * an element, 71 us a DistilBERT-32 step on the H200). */
static __global__ void embed_forward8_kernel(const uint4 *word, const uint4 *pos, const uint4 *type, int V,
                                             const int32_t *ids, const uint8_t *mask_p, int64_t rows, int T,
                                             int Tp, int H8, float4 *e, int32_t *keys, int *bad_id) {
  for (int64_t r = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; r < rows; r += (int64_t)gridDim.x * blockDim.y) {
    const int64_t b = r / Tp;
    const int t = (int)(r - b * Tp);
    const int real = mask_p[r];
    const int32_t id = real ? ids[b * T + t] : -1;
    const int ok = real && id >= 0 && id < V;
    if (threadIdx.x == 0) {
      if (keys) keys[r] = ok ? id : V;
      if (real && !ok && bad_id) *bad_id = 1;
    }
    for (int c = threadIdx.x; c < H8; c += blockDim.x) {
      float f[8];
#pragma unroll
      for (int k = 0; k < 8; k++) f[k] = 0.0f;
      if (real) {
        float w[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, q[8], y[8];
        if (ok) elmo_bf16x8_to_f32(word + (int64_t)id * H8 + c, w);
        elmo_bf16x8_to_f32(pos + (int64_t)t * H8 + c, q);
        if (type) elmo_bf16x8_to_f32(type + c, y);
#pragma unroll
        for (int k = 0; k < 8; k++) {
          f[k] = __fadd_rn(w[k], q[k]);
          if (type) f[k] = __fadd_rn(f[k], y[k]);
        }
      }
      e[2 * (r * H8 + c)] = make_float4(f[0], f[1], f[2], f[3]);
      e[2 * (r * H8 + c) + 1] = make_float4(f[4], f[5], f[6], f[7]);
    }
  }
}

extern "C" int elmo_cuda_embed_forward(const elmo_bf16 *word, const elmo_bf16 *pos, const elmo_bf16 *type, int V,
                                       int P, const int32_t *ids, const uint8_t *mask_p, int B, int T, int Tp,
                                       int H, float *e, int32_t *keys, int *bad_id, cudaStream_t s,
                                       elmo_err *err) {
  if (V < 1 || B < 0 || T < 1 || Tp < T || T > P || H < 1)
    return elmo_fail(err, ELMO_EINPUT, "embedding forward: V %d, P %d, B %d, T %d, Tp %d, H %d (expected "
                     "V >= 1, B >= 0, 1 <= T <= min(Tp, P), H >= 1)", V, P, B, T, Tp, H);
  if (B == 0) return ELMO_OK;
  const int64_t n = (int64_t)B * Tp * H;
  const uintptr_t al = (uintptr_t)word | (uintptr_t)pos | (uintptr_t)(type ? type : word) | (uintptr_t)e;
  if (H % 8 == 0 && al % 16 == 0) {
    const int64_t rows = (int64_t)B * Tp, blocks = (rows + EMB_ROWS - 1) / EMB_ROWS;
    embed_forward8_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), dim3(32, EMB_ROWS), 0, s>>>(
        (const uint4 *)word, (const uint4 *)pos, (const uint4 *)type, V, ids, mask_p, rows, T, Tp, H / 8,
        (float4 *)e, keys, bad_id);
    ELMO_LAUNCH_CHECK();
    return ELMO_OK;
  }
  embed_forward_kernel<<<grid_for(n), EW_THREADS, 0, s>>>((const bf16 *)word, (const bf16 *)pos,
                                                          (const bf16 *)type, V, ids, mask_p, n, T, Tp, H, e,
                                                          keys, bad_id);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

/* ------------------------------------------------------------------ backward */

/* Scratch carved from ws: sorted keys, row ids before and after the sort, the long runs' count and starts,
 * position partial sums [max_tp, H] and CUB's temporary storage. */
typedef struct embed_ws {
  uint32_t *keys_out;
  int32_t *rows_in, *rows_out;
  int32_t *long_runs; /* [0]: count, then the sorted positions where runs of >= WORD_LONG rows start */
  float *pos_part;
  void *sort_tmp;
  size_t sort_bytes;
} embed_ws;

static size_t sort_tmp_bytes(int64_t rows, int end_bit) {
  size_t bytes = 0;
  if (cub::DeviceRadixSort::SortPairs(NULL, bytes, (const uint32_t *)NULL, (uint32_t *)NULL,
                                      (const int32_t *)NULL, (int32_t *)NULL, (int)rows, 0, end_bit) !=
      cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return bytes;
}

static size_t carve_ws(char *base, int64_t rows, int max_tp, int H, size_t sort_bytes, embed_ws *w) {
  size_t at = 0;
  w->keys_out = (uint32_t *)(base ? base + at : NULL); at += align256((size_t)rows * 4);
  w->rows_in = (int32_t *)(base ? base + at : NULL); at += align256((size_t)rows * 4);
  w->rows_out = (int32_t *)(base ? base + at : NULL); at += align256((size_t)rows * 4);
  w->long_runs = (int32_t *)(base ? base + at : NULL); at += align256((size_t)(rows / WORD_LONG + 2) * 4);
  w->pos_part = (float *)(base ? base + at : NULL); at += align256((size_t)max_tp * H * 4);
  w->sort_tmp = base ? base + at : NULL;
  w->sort_bytes = sort_bytes;
  return at + align256(sort_bytes);
}

extern "C" size_t elmo_cuda_embed_ws_bytes(int64_t rows, int max_tp, int H) {
  const size_t sb = sort_tmp_bytes(rows > 0 ? rows : 1, 32);
  if (sb == 0) return 0;
  embed_ws w;
  return carve_ws(NULL, rows > 0 ? rows : 1, max_tp, H, sb, &w);
}

static __global__ void iota_kernel(int64_t n, int32_t *x) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = (int32_t)i;
}

/* Block i of the sorted order: when i starts a run of one id < V, sums the run's rows of de (in row
 * order) and adds them to that word row. Runs of WORD_LONG rows or more ([CLS] and [SEP] are in every
 * sequence) are only listed in long_runs, for word_grad_long_kernel: one block walking hundreds of rows
 * one at a time held the whole grid up. */
static __global__ void word_grad_kernel(const float *__restrict__ de, const uint32_t *__restrict__ key,
                                        const int32_t *__restrict__ row, int64_t n, uint32_t V, int H,
                                        float *__restrict__ dword, int32_t *__restrict__ long_runs) {
  __shared__ int32_t s_row[WORD_LONG];
  const int64_t i = blockIdx.x;
  const uint32_t k = key[i];
  if (k >= V || (i > 0 && key[i - 1] == k)) return;
  int64_t end = i + 1;
  while (end < n && key[end] == k && end - i < WORD_LONG) end++;
  if (end - i >= WORD_LONG) {
    if (threadIdx.x == 0) long_runs[1 + atomicAdd(&long_runs[0], 1)] = (int32_t)i;
    return;
  }
  const int len = (int)(end - i);
  if (threadIdx.x < len) s_row[threadIdx.x] = row[i + threadIdx.x]; /* the run's rows, read once */
  __syncthreads();
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    float acc = 0.0f;
    for (int m = 0; m < len; m += 4) { /* four rows' loads at once (past the run: its last row again) */
      float v[4];
#pragma unroll
      for (int u = 0; u < 4; u++) v[u] = de[(int64_t)s_row[m + u < len ? m + u : len - 1] * H + j];
#pragma unroll
      for (int u = 0; u < 4; u++)
        if (m + u < len) acc += v[u];
    }
    dword[(int64_t)k * H + j] += acc;
  }
}

/* The long runs: one warp per (run, 32-column slice), lane = column, so each row's slice is one
 * 128-byte load. A warp loads a group of WORD_GROUP rows' values with no condition on the loads (past
 * the run it reads the run's first row again) and then adds them in row order: the same bits as
 * word_grad_kernel. The run's end: two 32-wide ballots (strides of 32 keys, then single keys) per
 * 1,024 keys. DistilBERT-32 step, H200: one block a run with 8 rows in flight 160 us; this form with
 * its loads under conditions 60 us; as it is 20 us. */
static __global__ void word_grad_long_kernel(const float *__restrict__ de, const uint32_t *__restrict__ key,
                                             const int32_t *__restrict__ row, int64_t n, int H,
                                             float *__restrict__ dword, const int32_t *__restrict__ long_runs) {
  const int lane = threadIdx.x & 31, slices = (H + 31) / 32;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
  const int64_t items = (int64_t)long_runs[0] * slices;
  for (int64_t w = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; w < items; w += warps) {
    const int64_t i = long_runs[1 + w / slices];
    const int j = (int)(w % slices) * 32 + lane;
    const uint32_t k = key[i];
    int64_t end = i + WORD_LONG; /* key[i .. end) == k */
    for (;;) {
      const int64_t p = end + 32 * (int64_t)lane + 31; /* the last key of the lane-th stride of 32 */
      const unsigned full = __ballot_sync(0xFFFFFFFFu, p < n && key[p] == k);
      const int c = __ffs(~full) - 1; /* strides wholly in the run (sorted keys: a prefix of lanes) */
      if (full == 0xFFFFFFFFu) {
        end += 32 * 32;
        continue;
      }
      end += 32 * (int64_t)c;
      const unsigned same = __ballot_sync(0xFFFFFFFFu, end + lane < n && key[end + lane] == k);
      end += __ffs(~same) - 1;
      break;
    }
    const int64_t len = end - i;
    const float *dj = de + (j < H ? j : H - 1); /* loads need no condition: past the run, row i again */
    const int32_t r0 = row[i];
    float acc = 0.0f;
    for (int64_t g = 0; g < len; g += WORD_GROUP) {
      int32_t r[WORD_GROUP / 32]; /* lane p holds the group's rows p, p + 32, ... */
#pragma unroll
      for (int q = 0; q < WORD_GROUP / 32; q++) r[q] = g + 32 * q + lane < len ? row[i + g + 32 * q + lane] : r0;
      float v[WORD_GROUP];
#pragma unroll
      for (int p = 0; p < WORD_GROUP; p++) v[p] = dj[(int64_t)__shfl_sync(0xFFFFFFFFu, r[p / 32], p % 32) * H];
#pragma unroll
      for (int p = 0; p < WORD_GROUP; p++)
        if (g + p < len) acc += v[p];
    }
    if (j < H) dword[(int64_t)k * H + j] += acc;
  }
}

/* Thread (column j, position t): sum over sequences b in order of the real rows, POS_GROUP sequences'
 * masks and values loaded at once (rows of masked positions are read too: they are in the buffer, and
 * only added when real), so a thread has POS_GROUP loads in flight instead of one. */
static __global__ void pos_partial_kernel(const float *de, const uint8_t *mask_p, int B, int Tp, int H,
                                          float *part) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
  if (j >= H) return;
  float acc = 0.0f;
  for (int b0 = 0; b0 < B; b0 += POS_GROUP) {
    float v[POS_GROUP];
    uint8_t m[POS_GROUP];
#pragma unroll
    for (int u = 0; u < POS_GROUP; u++) {
      const int64_t r = (int64_t)(b0 + u < B ? b0 + u : B - 1) * Tp + t;
      m[u] = b0 + u < B ? mask_p[r] : 0;
      v[u] = de[r * H + j];
    }
#pragma unroll
    for (int u = 0; u < POS_GROUP; u++)
      if (m[u]) acc += v[u];
  }
  part[(int64_t)t * H + j] = acc;
}

/* dpos[t] += part[t] for t < P: thread (column j, position t). */
static __global__ void pos_add_kernel(const float *part, int P, int H, float *dpos) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
  if (j < H && t < P) dpos[(int64_t)t * H + j] += part[(int64_t)t * H + j];
}

enum { FIN_COLS = 32, FIN_SLICES = 32 };

/* dtype[0][j] += sum over positions of part: slice y sums t = y, y + 32, ... in order, then slice 0
 * adds the 32 slice sums in order (a fixed order). Block (32 columns) x (32 slices). */
static __global__ void type_finish_kernel(const float *part, int Tp, int H, float *dtype) {
  __shared__ float acc_s[FIN_SLICES][FIN_COLS];
  const int x = threadIdx.x, y = threadIdx.y, j = blockIdx.x * FIN_COLS + x;
  float acc = 0.0f;
  if (j < H)
    for (int t = y; t < Tp; t += FIN_SLICES) acc += part[(int64_t)t * H + j];
  acc_s[y][x] = acc;
  __syncthreads();
  if (y != 0 || j >= H) return;
  for (int k = 1; k < FIN_SLICES; k++) acc += acc_s[k][x];
  dtype[j] += acc;
}

static int bits_for(int V) {
  int bits = 1;
  while (bits < 32 && (1ll << bits) <= (long long)V) bits++;
  return bits;
}

static int word_grads(const float *de, const int32_t *keys, int V, int64_t rows, int H, float *dword,
                      const embed_ws *w, cudaStream_t s, elmo_err *err) {
  const int end_bit = bits_for(V);
  size_t need = sort_tmp_bytes(rows, end_bit);
  if (need == 0 || need > w->sort_bytes)
    return elmo_fail(err, ELMO_ERUNTIME, "embedding backward: sort scratch %zu bytes (have %zu)", need,
                     w->sort_bytes);
  iota_kernel<<<grid_for(rows), EW_THREADS, 0, s>>>(rows, w->rows_in);
  ELMO_LAUNCH_CHECK();
  ELMO_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w->sort_tmp, need, (const uint32_t *)keys, w->keys_out,
                                               (const int32_t *)w->rows_in, w->rows_out, (int)rows, 0, end_bit, s));
  ELMO_CUDA_CHECK(cudaMemsetAsync(w->long_runs, 0, sizeof(int32_t), s));
  word_grad_kernel<<<(unsigned)rows, WORD_THREADS, 0, s>>>(de, w->keys_out, w->rows_out, rows, (uint32_t)V, H,
                                                           dword, w->long_runs);
  ELMO_LAUNCH_CHECK();
  word_grad_long_kernel<<<WORD_LONG_BLOCKS, WORD_THREADS, 0, s>>>(de, w->keys_out, w->rows_out, rows, H, dword,
                                                                 w->long_runs);
  ELMO_LAUNCH_CHECK();
  return ELMO_OK;
}

extern "C" int elmo_cuda_embed_backward(const float *de, const int32_t *keys, const uint8_t *mask_p, int V, int P,
                                        int B, int Tp, int H, float *dword, float *dpos, float *dtype, void *ws,
                                        size_t ws_bytes, cudaStream_t s, elmo_err *err) {
  const int64_t rows = (int64_t)B * Tp;
  if (V < 1 || P < 1 || B < 0 || Tp < 1 || Tp > 65535 || H < 1 || rows > 0x7FFFFFFF)
    return elmo_fail(err, ELMO_EINPUT, "embedding backward: V %d, P %d, B %d, Tp %d, H %d (expected "
                     "positive sizes, Tp <= 65535)", V, P, B, Tp, H);
  if (B == 0) return ELMO_OK;
  embed_ws w;
  const size_t have = carve_ws((char *)ws, rows, Tp, H, 0, &w);
  if (have > ws_bytes)
    return elmo_fail(err, ELMO_ERUNTIME, "embedding backward: scratch of %zu bytes (expected >= %zu)",
                     ws_bytes, have);
  w.sort_bytes = ws_bytes - have;
  int rc = word_grads(de, keys, V, rows, H, dword, &w, s, err);
  if (rc) return rc;
  const unsigned tiles = (unsigned)((H + COL_THREADS - 1) / COL_THREADS);
  pos_partial_kernel<<<dim3(tiles, (unsigned)Tp), COL_THREADS, 0, s>>>(de, mask_p, B, Tp, H, w.pos_part);
  ELMO_LAUNCH_CHECK();
  pos_add_kernel<<<dim3(tiles, (unsigned)Tp), COL_THREADS, 0, s>>>(w.pos_part, P, H, dpos);
  ELMO_LAUNCH_CHECK();
  if (dtype) {
    type_finish_kernel<<<(unsigned)((H + FIN_COLS - 1) / FIN_COLS), dim3(FIN_COLS, FIN_SLICES), 0, s>>>(
        w.pos_part, Tp, H, dtype);
    ELMO_LAUNCH_CHECK();
  }
  return ELMO_OK;
}
