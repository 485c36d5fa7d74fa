/* config.c: the JSON run configuration. One static schema table (key path, type, default,
 * range or allowed values, field offset, help) drives everything: defaults, parsing of the JSON
 * file, --set overrides, validation, elmo_config_to_json and the markdown key reference. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

/* ---- the schema ---------------------------------------------------------------------------- */

typedef enum { K_STR, K_ENUM, K_INT, K_U64, K_FLOAT, K_BOOL } key_type;

enum {
  F_MIN_OPEN = 1,   /* value > min instead of >= min */
  F_MAX_OPEN = 2,   /* value < max instead of <= max */
  F_REQUIRED = 4,   /* a string key that must be set (non-empty) */
};

#define NO_MAX 9007199254740992.0   /* 2^53: no upper bound (and the exact-integer limit) */
#define NO_MIN (-NO_MAX)

typedef struct key_spec {
  const char *path;     /* "training.encoder.lr" */
  key_type type;
  size_t off, size;     /* offsetof / sizeof the field in elmo_config */
  const char *def;      /* default as text: "512", "0.05", "true", "bow", "" */
  double min, max;      /* numeric range; NO_MIN / NO_MAX = unbounded */
  unsigned flags;       /* F_* */
  int64_t multiple;     /* integers: value must be a multiple of this (1 = any) */
  const char *choices;  /* enums: "bow|text|jsonl" */
  const char *help;     /* one line for the docs (no '|') */
} key_spec;

#define FIELD(m) offsetof(elmo_config, m), sizeof(((elmo_config *)0)->m)
#define STR(p, m, d, fl, h) { p, K_STR, FIELD(m), d, 0, 0, fl, 1, NULL, h }
#define ENUM(p, m, d, ch, h) { p, K_ENUM, FIELD(m), d, 0, 0, 0, 1, ch, h }
#define INT(p, m, d, lo, hi, mul, h) { p, K_INT, FIELD(m), d, lo, hi, 0, mul, NULL, h }
#define U64(p, m, d, h) { p, K_U64, FIELD(m), d, 0, NO_MAX, 0, 1, NULL, h }
#define FLT(p, m, d, lo, hi, fl, h) { p, K_FLOAT, FIELD(m), d, lo, hi, fl, 1, NULL, h }
#define BOOL(p, m, d, h) { p, K_BOOL, FIELD(m), d, 0, 0, 0, 1, NULL, h }

/* The keys of training.encoder / training.classifier (P: path prefix, M: member). */
#define OPT_KEYS(P, M, OPT, LR, WD, KAHAN, WHO)                                                  \
  ENUM(P ".optimizer", M.optimizer, OPT, "adamw|sgd",                                            \
       "optimizer of the " WHO " (sgd = plain SGD with stochastic rounding)"),                  \
  FLT(P ".lr", M.lr, LR, 0, NO_MAX, 0, "peak learning rate of the " WHO),                      \
  INT(P ".warmup_steps", M.warmup_steps, "0", 0, NO_MAX, 1,                                     \
      "linear warm-up steps from 0 to lr (" WHO ")"),                                           \
  ENUM(P ".schedule", M.schedule, "cosine", "cosine|linear|constant",                            \
       "decay after warm-up (" WHO ")"),                                                        \
  FLT(P ".weight_decay", M.weight_decay, WD, 0, NO_MAX, 0, "decoupled weight decay (" WHO ")"), \
  FLT(P ".beta1", M.beta1, "0.9", 0, 1, F_MAX_OPEN, "AdamW first-moment decay (" WHO ")"),     \
  FLT(P ".beta2", M.beta2, "0.999", 0, 1, F_MAX_OPEN, "AdamW second-moment decay (" WHO ")"),  \
  FLT(P ".eps", M.eps, "1e-08", 0, NO_MAX, F_MIN_OPEN, "AdamW epsilon (" WHO ")"),            \
  BOOL(P ".kahan", M.kahan, KAHAN, "Kahan-compensated BF16 parameter update (" WHO ")")

