/* test_config.c: the JSON config: defaults, parsing, every error class (with the JSON path in the
 * message), --set overrides, cross-key checks, to_json round trip, propensity families and the
 * docs/CONFIG.md key reference staying in sync with the schema. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static const char *SKETCH =
    "{\"data\":{\"dir\":\"datasets/bibtex\",\"format\":\"bow\"},"
    "\"model\":{\"encoder\":{\"kind\":\"sparse\",\"dim\":512},\"classifier\":{\"dtype\":\"fp8\"}},"
    "\"training\":{\"epochs\":30,\"batch_size\":256,\"encoder\":{\"lr\":1e-3},\"classifier\":{\"lr\":0.05}},"
    "\"eval\":{\"k\":5,\"A\":0.55,\"B\":1.5}}";

static const char *MINIMAL = "{\"data\":{\"dir\":\"datasets/bibtex\"}}";

/* Parses json (named x.json) with overrides; asserts the outcome code and returns the message. */
static elmo_err parse_expect(const char *json, const char *const *sets, int n_sets, int code, elmo_config *c) {
  elmo_config local;
  elmo_err err = { 0, "" };
  int rc = elmo_config_parse(c ? c : &local, json, "x.json", sets, n_sets, &err);
  if (rc != code) fail_msg("expected code %d, got %d (%s)", code, rc, err.msg);
  if (code) assert_int_equal(err.code, code);
  return err;
}

/* Asserts that json fails with ELMO_EINPUT and a message containing needle. */
static void expect_error(const char *json, const char *set, const char *needle) {
  const char *sets[1] = { set };
  elmo_err err = parse_expect(json, sets, set ? 1 : 0, ELMO_EINPUT, NULL);
  tu_assert_contains(err.msg, needle);
}

static void test_defaults(void **state) {
  (void)state;
  elmo_config c;
  elmo_config_defaults(&c);
  assert_string_equal(c.data_dir, "");
  assert_string_equal(c.data_format, "bow");
  assert_string_equal(c.encoder_kind, "sparse");
  assert_int_equal(c.dim, 512);
  assert_int_equal(c.layers, 2);
  assert_int_equal(c.heads, 4);
  assert_int_equal(c.ffn_dim, 0);
  assert_int_equal(c.max_position, 512);
  assert_int_equal(c.max_len, 128);
  assert_string_equal(c.pooling, "mean");
  assert_string_equal(c.encoder_dtype, "bf16");
  assert_string_equal(c.classifier_dtype, "fp8");
  assert_string_equal(c.classifier_input, "fp8");
  assert_int_equal(c.epochs, 30);
  assert_int_equal(c.batch_size, 256);
  assert_true(c.dropout == 0.5);
  assert_int_equal(c.log_every, 50);
  assert_string_equal(c.select_metric, "P@1");
  assert_string_equal(c.enc_opt.optimizer, "adamw");
  assert_true(c.enc_opt.lr == 1e-3 && c.enc_opt.weight_decay == 0.01 && c.enc_opt.eps == 1e-8);
  assert_true(c.enc_opt.beta1 == 0.9 && c.enc_opt.beta2 == 0.999);
  assert_int_equal(c.enc_opt.kahan, 1);
  assert_string_equal(c.enc_opt.schedule, "cosine");
  assert_string_equal(c.cls_opt.optimizer, "sgd");
  assert_true(c.cls_opt.lr == 0.05 && c.cls_opt.weight_decay == 0.0);
  assert_int_equal(c.cls_opt.kahan, 0);
  assert_int_equal(c.k, 5);
  assert_true(c.A == -1.0 && c.B == -1.0);
  assert_int_equal(c.topk, 100);
  assert_int_equal(c.every_epochs, 1);
  assert_int_equal(c.checkpoint_every, 1);
  assert_int_equal(c.remove_invalid, 0);
}

