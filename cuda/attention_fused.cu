/* attention_fused.cu: fused masked multi-head self-attention for short padded sequences (flash
 * attention for Tp <= 128): one thread block per (sequence, head) (for Tp > 64 the forward is
 * persistent: a block per resident slot walks pairs, the next pair's tiles in flight), one warp per
 * 16 query rows. Q, K, V (and dctx) tiles sit in shared memory; S = Q K^T, P, dP and dS stay in
 * registers, on BF16 mma.sync m16n8k16 with FP32 accumulation (ldmatrix for the fragments); no score
 * matrix reaches global memory. q, k, v, dctx are read and ctx, dq, dk, dv written in the merged
 * layout [M, H] (row b * Tp + t, column head * dh + j), so no head permutes either.
 *
 * Rounding points are those of the batched path in attention.cu (whose exponential is libm's expf,
 * here the SFU's ex2 on a folded argument, see softmax_rows): S and the softmax in FP32,
 * P = bf16(exp(scale S - max) / sum) before ctx = P V and dV = P^T dctx; dP = dctx V^T in FP32,
 * dot = sum_j P_j dP_j over the BF16 P, dS = bf16(P (dP - dot) scale) before dQ = dS K and
 * dK = dS^T Q. The backward recomputes P from Q and K. CPU twins: elmo_tf_attention_forward/backward. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_bf16.h>

#include "cuda/attention.h"
#include "cuda/check.h"
#include "cuda/e4m3.cuh"

typedef __nv_bfloat16 bf16;

namespace {

/* Everything a fused kernel reads and writes: merged [B * Tp, heads * DH] tensors. */
struct attn_args {
  const bf16 *q, *k, *v, *dctx;
  const uint8_t *mask;       /* [B, Tp] */
  int Tp, heads;
  float scale;
  bf16 *ctx, *dq, *dk, *dv;
  int ldq;                   /* row stride of q, k, v, dq, dk, dv (elements); ctx, dctx: heads * dh */
  float *colpart;            /* backward: NULL, or column sums of the stored dq, dk, dv per warp's 16 rows,
                                [3][B * KT][heads * dh] (the bias gradients' partials) */
  uint8_t *ctxq;             /* forward: NULL, or the E4M3 copy of ctx, e4m3(bf16(ctx) * *ctxq_scale) */
  const float *ctxq_scale;
};

/* ------------------------------------------------------------------ warp-level MMA helpers */

__device__ __forceinline__ unsigned smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const bf16 *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}

/* c[16 x 8] += a[16 x 16] b[16 x 8], BF16 in, FP32 accumulators. */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
               "{%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 16 bytes global -> shared without registers; valid 0 writes zeros (src must still be an address). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

/* Waits until at most N of this thread's committed groups are in flight. */
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&h);
}

__device__ __forceinline__ float2 unpack_bf16(uint32_t u) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u));
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* Fragment ownership (m16n8 accumulators): lane holds rows g = lane / 4 and g + 8, columns
 * 8 n + 2 (lane % 4) + {0, 1}. A row-major [16, 16 KT] matrix in A-fragment order is u32 p[KT][4]:
 * p[kc][2 j + r] = bf16 pair of row g + 8 r, columns 16 kc + 8 j + 2 (lane % 4) + {0, 1}. */

/* ------------------------------------------------------------------ shared-memory tiles */

/* Starts copying rows [0, NK) of one head (DH columns from col0) of the merged x [*, ld] into
 * s [NK][DH + 8] (cp.async, 16-byte pieces); rows >= Tp become zero, so padding never meets garbage. */
template <int DH, int NK>
__device__ __forceinline__ void load_tile(const bf16 *x, int64_t row0, int ld, int col0, int Tp, bf16 *s) {
  constexpr int LDS = DH + 8, PIECES = DH / 8;
  for (int i = threadIdx.x; i < NK * PIECES; i += blockDim.x) {
    const int r = i / PIECES, c = (i % PIECES) * 8;
    cp_async16(s + r * LDS + c, x + (row0 + (r < Tp ? r : 0)) * ld + col0 + c, r < Tp);
  }
}

template <int NK>
__device__ __forceinline__ void load_mask(const uint8_t *mask, int Tp, uint8_t *s) {
  for (int i = threadIdx.x; i < NK; i += blockDim.x) s[i] = i < Tp ? mask[i] : 0;
}

/* acc[2 KT][4] = A B^T for the warp's 16 rows of A (sa, [16][DH + 8]) and all NK = 16 KT rows of B
 * (sb, [NK][DH + 8]). */