static const key_spec SCHEMA[] = {
  STR("data.dir", data_dir, "", F_REQUIRED, "dataset directory (required); its name also picks the propensity family"),
  ENUM("data.format", data_format, "bow", "bow|text|jsonl",
       "bow: XMC repository BoW files; text: trn_X.txt + trn_X_Y.txt; jsonl: trn.json JSON lines"),
  STR("data.train_file", train_file, "", 0, "training inputs in data.dir (\"\" = by format: train.txt, trn_X.txt, trn.json)"),
  STR("data.test_file", test_file, "", 0, "test inputs in data.dir (\"\" = by format: test.txt, tst_X.txt, tst.json)"),
  STR("data.train_labels", train_labels, "", 0, "training label matrix, text format (\"\" = trn_X_Y.txt)"),
  STR("data.test_labels", test_labels, "", 0, "test label matrix, text format (\"\" = tst_X_Y.txt)"),
  STR("data.feature_words", feature_words, "", 0,
      "BoW feature vocabulary (one word per line) turned into pseudo-text for the transformer (\"\" = off)"),
  STR("data.vocab", vocab, "", 0, "WordPiece vocab.txt for text input (\"\" = the one in model.encoder.pretrained)"),
  INT("data.max_len", max_len, "128", 2, 1048576, 1, "tokens per text including [CLS] and [SEP]; at most model.encoder.max_position"),
  FLT("data.val_fraction", val_fraction, "0", 0, 1, F_MAX_OPEN, "fraction of training rows held out for model selection"),

  ENUM("model.encoder.kind", encoder_kind, "sparse", "sparse|transformer",
       "sparse: embedding-bag over BoW features; transformer: BERT-style encoder"),
  INT("model.encoder.dim", dim, "512", 8, 65536, 8, "output / hidden size d (a multiple of 8 for GPU alignment)"),
  INT("model.encoder.layers", layers, "2", 1, 1024, 1, "transformer layers"),
  INT("model.encoder.heads", heads, "4", 1, 1024, 1, "attention heads; must divide model.encoder.dim (transformer)"),
  INT("model.encoder.ffn_dim", ffn_dim, "0", 0, 1048576, 1, "feed-forward hidden size (0 = 4 * dim)"),
  INT("model.encoder.max_position", max_position, "512", 1, 1048576, 1, "position embeddings (transformer)"),
  STR("model.encoder.pretrained", pretrained, "", 0,
      "Hugging Face directory (config.json, model.safetensors, vocab.txt) to start from (\"\" = random init)"),
  ENUM("model.encoder.pooling", pooling, "mean", "mean|cls", "mean over unmasked tokens, or the [CLS] vector"),
  BOOL("model.encoder.layernorm", encoder_layernorm, "false", "LayerNorm after the sparse encoder"),
  BOOL("model.encoder.recompute", encoder_recompute, "false",
       "transformer on CUDA: keep only each layer's two LayerNorm outputs and recompute its q/k/v and intermediate GEMMs in the backward (less memory, ~10% more time)"),
  ENUM("model.encoder.dtype", encoder_dtype, "bf16", "bf16|fp32|fp8",
       "encoder parameters and GEMMs (fp8 = E4M3 forward GEMMs and two input-gradient GEMMs, BF16 parameters)"),

  ENUM("model.classifier.dtype", classifier_dtype, "fp8", "fp8|bf16|fp32",
       "classifier weights: FP8 E4M3 (ELMO), BF16, or FP32 (reference)"),
  ENUM("model.classifier.input_dtype", classifier_input, "fp8", "fp8|bf16",
       "the pooled vector fed to the logits GEMM: cast to E4M3 (ELMO) or kept BF16"),
  INT("model.classifier.chunks", chunks, "0", 0, NO_MAX, 1, "label chunks per step (0 = from the memory budget)"),
  FLT("model.classifier.memory_budget_gib", memory_budget_gib, "0", 0, NO_MAX, 0,
      "device memory to plan for, GiB (0 = free device memory minus a margin)"),
  FLT("model.classifier.head_ratio", head_ratio, "0", 0, 1, 0,
      "fraction of most frequent labels updated with Kahan compensation (0 = off)"),

  INT("training.epochs", epochs, "30", 1, NO_MAX, 1, "passes over the training data"),
  INT("training.batch_size", batch_size, "256", 1, 16777216, 1, "rows per step"),
  U64("training.seed", seed, "0", "seed of every random stream (init, shuffling, dropout, rounding)"),
  FLT("training.dropout", dropout, "0.5", 0, 1, F_MAX_OPEN, "dropout on the pooled vector"),
  INT("training.log_every", log_every, "50", 1, NO_MAX, 1, "compute and log the summed BCE loss every N steps"),
  INT("training.max_steps", max_steps, "0", 0, NO_MAX, 1, "stop after N steps (0 = no limit)"),
  INT("training.gpus", gpus, "1", 0, 32, 1,
      "GPUs of this machine (CUDA backend, NCCL): classifier sharded by labels, encoder data-parallel (0 = all)"),
  INT("training.patience", patience, "0", 0, NO_MAX, 1,
      "stop after N evaluations without improvement of select_metric (0 = off)"),
  STR("training.select_metric", select_metric, "P@1", 0,
      "metric that picks the best checkpoint: P@i, nDCG@i, PSP@i, PSnDCG@i, R@i or PSR@i, i <= eval.k"),
  OPT_KEYS("training.encoder", enc_opt, "adamw", "0.001", "0.01", "true", "encoder"),
  OPT_KEYS("training.classifier", cls_opt, "sgd", "0.05", "0", "false", "classifier"),

  INT("eval.k", k, "5", 1, 100, 1, "metrics at 1..k; at most eval.topk"),
  FLT("eval.A", A, "-1", NO_MIN, NO_MAX, 0,
      "propensity A (< 0 = by data.dir name: amazon 0.6, wiki 0.5, other 0.55)"),
  FLT("eval.B", B, "-1", NO_MIN, NO_MAX, 0,
      "propensity B (< 0 = by data.dir name: amazon 2.6, wiki 0.4, other 1.5)"),
  INT("eval.every_epochs", every_epochs, "1", 1, NO_MAX, 1, "evaluate every N epochs"),
  STR("eval.filter_file", filter_file, "", 0, "test filter pairs (doc label) in data.dir, masked before top-k (\"\" = none)"),
  INT("eval.topk", topk, "100", 1, 100000, 1, "predictions written per test row"),
  BOOL("eval.remove_invalid", remove_invalid, "false", "drop test rows without labels from the metrics"),

  STR("output.dir", out_dir, "", 0, "run directory (\"\" = runs/NAME, NAME = the config file name without .json)"),
  INT("output.checkpoint_every", checkpoint_every, "1", 1, NO_MAX, 1, "epochs between checkpoints"),
  BOOL("output.checkpoints", save_checkpoints, "true", "write the best/ and last/ checkpoints (false: metrics only, e.g. benchmarks)"),
};

