/* test_classifier.c: the CPU reference classifier step (classifier.h) against double-precision
 * math: dX, loss, the fused update, SR neighbours, chunk invariance, padded rows, head Kahan, top-k. */
#include "testutil.h"
#include "classifier.h"
#include "model.h"
#include "numerics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { B = 6, D = 32, L = 37, LP = 48 };

typedef struct fixture {
  float X[B * D], Xq[B * D], dX[B * D], z[B * LP];
  float Wf[LP * D];
  uint8_t W8[LP * D];
  uint16_t W16[LP * D];
  int64_t yp[B + 1];
  int32_t yi[B * 4];
} fixture;

static void make(fixture *f, uint64_t seed) {
  uint64_t s = seed;
  memset(f, 0, sizeof *f);
  for (int i = 0; i < B * D; i++) f->X[i] = tu_rand_normal(&s);
  for (int i = 0; i < L * D; i++) {
    f->Wf[i] = 0.2f * tu_rand_normal(&s);
    f->W8[i] = elmo_f32_to_fp8(f->Wf[i]);
    f->W16[i] = elmo_f32_to_bf16(f->Wf[i]);
  }
  int n = 0;
  for (int b = 0; b < B; b++) {
    f->yp[b] = n;
    int c = b % 4; /* row 0 has no labels */
    for (int j = 0; j < c; j++) f->yi[n++] = (int32_t)((b * 7 + j * 11) % L);
  }
  f->yp[B] = n;
  /* labels sorted per row for the reference */
}

static int is_pos(const fixture *f, int b, int l) {
  for (int64_t e = f->yp[b]; e < f->yp[b + 1]; e++)
    if (f->yi[e] == l) return 1;
  return 0;
}

static elmo_cls_weights weights(fixture *f, elmo_dtype dt) {
  elmo_cls_weights w = {.W = dt == ELMO_FP8 ? (void *)f->W8 : dt == ELMO_BF16 ? (void *)f->W16 : (void *)f->Wf,
                        .dtype = dt, .L = L, .L_pad = LP, .d = D};
  return w;
}

/* dX and loss match double precision math on the same cast inputs (bf16 logits/G: ~1e-2). */
static void test_dx_and_loss(void **state) {
  fixture *f = malloc(sizeof *f);
  make(f, 11);
  elmo_cls_weights w = weights(f, ELMO_F32);
  float W0[LP * D];
  memcpy(W0, f->Wf, sizeof W0);
  elmo_cls_hyper h = {.lr = 0.0, .weight_decay = 0.0, .seed = 1, .step = 0};
  double loss = elmo_cls_step(&w, f->X, 1, B, 16, f->yp, f->yi, &h, 1, f->Xq, f->z, f->dX);
  double ref_loss = 0, num = 0, den = 0;
  for (int b = 0; b < B; b++)
    for (int k = 0; k < D; k++) {
      double g = 0;
      for (int l = 0; l < L; l++) {
        double zz = 0;
        for (int kk = 0; kk < D; kk++) zz += (double)f->Xq[b * D + kk] * W0[l * D + kk];
        double y = is_pos(f, b, l);
        if (k == 0) ref_loss += fmax(zz, 0) + log1p(exp(-fabs(zz))) - y * zz;
        g += (1.0 / (1.0 + exp(-zz)) - y) * W0[l * D + k];
      }
      num += (f->dX[b * D + k] - g) * (f->dX[b * D + k] - g);
      den += g * g;
      assert_false(isnan(f->dX[b * D + k]));
    }
  assert_true(sqrt(num / den) < 1e-2);
  assert_true(fabs(loss - ref_loss) / ref_loss < 1e-2);
  /* lr 0: fp32 weights unchanged */
  assert_memory_equal(W0, f->Wf, sizeof W0);
  free(f);
}