template <int DH, int KT>
__device__ __forceinline__ void mm_abt(const bf16 *sa, const bf16 *sb, int lane, float (&acc)[2 * KT][4]) {
  constexpr int LDS = DH + 8;
#pragma unroll
  for (int n = 0; n < 2 * KT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < DH / 16; kk++) {
    uint32_t a[4];
    ldsm_x4(a, sa + (lane & 15) * LDS + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int n = 0; n < KT; n++) {
      uint32_t b[4];
      ldsm_x4(b, sb + (n * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + kk * 16 + ((lane >> 3) & 1) * 8);
      mma_bf16(acc[2 * n], a, b[0], b[1]);
      mma_bf16(acc[2 * n + 1], a, b[2], b[3]);
    }
  }
}

/* acc[DH / 8][4] = P Y for P in A-fragment order ([16, NK], registers) and Y (sy, [NK][DH + 8]). */
template <int DH, int KT>
__device__ __forceinline__ void mm_py(const uint32_t (&p)[KT][4], const bf16 *sy, int lane, float (&acc)[DH / 8][4]) {
  constexpr int LDS = DH + 8;
#pragma unroll
  for (int n = 0; n < DH / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
  for (int kc = 0; kc < KT; kc++)
#pragma unroll
    for (int nd = 0; nd < DH / 16; nd++) {
      uint32_t b[4];
      ldsm_x4_t(b, sy + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + nd * 16 + (lane >> 4) * 8);
      mma_bf16(acc[2 * nd], p[kc], b[0], b[1]);
      mma_bf16(acc[2 * nd + 1], p[kc], b[2], b[3]);
    }
}

/* acc[DH / 8][4] = X^T Y for columns m0 .. m0 + 15 of X (sx, [NK][NK + 8]) and Y (sy, [NK][DH + 8]). */
template <int DH, int KT>
__device__ __forceinline__ void mm_aty(const bf16 *sx, const bf16 *sy, int m0, int lane, float (&acc)[DH / 8][4]) {
  constexpr int LDS = DH + 8, LDP = 16 * KT + 8;
#pragma unroll
  for (int n = 0; n < DH / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
  for (int kc = 0; kc < KT; kc++) {
    uint32_t a[4];
    ldsm_x4_t(a, sx + (kc * 16 + (lane & 7) + (lane >> 4) * 8) * LDP + m0 + ((lane >> 3) & 1) * 8);
#pragma unroll
    for (int nd = 0; nd < DH / 16; nd++) {
      uint32_t b[4];
      ldsm_x4_t(b, sy + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + nd * 16 + (lane >> 4) * 8);
      mma_bf16(acc[2 * nd], a, b[0], b[1]);
      mma_bf16(acc[2 * nd + 1], a, b[2], b[3]);
    }
  }
}

/* ------------------------------------------------------------------ softmax in registers */

/* 2^x by the special-function unit (relative error ~2^-22; results below 2^-126 flush to zero). */
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

/* P (A-fragment order) of the warp's rows r0 .. r0 + 15 from the raw scores s: softmax of scale * s
 * over the real keys (sm[key] != 0); zeros for masked keys, and whole zero rows for masked queries
 * (rows >= Tp have sm 0 too). exp(scale (s - max)) is formed as 2^(s c - max c), c = scale log2(e), by
 * one FFMA and the SFU's ex2 (libm's expf took ~16 instructions and a branch an element, a quarter of
 * the backward's instructions); the forward and the backward share this function, so the backward's
 * P and ctx are the forward's bits. */
template <int KT>
__device__ __forceinline__ void softmax_rows(float (&s)[2 * KT][4], const uint8_t *sm, int r0, float scale, int lane,
                                             uint32_t (&p)[KT][4]) {
  const int g = lane >> 2, c0 = 2 * (lane & 3);
  const float c = scale * 1.44269504088896341f;
  float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int n = 0; n < 2 * KT; n++)
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const bool keep = sm[n * 8 + c0 + e] != 0;
#pragma unroll
      for (int r = 0; r < 2; r++) {
        float &x = s[n][2 * r + e];
        x = keep ? x : -INFINITY;
        mx[r] = fmaxf(mx[r], x);
      }
    }
  const float mc[2] = {quad_max(mx[0]) * c, quad_max(mx[1]) * c};
#pragma unroll
  for (int n = 0; n < 2 * KT; n++)
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float &x = s[n][i];
      x = x == -INFINITY ? 0.0f : ex2_approx(__fmaf_rn(x, c, -mc[i >> 1]));
      sum[i >> 1] += x;
    }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; r++) {
    sum[r] = quad_sum(sum[r]);
    inv[r] = sm[r0 + g + 8 * r] && sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f;
  }
#pragma unroll
  for (int kc = 0; kc < KT; kc++)
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int r = 0; r < 2; r++)
        p[kc][2 * j + r] = pack_bf16(s[2 * kc + j][2 * r] * inv[r], s[2 * kc + j][2 * r + 1] * inv[r]);
}

/* The bf16 pair of the warp's P at fragment position (kc, j, r) from sp ([16][16 KT + 8], the warp's
 * rows, as store_frag wrote them). */