#define N_KEYS ((int)(sizeof SCHEMA / sizeof SCHEMA[0]))

/* ---- small helpers ------------------------------------------------------------------------- */

/* Where a value came from: "<file>: <path>" or "--set <path>". */
typedef struct origin {
  const char *name;   /* file name, or "--set" */
  const char *sep;    /* ": " after a file name, " " after --set */
} origin;

static const key_spec *find_key(const char *path) {
  for (int i = 0; i < N_KEYS; i++)
    if (strcmp(SCHEMA[i].path, path) == 0) return &SCHEMA[i];
  return NULL;
}

/* A section is a proper prefix of some key path ending at a '.' ("training.encoder"). */
static int is_section(const char *path) {
  size_t n = strlen(path);
  for (int i = 0; i < N_KEYS; i++)
    if (strncmp(SCHEMA[i].path, path, n) == 0 && SCHEMA[i].path[n] == '.') return 1;
  return 0;
}

static void *field(elmo_config *c, const key_spec *s) { return (char *)c + s->off; }
static const void *cfield(const elmo_config *c, const key_spec *s) { return (const char *)c + s->off; }

static void set_string(char *dst, size_t size, const char *src) {
  memset(dst, 0, size);
  memcpy(dst, src, strlen(src));
}

static const char *last_component(const char *path) {
  const char *dot = strrchr(path, '.');
  return dot ? dot + 1 : path;
}

/* ---- suggestions for unknown keys ---------------------------------------------------------- */