static void test_sketch_parses(void **state) {
  (void)state;
  elmo_config c;
  parse_expect(SKETCH, NULL, 0, ELMO_OK, &c);
  assert_string_equal(c.data_dir, "datasets/bibtex");
  assert_int_equal(c.dim, 512);
  assert_true(c.enc_opt.lr == 1e-3 && c.cls_opt.lr == 0.05);
  assert_true(c.A == 0.55 && c.B == 1.5);
  assert_string_equal(c.train_file, "train.txt");   /* bow defaults resolved */
  assert_string_equal(c.test_file, "test.txt");
  assert_string_equal(c.train_labels, "");
  assert_string_equal(c.out_dir, "");               /* only elmo_config_load names the run */
}

static void test_file_defaults_by_format(void **state) {
  (void)state;
  elmo_config c;
  const char *text[] = { "data.format=text" };
  parse_expect(MINIMAL, text, 1, ELMO_OK, &c);
  assert_string_equal(c.train_file, "trn_X.txt");
  assert_string_equal(c.test_file, "tst_X.txt");
  assert_string_equal(c.train_labels, "trn_X_Y.txt");
  assert_string_equal(c.test_labels, "tst_X_Y.txt");
  const char *jsonl[] = { "data.format=jsonl", "data.test_file=my_test.json" };
  parse_expect(MINIMAL, jsonl, 2, ELMO_OK, &c);
  assert_string_equal(c.train_file, "trn.json");
  assert_string_equal(c.test_file, "my_test.json");   /* a user-set name is kept */
}

static void test_unknown_key_suggests(void **state) {
  (void)state;
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"lr\":0.1}}", NULL,
               "x.json: training.lr: unknown key (did you mean training.encoder.lr?)");
  expect_error("{\"data\":{\"dir\":\"d\"},\"trainig\":{\"epochs\":3}}", NULL,
               "x.json: trainig: unknown key (did you mean training?)");
  expect_error("{\"data\":{\"dir\":\"d\"},\"model\":{\"encoder\":{\"dimm\":8}}}", NULL,
               "model.encoder.dimm: unknown key (did you mean model.encoder.dim?)");
  expect_error("{\"data\":{\"dir\":\"d\"},\"eval\":{\"a\":0.5}}", NULL, "did you mean eval.A?");
  /* nothing close: the valid keys of that section are listed */
  expect_error("{\"data\":{\"dir\":\"d\",\"zzzzzzzz\":1}}", NULL,
               "x.json: data.zzzzzzzz: unknown key (expected one of: dir, format, train_file");
}

static void test_wrong_type(void **state) {
  (void)state;
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"epochs\":\"ten\"}}", NULL,
               "x.json: training.epochs: expected an integer >= 1, got \"ten\"");
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"epochs\":2.5}}", NULL,
               "training.epochs: expected an integer >= 1, got 2.5");
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"encoder\":{\"kahan\":1}}}", NULL,
               "training.encoder.kahan: expected true or false, got 1");
  expect_error("{\"data\":{\"dir\":7}}", NULL, "x.json: data.dir: expected a string of at most 1023 bytes, got 7");
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":5}", NULL,
               "x.json: training: expected an object with keys epochs, batch_size");
  expect_error("{\"data\":{\"dir\":\"d\"},\"eval\":{\"k\":{\"x\":1}}}", NULL, "eval.k: expected an integer in [1, 100], got {");
  expect_error("[1,2]", NULL, "x.json: (top level): expected a JSON object");
  expect_error("{\"data\":{\"dir\":\"d\"},\"data\":{\"dir\":\"e\"}}", NULL, "x.json: data: duplicate key");
}

static void test_out_of_range(void **state) {
  (void)state;
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"epochs\":0}}", NULL,
               "x.json: training.epochs: expected an integer >= 1, got 0");
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"dropout\":1}}", NULL,
               "training.dropout: expected a number in [0, 1), got 1");
  expect_error("{\"data\":{\"dir\":\"d\"},\"model\":{\"encoder\":{\"dim\":100}}}", NULL,
               "model.encoder.dim: expected a multiple of 8 in [8, 65536], got 100");
  expect_error("{\"data\":{\"dir\":\"d\"},\"eval\":{\"k\":101}}", NULL, "eval.k: expected an integer in [1, 100], got 101");
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"encoder\":{\"eps\":0}}}", NULL,
               "training.encoder.eps: expected a number > 0, got 0");
  expect_error("{\"data\":{\"dir\":\"d\"},\"training\":{\"classifier\":{\"lr\":-0.1}}}", NULL,
               "training.classifier.lr: expected a number >= 0, got -0.1");
  /* 1e999 overflows to infinity: never accepted */
  expect_error(MINIMAL, "eval.A=1e999", "--set eval.A: expected a number, got");
}