/* fp32 update: W' = W - lr (G^T Xq + wd W) with G = bf16(sigmoid(bf16(z)) - y). */
static void test_update_fp32(void **state) {
  fixture *f = malloc(sizeof *f);
  make(f, 12);
  elmo_cls_weights w = weights(f, ELMO_F32);
  float W0[LP * D];
  memcpy(W0, f->Wf, sizeof W0);
  elmo_cls_hyper h = {.lr = 0.1, .weight_decay = 0.01, .seed = 1, .step = 3};
  elmo_cls_step(&w, f->X, 0, B, LP, f->yp, f->yi, &h, 0, f->Xq, f->z, f->dX);
  double maxerr = 0;
  for (int l = 0; l < LP; l++)
    for (int k = 0; k < D; k++) {
      double g = 0;
      if (l < L)
        for (int b = 0; b < B; b++) {
          double zz = 0;
          for (int kk = 0; kk < D; kk++) zz += (double)f->Xq[b * D + kk] * W0[l * D + kk];
          g += (1.0 / (1.0 + exp(-zz)) - is_pos(f, b, l)) * f->Xq[b * D + k];
        }
      double ref = l < L ? W0[l * D + k] - 0.1 * (g + 0.01 * W0[l * D + k]) : 0.0;
      double e = fabs(f->Wf[l * D + k] - ref);
      if (e > maxerr) maxerr = e;
    }
  assert_true(maxerr < 0.1 * 0.02 * B); /* bf16 logits and G: a few 1e-3 of each gradient term */
  for (int i = L * D; i < LP * D; i++) assert_true(f->Wf[i] == 0.0f); /* padded rows stay zero */
  free(f);
}

/* fp8 and bf16: every updated weight is one of the two neighbours of the fp32 result. */
static void test_sr_neighbours(void **state) {
  for (int dt = 0; dt < 2; dt++) {
    fixture *f = malloc(sizeof *f), *g = malloc(sizeof *g);
    make(f, 13);
    elmo_cls_weights w = weights(f, dt ? ELMO_BF16 : ELMO_FP8);
    /* reference: the same step in fp32 starting from the low-precision weights */
    *g = *f;
    for (int i = 0; i < LP * D; i++) g->Wf[i] = elmo_cls_w(&w, i / D, i % D);
    elmo_cls_weights wr = weights(g, ELMO_F32);
    elmo_cls_hyper h = {.lr = 0.05, .weight_decay = 0.0, .seed = 7, .step = 1};
    float before[LP * D];
    for (int i = 0; i < LP * D; i++) before[i] = g->Wf[i];
    elmo_cls_step(&w, f->X, 1, B, 16, f->yp, f->yi, &h, 0, f->Xq, f->z, f->dX);
    elmo_cls_step(&wr, g->X, 1, B, 16, g->yp, g->yi, &h, 0, g->Xq, g->z, g->dX);
    int moved = 0;
    for (int i = 0; i < L * D; i++) {
      float v = g->Wf[i], q = elmo_cls_w(&w, i / D, i % D);
      float dn = dt ? elmo_bf16_to_f32(elmo_sr_bf16(v, 0)) : elmo_fp8_to_f32(elmo_sr_fp8(v, 0));
      float up = dt ? elmo_bf16_to_f32(elmo_sr_bf16(v, 0xFFFFFFFFu)) : elmo_fp8_to_f32(elmo_sr_fp8(v, 0xFFFFFFFFu));
      if (!(q == dn || q == up)) fail_msg("dtype %d element %d: %g not in {%g, %g} (exact %g)", dt, i, q, dn, up, v);
      moved += q != before[i];
    }
    assert_true(moved > 0);
    free(f);
    free(g);
  }
}