/* Case-insensitive Levenshtein distance (strings longer than 127 bytes are cut). */
static int edit_distance(const char *a, const char *b) {
  int row[128], n = (int)strlen(a), m = (int)strlen(b);
  if (n > 127) n = 127;
  if (m > 127) m = 127;
  for (int j = 0; j <= m; j++) row[j] = j;
  for (int i = 1; i <= n; i++) {
    int diag = row[0];
    row[0] = i;
    for (int j = 1; j <= m; j++) {
      int up = row[j], cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
      int best = diag + cost;
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[m];
}

/* Scores one candidate (a key or a section path): the smaller of the full-path distance and
 * the last-component distance, ties broken by the full-path distance. */
static void consider(const char *path, const char *cand, int *best, int *best_full, char *out,
                     size_t out_size) {
  int full = edit_distance(path, cand);
  int last = edit_distance(last_component(path), last_component(cand));
  int score = full < last ? full : last;
  if (score < *best || (score == *best && full < *best_full)) {
    *best = score;
    *best_full = full;
    snprintf(out, out_size, "%s", cand);
  }
}

/* The closest key or section to `path`, or "" when nothing is reasonably close. */
static void closest_key(const char *path, char *out, size_t out_size) {
  int best = 1 << 30, best_full = 1 << 30;
  char section[256];
  out[0] = 0;
  for (int i = 0; i < N_KEYS; i++) {
    consider(path, SCHEMA[i].path, &best, &best_full, out, out_size);
    for (const char *d = strchr(SCHEMA[i].path, '.'); d; d = strchr(d + 1, '.')) {
      snprintf(section, sizeof section, "%.*s", (int)(d - SCHEMA[i].path), SCHEMA[i].path);
      consider(path, section, &best, &best_full, out, out_size);
    }
  }
  int len = (int)strlen(last_component(path)), limit = len / 2 > 2 ? len / 2 : 2;
  if (best > limit) out[0] = 0;
}

/* The name directly under `section` ("" = top level) on the way to `path`, or 0 if not under. */
static int child_name(const char *path, const char *section, char *out, size_t size) {
  size_t n = strlen(section);
  if (n && (strncmp(path, section, n) != 0 || path[n] != '.')) return 0;
  const char *name = n ? path + n + 1 : path;
  snprintf(out, size, "%.*s", (int)strcspn(name, "."), name);
  return 1;
}

/* "epochs, batch_size, ...": the names directly under `section`, in schema order. */
static void keys_under(const char *section, char *out, size_t out_size) {
  size_t used = 0;
  out[0] = 0;
  for (int i = 0; i < N_KEYS && used < out_size; i++) {
    char item[64], seen[64];
    if (!child_name(SCHEMA[i].path, section, item, sizeof item)) continue;
    int dup = 0;
    for (int j = 0; j < i && !dup; j++)
      dup = child_name(SCHEMA[j].path, section, seen, sizeof seen) && strcmp(seen, item) == 0;
    if (!dup) used += (size_t)snprintf(out + used, out_size - used, "%s%s", used ? ", " : "", item);
  }
}

static int fail_unknown(const origin *o, const char *path, elmo_err *err) {
  char best[256], list[512], parent[256];
  closest_key(path, best, sizeof best);
  if (best[0])
    return elmo_fail(err, ELMO_EINPUT, "%s%s%s: unknown key (did you mean %s?)", o->name, o->sep, path, best);
  const char *dot = strrchr(path, '.');
  snprintf(parent, sizeof parent, "%.*s", dot ? (int)(dot - path) : 0, path);
  keys_under(parent, list, sizeof list);
  return elmo_fail(err, ELMO_EINPUT, "%s%s%s: unknown key (expected one of: %s)", o->name, o->sep, path, list);
}

/* ---- describing values and ranges ---------------------------------------------------------- */

static void fmt_number(char *out, size_t size, double v) {
  if (v == NO_MAX || v == NO_MIN) {
    snprintf(out, size, "%s", v > 0 ? "inf" : "-inf");
    return;
  }
  if (v == floor(v) && fabs(v) < 1e15) {   /* integral: plain digits */
    snprintf(out, size, "%.0f", v);
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {   /* shortest text that reads back exactly */
    snprintf(out, size, "%.*g", prec, v);
    if (strtod(out, NULL) == v) return;
  }
}

/* The range part of what a numeric key accepts: ">= 1", "in [0, 1)", "> 0", "" (any). */
static void range_text(const key_spec *s, char *out, size_t size) {
  char lo[32], hi[32];
  fmt_number(lo, sizeof lo, s->min);
  fmt_number(hi, sizeof hi, s->max);
  const char *open_lo = s->flags & F_MIN_OPEN ? "(" : "[", *close_hi = s->flags & F_MAX_OPEN ? ")" : "]";
  if (s->min == NO_MIN && s->max == NO_MAX) out[0] = 0;
  else if (s->max == NO_MAX) snprintf(out, size, "%s %s", s->flags & F_MIN_OPEN ? ">" : ">=", lo);
  else if (s->min == NO_MIN) snprintf(out, size, "%s %s", s->flags & F_MAX_OPEN ? "<" : "<=", hi);
  else snprintf(out, size, "in %s%s, %s%s", open_lo, lo, hi, close_hi);
}

/* What a key accepts, for messages: "an integer >= 1", "one of \"bow\", \"text\"", ... */
static void expected_text(const key_spec *s, char *out, size_t size) {
  char range[96];
  range_text(s, range, sizeof range);
  switch (s->type) {
  case K_STR: snprintf(out, size, "a string of at most %zu bytes", s->size - 1); break;
  case K_BOOL: snprintf(out, size, "true or false"); break;
  case K_FLOAT: snprintf(out, size, "a number%s%s", range[0] ? " " : "", range); break;
  case K_INT:
  case K_U64:
    if (s->multiple > 1) snprintf(out, size, "a multiple of %lld %s", (long long)s->multiple, range);
    else snprintf(out, size, "an integer %s", range);
    break;
  case K_ENUM: {
    size_t used = (size_t)snprintf(out, size, "one of ");
    for (const char *p = s->choices; *p && used < size;) {
      size_t len = strcspn(p, "|");
      used += (size_t)snprintf(out + used, size - used, "%s\"%.*s\"", p == s->choices ? "" : ", ", (int)len, p);
      p += len + (p[len] == '|');
    }
    break;
  }
  }
}

/* A JSON value as short text for "got ...". */
static void got_text(const cJSON *v, char *out, size_t size) {
  char *s = cJSON_PrintUnformatted(v);
  if (!s) {
    snprintf(out, size, "(unprintable)");
    return;
  }
  if (strlen(s) > 60) snprintf(out, size, "%.57s...", s);
  else snprintf(out, size, "%s", s);
  cJSON_free(s);
}

static int fail_value(const origin *o, const char *path, const key_spec *s, const cJSON *v, elmo_err *err) {
  char want[256], got[80];
  expected_text(s, want, sizeof want);
  if ((s->type == K_INT || s->type == K_U64) && cJSON_IsNumber(v) && fabs(v->valuedouble) >= NO_MAX)
    snprintf(want, sizeof want, "an integer of magnitude below 2^53 (JSON numbers are doubles)");
  got_text(v, got, sizeof got);
  return elmo_fail(err, ELMO_EINPUT, "%s%s%s: expected %s, got %s", o->name, o->sep, path, want, got);
}

/* ---- setting one key ----------------------------------------------------------------------- */

static int in_choices(const char *choices, const char *v) {
  size_t n = strlen(v);
  for (const char *p = choices; *p;) {
    size_t len = strcspn(p, "|");
    if (len == n && strncmp(p, v, n) == 0) return 1;
    p += len + (p[len] == '|');
  }
  return 0;
}

static int number_ok(const key_spec *s, double v) {
  if (!isfinite(v)) return 0;
  if (v < s->min || (v == s->min && (s->flags & F_MIN_OPEN))) return 0;
  if (v > s->max || (v == s->max && (s->flags & F_MAX_OPEN))) return 0;
  if (s->type == K_INT || s->type == K_U64) {
    if (v != floor(v) || fabs(v) >= NO_MAX) return 0;
    if (s->multiple > 1 && (int64_t)v % s->multiple != 0) return 0;
  }
  return 1;
}

/* Checks v against the key's type and range and stores it; 0 when v does not fit. */
static int store(elmo_config *c, const key_spec *s, const cJSON *v) {
  void *f = field(c, s);
  switch (s->type) {
  case K_STR:
  case K_ENUM:
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= s->size) return 0;
    if (s->type == K_ENUM && !in_choices(s->choices, v->valuestring)) return 0;
    set_string(f, s->size, v->valuestring);
    return 1;
  case K_BOOL:
    if (!cJSON_IsBool(v)) return 0;
    *(int *)f = cJSON_IsTrue(v);
    return 1;
  case K_INT:
  case K_U64:
  case K_FLOAT:
    if (!cJSON_IsNumber(v) || !number_ok(s, v->valuedouble)) return 0;
    if (s->type == K_INT) *(int64_t *)f = (int64_t)v->valuedouble;
    else if (s->type == K_U64) *(uint64_t *)f = (uint64_t)v->valuedouble;
    else *(double *)f = v->valuedouble;
    return 1;
  }
  return 0;
}

static int set_key(elmo_config *c, const origin *o, const char *path, const cJSON *v, elmo_err *err);

/* Applies every member of a JSON object found at `prefix` ("" = top level). */
static int walk_object(elmo_config *c, const origin *o, const char *prefix, const cJSON *obj, elmo_err *err) {
  for (const cJSON *it = obj->child; it; it = it->next) {
    char path[512];
    snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", it->string);
    for (const cJSON *prev = obj->child; prev != it; prev = prev->next)
      if (strcmp(prev->string, it->string) == 0)
        return elmo_fail(err, ELMO_EINPUT, "%s%s%s: duplicate key (expected each key once)", o->name, o->sep, path);
    int rc = set_key(c, o, path, it, err);
    if (rc) return rc;
  }
  return ELMO_OK;
}

/* Sets a key, or walks a section given as an object. */
static int set_key(elmo_config *c, const origin *o, const char *path, const cJSON *v, elmo_err *err) {
  const key_spec *s = find_key(path);
  if (s) return store(c, s, v) ? ELMO_OK : fail_value(o, path, s, v, err);
  if (!is_section(path)) return fail_unknown(o, path, err);
  if (cJSON_IsObject(v)) return walk_object(c, o, path, v, err);
  char keys[512], got[80];
  keys_under(path, keys, sizeof keys);
  got_text(v, got, sizeof got);
  return elmo_fail(err, ELMO_EINPUT, "%s%s%s: expected an object with keys %s, got %s", o->name, o->sep, path, keys, got);
}

/* ---- --set overrides ----------------------------------------------------------------------- */

/* "a.b.c=value": the value is JSON when it parses as JSON, else a bare string. String keys
 * take the text as written unless it is a quoted JSON string. */
static int apply_override(elmo_config *c, const char *item, elmo_err *err) {
  const char *eq = strchr(item, '=');
  if (!eq || eq == item || eq - item >= 256)
    return elmo_fail(err, ELMO_EINPUT, "--set %s: expected key.path=value (e.g. --set training.epochs=10)", item);
  char path[256];
  snprintf(path, sizeof path, "%.*s", (int)(eq - item), item);
  const char *text = eq + 1;
  cJSON *v = cJSON_ParseWithOpts(text, NULL, 1);
  const key_spec *s = find_key(path);
  if (!v || (s && (s->type == K_STR || s->type == K_ENUM) && !cJSON_IsString(v))) {
    cJSON_Delete(v);
    v = cJSON_CreateString(text);
  }
  origin o = { "--set", " " };
  int rc = set_key(c, &o, path, v, err);
  cJSON_Delete(v);
  return rc;
}

/* ---- resolution and cross-key checks ------------------------------------------------------- */

static void default_files(elmo_config *c) {
  static const char *const by_format[3][5] = {
    { "bow", "train.txt", "test.txt", "", "" },
    { "text", "trn_X.txt", "tst_X.txt", "trn_X_Y.txt", "tst_X_Y.txt" },
    { "jsonl", "trn.json", "tst.json", "", "" },
  };
  char *dst[4] = { c->train_file, c->test_file, c->train_labels, c->test_labels };
  size_t size[4] = { sizeof c->train_file, sizeof c->test_file, sizeof c->train_labels, sizeof c->test_labels };
  for (int f = 0; f < 3; f++) {
    if (strcmp(c->data_format, by_format[f][0]) != 0) continue;
    for (int i = 0; i < 4; i++)
      if (!dst[i][0]) set_string(dst[i], size[i], by_format[f][i + 1]);
  }
}

/* The last path component of a directory name ("datasets/Wiki10-31K/" -> "Wiki10-31K"). */
static void dir_basename(const char *dir, char *out, size_t size) {
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/') n--;
  size_t start = n;
  while (start > 0 && dir[start - 1] != '/') start--;
  snprintf(out, size, "%.*s", (int)(n - start), dir + start);
}

static void default_propensity(elmo_config *c) {
  char name[1024];
  double A, B;
  dir_basename(c->data_dir, name, sizeof name);
  elmo_propensity_defaults(name, &A, &B);
  if (c->A < 0) c->A = A;
  if (c->B < 0) c->B = B;
}

/* select_metric is FAMILY@i with a family metrics.c computes and 1 <= i <= k. */
static int metric_ok(const char *m, int64_t k) {
  static const char *const families[] = { "P", "nDCG", "PSP", "PSnDCG", "R", "PSR" };
  const char *at = strchr(m, '@');
  if (!at || !isdigit((unsigned char)at[1]) || at[1] == '0') return 0;
  int known = 0;
  for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
    known |= strlen(families[i]) == (size_t)(at - m) && strncmp(m, families[i], (size_t)(at - m)) == 0;
  char *end;
  long i = strtol(at + 1, &end, 10);
  return known && *end == 0 && i >= 1 && i <= k;
}

static int check_required(const elmo_config *c, const char *name, elmo_err *err) {
  for (int i = 0; i < N_KEYS; i++) {
    const key_spec *s = &SCHEMA[i];
    if ((s->flags & F_REQUIRED) && !((const char *)cfield(c, s))[0])
      return elmo_fail(err, ELMO_EINPUT, "%s: %s: missing required key (set it in the file or with --set %s=...)",
                       name, s->path, s->path);
  }
  return ELMO_OK;
}

static int check_cross(const elmo_config *c, const char *name, elmo_err *err) {
  int transformer = strcmp(c->encoder_kind, "transformer") == 0;
  if (transformer && c->dim % c->heads != 0)
    return elmo_fail(err, ELMO_EINPUT,
                     "%s: model.encoder.heads: %lld does not divide model.encoder.dim = %lld "
                     "(expected a divisor of dim for the transformer encoder)",
                     name, (long long)c->heads, (long long)c->dim);
  if (transformer && c->max_len > c->max_position)
    return elmo_fail(err, ELMO_EINPUT,
                     "%s: data.max_len: %lld exceeds model.encoder.max_position = %lld (expected <= max_position)",
                     name, (long long)c->max_len, (long long)c->max_position);
  if (c->k > c->topk)
    return elmo_fail(err, ELMO_EINPUT, "%s: eval.k: %lld exceeds eval.topk = %lld (expected k <= topk)", name,
                     (long long)c->k, (long long)c->topk);
  if (!metric_ok(c->select_metric, c->k))
    return elmo_fail(err, ELMO_EINPUT,
                     "%s: training.select_metric: \"%s\" is not a metric computed with eval.k = %lld "
                     "(expected P@i, nDCG@i, PSP@i, PSnDCG@i, R@i or PSR@i with 1 <= i <= eval.k)",
                     name, c->select_metric, (long long)c->k);
  return ELMO_OK;
}

/* ---- public API ---------------------------------------------------------------------------- */

static void apply_default(elmo_config *c, const key_spec *s) {
  void *f = field(c, s);
  switch (s->type) {
  case K_STR:
  case K_ENUM: set_string(f, s->size, s->def); break;
  case K_BOOL: *(int *)f = strcmp(s->def, "true") == 0; break;
  case K_INT: *(int64_t *)f = strtoll(s->def, NULL, 10); break;
  case K_U64: *(uint64_t *)f = strtoull(s->def, NULL, 10); break;
  case K_FLOAT: *(double *)f = strtod(s->def, NULL); break;
  }
}

void elmo_config_defaults(elmo_config *c) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < N_KEYS; i++) apply_default(c, &SCHEMA[i]);
}

