/* numerics.h: elmo's low-precision numerics (DESIGN.md section 5), shared bit for bit by the CPU
 * reference (C11) and the CUDA kernels (nvcc, C++17).
 *
 * Per-element functions are `static inline ELMO_HD` and work on bit patterns with integer
 * arithmetic only, so host and device give identical bits whatever the compiler contracts (no
 * float arithmetic is involved except exact int->float conversions, one exact power-of-two
 * multiply in elmo_fp8_to_f32, and one lone IEEE single addition in elmo_sr_fp8, which nothing
 * can contract and which FLT_EVAL_METHOD 0 (x86-64 SSE, AArch64) and the GPU round alike).
 *
 *   BF16  (elmo_bf16, uint16_t): the top half of an IEEE binary32.
 *   E4M3fn (elmo_fp8, uint8_t):  sign, 4 exponent bits (bias 7), 3 mantissa bits; normals
 *         2^-6..448, subnormals k * 2^-9 (k = 1..7); no infinities; NaN = 0x7F / 0xFF.
 *
 * Conversions
 *   elmo_f32_to_bf16   round to nearest, ties to even (IEEE); a finite value at or above the
 *                      midpoint between the BF16 maximum and 2^128 becomes inf, as in IEEE and
 *                      __float2bfloat16_rn; NaN stays NaN (quieted, sign and top payload kept).
 *   elmo_bf16_to_f32   exact.
 *   elmo_f32_to_fp8    round to nearest, ties to even, saturating ("satfinite"): |x| > 448
 *                      (inf included) gives +-448; NaN gives 0x7F; subnormals exact.
 *   elmo_fp8_to_f32    exact; 0x7F / 0xFF give NaN.
 *
 * Random bits
 *   elmo_rand_u32(seed, step, tensor, idx) is a pure function of its four arguments, never of
 *   visit order, thread or block. It is Philox4x32-10 (Salmon et al., SC'11; the Random123
 *   definition, checked against its known-answer vectors) with
 *       key     = { lo32(seed), hi32(seed) ^ hi32(step) }
 *       counter = { lo32(idx / 4), hi32(idx / 4), lo32(step), tensor }
 *   and returns word (idx % 4) of the output block. Four consecutive elements 4b..4b+3 thus share
 *   one Philox block: a kernel handling them together calls elmo_rand_block once (elmo_rand_u32
 *   gives the same words one at a time). elmo_rand_block_r is the same with fewer rounds: the
 *   classifier's SR bits, drawn for every weight at every step, use 7 (src/classifier.h).
 *   Steps >= 2^32 fold into the key; (seed, step) pairs that
 *   differ only by equal XORs of hi32(seed) and hi32(step) collide, which needs step >= 2^32.
 *
 * Stochastic rounding (r: 32 uniform random bits, normally elmo_rand_u32(...))
 *   elmo_sr_bf16  adds the low 16 bits of r to the FP32 pattern and clears the low 16 bits:
 *                 rounds away from zero with probability (|x| - lo) / (hi - lo), exactly
 *                 unbiased for |x| <= BF16 max (3.3895e38), subnormals included. A finite x
 *                 never becomes inf: results that would carry into inf saturate to +-BF16 max
 *                 (so |x| in (BF16 max, FLT_MAX] gives +-BF16 max). inf stays inf; NaN stays NaN.
 *   elmo_sr_fp8   rounds |x| to one of its two E4M3 neighbours lo <= |x| < hi, choosing hi with
 *                 probability (|x| - lo) / (hi - lo), using the low 20 bits rr of r.
 *                 |x| >= 2^-6 (normal targets): adds rr to the 20 dropped bits of the FP32
 *                 pattern and truncates; exactly unbiased up to 448. |x| < 2^-6 (subnormal
 *                 targets, step 2^-9): t = |x| + (2^-6 + rr * 2^-29) in IEEE single precision
 *                 (round to nearest even), code = (bits(t) - bits(2^-6)) >> 20, i.e. the same
 *                 truncation in the binade [2^-6, 2^-5) where the FP32 spacing is 2^-29. Exactly
 *                 unbiased for |x| a multiple of 2^-29; otherwise |E[SR(x)] - x| <= 2^-30
 *                 (2^-21 of the step), the FP32 rounding of that one addition. Written this way
 *                 so the GPU rounds with one FP32 add, masks and its E4M3 conversion instruction
 *                 (cuda/classifier_fast.cu), bit for bit. |x| >= 448 (inf included) gives +-448;
 *                 NaN gives 0x7F. The sign is kept (-0 -> 0x80).
 *
 * Bulk helpers (numerics.c, host only) take (dst, src, n) like memcpy; the SR ones draw element i's
 * bits from elmo_rand_u32(seed, step, tensor, idx0 + i), so a tensor processed in pieces gets the
 * same bits as processed whole.
 */