/* Chunking changes nothing: SR bits are keyed by element, accumulation order is per label. */
static void test_chunk_invariance(void **state) {
  fixture *a = malloc(sizeof *a), *b = malloc(sizeof *b);
  make(a, 14);
  *b = *a;
  elmo_cls_weights wa = weights(a, ELMO_FP8), wb = weights(b, ELMO_FP8);
  elmo_cls_hyper h = {.lr = 0.2, .weight_decay = 0.001, .seed = 9, .step = 5};
  double la = elmo_cls_step(&wa, a->X, 1, B, 16, a->yp, a->yi, &h, 1, a->Xq, a->z, a->dX);
  double lb = elmo_cls_step(&wb, b->X, 1, B, LP, b->yp, b->yi, &h, 1, b->Xq, b->z, b->dX);
  assert_memory_equal(a->W8, b->W8, sizeof a->W8);
  assert_memory_equal(a->dX, b->dX, sizeof a->dX);
  assert_true(la == lb);
  /* a different step draws different bits */
  make(a, 14);
  h.step = 6;
  elmo_cls_step(&wa, a->X, 1, B, 16, a->yp, a->yi, &h, 0, a->Xq, a->z, a->dX);
  assert_memory_not_equal(a->W8, b->W8, sizeof a->W8);
  free(a);
  free(b);
}

/* Head Kahan: updates far below half an ulp still accumulate; plain RN would never move. */
static void test_head_kahan(void **state) {
  uint16_t W[16 * 16] = {0}, c[16] = {0};
  for (int k = 0; k < 16; k++) W[k] = elmo_f32_to_bf16(1.0f);
  int32_t slot[16];
  for (int l = 0; l < 16; l++) slot[l] = l == 0 ? 0 : -1;
  elmo_cls_weights w = {.W = W, .dtype = ELMO_BF16, .L = 1, .L_pad = 16, .d = 16, .kahan = c, .head_slot = slot};
  float G[1 * 16] = {0}, Xq[16];
  G[0] = -1.0f; /* gradient -x: the update adds lr * x */
  for (int k = 0; k < 16; k++) Xq[k] = 1.0f;
  elmo_cls_hyper h = {.lr = 1e-3, .weight_decay = 0, .seed = 1, .step = 0};
  for (int s = 0; s < 100; s++) elmo_cls_update(&w, G, Xq, 1, 0, 16, &h);
  float v = elmo_bf16_to_f32(W[0]) + elmo_bf16_to_f32(c[0]);
  assert_true(fabsf(v - 1.1f) < 2e-3);
  assert_true(elmo_bf16_to_f32(W[0]) > 1.09f);
}

/* Label sharding's head lists (elmo_model_shard_heads): each shard gets the head labels in its range in md's
 * (frequency) order, re-based, and each one's slot in md's list; over the shards every slot once. */