/* "name:line:col: invalid JSON ..." from the offset where cJSON stopped. */
static int fail_json(const char *json, const char *stop, const char *name, elmo_err *err) {
  int line = 1, col = 1;
  for (const char *p = json; p < stop; p++) {
    if (*p == '\n') line++, col = 1;
    else col++;
  }
  if (!*stop)
    return elmo_fail(err, ELMO_EINPUT, "%s:%d:%d: invalid JSON: unexpected end of input (expected a complete JSON object)",
                     name, line, col);
  size_t len = strcspn(stop, "\r\n");
  return elmo_fail(err, ELMO_EINPUT, "%s:%d:%d: invalid JSON near '%.*s' (expected a JSON object of config keys)",
                   name, line, col, (int)(len > 24 ? 24 : len), stop);
}

static int parse_tree(elmo_config *c, const char *json, const char *name, elmo_err *err) {
  const char *stop = json;
  cJSON *root = cJSON_ParseWithOpts(json, &stop, 1);
  if (!root) return fail_json(json, stop ? stop : json, name, err);
  int rc = ELMO_OK;
  if (!cJSON_IsObject(root))
    rc = elmo_fail(err, ELMO_EINPUT, "%s: (top level): expected a JSON object of config keys", name);
  else
    rc = walk_object(c, &(origin){ name, ": " }, "", root, err);
  cJSON_Delete(root);
  return rc;
}