#ifndef ELMO_NUMERICS_H
#define ELMO_NUMERICS_H

#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define ELMO_HD __host__ __device__
#else
#define ELMO_HD
#endif

typedef uint16_t elmo_bf16;
typedef uint8_t elmo_fp8;

#define ELMO_FP8_MAX 448.0f            /* largest finite E4M3fn value, code 0x7E */
#define ELMO_FP8_MAX_CODE 0x7E
#define ELMO_FP8_NAN 0x7F
#define ELMO_BF16_MAX_CODE 0x7F7F      /* 3.38953139e38 */

/* ---- bit casts ---- */

ELMO_HD static inline uint32_t elmo_f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  union { float f; uint32_t u; } v;
  v.f = x;
  return v.u;
#endif
}

ELMO_HD static inline float elmo_bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  union { float f; uint32_t u; } v;
  v.u = u;
  return v.f;
#endif
}

/* ---- BF16 ---- */

ELMO_HD static inline elmo_bf16 elmo_f32_to_bf16(float x) {
  uint32_t u = elmo_f32_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (elmo_bf16)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7FFFu + ((u >> 16) & 1u);  /* ties to even; carries into the exponent as IEEE does */
  return (elmo_bf16)(u >> 16);
}

ELMO_HD static inline float elmo_bf16_to_f32(elmo_bf16 h) {
  return elmo_bits_f32((uint32_t)h << 16);
}

/* ---- FP8 E4M3fn ---- */

ELMO_HD static inline int elmo_fp8_is_nan(elmo_fp8 q) { return (q & 0x7Fu) == 0x7Fu; }

ELMO_HD static inline float elmo_fp8_to_f32(elmo_fp8 q) {
  uint32_t sign = (uint32_t)(q & 0x80u) << 24;
  uint32_t exp = (q >> 3) & 0xFu, man = q & 7u;
  if (exp == 15u && man == 7u) return elmo_bits_f32(sign | 0x7FC00000u);
  if (exp == 0u) {  /* subnormal: man * 2^-9 (exact: small integer times a power of two) */
    float v = (float)man * 0.001953125f;
    return elmo_bits_f32(sign | elmo_f32_bits(v));
  }
  return elmo_bits_f32(sign | ((exp + 120u) << 23) | (man << 20));  /* rebias 7 -> 127 */
}

/* For |x| < 2^-6 given as its FP32 magnitude pattern `a`: writes the integer significand m to
 * *mant and returns s such that |x| / 2^-9 = m / 2^s (s >= 21), i.e. the E4M3 subnormal code is
 * m >> s before rounding. */
ELMO_HD static inline uint32_t elmo_fp8_sub_shift(uint32_t a, uint32_t *mant) {
  uint32_t e = a >> 23;                     /* biased FP32 exponent, 0..120 here */
  uint32_t m = a & 0x7FFFFFu;
  if (e != 0u) m |= 0x800000u; else e = 1u; /* FP32 subnormals: no implicit bit */
  *mant = m;                                /* |x| = m * 2^(e - 150) */
  return 141u - e;                          /* |x| / 2^-9 = m / 2^(141 - e); >= 21 */
}

ELMO_HD static inline elmo_fp8 elmo_f32_to_fp8(float x) {
  uint32_t u = elmo_f32_bits(x);
  uint32_t sign = (u >> 24) & 0x80u, a = u & 0x7FFFFFFFu, code;
  if (a > 0x7F800000u) return (elmo_fp8)ELMO_FP8_NAN;
  if (a >= (121u << 23)) {                  /* E4M3 normal range (or beyond): drop 20 bits */
    uint32_t y = a - (120u << 23);          /* rebias 127 -> 7 */
    y += 0x7FFFFu + ((y >> 20) & 1u);
    code = y >> 20;
    if (code > ELMO_FP8_MAX_CODE) code = ELMO_FP8_MAX_CODE;  /* satfinite, inf included */
  } else {                                  /* subnormal target: k * 2^-9 */
    uint32_t m, s = elmo_fp8_sub_shift(a, &m);
    if (s > 24u) {
      code = 0u;                            /* |x| < 2^-10 rounds to zero (2^-10 ties to 0) */
    } else {
      uint32_t half = 1u << (s - 1u), rem = m & ((1u << s) - 1u);
      code = m >> s;
      if (rem > half || (rem == half && (code & 1u))) code++;
    }
  }
  return (elmo_fp8)(sign | code);
}

/* ---- stochastic rounding ---- */

ELMO_HD static inline elmo_bf16 elmo_sr_bf16(float x, uint32_t r) {
  uint32_t u = elmo_f32_bits(x);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (elmo_bf16)((u >> 16) | 0x0040u);  /* NaN */
  if (a == 0x7F800000u) return (elmo_bf16)(u >> 16);              /* inf */
  u += r & 0xFFFFu;  /* |x| <= FLT_MAX, so the carry stops at the exponent, never at the sign */
  elmo_bf16 h = (elmo_bf16)(u >> 16);
  if ((h & 0x7FFFu) == 0x7F80u) h--;      /* would be inf: saturate to +-BF16 max */
  return h;
}