static void test_shard_heads(void **state) {
  elmo_model_desc md = {0};
  int32_t heads[6] = {90, 3, 47, 12, 88, 79}; /* most frequent first */
  md.head_labels = heads;
  md.n_head = 6;
  int32_t *lab;
  int64_t *glob;
  assert_int_equal(elmo_model_shard_heads(&md, 0, 64, &lab, &glob), 3);
  assert_int_equal(lab[0], 3);
  assert_int_equal(lab[1], 47);
  assert_int_equal(lab[2], 12);
  assert_int_equal(glob[0], 1);
  assert_int_equal(glob[1], 2);
  assert_int_equal(glob[2], 3);
  free(lab);
  free(glob);
  assert_int_equal(elmo_model_shard_heads(&md, 64, 36, &lab, NULL), 3);
  assert_int_equal(lab[0], 26);
  assert_int_equal(lab[1], 24);
  assert_int_equal(lab[2], 15);
  free(lab);
  assert_int_equal(elmo_model_shard_heads(&md, 91, 9, &lab, &glob), 0); /* none: both stay NULL */
  assert_null(lab);
  assert_null(glob);
  /* random head sets over 1..5 shards of 16-aligned spans: a partition of the slots, order kept */
  uint64_t s = 7;
  for (int trial = 0; trial < 50; trial++) {
    const int64_t L = 17 + (int64_t)((uint32_t)tu_rand_u64(&s) % 5000), n = 1 + (int)((uint32_t)tu_rand_u64(&s) % 5);
    int32_t ids[64];
    md.n_head = 1 + (int64_t)((uint32_t)tu_rand_u64(&s) % 64);
    if (md.n_head > L) md.n_head = L;
    for (int64_t h = 0; h < md.n_head; h++) { /* distinct labels */
      int32_t v;
      int dup;
      do {
        v = (int32_t)((uint32_t)tu_rand_u64(&s) % (uint32_t)L);
        dup = 0;
        for (int64_t i = 0; i < h; i++) dup |= ids[i] == v;
      } while (dup);
      ids[h] = v;
    }
    md.head_labels = ids;
    int seen[64] = {0};
    const int64_t per = ((L + n - 1) / n + 15) / 16 * 16;
    for (int64_t base = 0; base < L; base += per) {
      const int64_t count = L - base < per ? L - base : per;
      const int64_t got = elmo_model_shard_heads(&md, base, count, &lab, &glob);
      for (int64_t j = 0; j < got; j++) {
        assert_true(lab[j] >= 0 && lab[j] < count);
        assert_int_equal(lab[j] + base, ids[glob[j]]);
        if (j) assert_true(glob[j] > glob[j - 1]);
        seen[glob[j]]++;
      }
      free(lab);
      free(glob);
    }
    for (int64_t h = 0; h < md.n_head; h++) assert_int_equal(seen[h], 1);
  }
}

/* e4m3 SR bits (classifier.h), rebuilt here bit by bit from the definition: weight (l, k) is position
 * p = 8 ((k % 128) / 32) + k % 8 of group ((l * ceil(d / 128) + k / 128) * 4 + (k % 32) / 8), whose
 * 640 bits are the words of Philox blocks 5 grp .. 5 grp + 4, and it takes bits 20 p .. 20 p + 19.
 * d = 176: a whole 128-feature span and a part of one (quarters 0, 1 of its second 32 only). */
static uint32_t sr8_bits_ref(const elmo_cls_hyper *h, int64_t l, int64_t k, int64_t d) {
  const uint64_t grp = ((uint64_t)l * (uint64_t)((d + 127) / 128) + (uint64_t)(k / 128)) * 4 + (uint64_t)((k % 32) / 8);
  const int p = (int)(8 * ((k % 128) / 32) + k % 8);
  uint32_t words[20];
  for (int j = 0; j < 5; j++)
    elmo_rand_block_r(h->seed, (uint64_t)h->step, ELMO_RNG_CLS_SR, 5 * grp + (uint64_t)j, ELMO_CLS_SR_ROUNDS,
                      words + 4 * j);
  uint32_t r = 0;
  for (int b = 0; b < 20; b++) {
    const int bit = 20 * p + b;
    r |= ((words[bit / 32] >> (bit % 32)) & 1u) << b;
  }
  return r;
}

/* Random codes in lw (e4m3 or bf16, nl rows of d) and their values in wf, then one update of both with
 * random G and Xq: wf then holds the exact FP32 values that lw's update rounded with SR. */
static void update_twins(elmo_cls_weights *lw, elmo_cls_weights *wf, int64_t nb, const elmo_cls_hyper *h, uint64_t seed) {
  const int64_t d = lw->d, n = lw->L_pad, fp8 = lw->dtype == ELMO_FP8;
  float *G = malloc(sizeof(float) * (size_t)(nb * n)), *Xq = malloc(sizeof(float) * (size_t)(nb * d));
  for (int64_t i = 0; i < lw->L * d; i++) {
    const float v = 0.05f * tu_rand_normal(&seed);
    if (fp8) ((uint8_t *)lw->W)[i] = elmo_f32_to_fp8(v);
    else ((uint16_t *)lw->W)[i] = elmo_f32_to_bf16(v);
    ((float *)wf->W)[i] = elmo_cls_w(lw, i / d, i % d);
  }
  for (int64_t i = 0; i < nb * n; i++) G[i] = elmo_bf16_to_f32(elmo_f32_to_bf16(0.5f * tu_rand_normal(&seed)));
  for (int64_t i = 0; i < nb * d; i++) {
    const float x = tu_rand_normal(&seed);
    Xq[i] = fp8 ? elmo_fp8_to_f32(elmo_f32_to_fp8(x)) : elmo_bf16_to_f32(elmo_f32_to_bf16(x));
  }
  elmo_cls_update(lw, G, Xq, nb, 0, n, h);
  elmo_cls_update(wf, G, Xq, nb, 0, n, h);
  free(G);
  free(Xq);
}