int elmo_config_parse(elmo_config *c, const char *json, const char *name, const char *const *overrides,
                      int n_overrides, elmo_err *err) {
  elmo_config_defaults(c);
  int rc = parse_tree(c, json, name, err);
  for (int i = 0; !rc && i < n_overrides; i++) rc = apply_override(c, overrides[i], err);
  if (!rc) rc = check_required(c, name, err);
  if (!rc) rc = check_cross(c, name, err);
  if (rc) return rc;
  default_files(c);
  default_propensity(c);
  return ELMO_OK;
}

static int read_text(const char *path, char **out, elmo_err *err) {
  FILE *f = fopen(path, "rb");
  if (!f) return elmo_fail(err, ELMO_EINPUT, "%s: cannot open config: %s", path, strerror(errno));
  size_t cap = 0, n = 0;
  char *buf = NULL;
  for (;;) {
    elmo_grow((void **)&buf, &cap, n + 65537, 1);
    size_t got = fread(buf + n, 1, 65536, f);
    n += got;
    if (got < 65536) break;
  }
  int bad = ferror(f);
  fclose(f);
  buf[n] = 0;
  if (bad || strlen(buf) != n) {
    free(buf);
    return elmo_fail(err, ELMO_EINPUT, "%s: cannot read config (%s)", path, bad ? "read error" : "contains a NUL byte");
  }
  *out = buf;
  return ELMO_OK;
}

