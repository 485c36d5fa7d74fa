/* test_numerics.c: BF16/FP8 conversions, stochastic rounding and the counter-based RNG of
 * numerics.h, checked against independent references (ldexp decoding, brute-force nearest
 * value search, exhaustive enumeration of the random bits that SR uses) and statistically. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "numerics.h"

/* ---- independent references ---- */

/* E4M3fn decoded from its definition (NaN for 0x7F/0xFF). */
static double ref_fp8_value(int code) {
  int sign = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return NAN;
  double v = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
  return sign ? -v : v;
}

/* Nearest E4M3 code by search over all finite magnitudes, ties to the even code, |x| > 448
 * saturating (the 448/480 midpoint 464 ties to 448 since 480 would be the odd code 0x7F). */
static int ref_fp8_rn(float x) {
  if (isnan(x)) return 0x7F;
  double a = fabs((double)x);
  int sign = signbit(x) ? 0x80 : 0, best = 0;
  double best_d = INFINITY;
  for (int c = 0; c <= 0x7F; c++) {  /* 0x7F stands for 480 here, then saturates */
    double v = c == 0x7F ? 480.0 : ref_fp8_value(c);
    double d = fabs(a - v);
    if (d < best_d || (d == best_d && (c & 1) == 0)) { best_d = d; best = c; }
  }
  if (best > 0x7E) best = 0x7E;
  return sign | best;
}

/* Nearest BF16 by comparing distances to both truncation neighbours in double (exact). */
static uint16_t ref_bf16_rn(float x) {
  uint32_t u = elmo_f32_bits(x);
  uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
  if ((u & 0xFFFF) == 0) return lo;
  double dl = fabs((double)x - (double)elmo_bf16_to_f32(lo));
  double dh = (hi & 0x7FFF) == 0x7F80 ? ldexp(1.0, 128) - fabs((double)x)  /* inf as 2^128 */
                                      : fabs((double)elmo_bf16_to_f32(hi) - (double)x);
  if (dl < dh || (dl == dh && (lo & 1) == 0)) return lo;
  return hi;
}

/* Magnitude neighbours of |x| (<= 448) among E4M3 codes 0..0x7E: lo <= |x| <= hi. */
static void ref_fp8_neighbours(float x, int *lo, int *hi) {
  double a = fabs((double)x);
  int c = 0;
  while (c < 0x7E && ref_fp8_value(c + 1) <= a) c++;
  *lo = c;
  *hi = ref_fp8_value(c) == a ? c : c + 1;
}

static float fp8_midpoint(int c) {  /* between positive codes c and c+1 (c+1 = 0x7F: 480) */
  double hi = c + 1 == 0x7F ? 480.0 : ref_fp8_value(c + 1);
  return (float)((ref_fp8_value(c) + hi) / 2);
}

/* ---- Philox known answers (Random123 tests/kat_vectors) ---- */