ELMO_HD static inline elmo_fp8 elmo_sr_fp8(float x, uint32_t r) {
  uint32_t u = elmo_f32_bits(x);
  uint32_t sign = (u >> 24) & 0x80u, a = u & 0x7FFFFFFFu, rr = r & 0xFFFFFu, code;
  if (a > 0x7F800000u) return (elmo_fp8)ELMO_FP8_NAN;
  if (a >= 0x3C800000u) {                   /* |x| >= 2^-6: normal target, 20 dropped bits */
    code = (a - (120u << 23) + rr) >> 20;   /* no overflow: a + rr <= inf + 2^20 */
    if (code > ELMO_FP8_MAX_CODE) code = ELMO_FP8_MAX_CODE;  /* >= 448, inf included */
  } else {                                  /* subnormal target: shift into [2^-6, 2^-5) */
#if defined(__CUDA_ARCH__)
    float t = __fadd_rn(elmo_bits_f32(a), elmo_bits_f32(0x3C800000u | rr));
#else
    float t = elmo_bits_f32(a) + elmo_bits_f32(0x3C800000u | rr);  /* one IEEE single add */
#endif
    code = (elmo_f32_bits(t) - 0x3C800000u) >> 20;  /* 0..8 */
  }
  return (elmo_fp8)(sign | code);
}

/* ---- counter-based random bits: Philox4x32-10 ---- */

/* Philox4x32 with `rounds` rounds (10 is Random123's default; 7 is the fewest Salmon et al. found
 * free of BigCrush failures). */
ELMO_HD static inline void elmo_philox4x32_r(const uint32_t ctr_in[4], const uint32_t key_in[2], int rounds,
                                             uint32_t out[4]) {
  uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
  uint32_t k0 = key_in[0], k1 = key_in[1];
  for (int round = 0; round < rounds; round++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)p1;
    c3 = (uint32_t)p0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

ELMO_HD static inline void elmo_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2],
                                              uint32_t out[4]) {
  elmo_philox4x32_r(ctr_in, key_in, 10, out);
}

/* The four random words of elements 4*block .. 4*block+3 from Philox4x32 with `rounds` rounds
 * (key and counter as in the header comment). */
ELMO_HD static inline void elmo_rand_block_r(uint64_t seed, uint64_t step, uint32_t tensor, uint64_t block,
                                             int rounds, uint32_t out[4]) {
  uint32_t key[2], ctr[4];
  key[0] = (uint32_t)seed;
  key[1] = (uint32_t)(seed >> 32) ^ (uint32_t)(step >> 32);
  ctr[0] = (uint32_t)block;
  ctr[1] = (uint32_t)(block >> 32);
  ctr[2] = (uint32_t)step;
  ctr[3] = tensor;
  elmo_philox4x32_r(ctr, key, rounds, out);
}

/* The four random words of elements 4*block .. 4*block+3 (see the header comment). */
ELMO_HD static inline void elmo_rand_block(uint64_t seed, uint64_t step, uint32_t tensor,
                                           uint64_t block, uint32_t out[4]) {
  elmo_rand_block_r(seed, step, tensor, block, 10, out);
}

ELMO_HD static inline uint32_t elmo_rand_u32(uint64_t seed, uint64_t step, uint32_t tensor,
                                             uint64_t idx) {
  uint32_t w[4];
  elmo_rand_block(seed, step, tensor, idx >> 2, w);
  return w[idx & 3u];
}

/* ---- bulk helpers (host, numerics.c) ---- */

#ifdef __cplusplus
extern "C" {
#endif

void elmo_f32_to_bf16_n(elmo_bf16 *dst, const float *src, size_t n);  /* RN-even */
void elmo_bf16_to_f32_n(float *dst, const elmo_bf16 *src, size_t n);
void elmo_f32_to_fp8_n(elmo_fp8 *dst, const float *src, size_t n);    /* RN-even, satfinite */
void elmo_fp8_to_f32_n(float *dst, const elmo_fp8 *src, size_t n);
/* SR with element i drawing elmo_rand_u32(seed, step, tensor, idx0 + i). */
void elmo_sr_bf16_n(elmo_bf16 *dst, const float *src, size_t n,
                    uint64_t seed, uint64_t step, uint32_t tensor, uint64_t idx0);
void elmo_sr_fp8_n(elmo_fp8 *dst, const float *src, size_t n,
                   uint64_t seed, uint64_t step, uint32_t tensor, uint64_t idx0);

#ifdef __cplusplus
}
#endif

#endif