static void test_sr8_bits(void **state) {
  (void)state;
  enum { NB = 3, ND = 176, NL = 5, NLP = 16 };
  uint8_t W8[NLP * ND] = {0};
  float Wf[NLP * ND] = {0};
  elmo_cls_weights w8 = {.W = W8, .dtype = ELMO_FP8, .L = NL, .L_pad = NLP, .d = ND};
  elmo_cls_weights wf = {.W = Wf, .dtype = ELMO_F32, .L = NL, .L_pad = NLP, .d = ND};
  elmo_cls_hyper h = {.lr = 0.01, .weight_decay = 0.0, .seed = 0x1234567890ABCDEFull, .step = 41};
  update_twins(&w8, &wf, NB, &h, 99);
  int moved = 0;
  for (int64_t l = 0; l < NL; l++)
    for (int64_t k = 0; k < ND; k++) {
      const float v = Wf[l * ND + k];
      const uint8_t want = elmo_sr_fp8(v, sr8_bits_ref(&h, l, k, ND)), got = W8[l * ND + k];
      if (got != want) fail_msg("weight (%lld, %lld): 0x%02x, definition gives 0x%02x (value %g)", (long long)l,
                                (long long)k, got, want, v);
      moved += elmo_fp8_to_f32(got) != elmo_fp8_to_f32(elmo_f32_to_fp8(v));
    }
  assert_true(moved > 0); /* some rounded away from the nearest code: the bits are in use */
  /* the fields of distinct positions are distinct draws: no two of a row's 176 fields coincide here */
  for (int64_t k = 0; k < ND; k++)
    for (int64_t k2 = k + 1; k2 < ND; k2++)
      assert_true(sr8_bits_ref(&h, 2, k, ND) != sr8_bits_ref(&h, 2, k2, ND));
}

/* bf16 SR bits (classifier.h): element i = l d + k takes the low (even i) or high (odd i) 16 bits of word
 * (i % 8) / 2 of Philox block i / 8. */
static void test_sr16_bits(void **state) {
  (void)state;
  enum { NB = 2, ND = 48, NL = 3, NLP = 16 };
  uint16_t W16[NLP * ND] = {0};
  float Wf[NLP * ND] = {0};
  elmo_cls_weights wb = {.W = W16, .dtype = ELMO_BF16, .L = NL, .L_pad = NLP, .d = ND};
  elmo_cls_weights wf = {.W = Wf, .dtype = ELMO_F32, .L = NL, .L_pad = NLP, .d = ND};
  elmo_cls_hyper h = {.lr = 0.01, .weight_decay = 0.0, .seed = 5, .step = 8};
  update_twins(&wb, &wf, NB, &h, 7);
  int moved = 0;
  for (int64_t i = 0; i < NL * ND; i++) {
    uint32_t blk[4];
    elmo_rand_block_r(h.seed, (uint64_t)h.step, ELMO_RNG_CLS_SR, (uint64_t)(i / 8), ELMO_CLS_SR_ROUNDS, blk);
    const uint32_t r = (blk[(i % 8) / 2] >> (i % 2 ? 16 : 0)) & 0xFFFFu;
    const uint16_t want = elmo_sr_bf16(Wf[i], r);
    if (W16[i] != want) fail_msg("element %lld: 0x%04x, definition gives 0x%04x", (long long)i, W16[i], want);
    moved += W16[i] != elmo_f32_to_bf16(Wf[i]);
  }
  assert_true(moved > 0);
}