template <int KT>
__device__ __forceinline__ float2 p_pair(const bf16 *sp, int lane, int kc, int j, int r) {
  constexpr int LDP = 16 * KT + 8;
  return unpack_bf16(*reinterpret_cast<const uint32_t *>(sp + ((lane >> 2) + 8 * r) * LDP + kc * 16 + j * 8 +
                                                         2 * (lane & 3)));
}

/* dS = bf16(P (dP - sum_j P_j dP_j) scale) per row, in A-fragment order (zero where P is zero); P is
 * read back from shared memory (sp: the warp's rows) to keep registers for dP. */
/* f(kc, j, r, P pair) over the lane's P pairs in fragment order. */
template <int KT, typename F>
__device__ __forceinline__ void for_p_pairs(const bf16 *sp, int lane, F f) {
#pragma unroll
  for (int kc = 0; kc < KT; kc++)
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int r = 0; r < 2; r++) f(kc, j, r, p_pair<KT>(sp, lane, kc, j, r));
}

template <int KT>
__device__ __forceinline__ void softmax_grad(const bf16 *sp, const float (&dp)[2 * KT][4], float scale, int lane,
                                             uint32_t (&ds)[KT][4]) {
  float dot[2] = {0.0f, 0.0f};
  for_p_pairs<KT>(sp, lane, [&](int kc, int j, int r, float2 pf) {
    dot[r] += pf.x * dp[2 * kc + j][2 * r] + pf.y * dp[2 * kc + j][2 * r + 1];
  });
  dot[0] = quad_sum(dot[0]);
  dot[1] = quad_sum(dot[1]);
  for_p_pairs<KT>(sp, lane, [&](int kc, int j, int r, float2 pf) {
    ds[kc][2 * j + r] = pack_bf16(pf.x * (dp[2 * kc + j][2 * r] - dot[r]) * scale,
                                  pf.y * (dp[2 * kc + j][2 * r + 1] - dot[r]) * scale);
  });
}

/* ------------------------------------------------------------------ stores */

/* The warp's 16 x DH result rows, rounded to bf16, into out (rows below Tp). Head dims of 32 and more: the
 * four lanes of a quad first exchange their pairs (a 4 x 4 transpose of 32-bit words by two xor
 * shuffles) so that each lane holds 8 adjacent columns and writes them as one 16-byte store: a row's
 * 64 bytes of a 32-column group go out as two whole sectors instead of four half ones (ncu on the
 * backward, H100 2026-11-27: 42% of its global sectors were excess, 16.7 of 32 bytes used). */
template <int DH>
__device__ __forceinline__ void store_rows(const float (&acc)[DH / 8][4], bf16 *out, int64_t row0, int r0, int Tp,
                                           int ld, int col0, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = r0 + g + 8 * r;
    const int64_t o = (row0 + row) * ld + col0; /* element offset of the row's first column */
    if constexpr (DH % 32 == 0) {
#pragma unroll
      for (int h = 0; h < DH / 32; h++) {
        uint32_t a[4]; /* a[m]: columns 32 h + 8 m + 2 t, + 1; after the transpose 32 h + 8 t + 2 m, + 1 */
#pragma unroll
        for (int m = 0; m < 4; m++) a[m] = pack_bf16(acc[4 * h + m][2 * r], acc[4 * h + m][2 * r + 1]);
#pragma unroll
        for (int k = 1; k <= 2; k <<= 1) {
          const bool hi = (t & k) != 0;
#pragma unroll
          for (int m0 = 0; m0 < 4; m0++) {
            if (m0 & k) continue;
            const int m1 = m0 | k;
            const uint32_t recv = __shfl_xor_sync(0xFFFFFFFFu, hi ? a[m0] : a[m1], k);
            if (hi) a[m0] = recv;
            else a[m1] = recv;
          }
        }
        if (row < Tp) *reinterpret_cast<uint4 *>(out + o + 32 * h + 8 * t) = make_uint4(a[0], a[1], a[2], a[3]);
      }
    } else {
      if (row >= Tp) continue;
#pragma unroll
      for (int n = 0; n < DH / 8; n++)
        *reinterpret_cast<uint32_t *>(out + o + n * 8 + 2 * t) = pack_bf16(acc[n][2 * r], acc[n][2 * r + 1]);
    }
  }
}

/* What store_rows writes, as E4M3 of the bf16-rounded values times *qs (two bytes a lane and column
 * pair: the FP8 forward's copy of ctx, a quarter of the bytes of the bf16 one). */
template <int DH>
__device__ __forceinline__ void store_rows_q(const float (&acc)[DH / 8][4], uint8_t *out, const float *qs,
                                             int64_t row0, int r0, int Tp, int ld, int col0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const float q = *qs;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = r0 + g + 8 * r;
    if (row >= Tp) continue;
    const int64_t o = (row0 + row) * ld + col0;
#pragma unroll
    for (int n = 0; n < DH / 8; n++) {
      const float a = __bfloat162float(__float2bfloat16_rn(acc[n][2 * r])) * q;
      const float b = __bfloat162float(__float2bfloat16_rn(acc[n][2 * r + 1])) * q;
      *reinterpret_cast<uint16_t *>(out + o + n * 8 + 2 * t) = (uint16_t)e4m3x2(a, b);
    }
  }
}