static void test_philox_kat(void **state) {
  (void)state;
  static const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                     {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                                     {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}};
  static const uint32_t key[3][2] = {{0, 0}, {0xffffffff, 0xffffffff}, {0xa4093822, 0x299f31d0}};
  static const uint32_t want[3][4] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                      {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                      {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
  static const uint32_t want7[3][4] = {{0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48},
                                       {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662},
                                       {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}};
  for (int t = 0; t < 3; t++) {
    uint32_t out[4];
    elmo_philox4x32_10(ctr[t], key[t], out);
    for (int j = 0; j < 4; j++) assert_int_equal(out[j], want[t][j]);
    elmo_philox4x32_r(ctr[t], key[t], 7, out); /* the classifier's SR bits */
    for (int j = 0; j < 4; j++) assert_int_equal(out[j], want7[t][j]);
  }
}

/* ---- conversions ---- */

static void test_fp8_decode_exact(void **state) {
  (void)state;
  for (int c = 0; c < 256; c++) {
    double want = ref_fp8_value(c);
    float got = elmo_fp8_to_f32((elmo_fp8)c);
    if (isnan(want)) { assert_true(isnan(got)); continue; }
    if ((double)got != want) fail_msg("fp8 0x%02x: got %.9g want %.9g", c, got, want);
    assert_int_equal(!!signbit(got), c >> 7);  /* -0 keeps its sign */
  }
  assert_true(elmo_fp8_to_f32(0x7E) == 448.0f && elmo_fp8_to_f32(0xFE) == -448.0f);
  assert_true(elmo_fp8_to_f32(0x01) == ldexpf(1.0f, -9) && elmo_fp8_to_f32(0x08) == 0.015625f);
}

static void test_fp8_roundtrip_all(void **state) {
  (void)state;
  for (int c = 0; c < 256; c++) {
    elmo_fp8 back = elmo_f32_to_fp8(elmo_fp8_to_f32((elmo_fp8)c));
    if (elmo_fp8_is_nan((elmo_fp8)c)) { assert_int_equal(back, ELMO_FP8_NAN); continue; }
    if (back != c) fail_msg("fp8 0x%02x round-trips to 0x%02x", c, back);
  }
}

static void test_bf16_roundtrip_all(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = elmo_bf16_to_f32((elmo_bf16)h);
    assert_int_equal(elmo_f32_bits(f), h << 16);  /* exact widening */
    elmo_bf16 back = elmo_f32_to_bf16(f);
    if ((h & 0x7FFF) > 0x7F80) {
      assert_true(isnan(f));
      assert_true(isnan(elmo_bf16_to_f32(back)));
      assert_int_equal(back & 0x8000, h & 0x8000);
    } else if (back != h) {
      fail_msg("bf16 0x%04x round-trips to 0x%04x", h, back);
    }
  }
}

static void check_fp8_rn(float x, int want) {
  int got = elmo_f32_to_fp8(x);
  if (got != want) fail_msg("fp8_rn(%.9g): got 0x%02x want 0x%02x", x, got, want);
}

static void test_fp8_rn_ties_and_saturation(void **state) {
  (void)state;
  for (int c = 0; c <= 0x7E; c++) {  /* every midpoint, subnormal ones and 464 included */
    float m = fp8_midpoint(c);
    int even = (c & 1) == 0 ? c : c + 1;
    if (even > 0x7E) even = 0x7E;
    check_fp8_rn(m, even);
    check_fp8_rn(-m, 0x80 | even);
    check_fp8_rn(nextafterf(m, 0.0f), c);
    check_fp8_rn(nextafterf(m, INFINITY), c + 1 > 0x7E ? 0x7E : c + 1);
  }
  check_fp8_rn(464.0f, 0x7E);
  check_fp8_rn(465.0f, 0x7E);
  check_fp8_rn(1e30f, 0x7E);
  check_fp8_rn(FLT_MAX, 0x7E);
  check_fp8_rn(INFINITY, 0x7E);
  check_fp8_rn(-INFINITY, 0xFE);
  check_fp8_rn(NAN, 0x7F);
  check_fp8_rn(-NAN, 0x7F);
  check_fp8_rn(ldexpf(1.0f, -10), 0x00);          /* tie between 0 and 2^-9 -> 0 */
  check_fp8_rn(ldexpf(3.0f, -10), 0x02);          /* tie between 1 and 2 subnormal -> 2 */
  check_fp8_rn(ldexpf(1.0f, -11), 0x00);
  check_fp8_rn(1e-45f, 0x00);                     /* FP32 subnormal */
  check_fp8_rn(-0.0f, 0x80);
  check_fp8_rn(ldexpf(15.0f, -10), 0x08);         /* 7.5 * 2^-9: tie 7 vs 8 -> 8 = 2^-6 */
  check_fp8_rn(440.0f, 0x7E);                     /* midpoint 416/448 -> 448 (even 0x7E) */
}

static void test_fp8_rn_vs_bruteforce(void **state) {
  (void)state;
  uint64_t rng = 11;
  for (int i = 0; i < 60000; i++) {
    float x;
    if (i % 3 == 0) {  /* random bit patterns over the interesting exponent range */
      uint32_t u = (uint32_t)tu_rand_u64(&rng);
      u = (u & 0x807FFFFFu) | ((uint32_t)(100 + (u >> 23) % 40) << 23);
      x = elmo_bits_f32(u);
    } else {
      x = ldexpf(tu_rand_normal(&rng), (int)(tu_rand_u64(&rng) % 24) - 14);
    }
    check_fp8_rn(x, ref_fp8_rn(x));
  }
}

static void check_bf16_rn(float x) {
  uint16_t got = elmo_f32_to_bf16(x), want = ref_bf16_rn(x);
  if (got != want) fail_msg("bf16_rn(%.9g = 0x%08x): got 0x%04x want 0x%04x", x,
                            elmo_f32_bits(x), got, want);
}

static void test_bf16_rn(void **state) {
  (void)state;
  uint64_t rng = 12;
  for (int i = 0; i < 20000; i++) {
    uint32_t h = (uint32_t)tu_rand_u64(&rng) & 0xFFFF;
    if ((h & 0x7F80) == 0x7F80) continue;  /* inf/NaN handled below */
    static const uint32_t low[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF};
    for (int j = 0; j < 6; j++) check_bf16_rn(elmo_bits_f32(h << 16 | low[j]));
    check_bf16_rn(elmo_bits_f32(h << 16 | ((uint32_t)tu_rand_u64(&rng) & 0xFFFF)));
  }
  assert_int_equal(elmo_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3F80);   /* tie -> even */
  assert_int_equal(elmo_f32_to_bf16(1.0f + ldexpf(3.0f, -8)), 0x3F82);   /* tie -> even */
  assert_int_equal(elmo_f32_to_bf16(FLT_MAX), 0x7F80);                   /* IEEE overflow */
  assert_int_equal(elmo_f32_to_bf16(-INFINITY), 0xFF80);
  assert_true(isnan(elmo_bf16_to_f32(elmo_f32_to_bf16(NAN))));
  assert_true(isnan(elmo_bf16_to_f32(elmo_f32_to_bf16(elmo_bits_f32(0x7F800001u)))));  /* sNaN */
}

static void test_bulk_conversions(void **state) {
  (void)state;
  enum { N = 1000 };
  float x[N], y[N];
  elmo_bf16 h[N];
  elmo_fp8 q[N];
  uint64_t rng = 13;
  for (int i = 0; i < N; i++) x[i] = 100.0f * tu_rand_normal(&rng);
  elmo_f32_to_bf16_n(h, x, N);
  elmo_bf16_to_f32_n(y, h, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(h[i], elmo_f32_to_bf16(x[i]));
    assert_true(y[i] == elmo_bf16_to_f32(h[i]));
  }
  elmo_f32_to_fp8_n(q, x, N);
  elmo_fp8_to_f32_n(y, q, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(q[i], elmo_f32_to_fp8(x[i]));
    assert_true(y[i] == elmo_fp8_to_f32(q[i]));
  }
}

/* ---- stochastic rounding ---- */

/* Mean of SR over n counter-based draws vs x, within 5 binomial sigmas; outputs in {lo, hi}. */
static void check_sr_fp8_mean(float x, uint64_t step, int n) {
  int lo, hi;
  ref_fp8_neighbours(x, &lo, &hi);
  int sign = signbit(x) ? 0x80 : 0;
  double vlo = ref_fp8_value(lo), vhi = ref_fp8_value(hi);
  double p = hi == lo ? 0.0 : (fabs((double)x) - vlo) / (vhi - vlo);
  long ups = 0;
  for (int i = 0; i < n; i++) {
    int q = elmo_sr_fp8(x, elmo_rand_u32(77, step, 5, (uint64_t)i));
    if (q == (sign | hi) && hi != lo) ups++;
    else if (q != (sign | lo)) fail_msg("sr_fp8(%.9g) gave 0x%02x, not 0x%02x/0x%02x", x, q,
                                        sign | lo, sign | hi);
  }
  double sd = sqrt(n * p * (1 - p));
  if (fabs(ups - n * p) > 5 * sd)
    fail_msg("sr_fp8(%.9g): %ld ups of %d, expected %.1f +- %.1f", x, ups, n, n * p, sd);
}

static void test_sr_fp8_unbiased(void **state) {
  (void)state;
  uint64_t rng = 21;
  float xs[32];
  int k = 0;
  for (; k < 8; k++) xs[k] = 3.0f * tu_rand_normal(&rng);
  const float fixed[] = {3.3f * 0.001953125f, -3.3f * 0.001953125f, 0.7f * 0.001953125f,
                         447.0f, -447.0f, 440.5f, 430.0f, 0.00048828125f /* 2^-11 */,
                         1.37f * 0.00048828125f, 1e-7f, 0.01f, 1.0f / 3.0f, -5.1f,
                         0.015f /* just below 2^-6 */};
  for (size_t j = 0; j < sizeof fixed / sizeof fixed[0]; j++) xs[k++] = fixed[j];
  xs[k++] = ldexpf(1.5f, -18);   /* far below the step 2^-9 */
  xs[k++] = ldexpf(-1.7f, -17);
  for (int j = 0; j < k; j++) check_sr_fp8_mean(xs[j], (uint64_t)j, 200000);
}

/* Counts round-ups over all 2^20 values of the low 20 random bits (the high 12 bits random: SR
 * must ignore them): the count must be exactly (|x| - lo) / (hi - lo) * 2^20 where |x| is a
 * multiple of 2^-29 (all of |x| >= 2^-6), and within half a count of it below (the one FP32
 * rounding of the subnormal-target path, |E[SR(x)] - x| <= 2^-30). */
static void check_sr_fp8_exact(float x) {
  int lo, hi;
  ref_fp8_neighbours(x, &lo, &hi);
  double vlo = ref_fp8_value(lo), vhi = ref_fp8_value(hi);
  double want = hi == lo ? 0.0 : ldexp((fabs((double)x) - vlo) / (vhi - vlo), 20);
  uint64_t rng = 31, ups = 0;
  const uint32_t mask = 0xFFFFFu;
  int sign = signbit(x) ? 0x80 : 0;
  for (uint64_t j = 0; j <= mask; j++) {
    uint32_t r = ((uint32_t)tu_rand_u64(&rng) & ~mask) | (uint32_t)j;
    int q = elmo_sr_fp8(x, r);
    if (q == (sign | hi) && hi != lo) ups++;
    else if (q != (sign | lo)) fail_msg("sr_fp8(%.9g, 0x%08x) gave 0x%02x", x, r, q);
  }
  double m = ldexp(fabs((double)x), 29);
  double tol = m == floor(m) ? 0.0 : 0.5;
  if (fabs((double)ups - want) > tol)
    fail_msg("sr_fp8(%.9g): %llu ups of 2^20, want %.3f (tolerance %.1f)", x, (unsigned long long)ups, want, tol);
}

static void test_sr_fp8_exact_expectation(void **state) {
  (void)state;
  check_sr_fp8_exact(1.0f / 3.0f);
  check_sr_fp8_exact(-447.0f);
  check_sr_fp8_exact(440.5f);
  check_sr_fp8_exact(0.015625f + 0x1p-23f);           /* just above 2^-6: normal target */
  check_sr_fp8_exact(3.0f * 0.001953125f + 12345.0f * 0x1p-29f);  /* subnormal target, on 2^-29 */
  check_sr_fp8_exact(-0x1p-20f * 777.0f);             /* a multiple of 2^-29 far below */
  check_sr_fp8_exact(0.015f);                         /* [2^-7, 2^-6): spacing 2^-30 */
  check_sr_fp8_exact(3.3f * 0.001953125f);            /* [2^-8, 2^-7) */
  check_sr_fp8_exact(1.37f * 0.00048828125f);         /* [2^-11, 2^-10) */
  check_sr_fp8_exact(1.1f * 0x1p-25f);                /* far below the step */
}

static void test_sr_fp8_neighbours_and_fixed_points(void **state) {
  (void)state;
  uint64_t rng = 41;
  for (int c = 0; c < 256; c++) {  /* representable values never move */
    if (elmo_fp8_is_nan((elmo_fp8)c)) continue;
    float v = elmo_fp8_to_f32((elmo_fp8)c);
    for (int j = 0; j < 200; j++)
      assert_int_equal(elmo_sr_fp8(v, (uint32_t)tu_rand_u64(&rng)), c);
  }
  for (int i = 0; i < 100000; i++) {
    float x = ldexpf(tu_rand_normal(&rng), (int)(tu_rand_u64(&rng) % 26) - 16);
    int lo, hi, q = elmo_sr_fp8(x, (uint32_t)tu_rand_u64(&rng)) & 0x7F;
    if (fabsf(x) >= 448.0f) { assert_int_equal(q, 0x7E); continue; }
    ref_fp8_neighbours(x, &lo, &hi);
    if (q != lo && q != hi) fail_msg("sr_fp8(%.9g) = 0x%02x not in {0x%02x, 0x%02x}", x, q, lo, hi);
  }
  const uint32_t rs[] = {0, 0xFFFFFFFFu, 0x80000000u, 0x000FFFFFu};
  for (int j = 0; j < 4; j++) {
    assert_int_equal(elmo_sr_fp8(448.5f, rs[j]), 0x7E);
    assert_int_equal(elmo_sr_fp8(1e20f, rs[j]), 0x7E);
    assert_int_equal(elmo_sr_fp8(-INFINITY, rs[j]), 0xFE);
    assert_int_equal(elmo_sr_fp8(NAN, rs[j]), 0x7F);
    assert_int_equal(elmo_sr_fp8(1e-45f, rs[j]), 0x00);
  }
  assert_int_equal(elmo_sr_fp8(447.0f, 0xFFFFFFFFu), 0x7E);  /* rounds up to 448, not beyond */
}

static void test_sr_bf16(void **state) {
  (void)state;
  uint64_t rng = 51;
  for (int i = 0; i < 40; i++) {  /* exact expectation over all 2^16 low bits */
    float x = i == 0 ? 1e-40f : ldexpf(tu_rand_normal(&rng), (int)(tu_rand_u64(&rng) % 60) - 30);
    uint32_t frac = elmo_f32_bits(x) & 0xFFFF, ups = 0;
    elmo_bf16 lo = (elmo_bf16)(elmo_f32_bits(x) >> 16);
    for (uint32_t j = 0; j < 65536; j++) {
      elmo_bf16 h = elmo_sr_bf16(x, ((uint32_t)tu_rand_u64(&rng) & 0xFFFF0000u) | j);
      if (h == lo + 1) ups++;
      else assert_int_equal(h, lo);
    }
    assert_int_equal(ups, frac);
  }
  for (int i = 0; i < 8; i++) {  /* statistical, with counter bits */
    float x = 7.0f * tu_rand_normal(&rng);
    double sum = 0, sd;
    elmo_bf16 lo = (elmo_bf16)(elmo_f32_bits(x) >> 16);
    double step = fabs((double)elmo_bf16_to_f32(lo + 1) - elmo_bf16_to_f32(lo));
    for (int j = 0; j < 200000; j++)
      sum += elmo_bf16_to_f32(elmo_sr_bf16(x, elmo_rand_u32(5, 9, 3, (uint64_t)j)));
    double p = (elmo_f32_bits(x) & 0xFFFF) / 65536.0;
    sd = step * sqrt(p * (1 - p) / 200000);
    if (!(fabs(sum / 200000 - x) <= 5 * sd + 1e-12)) fail_msg("sr_bf16(%.9g) mean %.9g", x, sum / 200000);
  }
  assert_int_equal(elmo_sr_bf16(INFINITY, 0xFFFF), 0x7F80);
  assert_int_equal(elmo_sr_bf16(-INFINITY, 0xFFFF), 0xFF80);
  assert_true(isnan(elmo_bf16_to_f32(elmo_sr_bf16(NAN, 0xFFFF))));
  assert_int_equal(elmo_sr_bf16(FLT_MAX, 0xFFFF), ELMO_BF16_MAX_CODE);   /* never inf */
  assert_int_equal(elmo_sr_bf16(-FLT_MAX, 0x1), 0x8000 | ELMO_BF16_MAX_CODE);
  assert_int_equal(elmo_sr_bf16(elmo_bits_f32(0x7F7F0001u), 0xFFFF), ELMO_BF16_MAX_CODE);
  assert_int_equal(elmo_sr_bf16(1.0f, 0xFFFFFFFFu), 0x3F80);             /* exact stays */
}

/* SR of an array: forward, in a shuffled order, and through the bulk helpers in uneven pieces
 * must give the same bits. */
static void test_sr_order_independent(void **state) {
  (void)state;
  enum { N = 10007 };
  static float x[N];
  static elmo_fp8 fwd8[N], shuf8[N], bulk8[N];
  static elmo_bf16 fwd16[N], shuf16[N], bulk16[N];
  static uint32_t perm[N];
  uint64_t rng = 61, seed = 0xDEADBEEFCAFEull, step = 123456789012ull, base = 1ull << 33;
  for (int i = 0; i < N; i++) { x[i] = 2.0f * tu_rand_normal(&rng); perm[i] = (uint32_t)i; }
  for (int i = N - 1; i > 0; i--) {
    int j = (int)(tu_rand_u64(&rng) % (uint64_t)(i + 1));
    uint32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
  }
  for (int i = 0; i < N; i++) {
    fwd8[i] = elmo_sr_fp8(x[i], elmo_rand_u32(seed, step, 2, base + (uint64_t)i));
    fwd16[i] = elmo_sr_bf16(x[i], elmo_rand_u32(seed, step, 3, base + (uint64_t)i));
  }
  for (int k = 0; k < N; k++) {
    uint32_t i = perm[k];
    shuf8[i] = elmo_sr_fp8(x[i], elmo_rand_u32(seed, step, 2, base + i));
    shuf16[i] = elmo_sr_bf16(x[i], elmo_rand_u32(seed, step, 3, base + i));
  }
  for (size_t off = 0, len = 1; off < N; off += len, len = len * 2 + 1) {
    if (len > N - off) len = N - off;
    elmo_sr_fp8_n(bulk8 + off, x + off, len, seed, step, 2, base + off);
    elmo_sr_bf16_n(bulk16 + off, x + off, len, seed, step, 3, base + off);
  }
  assert_memory_equal(fwd8, shuf8, sizeof fwd8);
  assert_memory_equal(fwd8, bulk8, sizeof fwd8);
  assert_memory_equal(fwd16, shuf16, sizeof fwd16);
  assert_memory_equal(fwd16, bulk16, sizeof fwd16);
  int moved = 0;  /* SR must actually be random: about half the elements round up */
  for (int i = 0; i < N; i++) moved += fwd8[i] != elmo_sr_fp8(x[i], 0);
  assert_in_range(moved, N / 4, 3 * N / 4);
}

/* ---- random bits ---- */

static double chi_square_256(const uint32_t *v, int n, int shift) {
  long count[256] = {0};
  for (int i = 0; i < n; i++) count[(v[i] >> shift) & 255]++;
  double e = n / 256.0, chi = 0;
  for (int b = 0; b < 256; b++) chi += (count[b] - e) * (count[b] - e) / e;
  return chi;
}

static void test_rng_uniform(void **state) {
  (void)state;
  enum { N = 1 << 20 };
  uint32_t *v = malloc(N * sizeof *v);
  assert_non_null(v);
  double sum = 0;
  for (int i = 0; i < N; i++) {
    v[i] = elmo_rand_u32(2024, 3, 9, (uint64_t)i);
    sum += v[i] * 0x1p-32;
  }
  double sd = sqrt(1.0 / 12 / N);
  assert_true(fabs(sum / N - 0.5) < 5 * sd);
  for (int shift = 0; shift <= 24; shift += 8) {  /* low bytes matter: SR uses low bits */
    double chi = chi_square_256(v, N, shift);     /* 255 dof: mean 255, sd 22.6 */
    if (!(chi > 120 && chi < 390)) fail_msg("chi-square byte %d: %.1f", shift / 8, chi);
  }
  for (int bit = 0; bit < 32; bit++) {  /* every single bit is balanced */
    long ones = 0;
    for (int i = 0; i < N; i++) ones += (v[i] >> bit) & 1;
    assert_true(fabs(ones - N / 2.0) < 5 * sqrt(N / 4.0));
  }
  free(v);
}

/* Words of two streams agree at about 2^-32 of positions and differ in about 16 bits. */
static void check_streams_differ(uint64_t s1, uint64_t st1, uint32_t t1,
                                 uint64_t s2, uint64_t st2, uint32_t t2) {
  enum { N = 8192 };
  int same = 0;
  long diff_bits = 0;
  for (uint64_t i = 0; i < N; i++) {
    uint32_t a = elmo_rand_u32(s1, st1, t1, i), b = elmo_rand_u32(s2, st2, t2, i);
    same += a == b;
    diff_bits += __builtin_popcount(a ^ b);
  }
  assert_true(same <= 1);
  assert_true(fabs(diff_bits / (double)N - 16.0) < 5 * sqrt(8.0 / N));
}

static void test_rng_streams_differ(void **state) {
  (void)state;
  const uint64_t s = 0x0123456789ABCDEFull, st = 1000;
  const uint32_t t = 4;
  check_streams_differ(s, st, t, s + 1, st, t);
  check_streams_differ(s, st, t, s ^ (1ull << 40), st, t);
  check_streams_differ(s, st, t, s, st + 1, t);
  check_streams_differ(s, st, t, s, st + (1ull << 32), t);
  check_streams_differ(s, st, t, s, st, t + 1);
  check_streams_differ(0, 0, 0, 0, 0, 1);
  /* neighbouring elements, and elements one block (4) apart, differ too */
  int same = 0;
  for (uint64_t i = 0; i < 8192; i++) {
    uint32_t a = elmo_rand_u32(s, st, t, i);
    same += a == elmo_rand_u32(s, st, t, i + 1);
    same += a == elmo_rand_u32(s, st, t, i + 4);
  }
  assert_true(same <= 1);
  /* elmo_rand_u32 is word idx%4 of block idx/4, also for indices beyond 2^32 */
  uint64_t idxs[] = {0, 5, 1ull << 32, (1ull << 40) + 3, UINT64_MAX};
  for (int k = 0; k < 5; k++) {
    uint32_t w[4];
    elmo_rand_block(s, st, t, idxs[k] >> 2, w);
    assert_int_equal(elmo_rand_u32(s, st, t, idxs[k]), w[idxs[k] & 3]);
  }
  /* pure function: same arguments, same bits */
  assert_int_equal(elmo_rand_u32(9, 8, 7, 6), elmo_rand_u32(9, 8, 7, 6));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_philox_kat),
    cmocka_unit_test(test_fp8_decode_exact),
    cmocka_unit_test(test_fp8_roundtrip_all),
    cmocka_unit_test(test_bf16_roundtrip_all),
    cmocka_unit_test(test_fp8_rn_ties_and_saturation),
    cmocka_unit_test(test_fp8_rn_vs_bruteforce),
    cmocka_unit_test(test_bf16_rn),
    cmocka_unit_test(test_bulk_conversions),
    cmocka_unit_test(test_sr_fp8_unbiased),
    cmocka_unit_test(test_sr_fp8_exact_expectation),
    cmocka_unit_test(test_sr_fp8_neighbours_and_fixed_points),
    cmocka_unit_test(test_sr_bf16),
    cmocka_unit_test(test_sr_order_independent),
    cmocka_unit_test(test_rng_uniform),
    cmocka_unit_test(test_rng_streams_differ),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
