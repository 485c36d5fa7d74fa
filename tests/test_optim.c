/* test_optim.c: AdamW (fp32 reference formula; bf16 with Kahan compensation) and LR schedules. */
#include "testutil.h"
#include "numerics.h"
#include "optim.h"

#include <math.h>
#include <string.h>

/* fp32 AdamW equals the textbook formula over several steps. */
static void test_adamw_fp32(void **state) {
  enum { N = 5 };
  float p[N] = {0.5f, -1.0f, 2.0f, 0.0f, 3.0f}, m[N] = {0}, v[N] = {0};
  double rp[N], rm[N] = {0}, rv[N] = {0};
  uint8_t decay[N] = {1, 1, 0, 1, 1};
  for (int i = 0; i < N; i++) rp[i] = p[i];
  for (int t = 1; t <= 4; t++) {
    float g[N];
    for (int i = 0; i < N; i++) g[i] = (float)(0.1 * (i + 1) * (t % 2 ? 1 : -1));
    elmo_adamw_hyper h = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f, .t = t};
    elmo_adamw_update(p, m, v, NULL, ELMO_F32, g, N, decay, &h);
    for (int i = 0; i < N; i++) {
      rm[i] = 0.9 * rm[i] + 0.1 * g[i];
      rv[i] = 0.999 * rv[i] + 0.001 * (double)g[i] * g[i];
      double mh = rm[i] / (1 - pow(0.9, t)), vh = rv[i] / (1 - pow(0.999, t));
      rp[i] -= 0.01 * (mh / (sqrt(vh) + 1e-8) + (decay[i] ? 0.1 * rp[i] : 0.0));
    }
  }
  for (int i = 0; i < N; i++) assert_true(fabs(p[i] - rp[i]) < 1e-5);
}

/* bf16 parameters: updates of 1/10 ulp vanish with plain RN but accumulate with Kahan. */
static void test_kahan_bf16(void **state) {
  enum { N = 4 };
  uint16_t p[N], m[N] = {0}, v[N] = {0}, c[N] = {0}, p2[N], m2[N] = {0}, v2[N] = {0};
  for (int i = 0; i < N; i++) p[i] = p2[i] = elmo_f32_to_bf16(1.0f);
  float g[N] = {-1, -1, -1, -1};
  for (int t = 1; t <= 200; t++) {
    /* Adam's step is ~lr for a constant gradient: lr = 1e-3 is 1/8 of bf16's ulp at 1.0 */
    elmo_adamw_hyper h = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0, .t = t};
    elmo_adamw_update(p, m, v, c, ELMO_BF16, g, N, NULL, &h);
    elmo_adamw_update(p2, m2, v2, NULL, ELMO_BF16, g, N, NULL, &h);
  }
  for (int i = 0; i < N; i++) {
    float with = elmo_bf16_to_f32(p[i]) + elmo_bf16_to_f32(c[i]);
    assert_true(fabsf(with - 1.2f) < 0.01f);
    assert_true(elmo_bf16_to_f32(p2[i]) == 1.0f); /* plain RN: stuck */
  }
}

static void test_schedules(void **state) {
  elmo_opt_config o;
  memset(&o, 0, sizeof o);
  o.lr = 1.0;
  o.warmup_steps = 10;
  strcpy(o.schedule, "cosine");
  assert_true(fabs(elmo_lr_at(&o, 0, 110) - 0.1) < 1e-12);
  assert_true(fabs(elmo_lr_at(&o, 9, 110) - 1.0) < 1e-12);
  assert_true(fabs(elmo_lr_at(&o, 10, 110) - 1.0) < 1e-12);
  assert_true(fabs(elmo_lr_at(&o, 60, 110) - 0.5) < 1e-12);
  assert_true(elmo_lr_at(&o, 110, 110) < 1e-12);
  strcpy(o.schedule, "linear");
  assert_true(fabs(elmo_lr_at(&o, 60, 110) - 0.5) < 1e-12);
  assert_true(fabs(elmo_lr_at(&o, 35, 110) - 0.75) < 1e-12);
  strcpy(o.schedule, "constant");
  assert_true(elmo_lr_at(&o, 100, 110) == 1.0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_adamw_fp32), cmocka_unit_test(test_kahan_bf16), cmocka_unit_test(test_schedules),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