/* The column sums of the bf16 values store_rows writes (rows r0 .. r0 + 15 below Tp) into out[0 .. DH):
 * each lane adds its two rows, then a butterfly over the eight row groups; a fixed order. */
template <int DH>
__device__ __forceinline__ void col_partial(const float (&acc)[DH / 8][4], int r0, int Tp, int lane, float *out) {
  const int g = lane >> 2, c0 = 2 * (lane & 3);
  const bool v0 = r0 + g < Tp, v1 = r0 + g + 8 < Tp;
#pragma unroll
  for (int n = 0; n < DH / 8; n++) {
    float s0 = 0.0f, s1 = 0.0f;
    if (v0) {
      s0 = __bfloat162float(__float2bfloat16_rn(acc[n][0]));
      s1 = __bfloat162float(__float2bfloat16_rn(acc[n][1]));
    }
    if (v1) {
      s0 += __bfloat162float(__float2bfloat16_rn(acc[n][2]));
      s1 += __bfloat162float(__float2bfloat16_rn(acc[n][3]));
    }
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      s0 += __shfl_xor_sync(0xFFFFFFFFu, s0, off);
      s1 += __shfl_xor_sync(0xFFFFFFFFu, s1, off);
    }
    if (g == 0) *reinterpret_cast<float2 *>(out + n * 8 + c0) = make_float2(s0, s1);
  }
}

/* A-fragment registers of the warp's 16 rows into s ([16][LDP] from the warp's first row). */
template <int KT>
__device__ __forceinline__ void store_frag(const uint32_t (&p)[KT][4], bf16 *s, int lane) {
  constexpr int LDP = 16 * KT + 8;
  const int g = lane >> 2, c0 = 2 * (lane & 3);
#pragma unroll
  for (int kc = 0; kc < KT; kc++)
#pragma unroll
    for (int j = 0; j < 2; j++)
#pragma unroll
      for (int r = 0; r < 2; r++)
        *reinterpret_cast<uint32_t *>(s + (g + 8 * r) * LDP + kc * 16 + j * 8 + c0) = p[kc][2 * j + r];
}

/* ------------------------------------------------------------------ kernels */

template <int DH, int KT>
constexpr size_t fwd_smem() { return (size_t)3 * 16 * KT * (DH + 8) * sizeof(bf16) + 16 * KT; }

template <int DH, int KT>
constexpr size_t bwd_smem() {
  return (size_t)4 * 16 * KT * (DH + 8) * sizeof(bf16) + (size_t)16 * KT * (16 * KT + 8) * sizeof(bf16) + 16 * KT;
}

/* Q and K of one (sequence, head) as one cp.async group, then V started in the next group, left
 * open (the backward adds dctx to it; the caller commits). */
template <int DH, int NK>
__device__ __forceinline__ void load_qkv(const attn_args &a, int64_t row0, int col0, bf16 *sq, bf16 *sk, bf16 *sv) {
  load_tile<DH, NK>(a.q, row0, a.ldq, col0, a.Tp, sq);
  load_tile<DH, NK>(a.k, row0, a.ldq, col0, a.Tp, sk);
  cp_async_commit();
  load_tile<DH, NK>(a.v, row0, a.ldq, col0, a.Tp, sv);                   /* arrives during S and the softmax */
}

/* P (bf16 fragments) = softmax of warp w's 16 query rows of S = Q K^T, masked and scaled. */
template <int DH, int KT>
__device__ __forceinline__ void attn_probs(const bf16 *sq, const bf16 *sk, const uint8_t *sm, float scale, int w,
                                           int lane, uint32_t (&p)[KT][4]) {
  float s[2 * KT][4];
  mm_abt<DH, KT>(sq + 16 * w * (DH + 8), sk, lane, s);
  softmax_rows<KT>(s, sm, 16 * w, scale, lane, p);
}

/* Where a one-pair block's tiles come from: sequence b (rows row0 ..), head columns col0 .. of ld. */
struct pair_at {
  int b, ld, col0;
  int64_t row0;
};

/* The start of a block for the pair blockIdx.x: Q and K (waited for), V and, when so is given,
 * dctx (left in flight, one group), and the mask. */
template <int DH, int NK>
__device__ __forceinline__ pair_at start_pair(const attn_args &a, bf16 *sq, bf16 *sk, bf16 *sv, bf16 *so, uint8_t *sm) {
  pair_at p;
  p.b = blockIdx.x / a.heads;
  p.ld = a.heads * DH;
  p.col0 = blockIdx.x % a.heads * DH;
  p.row0 = (int64_t)p.b * a.Tp;
  load_qkv<DH, NK>(a, p.row0, p.col0, sq, sk, sv);
  if (so) load_tile<DH, NK>(a.dctx, p.row0, p.ld, p.col0, a.Tp, so);   /* with V, during S and the softmax */
  cp_async_commit();
  load_mask<NK>(a.mask + p.row0, a.Tp, sm);
  cp_async_wait<1>();
  __syncthreads();
  return p;
}