/* output.dir = "runs/<config file name without .json>" when not given. */
static int default_out_dir(elmo_config *c, const char *path, elmo_err *err) {
  if (c->out_dir[0]) return ELMO_OK;
  char base[1024];
  dir_basename(path, base, sizeof base);
  size_t n = strlen(base);
  if (n > 5 && strcmp(base + n - 5, ".json") == 0) base[n - 5] = 0;
  if (strlen(base) + 6 >= sizeof c->out_dir)
    return elmo_fail(err, ELMO_EINPUT, "%s: output.dir: default runs/%s is too long (set output.dir)", path, base);
  memcpy(c->out_dir, "runs/", 5);
  memcpy(c->out_dir + 5, base, strlen(base) + 1);
  return ELMO_OK;
}

int elmo_config_load(elmo_config *c, const char *path, const char *const *overrides, int n_overrides,
                     elmo_err *err) {
  char *json = NULL;
  int rc = read_text(path, &json, err);
  if (rc) return rc;
  rc = elmo_config_parse(c, json, path, overrides, n_overrides, err);
  free(json);
  if (!rc) rc = default_out_dir(c, path, err);
  return rc;
}

/* The object for `path`'s parent section inside root, created as needed. */
static cJSON *parent_object(cJSON *root, const char *path) {
  cJSON *obj = root;
  for (const char *p = path, *dot; (dot = strchr(p, '.')); p = dot + 1) {
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(dot - p), p);
    cJSON *next = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!next) next = cJSON_AddObjectToObject(obj, name);
    obj = next;
  }
  return obj;
}