static void test_bad_enum(void **state) {
  (void)state;
  expect_error("{\"data\":{\"dir\":\"d\",\"format\":\"csv\"}}", NULL,
               "x.json: data.format: expected one of \"bow\", \"text\", \"jsonl\", got \"csv\"");
  expect_error(MINIMAL, "training.encoder.schedule=step",
               "--set training.encoder.schedule: expected one of \"cosine\", \"linear\", \"constant\", got \"step\"");
  expect_error(MINIMAL, "model.classifier.dtype=FP8", "one of \"fp8\", \"bf16\", \"fp32\"");
}

static void test_invalid_json(void **state) {
  (void)state;
  const char *json = "{\n  \"data\": {\"dir\": \"d\"},\n  \"training\": {\"epochs\": 3,,}\n}\n";
  expect_error(json, NULL, "x.json:3:");
  expect_error(json, NULL, "invalid JSON");
  expect_error("{\n\"data\": {\"dir\": \"d\"}\n", NULL, "x.json:3:1: invalid JSON: unexpected end of input");
  expect_error("{\"data\": {\"dir\": \"d\"}} trailing", NULL, "x.json:1:24: invalid JSON near 'trailing'");
  expect_error("", NULL, "x.json:1:1: invalid JSON");
}

static void test_missing_required(void **state) {
  (void)state;
  expect_error("{\"training\":{\"epochs\":3}}", NULL, "x.json: data.dir: missing required key");
  expect_error("{}", NULL, "data.dir: missing required key");
  elmo_config c;
  const char *sets[] = { "data.dir=datasets/bibtex" };
  parse_expect("{}", sets, 1, ELMO_OK, &c);   /* --set can supply it */
  assert_string_equal(c.data_dir, "datasets/bibtex");
}

static void test_set_errors(void **state) {
  (void)state;
  expect_error(MINIMAL, "training.lr=0.1", "--set training.lr: unknown key (did you mean training.encoder.lr?)");
  expect_error(MINIMAL, "trainin.epochs=3", "--set trainin.epochs: unknown key (did you mean training.epochs?)");
  expect_error(MINIMAL, "training.epochs=ten", "--set training.epochs: expected an integer >= 1, got \"ten\"");
  expect_error(MINIMAL, "training.epochs", "--set training.epochs: expected key.path=value");
  expect_error(MINIMAL, "=3", "--set =3: expected key.path=value");
  expect_error(MINIMAL, "training=3", "--set training: expected an object");
  expect_error(MINIMAL, "training.seed=9007199254740993", "--set training.seed: expected an integer of magnitude below 2^53");
  expect_error(MINIMAL, "training.encoder.kahan=yes", "--set training.encoder.kahan: expected true or false, got \"yes\"");
}

static void test_overrides_in_order(void **state) {
  (void)state;
  elmo_config c;
  const char *sets[] = {
    "training.epochs=3",          "training.epochs=7",   /* the later one wins */
    "training.encoder.lr=2e-4",   "training.encoder.kahan=false",
    "data.dir=other/dir",         "eval.filter_file=123", /* bare text for string keys */
    "model.encoder.pretrained=\"quoted dir\"",            "training.seed=9007199254740991",
    "training={\"batch_size\":64,\"classifier\":{\"lr\":0.5}}",
  };
  parse_expect(SKETCH, sets, (int)(sizeof sets / sizeof sets[0]), ELMO_OK, &c);
  assert_int_equal(c.epochs, 7);
  assert_true(c.enc_opt.lr == 2e-4);
  assert_int_equal(c.enc_opt.kahan, 0);
  assert_string_equal(c.data_dir, "other/dir");
  assert_string_equal(c.filter_file, "123");
  assert_string_equal(c.pretrained, "quoted dir");
  assert_true(c.seed == 9007199254740991ull);
  assert_int_equal(c.batch_size, 64);
  assert_true(c.cls_opt.lr == 0.5);
  /* an earlier bad override stops before a later good one is needed */
  const char *bad_then_good[] = { "training.epochs=0", "training.epochs=5" };
  elmo_err err = parse_expect(MINIMAL, bad_then_good, 2, ELMO_EINPUT, NULL);
  tu_assert_contains(err.msg, "--set training.epochs: expected an integer >= 1, got 0");
}