/* Block (sequence b, head h), KT warps; warp w owns query rows 16 w .. 16 w + 15. */
template <int DH, int KT>
__global__ void __launch_bounds__(32 * KT) attn_fwd_kernel(attn_args a) {
  constexpr int NK = 16 * KT, LDS = DH + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sq = reinterpret_cast<bf16 *>(smem), *sk = sq + NK * LDS, *sv = sk + NK * LDS;
  uint8_t *sm = reinterpret_cast<uint8_t *>(sv + NK * LDS);
  const pair_at at = start_pair<DH, NK>(a, sq, sk, sv, NULL, sm);
  const int64_t row0 = at.row0;
  const int ld = at.ld, col0 = at.col0;
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint32_t p[KT][4];
  attn_probs<DH, KT>(sq, sk, sm, a.scale, w, lane, p);
  cp_async_wait<0>();
  __syncthreads();
  float o[DH / 8][4];
  mm_py<DH, KT>(p, sv, lane, o);
  if (a.ctx) store_rows<DH>(o, a.ctx, row0, 16 * w, a.Tp, ld, col0, lane);
  if (a.ctxq) store_rows_q<DH>(o, a.ctxq, a.ctxq_scale, row0, 16 * w, a.Tp, ld, col0, lane);
}

/* Block (sequence b, head h), KT warps: warp w owns query rows 16 w .. + 15 for P, ctx (when wanted),
 * dS and dQ, then key rows 16 w .. + 15 for dV = P^T dctx and dK = dS^T Q (P, then dS, staged in
 * shared memory). */
template <int DH, int KT>
__global__ void __launch_bounds__(32 * KT, 2) attn_bwd_kernel(attn_args a) {
  constexpr int NK = 16 * KT, LDS = DH + 8, LDP = NK + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *sq = reinterpret_cast<bf16 *>(smem), *sk = sq + NK * LDS, *sv = sk + NK * LDS, *so = sv + NK * LDS;
  bf16 *sp = so + NK * LDS;
  uint8_t *sm = reinterpret_cast<uint8_t *>(sp + NK * LDP);
  const pair_at at = start_pair<DH, NK>(a, sq, sk, sv, so, sm);
  const int b = at.b, ld = at.ld, col0 = at.col0;
  const int64_t row0 = at.row0;
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  {
    uint32_t p[KT][4];
    attn_probs<DH, KT>(sq, sk, sm, a.scale, w, lane, p);
    store_frag<KT>(p, sp + 16 * w * LDP, lane);                       /* the warp's own rows */
    cp_async_wait<0>();
    __syncthreads();
    if (a.ctx) {                                                      /* ctx = P V, the forward's bits */
      float o[DH / 8][4];
      mm_py<DH, KT>(p, sv, lane, o);
      store_rows<DH>(o, a.ctx, row0, 16 * w, a.Tp, ld, col0, lane);
    }
  }
  uint32_t ds[KT][4];
  {
    float dp[2 * KT][4];
    mm_abt<DH, KT>(so + 16 * w * LDS, sv, lane, dp);                 /* dP = dctx V^T */
    softmax_grad<KT>(sp + 16 * w * LDP, dp, a.scale, lane, ds);
  }
  /* bias-gradient partials: row b KT + w of matrix m (q 0, k 1, v 2) in a.colpart */
  const int64_t prow = (int64_t)b * KT + w, pstride = (int64_t)(gridDim.x / a.heads) * KT * ld;
  float *cp = a.colpart ? a.colpart + prow * ld + col0 : NULL;
  float acc[DH / 8][4];
  mm_py<DH, KT>(ds, sk, lane, acc);                                   /* dQ = dS K */
  store_rows<DH>(acc, a.dq, row0, 16 * w, a.Tp, a.ldq, col0, lane);
  if (cp) col_partial<DH>(acc, 16 * w, a.Tp, lane, cp);
  mm_aty<DH, KT>(sp, so, 16 * w, lane, acc);                          /* dV = P^T dctx (P complete) */
  store_rows<DH>(acc, a.dv, row0, 16 * w, a.Tp, a.ldq, col0, lane);
  if (cp) col_partial<DH>(acc, 16 * w, a.Tp, lane, cp + 2 * pstride);
  __syncthreads();                                                    /* P read by all */
  store_frag<KT>(ds, sp + 16 * w * LDP, lane);
  __syncthreads();
  mm_aty<DH, KT>(sp, sq, 16 * w, lane, acc);                          /* dK = dS^T Q */
  store_rows<DH>(acc, a.dk, row0, 16 * w, a.Tp, a.ldq, col0, lane);
  if (cp) col_partial<DH>(acc, 16 * w, a.Tp, lane, cp + pstride);
}