/* Top-k merge: score order, ties to the lower label, filters, padded labels ignored. */
/* The GPU's gradient table gives elmo_cls_grad's bits for every bf16 logit, positive or not. */
static void test_grad_table(void **state) {
  (void)state;
  enum { N = 65536 };
  float *z = malloc(sizeof(float) * 2 * N);
  uint16_t *t = malloc(sizeof(uint16_t) * 2 * N);
  int32_t *yi = malloc(sizeof(int32_t) * N);
  for (int r = 0; r < 2; r++)
    for (int c = 0; c < N; c++) z[r * N + c] = elmo_bf16_to_f32((elmo_bf16)c);
  for (int c = 0; c < N; c++) yi[c] = c; /* row 1: every label positive; row 0: none */
  int64_t yp[3] = {0, 0, N};
  elmo_cls_grad(z, 2, 0, N, N, yp, yi, 0);
  elmo_cls_grad_table(t);
  for (int r = 0; r < 2; r++)
    for (int c = 0; c < N; c++) {
      uint32_t got = elmo_f32_bits(elmo_bf16_to_f32(t[r * N + c])), want = elmo_f32_bits(z[r * N + c]);
      if (got != want) fail_msg("code 0x%04x positive %d: table %08x, elmo_cls_grad %08x", c, r, got, want);
    }
  free(z);
  free(t);
  free(yi);
}

static void test_topk_merge(void **state) {
  float z1[8] = {0.5f, 0.9f, 0.9f, 0.1f, /* row 1 */ 2, 2, 2, 2};
  float z2[8] = {0.9f, 0.2f, 0.95f, 5.0f, 1, 3, 1, 1};
  int32_t topk[6];
  float topv[6];
  for (int i = 0; i < 6; i++) { topk[i] = -1; topv[i] = -INFINITY; }
  int64_t rows[2] = {0, 1};
  int64_t fp[3] = {0, 0, 1};
  int32_t fi[1] = {5}; /* row 1: label 5 filtered */
  elmo_topk_merge(z1, 2, 0, 4, 7, 3, rows, fp, fi, topk, topv);
  elmo_topk_merge(z2, 2, 4, 4, 7, 3, rows, fp, fi, topk, topv); /* label 7 is padding */
  int32_t e0[3] = {6, 1, 2}, e1[3] = {0, 1, 2};
  assert_memory_equal(topk, e0, sizeof e0);
  assert_memory_equal(topk + 3, e1, sizeof e1);
  assert_true(topv[0] == 0.95f && topv[1] == 0.9f);
  /* NaN scores rank as -inf (as on the GPU), behind every number, ties to the lower label */
  float z3[4] = {NAN, 1.0f, NAN, 2.0f};
  int32_t k3[4];
  float v3[4];
  for (int i = 0; i < 4; i++) { k3[i] = -1; v3[i] = -INFINITY; }
  elmo_topk_merge(z3, 1, 0, 4, 4, 4, NULL, NULL, NULL, k3, v3);
  int32_t e3[4] = {3, 1, 0, 2};
  assert_memory_equal(k3, e3, sizeof e3);
  assert_true(v3[0] == 2.0f && v3[1] == 1.0f && v3[2] == -INFINITY && v3[3] == -INFINITY);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_dx_and_loss), cmocka_unit_test(test_update_fp32), cmocka_unit_test(test_sr_neighbours),
    cmocka_unit_test(test_chunk_invariance), cmocka_unit_test(test_head_kahan), cmocka_unit_test(test_shard_heads),
    cmocka_unit_test(test_grad_table),
    cmocka_unit_test(test_topk_merge), cmocka_unit_test(test_sr8_bits), cmocka_unit_test(test_sr16_bits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