static void test_cross_checks(void **state) {
  (void)state;
  const char *heads3[] = { "model.encoder.kind=transformer", "model.encoder.heads=3" };
  elmo_err err = parse_expect(MINIMAL, heads3, 2, ELMO_EINPUT, NULL);
  tu_assert_contains(err.msg, "x.json: model.encoder.heads: 3 does not divide model.encoder.dim = 512");
  parse_expect(MINIMAL, heads3 + 1, 1, ELMO_OK, NULL);   /* the sparse encoder has no heads */
  const char *long_text[] = { "model.encoder.kind=transformer", "data.max_len=1024" };
  err = parse_expect(MINIMAL, long_text, 2, ELMO_EINPUT, NULL);
  tu_assert_contains(err.msg, "data.max_len: 1024 exceeds model.encoder.max_position = 512");
  const char *k_topk[] = { "eval.k=50", "eval.topk=20" };
  err = parse_expect(MINIMAL, k_topk, 2, ELMO_EINPUT, NULL);
  tu_assert_contains(err.msg, "eval.k: 50 exceeds eval.topk = 20");
  const char *metric7[] = { "training.select_metric=P@7" };
  err = parse_expect(MINIMAL, metric7, 1, ELMO_EINPUT, NULL);
  tu_assert_contains(err.msg, "training.select_metric: \"P@7\" is not a metric computed with eval.k = 5");
  const char *bad_names[] = { "training.select_metric=F1@1", "training.select_metric=P@0", "training.select_metric=P@1x",
                              "training.select_metric=P@", "training.select_metric=nDCG" };
  for (int i = 0; i < 5; i++) parse_expect(MINIMAL, bad_names + i, 1, ELMO_EINPUT, NULL);
  const char *good[] = { "eval.k=10", "training.select_metric=PSnDCG@10" };
  parse_expect(MINIMAL, good, 2, ELMO_OK, NULL);
}

static void test_to_json_round_trip(void **state) {
  (void)state;
  elmo_config a, b;
  const char *sets[] = {
    "data.format=text",           "model.encoder.kind=transformer", "model.encoder.heads=8",
    "training.encoder.lr=0.30000000000000004", "training.seed=9007199254740991",
    "training.dropout=0.1",       "eval.A=0.123456789012345678",    "output.dir=runs/x y",
    "model.classifier.memory_budget_gib=1e-300", "training.classifier.warmup_steps=9007199254740991",
    "eval.remove_invalid=true",   "data.vocab=v/\"q\"\\u.txt",
  };
  parse_expect(SKETCH, sets, (int)(sizeof sets / sizeof sets[0]), ELMO_OK, &a);
  char *json = elmo_config_to_json(&a);
  tu_assert_contains(json, "\"encoder\":");
  tu_assert_contains(json, "\"lr\":\t0.30000000000000004");
  tu_assert_contains(json, "\"warmup_steps\":\t9007199254740991");
  parse_expect(json, NULL, 0, ELMO_OK, &b);
  assert_memory_equal(&a, &b, sizeof a);
  char *again = elmo_config_to_json(&b);
  assert_string_equal(json, again);
  free(json);
  free(again);
  /* the default config (plus the required dir) round-trips too */
  parse_expect(MINIMAL, NULL, 0, ELMO_OK, &a);
  json = elmo_config_to_json(&a);
  parse_expect(json, NULL, 0, ELMO_OK, &b);
  assert_memory_equal(&a, &b, sizeof a);
  free(json);
}