/* The first thread of each key fetches its mask byte (0 beyond Tp); kept in a register until stored. */
template <int NK>
__device__ __forceinline__ uint8_t fetch_mask(const uint8_t *mask, int Tp) {
  const int i = threadIdx.x;
  return i < NK && i < Tp ? mask[i] : (uint8_t)0;
}

template <int DH, int KT>
constexpr size_t fwd_pipe_smem() { return 2 * ((size_t)3 * 16 * KT * (DH + 8) * sizeof(bf16) + 16 * KT); }

/* The forward, persistent (for Tp > 64): a grid of as many blocks as fit at once (two per SM at
 * BERT-base's shape), each walking the (sequence, head) pairs blockIdx.x, + gridDim.x, ..., with two
 * sets of Q, K, V tiles and masks: the next pair's load into the other set while this one is
 * computed, so the loads overlap the block's own S, softmax and P V rather than waiting on a fresh
 * block. Same arithmetic as attn_fwd_kernel, bit for bit; warp w owns query rows 16 w .. 16 w + 15. */
template <int DH, int KT>
__global__ void __launch_bounds__(32 * KT, 2) attn_fwd_pipe_kernel(attn_args a, int npairs) {
  constexpr int NK = 16 * KT, LDS = DH + 8, TILE = NK * LDS;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16 *const buf = reinterpret_cast<bf16 *>(smem);                  /* [2][q, k, v][TILE] */
  uint8_t *const smask = reinterpret_cast<uint8_t *>(buf + 6 * TILE);   /* [2][NK] */
  const int ld = a.heads * DH, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int pair = blockIdx.x;
  if (pair >= npairs) return;
  {
    const int b = pair / a.heads, col0 = (pair % a.heads) * DH;
    const int64_t row0 = (int64_t)b * a.Tp;
    load_qkv<DH, NK>(a, row0, col0, buf, buf + TILE, buf + 2 * TILE);
    cp_async_commit();
    if (threadIdx.x < NK) smask[threadIdx.x] = fetch_mask<NK>(a.mask + row0, a.Tp);
  }
  for (int it = 0; pair < npairs; pair += gridDim.x, it++) {
    const int cur = it & 1;
    const bf16 *sq = buf + 3 * cur * TILE, *sk = sq + TILE, *sv = sk + TILE;
    const uint8_t *sm = smask + cur * NK;
    const int b = pair / a.heads, col0 = (pair % a.heads) * DH;
    const int64_t row0 = (int64_t)b * a.Tp;
    if (it == 0) cp_async_wait<1>();                                  /* this pair's Q and K */
    else cp_async_wait<0>();                                          /* this pair's tiles, prefetched */
    __syncthreads();                                                  /* ... and the other set is free */
    const int next = pair + gridDim.x;
    uint8_t mnext = 0;
    if (next < npairs) {
      const int nb = next / a.heads, ncol0 = (next % a.heads) * DH;
      const int64_t nrow0 = (int64_t)nb * a.Tp;
      bf16 *nq = buf + 3 * (cur ^ 1) * TILE;
      load_tile<DH, NK>(a.q, nrow0, a.ldq, ncol0, a.Tp, nq);
      load_tile<DH, NK>(a.k, nrow0, a.ldq, ncol0, a.Tp, nq + TILE);
      load_tile<DH, NK>(a.v, nrow0, a.ldq, ncol0, a.Tp, nq + 2 * TILE);
      mnext = fetch_mask<NK>(a.mask + nrow0, a.Tp);
    }
    cp_async_commit();                                                /* possibly empty: keeps the count */
    uint32_t p[KT][4];
    attn_probs<DH, KT>(sq, sk, sm, a.scale, w, lane, p);
    if (it == 0) {                                                    /* this pair's V (later pairs: above) */
      cp_async_wait<1>();
      __syncthreads();
    }
    float o[DH / 8][4];
    mm_py<DH, KT>(p, sv, lane, o);
    if (a.ctx) store_rows<DH>(o, a.ctx, row0, 16 * w, a.Tp, ld, col0, lane);
    if (a.ctxq) store_rows_q<DH>(o, a.ctxq, a.ctxq_scale, row0, 16 * w, a.Tp, ld, col0, lane);
    if (next < npairs && threadIdx.x < NK) smask[(cur ^ 1) * NK + threadIdx.x] = mnext;
  }
}

/* ------------------------------------------------------------------ launchers */

/* Blocks of `kernel` that fit on the current device at once (occupancy times SMs), cached per device. */
template <typename K>
int resident_blocks(K kernel, int threads, size_t smem, int (&cache)[8]) {
  int dev = 0, sms = 0, per_sm = 0;
  ELMO_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 8 && cache[dev] > 0) return cache[dev];
  ELMO_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  ELMO_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const int n = (per_sm > 0 ? per_sm : 1) * (sms > 0 ? sms : 1);
  if (dev >= 0 && dev < 8) cache[dev] = n;
  return n;
}