static void add_value(cJSON *obj, const char *name, const key_spec *s, const elmo_config *c) {
  const void *f = cfield(c, s);
  char num[64];
  switch (s->type) {
  case K_STR:
  case K_ENUM: cJSON_AddStringToObject(obj, name, f); return;
  case K_BOOL: cJSON_AddBoolToObject(obj, name, *(const int *)f); return;
  case K_INT: snprintf(num, sizeof num, "%lld", (long long)*(const int64_t *)f); break;
  case K_U64: snprintf(num, sizeof num, "%llu", (unsigned long long)*(const uint64_t *)f); break;
  case K_FLOAT: fmt_number(num, sizeof num, *(const double *)f); break;
  }
  cJSON_AddRawToObject(obj, name, num);   /* exact digits; cJSON's own printing rounds */
}

char *elmo_config_to_json(const elmo_config *c) {
  cJSON *root = cJSON_CreateObject();
  for (int i = 0; i < N_KEYS; i++)
    add_value(parent_object(root, SCHEMA[i].path), last_component(SCHEMA[i].path), &SCHEMA[i], c);
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) {
    fprintf(stderr, "elmo: out of host memory printing the config\n");
    abort();
  }
  char *out = elmo_strdup(text);
  cJSON_free(text);
  return out;
}

static int contains_nocase(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++) {
    size_t i = 0;
    while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
    if (i == n) return 1;
  }
  return 0;
}

void elmo_propensity_defaults(const char *dataset_name, double *A, double *B) {
  const char *name = dataset_name ? dataset_name : "";
  if (contains_nocase(name, "amazon")) *A = 0.6, *B = 2.6;
  else if (contains_nocase(name, "wiki")) *A = 0.5, *B = 0.4;
  else *A = 0.55, *B = 1.5;
}

/* ---- the key reference (docs/CONFIG.md) ---------------------------------------------------- */

static const char *type_name(key_type t) {
  static const char *const names[] = { "string", "enum", "int", "int", "float", "bool" };
  return names[t];
}

/* The "allowed" column: "`bow`, `text`", ">= 1", "multiple of 8, in [8, 65536]", "any". */
static void allowed_text(const key_spec *s, char *out, size_t size) {
  char range[96];
  range_text(s, range, sizeof range);
  if (s->type == K_ENUM) {
    size_t used = 0;
    out[0] = 0;
    for (const char *p = s->choices; *p && used < size;) {
      size_t len = strcspn(p, "|");
      used += (size_t)snprintf(out + used, size - used, "%s`%.*s`", used ? ", " : "", (int)len, p);
      p += len + (p[len] == '|');
    }
  } else if (s->type == K_BOOL) snprintf(out, size, "`true`, `false`");
  else if (s->type == K_STR) snprintf(out, size, "at most %zu bytes", s->size - 1);
  else if (s->multiple > 1) snprintf(out, size, "multiple of %lld, %s", (long long)s->multiple, range);
  else snprintf(out, size, "%s", range[0] ? range : "any");
}

char *elmo_config_markdown(void) {
  size_t cap = 0, used = 0;
  char *out = NULL, row[1024], allowed[256], def[128];
  const char *head = "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
  elmo_grow((void **)&out, &cap, strlen(head) + 1, 1);
  used = (size_t)sprintf(out, "%s", head);
  for (int i = 0; i < N_KEYS; i++) {
    const key_spec *s = &SCHEMA[i];
    allowed_text(s, allowed, sizeof allowed);
    if (s->type == K_STR || s->type == K_ENUM) snprintf(def, sizeof def, "`\"%s\"`", s->def);
    else snprintf(def, sizeof def, "`%s`", s->def);
    int n = snprintf(row, sizeof row, "| `%s` | %s | %s | %s | %s |\n", s->path, type_name(s->type), def, allowed,
                     s->help);
    elmo_grow((void **)&out, &cap, used + (size_t)n + 1, 1);
    memcpy(out + used, row, (size_t)n + 1);
    used += (size_t)n;
  }
  return out;
}