static void test_propensity_families(void **state) {
  (void)state;
  double A = 0, B = 0;
  elmo_propensity_defaults("LF-AmazonTitles-131K", &A, &B);
  assert_true(A == 0.6 && B == 2.6);
  elmo_propensity_defaults("WIKI10-31K", &A, &B);
  assert_true(A == 0.5 && B == 0.4);
  elmo_propensity_defaults("bibtex", &A, &B);
  assert_true(A == 0.55 && B == 1.5);
  elmo_config c;
  const char *wiki[] = { "data.dir=datasets/Wiki-500K/" };
  parse_expect(MINIMAL, wiki, 1, ELMO_OK, &c);
  assert_true(c.A == 0.5 && c.B == 0.4);
  const char *amazon_a[] = { "data.dir=/data/wiki/amazon-670k", "eval.A=0.7" };   /* the dir's own name counts */
  parse_expect(MINIMAL, amazon_a, 2, ELMO_OK, &c);
  assert_true(c.A == 0.7 && c.B == 2.6);
}

static void test_load_file(void **state) {
  (void)state;
  char *path = tu_write_temp(SKETCH, ".json");
  elmo_config c;
  elmo_err err = { 0, "" };
  const char *sets[] = { "training.epochs=2" };
  assert_int_equal(elmo_config_load(&c, path, sets, 1, &err), ELMO_OK);
  assert_int_equal(c.epochs, 2);
  const char *base = strrchr(path, '/') + 1;
  char want[512];
  snprintf(want, sizeof want, "runs/%.*s", (int)(strlen(base) - 5), base);
  assert_string_equal(c.out_dir, want);
  remove(path);
  free(path);
  /* errors name the file */
  path = tu_write_temp("{\"data\":{\"dir\":\"d\"},\"training\":{\"epochs\":\"ten\"}}", ".json");
  assert_int_equal(elmo_config_load(&c, path, NULL, 0, &err), ELMO_EINPUT);
  char needle[600];
  snprintf(needle, sizeof needle, "%s: training.epochs: expected an integer >= 1", path);
  tu_assert_contains(err.msg, needle);
  remove(path);
  free(path);
  assert_int_equal(elmo_config_load(&c, "/nonexistent/cfg.json", NULL, 0, &err), ELMO_EINPUT);
  tu_assert_contains(err.msg, "/nonexistent/cfg.json: cannot open config");
}

static char *read_all(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  size_t got = fread(s, 1, (size_t)n, f);
  s[got] = 0;
  fclose(f);
  return s;
}

/* docs/CONFIG.md holds the generated table verbatim, so the docs cannot drift from the schema. */
static void test_docs_in_sync(void **state) {
  (void)state;
  const char *root = getenv("ELMO_SOURCE_ROOT");
  char path[1024];
  snprintf(path, sizeof path, "%s/docs/CONFIG.md", root ? root : ".");
  char *doc = read_all(path);
  if (!doc) fail_msg("cannot read %s", path);
  char *table = elmo_config_markdown();
  if (!strstr(doc, table))
    fail_msg("docs/CONFIG.md is out of date: paste the output of elmo_config_markdown() into it");
  elmo_config c;
  parse_expect(MINIMAL, NULL, 0, ELMO_OK, &c);
  char *json = elmo_config_to_json(&c);
  tu_assert_contains(table, "| `training.encoder.lr` | float | `0.001` |");
  tu_assert_contains(table, "| `data.format` | enum | `\"bow\"` | `bow`, `text`, `jsonl` |");
  free(json);
  free(table);
  free(doc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_defaults),           cmocka_unit_test(test_sketch_parses),
    cmocka_unit_test(test_file_defaults_by_format), cmocka_unit_test(test_unknown_key_suggests),
    cmocka_unit_test(test_wrong_type),         cmocka_unit_test(test_out_of_range),
    cmocka_unit_test(test_bad_enum),           cmocka_unit_test(test_invalid_json),
    cmocka_unit_test(test_missing_required),   cmocka_unit_test(test_set_errors),
    cmocka_unit_test(test_overrides_in_order), cmocka_unit_test(test_cross_checks),
    cmocka_unit_test(test_to_json_round_trip), cmocka_unit_test(test_propensity_families),
    cmocka_unit_test(test_load_file),          cmocka_unit_test(test_docs_in_sync),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