/* The persistent forward pays off only with a key tile count of 8 (Tp > 64); measured on the H100,
 * it was slower at Tp 64 (46.8 vs 42.6 us, B 256) and Tp 32, where small blocks already fill the SMs
 * many at a time, and its backward twin (the next pair's tiles loaded into the ones that died,
 * rotating) was 3% slower at Tp 128, so the backward stays one block per pair. */
template <int DH, int KT>
void launch(const attn_args &a, int B, int backward, cudaStream_t s) {
  const int npairs = B * a.heads;
  if constexpr (KT >= 8) if (!backward) {
    constexpr size_t smem = fwd_pipe_smem<DH, KT>();
    void (*kernel)(attn_args, int) = attn_fwd_pipe_kernel<DH, KT>;
    static int resident[8];                                           /* per device */
    if (smem > 48 * 1024)
      ELMO_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const int res = resident_blocks(kernel, 32 * KT, smem, resident);
    kernel<<<(unsigned)(npairs < res ? npairs : res), 32 * KT, smem, s>>>(a, npairs);
    ELMO_LAUNCH_CHECK();
    return;
  }
  const size_t smem = backward ? bwd_smem<DH, KT>() : fwd_smem<DH, KT>();
  void (*kernel)(attn_args) = backward ? attn_bwd_kernel<DH, KT> : attn_fwd_kernel<DH, KT>;
  if (smem > 48 * 1024)
    ELMO_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  kernel<<<(unsigned)npairs, 32 * KT, smem, s>>>(a);
  ELMO_LAUNCH_CHECK();
}

/* Key tiles of 16: Tp rounded up to 16, 32, 64 or 128 keys. */
template <int DH>
void launch_dh(const attn_args &a, int B, int backward, cudaStream_t s) {
  const int kt = (a.Tp + 15) / 16;
  if (kt <= 1) launch<DH, 1>(a, B, backward, s);
  else if (kt <= 2) launch<DH, 2>(a, B, backward, s);
  else if (kt <= 4) launch<DH, 4>(a, B, backward, s);
  else launch<DH, 8>(a, B, backward, s);
}

void launch_any(const attn_args &a, int B, int dh, int backward, cudaStream_t s) {
  if (dh == 16) launch_dh<16>(a, B, backward, s);
  else if (dh == 32) launch_dh<32>(a, B, backward, s);
  else launch_dh<64>(a, B, backward, s);
}

int fused_shape_ok(int Tp, int dh) {
  return Tp >= 8 && Tp <= ELMO_CUDA_ATTN_FUSED_MAX_TP && Tp % 8 == 0 && (dh == 16 || dh == 32 || dh == 64);
}

/* Shared memory a block of the kernels launch() picks for (DH, KT) needs (the larger of the two ways). */
template <int DH, int KT> constexpr size_t smem_need() {
  return bwd_smem<DH, KT>() > (KT >= 8 ? fwd_pipe_smem<DH, KT>() : fwd_smem<DH, KT>())
             ? bwd_smem<DH, KT>()
             : (KT >= 8 ? fwd_pipe_smem<DH, KT>() : fwd_smem<DH, KT>());
}
template <int DH> size_t smem_need_dh(int Tp) { /* launch_dh's key tiles */
  const int kt = (Tp + 15) / 16;
  return kt <= 1 ? smem_need<DH, 1>() : kt <= 2 ? smem_need<DH, 2>() : kt <= 4 ? smem_need<DH, 4>() : smem_need<DH, 8>();
}

/* The current device gives a block that much shared memory (sm_86 / sm_89 cards stop at 99 KB, below the
 * backward's 109 KB at Tp 128 and head dim 64). */
int smem_fits(int Tp, int dh) {
  const size_t need = dh == 16 ? smem_need_dh<16>(Tp) : dh == 32 ? smem_need_dh<32>(Tp) : smem_need_dh<64>(Tp);
  return need <= (size_t)elmo_cuda_smem_optin();
}

int check_fused(const char *what, const void *const *ptrs, int n, int B, int Tp, int heads, int dh, elmo_err *err) {
  if (B < 0 || heads < 1 || (int64_t)B * heads > 0x7FFFFFFF || !fused_shape_ok(Tp, dh))
    return elmo_fail(err, ELMO_EINPUT, "%s: B %d, Tp %d, heads %d, head dim %d (expected B >= 0, heads >= 1, "
                     "Tp a multiple of 8 in 8..%d, head dim 16, 32 or 64)", what, B, Tp, heads, dh,
                     ELMO_CUDA_ATTN_FUSED_MAX_TP);
  for (int i = 0; i < n; i++)
    if ((uintptr_t)ptrs[i] % 16 != 0)
      return elmo_fail(err, ELMO_EINPUT, "%s: tensor %d at %p is not 16-byte aligned", what, i, ptrs[i]);
  return ELMO_OK;
}

/* ld: 0 (rows of heads * dh) or a row stride of at least that, a multiple of 8 (16-byte rows). */
int check_ld(const char *what, int ld, int H, elmo_err *err) {
  if (ld == 0 || (ld >= H && ld % 8 == 0)) return ELMO_OK;
  return elmo_fail(err, ELMO_EINPUT, "%s: q/k/v row stride %d (expected 0 or a multiple of 8 >= heads x head dim = %d)",
                   what, ld, H);
}

}  // namespace

/* ------------------------------------------------------------------ entries */

extern "C" int elmo_cuda_smem_optin(void) {
  const char *e = getenv("ELMO_SMEM_OPTIN_KB");
  if (e && atoi(e) > 0) return atoi(e) * 1024;
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return optin;
}

extern "C" int elmo_cuda_attention_fused_ok(int Tp, int dh) {
  const char *e = getenv("ELMO_ATTN_FUSED");
  if (e && strcmp(e, "0") == 0) return 0;
  return fused_shape_ok(Tp, dh) && smem_fits(Tp, dh);
}

extern "C" int elmo_cuda_attention_fused_forward_q(const elmo_bf16 *q, const elmo_bf16 *k, const elmo_bf16 *v,
                                                   int ld_qkv, const uint8_t *mask, int B, int Tp, int heads, int dh,
                                                   elmo_bf16 *ctx, uint8_t *ctxq, const float *ctxq_scale,
                                                   cudaStream_t s, elmo_err *err) {
  const void *ptrs[4] = {q, k, v, ctx};
  int rc = check_fused("fused attention forward", ptrs, 4, B, Tp, heads, dh, err);
  if (!rc) rc = check_ld("fused attention forward", ld_qkv, heads * dh, err);
  if (!rc && (ctxq ? !ctxq_scale || (uintptr_t)ctxq % 2 : !ctx))
    rc = elmo_fail(err, ELMO_EINPUT, "fused attention forward: no output, or an E4M3 output without its scale "
                   "or 2-byte alignment");
  if (rc || B == 0) return rc;
  attn_args a = {(const bf16 *)q, (const bf16 *)k, (const bf16 *)v, NULL, mask, Tp, heads,
                 1.0f / sqrtf((float)dh), (bf16 *)ctx, NULL, NULL, NULL, ld_qkv ? ld_qkv : heads * dh, NULL,
                 ctxq, ctxq_scale};
  launch_any(a, B, dh, 0, s);
  return ELMO_OK;
}

extern "C" int elmo_cuda_attention_fused_forward(const elmo_bf16 *q, const elmo_bf16 *k, const elmo_bf16 *v,
                                                 int ld_qkv, const uint8_t *mask, int B, int Tp, int heads, int dh,
                                                 elmo_bf16 *ctx, cudaStream_t s, elmo_err *err) {
  return elmo_cuda_attention_fused_forward_q(q, k, v, ld_qkv, mask, B, Tp, heads, dh, ctx, NULL, NULL, s, err);
}

/* B times the warps of a backward block: KT of launch_dh (key tiles of 16, rounded up to 1, 2, 4 or 8). */
extern "C" int64_t elmo_cuda_attention_colpart_rows(int B, int Tp) {
  const int kt = (Tp + 15) / 16;
  return (int64_t)B * (kt <= 1 ? 1 : kt <= 2 ? 2 : kt <= 4 ? 4 : 8);
}

extern "C" int elmo_cuda_attention_fused_backward(const elmo_bf16 *q, const elmo_bf16 *k, const elmo_bf16 *v,
                                                  int ld_qkv, const elmo_bf16 *dctx, const uint8_t *mask, int B,
                                                  int Tp, int heads, int dh, elmo_bf16 *dq, elmo_bf16 *dk,
                                                  elmo_bf16 *dv, elmo_bf16 *ctx, float *colpart, cudaStream_t s,
                                                  elmo_err *err) {
  const void *ptrs[8] = {q, k, v, dctx, dq, dk, dv, ctx};
  int rc = check_fused("fused attention backward", ptrs, 8, B, Tp, heads, dh, err);
  if (!rc) rc = check_ld("fused attention backward", ld_qkv, heads * dh, err);
  if (rc || B == 0) return rc;
  attn_args a = {(const bf16 *)q, (const bf16 *)k, (const bf16 *)v, (const bf16 *)dctx, mask, Tp, heads,
                 1.0f / sqrtf((float)dh), (bf16 *)ctx, (bf16 *)dq, (bf16 *)dk, (bf16 *)dv,
                 ld_qkv ? ld_qkv : heads * dh, colpart, NULL, NULL};
  launch_any(a, B, dh, 1, s);
  return ELMO_OK;
}
